"""ButterflyLinear: exact dense equivalent, expressiveness (Dao et al. 2019), init, fitting, errors."""

import math

import pytest
import scipy.linalg
import torch

from reality_stone.nn import ButterflyLinear, butterfly_multiply

F64 = torch.float64


@pytest.mark.parametrize("in_f,out_f", [(8, 8), (50, 30), (30, 50), (1, 3), (100, 100)])
def test_forward_equals_dense_equivalent_float64(in_f, out_f):
    layer = ButterflyLinear(in_f, out_f, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 3, in_f, dtype=F64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=1e-13, atol=1e-13)
    assert layer.to_dense().shape == (out_f, in_f)


def test_parameters_are_n_log_n_with_four_entries_per_block():
    layer = ButterflyLinear(1024, 1024, bias=False)
    assert layer.num_parameters() == 4 * (1024 // 2) * 10  # 2N log2 N


def _set(layer, blocks):
    with torch.no_grad():
        layer.twiddle.copy_(blocks.to(layer.twiddle.dtype))


def test_represents_identity_hadamard_and_permutations_exactly():
    N = 16
    layer = ButterflyLinear(N, N, bias=False, dtype=F64)
    _set(layer, torch.eye(2, dtype=F64).expand(4, N // 2, 2, 2))
    assert torch.equal(layer.to_dense(), torch.eye(N, dtype=F64))
    _set(layer, (torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64) / math.sqrt(2)).expand(4, N // 2, 2, 2))
    torch.testing.assert_close(layer.to_dense(), torch.tensor(scipy.linalg.hadamard(N), dtype=F64) / 4,
                               rtol=0, atol=1e-15)
    # every block either I or the swap: the product is a permutation matrix (e.g. i -> i XOR m)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
    choice = torch.rand(4, N // 2, generator=torch.Generator().manual_seed(1)) < 0.5
    _set(layer, torch.where(choice[..., None, None], swap, torch.eye(2, dtype=F64)))
    P = layer.to_dense()
    assert torch.equal(P.sum(0), torch.ones(N, dtype=F64)) and torch.equal(P.sum(1), torch.ones(N, dtype=F64))
    assert set(P.unique().tolist()) == {0.0, 1.0}
    m = 0b1011  # XOR permutation: swap every block at the levels where m has a bit
    _set(layer, torch.stack([swap if (m >> ell) & 1 else torch.eye(2, dtype=F64) for ell in range(4)])[:, None]
         .expand(4, N // 2, 2, 2))
    expected = torch.zeros(N, N, dtype=F64)
    expected[torch.arange(N) ^ m, torch.arange(N)] = 1
    assert torch.equal(layer.to_dense(), expected)


def test_init_keeps_nn_linear_output_variance():
    x = torch.randn(4000, 256, generator=torch.Generator().manual_seed(0))
    for in_f, out_f in [(256, 256), (100, 256), (256, 64)]:
        layer = ButterflyLinear(in_f, out_f, bias=False, generator=torch.Generator().manual_seed(1))
        var = layer(x[:, :in_f]).var().item()
        assert 0.8 / 3 < var < 1.2 / 3, (in_f, out_f, var)


def test_from_dense_fits_a_butterfly_matrix_and_reports_error_on_others():
    target = ButterflyLinear(16, 16, bias=False, dtype=F64, generator=torch.Generator().manual_seed(5)).to_dense().detach()
    fitted, err = ButterflyLinear.from_dense(target, steps=1500, lr=0.05)
    assert err < 1e-3
    torch.testing.assert_close(fitted.to_dense().detach(), target, rtol=0, atol=1e-2)
    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(6), dtype=F64)
    _, err_random = ButterflyLinear.from_dense(W, steps=300)
    assert 0.1 < err_random < 1.0  # a generic matrix is not a butterfly: the error is reported, not hidden


def test_gradcheck_and_state_dict_round_trip():
    layer = ButterflyLinear(6, 5, dtype=F64)
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradcheck(lambda t: butterfly_multiply(t, torch.nn.functional.pad(x.detach(), (0, 2))), (layer.twiddle.detach().clone().requires_grad_(),))
    other = ButterflyLinear(6, 5, dtype=F64)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), layer(x))


def test_float32_torch_compile_and_repr():
    layer = ButterflyLinear(20, 12)
    x = torch.randn(4, 20)
    torch.testing.assert_close(torch.compile(layer, backend="eager", fullgraph=True)(x), layer(x))
    assert "n=32" in repr(layer) and "factors=5" in repr(layer)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="in_features"):
        ButterflyLinear(0, 4)
    with pytest.raises(ValueError, match="out_features"):
        ButterflyLinear(4, 2.5)
    layer = ButterflyLinear(8, 4)
    with pytest.raises(ValueError, match="features"):
        layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(2, 8, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        ButterflyLinear.from_dense(torch.full((4, 4), float("nan")))
