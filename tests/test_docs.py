"""The README and docs stay true: generated pages current, links resolve, README ≤ 250 lines."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_codec_pages_are_current():
    import codec_pages

    for path, text in codec_pages.render_pages().items():
        assert path.exists() and path.read_text() == text, f"{path.name} is stale: run python benchmarks/codec_pages.py"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_benchmark_harness_writes_json_and_markdown(tmp_path, monkeypatch):
    import json

    import harness

    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    harness.write_json("x", {"rows": [1, 2]})
    harness.write_markdown("x", ["| a |", "|---|"])
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["rows"] == [1, 2] and data["environment"]["threads"] >= 1
    assert (tmp_path / "x.md").read_text() == "| a |\n|---|\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.md"]  # no temp files left


def test_every_benchmark_writes_through_the_harness():
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = script.read_text()
        if script.name in ("harness.py", "matrices.py", "codec_pages.py", "update_readme.py"):
            continue
        assert "write_json(" in text and "write_markdown(" in text, script.name
        assert ".write_text(json.dumps" not in text, script.name
