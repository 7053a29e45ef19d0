"""compress(head=...): the LM head compressed with its own config; a tied head stays one matrix
that the embedding reads (CompressedEmbedding) — in memory, in the file (format v3) and in the
Decoder; bad input is refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import reality_stone as rs
from hostile_files import join, resign, split
from reality_stone.codecs import codec_config
from reality_stone.evaluation.loaders import tiny_bert, tiny_llama
from reality_stone.models import read_metadata
from reality_stone.nn import CompressedEmbedding, CompressedLinear

INT8 = codec_config("rtn", bits=8, group=64, symmetric=True)
BODY = codec_config("rtn", bits=4, group=64)


def _ids(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_a_tied_head_is_compressed_once_and_the_embedding_reads_it():
    model = tiny_llama()
    head_weight = model.lm_head.weight.detach().clone()
    reference = tiny_llama()
    rs.compress(reference, BODY)  # the same body, head dense
    report = rs.compress(model, BODY, head=INT8)
    assert isinstance(model.lm_head, CompressedLinear) and isinstance(model.model.embed_tokens, CompressedEmbedding)
    assert model.model.embed_tokens.encoded is model.lm_head.encoded  # one matrix
    assert "lm_head" not in report.skipped and report.layers[-1].name == "lm_head"
    assert not any(p.numel() == head_weight.numel() for p in model.parameters())  # no dense copy left
    # the embedding's rows are the decoded matrix's rows, within int8 rounding of the dense ones
    ids = _ids()
    rows = model.model.embed_tokens(ids)[0]
    assert torch.equal(rows, model.lm_head.encoded.decode()[ids[0]])
    assert (rows - head_weight[ids[0]]).abs().max() <= 0.5 / 127 * head_weight.abs().max() * 1.01
    # logits: close to the dense-head model, at int8 rounding distance
    a, b = _logits(model, ids), _logits(reference, ids)
    assert 0 < (a - b).abs().max() < 0.05 * b.abs().max()


def test_an_untied_head_is_compressed_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=False)).eval()
    rs.compress(model, BODY, head=INT8)
    assert isinstance(model.lm_head, CompressedLinear) and type(model.model.embed_tokens) is nn.Embedding


def test_a_model_with_a_compressed_tied_head_saves_loads_and_decodes(tmp_path):
    model = tiny_llama()
    rs.compress(model, BODY, head=INT8)
    path = tmp_path / "m.safetensors"
    rs.save(model, path)
    meta = read_metadata(path)
    assert meta["format_version"] == 3 and meta["embeddings"] == {"model.embed_tokens": "lm_head"}
    assert not any(k.startswith(("model.embed_tokens.", "lm_head.weight")) for k in meta["header"])
    loaded = rs.load(path)
    assert loaded.model.embed_tokens.encoded is loaded.lm_head.encoded
    ids = _ids(20)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    dec = rs.Decoder(loaded)
    torch.testing.assert_close(dec.logits(ids[0]), _logits(loaded, ids)[0, -2:], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ref = loaded.generate(ids[:, :6], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(dec.generate(ids[0, :6], 8), ref)
    # files without the feature stay version 2
    plain = tiny_llama()
    rs.compress(plain, BODY)
    rs.save(plain, tmp_path / "p.safetensors")
    assert read_metadata(tmp_path / "p.safetensors")["format_version"] == 2


def _rewrite(src, dst, edit):
    header, body = split(src.read_bytes())
    edit(header["__metadata__"])
    dst.write_bytes(join(resign(header, body), body))


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    model = tiny_llama()
    rs.compress(model, BODY, head=INT8)
    path = tmp_path_factory.mktemp("head") / "m.safetensors"
    rs.save(model, path)
    return path


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(embeddings=json.dumps({"model.embed_tokens": "nope"})), "must name a compressed layer"),
    (lambda m: m.update(embeddings=json.dumps(["lm_head"])), "'embeddings' must be an object"),
    (lambda m: m.update(format_version="2"), "needs format version 3"),
    (lambda m: m.pop("embeddings"), "corrupt metadata"),
    (lambda m: m.update(embeddings=json.dumps({"model.norm": "lm_head"})), "not an embedding of the shape"),
    (lambda m: m.update(embeddings=json.dumps({"model.nothing": "lm_head"})), "has no embedding"),
    (lambda m: m.update(embeddings=json.dumps({"model.layers.0.mlp.up_proj": "lm_head"})), "also listed"),
], ids=["unknown-layer", "not-an-object", "v2-with-field", "v3-without", "not-embedding", "missing", "compressed"])
def test_bad_embeddings_metadata_is_refused(head_file, tmp_path, edit, match):
    bad = tmp_path / "bad.safetensors"
    _rewrite(head_file, bad, edit)
    with pytest.raises(ValueError, match=match):
        rs.load(bad)


def test_bad_head_arguments_are_refused():
    with pytest.raises(ValueError, match="needs calibration"):
        rs.compress(tiny_llama(), BODY, head=codec_config("gptq"))
    with pytest.raises(ValueError, match="selected by include/skip and by head"):
        rs.compress(tiny_llama(), BODY, head=INT8, skip=(), skip_tied=False)
    with pytest.raises(ValueError, match="get_output_embeddings"):
        rs.compress(tiny_bert(), BODY, head=INT8)
    with pytest.raises(ValueError, match="codec config"):
        rs.compress(tiny_llama(), BODY, head="int8")


def test_compressed_embedding_lookups_and_errors(tmp_path):
    W = torch.randn(50, 64)
    enc = INT8.encode(W)
    emb = CompressedEmbedding(enc)
    ids = torch.tensor([[0, 49, 7], [7, 7, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 64) and torch.equal(out[0, 2], out[1, 0])
    assert torch.equal(out.reshape(-1, 64), enc.decode()[ids.reshape(-1)])
    with pytest.raises(IndexError):
        emb(torch.tensor([50]))
    with pytest.raises(IndexError):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError):
        emb(torch.tensor([1.0]))
    # an embedding that reads no CompressedLinear's matrix cannot be stored
    lonely = nn.Sequential(CompressedEmbedding(enc), nn.Linear(64, 4))
    with pytest.raises(ValueError, match="no CompressedLinear"):
        rs.save(lonely, tmp_path / "never.safetensors")
    assert not list(tmp_path.iterdir())


def test_the_cli_compresses_the_head(tmp_path):
    from typer.testing import CliRunner

    from reality_stone.cli import app
    from reality_stone.evaluation.loaders import load_tokenizer

    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    load_tokenizer("smollm2").save_pretrained(folder)  # any tokenizer: only compress runs
    out = tmp_path / "tiny.rs.safetensors"
    r = CliRunner().invoke(app, ["compress", str(folder), "--opt", "group=64", "--head-bits", "8", "-o", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["skipped"] == [] and summary["layers"][-1]["name"] == "lm_head"
    assert read_metadata(out)["embeddings"] == {"model.embed_tokens": "lm_head"}
    r = CliRunner().invoke(app, ["compress", str(folder), "--head-bits", "1", "-o", str(out)])
    assert r.exit_code == 2


def test_a_streamed_checkpoint_compresses_its_head_as_the_in_memory_call_does(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = _ids(12)
    for tied in (True, False):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=tied)).eval()
        folder = tmp_path / f"tiny-{tied}"
        model.save_pretrained(folder)
        out = tmp_path / f"streamed-{tied}.safetensors"
        rs.compress_checkpoint(folder, out, BODY, head=INT8)
        meta = read_metadata(out)
        assert "lm_head" in meta["compressed"] and "lm_head.weight" not in meta["aliases"]
        assert meta["embeddings"] == ({"model.embed_tokens": "lm_head"} if tied else {})
        rs.compress(model, BODY, head=INT8)
        assert torch.equal(_logits(rs.load(out), ids), _logits(model, ids))
    with pytest.raises(ValueError, match="needs calibration"):  # the head is encoded data-free, streamed too
        rs.compress_checkpoint(folder, tmp_path / "c.safetensors", codec_config("gptq"),
                               head=codec_config("gptq"), calibration=_ids(64)[0][None], tokens=64, seq_len=32)
    with pytest.raises(ValueError, match="by include/skip and by head"):
        rs.compress_checkpoint(folder, tmp_path / "d.safetensors", BODY, head=INT8, skip=())
