"""docs/codecs/adding-a-codec.md: its example codec runs and passes the shared suite's checks."""

import re
from pathlib import Path

import pytest
import torch

from reality_stone.codecs import base, codec_config, decode_bytes, relative_error
from reality_stone.codecs.metrics import reference_weight

PAGE = Path(__file__).resolve().parents[2] / "docs" / "codecs" / "adding-a-codec.md"
NAME = "example-row-int8"


@pytest.fixture
def example():
    (code,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(code.strip().splitlines()) <= 60  # the page promises a short example
    exec(compile(code, str(PAGE), "exec"), {"__name__": "example_codec"})
    yield codec_config(NAME)
    base._REGISTRY.pop(NAME, None)


def test_example_codec_meets_the_protocol(example):
    W = reference_weight(48, 80, seed=0)
    enc = example.encode(W)
    data = enc.to_bytes()
    assert enc.nbytes == len(data)
    back = decode_bytes(data)
    assert back.to_bytes() == data and torch.equal(back.decode(), enc.decode())
    assert relative_error(W, enc.decode()) < type(example).error_bound
    x = torch.randn(3, 80, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(enc.matmul(x), x @ enc.decode().T)
    with pytest.raises(ValueError, match="NaN or Inf"):
        example.encode(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="bytes"):
        decode_bytes(data[:-1])


def test_example_codec_works_in_a_model(example, tmp_path):
    import reality_stone as rs

    model = torch.nn.Sequential(torch.nn.Linear(80, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    report = rs.compress(model, example)
    assert len(report.layers) == 2
    rs.save(model, tmp_path / "m.safetensors")
    x = torch.randn(4, 80, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(rs.load(tmp_path / "m.safetensors", model=torch.nn.Sequential(
        torch.nn.Linear(80, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16)))(x), model(x))
