"""Batch-1 generation from a (compressed) Llama-family causal LM, without transformers' per-layer overhead.

    dec = Decoder(model)                                  # model: llama / mistral / qwen2 / qwen3
    ids = dec.generate(prompt_ids, max_new_tokens=64)     # (1, T + 64) token ids, greedy

At batch 1 a decode step of a small model is mostly overhead, not arithmetic: on SmolLM2-135M
transformers' ``generate`` spends about half of each token outside the weight kernels (module
calls, cache bookkeeping, masks, per-call padding). `Decoder` runs the same computation as the
model's own forward pass — the model's modules and weights, its rotary tables — in one lean loop:

* the projections that read one input run as one kernel call where the codec allows: q/k/v and
  gate/up of group-affine weights (rtn, hqq, gptq) are stacked into one layout
  (`GroupAffineEncoded.stack_layouts`; the weights are then held once, in the stacked layout), and
  the input is padded once for all of them; other layers (dense, seed basis, …) are called as
  they are;
* a static KV cache per call (allocated for the prompt plus the new tokens), attention of one
  query as two small matmuls, grouped-query heads without copying the cache;
* the rotary cos/sin tables come from the model's own ``rotary_emb`` (so every RoPE scaling type
  the model supports is reproduced), computed once per call;
* where every projection has a fused layout the C++ step reads — group-affine (group a multiple
  of 64; int8 activations need AVX-512 VNNI) or seed basis (fp32 activations, or int8 with AVX-512
  VNNI + VBMI and ≤ 4 coefficients), mixed freely —
  each single-token step is one C++ call through all blocks (`kernels/decode_step_cpu.cpp`,
  ``native``); there, seed-basis q/k/v and gate/up of one configuration share one kernel call
  (x's sign-sum tables built once). The prefill, embedding, final norm and head stay in torch.

The logits are those of the model's forward pass up to float32 rounding (tests compare both on
random models of each family, dense and compressed). Sliding-window layers are refused when the
sequence is longer than their window; other families raise ValueError naming what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Decoder", "SUPPORTED_FAMILIES"]

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class _Projection:
    """Linear layers that read the same input, run as one call: (T, in) -> (T, Σ out)."""

    def __init__(self, layers: list[nn.Module]):
        from reality_stone.codecs.group_affine import GroupAffineEncoded
        from reality_stone.nn import CompressedLinear

        self.layers = layers
        self.layout = None
        encs = [m.encoded for m in layers if isinstance(m, CompressedLinear)]
        if (len(encs) == len(layers) and all(isinstance(e, GroupAffineEncoded) for e in encs)
                and len({m.activations for m in layers}) == 1):
            try:
                self.layout = GroupAffineEncoded.stack_layouts(encs) if len(encs) > 1 else encs[0].kernel_layout()
            except ValueError:  # mixed codecs or groups: each layer on its own
                self.layout = None
        if self.layout is not None:
            packed, bits = self.layout[0], self.layout[5]
            self.in_features = layers[0].in_features
            self.padded_in = packed.shape[1] * 8 // bits
            self.int8 = layers[0].activations == "int8"
            biases = [m.bias for m in layers]
            self.bias = None if all(b is None for b in biases) else torch.cat(
                [b.detach() if b is not None else torch.zeros(m.out_features) for b, m in zip(biases, layers)])

    def __call__(self, x: Tensor) -> Tensor:
        if self.layout is None:
            outs = [F.linear(x, m.weight, m.bias) if type(m) is nn.Linear else m(x) for m in self.layers]
            return outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        from reality_stone.kernels.int_lowbit_ops import lowbit_matmul

        if self.padded_in != self.in_features:
            x = F.pad(x, (0, self.padded_in - self.in_features))
        y = lowbit_matmul(x, *self.layout, int8_activations=self.int8)
        return y if self.bias is None else y + self.bias


@dataclass
class _Block:
    norm1: nn.Module
    qkv: _Projection
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    o: _Projection
    norm2: nn.Module
    gate_up: _Projection
    act: nn.Module
    down: _Projection
    sliding_window: int | None


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    # the model's RMSNorm as one fused op (six eager ops in transformers; its float32 upcast is a
    # no-op here: the decoder computes in float32)
    return F.rms_norm(x, norm.weight.shape, norm.weight, _eps(norm))


def _native_parts(proj: _Projection, ext, tables: dict) -> list[tuple[list[Tensor], list[int]]] | None:
    """A projection as the decode step's slots (4 tensors, 6 ints each; see decode_step_cpu.cpp):
    its stacked group-affine layout as one slot, or each layer's own fused layout (group-affine or
    seed basis); None if some layer has none the step reads. ``tables``: the seed-basis pattern
    tables built so far, shared by the layers of one configuration."""
    from reality_stone.codecs.group_affine import GroupAffineEncoded
    from reality_stone.codecs.seedbasis import SeedBasisEncoded
    from reality_stone.kernels.int_lowbit import CHUNK
    from reality_stone.nn import CompressedLinear

    none = torch.empty(0)

    def group_affine(layout, bias: Tensor | None, int8: bool):
        if layout is None or layout[4] % CHUNK or (int8 and not ext.has_avx512_vnni()):
            return None
        return [*layout[:3], none if bias is None else bias.detach().float().contiguous()], \
            [1, int(layout[3]), int(layout[4]), int(layout[5]), int(int8), 0]

    if proj.layout is not None:
        part = group_affine(proj.layout, proj.bias, proj.int8)
        return None if part is None else [part]
    parts = []
    for m in proj.layers:
        enc = m.encoded if isinstance(m, CompressedLinear) else None
        bias = None if enc is None or m.bias is None else m.bias.detach().float().contiguous()
        if isinstance(enc, GroupAffineEncoded):
            part = group_affine(enc.kernel_layout(), bias, m.activations == "int8")
        elif isinstance(enc, SeedBasisEncoded) and enc.kernel_layout() is not None:
            lay = enc.kernel_layout()
            S, E, Q, P = lay.seed_bits, lay.exp_bits, lay.coeff_bits, int(lay.pattern.shape[1])
            int8 = m.activations == "int8"
            if int8 and not ext.seedbasis_a8_supported(S, E, P, Q):
                return None
            key = (lay.pattern.data_ptr(), tuple(lay.pattern.shape), int8)
            if key not in tables:  # int8: the ids as uint8 [2^S, 4]
                tables[key] = (torch.nn.functional.pad(lay.pattern, (0, 4 - P)).contiguous() if int8
                               else ext.seedbasis_gemv_table(lay.pattern))
            scale = torch.exp2(lay.row_exp.to(torch.float32)).contiguous()
            part = [lay.records, tables[key], scale, none if bias is None else bias], \
                [3 if int8 else 2, S, E, Q, P, lay.rows]
        else:
            part = None
        if part is None:
            return None
        parts.append(part)
    return parts


class Decoder:
    """Greedy or sampled batch-1 generation for a Llama-family causal LM (see the module docstring).

    model: a transformers ``*ForCausalLM`` of a family in `SUPPORTED_FAMILIES`, float32, dense or
    compressed in place by `reality_stone.compress`. The decoder holds the model's modules (no
    copy of any weight); build it after compressing and setting activations."""

    def __init__(self, model: nn.Module, *, native: bool = True):
        cfg = getattr(model, "config", None)
        family = getattr(cfg, "model_type", None)
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(f"Decoder runs {', '.join(SUPPORTED_FAMILIES)} models, got {family!r}; "
                             "use model.generate for others")
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"Decoder expects a SiLU-gated MLP, the model uses {cfg.hidden_act!r}")
        inner = model.model
        # (a CompressedEmbedding — a compressed tied head's matrix — decodes rows to float32)
        dtype = inner.embed_tokens.weight.dtype if isinstance(inner.embed_tokens, nn.Embedding) else torch.float32
        if dtype != torch.float32:
            raise ValueError(f"Decoder computes in float32; the model is {dtype} "
                             "(load it with dtype=torch.float32)")
        self.model, self.embed, self.final_norm, self.head = model, inner.embed_tokens, inner.norm, model.lm_head
        self.rotary = inner.rotary_emb
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scaling = self.head_dim ** -0.5
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        # Mistral has no layer types: its window, when set, applies to every layer
        layer_types = getattr(cfg, "layer_types", None) or \
            ["sliding_attention" if window else "full_attention"] * len(inner.layers)
        self.blocks = []
        for layer, kind in zip(inner.layers, layer_types):
            attn, mlp = layer.self_attn, layer.mlp
            self.blocks.append(_Block(
                norm1=layer.input_layernorm, qkv=_Projection([attn.q_proj, attn.k_proj, attn.v_proj]),
                q_norm=getattr(attn, "q_norm", None), k_norm=getattr(attn, "k_norm", None),
                o=_Projection([attn.o_proj]), norm2=layer.post_attention_layernorm,
                gate_up=_Projection([mlp.gate_proj, mlp.up_proj]), act=mlp.act_fn, down=_Projection([mlp.down_proj]),
                sliding_window=window if kind == "sliding_attention" else None))
        self.intermediate = mlp.gate_proj.out_features
        self._no_bias = torch.zeros(1)  # baddbmm's ignored input (beta=0)
        self._native = self._native_blocks() if native else None

    def _native_blocks(self) -> tuple[list[list[Tensor]], list[list[int]]] | None:
        """The per-block tensors and ints of the C++ decode step (kernels/decode_step_cpu.cpp), or
        None where it cannot run: a projection with no fused layout the step reads (dense, a codec
        without one, a group not a multiple of 64), int8 activations on a CPU without AVX-512 VNNI
        (the seed basis: VNNI + VBMI), or no extension."""
        from reality_stone.kernels.extension import load_extension

        ext = load_extension(quiet=True)
        if self.head_dim > 1024 or ext is None or not hasattr(ext, "decode_step"):
            return None
        none, tables = torch.empty(0), {}
        tensors, ints = [], []
        for blk in self.blocks:
            slots = []
            for proj, n_slots in ((blk.qkv, 3), (blk.o, 1), (blk.gate_up, 2), (blk.down, 1)):
                parts = _native_parts(proj, ext, tables)
                if parts is None:
                    return None
                slots += parts + [([none] * 4, [0] * 6)] * (n_slots - len(parts))
            norms = [blk.norm1.weight.detach(), blk.norm2.weight.detach()]
            norms += [none, none] if blk.q_norm is None else [blk.q_norm.weight.detach(), blk.k_norm.weight.detach()]
            tensors.append(norms + [t for slot, _ in slots for t in slot])
            ints.append([v for _, slot_ints in slots for v in slot_ints])
        qk = self.blocks[0].q_norm
        self._eps, self._qk_eps = _eps(self.blocks[0].norm1), _eps(qk) if qk is not None else 0.0
        self._ext = ext
        return tensors, ints

    @property
    def native(self) -> bool:
        """Whether single-token steps run in the C++ decode step (else the eager torch loop)."""
        return self._native is not None

    def _rotary_tables(self, length: int) -> tuple[Tensor, Tensor]:
        """cos (L, d) and the sign-folded sin (L, d) such that rope(x) = x·cos + roll(x, d/2)·sin."""
        pos = torch.arange(length)[None]
        cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32), pos)
        half = self.head_dim // 2
        sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)
        return cos[0].float().contiguous(), sin.float().contiguous()

    def _cache(self, length: int) -> list[tuple[Tensor, Tensor]]:
        """Keys and values (KV heads, length, head_dim) per block, float32, filled as positions are run."""
        return [(torch.empty(self.kv_heads, length, self.head_dim), torch.empty(self.kv_heads, length, self.head_dim))
                for _ in self.blocks]

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (T, heads, d); cos/sin (T, d): HF's ``x·cos + rotate_half(x)·sin``."""
        return x * cos[:, None] + x.roll(self.head_dim // 2, -1) * sin[:, None]

    def _step(self, tokens: Tensor, pos: int, cache: list[tuple[Tensor, Tensor]], cos: Tensor, sin: Tensor) -> Tensor:
        """tokens (T,) at positions pos … pos+T−1 -> logits (vocab,) of the last one; fills the cache."""
        T, H, KV, d = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        end = pos + T
        if T == 1 and self._native is not None:
            tensors, ints = self._native
            x = self.embed(tokens)[0].contiguous()
            self._ext.decode_step(x, pos, [t + list(kv) for t, kv in zip(tensors, cache)], ints, cos[pos], sin[pos],
                                  H, KV, d, self.intermediate, self._eps, self._qk_eps, self.scaling)
            return self.head(_rms_norm(x[None], self.final_norm))[0]
        c, s = cos[pos:end], sin[pos:end]
        x = self.embed(tokens)
        for blk, (k_cache, v_cache) in zip(self.blocks, cache):
            qkv = blk.qkv(_rms_norm(x, blk.norm1))
            v = qkv[:, (H + KV) * d :].view(T, KV, d)
            if blk.q_norm is not None:
                qk = torch.cat([_rms_norm(qkv[:, : H * d].view(T, H, d), blk.q_norm),
                                _rms_norm(qkv[:, H * d : (H + KV) * d].view(T, KV, d), blk.k_norm)], 1)
            else:
                qk = qkv[:, : (H + KV) * d].view(T, H + KV, d)
            qk = self._rope(qk, c, s)  # queries and keys rotated in one pass
            q, k = qk[:, :H], qk[:, H:]
            k_cache[:, pos:end] = k.transpose(0, 1)
            v_cache[:, pos:end] = v.transpose(0, 1)
            keys, values = k_cache[:, :end], v_cache[:, :end]  # (KV, end, d)
            if T == 1:  # one query: heads grouped by their KV head, two matmuls, no copy of the cache
                scores = torch.baddbmm(self._no_bias, q.reshape(KV, H // KV, d), keys.transpose(1, 2), beta=0,
                                       alpha=self.scaling)  # (KV, G, end)
                out = (scores.softmax(-1) @ values).reshape(1, H * d)
            else:  # prefill: causal within the new tokens, all of the cache before them
                mask = torch.ones(T, end, dtype=torch.bool).tril(pos)
                out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None], values[None],
                                                     attn_mask=mask, scale=self.scaling, enable_gqa=True)
                out = out[0].transpose(0, 1).reshape(T, H * d)
            x = x + blk.o(out)
            gu = blk.gate_up(_rms_norm(x, blk.norm2))
            x = x + blk.down(blk.act(gu[:, : self.intermediate]) * gu[:, self.intermediate :])
        return self.head(_rms_norm(x[-1:], self.final_norm))[0]

    @torch.no_grad()
    def generate(self, ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None, eos_token_id: int | list[int] | None = None) -> Tensor:
        """ids (T,) or (1, T) int64 prompt -> (1, T + n) with n ≤ ``max_new_tokens`` new tokens
        (fewer when an ``eos_token_id`` is produced; it is kept). ``temperature`` 0: greedy
        (deterministic); > 0: sampling from softmax(logits / temperature) with ``generator``."""
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.numel() == 0 or \
                ids.dim() > 2 or (ids.dim() == 2 and ids.shape[0] != 1):
            raise ValueError(f"ids must be a non-empty integer tensor (T,) or (1, T), got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        vocab = self.embed.num_embeddings
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not (temperature >= 0 and temperature < float("inf")):
            raise ValueError(f"temperature must be finite and ≥ 0, got {temperature}")
        prompt = ids.reshape(-1).long()
        length = prompt.numel() + max_new_tokens
        windows = [b.sliding_window for b in self.blocks if b.sliding_window is not None]
        if windows and min(windows) < length:
            raise ValueError(f"sliding-window attention (window {min(windows)}) over {length} positions is not "
                             "supported by Decoder; use model.generate")
        stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        cos, sin = self._rotary_tables(length)
        cache = self._cache(length)
        out, pos, tokens = [prompt], 0, prompt
        for _ in range(max_new_tokens):
            logits = self._step(tokens, pos, cache, cos, sin)
            pos += tokens.numel()
            if temperature > 0:
                nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            out.append(nxt)
            tokens = nxt
            if int(nxt) in stops:
                break
        return torch.cat(out)[None]

    @torch.no_grad()
    def logits(self, ids: Tensor) -> Tensor:
        """(2, vocab) logits: after a prefill of ``ids[:-1]`` (T ≥ 2) and after one decode step on
        the last token — the two paths `generate` takes. For tests and for checking a model
        against its own forward pass (``model(ids).logits[0, -2:]``)."""
        ids = ids.reshape(-1).long()
        if ids.numel() < 2:
            raise ValueError(f"logits needs at least 2 tokens (a prefill and one step), got {ids.numel()}")
        cos, sin = self._rotary_tables(ids.numel())
        cache = self._cache(ids.numel())
        first = self._step(ids[:-1], 0, cache, cos, sin)
        return torch.stack([first, self._step(ids[-1:], ids.numel() - 1, cache, cos, sin)])
