"""Calibrated compression of a checkpoint larger than memory, one decoder block at a time.

``compress_checkpoint(src, out, config, calibration=…)`` (`reality_stone.models.streaming`)
lands here for a Hugging Face model folder (config.json + safetensors shards) or a GGUF file
(`gguf_checkpoint`: tensors dequantised one at a time) of a supported decoder-only family
(`SUPPORTED_FAMILIES`). As GPTQModel and llm-compressor do:

1. the architecture is built on the meta device (no weights) and checked against the shards'
   headers (every tensor present, same shape, nothing extra);
2. the calibration tokens run through the model up to its first decoder block — only the
   embedding is loaded — and block 0's inputs are kept: hidden states (n, L, hidden) float32
   plus the per-call keyword arguments (rotary cos/sin, mask), which depend on the length only;
3. for each block k: its tensors are loaded (the only dense weights resident), a pass over the
   hidden states collects each selected layer's `ActivationStats`, the layers are compressed
   (``workers > 1``: as Ray tasks), the *compressed* block maps the hidden states to block k+1's
   inputs (each weight decoded once, as `reality_stone.calibration.sequential_stats` does),
   the block's parts are written, and the block is freed;
4. layers after the blocks (an untied ``lm_head`` with ``skip=()``) get statistics from the final
   norm of the last hidden states; the file is assembled from the parts as in the data-free path.

Hidden states stay in memory while they fit ``max_memory`` bytes, else they live in a file and
move one sequence at a time. After every block they are saved beside the parts (two files,
alternating, so a kill mid-block leaves the previous ones whole): a resumed run continues at the
first unfinished block and gives the same bytes. The manifest key covers the source tensors,
the codec config, the selection and the calibration token ids.

The result is byte-identical to the in-memory path — ``load_model(folder)``, `rs.compress` with
the same calibration (sequential mode), `rs.save` with the folder's tokenizer — because every
number goes through the same operations: the same block calls with the same arguments, the same
accumulators, the same encoders.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reality_stone.codecs.base import CodecConfig
from reality_stone.models.format import (ENCODED_SUFFIX, TOKENIZER_TENSOR, _return_freed_memory, _tokenizer_tensor,
                                         architecture_record, atomic_path, tensor_bytes, tensor_checksum)

__all__ = ["SUPPORTED_FAMILIES", "DEFAULT_MAX_MEMORY", "compress_checkpoint_calibrated", "parse_size"]

# model_type values (config.json) whose decoder blocks the walker drives. Each block is called with
# the arguments the model itself gives it (recorded once: per-layer masks and rotary tables of
# Gemma 2/3's sliding and global layers included), so a family only needs `model.layers`,
# `embed_tokens` and `norm`; Gemma's embedding scale (a non-persistent buffer) comes from its init.
SUPPORTED_FAMILIES = ("gemma", "gemma2", "gemma3_text", "llama", "mistral", "qwen2", "qwen3")
DEFAULT_MAX_MEMORY = 2 << 30  # bytes of hidden states kept in RAM before they move to a file


def parse_size(text: str) -> int:
    """Bytes from '512M', '4G', '1.5GiB', '1000000', '0' (K/M/G/T are powers of 1024)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 4G)") from None
    if not value >= 0:
        raise ValueError(f"size must be a non-negative number of bytes, got {text!r}")
    return int(value * mult)


# ----------------------------------------------------------------------------- the architecture


def _folder_config(src: Path) -> tuple[Path, dict]:
    """(the folder, or the .gguf file itself; the config as a dict), for a supported family."""
    from reality_stone.models.gguf_checkpoint import gguf_config, is_gguf

    if is_gguf(src):
        cfg = gguf_config(src).to_dict()
        if cfg.get("model_type") not in SUPPORTED_FAMILIES:
            raise ValueError(f"{src}: model_type {cfg.get('model_type')!r} is not a family the block walker knows; "
                             f"supported: {', '.join(SUPPORTED_FAMILIES)} (data-free codecs stream any checkpoint)")
        return src, cfg
    folder = src if src.is_dir() else src.parent
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{src}: calibrated streaming needs the model's config.json beside the shards "
                         "(a Hugging Face model folder, as save_pretrained writes it)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a JSON object")
    family = cfg.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"{path}: model_type {family!r} is not a family the block walker knows; supported: "
                         f"{', '.join(SUPPORTED_FAMILIES)} (data-free codecs stream any checkpoint)")
    return folder, cfg


def _meta_causal_lm(folder: Path) -> nn.Module:
    """The folder's (or .gguf file's) architecture (a ...ForCausalLM) on the meta device: structure, no memory."""
    import transformers

    from reality_stone.models.gguf_checkpoint import gguf_meta_model, is_gguf

    if is_gguf(folder):
        return gguf_meta_model(folder)

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}/config.json: transformers cannot build this architecture ({str(exc)[:300]})") from None
    model.tie_weights()
    return model.eval()


def _decoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, str]:
    """(base model, its decoder blocks, their state-dict prefix) of a ...ForCausalLM."""
    base = getattr(model, "model", None)
    blocks = getattr(base, "layers", None)
    if not isinstance(blocks, nn.ModuleList) or not hasattr(base, "embed_tokens") or not hasattr(base, "norm"):
        raise ValueError(f"{type(model).__name__}: no model.layers / embed_tokens / norm to walk block by block")
    return base, blocks, "model.layers."


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: stored name} of parameters shared between modules, as `reality_stone.save` records them
    (the first name in state-dict order is stored). Meta tensors have no storage: identity decides."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _check_tensors(model: nn.Module, tensors: dict, aliases: dict[str, str], src: Path) -> None:
    """config.json and the shards must describe the same model: names and shapes."""
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items() if n not in aliases}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{src}: config.json describes tensor {missing[0]!r} {list(expected[missing[0]])}, which no "
                         f"shard holds ({len(missing)} missing): is a shard missing, or is config.json for another model?")
    extra = sorted(set(tensors) - set(expected) - set(aliases))
    if extra:
        raise ValueError(f"{src}: tensor {extra[0]!r} is not part of the architecture config.json describes "
                         f"({len(extra)} such tensors)")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{src}: tensor {name!r} has shape {list(tensors[name].shape)}, config.json says "
                             f"{list(shape)}")


def _load_into(module: nn.Module, prefix: str, tensors: dict, read: Callable, dtype: torch.dtype,
               init: Callable[[nn.Module], None] | None = None) -> None:
    """Materialise ``module`` (on meta) from the checkpoint tensors under ``prefix``. Non-persistent
    buffers (Gemma's embedding scale) are not in a checkpoint: ``init`` (the model's own
    ``_init_weights``) computes them first, as ``from_pretrained`` does; the loaded tensors then
    replace every parameter and stored buffer."""
    owners = [m for m in module.modules() if any(m._buffers.get(b) is not None and m._buffers[b].is_meta
                                                  for b in m._non_persistent_buffers_set)]
    if owners and init is not None:
        module.to_empty(device="cpu")
        for m in owners:
            init(m)
    state = {n: read(tensors[prefix + n]).to(dtype) for n in module.state_dict()}
    module.load_state_dict(state, assign=True, strict=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer the checkpoint cannot supply
        raise ValueError(f"{prefix}{left[0]}: not in the checkpoint and not computable here; this family is not "
                         "supported by the block walker")


# ----------------------------------------------------------------------------- hidden states


class _HiddenStates:
    """Block inputs for the calibration set: (n, L, H) float32, in RAM or (over budget) in files.

    ``read(i)`` / ``write(i, x)`` move one sequence. ``commit(k)`` makes the states written since
    the last commit durable as the inputs of block k: file ``hidden-{k % 2}.bin`` in ``folder``
    (in RAM mode the whole tensor is written there; in file mode it already is). Two files
    alternate, so a run killed inside block k still finds block k's inputs whole.
    """

    def __init__(self, folder: Path, n: int, L: int, H: int, max_memory: int):
        self.folder, self.shape = folder, (n, L, H)
        self.row_bytes = L * H * 4
        self.in_ram = n * self.row_bytes <= max_memory
        self.ram = torch.empty(self.shape, dtype=torch.float32) if self.in_ram else None
        self.block = 0  # block whose inputs `read` returns
        self._fds: dict[int, int] = {}

    def path(self, block: int) -> Path:
        return self.folder / f"hidden-{block % 2}.bin"

    def _fd(self, block: int) -> int:
        k = block % 2
        if k not in self._fds:
            self._fds[k] = os.open(self.path(block), os.O_RDWR | os.O_CREAT, 0o644)
        return self._fds[k]

    def read(self, i: int) -> torch.Tensor:
        if self.in_ram:
            return self.ram[i : i + 1]
        data = bytearray(os.pread(self._fd(self.block), self.row_bytes, i * self.row_bytes))
        if len(data) != self.row_bytes:
            raise ValueError(f"{self.path(self.block)}: truncated hidden states (sequence {i})")
        return torch.frombuffer(data, dtype=torch.float32).reshape(1, *self.shape[1:])

    def write(self, i: int, x: torch.Tensor) -> None:
        """Sequence i's inputs to block ``self.block + 1`` (in RAM: in place — row i is read before it is written)."""
        if self.in_ram:
            self.ram[i] = x[0]
        else:
            fd = self._fd(self.block + 1)
            if os.pwrite(fd, tensor_bytes(x.float().contiguous()), i * self.row_bytes) != self.row_bytes:
                raise OSError(f"{self.path(self.block + 1)}: short write")

    def commit(self, block: int) -> str:
        """The states now held are block ``block``'s inputs: fsync them to disk; returns their sha256."""
        path = self.path(block)
        if self.in_ram:
            with atomic_path(path, fsync=True) as tmp:
                tmp.write_bytes(tensor_bytes(self.ram))
        else:
            os.fsync(self._fd(block))
        self.block = block
        return _file_sha(path)

    def restore(self, block: int, sha: str) -> bool:
        """Load block ``block``'s inputs saved by an earlier run; False if missing or damaged."""
        path = self.path(block)
        if not path.is_file() or path.stat().st_size != self.shape[0] * self.row_bytes or _file_sha(path) != sha:
            return False
        if self.in_ram:
            self.ram.copy_(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.float32).reshape(self.shape))
        self.block = block
        return True

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(16 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- block 0's inputs


def _block_calls(base: nn.Module, blocks: nn.ModuleList, **inputs) -> list:
    """Every block's recorded (args, kwargs) when the base model runs on ``inputs``; the blocks
    (still on meta) are not run (`reality_stone.calibration.block_calls`)."""
    from reality_stone.calibration import block_calls

    return block_calls(blocks, lambda: base(**inputs, use_cache=False))


# ----------------------------------------------------------------------------- the walk


class _PhaseTimer:
    """Wall seconds per phase (load, statistics, encode, forward, write, ...): ``with timed("load"):``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def _encoded_record(name: str, enc, seconds: float) -> dict:
    """The part record (+ bytes) of layer ``name``'s encoding, as the data-free path writes it."""
    data = enc.to_bytes()
    return dict(out_name=name + ENCODED_SUFFIX, dtype="U8", shape=[len(data)], source=f"{name}.weight",
                compressed=dict(codec=enc.config.codec_name, shape=list(enc.shape), bits_per_weight=enc.bits_per_weight()),
                nbytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                checksum=tensor_checksum("U8", [len(data)], data), seconds=seconds, data=data)


def _ray_encode(jobs, workers: int, ray_address: str | None, timed: _PhaseTimer):
    """[(Encoded, LayerReport)] of ``jobs`` = [(name, weight, config, stats)] as Ray tasks (the
    cluster is started by the first call and reused; ``timed`` gets "ray start" and "ray transfer")."""
    import ray

    from reality_stone.models.compress import encode_layer

    if not ray.is_initialized():
        with timed("ray start"):
            if ray_address:
                ray.init(address=ray_address, log_to_driver=False)
            else:
                # object store: a block's weights and Hessians twice over (in flight and results)
                need = 4 * sum(w.numel() * 4 + s.xtx.numel() * 8 for _, w, _, s in jobs)
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=max(256 << 20, need))

    def task(name, weight, config, stats):
        torch.set_num_threads(1)  # parallelism comes from the workers (no N-fold oversubscription)
        return encode_layer(name, weight, config, stats)

    remote = ray.remote(task)
    with timed("ray transfer"):  # to the object store; results come back inside "encode"
        refs = [[ray.put(w), ray.put(st)] for _, w, _, st in jobs]
    return ray.get([remote.remote(name, w, cfg, st) for (name, _, cfg, _), (w, st) in zip(jobs, refs)])


def compress_checkpoint_calibrated(
    src: Path, out: Path, config: CodecConfig, *, calibration, tokenizer=None, tokens: int = 8192,
    seq_len: int = 512, include: str = "*", skip: tuple[str, ...] = ("lm_head",),
    per_layer: dict[str, CodecConfig] | None = None, max_memory: int = DEFAULT_MAX_MEMORY, workers: int = 1,
    ray_address: str | None = None, resume: bool = True, source: str | None = None, progress: bool = False,
    on_block: Callable[[int], None] | None = None, head: CodecConfig | None = None,
) -> dict:
    """Block-by-block calibrated compression of a model folder (see the module docstring).

    ``calibration`` / ``tokenizer`` / ``tokens`` / ``seq_len`` as in `reality_stone.compress`
    (the folder's own tokenizer when ``tokenizer`` is None and the calibration is text; it is also
    stored in the file). ``max_memory``: bytes of hidden states kept in RAM. ``on_block(k)`` runs
    after block k is durable (tests, progress). ``head``: a config for the LM head, encoded data-free
    after the blocks (as `reality_stone.compress(head=...)`; a tied head stored as the embeddings
    becomes the compressed layer the embedding reads). Returns a summary with the per-layer report.
    """
    import fnmatch

    from reality_stone.calibration import _Accumulator, _hooked, block_input, calibration_ids, call_block
    from reality_stone.models.compress import CompressionReport, check_calibration, encode_layer
    from reality_stone.models.selection import select_layers
    from reality_stone.models.streaming import (MANIFEST_VERSION, _checkpoint_head, _fingerprint, _PartStore,
                                                _process, _read, checkpoint_tensors)
    from reality_stone.nn.compressed import CompressedLinear, decoded_weights

    t_start = time.perf_counter()
    timed = _PhaseTimer()
    src, out = Path(src), Path(out)
    if not isinstance(max_memory, int) or max_memory < 0:
        raise ValueError(f"max_memory must be a non-negative number of bytes, got {max_memory!r}")
    folder, cfg_json = _folder_config(src)
    sources = checkpoint_tensors(src)  # headers: missing/truncated/corrupt shards fail here, naming the tensor
    by_name = {t.name: t for t in sources}
    model = _meta_causal_lm(folder)
    aliases = _tied_aliases(model)
    for alias in aliases:  # a checkpoint that stores a tied tensor twice: keep the first copy
        by_name.pop(alias, None)
    _check_tensors(model, by_name, aliases, src)
    base, blocks, prefix = _decoder(model)

    chosen, skipped = select_layers(model, include, tuple(skip))
    if not chosen:
        raise ValueError("no nn.Linear layer matched: nothing to compress (check include/skip patterns)")
    configs = {name: next((c for pat, c in (per_layer or {}).items() if fnmatch.fnmatchcase(name, pat)), config)
               for name, _ in chosen}
    del chosen  # it holds the Linear modules: each would keep its block's loaded weights alive to the end
    check_calibration(list(configs.values()), True)
    if tokenizer is None and not isinstance(calibration, torch.Tensor) and not (
            isinstance(calibration, (list, tuple)) and calibration and all(isinstance(t, int) for t in calibration)):
        from reality_stone.models.streaming import _source_tokenizer

        tokenizer = _source_tokenizer(src)
        if tokenizer is None:
            raise ValueError(f"{folder}: no tokenizer to read the calibration text with (pass tokenizer=)")
    ids = calibration_ids(calibration, tokenizer, tokens=tokens, seq_len=seq_len, vocab_size=model.config.vocab_size)
    n, L = ids.shape
    H = model.config.hidden_size

    selected = {f"{name}.weight": name for name in configs}
    blocks_of: list[list[str]] = [[t for t in sorted(by_name) if t.startswith(f"{prefix}{k}.")] for k in range(len(blocks))]
    in_blocks = {t for names in blocks_of for t in names}
    last = max((k for k in range(len(blocks)) if any(t in selected for t in blocks_of[k])), default=-1)
    rest_layers = [selected[t] for t in sorted(by_name) if t in selected and t not in in_blocks]
    if rest_layers and not all(name == "lm_head" for name in rest_layers):
        raise ValueError(f"layer {rest_layers[0]!r} lies outside the decoder blocks: only lm_head can be calibrated "
                         "there; keep it dense with skip")
    head_tensor, head_layer, embeddings = _checkpoint_head(src, list(by_name.values()), head, set(selected), aliases)
    calib_sha = hashlib.sha256(tensor_bytes(ids)).hexdigest()
    key = {"version": MANIFEST_VERSION, "mode": "calibrated-blocks", "source": _fingerprint(sources),
           "codecs": {name: {"codec": c.codec_name, "config": c.to_dict()} for name, c in sorted(configs.items())},
           "calibration": {"sha256": calib_sha, "shape": [n, L]}, "include": include, "skip": list(skip)}
    if head is not None:  # absent without a head: parts from before the option still resume
        key["head"] = {"codec": head.codec_name, "config": head.to_dict(), "tensor": head_tensor}
    out.parent.mkdir(parents=True, exist_ok=True)
    store = _PartStore(out.with_name(out.name + ".parts"), key, resume)
    hidden = _HiddenStates(store.folder, n, L, H, max_memory)
    report = CompressionReport(skipped=skipped)
    report.calibration = dict(mode="sequential", tokens=int(ids.numel()), sequences=n, seq_len=L,
                              streamed_blocks=True, hidden_states="memory" if hidden.in_ram else "file")
    start, report.layers = _resume_point(store.state, last + 1)
    need_hidden = start <= last or bool(rest_layers)  # the last block's outputs are kept only for lm_head
    if start and need_hidden and not hidden.restore(start, store.state.get("hidden_sha256") or ""):
        warnings.warn(f"{store.folder}: saved hidden states are missing or damaged; starting over", stacklevel=2)
        start, report.layers = 0, []
    resumed_blocks = start

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=last + 1, initial=min(start, last + 1), desc="compress (blocks)", unit="block")
    try:
        with torch.no_grad():
            # tensors outside the blocks that stay dense (embeddings, final norm, a dense lm_head)
            for t in sorted(by_name):
                if t not in in_blocks and t not in selected and t != head_tensor and t not in store.done:
                    store.add(_process(by_name[t], None))
            with torch.device("cpu"):  # rotary cos/sin tables: non-persistent, computed from the config
                base.rotary_emb = type(base.rotary_emb)(config=model.config)
            if start == 0:  # block 0's inputs: embeddings of the calibration tokens (nothing else loaded)
                with timed("embed"):
                    _load_into(base.embed_tokens, "model.embed_tokens.", by_name, _read, torch.float32,
                               model._init_weights)
                    hidden.block = -1  # writes go to block 0's inputs
                    for i in range(n):
                        hidden.write(i, block_input(_block_calls(base, blocks, input_ids=ids[i : i + 1])[0]))
                    base.embed_tokens.to_empty(device="meta")
                    store.set_state({"blocks_done": 0, "hidden_sha256": hidden.commit(0), "layers": []})
            # each block's own arguments (mask, rotary tables): they depend on the length only
            calls = _block_calls(base, blocks, inputs_embeds=torch.zeros(1, L, H))

            for k in range(start, last + 1):
                block = blocks[k]
                with timed("load"):
                    _load_into(block, f"{prefix}{k}.", by_name, _read, torch.float32, model._init_weights)
                names = [name for name in configs if name.startswith(f"{prefix}{k}.")]  # module order, as compress
                layer_rows, results = [], []
                if names:
                    acc, handles = _hooked(model, names)
                    try:
                        with timed("statistics"):
                            for i in range(n):
                                call_block(block, calls[k], hidden.read(i))
                    finally:
                        for h in handles:
                            h.remove()
                    jobs = [(name, model.get_submodule(name).weight.detach(), configs[name], acc.pop(name).stats(name))
                            for name in names]  # (the accumulators' sums go: one (in, in) copy per layer, not two)
                    with timed("encode"):
                        if workers > 1 or ray_address:
                            results = _ray_encode(jobs, workers, ray_address, timed)
                        else:  # each layer's statistics are dropped once it is encoded
                            results = []
                            for j, job in enumerate(jobs):
                                jobs[j] = None
                                results.append(encode_layer(*job))
                                del job
                                _return_freed_memory()
                    del jobs
                    for name, (enc, row) in zip(names, results):
                        lin = model.get_submodule(name)
                        parent, _, child = name.rpartition(".")
                        setattr(model.get_submodule(parent), child, CompressedLinear(enc, lin.bias))
                        layer_rows.append(row)
                        with timed("write"):
                            store.add(_encoded_record(name, enc, row.seconds))
                with timed("write"):
                    for t in blocks_of[k]:  # the block's dense tensors (norms, biases) as stored
                        if t not in selected:
                            store.add(_process(by_name[t], None))
                if k < last or rest_layers:  # the compressed block's outputs: block k+1's inputs
                    with timed("forward"), decoded_weights(block):
                        for i in range(n):
                            hidden.write(i, call_block(block, calls[k], hidden.read(i)))
                    with timed("write"):
                        sha = hidden.commit(k + 1)
                else:
                    sha = None
                report.layers += layer_rows
                store.set_state({"blocks_done": k + 1, "hidden_sha256": sha,
                                 "layers": [asdict(r) for r in report.layers]})
                blocks[k] = nn.Module()  # free the block (its dense and compressed weights)
                del block, results, layer_rows
                _return_freed_memory()  # glibc keeps freed MB-sized blocks in its heap: RSS would ratchet up
                if bar is not None:
                    bar.update(1)
                if on_block is not None:
                    on_block(k)
            for k in range(last + 1, len(blocks)):  # blocks without selected layers: copied
                for t in blocks_of[k]:
                    if t not in store.done:
                        store.add(_process(by_name[t], None))
            for name in rest_layers:  # lm_head: statistics of the final-norm outputs
                if f"{name}.weight" in store.done:
                    continue
                _load_into(base.norm, "model.norm.", by_name, _read, torch.float32, model._init_weights)
                acc = _Accumulator()  # what the layer's pre-hook would see: the final norm's outputs
                for i in range(n):
                    acc(None, (base.norm(hidden.read(i)),))
                W = _read(by_name[f"{name}.weight"]).float()
                enc, row = encode_layer(name, W, configs[name], acc.stats(name))
                store.add(_encoded_record(name, enc, row.seconds))
                report.layers.append(row)
                store.set_state(store.state | {"layers": [asdict(r) for r in report.layers]})
            if head_tensor is not None and f"{head_layer}.weight" not in store.done:  # data-free, after the blocks
                enc, row = encode_layer(head_layer, _read(by_name[head_tensor]).float(), head, None)
                store.add(_encoded_record(head_layer, enc, row.seconds))
                report.layers.append(row)
                store.set_state(store.state | {"layers": [asdict(r) for r in report.layers]})
    finally:
        hidden.close()
        if bar is not None:
            bar.close()
        if "ray start" in timed.seconds:  # this run started the local cluster: stop it
            import ray

            ray.shutdown()

    # the file: parts + tokenizer, with the metadata `reality_stone.save` writes for the same model
    extra = {TOKENIZER_TENSOR: _tokenizer_tensor(tokenizer)} if tokenizer is not None else {}
    if embeddings:  # the head's matrix is the compressed layer now: no alias re-ties it to the embedding
        aliases = {a: t for a, t in aliases.items() if t != head_tensor}
    n_records, n_compressed = store.assemble(
        out, architecture=architecture_record(model), aliases=aliases,
        source=source, extra=extra, embeddings=embeddings)
    in_bytes = sum(Path(s).stat().st_size for s in {t.shard for t in sources})
    return dict(output=str(out), tensors=n_records, compressed_layers=n_compressed, input_bytes=in_bytes,
                output_bytes=out.stat().st_size, seconds=time.perf_counter() - t_start,
                workers=workers if (workers > 1 or ray_address) else 1, resumed_blocks=resumed_blocks,
                blocks=len(blocks), phase_seconds=timed.seconds, report=report.to_dict())


def _resume_point(state: dict, n_blocks: int) -> tuple[int, list]:
    """(blocks done, their layer reports) from a manifest's state; (0, []) if it is not valid."""
    from reality_stone.models.compress import LayerReport

    done = state.get("blocks_done", 0)
    try:
        rows = [LayerReport(**(d | {"shape": tuple(d["shape"])})) for d in state.get("layers", [])]
    except (TypeError, KeyError, ValueError):
        rows = None
    if not (isinstance(done, int) and 0 <= done <= n_blocks) or rows is None:
        if state:
            warnings.warn("the part folder's resume state is damaged; starting over", stacklevel=3)
        return 0, []
    return done, rows
