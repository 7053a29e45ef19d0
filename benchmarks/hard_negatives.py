"""Uniform vs two-hop ("hard") negatives in hierarchy embeddings, at a fixed number of epochs.

    python benchmarks/hard_negatives.py               # ≈ 40 min on 2 cores
    python benchmarks/hard_negatives.py --quick       # mammals only, ≈ 5 min
    -> benchmarks/results/hard_negatives.{json,md}

`embed(..., hard_negatives=k)` draws k of the 50 negatives two closure hops from the anchor
(mostly cousins) instead of uniformly. Two tables, Poincaré ball from the random start
(`init="random"`: the paper's start and the library's default before the tree start; both
directions trained; MAP over both directions, `map_both`), library settings otherwise:
* WordNet mammals, 5-d, `embed`'s defaults (300 epochs), 3 seeds: full reconstruction MAP;
* WordNet nouns (82,115 nodes), 10-d, 40 epochs at batch 1024, lr 0.02, burn-in 2 (the
  `wordnet_nouns.py` settings, fixed epochs instead of a time budget), seed 0: MAP and mean rank
  over a fixed random sample of 4,000 anchor nodes (the full evaluation takes minutes per run;
  the sample's standard error is about 0.005).
Fixed epochs make the quality columns independent of machine load; the seconds are wall time.
"""

from __future__ import annotations

import statistics
import time

import torch

from reality_stone.data.wordnet import wordnet_closure
from reality_stone.hierarchy import embed, rank_metrics
from harness import arguments, parse, write_json, write_markdown

MAMMAL_HARD = (0, 10, 25)
NOUN_HARD = (0, 10)
SEEDS = (0, 1, 2)


def sampled_rank_metrics(embedding: torch.Tensor, edges: torch.Tensor, sample: int, seed: int = 123) -> tuple[float, float]:
    """Mean rank and MAP (as `rank_metrics`) over a random sample of anchor nodes: the rows are
    permuted so the sampled anchors come first, and only their positives are listed."""
    n = embedding.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    pos = inv[torch.cat([edges, edges.flip(1)])]
    return rank_metrics(embedding[perm], "poincare", pos[pos[:, 0] < sample])


def main() -> None:
    ap = arguments(__doc__, threads=None)
    ap.add_argument("--quick", action="store_true", help="mammals only")
    args = parse(ap)
    threads = args.threads
    rows = []
    mammals = wordnet_closure("mammal")
    for hard in MAMMAL_HARD:
        runs = []
        for seed in SEEDS:
            t0 = time.perf_counter()
            r = embed(mammals, 5, "poincare", init="random", hard_negatives=hard, seed=seed)
            runs.append((r.map_both, r.mean_rank_both, time.perf_counter() - t0))
        row = dict(hierarchy="mammals", dim=5, epochs=300, hard_negatives=hard, seeds=list(SEEDS),
                   map=statistics.mean(x[0] for x in runs), map_std=statistics.stdev(x[0] for x in runs),
                   mean_rank=statistics.mean(x[1] for x in runs), seconds=statistics.mean(x[2] for x in runs))
        rows.append(row)
        print(f"mammals 5-d hard={hard}: MAP {row['map']:.3f} ± {row['map_std']:.3f}, mean rank {row['mean_rank']:.2f}, "
              f"{row['seconds']:.0f} s/run", flush=True)
    if not args.quick:
        nouns = wordnet_closure("entity", instances=True)
        for hard in NOUN_HARD:
            t0 = time.perf_counter()
            r = embed(nouns, 10, "poincare", init="random", epochs=40, batch_size=1024, lr=0.02, burn_in=2,
                      hard_negatives=hard, seed=0, evaluate=False)
            train_s = time.perf_counter() - t0
            mean_rank, mean_ap = sampled_rank_metrics(r.embedding, nouns.edges, 4000)
            row = dict(hierarchy="nouns", dim=10, epochs=40, hard_negatives=hard, seeds=[0], map=mean_ap, map_std=None,
                       mean_rank=mean_rank, seconds=train_s)
            rows.append(row)
            print(f"nouns 10-d hard={hard}: MAP {mean_ap:.3f}, mean rank {mean_rank:.1f}, {train_s:.0f} s", flush=True)
    meta = dict(negatives=50, threads=threads, torch=torch.__version__, noun_eval_sample=4000)
    write_json("hard_negatives", dict(meta=meta, results=rows))
    lines = [f"Poincaré ball, 50 negatives of which `hard_negatives` two closure hops away, {threads} threads:", "",
             "| hierarchy | dim | epochs | hard negatives | MAP ↑ | mean rank ↓ | train (s/run) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ap_ = f"{r['map']:.3f}" + (f" ± {r['map_std']:.3f}" if r["map_std"] is not None else "")
        lines.append(f"| {r['hierarchy']} | {r['dim']} | {r['epochs']} | {r['hard_negatives']} | {ap_} | "
                     f"{r['mean_rank']:.2f} | {r['seconds']:.0f} |")
    lines += ["", "Mammals: 3 seeds, full evaluation, mean ± std. Nouns: seed 0, MAP and mean rank over a fixed "
              "sample of 4,000 anchor nodes."]
    write_markdown("hard_negatives", lines)


if __name__ == "__main__":
    main()
