"""How the seed-basis presets were chosen: candidate (C, S, P, Q, E) at each budget.

    python benchmarks/seedbasis_presets.py   # -> results/seedbasis_presets.{json,md}

For three SmolLM2 layers (layer 10: q, gate, down) with their calibration Hessians (the
calibration text only), every candidate is encoded data-aware; reported: output relative
error under H (the objective), weight relative error and seconds per million weights.
Evaluation text is not touched, so choosing presets here does not tune to the held-out set.
"""

from __future__ import annotations

import time


from reality_stone.calibration import calibration_ids, collect_stats, output_error
from reality_stone.codecs import relative_error
from reality_stone.codecs.seedbasis import SeedBasisConfig
from reality_stone.evaluation.loaders import load_smollm2
from harness import arguments, parse, write_json, write_markdown

LAYERS = ["model.layers.10.self_attn.q_proj", "model.layers.10.mlp.gate_proj", "model.layers.10.mlp.down_proj"]
# (block C, seed bits S, coefficients P, coefficient bits Q, exponent bits E): (S + E + P·Q)/C = budget
CANDIDATES = {
    "4.25": [(8, 8, 6, 4, 2), (8, 10, 6, 4, 0), (8, 9, 5, 5, 0)],
    "3.5": [(8, 8, 4, 4, 4), (8, 10, 4, 4, 2), (8, 12, 4, 4, 0)],
    "2.5": [(8, 8, 3, 3, 3), (8, 10, 3, 3, 1), (8, 9, 3, 3, 2)],
}


def main() -> None:
    parse(arguments(__doc__, threads=2))
    loaded = load_smollm2()
    H = collect_stats(loaded.model, calibration_ids("shakespeare", loaded.tokenizer, tokens=4096), LAYERS)
    rows = []
    for budget, cands in CANDIDATES.items():
        for C, S, P, Q, E in cands:
            cfg = SeedBasisConfig(block=C, seed_bits=S, coeffs=P, coeff_bits=Q, exp_bits=E)
            out_e, w_e, secs, n = 0.0, 0.0, 0.0, 0
            for name in LAYERS:
                W = loaded.model.get_submodule(name).weight.detach()
                t0 = time.perf_counter()
                D = cfg.encode(W, H[name]).decode()
                secs += time.perf_counter() - t0
                out_e += output_error(W, D, H[name]) * W.numel()
                w_e += relative_error(W, D) * W.numel()
                n += W.numel()
            row = dict(budget=budget, config=dict(block=C, seed_bits=S, coeffs=P, coeff_bits=Q, exp_bits=E),
                       nominal_bpw=cfg.nominal_bpw(), output_error=out_e / n, rel_error=w_e / n,
                       seconds_per_mweight=secs / n * 1e6)
            rows.append(row)
            print(row, flush=True)
    write_json("seedbasis_presets", rows)
    lines = ["| budget | C, S, P, Q, E | output rel. err | weight rel. err | s / M weights |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['budget']} | {', '.join(str(v) for v in r['config'].values())} | {r['output_error']:.4f} | "
              f"{r['rel_error']:.4f} | {r['seconds_per_mweight']:.2f} |" for r in rows]
    write_markdown("seedbasis_presets", lines)


if __name__ == "__main__":
    main()
