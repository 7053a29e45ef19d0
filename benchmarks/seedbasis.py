"""Seed-basis codec vs RTN, HQQ and GPTQ on SmolLM2-135M at 2.5 / 3.5 / 4.25 bits per weight.

    python benchmarks/seedbasis.py     # -> benchmarks/results/seedbasis.{json,md}

All in one run: the same model, calibration statistics (`calibration_text`: The Tempest,
The Comedy of Errors, Paradise Lost — 8192 tokens) and held-out evaluation (Hamlet and the
Lee news corpus, first 8192 tokens each, context 512, stride 256). Per configuration:
whole-model perplexity, bits per weight of the compressed layers (every byte), per-layer
weight relative error and output relative error (under the calibration H), and
compression seconds per million weights. Baselines at group sizes 64/128 (never 32, the
Q4_1 grid SmolLM2 was shipped on).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from baselines.gptq import gptq_quantize  # noqa: E402

from reality_stone.codecs import codec_config, relative_error  # noqa: E402
from reality_stone.codecs.seedbasis import preset  # noqa: E402
from reality_stone.data.text import calibration_text  # noqa: E402
from reality_stone.models import compressible_layers  # noqa: E402
from reality_stone.models.calibration import collect_hessians, output_error  # noqa: E402
from reality_stone.models.experiment import Spec, evaluate_specs  # noqa: E402
from reality_stone.models.loaders import load_smollm2  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOKENS = 8192


class DataAware:
    """encode_fn for compress(): pass each layer's Hessian to codecs that use one."""

    def __init__(self, hessians, kind):
        self.h, self.kind, self.stats = hessians, kind, []

    def __call__(self, name, lin, cfg):
        W, H = lin.weight.detach(), self.h[name]
        t0 = time.perf_counter()
        if self.kind == "gptq":
            enc = gptq_quantize(W, H, bits=cfg.bits, group=cfg.group)
        elif self.kind == "aware":
            enc = cfg.encode(W, hessian=H)
        else:
            enc = cfg.encode(W)
        dt = time.perf_counter() - t0
        D = enc.decode()
        self.stats.append(dict(layer=name, rel_error=relative_error(W, D), output_error=output_error(W, D, H),
                               seconds=dt, weights=W.numel()))
        return enc


def write_table(rows: list[dict]) -> None:
    write_table(rows)


if __name__ == "__main__":
    main()
