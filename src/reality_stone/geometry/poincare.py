"""Poincaré ball model of hyperbolic space with curvature -c (c > 0).

The ball is ``{x ∈ R^d : c‖x‖² < 1}``. Functions are stateless, batched over leading
dims (points and tangent vectors have shape ``(..., d)``, scalar outputs ``(...)`` unless
``keepdim=True``), take the curvature magnitude ``c`` keyword-only (a float or a tensor,
possibly requiring grad) and, with ``check=True`` (the default), reject NaN/Inf inputs
and points outside the ball with a ``ValueError``. Formulas follow Ganea et al. 2018
("Hyperbolic Neural Networks") and Ungar's gyrovector calculus; the exp/log convention is
geoopt's: ``expmap0(v) = tanh(√c‖v‖) v / (√c‖v‖)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.geometry.manifold import Manifold
from reality_stone.geometry.stable import MIN_NORM, artanh, artanh_ratio, dot, norm, sq_norm, squeeze_last, tanh_ratio
from reality_stone.geometry.validation import (
    as_curvature,
    boundary_eps,
    check_finite,
    midpoint_weights,
    check_same_last_dim,
    check_vector,
    normal_tangent,
)

__all__ = [
    "PoincareBall",
    "check_point",
    "conformal_factor",
    "dist",
    "dist0",
    "egrad2rgrad",
    "expmap",
    "expmap0",
    "gyration",
    "inner",
    "logmap",
    "logmap0",
    "mobius_add",
    "mobius_matvec",
    "mobius_scalar_mul",
    "parallel_transport",
    "project",
    "random_point",
    "random_tangent",
    "weighted_midpoint",
]


# --------------------------------------------------------------------------- validation


def _prep(c, check: bool, points: dict[str, Tensor], vectors: dict[str, Tensor] | None = None) -> Tensor:
    """Validate shapes (always), finiteness and ball membership (if ``check``); return c as a tensor."""
    tensors = {**points, **(vectors or {})}
    check_same_last_dim(**tensors)
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        desc = ", ".join(f"{n}{tuple(t.shape)}" for n, t in tensors.items())
        raise ValueError(f"batch shapes do not broadcast: {desc}") from None
    first = next(iter(tensors.values()))
    c_t = as_curvature(c, first)
    if check:
        # A point's ‖x‖² is NaN/Inf whenever x is, so the ball check covers finiteness too.
        for name, t in points.items():
            _check_in_ball(name, t, c_t)
        for name, t in (vectors or {}).items():
            check_finite(name, t)
    return c_t


def _check_in_ball(name: str, x: Tensor, c: Tensor, x_norm: Tensor | None = None) -> None:
    """``x_norm``: ‖x‖ (..., 1) when the op computes it anyway, saving the check its own pass."""
    r2 = (c * (sq_norm(x.detach()) if x_norm is None else x_norm.detach().square())).detach()
    if not bool(torch.isfinite(r2).all()):
        check_finite(name, x)  # reports NaN/Inf counts (r2 can also overflow for huge finite x)
    if bool((r2 >= 1).any()):
        worst = float(r2.max().sqrt())
        raise ValueError(
            f"{name} has points outside the Poincaré ball: sqrt(c)·‖{name}‖ reaches {worst:.6g} (must be < 1)"
        )


def check_point(x: Tensor, *, c: float | Tensor) -> None:
    """Raise ``ValueError`` unless every row of ``x`` is a finite point of the ball."""
    _prep(c, True, {"x": x})


# --------------------------------------------------------------------------- core formulas
# Underscored functions take a validated curvature tensor and do no checks; the public
# wrappers below validate once and call them, so composite operations never re-validate.


def _project_scale(out_norm: Tensor, c: Tensor, eps: float | None, dtype: torch.dtype) -> Tensor:
    """Factor (..., 1) that pulls a vector of norm ``out_norm`` back inside the margin (1 if inside).

    Computing the factor on the (..., 1) norms lets callers that know their output's norm
    analytically fold projection into the one full-size multiply they do anyway.
    """
    eps = boundary_eps(dtype) if eps is None else eps
    maxnorm = (1 - eps) / c.sqrt()
    # NaN > maxnorm is False, so a NaN norm keeps factor 1 and the NaN stays in the output.
    return torch.where(out_norm > maxnorm, maxnorm / out_norm.clamp_min(MIN_NORM), torch.ones_like(out_norm))


def _project(x: Tensor, c: Tensor, eps: float | None = None) -> Tensor:
    return x * _project_scale(norm(x), c, eps, x.dtype)


def _lambda(x: Tensor, c: Tensor) -> Tensor:
    return 2 / (1 - c * sq_norm(x)).clamp_min(MIN_NORM)


def _mobius_add_coeffs(x2: Tensor, y2: Tensor, xy: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """x ⊕ y = α x + β y; returns (α, β), each (..., 1), from ‖x‖², ‖y‖², ⟨x, y⟩."""
    den = (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(MIN_NORM)
    return (1 + 2 * c * xy + c * y2) / den, (1 - c * x2) / den


def _mobius_add(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    alpha, beta = _mobius_add_coeffs(sq_norm(x), sq_norm(y), dot(x, y), c)
    return torch.addcmul(alpha * x, beta, y)


def _mobius_add_projected(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    x2, y2, xy = sq_norm(x), sq_norm(y), dot(x, y)
    alpha, beta = _mobius_add_coeffs(x2, y2, xy, c)
    # ‖αx + βy‖ from the (..., 1) statistics: exact where projection matters (near the
    # boundary the norm is large and nothing cancels), so no second pass over the output.
    out_norm = (alpha * alpha * x2 + 2 * alpha * beta * xy + beta * beta * y2).clamp_min(MIN_NORM**2).sqrt()
    s = _project_scale(out_norm, c, None, x.dtype)
    return torch.addcmul((alpha * s) * x, beta * s, y)


def _mobius_scalar_mul(r, x: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    n = norm(x)
    return torch.tanh(r * artanh(sc * n)) * x / (sc * n)


def _expmap0(u: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    return tanh_ratio(sc * norm(u)) * u


def _expmap(x: Tensor, u: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    un = norm(u)
    second = torch.tanh(sc * _lambda(x, c) * un / 2) * u / (sc * un)
    return _mobius_add(x, second, c)


def _logmap(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    sub = _mobius_add(-x, y, c)
    sn = norm(sub)
    return 2 / (sc * _lambda(x, c)) * artanh(sc * sn) * sub / sn


def _dist(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    return 2 / sc * artanh(sc * norm(_mobius_add(-x, y, c)))


def _gyration(u: Tensor, v: Tensor, w: Tensor, c: Tensor) -> Tensor:
    # gyr[u, v] w = ⊖(u ⊕ v) ⊕ (u ⊕ (v ⊕ w)), in the closed form of Ungar (2008), eq. 1.46
    # with curvature -c (geoopt's k = -c).
    u2, v2 = sq_norm(u), sq_norm(v)
    uv, uw, vw = dot(u, v), dot(u, w), dot(v, w)
    c2 = c * c
    a = -c2 * uw * v2 + c * vw + 2 * c2 * uv * vw
    b = -c2 * vw * u2 - c * uw
    # d = 1 + 2c⟨u, v⟩ + c²‖u‖²‖v‖², written as (1 − c‖u‖²)(1 − c‖v‖²) + c‖u + v‖²: two
    # non-negative terms. The expanded sum cancels to (1 − c‖x‖²)² when v ≈ −u (transport over a
    # short step near the rim): in float32 at ‖x‖ = 1 − 1e-5 it came out ≤ 0 and Adam's moments
    # turned to NaN.
    d = (1 - c * u2) * (1 - c * v2) + c * sq_norm(u + v)
    return w + 2 * (a * u + b * v) / d.clamp_min(MIN_NORM)


def _mobius_matvec(m: Tensor, x: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    mx = x @ m.transpose(-1, -2)
    xn, mxn = norm(x), norm(mx)
    res = torch.tanh(mxn / xn * artanh(sc * xn)) * mx / (mxn * sc)
    is_zero = (mx == 0).all(dim=-1, keepdim=True)
    return torch.where(is_zero, torch.zeros_like(res), res)


# --------------------------------------------------------------------------- public API


def project(x: Tensor, *, c: float | Tensor, eps: float | None = None) -> Tensor:
    """Pull points with ``‖x‖ > (1 - eps)/√c`` radially back to that norm.

    ``eps`` defaults to the per-dtype margin of `boundary_eps` (float32 1e-5, float64 1e-13).
    Points inside are returned unchanged; NaN stays NaN. Shape (..., d) -> (..., d).
    """
    check_vector("x", x)
    return _project(x, as_curvature(c, x), eps)


def conformal_factor(x: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """λ_x = 2 / (1 - c‖x‖²), the metric's scale at ``x``. Shape (...) or (..., 1)."""
    c = _prep(c, check, {"x": x})
    lam = _lambda(x, c)
    return squeeze_last(lam, keepdim)


def inner(x: Tensor, u: Tensor, v: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """Riemannian inner product ⟨u, v⟩_x = λ_x² ⟨u, v⟩ of tangent vectors at ``x``."""
    c = _prep(c, check, {"x": x}, {"u": u, "v": v})
    out = _lambda(x, c) ** 2 * dot(u, v)
    return squeeze_last(out, keepdim)


def mobius_add(x: Tensor, y: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Möbius addition x ⊕_c y (Ganea et al. 2018, eq. 3). Shapes (..., d)."""
    c = _prep(c, check, {"x": x, "y": y})
    return _mobius_add_projected(x, y, c)


def mobius_scalar_mul(r: float | Tensor, x: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Möbius scalar multiplication r ⊗_c x = tanh(r artanh(√c‖x‖)) x/(√c‖x‖).

    ``r`` is a number or a tensor broadcastable to ``x[..., :1]``.
    """
    c = _prep(c, check, {"x": x})
    if isinstance(r, Tensor) and check:
        check_finite("r", r)
    return _project(_mobius_scalar_mul(r, x, c), c)


def mobius_matvec(m: Tensor, x: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Möbius matrix-vector product exp0(M log0(x)). ``m`` (out, in), ``x`` (..., in) -> (..., out).

    Rows with ``M x = 0`` map to the origin.
    """
    check_vector("m", m, min_dim=2)
    check_vector("x", x)
    if m.shape[-1] != x.shape[-1]:
        raise ValueError(f"m has {m.shape[-1]} columns but x has dimension {x.shape[-1]}")
    c = _prep(c, check, {"x": x})
    if check:
        check_finite("m", m)
    return _project(_mobius_matvec(m, x, c), c)


def expmap(x: Tensor, u: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Exponential map at ``x`` of the tangent vector ``u``. Shapes (..., d)."""
    c = _prep(c, check, {"x": x}, {"u": u})
    return _project(_expmap(x, u, c), c)


def expmap0(u: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Exponential map at the origin: tanh(√c‖u‖) u/(√c‖u‖). Shape (..., d)."""
    c = _prep(c, check, {}, {"u": u})
    sc = c.sqrt()
    t = sc * norm(u)
    th = torch.tanh(t)
    return u * (th / t * _project_scale(th / sc, c, None, u.dtype))


def logmap(x: Tensor, y: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Logarithmic map at ``x`` of the point ``y`` (inverse of `expmap`). Shapes (..., d)."""
    c = _prep(c, check, {"x": x, "y": y})
    return _logmap(x, y, c)


def logmap0(y: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Logarithmic map at the origin: artanh(√c‖y‖) y/(√c‖y‖). Shape (..., d)."""
    c = _prep(c, False, {"y": y})
    n = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    if check:  # from the norm the map needs anyway: one pass over y, not two
        _check_in_ball("y", y, c, n)
    return artanh_ratio(c.sqrt() * n.clamp_min(MIN_NORM)) * y


def dist(x: Tensor, y: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """Geodesic distance 2/√c · artanh(√c‖(-x) ⊕ y‖). Shape (...) or (..., 1)."""
    return squeeze_last(_dist(x, y, _prep(c, check, {"x": x, "y": y})), keepdim)


def dist0(x: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """Distance from the origin 2/√c · artanh(√c‖x‖)."""
    c = _prep(c, False, {"x": x})
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if check:
        _check_in_ball("x", x, c, n)
    sc = c.sqrt()
    d = 2 / sc * artanh(sc * n.clamp_min(MIN_NORM))
    return squeeze_last(d, keepdim)


def gyration(u: Tensor, v: Tensor, w: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Gyration gyr[u, v] w = ⊖(u ⊕ v) ⊕ (u ⊕ (v ⊕ w)). Shapes (..., d)."""
    c = _prep(c, check, {"u": u, "v": v}, {"w": w})
    return _gyration(u, v, w, c)


def parallel_transport(x: Tensor, y: Tensor, v: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Parallel transport of ``v`` ∈ T_x along the geodesic to ``y``: gyr[y, -x] v · λ_x/λ_y."""
    c = _prep(c, check, {"x": x, "y": y}, {"v": v})
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        # near the rim the gyration divides by (1 − c‖x‖²)² ~ 1e-10 in float32: its rounding
        # error grew ~100× per call and Adam's transported moments overflowed within a few
        # hundred steps (hierarchy training from the tree start). float64 inside, as the fused
        # kernels do; the result is rounded once.
        xd, yd, cd = x.double(), y.double(), c.double()
        out = _gyration(yd, -xd, v.double(), cd) * _lambda(xd, cd) / _lambda(yd, cd)
        return out.to(v.dtype)
    return _gyration(y, -x, v, c) * _lambda(x, c) / _lambda(y, c)


def egrad2rgrad(x: Tensor, grad: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Riemannian gradient from the Euclidean one: grad / λ_x²."""
    c = _prep(c, check, {"x": x}, {"grad": grad})
    return grad / _lambda(x, c) ** 2


def weighted_midpoint(
    xs: Tensor, weights: Tensor | None = None, *, c: float | Tensor, check: bool = True
) -> Tensor:
    """Weighted Möbius gyromidpoint of ``xs`` (..., n, d) with ``weights`` (..., n) ≥ 0 -> (..., d).

    m = ½ ⊗ (Σ w_i λ_i x_i / Σ w_i (λ_i - 1)) (Ungar 2010); equals the Einstein midpoint
    of the same points in the Klein model.
    """
    check_vector("xs", xs, min_dim=2)
    c = _prep(c, check, {"xs": xs})
    lam = _lambda(xs, c)
    w = midpoint_weights(xs, weights, check)
    two_mean = (w * lam * xs).sum(-2) / (w * (lam - 1)).sum(-2).clamp_min(MIN_NORM)
    return _project(_mobius_scalar_mul(0.5, two_mean, c), c)


def random_point(*size: int, c: float | Tensor, std: float = 1.0, dtype=None, generator=None) -> Tensor:
    """Wrapped normal at the origin: expmap0 of N(0, std²) tangent vectors. Shape ``size``.
    ``dtype``/``generator`` as in `torch.randn`."""
    u = normal_tangent(size, std, dtype, generator, min_dim=1)
    c_t = as_curvature(c, u)
    return _project(_expmap0(u, c_t), c_t)


def random_tangent(
    x: Tensor, *, c: float | Tensor, std: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Tangent vectors at ``x`` with N(0, std²) Riemannian coordinates: N(0, std²) / λ_x."""
    c = _prep(c, True, {"x": x})
    u = torch.randn(x.shape, dtype=x.dtype, generator=generator)
    return u * std / _lambda(x, c)


# --------------------------------------------------------------------------- manifold class


class PoincareBall(Manifold):
    """The Poincaré ball of radius 1/√c. Owns ``c`` (positive, optionally learnable).

    Every method forwards to the stateless function of the same name with this
    manifold's curvature; ``check`` (constructor argument) is passed to each call.
    """

    name = "poincare"

    def project(self, x, eps=None):
        return project(x, c=self.c, eps=eps)

    def conformal_factor(self, x, keepdim=False):
        return conformal_factor(x, c=self.c, keepdim=keepdim, check=self.check)

    def inner(self, x, u, v, keepdim=False):
        return inner(x, u, v, c=self.c, keepdim=keepdim, check=self.check)

    def mobius_add(self, x, y):
        return mobius_add(x, y, c=self.c, check=self.check)

    def mobius_scalar_mul(self, r, x):
        return mobius_scalar_mul(r, x, c=self.c, check=self.check)

    def mobius_matvec(self, m, x):
        return mobius_matvec(m, x, c=self.c, check=self.check)

    def gyration(self, u, v, w):
        return gyration(u, v, w, c=self.c, check=self.check)

    def weighted_midpoint(self, xs, weights=None):
        return weighted_midpoint(xs, weights, c=self.c, check=self.check)

    def random_point(self, *size, std=1.0, dtype=None, generator=None):
        return random_point(*size, c=self.c.detach(), std=std, dtype=dtype, generator=generator)

    def random_tangent(self, x, std=1.0, generator=None):
        return random_tangent(x, c=self.c, std=std, generator=generator)

    def origin(self, *size, dtype=None):
        """The origin, shape ``size`` (zeros)."""
        return torch.zeros(*size, dtype=dtype)
