"""Row-tiled products with a weight decoded ``TILE_ROWS`` rows at a time.

The plain-torch path of every fused kernel (large batches, no compiler) and their backward:
the dense weight never exists as a whole, only one (TILE_ROWS, in) tile of it.
``decode(r0, r1, dtype)`` returns rows [r0, r1) of W.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

__all__ = ["TILE_ROWS", "tiled_linear", "tiled_linear_transposed"]

TILE_ROWS = 256


def tiled_linear(x2: Tensor, rows: int, decode: Callable[[int, int, object], Tensor]) -> Tensor:
    """x2 (B, in) @ Wᵀ -> (B, rows)."""
    out = x2.new_empty(x2.shape[0], rows)
    for r0 in range(0, rows, TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, rows)
        out[:, r0:r1] = x2 @ decode(r0, r1, x2.dtype).T
    return out


def tiled_linear_transposed(g2: Tensor, rows: int, cols: int, decode: Callable[[int, int, object], Tensor]) -> Tensor:
    """g2 (B, rows) @ W -> (B, cols): the input gradient of `tiled_linear`."""
    out = g2.new_zeros(g2.shape[0], cols)
    for r0 in range(0, rows, TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, rows)
        out += g2[:, r0:r1] @ decode(r0, r1, g2.dtype)
    return out
