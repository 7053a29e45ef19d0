"""Hyperbolic layers on the Poincaré ball (and the hyperboloid via the exact conversion).

Each layer owns a `PoincareBall` (``c``, learnable with ``learn_c=True``) or shares one passed
as ``ball=``. Formulas: Ganea et al. 2018 ("Hyperbolic Neural Networks": Möbius linear,
Möbius bias, hyperbolic multinomial logistic regression). Points are (..., d) tensors inside
the ball; with ``check=True`` (the manifold's flag) NaN/Inf and points outside raise
``ValueError``. Under ``torch.compile`` the checks are data-dependent and cause graph
breaks (correct results, not one graph); build the layers with ``check=False`` for a
single graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from reality_stone.geometry import Lorentz, PoincareBall, conversions, poincare
from reality_stone.nn.butterfly import ButterflyLinear

__all__ = ["FromPoincare", "HyperButterfly", "HyperbolicMLR", "LorentzLinear", "MobiusLinear", "ToPoincare"]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu}


def _ball(ball: PoincareBall | None, c: float, learn_c: bool, check: bool, dtype) -> PoincareBall:
    if ball is not None:
        if not isinstance(ball, PoincareBall):
            raise ValueError(f"ball must be a PoincareBall, got {type(ball).__name__}")
        return ball
    return PoincareBall(c, learn_c=learn_c, check=check, dtype=dtype or torch.get_default_dtype())


def _check_features(x: Tensor, n: int, layer: nn.Module) -> None:
    if x.shape[-1] != n:
        raise ValueError(f"{type(layer).__name__}: input has {x.shape[-1]} features, {n} expected")


class _BallMap(nn.Module):
    """A parameter-free map between R^d and the ball; holds (or shares) the ball."""

    def __init__(self, c: float = 1.0, *, learn_c: bool = False, check: bool = True, ball: PoincareBall | None = None,
                 dtype=None):
        super().__init__()
        self.ball = _ball(ball, c, learn_c, check, dtype)


class ToPoincare(_BallMap):
    """Euclidean features → ball points: ``expmap0(x)``. Shape (..., d) kept."""

    def forward(self, x: Tensor) -> Tensor:
        return self.ball.expmap0(x)


class FromPoincare(_BallMap):
    """Ball points → Euclidean (tangent-at-origin) features: ``logmap0(x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.ball.logmap0(x)


class _MobiusBias(nn.Module):
    """Möbius bias ``x ⊕ expmap0(b)``; ``b`` lives in the tangent space at the origin (zero init)."""

    def __init__(self, dim: int, dtype):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, x: Tensor, ball: PoincareBall) -> Tensor:
        return ball.mobius_add(x, ball.expmap0(self.bias))


class MobiusLinear(nn.Module):
    """``y = (W ⊗_c x) ⊕_c expmap0(b)`` — Möbius matrix-vector product and Möbius bias.

    ``W`` (out, in) initialised as ``nn.Linear``; ``b`` (out,) zero (tangent space at 0).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, c: float = 1.0,
                 learn_c: bool = False, check: bool = True, ball: PoincareBall | None = None, dtype=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        self.ball = _ball(ball, c, learn_c, check, dtype)
        lin = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = _MobiusBias(out_features, dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, self)
        y = self.ball.mobius_matvec(self.weight, x)
        return y if self.bias is None else self.bias(y, self.ball)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class HyperButterfly(nn.Module):
    """``y = σ_c( exp0(B_L ⋯ B_1 log0(x)) ⊕ exp0(b) )`` on the Poincaré ball of dimension ``dim``.

    B are butterfly factors (`ButterflyLinear`, dim padded to a power of two inside the
    tangent space). ``activation`` (None, "relu", "tanh", "gelu") is applied in the tangent
    space at the origin, σ_c(y) = exp0(act(log0(y))); with the Möbius bias it keeps stacked
    layers from collapsing into one (exp0 ∘ log0 = id). ``model="lorentz"`` takes and returns
    hyperboloid points (..., dim + 1) through the exact Poincaré ↔ Lorentz isometry.
    """

    def __init__(self, dim: int, *, c: float = 1.0, learn_c: bool = True, bias: bool = True,
                 activation: str | None = None, model: str = "poincare", check: bool = True,
                 ball: PoincareBall | None = None, dtype=None, generator=None):
        super().__init__()
        if model not in ("poincare", "lorentz"):
            raise ValueError(f"model must be 'poincare' or 'lorentz', got {model!r}")
        if activation is not None and activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be None or one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        dtype = dtype or torch.get_default_dtype()
        self.dim, self.model, self.activation = dim, model, activation
        self.ball = _ball(ball, c, learn_c, check, dtype)
        self.butterfly = ButterflyLinear(dim, dim, bias=False, dtype=dtype, generator=generator)
        self.bias = _MobiusBias(dim, dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        c = self.ball.c
        if self.model == "lorentz":
            _check_features(x, self.dim + 1, self)
            x = conversions.lorentz_to_poincare(x, c=c, check=self.ball.check)
        else:
            _check_features(x, self.dim, self)
        y = self.ball.expmap0(self.butterfly(self.ball.logmap0(x)))
        if self.bias is not None:
            y = self.bias(y, self.ball)
        if self.activation is not None:
            y = self.ball.expmap0(_ACTIVATIONS[self.activation](self.ball.logmap0(y)))
        if self.model == "lorentz":
            y = conversions.poincare_to_lorentz(y, c=c, check=False)
        return y

    def extra_repr(self) -> str:
        return f"dim={self.dim}, model={self.model}, activation={self.activation}, bias={self.bias is not None}"


class LorentzLinear(nn.Module):
    """Linear map between hyperboloids through the tangent space at the origin:
    ``y = expmap0([0, W log0(x)_s + b])`` — x (..., in + 1) → y (..., out + 1).

    (The tangent-space form used by HGCN, Chami et al. 2019; the hyperboloid's origin is
    (1/√c, 0, …).) ``W`` initialised as ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, c: float = 1.0,
                 learn_c: bool = False, check: bool = True, dtype=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        self.manifold = Lorentz(c, learn_c=learn_c, check=check, dtype=dtype)
        self.linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features + 1, self)
        u = self.manifold.logmap0(x)[..., 1:]
        v = self.linear(u)
        return self.manifold.expmap0(torch.cat([torch.zeros_like(v[..., :1]), v], dim=-1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class HyperbolicMLR(nn.Module):
    """Poincaré multinomial logistic regression (Ganea et al. 2018, eq. 25): one gyroplane per class.

    For class k with offset p_k = expmap0(p'_k) and normal a_k = (1 − c‖p_k‖²) a'_k (the
    origin's tangent vector transported to p_k), z = (−p_k) ⊕ x and

        logit_k(x) = λ_{p_k} ‖a_k‖ / √c · asinh( 2√c ⟨z, a_k⟩ / ((1 − c‖z‖²) ‖a_k‖) ),

    the signed hyperbolic distance to the gyroplane scaled by ‖a_k‖λ. x (..., d) → (..., K).
    """

    def __init__(self, in_features: int, n_classes: int, *, c: float = 1.0, learn_c: bool = False, check: bool = True,
                 ball: PoincareBall | None = None, dtype=None, generator=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.n_classes = in_features, n_classes
        self.ball = _ball(ball, c, learn_c, check, dtype)
        bound = 1 / math.sqrt(in_features)
        self.p = nn.Parameter(torch.zeros(n_classes, in_features, dtype=dtype))
        self.a = nn.Parameter((torch.rand(n_classes, in_features, generator=generator, dtype=torch.float64) * 2 - 1)
                              .mul(bound).to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, self)
        if self.ball.check:
            self.ball.check_point(x)
        c = self.ball.c.to(x.dtype)
        sc = c.sqrt()
        p = self.ball.expmap0(self.p)  # (K, d)
        p2 = p.pow(2).sum(-1)
        a = self.a * (1 - c * p2)[:, None]
        a_norm = a.norm(dim=-1).clamp_min(1e-15)
        z = poincare.mobius_add(-p, x[..., None, :], c=c, check=False)  # (..., K, d)
        z2 = z.pow(2).sum(-1)
        za = (z * a).sum(-1)
        lam = 2 / (1 - c * p2)
        return lam * a_norm / sc * torch.asinh(2 * sc * za / ((1 - c * z2).clamp_min(1e-15) * a_norm))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_classes={self.n_classes}"
