"""Dispatch for group-quantised matmuls: fused C++ (AVX2) kernel, tiled torch path, autograd, custom op.

* batch ≤ 8, float32, CPU with AVX2: the C++ kernel (`int_lowbit_cpu.cpp`), built on first
  use with ``torch.utils.cpp_extension`` into the user cache dir and reused afterwards;
* otherwise: a tiled torch path that dequantises ``TILE_ROWS`` rows at a time into a small
  buffer and multiplies (never the whole dense weight);
* no compiler / no AVX2 / ``REALITY_STONE_NO_EXT=1``: the tiled path, with one warning.

`int4_linear` is a ``torch.library.custom_op`` (so ``torch.compile`` traces it) with a
registered backward: the gradient w.r.t. the input uses the same tiled dequantisation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from reality_stone.kernels.int_lowbit import dequantize_rows

__all__ = ["TILE_ROWS", "extension_status", "int4_linear", "load_extension"]

TILE_ROWS = 256
_FUSED_MAX_BATCH = 8
_EXT = None
_EXT_ERROR: str | None = None


def load_extension():
    """The compiled kernel module, or None (reason in `extension_status`)."""
    global _EXT, _EXT_ERROR
    if _EXT is not None or _EXT_ERROR is not None:
        return _EXT
    if os.environ.get("REALITY_STONE_NO_EXT"):
        _EXT_ERROR = "disabled by REALITY_STONE_NO_EXT"
    elif torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        _EXT_ERROR = f"CPU capability {torch.backends.cpu.get_cpu_capability()} lacks AVX2"
    else:
        try:
            from torch.utils.cpp_extension import load

            from reality_stone.data.pretrained import cache_dir

            build = cache_dir() / "ext" / f"torch-{torch.__version__}"
            build.mkdir(parents=True, exist_ok=True)
            src = Path(__file__).with_name("int_lowbit_cpu.cpp")
            _EXT = load(name="reality_stone_int_lowbit", sources=[str(src)], build_directory=str(build),
                        extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, headers, ... -> pure torch
            _EXT_ERROR = f"build failed: {str(exc).splitlines()[0][:200]}"
    if _EXT is None:
        warnings.warn(f"reality_stone: fused int4 CPU kernel unavailable ({_EXT_ERROR}); using the tiled torch path",
                      RuntimeWarning, stacklevel=3)
    return _EXT


def extension_status() -> str:
    load_extension()
    return "fused AVX2 kernel" if _EXT is not None else f"tiled torch fallback ({_EXT_ERROR})"


def _tiled(x2: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    rows = packed.shape[0]
    out = x2.new_empty(x2.shape[0], rows)
    for r0 in range(0, rows, TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, rows)
        out[:, r0:r1] = x2 @ dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], group, x2.dtype).T
    return out


def _tiled_transposed(g2: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    """g2 (B, rows) @ W (rows, K), tile by tile."""
    out = g2.new_zeros(g2.shape[0], packed.shape[1] * 2)
    for r0 in range(0, packed.shape[0], TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, packed.shape[0])
        out += g2[:, r0:r1] @ dequantize_rows(packed[r0:r1], scale[r0:r1], offset[r0:r1], group, g2.dtype)
    return out


@torch.library.custom_op("reality_stone::int4_linear", mutates_args=())
def int4_linear(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int) -> Tensor:
    """x (..., K) @ Wᵀ for W in the 4-bit compute layout; scale/offset (rows, K/group) float32."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    ext = load_extension() if x2.dtype == torch.float32 and x2.shape[0] <= _FUSED_MAX_BATCH else None
    if ext is not None and group % 16 == 0:
        x2c = x2.contiguous()
        xsum = x2c.reshape(x2c.shape[0], -1, group).sum(-1)
        y = ext.int4_gemv(x2c, packed, scale, offset, xsum.contiguous(), group)
    else:
        y = _tiled(x2, packed, scale, offset, group)
    return y.reshape(*lead, packed.shape[0])


@int4_linear.register_fake
def _(x, packed, scale, offset, group):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _setup(ctx, inputs, output):
    _, packed, scale, offset, group = inputs
    ctx.save_for_backward(packed, scale, offset)
    ctx.group = group


def _backward(ctx, grad):
    packed, scale, offset = ctx.saved_tensors
    g2 = grad.reshape(-1, grad.shape[-1])
    gx = _tiled_transposed(g2, packed, scale, offset, ctx.group)
    return gx.reshape(*grad.shape[:-1], gx.shape[-1]), None, None, None, None


int4_linear.register_autograd(_backward, setup_context=_setup)
