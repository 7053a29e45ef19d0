"""The configurations `reality-stone demo` runs (and the README's first table repeats)."""

from __future__ import annotations

from reality_stone.codecs import codec_config
from reality_stone.evaluation.experiment import Spec

__all__ = ["demo_specs"]


def demo_specs() -> list[Spec]:
    """fp32, then the best codecs we have at ~4 and ~3.5 bits per weight, and one extreme ratio.

    ~4 bpw: HQQ at group 64 (4.5 bpw; group 64, not 32, so SmolLM2's Q4_1 grid does not
    flatter it). ~3.5 bpw: data-free HQQ next to the data-aware seed basis, the best 3.5-bit
    configuration measured (benchmarks/seedbasis.py). Extreme: the seeds' hybrid RBE at "151:1".
    """
    return [
        Spec("fp32 (dense)"),
        Spec("HQQ 4-bit g64", codec_config("hqq", bits=4, group=64)),
        Spec("HQQ 3-bit g64", codec_config("hqq", bits=3, group=64)),
        Spec("seedbasis 3.5 data-aware", codec_config("seedbasis", preset="3.5"), calibrated=True),
        Spec("RBE poly-cos8+DCT K=50 (seed 004, '151:1')", codec_config("rbe", block=128, k=50)),
    ]
