"""A GGUF file streamed tensor by tensor and block by block: the same weights and bytes as the whole
model loaded by transformers, and clear errors for damaged files."""

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.data.pretrained import smollm2_gguf
from reality_stone.evaluation.loaders import load_model
from reality_stone.models.gguf_checkpoint import gguf_tensors
from reality_stone.models.streaming import _read, compress_checkpoint


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    return path, load_model(str(path))


@pytest.mark.slow  # reads and dequantises every tensor of SmolLM2's GGUF twice (ours and transformers')
def test_every_tensor_is_what_transformers_loads(smollm2):
    path, loaded = smollm2
    ref = loaded.model.state_dict()
    tensors = gguf_tensors(path)
    assert {t.name for t in tensors} == set(ref) - {"lm_head.weight"}  # tied: GGUF stores the embeddings once
    for t in tensors:
        x = _read(t)
        assert x.dtype == torch.float32 and tuple(x.shape) == t.shape
        assert torch.equal(x, ref[t.name]), t.name  # dequantised and q/k re-permuted as transformers does


@pytest.mark.slow
def test_calibrated_blocks_from_gguf_equal_the_in_memory_file(smollm2, tmp_path):
    path, loaded = smollm2
    gptq = codec_config("gptq", bits=3, group=32)
    ids = torch.randint(0, loaded.model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    kw = dict(calibration=ids, tokens=ids.numel(), seq_len=32, include="model.layers.[01].*")
    summary = compress_checkpoint(path, tmp_path / "streamed.safetensors", gptq, source="smollm2", **kw)
    assert summary["compressed_layers"] == 14 and summary["report"]["calibration"]["streamed_blocks"]
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        rs.compress(model, gptq, **kw)
    ref = rs.save(model, tmp_path / "in_memory.safetensors", source="smollm2")
    assert _sha(tmp_path / "streamed.safetensors") == _sha(ref)


@pytest.mark.slow
def test_data_free_stream_of_gguf_loads_and_matches_in_memory(smollm2, tmp_path):
    path, loaded = smollm2
    rtn = codec_config("rtn", bits=4, group=128)
    out = tmp_path / "rtn.safetensors"
    summary = compress_checkpoint(path, out, rtn, source="smollm2")
    assert summary["compressed_layers"] == 210  # 30 blocks × 7; the tied LM head stays the embeddings
    streamed = rs.load(out)  # the tie is recorded, so the model loads whole
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        rs.compress(model, rtn)
        ids = torch.tensor([[1, 504, 3458, 314, 253, 1345]])
        torch.testing.assert_close(streamed(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_truncated_gguf_names_the_tensor_it_cuts(tmp_path):
    src = smollm2_gguf()
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as fh, open(cut, "wb") as out:
        out.write(fh.read(src.stat().st_size // 2))
    with pytest.raises(ValueError, match=r"cut\.gguf.*(truncated|not a readable GGUF)"):
        gguf_tensors(cut)
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        compress_checkpoint(cut, tmp_path / "out.safetensors", codec_config("rtn", bits=4, group=128))
    assert not (tmp_path / "out.safetensors").exists()


def test_a_gguf_with_a_corrupt_header_is_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    shutil.copyfile(smollm2_gguf(), bad)
    with open(bad, "r+b") as fh:
        fh.seek(8)
        fh.write(b"\xff" * 16)  # tensor and key-value counts: absurd
    with pytest.raises(ValueError, match=r"bad\.gguf"):
        gguf_tensors(bad)
