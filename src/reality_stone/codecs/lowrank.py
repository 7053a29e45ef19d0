"""Truncated SVD (+ an optional sparse residual): W ≈ A·B + S.

A = U_r·√S_r (out × r) and B = √S_r·V_rᵀ (r × in) are stored fp16. With ``sparse`` > 0 the
largest-magnitude ``sparse`` fraction of the entries of W − A·B (measured against the fp16
factors, so it also corrects their rounding) is kept as S: fp16 values, column indices
(uint16 when in ≤ 65536, else uint32) and int32 row pointers (CSR) — every byte counted.
Outliers are what a rank-r fit misses worst, and a few of them carry much of the residual's
energy in real weights.

The fused product never forms W: ``x @ W.T = (x @ B.T) @ A.T + x @ S.T``, O(r·(in + out) +
nnz) per row instead of O(in·out); the sparse part is one CSR × dense product.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from reality_stone.codecs.base import Capabilities, CodecConfig, Encoded, check_weight, register

__all__ = ["LowRankConfig", "LowRankEncoded"]


class LowRankEncoded(Encoded):
    """Factors A (out, r), B (r, in) fp16; ``residual`` None or CSR (crow int32 (out + 1),
    col int32 (nnz,), values fp16 (nnz,))."""

    def __init__(self, config: LowRankConfig, shape, A: Tensor, B: Tensor,
                 residual: tuple[Tensor, Tensor, Tensor] | None = None):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        self.A, self.B = A, B
        self.residual = residual
        self._sparse: dict[torch.dtype, Tensor] = {}

    def _residual_csr(self, dtype: torch.dtype) -> Tensor:
        """S as an (out, in) sparse CSR tensor of ``dtype`` (built once per dtype)."""
        if dtype not in self._sparse:
            from reality_stone.kernels.sparse import csr_matrix

            crow, col, val = self.residual
            self._sparse[dtype] = csr_matrix(crow, col, val.to(dtype), self.shape)
        return self._sparse[dtype]

    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        W = self.A.double() @ self.B.double()
        if self.residual is not None:
            W += self._residual_csr(torch.float64).to_dense()
        return W.to(dtype)

    def matmul(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        y = (x @ self.B.to(x.dtype).T) @ self.A.to(x.dtype).T
        if self.residual is not None:
            x2 = x.reshape(-1, self.shape[1])
            y = y + (self._residual_csr(x.dtype) @ x2.T).T.reshape(y.shape)
        return y

    def _col_dtype(self) -> str:
        return "<u2" if self.shape[1] <= 2**16 else "<u4"

    def payload_nbytes(self) -> int:
        out_f, in_f = self.shape
        n = 4 + 2 * self.A.shape[1] * (out_f + in_f)
        if self.residual is not None:
            n += 4 * (out_f + 1) + (int(self._col_dtype()[-1]) + 2) * len(self.residual[1])
        return n

    def payload(self) -> bytes:
        out = struct.pack("<I", self.A.shape[1]) + self.A.numpy().astype("<f2").tobytes() + self.B.numpy().astype("<f2").tobytes()
        if self.residual is not None:
            crow, col, val = self.residual
            out += (crow.numpy().astype("<i4").tobytes() + col.numpy().astype(self._col_dtype()).tobytes()
                    + val.numpy().astype("<f2").tobytes())
        return out

    @classmethod
    def from_payload(cls, config: LowRankConfig, shape, payload: bytes) -> "LowRankEncoded":
        if len(payload) < 4:
            raise ValueError("truncated lowrank payload")
        (r,) = struct.unpack_from("<I", payload)
        out_f, in_f = shape
        factors = 4 + 2 * r * (out_f + in_f)
        nnz = round(config.sparse * out_f * in_f)
        col_bytes = 2 if in_f <= 2**16 else 4
        expected = factors + ((4 * (out_f + 1) + (col_bytes + 2) * nnz) if nnz else 0)
        if r < 1 or r > min(out_f, in_f, config.rank) or len(payload) != expected:
            raise ValueError(f"corrupt lowrank payload: rank {r}, {len(payload)} bytes for shape {tuple(shape)} "
                             f"(expected {expected})")
        a = np.frombuffer(payload[4 : 4 + 2 * r * out_f], dtype="<f2").astype(np.float16).reshape(out_f, r)
        b = np.frombuffer(payload[4 + 2 * r * out_f : factors], dtype="<f2").astype(np.float16).reshape(r, in_f)
        A, B = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
        if not bool(torch.isfinite(A.float()).all() and torch.isfinite(B.float()).all()):
            raise ValueError("corrupt lowrank payload: non-finite factor")
        residual = None
        if nnz:
            o = factors
            crow = np.frombuffer(payload[o : o + 4 * (out_f + 1)], dtype="<i4").astype(np.int64)
            o += 4 * (out_f + 1)
            col = np.frombuffer(payload[o : o + col_bytes * nnz], dtype="<u2" if col_bytes == 2 else "<u4")
            val = np.frombuffer(payload[o + col_bytes * nnz :], dtype="<f2").astype(np.float16)
            counts = np.diff(crow)
            if crow[0] != 0 or crow[-1] != nnz or (counts < 0).any() or (col >= in_f).any():
                raise ValueError("corrupt lowrank payload: bad sparse residual indices")
            if not np.isfinite(val).all():
                raise ValueError("corrupt lowrank payload: non-finite residual value")
            # within a row, columns strictly increase (the encoder's order, and what CSR requires)
            rows = np.repeat(np.arange(out_f), counts)
            key = rows * in_f + col.astype(np.int64)
            if (np.diff(key) <= 0).any():
                raise ValueError("corrupt lowrank payload: residual entries not in strictly increasing order")
            residual = (torch.from_numpy(crow.astype(np.int32)), torch.from_numpy(col.astype(np.int32)),
                        torch.from_numpy(val.copy()))
        return cls(config, shape, A, B, residual)


@register("lowrank", LowRankEncoded)
@dataclass(frozen=True)
class LowRankConfig(CodecConfig):
    """Truncated SVD (fp16 factors), optional sparse residual; matmul (x Bᵀ) Aᵀ.

    Use when: layers with a decaying spectrum (embeddings, some projections) or as a study baseline;
    poor on the dense noise-like weights of trained LLM layers.

    rank: kept singular directions; sparse: fraction of the residual's entries kept (0: none).
    """

    error_bound: ClassVar[float] = 0.12  # rank 8 (measured ≤ 0.090: the noise)

    rank: int = 8
    sparse: float = 0.0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(calibration=self.calibration, fused_matmul=True)

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.sparse, (int, float)) and 0 <= self.sparse < 1):
            raise ValueError(f"sparse must be a fraction in [0, 1), got {self.sparse!r}")

    def encode(self, weight: Tensor, stats=None) -> "LowRankEncoded":
        check_weight(weight)
        W = weight.detach().double()
        r = min(self.rank, *W.shape)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        root = S[:r].sqrt()
        A = (U[:, :r] * root).half().contiguous()  # same layout as a decoded file: same BLAS path, same bits
        B = (root[:, None] * Vh[:r]).half().contiguous()
        residual = None
        nnz = round(self.sparse * W.numel())
        if nnz:
            R = W - A.double() @ B.double()
            keep = R.flatten().abs().topk(nnz).indices.sort().values  # row-major order: CSR for free
            rows, cols = keep // W.shape[1], keep % W.shape[1]
            crow = torch.zeros(W.shape[0] + 1, dtype=torch.int64)
            crow[1:] = torch.bincount(rows, minlength=W.shape[0]).cumsum(0)
            residual = (crow.to(torch.int32), cols.to(torch.int32), R.flatten()[keep].half())
        return LowRankEncoded(self, tuple(W.shape), A, B, residual)

