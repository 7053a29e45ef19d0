"""Sparse × dense products: CSR vs COO (``torch.sparse.mm``) vs the dense matmul, same entries.

    python benchmarks/sparse_product.py   # -> results/sparse_product.{json,md}

Why `reality_stone.kernels.sparse` builds CSR: the RBE coefficients and the low-rank residual
are one sparse (out, in) matrix times x. 4096×4096, random positions at 1 / 2 / 5 % density,
float32, batch 1 / 8 / 64, 2 threads, warm (the same matrix every call), median of 20.
"""

from __future__ import annotations


import torch

from reality_stone.kernels.sparse import csr_matrix
from harness import arguments, parse, round_robin, write_json, write_markdown

N = 4096
DENSITIES = (0.01, 0.02, 0.05)
BATCHES = (1, 8, 64)


def main() -> None:
    parse(arguments(__doc__, threads=2))
    g = torch.Generator().manual_seed(0)
    rows = []
    for density in DENSITIES:
        nnz = int(density * N * N)
        keep = torch.randperm(N * N, generator=g)[:nnz].sort().values
        r, c = keep // N, keep % N
        vals = torch.randn(nnz, generator=g)
        coo = torch.sparse_coo_tensor(torch.stack([r, c]), vals, (N, N), check_invariants=True).coalesce()
        crow = torch.zeros(N + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(r, minlength=N).cumsum(0)
        csr = csr_matrix(crow, c, vals, (N, N))
        dense = coo.to_dense()
        for batch in BATCHES:
            x = torch.randn(batch, N, generator=g)
            ref = x @ dense.T
            assert torch.allclose((csr @ x.T).T, ref, atol=1e-4) and torch.allclose(torch.sparse.mm(coo, x.T).T, ref,
                                                                                      atol=1e-4)
            seconds = round_robin(dict(csr=lambda: csr @ x.T, coo=lambda: torch.sparse.mm(coo, x.T),
                                       dense=lambda: x @ dense.T), repeat=20)
            ms = {k: v * 1e3 for k, v in seconds.items()}
            rows.append(dict(density=density, batch=batch, ms=ms))
            print(density, batch, {k: round(v, 3) for k, v in ms.items()}, flush=True)
    write_json("sparse_product", rows)
    lines = [f"{N}×{N} sparse matrix times x (float32, 2 threads, warm; ms per call, "
             "`python benchmarks/sparse_product.py`).", "",
             "| density | batch | CSR | COO `sparse.mm` | dense matmul | COO / CSR |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["ms"]
        lines.append(f"| {100 * r['density']:g} % | {r['batch']} | {m['csr']:.3f} | {m['coo']:.3f} | {m['dense']:.3f} "
                     f"| {m['coo'] / m['csr']:.0f}× |")
    write_markdown("sparse_product", lines)


if __name__ == "__main__":
    main()
