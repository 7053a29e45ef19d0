"""Seed-basis blocks: the compute layout and the plain-torch reference (the oracle).

The fused kernel (`seedbasis_cpu.cpp`) never builds W: every basis row U_{s,p} ∈ {±1}^8 is
one of 256 sign patterns, so per call the 256 signed sums of each 8-input block of x turn a
block's contribution into P table lookups. The integer code q·2^e (e: the block's exponent
offset) is exact in float32, so each row's scale 2^t is applied once, at the end.

Layout (`seedbasis_layout`, built once per weight): the stored bits and nothing else — one
record of S + E + P·Q bytes per 8 output rows × one column block (8 rows × (S + E + P·Q) bits),
in the order the kernel walks them (tiles of 16 column blocks; in a tile, row group after row
group), so every thread reads its records as one sequential stream; then 16 zero bytes (the kernel reads 16-byte windows); per row one float32
exponent t (int8). For the 3.5-bit preset that is 28 bytes per 64 weights — 3.5 bits per weight
plus 8 per row, exactly the stored bits (the previous layout read 5 bits per weight).
Supported (`fusable`): block 8, ±1 bases (the LFSR generator), ≤ 8 coefficients of ≤ 4 bits,
≤ 4 exponent bits, row exponents t in [−126, 100].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["A8_GROUP", "SeedBasisLayout", "a8_fusable", "decode_rows", "fusable", "pattern_ids", "seedbasis_layout",
           "seedbasis_linear_a8_reference", "seedbasis_linear_reference", "unpack_all", "unpack_records"]

BLOCK = 8
PAD_BYTES = 16
TILE = 16  # column blocks per tile of the record order (seedbasis_cpu.cpp kTile)
# row exponents the kernel takes: 2^t a normal float32, and a block (≤ 8 codes of magnitude ≤ 8,
# shifted by ≤ 15) times it finite
EXP_MIN, EXP_MAX = -126, 100
# int8 activations: column blocks per activation scale (64 inputs, seedbasis_cpu.cpp kA8Group)
A8_GROUP = 8


@lru_cache(maxsize=1)
def sign_patterns() -> Tensor:
    """(8, 256) float32: column k holds the signs 2·bit_c(k) − 1 of pattern k."""
    k = torch.arange(256)
    return (2 * ((k[None, :] >> torch.arange(BLOCK)[:, None]) & 1) - 1).to(torch.float32)


def pattern_ids(table: Tensor) -> Tensor:
    """(2^S, P, 8) ±1 bases -> (2^S, P) uint8 pattern ids (bit c set where entry c is +1)."""
    return ((table > 0).to(torch.int64) << torch.arange(BLOCK)).sum(-1).to(torch.uint8).contiguous()


@dataclass(frozen=True)
class SeedBasisLayout:
    """pattern uint8 (2^S, P); records uint8 (G·nb·R + 16,), R = S + E + P·Q bytes, G = Np/8
    row groups, nb column blocks; row_exp int8 (Np,): row r's scale is 2^row_exp[r]; the three field
    widths; ``rows`` real output rows (Np = rows padded to 8). See `seedbasis_cpu.cpp` for the
    record's bit order."""

    pattern: Tensor
    records: Tensor
    row_exp: Tensor
    seed_bits: int
    exp_bits: int
    coeff_bits: int
    rows: int

    @property
    def record_bytes(self) -> int:
        return self.seed_bits + self.exp_bits + self.pattern.shape[1] * self.coeff_bits

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pattern, self.records, self.row_exp))


def fusable(block: int, coeffs: int, coeff_bits: int, exp_bits: int, seed_bits: int, basis: str = "lfsr") -> bool:
    """Whether a config's weights can take the kernel (row exponents are checked per weight)."""
    return (block == BLOCK and basis == "lfsr" and coeffs <= 8 and coeff_bits <= 4 and exp_bits <= 4
            and seed_bits <= 16)


def a8_fusable(coeffs: int, coeff_bits: int, exp_bits: int, seed_bits: int) -> bool:
    """Whether the int8-activation kernel reads this format (besides `fusable`): one int32 of ≤ 4
    int8 codes per row and block, |(q − 2^(Q−1)) << e| ≤ 127, code + offset bits one 6-bit table
    index, two records in 64 bytes (seedbasis_cpu.cpp ``a8_format_ok``)."""
    R = seed_bits + exp_bits + coeffs * coeff_bits
    return (coeffs <= 4 and coeff_bits + exp_bits <= 6 and (2 ** (coeff_bits - 1) << (2**exp_bits - 1)) <= 127
            and 2 * R <= 64)


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """(..., n) non-negative ints -> (..., n·width) bits, LSB first."""
    b = (values[..., None] >> np.arange(width, dtype=values.dtype)) & 1
    return b.reshape(*values.shape[:-1], -1).astype(np.uint8)


def seedbasis_layout(pattern: Tensor, row_exp: Tensor, seeds: Tensor, e_off: Tensor, codes: Tensor, *,
                     seed_bits: int, exp_bits: int, coeff_bits: int) -> SeedBasisLayout:
    """From the codec's fields: pattern ids (2^S, P) uint8, row exponents t (out,), seeds (out, nb)
    in [0, 2^S), exponent offsets (out, nb) in [0, 2^E), signed codes (out, nb, P) in
    [−2^(Q−1), 2^(Q−1))."""
    out_f, nb = seeds.shape
    P = codes.shape[-1]
    S, E, Q = seed_bits, exp_bits, coeff_bits
    if pattern.shape != (2**S, P) or pattern.dtype != torch.uint8:
        raise ValueError(f"pattern must be uint8 (2^S={2**S}, P={P}), got {pattern.dtype} {tuple(pattern.shape)}")
    for name, t, hi in (("seeds", seeds, 2**S), ("e_off", e_off, 2**E), ("codes", codes + 2 ** (Q - 1), 2**Q)):
        if t.numel() and not (0 <= int(t.min()) and int(t.max()) < hi):
            raise ValueError(f"{name} out of range for the layout's field width")
    if row_exp.numel() and not (EXP_MIN <= int(row_exp.min()) and int(row_exp.max()) <= EXP_MAX):
        raise ValueError(f"row exponents must be in [{EXP_MIN}, {EXP_MAX}]")
    Np = -(-out_f // 8) * 8
    pad = Np - out_f
    R = S + E + P * Q
    G = Np // 8
    grid = np.zeros((G, nb, R), dtype=np.uint8)  # record (g, j)
    dtype = np.int64
    s = np.pad(seeds.numpy().astype(dtype), ((0, pad), (0, 0)))
    e = np.pad(e_off.numpy().astype(dtype), ((0, pad), (0, 0)))
    c = np.pad(codes.numpy().astype(dtype) + 2 ** (Q - 1), ((0, pad), (0, 0), (0, 0)), constant_values=2 ** (Q - 1))
    step = max(1, 2**20 // max(1, nb * R * 8))  # row groups per chunk: bit temporaries ≲ 8 MB
    for g0 in range(0, G, step):
        g1 = min(G, g0 + step)
        rows = slice(8 * g0, 8 * g1)
        # (g, 8, nb, ·) -> (g, nb, 8·width): the 8 rows' fields of one column block, row after row
        sg = s[rows].reshape(g1 - g0, 8, nb).transpose(0, 2, 1)
        eg = e[rows].reshape(g1 - g0, 8, nb).transpose(0, 2, 1)
        cg = c[rows].reshape(g1 - g0, 8, nb, P).transpose(0, 2, 1, 3).reshape(g1 - g0, nb, 8 * P)
        parts = [_bits(sg, S)] + ([_bits(eg, E)] if E else []) + [_bits(cg, Q)]
        grid[g0:g1] = np.packbits(np.concatenate(parts, axis=-1), axis=-1, bitorder="little")
    # tile-major: column tile t (TILE blocks), then row group, then block — the kernels' walk
    records = np.concatenate([grid[:, t : t + TILE].reshape(-1) for t in range(0, nb, TILE)]
                             + [np.zeros(PAD_BYTES, dtype=np.uint8)])
    row_e = torch.zeros(Np, dtype=torch.int8)
    row_e[:out_f] = row_exp.to(torch.int8)
    return SeedBasisLayout(pattern=pattern.contiguous(), records=torch.from_numpy(records), row_exp=row_e,
                           seed_bits=S, exp_bits=E, coeff_bits=Q, rows=out_f)


def unpack_records(lay: SeedBasisLayout, g0: int, g1: int, nb: int) -> tuple[Tensor, Tensor, Tensor]:
    """Seeds (8(g1−g0), nb), exponent offsets (same) and signed codes (·, nb, P) of row groups [g0, g1)."""
    S, E, Q, P, R = lay.seed_bits, lay.exp_bits, lay.coeff_bits, lay.pattern.shape[1], lay.record_bytes
    G = lay.row_exp.shape[0] // 8
    recs = lay.records.numpy()
    raw = np.empty((g1 - g0, nb, R), dtype=np.uint8)
    for t in range(0, nb, TILE):  # tile-major order (see seedbasis_layout)
        jt = min(TILE, nb - t)
        raw[:, t : t + jt] = recs[(t * G + g0 * jt) * R : (t * G + g1 * jt) * R].reshape(g1 - g0, jt, R)
    bits = np.unpackbits(raw, axis=-1, bitorder="little")

    def field(lo: int, n: int, width: int) -> np.ndarray:
        b = bits[..., lo : lo + n * width].reshape(g1 - g0, nb, n, width).astype(np.int32)
        return (b << np.arange(width, dtype=np.int32)).sum(-1, dtype=np.int32)

    s = field(0, 8, S)
    e = field(8 * S, 8, E) if E else np.zeros_like(s)
    c = field(8 * (S + E), 8 * P, Q).reshape(g1 - g0, nb, 8, P) - 2 ** (Q - 1)
    rows = lambda a: torch.from_numpy(np.ascontiguousarray(a.swapaxes(1, 2))).reshape(8 * (g1 - g0), nb, *a.shape[3:])
    return rows(s), rows(e), rows(c)


def unpack_all(lay: SeedBasisLayout, in_features: int) -> tuple[Tensor, Tensor, Tensor]:
    """The codec's fields from the layout: seeds (rows, nb) int32, exponent offsets (rows, nb) int8,
    codes (rows, nb, P) int8 — in chunks of row groups, so the temporaries stay a few MB."""
    nb = -(-in_features // BLOCK)
    G = lay.row_exp.shape[0] // 8
    step = max(1, 2**18 // max(1, nb * lay.record_bytes))
    parts = [unpack_records(lay, g0, min(G, g0 + step), nb) for g0 in range(0, G, step)]
    cat = lambda i, dtype: torch.cat([p[i].to(dtype) for p in parts])[: lay.rows] if parts else torch.zeros(
        (0, nb) + ((lay.pattern.shape[1],) if i == 2 else ()), dtype=dtype)
    return cat(0, torch.int32), cat(1, torch.int8), cat(2, torch.int8)


def decode_rows(lay: SeedBasisLayout, r0: int, r1: int, in_features: int, dtype=torch.float32) -> Tensor:
    """Dense rows [r0, r1) of W from the layout (for the tiled path, backward and the tests): the
    kernel's arithmetic — integer block sums, then the row scale — which is exact."""
    nb = -(-in_features // BLOCK)
    g0, g1 = r0 // 8, -(-r1 // 8)
    seeds, e_off, q = unpack_records(lay, g0, g1, nb)
    basis = sign_patterns().T.to(dtype)[lay.pattern.to(torch.int64)]  # (2^S, P, 8)
    qe = (q << e_off[..., None]).to(dtype)
    blocks = torch.einsum("rjp,rjpc->rjc", qe, basis[seeds.long()])
    w = blocks.reshape(8 * (g1 - g0), -1)[:, :in_features] * torch.exp2(lay.row_exp[8 * g0 : 8 * g1, None].to(dtype))
    return w[r0 - 8 * g0 : r1 - 8 * g0]


def seedbasis_linear_reference(x: Tensor, lay: SeedBasisLayout, in_features: int) -> Tensor:
    """The oracle: decode the whole weight from the layout, then matmul. x (..., in) -> (..., rows)."""
    return x @ decode_rows(lay, 0, lay.rows, in_features, x.dtype).T


def _sign_sum_halves(xb: Tensor) -> tuple[Tensor, Tensor]:
    """xb (..., nb, 8) float32 -> lo, hi (..., nb, 16): the signed sums of inputs 0-3 and 4-7 for
    every sign pattern, added in the kernel's order (so v = lo + hi rounds as it does there)."""
    k = torch.arange(16)
    signs = (2 * ((k[:, None] >> torch.arange(4)) & 1) - 1).to(xb.dtype)  # (16, 4)
    lo = torch.zeros(*xb.shape[:-1], 16, dtype=xb.dtype)
    hi = torch.zeros_like(lo)
    for c in range(4):
        lo = lo + signs[:, c] * xb[..., c, None]
        hi = hi + signs[:, c] * xb[..., c + 4, None]
    return lo, hi


def a8_tables(x: Tensor, nb: int) -> tuple[Tensor, Tensor]:
    """The int8 path's activation tables for x (B, K) float32: v (B, nb, 256) rounded to int8
    per group of `A8_GROUP` column blocks, and the groups' scales (B, ⌈nb/8⌉) float32 — v ≈
    v_q · scale (NaN for a group with a non-finite input). The scale is m / 127 with m = max over the group's blocks of max|lo| + max|hi|
    (a bound on |v| that holds after rounding too)."""
    B, K = x.shape
    xb = torch.nn.functional.pad(x, (0, 8 * nb - K)).reshape(B, nb, 8)
    lo, hi = _sign_sum_halves(xb)
    m_block = lo.abs().amax(-1) + hi.abs().amax(-1)
    ng = -(-nb // A8_GROUP)
    m = torch.nn.functional.pad(m_block, (0, ng * A8_GROUP - nb)).reshape(B, ng, A8_GROUP).amax(-1)
    # a group with a NaN or Inf input: codes 0, scale NaN (its rows' outputs NaN, never finite)
    finite = torch.nn.functional.pad(xb.isfinite().all(-1), (0, ng * A8_GROUP - nb), value=True) \
        .reshape(B, ng, A8_GROUP).all(-1)
    m = torch.where(finite, m, torch.zeros_like(m))
    inv = torch.where(m > 0, torch.tensor(127.0) / m, torch.zeros_like(m))
    k = torch.arange(256)
    v = lo[..., k & 15] + hi[..., k >> 4]
    v = torch.where(finite.repeat_interleave(A8_GROUP, 1)[:, :nb, None], v, torch.zeros_like(v))
    vq = torch.round(v * inv.repeat_interleave(A8_GROUP, 1)[:, :nb, None]).clamp(-127, 127).to(torch.int8)
    return vq, torch.where(finite, m / 127, torch.full_like(m, float("nan")))


def seedbasis_linear_a8_reference(x: Tensor, lay: SeedBasisLayout, in_features: int,
                                  dtype: torch.dtype = torch.float64, rows_per_chunk: int = 256) -> Tensor:
    """The int8-activation path's numbers: x (..., in) float32 quantised as in `a8_tables`, the
    integer block sums Σ_p (q_p << e)·v_q[pattern[s, p]] per group of `A8_GROUP` blocks exact, then
    scaled in ``dtype`` (float64: the "exact" result of these integers; float32: the rounding a
    float32 computation adds). Row chunks of ``rows_per_chunk``: never the dense weight.
    Returns (..., rows) in ``dtype``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features).to(torch.float32)
    nb, P = -(-in_features // BLOCK), lay.pattern.shape[1]
    ng = -(-nb // A8_GROUP)
    vq, scale = a8_tables(x2, nb)
    pattern = lay.pattern.to(torch.int64)
    row_scale = torch.exp2(lay.row_exp[: lay.rows].to(dtype))
    out = torch.empty(x2.shape[0], lay.rows, dtype=dtype)
    for r0 in range(0, lay.rows, rows_per_chunk):
        r1 = min(lay.rows, r0 + rows_per_chunk)
        seeds, e_off, codes = unpack_records(lay, r0 // 8, -(-r1 // 8), nb)
        seeds, e_off, codes = seeds[r0 % 8 : r0 % 8 + r1 - r0], e_off[r0 % 8 : r0 % 8 + r1 - r0], \
            codes[r0 % 8 : r0 % 8 + r1 - r0]
        qe = codes.to(torch.int64) << e_off[..., None].to(torch.int64)  # (rows, nb, P)
        ids = pattern[seeds.long()]  # (rows, nb, P)
        for b in range(x2.shape[0]):
            z = vq[b].to(torch.int64).gather(1, ids.permute(1, 0, 2).reshape(nb, -1)).reshape(nb, r1 - r0, P)
            sums = (qe * z.permute(1, 0, 2)).sum(-1)  # (rows, nb), exact
            sums = torch.nn.functional.pad(sums, (0, ng * A8_GROUP - nb)).reshape(r1 - r0, ng, A8_GROUP).sum(-1)
            out[b, r0:r1] = (sums.to(dtype) * scale[b].to(dtype)).sum(-1) * row_scale[r0:r1]
    return out.reshape(*lead, lay.rows)
