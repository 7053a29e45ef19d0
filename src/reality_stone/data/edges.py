"""Hierarchies from edge files: one ``child<TAB or comma>parent`` pair per line.

Blank lines and lines starting with ``#`` are skipped; a header line ``child,parent`` (any
two names equal to "child"/"parent", "id1"/"id2" or "u"/"v") is allowed as the first line.
The file lists direct (parent) edges or any superset of them; the embedding target is their
transitive closure. Cycles are not allowed — a hierarchy is a DAG — and are reported with the
nodes on the cycle.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from reality_stone.data.wordnet import Hierarchy

__all__ = ["closure_of_parents", "read_edge_file"]

_HEADERS = ({"child", "parent"}, {"id1", "id2"}, {"u", "v"})


def read_edge_file(path: str | Path) -> Hierarchy:
    """The transitive closure of the (child, parent) pairs in ``path`` (TSV or CSV)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such edge file")
    parents: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines()
    delimiter = "\t" if any("\t" in line for line in lines[:100]) else ","
    for lineno, row in enumerate(csv.reader(lines, delimiter=delimiter), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in row]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            sep = "TAB" if delimiter == "\t" else "comma"
            raise ValueError(f"{path}:{lineno}: expected two fields (child {sep} parent), got {delimiter.join(row)!r}")
        if lineno == 1 and {fields[0].lower(), fields[1].lower()} in _HEADERS:
            continue
        child, parent = fields[0], fields[1]
        if child == parent:
            raise ValueError(f"{path}:{lineno}: {child!r} is its own parent (a cycle)")
        parents.setdefault(child, []).append(parent)
        parents.setdefault(parent, [])
    if not parents:
        raise ValueError(f"{path}: no edges")
    return closure_of_parents(parents, source=str(path))


def closure_of_parents(parents: dict[str, list[str]], *, source: str = "hierarchy") -> Hierarchy:
    """Transitive closure of a DAG given as node -> parents (ValueError naming a cycle)."""
    order = sorted(parents)
    pos = {s: i for i, s in enumerate(order)}
    ancestors: dict[str, set[str]] = {}
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    for start in order:
        if state.get(start) == 2:
            continue
        stack = [(start, iter(parents[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                acc: set[str] = set()
                for p in parents[node]:
                    acc.add(p)
                    acc |= ancestors[p]
                ancestors[node] = acc
                state[node] = 2
            elif state.get(nxt) == 1:
                cycle = [n for n, _ in stack][[n for n, _ in stack].index(nxt):] + [nxt]
                raise ValueError(f"{source}: cycle {' → '.join(cycle)} (child → parent): a hierarchy must be acyclic")
            elif state.get(nxt) != 2:
                state[nxt] = 1
                stack.append((nxt, iter(parents[nxt])))
    edges = [(pos[s], pos[a]) for s in order for a in sorted(ancestors[s])]
    if not edges:
        raise ValueError(f"{source}: the closure is empty (no node has an ancestor)")
    roots = [s for s in order if not parents[s]]
    return Hierarchy(names=tuple(order), edges=torch.tensor(edges, dtype=torch.int64).reshape(-1, 2),
                     root=pos[roots[0]] if roots else 0)
