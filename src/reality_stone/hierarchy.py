"""Embedding a hierarchy (a transitive closure) in hyperbolic or Euclidean space.

Training follows Nickel & Kiela (2017, "Poincaré Embeddings for Learning Hierarchical
Representations"): for each closure edge (u, v), a softmax over −d(u, ·) against sampled
non-neighbours of u. Geometries: ``poincare`` (ball), ``lorentz`` (hyperboloid, d+1
coordinates) and the ``euclidean`` baseline (same loss, Adam).

The ball's default (``init="tree"``) starts from a construction instead of noise (Sarkar's, as
in Sala et al. 2018, spread for low dimensions): each node hangs off one parent (its ancestor
with the most ancestors); a node's children leave its direction at the angle of its cone, spread
evenly over the tangent directions, and each child's cone is a fixed share of its parent's scaled
by the spacing to its nearest sibling; a child's hyperbolic radius grows as 2 ln(1/cone), the scale
at which siblings are still farther apart than either is from the root. That alone ranks WordNet
nouns' ancestors at MAP 0.94 (5-d) / 0.95 (10-d); training then runs on the directed pairs
(descendant → ancestor, as the reference code), keeps the epoch (the start included) with the
best reconstruction MAP on a fixed sample of anchors and stops when it has not improved for
``patience`` epochs. ``init="random"`` is the paper's start (uniform in ±1e-3, a burn-in phase
at lr/10, both directions of each edge trained).

The ball trains with a compiled step (`kernels.poincare_embedding`: loss, gradient and lazy
Riemannian Adam update in one pass) when the kernels are built. The plain-torch step — the
reference, and the path of the other geometries — reads the table with
``F.embedding(..., sparse=True)`` when a batch touches a small part of it, so `RiemannianAdam`
updates only the rows a batch touches (the cost of a step follows the batch, not the 82k-node
table); negatives are drawn and checked against the closure for the whole batch at once (a
sorted key table, not an N×N matrix).

Evaluation (`rank_metrics`), for every node u with neighbours:
* reconstruction (Nickel & Kiela's task): rank of each closure neighbour v of u among u's
  non-neighbours ordered by distance (mean rank, 1 is perfect) and the mean average precision.
  ``mean_rank``/``map`` follow the reference implementation (facebookresearch/poincare-embeddings,
  whose numbers the paper reports): u's neighbours are its ancestors, every other node competes.
  ``mean_rank_both``/``map_both`` count both directions (u's ancestors and descendants) — the
  harder variant this project reported before 2026-12-07;
* link prediction (``holdout`` > 0): a random ``holdout`` share of the closure edges is never
  trained on; each held-out ancestor is ranked among all nodes that are not u's training
  ancestors (the filtered setting).
Both are computed in row chunks from one matrix product per chunk (a score monotone in the
distance), so 82k nodes fit in memory and take about a minute.

Checkpoints (``checkpoint=`` a path) hold the table, the optimiser moments, the epoch and the
random-generator state in one safetensors file; an interrupted run resumed from it ends with
the same embedding, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from reality_stone.data.wordnet import Hierarchy
from reality_stone.geometry import Lorentz, ManifoldParameter, PoincareBall, lorentz, poincare
from reality_stone.geometry.conversions import poincare_to_lorentz
from reality_stone.geometry.validation import boundary_eps
from reality_stone.kernels.poincare_embedding import fused_step_available, poincare_embedding_step
from reality_stone.optim import RiemannianAdam

__all__ = ["GEOMETRIES", "INITS", "EmbeddingResult", "embed", "embed_hierarchy", "rank_metrics", "reconstruction_metrics",
           "tree_initialisation"]

GEOMETRIES = ("poincare", "lorentz", "euclidean")
SCHEDULES = ("constant", "linear")
INITS = ("tree", "random")


@dataclass(frozen=True)
class EmbeddingResult:
    geometry: str
    dim: int
    mean_rank: float
    map: float
    final_loss: float
    embedding: Tensor
    link_mean_rank: float | None = None
    link_map: float | None = None
    epochs: int = 0
    seconds: float = 0.0
    mean_rank_both: float = float("nan")
    map_both: float = float("nan")
    best_epoch: int | None = None


def _distance_fn(geometry: str, c: float) -> Callable[[Tensor, Tensor], Tensor]:
    if geometry == "poincare":
        return lambda a, b: poincare.dist(a, b, c=c, check=False)
    if geometry == "lorentz":
        return lambda a, b: lorentz.dist(a, b, c=c, check=False)
    if geometry == "euclidean":
        return lambda a, b: (a - b).norm(dim=-1)
    raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")


def reconstruction_metrics(dist: Tensor, adjacency: Tensor) -> tuple[float, float]:
    """Mean rank and MAP of the reconstruction from a dense (N, N) distance matrix.

    ``adjacency`` (N, N) bool, symmetric, no diagonal. Rank of a neighbour v of u = 1 +
    #(non-neighbours w ≠ u closer to u than v). AP(u) = mean over u's neighbours v_i (sorted
    by distance) of i / (position of v_i among all w ≠ u). (`rank_metrics` computes the same
    from an embedding in row chunks.)
    """
    n = dist.shape[0]
    if dist.shape != (n, n) or adjacency.shape != (n, n):
        raise ValueError(f"dist and adjacency must both be (N, N), got {tuple(dist.shape)} and {tuple(adjacency.shape)}")
    eye = torch.eye(n, dtype=torch.bool)
    ranks, aps = [], []
    for u in range(n):
        nb = adjacency[u] & ~eye[u]
        if not nb.any():
            continue
        d = dist[u]
        d_nb = d[nb].sort().values
        others = ~nb & ~eye[u]
        d_non = d[others].sort().values
        # non-neighbours strictly closer than each neighbour: searchsorted on the sorted list
        closer_non = torch.searchsorted(d_non, d_nb, right=False)
        ranks.append(closer_non.to(torch.float64) + 1)
        position = closer_non + torch.arange(1, len(d_nb) + 1)
        aps.append((torch.arange(1, len(d_nb) + 1, dtype=torch.float64) / position).mean())
    return float(torch.cat(ranks).mean()), float(torch.stack(aps).mean())


def _csr(pairs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(row pointer (n+1,), column indices) of directed pairs (E, 2), rows sorted."""
    order = torch.argsort(pairs[:, 0] * n + pairs[:, 1])
    cols = pairs[order, 1]
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    ptr[1:] = torch.bincount(pairs[:, 0], minlength=n).cumsum(0)
    return ptr, cols


def _order_scores(geometry: str, c: float):
    """``score(E, r0, r1)`` (r1 − r0, N): for each row u, a quantity strictly increasing in
    d(u, ·) — all that ranking needs, from one matrix product instead of N distance evaluations.

    Poincaré: d = arcosh(1 + 2c‖u − w‖² / ((1 − c‖u‖²)(1 − c‖w‖²)))/√c, so for fixed u rank by
    ‖u − w‖² / (1 − c‖w‖²); Lorentz: by −⟨u, w⟩_L; Euclidean: by ‖u − w‖².
    """
    def sq(E):
        return (E * E).sum(-1)

    if geometry == "poincare":
        def score(E, r0, r1):
            n2 = sq(E)
            return (n2[r0:r1, None] + n2[None, :] - 2 * E[r0:r1] @ E.T) / (1 - c * n2)[None, :].clamp_min(1e-300)
    elif geometry == "lorentz":
        def score(E, r0, r1):
            Ef = torch.cat([-E[:, :1], E[:, 1:]], dim=1)
            return -(E[r0:r1] @ Ef.T)
    elif geometry == "euclidean":
        def score(E, r0, r1):
            n2 = sq(E)
            return n2[None, :] - 2 * E[r0:r1] @ E.T
    else:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return score


_MAX_BATCHED_POSITIVES = 128


def rank_metrics(embedding: Tensor, geometry: str, positives: Tensor, excluded: Tensor | None = None, *,
                 c: float = 1.0, chunk: int = 256) -> tuple[float, float]:
    """Mean rank and MAP of the ``positives`` pairs (E, 2), both directions listed, against all
    nodes, from ``embedding`` (N, ...) in row chunks (memory: chunk × N scores).

    For a row u: candidates are all nodes except u and the ``excluded`` pairs (u, w) (the
    training edges, in link prediction); rank of a positive v = 1 + #(candidates that are not
    positives and are strictly closer than v); AP(u) = mean_i i / (position of the i-th
    closest positive among the candidates).
    """
    n = embedding.shape[0]
    score = _order_scores(geometry, c)
    E = embedding.detach().double()
    if not bool(torch.isfinite(E).all()):  # NaN scores would rank as garbage, not fail
        raise ValueError(f"the embedding holds {int((~torch.isfinite(E)).any(-1).sum())} non-finite rows "
                         "(training diverged: lower lr)")
    pos_ptr, pos_cols = _csr(positives, n)
    ex_ptr, ex_cols = _csr(excluded, n) if excluded is not None and len(excluded) else (None, None)
    ranks, aps = [], []
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        p0, p1 = int(pos_ptr[r0]), int(pos_ptr[r1])
        if p0 == p1:
            continue
        d = score(E, r0, r1)  # (R, N), increasing in distance along each row
        rows = torch.arange(r1 - r0)
        d[rows, torch.arange(r0, r1)] = math.inf  # u itself is no candidate
        if ex_ptr is not None:
            e0, e1 = int(ex_ptr[r0]), int(ex_ptr[r1])
            ex_rows = torch.repeat_interleave(rows, ex_ptr[r0 + 1 : r1 + 1] - ex_ptr[r0:r1])
            d[ex_rows, ex_cols[e0:e1]] = math.inf
        counts = pos_ptr[r0 + 1 : r1 + 1] - pos_ptr[r0:r1]
        p_rows = torch.repeat_interleave(rows, counts)
        p_cols = pos_cols[p0:p1]
        ps = d[p_rows, p_cols]
        d[p_rows, p_cols] = math.inf  # the positives are not counted as closer candidates
        # per row, the positives sorted by score: a stable sort by row after a sort by score
        o = torch.argsort(ps)
        o = o[torch.sort(p_rows[o], stable=True).indices]
        ps, p_rows = ps[o], p_rows[o]
        i = torch.arange(p1 - p0) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        closer = torch.empty(p1 - p0, dtype=torch.int64)
        # rows with few positives: bucket every candidate between the sorted positive scores
        # (N·log k per row, batched); the few rows with many (an ancestor of most of the
        # hierarchy) count with a sort of their row
        small = counts <= _MAX_BATCHED_POSITIVES
        if bool(small.any()):
            srows = rows[small]
            K = int(counts[small].max())
            local = torch.full((r1 - r0,), -1, dtype=torch.int64)
            local[srows] = torch.arange(len(srows))
            sel = small[p_rows]
            bounds = torch.full((len(srows), K), math.inf, dtype=d.dtype)
            bounds[local[p_rows[sel]], i[sel]] = ps[sel]
            buckets = torch.searchsorted(bounds, d[srows])  # (S, N): positives below each candidate
            buckets += (torch.arange(len(srows)) * (K + 1))[:, None]
            cum = torch.bincount(buckets.reshape(-1), minlength=len(srows) * (K + 1)).reshape(-1, K + 1).cumsum(1)
            closer[sel] = cum[local[p_rows[sel]], i[sel]]
        for r in rows[~small].tolist():
            m = p_rows == r
            row_sorted = torch.sort(d[r]).values
            closer[m] = torch.searchsorted(row_sorted, ps[m])
        ranks.append((closer + 1).double())
        prec = (i + 1).double() / (closer + i + 1).double()
        has = counts > 0
        aps.append(torch.zeros(r1 - r0, dtype=torch.float64).index_add_(0, p_rows, prec)[has] / counts[has].double())
    return float(torch.cat(ranks).mean()), float(torch.cat(aps).mean())


class _EdgeSet:
    """Membership of (u, v) pairs in a closure for whole batches: sorted u·N + v keys."""

    def __init__(self, pairs: Tensor, n: int):
        self.n = n
        self.keys = torch.sort(pairs[:, 0] * n + pairs[:, 1]).values

    def contains(self, u: Tensor, v: Tensor) -> Tensor:
        q = u * self.n + v
        i = torch.searchsorted(self.keys, q).clamp_max(len(self.keys) - 1)
        return self.keys[i] == q


def _sample_negatives(u: Tensor, n: int, negatives: int, hard: int, ptr: Tensor | None, cols: Tensor | None,
                      g: torch.Generator, back: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """(B, negatives) candidate negatives for anchors ``u`` (B,): ``negatives − hard`` uniform over
    the nodes, ``hard`` two closure hops from u (w, a neighbour of v, a neighbour of u; ``ptr``,
    ``cols``: the training closure's CSR). Uniform negatives soon lie far from u and stop moving
    it; what the ranking metrics count against u are the nodes that end up near it — cousins,
    reached through a shared ancestor — so part of the softmax is spent on them. A draw that is
    u or a neighbour of u is left out of the softmax by the caller, as for uniform ones.
    ``back``: (ptr, cols) of the reversed pairs, for directed training, where ``ptr``/``cols``
    lead only to ancestors: the second hop goes down from the ancestor instead."""
    neg = torch.randint(0, n, (len(u), negatives - hard), generator=g)
    if hard == 0:
        return neg
    def random_neighbour(x: Tensor, p: Tensor = ptr, c: Tensor = cols) -> Tensor:  # the batch rows' degrees only
        lo = p[x]
        return c[lo + (torch.rand(x.shape, generator=g, dtype=torch.float64) * (p[x + 1] - lo)).long()]

    first = random_neighbour(u[:, None].expand(-1, hard))
    return torch.cat([neg, random_neighbour(first, *(back if back is not None else (ptr, cols)))], dim=1)


def _split(edges: Tensor, holdout: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if holdout == 0:
        return edges, edges[:0]
    perm = torch.randperm(len(edges), generator=g)
    k = int(round(holdout * len(edges)))
    return edges[perm[k:]], edges[perm[:k]]


def _use_fused(fused: bool | None, geometry: str) -> bool:
    if fused is None:
        return geometry == "poincare" and fused_step_available()
    if fused and geometry != "poincare":
        raise ValueError(f"the fused training step is for the Poincaré ball only, not {geometry!r}")
    if fused and not fused_step_available():
        raise RuntimeError("fused=True needs the compiled kernels; reality_stone.kernels.extension_status() says why "
                           "they are missing")
    return bool(fused)


def _fingerprint(hierarchy: Hierarchy, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(hierarchy.edges.numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, weight: Tensor, opt: RiemannianAdam, g: torch.Generator, epoch: int,
                     fingerprint: str, loss: float, best: dict) -> None:
    from safetensors.torch import save_file

    from reality_stone.models.format import atomic_path

    state = opt.state[weight]
    tensors = {"weight": weight.detach().clone(), "rng": g.get_state()}
    meta = {"epoch": str(epoch), "fingerprint": fingerprint, "loss": repr(loss), "step": str(state.get("step", 0))}
    if state:
        tensors |= {"exp_avg": state["exp_avg"].clone(), "exp_avg_sq": state["exp_avg_sq"].clone()}
    if best["table"] is not None:  # keep_best: the best epoch so far, so a resumed run returns the same
        tensors["best"] = best["table"].clone()
        meta |= {"best_score": repr(best["score"]), "best_epoch": str(best["epoch"]), "stale": str(best["stale"])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_checkpoint(path: Path, weight: Tensor, opt: RiemannianAdam, g: torch.Generator, fingerprint: str,
                     best: dict):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error types
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(f"{path}: the checkpoint is of another hierarchy or other settings; delete it or choose "
                         "another path")
    if t["weight"].shape != weight.shape or t["weight"].dtype != weight.dtype:
        raise ValueError(f"{path}: checkpoint table {tuple(t['weight'].shape)} does not match {tuple(weight.shape)}")
    with torch.no_grad():
        weight.copy_(t["weight"])
    if "exp_avg" in t:
        opt.state[weight] = {"step": int(meta["step"]), "exp_avg": t["exp_avg"], "exp_avg_sq": t["exp_avg_sq"]}
    if "best" in t:
        if t["best"].shape != weight.shape or t["best"].dtype != weight.dtype:
            raise ValueError(f"{path}: checkpoint's best table {tuple(t['best'].shape)} does not match "
                             f"{tuple(weight.shape)}")
        try:
            best.update(table=t["best"], score=float(meta["best_score"]), epoch=int(meta["best_epoch"]),
                        stale=int(meta["stale"]))
        except (KeyError, ValueError):
            raise ValueError(f"{path}: checkpoint holds a best table without its score, epoch and count") from None
    g.set_state(t["rng"])
    return int(meta["epoch"]), float(meta["loss"])


def _tree_parents(edges: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(parent (n,), depth (n,)) of a spanning tree of the closure ``edges`` (E, 2) (descendant,
    ancestor): each node's parent is its ancestor with the most ancestors (in a tree, the direct
    parent; with several parents, the deepest; ties to the lowest index); −1 and depth 0 for roots."""
    n_anc = torch.bincount(edges[:, 0], minlength=n)
    key = n_anc[edges[:, 1]] * n + (n - 1 - edges[:, 1])  # most ancestors first, then the lowest index
    best = torch.full((n,), -1, dtype=torch.int64).scatter_reduce_(0, edges[:, 0], key, reduce="amax")
    parent = torch.where(best >= 0, n - 1 - best % n, -1)
    depth = torch.zeros(n, dtype=torch.int64)
    has = parent >= 0
    for _ in range(n):  # depth = parent's depth + 1, a level per pass (the chain is at most n long)
        nxt = torch.where(has, depth[parent.clamp_min(0)] + 1, 0)
        if torch.equal(nxt, depth):
            break
        depth = nxt
    return parent, depth


# The tree start, a Sarkar-style construction spread for low dimensions. A node's children leave its
# direction along tangent offsets of length w — its cone's width (angle atan w); a single root's is
# 1 — in directions spread evenly over the sphere of tangent directions (`_spread_directions`). A child whose nearest sibling lies at chord s
# on that unit sphere gets the width TREE_CONE · w · min(s, 1) (< s/2: sibling cones stay disjoint)
# and the radius √c·d = 2 ln(1/w_child) + TREE_RADIUS_OFFSET. Why that radius: two siblings
# θ = w_child / TREE_CONE apart at radius R are 2R + 2 ln(θ/2) ≈ R + TREE_RADIUS_OFFSET −
# 2 ln(2·TREE_CONE) ≈ R + 1.7 apart — farther than either is from the origin, so their ancestors
# (at smaller radii, on the way in) rank before them. A large family thus pushes its subtree out
# (less angle for each child) as far as the dimension requires. Measured before any training
# (reference-protocol MAP; `benchmarks/tree_start.py`): WordNet nouns 5-d 0.94 / 10-d 0.95, against
# 0.55 / 0.81 for the construction before it (random offsets of angle e^{−(depth−1)}, radius
# 2·depth − 1). On nouns 5-d a cone of 0.25 / 0.5 gave 0.79 / 0.92, an offset of 0 / 2 gave
# 0.94 / 0.93. On the benchmark's six other hierarchies (two of them forests) the constants stay
# within 0.03 of the best value tried at 5 and 10 dimensions.
TREE_CONE = 0.35
TREE_RADIUS_OFFSET = 1.0
TREE_SPREAD_STEPS = 60  # repulsion steps per family (with a step shrinking linearly to 0)
TREE_SPREAD_MAX = 4096  # larger families keep random directions: the repulsion is O(size²) per step


def _tree_radius_limit(dtype: torch.dtype) -> float:
    """The largest √c·d of the tree start in ``dtype``: 2 below the radius of the boundary margin."""
    return 2 * math.atanh(1 - boundary_eps(dtype)) - 2


def _spread_directions(family: Tensor, k: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Unit vectors in R^k, spread evenly within each family, and each one's chord to its nearest
    family member (2 for an only child).

    ``family`` (m,): a family id per member (members of one family need not be adjacent).
    Returns (m, k) float64 directions and (m,) chords. k = 1: the points of the interval [−1, 1]
    at equal spacing (1-d has no sphere to spread over); k = 2: equal angles on the circle from a
    random phase; k ≥ 3: random points moved ``TREE_SPREAD_STEPS`` times along the tangential
    force of the Riesz (k − 1)-energy with a shrinking step — families of similar size are
    padded to a power of two (up to 1,024) and moved together, so the work is O(Σ size²·k) per
    step; families above ``TREE_SPREAD_MAX`` keep their random directions (their chords are
    still exact, computed in row chunks).
    """
    m = len(family)
    order = torch.argsort(family, stable=True)
    fam_sorted = family[order]
    _, counts = torch.unique_consecutive(fam_sorted, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    size = torch.repeat_interleave(counts, counts)  # per sorted member
    pos = torch.arange(m) - torch.repeat_interleave(starts, counts)  # index within the family
    fam_index = torch.repeat_interleave(torch.arange(len(counts)), counts)
    out = torch.empty(m, k, dtype=torch.float64)
    chord = torch.full((m,), 2.0, dtype=torch.float64)
    caps = torch.where((size > 1) & (size <= 1024), 2 ** torch.ceil(torch.log2(size.double())).long(), size)
    for cap in torch.unique(caps).tolist():
        sel = torch.nonzero(caps == cap).flatten()  # sorted members in families of this padded size
        fams, slot = torch.unique(fam_index[sel], return_inverse=True)
        b = len(fams)
        x = torch.randn(b, cap, k, generator=g, dtype=torch.float64)
        valid = torch.zeros(b, cap, dtype=torch.bool)
        valid[slot, pos[sel]] = True
        if k == 1:
            x[slot, pos[sel], 0] = -1 + (2 * pos[sel].double() + 1) / size[sel]
        elif k == 2:
            phase = torch.rand(b, generator=g, dtype=torch.float64)[slot] * 2 * math.pi
            angle = phase + 2 * math.pi * pos[sel].double() / size[sel]
            x[slot, pos[sel], 0], x[slot, pos[sel], 1] = angle.cos(), angle.sin()
        else:
            x /= x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        if k >= 3 and 1 < cap <= TREE_SPREAD_MAX:
            pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(cap, dtype=torch.bool)
            step = 0.6 * cap ** (-1.0 / (k - 1))  # ~0.3 of the spacing of cap points on S^{k−1}
            for t in range(TREE_SPREAD_STEPS):
                # on the unit sphere ‖x_i − x_j‖² = 2 − 2⟨x_i, x_j⟩, and the force
                # Σ_j w_ij (x_i − x_j) = x_i Σ_j w_ij − (W x)_i loses its first term to the projection
                r2 = (2 - 2 * torch.bmm(x, x.transpose(1, 2))).clamp_min(1e-24)
                w = torch.where(pair, r2 ** (-(k + 1) / 2), 0.0)
                force = -torch.bmm(w, x)
                force -= (force * x).sum(-1, keepdim=True) * x  # along the sphere
                force /= force.norm(dim=-1, keepdim=True).clamp_min(1e-300)
                x = x + step * (1 - t / TREE_SPREAD_STEPS) * force
                x /= x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        if cap > 1:
            nearest = torch.empty(b, cap, dtype=torch.float64)
            for r0 in range(0, cap, 1024):  # memory b × 1024 × cap
                r1 = min(cap, r0 + 1024)
                d = torch.cdist(x[:, r0:r1], x).masked_fill(~valid[:, None, :], math.inf)
                d[:, torch.arange(r1 - r0), torch.arange(r0, r1)] = math.inf  # not itself
                nearest[:, r0:r1] = d.amin(-1)
            chord[order[sel]] = nearest[slot, pos[sel]]
        out[order[sel]] = x[slot, pos[sel]]
    return out, chord


def _tangent_at(direction: Tensor, offset: Tensor) -> Tensor:
    """(m, d) vectors tangent to the unit sphere at ``direction`` (m, d): the Householder
    reflection that takes e₀ to the direction applied to (0, ``offset``) ((m, d − 1))."""
    e0 = torch.zeros_like(direction)
    e0[:, 0] = 1.0
    v = e0 - direction
    nv = v.norm(dim=1, keepdim=True)
    v = torch.where(nv > 1e-12, v / nv.clamp_min(1e-300), 0.0)  # direction = e₀: the identity
    z = torch.cat([torch.zeros(len(offset), 1, dtype=offset.dtype), offset], dim=1)
    return z - 2 * (z * v).sum(1, keepdim=True) * v


def tree_initialisation(hierarchy: Hierarchy, dim: int, *, c: float = 1.0, dtype: torch.dtype = torch.float64,
                        seed: int = 0, max_radius: float | None = None) -> Tensor:
    """(N, dim) points in the Poincaré ball of curvature −c laid out from the hierarchy's tree.

    Every node hangs off one parent (`_tree_parents`: its ancestor with the most ancestors). A
    node of cone width w places its children at angle atan(w) from its own direction, spread
    evenly over the tangent directions (`_spread_directions`); a child whose nearest sibling is at chord
    s (unit tangent sphere) gets the width TREE_CONE · w · min(s, 1) and sits at
    R = √c·d = 2 ln(1/width) + TREE_RADIUS_OFFSET, clamped to ``max_radius`` (the constants'
    derivation and measurements are beside them). A single root: width 1, R = 0.05, a random
    direction. A forest's roots are one family spread over the whole sphere, placed as the
    children of a virtual root at the origin: width TREE_CONE · min(s, 1), radius as above
    (WordNet nouns cut below depth 5, 4,573 roots, 5-d: MAP 0.96 against 0.24 for the previous
    construction's random roots at the origin; `benchmarks/tree_start.py`).
    ``max_radius`` defaults to the largest R the dtype keeps apart from the boundary margin, less
    2 (capped at 28: float64; 10 in float32). Deterministic under ``seed``. Cost: seconds for
    82k WordNet nouns, most of it spreading the largest families.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
    if not c > 0:
        raise ValueError(f"curvature c must be positive, got {c}")
    n = hierarchy.num_nodes
    limit = _tree_radius_limit(dtype)
    max_radius = min(28.0, limit) if max_radius is None else float(max_radius)
    if not 0 < max_radius <= limit:
        raise ValueError(f"max_radius must be in (0, {limit:.1f}] for {dtype}, got {max_radius}")
    parent, depth = _tree_parents(hierarchy.edges, n)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, dim, generator=g, dtype=torch.float64)  # the roots' directions
    dirs /= dirs.norm(dim=1, keepdim=True).clamp_min(1e-300)
    child = torch.nonzero(parent >= 0).flatten()
    offset = torch.zeros(n, dim - 1, dtype=torch.float64)
    chord = torch.full((n,), 2.0, dtype=torch.float64)
    if len(child):
        offset[child], chord[child] = _spread_directions(parent[child], dim - 1, g)
    width = torch.ones(n, dtype=torch.float64)
    roots = torch.nonzero(parent < 0).flatten()
    radius = torch.full((n,), 0.05, dtype=torch.float64)
    if len(roots) > 1:  # a forest: its roots are one family spread over the whole sphere, placed as
        # the children of a virtual root at the origin (width and radius by the rule below)
        dirs[roots], root_chord = _spread_directions(torch.zeros(len(roots), dtype=torch.int64), dim, g)
        width[roots] = TREE_CONE * root_chord.clamp(max=1.0)
        radius[roots] = (2 * torch.log(1 / width[roots]) + TREE_RADIUS_OFFSET).clamp(0.05, max_radius)
    for k in range(1, int(depth.max()) + 1):  # a level at a time: parents are placed first
        m = depth == k
        p = parent[m]
        d = dirs[p] + width[p, None] * _tangent_at(dirs[p], offset[m])
        dirs[m] = d / d.norm(dim=1, keepdim=True).clamp_min(1e-300)
        # floored so that the deepest children still differ from their parent in float64
        width[m] = (TREE_CONE * width[p] * chord[m].clamp(max=1.0)).clamp_min(1e-10)
        radius[m] = (2 * torch.log(1 / width[m]) + TREE_RADIUS_OFFSET).clamp(0.05, max_radius)
    sc = math.sqrt(c)
    return (torch.tanh(radius / 2) / sc)[:, None].mul(dirs).to(dtype)  # √c·dist0 = radius


class _SampledMAP:
    """Reconstruction MAP (`rank_metrics`, the reference protocol) over a fixed random sample of
    at most ``size`` anchors of ``pairs`` (E, 2): the anchors' rows are moved to the front of the
    table so that only their row chunks are scored (seconds on 82k nodes instead of minutes)."""

    def __init__(self, pairs: Tensor, n: int, geometry: str, c: float, size: int, seed: int):
        anchors = torch.unique(pairs[:, 0])
        g = torch.Generator().manual_seed(seed)
        pick = anchors[torch.randperm(len(anchors), generator=g)[:size]]
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[pick] = True
        self.perm = torch.cat([pick, torch.nonzero(~chosen).flatten()])
        inv = torch.empty(n, dtype=torch.int64)
        inv[self.perm] = torch.arange(n)
        self.pairs = inv[pairs[chosen[pairs[:, 0]]]]
        self.geometry, self.c = geometry, c

    def metrics(self, weight: Tensor) -> tuple[float, float]:
        """(mean rank, MAP) over the sampled anchors."""
        return rank_metrics(weight.detach()[self.perm], self.geometry, self.pairs, c=self.c)

    def __call__(self, weight: Tensor) -> float:
        return self.metrics(weight)[1]


# Far from the origin the hyperboloid's float64 arithmetic loses digits as eps·x₀² (⟨x, y⟩_L and
# the transport of Adam's moment cancel terms of size x₀²): at √c·d ≈ 24 (x₀ ~ 1e10) training
# rows turned to NaN. The trainer keeps rows within √c·d ≤ 15 (x₀ ≈ 1.6e6, eps·x₀² ≈ 3e-4), the
# role the boundary margin plays in the ball.
LORENTZ_MAX_RADIUS = 15.0


@torch.no_grad()
def _bound_radius(weight: Tensor, c: float) -> None:
    xs = weight.data[:, 1:]
    limit = math.sinh(LORENTZ_MAX_RADIUS) / math.sqrt(c)  # ‖x_s‖ at √c·d = R
    n = xs.norm(dim=-1, keepdim=True)
    over = n > limit
    if bool(over.any()):
        xs.mul_(torch.where(over, limit / n, torch.ones_like(n)))
        weight.data.copy_(lorentz.project(weight.data, c=c))  # x₀ back onto the hyperboloid


def embed(
    hierarchy: Hierarchy,
    dim: int,
    geometry: str = "poincare",
    *,
    epochs: int = 300,
    batch_size: int = 512,
    negatives: int = 50,
    hard_negatives: int | None = None,
    lr: float | None = None,
    burn_in: int | None = None,
    schedule: str = "constant",
    c: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    holdout: float = 0.0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    progress: bool = False,
    evaluate: bool = True,
    max_seconds: float | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    fused: bool | None = None,
    init: str | None = None,
    directed: bool | None = None,
    keep_best: bool | None = None,
    patience: int | None = 10,
) -> EmbeddingResult:
    """Train an embedding of ``hierarchy`` in ``dim`` dimensions and evaluate it.

    Deterministic under ``seed``. ``holdout`` > 0 also reports link prediction on the held-out
    share of the closure edges. ``checkpoint``: written every ``checkpoint_every`` epochs and at
    the end; an existing one of the same hierarchy and settings is resumed. ``max_seconds``
    stops training after the first epoch that ends past it (the result says how many ran).
    ``schedule``: after the burn-in (``burn_in`` epochs at lr/10) the rate stays at ``lr``
    ("constant") or decays linearly to 0 at the last step of ``epochs`` ("linear").
    ``hard_negatives``: how many of the ``negatives`` per pair are drawn two closure hops from u
    (through a random neighbour: mostly cousins under a shared ancestor) instead of uniformly;
    they are the nodes the ranking metrics count against u once uniform ones lie far away.
    None: with the random start on the ball, a fifth of them (10 of 50 raised mammal 5-d MAP,
    both directions, from 0.918 to 0.932 over 3 seeds, and noun 10-d MAP at 40 epochs from
    0.742 to 0.754; 25 of 50 lowered both: `benchmarks/hard_negatives.py`); with the tree start
    0 (directed, 10 of 50 lowered the nouns' 10-d peak MAP from 0.926 to 0.920 and it fell
    faster after); 0 — uniform, as Nickel & Kiela — elsewhere, where it has not been measured.
    In directed training the second hop goes down from the ancestor (a cousin, not an ancestor).
    ``init``: "tree" (`tree_initialisation`; the default on the ball) or "random" (the paper's
    start; the default elsewhere). ``directed``: train only descendant → ancestor pairs, every
    non-ancestor a negative (the reference code; default with the tree start), or both directions
    of each edge (default with the random start, which it needs: directed training from noise
    reached mammal 5-d MAP 0.73 against 0.92). ``keep_best``: after each epoch, score the
    reconstruction MAP of a fixed sample of 1,000 anchors on the training pairs, return the best
    epoch's table and stop after ``patience`` epochs without a better one (None: never stop
    early); default with the tree start. Defaults that follow the start, when None: ``lr`` 0.5 per
    epoch (0.5 / batches per epoch, measured on nouns and mammals; 0.05 with the random start),
    ``burn_in`` 0 (20), ``hard_negatives`` 0 (see above). With ``holdout``, selection sees only
    the training pairs. `EmbeddingResult.map`/``mean_rank``: the reference implementation's
    reconstruction (each node's ancestors ranked against all other nodes); ``map_both``/
    ``mean_rank_both``: ancestors and descendants. ``best_epoch``: the epoch returned (0: the start; None
    without ``keep_best``).
    ``fused``: the Poincaré ball's compiled training step (`kernels.poincare_embedding`: the
    same loss and lazy Riemannian Adam update, ~5x faster per WordNet-noun epoch); None uses it
    when the kernels are built, False keeps the plain-torch step (the reference; for the ball on
    a small table it takes dense Adam steps, see below), True requires it.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("negatives", negatives)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if init is None:
        init = "tree" if geometry == "poincare" else "random"
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "tree" and geometry == "euclidean":
        raise ValueError("init='tree' is a hyperbolic construction; the euclidean baseline starts at random")
    tree = init == "tree"
    directed = tree if directed is None else bool(directed)
    keep_best = tree if keep_best is None else bool(keep_best)
    if patience is not None and not (isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
    if burn_in is None:
        burn_in = 0 if tree else 20
    if not (isinstance(burn_in, int) and burn_in >= 0):
        raise ValueError(f"burn_in must be a non-negative integer, got {burn_in!r}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    if hard_negatives is None:  # measured on the ball only (benchmarks/hard_negatives.py)
        hard_negatives = negatives // 5 if geometry == "poincare" and not tree else 0
    if not (isinstance(hard_negatives, int) and 0 <= hard_negatives <= negatives):
        raise ValueError(f"hard_negatives must be an integer in [0, negatives={negatives}], got {hard_negatives!r}")
    n = hierarchy.num_nodes
    if n < 2 or len(hierarchy.edges) == 0:
        raise ValueError("the hierarchy's closure is empty: nothing to embed")
    t_start = time.perf_counter()
    distance = _distance_fn(geometry, c)
    g = torch.Generator().manual_seed(seed)
    train_pairs, held = _split(hierarchy.edges, holdout, g)  # (descendant, ancestor)
    if directed:  # anchors are descendants; every non-ancestor is a negative
        closure, train, back = hierarchy.edges, train_pairs, _csr(train_pairs.flip(1), n)
    else:  # both directions, as the paper's text
        closure = torch.cat([hierarchy.edges, hierarchy.edges.flip(1)])
        train, back = torch.cat([train_pairs, train_pairs.flip(1)]), None
    steps_per_epoch = -(-len(train) // batch_size)
    if lr is None:
        lr = 0.5 / steps_per_epoch if tree else 0.05
    init_table = (torch.rand(n, dim, generator=g, dtype=dtype) - 0.5) * 2e-3
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if tree and not (ckpt is not None and ckpt.is_file()):  # a resumed run loads its table instead
        max_radius = None  # the ball's float limit; the hyperboloid's trainer keeps rows within its own
        if geometry == "lorentz":
            max_radius = min(LORENTZ_MAX_RADIUS - 1, _tree_radius_limit(dtype))
        init_table = tree_initialisation(hierarchy, dim, c=c, dtype=dtype, seed=seed, max_radius=max_radius)
    if geometry == "poincare":
        weight = ManifoldParameter(init_table, PoincareBall(c, check=False, dtype=dtype))
    elif geometry == "lorentz":
        if tree:
            start = poincare_to_lorentz(init_table, c=c, check=False)
        else:
            start = lorentz.expmap0(torch.cat([torch.zeros(n, 1, dtype=dtype), init_table], dim=1), c=c)
        weight = ManifoldParameter(start, Lorentz(c, check=False, dtype=dtype))
    else:
        weight = torch.nn.Parameter(init_table)
    optimiser = RiemannianAdam([weight], lr=lr)
    settings = dict(dim=dim, geometry=geometry, batch_size=batch_size, negatives=negatives, lr=lr, burn_in=burn_in,
                    c=c, seed=seed, dtype=str(dtype), holdout=holdout, epochs=epochs, schedule=schedule)
    if hard_negatives:  # absent when 0: a checkpoint from before the option resumes with hard_negatives=0
        settings["hard_negatives"] = hard_negatives
    if tree or directed or keep_best:  # likewise: absent for the settings before these options
        settings |= dict(init=init, directed=directed, keep_best=keep_best, patience=patience)
    # a run with a constant rate may be resumed with more epochs; a decaying one depends on them
    fingerprint = _fingerprint(hierarchy, {k: v for k, v in settings.items() if k != "epochs" or schedule != "constant"})
    selector = _SampledMAP(train_pairs, n, geometry, c, size=1000, seed=seed + 1) if keep_best else None
    best = dict(score=-math.inf, epoch=0, table=None, stale=0)

    def settled() -> bool:  # keep_best's stop: `patience` epochs without a better sampled MAP
        return selector is not None and patience is not None and best["stale"] >= patience

    start_epoch, loss_value = 0, float("nan")
    epochs_run = start_epoch
    if ckpt is not None and ckpt.is_file():
        start_epoch, loss_value = _load_checkpoint(ckpt, weight, optimiser, g, fingerprint, best)
        epochs_run = start_epoch
    if selector is not None and start_epoch == 0:  # the start competes too: epoch 0
        best.update(score=selector(weight), epoch=0, table=weight.detach().clone(), stale=0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=min(start_epoch, epochs), desc=f"{geometry} d={dim}", unit="epoch")
    use_fused = _use_fused(fused, geometry)
    if use_fused:
        ptr, cols = _csr(closure, n)
        moments = optimiser.moments(weight)
        grad_buf = torch.zeros(n, weight.shape[1], dtype=torch.float64)
        betas, adam_eps = optimiser.defaults["betas"], optimiser.defaults["eps"]
    else:
        members = _EdgeSet(closure, n)
    train_ptr, train_cols = _csr(train, n) if hard_negatives else (None, None)
    zero = torch.zeros(1, dtype=torch.bool)
    # sparse row updates pay off when a batch touches a small part of the table (82k WordNet
    # nouns); on a small table (mammals: 1,170 rows, ~6,600 row references per batch) the dense
    # step is 4x faster. The two differ: a dense Adam step also moves rows by their momentum.
    # (The fused Poincaré step is always sparse: its cost is the batch's either way.)
    sparse = batch_size * (negatives + 2) < n
    decay_steps = max(1, (epochs - burn_in) * steps_per_epoch)
    for epoch in range(start_epoch, epochs):
        if settled():
            break  # resumed from the checkpoint written when the run settled
        perm = torch.randperm(len(train), generator=g)
        total = 0.0
        for i, s in enumerate(range(0, len(train), batch_size)):
            if epoch < burn_in:
                step_lr = lr / 10
            elif schedule == "linear":  # to 0 at the last step of `epochs`
                step_lr = lr * (1 - ((epoch - burn_in) * steps_per_epoch + i) / decay_steps)
            else:
                step_lr = lr
            for group in optimiser.param_groups:
                group["lr"] = step_lr
            batch = train[perm[s : s + batch_size]]
            u, v = batch[:, 0], batch[:, 1]
            neg = _sample_negatives(u, n, negatives, hard_negatives, train_ptr, train_cols, g, back)
            cand = torch.cat([v[:, None], neg], dim=1)
            if use_fused:
                moments["step"] += 1
                loss = poincare_embedding_step(weight.data, moments["exp_avg"], moments["exp_avg_sq"],
                                               moments["step"], u, cand, ptr, cols, grad_buf, c=c, lr=step_lr,
                                               betas=betas, eps=adam_eps)
                total += loss * len(batch)
                continue
            # negatives that are neighbours of u in the closure (or u itself) leave the softmax
            invalid = members.contains(u[:, None].expand_as(neg), neg) | (neg == u[:, None])
            eu = torch.nn.functional.embedding(u, weight, sparse=sparse)
            ec = torch.nn.functional.embedding(cand, weight, sparse=sparse)
            d = distance(eu[:, None, :], ec)
            mask = torch.cat([zero.expand(len(batch), 1), invalid], dim=1)
            logits = (-d).masked_fill(mask, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if geometry == "lorentz":
                _bound_radius(weight, c)
            total += loss.item() * len(batch)
        loss_value = total / len(train)
        if on_epoch is not None:
            on_epoch(epoch, loss_value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if selector is not None:
            score = selector(weight)
            if score > best["score"]:
                best.update(score=score, epoch=epoch + 1, table=weight.detach().clone(), stale=0)
            else:
                best["stale"] += 1
        out_of_time = max_seconds is not None and time.perf_counter() - t_start > max_seconds
        stop = out_of_time or settled()
        if ckpt is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or stop):
            _save_checkpoint(ckpt, weight, optimiser, g, epoch + 1, fingerprint, loss_value, best)
        epochs_run = epoch + 1
        if stop:
            break
    if bar is not None:
        bar.close()
    w = best["table"] if best["table"] is not None else weight.detach().clone()
    mean_rank = mean_ap = rank_both = map_both = float("nan")
    link_rank = link_ap = None
    if evaluate:
        mean_rank, mean_ap = rank_metrics(w, geometry, hierarchy.edges, c=c)
        rank_both, map_both = rank_metrics(w, geometry, torch.cat([hierarchy.edges, hierarchy.edges.flip(1)]), c=c)
        if len(held):
            link_rank, link_ap = rank_metrics(w, geometry, held, excluded=train_pairs, c=c)
    return EmbeddingResult(geometry, dim, mean_rank, mean_ap, loss_value, w, link_rank, link_ap, epochs_run,
                           time.perf_counter() - t_start, rank_both, map_both,
                           best["epoch"] if best["table"] is not None else None)


def embed_hierarchy(hierarchy: Hierarchy, dim: int, geometry: str = "poincare", **kwargs) -> EmbeddingResult:
    """`embed` (kept for the name the demo and benchmarks use)."""
    return embed(hierarchy, dim, geometry, **kwargs)
