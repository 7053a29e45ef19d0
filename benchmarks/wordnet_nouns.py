"""Poincaré embeddings of the whole WordNet noun closure (Nickel & Kiela 2017's main task), and
of the mammal subtree, with the library's defaults.

    python benchmarks/wordnet_nouns.py                    # nouns 5-d and 10-d (≤ 15 min of training each), mammals
    python benchmarks/wordnet_nouns.py --dims 10 --minutes 8
    -> benchmarks/results/wordnet_nouns.{json,md}

The closure of every noun synset under entity.n.01 with regular and instance hypernyms:
82,115 nodes, 743,241 edges (the paper's counts). `embed(h, dim)` as a user calls it: the tree
start, directed training, the best epoch on a 1,000-anchor sample kept, stop after 10 epochs
without a better one — or after the first epoch past the time budget. Then the full
reconstruction (every node ranked against all 82,115) is evaluated twice — minutes on its own,
not counted in the budget:
* MAP / mean rank as the reference implementation computes them (facebookresearch/
  poincare-embeddings, whose numbers the paper reports): each node's ancestors ranked among all
  other nodes;
* the same over both directions (ancestors and descendants), the harder variant this project
  reported before (`map_both`).
Then a trace (--trace-epochs, 10-d): the same training continued without the patience stop,
MAP and mean rank of a fixed 1,000-anchor sample after every epoch (each epoch resumed from
the last one's checkpoint), to show what later epochs trade. Before training, one epoch of
the plain-torch reference step and one of the fused step
(`kernels.poincare_embedding`, which training uses) are timed in the same run (--no-compare
skips it). Threads: the library default (set --threads to change); run it alone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from reality_stone.data.wordnet import wordnet_closure
from reality_stone.hierarchy import _SampledMAP, embed, rank_metrics, tree_initialisation
from reality_stone.kernels.poincare_embedding import fused_step_available
from harness import arguments, parse, write_json, write_markdown

PAPER_MAP = {5: 0.823, 10: 0.851}  # Nickel & Kiela (2017), Table 1, WordNet nouns reconstruction


def both(edges: torch.Tensor) -> torch.Tensor:
    return torch.cat([edges, edges.flip(1)])


def trace(h, dim: int, epochs: int, size: int = 1000) -> list[dict]:
    """Sampled (mean rank, MAP) of the start and after each of ``epochs`` epochs of `embed`'s
    default training, never stopped early: epoch e resumes epoch e − 1's checkpoint (the run is
    the same as one uninterrupted run, bit for bit: tests/test_embed.py)."""
    sample = _SampledMAP(h.edges, h.num_nodes, "poincare", 1.0, size, seed=1)  # embed's own selection sample
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "trace.safetensors"
        for e in range(epochs + 1):
            if e == 0:
                table = tree_initialisation(h, dim)  # what embed(seed=0) starts from
            else:
                table = embed(h, dim, "poincare", epochs=e, seed=0, keep_best=False, evaluate=False,
                              checkpoint=ckpt, checkpoint_every=1).embedding
            mean_rank, mean_ap = sample.metrics(table)
            rows.append(dict(epoch=e, mean_rank=mean_rank, map=mean_ap))
            print(f"trace d={dim} epoch {e}: sampled mean rank {mean_rank:.2f}, MAP {mean_ap:.4f}", flush=True)
    return rows


def main() -> None:
    ap = arguments(__doc__, threads=None)
    ap.add_argument("--dims", default="5,10")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per dimension")
    ap.add_argument("--no-compare", action="store_true", help="skip timing one reference and one fused epoch")
    ap.add_argument("--no-mammals", action="store_true", help="skip the mammal rows")
    ap.add_argument("--trace-epochs", type=int, default=60, help="10-d epochs traced without the stop (0: none)")
    args = parse(ap)
    threads = args.threads
    t0 = time.perf_counter()
    h = wordnet_closure("entity", instances=True)
    load_s = time.perf_counter() - t0
    print(f"closure: {h.num_nodes} nodes, {len(h.edges)} edges ({load_s:.1f} s)", flush=True)
    if not fused_step_available():  # builds the kernels now, outside every timed span
        print("warning: compiled kernels unavailable; training takes the plain-torch step", flush=True)
    epoch_seconds = {}
    if not args.no_compare:
        for name, fused in (("torch reference", False), ("fused", True)):
            r = embed(h, 10, "poincare", epochs=1, seed=0, evaluate=False, keep_best=False, fused=fused)
            epoch_seconds[name] = r.seconds
            print(f"one 10-d epoch, {name} step: {r.seconds:.1f} s", flush=True)
    rows = []
    for dim in [int(d) for d in args.dims.split(",")]:
        t1 = time.perf_counter()
        r = embed(h, dim, "poincare", seed=0, max_seconds=args.minutes * 60, progress=True, evaluate=False)
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        mean_rank, mean_ap = rank_metrics(r.embedding, "poincare", h.edges)
        rank_both, map_both = rank_metrics(r.embedding, "poincare", both(h.edges))
        eval_s = time.perf_counter() - t2
        row = dict(hierarchy="nouns", dim=dim, epochs=r.epochs, best_epoch=r.best_epoch, train_seconds=train_s,
                   eval_seconds=eval_s, mean_rank=mean_rank, map=mean_ap, mean_rank_both=rank_both, map_both=map_both,
                   loss=r.final_loss, paper_map=PAPER_MAP.get(dim))
        rows.append(row)
        print(f"nouns d={dim}: {r.epochs} epochs (best {r.best_epoch}) in {train_s / 60:.1f} min, mean rank "
              f"{mean_rank:.2f}, MAP {mean_ap:.3f} (paper {PAPER_MAP.get(dim)}); both directions {rank_both:.1f} / "
              f"{map_both:.3f}; eval {eval_s:.0f} s", flush=True)
    if not args.no_mammals:
        mammals = wordnet_closure("mammal")
        for dim in (5, 10):
            r = embed(mammals, dim, "poincare", seed=0)
            rows.append(dict(hierarchy="mammals", dim=dim, epochs=r.epochs, best_epoch=r.best_epoch,
                             train_seconds=r.seconds, eval_seconds=None, mean_rank=r.mean_rank, map=r.map,
                             mean_rank_both=r.mean_rank_both, map_both=r.map_both, loss=r.final_loss, paper_map=None))
            print(f"mammals d={dim}: {r.epochs} epochs (best {r.best_epoch}), MAP {r.map:.3f}, both {r.map_both:.3f}, "
                  f"{r.seconds:.1f} s with evaluation", flush=True)
    traced = trace(h, 10, args.trace_epochs) if args.trace_epochs else []
    meta = dict(hierarchy="WordNet 3.0 noun closure (entity.n.01, instance hypernyms included)", nodes=h.num_nodes,
                edges=len(h.edges), minutes_per_dim=args.minutes, settings="embed() defaults, seed 0",
                threads=threads, torch=torch.__version__, epoch_seconds_10d=epoch_seconds)
    write_json("wordnet_nouns", dict(meta=meta, results=rows, trace_10d=traced))
    lines = [f"WordNet nouns ({h.num_nodes} nodes / {len(h.edges)} closure edges) and mammals, Poincaré ball, "
             f"`embed(h, dim)` defaults (tree start, directed training, best epoch kept), seed 0, nouns stopped by "
             f"{args.minutes:g} min of training at the latest, {threads} threads. MAP and mean rank: each node's "
             "ancestors ranked (the reference implementation's protocol); \"both\": ancestors and descendants.", "",
             "| hierarchy | dim | epochs (best) | train (min) | mean rank ↓ | MAP ↑ | paper MAP (N&K 2017) | "
             "mean rank, both ↓ | MAP, both ↑ | eval (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        paper = r["paper_map"] if r["paper_map"] is not None else "—"
        ev = f"{r['eval_seconds']:.0f}" if r["eval_seconds"] is not None else "—"
        lines.append(f"| {r['hierarchy']} | {r['dim']} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_seconds'] / 60:.1f} | {r['mean_rank']:.2f} | {r['map']:.3f} | {paper} | "
                     f"{r['mean_rank_both']:.1f} | {r['map_both']:.3f} | {ev} |")
    if epoch_seconds:
        ref, fus = epoch_seconds["torch reference"], epoch_seconds["fused"]
        lines += ["", f"One 10-d noun epoch of directed training ({-(-len(h.edges) // 512):,} batches of 512), same "
                      f"run: plain-torch reference step {ref:.1f} s, fused step {fus:.1f} s ({ref / fus:.1f}× faster)."]
    lines += ["", "Mammal rows: train (min) includes their full evaluation."]
    if traced:
        shown = [r for r in traced if r["epoch"] <= 10 or r["epoch"] % 10 == 0]
        lines += ["", f"Nouns 10-d, the same training continued without the patience stop ({len(traced) - 1} epochs; "
                      "MAP and mean rank over a fixed sample of 1,000 anchors; epoch 0 is the start):", "",
                  "| epoch | " + " | ".join(str(r["epoch"]) for r in shown) + " |",
                  "|---|" + "---:|" * len(shown),
                  "| MAP ↑ | " + " | ".join(f"{r['map']:.3f}" for r in shown) + " |",
                  "| mean rank ↓ | " + " | ".join(f"{r['mean_rank']:.1f}" for r in shown) + " |"]
    write_markdown("wordnet_nouns", lines)


if __name__ == "__main__":
    main()
