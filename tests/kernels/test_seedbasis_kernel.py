"""Fused seed-basis kernel vs its reference: layout, accuracy on real and random fields, fallbacks (the
shared checks — gradients, memory, torch.compile, no extension — are in test_conformance.py)."""

import pytest
import torch

from layouts import seedbasis_weight as _encoded
from reality_stone.codecs.seedbasis import preset
from reality_stone.kernels.seedbasis import decode_rows, seedbasis_linear_reference
from reality_stone.nn import CompressedLinear


@pytest.mark.parametrize("budget", ["4.25", "3.5", "2.5"])
def test_layout_decodes_to_the_codec_weight(budget):
    enc = _encoded(37, 51, budget)  # odd shapes: rows not a multiple of 8, input not of the block
    lay = enc.kernel_layout()
    assert lay is not None
    torch.testing.assert_close(decode_rows(lay, 0, 37, 51), enc.decode(), rtol=0, atol=0)
    torch.testing.assert_close(decode_rows(lay, 8, 21, 51), enc.decode()[8:21], rtol=0, atol=0)


@pytest.mark.parametrize("budget", ["4.25", "3.5", "2.5"])
@pytest.mark.parametrize("rows,cols", [(40, 4096), (4096, 64), (8, 8)])
def test_layout_holds_the_stored_bits(budget, rows, cols):
    """The compute layout is the codec's bits (≤ 1.1× its payload; the previous one padded codes
    to 4 or 8 slots and seeds to 16 bits: 1.4–2×). The pattern table is generated from the
    config and shared by every weight of it."""
    enc = _encoded(rows, cols, budget)
    lay = enc.kernel_layout()
    own = lay.nbytes - lay.pattern.numel()
    assert own <= 1.1 * enc.payload_nbytes() + 16 + 7, (own, enc.payload_nbytes())
    assert enc.kernel_layout().pattern is _encoded(8, 8, budget, seed=1).kernel_layout().pattern
    # the records alone: exactly S + E + P·Q bits per block (rows padded to 8)
    nb = -(-cols // 8)
    assert lay.records.numel() == -(-rows // 8) * nb * lay.record_bytes + 16


@pytest.mark.parametrize("rows,cols", [(37, 51), (300, 96), (64, 1000), (24, 300)])
@pytest.mark.parametrize("batch", [1, 2, 5, 9, 17, 32, 64, 100])
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


def test_compressed_linear_runs_the_kernel():
    enc = _encoded(20, 40)
    layer = CompressedLinear(enc, torch.zeros(20))
    x = torch.randn(4, 40)
    torch.testing.assert_close(layer(x), x @ enc.decode().T, rtol=1e-4, atol=1e-5)



def test_layout_rejects_out_of_range_exponents():
    enc = _encoded(8, 16, e_top=-127)  # 2^-130: below the kernel's normal-float range
    assert enc.kernel_layout() is None
    x = torch.randn(1, 16)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T)


def test_avx2_loops_on_avx512_machines():
    """Batch 1 and batches > 8 have an AVX-512 loop and an AVX2 one; REALITY_STONE_NO_AVX512=1 makes
    an AVX-512 machine take the AVX2 loops, which then meet the same accuracy bound (every shape and
    budget; batch 17: two batch groups per zmm, 100: sixteen groups)."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "fused_matches_reference and (-1- or -17- or -100-)"], capture_output=True, text=True,
                         env={**os.environ, "REALITY_STONE_NO_AVX512": "1"}, cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "36 passed" in out.stdout, out.stdout[-500:]
