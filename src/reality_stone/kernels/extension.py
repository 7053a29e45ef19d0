"""The compiled CPU kernels: one C++ extension (AVX2 + FMA), built on first use and cached.

Sources: every ``*.cpp`` of this folder — `int_lowbit_cpu.cpp` (group-quantised 2/3/4/8-bit),
`seedbasis_cpu.cpp` (seed-basis blocks), `seedbasis_search_cpu.cpp` (the seed-basis encoder's
search), `packed64_cpu.cpp` (Packed64 leaves), each registering its own bindings, and
`bindings.cpp` (the module). Built with ``torch.utils.cpp_extension.load`` into the user
cache dir, in a folder named by the torch version and a hash of the sources and flags: the
sources are copied there first, so every checkout with the same sources shares one build (a
build from the checkout's own paths would be redone whenever another checkout loaded).
No compiler, no AVX2, or ``REALITY_STONE_NO_EXT=1`` → ``None`` and one warning; callers then
use their plain-torch paths.

Builds are serialised by an ``flock`` on ``build.flock``, which the kernel releases when its
holder dies. torch's own ``lock`` file (``O_EXCL``) is not: a build killed part-way leaves it
behind and every later ``load`` waits on it forever. Under the flock no other process of ours
is building, so such a file is stale and is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import warnings
from pathlib import Path

import torch

__all__ = ["extension_status", "load_extension"]

HERE = Path(__file__).parent
SOURCES = sorted(p.name for p in HERE.glob("*.cpp"))
HEADERS = sorted(p.name for p in HERE.glob("*.h"))
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
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
            from reality_stone.data.pretrained import cache_dir

            _EXT = _build(cache_dir() / "ext")
        except Exception as exc:  # no compiler, headers, ... -> pure torch
            _EXT_ERROR = f"build failed: {str(exc).splitlines()[0][:200]}"
    if _EXT is None and not quiet:
        _warn()
    return _EXT


def build_directory(root: Path) -> Path:
    """``root/torch-<version>-<hash>``: the hash covers every source, header and flag."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    return root / f"torch-{torch.__version__}-{digest.hexdigest()[:16]}"


def _build(root: Path):
    from torch.utils.cpp_extension import load

    build = build_directory(root)
    source_dir = build / "src"
    source_dir.mkdir(parents=True, exist_ok=True)
    with open(build / "build.flock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # held until the file closes or this process dies
        remove_stale_torch_lock(build)
        for name in SOURCES + HEADERS:
            target = source_dir / name
            # same folder, same hash -> same bytes: write only when missing, so ninja (which
            # compares mtimes) keeps the objects of an earlier build
            if not target.is_file() or target.read_bytes() != (HERE / name).read_bytes():
                tmp = target.with_suffix(target.suffix + ".tmp")
                tmp.write_bytes((HERE / name).read_bytes())
                os.replace(tmp, target)
        return load(name="reality_stone_kernels", sources=[str(source_dir / s) for s in SOURCES],
                    build_directory=str(build), verbose=False,
                    # copies: torch appends its own flags to these lists in place
                    extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS))


def remove_stale_torch_lock(build: Path) -> bool:
    """Remove torch's ``lock`` file from `build`; call only while holding ``build.flock``.

    Returns whether one was there (left by a build that was killed)."""
    lock = build / "lock"
    if lock.exists():
        lock.unlink(missing_ok=True)
        warnings.warn(f"reality_stone: removed a stale build lock left by an interrupted build: {lock}",
                      RuntimeWarning, stacklevel=3)
        return True
    return False


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
