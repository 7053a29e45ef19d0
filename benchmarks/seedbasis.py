"""Seed-basis codec vs RTN, HQQ and GPTQ on SmolLM2-135M at 2.5 / 3.5 / 4.25 bits per weight.

    python benchmarks/seedbasis.py     # -> benchmarks/results/seedbasis.{json,md}
    python benchmarks/seedbasis.py --resume --budgets=2.5   # continue an interrupted run, one budget
    python benchmarks/seedbasis.py --resume --redo=seedbasis # re-measure rows whose label starts so

All in one run: the same model, calibration statistics (`calibration_text`: The Tempest,
The Comedy of Errors, Paradise Lost — 8192 tokens) and held-out evaluation (Hamlet and the
Lee news corpus, first 8192 tokens each, context 512, stride 256). Per configuration:
whole-model perplexity, bits per weight of the compressed layers (every byte), per-layer
weight relative error and output relative error (under the calibration H), and
compression seconds per million weights. Baselines at group sizes 64/128 (never 32, the
Q4_1 grid SmolLM2 was shipped on).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from baselines.gptq import gptq_quantize  # noqa: E402

from reality_stone.codecs import codec_config, relative_error  # noqa: E402
from reality_stone.codecs.seedbasis import preset  # noqa: E402
from reality_stone.data.text import calibration_text  # noqa: E402
from reality_stone.models import compressible_layers  # noqa: E402
from reality_stone.models.calibration import collect_hessians, output_error  # noqa: E402
from reality_stone.models.experiment import Spec, evaluate_specs  # noqa: E402
from reality_stone.models.loaders import load_smollm2  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOKENS = 8192


class DataAware:
    """encode_fn for compress(): pass each layer's Hessian to codecs that use one."""

    def __init__(self, hessians, kind):
        self.h, self.kind, self.stats = hessians, kind, []

    def __call__(self, name, lin, cfg):
        W, H = lin.weight.detach(), self.h[name]
        t0 = time.perf_counter()
        if self.kind == "gptq":
            enc = gptq_quantize(W, H, bits=cfg.bits, group=cfg.group)
        elif self.kind == "aware":
            enc = cfg.encode(W, hessian=H)
        else:
            enc = cfg.encode(W)
        dt = time.perf_counter() - t0
        D = enc.decode()
        self.stats.append(dict(layer=name, rel_error=relative_error(W, D), output_error=output_error(W, D, H),
                               seconds=dt, weights=W.numel()))
        return enc


def write_table(rows: list[dict]) -> None:
    lines = ["| budget | method | bits/weight | ppl Hamlet | ppl news | weight rel. err | output rel. err | s / M weights |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    order = {"32": 0, "4.25": 1, "3.5": 2, "2.5": 3}
    for r in sorted(rows, key=lambda r: order.get(r["budget"], 9)):  # stable: run order within a budget
        lines.append(f"| {r['budget']} | {r['label']} | {r['bits_per_weight']:.3f} | {r['ppl_shakespeare']:.2f} | "
                     f"{r['ppl_news']:.2f} | {r.get('mean_rel_error', 0):.4f} | {r.get('mean_output_error', 0):.4f} | "
                     f"{r.get('compress_seconds_per_mweight', 0):.2f} |")
    (RESULTS / "seedbasis.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if "--table-only" in sys.argv:  # rebuild the Markdown table from the JSON of a (possibly partial) run
        write_table(json.loads((RESULTS / "seedbasis.json").read_text())["rows"])
        return
    torch.set_num_threads(2)
    loaded = load_smollm2()
    layers = [n for n, _ in compressible_layers(loaded.model)[0]]
    t0 = time.perf_counter()
    H = collect_hessians(loaded.model, loaded.tokenizer, calibration_text(), layers=layers, n_tokens=8192)
    calib_s = time.perf_counter() - t0
    print(f"calibration: {len(H)} layers in {calib_s:.0f} s", flush=True)
    budgets = {
        "4.25": [("RTN int4 g128", "plain", codec_config("rtn", bits=4, group=128)),
                 ("HQQ 4-bit g128", "plain", codec_config("hqq", bits=4, group=128)),
                 ("GPTQ int4 g128", "gptq", codec_config("rtn", bits=4, group=128))],
        "3.5": [("RTN int3 g64", "plain", codec_config("rtn", bits=3, group=64)),
                ("HQQ 3-bit g64", "plain", codec_config("hqq", bits=3, group=64)),
                ("GPTQ int3 g64", "gptq", codec_config("rtn", bits=3, group=64))],
        "2.5": [("RTN int2 g64", "plain", codec_config("rtn", bits=2, group=64)),
                ("HQQ 2-bit g64", "plain", codec_config("hqq", bits=2, group=64)),
                ("GPTQ int2 g64", "gptq", codec_config("rtn", bits=2, group=64))],
    }
    # --resume keeps the rows of an earlier (interrupted) run; --budgets 2.5,4.25 limits the run.
    done = json.loads((RESULTS / "seedbasis.json").read_text())["rows"] if "--resume" in sys.argv else []
    redo = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--redo=")), None)
    if redo:
        done = [r for r in done if not r["label"].startswith(redo)]
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--budgets=")), list(budgets))
    rows = done or evaluate_specs(loaded, [Spec("fp32 (dense)")], max_tokens=TOKENS, speed=False)
    rows[0]["budget"] = "32"
    print(rows[0], flush=True)
    for budget, base in budgets.items():
        if budget not in only:
            continue
        entries = base + [(f"seedbasis {budget} data-free", "plain", preset(budget)),
                          (f"seedbasis {budget} data-aware", "aware", preset(budget))]
        for label, kind, cfg in entries:
            if any(r["label"] == label for r in rows):
                continue
            fn = DataAware(H, kind)
            row = evaluate_specs(loaded, [Spec(label, cfg)], max_tokens=TOKENS, speed=False, encode_fn=fn)[0]
            n_w = sum(s["weights"] for s in fn.stats)
            row.update(budget=budget, method=kind, compress_seconds_per_mweight=sum(s["seconds"] for s in fn.stats) / n_w * 1e6,
                       mean_rel_error=sum(s["rel_error"] * s["weights"] for s in fn.stats) / n_w,
                       mean_output_error=sum(s["output_error"] * s["weights"] for s in fn.stats) / n_w,
                       layers=fn.stats)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "layers" and k != "config"}, flush=True)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "seedbasis.json").write_text(json.dumps(dict(tokens=TOKENS, calibration_seconds=calib_s, rows=rows), indent=2) + "\n")
    write_table(rows)


if __name__ == "__main__":
    main()
