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
from reality_stone.kernels.seedbasis import seedbasis_linear_reference

OPS = torch.ops.reality_stone


@pytest.fixture(scope="module")
def seedbasis_layout():
    enc = codec_config("seedbasis", preset="3.5").encode(torch.randn(20, 64, generator=torch.Generator().manual_seed(0)))
    return enc.kernel_layout()


@pytest.mark.parametrize("batch", [1, 3, 8, 9, 64])
def test_seedbasis_seeds_out_of_range_raise(seedbasis_layout, batch):
    lay = seedbasis_layout
    seeds = lay.seeds.clone()
    seeds[2, 5] = lay.pattern.shape[0]  # = 2^S: one past the table
    with pytest.raises(ValueError, match="seed"):
        OPS.seedbasis_linear(torch.randn(batch, 64), lay.pattern, seeds, lay.exps, lay.codes, lay.coeffs, lay.rows)
    seeds[2, 5] = -1  # int16 -1 is uint16 65535
    with pytest.raises(ValueError, match="seed"):
        OPS.seedbasis_linear(torch.randn(batch, 64), lay.pattern, seeds, lay.exps, lay.codes, lay.coeffs, lay.rows)


def _mutations(lay, rng: random.Random):
    """(name, args) of malformed seed-basis op calls."""
    x = torch.randn(rng.choice([1, 4, 8, 16]), 64)
    args = dict(x=x, pattern=lay.pattern, seeds=lay.seeds, exps=lay.exps, codes=lay.codes, coeffs=lay.coeffs, rows=lay.rows)
    field = rng.choice(["x", "pattern", "seeds", "exps", "codes", "coeffs", "rows", "dtype"])
    if field in ("coeffs", "rows"):
        args[field] = rng.choice([-1, 0, 1, 3, 9, 19, 21, 24, 25, 2**20])
    elif field == "dtype":
        name = rng.choice(["x", "pattern", "seeds", "exps", "codes"])
        args[name] = args[name].to(rng.choice([torch.int64, torch.float32, torch.int8, torch.uint8, torch.bool]))
    elif field == "x":
        args["x"] = torch.randn(2, rng.choice([0, 1, 56, 63, 65, 72, 128]))
    else:
        t = args[field].clone()
        if rng.random() < 0.5 and t.numel():  # values
            flat = t.reshape(-1)
            i = rng.randrange(flat.numel())
            info = torch.iinfo(t.dtype)
            v = rng.choice([info.min, info.max, -1, 0, 1, 255, 1024, 4096, -127, -128])
            flat[i] = min(max(v, info.min), info.max)
        else:  # shape
            t = rng.choice([t[:-1], t[..., :-1] if t.dim() > 1 else t, t.reshape(-1), t.unsqueeze(0), t[:0]])
        args[field] = t
    return field, args


def test_random_malformed_seedbasis_layouts_raise_or_are_right(seedbasis_layout):
    rng = random.Random(0)
    outcomes = {"error": 0, "right": 0}
    for _ in range(400):
        field, a = _mutations(seedbasis_layout, rng)
        try:
            y = OPS.seedbasis_linear(a["x"], a["pattern"], a["seeds"], a["exps"], a["codes"], a["coeffs"], a["rows"])
        except ValueError:
            outcomes["error"] += 1
            continue
        # accepted: then it must be the reference's answer for exactly these inputs
        from reality_stone.kernels.seedbasis import SeedBasisLayout

        lay = SeedBasisLayout(a["pattern"], a["seeds"], a["exps"], a["codes"], a["coeffs"], a["rows"])
        ref = seedbasis_linear_reference(a["x"].double(), lay, a["x"].shape[-1])
        assert y.shape == ref.shape, field
        # float32 overflows where the float64 reference does not (exponents up to 127 are valid)
        big = torch.finfo(torch.float32).max / 4
        torch.testing.assert_close(y.double().clamp(-big, big), ref.clamp(-big, big), rtol=1e-4,
                                   atol=1e-4 * float(ref.abs().clamp(max=big).max() + 1))
        outcomes["right"] += 1
    assert outcomes["error"] > 200 and outcomes["right"] > 20, outcomes


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
