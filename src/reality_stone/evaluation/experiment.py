"""Run a list of compression configurations on one model and measure each (the demo and the
model-level benchmarks use this).

One quality path: each configuration is compressed here, saved with `reality_stone.save`, and
scored by ``reality-stone eval FILE --json`` in a fresh process — the file a user would ship,
loaded as a user would load it, through the same fused kernels, with that process's own peak
memory.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reality_stone.codecs.base import CodecConfig
from reality_stone.evaluation.metrics import model_nbytes
from reality_stone.models.compress import compress
from reality_stone.models.format import save

__all__ = ["Spec", "evaluate_file", "evaluate_specs"]


@dataclass(frozen=True)
class Spec:
    """One row of a results table: ``config`` None means dense; ``dense_dtype`` fp32/fp16 storage."""

    label: str
    config: CodecConfig | None = None
    dense_dtype: str = "fp32"
    per_layer: tuple[tuple[str, CodecConfig], ...] = ()
    calibrated: bool = False  # data-aware: compress with `evaluate_specs`' calibration set
    sequential: bool = True  # calibrated: block by block (else one pass over the dense model)
    head: CodecConfig | None = None  # the LM head's own config (`compress(head=...)`), None: dense


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
    report = compress(model, spec.config, per_layer=dict(spec.per_layer), head=spec.head, **kw)
    return report.to_dict(), time.perf_counter() - t0


def _fp16_file_bytes(model: nn.Module, path: Path, loaded) -> int:
    """Size of `model` saved with its floating-point tensors in fp16 (the file is deleted)."""
    with torch.no_grad():
        for p in model.parameters():  # .data: transformers refuses .half() on a model loaded from GGUF
            if p.is_floating_point():
                p.data = p.data.half()
    save(model, path, source=loaded.name, tokenizer=loaded.tokenizer)
    size = path.stat().st_size
    path.unlink()
    return size


def evaluate_file(path: str | Path, *, texts=("shakespeare", "news"), max_tokens: int = 2048, context: int = 512,
                  stride: int = 256, speed: bool = True, encoder: bool = False) -> dict:
    """``reality-stone eval PATH --json`` in a fresh process (same thread count as this one).
    Causal LMs: ``ppl_<text>``, ``tokens_scored``, ``tokens_per_s``; encoders: embedding fidelity
    against the file's source model; always ``peak_rss_bytes`` of that process."""
    cmd = [sys.executable, "-m", "reality_stone.cli", "eval", str(path), "--json", "--threads",
           str(torch.get_num_threads())]
    if encoder:
        cmd += ["--base", "source", "--no-speed"]
    else:
        cmd += ["--tokens", str(max_tokens), "--context", str(context), "--stride", str(stride)]
        cmd += [a for t in texts for a in ("--text", t)] + ([] if speed else ["--no-speed"])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"reality-stone eval {path} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def evaluate_specs(loaded, specs: list[Spec], *, texts=("shakespeare", "news"), max_tokens: int = 2048,
                   context: int = 512, stride: int = 256, speed: bool = True, progress=None, calibration=None,
                   calibration_tokens: int = 8192) -> list[dict]:
    """Compress a fresh copy of ``loaded.model`` per spec, save it, and score the file in a fresh
    process (`evaluate_file`).

    Causal LMs: perplexity on each held-out text, decode tokens/s. Encoders: embedding fidelity
    against the dense model on Lee-corpus sentences. Always: bits per weight of the compressed
    layers, weight bytes, file bytes, compression seconds (calibration included for
    ``Spec.calibrated`` rows, which use ``calibration``: see `reality_stone.models.compress`),
    peak RSS of the scoring process, each compressed layer's relative weight error
    (``layer_rel_error``). fp16-storage rows round every weight to fp16 and are scored in fp32
    (fp16 matmuls are no CPU path): their weight bytes count 2 per weight and their file bytes are
    those of the same model saved in fp16.
    """
    rows = []
    dense_bytes = model_nbytes(loaded.model)
    with tempfile.TemporaryDirectory(prefix="rs-eval-") as tmp:
        for spec in specs:
            if progress:
                progress(spec.label)
            model = copy.deepcopy(loaded.model)
            report, seconds = _apply(model, spec, loaded.tokenizer, calibration, calibration_tokens)
            fp16 = spec.dense_dtype == "fp16" and not spec.config
            row = dict(label=spec.label, codec=spec.config.codec_name if spec.config else spec.dense_dtype,
                       config=spec.config.to_dict() if spec.config else None,
                       bits_per_weight=report.get("bits_per_weight", 16.0 if fp16 else 32.0),
                       weight_bytes=model_nbytes(model) // (2 if fp16 else 1),
                       dense_weight_bytes=dense_bytes, compress_seconds=seconds, calibration=report.get("calibration"),
                       output_error=report.get("output_error"))
            if report.get("layers"):
                row["layer_rel_error"] = {r["name"]: r["rel_error"] for r in report["layers"]}
            path = Path(tmp) / "model.safetensors"
            save(model, path, source=loaded.name, tokenizer=loaded.tokenizer)
            row["file_bytes"] = path.stat().st_size
            if fp16:  # the file one would ship stores fp16 tensors; it is scored through the fp32 one
                row["file_bytes"] = _fp16_file_bytes(model, Path(tmp) / "fp16.safetensors", loaded)
            del model
            result = evaluate_file(path, texts=texts, max_tokens=max_tokens, context=context, stride=stride,
                                   speed=speed, encoder=loaded.kind != "causal-lm")
            keep = [k for k in result if k.startswith("ppl_") or k in ("tokens_scored", "tokens_per_s", "peak_rss_bytes",
                                                                        "cosine_mean", "cosine_min", "spearman")]
            row.update({k: result[k] for k in keep})
            path.unlink()
            rows.append(row)
    return rows
