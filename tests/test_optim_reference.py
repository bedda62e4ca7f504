"""Full trajectories of every SAM variant against an independent plain-tensor implementation of Algorithm 1.

The reference below is written from the paper (Algorithm 1, Remark 19) and from the documented meaning of
the flags, with plain tensor arithmetic: no foreach kernels, no torch.optim, no code from stablesam.optim.
"""
import math

import pytest
import torch

from stablesam.optim import SAM, ASAM, StableASAM, StableSAM, StableUSAM, USAM

STEPS = 8


def make_problem(seed=0):
    """A small tanh MLP regression: initial weights and a batch per step."""
    g = torch.Generator().manual_seed(seed)
    def randn(*shape): return torch.randn(*shape, generator=g, dtype=torch.float64)
    weights = [randn(6, 4) * 0.5, randn(6) * 0.1, randn(1, 6) * 0.5, randn(1) * 0.1]
    batches = [(randn(16, 4), randn(16, 1)) for _ in range(STEPS)]
    return weights, batches


def loss_fn(ws, batch):
    """Mean squared error of the MLP with weights `ws` on `batch`."""
    x, y = batch
    h = torch.tanh(x @ ws[0].T + ws[1])
    return ((h @ ws[2].T + ws[3] - y) ** 2).mean()


def grads_at(ws, batch):
    """Gradients of the loss at weights `ws` (plain autograd on detached copies)."""
    leaves = [w.detach().clone().requires_grad_() for w in ws]
    return [g.detach() for g in torch.autograd.grad(loss_fn(leaves, batch), leaves)]


def norm(ts):
    """Global L2 norm of a list of tensors."""
    return math.sqrt(sum(float((t * t).sum()) for t in ts))


def reference_trajectory(ws, batches, *, rho, adaptive, stable, normalize, gamma0=None, renorm_norm='plain',
                         base='sgd', lr=0.05, momentum=0.9, weight_decay=1e-3, group_of=None, groups=None):
    """Algorithm 1 step by step; `groups[i]` holds (rho, adaptive) of group i, `group_of[j]` the group of weight j."""
    ws = [w.clone() for w in ws]
    n = len(ws)
    group_of = group_of or [0] * n
    groups = groups or [(rho, adaptive)]
    buf, m, v = [None] * n, [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    out = []
    for t, batch in enumerate(batches, start=1):
        g = grads_at(ws, batch)                                                      # line 3
        T = [ws[j].abs() if groups[group_of[j]][1] else torch.ones_like(ws[j]) for j in range(n)]
        tnorm = norm([T[j] * g[j] for j in range(n)])
        e = []
        for j in range(n):                                                           # line 4
            r = groups[group_of[j]][0]
            d = T[j] ** 2 * g[j]
            e.append(r * d / (tnorm + 1e-12) if normalize else r * d)
        w_asc = [ws[j] + e[j] for j in range(n)]
        ga = grads_at(w_asc, batch)                                                  # line 5
        if stable:                                                                   # line 6
            if renorm_norm == 'adaptive':
                num = tnorm
                den = norm([(w_asc[j].abs() if groups[group_of[j]][1] else 1.) * ga[j] for j in range(n)])
            else:
                num, den = norm(g), norm(ga)
            gamma = num / max(den, 1e-12)
            if gamma0 is not None:
                gamma = min(max(gamma, gamma0), math.sqrt(gamma0))
            ga = [gamma * d for d in ga]
        for j in range(n):                                                           # line 7
            if base == 'sgd':
                d = ga[j] + weight_decay * ws[j]
                buf[j] = d.clone() if buf[j] is None else momentum * buf[j] + d
                ws[j] = ws[j] - lr * buf[j]
            else:  # AdamW
                ws[j] = ws[j] * (1 - lr * weight_decay)
                m[j] = beta1 * m[j] + (1 - beta1) * ga[j]
                v[j] = beta2 * v[j] + (1 - beta2) * ga[j] ** 2
                mhat, vhat = m[j] / (1 - beta1 ** t), v[j] / (1 - beta2 ** t)
                ws[j] = ws[j] - lr * mhat / (vhat.sqrt() + adam_eps)
        out.append([w.clone() for w in ws])
    return out


def stablesam_trajectory(cls, ws, batches, *, base='sgd', lr=0.05, momentum=0.9, weight_decay=1e-3,
                         param_groups=None, use_closure=False, **kw):
    """The same run through the library's optimizer."""
    params = [w.clone().requires_grad_() for w in ws]
    spec = [dict(params=[params[j] for j in idx], **extra) for idx, extra in param_groups] if param_groups else params
    if base == 'sgd':
        opt = cls(spec, torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)
    else:
        opt = cls(spec, torch.optim.AdamW, lr=lr, weight_decay=weight_decay, **kw)
    out = []
    for batch in batches:
        if use_closure:
            opt.step(lambda: loss_fn(params, batch).backward())
        else:
            loss_fn(params, batch).backward()
            opt.first_step(zero_grad=True)
            loss_fn(params, batch).backward()
            opt.second_step(zero_grad=True)
        out.append([p.detach().clone() for p in params])
    return out


VARIANTS = {  # class -> (adaptive, stable, normalize, default rho used here)
    SAM: (False, False, True, 0.05), StableSAM: (False, True, True, 0.05),
    ASAM: (True, False, True, 0.5), StableASAM: (True, True, True, 0.5),
    USAM: (False, False, False, 0.05), StableUSAM: (False, True, False, 0.05),
}


def assert_same(traj, ref, tol=1e-10):
    """Every weight at every step agrees with the reference."""
    assert len(traj) == len(ref)
    for t, (a, b) in enumerate(zip(traj, ref)):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=0, atol=tol), f"step {t}: max diff {(x - y).abs().max()}"


@pytest.mark.parametrize('base', ['sgd', 'adamw'])
@pytest.mark.parametrize('cls', list(VARIANTS), ids=lambda c: c.__name__)
def test_variant_trajectory(cls, base):
    ws, batches = make_problem()
    adaptive, stable, normalize, rho = VARIANTS[cls]
    lr = 0.05 if base == 'sgd' else 0.01
    ref = reference_trajectory(ws, batches, rho=rho, adaptive=adaptive, stable=stable, normalize=normalize,
                               base=base, lr=lr)
    assert_same(stablesam_trajectory(cls, ws, batches, rho=rho, base=base, lr=lr), ref)


def test_closure_matches_two_call_api():
    ws, batches = make_problem(1)
    ref = reference_trajectory(ws, batches, rho=0.1, adaptive=False, stable=True, normalize=True)
    assert_same(stablesam_trajectory(StableSAM, ws, batches, rho=0.1, use_closure=True), ref)


@pytest.mark.parametrize('gamma0', [0.3, 0.9])
def test_gamma0_clamp_trajectory(gamma0):
    ws, batches = make_problem(2)
    ref = reference_trajectory(ws, batches, rho=0.2, adaptive=False, stable=True, normalize=True, gamma0=gamma0)
    assert_same(stablesam_trajectory(StableSAM, ws, batches, rho=0.2, gamma0=gamma0), ref)
    plain = reference_trajectory(ws, batches, rho=0.2, adaptive=False, stable=True, normalize=True)
    assert not torch.allclose(ref[-1][0], plain[-1][0]), 'the clamp was active in this test'


def test_adaptive_renorm_norm_trajectory():
    ws, batches = make_problem(3)
    ref = reference_trajectory(ws, batches, rho=0.5, adaptive=True, stable=True, normalize=True,
                               renorm_norm='adaptive')
    assert_same(stablesam_trajectory(StableASAM, ws, batches, rho=0.5, renorm_norm='adaptive'), ref)
    plain = reference_trajectory(ws, batches, rho=0.5, adaptive=True, stable=True, normalize=True)
    assert not torch.allclose(ref[-1][0], plain[-1][0]), 'the two renorm norms differ on this problem'


def test_per_group_rho_and_adaptive():
    ws, batches = make_problem(4)
    groups = [(0.05, False), (0.5, True)]
    group_of = [0, 0, 1, 1]
    ref = reference_trajectory(ws, batches, rho=None, adaptive=None, stable=True, normalize=True,
                               groups=groups, group_of=group_of)
    spec = [([0, 1], {}), ([2, 3], dict(rho=0.5, adaptive=True))]
    assert_same(stablesam_trajectory(StableSAM, ws, batches, rho=0.05, param_groups=spec), ref)
