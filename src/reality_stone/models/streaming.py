"""Checkpoints larger than memory: compress a (sharded) safetensors checkpoint tensor by tensor.

``compress_checkpoint(src, out, config)`` reads each tensor from its shard (plain reads at the
offsets of the safetensors header, no mmap), compresses the selected 2-D weights (others are
copied), and writes each result to a part
file under ``<out>.parts/`` with a manifest (tensor → output name, dtype, shape, size,
sha256). Peak memory is one tensor and its encoding (plus the codec's working memory), not
the model. The final file — the same format as `reality_stone.save` (`models/format.py`):
``<layer>.__encoded__`` uint8 tensors, dense tensors, checksums and metadata — is assembled
by streaming the parts into a temporary file, then renamed; the part folder is removed.

Resumable: an interrupted run (crash, kill, Ctrl-C) leaves finished parts and the manifest;
the next run with the same source and config verifies each finished part's checksum and
continues with the rest. The output is byte-identical whether the run was streamed,
resumed, in memory (``streaming=False``: whole state dict loaded first) or spread over Ray
workers: tensors are processed independently and written in name order.

Parallel: ``workers > 1`` runs one Ray task per tensor (``ray.init()`` locally, or
``ray_address`` for a cluster), at most 2 × workers tasks in flight (bounded memory); each
task reads its tensor from the shard itself, so a cluster needs the checkpoint on a shared
path. Without Ray installed the same call runs single-process and says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from reality_stone.codecs.base import CodecConfig
from reality_stone.models.selection import DEFAULT_SKIP, checkpoint_selector
from reality_stone.models.format import (DTYPE_NAMES, ENCODED_SUFFIX, TOKENIZER_TENSOR, TORCH_DTYPES, _tokenizer_tensor,
                                         atomic_path, file_metadata, tensor_bytes, tensor_checksum, write_safetensors)

__all__ = ["TensorSource", "checkpoint_tensors", "compress_checkpoint"]

MANIFEST_VERSION = 2  # 2: records carry the file checksum over dtype, shape and bytes


@dataclass(frozen=True)
class TensorSource:
    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the shard
    nbytes: int
    # GGUF tensors (`gguf_checkpoint`): (GGUF name, quantisation type, stored numpy dtype and shape);
    # ``dtype`` is then F32, what dequantising gives
    gguf: tuple | None = None


def _shards(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such checkpoint file or folder")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{src}: no *.safetensors shards")
    index = src / "model.safetensors.index.json"  # save_pretrained's map tensor -> shard
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            listed = {str(v): str(k) for k, v in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{index}: corrupt shard index") from None
        for shard, tensor in sorted(listed.items()):
            if not (src / shard).is_file():
                raise ValueError(f"{src}: shard {shard} is missing (the index puts tensor {tensor!r} in it)")
    return shards


def _read_header(shard: Path) -> tuple[dict, int]:
    """The parsed safetensors header and the byte offset where the data starts."""
    with open(shard, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > shard.stat().st_size:
            raise ValueError(f"{shard}: corrupt or truncated safetensors header")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise ValueError(f"{shard}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{shard}: corrupt safetensors header (not an object)")
    return header, 8 + n


def checkpoint_tensors(src: str | Path) -> list[TensorSource]:
    """Every tensor of a checkpoint (a .safetensors file, a folder of shards or a .gguf file), from
    headers only. A truncated shard is reported with the first tensor it cuts."""
    from reality_stone.models.gguf_checkpoint import gguf_tensors, is_gguf

    if is_gguf(src):
        return gguf_tensors(src)
    out, seen = [], {}
    for shard in _shards(Path(src)):
        header, start = _read_header(shard)
        entries = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in seen:
                raise ValueError(f"{shard}: tensor {name!r} also appears in {seen[name]}")
            try:
                b0, b1 = (int(v) for v in info["data_offsets"])
                dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{shard}: corrupt header entry for tensor {name!r}") from None
            if dtype not in TORCH_DTYPES:
                raise ValueError(f"{shard}: tensor {name!r} has unsupported dtype {dtype}")
            if b1 - b0 != math.prod(shape) * TORCH_DTYPES[dtype].itemsize:
                raise ValueError(f"{shard}: tensor {name!r}: {b1 - b0} bytes do not hold {dtype}{list(shape)}")
            seen[name] = shard
            entries.append(TensorSource(name, str(shard), dtype, shape, start + b0, b1 - b0))
        size = shard.stat().st_size
        cut = [e for e in entries if e.offset + e.nbytes > size]
        if cut:
            first = min(cut, key=lambda e: e.offset + e.nbytes)
            raise ValueError(f"{shard}: truncated: tensor {first.name!r} needs bytes up to "
                             f"{first.offset + first.nbytes}, the file has {size}")
        out += entries
    return sorted(out, key=lambda s: s.name)


def read_stored_bytes(src: TensorSource) -> bytearray:
    """The tensor's bytes as stored (``nbytes`` from ``offset``), read straight into one buffer."""
    data = bytearray(src.nbytes)
    try:
        with open(src.shard, "rb") as fh:
            fh.seek(src.offset)
            got = fh.readinto(data)
    except OSError as exc:
        raise ValueError(f"{src.shard}: tensor {src.name!r} could not be read ({exc})") from None
    if got != src.nbytes:
        raise ValueError(f"{src.shard}: tensor {src.name!r} is truncated ({got} of {src.nbytes} bytes)")
    return data


def _read(src: TensorSource) -> torch.Tensor:
    """One tensor, read with plain file I/O (no mmap of the shard: the process holds this tensor
    only, and its RSS says so)."""
    if src.gguf is not None:
        from reality_stone.models.gguf_checkpoint import read_gguf_tensor

        return read_gguf_tensor(src)
    data = read_stored_bytes(src)
    if src.nbytes == 0:
        return torch.empty(src.shape, dtype=TORCH_DTYPES[src.dtype])
    return torch.frombuffer(data, dtype=TORCH_DTYPES[src.dtype]).reshape(src.shape)


def _process(src: TensorSource, config: CodecConfig | None, tensor: torch.Tensor | None = None,
             layer: str | None = None) -> dict:
    """Compress (``config`` given) or copy one tensor. Returns the part record + its bytes.
    ``layer``: the compressed layer's name when it is not the tensor's module (a tied head
    stored as the embeddings: ``lm_head`` from ``model.embed_tokens.weight``)."""
    t0 = time.perf_counter()
    t = _read(src) if tensor is None else tensor
    if config is not None:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{src.shard}: tensor {src.name!r} has NaN/Inf values")
        enc = config.encode(t.float())
        data = enc.to_bytes()
        rec = dict(out_name=(layer or src.name[: -len(".weight")]) + ENCODED_SUFFIX, dtype="U8", shape=[len(data)],
                   compressed=dict(codec=config.codec_name, shape=list(enc.shape), bits_per_weight=enc.bits_per_weight()))
    else:
        data = tensor_bytes(t)  # a view of the tensor read: no copy
        rec = dict(out_name=src.name, dtype=DTYPE_NAMES[t.dtype], shape=list(t.shape), compressed=None)
    rec.update(source=src.name, nbytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
               checksum=tensor_checksum(rec["dtype"], rec["shape"], data), seconds=time.perf_counter() - t0)
    return rec | {"data": data}


def _architecture(src: Path):
    from reality_stone.models.gguf_checkpoint import gguf_architecture, is_gguf

    if is_gguf(src):
        return gguf_architecture(src)
    cfg_path = (src if src.is_dir() else src.parent) / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    arch = (cfg.get("architectures") or [None])[0]
    return {"class": arch, "config": cfg} if arch else None


def _source_tokenizer(src: Path):
    """The checkpoint's own tokenizer (a .gguf file's, or the files beside config.json), stored in the
    output as `reality_stone.save` stores it, so the file is self-contained; None without one."""
    from reality_stone.models.gguf_checkpoint import gguf_tokenizer, is_gguf

    try:
        if is_gguf(src):
            return gguf_tokenizer(src)
        folder = src if src.is_dir() else src.parent
        if not (folder / "config.json").is_file():
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError):  # weights without a tokenizer: still a valid file
        return None


def _aliases(src: Path, tensors: list[TensorSource]) -> dict[str, str]:
    """{tied name the checkpoint leaves out: the stored name it shares} (a tied lm_head is stored once, as
    the embeddings, by save_pretrained and in GGUF), so that `reality_stone.load` re-ties it."""
    from reality_stone.models.block_streaming import _tied_aliases
    from reality_stone.models.selection import checkpoint_model

    model = checkpoint_model(src)
    if model is None:
        return {}
    names = {t.name for t in tensors}
    return {a: t for a, t in _tied_aliases(model).items() if a not in names and t in names}


def _checkpoint_head(src: Path, tensors: list[TensorSource], head: CodecConfig | None, selected: set[str],
                     aliases: dict[str, str]) -> tuple[str | None, str | None, dict]:
    """(the tensor that holds the LM head, the layer name its encoding gets, {embedding: layer} when
    the head is tied and stored as the embeddings) for ``compress_checkpoint(head=...)``."""
    from reality_stone.models.compress import output_head_name
    from reality_stone.models.selection import checkpoint_model

    if head is None:
        return None, None, {}
    model = checkpoint_model(src)
    if model is None:
        raise ValueError(f"{src}: head= needs the checkpoint's architecture (a config.json or a .gguf file)")
    layer = output_head_name(model, head, [])
    weight = f"{layer}.weight"
    names = {t.name for t in tensors}
    stored = weight if weight in names else aliases.get(weight)
    if stored is None or stored not in names:
        raise ValueError(f"{src}: no tensor holds the LM head {weight!r}")
    if stored in selected:
        raise ValueError(f"{weight!r} is selected by include/skip and by head=: give its config once")
    if stored == weight:
        return stored, layer, {}
    embed = model.get_input_embeddings()
    embed_name = next((n for n, m in model.named_modules() if m is embed), None)
    if not isinstance(embed, torch.nn.Embedding) or f"{embed_name}.weight" != stored:
        raise ValueError(f"{src}: the LM head is stored as {stored!r}, which is not the input embedding")
    return stored, layer, {embed_name: layer}


def _fingerprint(tensors: list[TensorSource]) -> str:
    body = json.dumps([[t.name, Path(t.shard).name, t.dtype, list(t.shape), t.nbytes] for t in tensors])
    return hashlib.sha256(body.encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # no fsync per part: a part lost in a power cut fails its checksum on resume and is redone
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_bytes(data)


class _PartStore:
    """The ``<out>.parts`` folder: one file per finished tensor + manifest.json (atomic updates)."""

    def __init__(self, folder: Path, key: dict, resume: bool):
        self.folder, self.key = folder, key
        self.done: dict[str, dict] = {}
        self.state: dict = {}  # the caller's resume state beyond finished tensors (calibrated runs: blocks done)
        manifest = folder / "manifest.json"
        if resume and manifest.is_file():
            try:
                m = json.loads(manifest.read_text())
            except ValueError:
                m = {}
            m = m if isinstance(m, dict) else {}
            if m.get("key") == key:
                self.state = m.get("state") if isinstance(m.get("state"), dict) else {}
                done = m.get("done") if isinstance(m.get("done"), dict) else {}
                for name, rec in done.items():  # a damaged record, or a part name that is not a plain file name: redone
                    part = rec.get("part") if isinstance(rec, dict) else None
                    if (isinstance(part, str) and Path(part).name == part and (folder / part).is_file()
                            and hashlib.sha256((folder / part).read_bytes()).hexdigest() == rec.get("sha256")):
                        self.done[name] = rec
            else:
                warnings.warn(f"{folder}: parts are from another source or config; starting over", stacklevel=3)
        if not self.done and not self.state and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, rec: dict) -> None:
        part = hashlib.sha256(rec["source"].encode()).hexdigest()[:24] + ".part"  # one file per tensor
        data = rec.pop("data")
        _atomic_write(self.folder / part, data)
        self.done[rec["source"]] = rec | {"part": part}
        self._write_manifest()

    def set_state(self, state: dict) -> None:
        """Record resume state (after the files it names are written)."""
        self.state = state
        self._write_manifest()

    def assemble(self, out: Path, *, architecture, aliases: dict, source, extra: dict | None = None,
                 embeddings: dict | None = None) -> tuple[int, int]:
        """Write the final file from the finished parts plus ``extra`` {name: uint8 tensor} (the
        tokenizer), in name order, atomically; then remove the part folder. Returns (parts, compressed)."""
        records = sorted(self.done.values(), key=lambda r: r["out_name"])
        names = [r["out_name"] for r in records]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.folder}: two tensors map to the same output name")
        extra = extra or {}
        compressed = {r["out_name"][: -len(ENCODED_SUFFIX)]: r["compressed"] for r in records if r["compressed"]}
        checksums = {r["out_name"]: r["checksum"] for r in records}
        checksums |= {k: tensor_checksum("U8", list(t.shape), tensor_bytes(t)) for k, t in extra.items()}
        meta = file_metadata(architecture=architecture, compressed=compressed, aliases=aliases, checksums=checksums,
                             source=source, embeddings=embeddings)

        def copy_part(fh, part):
            with open(self.folder / part, "rb") as fp:
                shutil.copyfileobj(fp, fh, 16 * 2**20)

        entries = [(r["out_name"], r["dtype"], r["shape"], r["nbytes"], lambda fh, p=r["part"]: copy_part(fh, p))
                   for r in records]
        entries += [(k, "U8", list(t.shape), t.numel(), lambda fh, t=t: fh.write(tensor_bytes(t)))
                    for k, t in extra.items()]
        entries.sort(key=lambda e: e[0])
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            write_safetensors(fh, entries, meta)
        shutil.rmtree(self.folder, ignore_errors=True)
        return len(records), len(compressed)

    def _write_manifest(self) -> None:
        body = {"version": MANIFEST_VERSION, "key": self.key, "done": self.done, "state": self.state}
        _atomic_write(self.folder / "manifest.json", json.dumps(body, indent=1).encode())


def _process_in_worker(src: TensorSource, config: CodecConfig | None, layer: str | None = None) -> dict:
    # one intra-op thread per Ray worker: parallelism comes from the workers, and torch's
    # default (all cores per process) oversubscribes the machine N-fold
    torch.set_num_threads(1)
    rec = _process(src, config, layer=layer)
    return rec | {"data": bytes(rec["data"])}  # a memoryview does not pickle


def _ray_tasks(todo, cfg_of, workers: int, ray_address: str | None, layer_of=lambda t: None):
    """Yield part records computed by Ray tasks, ≤ 2 × workers in flight."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 2**20)
    remote = ray.remote(_process_in_worker)
    pending, queue = {}, list(todo)
    try:
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                src = queue.pop(0)
                pending[remote.remote(src, cfg_of(src), layer_of(src))] = src
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                yield ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def compress_checkpoint(src: str | Path, out: str | Path, config: CodecConfig, *,
                        include: str = "*", skip: tuple[str, ...] = DEFAULT_SKIP,
                        select: Callable[[str, tuple], bool] | None = None, workers: int = 1,
                        ray_address: str | None = None, resume: bool = True, streaming: bool = True,
                        source: str | None = None, progress: bool = False,
                        on_tensor: Callable[[dict], None] | None = None, calibration=None, tokenizer=None,
                        tokens: int = 8192, seq_len: int = 512, max_memory: int | None = None,
                        on_block: Callable[[int], None] | None = None, head: CodecConfig | None = None) -> dict:
    """Compress checkpoint ``src`` (a .safetensors file, a folder of shards or a .gguf file) into ``out``.

    Which tensors: `reality_stone.models.selection.checkpoint_selector` (the layers `rs.compress`
    would pick on the same model: ``include``/``skip`` globs on module names, ties, the LM head
    kept dense by default), or ``select(name, shape)`` instead.
    The file stores ``tokenizer``, else the checkpoint's own (a .gguf file's, or the files beside
    config.json) when it has one, so that `eval` / `generate` need nothing else.
    Returns a summary: tensors, compressed layers, bytes in and out, seconds, workers used.
    ``on_tensor(record)`` is called after each finished tensor (progress hooks, tests).

    ``calibration`` (texts, a file, token ids, "shakespeare"/"news"; ``tokenizer``, ``tokens``,
    ``seq_len`` as in `reality_stone.compress`): data-aware codecs on a model folder of a supported
    decoder-only family, block by block with at most one block's weights resident
    (`reality_stone.models.block_streaming`; ``max_memory`` bytes of hidden states in RAM,
    ``on_block(k)`` after each durable block). The summary then carries the per-layer report.

    ``head``: a config for the LM head (data-free, as `reality_stone.compress(head=...)`); a head
    tied to the embeddings — stored once, as the embeddings — becomes the compressed layer the
    embedding reads (format v3 ``embeddings``). Needs the checkpoint's architecture; with
    ``calibration`` it is encoded after the blocks, still data-free.
    """
    from reality_stone.models.compress import check_calibration

    t_start = time.perf_counter()
    src, out = Path(src), Path(out)
    check_calibration([config], calibration is not None)
    if calibration is not None:
        from reality_stone.models.block_streaming import DEFAULT_MAX_MEMORY, compress_checkpoint_calibrated

        if select is not None or not streaming:
            raise ValueError("calibrated checkpoint compression selects layers by include/skip and always streams")
        return compress_checkpoint_calibrated(
            src, out, config, calibration=calibration, tokenizer=tokenizer, tokens=tokens, seq_len=seq_len,
            include=include, skip=tuple(skip), max_memory=DEFAULT_MAX_MEMORY if max_memory is None else max_memory,
            workers=workers, ray_address=ray_address, resume=resume, source=source, progress=progress,
            on_block=on_block, head=head)
    tensors = checkpoint_tensors(src)
    select = select or checkpoint_selector(src, include, tuple(skip))
    cfg_dict = {"codec": config.codec_name, "config": config.to_dict()}
    selected = {t.name for t in tensors if t.dtype in ("F32", "F16", "BF16", "F64") and select(t.name, t.shape)}
    aliases = _aliases(src, tensors)
    head_tensor, head_layer, embeddings = _checkpoint_head(src, tensors, head, selected, aliases)
    cfg_of = lambda t: head if t.name == head_tensor else config if t.name in selected else None  # noqa: E731
    layer_of = lambda t: head_layer if t.name == head_tensor else None  # noqa: E731
    out.parent.mkdir(parents=True, exist_ok=True)
    key = {"version": MANIFEST_VERSION, "source": _fingerprint(tensors), "codec": cfg_dict, "selected": sorted(selected)}
    if head is not None:  # absent without a head: parts from before the option still resume
        key["head"] = {"codec": head.codec_name, "config": head.to_dict(), "tensor": head_tensor}
    store = _PartStore(out.with_name(out.name + ".parts"), key, resume and streaming)
    todo = [t for t in tensors if t.name not in store.done]
    use_ray = workers > 1 or ray_address is not None
    if use_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            warnings.warn("Ray is not installed (pip install 'reality-stone[distributed]'): running single-process",
                          stacklevel=2)
            use_ray = False
    if not streaming:  # the in-memory reference: the whole state dict first
        loaded = {t.name: _read(t) for t in todo}
        results = (_process(t, cfg_of(t), loaded.pop(t.name), layer_of(t)) for t in todo)
    elif use_ray:
        results = _ray_tasks(todo, cfg_of, workers, ray_address, layer_of)
    else:
        results = (_process(t, cfg_of(t), layer=layer_of(t)) for t in todo)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tensors), initial=len(tensors) - len(todo), desc="compress", unit="tensor")
    for rec in results:
        store.add(rec)
        if on_tensor is not None:
            on_tensor(rec)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    tok = tokenizer if tokenizer is not None else _source_tokenizer(src)
    extra = {TOKENIZER_TENSOR: _tokenizer_tensor(tok)} if tok is not None else {}
    if embeddings:  # the head's matrix is the compressed layer now: no alias re-ties it to the embedding
        aliases = {a: t for a, t in aliases.items() if t != head_tensor}
    n_records, n_compressed = store.assemble(out, architecture=_architecture(src), aliases=aliases,
                                             source=source, extra=extra, embeddings=embeddings)
    in_bytes = sum(Path(s).stat().st_size for s in {t.shard for t in tensors})
    return dict(output=str(out), tensors=n_records, compressed_layers=n_compressed, input_bytes=in_bytes,
                output_bytes=out.stat().st_size, seconds=time.perf_counter() - t_start,
                workers=workers if use_ray else 1, resumed_tensors=len(tensors) - len(todo))
