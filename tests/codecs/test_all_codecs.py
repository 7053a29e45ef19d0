"""The shared suite: every registered codec must pass it."""

import random
import struct

import pytest
import torch

from reality_stone.calibration import ActivationStats
from reality_stone.codecs import (Capabilities, Encoded, codec_class, codec_config, decode_bytes, encoded_class,
                                  registered_codecs, relative_error)
from reality_stone.codecs.base import CALIBRATION_MODES, FORMAT_VERSION, MAGIC
from reality_stone.codecs.metrics import reference_weight

CODECS = registered_codecs()


class _Codec:
    """codec_config(name) whose ``encode`` passes input statistics to codecs that use them
    (correlated inputs, as real activations are), so every codec runs the same suite."""

    def __init__(self, name):
        self.cfg = codec_config(name)

    def encode(self, W):
        if self.cfg.calibration == "unused" or W.dim() != 2:  # bad shapes: the weight check must speak first
            return self.cfg.encode(W)
        g = torch.Generator().manual_seed(7)
        X = torch.randn(256, 8, generator=g) @ torch.randn(8, W.shape[1], generator=g) + 0.3 * torch.randn(256, W.shape[1], generator=g)
        return self.cfg.encode(W, ActivationStats((X.T @ X / 256).double(), 256))

    def __eq__(self, other):
        return self.cfg == other.cfg


def weight(rows=48, cols=80, seed=0):
    return reference_weight(rows, cols, seed)


@pytest.fixture(params=CODECS)
def name(request):
    return request.param


def test_registry_has_codecs():
    assert "packed64" in CODECS and "gptq" in CODECS


def test_capabilities_are_declared(name):
    cls = codec_class(name)
    cfg = codec_config(name)
    assert cls.calibration in CALIBRATION_MODES
    assert cls.description  # shown by `reality-stone codecs`
    assert isinstance(cfg.capabilities, Capabilities) and cfg.capabilities.calibration == cls.calibration
    assert issubclass(encoded_class(name), Encoded)
    if cls.calibration == "required":
        with pytest.raises(ValueError, match="calibration"):
            codec_config(name).encode(weight())


def test_declared_capabilities_hold(name, monkeypatch):
    """What ``capabilities`` declares is what the encoded object does."""
    W = weight()
    enc = _Codec(name).encode(W)
    caps = enc.config.capabilities
    assert isinstance(enc, encoded_class(name))
    x = torch.randn(2, 80, generator=torch.Generator().manual_seed(1))
    ref = x.double() @ enc.decode(torch.float64).T
    if caps.trainable:
        module = enc.to_module()
        assert any(p.requires_grad for p in module.parameters())
        assert torch.allclose(module().detach().double(), enc.decode(torch.float64), atol=1e-3 * float(W.abs().max()))
    else:
        assert not hasattr(enc, "to_module")
    if caps.int8_activations:
        y8 = enc.matmul_int8_activations(x).double()
        assert relative_error(ref, y8) < 2e-2  # int8 activations: ~0.4 % per group
    elif hasattr(enc, "matmul_int8_activations"):  # a codec where only some configs have it: refused here
        with pytest.raises(ValueError, match="int8 activations"):
            enc.matmul_int8_activations(x)
    if caps.fused_matmul:  # the fused path never builds the dense weight
        monkeypatch.setattr(type(enc), "decode", lambda *a, **k: pytest.fail("fused matmul decoded the weight"))
        enc.matmul(x)


def test_decode_rows_are_the_decoded_rows(name):
    # what an embedding reading a compressed matrix looks up (repeats and any order)
    enc = _Codec(name).encode(weight(37, 53))
    rows = torch.tensor([36, 0, 5, 5, 17])
    full = enc.decode()
    assert torch.allclose(enc.decode_rows(rows), full[rows], rtol=0, atol=1e-6 * float(full.abs().max()))
    assert enc.decode_rows(rows, torch.float64).dtype == torch.float64


@pytest.mark.parametrize("shape", [(48, 80), (37, 53), (64, 256)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_within_the_declared_bound(name, shape, seed):
    W = weight(*shape, seed=seed)
    enc = _Codec(name).encode(W)
    assert enc.shape == shape
    out = enc.decode()
    assert out.shape == W.shape and out.dtype == torch.float32
    assert enc.decode(torch.float64).dtype == torch.float64
    assert torch.isfinite(out).all()
    # an all-zero decode has error 1.0; each codec declares how close it gets on this weight
    assert relative_error(W, out) < codec_class(name).error_bound


@pytest.mark.parametrize("batch", [(1,), (32,), (2, 3)])
def test_matmul_matches_decode(name, batch):
    W = weight()
    enc = _Codec(name).encode(W)
    x = torch.randn(*batch, 80, generator=torch.Generator().manual_seed(1))
    ref = (x.double() @ enc.decode(torch.float64).T)
    out = enc.matmul(x)
    assert out.shape == (*batch, 48)
    # tolerance: float32 rounding of a length-80 dot product, relative to the output scale
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1e-12)
    with pytest.raises(ValueError, match="features"):
        enc.matmul(torch.randn(3, 81))


def test_nbytes_is_serialised_length_and_round_trip_is_exact(name, monkeypatch):
    enc = _Codec(name).encode(weight())
    data = enc.to_bytes()
    with monkeypatch.context() as m:  # nbytes is arithmetic: it never serialises the payload
        m.setattr(type(enc), "payload", lambda self: pytest.fail("nbytes serialised the payload"))
        assert enc.nbytes == len(data)
    back = decode_bytes(data)
    assert back.shape == enc.shape
    assert torch.equal(back.decode(), enc.decode())
    assert back.to_bytes() == data
    assert enc.compression_ratio() == pytest.approx(48 * 80 * 4 / len(data))
    assert enc.compression_ratio(torch.float16) == pytest.approx(48 * 80 * 2 / len(data))


def test_deterministic(name):
    W = weight(seed=3)
    assert _Codec(name).encode(W).to_bytes() == _Codec(name).encode(W.clone()).to_bytes()


@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (65, 1)])
def test_non_divisible_shapes_pad_and_crop(name, shape):
    W = weight(*shape)
    enc = _Codec(name).encode(W)
    assert enc.decode().shape == shape
    assert decode_bytes(enc.to_bytes()).decode().shape == shape
    assert enc.nbytes == len(enc.to_bytes())
    # a thin matrix gives a codec little to work with, but never worse than storing zeros
    assert relative_error(W, enc.decode()) <= 1 + 1e-3


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([[1.0, float("nan")]]), "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")]]), "NaN or Inf"),
        (torch.zeros(0, 4), "empty"),
        (torch.zeros(5), "2-D"),
        (torch.zeros(2, 2, 2), "2-D"),
        (torch.zeros(3, 3, dtype=torch.int32), "floating point"),
    ],
)
def test_bad_weights(name, bad, match):
    with pytest.raises(ValueError, match=match):
        _Codec(name).encode(bad)


def test_unknown_codec_and_option():
    with pytest.raises(ValueError, match="unknown codec"):
        codec_config("nope")
    with pytest.raises(ValueError, match="no option"):
        codec_config(CODECS[0], not_an_option=1)


def test_corrupt_truncated_and_future_data(name):
    data = _Codec(name).encode(weight(24, 40)).to_bytes()
    with pytest.raises(ValueError, match="magic"):
        decode_bytes(b"XXXX" + data[4:])
    bumped = MAGIC + struct.pack("<B", FORMAT_VERSION + 1) + data[len(MAGIC) + 1 :]
    with pytest.raises(ValueError, match="version"):
        decode_bytes(bumped)
    for cut in (3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError):
            decode_bytes(data[:cut])
    # fuzz: random byte flips either raise ValueError or give a tensor whose decode has the stored
    # shape, is finite, and whose byte count is what it serialises to
    rng = random.Random(0)
    decoded = 0
    for _ in range(200):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            back = decode_bytes(bytes(mutated))
        except ValueError:
            continue
        decoded += 1
        dec = back.decode()
        assert dec.shape == back.shape and dec.dtype == torch.float32
        assert bool(torch.isfinite(dec).all())
        assert back.nbytes == len(back.to_bytes())
    assert decoded > 0  # flips of payload bits are valid data for every codec: the loop tested something
