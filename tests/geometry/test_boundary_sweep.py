"""10^6 float32 points at the edge of each model through every op and conversion: no
non-finite value or gradient (issue #26). Poincaré / Klein: norms in [1 − 1e-7, 1]·(1/√c),
the last float32 values below the rim and the rim itself (check=False: the math must hold even
where `check` would refuse). Lorentz: √c·d up to 88, where x₀ = cosh(√c d)/√c still fits float32.
"""

from __future__ import annotations

import math

import pytest
import torch

from reality_stone.geometry import conversions, klein, lorentz, poincare

N = 1_000_000
D = 3
CURVATURES = [1.0, 1.7, 0.25]


def _directions(g, n=N):
    v = torch.randn(n, D, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def _rim_points(g, C, n=N) -> torch.Tensor:
    """float32 points with ‖x‖√c in [1 − 1e-7, 1] (some round to exactly the rim)."""
    r = 1 - torch.rand(n, 1, generator=g, dtype=torch.float64) * 1e-7
    return (_directions(g, n).double() * r / math.sqrt(C)).float()


def _far_lorentz(g, C, n=N) -> torch.Tensor:
    s = torch.rand(n, 1, generator=g) * 88.0  # √c·d
    u = torch.cat([torch.zeros(n, 1), _directions(g, n) * s / math.sqrt(C)], dim=-1)
    return lorentz.expmap0(u, c=C, check=False)


def _tangent(g, n=N, scale=1.0):
    return torch.randn(n, D, generator=g) * scale


def _assert_finite(name, out, *inputs):
    assert bool(torch.isfinite(out).all()), f"{name}: {int((~torch.isfinite(out)).sum())} non-finite values"
    out.sum().backward()
    for i, t in enumerate(inputs):
        if t.grad is None:  # an input the op does not use
            continue
        assert bool(torch.isfinite(t.grad).all()), \
            f"{name}: {int((~torch.isfinite(t.grad)).sum())} non-finite gradients of input {i}"


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


POINCARE_OPS = {
    "project": lambda x, y, v, C: poincare.project(x, c=C),
    "conformal_factor": lambda x, y, v, C: poincare.conformal_factor(x, c=C, check=False),
    "mobius_add": lambda x, y, v, C: poincare.mobius_add(x, y, c=C, check=False),
    "mobius_scalar_mul": lambda x, y, v, C: poincare.mobius_scalar_mul(0.5, x, c=C, check=False),
    "expmap": lambda x, y, v, C: poincare.expmap(x, v, c=C, check=False),
    "logmap": lambda x, y, v, C: poincare.logmap(x, y, c=C, check=False),
    "logmap0": lambda x, y, v, C: poincare.logmap0(x, c=C, check=False),
    "dist": lambda x, y, v, C: poincare.dist(x, y, c=C, check=False),
    "dist0": lambda x, y, v, C: poincare.dist0(x, c=C, check=False),
    "parallel_transport": lambda x, y, v, C: poincare.parallel_transport(x, y, v, c=C, check=False),
    "egrad2rgrad": lambda x, y, v, C: poincare.egrad2rgrad(x, v, c=C, check=False),
    "to_lorentz": lambda x, y, v, C: conversions.poincare_to_lorentz(x, c=C, check=False),
    "to_klein": lambda x, y, v, C: conversions.poincare_to_klein(x, c=C, check=False),
}
KLEIN_OPS = {
    "project": lambda x, y, C: klein.project(x, c=C),
    "lorentz_factor": lambda x, y, C: klein.lorentz_factor(x, c=C, check=False),
    "dist": lambda x, y, C: klein.dist(x, y, c=C, check=False),
    "to_poincare": lambda x, y, C: conversions.klein_to_poincare(x, c=C, check=False),
    "to_lorentz": lambda x, y, C: conversions.klein_to_lorentz(x, c=C, check=False),
}
LORENTZ_OPS = {
    "project": lambda x, y, v, C: lorentz.project(x, c=C),
    "dist": lambda x, y, v, C: lorentz.dist(x, y, c=C, check=False),
    "dist0": lambda x, y, v, C: lorentz.dist0(x, c=C, check=False),
    "logmap0": lambda x, y, v, C: lorentz.logmap0(x, c=C, check=False),
    "logmap": lambda x, y, v, C: lorentz.logmap(x, y, c=C, check=False),
    "to_poincare": lambda x, y, v, C: conversions.lorentz_to_poincare(x, c=C, check=False),
    "to_klein": lambda x, y, v, C: conversions.lorentz_to_klein(x, c=C, check=False),
}


@pytest.mark.parametrize("C", CURVATURES)
@pytest.mark.parametrize("op", sorted(POINCARE_OPS))
def test_poincare_rim(op, C):
    g = torch.Generator().manual_seed(0)
    x, y, v = _leaf(_rim_points(g, C)), _leaf(_rim_points(g, C)), _leaf(_tangent(g))
    _assert_finite(op, POINCARE_OPS[op](x, y, v, C), x, y, v)


@pytest.mark.parametrize("C", CURVATURES)
@pytest.mark.parametrize("op", sorted(KLEIN_OPS))
def test_klein_rim(op, C):
    g = torch.Generator().manual_seed(1)
    x, y = _leaf(_rim_points(g, C)), _leaf(_rim_points(g, C))
    _assert_finite(op, KLEIN_OPS[op](x, y, C), x, y)


@pytest.mark.parametrize("C", CURVATURES)
@pytest.mark.parametrize("op", sorted(LORENTZ_OPS))
def test_lorentz_far(op, C):
    g = torch.Generator().manual_seed(2)
    x, y = _leaf(_far_lorentz(g, C)), _leaf(_far_lorentz(g, C))
    v = _leaf(_tangent(g))
    out = LORENTZ_OPS[op](x, y, v, C)
    if op == "logmap":
        # a tangent of length d at x has coordinates up to ~d·x₀: for the farthest pairs that is
        # past float32's range. Required finite: every row whose float64 value fits float32.
        big = torch.finfo(torch.float32).max / 2
        x64, y64 = _leaf(x.double()), _leaf(y.double())
        ref = LORENTZ_OPS[op](x64, y64, None, C)
        fits = ref.detach().abs().amax(-1) < big
        ref[fits].sum().backward()  # and whose float64 gradients fit float32 too
        fits &= (x64.grad.abs().amax(-1) < big) & (y64.grad.abs().amax(-1) < big)
        assert float(fits.float().mean()) > 0.25  # measured: 57 % of the pairs
        out = out[fits]
    _assert_finite(op, out, x, y, v)
