"""Fused Packed64 kernel vs its reference: layout, accuracy, bad layouts (the shared checks —
gradients, memory, torch.compile, no extension — are in test_conformance.py)."""

import dataclasses

import pytest
import torch

from layouts import packed64_weight as _encoded
from reality_stone.codecs.packed64 import Packed64Config
from reality_stone.kernels.extension import load_extension
from reality_stone.kernels.packed64 import decode_rows
from reality_stone.kernels.linear_op import MAX_FUSED_BATCH
from reality_stone.kernels.packed64_ops import packed64_matmul

PACKED64_MAX_BATCH = MAX_FUSED_BATCH["packed64_linear"]
from reality_stone.nn import CompressedLinear


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


def test_compressed_linear_runs_the_kernel():
    enc = _encoded(20, 40)
    layer = CompressedLinear(enc, torch.zeros(20))
    x = torch.randn(4, 40)
    torch.testing.assert_close(layer(x), x @ enc.decode().T, rtol=1e-4, atol=1e-5)



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
