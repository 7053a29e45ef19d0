"""Weights constrained to a curve: spline rows (Euclidean and geodesic) and height fields.

SPEC §2 / seed 000. ``SplineLinear(in, out, k)`` stores k + 1 control points P_j ∈ R^in; row
i (0-based) of the (out, in) weight is the uniform **Catmull–Rom** spline S(t_i),
t_i = i/(out − 1)·k, which passes through P_j at t = j (end segments use the end point as
the missing neighbour). S is linear in P, so W = M P with a fixed (out, k + 1) interpolation
matrix M and the forward never needs W: y = ((x Pᵀ) Mᵀ) + b costs O((in + out)(k + 1)) per
row instead of O(in·out). Parameters (k + 1)·in vs out·in: ratio (k + 1)/out.

``GeodesicSplineLinear`` puts the control points on the Poincaré ball (stored as tangent
vectors at the origin, P_j = exp0(v_j)) and interpolates along geodesics: on segment j the
Catmull–Rom combination is taken in the tangent space at P_j, row = exp_{P_j}(Σ_a w_a
log_{P_j}(P_a)) — through every P_j, on the ball, and the Euclidean spline as c → 0.

``HeightFieldLinear`` has rows W_i = [u_i, h(u_i)] with u_i ∈ R^(in−1) free and h a small
MLP: the rows lie on a learnt hypersurface (a constraint, barely a saving: see
``parameter_ratio``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from reality_stone.geometry import PoincareBall

__all__ = ["GeodesicSplineLinear", "HeightFieldLinear", "SplineLinear", "catmull_rom_matrix"]


def _catmull_rom_weights(m: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row i: its segment j (m,), the 4 control-point indices j−1 … j+2 (m, 4) and their
    weights (m, 4) at u = t_i − j."""
    t = torch.arange(m, dtype=torch.float64) * k / (m - 1)
    j = t.floor().clamp(max=k - 1)
    u = (t - j)[:, None]
    w = 0.5 * torch.cat([-u + 2 * u**2 - u**3, 2 - 5 * u**2 + 3 * u**3, u + 4 * u**2 - 3 * u**3, -u**2 + u**3], 1)
    idx = (j[:, None].long() + torch.arange(-1, 3)).clamp(0, k)  # end points stand in for missing neighbours
    return j.long(), idx, w


def catmull_rom_matrix(m: int, k: int, dtype=torch.float64) -> Tensor:
    """(m, k + 1) matrix M with (M P)_i = S(t_i), t_i = i/(m−1)·k (uniform Catmull–Rom)."""
    _check_k(m, k)
    _, idx, w = _catmull_rom_weights(m, k)
    M = torch.zeros(m, k + 1, dtype=torch.float64)
    M.scatter_add_(1, idx, w)
    return M.to(dtype)


def _check_k(m: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k >= m:
        raise ValueError(f"k must be < out_features ({m}): k + 1 control points for {m} rows, got k={k}")


def _check_sizes(in_features: int, out_features: int, min_in: int = 1) -> None:
    for name, v, lo in (("in_features", in_features, min_in), ("out_features", out_features, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


class _CurveLinear(nn.Module):
    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features, {self.in_features} expected")

    def parameter_ratio(self) -> float:
        """Stored parameters of the weight / out·in (bias excluded)."""
        n = sum(p.numel() for name, p in self.named_parameters() if name != "bias" and not name.endswith("log_c"))
        return n / (self.in_features * self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias

    def _fit(self, params, residual, target: Tensor, steps: int, lr: float) -> tuple["_CurveLinear", float]:
        """``steps`` Adam steps on ‖residual()‖²_F over ``params``; returns (self, relative Frobenius
        error of the fitted weight to ``target``) — the tail of every ``from_dense``."""
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            residual().pow(2).sum().backward()
            opt.step()
        with torch.no_grad():
            return self, float((self.weight - target).norm() / target.norm().clamp_min(1e-30))


class SplineLinear(_CurveLinear):
    """``y = x Wᵀ + b`` with W's rows on a Catmull–Rom spline through k + 1 control points."""

    def __init__(self, in_features: int, out_features: int, k: int, bias: bool = True, *, dtype=None, generator=None):
        super().__init__()
        _check_sizes(in_features, out_features)
        _check_k(out_features, k)
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.register_buffer("interp", catmull_rom_matrix(out_features, k, dtype), persistent=False)
        bound = 1 / math.sqrt(in_features)  # nn.Linear's init range for the control points
        self.control = nn.Parameter(((torch.rand(k + 1, in_features, generator=generator, dtype=torch.float64) * 2 - 1)
                                     * bound).to(dtype))
        self.bias = nn.Parameter(((torch.rand(out_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
                                 .to(dtype)) if bias else None

    @property
    def weight(self) -> Tensor:
        return self.interp @ self.control

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        y = (x @ self.control.T) @ self.interp.T  # never forms W: O((in + out)(k + 1)) per row
        return y if self.bias is None else y + self.bias

    @classmethod
    def from_dense(cls, weight: Tensor, k: int, bias: Tensor | None = None) -> tuple["SplineLinear", float]:
        """Least-squares control points for ``weight`` (out, in) — exact, since W = M P is linear
        in P. Returns the layer and the relative Frobenius error."""
        W = _check_dense(weight)
        layer = cls(W.shape[1], W.shape[0], k, bias=bias is not None, dtype=W.dtype)
        with torch.no_grad():
            layer.control.copy_(torch.linalg.lstsq(layer.interp.double(), W.double()).solution.to(W.dtype))
            if bias is not None:
                layer.bias.copy_(bias)
            return layer, float((layer.weight - W).norm() / W.norm().clamp_min(1e-30))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
                f"parameter_ratio={self.parameter_ratio():.4f}, spline=catmull-rom")


class GeodesicSplineLinear(_CurveLinear):
    """Rows on a geodesic Catmull–Rom spline through k + 1 control points on the Poincaré ball."""

    def __init__(self, in_features: int, out_features: int, k: int, bias: bool = True, *, c: float = 1.0,
                 learn_c: bool = True, dtype=None, generator=None):
        super().__init__()
        _check_sizes(in_features, out_features)
        _check_k(out_features, k)
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.ball = PoincareBall(c, learn_c=learn_c, check=False, dtype=dtype)
        seg, nbr, w = _catmull_rom_weights(out_features, k)
        self.register_buffer("seg", seg, persistent=False)
        self.register_buffer("nbr", nbr, persistent=False)
        self.register_buffer("w", w.to(dtype), persistent=False)
        bound = 1 / math.sqrt(in_features)
        self.tangent = nn.Parameter(((torch.rand(k + 1, in_features, generator=generator, dtype=torch.float64) * 2 - 1)
                                     * bound).to(dtype))
        self.bias = nn.Parameter(((torch.rand(out_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
                                 .to(dtype)) if bias else None

    @property
    def control(self) -> Tensor:
        """(k + 1, in) control points on the ball."""
        return self.ball.expmap0(self.tangent)

    @property
    def weight(self) -> Tensor:
        P = self.control
        base = P[self.seg]  # (out, in): P_j of each row's segment
        logs = self.ball.logmap(base[:, None, :].expand(-1, 4, -1), P[self.nbr])  # (out, 4, in)
        return self.ball.expmap(base, (self.w[..., None] * logs).sum(1))

    @classmethod
    def from_dense(cls, weight: Tensor, k: int, bias: Tensor | None = None, *, c: float = 1.0, steps: int = 500,
                   lr: float = 0.01) -> tuple["GeodesicSplineLinear", float]:
        """Fit: Euclidean least-squares control points (pulled into the ball) refined by Adam on
        ‖W(P) − weight‖_F. Returns the layer and the relative Frobenius error. Rows of W must fit
        in the ball of radius 1/√c: scale the weight first if they do not."""
        W = _check_dense(weight)
        eu, _ = SplineLinear.from_dense(W, k)
        layer = cls(W.shape[1], W.shape[0], k, bias=bias is not None, c=c, learn_c=False, dtype=W.dtype)
        with torch.no_grad():
            P = eu.control.detach()
            limit = 0.95 / math.sqrt(c)
            P = P * (limit / P.norm(dim=-1, keepdim=True).clamp_min(limit))  # inside the ball
            layer.tangent.copy_(layer.ball.logmap0(P))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer._fit([layer.tangent], lambda: layer.weight - W, W, steps, lr)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
                f"parameter_ratio={self.parameter_ratio():.4f}, spline=geodesic catmull-rom")


class HeightFieldLinear(_CurveLinear):
    """Rows W_i = [u_i, h(u_i)]: u_i ∈ R^(in−1) free, h: R^(in−1) → R a small MLP (tanh, ``hidden`` units)."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 16, bias: bool = True, *, dtype=None):
        super().__init__()
        _check_sizes(in_features, out_features, min_in=2)
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features, self.hidden = in_features, out_features, hidden
        lin = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
        self.u = nn.Parameter(lin.weight.detach()[:, :-1].clone())
        self.h = nn.Sequential(nn.Linear(in_features - 1, hidden, dtype=dtype), nn.Tanh(),
                               nn.Linear(hidden, 1, dtype=dtype))
        self.bias = nn.Parameter(lin.bias.detach().clone()) if bias else None

    @property
    def weight(self) -> Tensor:
        return torch.cat([self.u, self.h(self.u)], dim=1)

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None = None, *, hidden: int = 16, steps: int = 1000,
                   lr: float = 0.01, seed: int = 0) -> tuple["HeightFieldLinear", float]:
        """u = all but the last column (exact); h regressed onto the last column by Adam."""
        W = _check_dense(weight)
        torch.manual_seed(seed)
        layer = cls(W.shape[1], W.shape[0], hidden, bias=bias is not None, dtype=W.dtype)
        with torch.no_grad():
            layer.u.copy_(W[:, :-1])
            if bias is not None:
                layer.bias.copy_(bias)
        return layer._fit(layer.h.parameters(), lambda: layer.h(layer.u) - W[:, -1:], W, steps, lr)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, hidden={self.hidden}, "
                f"parameter_ratio={self.parameter_ratio():.4f}")


def _check_dense(weight: Tensor) -> Tensor:
    if weight.dim() != 2 or not bool(torch.isfinite(weight).all()):
        raise ValueError(f"weight must be a finite 2-D tensor, got shape {tuple(weight.shape)}")
    if weight.shape[0] < 2:
        raise ValueError("weight needs at least 2 rows")
    return weight.detach()
