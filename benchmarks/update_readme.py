"""Copy every benchmarks/results/*.md table into README.md and docs/*.md between its markers, and
regenerate the codec pages (docs/codecs/, `codec_pages.py`).

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
    import codec_pages

    codec_pages.main()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = {p: p.read_text() for p in pages}
    for md in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        pattern = re.compile(rf"(<!-- BEGIN {re.escape(md.name)} -->\n).*?(<!-- END {re.escape(md.name)} -->)", re.S)
        where = []
        for page, text in texts.items():
            texts[page], n = pattern.subn(lambda m: m.group(1) + md.read_text() + m.group(2), text)
            if n:
                where.append(page.relative_to(ROOT).as_posix())
        print(f"{md.name}: {', '.join(where) or 'no marker in README or docs'}")
    for page, text in texts.items():
        page.write_text(text)


if __name__ == "__main__":
    main()
