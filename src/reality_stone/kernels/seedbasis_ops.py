"""Dispatch for seed-basis matmuls: fused C++ kernel, tiled torch path, autograd, custom op.

* batch ≤ 8, float32, kernel built (`reality_stone.kernels.extension`): `seedbasis_cpu.cpp`;
* otherwise: the tiled torch path (`kernels.tiled`: decode 256 rows at a time from the
  layout and multiply; never the whole dense weight).

`seedbasis_linear` is a ``torch.library.custom_op`` (traced by ``torch.compile``) with a
registered backward (gradient w.r.t. the input by the same tiled decode).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.seedbasis import SeedBasisLayout, block_sign_sums, decode_rows
from reality_stone.kernels.tiled import FUSED_MAX_BATCH, tiled_linear, tiled_linear_transposed

__all__ = ["seedbasis_linear", "seedbasis_matmul"]

def _layout(pattern, seeds, exps, codes, coeffs, rows) -> SeedBasisLayout:
    return SeedBasisLayout(pattern, seeds, exps, codes, coeffs, rows)


def _decoder(lay: SeedBasisLayout, in_features: int):
    return lambda r0, r1, dtype: decode_rows(lay, r0, r1, in_features, dtype)


@torch.library.custom_op("reality_stone::seedbasis_linear", mutates_args=())
def seedbasis_linear(x: Tensor, pattern: Tensor, seeds: Tensor, exps: Tensor, codes: Tensor, coeffs: int,
                     rows: int) -> Tensor:
    """x (..., in) @ Wᵀ for W in the seed-basis compute layout (`seedbasis_layout`)."""
    lay = _layout(pattern, seeds, exps, codes, coeffs, rows)
    lead, in_f = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, in_f)
    ext = load_extension() if x2.dtype == torch.float32 and x2.shape[0] <= FUSED_MAX_BATCH else None
    if ext is not None and x2.shape[0] > 0:
        v = block_sign_sums(x2, seeds.shape[0])
        y = ext.seedbasis_gemv(v, pattern, seeds, exps, codes)[:, :rows]
    else:
        y = tiled_linear(x2, rows, _decoder(lay, in_f))
    return y.reshape(*lead, rows)


@seedbasis_linear.register_fake
def _(x, pattern, seeds, exps, codes, coeffs, rows):
    return x.new_empty(*x.shape[:-1], rows)


def _setup(ctx, inputs, output):
    x, pattern, seeds, exps, codes, coeffs, rows = inputs
    ctx.save_for_backward(pattern, seeds, exps, codes)
    ctx.coeffs, ctx.rows, ctx.in_features = coeffs, rows, x.shape[-1]


def _backward(ctx, grad):
    lay = _layout(*ctx.saved_tensors, ctx.coeffs, ctx.rows)
    g2 = grad.reshape(-1, grad.shape[-1])
    gx = tiled_linear_transposed(g2, ctx.rows, ctx.in_features, _decoder(lay, ctx.in_features))
    return gx.reshape(*grad.shape[:-1], ctx.in_features), None, None, None, None, None, None


seedbasis_linear.register_autograd(_backward, setup_context=_setup)


def seedbasis_matmul(x: Tensor, lay: SeedBasisLayout) -> Tensor:
    """``x @ Wᵀ`` through the custom op."""
    return seedbasis_linear(x, lay.pattern, lay.seeds, lay.exps, lay.codes, lay.coeffs, lay.rows)
