# %%
#| default_exp efficient_evidence

# %% [markdown]
# # efficient_evidence
#
# > What each efficient SAM variant keeps of StableSAM's gain over SGD on real MNIST, against what it costs

# %%
#| hide
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail

from stablesam.robustness import main as robustness_main
from stablesam.runs import read_jsonl
from stablesam.stability import (curves, format_at_training_loss, format_summary, main as stability_main,
                                 stability_figure, stability_summary)
from stablesam.style import markdown_table, save_figure
from stablesam.variants import VARIANTS

# %%
#| hide
plt.rcParams['figure.dpi'] = 72

# %% [markdown]
# The efficient variants of [efficient](00c_efficient.ipynb) save second passes; this page measures what that costs
# in accuracy where SAM's benefit is largest on MNIST, noisy labels. At 60% and 80% label noise (FCN, the
# [label-noise experiment](06a_robustness.ipynb)'s size) SAM and StableSAM beat SGD by 2 and 5.5 points; at 40% the
# gain is under one point, inside the seed spread, so it cannot tell variants apart.
#
# For a variant $v$ the **share of StableSAM's gain kept** is
# $(\bar a_v - \bar a_{SGD}) / (\bar a_{StableSAM} - \bar a_{SGD})$, with $\bar a$ the mean final test accuracy over
# seeds (every optimizer sees the same seeds: the same initialisation, noisy labels and batch order). Its interval is a
# paired bootstrap over seeds: seeds are resampled together for the three optimizers, and the 5th and 95th
# percentiles of the ratio are reported. The **cost** is the epoch time over SGD's measured side by side by
# `benchmarks/efficient_speed.py` on the same setting (MNIST FCN, 10,000 images, batch 128).

# %%
#| export
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from stablesam.robustness import critical_lr
from stablesam.runs import read_jsonl
from stablesam.style import figure_legend, markdown_table, optimizer_style
from stablesam.variants import variant_order


def run_accuracies(records: list[dict]) -> dict:
    """Per (noise, optimizer, seed): the final and best test accuracy and the mean share of SAM steps."""
    runs = {}
    for r in records: runs.setdefault((r.get('noise'), r['optimizer'], r['seed']), []).append(r)
    out = {}
    for key, rs in runs.items():
        rs = sorted(rs, key=lambda r: r['epoch'])
        acc = [r['test_acc'] if r.get('test_acc') is not None else 0. for r in rs]
        fr = [r['sam_fraction'] for r in rs if r.get('sam_fraction') is not None]
        out[key] = dict(final=acc[-1], best=max(acc), epochs=len(rs), sam_fraction=float(np.mean(fr)) if fr else None)
    return out


def gain_kept(acc: dict, name: str, *, base='sgd', ref='stablesam', n_boot=4000, seed=0, level=0.9) -> dict:
    """Share of `ref`'s mean gain over `base` that `name` keeps (`acc`: optimizer -> {seed: accuracy}), bootstrap CI."""
    seeds = sorted(set(acc[name]) & set(acc[base]) & set(acc[ref]))
    if len(seeds) < 2: raise ValueError(f"Need at least 2 seeds shared by {name}, {base} and {ref}, got {seeds}")
    a, b, r = (np.array([acc[k][s] for s in seeds]) for k in (name, base, ref))

    def share(idx):
        den = r[idx].mean() - b[idx].mean()
        return (a[idx].mean() - b[idx].mean()) / den if abs(den) > 1e-12 else np.nan
    boot = np.random.default_rng(seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
    shares = np.array([share(i) for i in boot])
    lo, hi = np.nanpercentile(shares, [50 * (1 - level), 50 * (1 + level)])
    return dict(share=float(share(np.arange(len(seeds)))), lo=float(lo), hi=float(hi), seeds=len(seeds),
                gain=float(r.mean() - b.mean()), acc=float(a.mean()), acc_std=float(a.std(ddof=1)))


# %% [markdown]
# A check of the arithmetic on made-up accuracies (no training): SGD at 0.60, StableSAM at 0.70 and a variant at
# 0.68 on every seed keeps exactly 80% of the gain, with no spread; with noise the interval widens around it.

# %%
acc = dict(sgd={s: 0.60 for s in range(5)}, stablesam={s: 0.70 for s in range(5)}, v={s: 0.68 for s in range(5)})
g = gain_kept(acc, 'v')
test_close(g['share'], 0.8)
test_close((g['lo'], g['hi']), (0.8, 0.8))
rng = np.random.default_rng(1)
noisy = {k: {s: x + rng.normal(0, 0.01) for s, x in v.items()} for k, v in acc.items()}
g = gain_kept(noisy, 'v')
assert g['lo'] < g['share'] < g['hi'] and g['hi'] - g['lo'] > 0.05, g
test_fail(lambda: gain_kept({'v': {0: 1.}, 'sgd': {0: 1.}, 'stablesam': {0: 1.}}, 'v'), contains='at least 2 seeds')


# %% [markdown]
# The large-learning-rate sweep's number per optimizer is its **critical learning rate**: the largest at which at most
# half the seeds diverge (the sweep's criterion: a non-finite loss, or test accuracy never above twice chance).

# %%
#| export
def divergence_critical_lr(records: list[dict], optimizer: str, model='fcn') -> float | None:
    """`critical_lr` of `optimizer` with divergence as the failure (None: every lr failed)."""
    last = {}
    for r in records:
        if r['optimizer'] == optimizer and r.get('model', model) == model: last[(r['lr'], r['seed'])] = r
    by_lr = {}
    for (lr, _), r in last.items(): by_lr.setdefault(lr, []).append(bool(r['diverged']))
    return critical_lr(by_lr)


# %%
recs = [dict(optimizer='sam', model='fcn', lr=lr, seed=s, epoch=1, diverged=(lr > 0.2 and s < 2) or lr > 0.5)
        for lr in (0.1, 0.3, 0.6) for s in range(4)]
test_eq(divergence_critical_lr(recs, 'sam'), 0.3)          # 2 of 4 diverged at 0.3: at most half
test_eq(divergence_critical_lr([dict(r, diverged=True) for r in recs], 'sam'), None)

# %% [markdown]
# One row per optimizer joins the three: accuracy and share kept at each noise level, the critical learning rate,
# the measured cost and share of SAM steps, and whether the goal holds (at least 80% of StableSAM's gain at
# 80% noise for at most 1.25x SGD's epoch time).

# %%
#| export
GOAL_SHARE, GOAL_COST = 0.8, 1.25


METRICS = ('best', 'final')   # best: the paper's protocol (the best epoch's test accuracy); final: the last epoch's


def efficiency_rows(noise_records: dict, speed: dict, lr_records=(), goal_metric='best') -> list[dict]:
    """Per optimizer: cost, SAM-step share, accuracy and gain kept per noise level and metric, critical lr, goal."""
    accs = {lvl: run_accuracies(recs) for lvl, recs in noise_records.items()}
    names = variant_order({o for a in accs.values() for (_, o, _) in a})
    by_opt = {(lvl, metric): {} for lvl in accs for metric in METRICS}   # optimizer -> seed -> accuracy
    for lvl, a in accs.items():
        for metric in METRICS:
            for (_, o, s), v in a.items(): by_opt[lvl, metric].setdefault(o, {})[s] = v[metric]
    rows = []
    for name in names:
        row = dict(optimizer=name, cost=speed.get(name, {}).get('cost'))
        fr = [v['sam_fraction'] for a in accs.values() for (_, o, _), v in a.items()
              if o == name and v['sam_fraction'] is not None]
        row['sam_fraction'] = float(np.mean(fr)) if fr else (None if name == 'sgd' else 1.0)
        for lvl in accs:
            for metric in METRICS:
                seeds = by_opt[lvl, metric]
                shared = set(seeds.get(name, ())) & set(seeds.get('sgd', ())) & set(seeds.get('stablesam', ()))
                g = gain_kept(seeds, name) if len(shared) >= 2 else None   # None: fewer than 2 seeds finished
                key = f'{metric}{int(round(100 * lvl))}'
                row[f'acc_{key}'], row[f'std_{key}'] = (g['acc'], g['acc_std']) if g else (None, None)
                row[f'kept_{key}'] = g['share'] if g else None
                row[f'lo_{key}'], row[f'hi_{key}'] = (g['lo'], g['hi']) if g else (None, None)
                row[f'ci_{key}'] = f"[{g['lo']:.2f}, {g['hi']:.2f}]" if g else None
        if lr_records: row['critical_lr'] = divergence_critical_lr(lr_records, name)
        k80 = row.get(f'kept_{goal_metric}80')
        row['goal'] = (None if k80 is None or row['cost'] is None
                       else 'yes' if k80 >= GOAL_SHARE and row['cost'] <= GOAL_COST else 'no')
        rows.append(row)
    return rows


def plot_cost_benefit(rows: list[dict], levels=(80, 60), figsize=(8, 6.5)):
    """Share of StableSAM's gain kept (y, 90% interval) against cost (x, epoch time / SGD's): metric x noise level."""
    fig, axes = plt.subplots(len(METRICS), len(levels), figsize=figsize, sharex=True, squeeze=False,
                             layout='constrained')
    for (i, metric), (j, pct) in ((im, jp) for im in enumerate(METRICS) for jp in enumerate(levels)):
        ax, key = axes[i][j], f'{metric}{pct}'
        for level, text, x, ha in ((0, 'SGD', 0.99, 'right'), (1, 'StableSAM', 0.01, 'left')):   # where no mark is
            ax.axhline(level, color='0.6', lw=0.8)
            ax.annotate(text, (x, level), xycoords=('axes fraction', 'data'), ha=ha, va='bottom', fontsize=9,
                        color='0.3')
        for r in rows:
            if r.get(f'kept_{key}') is None or r['cost'] is None or r['optimizer'] == 'sgd': continue
            y, lo, hi = r[f'kept_{key}'], r[f'lo_{key}'], r[f'hi_{key}']
            st = optimizer_style(r['optimizer'])   # the SAM flavours hollow (their lines are dashed), stable filled
            ax.errorbar(r['cost'], y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]],
                        fmt=st.marker, color=st.color, label=st.label, capsize=3, ms=7,
                        mfc='white' if st.linestyle == '--' else st.color)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ax.fill_between([min(x0, 0.95), GOAL_COST], GOAL_SHARE, max(y1, GOAL_SHARE + 0.2), color='0.9', zorder=0,
                        lw=0)                                   # the goal: left of GOAL_COST, above GOAL_SHARE
        ax.set_xlim(min(x0, 0.95), max(x1, GOAL_COST + 0.05))
        ax.set_ylim(y0, max(y1, GOAL_SHARE + 0.2))
        if i == len(METRICS) - 1: ax.set_xlabel('cost: epoch time / SGD epoch time')
        ax.set_title(f"{pct}% label noise, {'best-epoch' if metric == 'best' else 'final'} test accuracy", fontsize=9)
        ax.set_ylabel("share of StableSAM's gain\nover SGD kept" if j == 0 else '')
        ax.grid(alpha=0.3)
    figure_legend(fig, f'grey: the goal, >= {GOAL_SHARE:.0%}\nkept at <= {GOAL_COST}x;\nmark: share kept,\n'
                       'bar: 90% interval', fontsize=9, loc='outside right center')   # the notes over no mark
    return fig


# %% [markdown]
# ## On real MNIST
#
# The `slow` cell is the experiment as it ran (resumable: rerun it after a kill and it continues): FCN 784-500-500-10,
# a seeded subset of 12,000 training images of which 2,000 are held out, 15 epochs, batch 128, SGD with momentum 0.9
# as the base, lr 0.05 with a cosine schedule, $\rho = 0.05$, seeds 0-4, the full 10,000 test images; SGD, SAM,
# StableSAM and the ten efficient variants with their registry settings (every=5, p=0.2, the last 20% of steps,
# AE-SAM's defaults, LookSAM k=5 and alpha=0.7). The learning-rate sweep: 10,000 images, 3 epochs, constant lr.
# The cells after it read the committed records.

# %%
from stablesam.results_check import rerun   # runs the command a results folder records

# %%
#| slow
# the commands the folders' config.json record, from the repository root
for name in ('label-noise-80-fcn-10k', 'label-noise-60-fcn-10k', 'lr-sweep-fcn-10k'):
    print(rerun(f'../results/efficient/{name}'))


# %% [markdown]
# `summary_files` derives `summary.md` from the three record sets and `speed.json`; the folder's `config.json`
# names the command that writes it (`python -m stablesam.efficient_evidence results/efficient`), so
# `stablesam-results check` re-derives it like every other summary.

# %%
#| export
def efficiency_columns() -> dict:
    """The columns of the efficiency table: Markdown header and number format per row field."""
    columns = dict(optimizer=('optimizer', None), cost=('cost x SGD', '{:.2f}'), sam_fraction=('SAM steps', '{:.2f}'))
    for pct in (80, 60):
        for metric in ('best', 'final'):
            key = f'{metric}{pct}'
            columns.update({f'acc_{key}': (f'{pct}% {metric} acc', '{:.4f}'), f'std_{key}': ('std', '{:.4f}'),
                            f'kept_{key}': ('gain kept', '{:.2f}'), f'ci_{key}': ('90% CI', None)})
    return dict(columns, critical_lr=('critical lr', '{:g}'), goal=('goal met (80%, best)', None))


def efficiency_inputs(folder) -> tuple:
    """`(noise_records, speed, lr_records)` of an efficient-variants results folder (what exists of them)."""
    folder = Path(folder)
    noise = {pct / 100: read_jsonl(folder / f'label-noise-{pct}-fcn-10k' / 'records.jsonl') for pct in (80, 60)
             if (folder / f'label-noise-{pct}-fcn-10k' / 'records.jsonl').exists()}
    lr_path, speed_path = folder / 'lr-sweep-fcn-10k' / 'records.jsonl', folder / 'speed.json'
    speed = json.loads(speed_path.read_text())['settings']['mnist-fcn'] if speed_path.exists() else {}
    return noise, speed, read_jsonl(lr_path) if lr_path.exists() else []


def summary_files(folder) -> dict:
    """`{'summary.md': text}`: the efficiency table of `folder` from its records and `speed.json`."""
    rows = efficiency_rows(*efficiency_inputs(folder))
    cols = efficiency_columns()
    return {'summary.md': markdown_table(rows, {k: v for k, v in cols.items()
                                                if any(r.get(k) is not None for r in rows)}) + '\n'}


def main(argv=None):
    """`python -m stablesam.efficient_evidence FOLDER`: write FOLDER's summary.md and its config.json (the command)."""
    from stablesam.runs import CONFIG, provenance, write_json
    argv = sys.argv[1:] if argv is None else list(argv)
    folder = Path(argv[0] if argv else 'results/efficient')
    for name, text in summary_files(folder).items(): (folder / name).write_text(text)
    write_json(folder / CONFIG, dict(experiment='efficient', inputs=['label-noise-80-fcn-10k', 'label-noise-60-fcn-10k',
                                                                     'lr-sweep-fcn-10k', 'speed.json'],
                                     command=['python', '-m', 'stablesam.efficient_evidence', str(folder)],
                                     provenance=provenance()))


# %%
#| eval: false
#| export
if __name__ == '__main__': main()   # python -m stablesam.efficient_evidence FOLDER (not run in the notebook)

# %%
RESULTS = Path('../results/efficient')
noise_records, speed, lr_records = efficiency_inputs(RESULTS)
COLUMNS = efficiency_columns()
if noise_records:
    rows = efficiency_rows(noise_records, speed, lr_records)
    print(markdown_table(rows, {k: v for k, v in COLUMNS.items() if any(r.get(k) is not None for r in rows)}))
    if speed:
        done = [pct for pct in (80, 60) if any(r.get(f'kept_best{pct}') is not None for r in rows)]  # >= 2 seeds
        fig = plot_cost_benefit(rows, levels=done, figsize=(4 * len(done), 6.5))
        plt.show()

# %%
from stablesam.results_check import rerun   # runs the command a results folder records

# %%
#| slow
save_figure(fig, RESULTS / 'cost_benefit.png', pdf=True)   # the committed figure
plt.close(fig)
print(rerun(RESULTS))   # summary.md and config.json: python -m stablesam.efficient_evidence results/efficient

# %% [markdown]
# ### Verdicts (80% noise and the learning-rate sweep complete; 60% partial, see below)
#
# **Cost** (`python benchmarks/efficient_speed.py --rounds 3`, 2 threads, interleaved epochs; `speed.json`, measured
# after LookSAM keeps $\|g_v\|$ from its SAM step). On MNIST FCN SAM and StableSAM cost 1.94x and 1.73x SGD; on a
# ResNet-20 (generated CIFAR files, speed only) 2.11x and 1.98x. The scheduled variants cost about what their second
# passes cost: `every=5` 1.09x / 1.15x (MNIST) and 1.28x / 1.19x (ResNet-20) for a SAM-step share f = 0.20, i.e.
# 0.91-1.07 of 1 + f; AE-SAM took 46-50% SAM steps at 1.32-1.50x, 0.91-1.02 of 1 + f. The 5% target is met in 5 of
# these 8 cases; the two misses on MNIST (SAM every 5, AE-SAM) are on the cheap side (a second pass costs less than a
# whole SGD step: SAM itself is 1.73-1.94x, not 2x), the one on ResNet-20 (SAM every 5) is 6.5% above. LookSAM k=5 costs 1.22x (MNIST) and 1.30x (ResNet-20), StableLookSAM 1.37x and 1.20x:
# LookSAM meets the 1.30x target in both settings, StableLookSAM on ResNet-20 only. These ratios move by up to 0.1
# from run to run: SAM and StableSAM with the last 20% of steps, identical in cost per step, measured 1.06x and 1.19x
# in the same run, and the run before (with $\|g_v\|$ recomputed on every one-pass step) gave LookSAM 1.29x / 1.30x
# and StableLookSAM 1.39x / 1.32x. `pytorch_optimizer`'s LookSAM (4.1.0, `closure(); optimizer.step(closure)` as its
# documentation says) costs 1.77x and 2.04x: it saves nothing.
#
# **80% label noise, 5 seeds** (65 runs). SGD 68.7 +/- 1.7% (best epoch), SAM 74.5 +/- 1.7, StableSAM 74.4 +/- 1.9:
# the gain to keep is 5.7 points. Share kept (paired bootstrap, 90%):
#
# - every=5, random p=0.2 and the last 20%: 0.00-0.20 of the best-epoch gain, 0.09-0.14 of the final one. One SAM step
#   in five keeps little. The late-phase variants are SGD until 80% of training, and SGD's best epoch comes earlier,
#   so their best-epoch share is exactly 0.
# - AE-SAM (about half the steps): 0.10-0.13 of the best-epoch gain, 0.32-0.34 of the final one.
# - LookSAM 0.97 [0.45, 1.76] and StableLookSAM 1.19 [0.78, 1.80] of the best-epoch gain, and 3.2 times the final
#   one (75% final test accuracy against StableSAM's 44%). **This is not SAM's benefit for less**: LookSAM barely fits
#   the noisy training labels (training loss 2.24 after 15 epochs against StableSAM's 1.63 and SGD's 1.13; training
#   accuracy 0.20, the clean share), so it never memorises the noise that pulls the others' final accuracy down. On
#   clean labels (the sweep below) it trains more slowly than SGD (91.6% against 94.5% test accuracy after 3 epochs
#   at lr 0.1).
#
# **The goal (at least 80% of StableSAM's gain at 80% noise for at most 1.25x SGD's cost) is met only on paper, by
# LookSAM, and not robustly.** Its point estimates pass (0.97 of the gain at 1.22x in this benchmark run), but its
# cost was 1.29x in the run before, the lower end of its interval is 0.45, and it keeps the gain by underfitting, not
# by flatter minima. Every other variant at or under 1.25x keeps at most 20% of the gain.
#
# **Large learning rates (FCN, 10,000 images, 3 epochs, lr 0.1-0.56, 5 seeds; 260 runs, 18 minutes).** Critical
# learning rate (largest with at most half the seeds failed): SGD, SAM and every scheduled SAM flavour 0.178; StableSAM
# 0.316 (1 of 5 failed there, SAM 3 of 5); StableAE-SAM keeps StableSAM's 0.316 (1 of 5) while AE-SAM fails all 5 there;
# LookSAM 0.1 (all 5 fail at 0.178), StableLookSAM 0.178 (1 of 5): renormalization moves LookSAM's edge up one grid
# step. With a SAM step in every five, StableSAM's edge is gone (StableSAM-every 0.178, 4 of 5 fail at 0.316).
#
# **60% label noise, partial** (29 of 65 runs: seeds 0-1 of every optimizer, seed 2 of SGD, SAM and StableSAM; the
# `slow` cell resumes it). SGD 87.6%, SAM 89.6%, StableSAM 89.5% (best epoch, 3 seeds); the variants' shares are over
# the two seeds they share with SGD and StableSAM: the scheduled variants keep 0.00-0.44 of the gain, AE-SAM 0.26-0.35,
# LookSAM and StableLookSAM about 2x it (91.2%), again by barely fitting the noisy labels. Two seeds are too few for a
# verdict at this level.

# %% [markdown]
# ## Figure 5's distance for the variants
#
# Algorithmic stability as in [stability](06_stability.ipynb)'s Figure 5: two FCNs from one initialisation, trained
# on 10,000 MNIST images that differ in one example, constant lr 0.01, 60 epochs, batch 128; their normalised
# parameter distance, generalisation error and accuracy gap per epoch. Every optimizer of the table above, one seed
# (seed 0: the same initialisation, pair of training sets and batch order for all of them), so there is no seed
# spread here. In the 3-seed run of [stability](06_stability.ipynb) at this size (made on the earlier, 0.4% dimmer copy
# of MNIST) the distance's min-max range over seeds is 17-31% of its mean: a smaller difference here is not a finding.

# %%
#| slow
print(rerun('../results/efficient/stability-fcn-10k-constant'))   # the command its config.json records

# %%
stab_path = RESULTS / 'stability-fcn-10k-constant/records.jsonl'
stab_records = read_jsonl(stab_path) if stab_path.exists() else []
if stab_records:
    print(format_summary(stability_summary(stab_records)))
    print()
    # equal training loss: the lowest mean training loss that every optimizer reaches, rounded up
    lowest = [mean.min() for _, mean, _, _ in curves(stab_records, 'train_loss').values()]
    loss_target = math.ceil(1000 * max(lowest)) / 1000
    print(format_at_training_loss({'FCN, 10,000 images, constant lr': stab_records}, loss_target))
    flavour = {'SAM and its efficient variants': lambda o: o == 'sgd' or not VARIANTS[o].stable,
               'StableSAM and its efficient variants': lambda o: o == 'sgd' or VARIANTS[o].stable}
    # LookSAM's distance is 15x the others': stability_figure draws it on a log scale; one legend below the panels
    stab_fig = stability_figure({name: [r for r in stab_records if keep(r['optimizer'])]
                                 for name, keep in flavour.items()}, figsize=(7.2, 8))
    plt.show()

# %%
#| slow
# beside the command's own stability.png and summary.md: the two flavours side by side
save_figure(stab_fig, RESULTS / 'stability-fcn-10k-constant/stability_by_flavour.png', pdf=True)
plt.close(stab_fig)

# %% [markdown]
# ### Verdict (one seed; the `slow` cell's command, 13 pairs, 66 minutes of wall time on 2 processes)
#
# - **StableSAM keeps the smallest distance**: 4.28e-4 at epoch 60 against SAM's 7.99e-4 and SGD's 7.92e-4 (a 46%
#   cut, beyond the 17-31% seed range above), with the smallest generalisation error of the two-pass optimizers
#   (0.071 against 0.084 and 0.100).
# - **The scheduled and AE variants lose it.** Their distances lie between 6.39e-4 (StableSAM every 5) and 8.40e-4
#   (AE-SAM), within the range SGD's distance spanned over seeds at this size (6.5-8.9e-4), and their generalisation
#   errors (0.082-0.096) lie between SAM's and SGD's. The renormalized flavour is below its SAM flavour in 4 of 5
#   pairs (random p=0.2 is the exception), by 9-14%: within the seed spread, at one seed.
# - **LookSAM and StableLookSAM drift apart 15 times as far** (1.24e-2 and 1.10e-2; a 30-fold jump in the second
#   epoch, from 8e-5 to 2.4e-3, then growth like the others'), and stay that far apart at equal training loss (1.1e-2
#   at a loss of 0.2, where the others are at 2.8-4.4e-4; LookSAM fits more slowly, 0.18 at epoch 60 against SGD's
#   0.10). The
#   reused term $\alpha \|g\| g_v / \|g_v\|$ rescales the part of $g_{asc}$ orthogonal to $g$, which is small and
#   noisy, to 0.7 of the gradient's length, so a one-example difference between the two training sets is amplified
#   on every one-pass step. Their generalisation error is nevertheless the smallest (0.050 and 0.044): across these
#   variants a larger distance does not come with a larger generalisation error, so the paper's reading of Figure 5
#   (distance as a proxy for generalisation) does not carry over to LookSAM.
