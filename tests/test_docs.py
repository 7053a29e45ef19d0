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
        # flags and threads through the harness: --help shows the docstring, --threads is honoured
        main = text[text.index("def main("):]
        assert "parse(" in main and "arguments(__doc__" in text, script.name
        assert "argparse.ArgumentParser(" not in text and "set_num_threads(" not in text, script.name
        assert "in sys.argv" not in text and "sys.argv[1" not in main, script.name


def test_round_robin_interleaves_and_cycles_copies():
    import harness

    calls = []
    seconds = harness.round_robin({"a": lambda: calls.append("a"), "b": [lambda: calls.append("b0"),
                                                                        lambda: calls.append("b1")]},
                                  repeat=3, warmup=1)
    assert set(seconds) == {"a", "b"} and all(t >= 0 for t in seconds.values())
    assert calls[:3] == ["a", "b0", "b1"]  # warm-up: every callable once
    assert calls[3:] == ["a", "b0", "a", "b1", "a", "b0"]  # then a, b, a, b…: b cycles through its copies
    with pytest.raises(ValueError):
        harness.round_robin({}, repeat=3)
    with pytest.raises(ValueError):
        harness.round_robin({"a": lambda: None}, repeat=0)


def test_round_robin_shuffle_visits_every_path_once_per_round_in_seeded_orders():
    import harness

    def run(seed):
        calls = []
        harness.round_robin({k: (lambda k=k: calls.append(k)) for k in "abcd"}, repeat=12, warmup=0, shuffle=True,
                            seed=seed)
        return [calls[i:i + 4] for i in range(0, len(calls), 4)]

    rounds = run(0)
    assert len(rounds) == 12 and all(sorted(r) == list("abcd") for r in rounds)  # each path once per round
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    assert len({r[0] for r in rounds}) > 1 and len({r[-1] for r in rounds}) > 1  # no path always first or last
    assert run(0) == rounds and run(1) != rounds  # seeded


def test_benchmark_flags_set_threads_and_refuse_bad_counts(capsys):
    import torch

    import harness

    before = torch.get_num_threads()
    try:
        args = harness.parse(harness.arguments("doc", threads=1), [])
        assert args.threads == 1 and torch.get_num_threads() == 1
        with pytest.raises(SystemExit):
            harness.parse(harness.arguments("doc"), ["--threads", "0"])
        assert "threads must be a positive integer" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
