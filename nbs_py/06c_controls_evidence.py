# %%
#| default_exp controls_evidence

# %% [markdown]
# # controls_evidence
#
# > Renormalization or just a shorter step? The controls of issue 21 on real MNIST, and the verdict on each reading

# %%
#| hide
from fastcore.test import *
import matplotlib.pyplot as plt

# %%
#| hide
plt.rcParams['figure.dpi'] = 72

# %% [markdown]
# StableSAM's factor $\gamma_t = \|g_t\|/\|g^{asc}_t\|$ is below 1 on almost every step, so StableSAM takes shorter
# steps than SAM at the same learning rate. Each of the paper's readings that favours StableSAM could therefore be
# a reading about step length. This page puts every such reading next to a control with the same step length:
# SAM and SGD at $\eta f$, with $f$ StableSAM's mean factor measured in the same setting and seed, and SAM whose
# learning rate follows StableSAM's factor epoch by epoch ([controls](04d_controls.ipynb)). The records are made
# by the package's own commands (each folder's `config.json` names its command and its data files' checksums); this
# page reads them, tests its functions on small made-up records, and draws the figures.
#
# The analysis functions come first, each with its test; the real records and the verdicts follow.

# %%
#| export
import json
import sys
from pathlib import Path

import numpy as np

from stablesam.runs import read_jsonl
from stablesam.style import markdown_table, optimizer_style


# %% [markdown]
# ## 1. Is StableSAM's distance below the step-matched SAM's by more than the seed spread?
#
# The stability records (Figures 5-7) hold, per optimizer, seed and epoch, the normalised distance between the two
# models trained on neighbouring sets and the generalisation error of the model on $S$. Two comparisons:
#
# - **at equal epochs**: the values at the last epoch;
# - **at equal training loss**: each seed's values at the first epoch where its training loss is at or below a
#   common target (a run that never gets there has none).
#
# "Below by more than the seed spread" means the seed ranges are apart: the largest StableSAM value is below the
# smallest value of the other optimizer. With three seeds a range gives the spread; the paired difference (same
# seed: same initialisation and batch order) is reported beside it.

# %%
#| export
def run_values(records: list[dict], optimizer: str, key: str, *, epoch=None, loss=None) -> dict:
    """Seed -> `key` of `optimizer` at `epoch` (None: its last), or at the first epoch its train loss <= `loss`."""
    runs = {}
    for r in records:
        if r['optimizer'] == optimizer: runs.setdefault(r['seed'], []).append(r)
    out = {}
    for seed, rs in sorted(runs.items()):
        rs = sorted(rs, key=lambda r: r['epoch'])
        if loss is not None: hit = [r for r in rs if r['epoch'] > 0 and r['train_loss'] <= loss][:1]
        elif epoch is not None: hit = [r for r in rs if r['epoch'] == epoch]
        else: hit = rs[-1:]
        if hit: out[seed] = hit[0][key]
    return out


def compare_runs(a: dict, b: dict) -> dict:
    """Seed ranges of `a` and `b` (seed -> value), whether `a` lies wholly below or above `b`, the paired difference."""
    if not a or not b: return dict(a_seeds=len(a), b_seeds=len(b))
    va, vb = np.array(list(a.values()), float), np.array(list(b.values()), float)
    shared = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in shared], float)
    return dict(a_mean=float(va.mean()), a_min=float(va.min()), a_max=float(va.max()), a_seeds=len(va),
                b_mean=float(vb.mean()), b_min=float(vb.min()), b_max=float(vb.max()), b_seeds=len(vb),
                below=bool(va.max() < vb.min()), above=bool(va.min() > vb.max()),
                paired=float(diff.mean()) if len(diff) else None, paired_below=int((diff < 0).sum()),
                paired_n=len(diff))


# %%
def _recs(opt, vals, losses):
    return [dict(optimizer=opt, seed=s, epoch=e, param_distance=v[e], gen_error=v[e] / 10, train_loss=losses[e])
            for s, v in enumerate(vals) for e in range(len(losses))]
_toy = _recs('stablesam', [[0, 1, 2], [0, 1.5, 2.5]], [2.3, 1.0, 0.5]) + \
       _recs('sam-lrf', [[0, 3, 4], [0, 3.5, 5]], [2.3, 0.4, 0.3])
test_eq(run_values(_toy, 'stablesam', 'param_distance'), {0: 2, 1: 2.5})
test_eq(run_values(_toy, 'sam-lrf', 'param_distance', loss=0.5), {0: 3, 1: 3.5})
test_eq(run_values(_toy, 'stablesam', 'param_distance', epoch=1), {0: 1, 1: 1.5})
_c = compare_runs(run_values(_toy, 'stablesam', 'param_distance'), run_values(_toy, 'sam-lrf', 'param_distance'))
test_eq((_c['below'], _c['above'], _c['paired'], _c['paired_below']), (True, False, -2.25, 2))
test_eq(compare_runs({}, {0: 1.0}), dict(a_seeds=0, b_seeds=1))

# %% [markdown]
# `stability_rows` makes one row per control and quantity, at the last epoch and at a training-loss target; the
# default target is the highest final training loss among the optimizers compared, so that every run reaches it.

# %%
#| export
STABILITY_KEYS = ('param_distance', 'gen_error')
OTHERS = ('sam', 'sam-lrf', 'sam-lrf-epoch', 'sgd-lrf', 'sgd')  # what StableSAM is compared with, nearest first


def common_loss(records: list[dict], optimizers) -> float:
    """The highest last-epoch mean training loss among `optimizers`: a target every one of them reaches."""
    finals = []
    for o in optimizers:
        v = run_values(records, o, 'train_loss')
        if v: finals.append(float(np.mean(list(v.values()))))
    return max(finals)


def stability_rows(records: list[dict], ref: str = 'stablesam', others=OTHERS, loss=None) -> list[dict]:
    """Rows comparing `ref` with each of `others` on distance and generalisation error, last epoch and equal loss."""
    others = [o for o in others if any(r['optimizer'] == o for r in records)]
    loss = common_loss(records, [ref, *others]) if loss is None else loss
    rows = []
    for key in STABILITY_KEYS:
        for other in others:
            for when, kw in (('last epoch', {}), (f'train loss <= {loss:.3g}', dict(loss=loss))):
                c = compare_runs(run_values(records, ref, key, **kw), run_values(records, other, key, **kw))
                rows.append(dict(quantity=key, other=other, when=when, **c))
    return rows


def format_stability_rows(rows: list[dict]) -> str:
    """A Markdown table of `stability_rows`: both seed ranges, whether they are apart, the paired difference."""
    def rng(r, p):
        return '-' if r.get(f'{p}_mean') is None else \
            f"{r[f'{p}_mean']:.3g} [{r[f'{p}_min']:.3g}, {r[f'{p}_max']:.3g}]"
    def verdict(r):
        if r.get('below') is None: return 'cannot tell (no run reached the loss)'
        return 'below, ranges apart' if r['below'] else 'above, ranges apart' if r['above'] else 'ranges overlap'
    out = [dict(quantity={'param_distance': 'distance', 'gen_error': 'gen. error'}[r['quantity']],
                other=optimizer_style(r['other']).label, when=r['when'], ref=rng(r, 'a'), them=rng(r, 'b'),
                verdict=verdict(r), paired=None if r.get('paired') is None else
                f"{r['paired']:+.3g} ({r['paired_below']} of {r['paired_n']} seeds below)") for r in rows]
    return markdown_table(out, dict(quantity=('quantity', None), when=('compared at', None),
                                    ref=('StableSAM mean [min, max]', None), other=('vs', None),
                                    them=('its mean [min, max]', None), verdict=('StableSAM is', None),
                                    paired=('paired StableSAM - it', None)))


# %%
_rows = stability_rows(_toy, others=['sam-lrf'])
test_eq([(r['quantity'], r['when'], r['below']) for r in _rows[:2]],
        [('param_distance', 'last epoch', True), ('param_distance', 'train loss <= 0.5', True)])
assert 'below, ranges apart' in format_stability_rows(_rows[:2])

# %% [markdown]
# ## 2. The large-learning-rate claim: two failure criteria and a critical learning rate
#
# A run of the learning-rate sweep **fails**
#
# - under criterion **(a)**, today's: its loss became non-finite, or its test accuracy never rose above twice
#   chance (20% on MNIST);
# - under criterion **(b)**: its loss became non-finite, its final test accuracy is below 50%, or its final
#   training loss is above the loss at initialisation (`init_train_loss`, measured before the first step).
#
# An optimizer's **critical learning rate** is the largest learning rate of the grid at which at most half of
# the seeds fail. Its interval is a bootstrap over seeds: the seeds are resampled with replacement (the same
# resample at every learning rate, since a seed is one initialisation and batch order) and the critical learning
# rate recomputed; the 5th and 95th percentiles are reported. A resample in which every learning rate fails has
# no critical learning rate; it counts as below the grid.

# %%
#| export
CRITERIA = {'a': 'non-finite, or test accuracy never above twice chance',
            'b': 'non-finite, final test accuracy < 50%, or final train loss above its initial value'}


def run_failed(run: list[dict], criterion: str, num_classes: int = 10) -> bool:
    """Whether one run (its per-epoch records) failed under `criterion` 'a' or 'b' (see `CRITERIA`)."""
    run = sorted(run, key=lambda r: r['epoch'])
    last = run[-1]
    if any(r.get('nonfinite') for r in run) or not np.isfinite(last.get('train_loss', np.nan)): return True
    if criterion == 'a':
        return max((r['test_acc'] for r in run if r.get('test_acc') is not None), default=0.0) <= 2 / num_classes
    if criterion == 'b':
        return (last.get('test_acc') or 0.0) < 0.5 or last['train_loss'] > last['init_train_loss']
    raise ValueError(f"Unknown criterion: {criterion!r} (choose from {', '.join(CRITERIA)})")


def failures(records: list[dict], criterion: str) -> dict:
    """(model, optimizer) -> {lr: failed flags in seed order} under `criterion`."""
    runs = {}
    for r in records: runs.setdefault((r['model'], r['optimizer'], r['lr'], r['seed']), []).append(r)
    out = {}
    for (model, opt, lr, seed), run in sorted(runs.items()):
        out.setdefault((model, opt), {}).setdefault(lr, []).append(run_failed(run, criterion))
    return {k: {lr: np.array(v) for lr, v in sorted(by_lr.items())} for k, by_lr in out.items()}


def critical_lr(fails: dict) -> float | None:
    """The largest learning rate (key of `fails`: lr -> failed flags) at which at most half the seeds fail."""
    ok = [lr for lr, f in fails.items() if f.sum() <= len(f) / 2]
    return max(ok) if ok else None


def critical_interval(fails: dict, n_boot: int = 2000, seed: int = 0, level: float = 0.9) -> tuple:
    """The bootstrap interval over seeds of `critical_lr(fails)`: (low, high); None stands for 'below the grid'."""
    n = min(len(f) for f in fails.values())
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    lows = min(fails) / 2   # a resample with no critical lr counts as below the grid
    values = [critical_lr({lr: f[:n][i] for lr, f in fails.items()}) or lows for i in idx]
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return (None if lo < min(fails) else float(lo)), (None if hi < min(fails) else float(hi))


# %%
def _run(lr, seed, accs, nonfinite=False, loss=0.3, init=2.3):
    return [dict(model='fcn', optimizer='sam', lr=lr, seed=seed, epoch=e + 1, test_acc=a, train_loss=loss,
                 init_train_loss=init, **(dict(nonfinite={'loss': 'nan'}) if nonfinite and e == len(accs) - 1 else {}))
            for e, a in enumerate(accs)]
test_eq(run_failed(_run(0.1, 0, [0.9, 0.95]), 'a'), False)
test_eq(run_failed(_run(0.1, 0, [0.3, 0.29]), 'a'), False)   # above twice chance once: trained under (a) ...
test_eq(run_failed(_run(0.1, 0, [0.3, 0.29]), 'b'), True)    # ... but below 50% at the end: failed under (b)
test_eq(run_failed(_run(0.1, 0, [0.9, 0.9], loss=2.5), 'b'), True)   # the loss ended above where it started
test_eq(run_failed(_run(0.1, 0, [0.9, 0.9], nonfinite=True), 'a'), True)
test_fail(lambda: run_failed(_run(0.1, 0, [0.9]), 'c'), contains='Unknown criterion')
_sweep = [r for lr, accs in ((0.1, [0.9] * 4), (0.2, [0.9, 0.9, 0.1, 0.1]), (0.4, [0.1, 0.1, 0.1, 0.9]))
          for s, a in enumerate(accs) for r in _run(lr, s, [a])]
_f = failures(_sweep, 'a')[('fcn', 'sam')]
test_eq(critical_lr(_f), 0.2)   # two of four fail at 0.2: at most half
_lo, _hi = critical_interval(_f)
assert _lo == 0.1 and _hi == 0.4, (_lo, _hi)   # resamples with seed 3 twice pass at 0.4


# %% [markdown]
# `critical_rows` gives the table: one row per model and optimizer, for both criteria, with the share of failed
# seeds at each learning rate for the figure.

# %%
#| export
def critical_rows(records: list[dict], n_boot: int = 2000) -> list[dict]:
    """Per model, optimizer and criterion: the critical learning rate, its bootstrap interval and the seed count."""
    rows = []
    for criterion in CRITERIA:
        for (model, opt), fails in failures(records, criterion).items():
            lo, hi = critical_interval(fails, n_boot)
            rows.append(dict(model=model, optimizer=opt, criterion=criterion, critical=critical_lr(fails), lo=lo,
                             hi=hi, seeds=min(len(f) for f in fails.values()),
                             failed={lr: int(f.sum()) for lr, f in fails.items()}))
    return rows


def format_critical_rows(rows: list[dict]) -> str:
    """A Markdown table of `critical_rows`."""
    def lr(v): return 'below the grid' if v is None else f'{v:g}'
    out = [dict(r, optimizer=optimizer_style(r['optimizer']).label, critical=lr(r['critical']),
                interval=f"[{lr(r['lo'])}, {lr(r['hi'])}]") for r in rows]
    return markdown_table(out, dict(model=('model', None), criterion=('criterion', None),
                                    optimizer=('optimizer', None), critical=('critical lr', None),
                                    interval=('90% bootstrap interval', None), seeds=('seeds', None)))


# %% [markdown]
# ## 3. Distance and generalisation error: correlated three ways
#
# The paper reads Figures 5-7 as "the distance and the generalisation error are positively correlated". Pooled
# over all epochs and runs (today's number) both grow with time, so the correlation says little about the runs.
# Two more readings: **across runs at a fixed epoch** (10, 30, 60: do the runs with the larger distance have the
# larger error?) and **within each run** over its epochs (which mostly measures that both grow).

# %%
#| export
def _corr(x, y) -> float | None:
    """Pearson's r of two sequences (None with fewer than 3 points or no spread)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0: return None
    return float(np.corrcoef(x, y)[0, 1])


def correlations(records: list[dict], epochs=(10, 30, 60), a='param_distance', b='gen_error') -> dict:
    """r(`a`, `b`): pooled over trained epochs, across runs at each of `epochs`, within each run (min, median, max)."""
    trained = [r for r in records if r['epoch'] > 0]
    runs = {}
    for r in trained: runs.setdefault((r['optimizer'], r['seed']), []).append(r)
    within = [c for c in (_corr([r[a] for r in rs], [r[b] for r in rs]) for rs in runs.values()) if c is not None]
    at = {e: _corr([r[a] for r in trained if r['epoch'] == e], [r[b] for r in trained if r['epoch'] == e])
          for e in epochs}
    return dict(pooled=_corr([r[a] for r in trained], [r[b] for r in trained]), at_epoch=at, runs=len(runs),
                within_min=min(within, default=None), within_median=float(np.median(within)) if within else None,
                within_max=max(within, default=None), within_positive=sum(c > 0 for c in within))


# %%
_rng = np.random.default_rng(0)
_cr = [dict(optimizer='sgd', seed=s, epoch=e, param_distance=e * (1 + s), gen_error=e + _rng.normal() * 0.1)
       for s in range(3) for e in range(0, 61, 10)]
_c = correlations(_cr)
assert _c['pooled'] > 0.5 and _c['within_min'] > 0.9 and _c['within_positive'] == 3
test_eq(_c['at_epoch'][10] is not None, True)
test_eq(correlations(_cr, epochs=(5,))['at_epoch'][5], None)   # no run at epoch 5
