"""Gradients (gradcheck, float64) and no NaN/Inf from the origin to the boundary (float32)."""

import pytest
import torch
from torch.autograd import gradcheck

from reality_stone.geometry import conversions as C
from reality_stone.geometry import klein as K
from reality_stone.geometry import lorentz as L
from reality_stone.geometry import poincare as P

F64 = torch.float64


def _pts(seed, n=4, d=3, r=0.8, c=1.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=F64)
    return (v / v.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=F64) * r / c**0.5).requires_grad_()


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_gradcheck_poincare(c):
    x, y, w = _pts(0, c=c), _pts(1, c=c), _pts(2, c=c)
    u = (torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
    m = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    ct = torch.tensor(c, dtype=F64, requires_grad=True)  # gradients flow to the curvature too
    cases = {
        "mobius_add": (lambda x, y, ct: P.mobius_add(x, y, c=ct), (x, y, ct)),
        "mobius_scalar_mul": (lambda x, ct: P.mobius_scalar_mul(0.6, x, c=ct), (x, ct)),
        "mobius_matvec": (lambda m, x, ct: P.mobius_matvec(m, x, c=ct), (m, x, ct)),
        "expmap": (lambda x, u, ct: P.expmap(x, u, c=ct), (x, u, ct)),
        "logmap": (lambda x, y, ct: P.logmap(x, y, c=ct), (x, y, ct)),
        "expmap0": (lambda u, ct: P.expmap0(u, c=ct), (u, ct)),
        "logmap0": (lambda x, ct: P.logmap0(x, c=ct), (x, ct)),
        "dist": (lambda x, y, ct: P.dist(x, y, c=ct), (x, y, ct)),
        "gyration": (lambda x, y, w: P.gyration(x, y, w, c=c), (x, y, w)),
        "parallel_transport": (lambda x, y, u: P.parallel_transport(x, y, u, c=c), (x, y, u)),
        "midpoint": (lambda x: P.weighted_midpoint(x.view(2, 2, 3), c=c), (x,)),
        "klein_dist": (lambda x, y: K.dist(x, y, c=c), (x, y)),
        "to_lorentz": (lambda x: C.poincare_to_lorentz(x, c=c), (x,)),
        "to_klein": (lambda x: C.poincare_to_klein(x, c=c), (x,)),
    }
    for name, (fn, args) in cases.items():
        assert gradcheck(fn, args, eps=1e-6, atol=1e-5), name


def test_gradcheck_lorentz():
    c = 0.7
    x = L.random_point(4, 4, c=c, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    y = L.random_point(4, 4, c=c, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    u = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(2)) * 0.5
    u[:, 0] = 0
    u.requires_grad_()
    assert gradcheck(lambda x, y: L.dist(x, y, c=c, check=False), (x, y))
    assert gradcheck(lambda u: L.expmap0(u, c=c), (u,))
    assert gradcheck(lambda y: L.logmap0(y, c=c, check=False), (y,))
    assert gradcheck(lambda x, y: L.logmap(x, y, c=c, check=False), (x, y))
    assert gradcheck(lambda x: C.lorentz_to_poincare(x, c=c, check=False), (x,))


def test_gradients_finite_at_origin_and_equal_points():
    for dtype in (torch.float32, F64):
        z = torch.zeros(3, 5, dtype=dtype, requires_grad=True)
        x = (torch.full((3, 5), 0.1, dtype=dtype)).requires_grad_()
        outs = [
            P.expmap0(z, c=1.0).sum(),
            P.logmap0(z, c=1.0).sum(),
            P.dist0(z, c=1.0).sum(),
            P.dist(x, x, c=1.0).sum(),
            P.mobius_add(z, z, c=1.0).sum(),
            P.mobius_matvec(torch.eye(5, dtype=dtype), z, c=1.0).sum(),
            L.dist(C.poincare_to_lorentz(x, c=1.0), C.poincare_to_lorentz(x, c=1.0), c=1.0).sum(),
            L.logmap0(C.poincare_to_lorentz(z, c=1.0), c=1.0).sum(),
        ]
        for i, out in enumerate(outs):
            gz, gx = torch.autograd.grad(out, (z, x), allow_unused=True)
            for g in (gz, gx):
                assert g is None or torch.isfinite(g).all(), (dtype, i)
            assert torch.isfinite(out), (dtype, i)


@pytest.mark.parametrize("c", [1e-3, 1.0, 10.0])
def test_million_float32_points_origin_to_boundary(c):
    n, d = 1_000_000, 4
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(n, d, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    # radii: exact zeros, then log-spaced up to 1 - 1e-7 (in units of 1/sqrt(c))
    t = torch.cat([torch.zeros(1000), torch.logspace(-30, 0, n - 1000)])
    r = torch.minimum(t, torch.tensor(1 - 1e-7))
    x = (direction * r[:, None] / c**0.5).requires_grad_()
    y = x.detach().flip(0).requires_grad_()
    u = (direction * 3.0).requires_grad_()
    m = torch.randn(d, d, generator=g)
    results = {
        "expmap0": P.expmap0(u * r[:, None] * 10, c=c),
        "logmap0": P.logmap0(x, c=c),
        "dist": P.dist(x, y, c=c),
        "mobius_add": P.mobius_add(x, y, c=c),
        "matvec": P.mobius_matvec(m, x, c=c),
        "expmap": P.expmap(x, u, c=c),
        "logmap": P.logmap(x, y, c=c),
        "transport": P.parallel_transport(x, y, u, c=c),
        "to_lorentz": C.poincare_to_lorentz(x, c=c),
        "to_klein": C.poincare_to_klein(x, c=c),
    }
    for name, out in results.items():
        assert torch.isfinite(out).all(), f"{name}: non-finite values"
        gx, gy, gu = torch.autograd.grad(out.sum(), (x, y, u), allow_unused=True)
        for g_ in (gx, gy, gu):
            assert g_ is None or torch.isfinite(g_).all(), f"{name}: non-finite gradient"
