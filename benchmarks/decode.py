"""End-to-end decoding at batch 1 on SmolLM2-135M (or Qwen2.5-Coder-0.5B): what each step of the
decode loop buys, and llama.cpp on the same GGUF file at the same thread count as the external anchor.

    python benchmarks/decode.py                  # everything (≈ 15 min on 2 cores)
    python benchmarks/decode.py --no-compile     # without the torch.compile rows
    python benchmarks/decode.py --reps 1         # one run of each path instead of the best of 3
    python benchmarks/decode.py --model qwen --no-compile --reps 2   # -> results/decode_qwen.{json,md}

Qwen2.5-Coder-0.5B (`make qwen`): the same loops, the seed-basis models in the Decoder only (transformers'
loops over them at 0.5 B parameters would take most of the run); llama.cpp on its Q4_K_M GGUF.

Models: dense fp32 (the GGUF's weights as transformers dequantises them), RTN int4 g128 with fp32
and with int8 activations, the same with the LM head compressed too (``head=``: RTN 8-bit symmetric
g128; the tied embedding reads it; Decoder rows only), and the seed basis at the 3.5-bit preset
(random fields: decoding speed does not depend on the values; every body layer of the RTN int4
model swapped, as in fused_matmul.py), with the dense and with the int8 head, with fp32 and with
int8 activations (Decoder rows only for int8 x).
Decode loops, all transformers' ``generate`` (greedy):
* ``dynamic cache`` — its default;
* ``static cache`` — ``cache_implementation="static"`` (preallocated KV tensors);
* ``static + compile`` — and the decode step compiled by ``torch.compile`` (transformers'
  ``CompileConfig``; the prefill stays eager). The first call's extra seconds are reported apart;
* ``reality_stone Decoder`` — `reality_stone.models.decoder.Decoder`, the library's lean batch-1
  loop (stacked q/k/v and gate/up kernel calls, static KV cache, no per-layer module calls; each
  token one C++ call through all blocks where every projection has a fused layout: group-quantised
  or seed basis; what ``reality-stone generate`` runs). Its tokens equal ``generate``'s
  (tests/models/test_decoder.py). For the seed basis also ``reality_stone Decoder, eager step``
  (``Decoder(native=False)``: the same loop in torch ops, one kernel call per layer).
llama.cpp: ``llama-cpp-python`` built from its sdist (``pip install '.[bench]'``; benchmark-only, never
a runtime dependency) on the Q4_1 GGUF itself, ``n_threads`` = torch's thread count.

Each measurement: a prompt of 128 tokens (the same ids for every path), then 64 new tokens.
Prompt throughput = 128 / prefill seconds (``generate`` with one new token); decode tokens/s =
63 / (seconds for 64 new tokens − seconds for one). Paths alternate; the best of ``--reps`` is kept.
"""

from __future__ import annotations

import copy
import time

import torch

from fused_matmul import random_seedbasis
from harness import arguments, environment, parse, write_json, write_markdown

PROMPT_TOKENS, NEW_TOKENS = 128, 64
DECODER_ONLY_ROWS = ("RTN int4 g128 + int8 head, fp32 x", "RTN int4 g128 + int8 head, int8 x",
             "seed basis 3.5 + int8 head, fp32 x", "seed basis 3.5, int8 x",
             "seed basis 3.5 + int8 head, int8 x")  # Decoder loop only
EAGER_ROWS = ("seed basis 3.5, fp32 x",)  # also the Decoder without its native (C++) step


def head_config():
    from reality_stone.codecs import codec_config

    return codec_config("rtn", bits=8, group=128, symmetric=True)  # what `compress --head-bits 8` uses


def prompt_and_decode(generate, prompt_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s) of ``generate(n)``, which returns the prompt plus n new tokens."""

    def seconds(n: int) -> float:
        t0 = time.perf_counter()
        out = generate(n)
        assert out.shape[-1] == prompt_tokens + n
        return time.perf_counter() - t0

    one, full = seconds(1), seconds(NEW_TOKENS)
    return prompt_tokens / one, (NEW_TOKENS - 1) / (full - one)


def hf_prompt_and_decode(model, ids: torch.Tensor, **gen) -> tuple[float, float]:
    """`prompt_and_decode` of ``model.generate`` (greedy) with ``gen`` options."""
    return prompt_and_decode(lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, **gen),
                             ids.shape[1])


def llama_cpp_prompt_and_decode(llm, ids: list[int]) -> tuple[float, float]:
    """The same measurement on llama.cpp: ``eval`` of the prompt, then greedy single-token evals."""
    import numpy as np

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(NEW_TOKENS - 1):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return len(ids) / prefill, (NEW_TOKENS - 1) / (time.perf_counter() - t0)


def llama_cpp_probe(gguf: str, threads: int) -> str | None:
    """Load the GGUF in llama.cpp and evaluate a few tokens in a child process: None if that works,
    else why. A llama.cpp built for instructions this CPU or VM refuses dies of a signal (seen: a
    general-protection fault in libggml-cpu built with GGML_NATIVE on a VM exposing AMX), which would
    otherwise take the whole run with it."""
    import subprocess
    import sys

    code = ("import sys; from llama_cpp import Llama; "
            "llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_ctx=64, verbose=False); "
            "llm.eval([1, 2, 3, 4])")
    r = subprocess.run([sys.executable, "-c", code, gguf, str(threads)], capture_output=True, text=True)
    if r.returncode == 0:
        return None
    if r.returncode < 0 or "ModuleNotFoundError" not in r.stderr:
        return (f"llama.cpp failed in a probe process (exit {r.returncode}: {r.stderr.strip()[-300:]}); rebuild "
                "llama-cpp-python for this CPU, e.g. CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX512=ON' pip install "
                "--no-cache-dir --force-reinstall --no-deps llama-cpp-python")
    return None  # not installed: the import below says so


def models(which: str = "smollm2") -> tuple[dict, object, str]:
    import reality_stone as rs
    from reality_stone.codecs import codec_config
    from reality_stone.data.pretrained import qwen_coder_gguf
    from reality_stone.evaluation.loaders import load_qwen_coder, load_smollm2, smollm2_gguf
    from reality_stone.nn import CompressedLinear, set_activations

    loaded = load_smollm2() if which == "smollm2" else load_qwen_coder()
    dense = loaded.model
    int4 = copy.deepcopy(dense)
    rs.compress(int4, codec_config("rtn", bits=4, group=128))
    int4_a8 = copy.deepcopy(int4)
    set_activations(int4_a8, "int8")
    head8 = copy.deepcopy(dense)
    rs.compress(head8, codec_config("rtn", bits=4, group=128), head=head_config())
    head8_a8 = copy.deepcopy(head8)
    set_activations(head8_a8, "int8")
    nets = {"dense fp32": dense, "RTN int4 g128, fp32 x": int4, "RTN int4 g128, int8 x": int4_a8,
            "RTN int4 g128 + int8 head, fp32 x": head8, "RTN int4 g128 + int8 head, int8 x": head8_a8}
    def seed_basis(net):  # every compressed body layer swapped (the same fields for both models)
        g = torch.Generator().manual_seed(0)
        for name, m in net.named_modules():
            if isinstance(m, CompressedLinear) and name != "lm_head":
                m.encoded = random_seedbasis(m.out_features, m.in_features, "3.5", g)
        return net

    nets |= {"seed basis 3.5, fp32 x": seed_basis(copy.deepcopy(int4)),
             "seed basis 3.5 + int8 head, fp32 x": seed_basis(copy.deepcopy(head8))}
    for name in ("seed basis 3.5", "seed basis 3.5 + int8 head"):  # int8 activations (AVX-512 VNNI + VBMI)
        nets[f"{name}, int8 x"] = copy.deepcopy(nets[f"{name}, fp32 x"])
        set_activations(nets[f"{name}, int8 x"], "int8")
    return nets, loaded.tokenizer, str(smollm2_gguf() if which == "smollm2" else qwen_coder_gguf())


def main() -> None:
    from transformers import CompileConfig

    parser = arguments(__doc__, threads=2)
    parser.add_argument("--reps", type=int, default=3, help="alternating runs; the best is kept")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--model", choices=("smollm2", "qwen"), default="smollm2")
    args = parse(parser)
    threads = args.threads
    nets, tokenizer, gguf = models(args.model)
    results = "decode" if args.model == "smollm2" else "decode_qwen"
    text = open(__file__).read()  # any text: only the token count matters for speed
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :PROMPT_TOKENS]
    pad = dict(pad_token_id=tokenizer.eos_token_id)
    loops = {"dynamic cache": dict(pad), "static cache": dict(pad, cache_implementation="static")}
    if not args.no_compile:
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # transformers compiles only on GPUs unless told
        loops["static + compile"] = dict(pad, cache_implementation="static", compile_config=compile_config)

    # Qwen's seed-basis model in transformers' loops would take most of the run: Decoder only
    decoder_only = set(DECODER_ONLY_ROWS) | ({"seed basis 3.5, fp32 x"} if args.model == "qwen" else set())
    compile_seconds = {}
    if "static + compile" in loops:  # the first call compiles: time it once, apart
        for name, net in ((n, m) for n, m in nets.items() if n not in decoder_only):
            t0 = time.perf_counter()
            hf_prompt_and_decode(net, ids, **loops["static + compile"])
            compile_seconds[name] = time.perf_counter() - t0
            print(f"compiled {name}: {compile_seconds[name]:.0f} s", flush=True)
    from reality_stone.models.decoder import Decoder

    decoders = {name: Decoder(net) for name, net in nets.items()}
    # what the native step buys, in the same run: the seed basis's Decoder without it
    eager = {name: Decoder(nets[name], native=False) for name in EAGER_ROWS if name in nets}
    for name, net in nets.items():  # warm-up of the eager loops
        if name not in decoder_only:
            hf_prompt_and_decode(net, ids[:, :8], **loops["dynamic cache"])
        decoders[name].generate(ids[0, :8], 4)
        if name in eager:
            eager[name].generate(ids[0, :8], 4)

    best: dict[tuple[str, str], tuple[float, float]] = {}
    llm, llama_error = None, llama_cpp_probe(gguf, threads)
    if llama_error is None:
        try:
            from llama_cpp import Llama

            llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
            llama_cpp_prompt_and_decode(llm, ids[0, :8].tolist())
        except ImportError as e:
            llama_error = f"llama-cpp-python is not installed here ({e}); `pip install '.[bench]'` builds it"
    for _ in range(args.reps):
        for name, net in nets.items():
            for loop, gen in (loops if name not in decoder_only else {}).items():
                r = hf_prompt_and_decode(net, ids, **gen)
                best[name, loop] = max(best.get((name, loop), r), r, key=lambda t: t[1])
            runs = [("reality_stone Decoder", decoders[name])]
            runs += [("reality_stone Decoder, eager step", eager[name])] if name in eager else []
            for loop, dec in runs:
                r = prompt_and_decode(lambda n: dec.generate(ids[0], n), ids.shape[1])
                key = (name, loop)
                best[key] = max(best.get(key, r), r, key=lambda t: t[1])
        if llm is not None:
            r = llama_cpp_prompt_and_decode(llm, ids[0].tolist())
            key = ("llama.cpp, Q4_1 GGUF" if args.model == "smollm2" else "llama.cpp, Q4_K_M GGUF", "llama.cpp")
            best[key] = max(best.get(key, r), r, key=lambda t: t[1])
        print({f"{k[0]} | {k[1]}": f"{v[1]:.1f}" for k, v in best.items()}, flush=True)

    rows = [dict(model=m, loop=lp, prompt_tokens_per_s=p, decode_tokens_per_s=d,
                 compile_seconds=compile_seconds.get(m) if lp == "static + compile" else None)
            for (m, lp), (p, d) in best.items()]
    env = environment()
    write_json(results, dict(model=args.model, rows=rows, prompt_tokens=PROMPT_TOKENS, new_tokens=NEW_TOKENS, reps=args.reps,
                              llama_cpp_error=llama_error, environment=env))
    write_markdown(results, markdown(rows, env, llama_error, args.reps, args.model))


def markdown(rows: list[dict], env: dict, llama_error: str | None, reps: int, model: str = "smollm2") -> list[str]:
    dense = next(r for r in rows if r["model"] == "dense fp32" and r["loop"] == "dynamic cache")
    anchor = next((r for r in rows if r["loop"] == "llama.cpp"), None)
    title, cmd = (("SmolLM2-135M", "python benchmarks/decode.py") if model == "smollm2" else
                  ("Qwen2.5-Coder-0.5B", "python benchmarks/decode.py --model qwen --no-compile"))
    lines = [f"{title}, batch 1, prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new tokens (greedy), "
             f"{env['threads']} threads, best of {reps} alternating runs (`{cmd}`). "
             "Ratios: decode tokens/s over dense fp32 with transformers' default loop"
             + (", and over llama.cpp on the same GGUF in the same run." if anchor else "."), "",
             "| model | decode loop | decode tokens/s | × dense | × llama.cpp | prompt tokens/s | first-call compile s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs_llama = f"{r['decode_tokens_per_s'] / anchor['decode_tokens_per_s']:.2f}×" if anchor else "—"
        comp = f"{r['compile_seconds']:.0f}" if r["compile_seconds"] is not None else ""
        lines.append(f"| {r['model']} | {r['loop']} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['decode_tokens_per_s'] / dense['decode_tokens_per_s']:.2f}× | {vs_llama} | "
                     f"{r['prompt_tokens_per_s']:.0f} | {comp} |")
    if llama_error:
        lines += ["", f"No llama.cpp row: {llama_error}."]
    return lines


if __name__ == "__main__":
    main()
