"""Reconstruction error metrics: relative Frobenius error and SQNR (dB)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["relative_error", "sqnr_db"]


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
