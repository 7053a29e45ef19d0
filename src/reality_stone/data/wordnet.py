"""WordNet 3.0 noun hierarchy from the Debian ``wordnet-base`` package (``data.noun``).

We parse ``data.noun`` directly (format: wndb(5WN)) instead of going through nltk, whose
reader refuses system paths and wants extra files. Only regular hypernym pointers (``@``)
are followed, not instance hypernyms (``@i``) — the choice of Nickel & Kiela (2017), whose
mammal closure is the usual benchmark.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Hierarchy", "WORDNET_DIR", "load_noun_graph", "transitive_closure", "wordnet_closure"]

WORDNET_DIR = Path(os.environ.get("REALITY_STONE_WORDNET", "/usr/share/wordnet"))


@dataclass(frozen=True)
class Hierarchy:
    """A DAG given by its transitive closure.

    ``names[i]`` labels node i; ``edges`` (E, 2) int64 holds every (descendant, ancestor)
    pair of the closure (no self loops). ``root`` is the index of the root node.
    """

    names: tuple[str, ...]
    edges: torch.Tensor
    root: int

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    def adjacency(self) -> torch.Tensor:
        """Symmetric boolean (N, N) matrix: True where one node is an ancestor of the other."""
        a = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool)
        a[self.edges[:, 0], self.edges[:, 1]] = True
        return a | a.T


def load_noun_graph(wordnet_dir: Path | str = WORDNET_DIR, *, instances: bool = False
                    ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Parse ``data.noun``: returns (offset -> first lemma, offset -> hypernym offsets).

    ``instances`` also follows instance hypernyms (``@i``: "Paris" → "city"), which the full
    noun closure of Nickel & Kiela (82,115 nouns) includes.

    Raises ``FileNotFoundError`` with the install hint when WordNet is missing and
    ``ValueError`` on a malformed line.
    """
    path = Path(wordnet_dir) / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(
            f"WordNet noun database not found at {path}; install the Debian packages "
            "`wordnet-base wordnet-sense-index` or set REALITY_STONE_WORDNET"
        )
    lemma: dict[str, str] = {}
    hypernyms: dict[str, list[str]] = {}
    with path.open(encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  "):  # license header
                continue
            fields = line.split(" | ", 1)[0].split()
            try:
                offset = fields[0]
                w_cnt = int(fields[3], 16)
                words = fields[4 : 4 + 2 * w_cnt : 2]
                p_at = 4 + 2 * w_cnt
                p_cnt = int(fields[p_at])
                ptrs = fields[p_at + 1 : p_at + 1 + 4 * p_cnt]
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: malformed synset line ({exc})") from None
            lemma[offset] = words[0].lower()
            kinds = ("@", "@i") if instances else ("@",)
            hypernyms[offset] = [ptrs[i + 1] for i in range(0, len(ptrs), 4) if ptrs[i] in kinds and ptrs[i + 2] == "n"]
    return lemma, hypernyms


def transitive_closure(root: str, hypernyms: dict[str, list[str]]) -> dict[str, set[str]]:
    """For every synset under ``root`` (inclusive): the set of its ancestors that are under ``root``."""
    memo: dict[str, set[str] | None] = {}

    def ancestors(s: str) -> set[str] | None:
        # None means "not under root"; memoised DFS (the noun graph is a DAG).
        if s in memo:
            return memo[s]
        if s == root:
            memo[s] = set()
            return memo[s]
        out: set[str] | None = None
        for h in hypernyms.get(s, ()):
            a = ancestors(h)
            if a is not None:
                out = (out or set()) | a | {h}
        memo[s] = out
        return out

    result = {}
    for s in hypernyms:
        a = ancestors(s)
        if a is not None:
            result[s] = a
    return result


def wordnet_closure(root_lemma: str = "mammal", sense: int = 1, wordnet_dir: Path | str = WORDNET_DIR, *,
                    instances: bool = False) -> Hierarchy:
    """The transitive closure of the noun hierarchy under ``root_lemma``'s ``sense``-th synset.

    ``root_lemma`` may also name a synset as ``lemma.n.NN`` ("mammal.n.01"; ``sense`` ignored).
    ``wordnet_closure("mammal")`` is the mammal closure of Nickel & Kiela (2017);
    ``wordnet_closure("entity", instances=True)`` all 82,115 nouns.
    Node names are ``lemma.offset`` (offsets are unique; lemmas are not).
    """
    parts = root_lemma.rsplit(".", 2)
    if len(parts) == 3 and parts[1] == "n" and parts[2].isdigit():
        root_lemma, sense = parts[0], int(parts[2])
    root_lemma = root_lemma.strip().lower().replace(" ", "_")
    index = Path(wordnet_dir) / "index.noun"
    if not index.is_file():  # before anything opens it: the error must carry the install hint
        raise FileNotFoundError(
            f"WordNet noun index not found at {index}; install the Debian packages "
            "`wordnet-base wordnet-sense-index` or set REALITY_STONE_WORDNET"
        )
    root = None
    with index.open(encoding="latin-1") as fh:
        for line in fh:
            if line.startswith(root_lemma + " "):
                f = line.split()
                synset_cnt, p_cnt = int(f[2]), int(f[3])
                offsets = f[6 + p_cnt :]
                if not 1 <= sense <= synset_cnt:
                    raise ValueError(f"{root_lemma!r} has {synset_cnt} noun senses, asked for {sense}")
                root = offsets[sense - 1]
                break
    if root is None:
        raise ValueError(f"{root_lemma!r} is not a WordNet noun")
    lemma, hypernyms = load_noun_graph(wordnet_dir, instances=instances)
    closure = transitive_closure(root, hypernyms)
    if len(closure) < 2:
        raise ValueError(f"{root_lemma!r} (sense {sense}) has no hyponyms: the closure is empty")
    order = sorted(closure)
    pos = {s: i for i, s in enumerate(order)}
    edges = [(pos[s], pos[a]) for s in order for a in sorted(closure[s])]
    return Hierarchy(
        names=tuple(f"{lemma[s]}.{s}" for s in order),
        edges=torch.tensor(edges, dtype=torch.int64).reshape(-1, 2),
        root=pos[root],
    )
