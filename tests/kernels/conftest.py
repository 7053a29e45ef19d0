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
