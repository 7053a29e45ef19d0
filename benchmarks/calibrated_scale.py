"""Calibrated compression block by block: peak RSS and time vs checkpoint size, Ray vs one process,
and the real Qwen2.5-Coder-0.5B streamed vs loaded whole.

    python benchmarks/calibrated_scale.py                 # 0.8 + 4 GB synthetic, Ray on 0.8 GB, Qwen
    python benchmarks/calibrated_scale.py --sizes 0.8     # smaller run
    python benchmarks/calibrated_scale.py --no-qwen       # synthetic only
    python benchmarks/calibrated_scale.py --sizes 16 --no-qwen --keep   # add a 16 GB row to the last results

``--keep`` keeps the last results' rows at the sizes not run now (and its Qwen line under ``--no-qwen``).
Ray is compared on the smallest size run, if it is under 2 GB.

Synthetic checkpoints: Llama-shaped folders (config.json + fp16 shards of ≤ 2 GB) with TinyLlama-1.1B
shapes (hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocab 32000, tied embedding) and as many
decoder blocks as the size asks for; weights drawn as in benchmarks/scale.py (Student-t, ν = 5,
log-normal row scales). GPTQ int4 g128 (the calibrated codec) on 1024 random token ids (2 × 512).
Each run is a fresh subprocess that reports its own peak RSS (VmHWM); Ray workers are separate
processes, not counted. The Llama-7B shapes of scale.py cost ≈ 95 s of GPTQ per block on this
2-core machine (one 4096×11008 down_proj alone: 40 s), 40 blocks at 16 GB: out of this script's
budget — the per-block cost model in docs/streaming.md extrapolates instead. With TinyLlama shapes
16 GB is 180 blocks, ≈ 90 min here (`--sizes 16 --no-qwen --keep`).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from harness import arguments, environment, parse, write_json, write_markdown
from scale import layer_tensors, sizes_gb, student_t, write_shards

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
HEAD_DIM = HIDDEN // HEADS
BLOCK_SHAPES = {"self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                "mlp.gate_proj.weight": (INTER, HIDDEN), "mlp.up_proj.weight": (INTER, HIDDEN),
                "mlp.down_proj.weight": (HIDDEN, INTER), "input_layernorm.weight": (HIDDEN,),
                "post_attention_layernorm.weight": (HIDDEN,)}
BLOCK_BYTES = 2 * sum(math.prod(s) for s in BLOCK_SHAPES.values())  # fp16
EMBED_BYTES = 2 * VOCAB * HIDDEN
TOKENS, SEQ_LEN = 1024, 512


def make_folder(folder: Path, gigabytes: float, shard_bytes: float = 2e9) -> int:
    """A Llama model folder of ≈ ``gigabytes`` (at least 2 blocks); returns its number of blocks."""
    from transformers import LlamaConfig

    n_blocks = max(2, round((gigabytes * 1e9 - EMBED_BYTES) / BLOCK_BYTES))
    LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=n_blocks,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=2048,
                tie_word_embeddings=True, architectures=["LlamaForCausalLM"]).save_pretrained(folder)
    torch.manual_seed(0)
    templates = {s: student_t(s) for s in {s for s in BLOCK_SHAPES.values() if len(s) == 2}}
    head = [("model.embed_tokens.weight", (0.02 * torch.randn(VOCAB, HIDDEN)).half()),
            ("model.norm.weight", torch.ones(HIDDEN).half())]
    blocks = (kv for k in range(n_blocks) for kv in layer_tensors(BLOCK_SHAPES, k, templates))
    write_shards(folder, itertools.chain(head, blocks), shard_bytes)  # generated as written: one shard in memory
    return n_blocks


CHILD = """
import json, sys, time
import torch
from reality_stone.codecs import codec_config
from reality_stone.evaluation.metrics import peak_rss_bytes
from reality_stone.threads import set_threads
mode, src, out, workers, tokens, seq_len, calib, threads = sys.argv[1:9]
workers, tokens, seq_len = int(workers), int(tokens), int(seq_len)
set_threads(int(threads))
config = codec_config("gptq", bits=4, group=128)
if calib == "random":  # token ids: synthetic models have no tokenizer
    calib = torch.randint(0, 32000, (tokens,), generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter()
if mode == "stream":
    from reality_stone.models.streaming import compress_checkpoint
    s = compress_checkpoint(src, out, config, calibration=calib, tokens=tokens, seq_len=seq_len, workers=workers,
                            source="bench")
    s.pop("report")
else:  # the in-memory path on the same folder: load whole, rs.compress, rs.save
    import reality_stone as rs
    from reality_stone.evaluation.loaders import load_model
    lm = load_model(src)
    with torch.no_grad():
        rs.compress(lm.model, config, calibration=calib, tokenizer=lm.tokenizer, tokens=tokens, seq_len=seq_len)
    rs.save(lm.model, out, source="bench", tokenizer=lm.tokenizer)
    s = dict(seconds=time.perf_counter() - t0)
s["peak_rss_bytes"] = peak_rss_bytes()  # VmHWM: this program only
import hashlib
s["sha256"] = hashlib.sha256(open(out, "rb").read()).hexdigest()
print("RESULT " + json.dumps(s))
"""


def run(mode: str, src: Path, out: Path, threads: int, workers: int = 1, calibration: str = "random") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out), str(workers), str(TOKENS),
                           str(SEQ_LEN), calibration, str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out.unlink()
    return json.loads(line[len("RESULT "):])


def qwen_folder(work: Path) -> Path:
    """Qwen2.5-Coder-0.5B (GGUF, dequantised to fp32 by transformers) as a save_pretrained folder."""
    from reality_stone.evaluation.loaders import load_qwen_coder, save_model_folder

    return save_model_folder(load_qwen_coder(), work / "qwen", max_shard_size="1GB")


def main() -> None:
    ap = arguments(__doc__, threads=2)
    ap.add_argument("--sizes", type=sizes_gb, default="0.8,4", help="synthetic checkpoint sizes in GB, comma-separated")
    ap.add_argument("--no-qwen", action="store_true", help="synthetic checkpoints only")
    ap.add_argument("--keep", action="store_true", help="keep the last results' rows at the sizes not run now")
    args = parse(ap)
    rows, qwen = [], None
    for gb in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"rs-cscale-{gb:g}gb-", dir="/tmp"))
        try:
            folder = work / "model"
            blocks = make_folder(folder, gb)
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            one = run("stream", folder, work / "out.safetensors", args.threads)
            row = dict(checkpoint_gb=size / 1e9, blocks=blocks, peak_rss_gb=one["peak_rss_bytes"] / 1e9,
                       seconds=one["seconds"], seconds_per_block=one["seconds"] / blocks,
                       phases=one["phase_seconds"], output_gb=one["output_bytes"] / 1e9)
            # Ray 2 workers vs one process, same folder: on the smallest size only (it doubles the run)
            if gb == min(args.sizes) and gb < 2:
                ray2 = run("stream", folder, work / "out.safetensors", args.threads, workers=2)
                row.update(ray2_seconds=ray2["seconds"], ray2_speedup=one["seconds"] / ray2["seconds"],
                           ray2_phases=ray2["phase_seconds"], ray2_same_bytes=ray2["sha256"] == one["sha256"])
            rows.append(row)
            print(row, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_qwen:
        work = Path(tempfile.mkdtemp(prefix="rs-cscale-qwen-", dir="/tmp"))
        try:
            folder = qwen_folder(work)
            streamed = run("stream", folder, work / "out.safetensors", args.threads, calibration="shakespeare")
            whole = run("memory", folder, work / "out.safetensors", args.threads, calibration="shakespeare")
            qwen = dict(checkpoint_gb=sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9,
                        streamed_peak_rss_gb=streamed["peak_rss_bytes"] / 1e9, streamed_seconds=streamed["seconds"],
                        in_memory_peak_rss_gb=whole["peak_rss_bytes"] / 1e9, in_memory_seconds=whole["seconds"],
                        same_bytes=streamed["sha256"] == whole["sha256"], phases=streamed["phase_seconds"])
            print(qwen, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep:
        rows, qwen = kept(rows, qwen)
    write(rows, qwen, runs=args.keep)


def kept(rows: list[dict], qwen: dict | None) -> tuple[list[dict], dict | None]:
    """The new rows plus the last results' rows of other block counts (sorted by size), and the last
    Qwen line where this run made none."""
    path = Path(__file__).parent / "results" / "calibrated_scale.json"
    last = json.loads(path.read_text()) if path.exists() else dict(rows=[], qwen=None)
    new_blocks = {r["blocks"] for r in rows}
    rows = sorted(rows + [r for r in last["rows"] if r["blocks"] not in new_blocks], key=lambda r: r["blocks"])
    return rows, qwen if qwen is not None else last.get("qwen")


def write(rows: list[dict], qwen: dict | None, runs: bool = False) -> None:
    env = environment()
    write_json("calibrated_scale", dict(rows=rows, qwen=qwen, codec="gptq int4 g128", tokens=TOKENS, seq_len=SEQ_LEN,
                                        shapes=dict(hidden=HIDDEN, intermediate=INTER, vocab=VOCAB), environment=env))
    lines = [f"GPTQ int4 g128, {TOKENS} calibration tokens ({TOKENS // SEQ_LEN} × {SEQ_LEN}), block by block "
             f"(`compress_checkpoint(..., calibration=...)`), {env['threads']} threads, one fresh process per run.", "",
             "| checkpoint GB | blocks | peak RSS GB | seconds | s/block | load / statistics / encode / forward / write s "
             "| Ray 2 workers: seconds (speedup), same bytes |",
             "|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        p = r["phases"]
        phases = " / ".join(f"{p.get(k, 0):.1f}" for k in ("load", "statistics", "encode", "forward", "write"))
        ray = "—"
        if "ray2_seconds" in r:
            rp = r["ray2_phases"]
            ray = (f"{r['ray2_seconds']:.1f} ({r['ray2_speedup']:.2f}×), {'yes' if r['ray2_same_bytes'] else 'NO'}; "
                   f"start {rp.get('ray start', 0):.1f} s, transfer {rp.get('ray transfer', 0):.1f} s, "
                   f"encode {rp.get('encode', 0):.1f} s vs {p.get('encode', 0):.1f} s")
        lines.append(f"| {r['checkpoint_gb']:.2f} | {r['blocks']} | {r['peak_rss_gb']:.2f} | {r['seconds']:.0f} | "
                     f"{r['seconds_per_block']:.1f} | {phases} | {ray} |")
    if runs:
        lines += ["", "Rows from more than one run of this script (`--keep`), on other days: the VM's speed varies "
                  "between them, so compare seconds within a run; peak RSS does not depend on it."]
    if qwen:
        lines += ["", f"Real Qwen2.5-Coder-0.5B (save_pretrained folder, fp32, {qwen['checkpoint_gb']:.2f} GB; "
                  "calibration: 1024 tokens of the bundled plays): streamed block by block "
                  f"{qwen['streamed_peak_rss_gb']:.2f} GB peak RSS in {qwen['streamed_seconds']:.0f} s; loaded whole "
                  f"(`load_model` + `rs.compress` + `rs.save`) {qwen['in_memory_peak_rss_gb']:.2f} GB in "
                  f"{qwen['in_memory_seconds']:.0f} s; same file bytes: {'yes' if qwen['same_bytes'] else 'NO'}."]
    write_markdown("calibrated_scale", lines)


if __name__ == "__main__":
    main()
