# %%
#| default_exp landscape

# %% [markdown]
# # landscape
#
# > Figures 1-3 of the paper: the exact-to-surrogate gradient-norm ratio, the alignment of the two gradients, and the loss along the top Hessian eigenvector

# %% [markdown]
# Section 3 of the paper motivates the renormalization with three measurements taken during
# training. **Figure 1**: under SAM the surrogate gradient $\nabla f(\mathbf{w}^{asc})$ is much
# larger than the exact gradient $\nabla f(\mathbf{w})$, so the ratio
# $\|\nabla f(\mathbf{w})\|_2 / \|\nabla f(\mathbf{w}^{asc})\|_2$ stays below one (a ResNet-18 on
# CIFAR-100, $\rho \in \{0.01, 0.05, 0.2\}$). **Figure 3**: the two gradients, taken on the same
# mini-batch, are well aligned: $\langle \nabla f(\mathbf{w}^{asc}), \nabla f(\mathbf{w})\rangle -
# \|\nabla f(\mathbf{w})\|_2^2 > 0$ at every step (the inequality used in the convergence proof,
# Section 4.2.2). **Figure 2**: along the principal eigenvector $\mathbf{e}_1$ of the Hessian,
# $\alpha \mapsto f(\mathbf{w} + \alpha \mathbf{e}_1)$, $\alpha \in [-0.5, 0.5]$, is close to a
# parabola throughout SGD training (a ResNet-20 on CIFAR-100), which supports the quadratic
# approximation of Section 4.2.1.
#
# This module measures all three without a training loop of its own: the norms and the alignment
# come from the optimizer's `last_stats` (see `stablesam.optim`), recorded by a callback of the
# `stablesam.train.Trainer`; the Hessian eigenpair comes from power iteration on Hessian-vector
# products.

# %%
#| hide
from fastcore.test import *
import math
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
import matplotlib.pyplot as plt
from torch import nn
plt.rcParams['figure.dpi'] = 72

# %%
#| export
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


# %% [markdown]
# ## The top eigenpair of the Hessian
#
# Power iteration repeats $\mathbf{v} \leftarrow H\mathbf{v} / \|H\mathbf{v}\|$ and reads the
# eigenvalue off the Rayleigh quotient $\theta = \mathbf{v}^\top H \mathbf{v}$. It converges to the
# eigenvalue of largest magnitude (for a trained network, the largest positive one) at the rate
# $(\lambda_2/\lambda_1)^{2k}$. `power_iteration` works on any symmetric operator given as a function
# on lists of tensors.
#
# **Stopping rule.** `tol` is a target *relative error* of the eigenvalue, not just a bound on the
# last change: for a geometric sequence with rate $q$ (estimated from two successive changes
# $\delta_k/\delta_{k-1}$) the remaining error after a change $\delta_k$ is
# $\delta_k\, q/(1-q)$. The iteration stops when twice that estimate is below $\mathrm{tol}\cdot|\theta|$
# on two consecutive iterations. (PyHessian stops as soon as $\delta_k < \mathrm{tol}\cdot|\theta|$,
# which under-shoots the accuracy by the factor $q/(1-q)$ when the spectral gap is small: with
# $\lambda_2/\lambda_1 = 0.92$ a 1e-4 stop leaves a 5e-4 error.)

# %%
#| exporti
def _dot(xs, ys):
    "Inner product of two lists of tensors, as a 0-dim tensor."
    return sum((x * y).sum() for x, y in zip(xs, ys))


# %%
#| export
def power_iteration(matvec, v0, iters=100, tol=1e-4):
    "Largest-magnitude eigenpair `(eigenvalue, vector, n_iters)` of the symmetric operator `matvec`, started at `v0`."
    if int(iters) < 1: raise ValueError(f"Invalid iters: {iters}")
    if not tol >= 0: raise ValueError(f"Invalid tol: {tol}")
    norm = torch.sqrt(_dot(v0, v0))
    if not norm > 0: raise ValueError("Invalid v0: its norm is zero")
    v = [x / norm for x in v0]
    eig, last_delta, was_ok = None, None, False
    for it in range(1, int(iters) + 1):
        hv = matvec(v)
        theta = float(_dot(hv, v))
        hv_norm = torch.sqrt(_dot(hv, hv))
        if not hv_norm > 0: return 0.0, v, it   # v lies in the null space
        v = [x / hv_norm for x in hv]
        if eig is not None:
            delta = abs(theta - eig)
            rate = min(delta / last_delta, 0.99) if last_delta else 0.99
            ok = 2 * delta * max(1.0, rate / (1 - rate)) <= tol * abs(theta)
            if ok and was_ok: return theta, v, it
            last_delta, was_ok = delta, ok
        eig = theta
    return eig, v, int(iters)


# %% [markdown]
# On a diagonal matrix the answer is known; a looser `tol` stops earlier, and the error stays
# within `tol`:

# %%
A = torch.diag(torch.tensor([3., -1., 2.7, 0.5, 1.]))
v0 = [torch.ones(5)]
lam, vec, n_tight = power_iteration(lambda v: [A @ v[0]], v0, iters=1000, tol=1e-6)
test_close(lam, 3., eps=3e-6)
test_close(vec[0].abs(), torch.tensor([1., 0, 0, 0, 0]), eps=1e-2)
lam_loose, _, n_loose = power_iteration(lambda v: [A @ v[0]], v0, iters=1000, tol=1e-2)
assert n_loose < n_tight, (n_loose, n_tight)
assert abs(lam_loose - 3) <= 1e-2 * 3
n_loose, n_tight

# %%
#| hide
test_fail(lambda: power_iteration(lambda v: v, v0, iters=0), contains="Invalid iters: 0")
test_fail(lambda: power_iteration(lambda v: v, v0, tol=-1), contains="Invalid tol: -1")
test_fail(lambda: power_iteration(lambda v: v, [torch.zeros(3)]), contains="Invalid v0")
# a negative dominant eigenvalue is found too (largest magnitude)
test_close(power_iteration(lambda v: [-A @ v[0]], v0, iters=1000, tol=1e-6)[0], -3., eps=1e-5)


# %% [markdown]
# For a network, $H\mathbf{v}$ is a double backward: the gradient $\mathbf{g}(\mathbf{w})$ is built
# once with `create_graph=True`, and each product is $\nabla_{\mathbf{w}} \langle \mathbf{g},
# \mathbf{v}\rangle$ on that retained graph; the Hessian is never formed. `loss_fn()` returns the
# scalar loss on a fixed batch (or a fixed set of batches): it must be deterministic, so call the
# model in `eval()` mode (BatchNorm on its running statistics, no dropout), as PyHessian does;
# `model_loss_fn` builds such a closure. Parameters the loss does not depend on get zero curvature.

# %%
#| export
def hessian_vector_product(loss_fn, params):
    "A function `v -> H v` (lists of tensors shaped like `params`) for the Hessian of `loss_fn()` at `params`."
    params = list(params)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not live: raise ValueError("The loss has no curvature in params: its gradient does not depend on them")
    live_grads, live_params = [grads[i] for i in live], [params[i] for i in live]

    def hvp(v):
        with torch.enable_grad():
            out = torch.autograd.grad(live_grads, live_params, grad_outputs=[v[i] for i in live],
                                      retain_graph=True, allow_unused=True)
        res = [torch.zeros_like(p) for p in params]
        for i, o in zip(live, out):
            if o is not None: res[i] = o.detach()
        return res
    return hvp


# %%
#| export
def top_hessian_eig(loss_fn, params, iters=100, tol=1e-4, seed=0):
    "Top eigenvalue and unit eigenvector (a list of tensors shaped like `params`) of the Hessian of `loss_fn()`."
    params = [p for p in params if p.requires_grad]
    hvp = hessian_vector_product(loss_fn, params)
    gen = torch.Generator().manual_seed(seed)
    v0 = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    eig, vec, n = power_iteration(hvp, v0, iters, tol)
    if n >= iters:
        warnings.warn(f"top_hessian_eig: no convergence to tol={tol} in {iters} iterations; "
                      f"returning the last estimate {eig:.6g}")
    return eig, vec


# %% [markdown]
# A check against the exact Hessian of a small network: `torch.autograd.functional.hessian` of the
# loss as a function of the flattened parameters, then `torch.linalg.eigvalsh`. The eigenvalue agrees
# to 1e-4 relative at the default `tol`, and the eigenvector matches up to sign.

# %%
#| hide
from torch.func import functional_call

def exact_hessian(model, loss_of_output):
    "The exact Hessian of `loss_of_output(model(...))` in the flattened parameters of `model` (small models only)."
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    def f(w):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s); ps[n] = w[i:i + k].view(s); i += k
        return loss_of_output(lambda x: functional_call(model, ps, (x,)))
    return torch.autograd.functional.hessian(f, flat)


# %%
torch.manual_seed(0)
small = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
xs, ys = torch.randn(32, 5), torch.randint(0, 3, (32,))
H = exact_hessian(small, lambda fwd: F.cross_entropy(fwd(xs), ys))
evals, evecs = torch.linalg.eigh(H.double())
k = evals.abs().argmax()
eig, vec = top_hessian_eig(lambda: F.cross_entropy(small(xs), ys), small.parameters())
flat_vec = torch.cat([t.flatten() for t in vec]).double()
rel_err = abs(eig - evals[k].item()) / abs(evals[k].item())
assert rel_err < 1e-4, rel_err
test_close(abs(flat_vec @ evecs[:, k]).item(), 1., eps=1e-3)
test_eq([t.shape for t in vec], [p.shape for p in small.parameters()])
print(f"power iteration {eig:.7f}, eigvalsh {evals[k].item():.7f}, relative error {rel_err:.1e}, "
      f"lambda2/lambda1 = {evals.abs().sort(descending=True).values[1] / evals.abs().max():.3f}")

# %%
#| hide
# unused and frozen parameters: zero curvature / skipped, no error
m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)); unused = nn.Linear(2, 2)
m[0].bias.requires_grad_(False)
e, v = top_hessian_eig(lambda: F.cross_entropy(m(xs), ys), [*m.parameters(), *unused.parameters()])
test_eq(len(v), 5)   # frozen bias skipped, unused Linear's two tensors kept
test_eq(v[-1].abs().sum().item(), 0.)
test_fail(lambda: top_hessian_eig(lambda: (unused.weight.sum()), unused.parameters()), contains="no curvature")
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    top_hessian_eig(lambda: F.cross_entropy(small(xs), ys), small.parameters(), iters=2)
assert any("no convergence" in str(x.message) for x in w)


# %% [markdown]
# ## The loss along a direction
#
# `loss_along` evaluates $f(\mathbf{w} + \alpha \mathbf{d})$ for each $\alpha$, setting the weights
# in place from a snapshot (no drift from repeated additions) and copying the snapshot back at the
# end, even after an error: the model leaves bit-for-bit as it came in.

# %%
#| export
def loss_along(loss_fn, params, direction, alphas=None):
    "Losses `loss_fn()` at `params + alpha * direction` for each alpha (default 21 points in [-0.5, 0.5]), weights restored exactly."
    params = [p for p in params if p.requires_grad]
    direction = list(direction)
    if len(direction) != len(params) or any(d.shape != p.shape for d, p in zip(direction, params)):
        raise ValueError(f"Invalid direction: shapes {[tuple(d.shape) for d in direction]} "
                         f"do not match params {[tuple(p.shape) for p in params]}")
    alphas = torch.linspace(-0.5, 0.5, 21) if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
    saved = [p.detach().clone() for p in params]
    losses = []
    try:
        with torch.no_grad():
            for a in alphas.tolist():
                for p, w, d in zip(params, saved, direction): p.copy_(w + a * d.to(w))
                losses.append(loss_fn().detach().float())
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved): p.copy_(w)
    return torch.stack(losses).cpu()


# %% [markdown]
# On a quadratic $f(\mathbf{w}) = \tfrac12 \mathbf{w}^\top A \mathbf{w}$ along the top eigenvector,
# $f(\mathbf{w} + \alpha\mathbf{e}_1) = f(\mathbf{w}) + \alpha\,\mathbf{e}_1^\top A\mathbf{w} +
# \tfrac12\lambda_1\alpha^2$ exactly, and the weights come back bit-for-bit:

# %%
torch.manual_seed(1)
B = torch.randn(6, 6, dtype=torch.float64); A = B @ B.T
w = torch.randn(6, dtype=torch.float64, requires_grad=True)
quad = lambda: 0.5 * w @ A @ w
lam, (e1,) = top_hessian_eig(quad, [w], iters=1000, tol=1e-10)
test_close(lam, torch.linalg.eigvalsh(A)[-1].item(), eps=1e-8)
w0 = w.detach().clone()
alphas = torch.linspace(-0.5, 0.5, 11)
ls = loss_along(quad, [w], [e1], alphas)
expected = (quad() + alphas.double() * (e1 @ A @ w0) + 0.5 * lam * alphas.double() ** 2).detach()
test_close(ls.double(), expected, eps=1e-4)
assert torch.equal(w.detach(), w0)

# %%
#| hide
test_fail(lambda: loss_along(quad, [w], [torch.ones(3)]), contains="Invalid direction")
def failing():
    if w[0] != w0[0]: raise RuntimeError("boom")
    return quad()
test_fail(lambda: loss_along(failing, [w], [e1]), contains="boom")
assert torch.equal(w.detach(), w0)   # restored after an error
test_eq(len(loss_along(quad, [w], [e1])), 21)


# %% [markdown]
# For a network, `model_loss_fn` gives the deterministic closure both functions expect: the mean loss
# over fixed batches with the model in `eval()` mode (restoring its previous mode after each call).
# `fixed_batch` picks `n` examples of a dataset by a seeded permutation.

# %%
#| export
def fixed_batch(dataset, n, seed=0):
    "`n` examples of `dataset` chosen by a seeded permutation, stacked as `(x, y)` tensors."
    if not 0 < int(n) <= len(dataset): raise ValueError(f"Invalid n: {n} (dataset has {len(dataset)} examples)")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:int(n)].tolist()
    xs, ys = zip(*[dataset[i] for i in idx])
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)


# %%
#| export
def model_loss_fn(model, batches, criterion=F.cross_entropy):
    "A closure returning the mean `criterion` loss of `model` (in eval mode) over the fixed `batches` [(x, y), ...]."
    if isinstance(batches, tuple) and len(batches) == 2 and torch.is_tensor(batches[0]): batches = [batches]
    batches = list(batches)
    if not batches: raise ValueError("Invalid batches: empty")
    total = sum(len(y) for _, y in batches)

    def loss_fn():
        was_training = model.training
        model.eval()
        try: return sum(criterion(model(x), y) * (len(y) / total) for x, y in batches)
        finally: model.train(was_training)
    return loss_fn


# %%
#| hide
torch.manual_seed(0)
bn_net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
before = {k: v.clone() for k, v in bn_net.state_dict().items()}
f_one = model_loss_fn(bn_net, (xs, ys))
f_two = model_loss_fn(bn_net, [(xs[:12], ys[:12]), (xs[12:], ys[12:])])
test_close(f_one().item(), f_two().item(), eps=1e-6)   # mean over examples, however batched
assert bn_net.training and all(torch.equal(v, bn_net.state_dict()[k]) for k, v in before.items())
test_fail(lambda: model_loss_fn(bn_net, []), contains="Invalid batches")
ds = torch.utils.data.TensorDataset(xs, ys)
fx, fy = fixed_batch(ds, 10, seed=3)
test_eq(fx.shape, (10, 5)); test_eq(fixed_batch(ds, 10, seed=3)[1], fy)
test_fail(lambda: fixed_batch(ds, 33), contains="Invalid n: 33")
