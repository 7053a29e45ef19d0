"""Forward+backward time of ButterflyLinear and HyperButterfly vs nn.Linear (CPU, same run).

    python benchmarks/layers_speed.py   # -> results/layers_speed.{json,md}

N = 256 … 8192, batch 1 and 64, float32, 2 threads. Each timing is the median of repeated
forward + backward passes (input gradient and parameter gradients), interleaved with the
dense layer so drifts hit both. FLOPs for comparison: dense 2N² per row, butterfly
log2(N)·N·4 (every 2×2 block: 4 multiply-adds).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from reality_stone.geometry import poincare
from reality_stone.nn import ButterflyLinear, HyperButterfly
from harness import arguments, parse, round_robin, write_json, write_markdown

SIZES = [256, 512, 1024, 2048, 4096, 8192]
BATCHES = [1, 64]


def _step(layer: nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).sum().backward()


def timed(layers: dict[str, nn.Module], inputs: dict[str, torch.Tensor], budget_s: float = 1.5) -> dict[str, float]:
    """Median seconds per forward+backward for each layer, measured round-robin for ≥ ``budget_s``."""
    return round_robin({n: functools.partial(_step, layer, inputs[n]) for n, layer in layers.items()},
                       repeat=5, min_seconds=budget_s)


def main() -> None:
    parse(arguments(__doc__, threads=2))
    torch.manual_seed(0)
    rows = []
    for N in SIZES:
        for B in BATCHES:
            x = torch.randn(B, N)
            xb = poincare.expmap0(x * 0.5 / math.sqrt(N), c=1.0)
            layers = {"dense": nn.Linear(N, N), "butterfly": ButterflyLinear(N, N),
                      "hyperbutterfly": HyperButterfly(N, check=False)}
            inputs = {"dense": x.clone().requires_grad_(), "butterfly": x.clone().requires_grad_(),
                      "hyperbutterfly": xb.clone().requires_grad_()}
            t = timed(layers, inputs)
            row = dict(n=N, batch=B, dense_ms=t["dense"] * 1e3, butterfly_ms=t["butterfly"] * 1e3,
                       hyperbutterfly_ms=t["hyperbutterfly"] * 1e3,
                       butterfly_speedup=t["dense"] / t["butterfly"], hyperbutterfly_speedup=t["dense"] / t["hyperbutterfly"],
                       flop_ratio=(2 * N * N) / (4 * N * math.log2(N)),
                       params_dense=N * N + N, params_butterfly=2 * N * int(math.log2(N)) + N)
            rows.append(row)
            print(row, flush=True)
    cross = {B: next((r["n"] for r in rows if r["batch"] == B and r["butterfly_speedup"] > 1), None) for B in BATCHES}
    write_json("layers_speed", dict(rows=rows, crossover_n=cross,
                                                               threads=torch.get_num_threads()))
    lines = ["| N | batch | nn.Linear ms | ButterflyLinear ms | speedup | HyperButterfly ms | speedup | FLOP ratio | params dense / butterfly |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['batch']} | {r['dense_ms']:.3f} | {r['butterfly_ms']:.3f} | {r['butterfly_speedup']:.2f}× | "
                     f"{r['hyperbutterfly_ms']:.3f} | {r['hyperbutterfly_speedup']:.2f}× | {r['flop_ratio']:.0f} | "
                     f"{r['params_dense'] / r['params_butterfly']:.0f}× |")
    lines += ["", "Crossover (smallest N where ButterflyLinear is faster than nn.Linear): "
              + ", ".join(f"batch {B}: {'N = ' + str(n) if n else 'none up to 8192'}" for B, n in cross.items()) + "."]
    write_markdown("layers_speed", lines)


if __name__ == "__main__":
    main()
