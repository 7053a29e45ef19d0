"""Fused 2/3/4/8-bit kernels (fp32 and int8 activations) vs their references: layout, accuracy,
gradients, memory, fallback, torch.compile, CompressedLinear."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from reality_stone.codecs import codec_config
from reality_stone.kernels.extension import extension_status, load_extension
from reality_stone.kernels.int_lowbit import (
    lowbit_linear_a8_reference,
    lowbit_linear_reference,
    pack_lowbit_layout,
    quantize_activations,
    unpack_lowbit_layout,
)
from reality_stone.kernels.int_lowbit_ops import lowbit_linear, lowbit_linear_a8
from reality_stone.nn import CompressedLinear, decoded_weights, set_activations

VNNI = load_extension() is not None and load_extension().has_avx512_vnni()


def _weights(rows, K, group, bits, zero_point=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, K), generator=g)
    scale = (torch.rand(rows, K // group, generator=g) * 0.02 + 1e-3).half()
    if zero_point:
        offset = (torch.rand(rows, K // group, generator=g) * (2**bits - 1)).half()
    else:
        offset = (-torch.rand(rows, K // group, generator=g) * 0.1).half()
    return pack_lowbit_layout(codes, bits), scale, offset


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_layout_round_trip_and_size(bits):
    codes = torch.randint(0, 2**bits, (7, 192))
    packed = pack_lowbit_layout(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 192 * bits // 8)  # exactly `bits` per code
    assert torch.equal(unpack_lowbit_layout(packed, bits), codes)
    with pytest.raises(ValueError):
        pack_lowbit_layout(codes + 2**bits, bits)
    with pytest.raises(ValueError):
        pack_lowbit_layout(codes[:, :100], bits)  # K not a multiple of 64


def test_three_bit_layout_bytes_are_the_documented_ones():
    codes = torch.zeros(1, 320, dtype=torch.int64)  # a block of 4 chunks, then a block of 1
    # input 147 = chunk 2, part 1, k 3: low bits 2 → byte 16·2 + 3, bits 2-3; high bit → mask 1
    # of the block (bytes 64 + 8..15), bit 16·2 + 3 → byte 64 + 8 + 4, bit 3
    codes[0, 147] = 6
    # input 256 + 50 = chunk 0 of the 1-chunk block (bytes 96..119), part 3, k 2: low bits 2 →
    # byte 96 + 2, bits 6-7; high bit → mask 3 (2 bytes at 96 + 16 + 3·2), bit 2
    codes[0, 306] = 7
    packed = pack_lowbit_layout(codes, 3)[0]
    assert packed.shape == (320 * 3 // 8,)
    assert packed[35] == 2 << 2 and packed[76] == 1 << 3
    assert packed[98] == 3 << 6 and packed[96 + 16 + 6] == 1 << 2
    assert int(packed.sum()) == (2 << 2) + (1 << 3) + (3 << 6) + (1 << 2)


def test_extension_builds_in_ci():
    # CI builds from a clean clone: the fused path must be there, not silently the fallback
    status = extension_status()
    if os.environ.get("CI"):
        assert status.startswith("fused AVX2 kernels"), status


SHAPES = [(37, 192, 64), (129, 512, 128), (300, 256, 256), (17, 64 * 37, 64), (5, 576, 192)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows,K,group", SHAPES)
@pytest.mark.parametrize("batch", [1, 2, 5, 32, 300])  # 32: 8-row slices; 300: tiled
def test_fused_matches_reference_within_its_own_error(bits, rows, K, group, batch):
    zero_point = bits in (3, 8)  # both affine forms
    packed, scale, offset = _weights(rows, K, group, bits, zero_point)
    x = torch.randn(batch, K, generator=torch.Generator().manual_seed(1))
    exact = lowbit_linear_reference(x.double(), packed, scale, offset, zero_point, group, bits)
    ref32 = lowbit_linear_reference(x, packed, scale, offset, zero_point, group, bits).double()
    fused = lowbit_linear(x, packed, scale, offset, zero_point, group, bits).double()
    tol = 2 * (ref32 - exact).abs().max() + 1e-6 * exact.abs().max()  # 2× the reference's own float32 error
    assert (fused - exact).abs().max() <= tol
    assert fused.shape == (batch, rows)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows,K,group", SHAPES)
@pytest.mark.parametrize("batch", [1, 3, 8, 70])
def test_int8_activation_path_matches_its_reference(bits, rows, K, group, batch):
    zero_point = bits != 3
    packed, scale, offset = _weights(rows, K, group, bits, zero_point, seed=3)
    x = torch.randn(batch, K, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.1, 3, K)
    exact = lowbit_linear_a8_reference(x, packed, scale, offset, zero_point, group, bits)  # float64
    ref32 = lowbit_linear_a8_reference(x, packed, scale, offset, zero_point, group, bits, torch.float32).double()
    y = lowbit_linear_a8(x, packed, scale, offset, zero_point, group, bits).double()
    tol = 2 * (ref32 - exact).abs().max() + 1e-6 * exact.abs().max()
    assert (y - exact).abs().max() <= tol
    # and it really quantised: not the fp32 product, but close to it (int8 per group: ~0.4 % of max)
    fp = lowbit_linear_reference(x.double(), packed, scale, offset, zero_point, group, bits)
    err = (y - fp).norm() / fp.norm()
    assert 1e-5 < err < 2e-2, err


@pytest.mark.skipif(not VNNI, reason="needs AVX-512 VNNI")
def test_kernel_activation_quantiser_is_bit_identical_to_the_reference():
    x = torch.randn(5, 512) * torch.logspace(-3, 2, 512)
    x[1, 128:256] = 0  # an all-zero group: dx = 0, xq = 0
    xq, dx, xs = load_extension().quantize_activations_int8(x, 128)
    rq, rdx = quantize_activations(x, 128)
    assert torch.equal(xq, rq) and torch.equal(dx, rdx)
    assert dx[1, 1] == 0 and not xq[1, 128:256].any()
    exact = x.double().reshape(5, 4, 128)
    assert ((xs.double() - exact.sum(-1)).abs() <= 128 * 2**-24 * exact.abs().sum(-1)).all()  # fp32 summation bound


CODECS = [codec_config("rtn", bits=4, group=64), codec_config("rtn", bits=3, group=64, symmetric=True),
          codec_config("rtn", bits=2, group=128), codec_config("hqq", bits=4, group=64),
          codec_config("hqq", bits=1, group=64), codec_config("rtn", bits=4, group=32),
          codec_config("rtn", bits=8, group=128, symmetric=True), codec_config("rtn", bits=6, group=64)]


@pytest.mark.parametrize("cfg", CODECS, ids=lambda c: f"{c.codec_name}{c.bits}g{c.group}")
def test_compressed_linear_uses_the_kernel_and_matches_decode(cfg):
    W = torch.randn(70, 200, generator=torch.Generator().manual_seed(2)) * 0.05
    layer = CompressedLinear(cfg.encode(W), torch.zeros(70))
    packed, scale, offset, zero_point, group, bits = layer.encoded.kernel_layout()
    assert packed.shape[1] * 8 // bits % 64 == 0 and scale.dtype == torch.float16
    x = torch.randn(4, 200, generator=torch.Generator().manual_seed(3))
    ref = x.double() @ layer.encoded.decode(torch.float64).T
    assert (layer(x).double() - ref).abs().max() < 1e-4 * ref.abs().max()
    layer.set_activations("int8")
    y8 = layer(x).double()
    K = packed.shape[1] * 8 // bits
    ref8 = lowbit_linear_a8_reference(torch.nn.functional.pad(x, (0, K - 200)), packed, scale, offset, zero_point,
                                      group, bits)
    assert (y8 - ref8).abs().max() < 1e-5 * ref8.abs().max()  # the int8 numbers, exactly
    err = (y8 - ref).norm() / ref.norm()  # and they are a quantisation of the fp32 product
    assert 1e-5 < err < 5e-2, err
    assert "activations=int8" in repr(layer)


def test_int8_activations_are_refused_where_unsupported():
    W = torch.randn(16, 64)
    with pytest.raises(ValueError, match="int8 activations"):
        CompressedLinear(codec_config("lowrank", rank=4).encode(W), activations="int8")
    with pytest.raises(ValueError, match="activations must be"):
        CompressedLinear(codec_config("rtn", bits=4, group=64).encode(W), activations="int4")
    model = torch.nn.Sequential(CompressedLinear(codec_config("lowrank", rank=4).encode(W)))
    with pytest.raises(ValueError, match="no CompressedLinear"):
        set_activations(model, "int8")
    with pytest.raises(ValueError, match="float32"):
        lowbit_linear_a8(torch.randn(1, 64, dtype=torch.float64), *_weights(4, 64, 64, 4), False, 64, 4)


def test_set_activations_on_a_model_and_decoded_weights_keep_int8():
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(
        CompressedLinear(codec_config("rtn", bits=4, group=64).encode(torch.randn(32, 64, generator=g))),
        CompressedLinear(codec_config("lowrank", rank=4).encode(torch.randn(8, 32, generator=g))))
    x = torch.randn(3, 64, generator=g)
    exact = model(x)
    assert set_activations(model, "int8") == 1
    y8 = model(x)
    assert not torch.equal(y8, exact)
    with decoded_weights(model):  # the int8 layer keeps its per-call path: same numbers
        torch.testing.assert_close(model(x), y8)
    assert set_activations(model, "fp32") == 2
    torch.testing.assert_close(model(x), exact)


def _subprocess(script: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


CHECK_BOTH_PATHS = """
    import warnings, torch
    from reality_stone.kernels.int_lowbit import *
    from reality_stone.kernels.extension import extension_status
    from reality_stone.kernels.int_lowbit_ops import lowbit_linear, lowbit_linear_a8
    g = torch.Generator().manual_seed(0)
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as w:
        for bits in (2, 3, 4):
            packed = pack_lowbit_layout(torch.randint(0, 2**bits, (37, 384), generator=g), bits)
            s, o = (torch.rand(37, 3, generator=g) * 0.02).half(), (-torch.rand(37, 3, generator=g) * 0.1).half()
            for B in (1, 3):
                x = torch.randn(B, 384, generator=g)
                y = lowbit_linear(x, packed, s, o, False, 128, bits).double()
                y8 = lowbit_linear_a8(x, packed, s, o, False, 128, bits).double()
                exact = lowbit_linear_reference(x.double(), packed, s, o, False, 128, bits)
                ref = lowbit_linear_reference(x, packed, s, o, False, 128, bits).double()
                assert (y - exact).abs().max() <= 2 * (ref - exact).abs().max() + 1e-6 * exact.abs().max()
                e8 = lowbit_linear_a8_reference(x, packed, s, o, False, 128, bits)
                r8 = lowbit_linear_a8_reference(x, packed, s, o, False, 128, bits, torch.float32).double()
                assert (y8 - e8).abs().max() <= 2 * (r8 - e8).abs().max() + 1e-6 * e8.abs().max()
    print(extension_status(), "warned" if any("unavailable" in str(i.message) for i in w) else "")
"""


def test_fallback_without_extension_is_correct_and_warns():
    out = _subprocess(CHECK_BOTH_PATHS, REALITY_STONE_NO_EXT="1")
    assert "plain torch fallback" in out and "warned" in out


def test_avx2_path_on_avx512_machines():
    # the fp32 path has an AVX-512 and an AVX2 variant (the int8 path then falls back to torch)
    out = _subprocess(CHECK_BOTH_PATHS, REALITY_STONE_NO_AVX512="1")
    assert "AVX-512" not in out and "warned" not in out


def test_direct_entry_point_equals_the_custom_ops_and_keeps_autograd():
    from reality_stone.kernels.int_lowbit_ops import lowbit_matmul

    packed, scale, offset = _weights(40, 256, 128, 4)
    x = torch.randn(3, 256)
    for int8, op in ((False, lowbit_linear), (True, lowbit_linear_a8)):
        direct = lowbit_matmul(x, packed, scale, offset, False, 128, 4, int8_activations=int8)
        assert torch.equal(direct, op(x, packed, scale, offset, False, 128, 4))
        xg = x.clone().requires_grad_()
        lowbit_matmul(xg, packed, scale, offset, False, 128, 4, int8_activations=int8).sum().backward()
        w = lowbit_linear_reference(torch.eye(256), packed, scale, offset, False, 128, 4)  # (256, rows) = Wᵀ
        torch.testing.assert_close(xg.grad, w.sum(1).expand(3, -1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("int8", [False, True])
def test_kernel_takes_leading_dims_and_an_input_narrower_than_its_layout(int8):
    """x (..., Kx ≤ K): the missing inputs are zero — what a weight whose last group is padded (576
    inputs, group 128: K = 640) hands the kernel, with no padded copy made in Python. Bit for bit
    the padded 2-D call."""
    ext = load_extension()
    if ext is None or (int8 and not VNNI):
        pytest.skip("needs the extension (and AVX-512 VNNI for int8 activations)")
    f = ext.lowbit_gemv_a8 if int8 else ext.lowbit_gemv
    packed, scale, offset = _weights(24, 640, 128, 4)
    x = torch.randn(2, 3, 576)
    y = f(x, packed, scale, offset, False, 128, 4)
    padded = f(torch.nn.functional.pad(x, (0, 64)).reshape(6, 640), packed, scale, offset, False, 128, 4)
    assert y.shape == (2, 3, 24) and torch.equal(y.reshape(6, 24), padded)
    assert f(torch.randn(0, 576), packed, scale, offset, False, 128, 4).shape == (0, 24)
    with pytest.raises(RuntimeError, match="features"):
        f(torch.randn(2, 704), packed, scale, offset, False, 128, 4)


@pytest.mark.parametrize("int8", [False, True])
def test_a_padded_last_group_takes_the_real_inputs_with_and_without_autograd(int8):
    W = torch.randn(40, 576, generator=torch.Generator().manual_seed(7)) * 0.02
    enc = codec_config("rtn", bits=4, group=128).encode(W)  # 4.5 groups: the layout holds 640 inputs
    mm = enc.matmul_int8_activations if int8 else enc.matmul
    if int8 and not VNNI:
        pytest.skip("int8 activations need AVX-512 VNNI here")
    x = torch.randn(2, 3, 576)
    y = mm(x)
    if int8:  # the reference quantises the padded x (zeros change no group's max|x|)
        x2 = torch.nn.functional.pad(x.reshape(6, 576), (0, 64))
        exact = lowbit_linear_a8_reference(x2, *enc.kernel_layout()).reshape(2, 3, 40)
    else:
        exact = x.double() @ enc.decode(torch.float64).T
    assert y.shape == (2, 3, 40)
    assert (y.double() - exact).norm() <= 1e-5 * exact.norm()
    xg = x.clone().requires_grad_()
    y_op = mm(xg)  # autograd: the custom op, whose contract is x (..., K): padded on the way in
    assert torch.equal(y_op.detach(), y)
    y_op.sum().backward()
    torch.testing.assert_close(xg.grad, enc.decode().sum(0).expand(2, 3, -1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", CODECS[:4] + CODECS[6:7], ids=lambda c: f"{c.codec_name}{c.bits}g{c.group}")
def test_encoded_weight_holds_only_the_packed_layout(cfg):
    # a compressed layer keeps ≈ its stored bytes in memory (not a byte per code beside the layout)
    W = torch.randn(96, 640, generator=torch.Generator().manual_seed(6))
    enc = cfg.encode(W)
    held = sum(t.numel() * t.element_size() for t in vars(enc).values() if isinstance(t, torch.Tensor))
    held += sum(t.numel() * t.element_size() for t in enc.kernel_layout() if isinstance(t, torch.Tensor))
    assert held <= 1.5 * enc.nbytes, (held, enc.nbytes)
    again = type(enc).from_payload(enc.config, enc.shape, enc.payload())  # codes read back from the layout
    assert torch.equal(again.codes, enc.codes) and torch.equal(again.decode(), enc.decode())
