"""Dispatch for seed-basis matmuls: fused C++ kernel, tiled torch path, autograd, custom op.

* batch ≤ 8 (`linear_op.MAX_FUSED_BATCH`), float32, kernel built (`reality_stone.kernels.extension`):
  `seedbasis_cpu.cpp`;
* otherwise: the tiled torch path (`kernels.tiled`: decode 256 rows at a time from the
  layout and multiply; never the whole dense weight).

`seedbasis_linear` is a ``torch.library.custom_op`` (traced by ``torch.compile``), registered
with its fake, backward (the input gradient by the same tiled decode) and dispatch by
`reality_stone.kernels.linear_op`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.seedbasis import EXP_MAX, EXP_MIN, SeedBasisLayout, block_sign_sums, decode_rows
from reality_stone.kernels.linear_op import MAX_FUSED_BATCH, linear_kernel
from reality_stone.kernels.tiled import tiled_linear

__all__ = ["seedbasis_linear", "seedbasis_matmul"]

def _layout(pattern, seeds, exps, codes, coeffs, rows) -> SeedBasisLayout:
    return SeedBasisLayout(pattern, seeds, exps, codes, coeffs, rows)


def _decoder(pattern, seeds, exps, codes, coeffs, rows, in_features: int):
    lay = _layout(pattern, seeds, exps, codes, coeffs, rows)
    return lambda r0, r1, dtype: decode_rows(lay, r0, r1, in_features, dtype)


def _check(x: Tensor, pattern: Tensor, seeds: Tensor, exps: Tensor, codes: Tensor, coeffs: int, rows: int) -> None:
    """Shapes and dtypes of the public op's inputs (ValueError). Value ranges (seeds < 2^S,
    exponents in [-126, 120]) are checked where they are used: by the C++ kernel, or below for the
    tiled path."""
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"seedbasis_linear: x must be a floating-point tensor, got {x.dtype}")
    if pattern.dtype != torch.int32 or pattern.dim() != 2 or pattern.shape[1] not in (4, 8) or pattern.shape[0] < 1:
        raise ValueError(f"seedbasis_linear: pattern must be int32 (2^S, 4 or 8), got {pattern.dtype} {tuple(pattern.shape)}")
    PL = pattern.shape[1]
    if seeds.dtype != torch.int16 or seeds.dim() != 2 or seeds.shape[1] % 8:
        raise ValueError(f"seedbasis_linear: seeds must be int16 (nb, Np) with Np a multiple of 8, got "
                         f"{seeds.dtype} {tuple(seeds.shape)}")
    nb, Np = seeds.shape
    if exps.dtype != torch.int8 or tuple(exps.shape) != (nb, Np):
        raise ValueError(f"seedbasis_linear: exps must be int8 {(nb, Np)}, got {exps.dtype} {tuple(exps.shape)}")
    if codes.dtype != torch.uint8 or tuple(codes.shape) != (nb, Np, PL // 2):
        raise ValueError(f"seedbasis_linear: codes must be uint8 {(nb, Np, PL // 2)}, got {codes.dtype} {tuple(codes.shape)}")
    if not (1 <= coeffs <= PL and 0 <= rows <= Np and Np - rows < 8):
        raise ValueError(f"seedbasis_linear: coeffs={coeffs} / rows={rows} do not fit the layout (PL={PL}, Np={Np})")
    if x.dim() == 0 or not (8 * (nb - 1) < x.shape[-1] <= 8 * nb):
        raise ValueError(f"seedbasis_linear: x has {x.shape[-1] if x.dim() else 0} features, the layout's "
                         f"{nb} blocks of 8 hold {8 * (nb - 1) + 1}…{8 * nb}")


def _check_values(pattern: Tensor, seeds: Tensor, exps: Tensor) -> None:
    if seeds.numel() and int(seeds.to(torch.int32).bitwise_and(0xFFFF).max()) >= pattern.shape[0]:
        raise ValueError(f"seedbasis_linear: a seed is out of range (the pattern table holds {pattern.shape[0]})")
    if exps.numel() and not (int(exps.min()) >= EXP_MIN and int(exps.max()) <= EXP_MAX):
        raise ValueError(f"seedbasis_linear: a block exponent is out of range [{EXP_MIN}, {EXP_MAX}]")
    if pattern.numel() and not (int(pattern.min()) >= 0 and int(pattern.max()) < 256):
        raise ValueError("seedbasis_linear: a pattern id is out of [0, 256)")


def _forward(x: Tensor, pattern: Tensor, seeds: Tensor, exps: Tensor, codes: Tensor, coeffs: int, rows: int) -> Tensor:
    lead, in_f = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, in_f)
    fused = x2.dtype == torch.float32 and 0 < x2.shape[0] <= MAX_FUSED_BATCH["seedbasis_linear"]
    ext = load_extension() if fused else None
    if ext is not None:
        v = block_sign_sums(x2, seeds.shape[0])
        try:
            y = ext.seedbasis_gemv(v, pattern, seeds, exps, codes)[:, :rows]
        except RuntimeError as exc:  # the kernel's range checks
            raise ValueError(f"seedbasis_linear: {str(exc).splitlines()[0]}") from None
    else:
        _check_values(pattern, seeds, exps)
        y = tiled_linear(x2, rows, _decoder(pattern, seeds, exps, codes, coeffs, rows, in_f))
    return y.reshape(*lead, rows)


@torch.library.custom_op("reality_stone::seedbasis_linear", mutates_args=())
def seedbasis_linear(x: Tensor, pattern: Tensor, seeds: Tensor, exps: Tensor, codes: Tensor, coeffs: int,
                     rows: int) -> Tensor:
    """x (..., in) @ Wᵀ for W in the seed-basis compute layout (`seedbasis_layout`). Malformed
    inputs (shapes, dtypes, seeds ≥ 2^S, exponents outside [−126, 120]) raise ValueError."""
    _check(x, pattern, seeds, exps, codes, coeffs, rows)
    return _forward(x, *(t.contiguous() for t in (pattern, seeds, exps, codes)), coeffs, rows)


_KERNEL = linear_kernel(seedbasis_linear, forward=_forward, check=_check, rows=lambda *lay: lay[-1], decoder=_decoder)


def seedbasis_matmul(x: Tensor, lay: SeedBasisLayout) -> Tensor:
    """``x @ Wᵀ`` for a layout the codec built (`LinearKernel`: the custom op only where autograd
    or ``torch.compile`` needs it)."""
    return _KERNEL(x, lay.pattern, lay.seeds, lay.exps, lay.codes, lay.coeffs, lay.rows)
