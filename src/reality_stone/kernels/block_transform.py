"""Fused matmul for block-transform codecs (RBE: blueprint + sparse DCT/wavelet residual).

For B×B blocks W_IJ = Σ_t b_IJt Φ_t + Aᵀ C_IJ A (A orthonormal, C sparse), the product
y = x Wᵀ is computed without W:

* residual: transform x once per column block, z_J = A x_J (O(N·B) as a small matmul);
  u_I = Σ_J C_IJ z_J as one sparse (CSR) product over all kept coefficients (O(nnz));
  y_I = Aᵀ u_I;
* poly-cos8 blueprint: w_Jt = Φ_t x_J for the 8 basis images, then y_I += Σ_{J,t} b_IJt w_Jt
  (O(8·N·out/B)).

The reference is `RBEEncoded.decode` → matmul; tests compare the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.kernels.sparse import csr_matrix

__all__ = ["block_transform_matmul", "coefficient_matrix"]


def coefficient_matrix(positions, indices, values, block: int, shape_blocks: tuple[int, int]) -> Tensor:
    """All kept coefficients as one sparse (rows·B, cols·B) CSR matrix in the transform domain:
    entry (I·B + p, J·B + q) = C_IJ[p, q] (index p·B + q within its block)."""
    rows, cols, vals = [], [], []
    for (i, j), idx, v in zip(positions, indices, values):
        rows.append(i * block + torch.div(idx, block, rounding_mode="floor"))
        cols.append(j * block + idx % block)
        vals.append(v)
    if rows:
        r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    else:
        r = c = torch.zeros(0, dtype=torch.int64)
        v = torch.zeros(0, dtype=torch.float64)
    size = (shape_blocks[0] * block, shape_blocks[1] * block)
    coo = torch.sparse_coo_tensor(torch.stack([r, c]), v, size, check_invariants=True).coalesce()
    r, c = coo.indices()
    crow = torch.zeros(size[0] + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(r, minlength=size[0]).cumsum(0)
    return csr_matrix(crow, c, coo.values(), size)


def block_transform_matmul(x: Tensor, A: Tensor, coeffs: Tensor, out_features: int, *,
                           blueprint: Tensor | None = None, basis: Tensor | None = None) -> Tensor:
    """x (..., in) → (..., out). ``A`` (B, B) orthonormal; ``coeffs`` sparse (nI·B, nJ·B);
    ``blueprint`` (nI, nJ, T) coefficients of the basis images ``basis`` (T, B, B), or None."""
    B = A.shape[0]
    lead, in_f, dtype = x.shape[:-1], x.shape[-1], x.dtype
    # float64 inside: blueprint and residual cancel (the residual is W − blueprint), so each
    # part's product can be much larger than W x; in float32 that cancellation costs digits
    # the decode → matmul reference (decoded in float64) does not lose. All parts are O(N·B +
    # nnz), so the wider type is cheap.
    x = x.double()
    nI, nJ = coeffs.shape[0] // B, coeffs.shape[1] // B
    x2 = torch.nn.functional.pad(x.reshape(-1, in_f), (0, nJ * B - in_f))
    xb = x2.reshape(-1, nJ, B)
    z = (xb @ A.to(x.dtype).T).reshape(-1, nJ * B)  # z_J = A x_J
    u = (coeffs.to(x.dtype) @ z.T).T  # (batch, nI·B): Σ_J C_IJ z_J
    y = (u.reshape(-1, nI, B) @ A.to(x.dtype)).reshape(-1, nI * B)  # y_I = Aᵀ u_I
    if blueprint is not None:
        w = torch.einsum("tpq,bjq->bjtp", basis.to(x.dtype), xb)  # Φ_t x_J: (batch, nJ, T, B)
        y = y + torch.einsum("ijt,bjtp->bip", blueprint.to(x.dtype), w).reshape(-1, nI * B)
    return y[:, :out_features].reshape(*lead, out_features).to(dtype)
