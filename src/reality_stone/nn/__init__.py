"""Layers: modules = parameters + calls into geometry / codecs / kernels."""

from reality_stone.nn.butterfly import ButterflyLinear, butterfly_multiply
from reality_stone.nn.compressed import CompressedEmbedding, CompressedLinear, decoded_weights, set_activations
from reality_stone.nn.trainable_rbe import TrainableRBE
from reality_stone.nn.spline import GeodesicSplineLinear, HeightFieldLinear, SplineLinear, catmull_rom_matrix
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
    "CompressedEmbedding",
    "CompressedLinear",
    "FromPoincare",
    "GeodesicSplineLinear",
    "HeightFieldLinear",
    "HyperButterfly",
    "HyperbolicMLR",
    "LorentzLinear",
    "MobiusLinear",
    "SplineLinear",
    "ToPoincare",
    "TrainableRBE",
    "butterfly_multiply",
    "catmull_rom_matrix",
    "decoded_weights",
    "set_activations",
]
