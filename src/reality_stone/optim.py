"""Riemannian SGD and Adam for `ManifoldParameter`s (plain tensors get the Euclidean update).

geoopt's ``ManifoldParameter`` / ``ManifoldTensor`` are stepped on their own manifold
(``egrad2rgrad``, ``retr``, ``transp``, ``inner``); any other tensor carrying a ``manifold``
this optimiser cannot step on raises ValueError instead of silently taking a Euclidean step.

RiemannianSGD (Bonnabel 2013): x ← exp_x(-lr · rgrad), momentum transported along the step.
RiemannianAdam (Bécigneul & Ganea 2019): Adam's first moment is a tangent vector transported
with the point; the second moment is the squared Riemannian norm of the gradient, one scalar
per point (the manifold's last dim is one "component"). Steps have Riemannian length ≈ lr.

Sparse (row) gradients — ``F.embedding(..., sparse=True)`` on a table of points — update
only the rows they touch, their moments included ("lazy", as ``torch.optim.SparseAdam``):
the cost of a step follows the batch, not the table.

Weight decay is not offered: on a manifold it has no canonical meaning (decay towards
which point?); add a penalty to the loss instead.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from reality_stone.geometry.parameter import ManifoldParameter

__all__ = ["RiemannianAdam", "RiemannianSGD"]


class _GeooptSteps:
    """geoopt's manifold API under the names the optimisers call (retraction as the step:
    geoopt's own recommendation — expmap followed by the manifold's projection)."""

    def __init__(self, manifold):
        self.m = manifold

    def egrad2rgrad(self, x, g):
        return self.m.egrad2rgrad(x, g)

    def expmap(self, x, u):
        return self.m.retr(x, u)

    def parallel_transport(self, x, y, v):
        return self.m.transp(x, y, v)

    def inner(self, x, u, v, keepdim=False):
        return self.m.inner(x, u, v, keepdim=keepdim)


def _manifold_of(p):
    """The manifold to step ``p`` on: ours, geoopt's (adapted), or None for a plain tensor."""
    if isinstance(p, ManifoldParameter):
        return p.manifold
    m = getattr(p, "manifold", None)
    if m is None:
        return None
    if all(callable(getattr(m, a, None)) for a in ("egrad2rgrad", "retr", "transp", "inner")):
        return _GeooptSteps(m)
    raise ValueError(f"a parameter carries a manifold of type {type(m).__name__} that this optimiser cannot step "
                     "on (it needs egrad2rgrad, retr, transp and inner, as geoopt's manifolds have)")


def _check_manifolds(groups) -> None:
    for group in groups:  # fail at construction, not at the first step
        for p in group["params"]:
            _manifold_of(p)


def _check_hparams(lr: float, **named: float) -> None:
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be positive and finite, got {lr}")
    for name, v in named.items():
        if not (0 <= v < 1):
            raise ValueError(f"{name} must be in [0, 1), got {v}")


class _RiemannianOptimizer(Optimizer):
    """The step loop both optimisers share: closure, parameters with gradients, their manifold
    (None: Euclidean). Subclasses implement ``_update(p, m, group)``."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, _manifold_of(p), group)
        return loss

    def _update(self, p, m, group) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class RiemannianSGD(_RiemannianOptimizer):
    """SGD with optional momentum; geodesic steps for `ManifoldParameter`s."""

    def __init__(self, params, lr: float, momentum: float = 0.0):
        _check_hparams(lr, momentum=momentum)
        super().__init__(params, dict(lr=lr, momentum=momentum))
        _check_manifolds(self.param_groups)

    def _update(self, p, m, group) -> None:
        lr, mom = group["lr"], group["momentum"]
        if p.grad.is_sparse:
            self._sparse_step(p, m, lr, mom)
            return
        g = m.egrad2rgrad(p.data, p.grad) if m is not None else p.grad
        if mom > 0:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            buf = g.clone() if buf is None else buf.mul_(mom).add_(g)
            direction = buf
        else:
            direction = g
        if m is None:
            p.add_(direction, alpha=-lr)
            return
        new = m.expmap(p.data, -lr * direction)
        if mom > 0:
            state["momentum_buffer"] = m.parallel_transport(p.data, new, buf)
        p.copy_(new)

    def _sparse_step(self, p, m, lr: float, mom: float) -> None:
        rows, grad = _rows(p.grad)
        x = p.data[rows]
        g = m.egrad2rgrad(x, grad) if m is not None else grad
        direction = g
        if mom > 0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.data)
            buf = state["momentum_buffer"][rows].mul_(mom).add_(g)
            direction = buf
        new = m.expmap(x, -lr * direction) if m is not None else x - lr * direction
        if mom > 0:
            state["momentum_buffer"][rows] = m.parallel_transport(x, new, buf) if m is not None else buf
        p.data[rows] = new


def _rows(grad):
    """(row indices, (k, ...) values) of a sparse gradient over the first dim, duplicates summed."""
    grad = grad.coalesce()
    if grad.sparse_dim() != 1:
        raise ValueError(f"sparse gradients must be sparse over the rows only, got sparse_dim={grad.sparse_dim()}")
    return grad.indices()[0], grad.values()


class RiemannianAdam(_RiemannianOptimizer):
    """Adam with geodesic steps and transported moments for `ManifoldParameter`s."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        _check_hparams(lr, beta1=betas[0], beta2=betas[1])
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        _check_manifolds(self.param_groups)

    def moments(self, p) -> dict:
        """``p``'s state — step count, ``exp_avg`` (like p) and ``exp_avg_sq`` ((..., 1) on a
        manifold, like p otherwise) — created at zero on first use. Fused steps that update a
        parameter themselves (`kernels.poincare_embedding`) keep it here, so checkpoints and
        `state_dict` see one state."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            sq_shape = p.shape[:-1] + (1,) if _manifold_of(p) is not None else p.shape
            state["exp_avg_sq"] = torch.zeros(sq_shape, dtype=p.dtype, device=p.device)
        return state

    def _update(self, p, m, group) -> None:
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        state = self.moments(p)
        state["step"] += 1
        t = state["step"]
        if p.grad.is_sparse:
            self._sparse_step(p, m, state, lr, b1, b2, eps, t)
            return
        if m is None:
            g = p.grad
            sq = g * g
        else:
            g = m.egrad2rgrad(p.data, p.grad)
            sq = m.inner(p.data, g, g, keepdim=True)
        state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        state["exp_avg_sq"].mul_(b2).add_(sq, alpha=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(eps)
        direction = state["exp_avg"] / (1 - b1**t) / denom
        if m is None:
            p.add_(direction, alpha=-lr)
            return
        new = m.expmap(p.data, -lr * direction)
        state["exp_avg"] = m.parallel_transport(p.data, new, state["exp_avg"])
        p.copy_(new)

    @staticmethod
    def _sparse_step(p, m, state, lr: float, b1: float, b2: float, eps: float, t: int) -> None:
        rows, grad = _rows(p.grad)
        x = p.data[rows]
        if m is None:
            g, sq = grad, grad * grad
        else:
            g = m.egrad2rgrad(x, grad)
            sq = m.inner(x, g, g, keepdim=True)
        exp_avg = state["exp_avg"][rows].mul_(b1).add_(g, alpha=1 - b1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(b2).add_(sq, alpha=1 - b2)
        direction = exp_avg / (1 - b1**t) / (exp_avg_sq / (1 - b2**t)).sqrt_().add_(eps)
        if m is None:
            new = x - lr * direction
        else:
            new = m.expmap(x, -lr * direction)
            exp_avg = m.parallel_transport(x, new, exp_avg)
        state["exp_avg"][rows] = exp_avg
        state["exp_avg_sq"][rows] = exp_avg_sq
        p.data[rows] = new
