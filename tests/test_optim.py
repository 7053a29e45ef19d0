import pytest
import torch

from reality_stone.geometry import Lorentz, ManifoldParameter, PoincareBall
from reality_stone.geometry import conversions as C
from reality_stone.geometry import poincare as P
from reality_stone.optim import RiemannianAdam, RiemannianSGD

F64 = torch.float64


def _frechet_grad_norm(mu, pts, c):
    mu = mu.detach().clone().requires_grad_()
    (P.dist(mu.expand_as(pts), pts, c=c) ** 2).mean().backward()
    return P.egrad2rgrad(mu.detach(), mu.grad, c=c).norm()


@pytest.mark.parametrize(
    "opt_cls,kw", [(RiemannianSGD, dict(lr=0.2)), (RiemannianSGD, dict(lr=0.1, momentum=0.5)), (RiemannianAdam, dict(lr=0.02))]
)
def test_frechet_mean_on_the_ball(opt_cls, kw):
    c = 1.5
    pts = P.random_point(20, 3, c=c, std=0.8, dtype=F64, generator=torch.Generator().manual_seed(0))
    ball = PoincareBall(c)
    mu = ManifoldParameter(torch.full((1, 3), 0.3, dtype=F64), ball)
    opt = opt_cls([mu], **kw)
    start = _frechet_grad_norm(mu, pts, c)
    for _ in range(800):
        opt.zero_grad()
        (P.dist(mu.expand_as(pts), pts, c=c) ** 2).mean().backward()
        opt.step()
    assert float(_frechet_grad_norm(mu, pts, c)) < 1e-3 * float(start)
    ball.check_point(mu.detach())


def test_adam_on_the_hyperboloid_agrees_with_the_ball():
    # the Fréchet mean is a geometric object: computed on L it maps to the one on P
    c = 1.0
    pts = P.random_point(15, 2, c=c, dtype=F64, generator=torch.Generator().manual_seed(1))
    lpts = C.poincare_to_lorentz(pts, c=c)
    hyper = Lorentz(c)
    mu_l = ManifoldParameter(hyper.origin(1, 3, dtype=F64), hyper)
    mu_p = ManifoldParameter(torch.zeros(1, 2, dtype=F64), PoincareBall(c))
    opt = RiemannianAdam([mu_l, mu_p], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        loss = (hyper.dist(mu_l.expand_as(lpts), lpts) ** 2).sum() + (P.dist(mu_p.expand_as(pts), pts, c=c) ** 2).sum()
        loss.backward()
        opt.step()
    assert torch.allclose(C.lorentz_to_poincare(mu_l.detach(), c=c), mu_p.detach(), atol=1e-4)


def test_euclidean_params_get_plain_updates_and_learnable_curvature_trains():
    ball = PoincareBall(1.0, learn_c=True)
    w = torch.nn.Parameter(torch.tensor([[0.2, 0.1]], dtype=F64))  # a Euclidean tangent vector at 0
    opt = RiemannianAdam([w, *ball.parameters()], lr=0.05)
    target = torch.tensor(3.0, dtype=F64)
    for _ in range(300):
        opt.zero_grad()
        loss = (ball.dist0(ball.expmap0(w)).sum() - target) ** 2
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4
    assert ball.c.item() > 0


def test_manifold_parameter_rejects_off_manifold_data_and_bad_hparams():
    with pytest.raises(ValueError, match="outside"):
        ManifoldParameter(torch.tensor([[2.0, 0.0]]), PoincareBall(1.0))
    with pytest.raises(ValueError, match="lr"):
        RiemannianSGD([torch.nn.Parameter(torch.zeros(1))], lr=-1.0)
    with pytest.raises(ValueError, match="beta1"):
        RiemannianAdam([torch.nn.Parameter(torch.zeros(1))], betas=(1.0, 0.9))


def test_state_dict_and_deepcopy_keep_the_manifold():
    import copy

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ball = PoincareBall(0.5, learn_c=True)
            self.emb = ManifoldParameter(torch.zeros(3, 2), self.ball)

    m = M()
    m2 = copy.deepcopy(m)
    assert isinstance(m2.emb, ManifoldParameter) and m2.emb.manifold.name == "poincare"
    sd = m.state_dict()
    m3 = M()
    m3.load_state_dict(sd)
    assert torch.equal(m3.ball.log_c, m.ball.log_c)
