# %%
#| default_exp optim

# %% [markdown]
# # optim
#
# > The SAM family with StableSAM's renormalization (Algorithm 1) as one PyTorch optimizer wrapper.

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
import matplotlib.pyplot as plt
from stablesam.variants import unregister_variant

# %%
#| hide
plt.rcParams['figure.dpi'] = 72

# %% [markdown]
# ## Algorithm 1 in words
#
# Sharpness-aware minimization (SAM) replaces the loss $F_S(w)$ by its worst value in a ball,
# $\max_{\|\epsilon\|_2\le\rho} F_S(w+\epsilon)$, and approximates the inner maximum by one ascent step.
# One training step on a mini-batch $B_t$ is:
#
# 1. compute the exact gradient $g_t = \nabla F_{B_t}(w_t)$ (line 3);
# 2. move to the ascent point $w_t^{asc} = w_t + \rho\, g_t / \|g_t\|_2$ (line 4);
# 3. compute the surrogate gradient $g_t^{asc} = \nabla F_{B_t}(w_t^{asc})$ on the **same** batch (line 5);
# 4. **StableSAM only:** renormalize it, $g_t^{asc} \leftarrow \frac{\|g_t\|_2}{\|g_t^{asc}\|_2}\, g_t^{asc}$ (line 6);
# 5. go back to $w_t$ and let the base optimizer $\mathcal{A}$ (SGD, AdamW, ...) step with $g_t^{asc}$ (line 7).
#
# The coefficient $\gamma_t = \|g_t\|_2/\|g_t^{asc}\|_2$ is the *renormalization factor*. The surrogate gradient is
# usually larger than the exact one (Figure 1 of the paper), so $\gamma_t < 1$ shrinks SAM's step where the
# landscape is sharp, with no new hyperparameter. Remark 19 adds an optional one: clamping
# $\gamma_t$ to $[\gamma_0, \sqrt{\gamma_0}]$ for a chosen $\gamma_0 \in (0, 1)$ makes $\gamma_1^2 \le \gamma_0$ hold by
# construction (then $\gamma_1 = \sqrt{\gamma_0}$, $\gamma_1^2 = \gamma_0$), which is the condition under which the
# excess-risk bound of Theorem 18 beats SAM's.
#
# The variants change only the ascent step (line 4). With $T_w = \mathrm{diag}(|w|)$:
#
# | variant | ascent $e$ | renormalize |
# |---|---|---|
# | `SAM` | $\rho\, g/\|g\|$ | no |
# | `StableSAM` | $\rho\, g/\|g\|$ | yes |
# | `ASAM` | $\rho\, T_w^2 g/\|T_w g\|$ | no |
# | `StableASAM` | $\rho\, T_w^2 g/\|T_w g\|$ | yes |
# | `USAM` | $\rho\, g$ (unnormalized, as in the authors' code) | no |
# | `StableUSAM` | $\rho\, g$ | yes |
#
# Norms are global $L_2$ norms over every parameter that has a gradient in that pass. The authors' published
# StableASAM renormalizes with the *adaptive* norms, $\gamma_t = \|T_{w} g\| / \|T_{w+e}\, g^{asc}\|$ (the second
# one taken at the perturbed weights): `renorm_norm="adaptive"` reproduces that; the default `"plain"` is the
# paper's $\|g\|/\|g^{asc}\|$.

# %%
#| export
import math
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer

from stablesam.efficient import make_schedule

try: from torch.distributed.tensor import DTensor
except ImportError: DTensor = ()          # torch.distributed unavailable or torch < 2.4: no FSDP2 shards to handle


# %% [markdown]
# ## The pieces
#
# Every norm is a global $L_2$ norm over a list of tensors. It must stay on the device (a `.item()` in an
# optimizer step stalls a GPU), use the multi-tensor `torch._foreach_*` kernels, and accumulate in float32 or
# wider even for half-precision parameters. Under FSDP2 (`fully_shard`) parameters and gradients are DTensors
# and each process holds one shard: the optimizer works on the local shards in place (`_local`), and a norm
# adds the shards' squared norms over the processes that hold them (`_shard_groups`: the mesh dimensions on
# which the tensor is sharded; a replicated dimension is counted once). The result is one replicated scalar.

# %%
#| exporti
def _buckets(tensors):
    """Indices of `tensors` grouped by (device, dtype), so each group can use one multi-tensor kernel."""
    out = {}
    for i, t in enumerate(tensors): out.setdefault((t.device, t.dtype), []).append(i)
    return out.items()

def _acc_dtype(dtype):
    """The dtype norms of `dtype` tensors are accumulated in: float32 or wider."""
    return torch.promote_types(dtype, torch.float32)


# %%
#| exporti
def _local(t):
    """The local shard of a DTensor (the tensor itself under no_grad: in-place changes reach the DTensor), else `t`."""
    return t.to_local() if isinstance(t, DTensor) else t

def _gather(p, local):
    """The whole tensor of which `local` is the shard that parameter `p` holds (a copy of `local` if `p` is whole)."""
    if not isinstance(p, DTensor): return local.detach().clone()
    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride()).full_tensor()

def _scatter(p, whole):
    """The shard of tensor `whole` that parameter `p` holds (`whole` itself if `p` is whole)."""
    if not isinstance(p, DTensor): return whole
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(whole.to(_local(p).device), p.device_mesh, p.placements).to_local()

def _shard_groups(t):
    """The process groups over which the local parts of DTensor `t` add up to the whole; () for a plain tensor."""
    if not isinstance(t, DTensor): return ()
    if any(pl.is_partial() for pl in t.placements):
        raise RuntimeError("SAM needs reduced gradients, got a Partial DTensor")
    return tuple(t.device_mesh.get_group(i) for i, pl in enumerate(t.placements) if pl.is_shard())

def _stack_norm(parts, device):
    """The L2 norm of the stacked 0-dim norms `parts`, on `device`, in their widest dtype."""
    if len(parts) == 1: return parts[0].to(device)
    acc = parts[0].dtype
    for n in parts[1:]: acc = torch.promote_types(acc, n.dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=acc) for n in parts]))

def _norm(tensors, groups, device):
    """L2 norm of local `tensors` whose squares add up over the parallel `groups` (tuples of process groups)."""
    if not tensors: return torch.zeros((), device=device)
    parts = []
    for key in dict.fromkeys(groups):
        ts = [t for t, k in zip(tensors, groups) if k == key]
        n = _stack_norm([torch.linalg.vector_norm(torch.stack(
                            torch._foreach_norm([ts[i] for i in idx], 2, dtype=_acc_dtype(dtype))))
                         for (_, dtype), idx in _buckets(ts)], device)
        if key:
            n = n.square()
            for group in key: dist.all_reduce(n, group=group)
            n = n.sqrt()
        parts.append(n)
    return _stack_norm(parts, device)


# %%
#| export
def global_norm(tensors, device=None):
    """Global L2 norm of a list of tensors (DTensor shards too), a 0-dim tensor (float32 or wider), no host sync."""
    if not tensors: return torch.zeros((), device=device)
    device = _local(tensors[0]).device if device is None else device
    return _norm([_local(t) for t in tensors], [_shard_groups(t) for t in tensors], device)


# %%
ts = [torch.randn(3, 4), torch.randn(5, dtype=torch.float64), torch.randn(2, dtype=torch.float16)]
test_close(global_norm(ts), torch.cat([t.double().flatten() for t in ts]).norm(), eps=1e-3)
test_eq(global_norm(ts[2:]).dtype, torch.float32)
test_eq(global_norm([]), torch.tensor(0.))


# %% [markdown]
# `StepChange` measures the length of each step, ||w_{t+1} - w_t||, for the records of issue 21 (is StableSAM's
# step shorter, and by how much?): `before()` copies the weights (the local shards under FSDP2) into buffers
# kept between steps, `norm()` after the step takes the difference in place, so a step costs two passes over
# the weights and no host sync.

# %%
#| export
class StepChange:
    """The global L2 norm of one step's change of `params` (DTensor shards too): call `before()`, step, `norm()`."""
    def __init__(self, params):
        self.params, self.saved = list(params), None

    @torch.no_grad()
    def before(self):
        """Copy the weights as they are before the step."""
        local = [_local(p) for p in self.params]
        if self.saved is None: self.saved = [torch.empty_like(t) for t in local]
        torch._foreach_copy_(self.saved, local)

    @torch.no_grad()
    def norm(self):
        """||w_after - w_before|| as a 0-dim tensor (float32 or wider) on the weights' device."""
        if self.saved is None: raise RuntimeError("StepChange.norm() called without before()")
        local = [_local(p) for p in self.params]
        torch._foreach_sub_(self.saved, local)
        return _norm(self.saved, [_shard_groups(p) for p in self.params], local[0].device) if local \
            else torch.zeros(())


# %%
_w = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
_change = StepChange(_w)
_start = [w.detach().clone() for w in _w]
_change.before()
with torch.no_grad():
    for w in _w: w.add_(torch.randn_like(w))
test_close(_change.norm(), torch.cat([(w - s).flatten() for w, s in zip(_w, _start)]).norm(), eps=1e-6)
test_fail(lambda: StepChange(_w).norm(), contains='without before()')


# %% [markdown]
# Multiplying a list of tensors by one on-device scalar (a norm ratio), and adding such a multiple to a list
# of tensors, are the other building blocks; the scalar is moved to each group's device and dtype once.

# %%
#| exporti
def _mul_(tensors, scale):
    """Multiply `tensors` in place by the 0-dim tensor `scale`, one multi-tensor kernel per (device, dtype)."""
    for (device, dtype), idx in _buckets(tensors):
        torch._foreach_mul_([tensors[i] for i in idx], scale.to(device=device, dtype=dtype))

def _add_scaled_(targets, tensors, scale):
    """`targets += scale * tensors` in place; `scale` a number or a 0-dim tensor (kept on the device)."""
    for (device, dtype), idx in _buckets(targets):
        ts, xs = [targets[i] for i in idx], [tensors[i] for i in idx]
        if not isinstance(scale, torch.Tensor): torch._foreach_add_(ts, xs, alpha=scale)
        elif device.type == 'cpu': torch._foreach_addcmul_(ts, xs, [scale.to(dtype=dtype)] * len(ts))  # no temporaries
        else: torch._foreach_add_(ts, torch._foreach_mul(xs, scale.to(device=device, dtype=dtype)))


# %% [markdown]
# The renormalization factor of line 6, with Remark 19's optional clamp. Reading Remark 19:
# $\gamma_t = \min(\max(\|g_t\|/\|g_t^{asc}\|, \gamma_0), \sqrt{\gamma_0})$, i.e. the ratio clamped to
# $[\gamma_0, \sqrt{\gamma_0}]$ (non-empty because $\gamma_0 < \sqrt{\gamma_0}$ for $\gamma_0 \in (0,1)$). The
# denominator is floored at `eps`, so a zero surrogate gradient gives a finite factor (it multiplies zeros).

# %%
#| export
def renorm_factor(num, den, gamma0=None, eps=1e-12):
    """The factor `num/den` of Algorithm 1 line 6, clamped to `[gamma0, sqrt(gamma0)]` if `gamma0` (Remark 19)."""
    factor = num / den.clamp_min(eps)
    if gamma0 is not None: factor = factor.clamp(gamma0, math.sqrt(gamma0))
    return factor


# %%
test_close(renorm_factor(torch.tensor(1.), torch.tensor(4.)), 0.25)
test_close(renorm_factor(torch.tensor(1.), torch.tensor(4.), gamma0=0.5), 0.5)        # raised to gamma0
test_close(renorm_factor(torch.tensor(4.), torch.tensor(1.), gamma0=0.25), 0.5)       # capped at sqrt(gamma0)
test_close(renorm_factor(torch.tensor(3.), torch.tensor(5.), gamma0=0.36), 0.6)       # inside: unchanged
test_eq(renorm_factor(torch.tensor(0.), torch.tensor(0.)), torch.tensor(0.))          # no NaN

# %% [markdown]
# Inputs are checked when the optimizer is built, with a message that names the bad value.

# %%
#| export
ASCENTS = ('global', 'local')   # the ascent semantics under DistributedDataParallel (see the distributed page)

# %%
#| exporti
RENORM_NORMS = ('plain', 'adaptive')

def _check_rho(rho):
    """Raise a ValueError unless `rho` is a finite number >= 0."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
        raise ValueError(f"Invalid rho: {rho} (a finite number >= 0)")

def _check_settings(gamma0, renorm_norm, eps, ascent='global'):
    """Raise a ValueError for a `gamma0` outside (0, 1), an unknown `renorm_norm` or `ascent`, or an `eps` <= 0."""
    if ascent not in ASCENTS: raise ValueError(f"Invalid ascent: {ascent!r} (choose from {ASCENTS})")
    if gamma0 is not None and not (isinstance(gamma0, (int, float)) and 0 < gamma0 < 1):
        raise ValueError(f"Invalid gamma0: {gamma0} (Remark 19 needs 0 < gamma0 < 1, or None for no clamp)")
    if renorm_norm not in RENORM_NORMS:
        raise ValueError(f"Invalid renorm_norm: {renorm_norm!r} (choose from {RENORM_NORMS})")
    if not (isinstance(eps, (int, float)) and eps > 0): raise ValueError(f"Invalid eps: {eps} (must be > 0)")

def _grads_of(params):
    """The parameters of `params` that have a gradient, and those gradients; sparse gradients are refused."""
    ps = [p for p in params if p.grad is not None]
    for p in ps:
        if p.grad.is_sparse:
            raise RuntimeError(f"SAM does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                               "use a dense layer (e.g. nn.Embedding(sparse=False)).")
    return ps, [p.grad for p in ps]


# %% [markdown]
# ## The optimizer
#
# `SAM` wraps a base optimizer. Both share **one** `param_groups` list (so learning-rate schedulers work on
# either, and a group may carry its own `rho` and `adaptive`), and the base optimizer keeps all the training
# state (momentum, Adam moments), so `state_dict()` is the base optimizer's plus SAM's settings and resumes
# exactly. SAM's own state is one persistent copy of each parameter, taken at the ascent step and copied
# back in place afterwards (an exact restore; `p.data` is never rebound), plus a copy of $g$ when
# `track_alignment=True` or for LookSAM, whose stored direction $g_v$ is one more copy (saved by `state_dict`).
#
# `first_step` does lines 3-4 with the gradient already in `.grad`; `second_step` does lines 5-7 with the
# surrogate gradient in `.grad`; `unperturb` is `second_step` without the base step, for recipes that must act
# between the two (gradient clipping, `GradScaler`). Everything stays on the device: `last_stats` holds 0-dim
# tensors (`grad_norm` $\|g\|$, `asc_grad_norm` $\|g^{asc}\|$ before renormalization, `norm_ratio`
# $\|g\|/\|g^{asc}\|$, `renorm_factor` applied (1 for the non-stable variants), and with
# `track_alignment=True` also `alignment` $\langle g^{asc}, g\rangle - \|g\|^2$ and `cosine`), and `sam_step`, a
# Python bool.
#
# `first_step` returns True when it perturbed the weights: run the second pass. The efficient variants
# ([efficient](00c_efficient.ipynb)) take a `schedule=` ('every:5', 'random:0.2', 'late:0.8', 'ae', or a
# `SAMSchedule`) and LookSAM's `look_alpha=`: on a step the schedule does not pick, `first_step` returns False and
# leaves the weights and `.grad` alone, and `second_step` (or `step()`) takes the base optimizer's step on $g$
# (LookSAM: on $g + \alpha \frac{\|g\|}{\|g_v\|} g_v$, with $g_v$ the part of the last SAM step's $g^{asc}$
# orthogonal to its $g$, rescaled to $\|g\|$ by the stable flavours). `last_stats` of such a step holds
# `sam_step=False`, `grad_norm` and the `renorm_factor` of that rescaling.
#
# The class is written in one cell; the sections after it walk through its methods. Module helpers come first:
# the check of a base optimizer passed already built, and the average over processes of `ascent="local"`.

# %%
#| exporti
def _check_same_params(params, base):
    """Raise a ValueError unless `params` are exactly the parameters `base` optimizes."""
    flat = []
    for item in params:
        if not isinstance(item, dict): flat.append(item)
        elif isinstance(item['params'], torch.Tensor): flat.append(item['params'])
        else: flat += list(item['params'])
    mine = {id(p) for p in flat}
    theirs = {id(p) for g in base.param_groups for p in g['params']}
    if mine != theirs:
        raise ValueError("params differ from the parameters of the given base optimizer instance (pass params=None)")

def _world():
    """The number of processes of the default process group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

def _average_(tensors):
    """Average `tensors` in place over the processes of the default group: one all-reduce per (device, dtype)."""
    for _, idx in _buckets(tensors):
        ts = [tensors[i] for i in idx]
        flat = torch._utils._flatten_dense_tensors(ts)
        dist.all_reduce(flat)
        flat.div_(_world())
        torch._foreach_copy_(ts, torch._utils._unflatten_dense_tensors(flat, ts))

_SETTINGS = ('stable', 'normalize', 'gamma0', 'renorm_norm', 'eps', 'track_alignment', 'ascent',
             'look_alpha')  # saved by state_dict

def _check_look_alpha(look_alpha):
    """Raise a ValueError unless `look_alpha` is None (no LookSAM reuse) or a finite number >= 0."""
    if look_alpha is None: return
    if isinstance(look_alpha, bool) or not isinstance(look_alpha, (int, float)) or not math.isfinite(look_alpha) \
            or look_alpha < 0:
        raise ValueError(f"Invalid look_alpha: {look_alpha} (a finite number >= 0, or None for no LookSAM reuse)")

def _agree(flag, device):
    """`flag` made the same on every process (true if any process says true): one all-reduce."""
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


# %%
#| export
class SAM(Optimizer):
    """Sharpness-aware minimization (Algorithm 1) around any `torch.optim` optimizer; the flags pick the variant."""
    def __init__(self, params, base_optimizer, rho=0.05, *, adaptive=False, stable=False, normalize=True,
                 gamma0=None, renorm_norm="plain", eps=1e-12, track_alignment=False, ascent="global",
                 schedule=None, look_alpha=None, total_steps=None, **base_kwargs):
        _check_rho(rho)
        _check_settings(gamma0, renorm_norm, eps, ascent)
        _check_look_alpha(look_alpha)
        self.stable, self.normalize, self.gamma0, self.renorm_norm = bool(stable), bool(normalize), gamma0, renorm_norm
        self.eps, self.track_alignment, self.ascent = eps, bool(track_alignment), ascent
        self.schedule, self.look_alpha = make_schedule(schedule, total_steps), look_alpha
        defaults = dict(rho=rho, adaptive=bool(adaptive))
        if isinstance(base_optimizer, Optimizer):
            if base_kwargs:
                raise TypeError(f"base optimizer arguments {sorted(base_kwargs)} given with an already built optimizer")
            if params is not None: _check_same_params(params, base_optimizer)
            super().__init__(base_optimizer.param_groups, defaults)
            self.base_optimizer = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
            super().__init__(params, defaults)
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        else: raise TypeError(f"Invalid base_optimizer: {base_optimizer!r} (a torch.optim.Optimizer class or instance)")
        self.param_groups = self.base_optimizer.param_groups
        self.defaults = {**self.base_optimizer.defaults, **defaults}
        self.last_stats, self._first, self._restored, self._gv_norm = {}, None, False, None

    def add_param_group(self, param_group):
        """Add a group (it may carry its own `rho` and `adaptive`) to the shared param groups."""
        for k, v in getattr(self, 'defaults', {}).items():
            if k in ('rho', 'adaptive'): param_group.setdefault(k, v)
        _check_rho(param_group.get('rho', 0.))
        if hasattr(self, 'base_optimizer'): self.base_optimizer.add_param_group(param_group)
        else: super().add_param_group(param_group)

    # --- line 4: the ascent step ---
    @torch.no_grad()
    def first_step(self, zero_grad=False, *, grad_scaler=None):
        """Lines 3-4 on a SAM step (returns True: run the second pass); False: a one-pass step, `.grad` kept."""
        if self._first is not None:
            raise RuntimeError("first_step() called twice without second_step(): the weights are already "
                               "perturbed (unperturb() restores them)")
        groups, owners, keys = self._local_groups()
        if self.ascent == 'local' and any(keys):
            raise RuntimeError("ascent='local' needs whole parameters on every replica; FSDP shards them: "
                               "use ascent='global'")
        params = [p for _, ps, _ in groups for p in ps]
        grads = [d for _, _, gs in groups for d in gs]
        device = params[0].device if params else None
        inv_scale = None if grad_scaler is None else 1. / grad_scaler.scale(torch.ones((), device=device))
        gnorm = _norm(grads, keys, device)
        if not self._sam_step_now(gnorm, inv_scale, device):
            self._first = dict(single=True, owners=owners, keys=keys, gnorm=gnorm, inv_scale=inv_scale)
            self._restored = False
            return False
        adaptive = any(g['adaptive'] for g, ps, _ in groups if ps)
        if adaptive:
            tgrads = [torch.mul(p.abs(), d) if g['adaptive'] else d for g, ps, gs in groups for p, d in zip(ps, gs)]
        else: tgrads = grads
        tnorm = _norm(tgrads, keys, device) if adaptive else gnorm
        backups = [self._buffer(p, 'w') for p in owners]
        if params: torch._foreach_copy_(backups, params)
        if (self.track_alignment or self.look_alpha is not None) and params:
            torch._foreach_copy_([self._buffer(p, 'g') for p in owners], grads)
        for g, ps, gs in groups:
            if not ps: continue
            if self.normalize: scale = g['rho'] / (tnorm + self.eps)
            else: scale = g['rho'] if inv_scale is None else inv_scale * g['rho']
            if g['adaptive']:                       # e = scale * T^2 g with T = |w|
                gs = torch._foreach_mul(torch._foreach_mul(ps, ps), gs)
            _add_scaled_(ps, gs, scale)
        self._first = dict(owners=owners, params=params, keys=keys, backups=backups, gnorm=gnorm, tnorm=tnorm,
                           inv_scale=inv_scale)
        self._restored = False
        if zero_grad: self.zero_grad()
        return True

    def _sam_step_now(self, gnorm, inv_scale, device):
        """The schedule's decision for this step, the same on every process under `ascent='global'`."""
        sq = None
        if self.schedule.needs_norm:
            sq = (gnorm if inv_scale is None else gnorm * inv_scale).square().item()
        fires = self.schedule.decide(sq)
        if self.schedule.needs_norm and self.ascent == 'global' and _world() > 1: fires = _agree(fires, device)
        return fires

    def _local_groups(self):
        """Per param group (group, local params with a gradient, their gradients); those params; their shard groups."""
        groups, owners = [], []
        for g in self.param_groups:
            ps, gs = _grads_of(g['params'])
            groups.append((g, [_local(p) for p in ps], [_local(d) for d in gs]))
            owners += ps
        return groups, owners, [_shard_groups(p) for p in owners]

    def _buffer(self, p, name):
        """The persistent buffer `name` of parameter `p`, allocated once like its local part (a shard under FSDP)."""
        st = self.state[p]
        if name not in st: st[name] = torch.empty_like(_local(p), memory_format=torch.preserve_format)
        return st[name]

    # --- lines 5-7: restore, renormalize, step ---
    @torch.no_grad()
    def unperturb(self):
        """Lines 5-6: restore `w` exactly and, for the stable variants, renormalize the surrogate gradient (`.grad`)."""
        if self._first is None: raise RuntimeError("second_step()/unperturb() called without first_step()")
        first, self._first = self._first, None
        if first.get('single'): return self._one_pass_direction(first)
        groups, owners, keys = self._local_groups()
        grads = [d for _, _, gs in groups for d in gs]
        device = first['gnorm'].device
        anorm = _norm(grads, keys, device)
        num, den = first['gnorm'], anorm
        if self.stable and self.renorm_norm == 'adaptive' and any(g['adaptive'] for g, ps, _ in groups if ps):
            num = first['tnorm']
            tgrads = [torch.mul(p.abs(), d) if g['adaptive'] else d for g, ps, gs in groups for p, d in zip(ps, gs)]
            den = _norm(tgrads, keys, device)
        dot = self._dot(first['owners'], first['keys']) if self.track_alignment or self.look_alpha is not None \
            else None
        if self.look_alpha is not None:
            self._store_look_direction(first['owners'], first['keys'], dot, first['gnorm'])
        if not self.track_alignment: dot = None
        if first['params']: torch._foreach_copy_(first['params'], first['backups'])
        factor = renorm_factor(num, den, self.gamma0, self.eps) if self.stable else torch.ones((), device=device)
        if self.stable and grads: _mul_(grads, factor)
        if self.ascent == 'local' and _world() > 1 and grads: _average_(grads)
        self._restored = True
        self._record(first['gnorm'], anorm, factor, dot, first['inv_scale'])

    @torch.no_grad()
    def second_step(self, zero_grad=False, *, grad_scaler=None):
        """Lines 5-7: `unperturb`, then the base optimizer's step (through `grad_scaler.step` when given)."""
        self.unperturb()
        self._base_step(grad_scaler)
        if zero_grad: self.zero_grad()

    def _base_step(self, grad_scaler=None):
        """Line 7: the base optimizer's step with the (renormalized) gradient in `.grad`."""
        if grad_scaler is None: self.base_optimizer.step()
        else: grad_scaler.step(self.base_optimizer)
        self._restored = False
        self._opt_called = True  # tells an LR scheduler built on the wrapper that a step happened

    # --- the statistics ---
    def _dot(self, params, keys):
        """<g_asc, g> over `params` with a gradient in both passes (needs the stored copy of g), summed over shards."""
        pairs = [(_local(p.grad), self.state[p]['g'], k) for p, k in zip(params, keys) if p.grad is not None]
        if not pairs: return torch.zeros((), device=_local(params[0]).device if params else None)
        prods = torch._foreach_mul([a for a, _, _ in pairs], [b for _, b, _ in pairs])
        dev, parts = pairs[0][0].device, []
        for key in dict.fromkeys(k for _, _, k in pairs):
            part = torch.stack([t.sum(dtype=_acc_dtype(t.dtype)).to(dev)
                                for t, (_, _, k) in zip(prods, pairs) if k == key]).sum()
            for group in key: dist.all_reduce(part, group=group)
            parts.append(part)
        return torch.stack(parts).sum()

    def _record(self, gnorm, anorm, factor, dot, inv_scale):
        """Store this step's norms and factor in `last_stats`, unscaled by the GradScaler's scale when known."""
        if inv_scale is not None: gnorm, anorm = gnorm * inv_scale, anorm * inv_scale
        ratio = gnorm / anorm.clamp_min(self.eps)
        self.last_stats = dict(sam_step=True, grad_norm=gnorm, asc_grad_norm=anorm, norm_ratio=ratio,
                               renorm_factor=factor)
        if dot is not None:
            if inv_scale is not None: dot = dot * inv_scale ** 2
            self.last_stats.update(alignment=dot - gnorm ** 2, cosine=dot / (gnorm * anorm).clamp_min(self.eps))

    # --- efficient variants: one-pass steps and LookSAM's reuse ---
    def _store_look_direction(self, owners, keys, dot, gnorm):
        """LookSAM: keep g_v = g_asc - (<g, g_asc>/||g||^2) g (the part of g_asc orthogonal to g) and its norm."""
        kept = [(p, k) for p, k in zip(owners, keys) if p.grad is not None]
        if not kept: return
        ps, ks = [p for p, _ in kept], [k for _, k in kept]
        gvs = [self._buffer(p, 'gv') for p in ps]
        torch._foreach_copy_(gvs, [_local(p.grad) for p in ps])
        _add_scaled_(gvs, [self.state[p]['g'] for p in ps], -dot / gnorm.square().clamp_min(self.eps))
        self._gv_norm = (tuple(map(id, ps)), _norm(gvs, ks, gnorm.device))   # reused until the next SAM step

    def _look_norm(self, owners, keys, gvs, device):
        """||g_v|| over `owners`: the norm kept at the last SAM step when it covers the same parameters."""
        if self._gv_norm is not None and self._gv_norm[0] == tuple(map(id, owners)): return self._gv_norm[1]
        return _norm(gvs, keys, device)

    @torch.no_grad()
    def _one_pass_direction(self, first):
        """A one-pass step: `.grad` keeps g, or gets LookSAM's g + alpha ||g||/||g_v|| g_v (rescaled if stable)."""
        owners, keys, gnorm = first['owners'], first['keys'], first['gnorm']
        grads = [_local(p.grad) for p in owners]
        factor = torch.ones((), device=gnorm.device)
        if self.look_alpha is not None and owners and all('gv' in self.state[p] for p in owners):
            gvs = [self.state[p]['gv'] for p in owners]
            scale = self.look_alpha * gnorm / self._look_norm(owners, keys, gvs, gnorm.device).clamp_min(self.eps)
            _add_scaled_(grads, gvs, scale)
            if self.stable:
                factor = gnorm / _norm(grads, keys, gnorm.device).clamp_min(self.eps)
                _mul_(grads, factor)
        if self.ascent == 'local' and _world() > 1 and grads: _average_(grads)
        self._restored = True
        gnorm = gnorm if first['inv_scale'] is None else gnorm * first['inv_scale']
        self.last_stats = dict(sam_step=False, grad_norm=gnorm, renorm_factor=factor)

    def _look_state(self):
        """LookSAM's g_v per parameter in `param_groups` order, whole (gathered from the shards), or None."""
        return [_gather(p, self.state[p]['gv']) if 'gv' in self.state[p] else None
                for g in self.param_groups for p in g['params']]

    def _load_look_state(self, gvs):
        """Put `_look_state()`'s output back (each g_v sharded like its parameter)."""
        params = [p for g in self.param_groups for p in g['params']]
        self._gv_norm = None
        if len(gvs) != len(params):
            raise ValueError(f"LookSAM state has {len(gvs)} directions for {len(params)} parameters")
        for p, gv in zip(params, gvs):
            if gv is None: self.state[p].pop('gv', None)
            else: self._buffer(p, 'gv').copy_(_scatter(p, gv))

    # --- step(closure), saving and resuming ---
    def step(self, closure=None):
        """A full step of Algorithm 1 with `closure` (loss and `backward()`), or the end of a `first_step`'s step."""
        if self._first is not None or self._restored:
            loss = None if closure is None else torch.enable_grad()(closure)()
            if self._first is not None: self.second_step()
            else: self._base_step()
            return loss
        if closure is None:
            raise RuntimeError("SAM.step() needs a closure that recomputes the loss and calls backward() (it is "
                               "evaluated twice); or call first_step() and second_step() around your own passes "
                               "(step() without a closure finishes a step begun with first_step()).")
        closure = torch.enable_grad()(closure)
        self.zero_grad()
        loss = closure()
        if self.first_step(zero_grad=True): closure()   # a one-pass step runs the closure once
        self.second_step()
        return loss

    def zero_grad(self, set_to_none=True):
        """Zero the gradients of every parameter (dropping a base step left pending by `unperturb`)."""
        self._restored = False
        super().zero_grad(set_to_none)

    def state_dict(self):
        """The base optimizer's state dict plus SAM's settings under `'sam'`."""
        sd = self.base_optimizer.state_dict()
        sd['sam'] = {k: getattr(self, k) for k in _SETTINGS}
        sd['sam'].update(schedule=self.schedule.state_dict(), look_gv=self._look_state())
        return sd

    def load_state_dict(self, state_dict):
        """Restore the base optimizer's state and SAM's settings; the param groups stay shared."""
        sd = dict(state_dict)
        sam = sd.pop('sam', {})
        _check_settings(sam.get('gamma0', self.gamma0), sam.get('renorm_norm', self.renorm_norm),
                        sam.get('eps', self.eps), sam.get('ascent', self.ascent))
        self.base_optimizer.load_state_dict(sd)
        for g in self.base_optimizer.param_groups: _check_rho(g.get('rho', 0.))
        self.param_groups = self.base_optimizer.param_groups
        for k in _SETTINGS:
            if k in sam: setattr(self, k, sam[k])
        if 'schedule' in sam: self.schedule.load_state_dict(sam['schedule'])
        if 'look_gv' in sam: self._load_look_state(sam['look_gv'])

    def __getstate__(self):
        """Pickle/deepcopy everything (the base optimizer and the flags too), keeping the param groups shared."""
        return dict(self.__dict__)

    def __setstate__(self, state): self.__dict__.update(state)

    def __repr__(self):
        """The variant's flags and the base optimizer."""
        flags = [k for k in ('stable', 'normalize') if getattr(self, k)]
        extra = '' if self.schedule.spec == 'every:1' else f", schedule={self.schedule.spec!r}"
        extra += '' if self.look_alpha is None else f", look_alpha={self.look_alpha}"
        return (f"{type(self).__name__}({', '.join(flags)}, gamma0={self.gamma0}, renorm_norm={self.renorm_norm!r}"
                f"{extra}, base={self.base_optimizer!r})")


# %% [markdown]
# ### Line 4: the ascent step
#
# `first_step` copies $w$ into the persistent buffer, then adds $e$ in place. The ascent norm is $\|T g\|$ with
# $T = |w|$ in adaptive groups and the identity elsewhere. Under a `GradScaler` the gradients are scaled by
# $s$: the normalized ascent $g/\|g\|$ does not care, and for the unnormalized (USAM) ascent and for the
# reported norms the scale is divided out when the scaler is passed.

# %%
show_doc(SAM.first_step)

# %% [markdown]
# ### Lines 5-7: restore, renormalize, step
#
# `unperturb` measures $\|g^{asc}\|$ (and, for `renorm_norm="adaptive"`, $\|T_{w+e} g^{asc}\|$ before the
# restore), copies $w$ back, and for the stable variants multiplies $g^{asc}$ by $\gamma_t$ in place. A
# parameter that had a gradient only in the first pass is restored all the same; one that has a gradient only
# in the second pass was never moved, and is renormalized and stepped like the others.
#
# With `ascent="local"` (m-sharpness under DistributedDataParallel, see
# [distributed](00a_distributed.ipynb)) both passes ran without all-reduce: $g_i$ and $g^{asc}_i$ are the
# replica's own, the factor $\|g_i\|/\|g^{asc}_i\|$ is the replica's own, and `unperturb` averages the
# *renormalized* gradients over the processes (one all-reduce per dtype) so that every replica steps with the
# same mean. With the default `ascent="global"` the gradients in `.grad` are already the global ones.

# %%
show_doc(SAM.unperturb)
show_doc(SAM.second_step)

# %% [markdown]
# The statistics (`_record`), the optional alignment $\langle g^{asc}, g\rangle$ (`_dot`, over the parameters with a
# gradient in both passes) and the local view of the param groups (`_local_groups`: the shards under FSDP2) are
# small private methods.

# %% [markdown]
# ### `step(closure)`, saving and resuming
#
# `step(closure)` runs the whole of Algorithm 1: the closure must compute the loss on the current batch and
# call `backward()` (zeroing the gradients first is harmless: `step` zeroes them too); it is called twice and
# the first loss is returned. `step()` finishes a step begun with `first_step`: while the weights are
# perturbed (after the second backward) it is `second_step()`, and after `unperturb()` it is the base step. That
# is how training frameworks call an optimizer (Hugging Face's `Trainer` and accelerate call `step()`,
# `GradScaler.step(opt)` too; Lightning passes a closure that only runs its hooks: a closure given while a step
# is pending is called once, as any torch optimizer calls it, and must not call `backward()`); see
# [the framework recipes](00b_frameworks.ipynb). Without a pending `first_step`, `step()` with no closure is an
# error, and `zero_grad()` drops a pending base step. `state_dict()` is the base optimizer's state dict (param groups with their
# `rho`/`adaptive`, momentum or Adam moments) plus a `'sam'` entry with the flags; `load_state_dict` restores
# both and keeps the param groups shared.

# %%
show_doc(SAM.step)
show_doc(SAM.state_dict)
show_doc(SAM.load_state_dict)


# %% [markdown]
# ## The named variants
#
# Each named class presets the flags of the table above.

# %%
#| export
class StableSAM(SAM):
    """SAM with the surrogate gradient renormalized to the exact gradient's norm (Algorithm 1)."""
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, base_optimizer, rho, stable=True, **kwargs)

class ASAM(SAM):
    """Adaptive SAM: ascent `rho T^2 g / ||T g||` with `T = |w|` (default `rho=0.5`, as in the ASAM paper)."""
    def __init__(self, params, base_optimizer, rho=0.5, **kwargs):
        super().__init__(params, base_optimizer, rho, adaptive=True, **kwargs)

class StableASAM(SAM):
    """Adaptive SAM with StableSAM's renormalization (default `rho=0.5`; authors' code: `renorm_norm='adaptive'`)."""
    def __init__(self, params, base_optimizer, rho=0.5, **kwargs):
        super().__init__(params, base_optimizer, rho, adaptive=True, stable=True, **kwargs)

class USAM(SAM):
    """Unnormalized SAM: ascent `w + rho g`, as in the authors' published code."""
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, base_optimizer, rho, normalize=False, **kwargs)

class StableUSAM(SAM):
    """Unnormalized SAM with StableSAM's renormalization."""
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, base_optimizer, rho, normalize=False, stable=True, **kwargs)


# %% [markdown]
# ## Each variant's single step against its closed form
#
# On $F(w) = \frac12 w^\top A w + b^\top w$ with diagonal $A$, $g(w) = Aw + b$, and one step of plain SGD
# (learning rate $\eta$) after the ascent is $w_1 = w - \eta\,\gamma\, g(w + e)$, with $e$ and $\gamma$ from the table.

# %%
A, b, w0, lr, rho = torch.tensor([3., 1., .5]), torch.tensor([.5, -1., .2]), torch.tensor([1., -2., .5]), 0.1, 0.2
def grad(w): return A * w + b

def one_step(cls, **kw):
    """One step of `cls` with SGD on the quadratic, through the two-call API."""
    w = w0.clone().requires_grad_()
    opt = cls([w], torch.optim.SGD, rho=rho, lr=lr, **kw)
    (0.5 * (A * w * w).sum() + (b * w).sum()).backward()
    opt.first_step(zero_grad=True)
    (0.5 * (A * w * w).sum() + (b * w).sum()).backward()
    opt.second_step(zero_grad=True)
    return w.detach(), opt.last_stats

def closed_form(e, stable, gamma=None):
    g, ga = grad(w0), grad(w0 + e)
    gamma = (g.norm() / ga.norm() if stable else 1.) if gamma is None else gamma
    return w0 - lr * gamma * ga

g = grad(w0)
e_sam, e_asam, e_usam = rho * g / g.norm(), rho * w0**2 * g / (w0.abs() * g).norm(), rho * g
for cls, e, stable in [(SAM, e_sam, False), (StableSAM, e_sam, True), (ASAM, e_asam, False),
                       (StableASAM, e_asam, True), (USAM, e_usam, False), (StableUSAM, e_usam, True)]:
    w1, stats = one_step(cls)
    test_close(w1, closed_form(e, stable), eps=1e-6)
    test_close(stats['norm_ratio'], g.norm() / grad(w0 + e).norm(), eps=1e-6)

# %% [markdown]
# Remark 19's clamp and the authors' adaptive renormalization norm:

# %%
ga = grad(w0 + e_sam)
assert math.sqrt(0.5) < g.norm() / ga.norm() < 0.95     # the ratio here: 0.91
test_close(one_step(StableSAM, gamma0=0.95)[0], closed_form(e_sam, True, gamma=0.95), eps=1e-6)   # raised to gamma0
test_close(one_step(StableSAM, gamma0=0.5)[0], closed_form(e_sam, True, gamma=math.sqrt(0.5)), eps=1e-6)  # capped
ga = grad(w0 + e_asam)
gamma_adaptive = (w0.abs() * g).norm() / ((w0 + e_asam).abs() * ga).norm()
w1, stats = one_step(StableASAM, renorm_norm='adaptive')
test_close(w1, closed_form(e_asam, True, gamma=gamma_adaptive), eps=1e-6)
test_close(stats['renorm_factor'], gamma_adaptive, eps=1e-6)

# %% [markdown]
# The two usages give the same step: `step(closure)` evaluates the closure twice.

# %%
w = w0.clone().requires_grad_()
opt = StableSAM([w], torch.optim.SGD, rho=rho, lr=lr)
def closure():
    loss = 0.5 * (A * w * w).sum() + (b * w).sum()
    loss.backward()
    return loss
loss = opt.step(closure)
test_close(w.detach(), closed_form(e_sam, True), eps=1e-6)
test_close(loss, 0.5 * (A * w0 * w0).sum() + (b * w0).sum())
test_fail(lambda: opt.step(), contains='needs a closure')

# %% [markdown]
# The call style of the frameworks: `first_step`, the second backward, then `step()` with no closure.

# %%
with torch.no_grad(): w.copy_(w0)
opt.zero_grad()
closure()
opt.first_step(zero_grad=True)
closure()
opt.step()
test_close(w.detach(), closed_form(e_sam, True), eps=1e-6)
test_fail(lambda: opt.step(), contains='needs a closure')


# %% [markdown]
# ## BatchNorm and DistributedDataParallel helpers
#
# The second pass runs the model at the perturbed weights: its BatchNorm running statistics are not the
# model's. `freeze_bn_stats` snapshots `running_mean`, `running_var` and `num_batches_tracked` of every
# BatchNorm layer and copies them back in place on exit (exact, and safe to nest). A lazy BatchNorm layer not
# yet initialized on entry has nothing to snapshot and is left alone. The backward of the second pass may run
# inside or after the block.

# %%
#| export
@contextmanager
def freeze_bn_stats(model):
    """Leave every BatchNorm layer's running statistics of `model` exactly as they were on entry."""
    mods = [m for m in model.modules() if isinstance(m, _BatchNorm) and not any(is_lazy(b) for b in m.buffers())]
    bufs = [b for m in mods for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in bufs]
    try: yield model
    finally:  # through `.data`: the autograd graph of a pending backward saved these buffers
        # (their values are unused in training)
        for buf, copy in zip(bufs, saved): buf.data.copy_(copy)


# %%
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
net(torch.randn(8, 3))
before = {k: v.clone() for k, v in net.state_dict().items()}
with freeze_bn_stats(net):
    net(torch.randn(8, 3))
    with freeze_bn_stats(net): net(torch.randn(8, 3))
for k, v in net.state_dict().items(): test_eq(v, before[k])


# %% [markdown]
# Under DistributedDataParallel two exact semantics exist, chosen with `SAM(..., ascent=...)` and explained,
# with a worked example, in [distributed](00a_distributed.ipynb): `"global"` (the default: Algorithm 1 on the
# global batch, both passes all-reduced as DDP does anyway) and `"local"` (m-sharpness: each replica ascends
# and renormalizes with its own gradients, then the renormalized gradients are averaged). For `"local"` both
# backward passes run inside `first_pass_no_sync(model)` (DDP's `no_sync()`, a no-op for other models);
# `sam_step` (below) writes the step for either.

# %%
#| export
def first_pass_no_sync(model):
    """Context manager: `model.no_sync()` for a DistributedDataParallel `model` (per-replica ascent), else a no-op."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel): return model.no_sync()
    return nullcontext()


# %% [markdown]
# A training step with BatchNorm, on one process or under DDP with `ascent="global"`, then reads:
#
# ```python
# loss_fn(model(x), y).backward()
# opt.first_step(zero_grad=True)
# with freeze_bn_stats(model):
#     loss_fn(model(x), y).backward()
# opt.second_step(zero_grad=True)
# ```

# %% [markdown]
# ## Recipes
#
# ### Mixed precision with `torch.amp.GradScaler`
#
# Scale both losses and pass the scaler to both steps. The renormalization factor is a ratio of two norms of
# gradients scaled by the same $s$, so it does not depend on $s$; the normalized ascent $g/\|g\|$ does not
# either, and for the unnormalized (USAM) ascent and the reported norms `first_step` divides $s$ out.
# `second_step` hands the base step to `grad_scaler.step`, which unscales once and skips the step when a
# gradient is not finite. A non-finite gradient in the *first* pass makes the ascent, hence the surrogate
# gradient, non-finite too, so that step is skipped as well; either way the weights are restored from the
# copy, and the momentum is untouched. The second forward then runs at non-finite weights: wrap it in
# `freeze_bn_stats` (as one should anyway) so that BatchNorm's running statistics are not touched.

# %%
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
def loss_fn(): return torch.nn.functional.cross_entropy(net(x), y)

opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
scaler = torch.amp.GradScaler('cpu')                       # 'cuda' on a GPU
for _ in range(3):
    with torch.autocast('cpu', dtype=torch.bfloat16): loss = loss_fn()
    scaler.scale(loss).backward()
    opt.first_step(zero_grad=True, grad_scaler=scaler)
    with torch.autocast('cpu', dtype=torch.bfloat16): loss = loss_fn()
    scaler.scale(loss).backward()
    opt.second_step(zero_grad=True, grad_scaler=scaler)
    scaler.update()

before = [p.detach().clone() for p in net.parameters()]
scaler.scale(loss_fn() * math.inf).backward()              # an overflow in the first pass
opt.first_step(zero_grad=True, grad_scaler=scaler)
scaler.scale(loss_fn()).backward()
opt.second_step(zero_grad=True, grad_scaler=scaler)
scaler.update()
test_eq(all(torch.equal(a, b) for a, b in zip(before, net.parameters())), True)

# %% [markdown]
# ### Gradient clipping
#
# Clip the gradient the base optimizer will use, i.e. **after** the renormalization: call `unperturb()`
# (restore and renormalize), clip, then step the base optimizer. With a scaler, unscale in between:
# `opt.unperturb(); scaler.unscale_(opt.base_optimizer); clip_grad_norm_(...); scaler.step(opt.base_optimizer);
# scaler.update()` (the scaler remembers the unscale of that optimizer and never unscales twice; always hand it
# `opt.base_optimizer`, never the wrapper). For StableSAM the renormalized
# gradient has norm $\|g\|$, which is what the clipping sees:

# %%
loss_fn().backward()
opt.first_step(zero_grad=True)
loss_fn().backward()
opt.unperturb()
total = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=0.01)
opt.base_optimizer.step()
opt.zero_grad()
test_close(total, opt.last_stats['grad_norm'], eps=1e-5)


# %% [markdown]
# ### Gradient accumulation
#
# Accumulate **both** passes over the same micro-batches (each loss divided by their number): the ascent then
# uses the gradient of the whole batch, and the step equals the one-batch step up to rounding. Under DDP with
# `ascent="global"`, run every micro-batch but the last of each pass inside `model.no_sync()`, so that only the
# last backward of each pass all-reduces; with `ascent="local"`, all of them inside `first_pass_no_sync(model)`.

# %%
def accumulated_step(opt, chunks):
    """One SAM step on a batch given as micro-batches."""
    def accumulate():
        for xm, ym in chunks: (torch.nn.functional.cross_entropy(net(xm), ym) / len(chunks)).backward()
    accumulate()
    opt.first_step(zero_grad=True)
    accumulate()
    opt.second_step(zero_grad=True)

w_start = [p.detach().clone() for p in net.parameters()]
opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1)
accumulated_step(opt, list(zip(x.chunk(4), y.chunk(4))))
w_acc = [p.detach().clone() for p in net.parameters()]
with torch.no_grad():
    for p, w in zip(net.parameters(), w_start): p.copy_(w)
accumulated_step(opt, [(x, y)])
for p, w in zip(net.parameters(), w_acc): test_close(p, w, eps=1e-6)

# %% [markdown]
# ### Learning-rate schedulers and resuming
#
# A scheduler may be built on the wrapper or on `opt.base_optimizer` (they share the param groups). To resume,
# save `opt.state_dict()` next to the model's and load both into fresh objects: the base optimizer's momentum
# or Adam moments, each group's `lr`, `rho` and `adaptive`, and SAM's flags come back, so 5 steps, save, load,
# 5 steps equals 10 steps (tested in `tests/test_optim.py`). Save between steps, never between `first_step`
# and `second_step` (the model's weights are perturbed then).

# %% [markdown]
# ## A factory for the training code
#
# `make_optimizer` maps a name to an optimizer with one set of keyword arguments, for configuration files and
# command lines. The names are those of the one registry of variants, `VARIANTS` ([variants](00_variants.ipynb)),
# re-exported here with `Variant`, `variant` and `register_variant` (`stablesam.optim.VARIANTS` is the registry
# itself). A variant's record names its class (`cls`: the name of a class of this module for the built-in ones, or
# a user's class) and the extra keyword arguments it takes (`flags`), and the optimizer is built as
# `cls(params, base_optimizer, rho=rho, **flags, **settings)`. `'sgd'` (no class) means the base optimizer alone
# (SGD, or AdamW with `base='adamw'`, which ignores `momentum`); SAM-only arguments (`rho`, `gamma0`,
# `renorm_norm`, `track_alignment`, ...) are then ignored, and any other keyword goes to the base optimizer.
#
# `OPTIMIZERS`, the tuple of names in 0.1, is kept for code written for 0.1: it is now a live view of the
# registry's names (`VARIANTS.keys()`), so `name in OPTIMIZERS`, iteration, `len` and `', '.join(OPTIMIZERS)` work,
# and a variant registered at run time appears in it (indexing a tuple, `OPTIMIZERS[i]` or `.index`, does not).

# %%
#| export
from stablesam.variants import VARIANTS, Variant, register_variant, variant

_all_ = ['VARIANTS', 'Variant', 'register_variant', 'variant']  # re-exported: one registry, reachable from here too

OPTIMIZERS = VARIANTS.keys()  # kept for 0.1 code: a live view of the registry's names (`in`, iteration and join work)
BASES = ('sgd', 'adamw')
_SAM_KWARGS = ('adaptive', 'stable', 'normalize', 'gamma0', 'renorm_norm', 'eps', 'track_alignment', 'ascent',
               'schedule', 'look_alpha', 'total_steps')

def _variant_class(name, v):
    """The class that builds variant `name`: `v.cls` itself, or the SAM class of this module it names."""
    if not isinstance(v.cls, str): return v.cls
    cls = globals().get(v.cls)
    if not (isinstance(cls, type) and issubclass(cls, SAM)):
        raise ValueError(f"Invalid variant {name!r}: cls={v.cls!r} names no SAM class of stablesam.optim")
    return cls

def make_optimizer(name, params, *, base="sgd", lr, momentum=0.9, weight_decay=0., rho=0.05, **kw):
    """Build the registered variant `name` (see `VARIANTS`; 'sgd': the base optimizer alone) on 'sgd' or 'adamw'."""
    name, base = str(name).lower(), str(base).lower()
    v = variant(name)  # an unknown name is a ValueError listing the known ones
    if base not in BASES: raise ValueError(f"Unknown base optimizer: {base!r} (choose from {BASES})")
    sam_kw = {k: kw.pop(k) for k in list(kw) if k in _SAM_KWARGS}
    if base == 'sgd':
        base_cls, base_kw = torch.optim.SGD, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)
    else: base_cls, base_kw = torch.optim.AdamW, dict(lr=lr, weight_decay=weight_decay, **kw)
    if v.cls is None: return base_cls(params, **base_kw)
    return _variant_class(name, v)(params, base_cls, rho=rho, **{**v.flags, **sam_kw}, **base_kw)

def is_sam(opt):
    """Whether `opt` is a SAM-family optimizer (needs two passes per step)."""
    return isinstance(opt, SAM)


# %% [markdown]
# The registry's own page is [variants](00_variants.ipynb); its record and functions, reachable from here too:

# %%
show_doc(Variant)

# %%
show_doc(variant)

# %%
show_doc(register_variant)

# %%
lin = torch.nn.Linear(3, 2)
opt = make_optimizer('stableasam', lin.parameters(), base='adamw', lr=1e-3, rho=0.5)
test_eq((type(opt), type(opt.base_optimizer), opt.param_groups[0]['rho']), (StableASAM, torch.optim.AdamW, 0.5))
assert opt.param_groups is opt.base_optimizer.param_groups and is_sam(opt)
assert not is_sam(make_optimizer('sgd', lin.parameters(), lr=0.1))
test_fail(lambda: make_optimizer('adam', lin.parameters(), lr=0.1), contains="choose from sgd, sam, stablesam")
test_fail(lambda: SAM(lin.parameters(), torch.optim.SGD, rho=-1., lr=0.1), contains='Invalid rho: -1.0')
test_fail(lambda: SAM(lin.parameters(), torch.optim.SGD, gamma0=1.5, lr=0.1), contains='Invalid gamma0: 1.5')
test_fail(lambda: SAM(lin.parameters(), torch.optim.SGD, renorm_norm='l1', lr=0.1),
          contains="Invalid renorm_norm: 'l1'")
test_eq(list(OPTIMIZERS), list(VARIANTS))
assert 'stablesam' in OPTIMIZERS and ', '.join(OPTIMIZERS).startswith('sgd, sam, stablesam')


# %% [markdown]
# A variant of one's own is one `register_variant` call: here a small SAM subclass that ascends with half the
# given $\rho$, registered with `flags=dict(stable=True)` (so it renormalizes). `make_optimizer` then builds it
# like a built-in variant, and its step is StableSAM's with $\rho/2$, bit for bit.

# %%
class HalfRhoSAM(SAM):
    """SAM that ascends with half the given `rho` (a user's variant)."""
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, base_optimizer, rho / 2, **kwargs)

def quadratic_step(opt, w):
    """One two-pass step of `opt` on the quadratic of the closed-form tests above."""
    for step in (opt.first_step, opt.second_step):
        (0.5 * (A * w * w).sum() + (b * w).sum()).backward()
        step(zero_grad=True)

register_variant('halfsam', label='SAM (half rho)', color='tab:cyan', cls=HalfRhoSAM, flags=dict(stable=True),
                 stable=True)
try:
    assert 'halfsam' in OPTIMIZERS and list(OPTIMIZERS)[-1] == 'halfsam'
    ws = [w0.clone().requires_grad_() for _ in range(2)]
    mine = make_optimizer('halfsam', [ws[0]], lr=0.1, momentum=0., rho=0.4, gamma0=0.5)
    quadratic_step(mine, ws[0])
    quadratic_step(StableSAM([ws[1]], torch.optim.SGD, rho=0.2, lr=0.1, gamma0=0.5), ws[1])
    test_eq((type(mine), mine.stable, mine.gamma0, mine.param_groups[0]['rho']), (HalfRhoSAM, True, 0.5, 0.2))
    test_eq(ws[0].detach(), ws[1].detach())
    assert not torch.equal(ws[0].detach(), w0)
finally: unregister_variant('halfsam')
assert 'halfsam' not in OPTIMIZERS
register_variant('typo', label='typo', color='tab:cyan', cls='StableSGD')
try: test_fail(lambda: make_optimizer('typo', lin.parameters(), lr=0.1), contains="cls='StableSGD' names no SAM class")
finally: unregister_variant('typo')


# %% [markdown]
# ## One training step
#
# `sam_step` is the step of the recipes above written once: the first pass, `first_step`, the second pass on the
# same batch with the BatchNorm statistics left as the first pass set them, `second_step`. It follows the
# optimizer's `ascent`: with `"local"` both passes run inside `first_pass_no_sync(model)` (per-replica ascent,
# `unperturb` averages after the renormalization); with `"global"` DDP and FSDP2 synchronise both passes as usual.
# Each loss is scaled by a `GradScaler` when one is given (and `grad_scaler.update()` called at the end), and
# both forwards run under `torch.autocast` when an `autocast_dtype` is given. Any other optimizer gets the plain step (one pass), so a training loop calls one
# function for every optimizer. It returns the first pass's outputs and loss, detached, for the loop's metrics.
# A `guard(loss, pass_number)`, called after each backward pass, may refuse the step (a training loop that
# skips non-finite steps): the gradients are dropped, the weights restored, and `sam_step` returns None.

# %%
#| export
def sam_step(opt, model, loss_fn, x, y, *, grad_scaler=None, autocast_dtype=None, bn_first_pass=True, guard=None):
    """One step of `opt` on batch `(x, y)`: the first pass's `(outputs, loss)`, or None if `guard` refused the step."""
    def cast():
        return nullcontext() if autocast_dtype is None else torch.autocast(x.device.type, dtype=autocast_dtype)

    def backward(loss):
        (loss if grad_scaler is None else grad_scaler.scale(loss)).backward()

    opt.zero_grad(set_to_none=True)
    if is_sam(opt):
        def local(): return first_pass_no_sync(model) if opt.ascent == 'local' else nullcontext()
        with local():
            with cast():
                out = model(x)
                loss = loss_fn(out, y)
            backward(loss)
        if guard is not None and not guard(loss, 1): return opt.zero_grad(set_to_none=True)
        if opt.first_step(zero_grad=True, grad_scaler=grad_scaler):  # False: a one-pass step of an efficient variant
            with local(), freeze_bn_stats(model) if bn_first_pass else nullcontext():
                with cast(): second = loss_fn(model(x), y)
                backward(second)
            if guard is not None and not guard(second, 2):
                opt.unperturb()
                return opt.zero_grad(set_to_none=True)
        opt.second_step(zero_grad=True, grad_scaler=grad_scaler)
    else:
        with cast():
            out = model(x)
            loss = loss_fn(out, y)
        backward(loss)
        if guard is not None and not guard(loss, 1): return opt.zero_grad(set_to_none=True)
        if grad_scaler is not None: grad_scaler.step(opt)
        else: opt.step()
    if grad_scaler is not None: grad_scaler.update()
    return out.detach(), loss.detach()


# %% [markdown]
# It is exactly the two-pass step written out by hand, for a SAM variant and for the base optimizer alone:

# %%
import copy


# %%
def hand_step(opt, net, x, y):
    """The step written out, as in the README."""
    F = torch.nn.functional
    if not is_sam(opt):
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
        return
    F.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    with freeze_bn_stats(net): F.cross_entropy(net(x), y).backward()
    opt.second_step(zero_grad=True)

x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
for name in ('sgd', 'stablesam'):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 2))]
    nets.append(copy.deepcopy(nets[0]))
    opts = [make_optimizer(name, n.parameters(), lr=0.1, momentum=0.9) for n in nets]
    for _ in range(3):
        out, loss = sam_step(opts[0], nets[0], torch.nn.functional.cross_entropy, x, y)
        hand_step(opts[1], nets[1], x, y)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()): test_eq(a, b)
    test_eq((out.shape, loss.requires_grad), ((32, 2), False))
out, loss = sam_step(opts[0], nets[0], torch.nn.functional.cross_entropy, x, y, grad_scaler=torch.amp.GradScaler('cpu'),
                     autocast_dtype=torch.bfloat16)
test_eq(out.dtype, torch.bfloat16)
before = [p.detach().clone() for p in nets[0].parameters()]
for refuse in (1, 2):  # a refused step leaves the weights (and the momentum) as they were
    def guard(loss, n): return n != refuse
    test_eq(sam_step(opts[0], nets[0], torch.nn.functional.cross_entropy, x, y, guard=guard), None)
    for a, b in zip(before, nets[0].parameters()): test_eq(a, b.detach())


# %% [markdown]
# ## The renormalization factor on a toy run
#
# A small MLP regression trained with SAM: the surrogate gradient is larger than the exact one almost
# everywhere ($\|g\|/\|g^{asc}\| < 1$), increasingly so as training goes on (compare the paper's Figure 1).
# StableSAM's factor is that ratio; Remark 19's clamp pins it inside $[\gamma_0, \sqrt{\gamma_0}]$.

# %%
def toy_ratios(rho, steps=150, **kw):
    """Norm ratio and applied factor per step of StableSAM on a small MLP regression."""
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.sin(x.sum(1, keepdim=True))
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = StableSAM(net.parameters(), torch.optim.SGD, rho=rho, lr=0.1, momentum=0.9, **kw)
    ratios, factors = [], []
    for _ in range(steps):
        opt.step(lambda: torch.nn.functional.mse_loss(net(x), y).backward())
        ratios.append(opt.last_stats['norm_ratio'])
        factors.append(opt.last_stats['renorm_factor'])
    return torch.stack(ratios), torch.stack(factors)

fig, ax = plt.subplots(figsize=(8, 3))
for rho in (0.01, 0.05, 0.2): ax.plot(toy_ratios(rho)[0], label=f'rho={rho}')
_, f = toy_ratios(0.2, gamma0=0.3)
ax.plot(f, 'k--', label='rho=0.2, gamma0=0.3 (applied)')
ax.set(xlabel='step', ylabel=r'$\|g\|/\|g^{asc}\|$', title='renormalization factor (toy MLP)')
ax.legend(fontsize=8)
plt.show()
plt.close(fig)
test_eq(bool(((f >= 0.3 - 1e-6) & (f <= math.sqrt(0.3) + 1e-6)).all()), True)
