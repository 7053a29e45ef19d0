"""Model-level quality and speed: perplexity, embedding fidelity, decode tokens/s, memory."""

from __future__ import annotations

import hashlib
import math
import re
import resource
import time

import torch
from torch import nn

from reality_stone.nn.compressed import CompressedLinear

__all__ = ["embedding_fidelity", "lee_sentences", "model_nbytes", "peak_rss_bytes", "perplexity", "score_text",
           "tokens_per_second"]


def _windows(n_ids: int, context: int, stride: int):
    """(begin, end, n_new) of the sliding windows: each token is scored once, with up to
    ``context - stride`` tokens of left context beyond the first window."""
    prev_end = 0
    for begin in range(0, n_ids, stride):
        end = min(begin + context, n_ids)
        yield begin, end, end - prev_end
        prev_end = end
        if end == n_ids:
            break


def _logits(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    out = model(window)
    return (out.logits if hasattr(out, "logits") else out[0])[0].float()


@torch.no_grad()
def score_text(model: nn.Module, tokenizer, text: str, *, base: nn.Module | None = None, context: int = 512,
               stride: int = 256, max_tokens: int | None = 8192, base_cache: dict | None = None) -> dict:
    """Sliding-window perplexity of ``text`` (first ``max_tokens`` tokens) under ``model``.

    With ``base`` (the uncompressed model) in the same windows: its perplexity, the mean KL
    divergence KL(base ‖ model) of the next-token distributions (nats/token, llama.cpp's
    ``--kl-divergence``) and top-1 agreement (fraction of positions where both models'
    most likely next token is the same). Returns dict(ppl, tokens, [base_ppl, kl, top1]).

    ``base_cache``: a dict the caller keeps for one ``base`` model; the base's log-probabilities
    of each window are stored there (fp32, (new tokens, vocab) per window) and reused when
    several compressed models are scored against the same base and text — half the forward
    passes, for memory: about 2.5 GB per 4k-token text at a 152k vocabulary.
    """
    if not 0 < stride <= context:
        raise ValueError(f"need 0 < stride <= context, got stride={stride}, context={context}")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"text is too short to score ({len(ids)} token)")
    nll = base_nll = kl = 0.0
    agree = counted = 0
    text_key = (hashlib.sha256(ids.numpy().tobytes()).hexdigest(), context, stride)
    for begin, end, n_new in _windows(len(ids), context, stride):
        window = ids[begin:end][None]
        # positions predicting the new tokens (the first token of the text has no prediction)
        first = max(window.shape[1] - n_new, 1) - 1
        targets = window[0, first + 1 :]
        if not len(targets):
            continue
        logp = torch.log_softmax(_logits(model, window)[first:-1], -1)
        nll -= float(logp.gather(1, targets[:, None]).sum())
        if base is not None:
            key = (text_key, begin, end)
            logq = None if base_cache is None else base_cache.get(key)
            if logq is None:
                logq = torch.log_softmax(_logits(base, window)[first:-1], -1)
                if base_cache is not None:
                    base_cache[key] = logq
            base_nll -= float(logq.gather(1, targets[:, None]).sum())
            kl += float((logq.exp() * (logq - logp)).sum())
            agree += int((logq.argmax(-1) == logp.argmax(-1)).sum())
        counted += len(targets)
    out = dict(ppl=math.exp(nll / counted), tokens=counted)
    if base is not None:
        out.update(base_ppl=math.exp(base_nll / counted), kl=kl / counted, top1=agree / counted)
    return out


def perplexity(model: nn.Module, tokenizer, text: str, *, context: int = 512, stride: int = 256,
               max_tokens: int | None = 8192) -> tuple[float, int]:
    """(perplexity, tokens scored) of ``text``: `score_text` without a base model."""
    r = score_text(model, tokenizer, text, context=context, stride=stride, max_tokens=max_tokens)
    return r["ppl"], r["tokens"]


def lee_sentences(n: int = 64, min_chars: int = 40) -> list[str]:
    """The first ``n`` sentences of ≥ ``min_chars`` characters from the Lee news corpus."""
    from reality_stone.data.text import lee_background

    out = []
    for doc in lee_background().splitlines():
        for s in re.split(r"(?<=[.!?])\s+", doc.strip()):
            if len(s) >= min_chars:
                out.append(s)
                if len(out) == n:
                    return out
    return out


@torch.no_grad()
def _embed(model: nn.Module, tokenizer, sentences: list[str]) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # sentence-transformers mean pooling


def embedding_fidelity(reference: nn.Module, compressed: nn.Module, tokenizer, sentences: list[str]) -> dict:
    """Cosine similarity of mean-pooled embeddings (compressed vs reference, per sentence) and
    the Spearman correlation of the two models' pairwise sentence similarities."""
    from scipy.stats import spearmanr

    a = _embed(reference, tokenizer, sentences)
    b = _embed(compressed, tokenizer, sentences)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    na, nb = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    iu = torch.triu_indices(len(sentences), len(sentences), 1)
    sa, sb = (na @ na.T)[iu[0], iu[1]], (nb @ nb.T)[iu[0], iu[1]]
    return dict(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                spearman=float(spearmanr(sa.numpy(), sb.numpy()).statistic))


@torch.no_grad()
def tokens_per_second(model: nn.Module, tokenizer, *, new_tokens: int = 32, prompt: str = "The king said") -> float:
    """Greedy decoding speed at batch 1 (KV cache on), after one warm-up step."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)


def model_nbytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy: dense parameters/buffers (counted once) + compressed layers."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total + sum(m.encoded.nbytes for m in model.modules() if isinstance(m, CompressedLinear))


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes.

    Linux: ``VmHWM`` of /proc/self/status — the high-water mark of this program's own address
    space. Not ``ru_maxrss``: the kernel carries that across fork + exec, so a child started by
    a large parent reports at least the parent's peak (measured: every file "peaked" at the
    benchmark parent's 2.6 GB). Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
