"""Seed-basis codec: pinned generator, exact recovery, bit accounting, data-aware mode."""

import pytest
import torch

from reality_stone.codecs import codec_config

from reality_stone.codecs import decode_bytes, relative_error
from reality_stone.codecs.seedbasis import PRESETS, SeedBasisConfig, lfsr_basis, lfsr_bits, packed64_basis, preset
from reality_stone.calibration import ActivationStats, output_error


def _python_lfsr(seed, n):
    """The documented generator, written out independently: Galois LFSR, mask 0xB400."""
    state = seed + 1
    for _ in range(32):
        state = (state >> 1) ^ (0xB400 if state & 1 else 0)
    out = []
    for _ in range(n):
        out.append(state & 1)
        state = (state >> 1) ^ (0xB400 if state & 1 else 0)
    return out


def test_lfsr_regression_vector():
    # pinned: the generator defines the file format, it must never change
    bits = lfsr_bits(torch.tensor([0, 1, 255]), 16)
    assert bits[0].tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0]
    assert bits[1].tolist() == [0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1]
    assert bits[2].tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0]
    for seed in (0, 1, 77, 255, 65534):
        assert lfsr_bits(torch.tensor([seed]), 40)[0].tolist() == _python_lfsr(seed, 40)
    U = lfsr_basis(8, 8, 3)
    assert U.shape == (256, 3, 8) and set(U.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(U[0].flatten()[:16], 2 * bits[0].float() - 1)
    # distinct seeds give distinct bases
    assert len({tuple(u.flatten().tolist()) for u in U}) == 256


def test_block_that_is_basis_times_coefficients_is_recovered_exactly():
    cfg = SeedBasisConfig(block=8, seed_bits=8, coeffs=3, coeff_bits=4, exp_bits=2)
    U = cfg.table()
    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 256, (5, 4), generator=g)
    codes = torch.randint(-8, 8, (5, 4, 3), generator=g)
    codes[:, :, 0] = 7  # every block reaches the top of the coefficient range: its exponent is 0
    W = torch.einsum("rbp,rbpc->rbc", codes.float(), U[seeds]).reshape(5, 32) * 2.0**-5
    enc = cfg.encode(W)
    assert torch.equal(enc.decode(), W)
    assert torch.equal(decode_bytes(enc.to_bytes()).decode(), W)


def test_bits_per_weight_counts_everything():
    for name, kw in PRESETS.items():
        cfg = SeedBasisConfig(**kw)
        assert cfg.nominal_bpw() == float(name)
        enc = cfg.encode(torch.randn(64, 256, generator=torch.Generator().manual_seed(1)))
        header = len(enc.header())
        expected_bits = 64 * 32 * cfg.block_bits + 64 * 8  # blocks + int8 row exponents
        assert enc.nbytes == pytest.approx(header + expected_bits / 8, abs=3)
        assert enc.bits_per_weight() < float(name) + 8 / 256 + 8 * header / (64 * 256) + 0.01


def test_presets_beat_rtn_at_low_bits_on_real_weights():
    from reality_stone.codecs import codec_config
    from reality_stone.data.pretrained import load_minilm_weights

    W = load_minilm_weights()["encoder.layer.1.attention.output.dense.weight"]
    sb = preset("2.5").encode(W)
    rtn = codec_config("rtn", bits=2, group=64).encode(W)
    assert abs(sb.bits_per_weight() - rtn.bits_per_weight()) < 0.05
    assert relative_error(W, sb.decode()) < 0.85 * relative_error(W, rtn.decode())


def test_data_aware_mode_lowers_output_error():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(48, 64, generator=g) * 0.05
    X = torch.randn(1024, 12, generator=g) @ torch.randn(12, 64, generator=g) + 0.2 * torch.randn(1024, 64, generator=g)
    H = (X.T @ X / len(X)).double()
    cfg = preset("3.5")
    free, aware = cfg.encode(W), cfg.encode(W, ActivationStats(H, len(X)))
    assert output_error(W, aware.decode(), H) < 0.7 * output_error(W, free.decode(), H)
    assert aware.nbytes == free.nbytes
    with pytest.raises(ValueError, match="inputs"):
        cfg.encode(W, ActivationStats(torch.eye(10, dtype=torch.float64), 1))
    with pytest.raises(ValueError, match="ActivationStats"):
        cfg.encode(W, H)


def test_packed64_basis_family_is_available():
    U = packed64_basis(8, 8, 3)
    assert U.shape == (256, 3, 8) and torch.isfinite(U).all()
    enc = SeedBasisConfig(basis="packed64", coeffs=3, coeff_bits=3, exp_bits=3).encode(torch.randn(16, 64))
    assert torch.equal(decode_bytes(enc.to_bytes()).decode(), enc.decode())
    # its bases are not ±1, so the sign-pattern kernel must not take it (it once did, computing
    # with the signs of the basis entries only)
    assert enc.kernel_layout() is None and not enc.config.capabilities.fused_matmul
    x = torch.randn(3, 64)
    torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T)


def test_bad_configs():
    for kw in (dict(block=1), dict(seed_bits=17), dict(coeffs=9), dict(coeff_bits=1), dict(exp_bits=7), dict(basis="x")):
        with pytest.raises(ValueError):
            SeedBasisConfig(**kw)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("3.0")
    with pytest.raises(ValueError, match="unknown preset"):
        codec_config("seedbasis", preset="3.0")
    with pytest.raises(ValueError, match="no presets"):
        codec_config("rtn", preset="3.5")


def test_presets_by_name_everywhere():
    assert codec_config("seedbasis", preset="3.5") == preset("3.5")
    assert codec_config("seedbasis", preset="2.5", chunk=64) == preset("2.5", chunk=64)


@pytest.mark.parametrize("budget", ["4.25", "3.5", "2.5"])
def test_encoded_fields_are_held_compactly(budget):
    """A loaded seed-basis model holds its fields in the narrowest dtypes (int64 fields were 6 bytes
    per weight at 3.5 bpw), and they round-trip the stored bytes exactly."""
    from reality_stone.codecs import decode_bytes

    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.05
    enc = preset(budget).encode(W)
    held = sum(t.numel() * t.element_size() for t in (enc.e_top, enc.seeds, enc.e_off, enc.codes))
    assert held <= (2 + 1 + preset(budget).coeffs) / 8 * W.numel() + 2 * 64  # ≤ 1.1 bytes per weight
    back = decode_bytes(enc.to_bytes())
    assert back.seeds.dtype == torch.int16 and back.codes.dtype == torch.int8
    assert back.to_bytes() == enc.to_bytes() and torch.equal(back.decode(), enc.decode())
