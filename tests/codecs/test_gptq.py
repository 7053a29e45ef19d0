"""The library's GPTQ codec: equals a brute-force sequential OBS update, beats RTN on output
error at the same bytes, and runs the fused int kernels from rtn's payload."""

import pytest
import torch

from reality_stone.calibration import ActivationStats
from reality_stone.codecs import codec_config, decode_bytes, relative_error
from reality_stone.codecs.group_affine import GroupAffineEncoded
from reality_stone.codecs.gptq import _group_params, _quant, prepare_hessian


def brute_force(W, H, bits, group, damp=0.01, order=None, static=None):
    """Quantise columns in ``order`` (default left to right); after each, update the rest with the
    explicit inverse Hessian of the remaining columns (Optimal Brain Surgeon), recomputed from
    scratch. ``static`` (scale, offset) per group fixes the grid up front (act-order)."""
    W = W.double().clone()
    Hd, _ = prepare_hessian(H, damp)
    n = W.shape[1]
    order = list(range(n)) if order is None else [int(i) for i in order]
    codes = torch.zeros_like(W, dtype=torch.int64)
    scale = offset = None
    for t, j in enumerate(order):
        if static is not None:
            scale, offset = static[0][:, j // group], static[1][:, j // group]
        elif j % group == 0:
            scale, offset = _group_params(W[:, j : j + group], bits)
        q, deq = _quant(W[:, j], scale, offset, bits)
        codes[:, j] = q.to(torch.int64)
        rest = order[t:]
        Hinv = torch.linalg.inv(Hd[rest][:, rest])  # inverse Hessian of the not-yet-quantised columns
        delta = (W[:, j] - deq) / Hinv[0, 0]
        W[:, rest[1:]] -= delta[:, None] * Hinv[0, 1:][None, :]
    return codes


def problem(seed=0, out_f=6, in_f=16):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    X = torch.randn(200, in_f, generator=g, dtype=torch.float64) @ torch.randn(in_f, in_f, generator=g, dtype=torch.float64)
    return W, X.T @ X / len(X)


def test_gptq_matches_brute_force_obs():
    W, H = problem()
    for blocksize in (4, 8, 16):
        enc = codec_config("gptq", bits=3, group=4, blocksize=blocksize).encode(W, ActivationStats(H, 200))
        assert torch.equal(enc.codes.long(), brute_force(W, H, 3, 4))


def test_act_order_matches_brute_force_in_activation_order():
    W, H = problem(seed=2)
    static = [torch.stack(t, 1) for t in zip(*(_group_params(W[:, g * 4 : g * 4 + 4], 3) for g in range(4)))]
    order = torch.argsort(H.diagonal(), descending=True, stable=True)
    for blocksize in (3, 16):
        enc = codec_config("gptq", bits=3, group=4, act_order=True, blocksize=blocksize).encode(W, ActivationStats(H, 200))
        assert torch.equal(enc.codes.long(), brute_force(W, H, 3, 4, order=order, static=static))


def test_gptq_lowers_output_error_vs_rtn_and_keeps_rtn_bytes():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 64, generator=g)
    # correlated inputs (as real activations are): 16 latent factors + a little noise
    X = torch.randn(512, 16, generator=g) @ torch.randn(16, 64, generator=g) + 0.1 * torch.randn(512, 64, generator=g)
    stats = ActivationStats((X.T @ X / len(X)).double(), 512)
    rtn = codec_config("rtn", bits=3, group=32).encode(W)
    out_err = lambda enc: relative_error(X @ W.T, X @ enc.decode().T)  # noqa: E731
    for act_order in (False, True):
        gq = codec_config("gptq", bits=3, group=32, act_order=act_order).encode(W, stats)
        assert out_err(gq) < 0.7 * out_err(rtn)
    assert gq.payload() and len(gq.payload()) == len(rtn.payload())  # the same group-affine payload


def test_fused_kernel_path_and_round_trip():
    W, H = problem(seed=3, out_f=24, in_f=128)
    enc = codec_config("gptq", bits=4, group=64).encode(W.float(), ActivationStats(H, 200))
    assert isinstance(enc, GroupAffineEncoded) and enc.kernel_layout() is not None  # runs the int-kernel path
    back = decode_bytes(enc.to_bytes())
    assert isinstance(back, GroupAffineEncoded) and back.config == enc.config
    assert torch.equal(back.decode(), enc.decode())
    x = torch.randn(5, 128)
    ref = x.double() @ enc.decode(torch.float64).T
    assert (enc.matmul(x).double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_needs_statistics_of_the_right_size():
    W, H = problem()
    with pytest.raises(ValueError, match="calibration"):
        codec_config("gptq").encode(W)
    with pytest.raises(ValueError, match="inputs"):
        codec_config("gptq", group=4, blocksize=4).encode(W, ActivationStats(torch.eye(10, dtype=torch.float64), 1))
    with pytest.raises(ValueError, match="ActivationStats"):
        codec_config("gptq", group=4, blocksize=4).encode(W, H)
    for bad in (dict(bits=1), dict(group=0), dict(damp=0.0), dict(act_order=1), dict(group=48, blocksize=128)):
        with pytest.raises(ValueError):
            codec_config("gptq", **bad)
