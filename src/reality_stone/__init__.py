"""Reality Stone: exact hyperbolic layers and geometric weight compression for PyTorch.

The top-level API for whole models (torchao style)::

    import reality_stone as rs
    report = rs.compress(model, rs.codecs.codec_config("rtn", bits=4, group=128))
    report = rs.compress(model, rs.codecs.codec_config("seedbasis", preset="3.5"),
                         calibration=["text …", …], tokenizer=tok)     # data-aware, block by block
    rs.save(model, "model.rs.safetensors")
    model = rs.load("model.rs.safetensors")
    ids = rs.Decoder(model).generate(prompt_ids, max_new_tokens=64)   # lean batch-1 loop (Llama family)

Checkpoints larger than memory (streamed tensor by tensor — or, calibrated, decoder block by
decoder block — resumable, optionally on Ray)::

    rs.compress_checkpoint("llama-7b/", "llama-7b.rs.safetensors", config, workers=4)
    rs.compress_checkpoint("llama-7b/", "llama-7b.gptq.safetensors", gptq_config, calibration="shakespeare")
"""

from reality_stone import codecs
from reality_stone.models import Decoder, compress, compress_checkpoint, load, save
from reality_stone.threads import set_threads

__version__ = "0.1.0"
__all__ = ["Decoder", "codecs", "compress", "compress_checkpoint", "load", "save", "set_threads"]
