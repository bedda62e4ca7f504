# %%
#| default_exp efficient

# %% [markdown]
# # efficient
#
# > Efficient SAM: a second pass on some steps only (scheduled, random, late-phase, AE-SAM) or its direction reused (LookSAM), renormalized

# %%
#| hide
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from fastcore.test import test_eq, test_close, test_fail

from stablesam.optim import SAM, StableSAM

plt.rcParams['figure.dpi'] = 72

# %% [markdown]
# Every SAM step costs two forward-backward passes. The literature's cheaper variants keep the first pass on every
# step and run the second only on some steps; on the others the base optimizer steps on the exact gradient $g$
# (one pass), or, for LookSAM, on $g$ plus a stored piece of the last SAM gradient. This notebook defines *when* a
# SAM step happens, the `SAMSchedule`s; `stablesam.optim.SAM` takes one as `schedule=` (or its text spec, `'every:5'`)
# and LookSAM's reuse as `look_alpha=`, so every flavour (SAM, StableSAM, ASAM, ...) combines with every schedule.
#
# | schedule | spec | a SAM step when | state (saved by `state_dict`) |
# |---|---|---|---|
# | `Every(k)` | `every:K` | the step counter is a multiple of $k$ ($k=1$: every step, plain SAM; `every:inf`: never) | counter |
# | `Random(p, seed)` | `random:P[:SEED]` | a seeded draw is below $p$ (randomized SAM, Zhao et al.); every DDP replica draws the same | counter, generator |
# | `Late(f, total_steps)` | `late:F` | from step $\lceil f\,T\rceil$ of $T$ on (late-phase SAM) | counter |
# | `AdaptivePolicy(...)` | `ae[:DELTA:C_START:C_END]` | $\|g_t\|^2 \ge \mu_t + c_t\sigma_t$ (AE-SAM, Jiang et al., ICLR 2023) | counter, $\mu_t$, $\sigma_t^2$ |
#
# **AE-SAM.** $\mu_t$ and $\sigma_t^2$ are exponential moving averages of the squared gradient norm and of its squared
# deviation, $\mu_t = \delta\mu_{t-1} + (1-\delta)\|g_t\|^2$, $\sigma_t^2 = \delta\sigma_{t-1}^2 + (1-\delta)(\|g_t\|^2-\mu_t)^2$
# ($\delta = 0.9$), both starting at 0 and updated before the comparison; $c_t$ moves linearly over training from
# $c_{start} = 1$ to $c_{end} = -1$ (the paper's $\lambda_2$ to $\lambda_1$), so SAM steps are rare early (about 16%
# of steps if $\|g\|^2$ were normal) and frequent late (about 84%). While the zero-started averages catch up (the
# first ten steps or so) every step is a SAM step. On MNIST FCN runs AE-SAM took 46-52% SAM steps
# ([evidence](06b_efficient_evidence.ipynb)). StableSAM computes $\|g_t\|$ on every step anyway, so the trigger costs one host read of it (the only
# schedule that syncs the host); a non-finite norm (an fp16 overflow the `GradScaler` will skip) leaves the averages
# alone and is not a SAM step.
#
# The counter is the schedule's own, not the base optimizer's step counter (which a scheduler, a skipped fp16 step or
# a re-built optimizer would move differently); it counts calls of `first_step`.

# %%
#| export
import math

import torch


class SAMSchedule:
    """When SAM takes its second pass: `decide(grad_norm_sq)` once per step; the state saves and resumes exactly."""
    needs_norm = False          # whether `decide` reads ||g||^2 (a host sync)
    _state = ('count', 'sam_steps')

    def __init__(self): self.count, self.sam_steps = 0, 0

    def decide(self, grad_norm_sq=None) -> bool:
        """Whether this step is a SAM step (two passes); advances the counter."""
        fires = bool(self._fires(self.count, grad_norm_sq))
        self.count += 1
        self.sam_steps += fires
        return fires

    def _fires(self, t, grad_norm_sq): raise NotImplementedError

    @property
    def fraction(self) -> float:
        """The share of SAM steps so far (0 before the first step)."""
        return self.sam_steps / self.count if self.count else 0.

    def state_dict(self) -> dict:
        """The counters (and any moving average or generator state), with the schedule's spec."""
        return dict(spec=self.spec, **{k: getattr(self, k) for k in self._state})

    def load_state_dict(self, state: dict):
        """Restore `state_dict()`'s output; a different schedule's state is a ValueError."""
        if state.get('spec') != self.spec:
            raise ValueError(f"Schedule state of {state.get('spec')!r} cannot be loaded into {self.spec!r}")
        for k in self._state: setattr(self, k, state[k])

    def __repr__(self): return f"{type(self).__name__}({self.spec!r})"


class Every(SAMSchedule):
    """A SAM step every `k` steps (the first one included); `k=1`: every step; `k=math.inf`: never."""
    def __init__(self, k=1):
        if not (k == math.inf or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
            raise ValueError(f"Invalid every: {k!r} (an integer >= 1, or inf for never)")
        super().__init__()
        self.k, self.spec = k, f"every:{k}"

    def _fires(self, t, grad_norm_sq): return self.k != math.inf and t % self.k == 0


class Random(SAMSchedule):
    """A SAM step with probability `p`, drawn from a generator seeded with `seed` (the same on every replica)."""
    _state = SAMSchedule._state + ('generator_state',)

    def __init__(self, p, seed=0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"Invalid probability: {p!r} (a number in [0, 1])")
        super().__init__()
        self.p, self.seed, self.spec = float(p), int(seed), f"random:{float(p)}:{int(seed)}"
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def generator_state(self): return self.generator.get_state()

    @generator_state.setter
    def generator_state(self, state): self.generator.set_state(state)

    def _fires(self, t, grad_norm_sq): return torch.rand((), generator=self.generator).item() < self.p


def _check_total_steps(total_steps, what):
    """Raise a ValueError unless `total_steps` is an integer >= 1 (`what` needs it)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"{what} needs total_steps, the number of training steps (an integer >= 1), "
                         f"got {total_steps!r}")


class Late(SAMSchedule):
    """SAM steps from `fraction` of the `total_steps` training steps on (late-phase SAM); before, one pass."""
    def __init__(self, fraction, total_steps):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"Invalid late fraction: {fraction!r} (a number in [0, 1])")
        _check_total_steps(total_steps, "Late-phase SAM")
        super().__init__()
        self.start = math.ceil(fraction * total_steps)
        self.spec = f"late:{float(fraction)}"

    def _fires(self, t, grad_norm_sq): return t >= self.start


class AdaptivePolicy(SAMSchedule):
    """AE-SAM: a SAM step when ||g||^2 >= mu_t + c_t sigma_t (moving averages; c_t linear from c_start to c_end)."""
    needs_norm = True
    _state = SAMSchedule._state + ('mean', 'var')

    def __init__(self, total_steps, delta=0.9, c_start=1.0, c_end=-1.0):
        _check_total_steps(total_steps, "AE-SAM's c_t schedule")
        if not (isinstance(delta, (int, float)) and 0 <= delta < 1):
            raise ValueError(f"Invalid delta: {delta!r} (the moving averages' decay, in [0, 1))")
        if not all(isinstance(c, (int, float)) and math.isfinite(c) for c in (c_start, c_end)):
            raise ValueError(f"Invalid c_start, c_end: {c_start!r}, {c_end!r} (finite numbers)")
        super().__init__()
        self.total_steps, self.delta, self.c_start, self.c_end = total_steps, float(delta), float(c_start), float(c_end)
        self.mean, self.var = 0., 0.
        self.spec = f"ae:{self.delta}:{self.c_start}:{self.c_end}"

    def threshold_scale(self, t) -> float:
        """c_t at step `t`: linear from `c_start` (first step) to `c_end` (last step and after)."""
        return self.c_start + (self.c_end - self.c_start) * min(t / max(self.total_steps - 1, 1), 1.)

    def _fires(self, t, grad_norm_sq):
        if grad_norm_sq is None: raise ValueError("AE-SAM decides from ||g||^2: pass grad_norm_sq")
        x = float(grad_norm_sq)
        if not math.isfinite(x): return False
        self.mean = self.delta * self.mean + (1 - self.delta) * x
        self.var = self.delta * self.var + (1 - self.delta) * (x - self.mean) ** 2
        return x >= self.mean + self.threshold_scale(t) * math.sqrt(self.var)


# %% [markdown]
# A spec is the text form that configs, the CLI and the registry use. `make_schedule` turns it (or a ready
# `SAMSchedule`, passed through) into a schedule; `late` and `ae` need the run's number of steps.

# %%
#| export
SCHEDULE_KINDS = ('every', 'random', 'late', 'ae')


def make_schedule(spec=None, total_steps=None) -> SAMSchedule:
    """The `SAMSchedule` for `spec` (every:K, random:P[:SEED], late:F, ae[:DELTA:C_START:C_END]; None: every:1)."""
    if isinstance(spec, SAMSchedule): return spec
    if spec is None: return Every(1)
    if not isinstance(spec, str):
        raise TypeError(f"Invalid schedule: {spec!r} (a SAMSchedule or a spec such as 'every:5')")
    kind, *args = spec.strip().lower().split(':')
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"Unknown schedule: {spec!r} (choose from every:K, random:P[:SEED], late:F, "
                         "ae[:DELTA:C_START:C_END])")
    try: nums = [float(a) for a in args]
    except ValueError: raise ValueError(f"Invalid schedule: {spec!r} (its arguments are numbers)") from None
    arity = dict(every=(1,), random=(1, 2), late=(1,), ae=(0, 3))[kind]
    if len(nums) not in arity:
        raise ValueError(f"Invalid schedule: {spec!r} ({kind} takes {' or '.join(map(str, arity))} arguments)")
    if kind == 'every':
        k = nums[0]
        return Every(math.inf if k == math.inf else int(k) if k == int(k) else k)
    if kind == 'random':
        seed = nums[1] if len(nums) > 1 else 0
        if seed != int(seed): raise ValueError(f"Invalid schedule: {spec!r} (the seed is an integer)")
        return Random(nums[0], int(seed))
    if kind == 'late': return Late(nums[0], total_steps)
    return AdaptivePolicy(total_steps, *nums)


# %% [markdown]
# The schedules on their own: `every:3` fires on steps 0, 3, 6, ...; `random:0.25` fires on about a quarter of the
# steps and the same draws come back from its saved state; `late:0.75` of 8 steps fires on the last two.

# %%
s = make_schedule('every:3')
test_eq([s.decide() for _ in range(7)], [True, False, False, True, False, False, True])
test_close(s.fraction, 3 / 7)
test_eq([make_schedule('every:inf').decide() for _ in range(3)], [False] * 3)
r = make_schedule('random:0.25:7')
draws = [r.decide() for _ in range(4000)]
assert abs(sum(draws) / 4000 - 0.25) < 0.03, sum(draws)
saved, again = r.state_dict(), make_schedule('random:0.25:7')
again.load_state_dict(saved)
test_eq([r.decide() for _ in range(50)], [again.decide() for _ in range(50)])
late = make_schedule('late:0.75', 8)
test_eq([late.decide() for _ in range(8)], [False] * 6 + [True] * 2)
test_fail(lambda: make_schedule('late:0.5'), contains='needs total_steps')
test_fail(lambda: make_schedule('ae'), contains="AE-SAM's c_t schedule needs total_steps")
test_fail(lambda: make_schedule('often:2'), contains='Unknown schedule')
test_fail(lambda: make_schedule('every:0'), contains='Invalid every')
test_fail(lambda: make_schedule('every:2.5'), contains='Invalid every')
test_fail(lambda: make_schedule('random:1.5'), contains='Invalid probability')
test_fail(lambda: make_schedule('random:x'), contains='arguments are numbers')
test_fail(lambda: make_schedule('every:2').load_state_dict(r.state_dict()), contains="cannot be loaded")

# %% [markdown]
# AE-SAM on a stream of squared norms: a norm far above the running mean fires whatever $c_t$; a norm below the mean
# fires only once $c_t$ has gone negative, late in training.

# %%
ae = make_schedule('ae', total_steps=101)
test_eq([ae.decide(1.0) for _ in range(20)].count(True) < 20, True)  # a steady norm: the mean catches up
test_eq(ae.decide(0.5), False)                         # below the mean, c_t > 0
test_eq(ae.decide(5.0), True)                          # far above
def below_mean_after(n):
    """AE-SAM's decision on 1.02 after `n` steps alternating 1.0 and 1.1 (mean 1.05)."""
    s = make_schedule('ae', total_steps=101)
    for t in range(n): s.decide(1.0 if t % 2 else 1.1)
    return s.decide(1.02)
test_eq((below_mean_after(30), below_mean_after(95)), (False, True))  # c_t > 0 early, < 0 late
test_close(ae.threshold_scale(0), 1.)
test_close(ae.threshold_scale(50), 0.)
test_close(ae.threshold_scale(100), -1.)
test_eq(ae.decide(float('inf')), False)                # an overflow: no SAM step, averages untouched
mean = ae.mean
test_eq(ae.decide(float('nan')), False)
test_eq(ae.mean, mean)


# %% [markdown]
# Where each schedule puts its SAM steps over 500 training steps (an illustration: the AE-SAM row reads a made-up
# stream of squared gradient norms, a slow decay with noise, not a training run):

# %%
def sam_steps_of(spec, n=500, seed=0):
    """The steps at which schedule `spec` fires over `n` steps, AE-SAM on a synthetic decaying noisy norm stream."""
    s, rng = make_schedule(spec, total_steps=n), np.random.default_rng(seed)
    norms = np.exp(-np.arange(n) / 300) * (1 + 0.3 * rng.standard_normal(n)) ** 2
    return [t for t in range(n) if s.decide(float(norms[t]))]

specs = ['every:5', 'random:0.2', 'late:0.8', 'ae']
fig, ax = plt.subplots(figsize=(8, 2.2))
for i, spec in enumerate(specs):
    ts = sam_steps_of(spec)
    ax.plot(ts, [i] * len(ts), '|', ms=9, color='0.2')
    ax.annotate(f'{len(ts) / 500:.0%}', (505, i), va='center', fontsize=8)
ax.set_yticks(range(len(specs)), specs)
ax.set_xlim(0, 540)
ax.set_xlabel('training step')
ax.set_ylabel('schedule')
ax.set_title('SAM steps (ticks) of each schedule, and their share', fontsize=10)
plt.show()
test_eq(len(sam_steps_of('every:5')), 100)
test_eq(sam_steps_of('late:0.8')[0], 400)


# %% [markdown]
# ## LookSAM, and why StableLookSAM rescales its in-between steps
#
# LookSAM (Liu et al., CVPR 2022) takes a full SAM step every $k$ steps and keeps from it
# $g_v = g^{asc} - \frac{\langle g, g^{asc}\rangle}{\|g\|^2}\, g$, the part of the SAM gradient orthogonal to that
# step's exact gradient (norms and the inner product over the whole gradient vector, as Algorithm 1's norms; the
# most used port decomposes per tensor). The $k-1$ steps in between run one pass and step on
# $g + \alpha \frac{\|g\|}{\|g_v\|} g_v$: the exact gradient plus a push of relative size $\alpha$ along the
# remembered sharpness direction. In `SAM` this is `look_alpha=alpha` with `schedule='every:k'`, and any other
# schedule works too.
#
# When $g_v \perp g$ that direction has norm $\|g\|\sqrt{1+\alpha^2}$, 1.22 times the gradient's for $\alpha = 0.7$: on
# $k-1$ of every $k$ steps LookSAM moves further than SGD would, and on its SAM steps by
# $\|g^{asc}\| > \|g\|$ (Figure 1 of the paper) further still. That is the instability StableSAM removes, so
# **StableLookSAM** applies the renormalization to both kinds of step: SAM steps are renormalized to $\|g\|$
# (Algorithm 1 line 6) and the in-between direction is rescaled to $\|g\|$ as well. No step is then longer than the
# gradient step at the same point; what the stored direction changes is only where the step points (tilted by
# about $\arctan\alpha \approx 35°$ towards $g_v$). `last_stats['renorm_factor']` of an in-between step is that
# rescaling, about $1/\sqrt{1+\alpha^2} = 0.82$.
#
# `tests/test_efficient.py` checks both flavours step by step against LookSAM written from the paper's formula on
# flat vectors; here the lengths of the in-between steps on a small network:

# %%
def in_between_lengths(cls, alpha=0.7, steps=10):
    """||update direction|| / ||g|| on the one-pass steps of LookSAM (k=5) built as `cls`, on random data."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    opt = cls(net.parameters(), torch.optim.SGD, lr=0.05, schedule='every:5', look_alpha=alpha)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    out = []
    for _ in range(steps):
        torch.nn.functional.cross_entropy(net(x), y).backward()
        g = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm()
        if opt.first_step(zero_grad=True): torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.unperturb()
        if not opt.last_stats['sam_step']:
            out.append((torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm() / g).item())
        opt.step()
        opt.zero_grad()
    return out

plain, stable = in_between_lengths(SAM), in_between_lengths(StableSAM)
print('LookSAM      :', np.round(plain, 3))
print('StableLookSAM:', np.round(stable, 3))
assert all(abs(v - math.sqrt(1 + 0.7 ** 2)) < 0.05 for v in plain), plain   # g_v nearly orthogonal to g
test_close(stable, [1.] * len(stable), eps=1e-5)
