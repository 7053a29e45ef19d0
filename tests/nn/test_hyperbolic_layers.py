"""Hyperbolic layers: on-manifold outputs, identities, gradients, dtypes, compile, state_dict, errors."""

import pytest
import torch

from reality_stone.geometry import PoincareBall, conversions, lorentz, poincare
from reality_stone.nn import FromPoincare, HyperbolicMLR, HyperButterfly, LorentzLinear, MobiusLinear, ToPoincare

F64 = torch.float64


def _points(n=5, d=6, dtype=F64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return poincare.expmap0(torch.randn(n, d, generator=g, dtype=dtype) * scale, c=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_outputs_stay_on_the_manifold(dtype, c):
    x = poincare.expmap0(torch.randn(64, 12, dtype=dtype) * 3, c=c)  # far out, near the boundary
    for layer in (MobiusLinear(12, 7, c=c, dtype=dtype), HyperButterfly(12, c=c, dtype=dtype, activation="tanh")):
        y = layer(x)
        assert torch.isfinite(y).all()
        poincare.check_point(y, c=c)
    hb = HyperButterfly(12, c=c, dtype=dtype, model="lorentz")
    y = hb(conversions.poincare_to_lorentz(x, c=c))
    lorentz.check_point(y, c=c)
    ll = LorentzLinear(12, 5, c=c, dtype=dtype)
    lorentz.check_point(ll(conversions.poincare_to_lorentz(x, c=c)), c=c)


def test_hyperbutterfly_with_identity_factors_is_the_identity():
    hb = HyperButterfly(12, bias=False, dtype=F64)
    with torch.no_grad():
        hb.butterfly.twiddle.copy_(torch.eye(2, dtype=F64))
    x = _points(d=12, scale=2.0)
    torch.testing.assert_close(hb(x), x, rtol=1e-12, atol=1e-12)
    hl = HyperButterfly(12, bias=False, dtype=F64, model="lorentz")
    with torch.no_grad():
        hl.butterfly.twiddle.copy_(torch.eye(2, dtype=F64))
    xl = conversions.poincare_to_lorentz(x, c=1.0)
    torch.testing.assert_close(hl(xl), xl, rtol=1e-8, atol=1e-10)  # coordinates ~1e3 near the boundary


def test_to_and_from_poincare_are_inverse_and_share_a_ball():
    ball = PoincareBall(2.0, learn_c=True)
    to, back = ToPoincare(ball=ball), FromPoincare(ball=ball)
    v = torch.randn(10, 4, dtype=F64)
    torch.testing.assert_close(back(to(v)), v, rtol=1e-10, atol=1e-10)
    assert to.ball is back.ball


def test_mobius_linear_matches_the_formula():
    layer = MobiusLinear(6, 4, dtype=F64)
    with torch.no_grad():
        layer.bias.bias.copy_(torch.randn(4, dtype=F64) * 0.3)
    x = _points()
    expected = poincare.mobius_add(poincare.mobius_matvec(layer.weight, x, c=1.0),
                                   poincare.expmap0(layer.bias.bias, c=1.0), c=1.0)
    torch.testing.assert_close(layer(x), expected)


def test_mlr_logit_is_signed_scaled_distance_to_the_gyroplane():
    # With p = 0 the gyroplane is the hyperplane through the origin ⟂ a, and the logit
    # equals ‖a‖ λ_0 / √c · asinh(...) = 2‖a‖ · d_c(x, H)·sign, d from the closed form.
    c = 1.0
    mlr = HyperbolicMLR(3, 2, c=c, dtype=F64)
    with torch.no_grad():
        mlr.a.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0]], dtype=F64))
    x = torch.tensor([[0.3, -0.2, 0.1]], dtype=F64)
    logits = mlr(x)
    # distance from x to {x_0 = 0}: asinh(2|x_0| / (1 − ‖x‖²)) (Ganea et al. 2018, Thm 5)
    d0 = torch.asinh(2 * 0.3 / (1 - x.pow(2).sum()))
    torch.testing.assert_close(logits[0, 0], 2 * 1.0 * d0)
    d1 = torch.asinh(2 * -0.2 / (1 - x.pow(2).sum()))
    torch.testing.assert_close(logits[0, 1], 2 * 2.0 * d1)


def test_gradcheck_every_layer_float64():
    x = _points(4, 6).requires_grad_()
    layers = [MobiusLinear(6, 3, dtype=F64), HyperButterfly(6, dtype=F64, activation="tanh"),
              HyperbolicMLR(6, 3, dtype=F64), ToPoincare(dtype=F64), FromPoincare(dtype=F64)]
    for layer in layers:
        assert torch.autograd.gradcheck(layer, (x,)), layer
    # hyperboloid inputs: perturb in the ball and map (a finite-difference step would leave the hyperboloid)
    for layer in (LorentzLinear(6, 3, dtype=F64), HyperButterfly(6, dtype=F64, model="lorentz")):
        assert torch.autograd.gradcheck(lambda p: layer(conversions.poincare_to_lorentz(p, c=1.0)), (x,)), layer


def test_learnable_curvature_gets_gradients_everywhere():
    x = _points(8, 6, dtype=torch.float32)
    for layer in (MobiusLinear(6, 3, learn_c=True), HyperButterfly(6), HyperbolicMLR(6, 3, learn_c=True)):
        layer(x).pow(2).sum().backward()
        g = layer.ball.log_c.grad
        assert g is not None and torch.isfinite(g), layer


def test_finite_gradients_at_origin_and_near_boundary():
    for x in (torch.zeros(3, 6), poincare.expmap0(torch.full((3, 6), 20.0), c=1.0)):
        x = x.clone().requires_grad_()
        for layer in (MobiusLinear(6, 3), HyperButterfly(6, activation="relu"), HyperbolicMLR(6, 3)):
            layer(x).sum().backward()
            assert torch.isfinite(x.grad).all(), layer
            x.grad = None


def test_state_dict_round_trip_and_compile():
    x = _points(4, 6, dtype=torch.float32)
    for make in (lambda: MobiusLinear(6, 3, learn_c=True), lambda: HyperButterfly(6, activation="tanh"),
                 lambda: HyperbolicMLR(6, 3)):
        a, b = make(), make()
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x))
        torch.testing.assert_close(torch.compile(a, backend="eager")(x), a(x))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="features"):
        MobiusLinear(6, 3)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="ball|outside"):
        MobiusLinear(6, 3)(torch.full((2, 6), 0.9))  # ‖x‖ > 1
    with pytest.raises(ValueError):
        HyperbolicMLR(6, 3)(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="activation"):
        HyperButterfly(6, activation="swish")
    with pytest.raises(ValueError, match="model"):
        HyperButterfly(6, model="klein")
    with pytest.raises(ValueError, match="curvature"):
        MobiusLinear(6, 3, c=0.0)
    with pytest.raises(ValueError, match="features"):
        LorentzLinear(6, 3)(torch.zeros(2, 6))
