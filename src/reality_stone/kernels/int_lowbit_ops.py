"""Dispatch for group-quantised matmuls: fused C++ (AVX2) kernel, tiled torch path, autograd, custom op.

* batch ≤ 8, float32, CPU with AVX2: the C++ kernel (`int_lowbit_cpu.cpp`), built on first
  use with ``torch.utils.cpp_extension`` into the user cache dir and reused afterwards;
* otherwise: the tiled torch path (`kernels.tiled`: dequantise 256 rows at a time, multiply;
  never the whole dense weight);
* no compiler / no AVX2 / ``REALITY_STONE_NO_EXT=1``: the tiled path, with one warning
  (see `reality_stone.kernels.extension`).

`int4_linear` is a ``torch.library.custom_op`` (so ``torch.compile`` traces it) with a
registered backward: the gradient w.r.t. the input uses the same tiled dequantisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.int_lowbit import dequantize_rows
from reality_stone.kernels.tiled import FUSED_MAX_BATCH, tiled_linear, tiled_linear_transposed

__all__ = ["int4_linear"]


def _decoder(packed: Tensor, scale: Tensor, offset: Tensor, group: int):
    return lambda r0, r1, dtype: dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], group, dtype)


@torch.library.custom_op("reality_stone::int4_linear", mutates_args=())
def int4_linear(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    """x (..., K) @ Wᵀ for W in the 4-bit compute layout; scale/offset (rows, K/group) float32."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    ext = load_extension() if x2.dtype == torch.float32 and x2.shape[0] <= FUSED_MAX_BATCH else None
    if ext is not None and group % 16 == 0:
        x2c = x2.contiguous()
        xsum = x2c.reshape(x2c.shape[0], -1, group).sum(-1)
        y = ext.int4_gemv(x2c, packed, scale, offset, xsum.contiguous(), group)
    else:
        y = tiled_linear(x2, packed.shape[0], _decoder(packed, scale, offset, group))
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
    gx = tiled_linear_transposed(g2, packed.shape[0], packed.shape[1] * 2, _decoder(packed, scale, offset, ctx.group))
    return gx.reshape(*grad.shape[:-1], gx.shape[-1]), None, None, None, None


int4_linear.register_autograd(_backward, setup_context=_setup)
