"""Save → load is exact; corrupt, truncated and newer files raise clear errors."""

import json
import random
import struct

import pytest
import torch
from torch import nn

import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.models import read_metadata
from reality_stone.evaluation.loaders import tiny_bert, tiny_llama
from reality_stone.nn import CompressedLinear


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory):
    model = tiny_llama()
    report = rs.compress(model, codec_config("rtn", bits=4, group=32), per_layer={"*mlp*": codec_config("hqq", bits=3, group=64)})
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    rs.save(model, path, source="tiny")
    return model, report, path


def test_round_trip_bit_identical_weights_and_logits(llama_file):
    model, report, path = llama_file
    assert report.skipped == ["lm_head"]  # tied to the embeddings: kept dense, stored once
    loaded = rs.load(path)
    for name, mod in model.named_modules():
        if isinstance(mod, CompressedLinear):
            other = loaded.get_submodule(name)
            assert isinstance(other, CompressedLinear)
            assert torch.equal(other.encoded.decode(), mod.encoded.decode())
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    meta = read_metadata(path)
    assert meta["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert meta["source"] == "tiny" and meta["architecture"]["class"] == "LlamaForCausalLM"
    assert {v["codec"] for v in meta["compressed"].values()} == {"rtn", "hqq"}


def test_plain_module_needs_a_template(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    rs.compress(model, codec_config("lowrank", rank=4))
    path = rs.save(model, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="pass `model=`"):
        rs.load(path)
    template = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    loaded = rs.load(path, model=template)
    x = torch.randn(3, 16)
    assert torch.equal(loaded(x), model(x))
    wrong = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 9))
    with pytest.raises(ValueError, match=r"'2.bias' has shape \[8\], the model expects \[9\]"):
        rs.load(path, model=wrong)


def test_bert_round_trip(tmp_path):
    model = tiny_bert()
    rs.compress(model, codec_config("rbe", block=16, bpw=3.0))
    path = rs.save(model, tmp_path / "bert.safetensors")
    loaded = rs.load(path)
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, loaded(ids).last_hidden_state)


def test_no_half_written_file_on_failure(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4))
    target = tmp_path / "out.safetensors"
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(rs.models.format, "write_safetensors", boom)
    with pytest.raises(OSError):
        rs.save(model, target)
    assert list(tmp_path.iterdir()) == []


def test_truncated_version_bumped_and_foreign_files(llama_file, tmp_path):
    _, _, path = llama_file
    data = path.read_bytes()
    for cut in (0, 7, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            rs.load(bad)
    # bump the version inside the header (same length) -> refused by version
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["format_version"] = "4"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw))
    assert len(raw) == n
    bumped = tmp_path / "v4.safetensors"
    bumped.write_bytes(data[:8] + raw + data[8 + n :])
    with pytest.raises(ValueError, match="format version 4"):
        rs.load(bumped)
    foreign = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a Reality Stone model file"):
        rs.load(foreign)
    with pytest.raises(FileNotFoundError):
        rs.load(tmp_path / "missing.safetensors")


def test_fuzz_200_mutations(llama_file, tmp_path):
    model, _, path = llama_file
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
    rng = random.Random(0)
    outcomes = {"error": 0, "identical": 0}
    target = tmp_path / "fuzz.safetensors"
    for i in range(200):
        mutated = bytearray(data)
        # half the mutations hit the header (JSON, offsets, metadata), half the tensor data
        lo, hi = (0, 8 + n) if i % 2 else (8 + n, len(data))
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(lo, hi)] = rng.randrange(256)
        target.write_bytes(bytes(mutated))
        try:
            loaded = rs.load(target)
        except ValueError:
            outcomes["error"] += 1
            continue
        # a mutation can only be accepted if it changed nothing that matters (e.g. header padding)
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, expected)
        outcomes["identical"] += 1
    assert outcomes["error"] >= 150
