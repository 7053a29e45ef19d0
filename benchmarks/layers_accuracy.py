"""Dense vs butterfly vs hyperbolic layers on real data, trained from scratch (equal epochs, 5 seeds).

    python benchmarks/layers_accuracy.py   # -> results/layers_accuracy.{json,md}

Tabular / image data bundled with scikit-learn: digits (8×8 images, 64 features, 10
classes) and wine (13 features, 3 classes); stratified 70/30 split per seed, standardised on
the training part. Models (hidden width H = 64 for digits, 16 for wine):

* dense: Linear(d, H) → ReLU → Linear(H, H) → ReLU → Linear(H, K)
* butterfly: ButterflyLinear for the two hidden maps, Linear(H, K) head
* hyperbutterfly + MLR: ButterflyLinear(d, H) → ToPoincare → HyperButterfly(H, tanh) → HyperbolicMLR
* möbius + MLR: ToPoincare → MobiusLinear(d, H) → σ_c → MobiusLinear(H, H) → σ_c → HyperbolicMLR

WordNet (the mammal closure of the Foundation issue): a 2-D Poincaré embedding of the 1170
nodes is trained once (Nickel & Kiela loss); then, per subtree, "is the node in this
subtree?" is learnt from the embedded points by HyperbolicMLR vs Euclidean logistic
regression on the same points (Ganea et al. 2018's experiment), 5 split seeds, test F1.
"""

from __future__ import annotations

import statistics

import torch
from sklearn.datasets import load_digits, load_wine
from sklearn.model_selection import train_test_split
from torch import nn

from reality_stone.data.wordnet import wordnet_closure
from reality_stone.geometry import PoincareBall
from reality_stone.hierarchy import embed_hierarchy
from reality_stone.nn import ButterflyLinear, HyperbolicMLR, HyperButterfly, MobiusLinear, ToPoincare
from harness import arguments, parse, write_json, write_markdown

SEEDS = [0, 1, 2, 3, 4]
EPOCHS = 60


class TangentAct(nn.Module):
    """σ_c(y) = exp0(relu(log0(y))): a nonlinearity between Möbius layers."""

    def __init__(self, ball: PoincareBall):
        super().__init__()
        self.ball = ball

    def forward(self, y):
        return self.ball.expmap0(torch.relu(self.ball.logmap0(y)))


def make_model(kind: str, d: int, H: int, K: int) -> nn.Module:
    if kind == "dense":
        return nn.Sequential(nn.Linear(d, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, K))
    if kind == "butterfly":
        return nn.Sequential(ButterflyLinear(d, H), nn.ReLU(), ButterflyLinear(H, H), nn.ReLU(), nn.Linear(H, K))
    ball = PoincareBall(1.0, learn_c=True, check=False, dtype=torch.float32)
    if kind == "hyperbutterfly + MLR":
        return nn.Sequential(ButterflyLinear(d, H), ToPoincare(ball=ball), HyperButterfly(H, ball=ball, activation="tanh"),
                             HyperbolicMLR(H, K, ball=ball))
    if kind == "möbius + MLR":
        return nn.Sequential(ToPoincare(ball=ball), MobiusLinear(d, H, ball=ball), TangentAct(ball),
                             MobiusLinear(H, H, ball=ball), TangentAct(ball), HyperbolicMLR(H, K, ball=ball))
    raise ValueError(kind)


def train_eval(model: nn.Module, Xtr, ytr, Xte, yte, seed: int, epochs: int = EPOCHS, lr: float = 1e-2) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float((model(Xte).argmax(-1) == yte).float().mean())


def tabular() -> list[dict]:
    rows = []
    for name, loader, H in (("digits", load_digits, 64), ("wine", load_wine, 16)):
        X, y = loader(return_X_y=True)
        K = int(y.max()) + 1
        for kind in ("dense", "butterfly", "hyperbutterfly + MLR", "möbius + MLR"):
            accs = []
            for seed in SEEDS:
                Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
                mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
                t = lambda a: torch.tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
                torch.manual_seed(seed)
                model = make_model(kind, X.shape[1], H, K)
                accs.append(train_eval(model, t(Xtr), torch.tensor(ytr), t(Xte), torch.tensor(yte), seed))
            params = sum(p.numel() for p in make_model(kind, X.shape[1], H, K).parameters())
            row = dict(dataset=name, model=kind, mean=statistics.mean(accs), std=statistics.stdev(accs), params=params,
                       accuracies=accs)
            rows.append(row)
            print(row, flush=True)
    return rows


def wordnet() -> list[dict]:
    h = wordnet_closure()
    emb = embed_hierarchy(h, 2, "poincare", init="random", hard_negatives=0, seed=0).embedding.float()
    n = h.num_nodes
    anc = [set() for _ in range(n)]
    for d, a in h.edges.tolist():
        anc[d].add(a)
    sizes = torch.bincount(h.edges[:, 1], minlength=n)
    # subtrees holding 5–30 % of the nodes, largest first, at most 4
    cand = [i for i in sizes.argsort(descending=True).tolist() if 0.05 * n <= sizes[i] <= 0.3 * n][:4]
    rows = []
    for root in cand:
        y = torch.tensor([int(root in anc[i] or i == root) for i in range(n)])
        f1 = {"hyperbolic MLR": [], "Euclidean logistic regression": []}
        for seed in SEEDS:
            idx_tr, idx_te = train_test_split(torch.arange(n).numpy(), test_size=0.2, stratify=y.numpy(), random_state=seed)
            for kind in f1:
                torch.manual_seed(seed)
                model = HyperbolicMLR(2, 2, check=False) if kind == "hyperbolic MLR" else nn.Linear(2, 2)
                train_eval_f1 = _train_f1(model, emb, y, idx_tr, idx_te, seed)
                f1[kind].append(train_eval_f1)
        row = dict(subtree=h.names[root], size=int(sizes[root]) + 1,
                   **{f"{k} F1": statistics.mean(v) for k, v in f1.items()},
                   **{f"{k} F1 std": statistics.stdev(v) for k, v in f1.items()})
        rows.append(row)
        print(row, flush=True)
    return rows


def _train_f1(model, X, y, idx_tr, idx_te, seed) -> float:
    # class-balanced loss: subtrees are minorities, plain accuracy would reward "never"
    w = torch.tensor([1.0, float((y[idx_tr] == 0).sum() / (y[idx_tr] == 1).sum())])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[idx_tr]), y[idx_tr], weight=w).backward()
        opt.step()
    with torch.no_grad():
        pred = model(X[idx_te]).argmax(-1)
    t = y[idx_te]
    tp = float(((pred == 1) & (t == 1)).sum())
    prec = tp / max(float((pred == 1).sum()), 1.0)
    rec = tp / max(float((t == 1).sum()), 1.0)
    return 2 * prec * rec / max(prec + rec, 1e-12)


def main() -> None:
    parse(arguments(__doc__, threads=1))  # models this small gain nothing from threads
    tab = tabular()
    wn = wordnet()
    write_json("layers_accuracy", dict(tabular=tab, wordnet=wn, epochs=EPOCHS, seeds=SEEDS))
    lines = ["| dataset | model | test accuracy (mean ± std, 5 seeds) | parameters |", "|---|---|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['model']} | {r['mean']:.4f} ± {r['std']:.4f} | {r['params']} |" for r in tab]
    lines += ["", "WordNet mammals, 2-D Poincaré embedding; subtree membership, test F1 (5 seeds):", "",
              "| subtree | nodes | hyperbolic MLR | Euclidean logistic regression |", "|---|---:|---:|---:|"]
    lines += [f"| {r['subtree']} | {r['size']} | {r['hyperbolic MLR F1']:.3f} ± {r['hyperbolic MLR F1 std']:.3f} | "
              f"{r['Euclidean logistic regression F1']:.3f} ± {r['Euclidean logistic regression F1 std']:.3f} |" for r in wn]
    write_markdown("layers_accuracy", lines)


if __name__ == "__main__":
    main()
