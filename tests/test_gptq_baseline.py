"""The benchmark's GPTQ reference equals a brute-force sequential OBS update on tiny layers."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines.gptq import _group_params, _quant, gptq_quantize, prepare_hessian  # noqa: E402

from reality_stone.codecs import relative_error  # noqa: E402
from reality_stone.codecs.rtn import RTNConfig  # noqa: E402


def brute_force(W, H, bits, group, damp=0.01):
    """Quantise columns left to right; after each, update the rest with the explicit inverse
    Hessian of the remaining columns (Optimal Brain Surgeon), recomputed from scratch."""
    W = W.double().clone()
    Hd, _ = prepare_hessian(H, damp)
    n = W.shape[1]
    deq_all = torch.zeros_like(W)
    codes = torch.zeros_like(W, dtype=torch.int64)
    scale = offset = None
    for j in range(n):
        if j % group == 0:
            scale, offset = _group_params(W[:, j : j + group], bits)
        q, deq = _quant(W[:, j], scale, offset, bits)
        codes[:, j], deq_all[:, j] = q.to(torch.int64), deq
        rest = list(range(j, n))
        Hinv = torch.linalg.inv(Hd[rest][:, rest])  # inverse Hessian of the not-yet-quantised columns
        delta = (W[:, j] - deq) / Hinv[0, 0]
        W[:, j + 1 :] -= delta[:, None] * Hinv[0, 1:][None, :]
    return codes


def test_gptq_matches_brute_force_obs():
    g = torch.Generator().manual_seed(0)
    out_f, in_f = 6, 16
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    X = torch.randn(200, in_f, generator=g, dtype=torch.float64) @ torch.randn(in_f, in_f, generator=g, dtype=torch.float64)
    H = X.T @ X / len(X)
    for blocksize in (4, 8, 16):
        enc = gptq_quantize(W, H, bits=3, group=4, blocksize=blocksize)
        assert torch.equal(enc.codes.long(), brute_force(W, H, 3, 4))


def test_gptq_lowers_output_error_vs_rtn():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 64, generator=g)
    # correlated inputs (as real activations are): 16 latent factors + a little noise
    X = torch.randn(512, 16, generator=g) @ torch.randn(16, 64, generator=g) + 0.1 * torch.randn(512, 64, generator=g)
    H = (X.T @ X / len(X)).double()
    rtn = RTNConfig(bits=3, group=32).encode(W)
    gq = gptq_quantize(W, H, bits=3, group=32)
    out_err = lambda enc: relative_error(X @ W.T, X @ enc.decode().T)  # noqa: E731
    assert out_err(gq) < 0.7 * out_err(rtn)
    assert gq.nbytes == rtn.nbytes
