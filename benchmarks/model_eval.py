"""Whole-model results table: every codec configuration on SmolLM2-135M and MiniLM, one run.

    python benchmarks/model_eval.py     # -> benchmarks/results/model_eval.{json,md}
    python benchmarks/model_eval.py --redo "fp32 (dense),RTN int4"   # re-measure those SmolLM2 rows only

Every row goes through the library's one quality path, `evaluate_specs`: compress a copy of the
model in this process, save the single-file format, then score the *file* in a fresh process
(`reality-stone eval FILE --json`):
* SmolLM2 (causal LM): perplexity on the held-out texts (Hamlet, Lee news), first 2048 tokens,
  context 512, stride 256; then greedy decoding of 32 tokens at batch 1 → tokens/s; the process's
  peak RSS covers loading, scoring and decoding. Dense fp32 is measured the same way.
* MiniLM (encoder, original fp32 weights): cosine similarity of mean-pooled embeddings vs the
  dense model on 64 Lee-corpus sentences, and the Spearman correlation of pairwise similarities.

Bits per weight count every stored byte of the compressed Linear layers; embeddings, norms
and biases stay dense (fp32) and are in the file size — except in the "+ int8 head" row, where
the LM head is compressed too (`compress(head=...)`, 8-bit RTN; its bits count among the layers')
and the tied embedding reads it, so the file holds no fp32 copy of that matrix. The fp16 row rounds every weight to fp16
and is scored in fp32 (fp16 matmuls are no CPU path; its speed and memory columns are those of
fp32 and left out); its file size is the fp16 file's. The seeds' ratios appear as: RBE K=100 /
K=50 per 128² block ("78:1", "151:1" in seed 004's word counting) and one Packed64 seed + scale
per 32² block (seed 003's "512:1" block size).
"""

from __future__ import annotations

import json


from reality_stone.codecs import codec_config
from reality_stone.codecs.seedbasis import preset
from reality_stone.evaluation.experiment import Spec, evaluate_specs
from reality_stone.evaluation.loaders import load_minilm, load_smollm2
from harness import RESULTS, arguments, parse, write_json, write_markdown

TOKENS = 2048
ENCODER_ROWS = ("fp16", "RTN", "HQQ", "seedbasis", "RBE")  # label prefixes also run on MiniLM


def specs() -> list[Spec]:
    return [
        Spec("fp32 (dense)"),
        Spec("fp16 storage", dense_dtype="fp16"),
        Spec("RTN int8 g128", codec_config("rtn", bits=8, group=128)),
        Spec("RTN int4 g128", codec_config("rtn", bits=4, group=128)),
        Spec("RTN int4 g128 + int8 head", codec_config("rtn", bits=4, group=128),
             head=codec_config("rtn", bits=8, group=128, symmetric=True)),
        Spec("RTN int3 g64", codec_config("rtn", bits=3, group=64)),
        Spec("HQQ 4-bit g64", codec_config("hqq", bits=4, group=64)),
        Spec("HQQ 3-bit g64", codec_config("hqq", bits=3, group=64)),
        Spec("seedbasis 3.5 (data-free)", preset("3.5")),
        Spec("seedbasis 2.5 (data-free)", preset("2.5")),
        Spec("RBE poly-cos8+DCT K=100 ('78:1')", codec_config("rbe", block=128, k=100)),
        Spec("RBE poly-cos8+DCT K=50 ('151:1')", codec_config("rbe", block=128, k=50)),
        Spec("Packed64 seed per 32² block ('512:1')",
             codec_config("packed64", block=32, adam_steps=0, grid=24, search_steps=15, refine_shapes=2)),
    ]


def progress(label: str) -> None:
    print(f"-> {label}", flush=True)


def main() -> None:
    parser = arguments(__doc__, threads=2)
    parser.add_argument("--redo", help="comma-separated SmolLM2 label prefixes to re-measure; the other rows "
                                       "(and MiniLM) are kept from the previous results/model_eval.json")
    args = parse(parser)
    prefixes = tuple(args.redo.split(",")) if args.redo else None
    old = json.loads((RESULTS / "model_eval.json").read_text()) if prefixes else None
    todo = [s for s in specs() if not prefixes or s.label.startswith(prefixes)]
    fresh = {r["label"]: r for r in evaluate_specs(load_smollm2(), todo, max_tokens=TOKENS, progress=progress)}
    kept = {r["label"]: r for r in old["smollm2"]} if old else {}
    rows = [fresh.get(s.label) or kept[s.label] for s in specs()]
    for r in fresh.values():
        print({k: v for k, v in r.items() if k not in ("config", "layer_rel_error")}, flush=True)
    enc_specs = [s for s in specs() if s.label.startswith(ENCODER_ROWS) and s.head is None]  # MiniLM has no LM head
    enc_rows = old["minilm"] if old else evaluate_specs(load_minilm(), enc_specs, progress=progress)
    for r in enc_rows:
        print({k: v for k, v in r.items() if k not in ("config", "layer_rel_error")}, flush=True)
    write_json("model_eval", dict(tokens=TOKENS, smollm2=rows, minilm=enc_rows))
    dense = rows[0]
    lines = [f"SmolLM2-135M-Instruct, each configuration saved and its file scored in a fresh process: held-out "
             f"perplexity on the first {TOKENS} tokens (context 512, stride 256), then greedy decoding of 32 tokens "
             "at batch 1 (tokens/s); peak RSS of that process (load, scoring and decoding).", "",
             "| configuration | bits/weight | ratio vs fp32 (layers) | file MB | ppl Hamlet | ppl news | tokens/s | vs dense | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fp16 = r["label"].startswith("fp16")  # scored in fp32: its speed and memory are fp32's
        tps, rss = (None, None) if fp16 else (r.get("tokens_per_s"), r.get("peak_rss_bytes"))
        lines.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {32 / r['bits_per_weight']:.1f}:1 | "
                     f"{r['file_bytes'] / 1e6:.1f} | {r['ppl_shakespeare']:.2f} | {r['ppl_news']:.2f} | "
                     f"{'%.1f' % tps if tps else '—'} | {'%.2f×' % (tps / dense['tokens_per_s']) if tps else '—'} | "
                     f"{'%.0f' % (rss / 1e6) if rss else '—'} |")
    lines += ["", "MiniLM (all-MiniLM-L6-v2, fp32 original): embedding fidelity vs the dense model, 64 Lee-corpus sentences.", "",
              "| configuration | bits/weight | cosine mean | cosine min | Spearman of pairwise similarities |",
              "|---|---:|---:|---:|---:|"]
    for r in enc_rows:
        lines.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | "
                     f"{r['spearman']:.4f} |")
    write_markdown("model_eval", lines)
    plot(rows)


def plot(rows: list[dict]) -> None:
    """model_eval_rd.png: perplexity vs bits per weight; model_eval_layers.png: per-layer error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        ax.scatter(r["bits_per_weight"], r["ppl_shakespeare"], s=25)
        ax.annotate(r["label"], (r["bits_per_weight"], r["ppl_shakespeare"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (compressed layers, every byte)")
    ax.set_ylabel("perplexity, Hamlet (held out)")
    ax.set_title("SmolLM2-135M: rate–distortion of whole-model compression", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "model_eval_rd.png", dpi=110)
    chosen = [r for r in rows if r["label"] in ("RTN int4 g128", "HQQ 4-bit g64", "seedbasis 2.5 (data-free)")]
    if chosen:
        names = list(chosen[0]["layer_rel_error"])
        fig, ax = plt.subplots(figsize=(12, 3.6))
        width = 0.8 / len(chosen)
        for i, r in enumerate(chosen):
            ax.bar([j + i * width for j in range(len(names))], [r["layer_rel_error"][n] for n in names], width,
                   label=r["label"])
        ax.set_xticks(range(0, len(names), 7), [names[j].replace("model.layers.", "L").split(".")[0] for j in
                                               range(0, len(names), 7)], fontsize=6)
        ax.set_ylabel("relative weight error")
        ax.set_title("per-layer relative error (7 projections per decoder layer)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "model_eval_layers.png", dpi=110)


if __name__ == "__main__":
    main()
