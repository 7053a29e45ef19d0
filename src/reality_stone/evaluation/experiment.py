"""Run a list of compression configurations on one model and measure each (the demo and the
model-level benchmarks use this)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from reality_stone.codecs.base import CodecConfig
from reality_stone.models.compress import compress
from reality_stone.evaluation.metrics import embedding_fidelity, lee_sentences, model_nbytes, perplexity, tokens_per_second
from reality_stone.nn.compressed import decoded_weights

__all__ = ["Spec", "evaluate_specs"]


@dataclass(frozen=True)
class Spec:
    """One row of a results table: ``config`` None means dense; ``dense_dtype`` fp32/fp16 storage."""

    label: str
    config: CodecConfig | None = None
    dense_dtype: str = "fp32"
    per_layer: tuple[tuple[str, CodecConfig], ...] = ()
    calibrated: bool = False  # data-aware: compress with `evaluate_specs`' calibration set
    sequential: bool = True  # calibrated: block by block (else one pass over the dense model)


def _apply(model: nn.Module, spec: Spec, tokenizer, calibration, calibration_tokens: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    if spec.config is None:
        if spec.dense_dtype == "fp16":
            with torch.no_grad():  # fp16 *storage*: round every weight, compute in fp32
                for p in model.parameters():
                    p.copy_(p.half().float())
        return {}, 0.0
    kw = {}
    if spec.calibrated:
        if calibration is None:
            raise ValueError(f"spec {spec.label!r} is calibrated but evaluate_specs got no calibration=")
        kw = dict(calibration=calibration, tokenizer=tokenizer, tokens=calibration_tokens, sequential=spec.sequential)
    report = compress(model, spec.config, per_layer=dict(spec.per_layer), **kw)
    return report.to_dict(), time.perf_counter() - t0


def evaluate_specs(loaded, specs: list[Spec], *, texts=("shakespeare", "news"), max_tokens: int = 2048,
                   context: int = 512, stride: int = 256, speed: bool = True, progress=None, calibration=None,
                   calibration_tokens: int = 8192) -> list[dict]:
    """Evaluate each spec on a fresh copy of ``loaded.model``.

    Causal LMs: perplexity on each held-out text, decode tokens/s. Encoders: embedding
    fidelity against the dense model on Lee-corpus sentences. Always: bits per weight of the
    compressed layers, total weight bytes, compression seconds (calibration included for
    ``Spec.calibrated`` rows, which use ``calibration``: see `reality_stone.models.compress`).
    """
    from reality_stone.data.text import evaluation_text

    rows = []
    sentences = lee_sentences(64) if loaded.kind == "encoder" else None
    dense_bytes = model_nbytes(loaded.model)
    for spec in specs:
        if progress:
            progress(spec.label)
        model = copy.deepcopy(loaded.model)
        report, seconds = _apply(model, spec, loaded.tokenizer, calibration, calibration_tokens)
        row = dict(label=spec.label, codec=spec.config.codec_name if spec.config else spec.dense_dtype,
                   config=spec.config.to_dict() if spec.config else None,
                   bits_per_weight=report.get("bits_per_weight", 16.0 if spec.dense_dtype == "fp16" else 32.0),
                   weight_bytes=(model_nbytes(model) // (2 if spec.dense_dtype == "fp16" and not spec.config else 1)),
                   dense_weight_bytes=dense_bytes, compress_seconds=seconds, calibration=report.get("calibration"),
                   output_error=report.get("output_error"))
        if loaded.kind == "causal-lm":
            # quality through the reference path, each weight decoded once (not per window)
            with decoded_weights(model):
                for name in texts:
                    ppl, n = perplexity(model, loaded.tokenizer, evaluation_text(name), context=context,
                                        stride=stride, max_tokens=max_tokens)
                    row[f"ppl_{name}"] = ppl
                    row["tokens_scored"] = n
            if speed:
                row["tokens_per_s"] = tokens_per_second(model, loaded.tokenizer)
        else:
            row.update(embedding_fidelity(loaded.model, model, loaded.tokenizer, sentences))
        rows.append(row)
        del model
    return rows
