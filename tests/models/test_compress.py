"""compress() on tiny real-architecture models; evaluation helpers on real text."""

import pytest
import torch

import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.data.text import CALIBRATION_FILES, calibration_text, evaluation_text, shakespeare_texts, work_key
from reality_stone.models import compressible_layers
from reality_stone.evaluation.metrics import embedding_fidelity, lee_sentences, perplexity
from reality_stone.evaluation.loaders import tiny_bert, tiny_llama
from reality_stone.nn import CompressedLinear


def test_compress_selects_layers_with_globs_and_per_layer_configs():
    model = tiny_llama()
    report = rs.compress(model, codec_config("rtn", bits=8, group=64), skip=("*.0.mlp.*",),
                         per_layer={"*q_proj": codec_config("rtn", bits=4, group=32)})
    names = {r.name: r for r in report.layers}
    assert "model.layers.0.mlp.up_proj" in report.skipped and "lm_head" in report.skipped
    assert "model.layers.1.mlp.up_proj" in names
    assert names["model.layers.0.self_attn.q_proj"].bits_per_weight < 5.5  # 4 + 32/32 + header
    assert names["model.layers.1.self_attn.k_proj"].bits_per_weight > 8
    assert isinstance(model.model.layers[1].mlp.up_proj, CompressedLinear)
    assert isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Linear)
    for r in report.layers:
        assert 0 <= r.rel_error < 0.2 and r.sqnr_db > 10
    with pytest.raises(ValueError, match="nothing to compress"):
        rs.compress(tiny_llama(), codec_config("rtn"), include="nope*")


def test_compressed_model_stays_close_and_trainable_bias():
    model = tiny_bert()
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        ref = model(ids).last_hidden_state
    rs.compress(model, codec_config("rtn", bits=8, group=32))
    out = model(ids).last_hidden_state
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    out.sum().backward()  # gradients reach the dense biases of compressed layers
    lin = model.encoder.layer[0].attention.self.query
    assert isinstance(lin, CompressedLinear) and lin.bias.grad is not None


def test_perplexity_on_real_text_with_a_tiny_model():
    from transformers import AutoTokenizer  # noqa: F401  (tokenizer of the real model)

    from reality_stone.evaluation.loaders import load_tokenizer

    tok = load_tokenizer("smollm2")
    model = tiny_llama()
    model.resize_token_embeddings(len(tok))
    ppl, n = perplexity(model, tok, evaluation_text("shakespeare"), context=64, stride=32, max_tokens=300)
    assert n == 299 and 1 < ppl < 1e7
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tok, "some text", context=8, stride=16)


def test_embedding_fidelity_identity_and_degraded():
    from reality_stone.evaluation.loaders import load_tokenizer

    tok = load_tokenizer("minilm")
    model = tiny_bert()
    model.resize_token_embeddings(len(tok))
    sentences = lee_sentences(12)
    assert len(sentences) == 12
    same = embedding_fidelity(model, model, tok, sentences)
    assert same["cosine_mean"] > 0.9999 and same["spearman"] > 0.9999
    import copy

    damaged = copy.deepcopy(model)
    rs.compress(damaged, codec_config("rtn", bits=2, group=64))
    worse = embedding_fidelity(model, damaged, tok, sentences)
    assert worse["cosine_mean"] < same["cosine_mean"]


def test_calibration_and_evaluation_texts_are_disjoint():
    texts = shakespeare_texts()
    assert "hamlet" not in {work_key(f) for f in CALIBRATION_FILES}
    calib = calibration_text()
    for name in ("shakespeare", "news"):
        ev = evaluation_text(name)
        # no 80-character passage of an evaluation text occurs in the calibration corpus
        for start in range(0, len(ev) - 80, max(1, len(ev) // 400)):
            assert ev[start : start + 80] not in calib
    assert len(calib) > 500_000 and len(evaluation_text("shakespeare")) > 100_000
    assert len(texts) > 80


def test_compressible_layers_reports_tied_head():
    chosen, skipped = compressible_layers(tiny_llama())
    assert len(chosen) == 14 and skipped == ["lm_head"]
    chosen, skipped = compressible_layers(tiny_llama(), skip_tied=False)
    assert len(chosen) == 14 and skipped == ["lm_head"]  # the default skip keeps the head dense anyway
    chosen, skipped = compressible_layers(tiny_llama(), skip=(), skip_tied=False)
    assert len(chosen) == 15 and skipped == []
