"""Input validation shared by the geometry functions.

Every public geometry function validates what is cheap to validate on every call
(curvature, shapes) and, when called with ``check=True``, what costs a pass over the
data (finiteness, membership of the manifold). Errors are ``ValueError`` naming the
argument; nothing here clamps a NaN into a number.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "as_curvature",
    "check_finite",
    "check_same_last_dim",
    "check_vector",
    "boundary_eps",
    "midpoint_weights",
    "normal_tangent",
]

# Relative margin kept from the boundary by `project` (a point is kept at norm
# <= (1 - eps) / sqrt(c)). float32 resolves 1 - c|x|^2 to about 6e-8, so 1e-5 leaves a
# relative error of ~1e-2 in the conformal factor at the margin and a maximal distance
# from the origin of 2 artanh(1 - 1e-5) ~ 12.2 / sqrt(c). float64: 1e-13, where the point
# itself stops resolving distance (1 - r ≈ 2e^(-s) against a spacing of 1.1e-16 near 1):
# dist(0, expmap0 v) and logmap0(expmap0 v) stay within 1e-4 relative up to √c·d ≈ 30.4
# (1e-10, the margin before, stopped them at 23.7; a smaller margin gains nothing —
# measured in tests/geometry/test_reach.py).
_BOUNDARY_EPS = {torch.float32: 1e-5, torch.float64: 1e-13, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def boundary_eps(dtype: torch.dtype) -> float:
    """Margin from the boundary used by `project` for ``dtype`` (see module comment)."""
    try:
        return _BOUNDARY_EPS[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype}; use a floating-point dtype") from None


def check_vector(name: str, x: Tensor, *, min_dim: int = 1) -> None:
    """Require a floating-point tensor with at least ``min_dim`` dims and a non-empty last dim."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty last (vector) dimension: shape {tuple(x.shape)}")


def check_same_last_dim(**tensors: Tensor) -> None:
    """Require every tensor to be a vector batch with the same last dimension."""
    dims = {}
    for name, t in tensors.items():
        check_vector(name, t)
        dims[name] = t.shape[-1]
    if len(set(dims.values())) > 1:
        desc = ", ".join(f"{n} has {d}" for n, d in dims.items())
        raise ValueError(f"vector dimensions differ: {desc}")


def check_finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds NaN or Inf (one reduction over the data, no temporary)."""
    # Fast path: the sum is finite iff every element is (barring overflow, which falls
    # through to the exact elementwise check below).
    if bool(torch.isfinite(x.detach().sum())):
        return
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf)")


def as_curvature(c: float | Tensor, like: Tensor) -> Tensor:
    """Curvature magnitude ``c`` (the manifold has sectional curvature -c) as a tensor.

    Accepts a Python number or a tensor (scalar or broadcastable to ``like[..., :1]``),
    keeps its autograd graph, casts to ``like``'s dtype/device. ``c`` must be positive
    and finite.
    """
    if isinstance(c, Tensor):
        if not c.is_floating_point():
            c = c.to(like.dtype)
        bad = ~(torch.isfinite(c) & (c > 0))
        if bool(bad.any()):
            raise ValueError(f"curvature c must be positive and finite, got {c.detach().flatten()[:4].tolist()}")
        return c.to(dtype=like.dtype, device=like.device)
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise ValueError(f"curvature c must be a number or a tensor, got {type(c).__name__}")
    if not (c > 0 and c < float("inf")):
        raise ValueError(f"curvature c must be positive and finite, got {c}")
    return torch.tensor(float(c), dtype=like.dtype, device=like.device)


def midpoint_weights(xs: Tensor, weights: Tensor | None, check: bool) -> Tensor:
    """Validated midpoint weights for points ``xs`` (..., n, d): (..., n, 1), ones if None.

    Weights must have shape (..., n), be non-negative and have a positive sum over the points.
    """
    if weights is None:
        return torch.ones(xs.shape[:-1] + (1,), dtype=xs.dtype, device=xs.device)
    if weights.shape != xs.shape[:-1]:
        raise ValueError(f"weights must have shape {tuple(xs.shape[:-1])}, got {tuple(weights.shape)}")
    if check:
        check_finite("weights", weights)
    if bool((weights < 0).any()) or bool((weights.sum(-1) <= 0).any()):
        raise ValueError("weights must be non-negative with a positive sum over the points")
    return weights.unsqueeze(-1).to(xs.dtype)


def normal_tangent(size: tuple[int, ...], std: float, dtype, generator, *, min_dim: int) -> Tensor:
    """N(0, std²) vectors of shape ``size``, the tangents at the origin that ``random_point``
    maps onto its manifold; ValueError unless ``size`` ends with a dimension ≥ ``min_dim``."""
    if len(size) == 0 or size[-1] < min_dim:
        raise ValueError(f"size must end with the vector dimension (>= {min_dim}), got {size}")
    return torch.randn(*size, dtype=dtype, generator=generator) * std
