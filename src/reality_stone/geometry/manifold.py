"""Base class of the manifolds: owns the curvature, nothing else.

The math lives in stateless functions (``poincare.py``, ``lorentz.py``, ``klein.py``);
subclasses only forward to them with ``c=self.c``. The base class is an ``nn.Module`` so
a learnable curvature is a parameter of whatever model holds the manifold.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Manifold"]


class Manifold(nn.Module):
    """A hyperbolic model with sectional curvature -c, c > 0.

    ``c`` is stored as ``log_c`` (so it stays positive under any gradient step) and is a
    parameter when ``learn_c`` is true, a buffer otherwise. ``check`` is forwarded to every
    operation: with it, NaN/Inf inputs and points off the manifold raise ``ValueError``.
    """

    name = "manifold"
    # The module of stateless functions the methods forward to: the one that defines the
    # subclass (``poincare.py`` for `PoincareBall`, …), set by ``__init_subclass__``.
    ops: ClassVar[ModuleType]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.ops = sys.modules[cls.__module__]

    def __init__(self, c: float = 1.0, *, learn_c: bool = False, check: bool = True, dtype=torch.float64):
        super().__init__()
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (0 < c < math.inf):
            raise ValueError(f"curvature c must be a positive finite number, got {c!r}")
        log_c = torch.tensor(math.log(c), dtype=dtype)
        if learn_c:
            self.log_c = nn.Parameter(log_c)
        else:
            self.register_buffer("log_c", log_c)
        self.learn_c = learn_c
        self.check = check

    @property
    def c(self) -> Tensor:
        """Curvature magnitude c = exp(log_c) (scalar tensor, carries grad if learnable)."""
        return self.log_c.exp()

    def extra_repr(self) -> str:
        return f"c={float(self.c.detach()):.4g}, learn_c={self.learn_c}, check={self.check}"

    # Every model has these two, with one signature: forwarded here, once.
    def check_point(self, x: Tensor) -> None:
        """ValueError unless every point of ``x`` (..., n) is finite and on the manifold."""
        self.ops.check_point(x, c=self.c)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """Geodesic distance between ``x`` and ``y`` (broadcast), shape (...) or (..., 1)."""
        return self.ops.dist(x, y, c=self.c, keepdim=keepdim, check=self.check)

    # The maps Poincaré and Lorentz share, with one signature each: forwarded here, once. A model
    # whose module lacks the function (Klein has no maps) raises NotImplementedError.
    def _op(self, name: str):
        fn = getattr(self.ops, name, None)
        if fn is None:
            raise NotImplementedError(f"{type(self).__name__} has no {name}; convert to PoincareBall or Lorentz")
        return fn

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """Exponential map at ``x`` of the tangent ``u``, shape (..., n)."""
        return self._op("expmap")(x, u, c=self.c, check=self.check)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """Logarithmic map at ``x`` of the point ``y`` (inverse of `expmap`), shape (..., n)."""
        return self._op("logmap")(x, y, c=self.c, check=self.check)

    def expmap0(self, u: Tensor) -> Tensor:
        """Exponential map at the origin, shape (..., n)."""
        return self._op("expmap0")(u, c=self.c, check=self.check)

    def logmap0(self, y: Tensor) -> Tensor:
        """Logarithmic map at the origin, shape (..., n)."""
        return self._op("logmap0")(y, c=self.c, check=self.check)

    def dist0(self, x: Tensor, keepdim: bool = False) -> Tensor:
        """Distance from the origin, shape (...) or (..., 1)."""
        return self._op("dist0")(x, c=self.c, keepdim=keepdim, check=self.check)

    def parallel_transport(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport of ``v`` ∈ T_x along the geodesic to ``y``, shape (..., n)."""
        return self._op("parallel_transport")(x, y, v, c=self.c, check=self.check)

    def egrad2rgrad(self, x: Tensor, grad: Tensor) -> Tensor:
        """Riemannian gradient at ``x`` from the Euclidean ``grad``, shape (..., n)."""
        return self._op("egrad2rgrad")(x, grad, c=self.c, check=self.check)

    # Each model has its own signature for these two (Poincaré/Klein take ``eps``).
    def inner(self, x: Tensor, u: Tensor, v: Tensor, keepdim: bool = False) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def project(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
