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
#
# The sweep that takes all three on real data (an FCN on 10,000 MNIST images, SGD and SAM at four
# $\rho$, 3 seeds), with its records, verdicts and figures, is
# [landscape_experiment](07a_landscape_experiment.ipynb).

# %%
#| hide
from fastcore.test import *
import math
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
import matplotlib.pyplot as plt
import torch
from torch import nn

# %%
#| hide
plt.rcParams['figure.dpi'] = 72
torch.set_num_threads(1)   # the quick runs below are tiny; one thread is fastest on a shared CI machine

# %%
#| export
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stablesam.runs import append_jsonl, read_jsonl, write_jsonl
from stablesam.style import optimizer_style, quantity


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
    """Inner product of two lists of tensors, as a 0-dim tensor."""
    return sum((x * y).sum() for x, y in zip(xs, ys))


# %%
#| export
def power_iteration(matvec, v0, iters=100, tol=1e-4):
    """Largest-magnitude eigenpair `(eigenvalue, vector, n_iters)` of the symmetric operator `matvec`, from `v0`."""
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
    """A function `v -> H v` (lists of tensors shaped like `params`) for the Hessian of `loss_fn()` at `params`."""
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
    """Top eigenvalue and unit eigenvector (a list of tensors shaped like `params`) of the Hessian of `loss_fn()`."""
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


# %%
#| hide
def exact_hessian(model, loss_of_output):
    """The exact Hessian of `loss_of_output(model(...))` in the flattened parameters of `model` (small models only)."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    def f(w):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            ps[n] = w[i:i + k].view(s)
            i += k
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
m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
unused = nn.Linear(2, 2)
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
    """Losses `loss_fn()` at `params + alpha * direction` per alpha (default 21 in [-0.5, 0.5]), weights restored."""
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
B = torch.randn(6, 6, dtype=torch.float64)
A = B @ B.T
w = torch.randn(6, dtype=torch.float64, requires_grad=True)

def quad():
    return 0.5 * w @ A @ w

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
    """`n` examples of `dataset` chosen by a seeded permutation, stacked as `(x, y)` tensors."""
    if not 0 < int(n) <= len(dataset): raise ValueError(f"Invalid n: {n} (dataset has {len(dataset)} examples)")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:int(n)].tolist()
    xs, ys = zip(*[dataset[i] for i in idx])
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)


# %%
#| export
def model_loss_fn(model, batches, criterion=F.cross_entropy):
    """A closure: the mean `criterion` loss of `model` (in eval mode) over the fixed `batches` [(x, y), ...]."""
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
test_eq(fx.shape, (10, 5))
test_eq(fixed_batch(ds, 10, seed=3)[1], fy)
test_fail(lambda: fixed_batch(ds, 33), contains="Invalid n: 33")

# %% [markdown]
# ## Recording the optimizer's statistics per step (Figures 1 and 3)
#
# The SAM family leaves, after every step, `optimizer.last_stats`: 0-dim tensors on the parameters'
# device with $\|g\|$ (`grad_norm`), $\|g^{asc}\|$ (`asc_grad_norm`), their ratio (`norm_ratio`) and
# the factor applied (`renorm_factor`); with the optimizer's opt-in `track_alignment` also
# $\langle g^{asc}, g\rangle - \|g\|^2$ (`alignment`) and $\cos\angle(g^{asc}, g)$ (`cosine`). Keeping
# $g$ for the alignment costs **one extra parameter-sized buffer** (for ResNet-18, 11.2M floats,
# 45 MB in float32), which is why it is off by default; `StepStats(alignment=True)` turns it on for
# its run.
#
# `StepStats` is a `Trainer` callback. At each step it stacks the statistics into one small tensor
# *on the device* (a kernel launch, no host synchronisation); at the end of the epoch it stacks the
# epoch's rows and copies them to the host **once**, then appends one JSON line per epoch to
# `step_stats.jsonl` in the run folder (`{"epoch": e, "step": first step, key: [values...]}`) and
# adds the epoch's minimum of each statistic to the metrics (`norm_ratio_min`, `alignment_min`, ...).
# On a resumed run it keeps the lines of the epochs already done, and from a mid-epoch checkpoint the steps
# of the epoch before it (its `state_dict`, which the Trainer's checkpoint holds). Under DistributedDataParallel it
# records rank 0's statistics (its own $\|g\|$: the first pass is local to each replica).

# %%
#| export
STEP_STATS = 'step_stats.jsonl'
STAT_KEYS = ('grad_norm', 'asc_grad_norm', 'norm_ratio', 'renorm_factor', 'alignment', 'cosine')

def stats_series(rows, key):
    """`(x, values)` of statistic `key` over all steps of `rows` (epoch lines of `step_stats.jsonl`); x in epochs."""
    xs, vs = [], []
    for r in rows:
        if key not in r:
            raise KeyError(f"Statistic {key!r} not recorded (recorded: {[k for k in r if k in STAT_KEYS]})")
        n = len(r[key])
        xs.append(r['epoch'] - 1 + (np.arange(n) + 1) / n)
        vs.append(np.asarray(r[key], dtype=float))
    return (np.concatenate(xs), np.concatenate(vs)) if xs else (np.zeros(0), np.zeros(0))


# %%
#| export
class StepStats:
    """Trainer callback: the optimizer's `last_stats` of every step, gathered on the device, written once per epoch."""
    def __init__(self, keys=None, alignment=False, fname=STEP_STATS):
        self.keys, self.alignment, self.fname = (None if keys is None else tuple(keys)), bool(alignment), fname
        self.path, self.history, self._rows, self._first_step = None, [], [], None
        self._restored = None  # the epoch's rows before a resume (a host tensor, from a mid-epoch checkpoint)

    def before_fit(self, trainer):
        """Turn on the optimizer's alignment diagnostic if asked; open (or, on resume, trim) the run folder's file."""
        opt = trainer.optimizer
        if self.alignment:
            if not hasattr(opt, 'track_alignment'):
                raise ValueError(f"StepStats(alignment=True) needs a SAM-family optimizer, got {type(opt).__name__}")
            opt.track_alignment = True
        out = getattr(trainer, 'out', None)
        self.path = Path(out) / self.fname if out is not None else None
        self.history, self._rows, self._restored = [], [], None
        if self.path is not None and self.path.exists():
            done = [r for r in read_jsonl(self.path) if r['epoch'] <= trainer.epoch]
            self.history = done
            write_jsonl(self.path, done)

    def after_step(self, trainer):
        """Stack this step's statistics on the device (no host synchronisation)."""
        stats = getattr(trainer.optimizer, 'last_stats', None)
        if not stats: return
        if not self._rows and self._restored is None:
            if self.keys is None: self.keys = tuple(k for k in STAT_KEYS if k in stats)
            missing = [k for k in self.keys if k not in stats]
            if missing: raise KeyError(f"StepStats: {missing} not in optimizer.last_stats (it has {sorted(stats)}); "
                                       "alignment and cosine need StepStats(alignment=True)")
            self._first_step = trainer.step
        self._rows.append(torch.stack([stats[k].detach().reshape(()).to(torch.float32) for k in self.keys]))

    def after_epoch(self, trainer, metrics):
        """Copy the epoch's statistics to the host in one transfer, append them to the file and the history."""
        rows = self._host_rows()
        if rows is None: return
        values = rows.T.tolist()
        self._rows, self._restored = [], None
        row = dict(epoch=metrics.get('epoch', trainer.epoch), step=self._first_step, **dict(zip(self.keys, values)))
        self.history.append(row)
        for k, v in zip(self.keys, values): metrics[f'{k}_min'] = min(v)
        if self.path is not None:
            append_jsonl(self.path, row)

    def series(self, key):
        """The recorded values of `key` over all steps and their position in epochs (see `stats_series`)."""
        return stats_series(self.history, key)

    def _host_rows(self):
        """The epoch's rows so far as one host tensor (steps x keys), or None before its first step."""
        parts = [] if self._restored is None else [self._restored]
        if self._rows: parts.append(torch.stack(self._rows).cpu())
        return torch.cat(parts) if parts else None

    def state_dict(self):
        """The epoch's statistics so far: what a mid-epoch checkpoint of the Trainer keeps (tensors, weights-only)."""
        return dict(keys=None if self.keys is None else list(self.keys), first_step=self._first_step,
                    rows=self._host_rows())

    def load_state_dict(self, state):
        """Continue the epoch from `state_dict()`'s output (called by the Trainer after `before_fit` on resume)."""
        if state['keys'] is not None: self.keys = tuple(state['keys'])
        self._first_step, self._restored, self._rows = state['first_step'], state['rows'], []


# %% [markdown]
# The callback on a stand-in trainer (the real `Trainer` below): three epochs of four steps, one line
# per epoch, values kept in step order, and a resumed run keeps the epochs already done.

# %%
class FakeOptimizer:
    track_alignment = False
    def __init__(self): self.last_stats, self.t = {}, 0
    def step(self):
        self.t += 1
        g, a = torch.tensor(1. / self.t), torch.tensor(2. / self.t)
        self.last_stats = dict(grad_norm=g, asc_grad_norm=a, norm_ratio=g / a, renorm_factor=torch.tensor(1.))
        if self.track_alignment: self.last_stats.update(alignment=g * a - g * g, cosine=torch.tensor(.5))

def fake_fit(rec, out, epochs=3, steps=4, start=0):
    tr = SimpleNamespace(optimizer=FakeOptimizer(), out=out, epoch=start, step=start * steps)
    rec.before_fit(tr)
    for _ in range(start, epochs):
        for _ in range(steps):
            tr.optimizer.step()
            tr.step += 1
            rec.after_step(tr)
        tr.epoch += 1
        metrics = dict(epoch=tr.epoch)
        rec.after_epoch(tr, metrics)
    return metrics

run_dir = Path(tempfile.mkdtemp())
rec = StepStats(alignment=True)
last = fake_fit(rec, run_dir)
rows = read_jsonl(run_dir / STEP_STATS)
test_eq([r['epoch'] for r in rows], [1, 2, 3])
test_eq([r['step'] for r in rows], [1, 5, 9])
x, grad_norm = stats_series(rows, 'grad_norm')
test_close(grad_norm, 1 / np.arange(1, 13), eps=1e-7)
test_close(x, np.arange(1, 13) / 4, eps=1e-12)
test_eq(rec.keys, ('grad_norm', 'asc_grad_norm', 'norm_ratio', 'renorm_factor', 'alignment', 'cosine'))
test_close(last['alignment_min'], min(1 / t ** 2 for t in range(9, 13)), eps=1e-7)

# %%
#| hide
# resume after epoch 2 with a stale third line in the file (killed between the stats write and the checkpoint)
resumed = StepStats()
fake_fit(resumed, run_dir, start=2)
test_eq([r['epoch'] for r in read_jsonl(run_dir / STEP_STATS)], [1, 2, 3])
test_eq(len(resumed.series('norm_ratio')[1]), 12)
test_fail(lambda: resumed.series('sharpness'), contains="'sharpness' not recorded")
# no run folder, no SAM statistics (plain SGD): nothing written, nothing recorded
plain = StepStats()
tr = SimpleNamespace(optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=.1), out=None, epoch=0, step=0)
plain.before_fit(tr)
plain.after_step(tr)
plain.after_epoch(tr, {})
test_eq(plain.history, [])
test_fail(lambda: StepStats(alignment=True).before_fit(tr), contains="needs a SAM-family optimizer, got SGD")
test_fail(lambda: fake_fit(StepStats(keys=['cosine']), None), contains="need StepStats(alignment=True)")

# %% [markdown]
# ## The loss along the top eigenvector during training (Figure 2)
#
# `HessianProbe` is a `Trainer` callback that, before training and after chosen epochs, computes the
# top Hessian eigenpair of the training loss on a fixed set of examples (cross-entropy without label
# smoothing, model in eval mode, as PyHessian measures it) and the loss along the eigenvector for
# $\alpha \in [-0.5, 0.5]$. It touches neither the gradients, nor the optimizer, nor any random number
# generator, and restores the weights bit-for-bit, so a probed run trains exactly like an unprobed one.
# Each probe is one line of `hessian_probe.jsonl` in the run folder; the eigenvalue also goes into the
# epoch's metrics (`hessian_top_eig`).

# %%
#| export
HESSIAN_PROBE = 'hessian_probe.jsonl'

class HessianProbe:
    """Trainer callback: the top Hessian eigenpair and the loss along it, on `batches` at `epochs` (0: initial)."""
    def __init__(self, batches, epochs, alphas=None, iters=100, tol=1e-4, seed=0, fname=HESSIAN_PROBE):
        self.batches = [batches] if isinstance(batches, tuple) else list(batches)
        self.epochs = sorted(set(int(e) for e in epochs))
        if any(e < 0 for e in self.epochs): raise ValueError(f"Invalid epochs: {epochs}")
        self.alphas = torch.linspace(-0.5, 0.5, 21) if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
        self.iters, self.tol, self.seed, self.fname = iters, tol, seed, fname
        self.path, self.history = None, []

    def probe(self, model, device=None):
        """One probe of `model` now: `dict(eigenvalue, alphas, losses)`."""
        batches = [(x.to(device), y.to(device)) for x, y in self.batches] if device is not None else self.batches
        loss_fn = model_loss_fn(model, batches)
        eig, vec = top_hessian_eig(loss_fn, model.parameters(), self.iters, self.tol, self.seed)
        losses = loss_along(loss_fn, model.parameters(), vec, self.alphas)
        return dict(eigenvalue=eig, alphas=self.alphas.tolist(), losses=losses.tolist())

    def _record(self, trainer, epoch):
        row = dict(epoch=epoch, step=trainer.step, **self.probe(trainer.model, trainer.device))
        self.history.append(row)
        if self.path is not None:
            append_jsonl(self.path, row)
        return row

    def before_fit(self, trainer):
        """Open (on resume: trim) the run folder's file and probe the initial weights if epoch 0 is asked for."""
        if getattr(trainer, 'rank', 0) != 0: self.epochs = []   # one probe per run, on rank 0
        out = getattr(trainer, 'out', None)
        self.path = Path(out) / self.fname if out is not None else None
        self.history = []
        if self.path is not None and self.path.exists():
            self.history = [r for r in read_jsonl(self.path) if r['epoch'] <= trainer.epoch]
            write_jsonl(self.path, self.history)
        if trainer.epoch == 0 and 0 in self.epochs: self._record(trainer, 0)

    def after_epoch(self, trainer, metrics):
        """Probe after the epochs asked for; the eigenvalue goes into the metrics."""
        epoch = metrics.get('epoch', trainer.epoch)
        if epoch in self.epochs: metrics['hessian_top_eig'] = self._record(trainer, epoch)['eigenvalue']


# %%
#| hide
torch.manual_seed(0)
probe = HessianProbe((xs, ys), epochs=[0, 2], alphas=[-0.5, 0, 0.5], iters=200)
row = probe.probe(small)
test_close(row['losses'][1], F.cross_entropy(small(xs), ys).item(), eps=1e-6)
test_close(row['eigenvalue'], evals[k].item(), eps=1e-4 * abs(evals[k].item()))
test_fail(lambda: HessianProbe((xs, ys), epochs=[-1]), contains="Invalid epochs: [-1]")


# %% [markdown]
# ## The figures
#
# Each plotting function takes what the callbacks leave (their `history`, or a run folder to read it
# from) and draws on a given matplotlib axis (or a new one). Per-step curves are noisy: `smooth`
# overlays a moving average over that many steps on the faint raw curve.

# %%
#| exporti
def _rows(source, fname):
    """Rows of a callback's history: the history itself, a callback, or a run folder holding `fname`."""
    if isinstance(source, (str, Path)): return read_jsonl(Path(source) / fname)
    return list(getattr(source, 'history', source))


def smoothed(v, window):
    """Moving average of `v` over `window` steps (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(v, dtype=float), 0, 0.))
    n = np.arange(1, len(v) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def axes_or_new(ax, n=1, figsize=(5, 3.2)):
    """`ax` if given, else `n` new axes side by side in a new figure."""
    import matplotlib.pyplot as plt
    if ax is not None: return ax
    return plt.subplots(1, n, figsize=figsize)[1]


def _curve(ax, x, v, smooth, **kw):
    if smooth and smooth > 1:
        line, = ax.plot(x, v, alpha=0.25, lw=0.7, color=kw.get('color'))
        kw.setdefault('color', line.get_color())
        ax.plot(x, smoothed(v, smooth), **kw)
    else: ax.plot(x, v, **kw)


# %% [markdown]
# Every axis is labelled with its quantity from `stablesam.style.quantity` (the landscape's own
# quantities, alignment, cosine, $\alpha$, $\lambda_1$, are in that one map too). The SAM runs at
# several $\rho$ are drawn in a sequential blue colormap (SAM's colour in `stablesam.style`), darker
# for larger $\rho$; SGD in its package colour. In [landscape_experiment](07a_landscape_experiment.ipynb)
# the per-step curves are the mean over seeds of a moving average over `smooth` steps, with the seeds'
# min-max band shaded.

# %%
#| export
def rho_colors(rhos, cmap='Blues'):
    """One colour per rho from a sequential colormap (darker for larger rho): `{rho: colour}`."""
    import matplotlib as mpl
    rhos = sorted(set(rhos))
    return dict(zip(rhos, mpl.colormaps[cmap](np.linspace(0.4, 1.0, len(rhos)) if len(rhos) > 1 else [0.8])))


# %%
#| exporti
def _run_style(label, color):
    """Legend label and colour of a run named `rho=<value>` (SAM at that rho), else the name in the given colour."""
    try: rho = float(str(label).split('=', 1)[1]) if str(label).startswith('rho=') else None
    except ValueError: rho = None
    return (label if rho is None else f'SAM, ρ={rho:g}'), color


def _run_colors(runs):
    """One colour per run: the SAM rho colormap for runs named `rho=<value>`, SAM's colour shades otherwise."""
    rhos = []
    for label in runs:
        try: rhos.append(float(str(label).split('=', 1)[1]))
        except (IndexError, ValueError):
            rhos = None
            break
    if rhos and len(set(rhos)) == len(rhos):
        cols = rho_colors(rhos)
        return [cols[r] for r in rhos]
    return [optimizer_style('sam').color] if len(runs) == 1 else list(rho_colors(range(len(runs))).values())


# %%
#| export
def plot_norm_ratio(runs, ax=None, smooth=None, key='norm_ratio'):
    """Figure 1: $\\|g\\|/\\|g^{asc}\\|$ per step, one curve per run (`{label: StepStats, history or run folder}`)."""
    ax = axes_or_new(ax)
    for (label, src), c in zip(runs.items(), _run_colors(runs)):
        x, v = stats_series(_rows(src, STEP_STATS), key)
        name, c = _run_style(label, c)
        _curve(ax, x, v, smooth, label=name, lw=1.2, color=c)
    ax.axhline(1, color='grey', lw=0.6, ls='--')
    ax.set_xlabel(quantity('epoch').label)
    ax.set_ylabel(quantity(key).label)
    ax.legend(fontsize=8)
    return ax


# %%
#| export
def plot_alignment(runs, axes=None, smooth=None):
    """Figure 3: $\\langle g^{asc}, g\\rangle - \\|g\\|^2$ (left) and $\\cos\\angle(g^{asc}, g)$ (right), per step."""
    axes = axes_or_new(axes, 2, figsize=(10, 3.2))
    for (label, src), c in zip(runs.items(), _run_colors(runs)):
        rows = _rows(src, STEP_STATS)
        name, c = _run_style(label, c)
        for ax, key in zip(axes, ('alignment', 'cosine')):
            x, v = stats_series(rows, key)
            _curve(ax, x, v, smooth, label=name, lw=1.2, color=c)
    axes[0].axhline(0, color='grey', lw=0.6, ls='--')
    for ax, key in zip(axes, ('alignment', 'cosine')):
        ax.set_xlabel(quantity('epoch').label)
        ax.set_ylabel(quantity(key).label)
        ax.legend(fontsize=8)
    return axes


# %%
#| export
def plot_loss_along(probes, ax=None):
    """Figure 2: $f(w + \\alpha e_1)$ against $\\alpha$ per probed epoch (`HessianProbe`, its history or run folder)."""
    import matplotlib as mpl
    ax = axes_or_new(ax)
    rows = _rows(probes, HESSIAN_PROBE)
    colors = mpl.colormaps['viridis'](np.linspace(0, 0.9, max(len(rows), 1)))
    for r, c in zip(rows, colors):
        ax.plot(r['alphas'], r['losses'], color=c, label=f"epoch {r['epoch']} ($\\lambda_1$={r['eigenvalue']:.3g})")
    ax.set_xlabel(quantity('alpha').label)
    ax.set_ylabel(quantity('loss_along').label)
    ax.legend(fontsize=7)
    return ax


# %% [markdown]
# The plots on the stand-in records above (the real runs follow):

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
plot_norm_ratio({'fake': rec}, ax=axes[0], smooth=3)
plot_alignment({'fake': rec}, axes=axes[1:])
plt.tight_layout()
plt.show()
plt.close(fig)
test_close(smoothed([1., 2, 3, 4], 2), np.array([1, 1.5, 2.5, 3.5]), eps=1e-12)


# %% [markdown]
# ## The experiments
#
# Two entry points run the paper's experiments through `stablesam.train.Trainer` with the callbacks
# above; a configuration (`TrainConfig`) says how big. `sam_stats_runs` trains once per $\rho$ with
# SAM, recording `StepStats` with the alignment on (Figures 1 and 3 come from the same runs);
# `probed_run` trains once (Figure 2: SGD with momentum) with a `HessianProbe` on `n_examples` fixed
# training examples, taken without augmentation.

# %%
#| export
def sam_stats_runs(cfg, rhos=(0.01, 0.05, 0.2), out=None, alignment=True):
    """Figures 1 and 3: train `cfg` once per rho, each run recording `StepStats`; returns `{'rho=...': StepStats}`."""
    from stablesam.train import Trainer
    runs = {}
    for rho in rhos:
        rec = StepStats(alignment=alignment)
        run_cfg = dataclasses.replace(cfg, rho=rho, out=None if out is None else str(Path(out) / f'rho{rho:g}'))
        Trainer(run_cfg, callbacks=[rec]).fit()
        runs[f'rho={rho:g}'] = rec
    return runs


# %%
#| export
def probed_run(cfg, epochs, n_examples=1000, batch_size=250, **probe_kwargs):
    """Figure 2: train `cfg` with a `HessianProbe` at `epochs` on `n_examples` fixed training examples; the probe."""
    from stablesam.data import get_datasets
    from stablesam.train import Trainer
    cfg = cfg.resolved()
    data = get_datasets(cfg.dataset, cfg.data_root, train_subset=cfg.train_subset, label_noise=cfg.label_noise,
                        seed=cfg.seed, augment=False, download=cfg.download)
    x, y = fixed_batch(data.train, min(n_examples, len(data.train)), seed=cfg.seed)
    probe = HessianProbe(list(zip(x.split(batch_size), y.split(batch_size))), epochs, **probe_kwargs)
    Trainer(cfg, callbacks=[probe]).fit()
    return probe


# %% [markdown]
# ### Quick runs (CI)
#
# Small generated CIFAR-100 data (`write_fake_cifar`, 100 classes, 384 training images), LeNet,
# batch 16, 6 epochs, no augmentation: the same code path as the GPU runs at the end, in seconds.
# Generated images say nothing about the paper: these cells check the plumbing (every step
# recorded, the Trainer's own epoch means reproduced, the probes written); the evidence is the
# real-MNIST sweep of [landscape_experiment](07a_landscape_experiment.ipynb).

# %%
from stablesam.data import write_fake_cifar
from stablesam.config import preset_config
from stablesam.runs import read_metrics

# %%
quick_root = Path(tempfile.mkdtemp())
write_fake_cifar(quick_root / 'data', n_train=384, n_test=64, num_classes=100)
quick = dict(dataset='cifar100', data_root=str(quick_root / 'data'), model='lenet', epochs=6, batch_size=16, lr=0.1,
             label_smoothing=0.0, augment=False, download=False, progress=False, device='cpu')
runs = sam_stats_runs(preset_config('cifar', optimizer='sam', **quick), out=quick_root / 'figure1')
for label, rec in runs.items():
    x, ratio = rec.series('norm_ratio')
    test_eq(len(ratio), 6 * 24)                      # every step of every epoch
    m = read_metrics(quick_root / 'figure1' / label.replace('=', ''))
    test_close(np.mean(ratio[-24:]), m[-1]['norm_ratio'], eps=1e-4)   # agrees with the Trainer's own epoch mean
    print(f"{label}: train acc {m[-1]['train_acc']:.2f}, last-epoch ||g||/||g_asc|| mean {np.mean(ratio[-24:]):.3f} "
          f"min {ratio[-24:].min():.3f}, alignment > 0 on {np.mean(rec.series('alignment')[1] > 0):.0%} of steps")

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
plot_norm_ratio(runs, ax=ax, smooth=8)
ax.set_title('Figure 1 (quick run)', fontsize=10)
plt.tight_layout()
plt.show()
plt.close(fig)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
plot_alignment(runs, axes=axes, smooth=8)
fig.suptitle('Figure 3 (quick run)', fontsize=10)
plt.tight_layout()
plt.show()
plt.close(fig)

# %%
probe = probed_run(preset_config('cifar', optimizer='sgd', **quick, out=str(quick_root / 'figure2')),
                   epochs=[1, 2, 4, 6], n_examples=128, batch_size=64, iters=300)
test_eq([r['epoch'] for r in probe.history], [1, 2, 4, 6])
test_eq([r['epoch'] for r in read_jsonl(quick_root / 'figure2' / HESSIAN_PROBE)], [1, 2, 4, 6])
test_eq([m.get('hessian_top_eig') is not None for m in read_metrics(quick_root / 'figure2')],
        [True, True, False, True, False, True])
fig, ax = plt.subplots(figsize=(6, 3.2))
plot_loss_along(quick_root / 'figure2', ax=ax)
ax.set_title('Figure 2 (quick run)', fontsize=10)
plt.tight_layout()
plt.show()
plt.close(fig)

# %% [markdown]
# ### Paper-size runs (GPU)
#
# Figure 1 and Figure 3: the CIFAR-style ResNet-18 of `stablesam.models` (torchvision's ResNet-18 with a
# 3x3 stride-1 stem and no max-pooling, as in the SAM literature) on CIFAR-100 for 200 epochs, SAM
# with $\rho \in \{0.01, 0.05, 0.2\}$, the Table 2 recipe (batch 128, SGD momentum 0.9, lr 0.1
# cosine, weight decay 5e-4, label smoothing 0.1); 391 steps per epoch, so the curves are smoothed
# over one epoch. Figure 2: ResNet-20 on CIFAR-100 with SGD (momentum 0.9), same recipe, probed on
# 1000 fixed training examples at several epochs. The runs resume where they stopped; their folders
# (`runs/figure1/rho*`, `runs/figure2`) can be copied back and plotted with the same functions.

# %%
#| gpu
fig1_cfg = preset_config('cifar', dataset='cifar100', model='resnet18', optimizer='sam', data_root='data', resume=True)
full_runs = sam_stats_runs(fig1_cfg, rhos=(0.01, 0.05, 0.2), out='runs/figure1')
fig, ax = plt.subplots(figsize=(6, 3.2))
plot_norm_ratio(full_runs, ax=ax, smooth=391)
ax.set_title('Figure 1: ResNet-18, CIFAR-100, SAM', fontsize=10)
plt.tight_layout()
plt.show()
plt.close(fig)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
plot_alignment(full_runs, axes=axes, smooth=391)
fig.suptitle('Figure 3: ResNet-18, CIFAR-100, SAM', fontsize=10)
plt.tight_layout()
plt.show()
plt.close(fig)
for label, rec in full_runs.items():
    a = rec.series('alignment')[1]
    print(f"{label}: alignment > 0 on {np.mean(a > 0):.2%} of {len(a)} steps")

# %%
#| gpu
fig2_cfg = preset_config('cifar', dataset='cifar100', model='resnet20', optimizer='sgd', data_root='data', resume=True,
                         out='runs/figure2')
full_probe = probed_run(fig2_cfg, epochs=[1, 10, 50, 100, 150, 200], n_examples=1000, batch_size=250)
fig, ax = plt.subplots(figsize=(6, 3.2))
plot_loss_along(full_probe, ax=ax)
ax.set_title('Figure 2: ResNet-20, CIFAR-100, SGD', fontsize=10)
plt.tight_layout()
plt.show()
plt.close(fig)

# %% [markdown]
# On a GPU, the recorder must not synchronise with the host at a step: with CUDA's sync debug mode
# set to raise, `after_step` runs on a real SAM step's statistics.

# %%
#| gpu
#| eval: false
from stablesam.optim import SAM
net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).cuda()
opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, track_alignment=True)
xg, yg = torch.randn(32, 10, device='cuda'), torch.randint(0, 3, (32,), device='cuda')
tr = SimpleNamespace(optimizer=opt, out=None, epoch=0, step=0)
gpu_rec = StepStats(alignment=True)
gpu_rec.before_fit(tr)
for _ in range(5):
    F.cross_entropy(net(xg), yg).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(net(xg), yg).backward()
    opt.second_step(zero_grad=True)
    tr.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try: gpu_rec.after_step(tr)
    finally: torch.cuda.set_sync_debug_mode('default')
tr.epoch = 1
gpu_rec.after_epoch(tr, {'epoch': 1})
test_eq(len(gpu_rec.history[0]['alignment']), 5)

# %% [markdown]
# ### Agreement with PyHessian
#
# The paper estimates $\mathbf{e}_1$ with PyHessian (Yao et al., 2020). On the same model and batch
# (a ResNet-20 for CIFAR-100 with BatchNorm statistics from a few forward passes, eval mode, 32 images
# of the generated data), both power iterations give the same eigenvalue and eigenvector. PyHessian is
# not a dependency of the package (`pip install pyhessian`), so this cell does not run in CI.

# %%
#| notest
#| eval: false
from pyhessian import hessian as PyHessian
from stablesam.data import get_datasets
from stablesam.models import get_model
train_set = get_datasets('cifar100', quick_root / 'data', augment=False, download=False).train
xb, yb = fixed_batch(train_set, 32, seed=0)
torch.manual_seed(0)
net = get_model('resnet20', 100).train()
for bn in net.modules():   # BatchNorm running statistics: the exact average over 256 training images
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        bn.reset_running_stats()
        bn.momentum = None
with torch.no_grad():
    for chunk in fixed_batch(train_set, 256, seed=1)[0].split(64): net(chunk)
net.eval()
ours, our_vec = top_hessian_eig(model_loss_fn(net, (xb, yb)), net.parameters(), iters=300, tol=1e-5)
pyh = PyHessian(net, nn.CrossEntropyLoss(), data=(xb, yb), cuda=False)
(theirs,), (their_vec,) = pyh.eigenvalues(maxIter=300, tol=1e-6)
net.zero_grad(set_to_none=True)   # PyHessian leaves a create_graph gradient in .grad
cos = abs(float(_dot(our_vec, their_vec))) / float(torch.sqrt(_dot(their_vec, their_vec)))
print(f"top_hessian_eig {ours:.6f}, PyHessian {theirs:.6f}: "
      f"relative difference {abs(ours - theirs) / abs(theirs):.1e}, |cos(e1, e1 PyHessian)| = {cos:.6f}")
test_close(ours, theirs, eps=1e-4 * abs(theirs))
assert cos > 0.999

# %% [markdown]
# ## Closing note
#
# - **Figures 1-3 on real data**: [landscape_experiment](07a_landscape_experiment.ipynb) (an FCN on
#   10,000 MNIST images, 20 epochs, SGD + SAM at four $\rho$, 3 seeds). The paper's own networks
#   (ResNet-18 / ResNet-20 on CIFAR-100, 200 epochs) are the GPU cells above.
# - **Eigen-solver vs exact Hessian.** On small networks (`torch.autograd.functional.hessian` /
#   `torch.func.hessian`, then `torch.linalg.eigvalsh`) the power iteration at the default `tol=1e-4`
#   is within 1e-4 relative of the exact top eigenvalue (4.1e-5 on the network above, whose
#   $\lambda_2/\lambda_1 = 0.92$; below 1e-4 on 20 float64 and 10 float32 random networks and a
#   Conv-BatchNorm-ReLU network in `tests/test_landscape.py`), and the eigenvector matches to
#   $|\cos| > 0.99$.
# - **vs PyHessian** (0.1, the paper's tool; ResNet-20, one batch of 32, both run to tight
#   tolerances): eigenvalue 38.42977 vs 38.42967, relative difference 2.7e-6, $|\cos(\mathbf{e}_1,
#   \mathbf{e}_1^{PyHessian})| = 1.000000$.
# - **Cost.** One Hessian-vector product inside the power iteration (double backward on the retained
#   gradient graph) costs about 2.5x a gradient evaluation on a CPU: medians of interleaved rounds
#   2.22x (ResNet-20, batch 32, 5 rounds), 2.53x (batch 32, 7 rounds) and 2.53x (batch 64, 9 rounds)
#   with `python benchmarks/hvp_cost.py --threads 1` on a shared 2-core machine, so at the edge of the
#   2.5x target; a standalone product that also rebuilds the gradient graph costs 4.2-4.5x, and
#   forward-over-reverse (`torch.func.jvp` of `torch.func.grad`) 5.7x, so the retained graph is the
#   cheapest of the three. The recorder adds no host synchronisation per step (checked with CUDA's
#   sync debug mode in the GPU cell) and one copy per epoch.
# - **Limits.** Power iteration finds the eigenvalue of largest *magnitude*, as PyHessian's does:
#   with a $\pm\lambda$ pair (random data at initialisation) it converges slowly and warns when
#   `iters` run out. A BatchNorm network at initialisation has running statistics that do not match
#   its activations, so its eval-mode Hessian is huge; probe from epoch 1 on for such models.
