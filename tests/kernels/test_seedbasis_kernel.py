"""Fused seed-basis kernel vs its reference: accuracy, gradients, memory, fallback, torch.compile."""

import pytest
import torch

from reality_stone.codecs.seedbasis import SeedBasisEncoded, preset
from reality_stone.kernels.seedbasis import decode_rows, seedbasis_linear_reference
from reality_stone.kernels.seedbasis_ops import seedbasis_matmul
from reality_stone.nn import CompressedLinear


def _encoded(rows, cols, budget="3.5", seed=0, e_top=-6):
    """A seed-basis weight with random fields (any field value is a valid weight)."""
    cfg = preset(budget)
    g = torch.Generator().manual_seed(seed)
    nb, qmax = -(-cols // 8), 2 ** (cfg.coeff_bits - 1)
    return SeedBasisEncoded(cfg, (rows, cols), torch.full((rows,), e_top, dtype=torch.int64),
                            torch.randint(0, 2**cfg.seed_bits, (rows, nb), generator=g),
                            torch.randint(0, 2**cfg.exp_bits, (rows, nb), generator=g),
                            torch.randint(-qmax, qmax, (rows, nb, cfg.coeffs), generator=g))


@pytest.mark.parametrize("budget", ["4.25", "3.5", "2.5"])
def test_layout_decodes_to_the_codec_weight(budget):
    enc = _encoded(37, 51, budget)  # odd shapes: rows not a multiple of 8, input not of the block
    lay = enc.kernel_layout()
    assert lay is not None
    torch.testing.assert_close(decode_rows(lay, 0, 37, 51), enc.decode(), rtol=0, atol=0)
    torch.testing.assert_close(decode_rows(lay, 8, 21, 51), enc.decode()[8:21], rtol=0, atol=0)


@pytest.mark.parametrize("rows,cols", [(37, 51), (300, 96), (64, 1000)])
@pytest.mark.parametrize("batch", [1, 5, 32])
@pytest.mark.parametrize("budget", ["4.25", "3.5", "2.5"])
def test_fused_matches_reference_within_its_own_error(rows, cols, batch, budget):
    enc = _encoded(rows, cols, budget)
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(1))
    exact = x.double() @ enc.decode(torch.float64).T
    ref32 = seedbasis_linear_reference(x, enc.kernel_layout(), cols).double()
    fused = enc.matmul(x).double()
    # 2× the reference's own float32 error (Frobenius, so one lucky element does not set it)
    assert (fused - exact).norm() <= 2 * (ref32 - exact).norm() + 1e-7 * exact.norm()
    assert fused.shape == (batch, rows)


def test_real_encoding_matches_its_decode():
    W = torch.randn(40, 72, generator=torch.Generator().manual_seed(3)) * 0.02
    enc = preset("4.25").encode(W)
    x = torch.randn(2, 72)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T, rtol=1e-4, atol=1e-6)


def test_unsupported_configs_fall_back_to_decode():
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    enc = preset("3.5", block=16, coeffs=8).encode(W)  # block 16: no fused path
    assert enc.kernel_layout() is None
    x = torch.randn(3, 32)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T)


def test_backward_gradcheck_float64_and_fused_float32():
    enc = _encoded(9, 24)
    lay = enc.kernel_layout()
    x = torch.randn(3, 24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: seedbasis_matmul(x, lay), (x,))
    x32 = torch.randn(2, 24, requires_grad=True)
    seedbasis_matmul(x32, lay).pow(2).sum().backward()
    xr = x32.detach().clone().requires_grad_()
    seedbasis_linear_reference(xr, lay, 24).pow(2).sum().backward()
    torch.testing.assert_close(x32.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_compressed_linear_and_torch_compile():
    enc = _encoded(20, 40)
    layer = CompressedLinear(enc, torch.zeros(20))
    x = torch.randn(4, 40)
    torch.testing.assert_close(layer(x), x @ enc.decode().T, rtol=1e-4, atol=1e-5)
    lay = enc.kernel_layout()
    f = torch.compile(lambda x: seedbasis_matmul(x, lay) * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x), 2 * seedbasis_matmul(x, lay))


def test_fused_forward_never_allocates_the_dense_weight(allocated_bytes):
    enc = _encoded(4096, 4096, "4.25")
    lay = enc.kernel_layout()
    x = torch.randn(1, 4096)
    seedbasis_matmul(x, lay)  # warm-up
    dense_bytes = 4096 * 4096 * 4
    fused = allocated_bytes(lambda: seedbasis_matmul(x, lay))
    reference = allocated_bytes(lambda: seedbasis_linear_reference(x, lay, 4096))
    assert reference > dense_bytes
    assert fused < 0.25 * dense_bytes, (fused, reference)


def test_layout_rejects_out_of_range_exponents():
    enc = _encoded(8, 16, e_top=-127)  # 2^-130: below the kernel's normal-float range
    assert enc.kernel_layout() is None
    x = torch.randn(1, 16)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T)


def test_fallback_without_extension_is_correct(fallback_matches_decode):
    fallback_matches_decode("""
        import torch
        from reality_stone.codecs.seedbasis import preset
        enc = preset("3.5").encode(torch.randn(24, 40))
        x = torch.randn(1, 40)
    """)
