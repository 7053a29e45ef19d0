"""Butterfly-structured linear maps (Dao et al. 2019): O(N log N) parameters and FLOPs.

``ButterflyLinear(in, out)`` is ``y = B_L ⋯ B_1 x + b`` on N = next power of two ≥ max(in,
out) coordinates: the input is zero-padded to N, the output is the first ``out`` of N.
Factor ℓ (stride s = 2^(ℓ−1)) has N/2 independent 2×2 blocks, each with its own 4 entries,
mixing coordinates i and i + s (SPEC §2: one shared rotation per block would leave O(N)
parameters). A factor is one batched einsum over all its blocks; the only Python loop is over
the log2(N) factors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ButterflyLinear", "butterfly_multiply"]


def butterfly_multiply(twiddle: Tensor, x: Tensor) -> Tensor:
    """Apply B_L ⋯ B_1 to x (..., N). ``twiddle`` (L, N/2, 2, 2): factor ℓ's block k mixes the
    pair (i, i + 2^ℓ) with i the k-th index whose bit ℓ is 0 (blocks in increasing i)."""
    L, half = twiddle.shape[:2]
    N = 2 * half
    if twiddle.shape != (L, half, 2, 2) or N != 1 << L:
        raise ValueError(f"twiddle must have shape (L, 2^(L-1), 2, 2), got {tuple(twiddle.shape)}")
    if x.shape[-1] != N:
        raise ValueError(f"x must have {N} features (pad first), got {x.shape[-1]}")
    lead = x.shape[:-1]
    for ell in range(L):
        s = 1 << ell
        # (..., N/(2s), 2, s): element [k, a, r] is coordinate 2s·k + a·s + r
        xs = x.reshape(*lead, N // (2 * s), 2, s)
        t = twiddle[ell].reshape(N // (2 * s), s, 2, 2)
        x = torch.einsum("krab,...kbr->...kar", t, xs).reshape(*lead, N)
    return x


class ButterflyLinear(nn.Module):
    """``y = B_L ⋯ B_1 · pad(x)[:out] + bias``; parameters ``twiddle`` (log2 N, N/2, 2, 2).

    Initialisation: every 2×2 block is a random orthogonal matrix times one gain chosen so
    the output variance matches ``nn.Linear``'s default init (Var y_i = Var x / 3) whatever
    the padding; bias as ``nn.Linear``. ``to_dense()`` returns the (out, in) matrix.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=None, generator=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.n = 1 << max(1, math.ceil(math.log2(max(in_features, out_features))))
        L = int(math.log2(self.n))
        dtype = dtype or torch.get_default_dtype()
        theta = torch.rand(L, self.n // 2, generator=generator, dtype=torch.float64) * 2 * math.pi
        flip = torch.where(torch.rand(L, self.n // 2, generator=generator) < 0.5, -1.0, 1.0).double()
        cos, sin = theta.cos(), theta.sin()
        blocks = torch.stack([torch.stack([cos, -sin * flip], -1), torch.stack([sin, cos * flip], -1)], -2)
        # orthogonal factors preserve ‖x‖²: gain^(2L) = N / (3 · in) gives Var y_i = Var x / 3
        gain = (self.n / (3 * in_features)) ** (1 / (2 * L))
        self.twiddle = nn.Parameter((blocks * gain).to(dtype))
        if bias:
            bound = 1 / math.sqrt(in_features)
            self.bias = nn.Parameter((torch.rand(out_features, generator=generator, dtype=torch.float64) * 2 - 1)
                                     .mul(bound).to(dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, {self.in_features} expected")
        if x.dtype != self.twiddle.dtype:
            raise ValueError(f"input dtype {x.dtype} does not match the layer's {self.twiddle.dtype}")
        y = butterfly_multiply(self.twiddle, nn.functional.pad(x, (0, self.n - self.in_features)))
        y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias

    def to_dense(self) -> Tensor:
        """The equivalent (out, in) weight: forward = x @ to_dense().T + bias."""
        eye = torch.eye(self.in_features, dtype=self.twiddle.dtype, device=self.twiddle.device)
        y = butterfly_multiply(self.twiddle, nn.functional.pad(eye, (0, self.n - self.in_features)))
        return y[:, : self.out_features].T

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None = None, *, steps: int = 2000, lr: float = 0.02,
                   seed: int = 0) -> tuple["ButterflyLinear", float]:
        """Fit the factors to ``weight`` (out, in) by Adam on ‖to_dense() − W‖_F (deterministic
        under ``seed``). Returns the layer and the relative Frobenius error of the fit."""
        if weight.dim() != 2 or not bool(torch.isfinite(weight).all()):
            raise ValueError(f"weight must be a finite 2-D tensor, got shape {tuple(weight.shape)}")
        W = weight.detach()
        layer = cls(W.shape[1], W.shape[0], bias=bias is not None, dtype=W.dtype,
                    generator=torch.Generator().manual_seed(seed))
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        opt = torch.optim.Adam([layer.twiddle], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad()
            loss = (layer.to_dense() - W).pow(2).sum()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            err = float((layer.to_dense() - W).norm() / W.norm().clamp_min(1e-30))
        return layer, err

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, "
                f"factors={self.twiddle.shape[0]}, bias={self.bias is not None}")
