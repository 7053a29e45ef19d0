"""Packed64: exact bit layout (seed 003 reference vectors), generator, encoder."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reality_stone.codecs import decode_bytes, relative_error
from reality_stone.codecs.packed64 import (
    Packed64Config,
    SeedFields,
    decode_block,
    decode_element,
    pack_seed,
    unpack_seed,
)


def test_seed003_reference_decode():
    f = unpack_seed(0x7FFFF800000AFB6A)
    assert f.basis == 10 and f.d_theta == 3 and f.d_r == 1 and f.rot == 13 and f.log2_c == -3 and f.reserved == 42
    # SPEC decode formulas, exactly
    assert f.r == (0x7FFFF + 0.5) / 2**20
    assert f.theta == (0x800000 + 0.5) / 2**24 * 2 * math.pi
    # the reference printed float32 values (r ≈ 0.49999952, theta ≈ 3.1415932); its theta was
    # computed in float32, which rounds the same formula up by ~2 ulp at π (ulp = 2.4e-7)
    assert abs(f.r - 0.49999952) < 1e-8
    assert abs(f.theta - 3.1415932) < 6e-7


def test_seed003_reference_encode():
    assert pack_seed(0.5, math.pi, 10, 3, 1, 13, -3, 42) == 0x80000800000AFB6A


@pytest.mark.parametrize("bits,value", [(0b000, 0), (0b001, 1), (0b011, 3), (0b100, -4), (0b101, -3), (0b111, -1)])
def test_signed_log2_c_codes(bits, value):
    assert unpack_seed(bits << 6).log2_c == value
    assert (pack_seed(0.0, 0.0, log2_c=value) >> 6) & 0b111 == bits


@settings(max_examples=200, deadline=None)
@given(
    basis=st.integers(0, 15), d_theta=st.integers(0, 3), d_r=st.integers(0, 1), rot=st.integers(0, 15),
    log2_c=st.integers(-4, 3), reserved=st.integers(0, 63),
    r=st.floats(0, 1), theta=st.floats(-100, 100),
)
def test_pack_unpack_round_trip(basis, d_theta, d_r, rot, log2_c, reserved, r, theta):
    s = pack_seed(r, theta, basis, d_theta, d_r, rot, log2_c, reserved)
    assert 0 <= s < 2**64
    f = unpack_seed(s)
    assert (f.basis, f.d_theta, f.d_r, f.rot, f.log2_c, f.reserved) == (basis, d_theta, d_r, rot, log2_c, reserved)
    # floats: within half a quantisation step of the (clamped / wrapped) input
    assert abs(f.r - min(r, 1 - 2**-20)) <= 0.5 * 2**-20 + 1e-15
    dtheta = (f.theta - theta % (2 * math.pi) + math.pi) % (2 * math.pi) - math.pi
    assert abs(dtheta) <= 0.5 * 2 * math.pi / 2**24 + 1e-12
    # integer bit patterns are fixed points: pack(unpack(s)) == s
    assert pack_seed(*f) == s


def test_vectorised_equals_scalar():
    g = torch.Generator().manual_seed(0)
    n = 64
    r, th = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64) * 7
    ints = [torch.randint(lo, hi + 1, (n,), generator=g) for lo, hi in [(0, 15), (0, 3), (0, 1), (0, 15), (-4, 3), (0, 63)]]
    seeds = pack_seed(r, th, *ints)
    assert seeds.dtype == torch.int64
    fields = unpack_seed(seeds)
    for i in range(n):
        scalar = pack_seed(float(r[i]), float(th[i]), *(int(t[i]) for t in ints))
        assert int(seeds[i]) & (2**64 - 1) == scalar
        assert unpack_seed(scalar) == SeedFields(*(float(v[i]) if k < 2 else int(v[i]) for k, v in enumerate(fields)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(r=-0.1, theta=0.0), "r must be in"),
        (dict(r=1.5, theta=0.0), "r must be in"),
        (dict(r=math.nan, theta=0.0), "r must be in"),
        (dict(r=0.5, theta=math.inf), "theta must be finite"),
        (dict(r=0.5, theta=0.0, basis=16), "basis must be in"),
        (dict(r=0.5, theta=0.0, d_theta=4), "d_theta must be in"),
        (dict(r=0.5, theta=0.0, d_r=2), "d_r must be in"),
        (dict(r=0.5, theta=0.0, rot=-1), "rot must be in"),
        (dict(r=0.5, theta=0.0, log2_c=4), "log2_c must be in"),
        (dict(r=0.5, theta=0.0, reserved=64), "reserved must be in"),
    ],
)
def test_out_of_range_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack_seed(**kwargs)


def test_bad_seeds():
    with pytest.raises(ValueError, match="seed must be in"):
        unpack_seed(2**64)
    with pytest.raises(ValueError, match="seed must be in"):
        unpack_seed(-1)
    with pytest.raises(ValueError, match="int64"):
        unpack_seed(torch.tensor([1.0]))


def test_r_clamp_is_the_spec_clamp():
    # 1.0 maps to the last code (SPEC: clamp(r, 0, 1 - 2^-20)), not to 0 by overflow
    assert pack_seed(1.0, 0.0) >> 44 == 2**20 - 1


@pytest.mark.parametrize("formula", ["polar", "hash"])
def test_decode_element_equals_decode_block(formula):
    g = torch.Generator().manual_seed(1)
    for trial in range(16):
        s = pack_seed(float(torch.rand(1, generator=g)), float(torch.rand(1, generator=g)) * 6, trial, trial % 4,
                      trial % 2, (3 * trial) % 16, trial % 8 - 4, trial)
        H, W = 7 + trial % 5, 5 + trial % 7
        full = decode_block(s, H, W, formula=formula, scale=0.7)
        # every element, and a window of the field decoded on its own
        for i in range(H):
            for j in range(W):
                assert decode_element(s, i, j, height=H, width=W, formula=formula, scale=0.7) == pytest.approx(
                    float(full[i, j]), rel=1e-12, abs=1e-15)
        win = decode_block(s, 3, 2, 2, 1, height=H, width=W, formula=formula, scale=0.7)
        torch.testing.assert_close(win, full[2:5, 1:3], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="outside"):
        decode_element(0, 5, 0, height=5, width=5)


def test_generator_table_values():
    # J·Φ·Ψ at a hand-computed cell: H = W = 3, cell (0, 2): x = 1, y = -1, θ_ij = -π/4, ρ = 1
    r, theta = 0.25, 1.0
    for basis, d_r, psi in [(0, 0, math.sinh), (1, 1, math.cosh), (5, 0, math.tanh), (9, 0, lambda t: math.exp(-t * t))]:
        s = pack_seed(r, theta, basis, 0, d_r, 0, 1)
        f = unpack_seed(s)
        k = basis % 4
        expected = (1 - f.r**2) ** -2 * math.sin(k * (f.theta - math.pi / 4)) * psi(2 * f.r)
        assert decode_element(s, 0, 2, height=3, width=3) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # seed 002: tanh(2 artanh r) sin θ m(i, j), h = (31 i + 17 j) mod 256
    s = pack_seed(0.5, 1.0)
    f = unpack_seed(s)
    m = 1 + 0.1 * math.sin(2 * math.pi * ((31 * 3 + 17 * 4) % 256) / 256)
    expected = math.tanh(2 * math.atanh(f.r)) * math.sin(f.theta) * m
    assert decode_element(s, 3, 4, height=8, width=8, formula="hash") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("basis", range(16))
def test_encoder_recovers_generated_blocks(basis):
    g = torch.Generator().manual_seed(basis)
    for _ in range(3):
        r = float(torch.rand(1, generator=g)) * 0.95
        s = pack_seed(r, float(torch.rand(1, generator=g)) * 6.2, basis, int(torch.randint(0, 4, (1,), generator=g)),
                      int(torch.randint(0, 2, (1,), generator=g)), int(torch.randint(0, 16, (1,), generator=g)),
                      int(torch.randint(-4, 4, (1,), generator=g)))
        block = decode_block(s, 16, 16) * 0.02
        if block.norm() < 1e-9:  # k = 0 with d_theta ∈ {0, 2}: sin(0) = sin(π) = 0, nothing to recover
            continue
        enc = Packed64Config(block=16, scale_dtype="fp32").encode(block)
        assert relative_error(block, enc.decode(torch.float64)) < 1e-3
        # with the default fp16 scale the error is bounded by fp16's rounding (2^-11 relative)
        enc16 = Packed64Config(block=16).encode(block)
        assert relative_error(block, enc16.decode(torch.float64)) < 1e-3


def test_hash_formula_recovers_its_blocks():
    s = pack_seed(0.3, 2.0)
    block = decode_block(s, 32, 32, formula="hash") * 0.05
    enc = Packed64Config(block=32, formula="hash", scale_dtype="fp32").encode(block)
    assert relative_error(block, enc.decode(torch.float64)) < 1e-6


def test_quadtree_splits_where_needed_and_meets_tol():
    x = torch.linspace(-1, 1, 64, dtype=torch.float64)
    X, Y = torch.meshgrid(x, x, indexing="ij")
    field = 1 / torch.sqrt(X**2 + Y**2 + 0.01)
    whole = Packed64Config(block=64, adam_steps=0).encode(field)
    tree = Packed64Config(block=64, min_block=8, tol=0.2, adam_steps=0).encode(field)
    assert len(whole.seeds) == 1
    assert 1 < len(tree.seeds) < 64  # split, but not all the way down everywhere
    sizes = {sz for *_, sz in tree.leaves}
    assert len(sizes) > 1
    assert relative_error(field, tree.decode(torch.float64)) < relative_error(field, whole.decode(torch.float64))
    # every leaf larger than min_block met the tolerance
    dec = tree.decode(torch.float64)
    for r0, c0, sz in tree.leaves:
        if sz > 8:
            blk = field[r0 : r0 + sz, c0 : c0 + sz]
            assert relative_error(blk, dec[r0 : r0 + sz, c0 : c0 + sz]) <= 0.2 + 1e-6
    again = decode_bytes(tree.to_bytes())
    assert torch.equal(again.decode(), tree.decode()) and again.leaves == tree.leaves


def test_nbytes_counts_seeds_scales_and_tree():
    enc = Packed64Config(block=16, scale_dtype="fp16").encode(torch.randn(40, 24))
    n_leaves = 3 * 2  # 48×32 padded grid of 16×16 blocks
    assert len(enc.seeds) == n_leaves
    assert enc.nbytes == len(enc.to_bytes())
    assert enc.nbytes >= n_leaves * (8 + 2)
    assert enc.compression_ratio() == pytest.approx(40 * 24 * 4 / enc.nbytes)
    assert enc.compression_ratio(torch.float16) == pytest.approx(40 * 24 * 2 / enc.nbytes)


def test_bad_config():
    for kw in (dict(block=12), dict(block=16, min_block=32), dict(tol=0.0), dict(formula="x"), dict(scale_dtype="int8")):
        with pytest.raises(ValueError):
            Packed64Config(**kw)


def test_encodes_under_no_grad():
    # the CLI compresses under torch.no_grad(); the encoder's Adam polish needs its own graph
    from reality_stone.codecs import codec_config

    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        enc = codec_config("packed64", block=8, grid=8, search_steps=2, adam_steps=2).encode(W)
    assert enc.decode().shape == (16, 16)
