"""What every benchmark script shares: where results go and how they are written.

    from harness import RESULTS, environment, write_json, write_markdown

Results are ``benchmarks/results/<name>.json`` (the numbers, with the machine they came from) and
``<name>.md`` (the table `update_readme.py` copies into the README and docs), each written to a
temporary file and renamed, so an interrupted run never leaves half a table. (Timing stays in
each script: their methods differ on purpose — interleaved pairs against a peer, medians of
fresh processes — and each states it in its table.)
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["RESULTS", "environment", "write_json", "write_markdown"]

RESULTS = Path(__file__).resolve().parent / "results"


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
