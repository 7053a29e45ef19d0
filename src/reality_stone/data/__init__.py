"""Loaders for the real data the project uses (all offline: Debian/PyPI packages, no hub)."""
