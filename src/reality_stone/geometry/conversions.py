"""Exact isometries between the Poincaré ball (P), Lorentz hyperboloid (L) and Klein ball (K).

All three models here have curvature -c with the same ``c``; P and K are balls of radius
1/√c in R^d, L is the upper sheet ⟨x, x⟩_L = -1/c in R^(d+1).

    P -> L : (1/√c · (1 + c‖p‖²), 2p) / (1 - c‖p‖²)      L -> P : x_s / (1 + √c x₀)
    P -> K : 2p / (1 + c‖p‖²)                             K -> P : k / (1 + √(1 - c‖k‖²))
    L -> K : x_s / (√c x₀)                                K -> L : (1/√c, k) / √(1 - c‖k‖²)
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.geometry import klein, lorentz, poincare
from reality_stone.geometry.stable import MIN_NORM, sq_norm

__all__ = [
    "klein_to_lorentz",
    "klein_to_poincare",
    "lorentz_to_klein",
    "lorentz_to_poincare",
    "poincare_to_klein",
    "poincare_to_lorentz",
]


def poincare_to_lorentz(p: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Ball point (..., d) -> hyperboloid point (..., d+1)."""
    c = poincare._prep(c, check, {"p": p})
    p2 = sq_norm(p)
    den = (1 - c * p2).clamp_min(MIN_NORM)
    return torch.cat([(1 + c * p2) / (c.sqrt() * den), 2 * p / den], dim=-1)


def lorentz_to_poincare(x: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Hyperboloid point (..., d+1) -> ball point (..., d)."""
    c = lorentz._prep(c, check, {"x": x})
    return poincare._project(x[..., 1:] / (1 + c.sqrt() * x[..., :1]), c)


def poincare_to_klein(p: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Ball point -> Klein point, shapes (..., d)."""
    c = poincare._prep(c, check, {"p": p})
    return 2 * p / (1 + c * sq_norm(p))


def klein_to_poincare(k: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Klein point -> ball point, shapes (..., d)."""
    c = poincare._prep(c, check, {"k": k})
    # clamp above 0: at the rim sqrt's gradient is infinite, and Inf · 0 (the clamp's) is NaN
    return k / (1 + (1 - c * sq_norm(k)).clamp_min(MIN_NORM * MIN_NORM).sqrt())


def lorentz_to_klein(x: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Hyperboloid point (..., d+1) -> Klein point (..., d)."""
    c = lorentz._prep(c, check, {"x": x})
    return x[..., 1:] / (c.sqrt() * x[..., :1])


def klein_to_lorentz(k: Tensor, *, c: float | Tensor, check: bool = True) -> Tensor:
    """Klein point (..., d) -> hyperboloid point (..., d+1)."""
    c = poincare._prep(c, check, {"k": k})
    return klein._to_lorentz(k, c)
