"""Manifold-valued parameters: an ``nn.Parameter`` that knows its manifold."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from reality_stone.geometry.manifold import Manifold

__all__ = ["ManifoldParameter"]


class ManifoldParameter(nn.Parameter):
    """A parameter whose rows are points of ``manifold``.

    Riemannian optimisers (`reality_stone.optim`) update it along geodesics; ordinary
    torch optimisers would treat it as Euclidean and may leave the manifold.
    The manifold's own parameters (e.g. a learnable c) are not owned by this tensor:
    register the manifold in a module (or pass its parameters to an optimiser) to learn them.
    """

    def __new__(cls, data: Tensor, manifold: Manifold, requires_grad: bool = True):
        if not isinstance(manifold, Manifold):
            raise ValueError(f"manifold must be a reality_stone Manifold, got {type(manifold).__name__}")
        with torch.no_grad():
            manifold.check_point(data)
        instance = nn.Parameter.__new__(cls, data, requires_grad)
        instance.manifold = manifold
        return instance

    def __repr__(self) -> str:
        return f"ManifoldParameter on {self.manifold.name}:\n{super().__repr__()}"

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)(
            self.data.clone(memory_format=torch.preserve_format),
            copy.deepcopy(self.manifold, memo),
            self.requires_grad,
        )
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, proto):
        # Keep the manifold through deepcopy/pickle of modules holding this parameter.
        return (_rebuild, (self.data, self.manifold, self.requires_grad))


def _rebuild(data, manifold, requires_grad):
    return ManifoldParameter(data, manifold, requires_grad)
