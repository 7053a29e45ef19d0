"""Fused compressed matmul vs dense, decode-then-matmul and torch's int4 kernel; plus SmolLM2 tokens/s.

    python benchmarks/fused_matmul.py     # -> benchmarks/results/fused_matmul.{json,md}

Same process, same inputs, 2 threads, median of round-robin runs, each round in a new seeded
random order (``--fixed-order``: the listed order, where the path after torch's int4 kernel or
after decode-then-matmul pays for it — compare the two runs). **Cold cache**: every path
cycles through enough copies of its weight to read ≥ 96 MiB per round (3× a 32 MiB L3), so each
call streams its weight from beyond L2 as in a whole model — a single 4-bit 4096² weight (9 MB)
would otherwise sit in L2/L3 and flatter every compressed path. The L3 size the CPU reports is
in the output: where it exceeds the rotation (some VMs report hundreds of MiB), the weights come
from L3 rather than DRAM.

Group-quantised weights (`rtn` codec; the compute layout reads exactly the stored bits:
codes + fp16 scale/offset): int4 group 128 (4.25 bits per weight), int3 group 64 (3.5),
int2 group 64 (2.5) — each with fp32 activations (exact) and with int8 activations
(quantised per group on the fly, AVX-512 VNNI). torch's int4 kernel gets the same int4 codes
(fp32 x and bf16 x). "limit" = the weight's bytes at the read bandwidth measured in the same
run (sum over a 512 MiB array), i.e. the memory-bound floor.

Other fused paths in the same run: the seed-basis kernel at the 3.5 and 2.5 bpw presets, with
fp32 and with int8 activations (quantised per 64 inputs; AVX-512 VNNI + VBMI) (random seeds/exponents/codes — speed does not depend on the values, and a real search on
11008×4096 would dominate the run; the quality of real encodings is in calibrated.md; its
compute layout reads exactly the stored S + E + P·Q bits per 8 weights plus 8 per row),
low-rank (x Bᵀ) Aᵀ in fp16 at the rank that stores 4.25 bits per weight (alone, and with 2 %
of the residual kept sparse: + one CSR × dense product), and RBE (poly-cos8 blueprint + block-DCT residual,
64×64 blocks, fp16 values, global 4.25-bpw budget) through its transform-domain sparse path,
and Packed64 (one seed + fp16 scale per 32×32 block, random fields, each block generated in
float32 by the kernel; its quality on real weights is in packed64.md — it does not represent them).
"""

from __future__ import annotations

import copy
import time

import torch

from reality_stone.codecs import codec_config
from reality_stone.codecs.packed64 import Packed64Encoded, pack_seed
from reality_stone.codecs.seedbasis import SeedBasisEncoded, preset
from reality_stone.kernels.extension import extension_status
from harness import arguments, parse, round_robin, write_json, write_markdown

SHAPES = [(1024, 1024), (4096, 4096), (11008, 4096), (576, 576), (1536, 576), (576, 1536)]  # (out, in)
BATCHES = (1, 8, 64)
REPEAT = 15
ROUND_BYTES = 96 * 2**20
MAX_COPIES = 64
INT_CODECS = {"int4 g128": dict(bits=4, group=128), "int3 g64": dict(bits=3, group=64),
              "int2 g64": dict(bits=2, group=64)}


def n_copies(nbytes: float) -> int:
    return max(1, min(MAX_COPIES, -(-int(ROUND_BYTES) // max(1, int(nbytes)))))


def l3_bytes() -> int | None:
    """The L3 size cpu0 reports (sysfs), or None."""
    try:
        text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
    except OSError:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


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


def random_packed64(out_f: int, in_f: int, g: torch.Generator, block: int = 32) -> Packed64Encoded:
    """One Packed64 seed + fp16 scale per block × block block, random fields (uniform over the
    generator kinds; the kernel's speed depends on the kind mix, not on the values)."""
    n = -(-out_f // block) * -(-in_f // block)
    ints = {name: torch.randint(lo, hi + 1, (n,), generator=g) for name, (lo, hi) in
            dict(basis=(0, 15), d_theta=(0, 3), d_r=(0, 1), rot=(0, 15), log2_c=(-4, 3)).items()}
    seeds = pack_seed(torch.rand(n, generator=g, dtype=torch.float64) * 0.5,
                      torch.rand(n, generator=g, dtype=torch.float64) * 6, **ints)
    enc = Packed64Encoded(codec_config("packed64", block=block), (out_f, in_f), torch.zeros(0, dtype=torch.bool),
                          seeds, (torch.randn(n, generator=g) * 0.01).half())
    enc.kernel_layout()
    return enc


def paths_for_shape(out_f: int, in_f: int, g: torch.Generator) -> tuple[dict, dict]:
    """name -> (list of weight copies, bits read per weight, call(weight, x, xpad, xbf16))."""
    W = torch.randn(out_f, in_f, generator=g) * 0.02
    int4 = codec_config("rtn", **INT_CODECS["int4 g128"]).encode(W)
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = int4.decode()
    # torch's int4 weight-only kernel on the same codes: w = (q − 8)·s + z, z = offset + 8 s
    tq = torch.ops.aten._convert_weight_to_int4pack_for_cpu(int4.codes.to(torch.int32), 1)
    s32, o32 = int4.scale.float(), int4.offset.float()
    sz = torch.stack([s32, o32 + 8 * s32], -1).transpose(0, 1).contiguous()
    group = INT_CODECS["int4 g128"]["group"]
    paths = {
        "dense fp32 nn.Linear": (lin, 32, lambda w, x, xp, xb: w(x)),
        "decode then matmul": (int4, 4.25, lambda w, x, xp, xb: x @ w.decode().T),
        "torch int4 kernel (fp32 x)": ((tq, sz), 4.25,
                                       lambda w, x, xp, xb: torch.ops.aten._weight_int4pack_mm_for_cpu(xp, w[0], group, w[1])),
        "torch int4 kernel (bf16 x)": ((tq, sz.to(torch.bfloat16)), 4.25,
                                       lambda w, x, xp, xb: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, w[0], group, w[1])),
    }
    for name, cfg in INT_CODECS.items():
        enc = int4 if name == "int4 g128" else codec_config("rtn", **cfg).encode(W)
        enc.kernel_layout()
        bpw = cfg["bits"] + 32 / cfg["group"]
        paths[f"ours {name} (fp32 x)"] = (enc, bpw, lambda w, x, xp, xb: w.matmul(x))
        paths[f"ours {name} (int8 x)"] = (enc, bpw, lambda w, x, xp, xb: w.matmul_int8_activations(x))
    rank = max(1, round(4.25 / 16 * out_f * in_f / (out_f + in_f)))
    for budget in ("3.5", "2.5"):
        sb = random_seedbasis(out_f, in_f, budget, g)
        lay = sb.kernel_layout()  # the bits it reads: records + row exponents (the pattern table is per config)
        bpw = 8 * (lay.records.numel() + lay.row_exp.numel()) / (out_f * in_f)
        paths[f"seedbasis {budget} fused"] = (sb, bpw, lambda w, x, xp, xb: w.matmul(x))
        paths[f"seedbasis {budget} int8 x"] = (sb, bpw, lambda w, x, xp, xb: w.matmul_int8_activations(x))
    p64 = random_packed64(out_f, in_f, g)
    paths["packed64 fused"] = (p64, 8 * p64.nbytes / (out_f * in_f), lambda w, x, xp, xb: w.matmul(x))
    paths["low-rank 4.25 bpw"] = (codec_config("lowrank", rank=rank).encode(W), 4.25, lambda w, x, xp, xb: w.matmul(x))
    sparse_rank = max(1, round((4.25 / 8 * out_f * in_f - 4 * (out_f + 1) - 4 * 0.02 * out_f * in_f) / (2 * (out_f + in_f))))
    paths["low-rank + 2 % sparse 4.25 bpw"] = (codec_config("lowrank", rank=sparse_rank, sparse=0.02).encode(W), 4.25,
                                               lambda w, x, xp, xb: w.matmul(x))
    paths["rbe block-DCT 4.25 bpw"] = (codec_config("rbe", block=64, basis="poly-cos8", residual="dct", bpw=4.25,
                                                    value_dtype="fp16").encode(W), 4.25, lambda w, x, xp, xb: w.matmul(x))
    copies = {}
    for name, (w, bpw, call) in paths.items():
        n = n_copies(out_f * in_f * bpw / 8)
        copies[name] = ([w] + [copy.deepcopy(w) for _ in range(n - 1)], bpw, call)
    return copies, {"K": -(-in_f // group) * group}


def main() -> None:
    parser = arguments(__doc__, threads=2)
    parser.add_argument("--fixed-order", action="store_true",
                        help="time the paths in their listed order every round (default: a new seeded order each round)")
    args = parse(parser)
    bw = read_bandwidth()
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; kernel: {extension_status()}", flush=True)
    rows = []
    for out_f, in_f in SHAPES:
        g = torch.Generator().manual_seed(0)
        paths, meta = paths_for_shape(out_f, in_f, g)
        for batch in BATCHES:
            x = torch.randn(batch, in_f, generator=g)
            xp = torch.nn.functional.pad(x, (0, meta["K"] - in_f))  # torch's int4 kernel needs whole groups
            xb = xp.to(torch.bfloat16)
            fns = {k: [lambda w=w, call=call: call(w, x, xp, xb) for w in ws] for k, (ws, _, call) in paths.items()}
            with torch.no_grad():
                t = round_robin(fns, repeat=REPEAT, shuffle=not args.fixed_order)
            bytes_read = {k: out_f * in_f * bpw / 8 for k, (_, bpw, _) in paths.items()}
            row = dict(shape=[out_f, in_f], batch=batch, ms={k: v * 1e3 for k, v in t.items()},
                       speedup_vs_dense={k: t["dense fp32 nn.Linear"] / v for k, v in t.items()},
                       achieved_over_limit={k: (bytes_read[k] / bw) / v for k, v in t.items()},
                       bits_read_per_weight={k: bpw for k, (_, bpw, _) in paths.items()},
                       copies={k: len(ws) for k, (ws, _, _) in paths.items()})
            rows.append(row)
            print(f"{out_f}×{in_f} b={batch:2d} " + "  ".join(f"{k}: {v * 1e3:.3f}" for k, v in t.items()), flush=True)
        del paths
    e2e = end_to_end()
    order = "fixed" if args.fixed_order else "shuffled"
    name = "fused_matmul_fixed_order" if args.fixed_order else "fused_matmul"  # the default run's files stay
    write_json(name, dict(read_bandwidth_gbs=bw / 1e9, kernel=extension_status(), round_bytes=ROUND_BYTES,
                          l3_bytes=l3_bytes(), order=order, rows=rows, end_to_end=e2e))
    write_markdown(name, markdown(rows, bw, e2e, order))


def markdown(rows: list[dict], bw: float, e2e: dict, order: str = "shuffled") -> str:
    lines = [f"Read bandwidth measured in the same run: {bw / 1e9:.1f} GB/s. Kernel: {extension_status()}. "
             f"Cold cache (each path cycles through ≥ {ROUND_BYTES // 2**20} MiB of weight copies; "
             f"L3 reported: {'unknown' if l3_bytes() is None else f'{l3_bytes() // 2**20} MiB'}). "
             f"Path order within a round: {order}{' (a new seeded order each round)' if order == 'shuffled' else ''}.",
             "",
             "Milliseconds per call; in brackets: speedup vs dense fp32 (ours int4 also vs torch's int4 kernel with "
             "bf16 activations).", "",
             "| shape (out×in) | batch | dense fp32 | decode+matmul | torch int4 (fp32 x) | torch int4 (bf16 x) "
             "| ours int4 g128, fp32 x | ours int4 g128, int8 x | ours int3 g64, fp32 x | ours int3 g64, int8 x "
             "| ours int2 g64, fp32 x | ours int2 g64, int8 x | int4 int8 x: achieved/limit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, s = r["ms"], r["speedup_vs_dense"]
        torch_bf16 = m["torch int4 kernel (bf16 x)"]
        cells = [f"{m['dense fp32 nn.Linear']:.3f}", f"{m['decode then matmul']:.3f}",
                 f"{m['torch int4 kernel (fp32 x)']:.3f}", f"{torch_bf16:.3f} ({s['torch int4 kernel (bf16 x)']:.1f}×)"]
        for name in INT_CODECS:
            for act in ("fp32 x", "int8 x"):
                k = f"ours {name} ({act})"
                extra = f"; {torch_bf16 / m[k]:.2f}× torch" if name == "int4 g128" else ""
                cells.append(f"{m[k]:.3f} ({s[k]:.1f}×{extra})")
        cells.append(f"{r['achieved_over_limit']['ours int4 g128 (int8 x)']:.2f}")
        lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += ["", "Other fused paths, same run (ms; speedup vs dense fp32 in brackets; for the seed basis also vs "
              "ours int3 g64 in the same activation mode, fp32 x or int8 x — 3.5 bits):", "",
              "| shape (out×in) | batch | seed basis 3.5 bpw, fp32 x | seed basis 3.5 bpw, int8 x "
              "| seed basis 2.5 bpw, fp32 x | seed basis 2.5 bpw, int8 x | low-rank (x Bᵀ) Aᵀ, 4.25 bpw "
              "| low-rank + 2 % sparse, 4.25 bpw | RBE block-DCT (sparse), 4.25 bpw "
              "| Packed64, one seed per 32² block (0.08 bpw) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, s = r["ms"], r["speedup_vs_dense"]
        int3 = {"fused": m["ours int3 g64 (fp32 x)"], "int8 x": m["ours int3 g64 (int8 x)"]}
        cells = [f"{m[k]:.3f} ({s[k]:.2f}×; {int3[k.split(' ', 2)[2]] / m[k]:.2f}× int3)"
                 for k in ("seedbasis 3.5 fused", "seedbasis 3.5 int8 x", "seedbasis 2.5 fused", "seedbasis 2.5 int8 x")]
        cells += [f"{m[k]:.3f} ({s[k]:.2f}×)" for k in ("low-rank 4.25 bpw", "low-rank + 2 % sparse 4.25 bpw",
                                                        "rbe block-DCT 4.25 bpw", "packed64 fused")]
        lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {r['batch']} | " + " | ".join(cells) + " |")
    dense = e2e["dense fp32"]
    lines += ["", "End-to-end SmolLM2-135M greedy decoding, batch 1, 32 new tokens (tokens/s; speedup vs dense):", "",
              "| model | tokens/s | vs dense |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {v / dense:.2f}× |" for k, v in e2e.items()]
    return "\n".join(lines) + "\n"


def end_to_end() -> dict:
    import reality_stone as rs
    from reality_stone.evaluation.metrics import tokens_per_second
    from reality_stone.evaluation.loaders import load_smollm2
    from reality_stone.nn import CompressedLinear, set_activations

    loaded = load_smollm2()
    models = {"dense fp32": loaded.model}
    for name, cfg in INT_CODECS.items():
        q = copy.deepcopy(loaded.model)
        rs.compress(q, codec_config("rtn", **cfg))
        models[f"RTN {name}, fp32 x"] = q
        q8 = copy.deepcopy(q)
        set_activations(q8, "int8")
        models[f"RTN {name}, int8 x"] = q8
    # the seed basis at the 3.5-bit preset, random fields (decoding speed does not depend on the
    # values; min_new_tokens fixes the token count): the RTN int4 model with every layer swapped
    sb = copy.deepcopy(models["RTN int4 g128, fp32 x"])
    g = torch.Generator().manual_seed(0)
    for m in sb.modules():
        if isinstance(m, CompressedLinear):
            m.encoded = random_seedbasis(m.out_features, m.in_features, "3.5", g)
    models["seed basis 3.5 (random fields), fp32 x"] = sb
    sb8 = copy.deepcopy(sb)
    set_activations(sb8, "int8")
    models["seed basis 3.5 (random fields), int8 x"] = sb8
    res = {k: [] for k in models}
    for _ in range(2):  # alternate, keep the best of two for each
        for k, m in models.items():
            res[k].append(tokens_per_second(m, loaded.tokenizer, new_tokens=32))
    return {k: max(v) for k, v in res.items()}


if __name__ == "__main__":
    main()
