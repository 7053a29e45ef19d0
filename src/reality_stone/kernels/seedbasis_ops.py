"""Dispatch for seed-basis matmuls: fused C++ kernel, tiled torch path, autograd, custom op.

* float32, batch ≤ `linear_op.MAX_FUSED_BATCH`, kernel built (`reality_stone.kernels.extension`):
  `seedbasis_cpu.cpp`;
* otherwise: the tiled torch path (`kernels.tiled`: decode 256 rows at a time from the
  layout and multiply; never the whole dense weight).

`seedbasis_linear_a8` (x quantised to int8 per 64 inputs — the numbers of
`seedbasis.seedbasis_linear_a8_reference`): the VNNI kernel (any batch) on CPUs with AVX-512
VNNI + VBMI, for formats `seedbasis.a8_fusable` admits; otherwise the same arithmetic in torch.
Its backward is the straight-through estimator.

Both are ``torch.library.custom_op`` (traced by ``torch.compile``), registered
with its fake, backward (the input gradient by the same tiled decode) and dispatch by
`reality_stone.kernels.linear_op`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.seedbasis import (EXP_MAX, EXP_MIN, PAD_BYTES, SeedBasisLayout, a8_fusable, decode_rows,
                                             seedbasis_linear_a8_reference)
from reality_stone.kernels.linear_op import MAX_FUSED_BATCH, linear_kernel
from reality_stone.kernels.tiled import tiled_linear

__all__ = ["seedbasis_linear", "seedbasis_linear_a8", "seedbasis_matmul"]


def _layout(pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows) -> SeedBasisLayout:
    return SeedBasisLayout(pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows)


def _decoder(pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows, in_features: int):
    lay = _layout(pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows)
    return lambda r0, r1, dtype: decode_rows(lay, r0, r1, in_features, dtype)


def _check(x: Tensor, pattern: Tensor, records: Tensor, row_exp: Tensor, seed_bits: int, exp_bits: int,
           coeff_bits: int, rows: int) -> None:
    """Shapes, dtypes and sizes of the public op's inputs (ValueError). Every value of a well-sized
    layout is in range by construction (S-bit seeds index a 2^S-row pattern table)."""
    name = "seedbasis_linear"
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: x must be a floating-point tensor, got {x.dtype}")
    if not (1 <= seed_bits <= 16 and 0 <= exp_bits <= 4 and 1 <= coeff_bits <= 4):
        raise ValueError(f"{name}: field widths S={seed_bits}, E={exp_bits}, Q={coeff_bits} outside "
                         f"S ∈ [1, 16], E ∈ [0, 4], Q ∈ [1, 4]")
    if pattern.dtype != torch.uint8 or pattern.dim() != 2 or pattern.shape[0] != 2**seed_bits \
            or not 1 <= pattern.shape[1] <= 8:
        raise ValueError(f"{name}: pattern must be uint8 (2^S = {2**seed_bits}, P ≤ 8), got "
                         f"{pattern.dtype} {tuple(pattern.shape)}")
    if row_exp.dtype != torch.int8 or row_exp.dim() != 1 or row_exp.shape[0] % 8:
        raise ValueError(f"{name}: row_exp must be int8 (Np,), Np a multiple of 8, got "
                         f"{row_exp.dtype} {tuple(row_exp.shape)}")
    Np = row_exp.shape[0]
    if not (0 <= rows <= Np and Np - rows < 8):
        raise ValueError(f"{name}: rows={rows} does not fit row_exp's {Np} (rows padded to 8)")
    if x.dim() == 0 or x.shape[-1] < 1:
        raise ValueError(f"{name}: x needs a feature dimension")
    nb = -(-x.shape[-1] // 8)
    R = seed_bits + exp_bits + pattern.shape[1] * coeff_bits
    want = Np // 8 * nb * R + PAD_BYTES
    if records.dtype != torch.uint8 or records.dim() != 1 or records.shape[0] != want:
        raise ValueError(f"{name}: records must be uint8 ({want},) for {Np} rows × {x.shape[-1]} features "
                         f"(records of {R} bytes + {PAD_BYTES}), got {records.dtype} {tuple(records.shape)}")


# The fused calls take x (..., in) as it is and return (..., rows): no reshape, slice or copy around
# them (each torch op costs ~1 µs; a SmolLM2-sized layer's kernel takes 10–40 µs).

def _forward(x: Tensor, pattern: Tensor, records: Tensor, row_exp: Tensor, seed_bits: int, exp_bits: int,
             coeff_bits: int, rows: int) -> Tensor:
    limit = MAX_FUSED_BATCH["seedbasis_linear"]
    fused = x.dtype == torch.float32 and x.numel() > 0 and (limit is None or x.numel() // x.shape[-1] <= limit)
    ext = load_extension() if fused else None
    if ext is not None:
        try:
            return ext.seedbasis_gemm(x.contiguous(), pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows)
        except RuntimeError as exc:  # the kernel's value check (row exponents)
            raise ValueError(f"seedbasis_linear: {str(exc).splitlines()[0]}") from None
    if row_exp.numel() and not (EXP_MIN <= int(row_exp.min()) and int(row_exp.max()) <= EXP_MAX):
        raise ValueError(f"seedbasis_linear: row exponents must be in [{EXP_MIN}, {EXP_MAX}]")
    in_f = x.shape[-1]
    y = tiled_linear(x.reshape(-1, in_f), rows,
                     _decoder(pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows, in_f))
    return y.reshape(*x.shape[:-1], rows)


@torch.library.custom_op("reality_stone::seedbasis_linear", mutates_args=())
def seedbasis_linear(x: Tensor, pattern: Tensor, records: Tensor, row_exp: Tensor, seed_bits: int, exp_bits: int,
                     coeff_bits: int, rows: int) -> Tensor:
    """x (..., in) @ Wᵀ for W in the seed-basis compute layout (`seedbasis_layout`). Malformed
    inputs (shapes, dtypes, sizes, field widths, row exponents outside [−126, 100]) raise ValueError."""
    _check(x, pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows)
    return _forward(x, *(t.contiguous() for t in (pattern, records, row_exp)), seed_bits, exp_bits, coeff_bits, rows)


_WARNED_A8 = False


def _warn_slow_a8(no_extension: bool) -> None:
    """Once per process: the int8 path is running its torch arithmetic, far slower than either kernel."""
    global _WARNED_A8
    if not _WARNED_A8 and not no_extension:  # no extension at all: extension.py has warned already
        import warnings

        warnings.warn("seed-basis int8 activations need AVX-512 VNNI + VBMI, which this CPU lacks: they run "
                      "their torch arithmetic, far slower than the fp32 kernel — use activations='fp32' here",
                      RuntimeWarning, stacklevel=3)
        _WARNED_A8 = True


_A8_SUPPORTED: dict[tuple[int, int, int, int], bool] = {}  # (S, E, P, Q) -> the extension's answer


def _forward_a8(x: Tensor, pattern: Tensor, records: Tensor, row_exp: Tensor, seed_bits: int, exp_bits: int,
                coeff_bits: int, rows: int) -> Tensor:
    if x.dtype != torch.float32:
        raise ValueError(f"seedbasis_linear_a8: int8 activation quantisation takes float32 inputs, got {x.dtype}")
    P = pattern.shape[1]
    ext = load_extension() if x.numel() > 0 else None
    if ext is not None:
        key = (seed_bits, exp_bits, P, coeff_bits)
        if key not in _A8_SUPPORTED:
            _A8_SUPPORTED[key] = bool(ext.seedbasis_a8_supported(*key))
        if _A8_SUPPORTED[key]:
            try:
                return ext.seedbasis_gemm_a8(x.contiguous(), pattern, records, row_exp, seed_bits, exp_bits, coeff_bits,
                                             rows)
            except RuntimeError as exc:  # the kernel's value check (row exponents)
                raise ValueError(f"seedbasis_linear_a8: {str(exc).splitlines()[0]}") from None
    if row_exp.numel() and not (EXP_MIN <= int(row_exp.min()) and int(row_exp.max()) <= EXP_MAX):
        raise ValueError(f"seedbasis_linear_a8: row exponents must be in [{EXP_MIN}, {EXP_MAX}]")
    if not a8_fusable(P, coeff_bits, exp_bits, seed_bits):
        raise ValueError(f"seedbasis_linear_a8: int8 activations take ≤ 4 coefficients with Q + E ≤ 6 and "
                         f"|code << e| ≤ 127; got P={P}, Q={coeff_bits}, E={exp_bits}")
    _warn_slow_a8(ext is None)
    in_f = x.shape[-1]
    lay = _layout(pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows)
    y = seedbasis_linear_a8_reference(x.reshape(-1, in_f).contiguous(), lay, in_f, torch.float32)
    return y.reshape(*x.shape[:-1], rows)


@torch.library.custom_op("reality_stone::seedbasis_linear_a8", mutates_args=())
def seedbasis_linear_a8(x: Tensor, pattern: Tensor, records: Tensor, row_exp: Tensor, seed_bits: int, exp_bits: int,
                        coeff_bits: int, rows: int) -> Tensor:
    """x (..., in) float32 @ Wᵀ with x quantised to int8 per 64 inputs (see the module docstring).
    Malformed inputs raise ValueError, as for `seedbasis_linear`."""
    _check(x, pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows)
    return _forward_a8(x, *(t.contiguous() for t in (pattern, records, row_exp)), seed_bits, exp_bits, coeff_bits,
                       rows)


_KERNELS = {op: linear_kernel(op, forward=fwd, check=_check, rows=lambda *lay: lay[-1], decoder=_decoder)
            for op, fwd in ((seedbasis_linear, _forward), (seedbasis_linear_a8, _forward_a8))}


def seedbasis_matmul(x: Tensor, lay: SeedBasisLayout, *, int8_activations: bool = False) -> Tensor:
    """``x @ Wᵀ`` for a layout the codec built (`LinearKernel`: the custom op only where autograd
    or ``torch.compile`` needs it); ``int8_activations``: `seedbasis_linear_a8`."""
    return _KERNELS[seedbasis_linear_a8 if int8_activations else seedbasis_linear](
        x, lay.pattern, lay.records, lay.row_exp, lay.seed_bits, lay.exp_bits, lay.coeff_bits, lay.rows)
