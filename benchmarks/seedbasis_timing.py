"""Whole-model compression time of the seed-basis presets on SmolLM2-135M, machine otherwise idle.

    python benchmarks/seedbasis_timing.py   # -> results/seedbasis_timing.{json,md}

The issue's budget is "the whole model in under 5 minutes on this 2-core machine". This
script measures exactly that, alone (benchmarks/seedbasis.py also reports seconds, but it
evaluates as it goes and shares the machine with whatever else runs): calibration (8192
tokens) once, then every compressible layer of the model per preset, data-aware and
data-free, 2 threads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from reality_stone.codecs.seedbasis import preset
from reality_stone.data.text import calibration_text
from reality_stone.models import compressible_layers
from reality_stone.models.calibration import collect_hessians
from reality_stone.models.loaders import load_smollm2

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    torch.set_num_threads(2)
    loaded = load_smollm2()
    layers = compressible_layers(loaded.model)[0]
    t0 = time.perf_counter()
    H = collect_hessians(loaded.model, loaded.tokenizer, calibration_text(), layers=[n for n, _ in layers], n_tokens=8192)
    calib = time.perf_counter() - t0
    n_weights = sum(m.weight.numel() for _, m in layers)
    rows = []
    for budget in ("4.25", "3.5", "2.5"):
        cfg = preset(budget)
        for mode in ("data-aware", "data-free"):
            t0 = time.perf_counter()
            with torch.no_grad():
                for name, m in layers:
                    cfg.encode(m.weight.detach(), hessian=H[name] if mode == "data-aware" else None)
            secs = time.perf_counter() - t0
            rows.append(dict(budget=budget, mode=mode, seconds=secs, seconds_per_mweight=secs / n_weights * 1e6,
                             calibration_seconds=calib if mode == "data-aware" else 0.0))
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seedbasis_timing.json").write_text(json.dumps(dict(weights=n_weights, rows=rows), indent=2) + "\n")
    lines = [f"Whole SmolLM2-135M ({n_weights / 1e6:.1f} M weights in {len(layers)} layers), 2 threads, nothing else running:",
             "", "| preset | mode | compress seconds | + calibration | total | s / M weights |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['budget']} | {r['mode']} | {r['seconds']:.0f} | {r['calibration_seconds']:.0f} | "
              f"{r['seconds'] + r['calibration_seconds']:.0f} | {r['seconds_per_mweight']:.2f} |" for r in rows]
    (RESULTS / "seedbasis_timing.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
