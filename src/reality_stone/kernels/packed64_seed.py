"""The Packed64 seed word and its generator: one 64-bit word that generates a whole block of
weights (SPEC §4). What the codec (`reality_stone.codecs.packed64`) encodes and the fused kernel
(`reality_stone.kernels.packed64`) evaluates; below both, so neither imports the other.

Bit layout, MSB -> LSB (verified against the reference vectors of seed 003)::

    63..44  r        20 bits   q = floor(clamp(r, 0, 1 - 2^-20) · 2^20),  r = (q + 0.5) / 2^20
    43..20  theta    24 bits   q = floor((theta mod 2π) / 2π · 2^24),     theta = (q + 0.5) / 2^24 · 2π
    19..16  basis     4 bits   basis family id 0..15 (table below)
    15..14  d_theta   2 bits   angular derivative order 0..3: sin -> cos -> -sin -> -cos
    13      d_r       1 bit    radial derivative: Ψ -> Ψ' (table below)
    12..9   rot       4 bits   rotation by rot · π/8
    8..6    log2_c    3 bits   signed two's complement, c = 2^log2_c, log2_c ∈ [-4, 3]
    5..0    reserved  6 bits   carried through unchanged

``r`` outside [0, 1] or NaN is an error; r in [1 - 2^-20, 1] is clamped to the last code
(the SPEC's clamp). ``theta`` must be finite and is reduced mod 2π.

Generator ``formula="polar"`` (seed 003), for cell (i, j) of an H × W field::

    x_j = 2j/(W-1) - 1,  y_i = 2i/(H-1) - 1            (0 when the side has one cell)
    θ_ij = atan2(y_i, x_j),  ρ_ij = √(x_j² + y_i²)/√2 ∈ [0, 1]
    k = basis mod 4              (angular harmonic; k = 0 with d_theta = 1 gives Φ = 1, a radial bump)
    f = basis div 4              (radial family)
    Φ = sin(k·(theta + θ_ij + rot·π/8) + d_theta·π/2)        (= d_theta-th derivative of sin(k·), / k^d_theta)
    Ψ = Ψ_f^(d_r)(c · r · ρ_ij)
    J = (1 - r²)^-2
    w_ij = scale · J · Φ · Ψ

    f   Ψ_f(t)      Ψ_f'(t) (d_r = 1)
    0   sinh t      cosh t
    1   tanh t      sech² t
    2   exp(-t²)    -2t·exp(-t²)
    3   sech t      -sech t · tanh t

Two deliberate differences from seed 003's text, both forced by its formula: (1) seed 003
evaluates Ψ at c·r, constant over the block, which would make every block a purely angular
pattern; here Ψ sees the cell radius ρ_ij (identical at ρ = 1). (2) J = (1 - c r²)^-2 is
undefined for c r² ≥ 1, which 5 of the 8 curvature codes allow for some r; the seed's point is
taken at Euclidean radius r/√c in the ball of curvature c, which gives (1 - r²)^-2 for all
codes (the conformal factor squared, /4).

Generator ``formula="hash"`` (seed 002): ``w_ij = scale · tanh(2 artanh r) · sin(theta) · m(i, j)``,
``m = 1 + 0.1 sin(2π h / 256)``, ``h = (31 i + 17 j) mod 256`` with (i, j) the cell's indices in
the field; the other fields are carried but unused.

Because the angle enters only as theta + rot·π/8 + d_theta·π/(2k), rot and d_theta are
redundant with theta for k ≥ 1; the encoder emits them as 0 and puts the whole phase in
theta (for k = 0 it emits d_theta = 1, theta = 0).
Likewise with a stored scale only the product u = c·r shapes the block; the encoder picks
the smallest c with r = u/c ≤ 1/2 (keeping J ≤ 1.78 so the fp16 scale never underflows).

The scale is stored beside each seed (fp16 or fp32): without it, J ≥ 1 makes every
generated block have amplitude ≥ |Φ·Ψ|, and real weights (|w| ~ 1e-2) are unreachable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["R_BITS", "THETA_BITS", "TWO_PI", "SeedFields", "decode_block", "decode_element", "generate", "grid_coords",
           "pack_seed", "radial", "radial_rows", "unpack_seed"]

R_BITS, THETA_BITS = 20, 24
TWO_PI = 2 * math.pi
_R_MAX = 1.0 - 2.0**-R_BITS
_FIELD_RANGES = {
    "basis": (0, 15),
    "d_theta": (0, 3),
    "d_r": (0, 1),
    "rot": (0, 15),
    "log2_c": (-4, 3),
    "reserved": (0, 63),
}
_U64 = (1 << 64) - 1


class SeedFields(NamedTuple):
    """Decoded fields. Python numbers for a scalar seed, tensors for a tensor of seeds."""

    r: float | Tensor
    theta: float | Tensor
    basis: int | Tensor
    d_theta: int | Tensor
    d_r: int | Tensor
    rot: int | Tensor
    log2_c: int | Tensor
    reserved: int | Tensor


# --------------------------------------------------------------------------- bit packing


def _check_int_field(name: str, v: Tensor) -> Tensor:
    lo, hi = _FIELD_RANGES[name]
    if v.is_floating_point():
        if not bool((v == v.round()).all()):
            raise ValueError(f"{name} must be an integer, got {v.flatten()[:4].tolist()}")
        v = v.long()
    v = v.long()
    if bool(((v < lo) | (v > hi)).any()):
        bad = v[(v < lo) | (v > hi)].flatten()[0].item()
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {bad}")
    return v


def pack_seed(r, theta, basis=0, d_theta=0, d_r=0, rot=0, log2_c=0, reserved=0):
    """Pack fields into a 64-bit seed.

    Scalars in -> a Python ``int`` in [0, 2^64). Any tensor argument -> an int64 tensor
    (two's complement bit pattern, broadcast over the arguments).
    """
    scalar = not any(isinstance(a, Tensor) for a in (r, theta, basis, d_theta, d_r, rot, log2_c, reserved))
    rt = torch.as_tensor(r, dtype=torch.float64)
    tt = torch.as_tensor(theta, dtype=torch.float64)
    if bool(torch.isnan(rt).any()) or bool(((rt < 0) | (rt > 1)).any()):
        raise ValueError(f"r must be in [0, 1], got {rt.flatten()[:4].tolist()}")
    if not bool(torch.isfinite(tt).all()):
        raise ValueError("theta must be finite")
    ints = {
        name: _check_int_field(name, torch.as_tensor(v))
        for name, v in dict(basis=basis, d_theta=d_theta, d_r=d_r, rot=rot, log2_c=log2_c, reserved=reserved).items()
    }
    q_r = torch.floor(rt.clamp(0.0, _R_MAX) * 2**R_BITS).long()
    q_t = torch.floor(torch.remainder(tt, TWO_PI) / TWO_PI * 2**THETA_BITS).long() % (1 << THETA_BITS)
    seed = (
        (q_r << 44)
        | (q_t << 20)
        | (ints["basis"] << 16)
        | (ints["d_theta"] << 14)
        | (ints["d_r"] << 13)
        | (ints["rot"] << 9)
        | ((ints["log2_c"] & 0b111) << 6)
        | ints["reserved"]
    )
    if scalar:
        return int(seed) & _U64
    return seed


def _as_seed_tensor(seed) -> Tensor:
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64:
            raise ValueError(f"seed tensors must be int64, got {seed.dtype}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= _U64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return torch.tensor(seed - (1 << 64) if seed >= 1 << 63 else seed, dtype=torch.int64)


def unpack_seed(seed) -> SeedFields:
    """Decode a seed (Python int, or int64 tensor of seeds) into its fields."""
    scalar = not isinstance(seed, Tensor)
    s = _as_seed_tensor(seed)
    q_r = (s >> 44) & 0xFFFFF
    q_t = (s >> 20) & 0xFFFFFF
    c3 = (s >> 6) & 0b111
    f = SeedFields(
        r=(q_r.double() + 0.5) / 2**R_BITS,
        theta=(q_t.double() + 0.5) / 2**THETA_BITS * TWO_PI,
        basis=(s >> 16) & 0xF,
        d_theta=(s >> 14) & 0b11,
        d_r=(s >> 13) & 0b1,
        rot=(s >> 9) & 0xF,
        log2_c=torch.where(c3 >= 4, c3 - 8, c3),
        reserved=s & 0x3F,
    )
    if scalar:
        return SeedFields(*(float(v) if i < 2 else int(v) for i, v in enumerate(f)))
    return f


# --------------------------------------------------------------------------- generator


def grid_coords(ii: Tensor, jj: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    y = 2 * ii / (height - 1) - 1 if height > 1 else torch.zeros_like(ii)
    x = 2 * jj / (width - 1) - 1 if width > 1 else torch.zeros_like(jj)
    return x, y


def radial(family: Tensor, d_r: Tensor, t: Tensor) -> Tensor:
    th = torch.tanh(t)
    sech = 1 / torch.cosh(t)
    g = torch.exp(-t * t)
    table = [
        (torch.sinh(t), torch.cosh(t)),
        (th, sech * sech),
        (g, -2 * t * g),
        (sech, -sech * th),
    ]
    out = torch.zeros_like(t)
    for f, (psi, dpsi) in enumerate(table):
        out = torch.where(family == f, torch.where(d_r == 1, dpsi, psi), out)
    return out


def radial_rows(family: Tensor, d_r: Tensor, t: Tensor) -> Tensor:
    """`_radial` for per-row fields: family/d_r (N,), t (N, M). Evaluates each row's own Ψ only."""
    out = torch.empty_like(t)
    for f in range(4):
        for d in range(2):
            rows = ((family == f) & (d_r == d)).nonzero().flatten()
            if len(rows):
                out[rows] = radial(torch.tensor(f), torch.tensor(d), t[rows])
    return out


def generate(fields: SeedFields, scale: Tensor, ii: Tensor, jj: Tensor, height: int, width: int, formula: str) -> Tensor:
    """Values at cells (ii, jj) of an height × width field. Field tensors broadcast against ii/jj."""
    if formula == "polar":
        x, y = grid_coords(ii, jj, height, width)
        theta_ij = torch.atan2(y, x)
        rho = torch.sqrt(x * x + y * y) / math.sqrt(2)
        k = (fields.basis % 4).double()
        phi = fields.theta + theta_ij + fields.rot.double() * (math.pi / 8)
        ang = torch.sin(k * phi + fields.d_theta.double() * (math.pi / 2))
        c = torch.pow(2.0, fields.log2_c.double())
        rad = radial(fields.basis // 4, fields.d_r, c * fields.r * rho)
        jac = (1 - fields.r * fields.r) ** -2
        return scale * jac * ang * rad
    if formula == "hash":
        h = (31 * ii.long() + 17 * jj.long()) % 256
        m = 1 + 0.1 * torch.sin(TWO_PI * h.double() / 256)
        amp = torch.tanh(2 * torch.atanh(fields.r)) * torch.sin(fields.theta)
        return scale * amp * m
    raise ValueError(f"formula must be 'polar' or 'hash', got {formula!r}")


def decode_block(
    seed,
    rows: int,
    cols: int,
    row0: int = 0,
    col0: int = 0,
    *,
    height: int | None = None,
    width: int | None = None,
    formula: str = "polar",
    scale: float | Tensor = 1.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The block a seed stands for, vectorised.

    The seed defines a ``height × width`` field (default: ``rows × cols``, the whole block);
    this returns its window ``[row0 : row0 + rows, col0 : col0 + cols]``. ``seed`` may be a
    Python int (-> (rows, cols)) or an int64 tensor of n seeds with ``scale`` of shape (n,)
    (-> (n, rows, cols)).
    """
    height = rows if height is None else height
    width = cols if width is None else width
    if min(rows, cols) < 1 or row0 < 0 or col0 < 0 or row0 + rows > height or col0 + cols > width:
        raise ValueError(f"window [{row0}:{row0 + rows}, {col0}:{col0 + cols}] is not inside the {height}×{width} field")
    f = unpack_seed(_as_seed_tensor(seed))
    batched = f.r.dim() > 0
    f = SeedFields(*(v[..., None, None] if batched else v for v in f))
    sc = torch.as_tensor(scale, dtype=torch.float64)
    if batched:
        sc = sc.reshape(-1)[:, None, None]
    ii = torch.arange(row0, row0 + rows, dtype=torch.float64)[:, None]
    jj = torch.arange(col0, col0 + cols, dtype=torch.float64)[None, :]
    return generate(f, sc, ii, jj, height, width, formula).to(dtype)


def decode_element(seed, i: int, j: int, *, height: int, width: int, formula: str = "polar", scale: float = 1.0) -> float:
    """Element (i, j) of the ``height × width`` field of ``seed``, in O(1) (float64)."""
    if not (0 <= i < height and 0 <= j < width):
        raise ValueError(f"cell ({i}, {j}) is outside the {height}×{width} field")
    f = unpack_seed(_as_seed_tensor(seed))
    ii = torch.tensor(float(i), dtype=torch.float64)
    jj = torch.tensor(float(j), dtype=torch.float64)
    return float(generate(f, torch.tensor(scale, dtype=torch.float64), ii, jj, height, width, formula))
