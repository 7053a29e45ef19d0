"""Bit packing, RTN group quantisation and truncated SVD: exact properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reality_stone.codecs import relative_error
from reality_stone.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from reality_stone.codecs.lowrank import LowRankConfig
from reality_stone.codecs.rtn import RTNConfig


@settings(max_examples=100, deadline=None)
@given(bits=st.integers(1, 16), data=st.data())
def test_bitpack_round_trip_is_exact(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=200))
    t = torch.tensor(codes, dtype=torch.int64)
    packed = pack_bits(t, bits)
    assert len(packed) == packed_nbytes(len(codes), bits)
    assert torch.equal(unpack_bits(packed, bits, len(codes)), t)


def test_bitpack_layout_and_errors():
    # LSB first: codes 1, 2, 3 at 2 bits -> 0b11_10_01
    assert pack_bits(torch.tensor([1, 2, 3]), 2) == bytes([0b111001])
    assert pack_bits(torch.tensor([5, 1]), 3) == bytes([0b001101])
    with pytest.raises(ValueError, match="codes must be in"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(b"\x00", 4, 3)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_error_within_half_a_step(bits, symmetric):
    W = torch.randn(33, 200, generator=torch.Generator().manual_seed(bits))
    enc = RTNConfig(bits=bits, group=64, symmetric=symmetric).encode(W)
    D = enc.decode()
    step = enc.scale.float().repeat_interleave(64, dim=1)[:, :200]
    # half a step, plus fp16 rounding of the offset (asymmetric) — nothing worse
    slack = 0 if symmetric else enc.offset.float().abs().max() * 2**-11
    assert ((D - W).abs() <= step / 2 + 1e-6 + slack).all()
    # only the 200 real inputs' codes are stored (no padding), plus 4 groups of fp16 side data per row
    assert enc.nbytes == len(enc.header()) + packed_nbytes(33 * 200, bits) + 33 * 4 * 2 * (1 if symmetric else 2)


def test_rtn_is_exact_on_its_own_grid():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 64), generator=g).float()
    q[:, ::32] = 0  # every group of 32 reaches both ends of the grid
    q[:, 1::32] = 15
    W = q * 0.125 - 1.0
    enc = RTNConfig(bits=4, group=32).encode(W)
    assert torch.equal(enc.decode(), W)


def test_rtn_g32_reproduces_smollm2_exactly():
    # the caveat the README states: SmolLM2's weights are Q4_1 (group 32, fp16 scale + min)
    from reality_stone.data.pretrained import load_smollm2_weights

    W = load_smollm2_weights(["blk.2.attn_v.weight"])["blk.2.attn_v.weight"]
    err32 = relative_error(W, RTNConfig(bits=4, group=32).encode(W).decode())
    err128 = relative_error(W, RTNConfig(bits=4, group=128).encode(W).decode())
    assert err32 < 2e-3 < err128  # g32 sits on the source grid (up to fp16 re-rounding); g128 does not


def test_lowrank_exact_for_low_rank_and_fused_matmul():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 3, generator=g) @ torch.randn(3, 70, generator=g) * 0.1
    enc = LowRankConfig(rank=3).encode(W)
    assert relative_error(W, enc.decode()) < 1e-3  # fp16 factors
    x = torch.randn(5, 70, generator=g, dtype=torch.float64)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode(torch.float64).T, rtol=1e-12, atol=1e-12)
    # rank larger than the matrix is capped, not an error
    assert LowRankConfig(rank=100).encode(W).A.shape == (40, 40)
    with pytest.raises(ValueError, match="rank"):
        LowRankConfig(rank=0)


def test_lowrank_sparse_residual_recovers_outliers_and_counts_every_byte():
    from reality_stone.codecs import decode_bytes

    g = torch.Generator().manual_seed(5)
    L = torch.randn(60, 2, generator=g) @ torch.randn(2, 90, generator=g)
    spikes = torch.zeros(60 * 90)
    where = torch.randperm(60 * 90, generator=g)[:54]  # 1 % of the entries
    spikes[where] = torch.randn(54, generator=g).sign() * 3
    W = L + spikes.reshape(60, 90)
    plain = LowRankConfig(rank=2).encode(W)
    enc = LowRankConfig(rank=2, sparse=0.01).encode(W)
    # rank 2 alone cannot place the spikes; the residual keeps them (what remains: the spikes'
    # pull on the singular vectors, which an SVD-first fit does not undo)
    assert relative_error(W, plain.decode()) > 0.15
    assert relative_error(W, enc.decode()) < 0.3 * relative_error(W, plain.decode())
    crow, col, val = enc.residual
    assert len(col) == 54 and int(crow[-1]) == 54
    # every byte: fp16 factors, int32 row pointers, uint16 columns, fp16 values
    assert len(enc.payload()) - len(plain.payload()) == 4 * 61 + (2 + 2) * 54
    assert enc.nbytes == len(enc.to_bytes())
    data = enc.to_bytes()
    back = decode_bytes(data)
    assert back.to_bytes() == data and torch.equal(back.decode(), enc.decode())
    for x in (torch.randn(3, 90, generator=g), torch.randn(2, 4, 90, generator=g, dtype=torch.float64)):
        ref = x.double() @ enc.decode(torch.float64).T
        tol = 1e-12 if x.dtype == torch.float64 else 1e-5
        assert (enc.matmul(x).double() - ref).abs().max() <= tol * ref.abs().max()
    x = torch.randn(2, 90, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc.matmul, (x,))


def test_lowrank_sparse_rejects_bad_config_and_corrupt_residual():
    from reality_stone.codecs import decode_bytes

    for bad in (-0.1, 1.0, "0.1"):
        with pytest.raises(ValueError, match="sparse"):
            LowRankConfig(rank=2, sparse=bad)
    enc = LowRankConfig(rank=2, sparse=0.05).encode(torch.randn(20, 30, generator=torch.Generator().manual_seed(6)))
    data = bytearray(enc.to_bytes())
    with pytest.raises(ValueError, match="corrupt lowrank"):
        decode_bytes(bytes(data[:-2]))  # truncated
    col_at = len(data) - 4 * 30  # first residual column (30 entries: uint16 columns, then fp16 values)
    data[col_at], data[col_at + 1] = 0xFF, 0xFF  # column 65535 >= 30
    with pytest.raises(ValueError, match="corrupt lowrank"):
        decode_bytes(bytes(data))
