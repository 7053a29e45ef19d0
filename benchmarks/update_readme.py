"""Copy every benchmarks/results/*.md table into README.md between its markers.

    python benchmarks/update_readme.py

A README block looks like ``<!-- BEGIN name.md -->`` … ``<!-- END name.md -->``; its body is
replaced by ``benchmarks/results/name.md`` verbatim, so README numbers are always the
benchmark's own output.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for md in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        pattern = re.compile(rf"(<!-- BEGIN {re.escape(md.name)} -->\n).*?(<!-- END {re.escape(md.name)} -->)", re.S)
        text, n = pattern.subn(lambda m: m.group(1) + md.read_text() + m.group(2), text)
        print(f"{md.name}: {'updated' if n else 'no marker in README'}")
    readme.write_text(text)


if __name__ == "__main__":
    main()
