"""One face for every fused-matmul kernel family: custom op, fake, autograd, dispatch, batch limits.

Each family (`int_lowbit_ops`, `seedbasis_ops`, `packed64_ops`) writes only what is its own:

* ``forward(x, *layout) -> y`` — the fused C++ kernel where it serves the call (float32, batch
  ≤ `MAX_FUSED_BATCH`, extension built), else the tiled torch path (`kernels.tiled`);
* ``check(x, *layout)`` — shapes and dtypes of the public op's inputs (ValueError);
* ``rows(*layout)`` and ``decoder(*layout, in_features)`` → ``decode(r0, r1, dtype)`` (rows of W);
* the op's typed Python signature, decorated with ``torch.library.custom_op`` (so
  ``torch.compile`` traces it).

`linear_kernel` then registers the fake (shape inference), the autograd formula (the input
gradient ``g @ W`` by the same tiled decode; the layout is not differentiable) and returns a
`LinearKernel` whose call skips the custom op's Python dispatch (tens of µs, more than the
kernel itself on SmolLM2-sized layers) when neither autograd nor ``torch.compile`` needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from reality_stone.kernels.tiled import tiled_linear_transposed

__all__ = ["KERNELS", "MAX_FUSED_BATCH", "LinearKernel", "linear_kernel"]

# Up to this many rows of x (the flattened batch) the fused C++ kernel runs; beyond, tiles of W
# decoded into BLAS are as fast. Measured on 4096² weights, 2 threads (benchmarks/fused_matmul.py):
# * lowbit: the kernel walks 4 batch rows at a time (AVX-512; AVX2: 8, kernels.h kMaxBatch) over
#   L2-sized blocks of weight rows, so the codes come from memory once per call. int4 g128, AVX-512
#   (table kernel): fused 21.6 ms vs dense 19.2 at 128 rows, fused 48.8 vs tiled 62.0 at 256, 93.9 vs
#   94.7 at 512 (dense 70.4): the tiles take over from there. The int8-activation kernel has no
#   limit (5.7 ms at 128, 23 ms at 512).
# * packed64: every leaf is generated once per call and used for the whole batch.
# * seedbasis: batch ≥ 2 multiplies 8 batch rows per table lookup; its cost grows linearly with the
#   batch but stays far below the tiled decode (whose seed-basis decode is ~0.8 s per 4096² tile
#   sweep): no limit.
# * seedbasis_a8: pattern ids by GF(2), up to 16 batch rows per pass over the records; faster than
#   the fp32 kernel at every batch measured (fused_matmul.md, 4096², 3.5 bits, 2 threads: 0.77 vs
#   1.63 ms at batch 1, 1.40 vs 4.06 at 8, 7.5 vs 14.6 at 64; its cost grows linearly): no limit.
MAX_FUSED_BATCH = {"lowbit_linear": 256, "lowbit_linear_a8": None, "packed64_linear": 64, "seedbasis_linear": None,
                   "seedbasis_linear_a8": None}


@dataclass(frozen=True)
class LinearKernel:
    """A registered kernel: ``op`` (the custom op), ``forward`` (the same computation without
    the op's dispatch), ``rows(*layout)``, ``decoder(*layout, in_features)`` (its own rows of W,
    the reference its tests measure against) and the fused path's batch limit. Call it as
    ``kernel(x, *layout)``."""

    op: Callable[..., Tensor]
    forward: Callable[..., Tensor]
    rows: Callable[..., int]
    decoder: Callable[..., Callable]

    @staticmethod
    def needs_op(x: Tensor) -> bool:
        """Whether a call with ``x`` goes through the custom op (autograd or ``torch.compile``)."""
        return (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling()

    def __call__(self, x: Tensor, *layout) -> Tensor:
        return self.op(x, *layout) if self.needs_op(x) else self.forward(x, *layout)


def linear_kernel(op, *, forward: Callable[..., Tensor], check: Callable[..., None], rows: Callable[..., int],
                  decoder: Callable[..., Callable]) -> LinearKernel:
    """Register fake and autograd for the custom op ``op`` (``reality_stone::<name>``, inputs
    ``(x, *layout)``, output ``(..., rows(*layout))``) and return its `LinearKernel`."""
    name = op._name.split("::")[-1]
    if name not in MAX_FUSED_BATCH:
        raise ValueError(f"kernel {name!r} has no batch limit in MAX_FUSED_BATCH")

    def fake(x, *layout):
        check(x, *layout)
        return x.new_empty(*x.shape[:-1], rows(*layout))

    def setup_context(ctx, inputs, output):
        x, *layout = inputs
        ctx.is_tensor = [isinstance(a, Tensor) for a in layout]
        ctx.save_for_backward(*(a for a in layout if isinstance(a, Tensor)))
        ctx.others = [a for a in layout if not isinstance(a, Tensor)]
        ctx.in_features = x.shape[-1]

    def backward(ctx, grad):
        tensors, others = iter(ctx.saved_tensors), iter(ctx.others)
        layout = [next(tensors) if t else next(others) for t in ctx.is_tensor]
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = tiled_linear_transposed(g2, rows(*layout), ctx.in_features, decoder(*layout, ctx.in_features))
        return (gx.reshape(*grad.shape[:-1], ctx.in_features), *([None] * len(layout)))

    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    KERNELS[name] = LinearKernel(op, forward, rows, decoder)
    return KERNELS[name]


# name -> LinearKernel, filled as the kernel families are imported (tests/kernels/test_conformance.py
# runs every entry)
KERNELS: dict[str, LinearKernel] = {}
