"""The evaluation harness: real models and tokenizers (`loaders`), perplexity / KL / top-1 /
embedding fidelity / speed / memory (`metrics`), spec-by-spec experiments (`experiment`) and the
demo's spec list (`demo`). The library core (`reality_stone.models`, `reality_stone.calibration`)
never imports it."""

from reality_stone.evaluation.loaders import LoadedModel, load_model
from reality_stone.evaluation.metrics import perplexity, score_text

__all__ = ["LoadedModel", "load_model", "perplexity", "score_text"]
