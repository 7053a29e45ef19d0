"""Layers: modules = parameters + calls into geometry / codecs / kernels."""

from reality_stone.nn.butterfly import ButterflyLinear, butterfly_multiply
from reality_stone.nn.compressed import CompressedLinear, decoded_weights
from reality_stone.nn.hyperbolic import (
    FromPoincare,
    HyperbolicMLR,
    HyperButterfly,
    LorentzLinear,
    MobiusLinear,
    ToPoincare,
)

__all__ = [
    "ButterflyLinear",
    "CompressedLinear",
    "FromPoincare",
    "HyperButterfly",
    "HyperbolicMLR",
    "LorentzLinear",
    "MobiusLinear",
    "ToPoincare",
    "butterfly_multiply",
    "decoded_weights",
]
