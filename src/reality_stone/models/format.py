"""The compressed-model file: one ``.safetensors`` file, JSON metadata, no pickle.

Tensors
    every dense tensor of the state dict (embeddings, norms, biases, uncompressed layers),
    stored once even when tied (the other names are listed as aliases), and for each
    `CompressedLinear` a uint8 tensor ``<layer>.__encoded__`` holding `Encoded.to_bytes()`
    (which starts with its own magic, version, codec name and config); optionally the
    tokenizer as one uint8 tensor ``__tokenizer__`` (UTF-8 JSON: file name → text of the
    files ``save_pretrained`` writes), so a file is self-contained for eval / generate.
Metadata (safetensors' string → string header)
    ``format`` = "reality-stone", ``format_version`` = "1", ``architecture`` (JSON:
    transformers class name + config, or null for a plain module), ``compressed`` (JSON:
    layer → codec, shape, bits per weight), ``aliases`` (JSON), ``checksums`` (JSON: tensor →
    sha256 of its bytes), ``source`` (JSON: the model it came from, e.g. "smollm2", or null)
    and ``metadata_sha256`` over all of the above.

Writes go to a temporary file in the target folder, then ``os.replace`` — a crash never
leaves a half-written file under the final name. Reading validates everything and raises
``ValueError`` (naming the file and the tensor) on a corrupt, truncated or newer file.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from reality_stone.codecs.base import decode_bytes
from reality_stone.models.compress import guard_save_pretrained
from reality_stone.nn.compressed import CompressedLinear

__all__ = ["ENCODED_SUFFIX", "FORMAT_NAME", "FORMAT_VERSION", "TOKENIZER_TENSOR", "atomic_path", "file_metadata", "load",
           "load_tokenizer_from_file", "read_metadata", "save"]

FORMAT_NAME = "reality-stone"
FORMAT_VERSION = 1
ENCODED_SUFFIX = ".__encoded__"
TOKENIZER_TENSOR = "__tokenizer__"
_TOKENIZER_MAX_BYTES = 64 << 20  # a tokenizer.json is a few MB; refuse absurd ones before parsing


def _tokenizer_tensor(tokenizer) -> torch.Tensor:
    """The tokenizer's ``save_pretrained`` files as one uint8 tensor (UTF-8 JSON {name: text})."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(d).iterdir()) if p.is_file()}
    data = json.dumps(files, sort_keys=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def load_tokenizer_from_file(path: str | Path):
    """The tokenizer stored in a Reality Stone file (None if it holds none)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = Path(path)
    meta = read_metadata(path)
    if TOKENIZER_TENSOR not in meta["tensors"]:
        return None
    with safe_open(str(path), framework="pt") as f:
        t = f.get_tensor(TOKENIZER_TENSOR)
    if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() > _TOKENIZER_MAX_BYTES:
        raise ValueError(f"{path}: tensor {TOKENIZER_TENSOR!r} is not a tokenizer blob")
    if _sha(t) != meta["checksums"][TOKENIZER_TENSOR]:
        raise ValueError(f"{path}: checksum mismatch for tensor {TOKENIZER_TENSOR!r} (corrupt data)")
    try:
        files = json.loads(t.numpy().tobytes().decode("utf-8"))
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("not a {file name: text} object")
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt tokenizer blob ({exc})") from None
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            if Path(name).name != name or name.startswith("."):
                raise ValueError(f"{path}: tokenizer blob names an unsafe file {name!r}")
            (Path(d) / name).write_text(text, encoding="utf-8")
        try:
            return AutoTokenizer.from_pretrained(d)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: the stored tokenizer does not load ({str(exc)[:200]})") from None


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _meta_digest(meta: dict[str, str]) -> str:
    body = json.dumps({k: v for k, v in sorted(meta.items()) if k != "metadata_sha256"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def file_metadata(*, architecture, compressed: dict, aliases: dict, checksums: dict, source) -> dict[str, str]:
    """The safetensors metadata of a Reality Stone file (both writers: `save` and
    `streaming.compress_checkpoint`), digest included."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "architecture": json.dumps(architecture),
        "compressed": json.dumps(compressed, sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
        "checksums": json.dumps(checksums, sort_keys=True),
        "source": json.dumps(source),
    }
    meta["metadata_sha256"] = _meta_digest(meta)
    return meta


@contextmanager
def atomic_path(path: Path, *, fsync: bool = True):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``,
    on any exception removed — a crash never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _architecture(model: nn.Module):
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if isinstance(model, PreTrainedModel):
        return {"class": type(model).__name__, "config": model.config.to_dict()}
    return None


def save(model: nn.Module, path: str | Path, *, source: str | None = None, tokenizer=None) -> Path:
    """Write ``model`` (with its `CompressedLinear` layers) to one safetensors file, atomically.

    ``source`` names the model it came from (e.g. "smollm2" or a folder), ``tokenizer`` (a
    transformers tokenizer) is stored in the file so `reality-stone eval/generate` need nothing else.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_ptr: dict[tuple[int, tuple, torch.dtype], str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), tuple(t.shape), t.dtype)
        if key in first_by_ptr:
            aliases[name] = first_by_ptr[key]
            continue
        first_by_ptr[key] = name
        tensors[name] = t.detach().contiguous().clone()
    compressed = {}
    for name, mod in model.named_modules():
        if isinstance(mod, CompressedLinear):
            data = mod.encoded.to_bytes()
            tensors[name + ENCODED_SUFFIX] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            compressed[name] = {"codec": mod.encoded.config.codec_name, "shape": list(mod.encoded.shape),
                                "bits_per_weight": mod.encoded.bits_per_weight()}
    if tokenizer is not None:
        tensors[TOKENIZER_TENSOR] = _tokenizer_tensor(tokenizer)
    meta = file_metadata(architecture=_architecture(model), compressed=compressed, aliases=aliases,
                         checksums={k: _sha(v) for k, v in tensors.items()}, source=source)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict:
    """Validated metadata of a file (format, version, digest), JSON fields parsed."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a Reality Stone model file (format={meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ValueError(f"{path}: unreadable format_version {meta.get('format_version')!r}") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {version} is not supported (this build reads {FORMAT_VERSION})")
    if meta.get("metadata_sha256") != _meta_digest(meta):
        raise ValueError(f"{path}: metadata checksum mismatch (corrupt header)")
    try:
        parsed = {k: json.loads(meta[k]) for k in ("architecture", "compressed", "aliases", "checksums", "source")}
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt metadata ({exc})") from None
    if set(parsed["checksums"]) != keys:
        raise ValueError(f"{path}: tensor list does not match the checksums in the metadata")
    return parsed | {"format_version": version, "tensors": sorted(keys)}


def _build_architecture(arch: dict, path: Path) -> nn.Module:
    """The transformers model with its parameters on the meta device (no memory, no random init)
    and its buffers real (non-persistent ones such as RoPE's inv_freq are computed by __init__
    and are not in the file). `load` then assigns the file's tensors."""
    import transformers
    from accelerate import init_empty_weights
    from transformers import PreTrainedModel

    cls = getattr(transformers, str(arch.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ValueError(f"{path}: unknown model class {arch.get('class')!r}")
    config = cls.config_class.from_dict(arch["config"])
    with init_empty_weights(include_buffers=False):
        return cls(config).eval()


_LIBC = None


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Decoding layer after layer frees many MB-sized temporaries; glibc raises its mmap threshold
    after large frees and then keeps such blocks in its heap, so without this the loading
    process's RSS ratchets up to ~2× the live data (measured: 1.55 GB vs 0.85 GB peak for an
    int3 SmolLM2 file)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a file written by `save`.

    Without ``model`` the architecture is rebuilt from the stored transformers class and
    config; with it (any ``nn.Module`` of the same structure) the file is loaded into it.
    Compressed layers become `CompressedLinear` (their weights stay compressed).
    """
    from safetensors import safe_open

    path = Path(path)
    meta = read_metadata(path)
    built = model is None  # built here: parameters are on the meta device until assigned
    if model is None:
        if meta["architecture"] is None:
            raise ValueError(f"{path}: holds a plain nn.Module; pass `model=` with the same structure to load it")
        model = _build_architecture(meta["architecture"], path)
    checksums = meta["checksums"]
    state = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in meta["tensors"]:
                if key == TOKENIZER_TENSOR:  # not part of the model (see `load_tokenizer_from_file`)
                    continue
                t = f.get_tensor(key)
                if _sha(t) != checksums[key]:
                    raise ValueError(f"{path}: checksum mismatch for tensor {key!r} (corrupt data)")
                state[key] = t
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: could not read tensors ({exc})") from None
    for name, info in meta["compressed"].items():
        key = name + ENCODED_SUFFIX
        if key not in state:
            raise ValueError(f"{path}: compressed layer {name!r} has no data")
        try:
            enc = decode_bytes(state.pop(key).numpy().tobytes())
        except ValueError as exc:
            raise ValueError(f"{path}: layer {name!r}: {exc}") from None
        if list(enc.shape) != list(info["shape"]):
            raise ValueError(f"{path}: layer {name!r} decodes to shape {enc.shape}, metadata says {info['shape']}")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: the model has no layer {name!r}") from None
        if not isinstance(old, (nn.Linear, CompressedLinear)) or (old.out_features, old.in_features) != enc.shape:
            raise ValueError(f"{path}: layer {name!r} of the model is not a matching Linear")
        bias = old.bias.detach() if old.bias is not None else None
        new = CompressedLinear(enc, bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        _return_freed_memory()
    for alias, target in meta["aliases"].items():
        if target not in state:
            raise ValueError(f"{path}: alias {alias!r} points to missing tensor {target!r}")
        state[alias] = state[target]
    # checkpoints written by older transformers store buffers that are non-persistent now
    # (BERT's position_ids): the model computes them itself, so they are not an error
    for mname, mod in model.named_modules():
        for b in mod._non_persistent_buffers_set:
            state.pop(f"{mname}.{b}" if mname else b, None)
    try:
        # assign=True: the file's tensors become the parameters (no dense copy of a meta skeleton)
        model.load_state_dict(state, strict=True, assign=built)
    except RuntimeError as exc:
        raise ValueError(f"{path}: tensors do not fit the model ({str(exc)[:300]})") from None
    if meta["aliases"] and hasattr(model, "tie_weights"):
        model.tie_weights()  # re-share tied parameters (assignment leaves them separate objects)
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"{path}: no data for {missing[:5]} (file does not match the architecture)")
    if meta["compressed"]:
        guard_save_pretrained(model)
    return model
