"""Group-wise round-to-nearest (RTN) integer quantisation: the baseline every codec is compared with.

Groups of ``group`` consecutive inputs of a row (`group_affine` holds the codes and the bytes).
Per group:

* asymmetric (default): scale = (max − min)/(2^bits − 1), offset = min, both stored fp16;
  q = round((w − offset)/scale) ∈ [0, 2^bits − 1]; w ≈ q·scale + offset.
* symmetric: scale = absmax/(2^(bits−1) − 1), stored fp16; q ∈ [−(2^(bits−1) − 1), 2^(bits−1) − 1]
  stored with an offset of 2^(bits−1); w ≈ q·scale.

The fp16 rounding of scale/offset is applied *before* computing q, so decode is exactly
what the encoder optimised for. Storage per weight is ``bits + 16·(1 or 2)/group`` bits (per
full group) plus the header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from reality_stone.codecs.base import check_weight, register
from reality_stone.codecs.group_affine import GroupAffineConfig, GroupAffineEncoded, check_group

__all__ = ["RTNConfig"]

@register("rtn", GroupAffineEncoded)
@dataclass(frozen=True)
class RTNConfig(GroupAffineConfig):
    """Group-wise round-to-nearest integers (the baseline); fused 2/3/4-bit kernels.

    Use when: the baseline every result is compared with, and the fastest 2/3/4-bit kernels when no
    calibration text is at hand; at 4 bits with group ≤ 64 it is often good enough.
    """

    error_bound: ClassVar[float] = 0.09  # 4-bit, group 128 (measured ≤ 0.066)
    bits: int = 4
    group: int = 128
    symmetric: bool = False

    def __post_init__(self):
        self._check_bits_and_group()
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {self.symmetric!r}")

    @property
    def affine_form(self) -> str:
        return "symmetric" if self.symmetric else "offset"

    def encode(self, weight: Tensor, stats=None) -> GroupAffineEncoded:
        check_weight(weight)
        out_f, in_f = weight.shape
        check_group(self.group, in_f)
        g = self.group
        n_groups = -(-in_f // g)
        W = torch.zeros(out_f, n_groups * g, dtype=torch.float32)
        W[:, :in_f] = weight.detach().float()
        Wg = W.reshape(out_f, n_groups, g)
        valid = torch.zeros(n_groups * g, dtype=torch.bool)
        valid[:in_f] = True
        valid = valid.reshape(n_groups, g)
        big = torch.finfo(torch.float32).max
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            absmax = Wg.abs().amax(dim=2)
            scale = (absmax / qmax).half()
            s = scale.float()
            q = torch.where(s[..., None] > 0, torch.round(Wg / s.clamp_min(1e-30)[..., None]), torch.zeros_like(Wg))
            q = q.clamp(-qmax, qmax) + 2 ** (self.bits - 1)
            offset = None
        else:
            qmax = 2**self.bits - 1
            lo = torch.where(valid, Wg, torch.full_like(Wg, big)).amin(dim=2)
            hi = torch.where(valid, Wg, torch.full_like(Wg, -big)).amax(dim=2)
            offset = lo.half()
            o = offset.float()
            scale = ((hi - o) / qmax).half()
            s = scale.float()
            q = torch.where(s[..., None] > 0, torch.round((Wg - o[..., None]) / s.clamp_min(1e-30)[..., None]),
                            torch.zeros_like(Wg))
            q = q.clamp(0, qmax)
        q = torch.where(valid, q, torch.zeros_like(q))
        return GroupAffineEncoded(self, (out_f, in_f), q.to(torch.uint8).reshape(out_f, -1), scale, offset)
