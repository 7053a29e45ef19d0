"""CompressedLinear's evaluation helper: decoded_weights gives the reference path and cleans up."""

import torch
from torch import nn

from reality_stone.codecs.seedbasis import preset
from reality_stone.nn import CompressedLinear, decoded_weights


def test_decoded_weights_matches_the_per_call_path_and_is_undone():
    W = torch.randn(24, 40, generator=torch.Generator().manual_seed(0)) * 0.05
    layer = CompressedLinear(preset("3.5").encode(W), torch.randn(24))
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.randn(3, 40)
    before = model(x)
    with decoded_weights(model):
        assert layer._decoded is not None
        inside = model(x)
    assert layer._decoded is None
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inside, torch.relu(x @ layer.encoded.decode().T + layer.bias))
