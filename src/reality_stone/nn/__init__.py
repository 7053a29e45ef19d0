"""Layers: modules = parameters + calls into geometry / codecs / kernels."""

from reality_stone.nn.compressed import CompressedLinear

__all__ = ["CompressedLinear"]
