"""Fused compressed matmuls, each beside its plain-torch reference."""
