"""The library core: whole-model compression (one layer-selection policy), the compressed-model file
format, streamed compression of checkpoints larger than memory, and the batch-1 `Decoder`. The evaluation harness is
`reality_stone.evaluation`."""

from reality_stone.models.compress import CompressionReport, LayerReport, compress, compressible_layers
from reality_stone.models.decoder import Decoder
from reality_stone.models.format import load, read_metadata, save
from reality_stone.models.streaming import compress_checkpoint

__all__ = ["CompressionReport", "Decoder", "LayerReport", "compress", "compressible_layers", "compress_checkpoint", "load", "read_metadata", "save"]
