"""Does hyperbolic geometry help as a seed basis? LFSR ±1 bases vs Packed64-generated bases.

    python benchmarks/seedbasis_families.py   # -> results/seedbasis_families.{json,md}

Same codec, same bits (the three presets), only the basis generator differs; data-free
relative weight error on the real matrices of `matrices.real()`.
"""

from __future__ import annotations


from matrices import real
from reality_stone.codecs import relative_error
from reality_stone.codecs.seedbasis import preset
from harness import arguments, parse, write_json, write_markdown



def main() -> None:
    parse(arguments(__doc__, threads=None))
    rows = []
    for name, W in real().items():
        for budget in ("4.25", "3.5", "2.5"):
            row = dict(matrix=name, budget=budget)
            for basis in ("lfsr", "packed64"):
                enc = preset(budget, basis=basis).encode(W)
                row[basis] = relative_error(W, enc.decode())
                row["bits_per_weight"] = enc.bits_per_weight()
            rows.append(row)
            print(row, flush=True)
    write_json("seedbasis_families", rows)
    lines = ["| matrix | preset (bpw) | LFSR basis rel. error | Packed64 basis rel. error |", "|---|---|---:|---:|"]
    lines += [f"| {r['matrix']} | {r['budget']} | {r['lfsr']:.4f} | {r['packed64']:.4f} |" for r in rows]
    write_markdown("seedbasis_families", lines)


if __name__ == "__main__":
    main()
