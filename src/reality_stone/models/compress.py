"""Whole-model compression: replace ``nn.Linear`` layers in place with `CompressedLinear`.

torchao-style: ``compress(model, config)`` mutates the model and returns a per-layer report.
Which layers: every ``nn.Linear`` (Llama q/k/v/o/gate/up/down and BERT query/key/value/dense
are ``nn.Linear`` in transformers) whose qualified name matches ``include`` and no
``skip`` pattern (fnmatch globs); ``per_layer`` maps patterns to other configs (first match
wins). Embeddings and norms are never touched. A Linear whose weight is *shared* with
another module (tied ``lm_head`` ↔ embeddings) is skipped by default: compressing it would
untie it and store the matrix twice.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from reality_stone.codecs import relative_error, sqnr_db
from reality_stone.codecs.base import CodecConfig
from reality_stone.nn.compressed import CompressedLinear

__all__ = ["CompressionReport", "LayerReport", "compress", "compressible_layers"]


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    codec: str
    nbytes: int
    dense_bytes_fp32: int
    ratio_fp32: float
    bits_per_weight: float
    rel_error: float
    sqnr_db: float
    seconds: float


@dataclass
class CompressionReport:
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def compressed_bytes(self) -> int:
        return sum(r.nbytes for r in self.layers)

    @property
    def dense_bytes_fp32(self) -> int:
        return sum(r.dense_bytes_fp32 for r in self.layers)

    @property
    def bits_per_weight(self) -> float:
        n = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return 8 * self.compressed_bytes / n if n else float("nan")

    def to_dict(self) -> dict:
        return dict(layers=[asdict(r) for r in self.layers], skipped=self.skipped,
                    compressed_bytes=self.compressed_bytes, dense_bytes_fp32=self.dense_bytes_fp32,
                    bits_per_weight=self.bits_per_weight)


def _shared_weights(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def compressible_layers(model: nn.Module, include: str = "*", skip: tuple[str, ...] = (), skip_tied: bool = True):
    """(name, module) of the Linear layers `compress` would touch, and the names it skips."""
    shared = _shared_weights(model) if skip_tied else set()
    chosen, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if not fnmatch.fnmatchcase(name, include) or any(fnmatch.fnmatchcase(name, p) for p in skip):
            skipped.append(name)
        elif id(mod.weight) in shared:
            skipped.append(name)
        else:
            chosen.append((name, mod))
    return chosen, skipped


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def compress(
    model: nn.Module,
    config: CodecConfig,
    *,
    include: str = "*",
    skip: tuple[str, ...] = (),
    per_layer: dict[str, CodecConfig] | None = None,
    skip_tied: bool = True,
    progress: bool = False,
    encode_fn=None,
) -> CompressionReport:
    """Replace the selected ``nn.Linear`` layers of ``model`` with `CompressedLinear`, in place.

    ``encode_fn(name, linear, config) -> Encoded`` overrides how a layer is encoded (the
    data-aware codecs use it to pass activation statistics); default ``config.encode(weight)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chosen, skipped = compressible_layers(model, include, skip, skip_tied)
    if not chosen:
        raise ValueError("no nn.Linear layer matched: nothing to compress (check include/skip patterns)")
    report = CompressionReport(skipped=skipped)
    iterator = chosen
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(chosen, desc="compressing", unit="layer")
        iterator = bar
    for name, lin in iterator:
        cfg = next((c for pat, c in (per_layer or {}).items() if fnmatch.fnmatchcase(name, pat)), config)
        t0 = time.perf_counter()
        enc = encode_fn(name, lin, cfg) if encode_fn else cfg.encode(lin.weight.detach())
        dt = time.perf_counter() - t0
        W = lin.weight.detach()
        D = enc.decode(torch.float32)
        report.layers.append(LayerReport(
            name=name, shape=tuple(W.shape), codec=cfg.codec_name, nbytes=enc.nbytes, dense_bytes_fp32=W.numel() * 4,
            ratio_fp32=enc.compression_ratio(), bits_per_weight=enc.bits_per_weight(),
            rel_error=relative_error(W, D), sqnr_db=sqnr_db(W, D), seconds=dt))
        _set_submodule(model, name, CompressedLinear(enc, lin.bias))
    if bar is not None:
        bar.close()
    return report
