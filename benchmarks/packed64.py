"""Packed64 seeds: decode throughput and rate–distortion, synthetic and real weights.

    python benchmarks/packed64.py     # -> benchmarks/results/packed64.{json,md}

(1) Decode throughput: elements/s of `decode_block` over many seeds vs reading (summing)
    a dense fp32 tensor of the same size, same run.
(2) Rate–distortion: one seed + fp16 scale per B×B block, B = 8 … 128: relative Frobenius
    error, SQNR and the compression ratio vs fp32 (every byte counted).
"""

from __future__ import annotations

import time

import torch

from matrices import real, synthetic
from reality_stone.codecs import relative_error, sqnr_db
from reality_stone.codecs.packed64 import Packed64Config, decode_block, pack_seed
from harness import arguments, parse, round_robin, write_json, write_markdown

BLOCKS = (8, 16, 32, 64, 128)


def throughput() -> dict:
    g = torch.Generator().manual_seed(0)
    n, B = 4096, 32
    seeds = pack_seed(torch.rand(n, generator=g, dtype=torch.float64) * 0.9, torch.rand(n, generator=g, dtype=torch.float64) * 6,
                      torch.randint(0, 16, (n,), generator=g), torch.zeros(n, dtype=torch.long), torch.randint(0, 2, (n,), generator=g),
                      torch.zeros(n, dtype=torch.long), torch.randint(-4, 4, (n,), generator=g), torch.zeros(n, dtype=torch.long))
    scales = torch.ones(n, dtype=torch.float64)
    dense = torch.randn(n * B * B)
    seconds = round_robin({"decode_block float32": lambda: decode_block(seeds, B, B, scale=scales, dtype=torch.float32),
                           "read dense float32 (sum)": lambda: dense.sum()}, repeat=3)
    res = {name: n * B * B / dt for name, dt in seconds.items()}
    for name, r in res.items():
        print(f"{name:28s} {r / 1e6:10.1f} M elements/s")
    return dict(elements=n * B * B, block=B, elements_per_s=res, dense_over_decode=res["read dense float32 (sum)"] / res["decode_block float32"])


def rate_distortion() -> list[dict]:
    rows = []
    mats = {**synthetic(256), **real()}
    for name, W in mats.items():
        for B in BLOCKS:
            if B > min(W.shape):
                continue
            t0 = time.perf_counter()
            enc = Packed64Config(block=B).encode(W)
            dt = time.perf_counter() - t0
            dec = enc.decode()
            row = dict(matrix=name, shape=list(W.shape), block=B, ratio_fp32=enc.compression_ratio(),
                       bits_per_weight=enc.bits_per_weight(), rel_error=relative_error(W, dec), sqnr_db=sqnr_db(W, dec),
                       encode_s=dt)
            rows.append(row)
            print(f"{name:42s} B={B:3d} ratio {row['ratio_fp32']:8.1f}  rel.err {row['rel_error']:.3f}  "
                  f"SQNR {row['sqnr_db']:6.2f} dB  ({dt:.1f} s)", flush=True)
    return rows


def main() -> None:
    parse(arguments(__doc__, threads=2))
    tp = throughput()
    rd = rate_distortion()
    write_json("packed64", dict(throughput=tp, rate_distortion=rd))
    lines = [
        f"Decode: {tp['elements_per_s']['decode_block float32'] / 1e6:.0f} M elements/s vs reading dense fp32 "
        f"{tp['elements_per_s']['read dense float32 (sum)'] / 1e6:.0f} M elements/s "
        f"(dense read is {tp['dense_over_decode']:.0f}× faster).",
        "",
        "| matrix | shape | B | ratio vs fp32 | bits/weight | rel. error | SQNR (dB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rd:
        lines.append(f"| {r['matrix']} | {r['shape'][0]}×{r['shape'][1]} | {r['block']} | {r['ratio_fp32']:.1f} | "
                     f"{r['bits_per_weight']:.3f} | {r['rel_error']:.3f} | {r['sqnr_db']:.2f} |")
    write_markdown("packed64", lines)


if __name__ == "__main__":
    main()
