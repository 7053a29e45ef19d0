"""Mixed bit allocation (reality_stone.models.allocation) and rs.compress(..., mixed=True)."""

import copy

import pytest
import torch

import reality_stone as rs
from reality_stone.calibration import ActivationStats, collect_fisher, collect_stats
from reality_stone.codecs import codec_config
from reality_stone.evaluation.loaders import tiny_bert, tiny_llama
from reality_stone.models import compressible_layers
from reality_stone.models.allocation import allocate
from reality_stone.nn import CompressedLinear


def ids(n=6, seq=32, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def names(model):
    return [n for n, _ in compressible_layers(model)[0]]


def test_ladders():
    sb = codec_config("seedbasis", preset="3.5")
    ladder = sb.ladder()
    assert ladder[0] is sb and len(set(ladder)) == len(ladder) >= 5
    bits = [c.nominal_bits_per_weight() for c in ladder]
    assert all(abs(b - 3.5) <= 1 for b in bits) and min(bits) == 2.5 and max(bits) == 4.5
    assert all(c.capabilities.fused_matmul for c in ladder)  # every rung runs on the fused kernel
    assert {c.nominal_bits_per_weight() for c in codec_config("seedbasis", preset="2.5").ladder()} == {2.0, 2.5, 3.0, 3.5}
    g = codec_config("gptq", bits=3, group=64)
    assert [c.bits for c in g.ladder()] == [2, 3, 4] and all(c.group == 64 for c in g.ladder())
    assert [c.bits for c in codec_config("rtn", bits=2, group=64).ladder()] == [2, 3]
    assert codec_config("lowrank").ladder() == ()


def test_collect_fisher_matches_an_independent_gradient():
    model = tiny_llama()
    calib = ids(3, 16)
    layers = names(model)
    stats, fisher = collect_fisher(model, calib, layers, seed=5)
    plain = collect_stats(model, calib, layers)
    for n in layers:  # the same pass collects the one-pass statistics
        torch.testing.assert_close(stats[n].xtx, plain[n].xtx, rtol=1e-6, atol=1e-9)
        assert fisher[n].shape == (model.get_submodule(n).weight.shape[0],) and bool((fisher[n] >= 0).all())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    # the same sampled labels, gradients taken by hand with retain_grad
    gen = torch.Generator().manual_seed(5)
    want = {n: torch.zeros_like(fisher[n]) for n in layers}
    for row in calib:
        outs = {}
        hs = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n in layers]
        emb = model.get_input_embeddings()(row[None]).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs_embeds=emb, use_cache=False).logits[0].float()
            for o in outs.values():
                o.retain_grad()
            lp = torch.log_softmax(logits, -1)
            y = torch.multinomial(lp.detach().exp(), 1, generator=gen)
            (-lp.gather(1, y).sum()).backward()
        for h in hs:
            h.remove()
        for n in layers:
            want[n] += outs[n].grad[0].double().square().sum(0)
    for n in layers:
        torch.testing.assert_close(fisher[n], want[n], rtol=1e-4, atol=1e-12)
    again = collect_fisher(model, calib, layers, seed=5)[1]
    assert all(torch.equal(fisher[n], again[n]) for n in layers)  # deterministic under the seed
    with pytest.raises(ValueError, match="output head"):
        collect_fisher(tiny_bert(), calib, names(tiny_bert()))


def _layers(k=4, out=24, inp=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {f"l{i}": torch.randn(out, inp, generator=g) for i in range(k)}
    x = torch.randn(512, inp, generator=g)
    st = {n: ActivationStats((x.T @ x / 512).double(), 512) for n in w}
    return w, st


def test_allocation_keeps_the_budget_and_feeds_the_sensitive_layer():
    w, st = _layers()
    fisher = {n: torch.ones(24, dtype=torch.float64) for n in w}
    fisher["l2"] = fisher["l2"] * 1000  # an error here costs 1000× more
    cfg = codec_config("seedbasis", preset="3.5")
    a = allocate(w, st, fisher, cfg, rows=8, probes=2)
    assert a.used_bits <= a.budget_bits == sum(v.numel() for v in w.values()) * 3.5
    assert a.bits["l2"] == max(a.bits.values()) > 3.5 and min(a.bits.values()) < 3.5
    assert a.predicted_loss["mixed"] < a.predicted_loss["uniform"]
    assert set(a.configs) == set(w) and all(c in cfg.ladder() for c in a.configs.values())
    b = allocate(w, st, fisher, cfg, rows=8, probes=2)
    assert a.configs == b.configs and a.rung_ratios == b.rung_ratios  # deterministic
    s = a.summary()
    assert sum(s["layers_per_bits"].values()) == 4 and s["nominal_bits_per_weight"] <= 3.5
    # equal sensitivities: no reason to move bits
    even = allocate(w, st, {n: torch.ones(24, dtype=torch.float64) for n in w}, cfg, rows=24, probes=4)
    assert even.used_bits <= even.budget_bits


def test_allocation_bad_input():
    w, st = _layers(2)
    f = {n: torch.ones(24, dtype=torch.float64) for n in w}
    cfg = codec_config("seedbasis", preset="3.5")
    with pytest.raises(ValueError, match="no ladder"):
        allocate(w, st, f, codec_config("lowrank"))
    with pytest.raises(ValueError, match="no calibration statistics"):
        allocate(w, {"l0": st["l0"]}, f, cfg)
    with pytest.raises(ValueError, match="outputs, the weight is"):
        allocate(w, st, {n: torch.ones(5) for n in w}, cfg)
    with pytest.raises(ValueError, match="positive integers"):
        allocate(w, st, f, cfg, rows=0)
    with pytest.raises(ValueError, match="no layers"):
        allocate({}, {}, {}, cfg)


@pytest.mark.parametrize("sequential", [True, False])
def test_compress_mixed_same_bits_lower_predicted_loss(tmp_path, sequential):
    base = tiny_llama()
    calib = ids(8, 32)
    cfg = codec_config("seedbasis", preset="3.5")
    uniform, mixed = copy.deepcopy(base), copy.deepcopy(base)
    ru = rs.compress(uniform, cfg, calibration=calib, sequential=sequential)
    rm = rs.compress(mixed, cfg, calibration=calib, sequential=sequential, mixed=True)
    a = rm.calibration["allocation"]
    assert rm.calibration["mode"] == ("sequential" if sequential else "one-pass")
    assert rm.compressed_bytes <= ru.compressed_bytes  # the stored bits of the uniform config, at most
    assert len({r.bits_per_weight for r in rm.layers}) > 1 and a["predicted_loss"]["mixed"] < a["predicted_loss"]["uniform"]
    assert sum(a["layers_per_bits"].values()) == len(rm.layers) and a["seconds"] > 0
    x = calib[:2]
    path = rs.save(mixed, tmp_path / "m.safetensors")
    loaded = rs.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, mixed(x).logits)
    got = {n: m.encoded.config for n, m in loaded.named_modules() if isinstance(m, CompressedLinear)}
    want = {n: m.encoded.config for n, m in mixed.named_modules() if isinstance(m, CompressedLinear)}
    assert got == want


def test_compress_mixed_for_a_data_free_codec_and_bad_input():
    calib = ids(6, 32)
    r = rs.compress(tiny_llama(), codec_config("rtn", bits=3, group=32), calibration=calib, mixed=True)
    assert r.calibration["mode"] == "one-pass" and "allocation" in r.calibration
    assert {round(x.bits_per_weight) for x in r.layers} <= {2, 3, 4, 5}
    cfg = codec_config("seedbasis", preset="3.5")
    with pytest.raises(ValueError, match="give calibration"):
        rs.compress(tiny_llama(), cfg, mixed=True)
    with pytest.raises(ValueError, match="no ladder"):
        rs.compress(tiny_llama(), codec_config("lowrank"), calibration=calib, mixed=True)
    with pytest.raises(ValueError, match="True or False"):
        rs.compress(tiny_llama(), cfg, calibration=calib, mixed="yes")
    with pytest.raises(ValueError, match="nothing to allocate"):
        rs.compress(tiny_llama(), cfg, calibration=calib, mixed=True, per_layer={"*": codec_config("rtn")})
