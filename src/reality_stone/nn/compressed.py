"""CompressedLinear: a drop-in ``nn.Linear`` replacement that runs from an `Encoded` weight."""

from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor, nn

from reality_stone.codecs.base import Encoded

__all__ = ["CompressedLinear", "decoded_weights"]


class CompressedLinear(nn.Module):
    """``y = x @ W.T + b`` with W held compressed.

    forward dispatches to ``encoded.matmul`` — the codec's fused path where it has one (e.g.
    low-rank: (x Bᵀ) Aᵀ), else the reference decode → matmul. The compressed weight is
    frozen; gradients flow to the input and to the (dense) bias.
    """

    def __init__(self, encoded: Encoded, bias: Tensor | None = None):
        super().__init__()
        self.encoded = encoded
        self._decoded: Tensor | None = None  # set only inside `decoded_weights`
        self.out_features, self.in_features = encoded.shape
        if bias is not None:
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config) -> "CompressedLinear":
        """Compress ``linear.weight`` with a codec config (`reality_stone.codecs`)."""
        return cls(config.encode(linear.weight.detach()), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, {self.in_features} expected")
        y = x @ self._decoded.T if self._decoded is not None else self.encoded.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    @property
    def weight(self) -> Tensor:
        """The decoded weight (built on access; for inspection and for code that reads ``.weight``)."""
        return self.encoded.decode()

    def extra_repr(self) -> str:
        enc = self.encoded
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"codec={enc.config.codec_name}, bits_per_weight={enc.bits_per_weight():.3f}")


@contextmanager
def decoded_weights(model: nn.Module):
    """Inside the block every `CompressedLinear` of ``model`` runs the reference path
    (decode → matmul) from a weight decoded once, instead of its fused / per-call path.

    For quality evaluation over many forward passes (perplexity windows): the numbers are
    those of the reference path, which the fused paths are tested against; it costs the
    dense weights' memory while active. Speed and memory measurements must not use it.
    """
    layers = [m for m in model.modules() if isinstance(m, CompressedLinear)]
    try:
        for m in layers:
            m._decoded = m.encoded.decode()
        yield model
    finally:
        for m in layers:
            m._decoded = None
