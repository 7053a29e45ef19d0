"""Streaming / resumable / Ray checkpoint compression: identical bytes every way, clear errors."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reality_stone.codecs import codec_config
from reality_stone.data.pretrained import minilm_dir
from reality_stone.models.format import load, read_metadata
from reality_stone.models.streaming import checkpoint_tensors, compress_checkpoint

CFG = codec_config("rtn", bits=4, group=64)


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The real MiniLM checkpoint split into 3 shards (+ its config.json)."""
    d = tmp_path_factory.mktemp("minilm_sharded")
    tensors = load_file(str(minilm_dir() / "model.safetensors"))
    names = sorted(tensors)
    for i in range(3):
        save_file({n: tensors[n] for n in names[i::3]}, str(d / f"model-{i + 1:05d}-of-00003.safetensors"))
    shutil.copy(minilm_dir() / "config.json", d / "config.json")
    return d


@pytest.fixture(scope="module")
def reference(sharded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "in_memory.safetensors"
    compress_checkpoint(sharded, out, CFG, streaming=False)
    return out


def test_streaming_equals_in_memory_and_loads(sharded, reference, tmp_path):
    out = tmp_path / "streamed.safetensors"
    summary = compress_checkpoint(sharded, out, CFG)
    assert _sha(out) == _sha(reference)
    assert summary["compressed_layers"] == 37 and summary["tensors"] == 104
    assert not (tmp_path / "streamed.safetensors.parts").exists()
    meta = read_metadata(out)
    assert meta["architecture"]["class"] == "BertModel"
    model = load(out)  # the standard loader reads it: same format as reality_stone.save
    enc = model.encoder.layer[0].attention.self.query.encoded
    W = load_file(str(minilm_dir() / "model.safetensors"))["encoder.layer.0.attention.self.query.weight"]
    torch.testing.assert_close(enc.decode(), CFG.encode(W).decode())


def test_resume_after_an_exception_gives_the_identical_file(sharded, reference, tmp_path):
    out = tmp_path / "r.safetensors"
    seen = []

    def crash(rec):
        seen.append(rec["source"])
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_checkpoint(sharded, out, CFG, on_tensor=crash)
    assert not out.exists()  # nothing half-written under the final name
    manifest = json.loads((tmp_path / "r.safetensors.parts" / "manifest.json").read_text())
    assert len(manifest["done"]) == 10
    summary = compress_checkpoint(sharded, out, CFG)
    assert summary["resumed_tensors"] == 10
    assert _sha(out) == _sha(reference)


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_resume_after_kill_9_gives_the_identical_file(sharded, reference, tmp_path):
    out = tmp_path / "k.safetensors"
    script = textwrap.dedent(f"""
        import time
        from reality_stone.codecs import codec_config
        from reality_stone.models.streaming import compress_checkpoint
        compress_checkpoint({str(sharded)!r}, {str(out)!r}, codec_config("rtn", bits=4, group=64),
                            on_tensor=lambda rec: time.sleep(0.3))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    manifest = tmp_path / "k.safetensors.parts" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.is_file() and len(json.loads(manifest.read_text())["done"]) >= 5:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    summary = compress_checkpoint(sharded, out, CFG)
    assert summary["resumed_tensors"] >= 5
    assert _sha(out) == _sha(reference)


def test_a_tampered_part_is_recomputed(sharded, reference, tmp_path):
    out = tmp_path / "t.safetensors"

    def stop(rec, n=[0]):
        n[0] += 1
        if n[0] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_checkpoint(sharded, out, CFG, on_tensor=stop)
    part = sorted((tmp_path / "t.safetensors.parts").glob("*.part"))[0]
    part.write_bytes(b"garbage")
    summary = compress_checkpoint(sharded, out, CFG)
    assert summary["resumed_tensors"] == 5
    assert _sha(out) == _sha(reference)


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_ray_two_workers_give_the_identical_file(sharded, reference, tmp_path):
    if os.environ.get("CI"):
        import ray  # noqa: F401  (CI installs the distributed extra: the Ray path must run there)
    else:
        pytest.importorskip("ray")
    out = tmp_path / "ray.safetensors"
    summary = compress_checkpoint(sharded, out, CFG, workers=2)
    assert summary["workers"] == 2
    assert _sha(out) == _sha(reference)


def test_corrupt_and_truncated_shards_name_the_problem(sharded, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sharded, bad)
    shard = sorted(bad.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"truncated: tensor '.+'"):
        compress_checkpoint(bad, tmp_path / "o.safetensors", CFG)
    shard.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        checkpoint_tensors(bad)
    # values turned to NaN inside a weight: named, nothing written
    t = load_file(str(sorted(sharded.glob("*.safetensors"))[0]))
    name = next(n for n in sorted(t) if n.endswith("query.weight"))
    t[name][0, 0] = float("nan")
    save_file(t, str(sorted(bad.glob("*.safetensors"))[0]))
    shard.write_bytes(sorted(sharded.glob("*.safetensors"))[1].read_bytes())
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        compress_checkpoint(bad, tmp_path / "o.safetensors", CFG)
    assert not (tmp_path / "o.safetensors").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        compress_checkpoint(tmp_path / "nope", tmp_path / "o.safetensors", CFG)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        compress_checkpoint(tmp_path, tmp_path / "o.safetensors", CFG)
