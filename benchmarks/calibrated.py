"""Calibrated compression, the product path: every codec through `rs.compress(..., calibration=…)`.

    python benchmarks/calibrated.py                       # SmolLM2, 4.25 / 3.5 / 2.5 bpw -> results/calibrated.{json,md}
    python benchmarks/calibrated.py --models qwen2.5-coder-0.5b --budgets 3.5 --resume   # add rows to the same files

Per model, one run, 2 threads, nothing else running: calibrate on `--calibration` (default the
bundled "shakespeare" set: The Tempest, The Comedy of Errors, Paradise Lost; 8192 tokens in
sequences of 512) and score on disjoint held-out texts (Hamlet and the Lee news corpus, first
`--tokens` tokens each, context 512, stride 256). Rows per budget: RTN, HQQ, the library's
GPTQ (sequential calibration), the seed basis data-free, data-aware with one-pass statistics,
data-aware with sequential statistics, and the latter with its norm gains (and biases) then
fitted to the fp32 model's outputs on the calibration text (`tune_epochs=3`). Columns:
perplexity, its ratio to fp32, mean KL(fp32 ‖ compressed) of the next-token distributions
(nats/token), top-1 agreement with fp32, compression seconds (calibration included, measured in this process) and the file size of
`rs.save` (tokenizer and fp32 embeddings included). Baselines use groups of 64/128, never 32
(SmolLM2 ships on a Q4_1 group-32 grid).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.data.text import evaluation_text
from reality_stone.evaluation.metrics import score_text
from reality_stone.evaluation.loaders import load_model
from reality_stone.nn.compressed import decoded_weights
from harness import RESULTS, arguments, parse, write_json, write_markdown

TEXTS = ("shakespeare", "news")
TUNE_EPOCHS = 3  # the "+ tuned norms" rows: rs.compress(..., tune_epochs=3)
BASELINES = {"4.25": dict(bits=4, group=128), "3.5": dict(bits=3, group=64), "2.5": dict(bits=2, group=64)}


def rows_for(budget: str) -> list[tuple[str, object, dict]]:
    """(label, config, compress kwargs) of one budget's rows."""
    b = BASELINES[budget]
    g = f"int{b['bits']} g{b['group']}"
    return [
        (f"RTN {g}", codec_config("rtn", **b), {}),
        (f"HQQ {g}", codec_config("hqq", **b), {}),
        (f"GPTQ {g}", codec_config("gptq", **b), dict(calibrated=True, sequential=True)),
        (f"seedbasis {budget} data-free", codec_config("seedbasis", preset=budget), {}),
        (f"seedbasis {budget} one-pass", codec_config("seedbasis", preset=budget), dict(calibrated=True, sequential=False)),
        (f"seedbasis {budget} sequential", codec_config("seedbasis", preset=budget), dict(calibrated=True, sequential=True)),
        (f"seedbasis {budget} sequential + tuned norms", codec_config("seedbasis", preset=budget),
         dict(calibrated=True, sequential=True, tune_epochs=TUNE_EPOCHS)),
        (f"seedbasis {budget} sequential mixed", codec_config("seedbasis", preset=budget),
         dict(calibrated=True, sequential=True, mixed=True)),
        (f"seedbasis {budget} sequential mixed + tuned norms", codec_config("seedbasis", preset=budget),
         dict(calibrated=True, sequential=True, mixed=True, tune_epochs=TUNE_EPOCHS)),
    ]


def evaluate(model, base, tok, tokens: int, base_cache: dict | None = None) -> dict:
    out = {}
    with decoded_weights(model):  # quality through the reference path, each weight decoded once
        for name in TEXTS:
            r = score_text(model, tok, evaluation_text(name), base=base, max_tokens=tokens, base_cache=base_cache)
            out[name] = r | {"ppl_ratio": r["ppl"] / r["base_ppl"]} if base is not None else r
    return out


def _order(rows: list[dict]) -> list[dict]:
    """Model by first appearance, then budget (fp32, 4.25, 3.5, 2.5), then the method order of `rows_for`."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    budgets = ["32", *BASELINES]

    def key(r):
        labels = ["fp32"] if r["budget"] == "32" else [label for label, _, _ in rows_for(r["budget"])]
        return models.index(r["model"]), budgets.index(r["budget"]), labels.index(r["label"])

    return sorted(rows, key=key)


def write(rows: list[dict]) -> None:
    rows = _order(rows)
    write_json("calibrated", dict(rows=rows))
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if r["label"] == "fp32"), None)
        head = f"**{model}**" + (f" — fp32 perplexity Hamlet {base['shakespeare']['ppl']:.2f}, news {base['news']['ppl']:.2f}"
                                 f" ({base['tokens']} tokens each); calibration {base['calibration']}" if base else "")
        lines += [head, "",
                  "| budget | method | bits/weight | ppl Hamlet (× fp32) | ppl news (× fp32) | KL Hamlet | KL news | "
                  "top-1 Hamlet | top-1 news | compress s | file MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mine:
            if r["label"] == "fp32":
                continue
            h, n = r["shakespeare"], r["news"]
            lines.append(f"| {r['budget']} | {r['label']} | {r['bits_per_weight']:.3f} | {h['ppl']:.2f} ({h['ppl_ratio']:.2f}×) | "
                         f"{n['ppl']:.2f} ({n['ppl_ratio']:.2f}×) | {h['kl']:.3f} | {n['kl']:.3f} | {h['top1']:.3f} | "
                         f"{n['top1']:.3f} | {r['compress_seconds']:.0f} | {r['file_mb']:.1f} |")
        lines.append("")
    write_markdown("calibrated", "\n".join(lines))


def main() -> None:
    ap = arguments(__doc__, threads=2)
    ap.add_argument("--models", default="smollm2")
    ap.add_argument("--budgets", default="4.25,3.5,2.5")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens scored per text")
    ap.add_argument("--calibration", default="shakespeare")
    ap.add_argument("--calibration-tokens", type=int, default=8192)
    ap.add_argument("--only", default="", help="comma-separated label prefixes: run only these rows")
    ap.add_argument("--exact", action="store_true", help="--only names whole labels, not prefixes")
    ap.add_argument("--redo", action="store_true", help="with --resume: re-run rows already in the file "
                    "(those --only and --budgets select)")
    ap.add_argument("--resume", action="store_true", help="keep the rows of calibrated.json and add/replace")
    ap.add_argument("--table-only", action="store_true")
    args = parse(ap)
    old = json.loads((RESULTS / "calibrated.json").read_text())["rows"] if (args.resume or args.table_only) else []
    if args.table_only:
        write(old)
        return
    threads = args.threads
    only = tuple(p for p in args.only.split(",") if p)

    def selected(label: str) -> bool:
        return not only or (label in only if args.exact else label.startswith(only))

    rows = [r for r in old if not (args.redo and selected(r["label"]) and r["label"] != "fp32"
                                   and r["model"] in args.models.split(",") and r["budget"] in args.budgets.split(","))]
    for model_name in args.models.split(","):
        loaded = load_model(model_name)
        base, tok = loaded.model, loaded.tokenizer
        done = {r["label"] for r in rows if r["model"] == model_name}
        base_cache = {}  # the fp32 model's log-probabilities per window, scored once for every row
        if "fp32" not in done:
            t0 = time.perf_counter()
            res = evaluate(base, None, tok, args.tokens)
            rows.append(dict(model=model_name, label="fp32", budget="32", bits_per_weight=32.0, threads=threads,
                             tokens=res["shakespeare"]["tokens"],
                             calibration=f"{args.calibration}, {args.calibration_tokens} tokens",
                             eval_seconds=time.perf_counter() - t0, **res))
            print(rows[-1], flush=True)
        for budget in args.budgets.split(","):
            for label, config, kw in rows_for(budget):
                if label in done or not selected(label):
                    continue
                model = copy.deepcopy(base)
                calib = dict(calibration=args.calibration, tokenizer=tok, tokens=args.calibration_tokens,
                             sequential=kw["sequential"], tune_epochs=kw.get("tune_epochs", 0),
                             mixed=kw.get("mixed", False)) if kw.get("calibrated") else {}
                t0 = time.perf_counter()
                report = rs.compress(model, config, **calib)
                seconds = time.perf_counter() - t0
                with tempfile.TemporaryDirectory() as d:
                    path = rs.save(model, Path(d) / "m.safetensors", source=model_name, tokenizer=tok)
                    file_mb = path.stat().st_size / 1e6
                res = evaluate(model, base, tok, args.tokens, base_cache)
                rows.append(dict(model=model_name, label=label, budget=budget, config=config.to_dict(),
                                 codec=config.codec_name, calibration=report.calibration,
                                 bits_per_weight=report.bits_per_weight, output_error=report.output_error,
                                 weights=sum(r.shape[0] * r.shape[1] for r in report.layers),
                                 compress_seconds=seconds, file_mb=file_mb, threads=threads, **res))
                print({k: v for k, v in rows[-1].items() if k != "config"}, flush=True)
                write(rows)
                del model
    write(rows)

if __name__ == "__main__":
    main()
