"""Identities of the three models as float64 property tests (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reality_stone.geometry import conversions as C
from reality_stone.geometry import klein as K
from reality_stone.geometry import lorentz as L
from reality_stone.geometry import poincare as P

F64 = torch.float64

curvatures = st.sampled_from([1e-3, 0.3, 1.0, 4.0, 10.0])
seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 9)


def ball(seed, n, d, c, max_r=0.98):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=F64)
    v = v / v.norm(dim=-1, keepdim=True)
    return v * torch.rand(n, 1, generator=g, dtype=F64) * max_r / c**0.5


def tangent(seed, n, d, scale):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n, d, generator=g, dtype=F64) * scale


def close(a, b, tol=1e-9):
    return torch.allclose(a, b, rtol=tol, atol=tol)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_logmap_inverts_expmap(seed, d, c):
    x = ball(seed, 16, d, c, max_r=0.9)
    u = tangent(seed, 16, d, 0.5 / c**0.5) / P.conformal_factor(x, c=c, keepdim=True)
    y = P.expmap(x, u, c=c)
    assert close(P.logmap(x, y, c=c), u, 1e-8)
    assert close(P.logmap0(P.expmap0(u, c=c), c=c), u, 1e-8)
    assert close(P.expmap(x, P.logmap(x, y, c=c), c=c), y, 1e-8)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_left_cancellation(seed, d, c):
    a, b = ball(seed, 16, d, c), ball(seed + 7, 16, d, c)
    assert close(P.mobius_add(-a, P.mobius_add(a, b, c=c), c=c), b, 1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_dist_is_a_metric(seed, d, c):
    x, y, z = ball(seed, 16, d, c), ball(seed + 1, 16, d, c), ball(seed + 2, 16, d, c)
    dxy, dyx = P.dist(x, y, c=c), P.dist(y, x, c=c)
    assert close(dxy, dyx, 1e-9)
    assert (dxy <= P.dist(x, z, c=c) + P.dist(z, y, c=c) + 1e-9).all()
    assert (P.dist(x, x, c=c).abs() < 1e-6 / c**0.5).all()


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_conversions_round_trip_and_preserve_distance(seed, d, c):
    p, q = ball(seed, 16, d, c), ball(seed + 3, 16, d, c)
    lp, lq = C.poincare_to_lorentz(p, c=c), C.poincare_to_lorentz(q, c=c)
    kp, kq = C.poincare_to_klein(p, c=c), C.poincare_to_klein(q, c=c)
    assert close(C.lorentz_to_poincare(lp, c=c), p, 1e-9)
    assert close(C.klein_to_poincare(kp, c=c), p, 1e-9)
    assert close(C.lorentz_to_klein(lp, c=c), kp, 1e-9)
    assert close(C.klein_to_lorentz(kp, c=c), lp, 1e-8)
    assert close(L.inner(lp, lp) * c, torch.full((16,), -1.0, dtype=F64), 1e-8)
    d_p = P.dist(p, q, c=c)
    assert close(L.dist(lp, lq, c=c), d_p, 1e-7)
    assert close(K.dist(kp, kq, c=c), d_p, 1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_parallel_transport_preserves_norm(seed, d, c):
    x, y = ball(seed, 16, d, c), ball(seed + 5, 16, d, c)
    v = tangent(seed, 16, d, 1.0)
    w = P.parallel_transport(x, y, v, c=c)
    assert close(P.inner(y, w, w, c=c), P.inner(x, v, v, c=c), 1e-8)
    lx, ly = C.poincare_to_lorentz(x, c=c), C.poincare_to_lorentz(y, c=c)
    lv = L.proj_tangent(lx, torch.cat([tangent(seed + 9, 16, 1, 1.0), v], -1), c=c)
    lw = L.parallel_transport(lx, ly, lv, c=c)
    assert close(L.inner(lw, lw), L.inner(lv, lv), 1e-7)
    assert close(L.inner(ly, lw), torch.zeros(16, dtype=F64), 1e-7)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_mobius_matvec_identity_and_scalar_mul(seed, d, c):
    x = ball(seed, 16, d, c)
    assert close(P.mobius_matvec(torch.eye(d, dtype=F64), x, c=c), x, 1e-9)
    # r ⊗ x as a matvec with r·I, and (r + s) ⊗ x = (r ⊗ x) ⊕ (s ⊗ x)
    assert close(P.mobius_matvec(0.4 * torch.eye(d, dtype=F64), x, c=c), P.mobius_scalar_mul(0.4, x, c=c), 1e-9)
    lhs = P.mobius_scalar_mul(0.7, x, c=c)
    rhs = P.mobius_add(P.mobius_scalar_mul(0.3, x, c=c), P.mobius_scalar_mul(0.4, x, c=c), c=c)
    assert close(lhs, rhs, 1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_gyration_is_the_gyroassociative_correction(seed, d, c):
    a, b, z = ball(seed, 8, d, c, 0.9), ball(seed + 1, 8, d, c, 0.9), ball(seed + 2, 8, d, c, 0.9)
    # a ⊕ (b ⊕ z) = (a ⊕ b) ⊕ gyr[a, b] z
    lhs = P.mobius_add(a, P.mobius_add(b, z, c=c), c=c)
    rhs = P.mobius_add(P.mobius_add(a, b, c=c), P.gyration(a, b, z, c=c), c=c)
    assert close(lhs, rhs, 1e-7)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_midpoints_agree_across_models(seed, d, c):
    xs = ball(seed, 12, d, c).view(3, 4, d)
    w = torch.rand(3, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    m_p = P.weighted_midpoint(xs, w, c=c)
    m_k = K.einstein_midpoint(C.poincare_to_klein(xs, c=c), w, c=c)
    assert close(C.klein_to_poincare(m_k, c=c), m_p, 1e-8)
    # the midpoint of two points lies halfway along the geodesic
    two = xs[:, :2]
    mid = P.weighted_midpoint(two, c=c)
    assert close(P.dist(two[:, 0], mid, c=c), P.dist(two[:, 1], mid, c=c), 1e-7)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims, c=curvatures)
def test_lorentz_maps_are_inverse(seed, d, c):
    x = L.random_point(16, d + 1, c=c, std=1 / c**0.5, dtype=F64, generator=torch.Generator().manual_seed(seed))
    y = L.random_point(16, d + 1, c=c, std=1 / c**0.5, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    u = L.logmap(x, y, c=c)
    assert close(L.expmap(x, u, c=c), y, 1e-7)
    assert close(L.tangent_norm(u), L.dist(x, y, c=c), 1e-7)
    assert close(L.expmap0(L.logmap0(y, c=c), c=c), y, 1e-8)
