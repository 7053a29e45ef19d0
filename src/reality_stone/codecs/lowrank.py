"""Truncated SVD: W ≈ A·B with A = U_r·√S_r (out × r), B = √S_r·V_rᵀ (r × in), stored fp16.

The fused product never forms W: ``x @ W.T = (x @ B.T) @ A.T``, O(r·(in + out)) per row
instead of O(in·out).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from reality_stone.codecs.base import CodecConfig, Encoded, check_weight, register

__all__ = ["LowRankConfig", "LowRankEncoded"]


@register("lowrank")
@dataclass(frozen=True)
class LowRankConfig(CodecConfig):
    rank: int = 8

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")

    def encode(self, weight: Tensor) -> "LowRankEncoded":
        check_weight(weight)
        W = weight.detach().double()
        r = min(self.rank, *W.shape)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        root = S[:r].sqrt()
        A = (U[:, :r] * root).half().contiguous()  # same layout as a decoded file: same BLAS path, same bits
        B = (root[:, None] * Vh[:r]).half().contiguous()
        return LowRankEncoded(self, tuple(W.shape), A, B)

    @classmethod
    def _decode_payload(cls, config, shape, payload):
        return LowRankEncoded.from_payload(config, shape, payload)


class LowRankEncoded(Encoded):
    def __init__(self, config: LowRankConfig, shape, A: Tensor, B: Tensor):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        self.A, self.B = A, B

    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return (self.A.double() @ self.B.double()).to(dtype)

    def matmul(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        return (x @ self.B.to(x.dtype).T) @ self.A.to(x.dtype).T

    def payload(self) -> bytes:
        return struct.pack("<I", self.A.shape[1]) + self.A.numpy().astype("<f2").tobytes() + self.B.numpy().astype("<f2").tobytes()

    @classmethod
    def from_payload(cls, config: LowRankConfig, shape, payload: bytes) -> "LowRankEncoded":
        if len(payload) < 4:
            raise ValueError("truncated lowrank payload")
        (r,) = struct.unpack_from("<I", payload)
        out_f, in_f = shape
        if r < 1 or r > min(out_f, in_f, config.rank) or len(payload) != 4 + 2 * r * (out_f + in_f):
            raise ValueError(f"corrupt lowrank payload: rank {r}, {len(payload)} bytes for shape {tuple(shape)}")
        a = np.frombuffer(payload[4 : 4 + 2 * r * out_f], dtype="<f2").astype(np.float16).reshape(out_f, r)
        b = np.frombuffer(payload[4 + 2 * r * out_f :], dtype="<f2").astype(np.float16).reshape(r, in_f)
        A, B = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
        if not bool(torch.isfinite(A.float()).all() and torch.isfinite(B.float()).all()):
            raise ValueError("corrupt lowrank payload: non-finite factor")
        return cls(config, shape, A, B)
