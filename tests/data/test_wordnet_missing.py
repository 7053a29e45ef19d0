"""Without WordNet installed the error carries the install hint (it used to stop at
"[Errno 2] … index.noun", before the hint in the code was reached)."""

import os
import subprocess
import sys

import pytest

from reality_stone.data.wordnet import load_noun_graph, wordnet_closure


def test_missing_wordnet_names_the_packages(tmp_path):
    for fn in (lambda: wordnet_closure("mammal", wordnet_dir=tmp_path), lambda: load_noun_graph(tmp_path)):
        with pytest.raises(FileNotFoundError, match="wordnet-base wordnet-sense-index"):
            fn()


def test_demo_without_wordnet_prints_the_hint(tmp_path):
    env = dict(os.environ, REALITY_STONE_WORDNET=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "reality_stone.cli", "hyperbolic-demo", "--quick"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "wordnet-base" in out.stdout + out.stderr and "Traceback" not in out.stderr
