"""What every benchmark script shares: its flags, its timer, and how results are written.

    from harness import arguments, parse, round_robin, write_json, write_markdown

    args = parse(arguments(__doc__, threads=2))          # --help shows the docstring; --threads N
    ms = round_robin({"dense": f, "int4": g}, repeat=15)  # median seconds per call, interleaved

Every script takes ``--threads`` (its default is the count its table states) and sets it before
any work. ``round_robin`` times the paths of one comparison in turn, call by call, so drift and
other load on the machine hit them alike; a path may be a list of callables (one per weight copy)
that it cycles through, for cold-cache timings. Scripts that time whole fresh processes
(scale.py, calibrated_scale.py) or whole generations (decode.py) say so in their tables.

Results are ``benchmarks/results/<name>.json`` (the numbers, with the machine they came from) and
``<name>.md`` (the table `update_readme.py` copies into the README and docs), each written to a
temporary file and renamed, so an interrupted run never leaves half a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["RESULTS", "arguments", "environment", "parse", "round_robin", "write_json", "write_markdown"]

RESULTS = Path(__file__).resolve().parent / "results"


def arguments(doc: str | None, *, threads: int | None = 2) -> argparse.ArgumentParser:
    """A parser for a benchmark script: ``--help`` prints ``doc`` (the script's docstring) and
    ``--threads`` defaults to ``threads`` (None: the library's default, `reality_stone.set_threads`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch intra-op threads (default: {threads or 'the cores this process may use'})")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the flags and set the thread count before any work; ``args.threads`` is the count set."""
    from reality_stone.threads import set_threads

    args = parser.parse_args(argv)
    try:
        args.threads = set_threads(args.threads)
    except ValueError as e:
        parser.error(str(e))
    return args


def round_robin(fns: Mapping[str, Callable[[], Any] | Sequence[Callable[[], Any]]], *, repeat: int = 15,
                warmup: int = 1, min_seconds: float = 0.0, shuffle: bool = False, seed: int = 0) -> dict[str, float]:
    """Median seconds per call of each path, timed in turn (path a, b, c, a, b, c, …).

    fns: name → a callable, or a list of callables that each round takes the next of (one per weight
    copy, so a path streams its weights from memory instead of cache). Warm-up calls every callable
    ``warmup`` times; then ``repeat`` rounds, continued until ``min_seconds`` have passed.
    ``shuffle``: each round visits the paths in a new random order (seeded). In a fixed order a
    path always runs right after the same one, and a call right after a long or very different
    one (decode → matmul, torch's int4 kernel) can take far longer than elsewhere in the round
    (``fused_matmul.py --fixed-order``): shuffled, that cost falls on every path alike and mostly
    outside the median, not always on the path listed next."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be ≥ 1 and warmup ≥ 0, got {repeat}, {warmup}")
    paths = {k: list(v) if isinstance(v, Sequence) else [v] for k, v in fns.items()}
    if not paths or not all(paths.values()):
        raise ValueError("round_robin needs at least one path, each with at least one callable")
    for calls in paths.values():
        for _ in range(warmup):
            for f in calls:
                f()
    cycles = {k: itertools.cycle(v) for k, v in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    order, rng = list(cycles), random.Random(seed)
    end = time.perf_counter() + min_seconds
    while min(len(t) for t in times.values()) < repeat or time.perf_counter() < end:
        if shuffle:
            rng.shuffle(order)
        for k in order:
            f = next(cycles[k])
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def environment() -> dict[str, Any]:
    """The machine a result came from: torch threads, CPU count, torch version, kernel status."""
    from reality_stone.kernels.extension import extension_status

    return dict(threads=torch.get_num_threads(), cpus=os.cpu_count(), torch=torch.__version__,
                machine=platform.machine(), kernels=extension_status())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(name: str, data: Any) -> Path:
    """``results/<name>.json``; a dict gains an ``environment`` entry unless it has one."""
    if isinstance(data, dict) and "environment" not in data:
        data = data | {"environment": environment()}
    return _write(RESULTS / f"{name}.json", json.dumps(data, indent=2) + "\n")


def write_markdown(name: str, lines: list[str] | str) -> Path:
    """``results/<name>.md`` from its lines (or one string)."""
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    return _write(RESULTS / f"{name}.md", text)
