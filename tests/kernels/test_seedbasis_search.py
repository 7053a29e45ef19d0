"""The compiled seed-basis encoder search vs its torch reference (`SeedBasisConfig._search_reference`)."""

import pytest
import torch

from reality_stone.codecs import codec_config
from reality_stone.kernels.extension import load_extension

ext = load_extension()
needs_ext = pytest.mark.skipif(ext is None, reason="compiled kernels unavailable (no compiler / AVX2)")


def _metric(g):
    """A random positive-definite 8 × 8 metric K = A Aᵀ, as GPTQ's whitening gives."""
    A = torch.randn(8, 8, generator=g, dtype=torch.float64) / 8**0.5 + torch.eye(8, dtype=torch.float64)
    return A @ A.T


@needs_ext
@pytest.mark.parametrize("preset", ["4.25", "3.5", "2.5"])
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("metric", [False, True])
def test_search_matches_reference(preset, bounded, metric):
    cfg = codec_config("seedbasis", preset=preset)
    U = cfg.table()
    g = torch.Generator().manual_seed(0)
    K = _metric(g) if metric else None
    G, Gi, _ = cfg._tables(U, K)
    # blocks across 8 orders of magnitude, as real rows are (and exact zeros); 2001: a partial tile
    w = torch.randn(2001, 8, generator=g) * torch.exp2(torch.randint(-14, 2, (2001, 1), generator=g).float())
    w[:5] = 0
    lo = hi = None
    if bounded:
        hi = torch.randint(-12, 0, (2001,), generator=g).float()
        lo = hi - (2**cfg.exp_bits - 1)
    z = w if K is None else (w.double() @ K).float()
    wsq = (z.double() * w.double()).sum(-1).float()
    s_ref, e_ref, q_ref, err_ref = cfg._search_reference(z, U, G, Gi, lo, hi)
    err_ref = err_ref + wsq
    s, e, q, err = cfg._search(w, U, G, Gi, lo, hi, K)
    # the same winner except where two seeds tie to float32 rounding: then the same error
    same = s == s_ref
    assert same.float().mean() > 0.98
    assert torch.equal(e[same], e_ref[same]) and torch.equal(q[same], q_ref[same])
    scale = wsq.clamp_min(1e-30)
    assert ((err - err_ref).abs() / scale).max() < 1e-5
    # every returned (seed, exponent, codes) reproduces its reported error ‖w − ŵ‖²_K
    d = (w - torch.exp2(e)[:, None] * torch.einsum("np,npc->nc", q.float(), U[s])).double()
    true = (d * (d if K is None else d @ K)).sum(-1)
    assert (true - err.double()).abs().max() <= 1e-5 * scale.max()
    if bounded:
        assert bool(((e >= lo) & (e <= hi)).all())


@needs_ext
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 300])
def test_pattern_sums_equal_the_generic_path(rows):
    """±1 bases through the sign-pattern table give the same bits as the FMA path over U."""
    cfg = codec_config("seedbasis", preset="3.5")
    U = cfg.table()
    g = torch.Generator().manual_seed(rows)
    G, Gi, _ = cfg._tables(U, _metric(g))
    z = torch.randn(rows, 8, generator=g)
    none = torch.empty(0)
    a = ext.seedbasis_search(z, U, cfg.pattern_ids(), G, Gi, none, none, 4)
    b = ext.seedbasis_search(z, U, none, G, Gi, none, none, 4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@needs_ext
def test_search_generic_bases():
    """Bases that are not ±1 (basis='packed64') take the FMA path and match the reference."""
    cfg = codec_config("seedbasis", block=8, seed_bits=8, coeffs=4, coeff_bits=4, exp_bits=2, basis="packed64")
    U = cfg.table()
    G, Gi, _ = cfg._tables(U)
    w = torch.randn(500, 8, generator=torch.Generator().manual_seed(1)) * 0.01
    s_ref, _, _, err_ref = cfg._search_reference(w, U, G, Gi, None, None)
    s, _, _, err = cfg._search(w, U, G, Gi, None, None)
    assert (s == s_ref).float().mean() > 0.98
    # some of these bases are ill-conditioned (‖G⁻¹‖ ~ 1e11): the coefficients, so the codes of a
    # seed, may differ by float32 rounding of b, but rarely and never by much
    rel = (err - (err_ref + (w * w).sum(-1))).abs() / (w * w).sum(-1)
    assert rel.median() < 1e-6 and rel.max() < 1e-2


@needs_ext
def test_search_rejects_bad_layouts():
    cfg = codec_config("seedbasis", preset="3.5")
    U = cfg.table()
    G, Gi, _ = cfg._tables(U)
    pid = cfg.pattern_ids()
    z, none = torch.randn(4, 8), torch.empty(0)
    with pytest.raises(RuntimeError, match="blocks of 8"):
        ext.seedbasis_search(torch.randn(4, 7), U, pid, G, Gi, none, none, 4)
    with pytest.raises(RuntimeError, match="G and Gi must be"):
        ext.seedbasis_search(z, U, pid, G[:8], Gi, none, none, 4)
    with pytest.raises(RuntimeError, match="G and Gi must be"):
        ext.seedbasis_search(z, U, pid, G, Gi.double(), none, none, 4)
    with pytest.raises(RuntimeError, match="pattern must be"):
        ext.seedbasis_search(z, U, pid[:12], G, Gi, none, none, 4)
    with pytest.raises(RuntimeError, match="pattern does not match"):
        ext.seedbasis_search(z, U, pid.roll(1, 0), G, Gi, none, none, 4)
    with pytest.raises(RuntimeError, match="pattern does not match"):
        ext.seedbasis_search(z, U * 0.5, pid, G, Gi, none, none, 4)
    with pytest.raises(RuntimeError, match="e_lo and e_hi"):
        ext.seedbasis_search(z, U, pid, G, Gi, torch.zeros(3), torch.zeros(3), 4)
    with pytest.raises(RuntimeError, match="NaN"):
        ext.seedbasis_search(torch.full((4, 8), float("nan")), U, pid, G, Gi, none, none, 4)
    with pytest.raises(RuntimeError, match="NaN"):
        ext.seedbasis_search(z, U, pid, G, torch.full_like(Gi, float("inf")), none, none, 4)
    with pytest.raises(RuntimeError, match="coeff_bits"):
        ext.seedbasis_search(z, U, pid, G, Gi, none, none, 9)


def test_encodes_identically_without_the_extension():
    """The codec's bytes do not depend on whether the compiled search ran (ties aside: checked on
    a weight where the reference has no near-ties)."""
    import os
    import subprocess
    import sys

    script = ("import torch;from reality_stone.codecs import codec_config;"
              "W=torch.randn(16,64,generator=torch.Generator().manual_seed(3))*0.05;"
              "print(codec_config('seedbasis',preset='3.5').encode(W).decode().sum().item())")
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, **env}).stdout.strip() for env in ({}, {"REALITY_STONE_NO_EXT": "1"})]
    assert float(outs[0]) == pytest.approx(float(outs[1]), rel=1e-6)
