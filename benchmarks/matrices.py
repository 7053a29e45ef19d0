"""The test matrices the rate–distortion benchmarks share: synthetic fields and real weights."""

from __future__ import annotations

import torch

from reality_stone.data.pretrained import load_minilm_weights, load_smollm2_weights

MINILM = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight"]
SMOLLM2 = ["blk.0.attn_q.weight", "blk.10.ffn_up.weight"]


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, n, dtype=torch.float64)
    return torch.meshgrid(x, x, indexing="ij")


def synthetic(n: int = 256) -> dict[str, torch.Tensor]:
    """(a) seed-003-style sin × cosh pattern, (b) seed 004's smooth field, (c) Gaussian noise."""
    Y, X = grid(n)
    return {
        "sin×cosh (seed 003 style)": (torch.sin(3 * X + 1) * torch.cosh(1.5 * Y)).float(),
        "smooth 1/sqrt(x²+y²+0.01)": (1 / torch.sqrt(X**2 + Y**2 + 0.01)).float(),
        "Gaussian noise": torch.randn(n, n, generator=torch.Generator().manual_seed(0)),
    }


def real() -> dict[str, torch.Tensor]:
    """Real trained weights: fp32 MiniLM and Q4_1-dequantised SmolLM2 (GGUF row order)."""
    m = load_minilm_weights()
    s = load_smollm2_weights(SMOLLM2)
    out = {f"MiniLM {n.split('.', 1)[1]}": m[n] for n in MINILM}
    out.update({f"SmolLM2 {n}": s[n] for n in SMOLLM2})
    return out
