"""Poincaré embeddings of the whole WordNet noun closure (Nickel & Kiela 2017's main task).

    python benchmarks/wordnet_nouns.py                    # 5-d and 10-d, 30 minutes of training each
    python benchmarks/wordnet_nouns.py --dims 10 --minutes 8
    -> benchmarks/results/wordnet_nouns.{json,md}

The closure of every noun synset under entity.n.01 with regular and instance hypernyms:
82,115 nodes, 743,241 edges (the paper's counts). Training stops after the first epoch past
the time budget; then the full reconstruction (every node ranked against all 82,115) is
evaluated — minutes on its own, not counted in the budget. Threads: the library default
(set --threads to change); run it alone.
"""

from __future__ import annotations

import argparse
import time

import torch

from reality_stone.data.wordnet import wordnet_closure
from reality_stone.hierarchy import embed, rank_metrics
from reality_stone.threads import set_threads
from harness import write_json, write_markdown

PAPER_MAP = {5: 0.823, 10: 0.851}  # Nickel & Kiela (2017), Table 1, WordNet nouns reconstruction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="5,10")
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per dimension")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--burn-in", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    t0 = time.perf_counter()
    h = wordnet_closure("entity", instances=True)
    load_s = time.perf_counter() - t0
    print(f"closure: {h.num_nodes} nodes, {len(h.edges)} edges ({load_s:.1f} s)", flush=True)
    rows = []
    for dim in [int(d) for d in args.dims.split(",")]:
        t1 = time.perf_counter()
        r = embed(h, dim, "poincare", epochs=10_000, batch_size=args.batch_size, lr=args.lr, burn_in=args.burn_in,
                  seed=0, max_seconds=args.minutes * 60, progress=True, evaluate=False)
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        mean_rank, mean_ap = rank_metrics(r.embedding, "poincare", torch.cat([h.edges, h.edges.flip(1)]))
        eval_s = time.perf_counter() - t2
        row = dict(dim=dim, epochs=r.epochs, train_seconds=train_s, eval_seconds=eval_s, mean_rank=mean_rank,
                   map=mean_ap, loss=r.final_loss, paper_map=PAPER_MAP.get(dim))
        rows.append(row)
        print(f"d={dim}: {r.epochs} epochs in {train_s / 60:.1f} min, mean rank {mean_rank:.2f}, MAP {mean_ap:.3f} "
              f"(paper {PAPER_MAP.get(dim)}), eval {eval_s:.0f} s", flush=True)
    meta = dict(hierarchy="WordNet 3.0 noun closure (entity.n.01, instance hypernyms included)", nodes=h.num_nodes,
                edges=len(h.edges), minutes_per_dim=args.minutes, batch_size=args.batch_size, lr=args.lr,
                burn_in=args.burn_in, negatives=50, threads=threads, torch=torch.__version__)
    write_json("wordnet_nouns", dict(meta=meta, results=rows))
    lines = [f"WordNet nouns, {h.num_nodes} nodes / {len(h.edges)} closure edges, Poincaré, "
             f"{args.minutes:g} min of training per dimension, {threads} threads, batch {args.batch_size}:", "",
             "| dim | epochs | train (min) | mean rank ↓ | MAP ↑ | paper MAP (N&K 2017) | eval (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['epochs']} | {r['train_seconds'] / 60:.1f} | {r['mean_rank']:.2f} | "
                     f"{r['map']:.3f} | {r['paper_map'] if r['paper_map'] is not None else '—'} | {r['eval_seconds']:.0f} |")
    write_markdown("wordnet_nouns", lines)


if __name__ == "__main__":
    main()
