"""How far from the origin the Poincaré ball stays accurate (issue #26): √c·d up to which
dist(0, expmap0 v) and logmap0(expmap0 v) keep a relative error ≤ 1e-4. float64 ≥ 30
(the representable limit, where 1 − r ≈ 2e^(−s) meets the spacing of doubles near 1, is ≈ 31.5);
float32: measured 9.0–9.4 by this criterion (bounded by its 1e-5 margin: 2 artanh(1 − 1e-5) ≈ 12.2)."""

import pytest
import torch

from reality_stone.geometry import poincare


def _reach(dtype, c, dim, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    last = 0.0
    for s10 in range(20, 400):
        s = s10 / 10
        dirs = torch.randn(100, dim, dtype=torch.float64, generator=g)
        v = (dirs / dirs.norm(dim=-1, keepdim=True) * s / (2 * c**0.5)).to(dtype)  # d(0, exp0 v) = 2√c‖v‖/√c
        x = poincare.expmap0(v, c=c, check=False)
        want = (2 * c**0.5 * v.double().norm(dim=-1))
        e_dist = ((poincare.dist0(x, c=c, check=False).double() * c**0.5 - want) / want).abs().max()
        back = poincare.logmap0(x, c=c, check=False).double()
        e_log = ((back - v.double()).norm(dim=-1) / v.double().norm(dim=-1)).max()
        if max(float(e_dist), float(e_log)) > 1e-4:
            break
        last = s
    return last


@pytest.mark.parametrize("c", [0.3, 1.0, 2.0])
@pytest.mark.parametrize("dim", [2, 10])
def test_float64_reach_at_least_30(c, dim):
    assert _reach(torch.float64, c, dim) >= 30.0


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_float32_reach_at_least_9(c):
    assert _reach(torch.float32, c, 5) >= 9.0
