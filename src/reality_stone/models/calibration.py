"""Activation statistics for data-aware compression (GPTQ / output-error-aware codecs).

`collect_hessians` runs the dense model on calibration text (never the evaluation text:
`reality_stone.data.text.calibration_text`) and accumulates, for every selected
``nn.Linear``, the input second moment H = E[x xᵀ] (in × in, float64) over all tokens.
One pass over the dense model (not GPTQ's sequential re-collection through already
quantised layers): simpler and faster, documented as such.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["collect_hessians", "output_error"]


@torch.no_grad()
def collect_hessians(model: nn.Module, tokenizer, text: str, *, layers: list[str], n_tokens: int = 8192,
                     seq_len: int = 512) -> dict[str, Tensor]:
    """E[x xᵀ] of the inputs of each named Linear, from the first ``n_tokens`` tokens of ``text``."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:n_tokens]
    if len(ids) < seq_len:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than seq_len={seq_len}")
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(name):
        def hook(_mod, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            xtx = (x.T @ x).double()
            sums[name] = sums[name] + xtx if name in sums else xtx
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    for name in layers:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(make_hook(name)))
    try:
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            model(ids[start : start + seq_len][None])
    finally:
        for h in hooks:
            h.remove()
    return {name: sums[name] / counts[name] for name in layers}


def output_error(weight: Tensor, approx: Tensor, hessian: Tensor) -> float:
    """Relative output error sqrt(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)) for inputs with second moment H."""
    W, D, H = weight.double(), (weight - approx).double(), hessian.double()
    return float(((D @ H) * D).sum().clamp_min(0).sqrt() / ((W @ H) * W).sum().sqrt())
