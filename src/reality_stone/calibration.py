"""Activation statistics for data-aware codecs — the only place that runs a model over calibration text.

A data-aware codec (``gptq``, ``seedbasis``) minimises the error of a layer's *output*
``x Wᵀ`` instead of its weight: for inputs with second moment H = E[x xᵀ] the expected
squared output error of ``W − Ŵ`` is tr(ΔW H ΔWᵀ). `ActivationStats` carries H for one
``nn.Linear`` (in × in, float64) and the number of tokens behind it; codecs receive it as
``encode(weight, stats)``.

Two ways to collect it, as GPTQModel / llm-compressor do:

* **one pass** (`collect_stats`): the dense model runs over the calibration set once, with a
  hook on every selected layer.
* **sequential** (`sequential_stats`): the model is walked decoder block by decoder block;
  block k's statistics come from the outputs of blocks 0 … k−1 *after* they were compressed,
  so each block corrects for the error of the ones before it. The caller compresses a
  block's layers between two steps of the generator.

Calibration input (`calibration_ids`): a text, a list of texts, a text file, token ids, or
one of the bundled corpora ``"shakespeare"`` (The Tempest, The Comedy of Errors, Paradise
Lost — never evaluated on) and ``"news"`` (the second half of the Lee corpus; evaluation
reads only its beginning). The first ``tokens`` tokens are cut into ``seq_len`` sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "ActivationStats",
    "BUNDLED_CORPORA",
    "calibration_ids",
    "collect_fisher",
    "collect_stats",
    "decoder_blocks",
    "hessian_of",
    "output_error",
    "sequential_stats",
    "teacher_outputs",
    "tunable_parameters",
    "tune_float_parameters",
]

BUNDLED_CORPORA = ("shakespeare", "news")


@dataclass(frozen=True)
class ActivationStats:
    """Input statistics of one ``nn.Linear``: ``xtx`` = E[x xᵀ] (in, in) float64 over ``tokens`` tokens."""

    xtx: Tensor
    tokens: int

    def __post_init__(self):
        if not isinstance(self.xtx, Tensor) or self.xtx.dim() != 2 or self.xtx.shape[0] != self.xtx.shape[1]:
            shape = tuple(self.xtx.shape) if isinstance(self.xtx, Tensor) else type(self.xtx).__name__
            raise ValueError(f"ActivationStats.xtx must be a square (in, in) matrix, got {shape}")
        if not (isinstance(self.tokens, int) and self.tokens > 0):
            raise ValueError(f"ActivationStats.tokens must be a positive integer, got {self.tokens!r}")
        if not bool(torch.isfinite(self.xtx).all()):
            raise ValueError("ActivationStats.xtx contains NaN or Inf (the calibration run overflowed)")

    @property
    def in_features(self) -> int:
        return self.xtx.shape[0]



def hessian_of(stats, in_features: int) -> Tensor:
    """H = E[x xᵀ] (float64) of ``stats`` for a layer with ``in_features`` inputs — the codecs' entry."""
    if not isinstance(stats, ActivationStats):
        raise ValueError(f"stats must be reality_stone.calibration.ActivationStats, got {type(stats).__name__}")
    if stats.in_features != in_features:
        raise ValueError(f"activation statistics are for {stats.in_features} inputs, the weight has {in_features}")
    return stats.xtx.double()


def output_error(weight: Tensor, approx: Tensor, stats: ActivationStats | Tensor) -> float:
    """Relative output error sqrt(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)) for inputs with second moment H."""
    H = stats.xtx if isinstance(stats, ActivationStats) else stats
    W, D, H = weight.double(), (weight - approx).double(), H.double()
    return float(((D @ H) * D).sum().clamp_min(0).sqrt() / ((W @ H) * W).sum().sqrt())


# ----------------------------------------------------------------------------- input


def _bundled_text(name: str) -> str:
    from reality_stone.data.text import calibration_text, lee_background

    if name == "shakespeare":
        return calibration_text()
    docs = lee_background().splitlines()
    # evaluation scores a prefix of the corpus (≤ 8192 tokens ≈ its first 60 documents):
    # calibration takes the second half, so the two never meet
    return "\n".join(docs[len(docs) // 2 :])


def _as_text(calibration) -> tuple[str, str]:
    """(text, description) of a text-like calibration argument."""
    if isinstance(calibration, Path):
        if not calibration.is_file():
            raise ValueError(f"calibration file {calibration} does not exist")
        return calibration.read_text(encoding="utf-8", errors="replace"), f"file {calibration}"
    if isinstance(calibration, str):
        if calibration in BUNDLED_CORPORA:
            return _bundled_text(calibration), f"bundled corpus {calibration!r}"
        if "\n" not in calibration and len(calibration) < 4096 and Path(calibration).is_file():
            return Path(calibration).read_text(encoding="utf-8", errors="replace"), f"file {calibration}"
        return calibration, "the given text (not a bundled corpus name nor an existing file)"
    if isinstance(calibration, Sequence) and calibration and all(isinstance(t, str) for t in calibration):
        return "\n\n".join(calibration), f"{len(calibration)} texts"
    raise ValueError("calibration must be a text, a list of texts, a file path, token ids or one of "
                     f"{BUNDLED_CORPORA}; got {type(calibration).__name__}")


def calibration_ids(calibration, tokenizer=None, *, tokens: int = 8192, seq_len: int = 512,
                    vocab_size: int | None = None) -> Tensor:
    """The calibration set as token ids (n_sequences, seq_len), int64.

    ``calibration``: text, list of texts, ``Path``/existing file name, a bundled corpus name
    (`BUNDLED_CORPORA`), or token ids (1-D int tensor / list of ints, or 2-D (n, L): taken as
    n sequences of L tokens, ``seq_len`` ignored). The first
    ``tokens`` tokens are kept and cut into ``tokens // seq_len`` sequences. ``vocab_size``
    (the model's) rejects ids the model cannot embed — a tokenizer that does not match it.
    """
    if not (isinstance(tokens, int) and isinstance(seq_len, int)) or seq_len < 1 or tokens < seq_len:
        raise ValueError(f"need integers tokens >= seq_len >= 1, got tokens={tokens!r}, seq_len={seq_len!r}")
    if isinstance(calibration, Tensor) or (isinstance(calibration, (list, tuple)) and calibration
                                           and all(isinstance(t, int) for t in calibration)):
        ids = torch.as_tensor(calibration)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() not in (1, 2):
            raise ValueError(f"calibration token ids must be a 1-D or 2-D integer tensor, got {ids.dtype} "
                             f"with shape {tuple(ids.shape)}")
        if ids.dim() == 2:  # (n, L): already cut into sequences; keep them as they are
            seq_len = ids.shape[1]
            tokens = max(tokens, seq_len)
        ids, what = ids.reshape(-1).to(torch.int64), "the given token ids"
    else:
        text, what = _as_text(calibration)
        if tokenizer is None:
            raise ValueError(f"calibration from {what} needs a tokenizer (tokenizer=…)")
        ids = torch.as_tensor(tokenizer(text, return_tensors="pt").input_ids[0], dtype=torch.int64)
    if len(ids) < seq_len:
        raise ValueError(f"calibration from {what} has {len(ids)} tokens, fewer than seq_len={seq_len}: "
                         "give more text or a smaller seq_len")
    if bool((ids < 0).any()) or (vocab_size is not None and int(ids.max()) >= vocab_size):
        raise ValueError(f"calibration token ids reach {int(ids.max())} (min {int(ids.min())}) but the model embeds "
                         f"ids 0…{(vocab_size or 0) - 1}: the tokenizer does not match the model")
    n = min(len(ids), tokens) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


# ----------------------------------------------------------------------------- collection


class _LastInput:
    """The last layer input seen in a pass and its x xᵀ: sibling projections (q/k/v, gate/up) are
    handed the same tensor, so its product is computed once (as costly as the block's matmuls)."""

    def __init__(self):
        self.x: Tensor | None = None
        self.version = -1
        self.xtx: Tensor | None = None


class _Accumulator:
    """Sum of x xᵀ and the token count of one layer's inputs, fed by a forward pre-hook."""

    def __init__(self, last: _LastInput | None = None):
        self.sum: Tensor | None = None
        self.count = 0
        self._stats: ActivationStats | None = None
        self._last = last

    def __call__(self, _module, inputs):
        x0, last = inputs[0], self._last
        hit = last is not None and last.x is x0 and last.version == x0._version
        if hit:
            xtx = last.xtx
        else:
            x = x0.detach().reshape(-1, x0.shape[-1]).float()
            xtx = (x.T @ x).double()  # float32 product (fast), float64 sum over sequences
            if last is not None:
                last.x, last.version, last.xtx = x0, x0._version, xtx
        if self.sum is None:
            # a product from a sibling is shared: copy it; one computed here is ours to keep
            # (siblings that take it copy it, and the next miss replaces `last` before we add)
            self.sum = xtx.clone() if hit else xtx
        elif self.sum is xtx:  # this layer ran twice on the same input: keep `last`'s product intact
            self.sum = self.sum * 2
        else:  # in place: an (in, in) float64 matrix is 254 MB at in = 5632
            self.sum += xtx
        self.count += x0.numel() // x0.shape[-1]

    def stats(self, name: str) -> ActivationStats:
        """The mean (the sum is divided in place and handed over: no second copy)."""
        if self._stats is None:
            if self.sum is None:
                raise ValueError(f"layer {name!r} never ran on the calibration set (is it used by forward()?)")
            self._stats = ActivationStats(self.sum.div_(self.count), self.count)
            self.sum = None
            self._last = None
        return self._stats


def _hooked(model: nn.Module, layers: Sequence[str]):
    last = _LastInput()
    acc = {name: _Accumulator(last) for name in layers}
    handles = [model.get_submodule(name).register_forward_pre_hook(acc[name]) for name in layers]
    return acc, handles


@torch.no_grad()
def collect_stats(model: nn.Module, ids: Tensor, layers: Sequence[str]) -> dict[str, ActivationStats]:
    """One pass: E[x xᵀ] of each named layer's inputs with ``model`` run on every row of ``ids``."""
    from reality_stone.nn.compressed import decoded_weights

    acc, handles = _hooked(model, layers)
    try:
        with decoded_weights(model):  # already-compressed layers (sequential mode's last step): decode once
            for row in ids:
                _run(model, row)
    finally:
        for h in handles:
            h.remove()
    return {name: acc[name].stats(name) for name in layers}


def collect_fisher(model: nn.Module, ids: Tensor, layers: Sequence[str], *, seed: int = 0,
                   ) -> tuple[dict[str, ActivationStats], dict[str, Tensor]]:
    """One pass with gradients over every row of ``ids`` (n, seq_len): each named layer's input
    statistics (as `collect_stats`) and the diagonal Fisher information of its outputs, F (out,)
    float64 = Σ over tokens of (∂ log p(y) / ∂ output)², with y drawn from the model's own
    next-token distribution (seeded by ``seed``).

    F is the curvature of the KL divergence to the model at its outputs — the quantity a
    compression error should be weighed with: an output error δ of the layer costs about
    ½ Σ_r F_r δ_r² / tokens nats. That holds for labels drawn from the model itself; the text's
    own next tokens would give the "empirical Fisher", which is not the KL's curvature.
    The model's parameters get no gradients; the input embedding's output is the leaf.
    """
    embed = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    if not isinstance(embed, nn.Module):
        raise ValueError(f"the Fisher pass needs a model with get_input_embeddings(), {type(model).__name__} has none")
    head = _head(model)
    acc, handles = _hooked(model, layers)
    fisher = {name: torch.zeros(model.get_submodule(name).weight.shape[0], dtype=torch.float64) for name in layers}
    logits: list[Tensor] = []

    def on_output(name: str):
        def hook(_module, _inputs, out):
            def grad(g):
                fisher[name].add_(g.detach().reshape(-1, g.shape[-1]).double().square().sum(0))
            if out.requires_grad:
                out.register_hook(grad)
        return hook

    handles += [model.get_submodule(name).register_forward_hook(on_output(name)) for name in layers]
    handles.append(embed.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True)))
    handles.append(head.register_forward_hook(lambda _m, _i, out: logits.append(out)))
    flags = {id(p): p.requires_grad for p in model.parameters()}
    gen = torch.Generator().manual_seed(seed)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            for row in ids:
                logits.clear()
                _run(model, row)
                lp = torch.log_softmax(logits[-1].reshape(-1, logits[-1].shape[-1]).float(), -1)
                y = torch.multinomial(lp.detach().exp(), 1, generator=gen)
                (-lp.gather(1, y).sum()).backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), False))
    for name, f in fisher.items():
        if not bool(f.any()):
            raise ValueError(f"layer {name!r} got no gradient in the Fisher pass (is its output used?)")
    return {name: acc[name].stats(name) for name in layers}, fisher


def _run(model: nn.Module, row: Tensor) -> None:
    """The model on one calibration sequence; transformers models without a KV cache (nothing reuses it)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        model(row[None], use_cache=False)
    else:
        model(row[None])


def decoder_blocks(model: nn.Module, layers: Sequence[str]) -> tuple[str, nn.ModuleList] | None:
    """(name, blocks) of the ``nn.ModuleList`` of repeated blocks holding most of ``layers``
    (``model.layers`` of a Llama/Qwen2/Gemma, ``encoder.layer`` of a BERT), or None."""
    best, best_n = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2:
            prefix = f"{name}." if name else ""
            n = sum(1 for layer in layers if layer.startswith(prefix))
            if n > best_n:
                best, best_n = (name, mod), n
    return best


class _Captured(Exception):
    """Raised once the blocks' inputs are recorded (the rest of the model is not run)."""


BlockCall = tuple[tuple, dict]  # (args, kwargs) of one call of a decoder block


def block_calls(blocks: nn.ModuleList, run: Callable[[], object]) -> list[BlockCall]:
    """(args, kwargs) of every block's call in the forward pass ``run()`` makes, without running
    the blocks: each returns its hidden-state input unchanged and the pass stops after the last.

    Each block's own call matters: families with per-layer attention types (Gemma 2/3's
    sliding and global layers, Qwen's ``layer_types``) give each block its own mask and rotary
    tables, so block 0's keyword arguments replayed for every block would be wrong.
    """
    calls: list[BlockCall] = []
    saved = [b.__dict__.get("forward") for b in blocks]  # a hook library may have set one

    def recorder(k: int):
        def forward(*args, **kwargs):
            calls.append((args, kwargs))
            if k == len(blocks) - 1:
                raise _Captured
            return args[0] if args else kwargs["hidden_states"]
        return forward

    for k, b in enumerate(blocks):
        b.forward = recorder(k)
    try:
        run()
    except _Captured:
        pass
    finally:
        for b, f in zip(blocks, saved):
            if f is None:
                del b.forward
            else:
                b.forward = f
    if len(calls) != len(blocks):
        raise ValueError(f"the model called {len(calls)} of its {len(blocks)} decoder blocks on the calibration input")
    return calls


def call_block(block: nn.Module, call: BlockCall, hidden: Tensor) -> Tensor:
    """``block``'s hidden-state output for input ``hidden``, with the other arguments of its recorded ``call``."""
    args, kwargs = call
    out = block(hidden, *args[1:], **kwargs) if args else block(*args, **(kwargs | {"hidden_states": hidden}))
    return out[0] if isinstance(out, tuple) else out


def block_input(call: BlockCall) -> Tensor:
    """The hidden states a recorded block call received."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def sequential_stats(model: nn.Module, ids: Tensor, layers: Sequence[str]) -> Iterator[dict[str, ActivationStats]]:
    """Block-by-block statistics: yields the stats of each decoder block's selected layers in order.

    Between two steps the caller replaces that block's layers (with compressed ones); the
    generator then runs the *modified* block to produce the next block's inputs. Layers
    outside the blocks (e.g. an untied ``lm_head``) are yielded last, from one pass of the
    whole, by then compressed, model. Without decoder blocks this is one `collect_stats`.
    Hidden states are kept in memory: n_sequences × seq_len × hidden floats.
    """
    found = decoder_blocks(model, layers)
    if found is None:
        yield collect_stats(model, ids, layers)
        return
    prefix, blocks = found
    prefix = f"{prefix}." if prefix else ""
    # per sequence: every block's recorded call (its own mask / rotary tables) and block 0's input
    calls = [block_calls(blocks, lambda row=row: _run(model, row)) for row in ids]
    hidden = [block_input(c[0]) for c in calls]
    last = max((k for k in range(len(blocks)) if any(n.startswith(f"{prefix}{k}.") for n in layers)), default=-1)
    for k, block in enumerate(blocks[: last + 1]):  # blocks past the last selected layer need no inputs
        names = [n for n in layers if n.startswith(f"{prefix}{k}.")]
        if names:
            acc, handles = _hooked(model, names)
            try:
                for c, h in zip(calls, hidden):
                    call_block(block, c[k], h)
            finally:
                for hd in handles:
                    hd.remove()
            yield {name: acc[name].stats(name) for name in names}
        if k < last:  # the (now compressed) block's outputs are the next block's inputs
            from reality_stone.nn.compressed import decoded_weights

            # each compressed weight decoded once for all sequences: the reference path, which
            # the fused kernels are tested against, and fast at 512-token batches
            with decoded_weights(block):
                hidden = [call_block(block, c[k], h) for c, h in zip(calls, hidden)]
    rest = [n for n in layers if not n.startswith(prefix)]
    if rest:
        yield collect_stats(model, ids, rest)


# ----------------------------------------------------------------------------- tuning


def tunable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The float parameters `tune_float_parameters` may change: weights and biases of the
    normalisation layers (any module whose class name contains "Norm": RMSNorm, LayerNorm, …)
    and the biases of compressed layers — the model's remaining continuous degrees of freedom
    once its weights sit on a codec's grid."""
    from reality_stone.nn.compressed import CompressedLinear

    out: dict[int, tuple[str, nn.Parameter]] = {}
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if "norm" in type(mod).__name__.lower():
            for pname, p in mod.named_parameters(recurse=False):
                out.setdefault(id(p), (prefix + pname, p))
        elif isinstance(mod, CompressedLinear) and mod.bias is not None:
            out.setdefault(id(mod.bias), (f"{prefix}bias", mod.bias))
    return list(out.values())


def _head(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise ValueError("tuning distils the model's next-token distributions: it needs a causal LM with an output "
                         f"head (get_output_embeddings()), and {type(model).__name__} has none")
    return head


def _head_input(model: nn.Module, head: nn.Module, row: Tensor) -> Tensor:
    """(seq_len, hidden) input of the output head for one sequence; the head itself is not run."""
    got: list[Tensor] = []

    def hook(_module, inputs):
        got.append(inputs[0])
        raise _Captured

    handle = head.register_forward_pre_hook(hook)
    try:
        _run(model, row)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not got:
        raise ValueError("the model's forward pass never called its output head")
    return got[0].reshape(-1, got[0].shape[-1])


@dataclass
class Teacher:
    """The uncompressed model's next-token distributions on the calibration set, kept as the
    output head's inputs (n × seq_len × hidden floats) and the head's dense weight — the logits
    are recomputed from them, so no (tokens × vocab) table is held."""

    hidden: list[Tensor]
    weight: Tensor
    bias: Tensor | None

    def log_probs(self, i: int) -> Tensor:
        return torch.log_softmax(torch.nn.functional.linear(self.hidden[i], self.weight, self.bias).float(), -1)


def _heldout_split(ids: Tensor) -> tuple[range, range]:
    """(training rows, held-out rows) of ``ids`` (n, seq_len): the last ⌈n/8⌉ are held out."""
    if len(ids) < 2:
        raise ValueError(f"tuning holds calibration sequences out: it needs at least 2 sequences of {ids.shape[-1]} "
                         f"tokens, the calibration set has {len(ids)} (give more tokens or a smaller seq_len)")
    n_val = -(-len(ids) // 8)
    return range(len(ids) - n_val), range(len(ids) - n_val, len(ids))


@torch.no_grad()
def teacher_outputs(model: nn.Module, ids: Tensor) -> Teacher:
    """`Teacher` of ``model`` (still uncompressed) on every row of ``ids`` (n, seq_len); refuses a
    calibration set too small to hold sequences out of (before any expensive work)."""
    _heldout_split(ids)
    head = _head(model)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"tuning needs a dense nn.Linear output head to take the teacher from, got {type(head).__name__}")
    return Teacher([_head_input(model, head, row).detach() for row in ids], head.weight.detach(),
                   None if head.bias is None else head.bias.detach())


def tune_float_parameters(model: nn.Module, ids: Tensor, teacher: Teacher, *, epochs: int, lr: float = 5e-3,
                          seed: int = 0) -> dict:
    """Fit the compressed ``model``'s `tunable_parameters` to the uncompressed model's next-token
    distributions on the calibration set: mean KL(teacher ‖ model) per token, Adam, one sequence
    per step, ``epochs`` passes.

    Norm tweaking (Li et al. 2023) with the whole model's output as the target: the codes stay
    as encoded, the gains and biases around them absorb part of their error. The last ⌈n/8⌉
    sequences are held out; the parameters kept are those with the lowest held-out KL (the
    untouched ones if no epoch improves it); an epoch that does not lower it is undone and the
    step halved for the next. Each tensor's step is ``lr`` × its RMS (gains near 0.04 and near 2
    move by the same fraction). Deterministic under ``seed``. Returns a summary: epochs run,
    held-out KL before and after each epoch, the epoch kept (0: none), each epoch's ``lr``,
    parameter count, seconds.
    """
    import time

    from reality_stone.nn.compressed import decoded_weights

    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    train, val = _heldout_split(ids)
    params = tunable_parameters(model)
    if not params:
        raise ValueError("the model has no normalisation layers nor compressed-layer biases to tune")
    t0 = time.perf_counter()
    head = _head(model)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    training = model.training
    model.eval()  # no dropout: the held-out KL must be the model's own
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    rates = [lr * max(float(p.detach().pow(2).mean().sqrt()), 1e-3) for _, p in params]

    def adam(scale: float) -> torch.optim.Adam:
        return torch.optim.Adam([dict(params=[p], lr=r * scale) for (_, p), r in zip(params, rates)])

    scale = 1.0
    opt = adam(scale)
    gen = torch.Generator().manual_seed(seed)

    def kl(i: int) -> Tensor:
        s = torch.log_softmax(head(_head_input(model, head, ids[i])).float(), -1)
        t = teacher.log_probs(i)
        return (t.exp() * (t - s)).sum(-1).mean()

    def held_out() -> float:
        with torch.no_grad():
            return sum(float(kl(i)) for i in val) / len(val)

    saved: list[Tensor] | None = None
    try:
        # (callers such as the CLI run under no_grad; decoded weights: each decoded once for all steps)
        with torch.enable_grad(), decoded_weights(model):
            best = held_out()
            history, steps, kept = [best], [], 0
            saved = [p.detach().clone() for _, p in params]
            for epoch in range(1, epochs + 1):
                steps.append(scale * lr)
                for j in torch.randperm(len(train), generator=gen).tolist():
                    loss = kl(train[j])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                history.append(held_out())
                if history[-1] < best:
                    best, kept = history[-1], epoch
                    saved = [p.detach().clone() for _, p in params]
                else:  # overshot: back to the best parameters, half the step, fresh moments
                    with torch.no_grad():
                        for (_, p), b in zip(params, saved):
                            p.copy_(b)
                    scale /= 2
                    opt = adam(scale)
    finally:
        with torch.no_grad():  # the best parameters seen (also when interrupted)
            for (_, p), s in zip(params, saved or []):
                p.copy_(s)
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), False))
        model.train(training)
    return dict(epochs=len(history) - 1, heldout_kl=history, kept_epoch=kept, epoch_lr=steps,
                heldout_sequences=len(val), parameters=sum(p.numel() for _, p in params),
                seconds=time.perf_counter() - t0)
