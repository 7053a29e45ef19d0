"""HQQ (Badri & Shaji 2023, PyPI ``hqq``) as a baseline codec, serialised in our format.

The half-quadratic optimiser of the ``hqq`` package picks per-group scale and zero; we store
its codes bit-packed and scale/zero in fp16 (HQQ's own default meta dtype), so the byte
count is ``bits + 32/group`` bits per weight plus the header, exactly comparable with `rtn`.
Groups are ``group`` consecutive inputs of a row (HQQ's axis=1). The input dim is
zero-padded to a multiple of ``group``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from reality_stone.codecs.base import CodecConfig, check_weight, register
from reality_stone.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from reality_stone.codecs.rtn import GroupQuantMatmul, check_group

__all__ = ["HQQConfig", "HQQEncoded"]


@register("hqq")
@dataclass(frozen=True)
class HQQConfig(CodecConfig):
    description: ClassVar[str] = "HQQ half-quadratic scale/zero optimiser, data-free; fused 2/3/4-bit kernels"
    bits: int = 4
    group: int = 64

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 8):
            raise ValueError(f"bits must be an integer in [1, 8], got {self.bits!r}")
        if not (isinstance(self.group, int) and self.group >= 1):
            raise ValueError(f"group must be a positive integer, got {self.group!r}")

    def nominal_bits_per_weight(self) -> float:
        return self.bits + 32 / self.group

    def encode(self, weight: Tensor, stats=None) -> "HQQEncoded":
        check_weight(weight)
        check_group(self.group, weight.shape[1])
        try:
            from hqq.core.quantize import Quantizer
        except ImportError:
            raise ImportError("the hqq baseline needs the `hqq` package: pip install hqq") from None
        out_f, in_f = weight.shape
        g = self.group
        n_groups = -(-in_f // g)
        W = torch.zeros(out_f, n_groups * g, dtype=torch.float32)
        W[:, :in_f] = weight.detach().float()
        q, meta = Quantizer.quantize(W, nbits=self.bits, group_size=g, optimize=True, axis=1, bitpack=False,
                                     compute_dtype=torch.float32, device="cpu")
        codes = q.reshape(out_f, n_groups * g).to(torch.uint8)
        scale = meta["scale"].reshape(out_f, n_groups).half()
        zero = meta["zero"].reshape(out_f, n_groups).half()
        return HQQEncoded(self, (out_f, in_f), codes, scale, zero)

    @classmethod
    def _decode_payload(cls, config, shape, payload):
        return HQQEncoded.from_payload(config, shape, payload)


class HQQEncoded(GroupQuantMatmul):
    def __init__(self, config: HQQConfig, shape, codes: Tensor, scale: Tensor, zero: Tensor):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        self.scale, self.zero = scale, zero
        self._hold_codes(codes)

    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        out_f, in_f = self.shape
        q = self.codes.reshape(out_f, -1, self.config.group).float()
        w = (q - self.zero.float()[..., None]) * self.scale.float()[..., None]
        return w.reshape(out_f, -1)[:, :in_f].to(dtype)

    def _affine(self, codes):  # w = (q − zero)·s
        return codes, self.scale, self.zero, True

    def payload(self) -> bytes:
        return (pack_bits(self.codes[:, : self.shape[1]], self.config.bits) + self.scale.numpy().astype("<f2").tobytes()
                + self.zero.numpy().astype("<f2").tobytes())

    @classmethod
    def from_payload(cls, config: HQQConfig, shape, payload: bytes) -> "HQQEncoded":
        out_f, in_f = shape
        check_group(config.group, in_f)
        n_groups = -(-in_f // config.group)
        n_codes = out_f * in_f  # padding codes of the last group are not stored
        nb = packed_nbytes(n_codes, config.bits)
        side = out_f * n_groups
        if len(payload) != nb + 4 * side:
            raise ValueError(f"hqq payload has {len(payload)} bytes, expected {nb + 4 * side} (truncated or corrupt)")
        codes = torch.nn.functional.pad(unpack_bits(payload[:nb], config.bits, n_codes).reshape(out_f, in_f),
                                        (0, n_groups * config.group - in_f)).to(torch.uint8)
        scale = torch.from_numpy(np.frombuffer(payload[nb : nb + 2 * side], dtype="<f2").astype(np.float16).copy())
        zero = torch.from_numpy(np.frombuffer(payload[nb + 2 * side :], dtype="<f2").astype(np.float16).copy())
        if not bool(torch.isfinite(scale.float()).all() and torch.isfinite(zero.float()).all()):
            raise ValueError("corrupt hqq payload: non-finite scale or zero")
        return cls(config, shape, codes, scale.reshape(out_f, n_groups), zero.reshape(out_f, n_groups))
