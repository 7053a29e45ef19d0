"""reality_stone.calibration and rs.compress(calibration=…) on tiny real-architecture models."""

import pytest
import torch

import reality_stone as rs
from reality_stone.calibration import (ActivationStats, calibration_ids, collect_stats, decoder_blocks, output_error,
                                       sequential_stats)
from reality_stone.codecs import codec_config
from reality_stone.models import compressible_layers
from reality_stone.evaluation.metrics import score_text
from reality_stone.evaluation.loaders import tiny_bert, tiny_llama
from reality_stone.nn import CompressedLinear


def ids(n=4, seq=32, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def names(model):
    return [n for n, _ in compressible_layers(model)[0]]


def test_one_pass_stats_are_the_input_second_moment():
    model = tiny_llama()
    x_seen = []
    lin = model.model.layers[1].mlp.down_proj
    h = lin.register_forward_pre_hook(lambda m, a: x_seen.append(a[0].reshape(-1, a[0].shape[-1]).double()))
    stats = collect_stats(model, ids(), names(model))
    h.remove()
    X = torch.cat(x_seen)
    s = stats["model.layers.1.mlp.down_proj"]
    assert s.tokens == 4 * 32 and s.in_features == 160
    torch.testing.assert_close(s.xtx, X.T @ X / len(X), rtol=1e-5, atol=1e-7)


def test_sequential_equals_one_pass_until_something_is_compressed():
    model = tiny_llama()
    layers = names(model)
    assert decoder_blocks(model, layers)[0] == "model.layers"
    one = collect_stats(model, ids(), layers)
    steps = list(sequential_stats(model, ids(), layers))  # nothing replaced between steps
    assert [sorted(s) for s in steps] == [sorted(n for n in layers if f".{k}." in n) for k in range(2)]
    for step in steps:
        for name, s in step.items():
            torch.testing.assert_close(s.xtx, one[name].xtx, rtol=1e-5, atol=1e-6)


def _tiny_causal_lm(family: str) -> torch.nn.Module:
    """A random 4-block model of ``family``; sliding-window layers see 8 of the 32 tokens."""
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    alternating = ["sliding_attention", "full_attention"] * 2
    cfg = {"gemma": lambda: transformers.GemmaConfig(**common),
           "gemma2": lambda: transformers.Gemma2Config(**common, sliding_window=8, layer_types=alternating),
           "gemma3_text": lambda: transformers.Gemma3TextConfig(**common, sliding_window=8, layer_types=alternating),
           "mistral": lambda: transformers.MistralConfig(**common, sliding_window=8),
           "qwen2": lambda: transformers.Qwen2Config(**common, use_sliding_window=True, sliding_window=8,
                                                    max_window_layers=2)}[family]()
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3_text", "mistral", "qwen2"])
def test_each_block_gets_its_own_mask_and_rotary_tables(family):
    """Sliding-window and global layers (Gemma 2/3: other masks and rotary tables per layer type)
    each see what the full forward gives them: block 0's arguments replayed for all were wrong."""
    model = _tiny_causal_lm(family)
    layers = names(model)
    one = collect_stats(model, ids(3, 32), layers)
    seq = {k: v for step in sequential_stats(model, ids(3, 32), layers) for k, v in step.items()}
    assert sorted(seq) == sorted(layers)
    for name in layers:
        torch.testing.assert_close(seq[name].xtx, one[name].xtx, rtol=1e-5, atol=1e-6)


def test_sequential_statistics_see_the_compressed_blocks():
    torch.manual_seed(0)
    calib = ids(6, 48)
    seq, one = tiny_llama(), tiny_llama()
    r_seq = rs.compress(seq, codec_config("gptq", bits=2, group=32), calibration=calib)
    r_one = rs.compress(one, codec_config("gptq", bits=2, group=32), calibration=calib, sequential=False)
    assert r_seq.calibration["mode"] == "sequential" and r_one.calibration["mode"] == "one-pass"
    assert r_seq.calibration["tokens"] == 6 * 48
    by = lambda r: {x.name: x for x in r.layers}  # noqa: E731
    s, o = by(r_seq), by(r_one)
    # block 0 sees the same inputs either way; block 1 sees block 0's *compressed* outputs
    assert s["model.layers.0.self_attn.q_proj"].output_error == pytest.approx(o["model.layers.0.self_attn.q_proj"].output_error)
    assert s["model.layers.1.self_attn.q_proj"].output_error != pytest.approx(o["model.layers.1.self_attn.q_proj"].output_error)
    assert all(isinstance(m, CompressedLinear) for n, m in seq.named_modules() if n in s)


def test_calibrated_codecs_beat_data_free_on_held_out_output():
    # a tiny real-architecture LM: data-aware seed basis / GPTQ vs their data-free counterparts,
    # output of the whole model on inputs not used for calibration
    calib, held = ids(8, 64, seed=1), ids(4, 64, seed=2)
    base = tiny_llama()
    with torch.no_grad():
        ref = base(held).logits
    def err(model):  # noqa: E306
        with torch.no_grad():
            return float((model(held).logits - ref).norm() / ref.norm())
    rtn, gptq, free, aware = tiny_llama(), tiny_llama(), tiny_llama(), tiny_llama()
    rs.compress(rtn, codec_config("rtn", bits=3, group=32))
    rs.compress(gptq, codec_config("gptq", bits=3, group=32), calibration=calib)
    rs.compress(free, codec_config("seedbasis", preset="2.5"))
    rs.compress(aware, codec_config("seedbasis", preset="2.5"), calibration=calib)
    assert err(gptq) < err(rtn)
    assert err(aware) < err(free)


def test_encoder_models_calibrate_too():
    model = tiny_bert()
    report = rs.compress(model, codec_config("gptq", bits=4, group=32), calibration=ids(3, 16))
    assert len(report.layers) == len([r for r in report.layers if r.output_error is not None]) > 0
    assert report.output_error < 0.2


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_calibration_inputs_and_bad_input():
    from reality_stone.evaluation.loaders import load_tokenizer

    tok = load_tokenizer("smollm2")
    t = calibration_ids("shakespeare", tok, tokens=1000, seq_len=200)
    assert t.shape == (5, 200) and t.dtype == torch.int64
    assert calibration_ids(["one text " * 40, "another " * 40], tok, tokens=64, seq_len=32).shape == (2, 32)
    assert calibration_ids(list(range(100)), tokens=100, seq_len=10).shape == (10, 10)
    with pytest.raises(ValueError, match=r"has \d+ tokens, fewer than seq_len=512"):
        calibration_ids("a short text", tok, seq_len=512)
    with pytest.raises(ValueError, match="tokenizer does not match"):
        calibration_ids("shakespeare", tok, tokens=256, seq_len=128, vocab_size=256)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        calibration_ids("shakespeare")
    with pytest.raises(ValueError, match="integer tensor"):
        calibration_ids(torch.randn(100), seq_len=10)
    with pytest.raises(ValueError, match="square"):
        ActivationStats(torch.zeros(3, 4), 1)
    with pytest.raises(ValueError, match="NaN"):
        ActivationStats(torch.full((2, 2), float("nan")), 1)
    model = tiny_llama()
    with pytest.raises(ValueError, match="need calibration"):
        rs.compress(model, codec_config("gptq"))
    with pytest.raises(ValueError, match="do not use it"):
        rs.compress(model, codec_config("rtn"), calibration=ids())
    with pytest.raises(ValueError, match="tokenizer does not match"):
        rs.compress(model, codec_config("gptq", group=32), calibration=torch.full((2, 32), 300))
    assert not any(isinstance(m, CompressedLinear) for m in model.modules())  # nothing replaced by refused calls


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_news_calibration_is_disjoint_from_news_evaluation():
    from reality_stone.calibration import _bundled_text
    from reality_stone.data.text import evaluation_text
    from reality_stone.evaluation.loaders import load_tokenizer

    tok = load_tokenizer("smollm2")
    scored = tok.decode(tok(evaluation_text("news")).input_ids[:8192])
    calib = _bundled_text("news")
    assert len(calib) > 20000
    assert not any(line.strip() and line.strip() in calib for line in scored.splitlines()[:-1])


def test_save_pretrained_on_a_compressed_model_refuses(tmp_path):
    model = tiny_llama()
    rs.compress(model, codec_config("rtn", bits=4, group=32))
    with pytest.raises(ValueError, match="reality_stone.save"):
        model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    loaded = rs.load(rs.save(model, tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="random weights"):
        loaded.save_pretrained(tmp_path / "hf")


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_score_text_kl_and_top1_against_the_base():
    from reality_stone.data.text import evaluation_text
    from reality_stone.evaluation.loaders import load_tokenizer

    tok = load_tokenizer("smollm2")
    base = tiny_llama()
    base.resize_token_embeddings(len(tok))
    same = score_text(base, tok, evaluation_text("shakespeare"), base=base, context=64, stride=32, max_tokens=200)
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["top1"] == 1 and same["ppl"] == pytest.approx(same["base_ppl"])
    assert same["tokens"] == 199
    other = tiny_llama(seed=1)
    other.resize_token_embeddings(len(tok))
    diff = score_text(other, tok, evaluation_text("shakespeare"), base=base, context=64, stride=32, max_tokens=200)
    assert diff["kl"] > 1e-5 and diff["top1"] < 1 and diff["base_ppl"] == pytest.approx(same["ppl"])
    # a base cache: the base runs once per window and text; the scores are the uncached ones, exactly
    calls = []
    hook = base.register_forward_hook(lambda *a: calls.append(1))
    cache = {}
    for _ in range(2):
        cached = score_text(other, tok, evaluation_text("shakespeare"), base=base, context=64, stride=32,
                            max_tokens=200, base_cache=cache)
        assert cached == diff
    news = score_text(other, tok, evaluation_text("news"), base=base, context=64, stride=32, max_tokens=200,
                      base_cache=cache)
    hook.remove()
    assert news != diff and len(calls) == len(cache) == 2 * 6  # 6 windows of 64 at stride 32 over 200 tokens


def test_output_error_metric():
    W = torch.randn(4, 6, dtype=torch.float64)
    H = torch.eye(6, dtype=torch.float64)
    assert output_error(W, W, ActivationStats(H, 1)) == 0
    assert output_error(W, 0 * W, H) == pytest.approx(1.0)


def test_siblings_share_one_product_and_each_sum_is_its_own():
    """q/k/v-style siblings get x xᵀ from the first; a layer run twice on one input counts it twice."""
    from reality_stone.calibration import _hooked

    class Siblings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(6, 6) for _ in range(3))

        def forward(self, x):
            return self.q(x) + self.q(x) + self.k(x) + self.v(self.q(x).detach())

    model = Siblings()
    acc, handles = _hooked(model, ["q", "k", "v"])
    xs = [torch.randn(5, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with torch.no_grad():
        for x in xs:
            model(x)
    for h in handles:
        h.remove()
    X = torch.cat(xs).double()
    xtx = X.T @ X
    vin = torch.cat([model.q(x).double() for x in xs]).detach()
    torch.testing.assert_close(acc["q"].stats("q").xtx, 3 * xtx / 45, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(acc["k"].stats("k").xtx, xtx / 15, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(acc["v"].stats("v").xtx, vin.T @ vin / 15, rtol=1e-5, atol=1e-8)


def _heldout_kl(model, base, rows):
    import torch.nn.functional as F

    with torch.no_grad():
        t = F.log_softmax(base(rows).logits, -1)
        s = F.log_softmax(model(rows).logits, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_tuning_fits_only_the_norms_and_biases_and_keeps_the_best_epoch():
    import copy

    from reality_stone.calibration import tunable_parameters

    base = _tiny_causal_lm("qwen2")  # q/k/v biases: compressed layers with biases
    calib = ids(16, 32, seed=3)
    plain, tuned, again = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    cfg = codec_config("seedbasis", preset="2.5")
    rs.compress(plain, cfg, calibration=calib)
    report = rs.compress(tuned, cfg, calibration=calib, tune_epochs=4)
    rs.compress(again, cfg, calibration=calib, tune_epochs=4)
    info = report.calibration["tuning"]
    names = {n for n, _ in tunable_parameters(tuned)}
    assert any(n.endswith("q_proj.bias") for n in names) and any(n.endswith("input_layernorm.weight") for n in names)
    assert info["parameters"] == sum(p.numel() for n, p in tuned.named_parameters() if n in names)
    # the held-out sequences are the last ⌈16/8⌉ = 2; what the model holds is the best epoch
    held = calib[-2:]
    kl, lr = info["heldout_kl"], info["epoch_lr"]
    assert info["heldout_sequences"] == 2 and info["epochs"] == len(lr) == 4 and len(kl) == 5
    assert kl[info["kept_epoch"]] == min(kl)
    assert _heldout_kl(tuned, base, held) == pytest.approx(min(kl), rel=1e-4)
    for e in range(1, 4):  # an epoch that did not lower the held-out KL halves the next one's step
        assert lr[e] == (lr[e - 1] if kl[e] < min(kl[:e]) else lr[e - 1] / 2)
    assert info["heldout_kl"][0] == pytest.approx(_heldout_kl(plain, base, held), rel=1e-4)
    assert min(info["heldout_kl"]) < 0.98 * info["heldout_kl"][0]
    moved = set()
    for (n, p), (_, q), (_, r) in zip(tuned.named_parameters(), plain.named_parameters(), again.named_parameters()):
        assert torch.equal(p, r), f"{n}: tuning is not deterministic"
        if not torch.equal(p, q):
            moved.add(n)
        assert p.requires_grad == q.requires_grad  # flags restored
    assert moved and moved <= names
    for (n, m), (_, m0) in zip(tuned.named_modules(), plain.named_modules()):
        if isinstance(m, CompressedLinear):  # the codes are not touched
            assert torch.equal(m.encoded.decode(), m0.encoded.decode()), n


def test_tuning_bad_input():
    calib = ids(4, 16)
    cfg = codec_config("seedbasis", preset="2.5")
    with pytest.raises(ValueError, match="give calibration"):
        rs.compress(tiny_llama(), cfg, tune_epochs=1)
    with pytest.raises(ValueError, match="non-negative integer"):
        rs.compress(tiny_llama(), cfg, calibration=calib, tune_epochs=-1)
    with pytest.raises(ValueError, match="at least 2 sequences of 16 tokens, the calibration set has 1"):
        rs.compress(tiny_llama(), cfg, calibration=ids(1, 16), seq_len=16, tune_epochs=1)
    with pytest.raises(ValueError, match="output head"):
        rs.compress(tiny_bert(), cfg, calibration=calib, tune_epochs=1)
