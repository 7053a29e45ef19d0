"""Reality Stone: exact hyperbolic layers and geometric weight compression for PyTorch.

The top-level API for whole models (torchao style)::

    import reality_stone as rs
    report = rs.compress(model, rs.codecs.codec_config("rtn", bits=4, group=128))
    rs.save(model, "model.rs.safetensors")
    model = rs.load("model.rs.safetensors")
"""

from reality_stone import codecs
from reality_stone.models import compress, load, save

__version__ = "0.1.0"
__all__ = ["codecs", "compress", "load", "save"]
