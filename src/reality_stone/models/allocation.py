"""Mixed bit allocation: spread a codec config's bits over the layers by their measured sensitivity.

Uniform compression gives every layer the same bits per weight, but an error costs the model
very different amounts in different layers. `allocate` keeps the total stored bits of the uniform config and moves them:
each layer gets a rung of the config's `ladder()` (for the seed basis 2.0 … 5.0 bits per
weight) so that the predicted loss

    Σ_layers ½ Σ_rows F_r · δw_r H δw_rᵀ          (F: output Fisher, H = E[x xᵀ])

is smallest — HAWQ-style, with the diagonal Fisher of the layer outputs (`collect_fisher`)
weighing the output error the data-aware encoders minimise (``tr(ΔW H ΔWᵀ)`` per row).

What is measured, per layer (``rows`` rows drawn with a seeded generator, encoded with the
layer's statistics): the weighted error at the uniform config, scaled to the whole layer by a
ratio estimate (Σ_rows F_r e_r with e_r = w_r H w_rᵀ, the output energy, over all rows).
How the error moves with the rung — the ratio of each rung's weighted error to the uniform
config's — is measured on ``probes`` layers spread through the model and taken as their median
(one sampled encode per layer, not one per layer and rung). The choice is a Lagrangian
knapsack (bisection on the bit price), its slack then spent greedily, largest predicted gain
per bit first.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
from torch import Tensor

from reality_stone.calibration import ActivationStats
from reality_stone.codecs.base import CodecConfig

__all__ = ["Allocation", "allocate"]


@dataclass
class Allocation:
    """The chosen config per layer and what the choice was based on."""

    configs: dict[str, CodecConfig]
    weights: dict[str, int]  # weights per layer
    budget_bits: float  # Σ weights × nominal bits of the uniform config
    used_bits: float  # the same for the chosen configs (≤ budget_bits)
    predicted_loss: dict[str, float]  # "uniform" / "mixed": Σ ½ F δ H δ / tokens, nats per token
    rung_ratios: dict[str, float] = field(default_factory=dict)  # rung -> error ratio to the uniform config

    @property
    def bits(self) -> dict[str, float]:
        """Nominal bits per weight per layer."""
        return {n: float(c.nominal_bits_per_weight()) for n, c in self.configs.items()}

    def summary(self) -> dict:
        """JSON-ready: layers per nominal bits, the mean nominal bits, predicted losses, rung ratios."""
        counts: dict[str, int] = {}
        for b in sorted(self.bits.values()):
            counts[f"{b:g}"] = counts.get(f"{b:g}", 0) + 1
        return dict(layers_per_bits=counts, nominal_bits_per_weight=self.used_bits / sum(self.weights.values()),
                    predicted_loss=self.predicted_loss, rung_ratios=self.rung_ratios)


def _label(config: CodecConfig) -> str:
    return f"{config.nominal_bits_per_weight():g} " + ",".join(
        f"{k}={v}" for k, v in config.to_dict().items() if k not in ("chunk",))


def _weighted_error(config: CodecConfig, w: Tensor, stats: ActivationStats, f: Tensor) -> float:
    """Σ_rows F_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ of ``w`` (rows, in) encoded with ``stats``."""
    enc = config.encode(w, stats if config.calibration != "unused" else None)
    D = (w - enc.decode(torch.float32)).double()
    return float((f * ((D @ stats.xtx) * D).sum(1)).sum())


def allocate(weights: dict[str, Tensor], stats: dict[str, ActivationStats], fisher: dict[str, Tensor],
             config: CodecConfig, *, rows: int = 32, probes: int = 6, seed: int = 0) -> Allocation:
    """Per layer a rung of ``config.ladder()`` with Σ numel × bits ≤ the uniform ``config``'s.

    ``weights`` (out, in) per layer name, in model order; ``stats`` / ``fisher`` from
    `reality_stone.calibration.collect_fisher`. Deterministic under ``seed``. ValueError for a
    config without a ladder or a layer whose statistics are missing or mis-shaped.
    """
    ladder = tuple(config.ladder())
    if len(ladder) < 2:
        raise ValueError(f"codec {config.codec_name!r} has no ladder of configs to allocate bits from "
                         "(mixed allocation: seedbasis, rtn, hqq, gptq)")
    if not (isinstance(rows, int) and rows >= 1 and isinstance(probes, int) and probes >= 1):
        raise ValueError(f"rows and probes must be positive integers, got {rows!r}, {probes!r}")
    names = list(weights)
    if not names:
        raise ValueError("no layers to allocate bits to")
    for name in names:
        w = weights[name]
        if name not in stats or name not in fisher:
            raise ValueError(f"layer {name!r} has no calibration statistics / Fisher")
        if stats[name].in_features != w.shape[1] or fisher[name].shape != (w.shape[0],):
            raise ValueError(f"layer {name!r}: statistics for {stats[name].in_features} inputs and "
                             f"{tuple(fisher[name].shape)} outputs, the weight is {tuple(w.shape)}")
    gen = torch.Generator().manual_seed(seed)
    numel = {n: weights[n].numel() for n in names}
    tokens = {n: stats[n].tokens for n in names}
    sample: dict[str, tuple[Tensor, Tensor, float]] = {}  # rows, their Fisher, their error at the config
    base_err: dict[str, float] = {}  # the error scaled to the whole layer
    for name in names:
        w, H, f = weights[name].detach().float(), stats[name].xtx.double(), fisher[name].double()
        energy = ((w.double() @ H) * w.double()).sum(1)
        pick = torch.randperm(w.shape[0], generator=gen)[:rows]
        ws, fs = w[pick].contiguous(), f[pick]
        denom = float((fs * energy[pick]).sum())
        scale = float((f * energy).sum()) / denom if denom > 0 else w.shape[0] / len(pick)
        err = _weighted_error(config, ws, stats[name], fs)
        sample[name], base_err[name] = (ws, fs, err), err * scale
    # how the error moves along the ladder: median ratio over probe layers spread through the model
    step = max(1, len(names) // probes)
    probe_names = names[step // 2 :: step][:probes] or names[:1]
    ratios: dict[CodecConfig, float] = {config: 1.0}
    for rung in ladder:
        if rung == config:
            continue
        rs = []
        for name in probe_names:
            ws, fs, err = sample[name]
            if err > 0:
                rs.append(_weighted_error(rung, ws, stats[name], fs) / err)
        ratios[rung] = statistics.median(rs) if rs else 1.0
    bits = {c: float(c.nominal_bits_per_weight()) for c in ladder}
    # a rung costing more bits and erring more than another is never worth it
    rungs = [c for c in ladder if not any(bits[o] <= bits[c] and ratios[o] < ratios[c] for o in ladder if o != c)]

    def cost(name: str, c: CodecConfig) -> float:
        return base_err[name] * ratios[c]

    def choose(price: float) -> dict[str, CodecConfig]:
        return {n: min(rungs, key=lambda c: (cost(n, c) + price * numel[n] * bits[c], bits[c])) for n in names}

    def used(choice: dict[str, CodecConfig]) -> float:
        return sum(numel[n] * bits[c] for n, c in choice.items())

    budget = sum(numel[n] * bits[config] for n in names)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        if used(choose(hi)) <= budget:
            break
        hi *= 4
    for _ in range(100):  # the smallest bit price that meets the budget
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if used(choose(mid)) > budget else (lo, mid)
    choice = choose(hi)  # fits: at a high enough price every layer takes the cheapest rung, ≤ the config's bits
    # spend the slack: upgrades by predicted gain per bit while they fit
    spare = budget - used(choice)
    while True:
        best = None
        for n in names:
            c = choice[n]
            for o in rungs:
                extra = numel[n] * (bits[o] - bits[c])
                gain = cost(n, c) - cost(n, o)
                if 0 < extra <= spare and gain > 0 and (best is None or gain / extra > best[0]):
                    best = (gain / extra, n, o, extra)
        if best is None:
            break
        _, n, o, extra = best
        choice[n], spare = o, spare - extra
    half = lambda n, c: 0.5 * cost(n, c) / tokens[n]  # noqa: E731  (nats per token)
    return Allocation(
        configs=choice, weights=numel, budget_bits=budget, used_bits=used(choice),
        predicted_loss=dict(uniform=sum(half(n, config) for n in names), mixed=sum(half(n, c) for n, c in choice.items())),
        rung_ratios={_label(c): r for c, r in ratios.items()})
