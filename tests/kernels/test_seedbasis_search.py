"""The compiled seed-basis encoder search vs its torch reference (`SeedBasisConfig._search_reference`)."""

import pytest
import torch

from reality_stone.codecs import codec_config
from reality_stone.kernels.extension import load_extension

ext = load_extension()
needs_ext = pytest.mark.skipif(ext is None, reason="compiled kernels unavailable (no compiler / AVX2)")


@needs_ext
@pytest.mark.parametrize("preset", ["4.25", "3.5", "2.5"])
@pytest.mark.parametrize("bounded", [False, True])
def test_search_matches_reference(preset, bounded):
    cfg = codec_config("seedbasis", preset=preset)
    U = cfg.table()
    G, M, _ = cfg._tables(U)
    g = torch.Generator().manual_seed(0)
    # blocks across 8 orders of magnitude, as real rows are (and exact zeros)
    w = torch.randn(2000, 8, generator=g) * torch.exp2(torch.randint(-14, 2, (2000, 1), generator=g).float())
    w[:5] = 0
    lo = hi = None
    if bounded:
        hi = torch.randint(-12, 0, (2000,), generator=g).float()
        lo = hi - (2**cfg.exp_bits - 1)
    s_ref, e_ref, q_ref, err_ref = cfg._search_reference(w, U, G, M, lo, hi)
    s, e, q, err = cfg._search(w, U, G, M, lo, hi)
    # the same winner except where two seeds tie to float32 rounding: then the same error
    same = s == s_ref
    assert same.float().mean() > 0.98
    assert torch.equal(e[same], e_ref[same]) and torch.equal(q[same], q_ref[same])
    scale = (w * w).sum(-1).clamp_min(1e-30)
    assert ((err - err_ref).abs() / scale).max() < 1e-5
    # every returned (seed, exponent, codes) reproduces its reported error exactly enough
    what = torch.exp2(e)[:, None] * torch.einsum("np,npc->nc", q.float(), U[s])
    assert (((w - what) ** 2).sum(-1) - err).abs().max() <= 1e-5 * scale.max()
    if bounded:
        assert bool(((e >= lo) & (e <= hi)).all())


@needs_ext
def test_search_rejects_bad_layouts():
    cfg = codec_config("seedbasis", preset="3.5")
    U = cfg.table()
    G, M, _ = cfg._tables(U)
    soa = lambda T: T.permute(1, 2, 0).contiguous()  # noqa: E731
    w, none = torch.randn(4, 8), torch.empty(0)
    with pytest.raises(RuntimeError, match="blocks of 8"):
        ext.seedbasis_search(torch.randn(4, 7), soa(U), soa(M), soa(G), none, none, 4)
    with pytest.raises(RuntimeError, match="multiple of 8 seeds"):
        ext.seedbasis_search(w, soa(U[:12]), soa(M[:12]), soa(G[:12]), none, none, 4)
    with pytest.raises(RuntimeError, match="G must be"):
        ext.seedbasis_search(w, soa(U), soa(M), soa(G[:8]), none, none, 4)
    with pytest.raises(RuntimeError, match="e_lo and e_hi"):
        ext.seedbasis_search(w, soa(U), soa(M), soa(G), torch.zeros(3), torch.zeros(3), 4)
    with pytest.raises(RuntimeError, match="NaN"):
        ext.seedbasis_search(torch.full((4, 8), float("nan")), soa(U), soa(M), soa(G), none, none, 4)
    with pytest.raises(RuntimeError, match="coeff_bits"):
        ext.seedbasis_search(w, soa(U), soa(M), soa(G), none, none, 9)


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
