"""Decoder: the lean batch-1 loop gives the model's own logits and tokens, dense and compressed."""

import pytest
import torch
import transformers

import reality_stone as rs
from reality_stone.codecs import codec_config
from reality_stone.models.decoder import Decoder
from reality_stone.nn import CompressedLinear, set_activations

FAMILIES = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
            "mistral": transformers.MistralConfig}


def _tiny(family: str, seed: int = 0, **extra) -> torch.nn.Module:
    """A random model whose hidden width (96) is no multiple of the kernels' 64-input chunks, so the
    stacked projections pad their input; 4 query heads on 2 KV heads."""
    torch.manual_seed(seed)
    cfg = FAMILIES[family](vocab_size=256, hidden_size=96, intermediate_size=160, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, num_hidden_layers=2, max_position_embeddings=128,
                           tie_word_embeddings=True, **extra)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random init gives near-uniform logits: scale up so argmax is well separated
        model.lm_head.weight.mul_(8.0)
    return model


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def _model_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None]).logits[0, -2:]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # float32 reassociation only: the same weights and kernels, another order of the sums
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max()), (a - b).abs().max()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dense_logits_match_the_model(family):
    model = _tiny(family, **(dict(attention_bias=True) if family == "llama" else {}))
    ids = _ids(20)
    _close(Decoder(model).logits(ids), _model_logits(model, ids))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_compressed_logits_match_the_model_and_weights_are_held_once(family):
    model = _tiny(family)
    rs.compress(model, codec_config("rtn", bits=4, group=32))
    ids = _ids(20)
    before = _model_logits(model, ids)
    q = model.model.layers[0].self_attn.q_proj
    dec = Decoder(model)
    # q/k/v now share one stacked layout: the model's own forward is unchanged and reads it
    assert q.encoded.kernel_layout()[0].untyped_storage().data_ptr() == \
        model.model.layers[0].self_attn.v_proj.encoded.kernel_layout()[0].untyped_storage().data_ptr()
    assert dec.blocks[0].qkv.layout is not None and dec.blocks[0].gate_up.layout is not None
    _close(_model_logits(model, ids), before)
    _close(dec.logits(ids), before)


def test_a_model_with_stacked_layouts_saves_and_loads(tmp_path):
    model = _tiny("llama")
    rs.compress(model, codec_config("rtn", bits=4, group=32))
    ids = _ids(12)
    expected = Decoder(model).logits(ids)  # stacks the layouts: the weights become views into them
    loaded = rs.load(rs.save(model, tmp_path / "m.safetensors"))
    _close(_model_logits(loaded, ids), expected)
    _close(Decoder(loaded).logits(ids), expected)


def test_int8_activations_and_mixed_layers_match_the_model():
    model = _tiny("llama")
    rs.compress(model, codec_config("hqq", bits=3, group=32), skip=["*q_proj"])  # q dense: qkv runs layer by layer
    ids = _ids(16)
    _close(Decoder(model).logits(ids), _model_logits(model, ids))
    exact = _model_logits(model, ids)
    set_activations(model, "int8")
    dec = Decoder(model)
    assert dec.blocks[0].qkv.layout is None and dec.blocks[0].gate_up.layout is not None
    assert isinstance(model.model.layers[0].self_attn.k_proj, CompressedLinear)
    rounded = _model_logits(model, ids)  # int8 rounding of x: within a fraction of what it changes (see below)
    assert (dec.logits(ids) - rounded).abs().max() <= 0.25 * (rounded - exact).abs().max()


@pytest.mark.parametrize("compressed", [False, True])
def test_greedy_tokens_equal_transformers_generate(compressed):
    model = _tiny("llama", rope_scaling=dict(rope_type="linear", factor=2.0))
    if compressed:
        rs.compress(model, codec_config("gptq", bits=4, group=32), calibration=_ids(64, seed=5)[None], tokens=64,
                    seq_len=32)
    ids = _ids(12)
    with torch.no_grad():
        ref = model.generate(ids[None], max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(Decoder(model).generate(ids, 16), ref)


def test_sampling_is_deterministic_under_a_generator_and_eos_stops():
    model = _tiny("qwen2")
    dec = Decoder(model)
    a = dec.generate(_ids(8), 10, temperature=0.8, generator=torch.Generator().manual_seed(3))
    b = dec.generate(_ids(8), 10, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (1, 18)
    greedy = dec.generate(_ids(8), 10)
    stop = int(greedy[0, 10])  # the third new token
    out = dec.generate(_ids(8), 10, eos_token_id=[stop])
    assert out.shape[1] <= 11 and int(out[0, -1]) == stop


def test_bad_input_is_refused():
    dec = Decoder(_tiny("llama"))
    for ids in (torch.tensor([], dtype=torch.long), torch.tensor([1.0, 2.0]), torch.tensor([[1, 2], [3, 4]]),
                torch.tensor([1, 256]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError):
            dec.generate(ids, 4)
    for kw in (dict(max_new_tokens=0), dict(max_new_tokens=4, temperature=-1.0),
               dict(max_new_tokens=4, temperature=float("nan"))):
        with pytest.raises(ValueError):
            dec.generate(_ids(4), **kw)
    with pytest.raises(ValueError, match="at least 2"):
        dec.logits(_ids(1))
    gemma = transformers.AutoModelForCausalLM.from_config(transformers.GemmaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        num_hidden_layers=1))
    with pytest.raises(ValueError, match="gemma"):
        Decoder(gemma)
    windowed = Decoder(_tiny("mistral", sliding_window=8))
    with pytest.raises(ValueError, match="sliding-window"):
        windowed.generate(_ids(6), 4)
    assert windowed.generate(_ids(4), 4).shape == (1, 8)  # within the window: the same as full attention


@pytest.mark.parametrize("family,config", [
    ("llama", codec_config("rtn", bits=4, group=64)),
    ("qwen2", codec_config("rtn", bits=3, group=64, symmetric=True)),  # q/k/v biases
    ("qwen3", codec_config("hqq", bits=2, group=128)),  # per-head q/k norms; a group wider than the 96 inputs
    ("llama", codec_config("rtn", bits=8, group=64)),  # the 8-bit layout
    ("llama", "int8"),  # int8 activations (AVX-512 VNNI)
    ("llama", codec_config("seedbasis", preset="3.5")),  # seed basis: one slot per layer
    ("qwen2", codec_config("seedbasis", preset="2.5")),  # … with q/k/v biases
    ("qwen3", codec_config("seedbasis", preset="4.25")),  # … 6 coefficients (the kernel's 8-lane form)
    ("qwen2", "seedbasis int8"),  # seed basis with int8 activations (AVX-512 VNNI + VBMI)
    ("llama", "seedbasis mixed"),  # a mixed allocation: 3 … 6 coefficients, one config per layer
])
def test_the_native_decode_step_matches_the_model(family, config):
    from reality_stone.kernels.extension import load_extension

    ext = load_extension(quiet=True)
    if ext is None or (config == "int8" and not ext.has_avx512_vnni()) or (
            config == "seedbasis int8" and not ext.seedbasis_a8_supported(10, 2, 4, 4)):
        pytest.skip("no compiled kernels (or no VNNI) here: the eager loop runs instead (covered above)")
    model = _tiny(family)
    if config == "seedbasis int8":
        rs.compress(model, codec_config("seedbasis", preset="3.5"))
    elif config == "seedbasis mixed":
        report = rs.compress(model, codec_config("seedbasis", preset="3.5"), calibration=_ids(128, seed=4).reshape(4, 32),
                             mixed=True)
        assert len({r.bits_per_weight for r in report.layers}) > 1
    else:
        rs.compress(model, codec_config("gptq", bits=4, group=64) if config == "int8" else config,
                    **(dict(calibration=_ids(128, seed=4)[None], tokens=128, seq_len=64) if config == "int8" else {}))
    ids = _ids(24)
    if config in ("int8", "seedbasis int8"):
        # int8 activations round x per group, so float32-level differences in x (another summation order
        # of a norm) move a few codes: compare within a fraction of what int8 rounding itself changes
        exact = _model_logits(model, ids)
        set_activations(model, "int8")
        dec = Decoder(model)
        assert dec.native and (config == "int8" or set(dec._native[1][0][::6]) == {3})  # kind 3: seed basis, int8
        rounded = _model_logits(model, ids)
        assert (dec.logits(ids) - rounded).abs().max() <= 0.25 * (rounded - exact).abs().max()
        return
    dec = Decoder(model)
    assert dec.native and not Decoder(model, native=False).native
    _close(dec.logits(ids), _model_logits(model, ids))
    with torch.no_grad():
        ref = model.generate(ids[None, :6], max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(dec.generate(ids[:6], 12), ref)


def test_the_native_decode_step_runs_mixed_codecs_in_one_projection():
    """q and v seed basis, k group-quantised (a per-layer selection): three slots, one output."""
    from reality_stone.kernels.extension import load_extension

    if load_extension(quiet=True) is None:
        pytest.skip("no compiled kernels here")
    model = _tiny("qwen2")
    rs.compress(model, codec_config("seedbasis", preset="3.5"))
    for layer in model.model.layers:
        k = layer.self_attn.k_proj
        layer.self_attn.k_proj = CompressedLinear(codec_config("rtn", bits=4, group=64).encode(k.encoded.decode()),
                                                  k.bias)
    dec = Decoder(model)
    assert dec.native and dec._native[1][0][::6] == [2, 1, 2, 2, 2, 2, 2]  # each slot's kind
    ids = _ids(24)
    _close(dec.logits(ids), _model_logits(model, ids))


def test_the_native_decode_step_refuses_bad_seed_basis_slots():
    from reality_stone.kernels.extension import load_extension

    if load_extension(quiet=True) is None:
        pytest.skip("no compiled kernels here")
    model = _tiny("llama")
    rs.compress(model, codec_config("seedbasis", preset="3.5"))
    dec = Decoder(model)
    tensors, ints = dec._native
    cos, sin = dec._rotary_tables(8)
    cache = [[torch.zeros(2, 8, 16), torch.zeros(2, 8, 16)] for _ in tensors]

    def step(tensors=tensors, ints=ints):
        dec._ext.decode_step(torch.randn(96), 3, [t + kv for t, kv in zip(tensors, cache)], ints, cos[0], sin[0],
                             4, 2, 16, dec.intermediate, 1e-6, 0.0, 0.25)

    step()
    slot_q = 4  # q's records, pattern table, row scales, bias
    table = tensors[0][slot_q + 1].clone()
    table[5, 1] = 300  # a pattern id past the 257 sign sums
    swap = lambda i, t: [b[:i] + [t] + b[i + 1:] for b in tensors]  # noqa: E731
    for kw in (dict(tensors=swap(slot_q, tensors[0][slot_q][:-1])),  # truncated records
               dict(tensors=swap(slot_q + 1, table)),
               dict(tensors=swap(slot_q + 1, tensors[0][slot_q + 1][:512])),  # a table of 2^9 rows for S = 10
               dict(tensors=swap(slot_q + 2, tensors[0][slot_q + 2][:-8])),  # row scales of fewer rows
               dict(ints=[[2, 17] + i[2:] for i in ints]),  # S = 17
               dict(ints=[[2, 10, 2, 4, 9] + i[5:] for i in ints])):  # P = 9
        with pytest.raises(RuntimeError):
            step(**kw)
    if dec._ext.seedbasis_a8_supported(10, 2, 4, 4):  # the int8 kind: its own table, its formats only
        set_activations(model, "int8")
        tensors, ints = Decoder(model)._native
        step(tensors, ints)
        for kw in (dict(tensors=swap(slot_q + 1, tensors[0][slot_q + 1].int())),  # an int32 table
                   dict(tensors=swap(slot_q + 1, tensors[0][slot_q + 1][:, :3].contiguous())),  # 3 ids per seed
                   dict(ints=[[3, 10, 2, 4, 6] + i[5:] for i in ints])):  # 6 coefficients: no int8 kernel
            with pytest.raises(RuntimeError):
                step(**({"tensors": tensors, "ints": ints} | kw))


def test_the_native_decode_step_refuses_inconsistent_inputs():
    from reality_stone.kernels.extension import load_extension

    if load_extension(quiet=True) is None:
        pytest.skip("no compiled kernels here")
    model = _tiny("llama")
    rs.compress(model, codec_config("rtn", bits=4, group=64))
    dec = Decoder(model)
    tensors, ints = dec._native
    cos, sin = dec._rotary_tables(8)
    cache = [[torch.zeros(2, 8, 16), torch.zeros(2, 8, 16)] for _ in tensors]
    x = torch.randn(96)

    def step(tensors=tensors, ints=ints, pos=3, x=x, cache=cache, heads=(4, 2, 16)):
        dec._ext.decode_step(x, pos, [t + kv for t, kv in zip(tensors, cache)], ints, cos[0], sin[0], *heads,
                             dec.intermediate, 1e-6, 0.0, 0.25)

    step()  # consistent: runs
    # ints: 6 per projection slot (q, k, v, o, gate, up, down), {kind, zero_point, group, bits, int8, 0}
    # for a group-quantised one; tensors: 4 norms, then 4 per slot (codes first)
    bad_group = [i[:2] + [0] + i[3:] for i in ints]
    if not dec._ext.has_avx512_vnni():  # int8 activations asked of a CPU without VNNI
        bad_group = [i[:4] + [1] + i[5:] for i in ints]
    bad_kind = [i[:6] + [1] + i[7:] for i in ints]  # slot k marked present, its tensors empty
    unknown_kind = [[7] + i[1:] for i in ints]
    bad_codes = [t[:4] + [t[4][:, :-8]] + t[5:] for t in tensors]
    bad_norm = [[t[0][:-1]] + t[1:] for t in tensors]
    for kw in (dict(pos=8), dict(pos=-1), dict(x=torch.randn(95)), dict(x=torch.randn(96).double()),
               dict(ints=bad_group), dict(ints=bad_kind), dict(ints=unknown_kind), dict(tensors=bad_codes),
               dict(tensors=bad_norm), dict(heads=(3, 2, 16)),
               dict(cache=[[torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)] for _ in tensors]),
               dict(ints=[i[:-1] for i in ints])):
        with pytest.raises(RuntimeError):
            step(**kw)
