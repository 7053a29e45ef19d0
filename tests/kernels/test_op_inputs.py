"""Every public custom op validates its inputs: malformed layouts (random seeds, exponents,
shapes, dtypes) raise ValueError or compute the right answer — never read out of bounds.

The original report: ``torch.ops.reality_stone.seedbasis_linear`` with seeds ≥ 2^S at batch ≤ 8
killed the process. Each case runs in this process, so a crash fails the whole run loudly."""

from __future__ import annotations

import random

import pytest
import torch

import reality_stone.kernels.int_lowbit_ops  # noqa: F401  (registers the ops)
import reality_stone.kernels.packed64_ops  # noqa: F401
import reality_stone.kernels.seedbasis_ops  # noqa: F401
from reality_stone.codecs import codec_config
from reality_stone.kernels.seedbasis import seedbasis_linear_a8_reference, seedbasis_linear_reference

OPS = torch.ops.reality_stone


@pytest.fixture(scope="module")
def seedbasis_layout():
    enc = codec_config("seedbasis", preset="3.5").encode(torch.randn(20, 64, generator=torch.Generator().manual_seed(0)))
    return enc.kernel_layout()


FIELDS = ("pattern", "records", "row_exp", "seed_bits", "exp_bits", "coeff_bits", "rows")


def _call(a, op="seedbasis_linear"):
    return getattr(OPS, op)(a["x"], *(a[k] for k in FIELDS))


@pytest.mark.parametrize("op", ["seedbasis_linear", "seedbasis_linear_a8"])
@pytest.mark.parametrize("batch", [1, 3, 8, 9, 64])
def test_seedbasis_truncated_or_oversized_records_raise(seedbasis_layout, batch, op):
    lay = seedbasis_layout
    x = torch.randn(batch, 64)
    args = dict(x=x, **{k: getattr(lay, k) for k in FIELDS})
    for records in (lay.records[:-1], lay.records[:-17], torch.cat([lay.records, lay.records[:1]])):
        with pytest.raises(ValueError, match="records"):
            _call(args | dict(records=records), op)
    with pytest.raises(ValueError, match="pattern"):  # a table too short for S-bit seeds
        _call(args | dict(pattern=lay.pattern[:-1]), op)


@pytest.mark.parametrize("batch", [1, 2, 8, 17])
def test_seedbasis_a8_any_record_bytes_are_a_valid_weight(seedbasis_layout, batch):
    """The same for int8 activations: every random record computes the a8 reference's numbers."""
    from reality_stone.kernels.seedbasis import SeedBasisLayout

    g = torch.Generator().manual_seed(100 + batch)
    lay = seedbasis_layout
    records = torch.randint(0, 256, lay.records.shape, dtype=torch.uint8, generator=g)
    bad = SeedBasisLayout(lay.pattern, records, lay.row_exp, lay.seed_bits, lay.exp_bits, lay.coeff_bits, lay.rows)
    x = torch.randn(batch, 64, generator=g)
    ref = seedbasis_linear_a8_reference(x, bad, 64)
    y = OPS.seedbasis_linear_a8(x, *(getattr(bad, k) for k in FIELDS))
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("batch", [1, 2, 9, 64])
def test_seedbasis_any_record_bytes_are_a_valid_weight(seedbasis_layout, batch):
    """Every field is an S-, E- or Q-bit slot, so random bytes decode to some weight — and the
    kernel must compute exactly that weight (no value can index out of its table)."""
    from reality_stone.kernels.seedbasis import SeedBasisLayout

    g = torch.Generator().manual_seed(batch)
    lay = seedbasis_layout
    records = torch.randint(0, 256, lay.records.shape, dtype=torch.uint8, generator=g)
    bad = SeedBasisLayout(lay.pattern, records, lay.row_exp, lay.seed_bits, lay.exp_bits, lay.coeff_bits, lay.rows)
    x = torch.randn(batch, 64, generator=g)
    ref = seedbasis_linear_reference(x.double(), bad, 64)
    y = OPS.seedbasis_linear(x, *(getattr(bad, k) for k in FIELDS))
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def _mutations(lay, rng: random.Random):
    """(name, args) of malformed seed-basis op calls."""
    x = torch.randn(rng.choice([1, 4, 8, 16]), 64)
    args = dict(x=x, **{k: getattr(lay, k) for k in FIELDS})
    field = rng.choice(["x", "pattern", "records", "row_exp", "seed_bits", "exp_bits", "coeff_bits", "rows", "dtype"])
    if field in ("seed_bits", "exp_bits", "coeff_bits", "rows"):
        args[field] = rng.choice([-1, 0, 1, 2, 3, 4, 5, 9, 16, 17, 19, 21, 24, 25, 2**20])
    elif field == "dtype":
        name = rng.choice(["x", "pattern", "records", "row_exp"])
        args[name] = args[name].to(rng.choice([torch.int64, torch.float32, torch.int8, torch.uint8, torch.bool]))
    elif field == "x":
        args["x"] = torch.randn(2, rng.choice([0, 1, 56, 63, 65, 72, 128]))
    else:
        t = args[field].clone()
        if rng.random() < 0.5 and t.numel():  # values
            flat = t.reshape(-1)
            i = rng.randrange(flat.numel())
            if t.dtype.is_floating_point:
                flat[i] = rng.choice([0.0, -1.0, 2.0**-126, 2.0**100, float("inf")])
            else:
                info = torch.iinfo(t.dtype)
                flat[i] = min(max(rng.choice([info.min, info.max, 0, 1, 127, 128, 255]), info.min), info.max)
        else:  # shape
            t = rng.choice([t[:-1], t[..., :-1] if t.dim() > 1 else t, t.reshape(-1), t.unsqueeze(0), t[:0]])
        args[field] = t
    return field, args


@pytest.mark.parametrize("op", ["seedbasis_linear", "seedbasis_linear_a8"])
def test_random_malformed_seedbasis_layouts_raise_or_are_right(seedbasis_layout, op):
    from reality_stone.kernels.seedbasis import SeedBasisLayout

    rng = random.Random(0)
    outcomes = {"error": 0, "right": 0}
    for _ in range(400):
        field, a = _mutations(seedbasis_layout, rng)
        try:
            y = _call(a, op)
        except ValueError:
            outcomes["error"] += 1
            continue
        # accepted: then it must be the reference's answer for exactly these inputs
        lay = SeedBasisLayout(*(a[k] for k in FIELDS))
        if op == "seedbasis_linear_a8":
            ref = seedbasis_linear_a8_reference(a["x"], lay, a["x"].shape[-1])
        else:
            ref = seedbasis_linear_reference(a["x"].double(), lay, a["x"].shape[-1])
        assert y.shape == ref.shape, field
        torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max() + 1))
        outcomes["right"] += 1
    assert outcomes["error"] > 150 and outcomes["right"] > 20, outcomes


def test_lowbit_ops_validate_shapes_and_dtypes():
    enc = codec_config("rtn", bits=4, group=64).encode(torch.randn(16, 128))
    packed, scale, offset, zp, group, bits = enc.kernel_layout()
    x = torch.randn(3, 128)
    good = OPS.lowbit_linear(x, packed, scale, offset, zp, group, bits)
    torch.testing.assert_close(good, x @ enc.decode().T, rtol=1e-4, atol=1e-4)
    bad_calls = [
        dict(x=x.long()), dict(x=torch.randn(3, 127)), dict(packed=packed[:, :-1]), dict(packed=packed.float()),
        dict(scale=scale.float()), dict(scale=scale[:-1]), dict(offset=offset[:, :1]), dict(group=48), dict(group=0),
        dict(bits=5), dict(bits=1), dict(x=torch.tensor(1.0)),
    ]
    for bad in bad_calls:
        a = dict(x=x, packed=packed, scale=scale, offset=offset, zp=zp, group=group, bits=bits) | bad
        for op in (OPS.lowbit_linear, OPS.lowbit_linear_a8):
            with pytest.raises(ValueError, match="lowbit_linear"):
                op(a["x"], a["packed"], a["scale"], a["offset"], a["zp"], a["group"], a["bits"])


def test_packed64_op_rejects_malformed_layouts():
    enc = codec_config("packed64").encode(torch.randn(40, 64))
    lay = enc.kernel_layout()
    x = torch.randn(2, 64)
    args = [lay.leaves, lay.params, lay.row_start, lay.tables, lay.block, lay.shape[0]]
    torch.testing.assert_close(OPS.packed64_linear(x, *args), x @ enc.decode().T, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="floating-point"):
        OPS.packed64_linear(x.int(), *args)
    rng = random.Random(1)
    for _ in range(100):
        bad = list(args)
        i = rng.randrange(4)
        t = bad[i].clone()
        if t.numel() and rng.random() < 0.7:
            t.reshape(-1)[rng.randrange(t.numel())] = rng.choice([-1, 2**20, 10**6, -(2**31)])
        else:
            t = t[:-1] if t.dim() == 1 else t[:, :-1]
        bad[i] = t
        try:
            OPS.packed64_linear(x, *bad)
        except ValueError:
            pass
