"""Whole-model compression: replace ``nn.Linear`` layers in place with `CompressedLinear`.

torchao-style: ``compress(model, config)`` mutates the model and returns a per-layer report.
Which layers: `reality_stone.models.selection` (every ``nn.Linear`` matching ``include`` and no
``skip`` glob, not tied to another module; the LM head kept dense by default — the same policy
`compress_checkpoint` and the CLI use); ``per_layer`` maps patterns to other configs (first
match wins). ``head=`` compresses the LM head with its own config (8-bit RTN, say: the head is
read every token); a head tied to the input embeddings stays one matrix, compressed, which the
embedding then reads (`CompressedEmbedding`).

Data-aware codecs (``gptq``, ``seedbasis``) take ``calibration=`` — texts, a file, token ids
or a bundled corpus name — and get each layer's `ActivationStats` from
`reality_stone.calibration`: sequentially by default (block k sees blocks 0…k−1 already
compressed, as GPTQModel / llm-compressor do), or in one pass over the dense model.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from reality_stone.calibration import output_error
from reality_stone.codecs import relative_error, sqnr_db
from reality_stone.codecs.base import CodecConfig
from reality_stone.models.selection import DEFAULT_SKIP, select_layers
from reality_stone.nn.compressed import CompressedEmbedding, CompressedLinear

__all__ = ["CompressionReport", "LayerReport", "check_calibration", "check_mixed", "compress", "compressible_layers",
           "encode_layer", "guard_save_pretrained", "output_head_name"]


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    codec: str
    nbytes: int
    dense_bytes_fp32: int
    ratio_fp32: float
    bits_per_weight: float
    rel_error: float
    sqnr_db: float
    seconds: float
    output_error: float | None = None  # relative output error under the calibration statistics


@dataclass
class CompressionReport:
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    calibration: dict | None = None  # mode, tokens, sequences, seq_len, seconds, tuning (None: data-free)

    @property
    def compressed_bytes(self) -> int:
        return sum(r.nbytes for r in self.layers)

    @property
    def dense_bytes_fp32(self) -> int:
        return sum(r.dense_bytes_fp32 for r in self.layers)

    @property
    def bits_per_weight(self) -> float:
        n = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return 8 * self.compressed_bytes / n if n else float("nan")

    def to_dict(self) -> dict:
        return dict(layers=[asdict(r) for r in self.layers], skipped=self.skipped,
                    compressed_bytes=self.compressed_bytes, dense_bytes_fp32=self.dense_bytes_fp32,
                    bits_per_weight=self.bits_per_weight, calibration=self.calibration,
                    output_error=self.output_error)

    @property
    def output_error(self) -> float | None:
        """Weight-count-weighted mean relative output error (None without calibration)."""
        rows = [r for r in self.layers if r.output_error is not None]
        n = sum(r.shape[0] * r.shape[1] for r in rows)
        return sum(r.output_error * r.shape[0] * r.shape[1] for r in rows) / n if n else None


compressible_layers = select_layers  # (name, module) of the layers `compress` touches, and the skipped names


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def encode_layer(name: str, weight: torch.Tensor, config: CodecConfig, stats=None):
    """(Encoded, LayerReport) of one layer's weight (out, in); ``stats`` is passed on only to codecs
    that use calibration. Encode errors name the layer ("weight contains NaN" alone does not say where)."""
    t0 = time.perf_counter()
    try:
        enc = config.encode(weight, stats if config.calibration != "unused" else None)
    except ValueError as exc:
        raise ValueError(f"layer {name!r}: {exc}") from None
    dt = time.perf_counter() - t0
    D = enc.decode(torch.float32)
    return enc, LayerReport(
        name=name, shape=tuple(weight.shape), codec=config.codec_name, nbytes=enc.nbytes,
        dense_bytes_fp32=weight.numel() * 4, ratio_fp32=enc.compression_ratio(), bits_per_weight=enc.bits_per_weight(),
        rel_error=relative_error(weight, D), sqnr_db=sqnr_db(weight, D), seconds=dt,
        output_error=output_error(weight, D, stats) if stats is not None else None)


def check_calibration(configs: list[CodecConfig], calibrated: bool, *, mixed: bool = False) -> None:
    """ValueError if a codec that requires calibration gets none, or calibration is given and no
    codec would use it (it would be silently ignored; a ``mixed`` allocation uses it for any codec)."""
    required = sorted({c.codec_name for c in configs if c.calibration == "required"})
    if not calibrated and required:
        raise ValueError(f"codec(s) {', '.join(required)} need calibration data: pass calibration= (texts, a file, "
                         "token ids or 'shakespeare'/'news') and tokenizer=")
    if calibrated and not mixed and all(c.calibration == "unused" for c in configs):
        names = sorted({c.codec_name for c in configs})
        raise ValueError(f"calibration was given but codec(s) {', '.join(names)} do not use it; drop it or pick a "
                         "data-aware codec (gptq, seedbasis)")


def check_mixed(config: CodecConfig, calibrated: bool) -> None:
    """ValueError unless a mixed allocation can run: calibration given, a codec with a ladder."""
    if not calibrated:
        raise ValueError("mixed allocation weighs each layer's error by its effect on the model's output on "
                         "calibration text: give calibration= (--calibration)")
    if len(config.ladder()) < 2:
        raise ValueError(f"codec {config.codec_name!r} has no ladder of configs to allocate bits from "
                         "(mixed allocation: seedbasis, rtn, hqq, gptq)")


def _refuse_save_pretrained(*_args, **_kwargs):
    raise ValueError("this model holds compressed layers (CompressedLinear): save_pretrained would write only its "
                     "dense tensors and from_pretrained would fill every compressed projection with random weights. "
                     "Save it with reality_stone.save(model, path) and load it with reality_stone.load(path).")


def guard_save_pretrained(model: nn.Module) -> None:
    """Make ``save_pretrained`` / ``push_to_hub`` on a model with compressed layers raise a clear error."""
    for attr in ("save_pretrained", "push_to_hub"):
        if hasattr(model, attr):
            setattr(model, attr, _refuse_save_pretrained)


def _model_vocab_size(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else None


def compress(
    model: nn.Module,
    config: CodecConfig,
    *,
    include: str = "*",
    skip: tuple[str, ...] = DEFAULT_SKIP,
    per_layer: dict[str, CodecConfig] | None = None,
    skip_tied: bool = True,
    progress: bool = False,
    calibration=None,
    tokenizer=None,
    tokens: int = 8192,
    seq_len: int = 512,
    sequential: bool = True,
    head: CodecConfig | None = None,
    tune_epochs: int = 0,
    mixed: bool = False,
) -> CompressionReport:
    """Replace the selected ``nn.Linear`` layers of ``model`` with `CompressedLinear`, in place.

    ``calibration`` (texts, a list of texts, a file path, token ids, or "shakespeare"/"news";
    see `reality_stone.calibration.calibration_ids`) with ``tokenizer`` for text: the first
    ``tokens`` tokens in sequences of ``seq_len`` give each layer its input statistics, which
    codecs declaring ``calibration != "unused"`` receive. ``sequential`` (default): block by
    block through the already-compressed blocks; False: one pass over the dense model.
    A codec with ``calibration == "required"`` (gptq) and no calibration → ValueError; calibration
    given while no selected codec uses it → ValueError (it would be silently ignored).

    ``tune_epochs`` (needs ``calibration``; 0 = off): after the layers are encoded, fit the norm
    gains and compressed-layer biases to the uncompressed model's next-token distributions on
    the calibration set for this many epochs (`reality_stone.calibration.tune_float_parameters`:
    the best epoch on held-out calibration sequences is kept; the codes do not change). Costs
    about 2.5 forward passes of the model per calibration sequence and epoch; the report's
    ``tuning`` entry says what it did.

    ``mixed`` (needs ``calibration``; a codec with a `ladder`: seedbasis, rtn, hqq, gptq): spread
    ``config``'s bits over the layers it applies to by their measured sensitivity — each gets a
    rung of ``config.ladder()``, the total stored bits at most the uniform config's
    (`reality_stone.models.allocation`; one extra pass with gradients over the calibration set
    and a sampled encode per layer). The report's ``allocation`` entry says what was chosen.

    ``head``: a config for the output head (``get_output_embeddings()``, an ``nn.Linear``), encoded
    data-free after the other layers (None: it stays dense, as selected by ``skip``). When it is
    tied to the input embeddings, the embedding becomes a `CompressedEmbedding` reading the same
    encoded matrix — one copy, in memory and in the file (`reality_stone.models.format`).
    """
    from reality_stone.calibration import (calibration_ids, collect_fisher, collect_stats, sequential_stats,
                                           teacher_outputs, tune_float_parameters)
    from reality_stone.models.allocation import allocate

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chosen, skipped = compressible_layers(model, include, skip, skip_tied)
    head_name = output_head_name(model, head, [name for name, _ in chosen])
    if not chosen:
        raise ValueError("no nn.Linear layer matched: nothing to compress (check include/skip patterns)")
    configs = {name: next((c for pat, c in (per_layer or {}).items() if fnmatch.fnmatchcase(name, pat)), config)
               for name, _ in chosen}
    check_calibration(list(configs.values()), calibration is not None, mixed=bool(mixed))
    if not (isinstance(tune_epochs, int) and not isinstance(tune_epochs, bool) and tune_epochs >= 0):
        raise ValueError(f"tune_epochs must be a non-negative integer, got {tune_epochs!r}")
    if tune_epochs and calibration is None:
        raise ValueError("tune_epochs fits the model to its uncompressed outputs on calibration text: give calibration=…")
    if not isinstance(mixed, bool):
        raise ValueError(f"mixed must be True or False, got {mixed!r}")
    allocated = [name for name in configs if configs[name] is config] if mixed else []
    if mixed:
        check_mixed(config, calibration is not None)
        if not allocated:
            raise ValueError("mixed=True, but per_layer gives every selected layer its own config: nothing to allocate")
    report = CompressionReport(skipped=skipped)
    layers = dict(chosen)  # popped as each is replaced: a replaced Linear's dense weight is freed at once
    names = list(layers)
    del chosen
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc="compressing", unit="layer")

    def encode(name: str, stats) -> None:
        lin = layers.pop(name)
        enc, row = encode_layer(name, lin.weight.detach(), configs[name], stats)
        report.layers.append(row)
        _set_submodule(model, name, CompressedLinear(enc, lin.bias))
        if bar is not None:
            bar.update(1)

    try:
        if calibration is None:
            for name in names:
                encode(name, None)
        else:
            t0 = time.perf_counter()
            ids = calibration_ids(calibration, tokenizer, tokens=tokens, seq_len=seq_len,
                                  vocab_size=_model_vocab_size(model))
            report.calibration = dict(mode="sequential" if sequential else "one-pass", tokens=int(ids.numel()),
                                      sequences=int(ids.shape[0]), seq_len=int(ids.shape[1]))
            teacher = teacher_outputs(model, ids) if tune_epochs else None  # before any layer changes
            dense_stats = None
            if mixed:
                t1 = time.perf_counter()
                dense_stats, fisher = collect_fisher(model, ids, names)
                alloc = allocate({n: layers[n].weight for n in allocated}, dense_stats, fisher, config)
                configs.update(alloc.configs)
                # seconds: the Fisher pass and the allocation
                report.calibration["allocation"] = alloc.summary() | dict(seconds=time.perf_counter() - t1)
                del fisher
            # every selected layer gets statistics (cheap; the report's output error uses them too)
            if sequential and any(c.calibration != "unused" for c in configs.values()):
                dense_stats = None  # freed: block k's statistics come from the compressed blocks before it
                steps = sequential_stats(model, ids, names)
            else:  # the Fisher pass collected the one-pass statistics already
                report.calibration["mode"] = "one-pass"  # (data-free codecs, mixed: the statistics only report)
                steps = iter([dense_stats or collect_stats(model, ids, names)])
            for block_stats in steps:
                for name in block_stats:
                    encode(name, block_stats[name])
            if teacher is not None:
                report.calibration["tuning"] = tune_float_parameters(model, ids, teacher, epochs=tune_epochs)
                del teacher
            report.calibration["seconds"] = time.perf_counter() - t0
    finally:
        if bar is not None:
            bar.close()
    if head_name is not None:
        _compress_head(model, head_name, head, report)
    guard_save_pretrained(model)
    return report


def output_head_name(model: nn.Module, head: CodecConfig | None, chosen: list[str]) -> str | None:
    """The module name of the output head ``head`` compresses (None without ``head``); ValueError
    for a config that needs calibration, a model without an ``nn.Linear`` head, or a head the
    include/skip selection already compresses."""
    if head is None:
        return None
    if not isinstance(head, CodecConfig):
        raise ValueError(f"head must be a codec config (codec_config(...)), got {type(head).__name__}")
    if head.calibration == "required":
        raise ValueError(f"the head is encoded data-free; codec {head.codec_name!r} needs calibration")
    get_head = getattr(model, "get_output_embeddings", None)
    module = get_head() if callable(get_head) else None
    if not isinstance(module, nn.Linear):
        raise ValueError("head= needs a model whose get_output_embeddings() is an nn.Linear "
                         f"(got {type(module).__name__})")
    name = next(n for n, m in model.named_modules() if m is module)
    if name in chosen:
        raise ValueError(f"{name!r} is selected by include/skip and by head=: give its config once")
    return name


def _compress_head(model: nn.Module, name: str, config: CodecConfig, report: CompressionReport) -> None:
    head = model.get_submodule(name)
    embed = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    tied = isinstance(embed, nn.Embedding) and embed.weight is head.weight
    enc, row = encode_layer(name, head.weight.detach(), config, None)
    report.layers.append(row)
    report.skipped = [n for n in report.skipped if n != name]
    _set_submodule(model, name, CompressedLinear(enc, head.bias))
    if tied:  # the embedding reads the compressed matrix: the dense one is dropped, not kept beside it
        embed_name = next(n for n, m in model.named_modules() if m is embed)
        _set_submodule(model, embed_name, CompressedEmbedding(enc, embed.padding_idx))
