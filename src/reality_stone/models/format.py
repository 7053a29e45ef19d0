"""The compressed-model file: one ``.safetensors`` file, JSON metadata, no pickle.

Tensors
    every dense tensor of the state dict (embeddings, norms, biases, uncompressed layers),
    stored once even when tied (the other names are listed as aliases), and for each
    `CompressedLinear` a uint8 tensor ``<layer>.__encoded__`` holding `Encoded.to_bytes()`
    (which starts with its own magic, version, codec name and config); optionally the
    tokenizer as one uint8 tensor ``__tokenizer__`` (UTF-8 JSON: file name → text of the
    files ``save_pretrained`` writes), so a file is self-contained for eval / generate.
Metadata (safetensors' string → string header)
    ``format`` = "reality-stone", ``format_version`` = "2", ``architecture`` (JSON:
    transformers class name + config, or null for a plain module), ``compressed`` (JSON:
    layer → codec, shape, bits per weight), ``aliases`` (JSON), ``checksums`` (JSON: tensor →
    sha256 of its dtype name, shape and bytes — v1 files: of its bytes only), ``source`` (JSON:
    the model it came from, e.g. "smollm2", or null) and ``metadata_sha256`` over all of the above.
    Version 3 (written only when used) adds ``embeddings`` (JSON: embedding module → the
    compressed layer whose matrix it reads — a tied LM head compressed with its embedding, stored
    once; loaded as `CompressedEmbedding`).

Writes are deterministic (same model, same bytes) and atomic: a temporary file in the target
folder (named after the writer's pid, so the next write removes a killed writer's leftover),
fsync, ``os.replace``, fsync of the folder. Reading validates everything before allocating —
metadata schema, dtypes and shapes against the model, checksums, codec sizes against their
bytes, the stored architecture config — and raises ``ValueError`` naming the file and the
tensor or layer. The full specification is docs/format.md.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import math
import os
import re
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reality_stone.codecs.base import decode_bytes
from reality_stone.models.compress import guard_save_pretrained
from reality_stone.nn.compressed import CompressedEmbedding, CompressedLinear

__all__ = ["DTYPE_NAMES", "ENCODED_SUFFIX", "FORMAT_NAME", "FORMAT_VERSION", "MAX_EXPANSION", "TOKENIZER_TENSOR",
           "atomic_path", "claimed_bytes", "file_metadata", "load", "load_tokenizer_from_file", "read_metadata",
           "remove_stale_temps", "save", "tensor_bytes", "tensor_checksum", "write_safetensors"]

FORMAT_NAME = "reality-stone"
FORMAT_VERSION = 2  # files without shared embeddings: readable by every build since v2
EMBEDDINGS_VERSION = 3  # files with an `embeddings` field (older builds must refuse them, not misread them)
READABLE_VERSIONS = (1, 2, 3)  # v1: checksums over the bytes only
ENCODED_SUFFIX = ".__encoded__"
TOKENIZER_TENSOR = "__tokenizer__"
_TOKENIZER_LOAD_KEYS = ("local_files_only", "is_local")  # transformers records these load-time flags
_TOKENIZER_MAX_BYTES = 64 << 20  # a tokenizer.json is a few MB; refuse absurd ones before parsing


def _tokenizer_tensor(tokenizer) -> torch.Tensor:
    """The tokenizer's ``save_pretrained`` files as one uint8 tensor (UTF-8 JSON {name: text})."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(d).iterdir()) if p.is_file()}
    if "tokenizer_config.json" in files:  # how it was loaded (offline or not) is no part of the tokenizer
        cfg = json.loads(files["tokenizer_config.json"])
        for key in _TOKENIZER_LOAD_KEYS:
            cfg.pop(key, None)
        files["tokenizer_config.json"] = json.dumps(cfg, indent=2, sort_keys=True)
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
    if _checksum_of(t, meta["format_version"]) != meta["checksums"][TOKENIZER_TENSOR]:
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


# safetensors' dtype names (the file header's "dtype" field)
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
# a compressed layer's claim on memory is its dense float32 weight; a file may claim at most this
# multiple of its own size (the codecs here store >= 1 bit per weight, i.e. <= 32x; a file that
# claims more is a decompression bomb or needs `load(..., max_expansion=None)`)
MAX_EXPANSION = 64.0


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of ``t`` (any dtype, bf16 and bool included), without a copy
    when ``t`` is contiguous."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def tensor_checksum(dtype: str, shape, data) -> str:
    """sha256 over a tensor's dtype name, shape and bytes (format v2): a header edit that changes
    how the bytes are read (F32 -> I32, a transposed shape) fails the checksum like a flipped bit."""
    h = hashlib.sha256(f"{dtype}{list(int(d) for d in shape)}\n".encode())
    h.update(data)
    return h.hexdigest()


def _checksum_of(t: torch.Tensor, version: int) -> str:
    data = tensor_bytes(t)
    if version == 1:  # v1 files: bytes only
        return hashlib.sha256(data).hexdigest()
    return tensor_checksum(DTYPE_NAMES[t.dtype], t.shape, data)


def _meta_digest(meta: dict[str, str]) -> str:
    body = json.dumps({k: v for k, v in sorted(meta.items()) if k != "metadata_sha256"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def file_metadata(*, architecture, compressed: dict, aliases: dict, checksums: dict, source,
                  embeddings: dict | None = None) -> dict[str, str]:
    """The safetensors metadata of a Reality Stone file (both writers: `save` and
    `streaming.compress_checkpoint`), digest included; version 3 only with ``embeddings``."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(EMBEDDINGS_VERSION if embeddings else FORMAT_VERSION),
        "architecture": json.dumps(architecture, sort_keys=True),
        "compressed": json.dumps(compressed, sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
        "checksums": json.dumps(checksums, sort_keys=True),
        "source": json.dumps(source),
    }
    if embeddings:
        meta["embeddings"] = json.dumps(embeddings, sort_keys=True)
    meta["metadata_sha256"] = _meta_digest(meta)
    return meta


_TMP_TAG = ".rs-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left beside it (named
    ``.<name>.rs-<pid>-<random>.tmp``; removed when that process is gone). Returns them."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{_TMP_TAG}*.tmp"):
        pid = tmp.name[len(path.name) + 1 + len(_TMP_TAG):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, *, fsync: bool = True):
    """Yield a temporary path beside ``path``; on success it is fsynced, renamed to ``path`` and
    the folder fsynced; on any exception removed. A crash never leaves a half-written file under
    the final name, and the temp of a killed writer is removed by the next write of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_TAG}{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(fh, entries: list[tuple[str, str, list[int], int, Callable]], meta: dict[str, str]) -> None:
    """Write a safetensors file to the open binary file ``fh``, deterministically: the header
    lists ``__metadata__`` (keys sorted) then the tensors in the given order, compact JSON.

    ``entries``: (name, dtype name, shape, nbytes, write) where ``write(fh)`` writes exactly
    ``nbytes`` bytes — so a writer streams tensors one at a time (no second copy of the model,
    no temporary files of its own). The safetensors library cannot do either: it serialises its
    metadata from a hash map (key order varies between runs) and preallocates its own temp file.
    """
    header, offset = {"__metadata__": dict(sorted(meta.items()))}, 0
    for name, dtype, shape, nbytes, _ in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # safetensors: the data starts 8-byte aligned
    fh.write(struct.pack("<Q", len(hbytes)) + hbytes)
    for name, _, _, nbytes, write in entries:
        start = fh.tell()
        write(fh)
        if fh.tell() - start != nbytes:
            raise RuntimeError(f"tensor {name!r}: wrote {fh.tell() - start} bytes, the header says {nbytes}")


def architecture_record(model: nn.Module) -> dict | None:
    """What a file records of ``model``'s architecture: transformers class and config (None otherwise)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if isinstance(model, PreTrainedModel):
        config = model.config.to_dict()
        if (config.get("quantization_config") or {}).get("quant_method") == "gguf":
            # transformers marks a model read from GGUF; its weights were dequantised on load and
            # this file stores them as it says, so the marker would only mislead a reader
            del config["quantization_config"]
        return {"class": type(model).__name__, "config": config}
    return None


def save(model: nn.Module, path: str | Path, *, source: str | None = None, tokenizer=None) -> Path:
    """Write ``model`` (with its `CompressedLinear` layers) to one safetensors file, atomically
    (temp file, fsync, rename, fsync of the folder). The same model gives the same bytes.

    ``source`` names the model it came from (e.g. "smollm2" or a folder), ``tokenizer`` (a
    transformers tokenizer) is stored in the file so `reality-stone eval/generate` need nothing else.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_ptr: dict[tuple[int, tuple, torch.dtype], str] = {}
    for name, t in model.state_dict().items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored (supported: "
                             f"{', '.join(str(d) for d in DTYPE_NAMES)})")
        key = (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), tuple(t.shape), t.dtype)
        if key in first_by_ptr:
            aliases[name] = first_by_ptr[key]
            continue
        first_by_ptr[key] = name
        tensors[name] = t.detach()
    compressed, owners, embeddings = {}, {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, CompressedLinear):
            data = mod.encoded.to_bytes()
            tensors[name + ENCODED_SUFFIX] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            compressed[name] = {"codec": mod.encoded.config.codec_name, "shape": list(mod.encoded.shape),
                                "bits_per_weight": mod.encoded.bits_per_weight()}
            owners.setdefault(id(mod.encoded), name)
    for name, mod in model.named_modules():
        if isinstance(mod, CompressedEmbedding):
            if id(mod.encoded) not in owners:
                raise ValueError(f"embedding {name!r} reads a compressed matrix that no CompressedLinear of the model "
                                 "holds; only an embedding tied to a compressed layer can be stored")
            embeddings[name] = owners[id(mod.encoded)]
    if tokenizer is not None:
        tensors[TOKENIZER_TENSOR] = _tokenizer_tensor(tokenizer)
    names = sorted(tensors)
    meta = file_metadata(architecture=architecture_record(model), compressed=compressed, aliases=aliases,
                         checksums={k: _checksum_of(tensors[k], FORMAT_VERSION) for k in names}, source=source,
                         embeddings=embeddings)
    entries = [(k, DTYPE_NAMES[tensors[k].dtype], list(tensors[k].shape), tensors[k].numel() * tensors[k].element_size(),
                lambda fh, t=tensors[k]: fh.write(tensor_bytes(t))) for k in names]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write_safetensors(fh, entries, meta)
    return path


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}")


def _check_metadata(path: Path, parsed: dict, header: dict[str, tuple[str, list[int]]]) -> None:
    """The typed schema of the metadata fields; every violation names the field."""
    from reality_stone.codecs.base import registered_codecs

    arch = parsed["architecture"]
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("class"), str)
                                 and isinstance(arch.get("config"), dict)):
        raise _fail(path, "metadata 'architecture' must be null or {\"class\": str, \"config\": object}")
    if parsed["source"] is not None and not isinstance(parsed["source"], str):
        raise _fail(path, "metadata 'source' must be null or a string")
    for field in ("compressed", "aliases", "checksums"):
        if not isinstance(parsed[field], dict):
            raise _fail(path, f"metadata {field!r} must be an object, got {type(parsed[field]).__name__}")
    for k, v in parsed["checksums"].items():
        if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            raise _fail(path, f"metadata 'checksums': entry {k!r} is not a sha256 hex digest")
    for k, v in parsed["aliases"].items():
        if not isinstance(v, str):
            raise _fail(path, f"metadata 'aliases': entry {k!r} must name a tensor")
        if k in header:
            raise _fail(path, f"alias {k!r} would overwrite a stored tensor of the same name")
        if v not in header or v.endswith(ENCODED_SUFFIX) or v == TOKENIZER_TENSOR:
            raise _fail(path, f"alias {k!r} points to {v!r}, which is not a stored dense tensor")
    codecs = registered_codecs()
    for name, info in parsed["compressed"].items():
        if not isinstance(info, dict):
            raise _fail(path, f"compressed layer {name!r}: entry must be an object")
        shape, codec = info.get("shape"), info.get("codec")
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape)):
            raise _fail(path, f"compressed layer {name!r}: 'shape' must be two positive integers, got {shape!r}")
        if codec not in codecs:
            raise _fail(path, f"compressed layer {name!r}: unknown codec {codec!r} (this build has {', '.join(codecs)})")
        bpw = info.get("bits_per_weight")
        if not (isinstance(bpw, (int, float)) and not isinstance(bpw, bool) and math.isfinite(bpw) and bpw > 0):
            raise _fail(path, f"compressed layer {name!r}: 'bits_per_weight' must be a positive number")
        key = name + ENCODED_SUFFIX
        if key not in header:
            raise _fail(path, f"compressed layer {name!r} has no data")
        dtype, tshape = header[key]
        if dtype != "U8" or len(tshape) != 1:
            raise _fail(path, f"compressed layer {name!r}: its data must be a 1-D U8 tensor, got {dtype}{tshape}")
    for key in header:
        if key.endswith(ENCODED_SUFFIX) and key[: -len(ENCODED_SUFFIX)] not in parsed["compressed"]:
            raise _fail(path, f"tensor {key!r} holds encoded data for a layer the metadata does not list")
    if not isinstance(parsed["embeddings"], dict):
        raise _fail(path, f"metadata 'embeddings' must be an object, got {type(parsed['embeddings']).__name__}")
    for name, layer in parsed["embeddings"].items():
        if not isinstance(layer, str) or layer not in parsed["compressed"]:
            raise _fail(path, f"embedding {name!r} must name a compressed layer of the file, got {layer!r}")
        if name in parsed["compressed"]:
            raise _fail(path, f"embedding {name!r} is also listed as a compressed layer")


def read_metadata(path: str | Path) -> dict:
    """Validated metadata of a file (format, version, digest, typed fields), JSON fields parsed.

    Also ``tensors`` (sorted names) and ``header`` (name → (dtype name, shape)) from the
    safetensors header, read without loading any tensor.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            header = {}
            for k in f.keys():
                sl = f.get_slice(k)
                header[k] = (sl.get_dtype(), list(sl.get_shape()))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a Reality Stone model file (format={meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ValueError(f"{path}: unreadable format_version {meta.get('format_version')!r}") from None
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: format version {version} is not supported (this build reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    if meta.get("metadata_sha256") != _meta_digest(meta):
        raise ValueError(f"{path}: metadata checksum mismatch (corrupt header)")
    keys = ("architecture", "compressed", "aliases", "checksums", "source") + (("embeddings",) if version >= 3 else ())
    try:
        parsed = {k: json.loads(meta[k]) for k in keys}
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt metadata ({exc})") from None
    if version < 3 and "embeddings" in meta:
        raise ValueError(f"{path}: metadata 'embeddings' needs format version 3, the file says {version}")
    parsed.setdefault("embeddings", {})
    _check_metadata(path, parsed, header)
    if set(parsed["checksums"]) != set(header):
        raise ValueError(f"{path}: tensor list does not match the checksums in the metadata")
    bad = [k for k, (dtype, _) in header.items() if dtype not in TORCH_DTYPES]
    if bad:
        raise ValueError(f"{path}: tensor {bad[0]!r} has unsupported dtype {header[bad[0]][0]}")
    return parsed | {"format_version": version, "tensors": sorted(header), "header": header}


_LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_SIZE_KEY = re.compile(r"(?:^num_|^n_|_size$|_layers$|_heads$|^head_dim$|_embeddings$|^hidden_size$|^vocab_size$)")


def _check_architecture(arch: dict, meta: dict, path: Path) -> None:
    """Before building anything: size-like config fields positive and no larger than the stored
    tensors justify, and the layer count equal to the layers the file stores."""
    config = arch["config"]
    names = [*meta["header"], *meta["compressed"], *meta["aliases"]]
    largest = max([d for _, shape in meta["header"].values() for d in shape]
                  + [d for info in meta["compressed"].values() for d in info["shape"]] + [1])
    bound = max(largest, 1 << 20)
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, int) or not _SIZE_KEY.search(key):
            continue
        if key.endswith("_id") or key.startswith("num_labels"):
            continue
        if not 0 < value <= bound:
            raise ValueError(f"{path}: architecture config {key}={value} is out of range (1 … {bound}: "
                             f"the largest stored tensor dimension is {largest})")
    layers = {int(m.group(1)) for n in names for m in [_LAYER_INDEX.search("." + n)] if m}
    for key in _LAYER_COUNT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and layers and layers != set(range(value)):
            raise ValueError(f"{path}: architecture config {key}={value}, but the file stores layers "
                             f"{min(layers)}…{max(layers)} ({len(layers)} of them)")


def _build_architecture(arch: dict, meta: dict, path: Path) -> nn.Module:
    """The transformers model with its parameters on the meta device (no memory, no random init)
    and its buffers real (non-persistent ones such as RoPE's inv_freq are computed by __init__
    and are not in the file). `load` then assigns the file's tensors. The stored config is
    checked first (`_check_architecture`): it is data, not trusted code."""
    import transformers
    from accelerate import init_empty_weights
    from transformers import PreTrainedModel

    cls = getattr(transformers, arch["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ValueError(f"{path}: unknown model class {arch['class']!r}")
    _check_architecture(arch, meta, path)
    try:
        config = cls.config_class.from_dict(arch["config"])
        with init_empty_weights(include_buffers=False):
            return cls(config).eval()
    except Exception as exc:  # noqa: BLE001 - untrusted config: transformers/huggingface_hub raise their own types
        raise ValueError(f"{path}: the stored {arch['class']} config does not build a model "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None


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


def claimed_bytes(meta: dict) -> int:
    """The memory a file claims: its dense tensors plus each compressed layer's dense float32
    weight (what a decode-based matmul materialises). Arithmetic on the metadata only."""
    dense = sum(math.prod(shape) * TORCH_DTYPES[dtype].itemsize for name, (dtype, shape) in meta["header"].items()
                if not name.endswith(ENCODED_SUFFIX) and name != TOKENIZER_TENSOR)
    return dense + sum(4 * info["shape"][0] * info["shape"][1] for info in meta["compressed"].values())


def _check_dense(path: Path, key: str, stored: tuple[str, list[int]], expected: torch.Tensor) -> None:
    """A stored dense tensor must be readable as the model's: same shape, and the same kind of
    number (float ↔ float may cast, as `load_state_dict` does; an integer or bool tensor where the
    model has floats — or the reverse — would be reinterpreted values)."""
    dtype = TORCH_DTYPES[stored[0]]
    if list(stored[1]) != list(expected.shape):
        raise ValueError(f"{path}: tensor {key!r} has shape {stored[1]}, the model expects {list(expected.shape)}")
    if dtype != expected.dtype and not (dtype.is_floating_point and expected.dtype.is_floating_point):
        raise ValueError(f"{path}: tensor {key!r} is stored as {dtype}, the model expects {expected.dtype}")


def load(path: str | Path, model: nn.Module | None = None, *, max_expansion: float | None = MAX_EXPANSION) -> nn.Module:
    """Load a file written by `save`.

    Without ``model`` the architecture is rebuilt from the stored transformers class and
    config; with it (any ``nn.Module`` of the same structure) the file is loaded into it.
    Compressed layers become `CompressedLinear` (their weights stay compressed).

    Everything is validated before it is allocated: the metadata against its schema, every
    tensor's dtype, shape and bytes against its checksum and the model, every codec blob's sizes
    against its bytes. A file that claims more memory (`claimed_bytes`) than ``max_expansion``
    times its own size is refused unless ``max_expansion=None``. Any problem -> ValueError
    naming the file and the tensor or layer.
    """
    from safetensors import safe_open

    path = Path(path)
    meta = read_metadata(path)
    if max_expansion is not None:
        claim, size = claimed_bytes(meta), path.stat().st_size
        if claim > max_expansion * size:
            raise ValueError(f"{path}: the file ({size} bytes) claims {claim} bytes of weights, more than "
                             f"{max_expansion:g}× its size; if you trust it, load with max_expansion=None")
    built = model is None  # built here: parameters are on the meta device until assigned
    if model is None:
        if meta["architecture"] is None:
            raise ValueError(f"{path}: holds a plain nn.Module; pass `model=` with the same structure to load it")
        model = _build_architecture(meta["architecture"], meta, path)
        model.tie_weights()  # on the meta device __init__ leaves the declared ties undone
    expected = model.state_dict(keep_vars=True)
    params = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    for alias, target in meta["aliases"].items():
        # an alias only re-creates a tie the model itself has (lm_head ↔ embeddings)
        if alias not in params or target not in params or params[alias] is not params[target]:
            raise ValueError(f"{path}: alias {alias!r} → {target!r} is not a tie of this model's architecture")
    for key, stored in meta["header"].items():
        if key.endswith(ENCODED_SUFFIX) or key == TOKENIZER_TENSOR or key not in expected:
            continue  # unknown keys are reported by load_state_dict(strict=True) below
        _check_dense(path, key, stored, expected[key])
    checksums, version = meta["checksums"], meta["format_version"]
    state = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in meta["tensors"]:
                if key == TOKENIZER_TENSOR:  # not part of the model (see `load_tokenizer_from_file`)
                    continue
                t = f.get_tensor(key)
                if _checksum_of(t, version) != checksums[key]:
                    raise ValueError(f"{path}: checksum mismatch for tensor {key!r} (corrupt data)")
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{path}: tensor {key!r} holds NaN or Inf")
                state[key] = t
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: could not read tensors ({exc})") from None
    for name, info in meta["compressed"].items():
        key = name + ENCODED_SUFFIX
        try:
            enc = decode_bytes(state.pop(key).numpy().tobytes())
        except ValueError as exc:
            raise ValueError(f"{path}: layer {name!r}: {exc}") from None
        if list(enc.shape) != list(info["shape"]) or enc.config.codec_name != info["codec"]:
            raise ValueError(f"{path}: layer {name!r} decodes to {enc.config.codec_name} {list(enc.shape)}, "
                             f"metadata says {info['codec']} {info['shape']}")
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
    for name, layer in meta["embeddings"].items():  # embeddings that read a compressed layer's matrix
        enc = model.get_submodule(layer).encoded
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: the model has no embedding {name!r}") from None
        if not isinstance(old, (nn.Embedding, CompressedEmbedding)) or \
                (old.num_embeddings, old.embedding_dim) != tuple(enc.shape):
            raise ValueError(f"{path}: {name!r} of the model is not an embedding of the shape of {layer!r}")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, CompressedEmbedding(enc, old.padding_idx))
    for alias, target in meta["aliases"].items():
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
