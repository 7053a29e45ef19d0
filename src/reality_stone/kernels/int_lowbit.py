"""Group-quantised low-bit weights: the compute layout and the plain-torch references (the oracles).

Compute layout (`pack_lowbit_layout`, bits ∈ {2, 3, 4, 8}; 1-bit codes use the 2-bit layout,
5- to 7-bit codes the 8-bit one):
each row is a run of 64-input chunks of 8·bits bytes, so a row reads exactly ``bits`` bits
per weight. Inside a chunk

* 4 bits: byte k (0..31) = code k | code k+32 << 4;
* 2 bits: byte k (0..15) = code k | code k+16 << 2 | code k+32 << 4 | code k+48 << 6;
* 3 bits: the 2-bit layout of (code & 3); the high bits (code >> 2) go to the end of a
  *block* of 4 chunks (fewer at the end of a row): a block of nc chunks is their 16·nc bytes of
  low bits, then 4 masks p of 16·nc bits each (little-endian, 2·nc bytes), bit 16c + k of mask
  p = high bit of input 64c + 16p + k of the block — exactly what one 64-byte vector of the
  block's low bits needs, part p at a time;
* 8 bits: byte k (0..63) = code k.

Every unpack step of the kernel (`int_lowbit_cpu.cpp`) then yields codes with shifts and
masks only; the int8-activation kernel reads 1 (8-bit), 2 (4-bit) or 4 (2/3-bit) chunks per
64-byte load.
K (the input dim padded to whole groups) must be a multiple of 64.

Affine parameters per (row, group) are fp16, as the codecs store them: a scale s and either
an offset o (w = q·s + o) or a zero point z (``zero_point=True``: w = (q − z)·s, i.e.
o = −z·s computed in fp32) — so the layout reads exactly the stored bits per weight.

Two products, each with its reference:

* `lowbit_linear_reference` — fp32 (or fp64) activations: unpack → dequantise → matmul;
* `lowbit_linear_a8_reference` — activations quantised to int8 per group of the weight
  (`quantize_activations`: symmetric, scale max|x|/127, round half to even), the
  ``q·scale`` part multiplied with the dequantised int8 activations, the offset part with
  the exact fp32 group sums Σx (free in the kernel, and it keeps the rounding error of x
  out of the offset term).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHUNK", "affine_offset", "dequantize_rows", "layout_bits", "lowbit_linear_a8_reference", "lowbit_linear_reference",
           "pack_lowbit_layout", "quantize_activations", "unpack_lowbit_layout"]

CHUNK = 64


def layout_bits(bits: int) -> int:
    """Bits per code in the compute layout for ``bits``-bit codes (1 → 2; 2, 3, 4 unchanged; 5…8 → 8)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"the low-bit layout holds 1- to 8-bit codes, got {bits}")
    return 8 if bits > 4 else max(bits, 2)


def pack_lowbit_layout(codes: Tensor, bits: int) -> Tensor:
    """codes (rows, K) ints in [0, 2**bits) -> uint8 (rows, K/64 · 8·bits) compute layout."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (rows, K), got shape {tuple(codes.shape)}")
    rows, K = codes.shape
    if K % CHUNK:
        raise ValueError(f"K={K} must be a multiple of {CHUNK}")
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"layout bits must be 2, 3, 4 or 8, got {bits}")
    # (> 2^bits − 1, not ≥ 2^bits: 256 does not fit a uint8 tensor's comparison, 255 does)
    if bool(((codes < 0) | (codes > 2**bits - 1)).any()):
        raise ValueError(f"codes must be in [0, {2 ** bits}) for the {bits}-bit layout")
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    c = codes.reshape(rows, K // CHUNK, CHUNK).to(torch.uint8)
    if bits == 4:
        return (c[..., :32] | (c[..., 32:] << 4)).reshape(rows, -1).contiguous()
    lo = c & 3
    two = lo[..., 0:16] | (lo[..., 16:32] << 2) | (lo[..., 32:48] << 4) | (lo[..., 48:64] << 6)
    if bits == 2:
        return two.reshape(rows, -1).contiguous()
    # high bits (rows, chunk, part p, 16 inputs) -> 2 bytes (LSB first) per (chunk, part)
    hi = (c >> 2).reshape(rows, K // CHUNK, 4, 2, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    hi_bytes = (hi * weights).sum(-1, dtype=torch.int32).to(torch.uint8)  # (rows, chunks, 4, 2)
    blocks = []
    for c0 in range(0, K // CHUNK, 4):  # per block: low bits of its chunks, then masks p = 0..3
        lo_b, hi_b = two[:, c0 : c0 + 4], hi_bytes[:, c0 : c0 + 4]
        blocks += [lo_b.reshape(rows, -1), hi_b.transpose(1, 2).reshape(rows, -1)]
    return torch.cat(blocks, dim=-1).contiguous()


def unpack_lowbit_layout(packed: Tensor, bits: int) -> Tensor:
    """Inverse of `pack_lowbit_layout`: uint8 (rows, K/64 · 8·bits) -> int64 codes (rows, K)."""
    rows = packed.shape[0]
    if bits == 8:
        return packed.to(torch.int64)
    p = packed.reshape(rows, -1, 8 * bits)
    if bits == 4:
        c = torch.cat([p & 0x0F, p >> 4], dim=-1)
    else:
        if bits == 3:
            return _unpack_three_bit(packed)
        c = torch.cat([(p >> s) & 3 for s in (0, 2, 4, 6)], dim=-1)
    return c.reshape(rows, -1).to(torch.int64)


def _unpack_three_bit(packed: Tensor) -> Tensor:
    rows, n_chunks = packed.shape[0], packed.shape[1] // 24
    shifts = torch.arange(8, dtype=torch.uint8)
    out, o = [], 0
    for c0 in range(0, n_chunks, 4):
        nc = min(4, n_chunks - c0)
        two = packed[:, o : o + 16 * nc].reshape(rows, nc, 16)
        hi_bytes = packed[:, o + 16 * nc : o + 24 * nc].reshape(rows, 4, nc, 2).transpose(1, 2)  # (rows, nc, p, 2)
        hi = ((hi_bytes[..., None] >> shifts) & 1).reshape(rows, nc, CHUNK)
        out.append(torch.cat([(two >> s) & 3 for s in (0, 2, 4, 6)], dim=-1) | (hi << 2))
        o += 24 * nc
    return torch.cat(out, dim=1).reshape(rows, -1).to(torch.int64)


def affine_offset(scale: Tensor, offset: Tensor, zero_point: bool, dtype) -> Tensor:
    """The per-group offset o of w = q·s + o in ``dtype``: ``offset`` itself, or −z·s when it holds zero points."""
    o = offset.to(dtype)
    return -(o * scale.to(dtype)) if zero_point else o


def dequantize_rows(packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int, bits: int,
                    dtype=torch.float32) -> Tensor:
    """Dense (rows, K) weights of a row range: q · scale + offset per group (see `affine_offset`)."""
    q = unpack_lowbit_layout(packed, bits).to(dtype).reshape(packed.shape[0], -1, group)
    o = affine_offset(scale, offset, zero_point, dtype)
    return (q * scale.to(dtype)[..., None] + o[..., None]).reshape(packed.shape[0], -1)


def lowbit_linear_reference(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
                            bits: int) -> Tensor:
    """The oracle of the fp32-activation kernel: unpack → dequantise → matmul. x (..., K) -> (..., rows)."""
    return x @ dequantize_rows(packed, scale, offset, zero_point, group, bits, x.dtype).T


def quantize_activations(x: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """x (B, K) float32 -> (xq int8 (B, K), dx float32 (B, K/group)) with x ≈ xq · dx per group.

    xq = round_half_even(x · (127 / max|x|)), dx = max|x| / 127 (0 where the group is all
    zero) — the kernel's arithmetic, operation for operation, so both give the same bytes.
    """
    B, K = x.shape
    xg = x.reshape(B, K // group, group)
    amax = xg.abs().amax(-1)
    inv = torch.where(amax > 0, torch.tensor(127.0, dtype=x.dtype) / amax, torch.zeros((), dtype=x.dtype))
    xq = torch.round(xg * inv[..., None]).to(torch.int8).reshape(B, K)
    return xq, amax / 127


def lowbit_linear_a8_reference(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, zero_point: bool, group: int,
                               bits: int, dtype=torch.float64) -> Tensor:
    """The oracle of the int8-activation kernel, computed in ``dtype``. x (B, K) float32 -> (B, rows)."""
    xq, dx = quantize_activations(x, group)
    B, K = x.shape
    x_deq = (xq.to(dtype).reshape(B, -1, group) * dx.to(dtype)[..., None]).reshape(B, K)
    w_scaled = dequantize_rows(packed, scale, torch.zeros_like(offset), False, group, bits, dtype)
    xsum = x.to(dtype).reshape(B, -1, group).sum(-1)
    return x_deq @ w_scaled.T + xsum @ affine_offset(scale, offset, zero_point, dtype).T
