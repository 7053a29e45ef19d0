"""Dispatch for group-quantised matmuls: fused C++ kernels, tiled torch path, autograd, custom ops.

`lowbit_linear` (fp32 activations, exact to fp32 rounding):

* batch ≤ 256 (`linear_op.MAX_FUSED_BATCH`), float32, group a multiple of 64, kernel built: `int_lowbit_cpu.cpp`
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

Both are ``torch.library.custom_op`` (so ``torch.compile`` traces them), registered with their
fake, backward (the input gradient by the same tiled dequantisation) and dispatch by
`reality_stone.kernels.linear_op`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.int_lowbit import CHUNK, affine_offset, dequantize_rows, quantize_activations
from reality_stone.kernels.linear_op import MAX_FUSED_BATCH, linear_kernel
from reality_stone.kernels.tiled import tiled_linear

__all__ = ["lowbit_linear", "lowbit_linear_a8", "lowbit_matmul"]

def _decoder(packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int, bits: int, in_features=None):
    return lambda r0, r1, dtype: dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], zero_point, group, bits,
                                                 dtype)


def _fused(x: Tensor, group: int, max_batch: int | None = None):
    """The extension when the fused kernel can serve this call (x (..., ≤ K) float32, non-empty), else None."""
    if x.dtype != torch.float32 or x.numel() == 0 or group % CHUNK:
        return None
    if max_batch is not None and x.numel() // x.shape[-1] > max_batch:
        return None
    return load_extension()


def _padded_rows(x: Tensor, packed: Tensor, bits: int) -> Tensor:
    """x as (batch, K) rows, zero-extended to the layout's K inputs (the torch paths' input)."""
    x2 = x.reshape(-1, x.shape[-1])
    K = packed.shape[1] * 8 // bits
    return x2 if x2.shape[1] == K else torch.nn.functional.pad(x2, (0, K - x2.shape[1]))


# The fused calls take x (..., ≤ K) as it is and return (..., rows): no reshape or pad around them
# (each torch op costs ~1 µs; a SmolLM2-sized layer's kernel takes ~10 µs).

def _forward(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
             bits: int) -> Tensor:
    ext = _fused(x, group, MAX_FUSED_BATCH["lowbit_linear"])
    if ext is not None:
        return ext.lowbit_gemv(x.contiguous(), packed, scale, offset, zero_point, group, bits)
    y = tiled_linear(_padded_rows(x, packed, bits), packed.shape[0], _decoder(packed, scale, offset, zero_point, group,
                                                                              bits))
    return y.reshape(*x.shape[:-1], packed.shape[0])


_VNNI: bool | None = None  # whether the extension's int8 kernel runs here (asked once)


def _forward_a8(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
                bits: int) -> Tensor:
    global _VNNI
    if x.dtype != torch.float32:
        raise ValueError(f"int8 activation quantisation takes float32 inputs, got {x.dtype}")
    ext = _fused(x, group, MAX_FUSED_BATCH["lowbit_linear_a8"])
    if ext is not None:
        if _VNNI is None:
            _VNNI = bool(ext.has_avx512_vnni())
        if _VNNI:
            return ext.lowbit_gemv_a8(x.contiguous(), packed, scale, offset, zero_point, group, bits)
    x2 = _padded_rows(x, packed, bits)
    B, K = x2.shape
    xq, dx = quantize_activations(x2, group)
    x_deq = (xq.float().reshape(B, -1, group) * dx[..., None]).reshape(B, K)
    y = tiled_linear(x_deq, packed.shape[0], _decoder(packed, scale, torch.zeros_like(offset), False, group, bits))
    y += x2.reshape(B, -1, group).sum(-1) @ affine_offset(scale, offset, zero_point, torch.float32).T
    return y.reshape(*x.shape[:-1], packed.shape[0])


def _check(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int, bits: int) -> None:
    """Shapes and dtypes of the public ops' inputs (ValueError): every code value is valid, so
    consistent shapes are all a layout needs."""
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16) or x.dim() == 0:
        raise ValueError(f"lowbit_linear: x must be a floating-point tensor (..., K), got {x.dtype} {tuple(x.shape)}")
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"lowbit_linear: bits must be 2, 3, 4 or 8, got {bits}")
    if packed.dtype != torch.uint8 or packed.dim() != 2 or (packed.shape[1] * 8) % bits:
        raise ValueError(f"lowbit_linear: packed must be uint8 (rows, K·bits/8), got {packed.dtype} {tuple(packed.shape)}")
    rows, K = packed.shape[0], packed.shape[1] * 8 // bits
    if not (isinstance(group, (int, torch.SymInt)) and group >= 1 and K % group == 0):  # SymInt: torch.compile
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


def _rows(packed, *_):
    return packed.shape[0]


_KERNELS = {op: linear_kernel(op, forward=fwd, check=lambda x, p, s, o, zp, g, b: _check(x, p, s, o, g, b),
                              rows=_rows, decoder=_decoder)
            for op, fwd in ((lowbit_linear, _forward), (lowbit_linear_a8, _forward_a8))}


def lowbit_matmul(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int, bits: int,
                  *, int8_activations: bool = False) -> Tensor:
    """What the codecs call: `lowbit_linear` / `lowbit_linear_a8` (through `LinearKernel`, which
    skips the custom op's dispatch when neither autograd nor ``torch.compile`` needs it). x may be
    narrower than the layout (a weight whose last group is padded): the missing inputs are zero."""
    kernel = _KERNELS[lowbit_linear_a8 if int8_activations else lowbit_linear]
    K = packed.shape[1] * 8 // bits
    if x.shape[-1] != K and kernel.needs_op(x):  # the op's contract: x (..., K)
        x = torch.nn.functional.pad(x, (0, K - x.shape[-1]))
    return kernel(x, packed, scale, offset, zero_point, group, bits)
