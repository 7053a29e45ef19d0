"""Poincaré vs Euclidean embeddings of the WordNet mammal closure (Nickel & Kiela 2017).

    python benchmarks/wordnet_embedding.py   # -> benchmarks/results/wordnet_embedding.{json,md}

Reconstruction task: mean rank (1 = perfect) and MAP of every node's closure neighbours in
both directions (`map_both`). Same start (random, `init="random"`), loss, negatives, epochs and
batch for both geometries; 3 seeds, mean ± std.
Needs the Debian packages wordnet-base + wordnet-sense-index.
"""

from __future__ import annotations

import statistics
import time

import torch

from reality_stone.data.wordnet import wordnet_closure
from reality_stone.hierarchy import embed_hierarchy
from harness import arguments, parse, write_json, write_markdown

DIMS = (2, 5, 10)
SEEDS = (0, 1, 2)
EPOCHS = 100
BATCH = 128


def main() -> None:
    parse(arguments(__doc__, threads=2))
    h = wordnet_closure("mammal")
    rows = []
    for dim in DIMS:
        for geometry in ("poincare", "euclidean"):
            runs = []
            for seed in SEEDS:
                t0 = time.perf_counter()
                r = embed_hierarchy(h, dim, geometry, epochs=EPOCHS, batch_size=BATCH, hard_negatives=0, seed=seed,
                                    init="random")
                runs.append((r.mean_rank_both, r.map_both, time.perf_counter() - t0))
            mr = [x[0] for x in runs]
            ap = [x[1] for x in runs]
            row = dict(geometry=geometry, dim=dim, mean_rank=statistics.mean(mr), mean_rank_std=statistics.stdev(mr),
                       map=statistics.mean(ap), map_std=statistics.stdev(ap),
                       seconds_per_run=statistics.mean(x[2] for x in runs), seeds=list(SEEDS))
            rows.append(row)
            print(f"{geometry:9s} d={dim:2d} mean rank {row['mean_rank']:7.2f} ± {row['mean_rank_std']:.2f}  "
                  f"MAP {row['map']:.3f} ± {row['map_std']:.3f}  ({row['seconds_per_run']:.0f} s/run)", flush=True)
    meta = dict(hierarchy="WordNet 3.0 mammal.n.01 closure", nodes=h.num_nodes, edges=len(h.edges),
                epochs=EPOCHS, batch=BATCH, negatives=50, torch=torch.__version__, threads=torch.get_num_threads())
    write_json("wordnet_embedding", dict(meta=meta, results=rows))
    lines = ["| dim | Poincaré mean rank ↓ | Euclidean mean rank ↓ | Poincaré MAP ↑ | Euclidean MAP ↑ |",
             "|---:|---:|---:|---:|---:|"]
    by = {(r["geometry"], r["dim"]): r for r in rows}
    for dim in DIMS:
        p, e = by["poincare", dim], by["euclidean", dim]
        lines.append(f"| {dim} | {p['mean_rank']:.2f} ± {p['mean_rank_std']:.2f} | {e['mean_rank']:.2f} ± "
                     f"{e['mean_rank_std']:.2f} | {p['map']:.3f} ± {p['map_std']:.3f} | {e['map']:.3f} ± {e['map_std']:.3f} |")
    write_markdown("wordnet_embedding", lines)


if __name__ == "__main__":
    main()
