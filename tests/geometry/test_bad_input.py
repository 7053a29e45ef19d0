"""Bad input gets a ValueError naming the argument; NaN is never turned into a number."""

import math

import pytest
import torch

from reality_stone.geometry import Klein, Lorentz, PoincareBall
from reality_stone.geometry import conversions as C
from reality_stone.geometry import lorentz as L
from reality_stone.geometry import poincare as P

x = torch.tensor([[0.1, 0.2], [0.3, -0.1]], dtype=torch.float64)


@pytest.mark.parametrize("c", [0.0, -1.0, math.nan, math.inf, torch.tensor(-2.0), torch.tensor([1.0, 0.0])])
def test_bad_curvature(c):
    with pytest.raises(ValueError, match="curvature c must be positive"):
        P.mobius_add(x, x, c=c)
    with pytest.raises(ValueError, match="curvature"):
        L.dist(C.poincare_to_lorentz(x, c=1.0), C.poincare_to_lorentz(x, c=1.0), c=c)


@pytest.mark.parametrize("cls", [PoincareBall, Lorentz, Klein])
@pytest.mark.parametrize("c", [0.0, -3.0, math.nan, math.inf])
def test_manifold_rejects_bad_curvature(cls, c):
    with pytest.raises(ValueError, match="curvature"):
        cls(c)


def test_points_outside_ball():
    out = torch.tensor([[0.9, 0.9]], dtype=torch.float64)
    with pytest.raises(ValueError, match="y has points outside the Poincaré ball"):
        P.mobius_add(x[:1], out, c=1.0)
    with pytest.raises(ValueError, match="outside"):
        P.dist(out, out, c=1.0)
    # with check=False the caller takes responsibility: no exception, no validation pass
    P.dist(out * 0.5, out * 0.5, c=1.0, check=False)
    # curvature matters: inside for c = 1, outside for c = 4
    with pytest.raises(ValueError, match="outside"):
        P.logmap0(torch.tensor([[0.6, 0.0]]), c=4.0)


def test_points_off_hyperboloid():
    bad = torch.tensor([[1.0, 0.5, 0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="off the hyperboloid"):
        L.logmap0(bad, c=1.0)
    lower = torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="lower sheet"):
        L.dist(lower, lower, c=1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs(bad):
    y = x.clone()
    y[1, 0] = bad
    with pytest.raises(ValueError, match="y contains non-finite"):
        P.mobius_add(x, y, c=1.0)
    with pytest.raises(ValueError, match="u contains non-finite"):
        P.expmap(x, y, c=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        P.mobius_matvec(torch.tensor([[bad, 0.0]], dtype=torch.float64), x, c=1.0)


def test_nan_propagates_without_check():
    y = x.clone()
    y[1, 0] = math.nan
    out = P.mobius_add(x, y, c=1.0, check=False)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(P.project(y, c=1.0)[1, 0])


def test_shape_mismatches():
    with pytest.raises(ValueError, match="vector dimensions differ"):
        P.mobius_add(x, torch.zeros(2, 3, dtype=torch.float64), c=1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        P.dist(x, torch.zeros(3, 2, dtype=torch.float64), c=1.0)
    with pytest.raises(ValueError, match="columns"):
        P.mobius_matvec(torch.eye(3, dtype=torch.float64), x, c=1.0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        P.expmap0(torch.tensor(0.5), c=1.0)
    with pytest.raises(ValueError, match="floating-point"):
        P.expmap0(torch.tensor([[1, 2]]), c=1.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        P.weighted_midpoint(x.view(1, 2, 2), torch.ones(3, dtype=torch.float64), c=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        P.weighted_midpoint(x.view(1, 2, 2), torch.tensor([[1.0, -2.0]], dtype=torch.float64), c=1.0)
    with pytest.raises(ValueError, match="at least 2 coordinates"):
        L.logmap0(torch.ones(3, 1, dtype=torch.float64), c=1.0)


def test_manifold_methods_forward_to_their_model_or_say_it_has_none():
    """The base class forwards the shared maps to each model's stateless module; Klein has no maps."""
    x = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    ball, hyp = PoincareBall(c=0.7), Lorentz(c=0.7)
    assert torch.equal(ball.expmap0(x), P.expmap0(x, c=0.7))
    assert torch.equal(ball.dist0(x, keepdim=True), P.dist0(x, c=0.7, keepdim=True))
    y = L.random_point(3, 3, c=0.7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hyp.logmap0(y), L.logmap0(y, c=0.7))
    with pytest.raises(NotImplementedError, match="Klein has no expmap0"):
        Klein(c=0.7).expmap0(x)
    with pytest.raises(ValueError, match="vector dimension"):
        L.random_point(3, 1, c=1.0)
