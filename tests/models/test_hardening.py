"""The defects of the independent fuzzing run (issue #24), one test each: hostile files that are
well-formed and re-signed get a clear ValueError naming the tensor or layer — never a crash, an
allocation bomb or silently wrong values; saves are deterministic and leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import reality_stone as rs
from hostile_files import blob_parts, join, make_blob, replace_tensor, resign, split, tensor_data
from reality_stone.cli import app
from reality_stone.codecs import codec_config
from reality_stone.codecs.base import decode_bytes
from reality_stone.models.format import ENCODED_SUFFIX, remove_stale_temps, tensor_checksum
from reality_stone.evaluation.loaders import tiny_llama
from reality_stone.nn import CompressedLinear


def _plain(codec: str = "rtn", **opts) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    rs.compress(model, codec_config(codec, **opts), include="2")
    return model


def _template() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))


def _edit(src, dst, edit) -> None:
    """dst = src with ``edit(header, body) -> (header, body)`` applied, then re-signed."""
    header, body = split(src.read_bytes())
    header, body = edit(header, body)
    dst.write_bytes(join(resign(header, body), body))


def _edit_meta(field, fn):
    def edit(header, body):
        meta = header["__metadata__"]
        meta[field] = json.dumps(fn(json.loads(meta[field])))
        return header, body
    return edit


def _edit_blob(layer, fn):
    """fn(meta, shape, payload) -> (meta, shape, payload) on the encoded blob of ``layer``."""
    def edit(header, body):
        name = layer + ENCODED_SUFFIX
        blob = make_blob(*fn(*blob_parts(tensor_data(header, body, name))))
        return replace_tensor(header, body, name, blob)
    return edit


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("h") / "plain.safetensors"
    rs.save(_plain(), path)
    return path


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory):
    model = tiny_llama()
    rs.compress(model, codec_config("rtn", bits=4, group=32))
    path = tmp_path_factory.mktemp("h") / "llama.safetensors"
    rs.save(model, path)
    return path


def test_dense_dtype_changed_in_the_header_is_refused(plain_file, tmp_path):
    """F32 -> I32 keeps the bytes (so a bytes-only checksum passes): reading them as integers
    gave outputs off by 4e10. Now the checksum covers the dtype, and a re-signed file is refused
    because the model's tensor is float."""
    bad = tmp_path / "i32.safetensors"
    header, body = split(plain_file.read_bytes())
    header["0.weight"]["dtype"] = "I32"
    bad.write_bytes(join(header, body))
    with pytest.raises(ValueError, match="'0.weight' is stored as torch.int32"):
        rs.load(bad, model=_template())
    data = tensor_data(header, body, "0.weight")
    assert tensor_checksum("F32", [64, 64], data) != tensor_checksum("I32", [64, 64], data)
    assert tensor_checksum("F32", [64, 64], data) != tensor_checksum("F32", [32, 128], data)
    _edit(plain_file, bad, lambda h, b: ({**h, "0.weight": {**h["0.weight"], "dtype": "I32"}}, b))
    with pytest.raises(ValueError, match="'0.weight' is stored as torch.int32, the model expects torch.float32"):
        rs.load(bad, model=_template())


@pytest.mark.parametrize("field, value, match", [
    ("compressed", None, "'compressed' must be an object"),
    ("checksums", None, "'checksums' must be an object"),
    ("aliases", [], "'aliases' must be an object"),
    ("architecture", 5, "'architecture' must be null or"),
    ("source", 7, "'source' must be null or a string"),
])
def test_metadata_of_the_wrong_type_is_a_clear_error(plain_file, tmp_path, field, value, match):
    bad = tmp_path / "bad.safetensors"
    _edit(plain_file, bad, _edit_meta(field, lambda _: value))
    with pytest.raises(ValueError, match=match):
        rs.load(bad, model=_template())
    result = CliRunner().invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


def test_compressed_layer_without_shape_and_unknown_codec(plain_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _edit(plain_file, bad, _edit_meta("compressed", lambda c: {"2": {k: v for k, v in c["2"].items() if k != "shape"}}))
    with pytest.raises(ValueError, match="compressed layer '2': 'shape' must be two positive integers"):
        rs.load(bad, model=_template())
    _edit(plain_file, bad, _edit_meta("compressed", lambda c: {"2": c["2"] | {"codec": "zip"}}))
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        rs.load(bad, model=_template())


def test_alias_cannot_overwrite_or_invent_a_tie(plain_file, llama_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _edit(plain_file, bad, _edit_meta("aliases", lambda a: {"4.bias": "0.bias"}))
    with pytest.raises(ValueError, match="alias '4.bias' would overwrite a stored tensor"):
        rs.load(bad, model=_template())
    # an alias for a tensor that is not stored, between tensors the model does not tie
    def drop_and_alias(h, b):
        h, b = replace_tensor(h, b, "4.bias", b"")
        h.pop("4.bias")
        meta = h["__metadata__"]
        meta["checksums"] = json.dumps({k: v for k, v in json.loads(meta["checksums"]).items() if k != "4.bias"})
        meta["aliases"] = json.dumps({"4.bias": "0.bias"})
        return h, b
    _edit(plain_file, bad, drop_and_alias)
    with pytest.raises(ValueError, match="alias '4.bias' → '0.bias' is not a tie of this model's architecture"):
        rs.load(bad, model=_template())
    loaded = rs.load(llama_file)  # the real tie (lm_head ↔ embeddings) still loads
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


@pytest.mark.parametrize("key, value, match", [
    ("hidden_size", -64, "hidden_size=-64 is out of range"),
    ("num_hidden_layers", 100000, "num_hidden_layers=100000, but the file stores layers 0…1"),
    ("num_attention_heads", 0, "num_attention_heads=0 is out of range"),
    ("vocab_size", 2**40, "vocab_size=1099511627776 is out of range"),
])
def test_stored_architecture_config_is_checked_before_building(llama_file, tmp_path, key, value, match):
    bad = tmp_path / "bad.safetensors"
    _edit(llama_file, bad, _edit_meta("architecture", lambda a: a | {"config": a["config"] | {key: value}}))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        rs.load(bad)


def test_rtn_group_bombs_are_refused_before_allocating(plain_file, tmp_path):
    """An 8.8 KB rtn layer with group=4194304 (payload length consistent: one group per row)
    used 4.9 GB; group=2**31 asked the allocator for 2 TB."""
    bad = tmp_path / "bad.safetensors"
    for group in (4194304, 2**31):
        _edit(plain_file, bad, _edit_blob("2", lambda m, s, p: ({**m, "config": m["config"] | {"group": group}}, s, p)))
        with pytest.raises(ValueError, match=f"layer '2': group {group} is longer than the 64 inputs"):
            rs.load(bad, model=_template())
    with pytest.raises(ValueError, match="group 4096 is longer than the 64 inputs"):
        codec_config("rtn", group=4096).encode(torch.randn(8, 64))


def test_rbe_shape_bomb_is_refused_from_the_byte_count():
    blob = codec_config("rbe", block=8, bpw=3.0).encode(torch.randn(64, 128)).to_bytes()
    meta, _, payload = blob_parts(blob)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"shape \(2147483648, 128\) needs at least"):
        decode_bytes(make_blob(meta, (2**31, 128), payload))
    assert time.perf_counter() - t0 < 60  # not the 25 s / 5.6 GB of building 2^32 block positions first


def test_rbe_duplicate_coefficient_index_is_refused():
    enc = codec_config("rbe", block=8, bpw=3.0, value_dtype="fp16").encode(torch.randn(64, 64))
    b = next(i for i, idx in enumerate(enc.indices) if len(idx) >= 2)
    enc.indices[b] = enc.indices[b].clone()
    enc.indices[b][1] = enc.indices[b][0]
    with pytest.raises(ValueError, match="lists the same coefficient twice"):
        decode_bytes(enc.to_bytes())


def test_seedbasis_exponent_that_overflows_float32_is_refused():
    enc = codec_config("seedbasis", preset="3.5").encode(torch.randn(16, 64))
    meta, shape, payload = blob_parts(enc.to_bytes())
    payload = bytes([127]) + payload[1:]  # e_top of row 0 (int8): 14,000 of 16,000 weights became Inf
    with pytest.raises(ValueError, match="block exponent .* overflows float32"):
        decode_bytes(make_blob(meta, shape, payload))


def test_a_file_claiming_far_more_memory_than_its_size_needs_consent(tmp_path):
    model = nn.Sequential(nn.Linear(1024, 1024, bias=False))
    rs.compress(model, codec_config("lowrank", rank=1))
    path = rs.save(model, tmp_path / "thin.safetensors")  # ~4 KB of factors for a 4 MB weight
    with pytest.raises(ValueError, match="claims 4194304 bytes of weights, more than 64× its size"):
        rs.load(path, model=nn.Sequential(nn.Linear(1024, 1024, bias=False)))
    loaded = rs.load(path, model=nn.Sequential(nn.Linear(1024, 1024, bias=False)), max_expansion=None)
    x = torch.randn(2, 1024)
    assert torch.equal(loaded(x), model(x))


def test_non_finite_dense_tensor_is_refused(plain_file, tmp_path):
    bad = tmp_path / "nan.safetensors"

    def nan_bias(h, b):
        data = bytearray(tensor_data(h, b, "0.bias"))
        data[:4] = torch.tensor([float("nan")]).numpy().tobytes()
        return replace_tensor(h, b, "0.bias", bytes(data))
    _edit(plain_file, bad, nan_bias)
    with pytest.raises(ValueError, match="tensor '0.bias' holds NaN or Inf"):
        rs.load(bad, model=_template())


def test_version_1_files_still_load(plain_file, tmp_path):
    """v1: checksums over the bytes only. Converted from a v2 file, it loads to the same model."""
    old = tmp_path / "v1.safetensors"

    def to_v1(h, b):
        meta = h["__metadata__"]
        meta["format_version"] = "1"
        meta["checksums"] = json.dumps({k: hashlib.sha256(tensor_data(h, b, k)).hexdigest()
                                        for k in h if k != "__metadata__"}, sort_keys=True)
        return h, b
    header, body = split(plain_file.read_bytes())
    header, body = to_v1(header, body)
    from reality_stone.models.format import _meta_digest

    header["__metadata__"]["metadata_sha256"] = _meta_digest(header["__metadata__"])
    old.write_bytes(join(header, body))
    x = torch.randn(3, 64)
    assert torch.equal(rs.load(old, model=_template())(x), rs.load(plain_file, model=_template())(x))


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_save_is_deterministic_across_processes(tmp_path):
    script = ("import sys, torch, reality_stone as rs; sys.path.insert(0, sys.argv[2]);"
              "from test_hardening import _plain; rs.save(_plain('seedbasis', preset='3.5'), sys.argv[1])")
    digests = set()
    for i, seed in enumerate(("1", "2")):
        out = tmp_path / f"m{i}.safetensors"
        env = dict(os.environ, PYTHONHASHSEED=seed)  # hash-map order differs between these two
        subprocess.run([sys.executable, "-c", script, str(out), os.path.dirname(__file__)], check=True, env=env)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_killed_writer_leaves_no_temp_after_the_next_save(tmp_path):
    target = tmp_path / "big.safetensors"
    marker = tmp_path / "started"
    script = ("import sys, pathlib, torch, reality_stone as rs;"
              "m = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(48)]);"
              "rs.save(m, sys.argv[1]); pathlib.Path(sys.argv[2]).touch();"
              "[rs.save(m, sys.argv[1]) for _ in range(1000)]")
    seen = []
    for attempt in range(5):  # each save writes ~200 MB: a kill almost always lands inside one
        proc = subprocess.Popen([sys.executable, "-c", script, str(target), str(marker)])
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3 + 0.2 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        marker.unlink(missing_ok=True)
        seen = [p for p in tmp_path.iterdir() if p.name != target.name]
        if seen:
            break
    assert seen and all(p.name.startswith(f".{target.name}.rs-") for p in seen), seen
    rs.save(nn.Sequential(nn.Linear(2, 2)), target)
    assert [p for p in tmp_path.iterdir() if p.name != target.name] == []
    # the removal is by dead pid: a live writer's temp is kept
    live = tmp_path / f".{target.name}.rs-{os.getpid()}-x.tmp"
    live.write_bytes(b"")
    assert remove_stale_temps(target) == [] and live.exists()


@pytest.mark.parametrize("codec, opts", [("rtn", {}), ("hqq", {}), ("seedbasis", {"preset": "3.5"}), ("lowrank", {"rank": 8}),
                                         ("lowrank", {"rank": 8, "sparse": 0.05}), ("packed64", {}), ("rbe", {"block": 8})])
def test_compressed_linear_inputs(codec, opts):
    layer = CompressedLinear(codec_config(codec, **opts).encode(torch.randn(32, 64)), torch.randn(32))
    x = torch.randn(5, 64)
    layer.requires_grad_(False)
    ref = layer(x)
    for dtype in (torch.int64, torch.int32, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="floating-point inputs"):
            layer(x.to(dtype))
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-5)):
        y = layer(x.to(dtype))
        assert y.dtype == dtype
        assert float((y.float() - ref).abs().max()) <= tol * float(ref.abs().max())
    with pytest.raises(ValueError, match="63 features, 64 expected"):
        layer(x[:, :63])


def test_compress_names_the_layer_with_a_nan_weight():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    with torch.no_grad():
        model[1].weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match="layer '1': weight contains NaN or Inf"):
        rs.compress(model, codec_config("rtn"))
