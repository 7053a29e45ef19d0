"""The compiled CPU kernels: one C++ extension (AVX2 + FMA), built on first use and cached.

Sources: every ``*.cpp`` of this folder — `int_lowbit_cpu.cpp` (group-quantised ≤4-bit),
`seedbasis_cpu.cpp` (seed-basis blocks), `seedbasis_search_cpu.cpp` (the seed-basis encoder's
search), `packed64_cpu.cpp` (Packed64 leaves), each registering its own bindings, and
`bindings.cpp` (the module). Built with ``torch.utils.cpp_extension.load`` into the user
cache dir (one build per torch version; rebuilt when a source changes). No compiler, no
AVX2, or ``REALITY_STONE_NO_EXT=1`` → ``None`` and one warning; callers then use their
plain-torch paths.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

__all__ = ["extension_status", "load_extension"]

SOURCES = sorted(p.name for p in Path(__file__).parent.glob("*.cpp"))
_EXT = None
_EXT_ERROR: str | None = None
_WARNED = False


def load_extension(*, quiet: bool = False):
    """The compiled kernel module, or None (reason in `extension_status`).

    Without it, the first non-``quiet`` call warns once: the fused matmuls say so; the encoders
    (``quiet``: their fallback is only slower, never different) do not use up that warning."""
    global _EXT, _EXT_ERROR
    if _EXT is not None or _EXT_ERROR is not None:
        if _EXT is None and not quiet and not _WARNED:
            _warn()
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
            here = Path(__file__).parent
            _EXT = load(name="reality_stone_kernels", sources=[str(here / s) for s in SOURCES],
                        build_directory=str(build), extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno", "-fopenmp"],
                        extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, headers, ... -> pure torch
            _EXT_ERROR = f"build failed: {str(exc).splitlines()[0][:200]}"
    if _EXT is None and not quiet:
        _warn()
    return _EXT


def _warn() -> None:
    global _WARNED
    _WARNED = True
    warnings.warn(f"reality_stone: fused CPU kernels unavailable ({_EXT_ERROR}); using the plain torch paths",
                  RuntimeWarning, stacklevel=4)


def extension_status() -> str:
    load_extension()
    if _EXT is None:
        return f"plain torch fallback ({_EXT_ERROR})"
    if not _EXT.has_avx512():
        return "fused AVX2 kernels"
    return "fused AVX2 kernels (AVX-512" + (" + VNNI int8 activations)" if _EXT.has_avx512_vnni() else ")")
