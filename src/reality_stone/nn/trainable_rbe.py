"""A trainable view of an RBE-compressed weight (`reality_stone.codecs.rbe`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reality_stone.codecs.rbe import RBEEncoded, poly_cos8_basis, transform_matrix

__all__ = ["TrainableRBE"]


class TrainableRBE(nn.Module):
    """Differentiable RBE weight: forward() reconstructs W through the inverse transform.

    Parameters: the poly-cos8 blueprint coefficients (n_blocks, 8) and the kept residual
    values (one flat vector); the sparsity pattern, transform and shape are buffers.
    ``linear(x)`` = ``x @ W.T``. Use it to fine-tune a compressed layer by distillation,
    then `to_encoded()` re-quantises to the stored format.
    """

    def __init__(self, enc: RBEEncoded):
        super().__init__()
        cfg = enc.config
        if cfg.basis == "packed64":
            raise ValueError("TrainableRBE supports basis 'poly-cos8' or 'none' (Packed64 seeds are discrete)")
        self.config, self.shape, self.positions = cfg, enc.shape, enc.positions
        B, n = cfg.block, len(enc.positions)
        self.blueprint = nn.Parameter(enc.blueprint.double().clone()) if cfg.basis == "poly-cos8" else None
        self.values = nn.Parameter(torch.cat(enc.values()) if n else torch.zeros(0, dtype=torch.float64))
        flat_idx = torch.cat([i + b * B * B for b, i in enumerate(enc.indices)]) if n else torch.zeros(0, dtype=torch.int64)
        self.register_buffer("flat_index", flat_idx)
        self.register_buffer("counts", enc.counts.clone())
        self.register_buffer("A", transform_matrix(cfg.residual, B))
        self.register_buffer("Phi", poly_cos8_basis(B).reshape(B * B, 8))
        rows, cols = enc.shape
        gi = torch.tensor([i for i, _ in enc.positions]), torch.tensor([j for _, j in enc.positions])
        self.register_buffer("block_row", gi[0])
        self.register_buffer("block_col", gi[1])

    def forward(self) -> Tensor:
        cfg, B, n = self.config, self.config.block, len(self.positions)
        C = torch.zeros(n * B * B, dtype=self.values.dtype, device=self.values.device).index_put((self.flat_index,), self.values)
        blocks = self.A.T @ C.reshape(n, B, B) @ self.A
        if self.blueprint is not None:
            blocks = blocks + (self.Phi @ self.blueprint.T).T.reshape(n, B, B)
        rows, cols = self.shape
        nr, nc = -(-rows // B), -(-cols // B)
        grid = torch.zeros(nr, nc, B, B, dtype=blocks.dtype, device=blocks.device)
        grid = grid.index_put((self.block_row, self.block_col), blocks)
        if cfg.mirror:
            off = self.block_row != self.block_col
            grid = grid.index_put((self.block_col[off], self.block_row[off]), blocks[off].transpose(1, 2))
        return grid.permute(0, 2, 1, 3).reshape(nr * B, nc * B)[:rows, :cols]

    def linear(self, x: Tensor) -> Tensor:
        return x @ self.forward().to(x.dtype).T

    def to_encoded(self) -> RBEEncoded:
        splits = self.counts.tolist()
        B = self.config.block
        idx = [i - b * B * B for b, i in enumerate(torch.split(self.flat_index, splits))]
        vals = list(torch.split(self.values.detach(), splits))
        bp = self.blueprint.detach().half() if self.blueprint is not None else None
        return RBEEncoded(self.config, self.shape, bp, self.counts.clone(), idx, vals)
