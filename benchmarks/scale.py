"""Streaming compression at scale: peak RSS and wall time vs checkpoint size; Ray 2 vs 1 worker.

    python benchmarks/scale.py               # 1, 4, 16 GB  -> results/scale.{json,md}
    python benchmarks/scale.py --sizes 1,4   # smaller run
    python benchmarks/scale.py --estimate-only  # rewrite the table and 70B estimate from scale.json (no run)

Synthetic sharded fp16 checkpoints with Llama-7B-like tensors (4096×4096 attention,
11008×4096 MLP, norms; ~2 GB shards) are generated on the fly and deleted afterwards.
Weights have realistic statistics: Student-t (ν = 5) values — heavy tails, as trained
weights have — scaled per row by a log-normal factor (one template per shape, see
`make_checkpoint`). Each compression (RTN int4 g128, the
fastest real codec, so the streaming machinery is what is measured) runs in a fresh
subprocess that reports its own peak RSS (VmHWM — not ru_maxrss, which Linux carries over
from the parent across fork + exec; Ray workers are separate processes, not counted). The 70B figure is an
extrapolation from the measured single-process throughput: stated as an estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness import RESULTS, arguments, parse, write_json, write_markdown

HIDDEN, INTER = 4096, 11008
LAYER_SHAPES = {"self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
                "self_attn.v_proj.weight": (HIDDEN, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                "mlp.gate_proj.weight": (INTER, HIDDEN), "mlp.up_proj.weight": (INTER, HIDDEN),
                "mlp.down_proj.weight": (HIDDEN, INTER), "input_layernorm.weight": (HIDDEN,),
                "post_attention_layernorm.weight": (HIDDEN,)}
LAYER_BYTES = 2 * sum(math.prod(s) for s in LAYER_SHAPES.values())  # fp16


def student_t(shape, nu: float = 5.0) -> torch.Tensor:
    z = torch.randn(shape)
    return z / torch.sqrt(torch.distributions.Gamma(nu / 2, 0.5).sample(shape) / nu)


def layer_tensors(shapes: dict, layer: int, templates: dict):
    """(name, fp16 tensor) of decoder layer ``layer``: norms near 1, weights = the shape's template
    rolled by the layer index, times log-normal row scales."""
    for name, shape in shapes.items():
        if len(shape) == 1:
            t = (1 + 0.1 * torch.randn(shape)).half()
        else:
            scale = torch.exp(0.3 * torch.randn(shape[0], 1)) * 0.02
            t = (torch.roll(templates[shape], shifts=layer * 7, dims=0) * scale).half()
        yield f"model.layers.{layer}.{name}", t


def write_shards(folder: Path, tensors, shard_bytes: float) -> None:
    """Save (name, tensor) pairs as model-NNNNN.safetensors shards of about ``shard_bytes`` each."""
    shard, size, idx = {}, 0, 0
    for name, t in tensors:
        shard[name] = t
        size += t.numel() * t.element_size()
        if size >= shard_bytes:
            save_file(shard, str(folder / f"model-{idx:05d}.safetensors"))
            shard, size, idx = {}, 0, idx + 1
    if shard:
        save_file(shard, str(folder / f"model-{idx:05d}.safetensors"))


def make_checkpoint(folder: Path, gigabytes: float, shard_bytes: float = 2e9) -> int:
    """Layers of Student-t templates (one per shape, drawn once: sampling 8·10⁹ Gamma variates
    would dominate the run), each layer with its own log-normal row scales and row rotation."""
    torch.manual_seed(0)
    templates = {s: student_t(s) for s in {s for s in LAYER_SHAPES.values() if len(s) == 2}}
    n_layers = max(1, round(gigabytes * 1e9 / LAYER_BYTES))
    write_shards(folder, (kv for layer in range(n_layers) for kv in layer_tensors(LAYER_SHAPES, layer, templates)),
                 shard_bytes)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


CHILD = """
import json, sys
from reality_stone.codecs import codec_config
from reality_stone.evaluation.metrics import peak_rss_bytes
from reality_stone.models.streaming import compress_checkpoint
from reality_stone.threads import set_threads
src, out, workers, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
set_threads(threads)
s = compress_checkpoint(src, out, codec_config("rtn", bits=4, group=128), workers=workers)
s["peak_rss_bytes"] = peak_rss_bytes()  # VmHWM: this program only (ru_maxrss inherits the parent's)
print("RESULT " + json.dumps(s))
"""


def run(src: Path, out: Path, workers: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(workers), str(threads)],
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out.unlink()
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = arguments(__doc__, threads=2)
    ap.add_argument("--sizes", type=sizes_gb, default="1,4,16", help="checkpoint sizes in GB, comma-separated")
    ap.add_argument("--estimate-only", action="store_true", help="rewrite the table and estimate from scale.json")
    args = parse(ap)
    if args.estimate_only:  # the rows and the machine they came from stay; the estimate is recomputed
        last = json.loads((RESULTS / "scale.json").read_text())
        write(last["rows"], last.get("environment"))
        return
    rows = []
    for gb in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"rs-scale-{gb:g}gb-", dir="/tmp"))
        try:
            ckpt = work / "ckpt"
            ckpt.mkdir()
            size = make_checkpoint(ckpt, gb)
            single = run(ckpt, work / "out.safetensors", 1, args.threads)
            row = dict(checkpoint_gb=size / 1e9, shards=len(list(ckpt.glob("*.safetensors"))),
                       peak_rss_gb=single["peak_rss_bytes"] / 1e9, seconds=single["seconds"],
                       output_gb=single["output_bytes"] / 1e9, gb_per_s=size / 1e9 / single["seconds"])
            if gb <= 4:  # Ray 2 workers vs 1 process, same checkpoint
                ray2 = run(ckpt, work / "out.safetensors", 2, args.threads)
                row.update(ray2_seconds=ray2["seconds"], ray2_speedup=single["seconds"] / ray2["seconds"])
            rows.append(row)
            print(row, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    write(rows)


def sizes_gb(text: str) -> list[float]:
    """``--sizes 0.8,4`` → [0.8, 4.0] (positive GB)."""
    try:
        sizes = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated numbers of GB, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def write(rows: list[dict], environment: dict | None = None) -> None:
    """results/scale.{json,md} from the measured rows (measured on ``environment``, None: this process),
    with the 70B estimate."""
    gbps = statistics.median([r["gb_per_s"] for r in rows])
    timing = RESULTS / "calibrated.json"
    sb = None
    if timing.is_file():  # the seed basis' measured whole-model speed, calibration included (benchmarks/calibrated.py)
        r = next((r for r in json.loads(timing.read_text())["rows"]
                  if r["label"] == "seedbasis 3.5 sequential" and r["model"] == "smollm2" and "weights" in r), None)
        sb = r["compress_seconds"] / r["weights"] * 1e6 if r else None
    est = dict(model="70B parameters, fp16 (140 GB)", rtn_process_hours=140 / gbps / 3600,
               seedbasis_3_5_aware_process_hours=(70e3 * sb / 3600) if sb else None,
               note="extrapolated from measured throughput on this 2-core machine (one process, 2 threads); "
                    "with Ray, divide by the workers times the measured parallel efficiency")
    write_json("scale", dict(rows=rows, estimate_70b=est, codec="rtn int4 g128")
               | ({"environment": environment} if environment else {}))
    lines = ["| checkpoint GB | shards | peak RSS GB | seconds | GB/s | output GB | Ray 2 workers: seconds (speedup) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ray = f"{r['ray2_seconds']:.1f} ({r['ray2_speedup']:.2f}×)" if "ray2_seconds" in r else "—"
        lines.append(f"| {r['checkpoint_gb']:.2f} | {r['shards']} | {r['peak_rss_gb']:.2f} | {r['seconds']:.1f} | "
                     f"{r['gb_per_s']:.3f} | {r['output_gb']:.2f} | {ray} |")
    lines += ["", f"Estimate (not measured): a 70B fp16 checkpoint (140 GB) at the median measured "
              f"{gbps:.3f} GB/s takes ≈ {est['rtn_process_hours']:.1f} h with RTN in one 2-thread process here"
              + (f"; the data-aware seed basis (3.5 bpw) at its measured {sb:.2f} s per million weights would "
                 f"take ≈ {est['seedbasis_3_5_aware_process_hours']:.0f} h (calibration included, "
                 f"benchmarks/calibrated.py), i.e. a cluster job."
                 if sb else ".")]
    write_markdown("scale", lines)


if __name__ == "__main__":
    main()
