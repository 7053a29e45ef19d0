"""Fused int4 kernel vs its reference: accuracy, gradients, memory, fallback, torch.compile."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from reality_stone.codecs import codec_config
from reality_stone.kernels.extension import extension_status
from reality_stone.kernels.int_lowbit import int4_linear_reference, pack_int4_layout, unpack_int4_layout
from reality_stone.kernels.int_lowbit_ops import int4_linear
from reality_stone.nn import CompressedLinear


def _weights(rows, K, group, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, K), generator=g)
    scale = torch.rand(rows, K // group, generator=g) * 0.02 + 1e-3
    offset = -torch.rand(rows, K // group, generator=g) * 0.1
    return pack_int4_layout(codes, group), scale, offset


def test_layout_round_trip():
    codes = torch.randint(0, 16, (7, 64))
    assert torch.equal(unpack_int4_layout(pack_int4_layout(codes, 32), 32), codes)
    with pytest.raises(ValueError):
        pack_int4_layout(codes + 16, 32)


def test_extension_builds_in_ci():
    # CI builds from a clean clone: the fused path must be there, not silently the fallback
    status = extension_status()
    if os.environ.get("CI"):
        assert status.startswith("fused AVX2 kernels"), status


@pytest.mark.parametrize("rows,K,group", [(37, 160, 32), (129, 384, 128), (300, 96, 16)])
@pytest.mark.parametrize("batch", [1, 5, 32])
def test_fused_matches_reference_within_its_own_error(rows, K, group, batch):
    packed, scale, offset = _weights(rows, K, group)
    x = torch.randn(batch, K, generator=torch.Generator().manual_seed(1))
    exact = int4_linear_reference(x.double(), packed, scale.double(), offset.double(), group)
    ref32 = int4_linear_reference(x, packed, scale, offset, group).double()
    fused = int4_linear(x, packed, scale, offset, group).double()
    ref_err = (ref32 - exact).abs().max()
    tol = 2 * ref_err + 1e-6 * exact.abs().max()  # 2× the reference's own float32 error
    assert (fused - exact).abs().max() <= tol
    assert fused.shape == (batch, rows)


def test_backward_gradcheck_float64_and_fused_float32():
    packed, scale, offset = _weights(9, 64, 32)
    x = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: int4_linear(x, packed, scale.double(), offset.double(), 32), (x,))
    x32 = torch.randn(2, 64, requires_grad=True)
    int4_linear(x32, packed, scale, offset, 32).pow(2).sum().backward()
    xr = x32.detach().clone().requires_grad_()
    int4_linear_reference(xr, packed, scale, offset, 32).pow(2).sum().backward()
    torch.testing.assert_close(x32.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_compressed_linear_uses_the_kernel_and_matches_decode():
    W = torch.randn(70, 200, generator=torch.Generator().manual_seed(2)) * 0.05
    for cfg in (codec_config("rtn", bits=4, group=64), codec_config("rtn", bits=3, group=32, symmetric=True),
                codec_config("hqq", bits=4, group=64)):
        layer = CompressedLinear(cfg.encode(W), torch.zeros(70))
        x = torch.randn(4, 200)
        ref = x.double() @ layer.encoded.decode(torch.float64).T
        assert (layer(x).double() - ref).abs().max() < 1e-4 * ref.abs().max()


def test_torch_compile_traces_the_custom_op():
    packed, scale, offset = _weights(16, 64, 32)
    f = torch.compile(lambda x: int4_linear(x, packed, scale, offset, 32) * 2, backend="eager", fullgraph=True)
    x = torch.randn(2, 64)
    torch.testing.assert_close(f(x), 2 * int4_linear(x, packed, scale, offset, 32))


def test_fused_forward_never_allocates_the_dense_weight(allocated_bytes):
    N = K = 4096
    packed = pack_int4_layout(torch.randint(0, 16, (N, K), dtype=torch.uint8), 128)
    scale, offset = torch.rand(N, K // 128), torch.rand(N, K // 128)
    x = torch.randn(1, K)
    int4_linear(x, packed, scale, offset, 128)  # warm-up (builds/loads the extension)
    dense_bytes = N * K * 4
    fused = allocated_bytes(lambda: int4_linear(x, packed, scale, offset, 128))
    reference = allocated_bytes(lambda: int4_linear_reference(x, packed, scale, offset, 128))
    assert reference > dense_bytes  # the measurement sees the reference's dense W
    assert fused < 0.25 * dense_bytes, (fused, reference)


def test_fallback_without_extension_is_correct_and_warns():
    script = textwrap.dedent("""
        import warnings, torch
        from reality_stone.kernels.int_lowbit import int4_linear_reference, pack_int4_layout
        from reality_stone.kernels.extension import extension_status
        from reality_stone.kernels.int_lowbit_ops import int4_linear
        packed = pack_int4_layout(torch.randint(0, 16, (8, 64)), 32)
        s, o = torch.rand(8, 2), torch.rand(8, 2)
        x = torch.randn(1, 64)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y = int4_linear(x, packed, s, o, 32)
        assert any("unavailable" in str(i.message) for i in w), [str(i.message) for i in w]
        torch.testing.assert_close(y, int4_linear_reference(x, packed, s, o, 32))
        print(extension_status())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "REALITY_STONE_NO_EXT": "1"})
    assert out.returncode == 0, out.stderr
    assert "plain torch fallback" in out.stdout


def test_avx2_path_on_avx512_machines():
    # the batch-1 path has an AVX-512 and an AVX2 variant: force the AVX2 one in a subprocess
    script = textwrap.dedent("""
        import torch
        from reality_stone.kernels.int_lowbit import int4_linear_reference, pack_int4_layout
        from reality_stone.kernels.extension import extension_status
        from reality_stone.kernels.int_lowbit_ops import int4_linear
        g = torch.Generator().manual_seed(0)
        packed = pack_int4_layout(torch.randint(0, 16, (37, 384), generator=g), 128)
        s, o = torch.rand(37, 3, generator=g) * 0.02, -torch.rand(37, 3, generator=g) * 0.1
        x = torch.randn(1, 384, generator=g)
        exact = int4_linear_reference(x.double(), packed, s.double(), o.double(), 128)
        ref = int4_linear_reference(x, packed, s, o, 128).double()
        y = int4_linear(x, packed, s, o, 128).double()
        assert (y - exact).abs().max() <= 2 * (ref - exact).abs().max() + 1e-6 * exact.abs().max()
        print(extension_status())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "REALITY_STONE_NO_AVX512": "1"})
    assert out.returncode == 0, out.stderr
    assert "AVX-512" not in out.stdout
