import os
import subprocess
import sys
import textwrap

import pytest


def _allocated_bytes(fn) -> int:
    """Total bytes allocated on the CPU while ``fn`` runs (torch profiler's allocator hooks): an
    upper bound of its extra peak memory."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


@pytest.fixture
def allocated_bytes():
    return _allocated_bytes


_FALLBACK_CHECK = """
import warnings
import torch
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    y = enc.matmul(x)
assert any("unavailable" in str(i.message) for i in w), [str(i.message) for i in w]
torch.testing.assert_close(y, x @ enc.decode().T, rtol=1e-4, atol=1e-6)
"""


@pytest.fixture
def fallback_matches_decode():
    """``run(setup)``: in a fresh process without the compiled kernels, ``setup`` (Python that
    defines ``enc`` and ``x``) runs, then ``enc.matmul(x)`` must warn once and equal the decode."""

    def run(setup: str) -> None:
        script = textwrap.dedent(setup) + _FALLBACK_CHECK
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, "REALITY_STONE_NO_EXT": "1"})
        assert out.returncode == 0, out.stderr

    return run
