"""GPTQ (Frantar et al. 2022), a reference implementation for the benchmarks.

No maintained GPTQ package installs and runs on this CPU-only machine (auto-gptq and
gptqmodel build CUDA kernels), so this is a separate, plain-torch implementation of the
paper's Algorithm 1: Hessian H = 2·E[x xᵀ] from calibration activations, 1 % damping
(of the mean diagonal), the upper Cholesky factor of H⁻¹, column-by-column quantisation
with error feedback, lazy batch updates in blocks of 128 columns, no act-order.

The grid is our `rtn` codec's (asymmetric, fp16 scale and offset per group of ``group``
inputs); a group's scale/offset are fitted when its first column is reached, on the
error-updated weights (the reference code reads the not-yet-updated copy inside a lazy
block; we read the updated one, which is what the algorithm intends). The result is an
ordinary `RTNEncoded`: same file format, same bytes, same decode as round-to-nearest.
`tests/test_gptq_baseline.py` checks it against a brute-force sequential OBS update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reality_stone.codecs.rtn import RTNConfig, RTNEncoded

__all__ = ["gptq_quantize", "prepare_hessian"]


def prepare_hessian(H: Tensor, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """Damped float64 Hessian and its dead-input mask (inputs that never fire get H_ii = 1)."""
    H = H.double().clone()
    dead = H.diagonal() <= 0
    H[dead, dead] = 1.0
    H += damp * H.diagonal().mean() * torch.eye(len(H), dtype=torch.float64)
    return H, dead


def _group_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """fp16 scale and offset of the asymmetric grid for the columns ``w`` (out, g)."""
    qmax = 2**bits - 1
    offset = w.amin(1).half()
    scale = ((w.amax(1) - offset.double()) / qmax).half()
    return scale, offset


def _quant(w: Tensor, scale: Tensor, offset: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    s, o = scale.double(), offset.double()
    q = torch.where(s > 0, torch.round((w - o) / s.clamp_min(1e-30)), torch.zeros_like(w)).clamp(0, 2**bits - 1)
    return q, q * s + o


def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, group: int = 128, damp: float = 0.01,
                  blocksize: int = 128) -> RTNEncoded:
    """GPTQ-quantise ``weight`` (out, in) with input second moment ``hessian`` (in, in)."""
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian must be ({in_f}, {in_f}), got {tuple(hessian.shape)}")
    if blocksize % group and group % blocksize:
        raise ValueError("blocksize and group must divide one another")
    n_groups = -(-in_f // group)
    n = n_groups * group
    W = torch.zeros(out_f, n, dtype=torch.float64)
    W[:, :in_f] = weight.double()
    Hp = torch.zeros(n, n, dtype=torch.float64)
    Hp[:in_f, :in_f] = hessian.double()
    H, dead = prepare_hessian(Hp, damp)
    W[:, dead] = 0
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros(out_f, n, dtype=torch.uint8)
    scales = torch.zeros(out_f, n_groups, dtype=torch.float16)
    offsets = torch.zeros(out_f, n_groups, dtype=torch.float16)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                g = col // group
                # the group's columns: updated copy inside this block, lazily-updated W beyond it
                cols = torch.cat([W1[:, i : min(i + group, i2 - i1)], W[:, i2 : col + group]], 1) if col + group > i2 else W1[:, i : i + group]
                scales[:, g], offsets[:, g] = _group_params(cols, bits)
            g = col // group
            q, deq = _quant(W1[:, i], scales[:, g], offsets[:, g], bits)
            codes[:, col] = q.to(torch.uint8)
            err = (W1[:, i] - deq) / U[col, col]
            W1[:, i:] -= err[:, None] * U[col, col:i2][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    codes[:, in_f:] = 0
    return RTNEncoded(RTNConfig(bits=bits, group=group), (out_f, in_f), codes, scales, offsets)
