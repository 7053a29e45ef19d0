"""Fused Packed64 kernel vs its reference: accuracy, gradients, memory, fallback, bad layouts, torch.compile."""

import dataclasses

import pytest
import torch

from reality_stone.codecs.packed64 import Packed64Config, Packed64Encoded, pack_seed
from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.packed64 import decode_rows, packed64_linear_reference
from reality_stone.kernels.packed64_ops import PACKED64_MAX_BATCH, packed64_linear, packed64_matmul
from reality_stone.nn import CompressedLinear


def _encoded(rows, cols, block=8, min_block=None, formula="polar", seed=0):
    """A Packed64 weight with a random quadtree and random seed fields (every field value is a
    valid weight; r ≤ 0.9 keeps J = (1 − r²)^-2 ≤ 28, as real encodings do)."""
    g = torch.Generator().manual_seed(seed)
    mb = block if min_block is None else min_block
    split_bits, n_leaves = [], 0

    def walk(size):
        nonlocal n_leaves
        split = size > mb and bool(torch.rand(1, generator=g) < 0.4)
        if size > mb:
            split_bits.append(split)
        if split:
            for _ in range(4):
                walk(size // 2)
        else:
            n_leaves += 1

    for _ in range(-(-rows // block) * -(-cols // block)):
        walk(block)
    n = n_leaves
    ints = {name: torch.randint(lo, hi + 1, (n,), generator=g) for name, (lo, hi) in
            dict(basis=(0, 15), d_theta=(0, 3), d_r=(0, 1), rot=(0, 15), log2_c=(-4, 3)).items()}
    seeds = pack_seed(torch.rand(n, generator=g, dtype=torch.float64) * 0.9,
                      torch.rand(n, generator=g, dtype=torch.float64) * 7, reserved=torch.zeros(n, dtype=torch.int64),
                      **ints)
    cfg = Packed64Config(block=block, min_block=mb, formula=formula)
    scales = (torch.randn(n, generator=g) * 0.05).half()
    return Packed64Encoded(cfg, (rows, cols), torch.tensor(split_bits, dtype=torch.bool), seeds, scales)


CASES = [  # (rows, cols, block, min_block, formula): odd shapes (not multiples of the block), quadtrees down to 1×1
    (37, 51, 8, None, "polar"),
    (70, 45, 16, 1, "polar"),
    (130, 300, 64, 4, "polar"),
    (20, 30, 8, 2, "hash"),
]


@pytest.mark.parametrize("rows,cols,block,min_block,formula", CASES)
def test_layout_generates_the_codec_weight(rows, cols, block, min_block, formula):
    enc = _encoded(rows, cols, block, min_block, formula)
    lay = enc.kernel_layout()
    ref = enc.decode(torch.float64)
    scale = ref.abs().max()
    torch.testing.assert_close(decode_rows(lay, 0, rows, torch.float64), ref, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(decode_rows(lay, 5, 19, torch.float64), ref[5:19], rtol=0, atol=1e-12 * scale)
    ext = load_extension()
    if ext is not None:  # the kernel's float32 row generator (tiled path, backward)
        w = ext.packed64_rows(lay.leaves, lay.params, lay.row_start, lay.tables, lay.block, 3, rows,
                              lay.padded_shape[1])[:, :cols]
        assert (w.double() - ref[3:]).abs().max() <= 2e-6 * scale


@pytest.mark.parametrize("rows,cols,block,min_block,formula", CASES)
@pytest.mark.parametrize("batch", [1, 5, 32, PACKED64_MAX_BATCH + 6])  # the last one: tiled
def test_fused_matches_reference_within_its_own_error(rows, cols, block, min_block, formula, batch):
    enc = _encoded(rows, cols, block, min_block, formula)
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(1))
    exact = x.double() @ enc.decode(torch.float64).T
    ref32 = (x @ enc.decode().T).double()  # the reference path: decode → float32 matmul
    fused = enc.matmul(x).double()
    # The kernel generates its weights in float32 with its own arithmetic (not decode()'s), so its
    # error is the product's rounding plus the generator's: bound it by 2× the reference's
    # float32 error plus 2× the error the generator's own weights (its row generator) cause —
    # both measured here, so the bound holds on every machine (AVX2 or AVX-512) yet a wrong
    # kernel (errors of the weights' size) still fails.
    gen_err = 0.0
    ext = load_extension()
    if ext is not None:
        lay = enc.kernel_layout()
        w_gen = ext.packed64_rows(lay.leaves, lay.params, lay.row_start, lay.tables, lay.block, 0, rows,
                                  lay.padded_shape[1])[:, :cols]
        gen_err = (x.double() @ (w_gen.double() - enc.decode(torch.float64)).T).norm()
    # Frobenius, so one lucky element does not set it
    assert (fused - exact).norm() <= 2 * (ref32 - exact).norm() + 2 * gen_err
    assert fused.shape == (batch, rows)


def test_real_encoding_and_leading_dims():
    W = torch.randn(40, 72, generator=torch.Generator().manual_seed(3)) * 0.02
    enc = Packed64Config(block=8, min_block=4, tol=0.9, grid=12, search_steps=4, adam_steps=0).encode(W)
    x = torch.randn(2, 3, 72)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        enc.matmul(torch.randn(2, 71))


def test_backward_gradcheck_float64_and_fused_float32():
    enc = _encoded(13, 21, block=8, min_block=2)
    lay = enc.kernel_layout()
    x = torch.randn(3, 21, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: packed64_matmul(x, lay), (x,))
    x32 = torch.randn(2, 21, requires_grad=True)
    packed64_matmul(x32, lay).pow(2).sum().backward()
    xr = x32.detach().clone().requires_grad_()
    packed64_linear_reference(xr, lay).pow(2).sum().backward()
    torch.testing.assert_close(x32.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_compressed_linear_and_torch_compile():
    enc = _encoded(20, 40)
    layer = CompressedLinear(enc, torch.zeros(20))
    x = torch.randn(4, 40)
    torch.testing.assert_close(layer(x), x @ enc.decode().T, rtol=1e-4, atol=1e-5)
    lay = enc.kernel_layout()
    f = torch.compile(lambda x: packed64_linear(x, lay.leaves, lay.params, lay.row_start, lay.tables, lay.block,
                                                lay.shape[0]) * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x), 2 * packed64_matmul(x, lay))


@pytest.mark.parametrize("batch", [1, PACKED64_MAX_BATCH])
def test_fused_forward_never_allocates_the_dense_weight(allocated_bytes, batch):
    enc = _encoded(4096, 4096, block=32)
    lay = enc.kernel_layout()
    x = torch.randn(batch, 4096)
    packed64_matmul(x, lay)  # warm-up
    dense_bytes = 4096 * 4096 * 4
    fused = allocated_bytes(lambda: packed64_matmul(x, lay))
    reference = allocated_bytes(lambda: packed64_linear_reference(x, lay))
    assert reference > dense_bytes
    assert fused < 0.25 * dense_bytes, (fused, reference)


@pytest.mark.skipif(load_extension() is None, reason="needs the compiled kernels")
@pytest.mark.parametrize("field,value,match", [
    ("leaves", lambda t: t.index_put_((torch.tensor(0), torch.tensor(1)), torch.tensor(10**6, dtype=torch.int32)),
     "corrupt leaf"),
    ("leaves", lambda t: t.index_put_((torch.tensor(0), torch.tensor(3)), torch.tensor(9, dtype=torch.int32)),
     "corrupt leaf"),
    ("row_start", lambda t: t.index_put_((torch.tensor(len(t) - 1),), torch.tensor(1)), "row_start"),
    ("params", lambda t: t.float(), "float64"),
])
def test_kernel_rejects_a_corrupt_layout(field, value, match):
    lay = _encoded(24, 40).kernel_layout()
    bad = dataclasses.replace(lay, **{field: value(getattr(lay, field).clone())})
    with pytest.raises(RuntimeError, match=match):
        packed64_matmul(torch.randn(1, 40), bad)


def test_fallback_without_extension_is_correct(fallback_matches_decode):
    fallback_matches_decode("""
        import torch
        from reality_stone.codecs.packed64 import Packed64Config
        enc = Packed64Config(block=8, grid=8, search_steps=2, adam_steps=0).encode(torch.randn(24, 40))
        x = torch.randn(1, 40)
    """)
