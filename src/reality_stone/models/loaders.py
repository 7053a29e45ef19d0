"""Load the real models from their PyPI packages with transformers (offline), or build tiny
real-architecture models in code for tests."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from torch import nn

from reality_stone.data.pretrained import SMOLLM2_FILE, minilm_dir, smollm2_gguf

__all__ = ["LoadedModel", "load_minilm", "load_model", "load_smollm2", "load_tokenizer", "tiny_bert", "tiny_llama"]

MODELS = ("smollm2", "minilm")


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    # transformers' GGUF converter draws its own tqdm bar on every load; silence just that one.
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - module moved: the bar is cosmetic
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=SMOLLM2_FILE)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
    return LoadedModel("smollm2", model.eval(), tok, "causal-lm")


def load_tokenizer(name: str):
    """The tokenizer of a known model (for files saved with ``source=name``)."""
    _offline()
    from transformers import AutoTokenizer

    if name == "smollm2":
        path = smollm2_gguf()
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=SMOLLM2_FILE)
    if name == "minilm":
        return AutoTokenizer.from_pretrained(minilm_dir())
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def load_minilm() -> LoadedModel:
    """all-MiniLM-L6-v2 (BertModel, original fp32 weights) and its tokenizer."""
    _offline()
    from transformers import AutoModel, AutoTokenizer

    d = minilm_dir()
    return LoadedModel("minilm", AutoModel.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d), "encoder")


def load_model(name: str) -> LoadedModel:
    """``"smollm2"`` (the default causal LM) or ``"minilm"``."""
    if name == "smollm2":
        return load_smollm2()
    if name == "minilm":
        return load_minilm()
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


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
