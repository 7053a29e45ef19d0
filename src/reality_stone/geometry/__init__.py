"""Hyperbolic geometry: stateless math per model + thin manifold classes.

``poincare``, ``lorentz`` and ``klein`` hold the functions (keyword-only curvature ``c``,
batched over leading dims); `PoincareBall`, `Lorentz` and `Klein` own a (learnable)
curvature and forward to them; ``conversions`` holds the exact isometries between models;
``to_geoopt`` / ``from_geoopt`` convert manifolds to and from geoopt's.
"""

from reality_stone.geometry import conversions, klein, lorentz, poincare
from reality_stone.geometry.interop import from_geoopt, to_geoopt
from reality_stone.geometry.klein import Klein
from reality_stone.geometry.lorentz import Lorentz
from reality_stone.geometry.manifold import Manifold
from reality_stone.geometry.parameter import ManifoldParameter
from reality_stone.geometry.poincare import PoincareBall
from reality_stone.geometry.validation import boundary_eps

__all__ = [
    "Klein",
    "Lorentz",
    "Manifold",
    "ManifoldParameter",
    "PoincareBall",
    "boundary_eps",
    "conversions",
    "from_geoopt",
    "klein",
    "lorentz",
    "poincare",
    "to_geoopt",
]
