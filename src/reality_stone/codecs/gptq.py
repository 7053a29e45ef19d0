"""GPTQ (Frantar et al. 2022): group-wise integers chosen with the layer's activation statistics.

Algorithm 1 of the paper, in plain torch (float64): Hessian H = E[x xᵀ] from
`reality_stone.calibration` (the factor 2 of the paper cancels), damping ``damp`` × the mean
diagonal, the upper Cholesky factor U of H⁻¹, then columns left to right: quantise the
column, spread its error over the not-yet-quantised columns (row ``col`` of U), with lazy
updates in blocks of ``blocksize`` columns. Inputs that never fire (H_ii = 0) are set to 0.

The grid is `rtn`'s asymmetric one (fp16 scale and offset per group of ``group`` consecutive
inputs), so the result is the same group-affine payload the fused 2/3/4-bit kernels run:
a GPTQ file decodes and multiplies at int-kernel speed. Group parameters:

* ``act_order=False``: fitted when the group's first column is reached, on the
  error-updated weights (the reference implementation reads a not-yet-updated copy inside a
  lazy block; reading the updated one is what the algorithm intends).
* ``act_order=True``: columns are visited by decreasing H_ii (most active inputs first,
  GPTQModel's ``desc_act``) with *static* groups — each group's scale/offset fitted up front on
  the original weights (GPTQModel's ``static_groups``), so groups stay contiguous in the
  original input order and the payload needs no per-column group index.

`tests/codecs/test_gptq.py` checks the columns against a brute-force sequential OBS update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from reality_stone.calibration import hessian_of
from reality_stone.codecs.base import check_weight, register
from reality_stone.codecs.group_affine import GroupAffineConfig, GroupAffineEncoded, check_group

__all__ = ["GPTQConfig", "gptq_quantize", "prepare_hessian"]


@register("gptq", GroupAffineEncoded)
@dataclass(frozen=True)
class GPTQConfig(GroupAffineConfig):
    """GPTQ: integers with error feedback under the calibration Hessian; rtn's payload, fused 2/3/4-bit
    kernels.

    Use when: the standard calibrated integer baseline (GPTQModel/llm-compressor's algorithm): needs
    calibration text; runs the int kernels.
    """

    calibration: ClassVar[str] = "required"
    error_bound: ClassVar[float] = 0.12  # 4-bit, group 128 (measured ≤ 0.089; it trades weight error for output error)
    affine_form: ClassVar[str] = "offset"  # rtn's asymmetric grid: w = q·scale + offset

    bits: int = 4
    group: int = 128
    damp: float = 0.01
    act_order: bool = False
    blocksize: int = 128

    def __post_init__(self):
        self._check_bits_and_group()
        if not (isinstance(self.damp, (int, float)) and not isinstance(self.damp, bool) and 0 < self.damp < 1):
            raise ValueError(f"damp must be a number in (0, 1), got {self.damp!r}")
        if not isinstance(self.act_order, bool):
            raise ValueError(f"act_order must be a bool, got {self.act_order!r}")
        if not (isinstance(self.blocksize, int) and not isinstance(self.blocksize, bool) and self.blocksize >= 1):
            raise ValueError(f"blocksize must be a positive integer, got {self.blocksize!r}")
        if not self.act_order and self.blocksize % self.group and self.group % self.blocksize:
            raise ValueError(f"blocksize ({self.blocksize}) and group ({self.group}) must divide one another")

    def encode(self, weight: Tensor, stats=None) -> GroupAffineEncoded:
        check_weight(weight)
        check_group(self.group, weight.shape[1])
        if stats is None:
            raise ValueError("gptq needs calibration statistics (stats=ActivationStats of the layer's inputs, "
                             "e.g. rs.compress(model, config, calibration=texts)); for data-free use rtn or hqq")
        return gptq_quantize(weight, hessian_of(stats, weight.shape[1]), self)


def prepare_hessian(H: Tensor, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """Damped float64 Hessian and its dead-input mask (inputs that never fire get H_ii = 1)."""
    H = H.double().clone()
    dead = H.diagonal() <= 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())  # in place: no second (in, in) matrix for the identity
    return H, dead


def _group_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """fp16 scale and offset of the asymmetric grid for the columns ``w`` (out, g) — as `rtn`."""
    qmax = 2**bits - 1
    offset = w.amin(1).half()
    scale = ((w.amax(1) - offset.double()) / qmax).half()
    return scale, offset


def _quant(w: Tensor, scale: Tensor, offset: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Codes and dequantised values of the column ``w`` (out,) on the grid (scale, offset)."""
    s, o = scale.double(), offset.double()
    q = torch.where(s > 0, torch.round((w - o) / s.clamp_min(1e-30)), torch.zeros_like(w)).clamp(0, 2**bits - 1)
    return q, q * s + o


def gptq_quantize(weight: Tensor, hessian: Tensor, config: GPTQConfig) -> GroupAffineEncoded:
    """GPTQ-quantise ``weight`` (out, in) under the input second moment ``hessian`` (in, in)."""
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f) or not bool(torch.isfinite(hessian).all()):
        raise ValueError(f"hessian must be a finite ({in_f}, {in_f}) matrix, got {tuple(hessian.shape)}")
    bits, group, blocksize = config.bits, config.group, config.blocksize
    n_groups = -(-in_f // group)
    n = n_groups * group
    W = torch.zeros(out_f, n, dtype=torch.float64)
    W[:, :in_f] = weight.double()
    # (in, in) float64 matrices dominate the memory (5632² ≈ 254 MB each): at most two live at once
    if n == in_f:
        Hp = hessian.double()
    else:
        Hp = torch.zeros(n, n, dtype=torch.float64)
        Hp[:in_f, :in_f] = hessian.double()
    H, dead = prepare_hessian(Hp, config.damp)
    diagonal = Hp.diagonal().clone()
    del Hp
    W[:, dead] = 0
    scales = torch.zeros(out_f, n_groups, dtype=torch.float16)
    offsets = torch.zeros(out_f, n_groups, dtype=torch.float16)
    if config.act_order:
        for g in range(n_groups):  # static groups, fitted on the original weights
            scales[:, g], offsets[:, g] = _group_params(W[:, g * group : (g + 1) * group], bits)
        perm = torch.argsort(diagonal, descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = None
    L = torch.linalg.cholesky(H)
    del H
    Hinv = torch.cholesky_inverse(L)
    del L
    U = torch.linalg.cholesky(Hinv, upper=True)
    del Hinv
    codes = torch.zeros(out_f, n, dtype=torch.uint8)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if perm is None:
                g = col // group
                if col % group == 0:
                    # the group's columns: updated copy inside this block, lazily-updated W beyond it
                    cols = (torch.cat([W1[:, i:], W[:, i2 : col + group]], 1) if col + group > i2
                            else W1[:, i : i + group])
                    scales[:, g], offsets[:, g] = _group_params(cols, bits)
            else:
                g = int(perm[col]) // group
            q, deq = _quant(W1[:, i], scales[:, g], offsets[:, g], bits)
            codes[:, col] = q.to(torch.uint8)
            err = (W1[:, i] - deq) / U[col, col]
            W1[:, i:] -= err[:, None] * U[col, col:i2][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    if perm is not None:
        codes[:, perm] = codes.clone()
    codes[:, in_f:] = 0
    return GroupAffineEncoded(config, (out_f, in_f), codes, scales, offsets)
