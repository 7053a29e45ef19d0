"""One conformance suite for every fused-matmul kernel (`reality_stone.kernels.linear_op.KERNELS`).

Per kernel and layout: forward and backward within 2× the error of the reference computed from
the kernel's own float32 weights (its tiled decoder), on both the fused and the tiled batch
sizes; the dispatch fast path equal to the custom op; float64 gradcheck; ``torch.compile``; no
dense weight allocated; the no-extension fallback. Family-specific checks (layout bytes, bad
layouts, codec integration) stay in the family's own test module.
"""

import os
import subprocess
import sys

import pytest
import torch

from layouts import packed64_weight, seedbasis_weight
from reality_stone.codecs import codec_config
from reality_stone.kernels.linear_op import KERNELS, MAX_FUSED_BATCH

import reality_stone.kernels.int_lowbit_ops  # noqa: F401  (registers the kernels)
import reality_stone.kernels.packed64_ops  # noqa: F401
import reality_stone.kernels.seedbasis_ops  # noqa: F401


def _lowbit(cfg, rows=70, cols=256):
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(2)) * 0.05
    return cfg.encode(W).kernel_layout()


def _seedbasis(budget, rows=37, cols=51):
    lay = seedbasis_weight(rows, cols, budget).kernel_layout()
    return (lay.pattern, lay.records, lay.row_exp, lay.seed_bits, lay.exp_bits, lay.coeff_bits, lay.rows), cols


def _packed64(rows, cols, block, min_block, formula):
    lay = packed64_weight(rows, cols, block, min_block, formula).kernel_layout()
    return (lay.leaves, lay.params, lay.row_start, lay.tables, lay.block, lay.shape[0]), cols


def _cases():
    """(id, kernel name, layout args builder → (args, in_features))."""
    out = []
    for cfg in (codec_config("rtn", bits=4, group=64), codec_config("rtn", bits=3, group=64, symmetric=True),
                codec_config("hqq", bits=2, group=128)):
        for name in ("lowbit_linear", "lowbit_linear_a8"):
            out.append((f"{name}-{cfg.codec_name}{cfg.bits}", name, lambda cfg=cfg: (_lowbit(cfg), 256)))
    for budget in ("4.25", "2.5"):
        out.append((f"seedbasis-{budget}", "seedbasis_linear", lambda b=budget: _seedbasis(b)))
    for budget in ("3.5", "2.5"):  # int8 activations take ≤ 4 coefficients (not the 4.25 preset's 6)
        out.append((f"seedbasis_a8-{budget}", "seedbasis_linear_a8", lambda b=budget: _seedbasis(b)))
    for args in ((37, 51, 8, None, "polar"), (70, 45, 16, 1, "polar"), (20, 30, 8, 2, "hash")):
        out.append((f"packed64-{args[0]}x{args[1]}-{args[4]}", "packed64_linear", lambda a=args: _packed64(*a)))
    return out


CASES = _cases()


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request):
    _, name, build = request.param
    args, in_f = build()
    return KERNELS[name], name, args, in_f


def test_every_registered_kernel_is_covered():
    assert {c[1] for c in CASES} == set(KERNELS)


def _batches(name):
    limit = MAX_FUSED_BATCH[name] or 64
    return [1, 5, limit + 3]  # fused, fused with a ragged batch, tiled (or the int8 kernel's any-batch path)


def _own_weights(kernel, args, in_f, dtype):
    return kernel.decoder(*args, in_f)(0, kernel.rows(*args), dtype)


def test_forward_within_twice_the_references_own_error(case):
    kernel, name, args, in_f = case
    W32, W64 = _own_weights(kernel, args, in_f, torch.float32), _own_weights(kernel, args, in_f, torch.float64)
    for batch in _batches(name):
        x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(batch))
        y = kernel(x, *args)
        assert y.shape == (batch, kernel.rows(*args)) and y.dtype == torch.float32
        assert torch.equal(y, kernel.op(x, *args))  # the fast path is the op minus its dispatch
        if name.endswith("_a8") and batch <= (MAX_FUSED_BATCH[name] or batch):
            continue  # quantises x: its accuracy is its family's test (against the a8 reference)
        exact = x.double() @ W64.T
        ref_err = ((x @ W32.T).double() - exact).abs().max()
        err = (y.double() - exact).abs().max()
        assert err <= 2 * ref_err + 1e-6 * exact.abs().max(), (batch, float(err), float(ref_err))


def test_backward_within_twice_the_references_own_error(case):
    kernel, name, args, in_f = case
    W32, W64 = _own_weights(kernel, args, in_f, torch.float32), _own_weights(kernel, args, in_f, torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, in_f, generator=g, requires_grad=True)
    grad_out = torch.randn(4, kernel.rows(*args), generator=g)
    kernel(x, *args).backward(grad_out)
    exact = grad_out.double() @ W64  # int8 activations: straight-through, the exact product's gradient
    ref_err = ((grad_out @ W32).double() - exact).abs().max()
    assert (x.grad.double() - exact).abs().max() <= 2 * ref_err + 1e-6 * exact.abs().max()


def test_gradcheck_float64(case):
    kernel, name, args, in_f = case
    x = torch.randn(1, in_f, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(4))
    if name.endswith("_a8"):
        pytest.skip("int8 activations take float32 inputs; their gradient is checked above")
    assert torch.autograd.gradcheck(lambda x: kernel(x, *args), (x,))


def test_torch_compile_traces_the_op(case):
    kernel, name, args, in_f = case
    x = torch.randn(3, in_f, generator=torch.Generator().manual_seed(5))
    torch._dynamo.reset()  # one lambda, many kernels: each case compiles afresh (no recompile limit)
    f = torch.compile(lambda x: kernel.op(x, *args) * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x), 2 * kernel(x, *args), rtol=0, atol=0)


LARGE = {  # 4096² weights: the dense fp32 weight is 64 MiB
    "lowbit_linear": lambda: (_lowbit(codec_config("rtn", bits=4, group=128), 4096, 4096), 4096),
    "lowbit_linear_a8": lambda: (_lowbit(codec_config("rtn", bits=2, group=128), 4096, 4096), 4096),
    "seedbasis_linear": lambda: _seedbasis("4.25", 4096, 4096),
    "seedbasis_linear_a8": lambda: _seedbasis("3.5", 4096, 4096),
    "packed64_linear": lambda: _packed64(4096, 4096, 32, None, "polar"),
}


@pytest.mark.parametrize("name", sorted(LARGE))
def test_forward_never_allocates_the_dense_weight(allocated_bytes, name):
    kernel = KERNELS[name]
    if name.endswith("_a8"):
        from reality_stone.kernels.extension import load_extension

        ext = load_extension(quiet=True)
        if ext is None or not ext.has_avx512_vnni() or (name == "seedbasis_linear_a8" and
                                                        not ext.seedbasis_a8_supported(10, 2, 4, 4)):
            pytest.skip("no AVX-512 VNNI: int8 activations run the plain-torch tiles (every tile decoded in turn)")
    args, in_f = LARGE[name]()
    x = torch.randn(1, in_f)
    kernel(x, *args)  # warm-up (builds/loads the extension)
    dense_bytes = kernel.rows(*args) * in_f * 4
    reference = allocated_bytes(lambda: x @ _own_weights(kernel, args, in_f, torch.float32).T)
    fused = allocated_bytes(lambda: kernel(x, *args))
    assert reference > dense_bytes  # the measurement sees a dense weight when there is one
    assert fused < 0.25 * dense_bytes, (fused, reference)


FALLBACK = """
import warnings
import torch
from reality_stone.codecs import codec_config
g = torch.Generator().manual_seed(0)
W = torch.randn(24, 64, generator=g) * 0.05
x = torch.randn(2, 64, generator=g)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for cfg in (codec_config("rtn", bits=3, group=64), codec_config("seedbasis", preset="3.5"),
                codec_config("packed64", block=8, adam_steps=0)):
        enc = cfg.encode(W)
        torch.testing.assert_close(enc.matmul(x), x @ enc.decode().T, rtol=1e-4, atol=1e-6)
messages = [str(w.message) for w in caught if "unavailable" in str(w.message)]
assert len(messages) == 1, messages
"""


def test_fallback_without_extension_is_correct_and_warns_once():
    """A fresh process with REALITY_STONE_NO_EXT=1: every family's tiled path equals the decode,
    and the user is told once."""
    out = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True,
                         env={**os.environ, "REALITY_STONE_NO_EXT": "1"})
    assert out.returncode == 0, out.stderr
