"""The tree start (`hierarchy.tree_initialisation`) before any training: reconstruction MAP of the
construction on WordNet closures and synthetic trees at 2, 3, 5 and 10 dimensions, beside the
construction it replaced and beside other values of its two constants.

    python benchmarks/tree_start.py            # -> benchmarks/results/tree_start.{json,md}
    python benchmarks/tree_start.py --quick    # without the 82k-node noun closure

Hierarchies: WordNet nouns (82,115 nodes, instance hypernyms included), the mammal (1,170) and
animal (3,999) closures, a balanced 4-ary tree of depth 6 (5,461 nodes), a heavy-tailed random
tree (~6,000 nodes, Pareto(1.2) family sizes up to 300), and two forests: the nouns below tree
depth 5 (80,325 nodes, 4,573 roots) and the mammal, bird, fish and insect closures side by side. MAP: the reference protocol (each node's
ancestors ranked among all other nodes) over a fixed sample of 3,000 anchors (the same sample in
every column); float64, c = 1, seed 0. "previous": the construction before 2026-12-07 (random
direction offsets of size e^{−(depth−1)}, radius 2·depth − 1), rebuilt here for the comparison.
No training, so no timing is compared; the construction's own seconds are listed.
"""

from __future__ import annotations

import math
import random
import time

import torch

import reality_stone.hierarchy as H
from reality_stone.data.edges import closure_of_parents
from reality_stone.data.wordnet import Hierarchy, wordnet_closure
from harness import arguments, parse, write_json, write_markdown

DIMS = (2, 3, 5, 10)
VARIANTS = {  # (TREE_CONE, TREE_RADIUS_OFFSET); the first is the library's
    "library (0.35, 1)": (0.35, 1.0), "cone 0.25": (0.25, 1.0), "cone 0.5": (0.5, 1.0),
    "offset 0": (0.35, 0.0), "offset 2": (0.35, 2.0)}


def previous_construction(h, dim: int, seed: int = 0) -> torch.Tensor:
    """The tree start as it was: radius 2·depth − 1 (≤ 28), direction parent + e^{−(depth−1)}·ξ."""
    parent, depth = H._tree_parents(h.edges, h.num_nodes)
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(h.num_nodes, dim, generator=g, dtype=torch.float64)
    xi /= xi.norm(dim=1, keepdim=True)
    radius = (2 * depth.double() - 1).clamp(0.05, 28.0)
    dirs = xi.clone()
    for k in range(1, int(depth.max()) + 1):
        m = depth == k
        d = dirs[parent[m]] + max(math.exp(-(k - 1)), 1e-10) * xi[m]
        dirs[m] = d / d.norm(dim=1, keepdim=True)
    return torch.tanh(radius / 2)[:, None] * dirs


def balanced_tree(branching: int = 4, depth: int = 6):
    parents, frontier = {"r": []}, ["r"]
    for _ in range(depth):
        frontier = [f"{p}.{i}" for p in frontier for i in range(branching)]
        parents |= {name: [name.rsplit(".", 1)[0]] for name in frontier}
    return closure_of_parents(parents)


def heavy_tailed_tree(size: int = 6000, seed: int = 0):
    rnd = random.Random(seed)
    parents, nodes = {"r": []}, ["r"]
    while len(parents) < size:  # mostly recent nodes as parents: deep, uneven families
        p = rnd.choice(nodes[-2000:]) if rnd.random() < 0.7 else rnd.choice(nodes)
        for _ in range(min(int(rnd.paretovariate(1.2)), 300)):
            name = f"n{len(parents)}"
            parents[name] = [p]
            nodes.append(name)
    return closure_of_parents(parents)


def restrict(h, keep: torch.Tensor):
    """The closure ``h`` restricted to the nodes ``keep`` (a forest when ``keep`` cuts the top off)."""
    index = torch.full((h.num_nodes,), -1, dtype=torch.int64)
    index[keep] = torch.arange(len(keep))
    edges = index[h.edges]
    return Hierarchy(tuple(h.names[i] for i in keep.tolist()), edges[(edges >= 0).all(1)], 0)


def side_by_side(hierarchies):
    names, edges, offset = [], [], 0
    for h in hierarchies:
        names += h.names
        edges.append(h.edges + offset)
        offset += h.num_nodes
    return Hierarchy(tuple(names), torch.cat(edges), 0)


def main() -> None:
    ap = arguments(__doc__, threads=None)
    ap.add_argument("--quick", action="store_true", help="skip the WordNet noun closure")
    args = parse(ap)
    hierarchies = {}
    if not args.quick:
        nouns = wordnet_closure("entity", instances=True)
        depth = H._tree_parents(nouns.edges, nouns.num_nodes)[1]
        hierarchies |= {"WordNet nouns": nouns, "nouns below depth 5 (forest)": restrict(nouns, torch.nonzero(depth >= 5).flatten())}
    hierarchies |= {"mammals": wordnet_closure("mammal"), "animals": wordnet_closure("animal"),
                    "balanced 4-ary": balanced_tree(), "heavy-tailed": heavy_tailed_tree(),
                    "mammal+bird+fish+insect (forest)": side_by_side([wordnet_closure(r) for r in ("mammal", "bird", "fish", "insect")])}
    rows = []
    default = (H.TREE_CONE, H.TREE_RADIUS_OFFSET)
    try:
        for name, h in hierarchies.items():
            sample = H._SampledMAP(h.edges, h.num_nodes, "poincare", 1.0, 3000, 1)
            for dim in DIMS:
                row = dict(hierarchy=name, nodes=h.num_nodes, dim=dim, previous=sample(previous_construction(h, dim)))
                for label, (cone, offset) in VARIANTS.items():
                    H.TREE_CONE, H.TREE_RADIUS_OFFSET = cone, offset
                    t0 = time.perf_counter()
                    x = H.tree_initialisation(h, dim)
                    if label.startswith("library"):
                        row["seconds"] = time.perf_counter() - t0
                    row[label] = sample(x)
                rows.append(row)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    finally:
        H.TREE_CONE, H.TREE_RADIUS_OFFSET = default
    write_json("tree_start", dict(variants=VARIANTS, results=rows))
    cols = ["previous", *VARIANTS]
    lines = ["Reconstruction MAP of the tree start before training (reference protocol, 3,000 sampled anchors, "
             "float64, seed 0). Columns: the previous construction, the library's (TREE_CONE, TREE_RADIUS_OFFSET) and "
             "one constant changed at a time. `python benchmarks/tree_start.py`.", "",
             "| hierarchy | nodes | dim | " + " | ".join(cols) + " | library (s) |",
             "|---|---:|---:|" + "---:|" * (len(cols) + 1)]
    for r in rows:
        best = max(r[c] for c in cols)
        cells = [f"**{r[c]:.3f}**" if r[c] == best else f"{r[c]:.3f}" for c in cols]
        lines.append(f"| {r['hierarchy']} | {r['nodes']:,} | {r['dim']} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    write_markdown("tree_start", lines)


if __name__ == "__main__":
    main()
