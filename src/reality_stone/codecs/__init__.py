"""Weight codecs: a common protocol (`base`), a registry, one module per codec."""

from reality_stone.codecs import gptq, hqq, lowrank, packed64, rbe, rtn, seedbasis  # noqa: F401  (importing registers them)
from reality_stone.codecs.base import (CodecConfig, Encoded, codec_class, codec_config, decode_bytes, register,
                                       registered_codecs)
from reality_stone.codecs.metrics import relative_error, sqnr_db

__all__ = [
    "CodecConfig",
    "Encoded",
    "codec_class",
    "codec_config",
    "decode_bytes",
    "register",
    "registered_codecs",
    "relative_error",
    "sqnr_db",
]
