"""The codec protocol shared by every codec, and the registry of codecs.

A codec is a frozen config dataclass registered under a name together with the `Encoded`
type it produces (torchao style)::

    @register("lowrank", LowRankEncoded)
    @dataclass(frozen=True)
    class LowRankConfig(CodecConfig):
        '''Truncated SVD (fp16 factors). (First paragraph: the one-line description.)'''
        rank: int = 8
        def encode(self, weight, stats=None) -> LowRankEncoded: ...

``stats`` is the layer's `reality_stone.calibration.ActivationStats` (E[x xᵀ] of its inputs)
or None. What a codec can do is declared, never probed: ``config.capabilities`` (a
`Capabilities`: does ``encode`` use statistics, does ``matmul`` run a fused kernel, int8
activations, a trainable module), and ``error_bound`` (the relative Frobenius error the default
config stays under on `metrics.reference_weight` — the shared suite holds every codec to it).

``encode`` returns an `Encoded`: ``decode()`` gives the (out, in) weight back, ``matmul(x)``
computes ``x @ W.T`` (fused where the codec allows, else decode + matmul), ``to_bytes()``
serialises it and ``nbytes`` counts every stored byte — payload, scales, seeds, indices, shape
and config header — by arithmetic on the shape and config (``payload_nbytes``), so it costs
nothing to ask; the suite checks it equals ``len(to_bytes())``.

Adding a codec is one module in this package (imported automatically) plus its test module;
docs/codecs/adding-a-codec.md walks through a complete 40-line example that the test suite runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import struct
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "CALIBRATION_MODES",
    "Capabilities",
    "CodecConfig",
    "Encoded",
    "codec_class",
    "codec_config",
    "decode_bytes",
    "encoded_class",
    "register",
    "registered_codecs",
    "check_weight",
]

# name -> (config class, encoded class)
_REGISTRY: dict[str, tuple[type["CodecConfig"], type["Encoded"]]] = {}

# Serialised header: magic, format version, then a length-prefixed JSON blob naming the
# codec and its config, then the original shape. The payload follows.
MAGIC = b"RSC1"
FORMAT_VERSION = 1
CALIBRATION_MODES = ("unused", "optional", "required")


def register(name: str, encoded: type["Encoded"]):
    """Class decorator: register a `CodecConfig` subclass under ``name``; ``encoded`` is the
    `Encoded` type its ``encode`` returns and whose ``from_payload`` reads it back."""

    def deco(cls: type[CodecConfig]) -> type[CodecConfig]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"codec {name!r} is already registered by {_REGISTRY[name][0].__name__}")
        if cls.calibration not in CALIBRATION_MODES:
            raise ValueError(f"codec {name!r}: calibration must be one of {CALIBRATION_MODES}, got {cls.calibration!r}")
        if not (isinstance(encoded, type) and issubclass(encoded, Encoded)):
            raise TypeError(f"codec {name!r}: encoded must be an Encoded subclass, got {encoded!r}")
        if not (isinstance(cls.error_bound, float) and 0 < cls.error_bound < 1):
            raise ValueError(f"codec {name!r}: declare error_bound, a float in (0, 1)")
        cls.description, cls.use_when = _describe(name, cls)
        cls.codec_name = name
        _REGISTRY[name] = (cls, encoded)
        return cls

    return deco


def _describe(name: str, cls: type) -> tuple[str, str]:
    """(description, use_when) from the config class's own docstring: its first paragraph is the
    one-line description `reality-stone codecs` shows, the paragraph that starts "Use when:" is
    the sentence on the codec's docs page (optional). Paragraphs are folded to one line."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc.strip() or doc.startswith(cls.__name__ + "("):  # none, or the signature @dataclass writes
        raise ValueError(f"codec {name!r}: give {cls.__name__} a docstring; its first paragraph is the codec's "
                         "one-line description")
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n") if p.strip()]
    use_when = next((p.removeprefix("Use when:").strip() for p in paragraphs if p.startswith("Use when:")), "")
    return paragraphs[0].rstrip("."), use_when


def registered_codecs() -> list[str]:
    """Names of all registered codecs, sorted."""
    return sorted(_REGISTRY)


def codec_class(name: str) -> type["CodecConfig"]:
    """The registered config class ``name`` (unknown -> ValueError listing the registered ones)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown codec {name!r}; registered: {', '.join(registered_codecs())}")
    return _REGISTRY[name][0]


def encoded_class(name: str) -> type["Encoded"]:
    """The `Encoded` type the codec ``name`` produces and reads back."""
    codec_class(name)  # the error for an unknown name
    return _REGISTRY[name][1]


def codec_config(name: str, **kwargs: Any) -> "CodecConfig":
    """Build the registered config ``name`` with ``kwargs`` (unknown names/fields -> ValueError).

    A codec with presets (``seedbasis``) also takes ``preset="3.5"``; other fields override it.
    """
    cls = codec_class(name)
    if "preset" in kwargs:
        presets = getattr(cls, "PRESETS", None)
        if presets is None:
            raise ValueError(f"codec {name!r} has no presets")
        key = str(kwargs.pop("preset"))
        if key not in presets:
            raise ValueError(f"unknown preset {key!r} for codec {name!r}; choose from {sorted(presets)}")
        kwargs = presets[key] | kwargs
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"codec {name!r} has no option(s) {sorted(unknown)}; options: {sorted(fields)}")
    return cls(**kwargs)


def check_weight(weight: Tensor) -> None:
    """Every codec's input contract: a finite, non-empty, 2-D floating-point (out, in) matrix."""
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty: shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or Inf")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a codec config can do, declared by the codec (never probed from an object).

    calibration: "unused" (``stats`` ignored), "optional" (data-free without, output-error-aware
      with) or "required" (ValueError without).
    fused_matmul: ``Encoded.matmul`` runs a kernel that never builds the dense weight.
    int8_activations: ``Encoded.matmul_int8_activations(x)`` exists (x quantised to int8 per group; the
    seed basis: per 64 inputs).
    trainable: ``Encoded.to_module()`` gives an ``nn.Module`` whose parameters are the stored values.
    """

    calibration: str = "unused"
    fused_matmul: bool = False
    int8_activations: bool = False
    trainable: bool = False


class CodecConfig:
    """Base of the registered config dataclasses. Subclasses implement ``encode``.

    Declared, not probed: ``calibration`` (one of `CALIBRATION_MODES`), ``error_bound`` and
    ``capabilities`` (see `Capabilities`). The subclass's docstring describes it: `register` sets
    ``description`` from its first paragraph (one line for `reality-stone codecs`) and
    ``use_when`` from a paragraph starting "Use when:" (for the codec's docs page).
    """

    codec_name: ClassVar[str] = ""
    calibration: ClassVar[str] = "unused"
    description: ClassVar[str] = ""  # set by `register` from the docstring
    use_when: ClassVar[str] = ""
    # relative Frobenius error of the default config on `metrics.reference_weight` (shapes from
    # 37×53 up) stays below this; measured by tests/codecs/test_all_codecs.py
    error_bound: ClassVar[float] = 0.0

    def encode(self, weight: Tensor, stats=None) -> "Encoded":  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def capabilities(self) -> Capabilities:
        """This config's `Capabilities` (the default: only ``calibration``)."""
        return Capabilities(calibration=self.calibration)

    def nominal_bits_per_weight(self) -> float | None:
        """Bits per weight before headers and padding (None where it depends on the weight)."""
        return None

    def ladder(self) -> tuple["CodecConfig", ...]:
        """Configs a mixed bit allocation (`reality_stone.models.allocation`) may give a layer in
        place of this one — this one included, each with a ``nominal_bits_per_weight`` — or ()
        where the codec offers none."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@functools.lru_cache(maxsize=256)
def _config_header(config: CodecConfig) -> bytes:
    """Magic, format version, codec name + config (JSON) — shared by every tensor of a config."""
    meta = json.dumps({"codec": config.codec_name, "config": config.to_dict()}, sort_keys=True,
                      separators=(",", ":")).encode()
    return MAGIC + struct.pack("<BI", FORMAT_VERSION, len(meta)) + meta


class Encoded(ABC):
    """A compressed (out, in) weight matrix."""

    config: CodecConfig
    shape: tuple[int, int]

    @abstractmethod
    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The reconstructed weight, shape ``self.shape``."""

    def matmul(self, x: Tensor) -> Tensor:
        """``x @ W.T`` for ``x`` (..., in). Reference path: decode, then matmul."""
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        return x @ self.decode(x.dtype).T

    def decode_rows(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Rows ``rows`` (1-D int64 indices) of the weight, (len(rows), in) — what an embedding
        that reads a compressed matrix looks up. Reference: decode all, then index; codecs with
        row-wise storage decode only the rows asked for."""
        return self.decode(dtype)[rows]

    @abstractmethod
    def payload(self) -> bytes:
        """Codec-specific bytes (everything but the common header)."""

    @abstractmethod
    def payload_nbytes(self) -> int:
        """``len(self.payload())``, by arithmetic on the shape, config and stored counts."""

    @classmethod
    @abstractmethod
    def from_payload(cls, config: CodecConfig, shape: tuple[int, int], payload: bytes) -> "Encoded":
        """Inverse of ``payload``; checks the byte count before allocating (ValueError)."""

    def header(self) -> bytes:
        """Magic, format version, codec name + config (JSON), shape."""
        return _config_header(self.config) + struct.pack("<II", *self.shape)

    def to_bytes(self) -> bytes:
        return self.header() + self.payload()

    @property
    def nbytes(self) -> int:
        """Every stored byte (= ``len(self.to_bytes())``), computed without serialising."""
        return len(_config_header(self.config)) + 8 + self.payload_nbytes()

    def compression_ratio(self, dtype: torch.dtype = torch.float32) -> float:
        """Dense bytes at ``dtype`` (fp32 by default; pass torch.float16 for the fp16 ratio) / nbytes."""
        elem = torch.empty((), dtype=dtype).element_size()
        return self.shape[0] * self.shape[1] * elem / self.nbytes

    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])


def decode_bytes(data: bytes) -> Encoded:
    """Inverse of `Encoded.to_bytes`. Corrupt, truncated or unknown-version data -> ValueError."""
    if len(data) < len(MAGIC) + 5 or data[: len(MAGIC)] != MAGIC:
        raise ValueError("not a Reality Stone encoded tensor (bad magic)")
    version, meta_len = struct.unpack_from("<BI", data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported encoded-tensor format version {version} (this build reads {FORMAT_VERSION})")
    start = len(MAGIC) + 5
    if len(data) < start + meta_len + 8:
        raise ValueError("truncated encoded tensor header")
    try:
        meta = json.loads(data[start : start + meta_len])
        name, cfg = meta["codec"], meta["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt encoded tensor header: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(name, str):
        raise ValueError("corrupt encoded tensor header: codec name/config have the wrong type")
    try:
        config = codec_config(name, **cfg)
    except TypeError as exc:  # a field of the wrong type reached the config's validation
        raise ValueError(f"corrupt encoded tensor header: {exc}") from None
    shape = struct.unpack_from("<II", data, start + meta_len)
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"corrupt encoded tensor: shape {shape}")
    return encoded_class(name).from_payload(config, shape, data[start + meta_len + 8 :])
