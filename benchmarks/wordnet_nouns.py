"""Poincaré embeddings of the whole WordNet noun closure (Nickel & Kiela 2017's main task).

    python benchmarks/wordnet_nouns.py                    # 5-d and 10-d, 15 minutes of training each
    python benchmarks/wordnet_nouns.py --dims 10 --minutes 8
    -> benchmarks/results/wordnet_nouns.{json,md}

The closure of every noun synset under entity.n.01 with regular and instance hypernyms:
82,115 nodes, 743,241 edges (the paper's counts). Training stops after the first epoch past
the time budget; then the full reconstruction (every node ranked against all 82,115) is
evaluated — minutes on its own, not counted in the budget. Before training, one epoch of the
plain-torch reference step and one of the fused step (`kernels.poincare_embedding`, which the
training uses) are timed in the same run (--no-compare skips it). Threads: the library default
(set --threads to change); run it alone.
"""

from __future__ import annotations

import time

import torch

from reality_stone.data.wordnet import wordnet_closure
from reality_stone.hierarchy import embed, rank_metrics
from reality_stone.kernels.poincare_embedding import fused_step_available
from harness import arguments, parse, write_json, write_markdown

PAPER_MAP = {5: 0.823, 10: 0.851}  # Nickel & Kiela (2017), Table 1, WordNet nouns reconstruction


def main() -> None:
    ap = arguments(__doc__, threads=None)
    ap.add_argument("--dims", default="5,10")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per dimension")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--burn-in", type=int, default=2)
    ap.add_argument("--hard-negatives", type=int, default=0, help="of the 50 negatives, drawn two closure hops away")
    ap.add_argument("--schedule", default="constant", help="constant, or linear (needs --epochs: it decays to 0 there)")
    ap.add_argument("--epochs", type=int, default=None, help="stop here if the time budget lasts (default: budget only)")
    ap.add_argument("--no-compare", action="store_true", help="skip timing one reference and one fused epoch")
    args = parse(ap)
    if args.schedule == "linear" and args.epochs is None:
        ap.error("--schedule linear needs --epochs")
    threads = args.threads
    t0 = time.perf_counter()
    h = wordnet_closure("entity", instances=True)
    load_s = time.perf_counter() - t0
    print(f"closure: {h.num_nodes} nodes, {len(h.edges)} edges ({load_s:.1f} s)", flush=True)
    if not fused_step_available():  # builds the kernels now, outside every timed span
        print("warning: compiled kernels unavailable; training takes the plain-torch step", flush=True)
    epoch_seconds = {}
    if not args.no_compare:
        for name, fused in (("torch reference", False), ("fused", True)):
            r = embed(h, 10, "poincare", epochs=1, batch_size=args.batch_size, lr=args.lr, burn_in=0, seed=0,
                      evaluate=False, fused=fused)
            epoch_seconds[name] = r.seconds
            print(f"one 10-d epoch, {name} step: {r.seconds:.1f} s", flush=True)
    rows = []
    for dim in [int(d) for d in args.dims.split(",")]:
        t1 = time.perf_counter()
        r = embed(h, dim, "poincare", epochs=args.epochs or 10_000, batch_size=args.batch_size, lr=args.lr,
                  burn_in=args.burn_in, schedule=args.schedule, hard_negatives=args.hard_negatives, seed=0,
                  max_seconds=args.minutes * 60, progress=True,
                  evaluate=False)
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
                burn_in=args.burn_in, schedule=args.schedule, negatives=50,
                hard_negatives=args.hard_negatives, threads=threads, torch=torch.__version__,
                epoch_seconds_10d=epoch_seconds)
    write_json("wordnet_nouns", dict(meta=meta, results=rows))
    lines = [f"WordNet nouns, {h.num_nodes} nodes / {len(h.edges)} closure edges, Poincaré, "
             f"{args.minutes:g} min of training per dimension, {threads} threads, batch {args.batch_size}, "
             f"lr {args.lr:g} ({args.schedule}), burn-in {args.burn_in}, 50 negatives "
             f"({args.hard_negatives} of them two closure hops away):", "",
             "| dim | epochs | train (min) | mean rank ↓ | MAP ↑ | paper MAP (N&K 2017) | eval (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['epochs']} | {r['train_seconds'] / 60:.1f} | {r['mean_rank']:.2f} | "
                     f"{r['map']:.3f} | {r['paper_map'] if r['paper_map'] is not None else '—'} | {r['eval_seconds']:.0f} |")
    if epoch_seconds:
        ref, fus = epoch_seconds["torch reference"], epoch_seconds["fused"]
        batches = -(-2 * len(h.edges) // args.batch_size)
        lines += ["", f"One 10-d epoch ({batches:,} batches), same run: plain-torch reference step {ref:.1f} s, fused step "
                      f"{fus:.1f} s ({ref / fus:.1f}× faster)."]
    write_markdown("wordnet_nouns", lines)


if __name__ == "__main__":
    main()
