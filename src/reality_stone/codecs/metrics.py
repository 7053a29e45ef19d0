"""Reconstruction error metrics (relative Frobenius error, SQNR in dB) and the reference weight
every codec declares its error bound on."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["reference_weight", "relative_error", "sqnr_db"]


def _pair(reference: Tensor, approx: Tensor) -> tuple[Tensor, Tensor]:
    if reference.shape != approx.shape:
        raise ValueError(f"shapes differ: reference {tuple(reference.shape)} vs approx {tuple(approx.shape)}")
    return reference.detach().double(), approx.detach().double()


def relative_error(reference: Tensor, approx: Tensor) -> float:
    """‖reference − approx‖_F / ‖reference‖_F (inf if the reference is zero and approx is not)."""
    r, a = _pair(reference, approx)
    num, den = float(torch.linalg.norm(r - a)), float(torch.linalg.norm(r))
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantisation-noise ratio 10·log10(‖reference‖² / ‖reference − approx‖²) in dB."""
    e = relative_error(reference, approx)
    return math.inf if e == 0 else -20 * math.log10(e)


def reference_weight(rows: int, cols: int, seed: int = 0) -> Tensor:
    """The (rows, cols) float32 weight a codec's ``error_bound`` is declared on: four smooth
    separable cosine fields (amplitudes 1, 1/2, 1/3, 1/4, random frequencies and phases) plus
    i.i.d. Gaussian noise at 10 % of their standard deviation, scaled to std ≈ 0.05 — structure
    that every codec family can use (low rank, smooth blocks, few bits), and noise no codec can.
    Deterministic under ``seed``."""
    g = torch.Generator().manual_seed(seed)
    i = torch.linspace(0, 1, rows, dtype=torch.float64)[:, None]
    j = torch.linspace(0, 1, cols, dtype=torch.float64)[None, :]
    W = torch.zeros(rows, cols, dtype=torch.float64)
    for k in range(1, 5):
        f = torch.rand(4, generator=g, dtype=torch.float64) * 3 * k
        W += torch.cos(math.pi * f[0] * i + 6 * f[1]) * torch.cos(math.pi * f[2] * j + 6 * f[3]) / k
    W = W / W.std() if W.numel() > 1 and float(W.std()) > 0 else W
    return ((W + 0.1 * torch.randn(rows, cols, generator=g, dtype=torch.float64)) * 0.05).float()
