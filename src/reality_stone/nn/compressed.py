"""CompressedLinear: a drop-in ``nn.Linear`` replacement that runs from an `Encoded` weight;
CompressedEmbedding: token embeddings looked up in one (a tied LM head's matrix, stored once)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from reality_stone.codecs.base import Encoded

__all__ = ["CompressedEmbedding", "CompressedLinear", "decoded_weights", "set_activations"]


class CompressedLinear(nn.Module):
    """``y = x @ W.T + b`` with W held compressed.

    forward dispatches to ``encoded.matmul`` — the codec's fused path where it has one (e.g.
    low-rank: (x Bᵀ) Aᵀ), else the reference decode → matmul. The compressed weight is
    frozen; gradients flow to the input and to the (dense) bias.

    ``activations="int8"`` (group-quantised codecs: rtn, hqq, GPTQ output)
    quantises the input to int8 per weight group on the fly and runs the integer kernel
    (``encoded.matmul_int8_activations``): faster, at a measured cost in accuracy (README,
    fused-matmul section). Default ``"fp32"``: exact to float32 rounding.
    """

    ACTIVATIONS = ("fp32", "int8")

    def __init__(self, encoded: Encoded, bias: Tensor | None = None, *, activations: str = "fp32"):
        super().__init__()
        self.encoded = encoded
        self.set_activations(activations)
        self._decoded: Tensor | None = None  # set only inside `decoded_weights`
        self.out_features, self.in_features = encoded.shape
        if bias is not None:
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

    def set_activations(self, activations: str) -> None:
        """Switch between exact fp32 activations and on-the-fly int8 activations."""
        if activations not in self.ACTIVATIONS:
            raise ValueError(f"activations must be one of {self.ACTIVATIONS}, got {activations!r}")
        if activations == "int8" and not _supports_int8(self.encoded):
            raise ValueError(f"int8 activations need a group-quantised weight (rtn, hqq, gptq); "
                             f"this layer holds {self.encoded.config.codec_name} "
                             f"({self.encoded.bits_per_weight():.2f} bits per weight)")
        self.activations = activations

    @classmethod
    def from_linear(cls, linear: nn.Linear, config) -> "CompressedLinear":
        """Compress ``linear.weight`` with a codec config (`reality_stone.codecs`)."""
        return cls(config.encode(linear.weight.detach()), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) floating point -> (..., out_features), same dtype as x.

        float32 and float64 inputs are computed in their own dtype; float16 / bfloat16 inputs in
        float32 (the kernels' compute dtype), the result cast back. Integer, bool or complex
        inputs raise TypeError: a weight of fractions has no exact integer product.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"CompressedLinear takes a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"CompressedLinear takes floating-point inputs, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1] if x.dim() else 0} features, {self.in_features} expected")
        out_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if self._decoded is not None:
            y = x @ self._decoded.to(x.dtype).T
        elif self.activations == "int8":
            y = self.encoded.matmul_int8_activations(x)
        else:
            y = self.encoded.matmul(x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(out_dtype)

    @property
    def weight(self) -> Tensor:
        """The decoded weight (built on access; for inspection and for code that reads ``.weight``)."""
        return self.encoded.decode()

    def extra_repr(self) -> str:
        enc = self.encoded
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"codec={enc.config.codec_name}, bits_per_weight={enc.bits_per_weight():.3f}"
                + (f", activations={self.activations}" if self.activations != "fp32" else ""))


class CompressedEmbedding(nn.Module):
    """``nn.Embedding`` lookups from a compressed (num_embeddings, embedding_dim) matrix.

    For a model whose LM head is tied to its input embeddings: once the head is compressed the
    embedding reads the very same `Encoded` (``encoded.decode_rows``: only the looked-up rows
    are decoded), so the matrix is held — and stored — once, compressed. ids: any-shaped
    integer tensor in [0, num_embeddings) -> (*ids.shape, embedding_dim) float32.
    """

    def __init__(self, encoded: Encoded, padding_idx: int | None = None):
        super().__init__()
        self.encoded = encoded
        self.num_embeddings, self.embedding_dim = encoded.shape
        self.padding_idx = padding_idx  # kept for code that reads it; lookups never train

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"CompressedEmbedding takes integer token ids, got {getattr(ids, 'dtype', type(ids))}")
        flat = ids.reshape(-1).long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token ids must be in [0, {self.num_embeddings}), got "
                             f"[{int(flat.min())}, {int(flat.max())}]")
        return self.encoded.decode_rows(flat).reshape(*ids.shape, self.embedding_dim)

    @property
    def weight(self) -> Tensor:
        """The decoded matrix (built on access; for inspection and for code that reads ``.weight``)."""
        return self.encoded.decode()

    def extra_repr(self) -> str:
        enc = self.encoded
        return (f"{self.num_embeddings}, {self.embedding_dim}, codec={enc.config.codec_name}, "
                f"bits_per_weight={enc.bits_per_weight():.3f}")


def _supports_int8(encoded: Encoded) -> bool:
    return encoded.config.capabilities.int8_activations


def set_activations(model: nn.Module, activations: str) -> int:
    """Set ``activations`` ("fp32" | "int8") on every `CompressedLinear` of ``model`` that
    supports it; returns how many layers were switched. A model with no such layer → ValueError."""
    layers = [m for m in model.modules() if isinstance(m, CompressedLinear)]
    able = [m for m in layers if activations == "fp32" or _supports_int8(m.encoded)]
    if not able:
        raise ValueError(f"no CompressedLinear layer of this model supports activations={activations!r}")
    for m in able:
        m.set_activations(activations)
    return len(able)


@contextmanager
def decoded_weights(model: nn.Module):
    """Inside the block every `CompressedLinear` of ``model`` runs the reference path
    (decode → matmul) from a weight decoded once, instead of its fused / per-call path.

    For quality evaluation over many forward passes (perplexity windows): the numbers are
    those of the reference path, which the fused paths are tested against; it costs the
    dense weights' memory while active. Speed and memory measurements must not use it.
    Layers with ``activations="int8"`` keep their per-call path (its numbers depend on x).
    """
    layers = [m for m in model.modules() if isinstance(m, CompressedLinear) and m.activations == "fp32"]
    try:
        for m in layers:
            m._decoded = m.encoded.decode()
        yield model
    finally:
        for m in layers:
            m._decoded = None
