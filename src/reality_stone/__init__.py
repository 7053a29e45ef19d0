"""Reality Stone: exact hyperbolic layers and geometric weight compression for PyTorch."""

__version__ = "0.1.0"
