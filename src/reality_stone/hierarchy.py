"""Embedding a hierarchy (a transitive closure) in hyperbolic or Euclidean space.

Training follows Nickel & Kiela (2017, "Poincaré Embeddings for Learning Hierarchical
Representations"): for each closure edge (u, v), a softmax over -d(u, ·) against sampled
non-neighbours of u; a burn-in phase at lr/10. Hyperbolic embeddings are
`ManifoldParameter`s on the Poincaré ball trained with `RiemannianAdam`; the Euclidean
baseline is a plain parameter with Adam and the same loss.

Evaluation is the paper's reconstruction task: for every edge (u, v), the rank of v among
u's non-neighbours ordered by distance (mean rank, 1 is perfect), and the mean average
precision of u's neighbour set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from reality_stone.data.wordnet import Hierarchy
from reality_stone.geometry import PoincareBall, ManifoldParameter
from reality_stone.geometry import poincare
from reality_stone.optim import RiemannianAdam

__all__ = ["EmbeddingResult", "embed_hierarchy", "reconstruction_metrics"]


@dataclass(frozen=True)
class EmbeddingResult:
    geometry: str
    dim: int
    mean_rank: float
    map: float
    final_loss: float
    embedding: Tensor


def _distance_fn(geometry: str, c: float):
    if geometry == "poincare":
        return lambda a, b: poincare.dist(a, b, c=c, check=False)
    if geometry == "euclidean":
        return lambda a, b: (a - b).norm(dim=-1)
    raise ValueError(f"geometry must be 'poincare' or 'euclidean', got {geometry!r}")


def reconstruction_metrics(dist: Tensor, adjacency: Tensor) -> tuple[float, float]:
    """Mean rank and MAP of the reconstruction.

    ``dist`` (N, N) pairwise distances, ``adjacency`` (N, N) bool, symmetric, no diagonal.
    Rank of a neighbour v of u = 1 + #(non-neighbours w ≠ u closer to u than v).
    AP(u) = mean over u's neighbours v_i (sorted by distance) of i / (position of v_i among all w ≠ u).
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


def embed_hierarchy(
    hierarchy: Hierarchy,
    dim: int,
    geometry: str = "poincare",
    *,
    epochs: int = 300,
    batch_size: int = 512,
    negatives: int = 50,
    lr: float = 0.05,
    burn_in: int = 20,
    c: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> EmbeddingResult:
    """Train an embedding of ``hierarchy`` and evaluate its reconstruction. Deterministic under ``seed``."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    distance = _distance_fn(geometry, c)
    g = torch.Generator().manual_seed(seed)
    n = hierarchy.num_nodes
    adjacency = hierarchy.adjacency()
    init = (torch.rand(n, dim, generator=g, dtype=dtype) - 0.5) * 2e-3
    if geometry == "poincare":
        weight = ManifoldParameter(init, PoincareBall(c, check=False, dtype=dtype))
    else:
        weight = torch.nn.Parameter(init)
    optimiser = RiemannianAdam([weight], lr=lr)
    edges = torch.cat([hierarchy.edges, hierarchy.edges.flip(1)])  # both directions, as in the paper
    loss_value = float("nan")
    for epoch in range(epochs):
        for group in optimiser.param_groups:
            group["lr"] = lr / 10 if epoch < burn_in else lr
        perm = torch.randperm(len(edges), generator=g)
        total = 0.0
        for start in range(0, len(edges), batch_size):
            batch = edges[perm[start : start + batch_size]]
            u, v = batch[:, 0], batch[:, 1]
            neg = torch.randint(0, n, (len(batch), negatives), generator=g)
            # resample negatives that are neighbours (or u itself) by masking them out of the softmax
            invalid = adjacency[u[:, None], neg] | (neg == u[:, None])
            cand = torch.cat([v[:, None], neg], dim=1)
            d = distance(weight[u][:, None, :], weight[cand])
            logits = (-d).masked_fill(torch.cat([torch.zeros_like(invalid[:, :1]), invalid], 1), float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        loss_value = total / len(edges)
    with torch.no_grad():
        w = weight.detach()
        dmat = distance(w[:, None, :], w[None, :, :])
    mean_rank, mean_ap = reconstruction_metrics(dmat, adjacency)
    return EmbeddingResult(geometry, dim, mean_rank, mean_ap, loss_value, w.clone())
