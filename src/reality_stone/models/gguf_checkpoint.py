"""GGUF files (llama.cpp's format) as streamable checkpoints: one tensor at a time, by its Hugging Face name.

`reality_stone.models.streaming` and `block_streaming` read checkpoints as a list of
`TensorSource` (name, shape, where the bytes are) and read each tensor when it is needed. For a
``.gguf`` file the list comes from the GGUF header (through ``gguf.GGUFReader``, which maps the
file and parses only the header) and a tensor is read with plain file I/O at its offset, then
dequantised by ``gguf.dequantize`` and renamed / re-permuted by transformers' GGUF tensor
processor, the same two functions ``from_pretrained(..., gguf_file=)`` applies to every tensor.
So a streamed GGUF gives the same float32 weights, tensor for tensor, as the whole model loaded
by transformers — and the same compressed file — while holding one tensor at a time.

The architecture and tokenizer come from the GGUF metadata through transformers
(``AutoConfig`` / ``AutoTokenizer`` with ``gguf_file=``).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["quiet_gguf", "is_gguf", "gguf_config", "gguf_meta_model", "gguf_tensors", "gguf_tokenizer", "gguf_architecture",
           "read_gguf_tensor"]


@contextmanager
def quiet_gguf():
    """transformers' GGUF converter draws its own tqdm bar on every load; silence just that one."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - module moved: the bar is cosmetic
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix == ".gguf"


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def gguf_config(path: str | Path):
    """The transformers config the GGUF metadata describes (ValueError if transformers cannot read it)."""
    return _config(_key(Path(path)))


@functools.lru_cache(maxsize=4)
def _config(key):
    from transformers import AutoConfig

    path = Path(key[0])
    with quiet_gguf():
        try:
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as exc:  # noqa: BLE001 (a damaged file fails in gguf-py/numpy in many ways)
            raise ValueError(f"{path}: transformers cannot read this GGUF file's metadata ({str(exc)[:300]})") from None


def gguf_meta_model(path: str | Path) -> nn.Module:
    """The file's ...ForCausalLM on the meta device (structure and names, no memory)."""
    import transformers

    config = gguf_config(path)
    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: transformers cannot build this GGUF file's architecture ({str(exc)[:300]})") from None
    model.tie_weights()
    model.config.dtype = torch.float32  # what reading gives (dequantised), as from_pretrained(dtype=float32) records
    return model.eval()


def gguf_architecture(path: str | Path) -> dict:
    """What `reality_stone.save` records for the model transformers builds from this file."""
    from reality_stone.models.format import architecture_record

    return architecture_record(gguf_meta_model(path))


def gguf_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    path = Path(path)
    with quiet_gguf():
        try:
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: no tokenizer could be read from this GGUF file ({str(exc)[:300]})") from None


@functools.lru_cache(maxsize=4)
def _processor_and_names(key):
    """(transformers' tensor processor for the file's architecture, {GGUF name: HF name})."""
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map,
                                                          read_field)

    path = Path(key[0])
    try:
        architecture = read_field(_reader(key), "general.architecture")[0]
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"{path}: no general.architecture in the GGUF metadata ({str(exc)[:200]})") from None
    # the processors read head counts under their transformers names, which the config has
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=gguf_config(path).to_dict())
    return processor, get_gguf_hf_weights_map(gguf_meta_model(path), processor)


@functools.lru_cache(maxsize=4)
def _reader(key):
    import gguf

    path = Path(key[0])
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # a truncated or corrupt header: numpy/struct errors of every kind
        raise ValueError(f"{path}: not a readable GGUF file ({str(exc)[:200]})") from None


def gguf_tensors(path: str | Path) -> list:
    """Every tensor of the file as a `TensorSource` named as transformers names it, from the header only.

    ``dtype`` is what reading gives (F32: dequantised); ``gguf`` holds (GGUF name, quantisation
    type, stored numpy dtype, stored numpy shape). A tensor whose bytes run past the end of the
    file (a truncated download) is refused here, naming it."""
    from reality_stone.models.streaming import TensorSource

    path = Path(path)
    key = _key(path)
    reader = _reader(key)
    _, names = _processor_and_names(key)
    size = path.stat().st_size
    out = []
    for t in reader.tensors:
        hf_name = names.get(t.name)
        if hf_name is None:  # transformers skips tensors it has no name for (rope frequencies, ...)
            continue
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{path}: truncated: tensor {t.name!r} ({hf_name}) needs bytes up to "
                             f"{t.data_offset + t.n_bytes}, the file has {size}")
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        out.append(TensorSource(hf_name, str(path), "F32", shape, int(t.data_offset), int(t.n_bytes),
                                gguf=(t.name, int(t.tensor_type), t.data.dtype.str, tuple(t.data.shape))))
    return sorted(out, key=lambda s: s.name)


def read_gguf_tensor(src) -> torch.Tensor:
    """One GGUF tensor as float32 (plain file read, dequantise, transformers' processing)."""
    import gguf

    from reality_stone.models.streaming import read_stored_bytes

    gguf_name, qtype, np_dtype, raw_shape = src.gguf
    raw = np.frombuffer(read_stored_bytes(src), dtype=np.dtype(np_dtype)).reshape(raw_shape)
    try:
        weights = gguf.dequantize(raw, gguf.GGMLQuantizationType(qtype))
    except (ValueError, NotImplementedError) as exc:
        raise ValueError(f"{src.shard}: tensor {gguf_name!r}: cannot dequantise type {qtype} ({exc})") from None
    processor, names = _processor_and_names(_key(Path(src.shard)))
    result = processor.process(weights=weights, name=gguf_name, tensor_key_mapping=names,
                               parsed_parameters={"tensors": {}})
    if result.name != gguf_name:  # the families streamed here keep names; MoE processors split tensors
        raise ValueError(f"{src.shard}: tensor {gguf_name!r}: its architecture's GGUF processor renames tensors; "
                         "stream it after converting to a model folder")
    t = torch.from_numpy(np.ascontiguousarray(result.weights, dtype=np.float32))
    if tuple(t.shape) != tuple(src.shape):
        raise ValueError(f"{src.shard}: tensor {gguf_name!r} dequantises to {list(t.shape)}, expected {list(src.shape)}")
    return t
