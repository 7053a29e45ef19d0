"""How many CPU threads the library computes with.

Every fused kernel runs on torch's intra-op pool (``at::parallel_for``), so one number governs
all of them. Two busy processes with one thread per core each are 3–10× slower than either
alone on a 2-core machine (OpenMP threads spin while they wait), so the default is the number
of cores this process may actually use — not the machine's: the CPU affinity mask
(``taskset``, container cpusets), a cgroup v2 CPU quota (``cpu.max``), and ``OMP_NUM_THREADS``
when set, whichever is smallest.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["available_cores", "default_threads", "set_threads"]


def _cgroup_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """CPUs granted by a cgroup v2 quota ("200000 100000" → 2), None when unlimited or unknown."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on: affinity mask ∩ cgroup quota (≥ 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, quota) if quota else n)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if set (a positive integer), capped by `available_cores`; else `available_cores`."""
    cores = available_cores()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), cores)
    return cores


def set_threads(n: int | None = None) -> int:
    """Compute with ``n`` threads (None: `default_threads`); returns the number set."""
    if n is None:
        n = default_threads()
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    torch.set_num_threads(n)
    return n
