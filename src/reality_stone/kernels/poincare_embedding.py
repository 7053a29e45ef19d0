"""Fused training step of Poincaré hierarchy embeddings (`poincare_embedding_cpu.cpp`).

The reference is the plain-torch step of `reality_stone.hierarchy` (autograd through
`poincare.dist`, a sparse row gradient, `optim.RiemannianAdam`'s lazy sparse step): the same
loss, gradient and update, computed per candidate in registers instead of ~100 torch passes
over (batch, candidates, dim) tensors. `embed` uses it for the ball when the extension is built;
``tests/kernels/test_poincare_embedding.py`` holds it to the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.geometry.validation import boundary_eps
from reality_stone.kernels.extension import load_extension

__all__ = ["fused_step_available", "poincare_embedding_step"]


def fused_step_available() -> bool:
    return load_extension(quiet=True) is not None


def poincare_embedding_step(weight: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, u: Tensor, cand: Tensor,
                            ptr: Tensor, cols: Tensor, grad_buf: Tensor, *, c: float, lr: float, betas: tuple[float, float],
                            eps: float) -> float:
    """One step in place on ``weight`` (n, D) and its Adam moments; returns the batch's mean loss.

    ``u`` (B,) int64 anchors; ``cand`` (B, K+1) int64 with the positive in column 0 and K sampled
    negatives; ``ptr`` (n+1,), ``cols`` (E,) the closure's CSR rows (columns sorted in each row):
    a negative that is u or one of u's neighbours is left out of the softmax. ``exp_avg`` (n, D)
    and ``exp_avg_sq`` (n, 1) are `RiemannianAdam`'s state; ``step`` its step count after this
    step (≥ 1). ``grad_buf`` (n, D) float64, all zero: the kernel's gradient workspace, left
    zero again (allocate it once per table). float32 or float64 tables; arithmetic in float64.
    """
    ext = load_extension(quiet=True)
    if ext is None:
        raise RuntimeError("the fused Poincaré embedding step needs the compiled kernels (see extension_status())")
    if weight.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"weight must be float32 or float64, got {weight.dtype}")
    return ext.poincare_embedding_step(weight, exp_avg, exp_avg_sq, u.contiguous(), cand.contiguous(), ptr, cols,
                                       grad_buf, float(c), float(lr), float(betas[0]), float(betas[1]), float(eps),
                                       int(step), boundary_eps(weight.dtype))
