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
from stablesam.stability import plot_stability

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
from typing import NamedTuple

import numpy as np

from stablesam.robustness import critical_lr
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
# default target is the highest final training loss of any run of the optimizers compared, so that every run reaches
# it (the open questions' flatness at equal loss takes the same level).

# %%
#| export
STABILITY_KEYS = ('param_distance', 'gen_error')
OTHERS = ('sam', 'sam-lrf', 'sam-lrf-epoch', 'sgd-lrf', 'sgd')  # what StableSAM is compared with, nearest first


def common_loss(records: list[dict], optimizers) -> float:
    """The highest last-epoch training loss of any (finite) run of `optimizers`: a target every run reaches."""
    finals = [v for o in optimizers for v in run_values(records, o, 'train_loss').values() if np.isfinite(v)]
    return max(finals)


def stability_rows(records: list[dict], ref: str = 'stablesam', others=OTHERS, loss=None) -> list[dict]:
    """Rows comparing `ref` with each of `others` on distance and generalisation error, last epoch and equal loss."""
    others = [o for o in others if any(r['optimizer'] == o for r in records)]
    if not others: return []
    loss = common_loss(records, [ref, *others]) if loss is None else loss
    rows = []
    for key in STABILITY_KEYS:
        for other in others:
            for when, kw in (('last epoch', {}), (f'train loss <= {loss:.3g}', dict(loss=loss))):
                c = compare_runs(run_values(records, ref, key, **kw), run_values(records, other, key, **kw))
                rows.append(dict(quantity=key, ref=ref, other=other, when=when, **c))
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
                optimizer=optimizer_style(r['ref']).label, other=optimizer_style(r['other']).label, when=r['when'],
                ref=rng(r, 'a'), them=rng(r, 'b'), verdict=verdict(r), paired=None if r.get('paired') is None else
                f"{r['paired']:+.3g} ({r['paired_below']} of {r['paired_n']} seeds below)") for r in rows]
    return markdown_table(out, dict(quantity=('quantity', None), when=('compared at', None),
                                    optimizer=('optimizer', None), ref=('its mean [min, max]', None),
                                    other=('vs', None), them=('mean [min, max]', None), verdict=('it is', None),
                                    paired=('paired difference', None)))


# %%
_rows = stability_rows(_toy, others=['sam-lrf'])
test_eq([(r['quantity'], r['when'], r['below']) for r in _rows[:2]],
        [('param_distance', 'last epoch', True), ('param_distance', 'train loss <= 0.5', True)])
assert 'below, ranges apart' in format_stability_rows(_rows[:2])
_uneven = [dict(r, train_loss=r['train_loss'] + 0.2 * r['seed']) for r in _toy]
test_eq(common_loss(_uneven, ['stablesam', 'sam-lrf']), 0.7)   # seed 1 of StableSAM ends highest: every run reaches it

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
def complete_grid(fails: dict) -> tuple:
    """`(fails, end)`: the learning rates up to the first with fewer seeds than the most, and that lr (None: all)."""
    full, kept = max(len(f) for f in fails.values()), {}
    for lr, f in fails.items():
        if len(f) < full: return kept, lr
        kept[lr] = f
    return kept, None


def critical_rows(records: list[dict], n_boot: int = 2000) -> list[dict]:
    """Per model, optimizer and criterion: the critical learning rate, its bootstrap interval and the seed count.

    A step-matched control has no run where its StableSAM run left no factor (it diverged in its first epoch); its
    grid ends below the first such learning rate (`grid_end`). A critical lr at the (kept) grid's largest lr is a lower
    bound: the grid cannot tell how much higher it is."""
    rows = []
    for criterion in CRITERIA:
        for (model, opt), fails in failures(records, criterion).items():
            fails, end = complete_grid(fails)
            lo, hi = critical_interval(fails, n_boot)
            crit = critical_lr(fails)
            rows.append(dict(model=model, optimizer=opt, criterion=criterion, critical=crit, lo=lo, hi=hi,
                             seeds=min(len(f) for f in fails.values()), grid_end=end,
                             lower_bound=crit == max(fails),
                             failed={lr: int(f.sum()) for lr, f in fails.items()},
                             failed_runs=int(sum(f.sum() for f in fails.values())),
                             grid_runs=sum(len(f) for f in fails.values())))
    return rows


def _lr(v) -> str:
    """A critical learning rate, or 'below the grid' for None."""
    return 'below the grid' if v is None else f'{v:g}'


def format_critical_rows(rows: list[dict]) -> str:
    """A Markdown table of `critical_rows`."""
    out = [dict(r, optimizer=optimizer_style(r['optimizer']).label,
                critical=('>= ' if r.get('lower_bound') else '') + _lr(r['critical']),
                interval=f"[{_lr(r['lo'])}, {_lr(r['hi'])}]",
                end=None if r.get('grid_end') is None else f"{r['grid_end']:g}",
                total=f"{r['failed_runs']} of {r['grid_runs']}") for r in rows]
    return markdown_table(out, dict(model=('model', None), criterion=('criterion', None),
                                    optimizer=('optimizer', None), critical=('critical lr', None),
                                    interval=('90% bootstrap interval', None), seeds=('seeds', None),
                                    total=('failed runs on its grid', None),
                                    end=('grid ends below (no StableSAM factor)', None)))


# %%
_kept, _end = complete_grid({0.1: np.zeros(4), 0.2: np.zeros(2), 0.4: np.zeros(4)})
test_eq((list(_kept), _end), ([0.1], 0.2))   # a control's grid ends where its StableSAM run left no factor
_rows = critical_rows(_sweep, n_boot=200)
test_eq([(r['criterion'], r['critical'], r['grid_end']) for r in _rows], [('a', 0.2, None), ('b', 0.2, None)])
_top = critical_rows([r for r in _sweep if r['lr'] < 0.4], n_boot=50)[0]   # no lr of this grid fails at most half
test_eq((_top['critical'], _top['lower_bound']), (0.2, True))
assert '>= 0.2' in format_critical_rows([_top])


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


# %% [markdown]
# ## The verdicts
#
# Each reading of the paper gets one row: **holds**, **does not hold** or **cannot tell**, with the numbers and
# the reason. The rules, fixed before the records were read:
#
# - a critical learning rate is **above** another's when its estimate is higher and the two bootstrap intervals do
#   not overlap (holds); **not above** when its estimate is at most the other's (does not hold); otherwise cannot
#   tell;
# - a distance or generalisation error is **below** another's when the seed ranges are apart (holds); **not below**
#   when the ranges are apart the other way, or the mean is not lower (does not hold); otherwise, or with a single
#   seed on either side (no spread to compare with), cannot tell;
# - "positively correlated" holds for a reading when every correlation of that reading is above 0.

# %%
#| export
def interval_verdict(a: dict, b: dict) -> str:
    """'holds': `a`'s critical lr above `b`'s, intervals disjoint; 'does not hold': not higher; else 'cannot tell'."""
    def v(x): return -np.inf if x is None else x
    if v(a['critical']) <= v(b['critical']): return 'cannot tell' if a.get('lower_bound') else 'does not hold'
    if b.get('lower_bound'): return 'cannot tell'   # b's grid ended: b may be as high
    return 'holds' if v(a['lo']) > v(b['hi']) else 'cannot tell'


RANGE_RULE = 'holds: seed ranges (min-max) apart; does not hold: mean not lower; else cannot tell'


def range_verdict(c: dict) -> str:
    """'holds' if the first seed range lies below the second, 'does not hold' if above or not lower on average."""
    if c.get('a_mean') is None or min(c['a_seeds'], c['b_seeds']) < 2: return 'cannot tell'   # one seed: no spread
    if c['below']: return 'holds'
    if c['above'] or c['a_mean'] >= c['b_mean']: return 'does not hold'
    return 'cannot tell'


def fmt_range(c: dict, p: str) -> str:
    """`p` ('a' or 'b') of a `compare_runs` dict as 'mean [min, max]'."""
    return f"{c[f'{p}_mean']:.3g} [{c[f'{p}_min']:.3g}, {c[f'{p}_max']:.3g}]"


# %%
test_eq(interval_verdict(dict(critical=0.3, lo=0.26, hi=0.38), dict(critical=0.2, lo=0.17, hi=0.22)), 'holds')
test_eq(interval_verdict(dict(critical=0.3, lo=0.2, hi=0.38), dict(critical=0.2, lo=0.17, hi=0.26)), 'cannot tell')
test_eq(interval_verdict(dict(critical=None, lo=None, hi=None), dict(critical=0.2, lo=0.17, hi=0.26)),
        'does not hold')
test_eq(interval_verdict(dict(critical=0.3, lo=0.26, hi=0.38), dict(critical=0.2, lo=0.17, hi=0.2, lower_bound=True)),
        'cannot tell')
test_eq(range_verdict(compare_runs({0: 1., 1: 2.}, {0: 3., 1: 4.})), 'holds')
test_eq(range_verdict(compare_runs({0: 1., 1: 3.5}, {0: 3., 1: 4.})), 'cannot tell')
test_eq(range_verdict(compare_runs({0: 3., 1: 4.5}, {0: 3., 1: 4.})), 'does not hold')
test_eq(range_verdict(compare_runs({0: 1., 1: 2.}, {0: 3.})), 'cannot tell')


# %% [markdown]
# `verdict_rows` applies the rules to every reading the records can speak to; a reading whose records are missing
# gets no row (the summary lists what was not run).

# %%
#| export
def _lr_text(r: dict) -> str:
    """A critical-lr row as 'lr [lo, hi]' ('>= lr' at the grid's largest lr)."""
    bound = '>= ' if r.get('lower_bound') else ''
    end = '' if r.get('grid_end') is None else f" (grid ends below {r['grid_end']:g})"
    return f"{bound}{_lr(r['critical'])} [{_lr(r['lo'])}, {_lr(r['hi'])}]{end}"


def lr_verdicts(crit: list[dict], ref='stablesam', others=('sam', 'sam-lrf')) -> list[dict]:
    """Rows: is `ref`'s critical learning rate above each of `others`', per model and criterion?"""
    by = {(r['model'], r['optimizer'], r['criterion']): r for r in crit}
    rows = []
    for model, crit_name in dict.fromkeys((r['model'], r['criterion']) for r in crit):
        a = by.get((model, ref, crit_name))
        for o in others:
            b = by.get((model, o, crit_name))
            if a is None or b is None: continue
            rows.append(dict(section='3 large lr', reading=f"{model.upper()}: StableSAM's critical lr is above "
                                                           f"{optimizer_style(o).label}'s, criterion ({crit_name})",
                             verdict=interval_verdict(a, b),
                             numbers=f"StableSAM {_lr_text(a)}; {optimizer_style(o).label} {_lr_text(b)}; "
                                     f"{a['seeds']} seeds",
                             reason='estimate and 90% bootstrap interval over seeds'))
    return rows


def _below_row(c: dict, section: str) -> dict:
    """The verdict row of one `stability_rows` row: is its optimizer's quantity below the other's?"""
    a, b = optimizer_style(c['ref']).label, optimizer_style(c['other']).label
    what = {'param_distance': 'distance', 'gen_error': 'generalisation error'}[c['quantity']]
    paired = '' if c.get('paired') is None else \
        f"; paired {c['paired']:+.3g} ({c['paired_below']} of {c['paired_n']} seeds lower)"
    numbers = '-' if c.get('a_mean') is None else f"{a} {fmt_range(c, 'a')}; {b} {fmt_range(c, 'b')}{paired}"
    return dict(section=section, reading=f"{a}'s {what} is below {b}'s ({c['when']})", verdict=range_verdict(c),
                numbers=numbers, reason=RANGE_RULE)


def stability_verdicts(rows: list[dict], setting: str, section: str = '2 stability',
                       others=('sam', 'sam-lrf', 'sam-lrf-epoch')) -> list[dict]:
    """Verdict rows of `stability_rows`: is StableSAM's distance (gen. error) below each of `others`' (last epoch, equal
    loss)?"""
    return [_below_row(c, f'{section}, {setting}') for c in rows if c['other'] in others]


FACTOR_CONTROLS = ('stablesam-clamp10', 'stablesam-clamp50', 'stablesam-clamp90', 'stableusam')


def factor_stability_rows(records: list[dict], controls=FACTOR_CONTROLS) -> list[dict]:
    """`stability_rows` of each factor control in `records` against SAM and StableSAM, at one loss every run reaches."""
    present = [o for o in controls if any(r['optimizer'] == o for r in records)]
    loss = common_loss(records, dict.fromkeys(r['optimizer'] for r in records)) if present else None
    return [c for o in present for c in stability_rows(records, ref=o, others=('sam', 'stablesam'), loss=loss)]


def factor_stability_verdicts(rows: list[dict], setting: str) -> list[dict]:
    """Verdict rows of `factor_stability_rows`: is each factor control's distance below SAM's (last epoch, equal loss)
    and StableSAM's (last epoch)?"""
    return [_below_row(c, f'6 controlling the factor, {setting}') for c in rows
            if c['quantity'] == 'param_distance' and (c['other'] == 'sam' or c['when'] == 'last epoch')]


def correlation_verdicts(sources: dict) -> list[dict]:
    """Rows: are distance and generalisation error positively correlated: pooled, at fixed epochs, within runs?

    A reading with no correlation in the records (too few runs or epochs) gets no row."""
    cs = {name: correlations(recs) for name, recs in sources.items()}
    pooled = [c['pooled'] for c in cs.values() if c['pooled'] is not None]
    at = [(n, e, r) for n, c in cs.items() for e, r in c['at_epoch'].items() if r is not None]
    medians = [c['within_median'] for c in cs.values() if c['within_median'] is not None]
    within_pos = sum(c['within_positive'] for c in cs.values())
    runs = sum(c['runs'] for c in cs.values())
    lows = sorted(at, key=lambda t: t[2])[:2]
    rows = []
    if pooled:
        rows.append(dict(section='4 correlation', reading='distance and gen. error positively correlated, pooled over '
                                                          'epochs',
                         verdict='holds' if min(pooled) > 0 else 'does not hold',
                         numbers=f"r {min(pooled):.2f} to {max(pooled):.2f} over {len(pooled)} settings",
                         reason='pooled r also counts that both grow with the epochs'))
    if at:
        rows.append(dict(section='4 correlation', reading='... across runs at a fixed epoch (10, 30, 60)',
                         verdict='holds' if min(r for *_, r in at) > 0 else 'does not hold',
                         numbers=f"r {min(r for *_, r in at):.2f} to {max(r for *_, r in at):.2f} over {len(at)} "
                                 "(setting, epoch); lowest: " +
                                 ', '.join(f'{n} epoch {e}: {r:.2f}' for n, e, r in lows),
                         reason='the reading that compares runs; few runs a setting, so a single r is noisy'))
    if medians:
        rows.append(dict(section='4 correlation', reading='... within each run over its epochs',
                         verdict='holds' if within_pos == runs else 'does not hold',
                         numbers=f"positive in {within_pos} of {runs} runs; median r per setting "
                                 f"{min(medians):.2f} to {max(medians):.2f}",
                         reason='within a run both grow with time: this says little about generalisation'))
    return rows


def format_verdicts(rows: list[dict]) -> str:
    """The verdict table in Markdown."""
    return markdown_table(rows, dict(section=('section', None), reading=('reading', None),
                                     verdict=('verdict', lambda v: f'**{v}**'), numbers=('numbers', None),
                                     reason=('how it is decided', None)))


# %%
_fc = (_recs('sam', [[0, 3, 4], [0, 3.5, 5]], [2.3, 0.4, 0.3]) +
       _recs('stablesam', [[0, 1, 2], [0, 1.5, 2.5]], [2.3, 1.0, 0.5]) +
       _recs('stablesam-clamp10', [[0, 1, 2.2], [0, 1, 2.6]], [2.3, 1.2, 0.8]))
_fv = factor_stability_verdicts(factor_stability_rows(_fc), 'toy')
test_eq([r['verdict'] for r in _fv], ['holds', 'holds', 'does not hold'])   # below SAM twice; not below StableSAM
assert all("γ0=0.1" in r['reading'] and "distance" in r['reading'] for r in _fv), _fv
assert 'train loss <= 0.8' in _fv[1]['reading']   # the clamp's final loss is the highest: every run reaches it
test_eq(factor_stability_verdicts(factor_stability_rows(_toy), 'toy'), [])   # no factor control in the records: no rows


# %%
#| export
def _by(records, kind, name, key) -> dict:
    """Seed -> `key` of the open-question records of `kind` ('model' or 'path') for `name` (optimizer or (a, b))."""
    out = {}
    for r in records:
        if r['kind'] != kind: continue
        if (r['a'] if r['b'] is None else (r['a'], r['b'])) == name: out[r['seed']] = r[key]
    return out


def question_verdicts(records: list[dict], setting: str, eps: float = 0.1) -> list[dict]:
    """Rows answering the paper's open questions from the `stablesam.open_questions` records of `setting`'s models."""
    rows = []
    bar = _by(records, 'path', ('sam', 'stablesam'), 'barrier_train')
    ref = {r['seed']: r['barrier_train'] for r in records if r['kind'] == 'order'}
    if bar and ref:
        dist = _by(records, 'path', ('sam', 'stablesam'), 'distance')
        rdist = {r['seed']: r['distance'] for r in records if r['kind'] == 'order'}
        holds = max(bar.values()) <= max(ref.values()) + 1e-4
        rows.append(dict(section=f'6 same attractor?, {setting}',
                         reading='SAM and StableSAM (same init and batch order) end in one basin: no higher '
                                 'train-loss barrier than two SAM runs in other batch orders',
                         verdict='holds' if holds else 'does not hold',
                         numbers=f"barrier SAM-StableSAM {max(bar.values()):.2g} (max of {len(bar)} seeds), "
                                 f"SAM-SAM other order {max(ref.values()):.2g}; distance "
                                 f"{np.mean(list(dist.values())):.3g} vs {np.mean(list(rdist.values())):.3g}",
                         reason='loss along the straight path, 11 points; barrier above the chord'))
    level = next((r['level'] for r in records if r['kind'] == 'equal-loss'), None)
    for kind, when in (('model', 'final models'), ('equal-loss', f'at equal training loss {level or 0:.3g}')):
        for key, what in (('top_eig', 'top Hessian eigenvalue'), ('trace', 'Hessian trace')):
            for other in ('sam', 'sam-lrf', 'sgd'):
                c = compare_runs(_by(records, kind, 'stablesam', key), _by(records, kind, other, key))
                if c.get('a_mean') is None: continue
                name = optimizer_style(other).label
                rows.append(dict(section=f'6 how flat?, {setting}',
                                 reading=f"StableSAM's {what} is below {name}'s ({when})", verdict=range_verdict(c),
                                 numbers=f"StableSAM {fmt_range(c, 'a')}; {name} {fmt_range(c, 'b')}",
                                 reason=RANGE_RULE + ('' if kind == 'model' else
                                                                      '; each run retrained to its first epoch there')))
    key = f'pgd_{eps:g}'
    c = compare_runs(_by(records, 'model', 'sam', key), _by(records, 'model', 'stablesam', key))
    if c.get('a_mean') is not None:
        rows.append(dict(section=f'6 adversarial robustness, {setting}',
                         reading=f"StableSAM is more robust than SAM: higher accuracy under PGD, eps {eps:g}",
                         verdict=range_verdict(c), numbers=f"SAM {fmt_range(c, 'a')}; StableSAM {fmt_range(c, 'b')}",
                         reason=RANGE_RULE + ' (the other eps: summary of the open-questions folder)'))
    return rows


def factor_control_verdicts(crit: list[dict], ref='stablesam', controls=FACTOR_CONTROLS) -> list[dict]:
    """Rows: does controlling the factor (Remark 19's clamp; rho scaled by ||g||) raise the critical lr?"""
    by = {(r['model'], r['optimizer'], r['criterion']): r for r in crit}
    rows = []
    for (model, opt, crit_name), r in by.items():
        if opt not in controls or (model, ref, crit_name) not in by: continue
        a = by[model, ref, crit_name]
        rows.append(dict(section='6 controlling the factor', reading=f"{model.upper()}: {optimizer_style(opt).label}'s "
                                                                     f"critical lr is above StableSAM's ({crit_name})",
                         verdict=interval_verdict(r, a), numbers=f"{optimizer_style(opt).label} {_lr_text(r)}; "
                                                                f"StableSAM {_lr_text(a)}",
                         reason='estimate and 90% bootstrap interval over seeds'))
    return rows


# %%
def _q(kind, a, b, seed, **kw): return dict(kind=kind, a=a, b=b, seed=seed, **kw)
_qr = ([_q('path', 'sam', 'stablesam', s, barrier_train=0.0, distance=0.02) for s in range(2)] +
       [_q('order', 'sam', 'sam', 0, barrier_train=0.001, distance=0.005)] +
       [_q('model', o, None, s, top_eig=e + s, trace=10 * (e + s), **{'pgd_0.1': acc + 0.01 * s})
        for o, e, acc in (('stablesam', 10, 0.12), ('sam', 8, 0.11), ('sgd', 20, 0.05)) for s in range(2)])
_qv = {(r['section'], r['reading']): r['verdict'] for r in question_verdicts(_qr, 'toy')}
test_eq(_qv[('6 same attractor?, toy', next(k[1] for k in _qv if k[0].startswith('6 same')))], 'holds')
test_eq([v for (sec, rd), v in _qv.items() if sec == '6 how flat?, toy' and "below SAM's" in rd],
        ['does not hold', 'does not hold'])   # StableSAM sharper than SAM: eigenvalue and trace
test_eq([v for (sec, rd), v in _qv.items() if sec == '6 how flat?, toy' and "below SGD's" in rd], ['holds', 'holds'])
test_eq([v for (sec, _), v in _qv.items() if sec.startswith('6 adversarial')], ['cannot tell'])   # ranges overlap
test_eq(question_verdicts([], 'toy'), [])

# %% [markdown]
# ## The summary of `results/controls`
#
# `python -m stablesam.controls_evidence results/controls` reads the folders below (those present), writes
# `summary.md` (the verdict table and the tables behind it) and the figures, and records its command in
# `config.json`; `stablesam-results check` derives `summary.md` again from the records.

# %%
#| export
LR_FOLDERS = ('lr-sweep-10k-3ep', 'lr-sweep-10k-3ep-matched', 'lr-sweep-10k-3ep-factor-control')


class Setting(NamedTuple):
    """A stability setting of the summary: its verdict section, figure title, column title and results folders."""
    section: str
    title: str
    column: str
    folders: tuple


STABILITY = {
    'weight decay, FCN 10k': Setting('2 stability', 'FCN on MNIST (10,000 images), weight decay 5e-4: StableSAM and '
                                     'step-matched controls', 'FCN, 10,000 MNIST images',
                                     ('stability-fcn-10k-weight-decay', 'stability-fcn-10k-weight-decay-controls')),
    'cosine, FCN 10k': Setting('2 stability', 'FCN on MNIST (10,000 images), cosine lr: StableSAM and step-matched '
                               'controls', 'FCN, 10,000 MNIST images',
                               ('stability-fcn-10k-cosine', 'stability-fcn-10k-cosine-controls')),
    'weight decay, LeNet 3k': Setting('5 conv-net panel', 'LeNet on MNIST (3,000 images; stand-in for CIFAR-10), '
                                      'weight decay 5e-4', 'LeNet, 3,000 MNIST images (stand-in for CIFAR-10)',
                                      ('stability-lenet-3k-weight-decay',)),
    'cosine, LeNet 3k': Setting('5 conv-net panel', 'LeNet on MNIST (3,000 images; stand-in for CIFAR-10), cosine lr',
                                'LeNet, 3,000 MNIST images (stand-in for CIFAR-10)', ('stability-lenet-3k-cosine',)),
    'constant, FCN 60k': Setting('2 stability', 'FCN on MNIST (all 60,000 images), constant lr: StableSAM and '
                                 'step-matched controls', 'FCN, all 60,000 MNIST images',
                                 ('stability-fcn-60k-constant', 'stability-fcn-60k-constant-controls')),
    'constant, FCN 10k': Setting('2 stability', "FCN on MNIST (10,000 images), constant lr: the factor controlled "
                                 "(Remark 19's clamp, rho scaled by ||g||)", 'FCN, 10,000 MNIST images',
                                 ('stability-fcn-10k-constant-factor-control',))}
PAPER_FIGURES = {'figure-6': ('Figure 6 on real MNIST: constant lr, weight decay 5e-4',
                              ('weight decay, FCN 10k', 'weight decay, LeNet 3k')),
                 'figure-7': ('Figure 7 on real MNIST: cosine lr', ('cosine, FCN 10k', 'cosine, LeNet 3k'))}
BASE = ('sgd', 'sam', 'stablesam')   # the optimizers of the paper's figures
QUESTIONS = {'FCN 10k, weight decay': 'open-questions-fcn-10k-weight-decay',
             'LeNet 3k, weight decay': 'open-questions-lenet-3k-weight-decay'}
CORRELATION_ROOT = 'stability'   # beside the controls folder: Figures 5-7's records (the earlier MNIST copy)


def setting_slug(name: str) -> str:
    """The file-name part of stability setting `name`: its first folder without 'stability-'."""
    return STABILITY[name].folders[0].removeprefix('stability-')


def _records(folder) -> list[dict]:
    """The records of results folder `folder` ([] if it has none)."""
    path = Path(folder) / 'records.jsonl'
    return read_jsonl(path, torn_tail=True) if path.exists() else []


def evidence_inputs(folder) -> dict:
    """The records the summary reads: lr sweep, stability settings, open questions, correlation sources."""
    folder = Path(folder)
    lr = [r for f in LR_FOLDERS for r in _records(folder / f)]
    stab = {name: [r for f in s.folders for r in _records(folder / f)] for name, s in STABILITY.items()}
    corr = {p.name + ' (earlier MNIST copy)': _records(p) for p in sorted((folder.parent / CORRELATION_ROOT).glob('*'))
            if (p / 'records.jsonl').exists()}
    corr.update({f'{name} (official files)': recs for name, recs in stab.items()
                 if len({r['optimizer'] for r in recs}) > 1})   # one optimizer's seeds compare no optimizers
    questions = {name: _records(folder / f) for name, f in QUESTIONS.items()}
    folders = (*LR_FOLDERS, *(f for s in STABILITY.values() for f in s.folders), *QUESTIONS.values())
    return dict(lr=lr, stability={k: v for k, v in stab.items() if v},
                questions={k: v for k, v in questions.items() if v}, correlation=corr,
                present=[f for f in folders if (folder / f / 'records.jsonl').exists()])


def correlation_table(sources: dict) -> str:
    """Pooled, fixed-epoch and within-run correlations per source, as a Markdown table."""
    rows = []
    for name, recs in sources.items():
        c = correlations(recs)
        rows.append(dict(setting=name, runs=c['runs'], pooled=c['pooled'],
                         **{f'e{e}': r for e, r in c['at_epoch'].items()},
                         within=f"{c['within_min']:.2f} / {c['within_median']:.2f} / {c['within_max']:.2f}"))
    f = '{:.2f}'
    return markdown_table(rows, dict(setting=('setting', None), runs=('runs', None), pooled=('pooled r', f),
                                     e10=('r at epoch 10', f), e30=('epoch 30', f), e60=('epoch 60', f),
                                     within=('within runs: min / median / max', None)))


def summary_text(inputs: dict) -> str:
    """The summary of `results/controls`: the verdict table, then the tables behind it."""
    crit = critical_rows(inputs['lr']) if inputs['lr'] else []
    rows = lr_verdicts(crit)
    tables = {name: (stability_rows(recs), factor_stability_rows(recs)) for name, recs in inputs['stability'].items()}
    for name, (table, _) in tables.items(): rows += stability_verdicts(table, name, STABILITY[name].section)
    rows += correlation_verdicts(inputs['correlation'])
    for name, recs in inputs['questions'].items(): rows += question_verdicts(recs, name)
    rows += factor_control_verdicts(crit)
    for name, (_, factor_table) in tables.items(): rows += factor_stability_verdicts(factor_table, name)
    parts = ['# Renormalization or a shorter step? Verdicts on real MNIST', '',
             'Folders read: ' + ', '.join(inputs['present']), '', format_verdicts(rows), '']
    if crit: parts += ['## Critical learning rates (lr sweep, 10,000 images, 3 epochs)', '',
                       'Criterion (a): ' + CRITERIA['a'] + '; (b): ' + CRITERIA['b'] + '.', '',
                       format_critical_rows(crit), '']
    for name, (table, factor_table) in tables.items():
        if table: parts += [f'## Stability, {name}: StableSAM against each optimizer', '',
                            format_stability_rows(table), '']
        if factor_table: parts += [f'## Stability, {name}: each factor control against SAM and StableSAM', '',
                                   format_stability_rows(factor_table), '']
    parts += ['## Distance and generalisation error: three correlations', '', correlation_table(inputs['correlation']),
              '']
    return '\n'.join(parts)


def summary_files(folder) -> dict:
    """`{'summary.md': text}` of `results/controls` from the records of its folders."""
    return {'summary.md': summary_text(evidence_inputs(folder))}


# %% [markdown]
# ## Figures

# %%
#| export
def plot_failures(records: list[dict], figsize=(7.2, 5.6)):
    """Share of failed seeds against the learning rate: rows criteria (a), (b); columns models; a line per optimizer."""
    import matplotlib.pyplot as plt
    from stablesam.style import figure_legend, log_x_axis, plot_kwargs, wrapped
    from stablesam.variants import variant_order
    models = list(dict.fromkeys(r['model'] for r in records))
    fig, axes = plt.subplots(2, len(models), figsize=figsize, squeeze=False, sharex=True, sharey=True,
                             layout='constrained')
    for i, crit in enumerate(CRITERIA):
        fails = failures(records, crit)
        for j, model in enumerate(models):
            ax = axes[i, j]
            for opt in variant_order([o for m, o in fails if m == model]):
                f = complete_grid(fails[model, opt])[0]   # a control's grid ends where StableSAM left no factor
                lrs = list(f)
                ax.plot(lrs, [100 * f[lr].mean() for lr in lrs], lw=1.2, **plot_kwargs(opt, marker=True))
            ax.axhline(50, color='0.6', lw=0.8, ls='--')
            log_x_axis(ax)
            ax.set_title(wrapped(f"{model.upper()}, criterion ({crit})", 3.4, 9), fontsize=9)
            ax.set_ylabel('seeds failed (%)', fontsize=8)
            ax.set_xlabel('learning rate', fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    figure_legend(fig, 'dashed line: half the seeds (the critical lr is the largest lr at or below it)')
    return fig


def plot_distance_vs_loss(records: list[dict], figsize=(3.6, 3.2), key='param_distance'):
    """Mean `key` against the mean training loss over seeds, one line per optimizer: the equal-loss comparison."""
    import matplotlib.pyplot as plt
    from stablesam.stability import curves
    from stablesam.style import figure_legend, log_x_axis, plot_kwargs, quantity
    fig, ax = plt.subplots(figsize=figsize, layout='constrained')
    loss, val = curves(records, 'train_loss'), curves(records, key)
    for opt in loss:
        keep = loss[opt][0] > 0
        ax.plot(loss[opt][1][keep], quantity(key).scale * val[opt][1][keep], lw=1.2,
                **plot_kwargs(opt, marker=True, points=int(keep.sum())))
    log_x_axis(ax)
    ax.invert_xaxis()
    ax.set_xlabel('training loss (mean over seeds; training runs right)', fontsize=8)
    ax.set_ylabel(quantity(key).label, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    figure_legend(fig, 'one point an epoch')
    return fig


def plot_factor(records: list[dict], figsize=(3.6, 3.0)):
    """The factor per epoch: StableSAM's applied and SAM's would-be, median with the 10th-90th percentile band."""
    import matplotlib.pyplot as plt
    from stablesam.stability import curves
    from stablesam.style import figure_legend, plot_kwargs
    fig, ax = plt.subplots(figsize=figsize, layout='constrained')
    recs = [r for r in records if r.get('factor_p50') is not None]
    p10, p50, p90 = (curves(recs, k) for k in ('factor_p10', 'factor_p50', 'factor_p90'))
    for opt in p50:
        kw = plot_kwargs(opt, marker=True, points=len(p50[opt][0]))
        ax.plot(p50[opt][0], p50[opt][1], lw=1.2, **kw)
        ax.fill_between(p50[opt][0], p10[opt][1], p90[opt][1], color=kw['color'], alpha=0.15, linewidth=0)
    ax.axhline(1, color='0.6', lw=0.8, ls='--')
    ax.set_xlabel('epoch', fontsize=8)
    ax.set_ylabel('factor ||g|| / ||g_asc|| per step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    figure_legend(fig, 'median of the steps; band: 10th-90th percentile (mean over seeds)')
    return fig


def paper_figure(stability: dict, title: str, names):
    """The paper's layout (FCN left, the conv net right) of stability settings `names`, its three optimizers only;
    None unless every setting has records."""
    from stablesam.stability import stability_figure
    panels = {STABILITY[n].column: [r for r in stability.get(n, []) if r['optimizer'] in BASE] for n in names}
    return stability_figure(panels, title) if all(panels.values()) else None


def write_figures(folder, inputs: dict) -> list:
    """Write the figures of `summary_text`'s inputs into `folder`; returns their paths."""
    import matplotlib.pyplot as plt
    from stablesam.stability import plot_stability
    from stablesam.style import save_figure
    made = []
    def save(fig, name):
        try: made.extend(save_figure(fig, Path(folder) / name, dpi=200))
        finally: plt.close(fig)
    if inputs['lr']: save(plot_failures(inputs['lr']), 'lr_failures.png')
    for name, recs in inputs['stability'].items():
        slug = setting_slug(name)
        save(plot_stability(recs, STABILITY[name].title), f'stability-{slug}.png')
        save(plot_distance_vs_loss(recs), f'distance-vs-loss-{slug}.png')
        save(plot_factor(recs), f'factor-{slug}.png')
    for file, (title, names) in PAPER_FIGURES.items():
        fig = paper_figure(inputs['stability'], title, names)
        if fig is not None: save(fig, f'{file}.png')
    return made


def main(argv=None):
    """`python -m stablesam.controls_evidence FOLDER`: FOLDER's summary.md, figures and config.json (the command)."""
    from stablesam.runs import CONFIG, provenance, write_json
    argv = sys.argv[1:] if argv is None else list(argv)
    folder = Path(argv[0] if argv else 'results/controls')
    inputs = evidence_inputs(folder)
    for name, text in summary_files(folder).items(): (folder / name).write_text(text)
    write_figures(folder, inputs)
    write_json(folder / CONFIG, dict(experiment='controls', inputs=inputs['present'],
                                     command=['python', '-m', 'stablesam.controls_evidence', str(folder)],
                                     provenance=provenance()))
    print((folder / 'summary.md').read_text())


# %%
#| eval: false
#| export
if __name__ == '__main__': main()   # python -m stablesam.controls_evidence FOLDER (not run in the notebook)

# %% [markdown]
# The summary and the figures of a made-up results tree with two settings (the LeNet panel and the factor control),
# which every other folder lacks:

# %%
import tempfile
from stablesam.runs import write_jsonl


def _stab(opt, speed=1.0, factor=None, seeds=(0, 1), epochs=4):
    f = {} if factor is None else {k: factor for k in ('factor_mean', 'factor_p10', 'factor_p50', 'factor_p90')}
    return [dict(optimizer=opt, seed=s, epoch=e, param_distance=1e-3 * speed * e * (1 + 0.1 * s),
                 gen_error=0.01 * speed * e + 0.001 * s, acc_gap=0.1 * e, train_loss=2.3 / (1 + speed * e),
                 **(f if e else {})) for s in seeds for e in range(epochs + 1)]


with tempfile.TemporaryDirectory() as _d:
    _root = Path(_d) / 'controls'
    for _folder, _recs_in in (('stability-lenet-3k-weight-decay', _stab('sgd') + _stab('sam', 1.2, 0.9) +
                               _stab('stablesam', 0.8, 0.7)),
                              ('stability-fcn-10k-constant-factor-control', _stab('sam', 1.2, 0.9) +
                               _stab('stablesam', 0.8, 0.7) + _stab('stablesam-clamp10', 0.5, 0.316))):
        (_root / _folder).mkdir(parents=True)
        write_jsonl(_root / _folder / 'records.jsonl', _recs_in)
    _in = evidence_inputs(_root)
    test_eq(_in['present'], ['stability-lenet-3k-weight-decay', 'stability-fcn-10k-constant-factor-control'])
    _text = summary_text(_in)
    assert "| 5 conv-net panel, weight decay, LeNet 3k | StableSAM's distance is below SAM's (last epoch) | **holds**" \
        in _text, _text
    assert "| 6 controlling the factor, constant, FCN 10k | StableSAM γ0=0.1's distance is below StableSAM's (last " \
           "epoch) | **holds**" in _text, _text
    assert '## Stability, constant, FCN 10k: each factor control against SAM and StableSAM' in _text
    test_eq(sorted(p.name for p in write_figures(_root, _in)),
            sorted(f'{kind}-{slug}.png' for kind in ('stability', 'distance-vs-loss', 'factor')
                   for slug in ('lenet-3k-weight-decay', 'fcn-10k-constant-factor-control')))   # no LeNet|FCN pair

# %% [markdown]
# ## On real MNIST
#
# The records are in `results/controls/` (official MNIST files; each folder's `config.json` holds the command, the
# data files' sha256 and the commit). What was run:
#
# - **learning-rate sweep** (`lr-sweep-10k-3ep`): FCN and LeNet, 10,000 training images, 3 epochs, momentum 0.9,
#   batch 128, rho 0.05, 10 learning rates from 0.1 to 0.5623 (twelfth-decade steps, three times finer than the
#   committed sweep), 5 seeds, SGD, SAM and StableSAM; `-matched`: SAM at lr x f, f from the StableSAM run with
#   the same model, learning rate and seed; `-factor-control`: Remark 19's clamp at gamma0 0.1, 0.5, 0.9 and rho
#   scaled by ||g|| (StableUSAM: with radius rho ||g|| the ascent step is rho g), FCN;
# - **stability, weight decay** (`stability-fcn-10k-weight-decay`): Figure 6's setting (constant lr 0.01, weight
#   decay 5e-4, no momentum, batch 128, 60 epochs) on the first 10,000 training images, StableSAM, 3 seeds;
#   `-controls`: SGD, SAM and the three step-matched controls, f from the StableSAM pair of the same seed;
# - **stability, cosine** (`stability-fcn-10k-cosine`, `-controls`): Figure 7's setting (cosine lr from 0.01) in the
#   same way;
# - **stability at the paper's size** (`stability-fcn-60k-constant`): Figure 5's setting (constant lr 0.01) on all
#   60,000 training images, SGD, SAM and StableSAM, 3 seeds; `-controls`: the three step-matched controls;
# - **the conv-net panel** (`stability-lenet-3k-weight-decay`, `stability-lenet-3k-cosine`): Figures 6 and 7's
#   right-hand column, LeNet on the first 3,000 MNIST images standing in for the paper's CIFAR-10, SGD, SAM and
#   StableSAM, 3 seeds;
# - **the factor controlled in Figure 5's distance** (`stability-fcn-10k-constant-factor-control`): constant lr,
#   10,000 images, SGD, SAM, StableSAM, Remark 19's clamp at gamma0 0.1, 0.5, 0.9 and StableUSAM, 3 seeds;
# - **open questions** (`open-questions-fcn-10k-weight-decay`, `open-questions-lenet-3k-weight-decay`): the final
#   models of the weight-decay folders above, FCN and LeNet.
#
# The summary below is derived from those records each time this page runs (and by `stablesam-results check`);
# a folder not made yet is left out, and the summary's first line names the folders it read.

# %%
FOLDER = Path('../results/controls')
inputs = evidence_inputs(FOLDER) if FOLDER.exists() else None
if inputs: print(summary_text(inputs))

# %%
if inputs and inputs['lr']:
    fig = plot_failures(inputs['lr'])
    plt.show()

# %%
if inputs:
    for name, recs in inputs['stability'].items():
        plot_stability(recs, STABILITY[name].title)
        plot_distance_vs_loss(recs)
        plot_factor(recs)
        plt.show()
    for title, names in PAPER_FIGURES.values():   # the paper's layout, where both columns have records
        if paper_figure(inputs['stability'], title, names) is not None: plt.show()

# %% [markdown]
# ### What the records say
#
# **The factor.** In the learning-rate sweep StableSAM's mean factor is 0.85-0.90 for the FCN and 0.85-0.94 for
# LeNet up to lr 0.32, rising to 0.95-0.98 above it (3 epochs, momentum 0.9); in Figure 6's setting (no momentum,
# weight decay, 60 epochs) it starts at 1.0 in the first epoch, falls to about 0.65 by epoch 8 and settles near 0.71:
# StableSAM's steps there are about 30% shorter than SAM's. The matched controls train at lr x 0.711 (seeds 0-2: 0.7127, 0.7117, 0.7109).
#
# **Figure 6's setting at 10,000 images (weight decay), all six optimizers, 3 seeds.** At epoch 60 the distance
# (x 1e-4, mean [min, max]) is StableSAM 5.66 [4.84, 6.94], SAM 9.70 [8.08, 11.0], SGD 9.04 [8.36, 9.57], and for
# the step-matched controls SAM at lr x f 5.34 [4.48, 6.62], SAM at lr x f(epoch) 5.11 [4.31, 6.52], SGD at lr x f
# 5.45 [4.41, 7.15]. StableSAM's distance is below SAM's in every seed, but every optimizer that takes the shorter
# step, SGD included, ends at the same distance: plotted against the training loss (`distance-vs-loss-fcn-10k-weight-decay.png`)
# all six lie on one curve. At equal training loss (0.146, the highest any run ends at) StableSAM's distance is 5.56
# against SAM's 6.91 (ranges overlap) and SAM at lr x f's 5.21. The generalisation error separates the ascent step
# from the step length: at equal loss the SAM family is at 0.068 (StableSAM 0.0684, SAM 0.0678, SAM at lr x f 0.0684)
# and SGD at 0.080 with either learning rate (0.0803, 0.0793). Renormalization adds nothing a shorter step does not
# give; the ascent step does.
#
# **Figure 7's setting (cosine lr) at 10,000 images, all six optimizers, 3 seeds.** The same picture. StableSAM's
# mean factor is 0.71 again. At epoch 60 the distance (x 1e-4) is StableSAM 2.68 [2.24, 3.16], SAM 4.32 [3.85,
# 5.11], SGD 3.75 [2.91, 4.85], and SAM at lr x f 2.44 [2.15, 2.82], SAM at lr x f(epoch) 2.72 [2.40, 3.18], SGD at
# lr x f 2.44 [1.80, 2.94]: below SAM, not below the shorter-step controls. At equal training loss (0.228) the
# generalisation error is 0.043-0.044 for the whole SAM family (StableSAM 0.0432, SAM 0.0443, both step-matched SAMs
# 0.0430) and 0.047-0.049 for SGD (at lr x f 0.0472, at lr 0.0485): again the ascent step, not the renormalization.
#
# **Figure 5's setting at the paper's size (constant lr, all 60,000 images, official files), 3 seeds.** StableSAM's
# mean factor is 0.70-0.71. At epoch 60 its distance (x 1e-3) is 1.83 [1.80, 1.85] against SAM's 3.06 [2.94, 3.20]
# and SGD's 2.86 [2.60, 3.17], and it has trained least (training loss 0.039 against SAM's 0.024 and SGD's 0.019).
# At equal training loss (0.0403, the highest final loss of any run) StableSAM's distance, 1.79 [1.77, 1.80], is still
# below SAM's 2.12 [2.01, 2.25] in every seed with the ranges apart, but level with SGD's 1.83 [1.76, 1.94]; the
# generalisation error there is 0.0276 for StableSAM, 0.0271 for SAM and 0.0335 for SGD. The step-matched SAMs
# (at lr x f and at lr x f(epoch), 3 seeds each) end where StableSAM does: distance 1.72 [1.64, 1.81] and 1.79 [1.63,
# 1.97], generalisation error 0.0274 and 0.0275 against StableSAM's 0.0282. SGD at lr x f ends closer still (distance
# 1.57 [1.50, 1.61], below StableSAM in every seed) but generalises worse (0.0366; 0.0337 at equal loss), like SGD at
# lr. At the paper's size too, StableSAM is below neither step-matched SAM, and the ascent step, not the
# renormalization, is what lowers the generalisation error.
#
# **The conv-net panel (LeNet on 3,000 MNIST images, standing in for CIFAR-10; `figure-6.png`, `figure-7.png`).**
# Here StableSAM's factor is lower than the FCN's (mean over epochs 0.56-0.66), so it trains more slowly: at epoch 60
# its training loss is 0.27-0.31 with weight decay against SAM's 0.15-0.18, and 0.47-0.60 with cosine lr against
# SAM's 0.31-0.44 (test accuracy 90.5% against 93.7%, and 83-85% against 87-90%). With weight decay its distance is
# lower than SAM's in every seed (1.68e-3 [1.01e-3, 2.07e-3] against 3.99e-3 [1.62e-3, 7.89e-3]) but SAM's seeds
# spread so widely that the ranges overlap (cannot tell); its generalisation error is lower at epoch 60 (0.038
# against 0.051, holds) and level at equal training loss (0.036 against 0.037, cannot tell). With cosine lr nothing
# separates them at epoch 60, and at equal training loss (0.596) StableSAM's distance is above SAM's in every seed
# (1.36e-3 against 0.96e-3, does not hold). On the conv net the paper's reading holds only where StableSAM has
# trained less.
#
# **The open questions (seeds 0-2 of all six).** No loss barrier between SAM and StableSAM (0 on the training and
# the test loss, 11 points on the straight path), nor between SAM and its step-matched control; SAM and SGD have a
# small one (training loss 0.0017). StableSAM ends 0.0208 from SAM (normalised distance), almost four times as far
# as SAM retrained in another batch order (0.0056, seed 0), and 0.0039 from SAM at lr x f: the renormalization moves
# training to where a shorter step takes it. StableSAM's final minimum is not flatter than SAM's: top Hessian
# eigenvalue 10.5 [9.85, 11.6] against 8.79 [8.33, 9.69], trace 137 [132, 144] against 122 [117, 129]; at equal
# training loss (each run retrained to its first epoch at or below 0.1426; SAM reaches it at epoch 43-44) SAM's are
# 9.91 and 133, still not above StableSAM's; SAM at lr x f matches StableSAM (10.3, 135) and SGD is twice as sharp
# (19.0, 192). Under attack StableSAM is within a point of SAM and of SAM at lr x f (PGD, eps 0.1: 12.4% against
# 11.0% and 12.3%; eps 0.2 and 0.3: at most 0.1% for all).
#
# **The open questions on LeNet (weight decay, seeds 0-2).** One basin again (no barrier between SAM and
# StableSAM; the distance between them, 0.049, is six times that between two SAM runs in other batch orders, 0.0078).
# StableSAM's minimum is sharper than SAM's, at the end (top eigenvalue 52.1 [51.1, 53.2] against 27.4 [26.6, 27.9],
# trace 395 against 243) and at equal training loss 0.309 (53.8 against 39.0), and flatter than SGD's (122 at the
# end). It is less robust than SAM under PGD at eps 0.1 (50.9% [49.0, 53.4] against 61.2% [59.5, 62.6]), with 3.2
# points less clean test accuracy.
#
# **Large learning rates.** On the finer grid StableSAM's critical learning rate is one grid step above SAM's for
# the FCN (0.316 against 0.261 under both criteria) and equal for LeNet, and the bootstrap intervals overlap: the
# claim cannot be told from SAM with 5 seeds. The step-matched SAM's grid ends where StableSAM itself diverged in its
# first epoch (no factor to match); below that it fails about as often as StableSAM (FCN at 0.316: 3 of 5 seeds
# against StableSAM's 1 of 5 and SAM's 4 of 5 under criterion (a)). LeNet's failures are not monotone in the
# learning rate (SAM fails 5 of 5 at 0.215 and 2 of 5 at 0.261), so a critical learning rate defined as "the largest
# lr at which at most half fail" flatters SAM there; the failed-run counts on each grid (the table's last column
# but one) show StableSAM failing least.
#
# **Controlling the factor (Remark 19, FCN sweep, 5 seeds).** The clamp to $[\gamma_0, \sqrt{\gamma_0}]$ pins the
# factor at its upper end wherever the natural factor (0.85-0.90 here) lies above it: with $\gamma_0$ 0.1 every step
# takes 0.316 of SAM's length, with 0.5 it takes 0.70-0.71, with 0.9 it takes 0.90-0.91. The critical learning
# rate follows the length: $\gamma_0$ 0.1 fails no seed up to the grid's end (0.56, where it still reaches 93-94%
# test accuracy: it steps like lr 0.18), 0.5 moves it one grid step above StableSAM (0.383 against 0.316; criterion
# (a) 'cannot tell', (b) 'holds'), 0.9 leaves it at StableSAM's. rho scaled by ||g|| (StableUSAM) never diverges
# on the grid, but from 0.38 on most seeds end below 50% test accuracy (criterion (b): 0.316, as StableSAM). Remark 19's
# clamp, as these numbers show, is a fixed shorter step.
#
# **Controlling the factor in Figure 5's distance (constant lr, 10,000 images, 3 seeds).** Here StableSAM's natural
# factor is about 0.70, so $\gamma_0$ 0.5 (upper end 0.707) barely changes it (mean factor 0.67-0.69 at epoch 60),
# 0.9 pins every step at 0.90 and 0.1 at 0.316; StableUSAM's factor is 0.75-0.77. At epoch 60 the distance
# (x 1e-4) follows the step length: $\gamma_0$ 0.1 1.88 [1.58, 2.32], 0.5 4.95 [4.53, 5.58], StableUSAM 5.25 [4.86,
# 5.70], StableSAM 5.58 [4.52, 7.57], 0.9 8.21 [7.32, 9.59], SAM 8.57 [8.16, 9.17], SGD 8.90 [7.98, 9.64]; so does the
# training loss (0.24 for $\gamma_0$ 0.1, 0.14 for StableSAM, 0.10 for SAM). At equal training loss (0.24, the
# highest final loss of any run) $\gamma_0$ 0.1's distance is still below SAM's (1.87 against 3.38, ranges apart),
# but the generalisation error of the whole SAM family is level (0.040-0.042: $\gamma_0$ 0.1 0.0399, StableSAM
# 0.0414, SAM 0.0412). The shortest step lowers the distance at a given loss too, and the generalisation error not
# at all. StableSAM against SAM in this folder: distance and generalisation error below at epoch 60 (5.58 against
# 8.57; 0.0703 against 0.0840; holds), cannot tell at equal loss 0.139 (5.58 against 6.32; 0.0703 against 0.0705).
#
# **Correlations.** Pooled over epochs, distance and generalisation error correlate (r 0.46-0.94), and within every
# run too, but across runs at a fixed epoch the correlation is weaker: r 0.46-0.89 for the FCN, and for LeNet
# anything from -0.45 (weight decay, epoch 30) to 0.82, with 0.35, 0.13 and 0.09 at epoch 60 in its three settings.
# The paper's "positively correlated" is carried by time. Only the across-runs reading speaks to the paper's claim
# that the more stable optimizer generalises better: it holds weakly for the FCN and not for the conv net.
