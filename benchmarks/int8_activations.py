"""What int8 activations cost in quality: SmolLM2-135M perplexity, fp32 vs int8 activations.

    python benchmarks/int8_activations.py   # -> benchmarks/results/int8_activations.{json,md}

Same protocol as seedbasis.py: the first 8192 tokens of Hamlet and of the Lee news corpus,
context 512, stride 256. Each group-quantised codec once with exact fp32 activations
(`CompressedLinear` default) and once with ``set_activations(model, "int8")`` — activations
quantised to int8 per weight group on the fly, through the VNNI kernel (on CPUs without it,
the same arithmetic in torch). The speed side is in fused_matmul.md.
"""

from __future__ import annotations

import copy
import time


import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.data.text import evaluation_text
from reality_stone.evaluation.metrics import perplexity
from reality_stone.evaluation.loaders import load_smollm2
from reality_stone.nn import decoded_weights, set_activations
from harness import arguments, parse, write_json, write_markdown

TOKENS = 8192
TEXTS = ("shakespeare", "news")
CODECS = {"RTN int4 g128": codec_config("rtn", bits=4, group=128), "HQQ int4 g64": codec_config("hqq", bits=4, group=64),
          "RTN int3 g64": codec_config("rtn", bits=3, group=64)}


def ppl(model, tokenizer) -> dict:
    return {name: perplexity(model, tokenizer, evaluation_text(name), max_tokens=TOKENS)[0] for name in TEXTS}


def main() -> None:
    parse(arguments(__doc__, threads=2))
    loaded = load_smollm2()
    rows = [dict(label="fp32 (dense)", activations="fp32", **ppl(loaded.model, loaded.tokenizer))]
    print(rows[-1], flush=True)
    for label, cfg in CODECS.items():
        model = copy.deepcopy(loaded.model)
        report = rs.compress(model, cfg)
        bpw = report.bits_per_weight
        with decoded_weights(model):  # fp32 activations: the reference path, each weight decoded once
            rows.append(dict(label=label, activations="fp32", bits_per_weight=bpw, **ppl(model, loaded.tokenizer)))
        print(rows[-1], flush=True)
        set_activations(model, "int8")
        t0 = time.perf_counter()
        rows.append(dict(label=label, activations="int8", bits_per_weight=bpw, **ppl(model, loaded.tokenizer),
                         seconds=time.perf_counter() - t0))
        print(rows[-1], flush=True)
        del model
    write_json("int8_activations", dict(tokens=TOKENS, rows=rows))
    lines = [f"SmolLM2-135M perplexity, first {TOKENS} tokens, context 512 (`python benchmarks/int8_activations.py`).", "",
             "| weights | bits/weight | activations | Hamlet ppl | news ppl |", "|---|---:|---|---:|---:|"]
    for r in rows:
        bpw = f"{r['bits_per_weight']:.3f}" if "bits_per_weight" in r else "32"
        lines.append(f"| {r['label']} | {bpw} | {r['activations']} | {r['shakespeare']:.2f} | {r['news']:.2f} |")
    write_markdown("int8_activations", lines)


if __name__ == "__main__":
    main()
