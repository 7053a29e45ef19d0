"""Dispatch for group-quantised matmuls: fused C++ (AVX2) kernel, tiled torch path, autograd, custom op.

* batch ≤ 8, float32, CPU with AVX2: the C++ kernel (`int_lowbit_cpu.cpp`), built on first
  use with ``torch.utils.cpp_extension`` into the user cache dir and reused afterwards;
* otherwise: a tiled torch path that dequantises ``TILE_ROWS`` rows at a time into a small
  buffer and multiplies (never the whole dense weight);
* no compiler / no AVX2 / ``REALITY_STONE_NO_EXT=1``: the tiled path, with one warning
  (see `reality_stone.kernels.extension`).

`int4_linear` is a ``torch.library.custom_op`` (so ``torch.compile`` traces it) with a
registered backward: the gradient w.r.t. the input uses the same tiled dequantisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import extension_status, load_extension
from reality_stone.kernels.int_lowbit import dequantize_rows

__all__ = ["TILE_ROWS", "extension_status", "int4_linear", "load_extension"]

TILE_ROWS = 256
_FUSED_MAX_BATCH = 8


def _tiled(x2: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    rows = packed.shape[0]
    out = x2.new_empty(x2.shape[0], rows)
    for r0 in range(0, rows, TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, rows)
        out[:, r0:r1] = x2 @ dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], group, x2.dtype).T
    return out


def _tiled_transposed(g2: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    """g2 (B, rows) @ W (rows, K), tile by tile."""
    out = g2.new_zeros(g2.shape[0], packed.shape[1] * 2)
    for r0 in range(0, packed.shape[0], TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, packed.shape[0])
        out += g2[:, r0:r1] @ dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], group, g2.dtype)
    return out


@torch.library.custom_op("reality_stone::int4_linear", mutates_args=())
def int4_linear(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    """x (..., K) @ Wᵀ for W in the 4-bit compute layout; scale/offset (rows, K/group) float32."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    ext = load_extension() if x2.dtype == torch.float32 and x2.shape[0] <= _FUSED_MAX_BATCH else None
    if ext is not None and group % 16 == 0:
        x2c = x2.contiguous()
        xsum = x2c.reshape(x2c.shape[0], -1, group).sum(-1)
        y = ext.int4_gemv(x2c, packed, scale, offset, xsum.contiguous(), group)
    else:
        y = _tiled(x2, packed, scale, offset, group)
    return y.reshape(*lead, packed.shape[0])


@int4_linear.register_fake
def _(x, packed, scale, offset, group):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _setup(ctx, inputs, output):
    _, packed, scale, offset, group = inputs
    ctx.save_for_backward(packed, scale, offset)
    ctx.group = group


def _backward(ctx, grad):
    packed, scale, offset = ctx.saved_tensors
    g2 = grad.reshape(-1, grad.shape[-1])
    gx = _tiled_transposed(g2, packed, scale, offset, ctx.group)
    return gx.reshape(*grad.shape[:-1], gx.shape[-1]), None, None, None, None


int4_linear.register_autograd(_backward, setup_context=_setup)
