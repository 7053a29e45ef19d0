"""Spline / geodesic-spline / height-field layers: interpolation, limits, fits, gradients, errors."""

import pytest
import torch

from reality_stone.geometry import poincare
from reality_stone.nn import GeodesicSplineLinear, HeightFieldLinear, SplineLinear, catmull_rom_matrix

F64 = torch.float64


def test_spline_rows_pass_through_the_control_points():
    m, k = 13, 4  # t_i = i·k/(m−1) = i/3: rows 0, 3, 6, 9, 12 sit on the control points
    layer = SplineLinear(7, m, k, dtype=F64)
    W = layer.weight
    for j in range(k + 1):
        torch.testing.assert_close(W[3 * j], layer.control[j], rtol=1e-14, atol=1e-14)
    M = catmull_rom_matrix(m, k)
    torch.testing.assert_close(M.sum(1), torch.ones(m, dtype=F64))  # affine combinations
    # on interior segments (both neighbours real) Catmull–Rom reproduces a straight line exactly;
    # the end segments reuse the end point as the missing neighbour, which bends them
    P = torch.linspace(0, 1, k + 1, dtype=F64)[:, None] * torch.ones(1, 3, dtype=F64)
    line = (M @ P)[:, 0]
    torch.testing.assert_close(line[3:10], torch.linspace(0, 1, m, dtype=F64)[3:10], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(line[1], torch.tensor(1 / 12, dtype=F64))


def test_spline_forward_never_needs_w_but_equals_it():
    layer = SplineLinear(20, 30, 5, dtype=F64)
    x = torch.randn(4, 20, dtype=F64)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)
    assert layer.parameter_ratio() == pytest.approx(6 / 30)


def test_spline_from_dense_is_exact_on_splines_and_reports_error_otherwise():
    target = SplineLinear(16, 40, 7, bias=False, dtype=F64)
    fitted, err = SplineLinear.from_dense(target.weight.detach(), 7)
    assert err < 1e-12
    _, err_random = SplineLinear.from_dense(torch.randn(40, 16, dtype=F64), 7)
    assert 0.5 < err_random < 1.0


@pytest.mark.parametrize("seed", range(6))
def test_geodesic_spline_stays_on_the_ball_and_hits_control_points(seed):
    layer = GeodesicSplineLinear(6, 9, 4, c=2.0, dtype=F64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        layer.tangent.mul_(5)  # control points at ‖P‖√c ≈ 0.9999 (exp/log lose digits much closer in)
    W = layer.weight
    poincare.check_point(W, c=2.0)
    t = torch.arange(9) * 4 / 8  # rows 0, 2, 4, 6, 8 are the control points
    P = layer.control
    # exp/log round trips lose digits as 1/(1 − ‖P‖√c): the bound follows the conditioning
    # (measured over 40 seeds: error · (1 − r) ≤ 2e-12)
    rim = 1 - float(P.detach().norm(dim=-1).max()) * 2.0**0.5
    for i in range(0, 9, 2):
        torch.testing.assert_close(W[i], P[int(t[i])], rtol=0, atol=1e-11 / rim)


def test_geodesic_spline_reduces_to_euclidean_as_c_goes_to_zero():
    for c, tol in ((1e-4, 1e-3), (1e-8, 1e-7)):
        geo = GeodesicSplineLinear(5, 11, 3, c=c, learn_c=False, dtype=F64)
        eu = SplineLinear(5, 11, 3, dtype=F64)
        with torch.no_grad():
            eu.control.copy_(geo.control)
        torch.testing.assert_close(geo.weight, eu.weight, rtol=tol, atol=tol)


def test_geodesic_from_dense_and_heightfield_from_dense():
    W = SplineLinear(6, 12, 3, bias=False, dtype=F64).weight.detach() * 0.5
    _, err = GeodesicSplineLinear.from_dense(W, 3, steps=300)
    assert err < 0.05
    hf, err_h = HeightFieldLinear.from_dense(torch.randn(50, 8, dtype=F64), steps=300)
    assert 0 < err_h < 0.5  # u exact, only the last column is regressed
    torch.testing.assert_close(hf.weight[:, :-1], hf.u)


def test_gradcheck_float64():
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    for layer in (SplineLinear(5, 7, 2, dtype=F64), GeodesicSplineLinear(5, 7, 2, dtype=F64),
                  HeightFieldLinear(5, 7, hidden=4, dtype=F64)):
        assert torch.autograd.gradcheck(layer, (x,)), layer
        params = [p for p in layer.parameters()]
        assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(
            layer, dict(zip([n for n, _ in layer.named_parameters()], ps)), (x.detach(),)), tuple(
            p.detach().clone().requires_grad_() for p in params)), layer


def test_float32_state_dict_and_compile():
    x = torch.randn(4, 10)
    for make in (lambda: SplineLinear(10, 8, 3), lambda: GeodesicSplineLinear(10, 8, 3),
                 lambda: HeightFieldLinear(10, 8)):
        a, b = make(), make()
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x))
        torch.testing.assert_close(torch.compile(a, backend="eager")(x), a(x))
        assert "parameter_ratio" in repr(a)


def test_bad_k_and_input_are_rejected():
    with pytest.raises(ValueError, match="k must be < out_features"):
        SplineLinear(4, 5, 5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        SplineLinear(4, 5, 0)
    with pytest.raises(ValueError, match="k must be"):
        GeodesicSplineLinear(4, 5, 7)
    with pytest.raises(ValueError, match="in_features"):
        HeightFieldLinear(1, 5)
    with pytest.raises(ValueError, match="features"):
        SplineLinear(4, 6, 2)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="finite"):
        SplineLinear.from_dense(torch.full((6, 4), float("inf")), 2)
