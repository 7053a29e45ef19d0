"""Lorentz (hyperboloid) model with curvature -c (c > 0).

Points are ``x ∈ R^(d+1)`` with ⟨x, x⟩_L = -1/c and x₀ > 0, where
⟨u, v⟩_L = -u₀v₀ + Σᵢ uᵢvᵢ (the Minkowski product); the origin is (1/√c, 0, …, 0).
Tangent vectors at x satisfy ⟨x, u⟩_L = 0. geoopt's ``Lorentz(k)`` is this manifold with
k = 1/c. Shapes: (..., d+1); scalar outputs (...) unless ``keepdim=True``.

Distances use the form d = (2/√c)·asinh(√c·‖x - y‖_L / 2), algebraically equal to
(1/√c)·arcosh(-c⟨x, y⟩_L) but accurate for nearby points and with a finite gradient at
x = y (arcosh' is infinite at 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.geometry.manifold import Manifold
from reality_stone.geometry.stable import MIN_NORM, safe_norm, sq_norm, squeeze_last
from reality_stone.geometry.validation import as_curvature, check_finite, check_same_last_dim, normal_tangent

__all__ = [
    "Lorentz",
    "check_point",
    "dist",
    "dist0",
    "egrad2rgrad",
    "expmap",
    "expmap0",
    "inner",
    "logmap",
    "logmap0",
    "parallel_transport",
    "project",
    "proj_tangent",
    "random_point",
    "tangent_norm",
]

# Relative tolerance of the on-manifold check: |c⟨x,x⟩_L + 1| must be below this times
# c·x₀² (the size of the terms that cancel), per dtype.
_MANIFOLD_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _prep(c, check: bool, points: dict[str, Tensor], vectors: dict[str, Tensor] | None = None) -> Tensor:
    tensors = {**points, **(vectors or {})}
    check_same_last_dim(**tensors)
    for name, t in tensors.items():
        if t.shape[-1] < 2:
            raise ValueError(f"{name} must have at least 2 coordinates (x₀ and one spatial), got {t.shape[-1]}")
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        desc = ", ".join(f"{n}{tuple(t.shape)}" for n, t in tensors.items())
        raise ValueError(f"batch shapes do not broadcast: {desc}") from None
    c_t = as_curvature(c, next(iter(tensors.values())))
    if check:
        for name, t in tensors.items():
            check_finite(name, t)
        for name, t in points.items():
            _check_on_hyperboloid(name, t, c_t)
    return c_t


def _check_on_hyperboloid(name: str, x: Tensor, c: Tensor) -> None:
    x = x.detach()
    if not bool((x[..., 0] > 0).all()):
        raise ValueError(f"{name} has points on the lower sheet (x₀ <= 0); the model uses x₀ > 0")
    c = c.detach()
    # |c⟨x,x⟩_L + 1| relative to c·x₀² (the size of the terms that cancel), computed from x/x₀
    # so that nothing overflows: c·x₀²·(‖x_s/x₀‖² − 1) + 1 over max(c·x₀², 1). (Squaring x₀
    # directly overflowed float32 above x₀ ≈ 1.8e19: Inf − Inf = NaN, and NaN > tol let
    # [1e20, 5] through.)
    x0 = x[..., :1]
    r = x[..., 1:] / x0
    cx02 = c * x0 * x0  # may be Inf: then 1/cx02 = 0 and the scaled error is |‖r‖² − 1|
    rel = sq_norm(r) - 1
    err = torch.where(cx02 >= 1, (rel + 1 / cx02).abs(), (cx02 * rel + 1).abs()).max()
    tol = _MANIFOLD_RTOL.get(x.dtype, 1e-2)
    if not float(err) <= tol:  # a NaN error never passes
        raise ValueError(f"{name} is off the hyperboloid: |c⟨x,x⟩_L + 1| / (c x₀²) reaches {float(err):.3g} > {tol}")


def check_point(x: Tensor, *, c: float | Tensor) -> None:
    """Raise ``ValueError`` unless every row of ``x`` is a finite point of the upper sheet."""
    _prep(c, True, {"x": x})


def _inner(u: Tensor, v: Tensor) -> Tensor:
    uv = u * v
    return uv[..., 1:].sum(-1, keepdim=True) - uv[..., :1]


def _tangent_norm(u: Tensor) -> Tensor:
    # ⟨u,u⟩_L ≥ 0 for tangent vectors; rounding can make it slightly negative.
    return _inner(u, u).clamp_min(MIN_NORM * MIN_NORM).sqrt()


def _project(x: Tensor, c: Tensor) -> Tensor:
    xs = x[..., 1:]
    # x₀ = √(1/c + ‖x_s‖²) = hypot(1/√c, ‖x_s‖), without squaring a huge ‖x_s‖
    x0 = torch.hypot(safe_norm(xs), (1 / c.sqrt()).expand_as(xs[..., :1]))
    return torch.cat([x0, xs], dim=-1)


def _proj_tangent(x: Tensor, u: Tensor, c: Tensor) -> Tensor:
    return u + c * _inner(x, u) * x


def _scaled_sq_diff(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(m, q) with ‖x − y‖²_L = m²·q: the difference scaled by its largest entry first, so far
    points (√c·d > 45 in float32) do not square past the float range."""
    diff = x - y
    m = diff.detach().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(diff.dtype).tiny)
    return m, _inner(diff / m, diff / m)


def _dist(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    m, q = _scaled_sq_diff(x, y)
    q = q.clamp_min(MIN_NORM * MIN_NORM)
    return 2 / sc * torch.asinh(sc * (m * q.sqrt()).clamp_min(MIN_NORM) / 2)


def _tangent_norm_at(x: Tensor, u: Tensor, c: Tensor) -> Tensor:
    """‖u‖_L for u tangent at x, without cancellation: with x̂ = x_s/‖x_s‖ and a = x̂·u_s,
    ‖u‖²_L = ‖u_s − a x̂‖² + a²/(c x₀²) (u₀ = x_s·u_s/x₀ on T_x). The direct ‖u_s‖² − u₀²
    subtracts two numbers of size (x₀·‖u‖)²: at x₀ ~ 1e10 (√c·d ≈ 24) it returned noise in the
    thousands for a step of length 0.05, and cosh of it overflowed."""
    xs, us = x[..., 1:], u[..., 1:]
    xh = xs / safe_norm(xs)
    a = (xh * us).sum(-1, keepdim=True)
    perp = us - a * xh
    x0 = x[..., :1]
    n2 = sq_norm(perp) + a * a / (c * x0 * x0)
    return n2.clamp_min(MIN_NORM * MIN_NORM).sqrt()


def _expmap(x: Tensor, u: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    n = _tangent_norm_at(x, u, c)
    return _project(torch.cosh(sc * n) * x + torch.sinh(sc * n) * u / (sc * n), c)


def _logmap(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    if x.dtype == torch.float32:
        # w grows like x₀²y₀ (e^(3√c d)): past √c·d ≈ 29 it leaves float32 although the result
        # (length d, coordinates ~ d·x₀) fits; float64 holds it for every float32 point
        return _logmap(x.double(), y.double(), c.double()).float()
    w = y + c * _inner(x, y) * x
    return _dist(x, y, c) * w / _tangent_norm(w)


def _expmap0(u: Tensor, c: Tensor) -> Tensor:
    sc = c.sqrt()
    us = u[..., 1:]
    n = safe_norm(us)
    return torch.cat([torch.cosh(sc * n) / sc, torch.sinh(sc * n) / (sc * n) * us], dim=-1)


def _logmap0(y: Tensor, c: Tensor) -> Tensor:
    # sinh(√c d) = √c‖y_s‖ on the hyperboloid, so asinh gives d without arcosh's cancellation.
    sc = c.sqrt()
    ys = y[..., 1:]
    n = safe_norm(ys)
    return torch.cat([torch.zeros_like(y[..., :1]), torch.asinh(sc * n) / (sc * n) * ys], dim=-1)


def _parallel_transport(x: Tensor, y: Tensor, v: Tensor, c: Tensor) -> Tensor:
    # 1 − c⟨x, y⟩_L = 2 + c‖x − y‖²_L / 2, computed from the difference: ⟨x, y⟩_L itself cancels
    # terms of size x₀y₀, so far from the origin (x₀ ~ 1e8) the denominator lost every digit and
    # an embedding's optimiser step turned rows into NaN
    m, q = _scaled_sq_diff(x, y)
    den = 2 + c * m * m * q.clamp_min(0) / 2
    return v + c * _inner(y, v) / den * (x + y)


def _egrad2rgrad(x: Tensor, grad: Tensor, c: Tensor) -> Tensor:
    u = torch.cat([-grad[..., :1], grad[..., 1:]], dim=-1)
    return _proj_tangent(x, u, c)


def inner(u: Tensor, v: Tensor, *, keepdim: bool = False) -> Tensor:
    """Minkowski product ⟨u, v⟩_L = -u₀v₀ + Σ uᵢvᵢ (the metric at every point)."""
    check_same_last_dim(u=u, v=v)
    out = _inner(u, v)
    return squeeze_last(out, keepdim)


def tangent_norm(u: Tensor, *, keepdim: bool = False) -> Tensor:
    """Riemannian norm √⟨u, u⟩_L of a tangent vector."""
    check_same_last_dim(u=u)
    out = _tangent_norm(u)
    return squeeze_last(out, keepdim)


def project(x: Tensor, *, c: float | Tensor) -> Tensor:
    """Put ``x`` on the hyperboloid by recomputing x₀ = √(1/c + ‖x_s‖²) from the spatial part."""
    check_same_last_dim(x=x)
    return _project(x, as_curvature(c, x))


def proj_tangent(x: Tensor, u: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Orthogonal (Minkowski) projection of ``u`` onto T_x: u + c⟨x, u⟩_L x."""
    c = _prep(c, check, {"x": x}, {"u": u})
    return _proj_tangent(x, u, c)


def dist(x: Tensor, y: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """Geodesic distance (1/√c)·arcosh(-c⟨x, y⟩_L), computed in the stable asinh form."""
    return squeeze_last(_dist(x, y, _prep(c, check, {"x": x, "y": y})), keepdim)


def dist0(x: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """Distance from the origin (1/√c)·asinh(√c‖x_s‖)."""
    c = _prep(c, check, {"x": x})
    sc = c.sqrt()
    d = torch.asinh(sc * safe_norm(x[..., 1:])) / sc
    return squeeze_last(d, keepdim)


def expmap(x: Tensor, u: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """cosh(√c‖u‖_L) x + sinh(√c‖u‖_L) u/(√c‖u‖_L), re-projected onto the hyperboloid."""
    c = _prep(c, check, {"x": x}, {"u": u})
    return _expmap(x, u, c)


def logmap(x: Tensor, y: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """d(x, y) · w/‖w‖_L with w = y + c⟨x, y⟩_L x (inverse of `expmap`)."""
    c = _prep(c, check, {"x": x, "y": y})
    return _logmap(x, y, c)


def expmap0(u: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Exponential map at the origin. ``u[..., 0]`` is ignored (it is 0 for tangents at the origin).
    With ``check``, a tangent too long for the dtype (cosh(√c‖u‖)/√c past its largest value:
    √c‖u‖ ≳ 89 in float32, 710 in float64) raises ValueError instead of returning Inf/NaN."""
    c = _prep(c, check, {}, {"u": u})
    out = _expmap0(u, c)
    if check and not bool(torch.isfinite(out.detach()).all()):
        worst = float((c.sqrt() * safe_norm(u[..., 1:])).detach().max())
        raise ValueError(f"u is too long for {u.dtype}: √c‖u‖ reaches {worst:.4g}, the point's x₀ = cosh(√c‖u‖)/√c "
                         f"overflows")
    return out


def logmap0(y: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Logarithmic map at the origin; the result has time component 0."""
    c = _prep(c, check, {"y": y})
    return _logmap0(y, c)


def parallel_transport(x: Tensor, y: Tensor, v: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Transport ``v`` ∈ T_x to T_y: v + c⟨y, v⟩_L/(1 - c⟨x, y⟩_L)·(x + y)."""
    c = _prep(c, check, {"x": x, "y": y}, {"v": v})
    return _parallel_transport(x, y, v, c)


def egrad2rgrad(x: Tensor, grad: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Riemannian gradient: flip the sign of the time component (G⁻¹), then project onto T_x."""
    c = _prep(c, check, {"x": x}, {"grad": grad})
    return _egrad2rgrad(x, grad, c)


def random_point(*size: int, c: float | Tensor, std: float = 1.0, dtype=None, generator=None) -> Tensor:
    """Wrapped normal at the origin; ``size[-1]`` is the ambient dimension d+1 (≥ 2).
    ``dtype``/``generator`` as in `torch.randn`."""
    u = normal_tangent(size, std, dtype, generator, min_dim=2)
    return _expmap0(u, as_curvature(c, u))


class Lorentz(Manifold):
    """The upper sheet of the hyperboloid ⟨x, x⟩_L = -1/c. Owns ``c``."""

    name = "lorentz"

    def inner(self, x, u, v, keepdim=False):
        """The metric at ``x`` (the Minkowski product; ``x`` is unused but kept for the common interface)."""
        return inner(u, v, keepdim=keepdim)

    def project(self, x):
        return project(x, c=self.c)

    def proj_tangent(self, x, u):
        return proj_tangent(x, u, c=self.c, check=self.check)

    def random_point(self, *size, std=1.0, dtype=None, generator=None):
        return random_point(*size, c=self.c.detach(), std=std, dtype=dtype, generator=generator)

    def origin(self, *size, dtype=None):
        """The origin (1/√c, 0, …, 0), shape ``size``."""
        o = torch.zeros(*size, dtype=dtype)
        o[..., 0] = 1 / self.c.detach().sqrt().to(dtype)
        return o
