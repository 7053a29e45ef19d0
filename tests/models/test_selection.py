"""One layer-selection policy: rs.compress, compress_checkpoint and the CLI pick the same layers."""

import pytest
import torch
from safetensors.torch import save_file

import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.evaluation.loaders import tiny_llama
from reality_stone.models.format import read_metadata
from reality_stone.models.selection import DEFAULT_SKIP, checkpoint_selector, select_layers
from reality_stone.models.streaming import checkpoint_tensors

CFG = codec_config("rtn", bits=4, group=32)


def _untied(seed=0):
    model = tiny_llama(seed)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


@pytest.mark.parametrize("skip", [DEFAULT_SKIP, (), ("lm_head", "*.mlp.*")])
@pytest.mark.parametrize("tied", [True, False])
def test_checkpoint_and_model_select_the_same_layers(tmp_path, skip, tied):
    model = tiny_llama() if tied else _untied()
    model.save_pretrained(tmp_path / "ckpt")
    chosen, _ = select_layers(model, skip=skip)
    select = checkpoint_selector(tmp_path / "ckpt", skip=skip)
    picked = {t.name for t in checkpoint_tensors(tmp_path / "ckpt") if select(t.name, t.shape)}
    assert picked == {f"{name}.weight" for name, _ in chosen}
    assert ("lm_head.weight" in picked) == (not tied and "lm_head" not in skip)


def test_the_lm_head_stays_dense_by_default_on_every_path(tmp_path):
    model = _untied()
    model.save_pretrained(tmp_path / "ckpt")
    report = rs.compress(model, CFG)
    assert "lm_head" in report.skipped and len(report.layers) == 14
    out = tmp_path / "streamed.safetensors"
    summary = rs.compress_checkpoint(tmp_path / "ckpt", out, CFG)
    assert summary["compressed_layers"] == 14
    assert "lm_head" not in read_metadata(out)["compressed"]


def test_without_config_json_names_decide(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=g),
               "model.embed_tokens.weight": torch.randn(50, 16, generator=g),
               "model.norm.weight": torch.randn(16, generator=g),
               "lm_head.weight": torch.randn(50, 16, generator=g)}, str(tmp_path / "model.safetensors"))
    select = checkpoint_selector(tmp_path / "model.safetensors")
    picked = {t.name for t in checkpoint_tensors(tmp_path / "model.safetensors") if select(t.name, t.shape)}
    assert picked == {"model.layers.0.mlp.up_proj.weight"}
    select = checkpoint_selector(tmp_path / "model.safetensors", skip=())
    assert select("lm_head.weight", (50, 16))
