"""Packed64 leaves: the compute layout and the plain-torch reference (the oracle).

Every leaf of a Packed64 quadtree (`reality_stone.codecs.packed64`) is, with per-leaf numbers
derived once from its seed and scale,

    polar (seed 003): w_ij = Ψ_kind(u · ρ_ij) · (a · sin(kθ_ij) + b · cos(kθ_ij))
        u = c·r,  φ = k·(θ + rot·π/8) + d_theta·π/2,  a = scale·J·cos φ,  b = scale·J·sin φ,
        J = (1 − r²)^-2,  kind = 2·family + d_r  (sin(kθ_ij + φ) expanded)
    hash (seed 002):  w_ij = a · m_ij,  a = scale · tanh(2 artanh r) · sin θ  (kind 8)

so a leaf costs its few numbers plus per-size grid tables (ρ, sin kθ, cos kθ for k = 1..3, or
m), and the fused kernel (`packed64_cpu.cpp`) generates each leaf row by row, never W.

Layout (`packed64_layout`, built once per weight; leaves in the codec's order, i.e. grouped
by top-level block row): ``leaves`` int32 (n, 6) = row0, col0, size, kind, k, table offset;
``params`` float64 (n, 3) = u, a, b; ``row_start`` int64 (top block rows + 1); ``tables``
float32, per leaf size [ρ | sin θ | sin 2θ | sin 3θ | cos θ | cos 2θ | cos 3θ], each size × size
row-major, then the same seven over the top-left quadrant column-major (the kernel's
symmetric product reads those) (polar); or [m] (hash).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from reality_stone.kernels.packed64_seed import grid_coords, radial, unpack_seed

__all__ = ["HASH_KIND", "Packed64Layout", "decode_rows", "packed64_layout", "packed64_linear_reference"]

HASH_KIND = 8


@dataclass(frozen=True)
class Packed64Layout:
    """See the module docstring. ``shape`` is the real (out, in); ``block`` the top-level side."""

    leaves: Tensor
    params: Tensor
    row_start: Tensor
    tables: Tensor
    block: int
    shape: tuple[int, int]

    @property
    def padded_shape(self) -> tuple[int, int]:
        B = self.block
        return (len(self.row_start) - 1) * B, -(-self.shape[1] // B) * B


def _polar_grid(size: int) -> tuple[Tensor, Tensor]:
    """(ρ, θ) of the cells of a size × size field, float64 (the codec's coordinates)."""

    ii = torch.arange(size, dtype=torch.float64)[:, None]
    jj = torch.arange(size, dtype=torch.float64)[None, :]
    x, y = grid_coords(ii, jj, size, size)
    return torch.sqrt(x * x + y * y) / math.sqrt(2), torch.atan2(y, x)


def _hash_grid(size: int) -> Tensor:
    ii = torch.arange(size)[:, None]
    jj = torch.arange(size)[None, :]
    h = (31 * ii + 17 * jj) % 256
    return 1 + 0.1 * torch.sin(2 * math.pi * h.double() / 256)


def _size_tables(size: int, formula: str) -> Tensor:
    """Flat float64 tables of one leaf size: polar, the seven (size, size) grids [ρ, sin kθ,
    cos kθ (k = 1..3)] row-major, then the same over the top-left quadrant column-major; hash, m."""
    if formula == "hash":
        return _hash_grid(size).flatten()
    rho, theta = _polar_grid(size)
    k = torch.arange(1, 4, dtype=torch.float64)[:, None, None]
    grids = torch.cat([rho[None], torch.sin(k * theta), torch.cos(k * theta)])
    h = size // 2
    return torch.cat([grids.flatten(), grids[:, :h, :h].transpose(1, 2).flatten()])


def packed64_layout(seeds: Tensor, scales: Tensor, leaves: list[tuple[int, int, int]], block: int,
                    shape: tuple[int, int], formula: str) -> Packed64Layout:
    """From the codec's fields: int64 seeds (n,), scales (n,), leaf positions (row0, col0, size)
    in quadtree order, the top-level block side, the real shape and the generator formula."""

    f = unpack_seed(seeds)
    sc = scales.double()
    n = len(leaves)
    pos = torch.tensor(leaves, dtype=torch.int64).reshape(n, 3)
    sizes = sorted({s for *_, s in leaves})
    per_size = {s: _size_tables(s, formula) for s in sizes}
    offsets, o = {}, 0
    for s in sizes:
        offsets[s] = o
        o += per_size[s].numel()
    tables = torch.cat([per_size[s].flatten() for s in sizes]).to(torch.float32)
    if o >= 2**31:
        raise ValueError("packed64 leaves too large for the kernel's int32 table offsets")
    if formula == "polar":
        k = f.basis % 4
        phi = k.double() * (f.theta + f.rot.double() * (math.pi / 8)) + f.d_theta.double() * (math.pi / 2)
        amp = sc * (1 - f.r * f.r) ** -2
        u = torch.pow(2.0, f.log2_c.double()) * f.r
        a, b, kind = amp * torch.cos(phi), amp * torch.sin(phi), (f.basis // 4) * 2 + f.d_r
    else:
        k = torch.zeros(n, dtype=torch.int64)
        u, b = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        a = sc * torch.tanh(2 * torch.atanh(f.r)) * torch.sin(f.theta)
        kind = torch.full((n,), HASH_KIND, dtype=torch.int64)
    off = torch.tensor([offsets[s] for *_, s in leaves], dtype=torch.int64)
    leaf_ints = torch.stack([pos[:, 0], pos[:, 1], pos[:, 2], kind, k, off], dim=1).to(torch.int32)
    n_top_rows = -(-shape[0] // block)
    top_row = pos[:, 0] // block
    if n and bool((top_row[1:] < top_row[:-1]).any()):
        raise ValueError("packed64 leaves must be grouped by top-level block row")
    counts = torch.bincount(top_row, minlength=n_top_rows)
    row_start = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return Packed64Layout(leaves=leaf_ints.contiguous(), params=torch.stack([u, a, b], dim=1).contiguous(),
                          row_start=row_start, tables=tables.contiguous(), block=block,
                          shape=(int(shape[0]), int(shape[1])))


def _leaf_blocks(lay: Packed64Layout, sel: Tensor, size: int) -> Tensor:
    """(len(sel), size, size) float64 values of the leaves ``sel`` (all of side ``size``)."""

    u, a, b = (lay.params[sel, c][:, None, None] for c in range(3))
    kind = lay.leaves[sel, 3].to(torch.int64)[:, None, None]
    if bool((kind == HASH_KIND).all()):
        return a * _hash_grid(size)
    rho, theta = _polar_grid(size)
    k = lay.leaves[sel, 4].to(torch.float64)[:, None, None]
    return radial(kind // 2, kind % 2, u * rho) * (a * torch.sin(k * theta) + b * torch.cos(k * theta))


def decode_rows(lay: Packed64Layout, r0: int, r1: int, dtype=torch.float32) -> Tensor:
    """Rows [r0, r1) of W (real columns only), generated in float64 from the layout.

    Only the leaves that meet the rows are evaluated (the tiled path and the backward call
    this a few hundred rows at a time)."""
    R, C = lay.padded_shape
    if not 0 <= r0 < r1 <= R:
        raise ValueError(f"rows [{r0}, {r1}) outside the padded {R} rows")
    out = torch.zeros(r1 - r0, C, dtype=torch.float64)
    li = lay.leaves.to(torch.int64)
    row0, col0, size = li[:, 0], li[:, 1], li[:, 2]
    meets = (row0 < r1) & (row0 + size > r0)
    for s in size[meets].unique().tolist():
        sel = (meets & (size == s)).nonzero().flatten()
        blocks = _leaf_blocks(lay, sel, s)
        rows = row0[sel][:, None] + torch.arange(s)  # (n, s)
        cols = col0[sel][:, None] + torch.arange(s)
        keep = ((rows >= r0) & (rows < r1))[:, :, None].expand(-1, -1, s)
        out[(rows - r0)[:, :, None].expand(-1, -1, s)[keep], cols[:, None, :].expand(-1, s, -1)[keep]] = blocks[keep]
    return out[:, : lay.shape[1]].to(dtype)


def packed64_linear_reference(x: Tensor, lay: Packed64Layout) -> Tensor:
    """The oracle: generate the whole weight from the layout, then matmul. x (..., in) -> (..., out)."""
    return x @ decode_rows(lay, 0, lay.shape[0], x.dtype).T
