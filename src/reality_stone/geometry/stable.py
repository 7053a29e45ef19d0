"""Numerically safe building blocks: clamped norms and artanh near 1.

Why: ``x / ‖x‖`` and ``artanh(√c‖x‖) / (√c‖x‖)`` are 0/0 at the origin and ``artanh``
is infinite on the boundary; both appear in every map of the ball. Clamping the norm
from below keeps values and gradients finite at 0 (the limits are 1, which the clamped
ratio reproduces to rounding), clamping artanh's argument below 1 keeps points that
rounding put on the boundary finite. A NaN stays NaN: ``clamp`` propagates it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MIN_NORM", "artanh", "norm", "safe_norm", "sq_norm", "dot", "tanh_ratio", "artanh_ratio", "squeeze_last"]

MIN_NORM = 1e-15

# Largest argument fed to artanh, per dtype: the last representable values below 1
# that keep 1 - z exact enough for log1p (float32: 1 - 2^-23, float64: 1 - 2^-52).
_ARTANH_MAX = {torch.float32: 1.0 - 2.0**-23, torch.float64: 1.0 - 2.0**-52}


def artanh(z: Tensor) -> Tensor:
    """artanh with the argument clamped into (-1, 1) by one ulp-scale margin per dtype."""
    m = _ARTANH_MAX.get(z.dtype, 1.0 - 2.0**-10)
    z = z.clamp(-m, m)
    return 0.5 * (torch.log1p(z) - torch.log1p(-z))


def sq_norm(x: Tensor) -> Tensor:
    """‖x‖² over the last dim, keepdim. Shape (..., 1). (vecdot: no full-size temporary.)"""
    return torch.linalg.vecdot(x, x).unsqueeze(-1)


def dot(x: Tensor, y: Tensor) -> Tensor:
    """⟨x, y⟩ over the last dim, keepdim. Shape (..., 1)."""
    return torch.linalg.vecdot(x, y).unsqueeze(-1)


def norm(x: Tensor) -> Tensor:
    """‖x‖ over the last dim, keepdim, clamped to >= MIN_NORM. Shape (..., 1)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(MIN_NORM)


def safe_norm(x: Tensor) -> Tensor:
    """‖x‖ over the last dim like `norm`, but without overflow: torch's CPU norm squares the
    entries, so float32 coordinates above ~1.8e19 (Lorentz points past √c·d ≈ 45) gave Inf.
    Scaled by the largest entry (the gradient of the scale cancels: the norm is homogeneous)."""
    m = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return (m * torch.linalg.vector_norm(x / m, dim=-1, keepdim=True)).clamp_min(MIN_NORM)


def tanh_ratio(t: Tensor) -> Tensor:
    """tanh(t) / t for t >= MIN_NORM (t is a clamped norm, so never 0)."""
    return torch.tanh(t) / t


def artanh_ratio(t: Tensor) -> Tensor:
    """artanh(t) / t for t >= MIN_NORM."""
    return artanh(t) / t


def squeeze_last(t: Tensor, keepdim: bool) -> Tensor:
    """A reduction's (..., 1) result as is with ``keepdim``, else (...). The ops keep the trailing 1
    internally so that it broadcasts against (..., d); the public functions drop it by default."""
    return t if keepdim else t.squeeze(-1)
