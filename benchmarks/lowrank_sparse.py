"""Low-rank + sparse residual on real weights: is the residual worth its bytes?

    python benchmarks/lowrank_sparse.py   # -> results/lowrank_sparse.{json,md}

For each real matrix (`matrices.real()`: fp32 MiniLM, Q4_1-dequantised SmolLM2) and bit budget
(8, 4.25 and 2.5 bits per weight, every stored byte counted), the best split between the rank
and the sparse fraction (0, 0.5, 1, 2, 4, 8 % of the entries; the rank fills the remaining
bytes) against the best round-to-nearest int8…int2 configuration at the same bytes.
"""

from __future__ import annotations


from matrices import real
from reality_stone.codecs import relative_error, sqnr_db
from reality_stone.codecs.lowrank import LowRankConfig
from reality_stone.codecs.rtn import RTNConfig
from harness import arguments, parse, write_json, write_markdown

BUDGETS = (8.0, 4.25, 2.5)  # bits per weight
SPARSE = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)
RTN_CHOICES = [(8, 128), (8, 32), (4, 128), (4, 64), (4, 32), (3, 128), (3, 64), (2, 128), (2, 64)]


def fit(W, sparse: float, budget_bytes: float):
    """The largest rank whose encoding with this sparse fraction fits the budget, or None."""
    m, n = W.shape
    col_bytes = 2 if n <= 2**16 else 4
    sparse_bytes = (4 * (m + 1) + (col_bytes + 2) * round(sparse * m * n)) if sparse else 0
    rank = int((budget_bytes - sparse_bytes) // (2 * (m + n)))
    while rank >= 1:
        enc = LowRankConfig(rank=rank, sparse=sparse).encode(W)
        if enc.nbytes <= budget_bytes:  # header bytes: step down until it fits
            return enc
        rank -= 1
    return None


def main() -> None:
    parse(arguments(__doc__, threads=None))
    rows = []
    for name, W in real().items():
        m, n = W.shape
        for bpw in BUDGETS:
            budget = m * n * bpw / 8
            row = dict(matrix=name, shape=[m, n], budget_bpw=bpw, lowrank=[])
            for sparse in SPARSE:
                enc = fit(W, sparse, budget)
                if enc is not None:
                    D = enc.decode()
                    row["lowrank"].append(dict(sparse=sparse, rank=enc.A.shape[1], bpw=enc.bits_per_weight(),
                                               rel_error=relative_error(W, D), sqnr_db=sqnr_db(W, D)))
            for bits, group in RTN_CHOICES:
                enc = RTNConfig(bits=bits, group=group).encode(W)
                if enc.nbytes <= budget:
                    err = relative_error(W, enc.decode())
                    if "rtn" not in row or err < row["rtn"]["rel_error"]:
                        row["rtn"] = dict(config=f"int{bits} g{group}", bpw=enc.bits_per_weight(), rel_error=err,
                                          sqnr_db=sqnr_db(W, enc.decode()))
            rows.append(row)
            print(name, bpw, [(r["sparse"], r["rank"], round(r["rel_error"], 3)) for r in row["lowrank"]],
                  row.get("rtn", {}).get("rel_error"), flush=True)
    write_json("lowrank_sparse", rows)
    lines = ["Relative Frobenius error at equal bytes (every byte counted). SVD alone, the best SVD + sparse split "
             "(sparse fraction and rank in brackets), best RTN at the same bytes (`python benchmarks/lowrank_sparse.py`).",
             "", "| matrix | bits/weight | SVD alone (rank) | best SVD + sparse (fraction, rank) | best RTN |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        plain = next((e for e in r["lowrank"] if e["sparse"] == 0), None)
        best = min(r["lowrank"], key=lambda e: e["rel_error"], default=None)
        cell_plain = f"{plain['rel_error']:.3f} (r={plain['rank']})" if plain else "—"
        cell_best = f"{best['rel_error']:.3f} ({100 * best['sparse']:g} %, r={best['rank']})" if best else "—"
        rtn = f"{r['rtn']['rel_error']:.3f} ({r['rtn']['config']})" if "rtn" in r else "—"
        lines.append(f"| {r['matrix']} | {r['budget_bpw']:g} | {cell_plain} | {cell_best} | {rtn} |")
    write_markdown("lowrank_sparse", lines)


if __name__ == "__main__":
    main()
