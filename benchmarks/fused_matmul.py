"""Fused compressed matmul vs dense, decode-then-matmul and torch's int4 kernel; plus SmolLM2 tokens/s.

    python benchmarks/fused_matmul.py     # -> benchmarks/results/fused_matmul.{json,md}

Same process, same inputs, 2 threads, median of round-robin runs. The int4 weight is a 4-bit,
group-128 RTN encoding (`rtn` codec: 4.25 bits per weight stored; the compute layout reads
4 bits of code + 2 fp32 per group = 4.5 bits per weight). Bytes read: the weight's bytes
for each path; "limit" = those bytes at the read bandwidth measured in the same run
(sum over a 512 MiB array), i.e. the memory-bound floor.

Other fused paths in the same run: the seed-basis kernel at the 3.5 and 2.5 bpw presets
(random seeds/exponents/codes — speed does not depend on the values, and a real search on
11008×4096 would dominate the run; the quality of real encodings is in seedbasis.md; its
compute layout reads 16 + 8 + 4P bits per 8 weights), low-rank (x Bᵀ) Aᵀ in fp16 at the
rank that stores 4.25 bits per weight, and RBE (poly-cos8 blueprint + block-DCT residual,
64×64 blocks, fp16 values, global 4.25-bpw budget) through its transform-domain sparse path.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from reality_stone.codecs import codec_config
from reality_stone.codecs.seedbasis import SeedBasisEncoded, preset
from reality_stone.kernels.extension import extension_status
from reality_stone.kernels.int_lowbit_ops import int4_linear

RESULTS = Path(__file__).parent / "results"
SHAPES = [(1024, 1024), (4096, 4096), (11008, 4096), (576, 576), (1536, 576), (576, 1536)]  # (out, in)
BATCHES = (1, 8, 64)
REPEAT = 15
GROUP = 128


def bench(fns: dict, repeat: int = 15) -> dict:
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def read_bandwidth() -> float:
    a = torch.ones(128 * 2**20)  # 512 MiB
    a.sum()
    t = min((lambda t0: (a.sum(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
    return a.numel() * 4 / t


def random_seedbasis(out_f: int, in_f: int, budget: str, g: torch.Generator) -> SeedBasisEncoded:
    cfg = preset(budget)
    nb, qmax = -(-in_f // cfg.block), 2 ** (cfg.coeff_bits - 1)
    enc = SeedBasisEncoded(cfg, (out_f, in_f), torch.full((out_f,), -6, dtype=torch.int64),
                           torch.randint(0, 2**cfg.seed_bits, (out_f, nb), generator=g),
                           torch.randint(0, 2**cfg.exp_bits, (out_f, nb), generator=g),
                           torch.randint(-qmax, qmax, (out_f, nb, cfg.coeffs), generator=g))
    enc.kernel_layout()
    return enc


def main() -> None:
    torch.set_num_threads(2)
    bw = read_bandwidth()
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; kernel: {extension_status()}", flush=True)
    rows = []
    for out_f, in_f in SHAPES:
        g = torch.Generator().manual_seed(0)
        W = torch.randn(out_f, in_f, generator=g) * 0.02
        enc = codec_config("rtn", bits=4, group=GROUP).encode(W)
        packed, scale, offset, group = enc.kernel_layout()
        lin = torch.nn.Linear(in_f, out_f, bias=False)
        lin.weight.data = enc.decode()
        # torch's int4 weight-only kernel on the same codes: w = (q − 8)·s + z, z = offset + 8 s
        tq = torch.ops.aten._convert_weight_to_int4pack_for_cpu(enc.codes.to(torch.int32), 1)
        sz = torch.stack([scale, offset + 8 * scale], -1).transpose(0, 1).contiguous()
        sz_bf16 = sz.to(torch.bfloat16)
        sb = {b: random_seedbasis(out_f, in_f, b, g) for b in ("3.5", "2.5")}
        rank = max(1, round(4.25 / 16 * out_f * in_f / (out_f + in_f)))
        lowrank = codec_config("lowrank", rank=rank).encode(W)
        rbe = codec_config("rbe", block=64, basis="poly-cos8", residual="dct", bpw=4.25, value_dtype="fp16").encode(W)
        K = packed.shape[1] * 2  # in_f padded to whole groups (576 -> 640): both int4 kernels need it
        for batch in BATCHES:
            x = torch.randn(batch, in_f, generator=g)
            xp = torch.nn.functional.pad(x, (0, K - in_f))
            xb = xp.to(torch.bfloat16)
            fns = {
                "dense fp32 nn.Linear": lambda: lin(x),
                "decode then matmul": lambda: x @ enc.decode().T,
                "torch int4 kernel (fp32 x)": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xp, tq, GROUP, sz),
                "torch int4 kernel (bf16 x)": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, tq, GROUP, sz_bf16),
                "ours fused": lambda: int4_linear(xp, packed, scale, offset, group),
                "seedbasis 3.5 fused": lambda: sb["3.5"].matmul(x),
                "seedbasis 2.5 fused": lambda: sb["2.5"].matmul(x),
                "low-rank 4.25 bpw": lambda: lowrank.matmul(x),
                "rbe block-DCT 4.25 bpw": lambda: rbe.matmul(x),
            }
            with torch.no_grad():
                t = bench(fns)
            bytes_read = {"dense fp32 nn.Linear": out_f * in_f * 4, "decode then matmul": out_f * in_f * (4 + 4.5 / 8),
                          "torch int4 kernel (fp32 x)": out_f * in_f * 4.5 / 8, "torch int4 kernel (bf16 x)": out_f * in_f * 4.25 / 8,
                          "ours fused": out_f * in_f * 4.5 / 8, "seedbasis 3.5 fused": out_f * in_f * 5 / 8,
                          "seedbasis 2.5 fused": out_f * in_f * 4.5 / 8, "low-rank 4.25 bpw": out_f * in_f * 4.25 / 8,
                          "rbe block-DCT 4.25 bpw": out_f * in_f * 4.25 / 8}
            row = dict(shape=[out_f, in_f], batch=batch, ms={k: v * 1e3 for k, v in t.items()},
                       speedup_vs_dense={k: t["dense fp32 nn.Linear"] / v for k, v in t.items()},
                       achieved_over_limit={k: (bytes_read[k] / bw) / v for k, v in t.items()},
                       stored_bits_per_weight=enc.bits_per_weight())
            rows.append(row)
            print(f"{out_f}×{in_f} b={batch:2d} " + "  ".join(f"{k}: {v * 1e3:.3f} ms" for k, v in t.items()), flush=True)
    e2e = end_to_end()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fused_matmul.json").write_text(json.dumps(dict(read_bandwidth_gbs=bw / 1e9, kernel=extension_status(),
                                                               rows=rows, end_to_end=e2e), indent=2) + "\n")
    lines = [f"Read bandwidth measured in the same run: {bw / 1e9:.1f} GB/s. Kernel: {extension_status()}.", "",
             "| shape (out×in) | batch | dense fp32 ms | decode+matmul ms | torch int4, fp32 x ms | torch int4, bf16 x ms | ours ms | ours vs dense | ours vs torch int4 bf16 | ours: achieved/limit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["ms"]
        lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {r['batch']} | {m['dense fp32 nn.Linear']:.3f} | "
                     f"{m['decode then matmul']:.3f} | {m['torch int4 kernel (fp32 x)']:.3f} | "
                     f"{m['torch int4 kernel (bf16 x)']:.3f} | {m['ours fused']:.3f} | "
                     f"{r['speedup_vs_dense']['ours fused']:.2f}× | {m['torch int4 kernel (bf16 x)'] / m['ours fused']:.2f}× | "
                     f"{r['achieved_over_limit']['ours fused']:.2f} |")
    lines += ["", "Other fused paths, same run (ms; speedup vs dense fp32 in brackets):", "",
              "| shape (out×in) | batch | seed basis 3.5 bpw | seed basis 2.5 bpw | low-rank (x Bᵀ) Aᵀ, 4.25 bpw | RBE block-DCT (sparse), 4.25 bpw |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, s = r["ms"], r["speedup_vs_dense"]
        lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {r['batch']} | "
                     + " | ".join(f"{m[k]:.3f} ({s[k]:.2f}×)" for k in ("seedbasis 3.5 fused", "seedbasis 2.5 fused",
                                                                         "low-rank 4.25 bpw", "rbe block-DCT 4.25 bpw")) + " |")
    lines += ["", f"End-to-end SmolLM2-135M greedy decoding, batch 1, 32 new tokens: dense fp32 "
              f"{e2e['dense_tokens_per_s']:.1f} tok/s, RTN int4 g128 (fused kernel) {e2e['int4_tokens_per_s']:.1f} tok/s "
              f"({e2e['int4_tokens_per_s'] / e2e['dense_tokens_per_s']:.2f}×)."]
    (RESULTS / "fused_matmul.md").write_text("\n".join(lines) + "\n")


def end_to_end() -> dict:
    import copy

    import reality_stone as rs
    from reality_stone.models.evaluate import tokens_per_second
    from reality_stone.models.loaders import load_smollm2

    loaded = load_smollm2()
    dense = loaded.model
    q = copy.deepcopy(dense)
    rs.compress(q, codec_config("rtn", bits=4, group=GROUP))
    res = {}
    for _ in range(2):  # alternate, keep the best of two for each
        res.setdefault("dense", []).append(tokens_per_second(dense, loaded.tokenizer, new_tokens=32))
        res.setdefault("int4", []).append(tokens_per_second(q, loaded.tokenizer, new_tokens=32))
    return dict(dense_tokens_per_s=max(res["dense"]), int4_tokens_per_s=max(res["int4"]))


if __name__ == "__main__":
    main()
