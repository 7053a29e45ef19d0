"""Fused seed-basis kernel vs its reference: layout, accuracy on real and random fields, fallbacks (the
shared checks — gradients, memory, torch.compile, no extension — are in test_conformance.py)."""

import textwrap

import pytest
import torch

from layouts import seedbasis_weight as _encoded
from reality_stone.codecs.seedbasis import preset
from reality_stone.kernels.seedbasis import decode_rows, seedbasis_linear_a8_reference, seedbasis_linear_reference
from reality_stone.nn import CompressedLinear, set_activations


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


def test_kernels_take_leading_dims_and_return_the_real_rows():
    from reality_stone.kernels.extension import load_extension

    enc = _encoded(37, 51, "3.5")  # 37 rows: the layout's 40 padded rows are never returned
    x = torch.randn(2, 3, 51, generator=torch.Generator().manual_seed(2))
    paths = [enc.matmul] + ([enc.matmul_int8_activations] if _a8_kernel_here() else [])
    for mm in paths:
        y = mm(x)
        assert y.shape == (2, 3, 37) and torch.equal(y.reshape(6, 37), mm(x.reshape(6, 51)))
    ext, lay = load_extension(), enc.kernel_layout()
    if ext is not None:
        args = (lay.pattern, lay.records, lay.row_exp, lay.seed_bits, lay.exp_bits, lay.coeff_bits)
        for rows in (32, 41, -1):  # the real rows of 40 padded ones are 33 … 40
            with pytest.raises(RuntimeError, match="rows"):
                ext.seedbasis_gemm(x, *args, rows)


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


def test_batch_records_read_by_gf2_ids_give_the_gather_readers_numbers():
    """Batches 2…32 of the int8-ready formats read records by GF(2) ids (two at a time); the gather
    reader (no AVX-512, REALITY_STONE_NO_AVX512=1) yields the same codes and offsets, and at batch ≤ 8
    both feed the same AVX2 FMA loop: the outputs are equal bit for bit."""
    import os
    import subprocess
    import sys

    from reality_stone.kernels.extension import load_extension

    if load_extension(quiet=True) is None:
        pytest.skip("needs the extension")
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, %r)
        from layouts import seedbasis_weight
        for budget in ("3.5", "2.5"):
            for rows, cols, batch in ((37, 51, 2), (300, 96, 5), (64, 1000, 8), (24, 300, 3)):
                enc = seedbasis_weight(rows, cols, budget)
                x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(5))
                print(enc.matmul(x).numpy().tobytes().hex())
    """) % os.path.dirname(__file__)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, **extra}).stdout for extra in ({}, {"REALITY_STONE_NO_AVX512": "1"})]
    assert runs[0] == runs[1] and len(runs[0].split()) == 8


# ---------------------------------------------------------------- int8 activations


def _a8_kernel_here() -> bool:
    from reality_stone.kernels.extension import load_extension

    ext = load_extension(quiet=True)
    return ext is not None and ext.seedbasis_a8_supported(10, 2, 4, 4)


@pytest.mark.parametrize("rows,cols", [(37, 51), (300, 96), (64, 1000), (24, 300), (16, 4096)])
@pytest.mark.parametrize("batch", [1, 3, 5, 8, 17, 40])
@pytest.mark.parametrize("budget", ["3.5", "2.5"])
def test_int8_activation_path_matches_its_reference(rows, cols, batch, budget):
    """The VNNI kernel (or, without one, its torch arithmetic) computes the reference's integers:
    within 2× the float32 rounding the reference itself adds to them — the gather loop (batch ≤ 4),
    the 8-row lines (5, 8) and the 16-row lines with a padded last chunk (17, 40)."""
    enc = _encoded(rows, cols, budget)
    lay = enc.kernel_layout()
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.1, 3, cols)
    exact = seedbasis_linear_a8_reference(x, lay, cols)  # float64 scaling of the exact integer sums
    ref32 = seedbasis_linear_a8_reference(x, lay, cols, torch.float32).double()
    y = enc.matmul_int8_activations(x).double()
    tol = 2 * (ref32 - exact).abs().max() + 1e-6 * exact.abs().max()
    assert (y - exact).abs().max() <= tol
    # and it really quantised: not the fp32 product, but close to it (int8 per 64 inputs)
    fp = x.double() @ enc.decode(torch.float64).T
    err = (y - fp).norm() / fp.norm()
    assert 1e-5 < err < 2e-2, err


@pytest.mark.parametrize("batch", [1, 3, 8, 17])
@pytest.mark.parametrize("table", ["one id changed", "rows swapped"])
def test_int8_activations_on_a_pattern_table_that_is_not_gf2_linear(batch, table):
    """The kernel derives pattern ids from s + 1 by GF(2) matrices only for a table that is linear
    (the LFSR's, checked seed by seed): one changed id, or two seeds' rows swapped, must send it to
    the table-gather loops, which still compute the reference's integers."""
    from dataclasses import replace

    from reality_stone.kernels.seedbasis_ops import seedbasis_matmul

    enc = _encoded(40, 300, "3.5")
    lay = enc.kernel_layout()
    a, b = int(enc.seeds[0, 0]), int(enc.seeds[3, 7])  # seeds the weight uses
    assert a != b
    pattern = lay.pattern.clone()
    if table == "one id changed":
        pattern[a, 2] ^= 0x5A
    else:
        pattern[[a, b]] = pattern[[b, a]]
    x = torch.randn(batch, 300, generator=torch.Generator().manual_seed(10))
    # the linear table, the mutated one, the linear one again: the kernel remembers the last table
    # it checked, and must notice each change
    for layout in (lay, replace(lay, pattern=pattern), lay):
        exact = seedbasis_linear_a8_reference(x, layout, 300)
        ref32 = seedbasis_linear_a8_reference(x, layout, 300, torch.float32).double()
        y = seedbasis_matmul(x, layout, int8_activations=True).double()
        assert (y - exact).abs().max() <= 2 * (ref32 - exact).abs().max() + 1e-6 * exact.abs().max()


def test_int8_activations_quantise_each_64_inputs_on_their_own_scale():
    """One group of large inputs must not flatten the others (per-64 scales, not per row)."""
    enc = _encoded(32, 256, "3.5")
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(5))
    x[0, :64] *= 1e4
    fp = x.double() @ enc.decode(torch.float64).T
    rest = x.clone()
    rest[0, :64] = 0  # the other three groups alone: their error is their own rounding's
    fp_rest = rest.double() @ enc.decode(torch.float64).T
    err_rest = (enc.matmul_int8_activations(rest).double() - fp_rest).norm() / fp_rest.norm()
    assert err_rest < 2e-2
    assert (enc.matmul_int8_activations(x).double() - fp).norm() / fp.norm() < 2e-2


@pytest.mark.parametrize("batch", [3, 9])  # the gather loop, the lines
def test_int8_activations_keep_non_finite_inputs_non_finite(batch):
    enc = _encoded(24, 200, "3.5")
    x = torch.randn(batch, 200, generator=torch.Generator().manual_seed(6))
    x[0, 7], x[1, 150] = float("nan"), float("inf")
    y = enc.matmul_int8_activations(x)
    assert y[0].isnan().all() and y[1].isnan().all()  # never a finite number from a NaN or Inf input
    assert y[2:].isfinite().all()
    assert not enc.matmul_int8_activations(torch.zeros(batch, 200)).any()


def test_int8_activations_give_a_row_the_same_numbers_at_every_batch():
    """Each row of x is quantised on its own, so the gather loop and both line widths agree."""
    enc = _encoded(40, 520, "3.5")
    x = torch.randn(20, 520, generator=torch.Generator().manual_seed(7))
    alone = torch.cat([enc.matmul_int8_activations(x[i : i + 1]) for i in range(20)])
    for batch in (3, 8, 20):
        torch.testing.assert_close(enc.matmul_int8_activations(x[:batch]), alone[:batch], rtol=1e-5,
                                   atol=1e-5 * float(alone.abs().max()))


def test_int8_activations_are_declared_and_refused_per_config():
    assert preset("3.5").capabilities.int8_activations and preset("2.5").capabilities.int8_activations
    assert not preset("4.25").capabilities.int8_activations  # 6 coefficients: more than one int32 of codes
    with pytest.raises(ValueError, match="int8 activations"):
        _encoded(8, 16, "4.25").matmul_int8_activations(torch.randn(1, 16))
    with pytest.raises(ValueError, match="float32"):
        _encoded(8, 16, "3.5").matmul_int8_activations(torch.randn(1, 16, dtype=torch.float64))


def test_compressed_linear_with_int8_activations():
    enc = _encoded(20, 40, "3.5")
    layer = CompressedLinear(enc, torch.zeros(20))
    model = torch.nn.Sequential(layer)
    assert set_activations(model, "int8") == 1 and layer.activations == "int8"
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(layer(x), enc.matmul_int8_activations(x), rtol=0, atol=0)


@pytest.mark.skipif(not _a8_kernel_here(), reason="needs AVX-512 VNNI + VBMI")
def test_int8_kernel_threads_give_the_same_numbers():
    """Threads split the column tiles (one accumulator each, summed at the end): the result moves
    only by float32 summation order, never by a quantisation step."""
    enc = _encoded(64, 2048, "3.5")
    x = torch.randn(2, 2048, generator=torch.Generator().manual_seed(9))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = enc.matmul_int8_activations(x)
        torch.set_num_threads(max(2, n))
        many = enc.matmul_int8_activations(x)
    finally:
        torch.set_num_threads(n)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5 * float(one.abs().max()))
