"""Group-wise round-to-nearest (RTN) integer quantisation: the baseline every codec is compared with.

Each row of the (out, in) weight is split into groups of ``group`` consecutive inputs (the
input dim is zero-padded to a multiple; padding is cropped on decode). Per group:

* asymmetric (default): scale = (max − min)/(2^bits − 1), offset = min, both stored fp16;
  q = round((w − offset)/scale) ∈ [0, 2^bits − 1]; w ≈ q·scale + offset.
* symmetric: scale = absmax/(2^(bits−1) − 1), stored fp16; q ∈ [−(2^(bits−1) − 1), 2^(bits−1) − 1]
  stored with an offset of 2^(bits−1); w ≈ q·scale.

The fp16 rounding of scale/offset is applied *before* computing q, so decode is exactly
what the encoder optimised for. Codes are bit-packed (`bitpack`), only for the real inputs
(a partial last group costs no padding); storage per weight is ``bits + 16·(1 or 2)/group``
bits (per full group) plus the header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from reality_stone.codecs.base import CodecConfig, Encoded, check_weight, register
from reality_stone.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from reality_stone.kernels.int_lowbit import CHUNK, layout_bits, pack_lowbit_layout, unpack_lowbit_layout

__all__ = ["GroupQuantMatmul", "RTNConfig", "RTNEncoded", "check_group"]

# A group longer than the row pads every row to the group (codes, scales and the kernel layout):
# allowed up to this many inputs (so a small layer can share a model-wide group), never beyond —
# a stored group of 2^22 on a 64-input layer would make a few-KB blob allocate gigabytes.
MAX_GROUP_OVER_ROW = 1024


def check_group(group: int, in_features: int) -> None:
    """A group may exceed the row length only up to `MAX_GROUP_OVER_ROW` inputs (ValueError)."""
    if group > max(in_features, MAX_GROUP_OVER_ROW):
        raise ValueError(f"group {group} is longer than the {in_features} inputs of the layer "
                         f"(at most max(inputs, {MAX_GROUP_OVER_ROW}))")


@register("rtn")
@dataclass(frozen=True)
class RTNConfig(CodecConfig):
    description: ClassVar[str] = "group-wise round-to-nearest integers (the baseline); fused 2/3/4-bit kernels"
    bits: int = 4
    group: int = 128
    symmetric: bool = False

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise ValueError(f"bits must be an integer in [2, 8], got {self.bits!r}")
        if not (isinstance(self.group, int) and self.group >= 1):
            raise ValueError(f"group must be a positive integer, got {self.group!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {self.symmetric!r}")

    def nominal_bits_per_weight(self) -> float:
        return self.bits + 16 * (1 if self.symmetric else 2) / self.group

    def encode(self, weight: Tensor, stats=None) -> "RTNEncoded":
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
        return RTNEncoded(self, (out_f, in_f), q.to(torch.uint8).reshape(out_f, -1), scale, offset)

    @classmethod
    def _decode_payload(cls, config, shape, payload):
        return RTNEncoded.from_payload(config, shape, payload)


class GroupQuantMatmul(Encoded):
    """``matmul`` for codecs whose weight is ``q·scale + offset`` per group with ≤ 4-bit codes.

    Subclasses hold their codes with ``_hold_codes`` and provide ``_affine(codes)`` → (codes,
    scale fp16, offset or zero point fp16 (out, n_groups), zero_point: bool) — the stored
    tensors, so the kernel reads the stored bits per weight. `kernel_layout` packs them once
    into the compute layout of `reality_stone.kernels.int_lowbit` (``bits`` bits per code);
    the fused kernels (`reality_stone.kernels.int_lowbit_ops`) then never build W. Codes of
    more than 4 bits take the reference path (decode → matmul).
    """

    def _affine(self, codes: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _hold_codes(self, codes: Tensor) -> None:
        """Keep ``codes`` (out, padded_in) — for ≤ 4-bit codes only inside the compute layout
        (``bits`` bits per code instead of a byte): the layout is built here and the byte-per-code
        tensor dropped, so a loaded or compressed model holds the stored bits, not 2–4× more."""
        self._codes, self._padded_in, self._layout = codes, codes.shape[1], None
        if self.config.bits <= 4:
            self.kernel_layout()
            self._codes = None

    @property
    def codes(self) -> Tensor:
        """(out, padded_in) uint8 codes (read back from the compute layout where that holds them)."""
        if self._codes is not None:
            return self._codes
        packed, bits = self._layout[0], self._layout[5]
        return unpack_lowbit_layout(packed, bits)[:, : self._padded_in].to(torch.uint8)

    def kernel_layout(self):
        """(packed uint8, scale fp16, offset/zero fp16, zero_point, group, layout bits); None for > 4-bit codes.

        The input dim is padded to a multiple of lcm(group, 64) with zero-scale groups.
        """
        if self.config.bits > 4:
            return None
        if self._layout is None:
            codes, scale, offset, zero_point = self._affine(self._codes)
            g = self.config.group
            step = math.lcm(g, CHUNK)
            K = -(-codes.shape[1] // step) * step
            extra = (K - codes.shape[1]) // g
            codes = torch.nn.functional.pad(codes, (0, K - codes.shape[1]))
            # the stored fp16 tensors themselves unless padding is needed (no second copy)
            scale, offset = (torch.nn.functional.pad(t.half(), (0, extra)) if extra else t.half().contiguous()
                             for t in (scale, offset))
            bits = layout_bits(self.config.bits)
            self._layout = (pack_lowbit_layout(codes, bits), scale, offset, zero_point, g, bits)
        return self._layout

    def _matmul(self, x: Tensor, int8_activations: bool) -> Tensor:
        from reality_stone.kernels.int_lowbit_ops import lowbit_matmul

        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        packed, scale, offset, zero_point, group, bits = self.kernel_layout()
        K = packed.shape[1] * 8 // bits
        if K != x.shape[-1]:
            x = torch.nn.functional.pad(x, (0, K - x.shape[-1]))
        return lowbit_matmul(x, packed, scale, offset, zero_point, group, bits, int8_activations=int8_activations)

    def matmul(self, x: Tensor) -> Tensor:
        if self.config.bits > 4:
            return super().matmul(x)
        return self._matmul(x, False)

    def matmul_int8_activations(self, x: Tensor) -> Tensor:
        """``x @ W.T`` with x quantised to int8 per group on the fly (AVX-512 VNNI kernel; see
        `reality_stone.kernels.int_lowbit_ops.lowbit_linear_a8`). ≤ 4-bit codes, float32 x."""
        if self.config.bits > 4:
            raise ValueError(f"int8 activations need codes of at most 4 bits, this weight has {self.config.bits}")
        return self._matmul(x, True)


class RTNEncoded(GroupQuantMatmul):
    """Codes (out, padded_in) uint8, scales (out, n_groups) fp16, offsets (out, n_groups) fp16 or None."""

    def __init__(self, config: RTNConfig, shape, codes: Tensor, scale: Tensor, offset: Tensor | None):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        self.scale, self.offset = scale, offset
        self._hold_codes(codes)

    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        out_f, in_f = self.shape
        g = self.config.group
        q = self.codes.reshape(out_f, -1, g).float()
        s = self.scale.float()[..., None]
        if self.config.symmetric:
            w = (q - 2 ** (self.config.bits - 1)) * s
        else:
            w = q * s + self.offset.float()[..., None]
        return w.reshape(out_f, -1)[:, :in_f].to(dtype)

    def _affine(self, codes):
        cfg = self.config
        if cfg.symmetric:  # w = (q − 2^(b−1))·s: zero point 2^(b−1)
            return codes, self.scale, torch.full_like(self.scale, 2 ** (cfg.bits - 1)), True
        return codes, self.scale, self.offset, False

    def payload(self) -> bytes:
        # only the real inputs' codes are stored; the padding of the last group is implicit
        parts = [pack_bits(self.codes[:, : self.shape[1]], self.config.bits), self.scale.numpy().astype("<f2").tobytes()]
        if self.offset is not None:
            parts.append(self.offset.numpy().astype("<f2").tobytes())
        return b"".join(parts)

    @classmethod
    def from_payload(cls, config: RTNConfig, shape, payload: bytes) -> "RTNEncoded":
        out_f, in_f = shape
        check_group(config.group, in_f)
        n_groups = -(-in_f // config.group)
        n_codes = out_f * in_f
        n_code_bytes = packed_nbytes(n_codes, config.bits)
        n_side = out_f * n_groups
        expected = n_code_bytes + 2 * n_side * (1 if config.symmetric else 2)
        if len(payload) != expected:
            raise ValueError(f"rtn payload has {len(payload)} bytes, expected {expected} (truncated or corrupt)")
        codes = torch.nn.functional.pad(unpack_bits(payload[:n_code_bytes], config.bits, n_codes).reshape(out_f, in_f),
                                        (0, n_groups * config.group - in_f)).to(torch.uint8)
        o = n_code_bytes
        scale = torch.from_numpy(np.frombuffer(payload[o : o + 2 * n_side], dtype="<f2").astype(np.float16).copy())
        offset = None
        if not config.symmetric:
            o += 2 * n_side
            offset = torch.from_numpy(np.frombuffer(payload[o:], dtype="<f2").astype(np.float16).copy())
            offset = offset.reshape(out_f, n_groups)
        if not bool(torch.isfinite(scale.float()).all()) or (offset is not None and not bool(torch.isfinite(offset.float()).all())):
            raise ValueError("corrupt rtn payload: non-finite scale or offset")
        return cls(config, shape, codes, scale.reshape(out_f, n_groups), offset)
