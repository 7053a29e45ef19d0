"""Beltrami–Klein model with curvature -c: the ball ``{x : c‖x‖² < 1}`` with straight geodesics.

Its natural operation is the Einstein (weighted) midpoint, the barycentre weighted by
Lorentz factors γ_i = 1/√(1 - c‖x_i‖²); distances go through the exact isometry to the
Lorentz model. Shapes (..., d).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.geometry import lorentz, poincare
from reality_stone.geometry.manifold import Manifold
from reality_stone.geometry.stable import MIN_NORM, sq_norm, squeeze_last
from reality_stone.geometry.validation import as_curvature, boundary_eps, check_vector, midpoint_weights

__all__ = ["Klein", "check_point", "dist", "einstein_midpoint", "lorentz_factor", "project"]


def _prep(c, check: bool, **points: Tensor) -> Tensor:
    # The Klein model is the same set as the Poincaré ball; reuse its validation.
    return poincare._prep(c, check, points)


def check_point(x: Tensor, *, c: float | Tensor) -> None:
    """Raise ``ValueError`` unless every row of ``x`` is a finite point of the Klein ball."""
    _prep(c, True, x=x)


def _gamma(x: Tensor, c: Tensor) -> Tensor:
    return (1 - c * sq_norm(x)).clamp_min(MIN_NORM).rsqrt()


def _to_lorentz(x: Tensor, c: Tensor) -> Tensor:
    g = _gamma(x, c)
    return torch.cat([g / c.sqrt(), g * x], dim=-1)


def lorentz_factor(x: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """γ_x = 1/√(1 - c‖x‖²). Shape (...) or (..., 1)."""
    c = _prep(c, check, x=x)
    g = _gamma(x, c)
    return squeeze_last(g, keepdim)


def project(x: Tensor, *, c: float | Tensor, eps: float | None = None) -> Tensor:
    """Pull points with ‖x‖ > (1 - eps)/√c back to that norm (same margin as the Poincaré ball).

    In the Klein model 1 - c‖x‖² shrinks twice as fast towards the boundary as in the
    ball, so the default margin is twice `boundary_eps`.
    """
    check_vector("x", x)
    c_t = as_curvature(c, x)
    eps = 2 * boundary_eps(x.dtype) if eps is None else eps
    maxnorm = (1 - eps) / c_t.sqrt()
    n = x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(n > maxnorm, x / n * maxnorm, x)


def dist(x: Tensor, y: Tensor, *, c: float | Tensor, keepdim: bool = False, check: bool = True) -> Tensor:
    """Geodesic distance, via the isometry to the Lorentz model."""
    c = _prep(c, check, x=x, y=y)
    d = lorentz._dist(_to_lorentz(x, c), _to_lorentz(y, c), c)
    return squeeze_last(d, keepdim)


def einstein_midpoint(
    xs: Tensor, weights: Tensor | None = None, *, c: float | Tensor, check: bool = True
) -> Tensor:
    """Weighted Einstein midpoint Σ w_i γ_i x_i / Σ w_i γ_i. ``xs`` (..., n, d), ``weights`` (..., n) ≥ 0."""
    check_vector("xs", xs, min_dim=2)
    c = _prep(c, check, xs=xs)
    g = _gamma(xs, c)
    w = midpoint_weights(xs, weights, check)
    return (w * g * xs).sum(-2) / (w * g).sum(-2).clamp_min(MIN_NORM)


class Klein(Manifold):
    """The Beltrami–Klein ball of radius 1/√c. Owns ``c``."""

    name = "klein"

    def project(self, x, eps=None):
        return project(x, c=self.c, eps=eps)

    def lorentz_factor(self, x, keepdim=False):
        return lorentz_factor(x, c=self.c, keepdim=keepdim, check=self.check)

    def einstein_midpoint(self, xs, weights=None):
        return einstein_midpoint(xs, weights, c=self.c, check=self.check)
