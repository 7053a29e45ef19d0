"""Which layers get compressed: one policy for every path (`rs.compress`, `compress_checkpoint`,
the CLI).

A layer is compressed when

* it is linear: an ``nn.Linear`` of the model (Llama q/k/v/o/gate/up/down and BERT
  query/key/value/dense are ``nn.Linear`` in transformers). For a checkpoint read tensor by
  tensor, the architecture in its config.json is built on the meta device (no weights, no
  memory) and its ``nn.Linear`` modules are the linear layers; a checkpoint without a
  config.json falls back to names: a 2-D ``<module>.weight`` that is no embedding or norm;
* its module name matches ``include`` and none of ``skip`` (fnmatch globs);
* its weight is not shared with another module (a tied LM head is the embedding matrix:
  compressing one copy would untie them and store the matrix twice).

Embeddings and norms are never touched. ``DEFAULT_SKIP`` keeps the output head dense, as
GPTQModel and llm-compressor do by default: it is one layer, the most sensitive one, and on
small models a large share of the weights (Qwen2.5-0.5B untied: 136 M of 630 M); pass
``skip=()`` to compress it too.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Callable

from torch import nn

__all__ = ["DEFAULT_SKIP", "checkpoint_selector", "matches", "select_layers"]

DEFAULT_SKIP: tuple[str, ...] = ("lm_head",)


def matches(name: str, include: str, skip: tuple[str, ...]) -> bool:
    """``name`` matches ``include`` and no ``skip`` glob."""
    return fnmatch.fnmatchcase(name, include) and not any(fnmatch.fnmatchcase(name, p) for p in skip)


def _shared_weights(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def select_layers(model: nn.Module, include: str = "*", skip: tuple[str, ...] = DEFAULT_SKIP,
                  skip_tied: bool = True) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """(name, module) of the ``nn.Linear`` layers to compress, and the names of those kept dense."""
    shared = _shared_weights(model) if skip_tied else set()
    chosen, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if not matches(name, include, skip) or id(mod.weight) in shared:
            skipped.append(name)
        else:
            chosen.append((name, mod))
    return chosen, skipped


def _meta_model(config_path: Path) -> nn.Module | None:
    """The architecture a Hugging Face config.json names (``architectures[0]``, else AutoModel),
    built on the meta device; None if there is no config or transformers cannot build it."""
    if not config_path.is_file():
        return None
    try:
        import torch
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(str(config_path.parent))
        arch = (json.loads(config_path.read_text()).get("architectures") or [None])[0]
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        with torch.device("meta"):
            model = cls(cfg) if cls is not None else transformers.AutoModel.from_config(cfg)
        model.tie_weights()
        return model
    except Exception:  # noqa: BLE001  (any failure to build: fall back to names, never crash a compression)
        return None


def _by_name(name: str, shape: tuple[int, ...]) -> bool:
    low = name.lower()
    return (len(shape) == 2 and name.endswith(".weight") and min(shape) >= 8
            and not any(k in low for k in ("embed", "norm")))


def checkpoint_model(src: str | Path) -> nn.Module | None:
    """The architecture of checkpoint ``src`` on the meta device: from a .gguf file's metadata, or
    the config.json of the folder (or of the file's folder); None without one."""
    from reality_stone.models.gguf_checkpoint import gguf_meta_model, is_gguf

    src = Path(src)
    return gguf_meta_model(src) if is_gguf(src) else _meta_model((src if src.is_dir() else src.parent) / "config.json")


def checkpoint_selector(src: str | Path, include: str = "*", skip: tuple[str, ...] = DEFAULT_SKIP,
                        skip_tied: bool = True) -> Callable[[str, tuple[int, ...]], bool]:
    """``select(tensor_name, shape)`` for the tensors of checkpoint ``src`` (a folder or a file in
    one): the same layers `select_layers` picks on the model, read from its config.json."""
    model = checkpoint_model(src)
    if model is not None:
        chosen, _ = select_layers(model, include, skip, skip_tied)
        weights = {f"{name}.weight": tuple(mod.weight.shape) for name, mod in chosen}
        # a checkpoint of the bare model stores "encoder.…" where the class says "bert.encoder.…"
        prefix = f"{getattr(model, 'base_model_prefix', '')}."
        weights |= {n[len(prefix):]: s for n, s in weights.items() if prefix != "." and n.startswith(prefix)}
        return lambda name, shape: weights.get(name) == tuple(shape)
    return lambda name, shape: _by_name(name, shape) and matches(name[: -len(".weight")], include, skip)
