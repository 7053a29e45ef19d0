"""Load the real models from their PyPI packages with transformers (offline), or build tiny
real-architecture models in code for tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reality_stone.data.pretrained import SMOLLM2_FILE, minilm_dir, qwen_coder_gguf, smollm2_gguf
from reality_stone.models.gguf_checkpoint import quiet_gguf

__all__ = ["LoadedModel", "is_model_folder", "load_minilm", "load_model", "load_qwen_coder", "load_smollm2", "load_tokenizer",
           "save_model_folder",
           "tiny_bert", "tiny_llama"]

MODELS = ("smollm2", "minilm", "qwen2.5-coder-0.5b")


@dataclass
class LoadedModel:
    name: str
    model: nn.Module
    tokenizer: object
    kind: str  # "causal-lm" or "encoder"


def _offline() -> None:
    # Hub access fails here by design; make transformers fail fast instead of retrying,
    # and keep its loading bars off stderr (our CLI draws its own progress).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct (LlamaForCausalLM, Q4_1-dequantised to fp32) and its tokenizer."""
    _offline()
    loaded = _from_gguf(smollm2_gguf())
    return LoadedModel("smollm2", loaded.model, loaded.tokenizer, "causal-lm")


def load_qwen_coder() -> LoadedModel:
    """Qwen2.5-Coder-0.5B-Instruct (Qwen2ForCausalLM, ≈ 494 M parameters, Q4_K_M GGUF → fp32)."""
    _offline()
    loaded = _from_gguf(qwen_coder_gguf())
    return LoadedModel("qwen2.5-coder-0.5b", loaded.model, loaded.tokenizer, "causal-lm")


def load_tokenizer(name: str):
    """The tokenizer of a bundled model (for files saved with ``source=name`` and no tokenizer)."""
    _offline()
    from transformers import AutoTokenizer

    if name == "smollm2":
        path = smollm2_gguf()
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=SMOLLM2_FILE)
    if name == "minilm":
        return AutoTokenizer.from_pretrained(minilm_dir())
    if name == "qwen2.5-coder-0.5b":
        path = qwen_coder_gguf()
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def load_minilm() -> LoadedModel:
    """all-MiniLM-L6-v2 (BertModel, original fp32 weights) and its tokenizer."""
    _offline()
    from transformers import AutoModel, AutoTokenizer

    d = minilm_dir()
    return LoadedModel("minilm", AutoModel.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d), "encoder")


def _kind(model: nn.Module) -> str:
    return "causal-lm" if type(model).__name__.endswith("ForCausalLM") else "encoder"


def _from_folder(folder: Path) -> LoadedModel:
    """A Hugging Face model folder (``save_pretrained`` layout: config.json + weights + tokenizer)."""
    import json

    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise ValueError(f"{folder}/config.json is not valid JSON ({exc})") from None
    archs = config.get("architectures") or []
    auto = AutoModelForCausalLM if any(str(a).endswith("ForCausalLM") for a in archs) else AutoModel
    try:
        model = auto.from_pretrained(folder, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: transformers could not load this model folder ({str(exc)[:300]})") from None
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        tok = None  # weights without a tokenizer: compress works, text calibration/eval need one
    return LoadedModel(str(folder), model, tok, _kind(model))


def _from_gguf(path: Path) -> LoadedModel:
    """A GGUF file (llama.cpp's format), dequantised to fp32 by transformers, with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_gguf():
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{path}: transformers could not load this GGUF file ({str(exc)[:300]})") from None
    return LoadedModel(str(path), model.eval(), tok, "causal-lm")


def save_model_folder(loaded: LoadedModel, folder: str | Path, *, max_shard_size: str = "5GB") -> Path:
    """``loaded`` as a Hugging Face model folder (config.json, safetensors shards, tokenizer). A model
    read from GGUF is already dequantised to float32 here; transformers refuses to save it while it
    still carries the GGUF quantiser, so that marker is dropped first."""
    folder = Path(folder)
    loaded.model.hf_quantizer = None
    if hasattr(loaded.model.config, "quantization_config"):
        del loaded.model.config.quantization_config
    loaded.model.save_pretrained(folder, max_shard_size=max_shard_size)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(folder)
    return folder


def is_model_folder(path: Path) -> bool:
    """A Hugging Face model folder (has config.json): loaded whole, not streamed."""
    return path.is_dir() and (path / "config.json").is_file()


def load_model(source: str | Path) -> LoadedModel:
    """A model and its tokenizer from ``source``: a bundled name (`MODELS`), a Hugging Face model
    folder (config.json + safetensors, as ``save_pretrained`` writes it) or a ``.gguf`` file."""
    _offline()
    if str(source) in BUNDLED:
        return BUNDLED[str(source)]()
    path = Path(source)
    if is_model_folder(path):
        return _from_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path)
    if path.exists():
        raise ValueError(f"{path}: not a model folder (no config.json) nor a .gguf file")
    raise ValueError(f"unknown model {str(source)!r}: give one of {MODELS}, a Hugging Face model folder or a .gguf file")


BUNDLED = {"smollm2": load_smollm2, "minilm": load_minilm, "qwen2.5-coder-0.5b": load_qwen_coder}


def tiny_llama(seed: int = 0) -> nn.Module:
    """A 2-layer LlamaForCausalLM (hidden 64, GQA 4/2 heads, tied embeddings), random init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    """A 2-layer BertModel (hidden 64), random init."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=64)
    return BertModel(cfg).eval()
