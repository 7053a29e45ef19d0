"""Weight codecs: a common protocol (`base`), a registry, one module per codec.

Every module of this package is imported here, so a new codec registers itself by existing:
adding one is one file (plus its test module).
"""

import importlib
import pkgutil

from reality_stone.codecs import base
from reality_stone.codecs.base import (CALIBRATION_MODES, Capabilities, CodecConfig, Encoded,  # noqa: F401
                                       check_weight, codec_class, codec_config, decode_bytes, encoded_class, register,
                                       registered_codecs)
from reality_stone.codecs.metrics import reference_weight, relative_error, sqnr_db

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [*base.__all__, "reference_weight", "relative_error", "sqnr_db"]
