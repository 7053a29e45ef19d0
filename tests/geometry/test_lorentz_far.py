"""Far from the origin (√c·d ≈ 24, x₀ ~ 1e10) the hyperboloid's float64 arithmetic cancels terms of
size x₀²; expmap's tangent norm and parallel transport must not (they turned an embedding's rows
into NaN). The embedding trainer also bounds the radius."""

import math

import torch

from reality_stone.geometry import lorentz
from reality_stone.geometry.lorentz import _expmap, _parallel_transport, _tangent_norm_at
from reality_stone.hierarchy import LORENTZ_MAX_RADIUS, _bound_radius

F64 = torch.float64


def _far_points(s: float, c: float = 1.0):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(8, 5, dtype=F64, generator=g)
    d /= d.norm(dim=-1, keepdim=True)
    return lorentz.expmap0(torch.cat([torch.zeros(8, 1, dtype=F64), d * s / math.sqrt(c)], 1), c=c)


def test_tangent_norm_at_far_points_has_no_cancellation():
    c = torch.tensor(1.0, dtype=F64)
    for s in (2.0, 10.0, 24.0):
        x = _far_points(s)
        # a tangent of known length at x: transport one from the origin along the geodesic
        o = lorentz.expmap0(torch.zeros(8, 6, dtype=F64), c=1.0)
        v = torch.zeros(8, 6, dtype=F64)
        v[:, 2] = 0.05  # length 0.05 at the origin
        v_far = _parallel_transport(o, x, v, c)
        # (the direct ‖u_s‖² − u₀² is off by orders of magnitude at s = 24)
        torch.testing.assert_close(_tangent_norm_at(x, v_far, c).squeeze(-1), torch.full((8,), 0.05, dtype=F64),
                                   rtol=1e-4, atol=0)
        y = _expmap(x, -v_far, c)
        assert bool(torch.isfinite(y).all())
        if s <= 10:  # farther out, dist between two close points cancels too (why the trainer bounds radii)
            torch.testing.assert_close(lorentz.dist(x, y, c=1.0, check=False), torch.full((8,), 0.05, dtype=F64),
                                       rtol=1e-4, atol=0)


def test_trainer_bounds_the_lorentz_radius():
    x = lorentz.expmap0(torch.tensor([[0.0, 30.0, 0.0], [0.0, 3.0, 4.0]], dtype=F64), c=1.0)
    w = torch.nn.Parameter(x.clone())
    _bound_radius(w, 1.0)
    d0 = lorentz.dist0(w.detach(), c=1.0)
    torch.testing.assert_close(d0, torch.tensor([LORENTZ_MAX_RADIUS, 5.0], dtype=F64), rtol=1e-9, atol=0)
    lorentz.check_point(w.detach(), c=1.0)
