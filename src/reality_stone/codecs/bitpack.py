"""Exact bit packing of unsigned integer codes into little-endian bit streams, and the fp16
side tensors (scales, offsets, values) codecs store beside them."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["f16_bytes", "pack_bits", "packed_nbytes", "read_f16", "unpack_bits"]


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes used by `pack_bits` for ``count`` codes of ``bits`` bits."""
    return -(-count * bits // 8)


def pack_bits(codes: Tensor, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (any shape, flattened) into ``bits``-bit fields.

    Code ``n`` occupies stream bits [n·bits, (n+1)·bits), least-significant bit first.
    Codes outside [0, 2^bits) raise ``ValueError``.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    t = codes.detach().reshape(-1)
    # uint8 codes (the ≤ 8-bit codecs' storage) stay uint8: 8× less memory traffic than int64
    v = t.numpy() if t.dtype == torch.uint8 else t.to(torch.int64).numpy()
    if v.size and (v.min() < 0 or v.max() >= (1 << bits)):
        raise ValueError(f"codes must be in [0, {1 << bits}), got range [{v.min()}, {v.max()}]")
    if bits == 8:
        return v.astype(np.uint8).tobytes()
    if 8 % bits == 0:  # 1, 2, 4: several codes per byte, OR-ed together in uint8
        per = 8 // bits
        w = np.zeros(v.size + (-v.size) % per, dtype=np.uint8)
        w[: v.size] = v
        w = w.reshape(-1, per)
        out = w[:, 0].copy()
        for k in range(1, per):
            out |= w[:, k] << np.uint8(k * bits)
        return out.tobytes()
    bitmat = ((v[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> Tensor:
    """Inverse of `pack_bits`: ``count`` codes as an int64 tensor. Short data -> ValueError."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    need = packed_nbytes(count, bits)
    if len(data) < need:
        raise ValueError(f"bit stream has {len(data)} bytes, {need} needed for {count} {bits}-bit codes")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if bits == 8:
        return torch.from_numpy(raw.astype(np.int64))
    if 8 % bits == 0:
        per = 8 // bits
        shifts = np.arange(per, dtype=np.int64) * bits
        v = (raw.astype(np.int64)[:, None] >> shifts) & ((1 << bits) - 1)
        return torch.from_numpy(v.reshape(-1)[:count].copy())
    bitarr = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int64)
    return torch.from_numpy((bitarr << np.arange(bits, dtype=np.int64)).sum(axis=1))


def f16_bytes(t: Tensor) -> bytes:
    """``t`` as little-endian fp16 bytes."""
    return t.to(torch.float16).numpy().astype("<f2").tobytes()


def read_f16(data: bytes, count: int, what: str = "payload") -> Tensor:
    """The first ``count`` little-endian fp16 values of ``data`` (a writable copy); too few bytes
    -> ValueError naming ``what``."""
    if len(data) < 2 * count:
        raise ValueError(f"truncated {what}: {len(data)} bytes for {count} fp16 values")
    return torch.from_numpy(np.frombuffer(data, dtype="<f2", count=count).astype(np.float16))
