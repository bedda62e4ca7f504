# %%
#| default_exp stability

# %% [markdown]
# # stability
#
# > Algorithmic stability (Section 5.2, Figures 5-7): how far two models drift apart when trained on training sets that differ in one example.

# %% [markdown]
# Section 5.2 of the paper follows Hardt et al. (2016) and measures algorithmic stability with two
# proxies, recorded once per epoch:
#
# - the **normalised Euclidean distance** between the parameters $w$, $w'$ of two identical models
#   (same architecture, same initialisation) trained on neighbouring training sets $S$, $S'$;
# - the **generalisation error**, test loss minus training loss (we also record the gap between
#   training and test accuracy).
#
# Theorems 8 and 15 bound the uniform stability of SAM and StableSAM; the paper's reading of Figures
# 5-7 is that SGD's two models drift apart fastest, SAM's and StableSAM's slowly, and StableSAM's least.
#
# This notebook builds the experiment on the training engine: `stablesam.train.Trainer` trains each
# model (the same loop, data and optimizers as every other experiment), `stablesam.optim.make_optimizer`
# provides SGD, SAM and StableSAM. Nothing here is a second training loop: we construct the two
# training sets, drive two `Trainer`s epoch by epoch and compare them.

# %%
#| hide
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from fastcore.test import test_close, test_eq, test_fail, test_ne

plt.rcParams['figure.dpi'] = 72

# %%
#| export
import argparse
import copy
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

# %% [markdown]
# ## Neighbouring training sets
#
# From a training set of $n$ examples the paper removes one random example $z_r$; the remaining $n-1$
# examples form $S$. It then forms $S'$ by replacing one random example of $S$ with $z_r$. We represent
# both as index lists of length $n-1$ into the original dataset that agree everywhere except at one
# *position* $p$: $S[p]$ is the replaced example, $S'[p] = r$. Because the replaced example sits at the
# same position, a sampler that draws positions (indices into the subset) in a seeded order feeds the two
# models the same batches, except that one batch holds $z_r$ instead of $S[p]$.

# %%
#| export
class Neighbours(NamedTuple):
    """Two index lists of equal length that differ at exactly one `position`."""
    s: list        # indices of S into the full training set
    s_prime: list  # indices of S' (S with S[position] replaced by `removed`)
    removed: int   # the example removed to form S; present in S' only
    position: int  # the position of S where the two lists differ

# %%
#| export
def neighbouring_indices(n: int, seed: int = 0) -> Neighbours:
    "Neighbouring index lists S, S' of length `n-1` from a training set of `n` examples (Section 5.2)."
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"Invalid n: {n} (a training set of at least 2 examples is needed)")
    rng = np.random.default_rng(seed)
    removed = int(rng.integers(n))
    s = [i for i in range(n) if i != removed]
    position = int(rng.integers(n - 1))
    s_prime = list(s)
    s_prime[position] = removed
    return Neighbours(s, s_prime, removed, position)

# %% [markdown]
# The two lists have the same length, differ at exactly one position, and the removed example is in
# $S'$ only; the example it replaced is in $S$ only:

# %%
nb = neighbouring_indices(10, seed=3)
nb

# %%
for seed in range(20):
    nb = neighbouring_indices(10, seed=seed)
    test_eq(len(nb.s), 9); test_eq(len(nb.s_prime), 9)
    test_eq([i for i in range(9) if nb.s[i] != nb.s_prime[i]], [nb.position])
    test_eq(nb.removed in nb.s, False); test_eq(nb.removed in nb.s_prime, True)
    test_eq(set(nb.s) - set(nb.s_prime), {nb.s[nb.position]})
    test_eq(sorted(nb.s + [nb.removed]), list(range(10)))
test_eq(neighbouring_indices(100, 7), neighbouring_indices(100, 7))
test_ne(neighbouring_indices(100, 7), neighbouring_indices(100, 8))
test_fail(lambda: neighbouring_indices(1), contains='Invalid n: 1')

# %% [markdown]
# `neighbouring_subsets` applies the lists to a dataset (an optional `subset` first restricts it to its
# first $N$ examples, as `--subset` does):

# %%
#| export
def neighbouring_subsets(dataset, seed: int = 0, subset: int | None = None) -> tuple[Subset, Subset, Neighbours]:
    "Subsets S, S' of `dataset` (restricted to its first `subset` examples) that differ in one example."
    n = len(dataset)
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset < 2:
            raise ValueError(f"Invalid subset: {subset} (at least 2 examples)")
        n = min(n, int(subset))
    nb = neighbouring_indices(n, seed)
    return Subset(dataset, nb.s), Subset(dataset, nb.s_prime), nb

# %%
ds = torch.utils.data.TensorDataset(torch.arange(50).float()[:, None], torch.arange(50) % 3)
s, sp, nb = neighbouring_subsets(ds, seed=1, subset=20)
test_eq(len(s), 19); test_eq(len(sp), 19)
diff = [i for i in range(19) if not torch.equal(s[i][0], sp[i][0])]
test_eq(diff, [nb.position])
test_eq(sp[nb.position][0].item(), float(nb.removed))
test_eq(max(nb.s + nb.s_prime) < 20, True)
test_fail(lambda: neighbouring_subsets(ds, subset=1), contains='Invalid subset: 1')

# %% [markdown]
# ## Normalised parameter distance
#
# Following Hardt et al. (2016), the distance between the parameter vectors $w$ and $w'$ of the two
# models (all trainable parameters, flattened and concatenated) is normalised by the sum of their norms:
#
# $$\Delta(w, w') = \frac{\lVert w - w' \rVert_2}{\lVert w \rVert_2 + \lVert w' \rVert_2} \in [0, 1].$$
#
# It is 0 for identical models, scale-free (multiplying both models' weights by $c>0$ leaves it
# unchanged) and at most 1 by the triangle inequality. It is computed in float64 so that tiny early
# differences are not lost to rounding.

# %%
#| export
def param_distance(model_a: nn.Module, model_b: nn.Module) -> float:
    "Normalised Euclidean distance ||w - w'|| / (||w|| + ||w'||) between two models' parameters."
    pa, pb = list(model_a.parameters()), list(model_b.parameters())
    if len(pa) != len(pb) or any(a.shape != b.shape for a, b in zip(pa, pb)):
        raise ValueError("param_distance needs two models with the same parameter shapes")
    with torch.no_grad():
        diff = sum((a.double() - b.double()).pow(2).sum() for a, b in zip(pa, pb))
        na = sum(a.double().pow(2).sum() for a in pa).sqrt()
        nb_ = sum(b.double().pow(2).sum() for b in pb).sqrt()
        denom = (na + nb_).item()
    return 0.0 if denom == 0 else math.sqrt(diff.item()) / denom

# %%
m1 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
m2 = copy.deepcopy(m1)
test_eq(param_distance(m1, m2), 0.0)
with torch.no_grad():
    for p in m2.parameters(): p.mul_(3.0)
test_close(param_distance(m1, m2), 2 / 4, eps=1e-12)   # ||w - 3w|| / (||w|| + 3||w||)
with torch.no_grad():
    for p in m2.parameters(): p.copy_(-p / 3)
test_close(param_distance(m1, m2), 1.0, eps=1e-12)     # w' = -w: the maximum
w = torch.cat([p.detach().flatten() for p in m1.parameters()]).double()
with torch.no_grad():
    for p in m2.parameters(): p.normal_()
w2 = torch.cat([p.detach().flatten() for p in m2.parameters()]).double()
test_close(param_distance(m1, m2), ((w - w2).norm() / (w.norm() + w2.norm())).item(), eps=1e-12)
test_fail(lambda: param_distance(m1, nn.Linear(3, 4)), contains='same parameter shapes')

# %% [markdown]
# ## Per-epoch records
#
# Each epoch gives one record per optimizer and seed: the distance between the two models, and for the
# model trained on $S$ the generalisation error (test loss minus training loss on $S$) and the accuracy
# gap (training accuracy minus test accuracy). The same quantities for the model trained on $S'$ are kept
# under `_prime` keys; the raw losses and accuracies are kept too, so a record can be re-analysed.

# %%
#| export
def stability_record(optimizer: str, seed: int, epoch: int, distance: float,
                     train: dict, test: dict, train_prime: dict, test_prime: dict, **extra) -> dict:
    "One epoch's record: distance, generalisation error and accuracy gap from the evaluation dicts."
    return dict(optimizer=optimizer, seed=seed, epoch=epoch, param_distance=float(distance),
                gen_error=test['loss'] - train['loss'], acc_gap=train['acc'] - test['acc'],
                gen_error_prime=test_prime['loss'] - train_prime['loss'],
                acc_gap_prime=train_prime['acc'] - test_prime['acc'],
                train_loss=train['loss'], test_loss=test['loss'], train_acc=train['acc'], test_acc=test['acc'],
                **extra)

# %%
r = stability_record('sgd', 0, 3, 0.01, dict(loss=0.2, acc=0.95), dict(loss=0.5, acc=0.9),
                     dict(loss=0.25, acc=0.94), dict(loss=0.45, acc=0.91), lr=0.1)
test_close(r['gen_error'], 0.3, eps=1e-12); test_close(r['acc_gap'], 0.05, eps=1e-12)
test_close(r['gen_error_prime'], 0.2, eps=1e-12); test_eq(r['lr'], 0.1)

# %% [markdown]
# Records go to a JSON-lines file, one object per line, appended as they come so that a long run that
# is stopped keeps what it measured:

# %%
#| export
def append_jsonl(path, record: dict) -> None:
    "Append `record` as one JSON line to `path`."
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')

def read_jsonl(path) -> list[dict]:
    "The records of a JSON-lines file."
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

# %%
with tempfile.TemporaryDirectory() as d:
    p = Path(d) / 'x.jsonl'
    append_jsonl(p, r); append_jsonl(p, {**r, 'epoch': 4})
    test_eq(read_jsonl(p), [r, {**r, 'epoch': 4}])

# %% [markdown]
# ## Figure
#
# The paper's Figures 5-7 show, per setting, the distance, the generalisation error and (here also) the
# accuracy gap against the epoch, one line per optimizer: the mean over seeds, with the spread (min to
# max over seeds) shaded.

# %%
#| export
PANELS = (('param_distance', 'normalised distance'), ('gen_error', 'generalisation error'),
          ('acc_gap', 'train - test accuracy'))
COLORS = {'sgd': 'tab:gray', 'sam': 'tab:blue', 'stablesam': 'tab:red'}

def curves(records: list[dict], key: str) -> dict:
    "Per optimizer: (epochs, mean, min, max) of `key` over seeds."
    out = {}
    for opt in dict.fromkeys(r['optimizer'] for r in records):
        rs = [r for r in records if r['optimizer'] == opt]
        epochs = sorted({r['epoch'] for r in rs})
        vals = [np.array([r[key] for r in rs if r['epoch'] == e], dtype=float) for e in epochs]
        out[opt] = (np.array(epochs), np.array([v.mean() for v in vals]),
                    np.array([v.min() for v in vals]), np.array([v.max() for v in vals]))
    return out

def plot_stability(records: list[dict], title: str | None = None, axes=None, figsize=(10, 2.8)):
    "Distance, generalisation error and accuracy gap per epoch, one line per optimizer (mean, spread shaded)."
    import matplotlib.pyplot as plt
    if not records: raise ValueError("plot_stability needs at least one record")
    fig = None
    if axes is None: fig, axes = plt.subplots(1, len(PANELS), figsize=figsize, layout='constrained')
    for ax, (key, label) in zip(axes, PANELS):
        for opt, (ep, mean, lo, hi) in curves(records, key).items():
            c = COLORS.get(opt)
            ax.plot(ep, mean, label=opt, color=c)
            ax.fill_between(ep, lo, hi, alpha=0.25, color=c, linewidth=0)
        ax.set_xlabel('epoch'); ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    if title is not None and fig is not None: fig.suptitle(title, fontsize=10)
    return fig if fig is not None else axes[0].figure

# %% [markdown]
# A synthetic example of the figure's layout (made-up curves, two seeds):

# %%
fake = [dict(optimizer=o, seed=s, epoch=e, param_distance=k * (1 - np.exp(-e / 5)) * (1 + 0.1 * s),
             gen_error=k * e / 20, acc_gap=k * e / 200)
        for o, k in (('sgd', 0.3), ('sam', 0.2), ('stablesam', 0.15)) for s in range(2) for e in range(11)]
c = curves(fake, 'param_distance')
test_eq(list(c), ['sgd', 'sam', 'stablesam']); test_eq(c['sgd'][0], np.arange(11))
test_close(c['sam'][1][-1], 0.2 * (1 - np.exp(-2)) * 1.05, eps=1e-12)
test_eq((c['sam'][2] <= c['sam'][1]).all() and (c['sam'][1] <= c['sam'][3]).all(), True)
fig = plot_stability(fake, 'layout only (synthetic curves)'); plt.show(); plt.close(fig)

# %% [markdown]
# `summarize` gives the final-epoch numbers per optimizer (mean and standard deviation over seeds); the
# closing notes and the CLI quote it.

# %%
#| export
def summarize(records: list[dict], keys=('param_distance', 'gen_error', 'acc_gap')) -> dict:
    "Per optimizer: mean and std over seeds of each of `keys` at the last epoch."
    out = {}
    for opt in dict.fromkeys(r['optimizer'] for r in records):
        rs = [r for r in records if r['optimizer'] == opt]
        last = max(r['epoch'] for r in rs)
        rs = [r for r in rs if r['epoch'] == last]
        out[opt] = dict(epoch=last, seeds=len(rs),
                        **{f'{k}_{stat}': float(f([r[k] for r in rs])) for k in keys
                           for stat, f in (('mean', np.mean), ('std', np.std))})
    return out

def format_summary(summary: dict) -> str:
    "A small Markdown table of `summarize`'s output."
    lines = ['| optimizer | epoch | seeds | distance | gen. error | acc. gap |', '|---|---|---|---|---|---|']
    for opt, s in summary.items():
        lines.append(f"| {opt} | {s['epoch']} | {s['seeds']} | {s['param_distance_mean']:.4f} ± {s['param_distance_std']:.4f}"
                     f" | {s['gen_error_mean']:.4f} ± {s['gen_error_std']:.4f} | {s['acc_gap_mean']:.4f} ± {s['acc_gap_std']:.4f} |")
    return '\n'.join(lines)

# %%
sm = summarize(fake)
test_eq(sm['sgd']['epoch'], 10); test_eq(sm['sgd']['seeds'], 2)
test_close(sm['sgd']['param_distance_mean'], 0.3 * (1 - np.exp(-2)) * 1.05, eps=1e-12)
print(format_summary(sm))
