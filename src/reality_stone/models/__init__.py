"""The library core: whole-model compression (one layer-selection policy), the compressed-model file
format, and streamed compression of checkpoints larger than memory. The evaluation harness is
`reality_stone.evaluation`."""

from reality_stone.models.compress import CompressionReport, LayerReport, compress, compressible_layers
from reality_stone.models.format import load, read_metadata, save
from reality_stone.models.streaming import compress_checkpoint

__all__ = ["CompressionReport", "LayerReport", "compress", "compressible_layers", "compress_checkpoint", "load", "read_metadata", "save"]
