"""Seed-basis blocks: the compute layout and the plain-torch reference (the oracle).

The fused kernel (`seedbasis_cpu.cpp`) never builds W: every basis row U_{s,p} ∈ {±1}^8 is
one of 256 sign patterns, so per call the 256 signed sums of each 8-input block of x
(`block_sign_sums`, a (B, nb, 256) table: 1 KB per block) turn a block's contribution into
P table lookups. Layout (`seedbasis_layout`, built once per weight): seeds uint16, absolute
block exponents int8 and 4-bit codes (each row's P codes together), all column-block-major
so a thread streams them.
Supported: block 8, ≤ 8 coefficients of ≤ 4 bits, exponents in [-126, 120] (``fusable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["SeedBasisLayout", "block_sign_sums", "decode_rows", "seedbasis_layout", "seedbasis_linear_reference"]

BLOCK = 8


@lru_cache(maxsize=1)
def sign_patterns() -> Tensor:
    """(8, 256) float32: column k holds the signs 2·bit_c(k) − 1 of pattern k."""
    k = torch.arange(256)
    return (2 * ((k[None, :] >> torch.arange(BLOCK)[:, None]) & 1) - 1).to(torch.float32)


def block_sign_sums(x2: Tensor, n_blocks: int) -> Tensor:
    """x2 (B, K ≤ 8·n_blocks) -> (B, n_blocks, 256): v[b, j, k] = Σ_c sign_k(c) x[b, 8j + c]."""
    pad = n_blocks * BLOCK - x2.shape[1]
    xb = torch.nn.functional.pad(x2, (0, pad)).reshape(x2.shape[0], n_blocks, BLOCK)
    return (xb @ sign_patterns().to(x2.dtype)).contiguous()


@dataclass(frozen=True)
class SeedBasisLayout:
    """pattern int32 (2^S, PL); seeds int16 (nb, Np) holding uint16; exps int8 (nb, Np);
    codes uint8 (nb, Np, PL/2): code + 8 in 4 bits, row-major, coefficient p of a row in byte
    p // 2 (low nibble first), padding coefficients and rows code 0. PL = 4 if P ≤ 4 else 8
    (a row's z values fill 128 or 256 bits); ``coeffs`` = P; ``rows`` real output rows (Np =
    rows padded to 8)."""

    pattern: Tensor
    seeds: Tensor
    exps: Tensor
    codes: Tensor
    coeffs: int
    rows: int


# block exponents the kernel takes: 2^e a normal float32, and 8 codes of magnitude ≤ 8 times it finite
EXP_MIN, EXP_MAX = -126, 120


def fusable(block: int, coeffs: int, coeff_bits: int, exps: Tensor) -> bool:
    return (block == BLOCK and coeffs <= 8 and coeff_bits <= 4
            and (exps.numel() == 0 or bool((exps >= EXP_MIN).all() and (exps <= EXP_MAX).all())))


def seedbasis_layout(table: Tensor, seeds: Tensor, exps: Tensor, codes: Tensor) -> SeedBasisLayout:
    """From the codec's fields: table (2^S, P, 8) ±1, seeds (out, nb) in [0, 2^S), absolute exps
    (out, nb), signed codes (out, nb, P) in [-8, 8)."""
    out_f, nb = seeds.shape
    P = codes.shape[-1]
    PL = 4 if P <= 4 else 8
    if seeds.numel() and not (0 <= int(seeds.min()) and int(seeds.max()) < table.shape[0]):
        raise ValueError(f"seeds must be in [0, {table.shape[0]})")  # the kernel indexes z by them
    Np = -(-out_f // 8) * 8
    bits = ((table > 0).to(torch.int64) << torch.arange(BLOCK)).sum(-1)  # (2^S, P) pattern ids
    pad = Np - out_f
    s = torch.nn.functional.pad(seeds, (0, 0, 0, pad)).T
    e = torch.nn.functional.pad(exps, (0, 0, 0, pad)).T
    c = torch.nn.functional.pad(codes + 8, (0, PL - P, 0, 0, 0, pad), value=8)  # padding: code 0
    c = c.permute(1, 0, 2).reshape(nb, Np, PL // 2, 2)
    return SeedBasisLayout(
        pattern=torch.nn.functional.pad(bits, (0, PL - P)).to(torch.int32).contiguous(),
        seeds=torch.from_numpy(s.numpy().astype(np.uint16).view(np.int16)).contiguous(),
        exps=e.to(torch.int8).contiguous(),
        codes=(c[..., 0] | (c[..., 1] << 4)).to(torch.uint8).contiguous(), coeffs=P, rows=out_f)


def _codes(lay: SeedBasisLayout, r0: int, r1: int) -> Tensor:
    """Signed codes (r1 − r0, nb, PL) of rows [r0, r1), padding coefficients included."""
    c = lay.codes[:, r0:r1].to(torch.int64)  # (nb, rows, PL/2)
    q = torch.stack([c & 15, c >> 4], dim=-1).reshape(c.shape[0], r1 - r0, -1) - 8
    return q.permute(1, 0, 2)


def decode_rows(lay: SeedBasisLayout, r0: int, r1: int, in_features: int, dtype=torch.float32) -> Tensor:
    """Dense rows [r0, r1) of W from the layout (for the tiled path and backward).

    All PL coefficient slots are summed, as the kernel does: in a layout built by
    `seedbasis_layout` the padding slots hold code 0, and for any other layout the two paths
    still agree (``coeffs`` is not trusted to say which slots are padding)."""
    basis = sign_patterns().T.to(dtype)[lay.pattern.to(torch.int64)]  # (2^S, PL, 8)
    seeds = lay.seeds[:, r0:r1].T.to(torch.int64) & 0xFFFF  # uint16 stored as int16
    q = _codes(lay, r0, r1).to(dtype)
    blocks = torch.einsum("rjp,rjpc->rjc", q, basis[seeds]) * torch.exp2(lay.exps[:, r0:r1].T.to(dtype))[..., None]
    return blocks.reshape(r1 - r0, -1)[:, :in_features]


def seedbasis_linear_reference(x: Tensor, lay: SeedBasisLayout, in_features: int) -> Tensor:
    """The oracle: decode the whole weight from the layout, then matmul. x (..., in) -> (..., rows)."""
    return x @ decode_rows(lay, 0, lay.rows, in_features, x.dtype).T
