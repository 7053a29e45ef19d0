"""Group-quantised low-bit weights: the compute layout and the plain-torch reference (the oracle).

Compute layout for codes of ≤ 4 bits (`pack_int4_layout`): uint8 (rows, K/2); inside each
group of G inputs, byte k holds code k (low nibble) and code k + G/2 (high nibble). 3- and
2-bit codes use the same layout (so they read 4 bits per code: the fused kernel gives
them the 4-bit speed, not more). K is the input dim padded to a multiple of G.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dequantize_rows", "int4_linear_reference", "pack_int4_layout", "unpack_int4_layout"]


def pack_int4_layout(codes: Tensor, group: int) -> Tensor:
    """codes (rows, K) ints in [0, 16) -> uint8 (rows, K/2) compute layout."""
    rows, K = codes.shape
    if K % group or group % 2:
        raise ValueError(f"K={K} must be a multiple of an even group ({group})")
    if bool(((codes < 0) | (codes > 15)).any()):
        raise ValueError("codes must be in [0, 16) for the 4-bit layout")
    c = codes.reshape(rows, K // group, group).to(torch.uint8)
    half = group // 2
    return (c[..., :half] | (c[..., half:] << 4)).reshape(rows, K // 2).contiguous()


def unpack_int4_layout(packed: Tensor, group: int) -> Tensor:
    """Inverse of `pack_int4_layout`: uint8 (rows, K/2) -> int64 codes (rows, K)."""
    rows, half_k = packed.shape
    p = packed.reshape(rows, -1, group // 2)
    return torch.cat([p & 0x0F, p >> 4], dim=-1).reshape(rows, 2 * half_k).to(torch.int64)


def dequantize_rows(packed: Tensor, scale: Tensor, offset: Tensor, group: int, dtype=torch.float32) -> Tensor:
    """Dense (rows, K) weights of a row range: q · scale + offset per group."""
    q = unpack_int4_layout(packed, group).to(dtype).reshape(packed.shape[0], -1, group)
    return (q * scale.to(dtype)[..., None] + offset.to(dtype)[..., None]).reshape(packed.shape[0], -1)


def int4_linear_reference(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    """The oracle: unpack → dequantise → matmul. x (..., K) -> (..., rows)."""
    return x @ dequantize_rows(packed, scale, offset, group, x.dtype).T
