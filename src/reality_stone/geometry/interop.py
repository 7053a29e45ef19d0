"""Conversions to and from geoopt's manifolds (geoopt is optional: imported on use).

    PoincareBall(c)  ↔  geoopt.PoincareBall(c=c)          (geoopt's k = −c)
    Lorentz(c)       ↔  geoopt.Lorentz(k=1/c)             (⟨x, x⟩_L = −1/c = −k)
    Klein(c)         →  no geoopt counterpart: convert the points with
                        `conversions.klein_to_poincare` and use PoincareBall

Points need no conversion: both libraries store the same coordinates for these models.
A learnable curvature stays learnable; its current value is copied (not shared).
"""

from __future__ import annotations

import torch

from reality_stone.geometry.klein import Klein
from reality_stone.geometry.lorentz import Lorentz
from reality_stone.geometry.manifold import Manifold
from reality_stone.geometry.poincare import PoincareBall

__all__ = ["from_geoopt", "to_geoopt"]


def _geoopt():
    try:
        import geoopt
    except ImportError:
        raise ImportError("geoopt is not installed (pip install geoopt)") from None
    return geoopt


def to_geoopt(manifold: Manifold):
    """The geoopt manifold with the same points and curvature."""
    geoopt = _geoopt()
    c = float(manifold.c.detach())
    learn = bool(manifold.learn_c)
    if isinstance(manifold, PoincareBall):
        return geoopt.PoincareBall(c=c, learnable=learn)
    if isinstance(manifold, Lorentz):
        return geoopt.Lorentz(k=1.0 / c, learnable=learn)
    if isinstance(manifold, Klein):
        raise ValueError("geoopt has no Klein model: convert the points with "
                         "reality_stone.geometry.conversions.klein_to_poincare and use PoincareBall")
    raise ValueError(f"no geoopt counterpart for {type(manifold).__name__}")


def from_geoopt(manifold, *, check: bool = True, dtype: torch.dtype = torch.float64) -> Manifold:
    """This library's manifold for a geoopt ``PoincareBall`` / ``Stereographic`` with k < 0 /
    ``Lorentz`` (anything else: ValueError naming what is supported)."""
    geoopt = _geoopt()
    learn = any(p.requires_grad for p in manifold.parameters()) if hasattr(manifold, "parameters") else False
    if isinstance(manifold, geoopt.Lorentz):
        k = float(manifold.k.detach())
        return Lorentz(1.0 / k, learn_c=learn, check=check, dtype=dtype)
    if isinstance(manifold, geoopt.Stereographic):  # PoincareBall is a Stereographic with k = −c
        k = float(manifold.k.detach())
        if not k < 0:
            raise ValueError(f"geoopt Stereographic with k = {k} is not hyperbolic (k < 0 needed)")
        return PoincareBall(-k, learn_c=learn, check=check, dtype=dtype)
    raise ValueError(f"cannot convert geoopt {type(manifold).__name__}: supported are PoincareBall, "
                     "Stereographic (k < 0) and Lorentz")
