"""Hybrid RBE: exact transforms, blueprint fit, selection modes, storage, training."""

import pytest
import torch

from reality_stone.codecs import decode_bytes, relative_error
from reality_stone.codecs.rbe import RBEConfig, poly_cos8_basis, transform_matrix


@pytest.mark.parametrize("residual", ["dct", "haar", "db4"])
@pytest.mark.parametrize("block", [8, 32])
def test_exact_reconstruction_with_all_coefficients(residual, block):
    W = torch.randn(2 * block, block + 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    enc = RBEConfig(block=block, residual=residual, k=block * block, value_dtype="fp32").encode(W)
    # fp32 storage of the values is the only rounding
    assert relative_error(W, enc.decode(torch.float64)) < 3e-7
    # and the float64 module path (no value rounding at all) is exact to float64
    assert relative_error(W, enc.to_module()().detach()) < 3e-7
    A = transform_matrix(residual, block)
    torch.testing.assert_close(A @ A.T, torch.eye(block, dtype=torch.float64), atol=1e-12, rtol=0)


def test_dct_matches_scipy_and_wavelet_matches_pywt():
    import numpy as np
    import pywt
    import scipy.fft

    v = np.random.default_rng(0).standard_normal(16)
    np.testing.assert_allclose(transform_matrix("dct", 16).numpy() @ v, scipy.fft.dct(v, norm="ortho"), atol=1e-12)
    coeffs = np.concatenate(pywt.wavedec(v, "db4", mode="periodization", level=1))
    np.testing.assert_allclose(transform_matrix("db4", 16).numpy() @ v, coeffs, atol=1e-12)


def test_blueprint_fits_its_own_basis_exactly():
    B = 32
    coef = torch.tensor([0.5, -0.25, 0.125, 1.0, -2.0, 0.75, 0.5, -1.5], dtype=torch.float64)
    W = (poly_cos8_basis(B) @ coef)
    enc = RBEConfig(block=B, k=0).encode(W)
    torch.testing.assert_close(enc.blueprint.double()[0], coef, atol=2e-3, rtol=2e-3)  # fp16 storage
    assert relative_error(W, enc.decode(torch.float64)) < 1e-3


def test_selection_modes():
    W = torch.randn(128, 96, generator=torch.Generator().manual_seed(1)) * 0.02
    fixed = RBEConfig(block=32, k=10).encode(W)
    assert fixed.counts.tolist() == [10] * 12
    tol = RBEConfig(block=32, tol=0.3, value_dtype="fp32").encode(W)
    dec = tol.decode(torch.float64)
    for (i, j) in tol.positions:  # every block meets its target (blueprint + kept coefficients)
        blk = W.double()[i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32]
        assert relative_error(blk, dec[i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32]) <= 0.3 + 1e-4
    for bpw in (1.0, 4.0):
        enc = RBEConfig(block=32, bpw=bpw).encode(W)
        assert bpw * 0.97 <= enc.bits_per_weight() <= bpw
    # water-filling beats a uniform K at the same size on blocks of unequal energy
    Wu = W.clone()
    Wu[:32] *= 20
    uniform = RBEConfig(block=32, k=100).encode(Wu)
    budget = RBEConfig(block=32, bpw=uniform.bits_per_weight()).encode(Wu)
    assert budget.nbytes <= uniform.nbytes
    assert relative_error(Wu, budget.decode()) < relative_error(Wu, uniform.decode())


def test_smooth_field_is_cheap_and_noise_is_not():
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    X, Y = torch.meshgrid(x, x, indexing="ij")
    field = 1 / torch.sqrt(X**2 + Y**2 + 0.01)
    noise = torch.randn(256, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = RBEConfig(block=128, k=50)
    assert relative_error(field, cfg.encode(field).decode(torch.float64)) < 0.05
    assert relative_error(noise, cfg.encode(noise).decode(torch.float64)) > 0.9


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "bf16", "int8"])
def test_value_dtypes_round_trip_bitwise(value_dtype):
    W = torch.randn(70, 50, generator=torch.Generator().manual_seed(2))
    enc = RBEConfig(block=16, k=40, value_dtype=value_dtype, residual="haar").encode(W)
    back = decode_bytes(enc.to_bytes())
    assert torch.equal(back.decode(), enc.decode())
    per_value = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[value_dtype]
    n_blocks = 5 * 4
    assert enc.nbytes >= n_blocks * (16 + 40 * per_value) + 40 * n_blocks * 8 // 8


def test_mirror_halves_storage_of_symmetric_matrices():
    S = torch.randn(96, 96, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    S = S + S.T
    full = RBEConfig(block=32, k=1024, value_dtype="fp32").encode(S)
    half = RBEConfig(block=32, k=1024, value_dtype="fp32", mirror=True).encode(S)
    assert len(half.positions) == 6 and len(full.positions) == 9
    assert relative_error(S, half.decode(torch.float64)) < 1e-6
    assert half.nbytes < 0.7 * full.nbytes
    assert torch.equal(decode_bytes(half.to_bytes()).decode(), half.decode())
    with pytest.raises(ValueError, match="symmetric"):
        RBEConfig(block=32, mirror=True).encode(torch.randn(64, 64))
    with pytest.raises(ValueError, match="square"):
        RBEConfig(block=32, mirror=True).encode(torch.randn(64, 32))


def test_trainable_module_distillation_lowers_output_error():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(64, 64, generator=g, dtype=torch.float64) * 0.05
    X = torch.randn(512, 64, generator=g, dtype=torch.float64)
    X[:, :8] *= 10  # a few high-energy input channels, as in real activations
    module = RBEConfig(block=32, k=200, value_dtype="fp32").encode(W).to_module()
    params = [p for p in module.parameters()]
    assert {p.shape for p in params} == {torch.Size([4, 8]), torch.Size([800])}
    target = X @ W.T

    def loss_fn():
        return ((module.linear(X) - target) ** 2).mean()

    start = loss_fn().item()
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * start
    enc = module.to_encoded()
    assert torch.equal(decode_bytes(enc.to_bytes()).decode(), enc.decode())
    assert ((X.float() @ enc.decode().T - target.float()) ** 2).mean().item() < 0.7 * start


def test_gradcheck_through_inverse_transform():
    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    module = RBEConfig(block=8, k=10, value_dtype="fp32", residual="db4").encode(W).to_module()
    v = module.values.detach().clone().requires_grad_()

    def f(vals):
        module.values.data = vals
        return torch.func.functional_call(module, {"values": vals}, ())

    assert torch.autograd.gradcheck(f, (v,))


def test_bad_configs():
    for kw in (dict(block=12), dict(basis="x"), dict(residual="db2"), dict(value_dtype="int4"), dict(k=-1),
               dict(k=None), dict(bpw=0), dict(tol=-1.0)):
        with pytest.raises(ValueError):
            RBEConfig(**kw)


@pytest.mark.parametrize("residual", ["dct", "haar", "db4"])
@pytest.mark.parametrize("basis", ["poly-cos8", "packed64", "none"])
@pytest.mark.parametrize("batch", [1, 32])
def test_fused_block_transform_matmul_matches_decode(residual, basis, batch):
    from reality_stone.codecs import codec_config

    g = torch.Generator().manual_seed(0)
    W = torch.randn(70, 100, generator=g)  # odd shapes: not multiples of the block
    enc = codec_config("rbe", block=16, basis=basis, residual=residual, k=40).encode(W)
    x = torch.randn(batch, 100, generator=g, dtype=torch.float64)
    exact = x @ enc.decode(torch.float64).T
    ref32 = (x.float() @ enc.decode().T).double()
    fused = enc.matmul(x.float()).double()
    assert (fused - exact).norm() <= 2 * (ref32 - exact).norm() + 1e-6 * exact.norm()
    xg = torch.randn(2, 100, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc.matmul, (xg,))


def test_fused_block_transform_never_builds_the_weight(allocated_bytes_rbe=None):
    from torch.profiler import ProfilerActivity, profile

    from reality_stone.codecs import codec_config

    W = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(1))
    enc = codec_config("rbe", block=64, basis="poly-cos8", residual="dct", k=64).encode(W)
    x = torch.randn(1, 2048)
    enc.matmul(x)  # builds the sparse coefficient matrix once
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        enc.matmul(x)
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
    assert allocated < 0.25 * W.numel() * 4, allocated
