"""One encoded type for the group-affine integer codecs: rtn, hqq and gptq.

Each row of the (out, in) weight is split into groups of ``group`` consecutive inputs (the
input dim is zero-padded to a multiple; padding is cropped on decode). A group stores
``bits``-bit codes q and fp16 parameters; the three codecs differ only in how the encoder
picks them and in the config's ``affine_form``:

* ``"offset"`` (rtn asymmetric, gptq): w ≈ q·scale + offset (scale and offset stored);
* ``"zero"`` (hqq): w ≈ (q − zero)·scale (scale and zero point stored);
* ``"symmetric"`` (rtn symmetric): w ≈ (q − 2^(bits−1))·scale (only the scale stored).

Payload: the codes bit-packed (`bitpack`) for the real inputs only (a partial last group costs
no padding), then scale (out, n_groups) fp16, then offset/zero (out, n_groups) fp16 if stored:
``bits + 16·(1 or 2)/group`` bits per weight plus the header.

Codes are held only in the compute layout of `reality_stone.kernels.int_lowbit` (built once
when the object is made, from the codes the encoder or the payload gives), so a loaded model
holds the stored bits (2, 3, 4 or 8 bits per code; 5- to 7-bit codes take a byte), and
``matmul`` runs the fused kernels (`reality_stone.kernels.int_lowbit_ops`) without building W.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from reality_stone.codecs.base import Capabilities, CodecConfig, Encoded
from reality_stone.codecs.bitpack import f16_bytes, pack_bits, packed_nbytes, read_f16, unpack_bits
from reality_stone.kernels.int_lowbit import (CHUNK, dequantize_rows, layout_bits, pack_lowbit_layout,
                                              unpack_lowbit_layout)

__all__ = ["GroupAffineConfig", "GroupAffineEncoded", "MAX_GROUP_OVER_ROW", "check_group"]

# A group longer than the row pads every row to the group (codes, scales and the kernel layout):
# allowed up to this many inputs (so a small layer can share a model-wide group), never beyond —
# a stored group of 2^22 on a 64-input layer would make a few-KB blob allocate gigabytes.
MAX_GROUP_OVER_ROW = 1024


def check_group(group: int, in_features: int) -> None:
    """A group may exceed the row length only up to `MAX_GROUP_OVER_ROW` inputs (ValueError)."""
    if group > max(in_features, MAX_GROUP_OVER_ROW):
        raise ValueError(f"group {group} is longer than the {in_features} inputs of the layer "
                         f"(at most max(inputs, {MAX_GROUP_OVER_ROW}))")


class GroupAffineConfig(CodecConfig):
    """What the configs of rtn, hqq and gptq share: their dataclass fields ``bits`` and ``group``,
    an ``affine_form``, the bit-width range ``MIN_BITS``…8, and what follows from them."""

    MIN_BITS = 2
    affine_form = "offset"

    def _check_bits_and_group(self) -> None:
        for name in ("bits", "group"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if not self.MIN_BITS <= self.bits <= 8:
            raise ValueError(f"bits must be an integer in [{self.MIN_BITS}, 8], got {self.bits!r}")
        if self.group < 1:
            raise ValueError(f"group must be a positive integer, got {self.group!r}")

    @property
    def capabilities(self) -> Capabilities:
        # the int kernels' layouts hold 2/3/4/8-bit codes (1-bit rides on 2, 5-7 bits on 8)
        return Capabilities(calibration=self.calibration, fused_matmul=True, int8_activations=True)

    def nominal_bits_per_weight(self) -> float:
        return self.bits + 16 * (1 + (self.affine_form != "symmetric")) / self.group

    def ladder(self) -> tuple["GroupAffineConfig", ...]:
        """One bit fewer, this config, one bit more (within 2…8 bits), same group and options."""
        return tuple(dataclasses.replace(self, bits=b) for b in (self.bits - 1, self.bits, self.bits + 1)
                     if max(self.MIN_BITS, 2) <= b <= 8 or b == self.bits)


class GroupAffineEncoded(Encoded):
    """Codes (out, padded_in) uint8, ``scale`` (out, n_groups) fp16, ``offset`` (out, n_groups)
    fp16 — the additive offset (form "offset") or the zero point (form "zero") — or None
    (form "symmetric"). The config supplies ``bits``, ``group`` and ``affine_form``."""

    def __init__(self, config: CodecConfig, shape, codes: Tensor, scale: Tensor, offset: Tensor | None):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        if (offset is None) != (config.affine_form == "symmetric"):
            raise ValueError(f"form {config.affine_form!r} {'stores no' if offset is None else 'stores an'} offset")
        self.scale, self.offset = scale, offset
        self._padded_in = codes.shape[1]
        # the codes are kept only inside the compute layout (bits, not a byte, per code)
        self._layout = self._build_layout(codes)

    @property
    def codes(self) -> Tensor:
        """(out, padded_in) uint8 codes, read back from the compute layout."""
        packed, bits = self._layout[0], self._layout[5]
        return unpack_lowbit_layout(packed, bits)[:, : self._padded_in].to(torch.uint8)

    def _zero_point(self) -> tuple[Tensor, bool]:
        """(offset or zero point fp16 (out, n_groups), whether it is a zero point)."""
        form = self.config.affine_form
        if form == "symmetric":
            return torch.full_like(self.scale, 2 ** (self.config.bits - 1)), True
        return self.offset, form == "zero"

    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        out_f, in_f = self.shape
        q = self.codes.reshape(out_f, -1, self.config.group).float()
        s = self.scale.float()[..., None]
        z, zero_point = self._zero_point()
        w = (q - z.float()[..., None]) * s if zero_point else q * s + z.float()[..., None]
        return w.reshape(out_f, -1)[:, :in_f].to(dtype)

    def decode_rows(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        packed, scale, offset, zero_point, group, bits = self.kernel_layout()
        return dequantize_rows(packed[rows], scale[rows], offset[rows], zero_point, group, bits, dtype)[:, : self.shape[1]]

    def kernel_layout(self):
        """(packed uint8, scale fp16, offset/zero fp16, zero_point, group, layout bits).

        The input dim is padded to a multiple of lcm(group, 64) with zero-scale groups.
        """
        return self._layout

    def _build_layout(self, codes: Tensor) -> tuple:
        offset, zero_point = self._zero_point()
        g = self.config.group
        step = math.lcm(g, CHUNK)
        K = -(-codes.shape[1] // step) * step
        extra = (K - codes.shape[1]) // g
        codes = torch.nn.functional.pad(codes, (0, K - codes.shape[1]))
        # the stored fp16 tensors themselves unless padding is needed (no second copy)
        scale, offset = (torch.nn.functional.pad(t.half(), (0, extra)) if extra else t.half().contiguous()
                         for t in (self.scale, offset))
        bits = layout_bits(self.config.bits)
        return pack_lowbit_layout(codes, bits), scale, offset, zero_point, g, bits

    @staticmethod
    def stack_layouts(encodeds: list["GroupAffineEncoded"]) -> tuple:
        """One kernel layout holding the rows of ``encodeds`` stacked in order, for one kernel call
        where several weights read the same input (a block's q/k/v, gate/up).

        The weights must share codec, bits, group, form and input width (ValueError). Each
        weight's own layout — and its scale/offset where the layout holds those very tensors —
        becomes a view into the stacked one, so the codes are held once, not twice."""
        first = encodeds[0]
        key = lambda e: (type(e.config), e.config.bits, e.config.group, e.config.affine_form, e.shape[1])  # noqa: E731
        if not all(isinstance(e, GroupAffineEncoded) for e in encodeds) or \
                any(key(e) != key(first) for e in encodeds):
            raise ValueError("stacked layouts need group-affine weights of one codec, bit width, group, "
                             "form and input width")
        layouts = [e.kernel_layout() for e in encodeds]
        stacked = tuple(torch.cat([lay[i] for lay in layouts]) for i in range(3)) + layouts[0][3:]
        r0 = 0
        for e, lay in zip(encodeds, layouts):
            r1 = r0 + e.shape[0]
            view = tuple(t[r0:r1] for t in stacked[:3]) + lay[3:]
            if e.scale is lay[1]:
                e.scale = view[1]
            if e.offset is not None and e.offset is lay[2]:
                e.offset = view[2]
            e._layout, r0 = view, r1
        return stacked

    def _matmul(self, x: Tensor, int8_activations: bool) -> Tensor:
        from reality_stone.kernels.int_lowbit_ops import lowbit_matmul

        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        return lowbit_matmul(x, *self._layout, int8_activations=int8_activations)

    def matmul(self, x: Tensor) -> Tensor:
        return self._matmul(x, False)

    def matmul_int8_activations(self, x: Tensor) -> Tensor:
        """``x @ W.T`` with x quantised to int8 per group on the fly (AVX-512 VNNI kernel; see
        `reality_stone.kernels.int_lowbit_ops.lowbit_linear_a8`). float32 x."""
        return self._matmul(x, True)

    # -- bytes ---------------------------------------------------------------------------
    @staticmethod
    def _sizes(config, shape) -> tuple[int, int, int]:
        """(code bytes, bytes per side tensor, side tensors stored)."""
        out_f, in_f = shape
        n_groups = -(-in_f // config.group)
        return packed_nbytes(out_f * in_f, config.bits), 2 * out_f * n_groups, int(config.affine_form != "symmetric")

    def payload_nbytes(self) -> int:
        codes, side, n_side = self._sizes(self.config, self.shape)
        return codes + side * (1 + n_side)

    def payload(self) -> bytes:
        # only the real inputs' codes are stored; the padding of the last group is implicit
        parts = [pack_bits(self.codes[:, : self.shape[1]], self.config.bits), f16_bytes(self.scale)]
        if self.offset is not None:
            parts.append(f16_bytes(self.offset))
        return b"".join(parts)

    @classmethod
    def from_payload(cls, config, shape, payload: bytes) -> "GroupAffineEncoded":
        out_f, in_f = shape
        check_group(config.group, in_f)
        n_code_bytes, side, n_side = cls._sizes(config, shape)
        expected = n_code_bytes + side * (1 + n_side)
        if len(payload) != expected:
            raise ValueError(f"{config.codec_name} payload has {len(payload)} bytes, expected {expected} "
                             "(truncated or corrupt)")
        n_groups = side // (2 * out_f)
        codes = torch.nn.functional.pad(unpack_bits(payload[:n_code_bytes], config.bits, out_f * in_f)
                                        .reshape(out_f, in_f), (0, n_groups * config.group - in_f)).to(torch.uint8)
        scale = read_f16(payload[n_code_bytes:], out_f * n_groups).reshape(out_f, n_groups)
        offset = (read_f16(payload[n_code_bytes + side :], out_f * n_groups).reshape(out_f, n_groups)
                  if n_side else None)
        if not bool(torch.isfinite(scale.float()).all()) or (offset is not None and not bool(torch.isfinite(offset.float()).all())):
            raise ValueError(f"corrupt {config.codec_name} payload: non-finite scale or offset")
        return cls(config, shape, codes, scale, offset)
