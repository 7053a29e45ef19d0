"""Agreement with geoopt (an independent implementation) on float64 random inputs, ≤ 1e-9 relative."""

import geoopt
import pytest
import torch
from geoopt.manifolds.lorentz import math as glm
from geoopt.manifolds.stereographic import math as gsm

from reality_stone.geometry import lorentz as L
from reality_stone.geometry import poincare as P

RTOL = 1e-9
CURVATURES = [1e-3, 0.7, 1.0, 10.0]


def assert_rel(ours, ref):
    scale = ref.abs().max().clamp_min(1e-300)
    err = (ours - ref).abs().max() / scale
    assert err <= RTOL, f"relative error {float(err):.3g} > {RTOL}"


def ball_points(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    # radii spread over the ball, kept 1e-3 from the boundary so both libraries stay exact
    direction = torch.randn(n, d, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.999
    return direction * radius / c**0.5


@pytest.fixture(params=CURVATURES)
def c(request):
    return request.param


def test_poincare_ops_match_geoopt(c):
    k = torch.tensor(-c, dtype=torch.float64)
    x, y, w = (ball_points(64, 7, c, s) for s in (1, 2, 3))
    g = torch.Generator().manual_seed(4)
    u = torch.randn(64, 7, generator=g, dtype=torch.float64) * 0.3 / c**0.5
    m = torch.randn(5, 7, generator=g, dtype=torch.float64)

    assert_rel(P.mobius_add(x, y, c=c), gsm.mobius_add(x, y, k=k))
    assert_rel(P.mobius_scalar_mul(0.37, x, c=c), gsm.mobius_scalar_mul(torch.tensor(0.37, dtype=torch.float64), x, k=k))
    assert_rel(P.mobius_matvec(m, x, c=c), gsm.mobius_matvec(m, x, k=k))
    assert_rel(P.expmap(x, u, c=c), gsm.expmap(x, u, k=k))
    assert_rel(P.expmap0(u, c=c), gsm.expmap0(u, k=k))
    assert_rel(P.logmap(x, y, c=c), gsm.logmap(x, y, k=k))
    assert_rel(P.logmap0(y, c=c), gsm.logmap0(y, k=k))
    assert_rel(P.dist(x, y, c=c), gsm.dist(x, y, k=k))
    assert_rel(P.dist0(x, c=c), gsm.dist0(x, k=k))
    assert_rel(P.gyration(x, y, w, c=c), gsm.gyration(x, y, w, k=k))
    assert_rel(P.parallel_transport(x, y, u, c=c), gsm.parallel_transport(x, y, u, k=k))
    assert_rel(P.egrad2rgrad(x, u, c=c), gsm.egrad2rgrad(x, u, k=k))
    assert_rel(P.conformal_factor(x, c=c), gsm.lambda_x(x, k=k))
    assert_rel(P.inner(x, u, w, c=c, keepdim=True), gsm.inner(x, u, w, k=k, keepdim=True))
    xs = x.view(8, 8, 7)
    weights = torch.rand(8, 8, generator=g, dtype=torch.float64)
    assert_rel(
        P.weighted_midpoint(xs, weights, c=c), gsm.weighted_midpoint(xs, weights, k=k, reducedim=[-2])
    )


def test_poincare_class_matches_geoopt_class(c):
    ours = P.PoincareBall(c)
    theirs = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
    x, y = ball_points(16, 3, c, 5), ball_points(16, 3, c, 6)
    assert_rel(ours.dist(x, y), theirs.dist(x, y))
    assert_rel(ours.logmap(x, y), theirs.logmap(x, y))


def lorentz_points(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    return L.random_point(n, d + 1, c=c, std=1.0 / c**0.5, dtype=torch.float64, generator=g)


def test_lorentz_ops_match_geoopt(c):
    k = torch.tensor(1.0 / c, dtype=torch.float64)  # geoopt's Lorentz(k) has <x,x>_L = -k
    x, y = lorentz_points(64, 6, c, 1), lorentz_points(64, 6, c, 2)
    g = torch.Generator().manual_seed(3)
    v = L.proj_tangent(x, torch.randn(64, 7, generator=g, dtype=torch.float64) / c**0.5, c=c)
    u0 = torch.randn(64, 7, generator=g, dtype=torch.float64) / c**0.5
    u0[:, 0] = 0  # tangent at the origin

    assert_rel(L.inner(v, v), glm.inner(v, v))
    assert_rel(L.dist(x, y, c=c), glm.dist(x, y, k=k))
    assert_rel(L.dist0(x, c=c), glm.dist0(x, k=k))
    assert_rel(L.expmap(x, v, c=c), glm.expmap(x, v, k=k))
    assert_rel(L.logmap(x, y, c=c), glm.logmap(x, y, k=k))
    assert_rel(L.expmap0(u0, c=c), glm.expmap0(u0, k=k))
    assert_rel(L.logmap0(y, c=c), glm.logmap0(y, k=k))
    assert_rel(L.parallel_transport(x, y, v, c=c), glm.parallel_transport(x, y, v, k=k))
    assert_rel(L.egrad2rgrad(x, v, c=c), glm.egrad2rgrad(x, v.clone(), k=k))
    assert_rel(L.project(x, c=c), glm.project(x, k=k))
