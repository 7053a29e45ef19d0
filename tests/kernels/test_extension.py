"""The extension loader: shared build folder, and no hang on a lock left by a killed build."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from reality_stone.kernels import extension


def test_build_directory_is_named_by_sources_and_flags(tmp_path: Path, monkeypatch) -> None:
    first = extension.build_directory(tmp_path)
    assert first == extension.build_directory(tmp_path)  # same sources -> same folder
    monkeypatch.setattr(extension, "CFLAGS", extension.CFLAGS + ["-DSOMETHING_ELSE"])
    assert extension.build_directory(tmp_path) != first


def test_remove_stale_torch_lock(tmp_path: Path) -> None:
    assert not extension.remove_stale_torch_lock(tmp_path)
    (tmp_path / "lock").touch()
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert extension.remove_stale_torch_lock(tmp_path)
    assert not (tmp_path / "lock").exists()


def test_load_survives_a_lock_left_by_a_killed_build() -> None:
    """torch waits forever on its ``lock`` file; a build killed part-way leaves one behind."""
    if extension.load_extension(quiet=True) is None:
        pytest.skip(f"no compiled extension here: {extension.extension_status()}")
    from reality_stone.data.pretrained import cache_dir

    build = extension.build_directory(cache_dir() / "ext")
    with open(build / "build.flock", "a") as guard:  # nobody of ours builds while we plant it
        fcntl.flock(guard, fcntl.LOCK_EX)
        (build / "lock").touch()
    code = "from reality_stone.kernels.extension import extension_status; print(extension_status())"
    with warnings.catch_warnings():
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr
    assert "fused AVX2 kernels" in done.stdout
    assert "stale build lock" in done.stderr
    assert not (build / "lock").exists()
