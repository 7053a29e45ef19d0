"""Dispatch for group-quantised matmuls: fused C++ kernels, tiled torch path, autograd, custom ops.

`lowbit_linear` (fp32 activations, exact to fp32 rounding):

* batch ≤ 256, float32, group a multiple of 64, kernel built: `int_lowbit_cpu.cpp`
  (AVX-512 when the CPU has it, else AVX2);
* otherwise: the tiled torch path (`kernels.tiled`: dequantise 256 rows at a time, multiply;
  never the whole dense weight);
* no compiler / no AVX2 / ``REALITY_STONE_NO_EXT=1``: the tiled path, with one warning
  (see `reality_stone.kernels.extension`).

`lowbit_linear_a8` (activations quantised to int8 per group on the fly — the numbers of
`int_lowbit.lowbit_linear_a8_reference`): the VNNI kernel (any batch) on CPUs with
AVX-512 VNNI; otherwise the same arithmetic in torch (quantise x, tiled product with the
dequantised int8 activations, exact Σx for the offsets). Its backward is the
straight-through estimator: the gradient of the unquantised product.

Both are ``torch.library.custom_op`` (so ``torch.compile`` traces them) with a registered
backward: the input gradient uses the same tiled dequantisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.int_lowbit import CHUNK, affine_offset, dequantize_rows, quantize_activations
from reality_stone.kernels.tiled import tiled_linear, tiled_linear_transposed

__all__ = ["LOWBIT_MAX_BATCH", "lowbit_linear", "lowbit_linear_a8", "lowbit_matmul"]

# Up to this many rows of x the fp32-activation kernel runs (in slices of 8 over L2-sized blocks
# of weight rows); beyond, dequantised tiles + BLAS are as fast (4096², 2 threads: kernel 25 ms
# vs dense 30 ms at 128 rows, 101 vs 88 ms at 512). The int8 kernel has no such limit (5.7 ms
# at 128 rows, 23 ms at 512).
LOWBIT_MAX_BATCH = 256


def _decoder(packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int, bits: int):
    return lambda r0, r1, dtype: dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], zero_point, group, bits,
                                                 dtype)


def _fused(x2: Tensor, group: int, max_batch: int | None = None):
    """The extension when the fused kernel can serve this call, else None."""
    if x2.dtype != torch.float32 or x2.shape[0] == 0 or group % CHUNK:
        return None
    if max_batch is not None and x2.shape[0] > max_batch:
        return None
    return load_extension()


def lowbit_matmul(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int, bits: int,
                  *, int8_activations: bool = False) -> Tensor:
    """What the codecs call: `lowbit_linear` / `lowbit_linear_a8`, minus the custom op's Python
    dispatch (tens of µs per call — more than the kernel itself on SmolLM2-sized layers) when
    neither autograd nor ``torch.compile`` needs the op. Same kernels, same numbers."""
    args = (x, packed, scale, offset, zero_point, group, bits)
    if (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return lowbit_linear_a8(*args) if int8_activations else lowbit_linear(*args)
    return _forward_a8(*args) if int8_activations else _forward(*args)


def _forward(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
             bits: int) -> Tensor:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    ext = _fused(x2, group, LOWBIT_MAX_BATCH)
    if ext is not None:
        y = ext.lowbit_gemv(x2.contiguous(), packed, scale, offset, zero_point, group, bits)
    else:
        y = tiled_linear(x2, packed.shape[0], _decoder(packed, scale, offset, zero_point, group, bits))
    return y.reshape(*lead, packed.shape[0])


def _forward_a8(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
                bits: int) -> Tensor:
    if x.dtype != torch.float32:
        raise ValueError(f"int8 activation quantisation takes float32 inputs, got {x.dtype}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    ext = _fused(x2, group)
    if ext is not None and ext.has_avx512_vnni():
        y = ext.lowbit_gemv_a8(x2, packed, scale, offset, zero_point, group, bits)
    else:
        B, K = x2.shape
        xq, dx = quantize_activations(x2, group)
        x_deq = (xq.float().reshape(B, -1, group) * dx[..., None]).reshape(B, K)
        y = tiled_linear(x_deq, packed.shape[0], _decoder(packed, scale, torch.zeros_like(offset), False, group, bits))
        y += x2.reshape(B, -1, group).sum(-1) @ affine_offset(scale, offset, zero_point, torch.float32).T
    return y.reshape(*lead, packed.shape[0])


def _check(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int, bits: int) -> None:
    """Shapes and dtypes of the public ops' inputs (ValueError): every code value is valid, so
    consistent shapes are all a layout needs."""
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16) or x.dim() == 0:
        raise ValueError(f"lowbit_linear: x must be a floating-point tensor (..., K), got {x.dtype} {tuple(x.shape)}")
    if bits not in (2, 3, 4):
        raise ValueError(f"lowbit_linear: bits must be 2, 3 or 4, got {bits}")
    if packed.dtype != torch.uint8 or packed.dim() != 2 or (packed.shape[1] * 8) % bits:
        raise ValueError(f"lowbit_linear: packed must be uint8 (rows, K·bits/8), got {packed.dtype} {tuple(packed.shape)}")
    rows, K = packed.shape[0], packed.shape[1] * 8 // bits
    if not (isinstance(group, int) and group >= 1 and K % group == 0):
        raise ValueError(f"lowbit_linear: group {group} does not divide the layout's {K} inputs")
    for name, t in (("scale", scale), ("offset", offset)):
        if t.dtype != torch.float16 or tuple(t.shape) != (rows, K // group):
            raise ValueError(f"lowbit_linear: {name} must be float16 {(rows, K // group)}, got {t.dtype} {tuple(t.shape)}")
    if x.shape[-1] != K:
        raise ValueError(f"lowbit_linear: x has {x.shape[-1]} features, the layout holds {K}")


@torch.library.custom_op("reality_stone::lowbit_linear", mutates_args=())
def lowbit_linear(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
                  bits: int) -> Tensor:
    """x (..., K) @ Wᵀ for W in the ``bits``-bit compute layout; scale/offset (rows, K/group) fp16.
    Malformed inputs raise ValueError."""
    _check(x, packed, scale, offset, group, bits)
    return _forward(x, packed.contiguous(), scale.contiguous(), offset.contiguous(), zero_point, group, bits)


@torch.library.custom_op("reality_stone::lowbit_linear_a8", mutates_args=())
def lowbit_linear_a8(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
                     bits: int) -> Tensor:
    """x (..., K) float32 @ Wᵀ with x quantised to int8 per group (see the module docstring)."""
    _check(x, packed, scale, offset, group, bits)
    return _forward_a8(x, packed.contiguous(), scale.contiguous(), offset.contiguous(), zero_point, group, bits)


def _fake(x, packed, scale, offset, zero_point, group, bits):
    _check(x, packed, scale, offset, group, bits)
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _setup(ctx, inputs, output):
    _, packed, scale, offset, zero_point, group, bits = inputs
    ctx.save_for_backward(packed, scale, offset)
    ctx.zero_point, ctx.group, ctx.bits = zero_point, group, bits


def _backward(ctx, grad):
    packed, scale, offset = ctx.saved_tensors
    g2 = grad.reshape(-1, grad.shape[-1])
    K = packed.shape[1] * 8 // ctx.bits
    decode = _decoder(packed, scale, offset, ctx.zero_point, ctx.group, ctx.bits)
    gx = tiled_linear_transposed(g2, packed.shape[0], K, decode)
    return gx.reshape(*grad.shape[:-1], K), None, None, None, None, None, None


for _op in (lowbit_linear, lowbit_linear_a8):
    _op.register_fake(_fake)
    _op.register_autograd(_backward, setup_context=_setup)
