"""Weight codecs: a common protocol (`base`), a registry, one module per codec.

Every module of this package is imported here, so a new codec registers itself by existing:
adding one is one file (plus its test module).
"""

import importlib
import pkgutil

from reality_stone.codecs.base import (Capabilities, CodecConfig, Encoded, codec_class, codec_config, decode_bytes,
                                       encoded_class, register, registered_codecs)
from reality_stone.codecs.metrics import relative_error, sqnr_db

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "Capabilities",
    "CodecConfig",
    "Encoded",
    "codec_class",
    "codec_config",
    "decode_bytes",
    "encoded_class",
    "register",
    "registered_codecs",
    "relative_error",
    "sqnr_db",
]
