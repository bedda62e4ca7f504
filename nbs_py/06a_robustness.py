# %%
#| default_exp robustness

# %% [markdown]
# # robustness
#
# > The paper's robustness claims on real networks: a learning-rate sweep to divergence and training on noisy labels

# %% [markdown]
# The paper's central claim is that StableSAM is "more robust with the large learning rates"
# (Sections 1 and 5.1). Figure 4 tests it on a two-dimensional toy; here we test it on networks trained on
# real MNIST: sweep the learning rate geometrically from 0.01 past 2, train SGD, SAM and StableSAM with
# three seeds each, and record for every run whether it **diverged** (its loss became non-finite, or its
# test accuracy never rose above twice chance) and its final test accuracy. Divergence is an outcome that
# is recorded, never a crash of the sweep.
#
# The second experiment asks Table 4's question (does StableSAM beat SAM when a fraction of the training
# labels is random?) at a size a CPU allows, with two selection protocols: the paper's (best test accuracy
# over epochs) and a held-out one (the epoch chosen on a validation split of the noisy training set, test
# accuracy read once).
#
# Both drive `stablesam.train.Trainer` epoch by epoch on in-memory MNIST; a killed sweep resumes from its
# records (a run is recorded when it ends, so at most one run is repeated).

# %%
#| hide
import json
import tempfile
from pathlib import Path
import matplotlib.pyplot as plt
import torch
from fastcore.test import test_close, test_eq, test_fail

# %%
#| hide
plt.rcParams['figure.dpi'] = 72
torch.set_num_threads(1)

# %%
#| export
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

from stablesam.config import TrainConfig
from stablesam.data import DataBundle, LabelledView, get_datasets, in_memory, noisy_labels, validation_split
from stablesam.experiment import RECORDS, add_common, command, executor_options, per_process, run_experiment
from stablesam.models import MODELS
from stablesam.results import PROTOCOLS, run_scores
from stablesam.runs import CONFIG, read_json, read_jsonl, strict_json
from stablesam.style import (figure_legend, log_x_axis, markdown_table, optimizer_style, plot_kwargs, quantity,
                             save_figure)
from stablesam.controls import match_source, match_specs
from stablesam.train import STEP_KEYS, Diverged, Trainer
from stablesam.variants import VARIANTS, variant, variant_order


# %% [markdown]
# ## One run, recorded epoch by epoch
#
# `run_epochs` trains one configuration and returns one record per epoch. A non-finite loss ends the run
# (every later epoch would be NaN too): the Trainer stops the epoch at the first non-finite step
# (`stablesam.train.Diverged`), and the record keeps strict JSON: the non-finite value is written as `null`,
# the field `nonfinite` names it and `stopped` says where training stopped. The run's outcome is written into each of its records:
# `diverged` and `outcome` (`trained`, `nonfinite` or `chance`).

# %%
#| export
def run_outcome(records: list[dict], num_classes: int = 10) -> str:
    """`nonfinite` if a loss became non-finite, `chance` if test accuracy never beat twice chance, else `trained`."""
    if any(r.get('nonfinite') for r in records): return 'nonfinite'
    best = max((r['test_acc'] for r in records if r.get('test_acc') is not None), default=0.0)
    return 'chance' if best <= 2 / num_classes else 'trained'

def run_epochs(cfg: TrainConfig, data: DataBundle, *, val=None, **tags) -> list[dict]:
    """Train `cfg` on `data`: one strict-JSON record per epoch (test and `val` metrics); stops at a non-finite loss."""
    trainer, records = Trainer(cfg, data=data), []
    initial = trainer.evaluate(data.train)['loss']   # criterion (b) of issue 21: did training lower the loss at all?
    while trainer.epoch < cfg.epochs:
        rec = dict(tags, optimizer=cfg.optimizer, seed=cfg.seed, lr=cfg.lr, rho=cfg.rho, epoch=trainer.epoch + 1,
                   init_train_loss=initial)
        try: m = trainer.train_epoch()
        except Diverged as e: m = dict(train_loss=float('nan'), train_acc=None, stopped=e.record()['message'])
        rec.update(m if 'stopped' in m else dict(train_loss=m['train_loss'], train_acc=m['train_acc'],
                                                 **{k: m[k] for k in STEP_KEYS if k in m}))
        if 'sam_fraction' in m: rec['sam_fraction'] = m['sam_fraction']   # the efficient variants' share of SAM steps
        for name, ds in (('test', data.test), ('val', val)):
            if ds is not None:
                e = trainer.evaluate(ds)
                rec[f'{name}_loss'], rec[f'{name}_acc'] = e['loss'], e['acc']
        records.append(strict_json(rec))
        if records[-1].get('nonfinite'): break
    outcome = run_outcome(records, data.num_classes)
    return [dict(r, outcome=outcome, diverged=outcome != 'trained') for r in records]


# %%
test_eq(run_outcome([dict(test_acc=0.11), dict(test_acc=0.15)]), 'chance')
test_eq(run_outcome([dict(test_acc=0.5, nonfinite={'train_loss': 'nan'})]), 'nonfinite')
test_eq(run_outcome([dict(test_acc=0.11), dict(test_acc=0.9)]), 'trained')


# %% [markdown]
# Records are read back through `read_sweep_records`, which takes `nonfinite` in this form only: a dict from each
# entry written as `null` to what it was (`'nan'`, `'inf'`, `'-inf'`, or `'nonfinite'` where a record migrated from
# the first sweep's list of names cannot say which). A file still in the old form is named, with the command that
# migrates it (`tools/migrate_nonfinite.py`, once).

# %%
#| export
def check_nonfinite(records: list[dict], path) -> list[dict]:
    """`records` (read from `path`), after checking that each `nonfinite` field is a dict; a list is the old form."""
    for n, r in enumerate(records, 1):
        if r.get('nonfinite') is not None and not isinstance(r['nonfinite'], dict):
            raise ValueError(f"{path}, record {n}: 'nonfinite' is {r['nonfinite']!r}, the old list form; this version "
                             "reads a dict of entry -> 'nan'/'inf'/'-inf'. Migrate the file once with `python "
                             f"tools/migrate_nonfinite.py {path}`")
    return records

def read_sweep_records(path) -> list[dict]:
    """The records of a sweep's `records.jsonl` (a cut last line dropped), `nonfinite` in the current form."""
    return check_nonfinite(read_jsonl(path, torn_tail=True), path)

def check_sweep_folder(out):
    """Read results folder `out`'s records, if any, through `read_sweep_records` (before a sweep adds to them)."""
    if out is not None and (Path(out) / RECORDS).exists(): read_sweep_records(Path(out) / RECORDS)


# %%
_old = Path(tempfile.mkdtemp()) / 'records.jsonl'
_old.write_text('{"epoch": 1, "train_loss": null, "nonfinite": ["train_loss"]}\n')
test_fail(lambda: read_sweep_records(_old), contains=f"{_old}, record 1: 'nonfinite' is ['train_loss'], the old list")
_old.write_text('{"epoch": 1, "train_loss": null, "nonfinite": {"train_loss": "nan"}}\n')
test_eq(read_sweep_records(_old), [dict(epoch=1, train_loss=None, nonfinite=dict(train_loss='nan'))])

# %% [markdown]
# A quick check on generated MNIST-format files (never a finding: the images are synthetic): a moderate
# learning rate trains, an absurd one diverges, and both come back as records.

# %%
from stablesam.data import write_fake_mnist
from stablesam.runs import read_jsonl

# %%
tmp = Path(tempfile.mkdtemp())
write_fake_mnist(tmp, n_train=256, n_test=128)
_fake = get_datasets('mnist', tmp, augment=False, download=False)
_fake = dataclasses.replace(_fake, train=in_memory(_fake.train), test=in_memory(_fake.test))
def _cfg(lr):
    """A two-epoch StableSAM run of the FCN at learning rate `lr`."""
    return TrainConfig(dataset='mnist', model='fcn', optimizer='stablesam', lr=lr, epochs=2, batch_size=64,
                       momentum=0.9, weight_decay=0.0, label_smoothing=0.0, schedule='constant', augment=False,
                       progress=False, download=False, device='cpu')
_ok, _bad = run_epochs(_cfg(0.05), _fake), run_epochs(_cfg(1e4), _fake)
test_eq([r['epoch'] for r in _ok], [1, 2])
test_eq(_ok[-1]['diverged'], False)
test_eq(_bad[-1]['diverged'], True)
assert _bad[-1]['outcome'] in ('nonfinite', 'chance')


# %% [markdown]
# ## Sweeps that resume
#
# A sweep is a list of run specs, each the tags of one run (model, optimizer, learning rate or noise level,
# seed) with the settings it trains with. The experiment runner (`stablesam.experiment.run_experiment`)
# trains them with `train_sweep_run` and writes `records.jsonl` and `config.json`; a sweep killed at any
# point loses at most the runs in progress, and the same call continues it. A process decodes the MNIST
# subset once (`mnist_data`), however many runs it trains.

# %%
#| export
def mnist_data(data_root, n_train=None) -> DataBundle:
    """`mnist_in_memory(data_root, n_train)`, decoded once per process."""
    return per_process(('mnist', str(Path(data_root).resolve()), n_train), lambda: mnist_in_memory(data_root, n_train))


def train_sweep_run(spec: dict, run) -> list[dict]:
    """One run of the learning-rate or label-noise sweep (`spec`: its tags and settings); its per-epoch records."""
    data, val = mnist_data(spec['data_root'], spec['n_train']), None
    if 'noise' in spec:
        train, val = noisy_split(data, spec['noise'], spec['seed'], spec['n_val'])
        data = dataclasses.replace(data, train=train)
    cfg = sweep_config(spec['model'], spec['optimizer'], spec['lr'], spec['seed'], **spec['train'])
    records = run_epochs(cfg, data, val=val, **{k: spec[k] for k in spec['tags']})
    run.report(records[-1])
    return records


# %% [markdown]
# ## Large learning rates
#
# The sweep trains each model with SGD, SAM and StableSAM (all on SGD with momentum 0.9, constant
# learning rate, no weight decay, no augmentation, $\rho = 0.05$) at eleven learning rates from 0.01 to
# $10^{0.5} \approx 3.16$, three seeds each. The seeds change the initialisation and the order of the
# batches; all runs share one seeded subset of the training images, and the test set is MNIST's full
# 10,000.

# %%
#| export
LR_GRID = tuple(round(10 ** e, 4) for e in np.arange(-2, 0.51, 0.25))  # 0.01 ... 3.1623: eleven, geometric

def mnist_in_memory(data_root, n_train=None, seed=0) -> DataBundle:
    """Real MNIST in memory: a seeded subset of `n_train` training images (all if None) and the full test set."""
    d = get_datasets('mnist', data_root, augment=False, download=False, train_subset=n_train, seed=seed)
    return dataclasses.replace(d, train=in_memory(d.train), test=in_memory(d.test))

def sweep_config(model, optimizer, lr, seed, *, epochs, batch_size=128, momentum=0.9, rho=0.05, schedule='constant',
                 device='auto', **settings) -> TrainConfig:
    """The `TrainConfig` of one sweep run: MNIST, SGD base, no weight decay, label smoothing or augmentation."""
    return TrainConfig(dataset='mnist', model=model, optimizer=optimizer, lr=lr, seed=seed, epochs=epochs,
                       batch_size=batch_size, momentum=momentum, rho=rho, weight_decay=0.0, label_smoothing=0.0,
                       schedule=schedule, augment=False, progress=False, download=False, device=device,
                       **settings).validate()

def lr_sweep(out, data_root, *, n_train=None, models=('fcn', 'lenet'), optimizers=('sgd', 'sam', 'stablesam'),
             lrs=LR_GRID, seeds=(0, 1, 2), epochs=3, train=None, command=None, match_from=None,
             **options) -> list[dict]:
    """The learning-rate sweep: every model, optimizer, learning rate and seed, recorded into `out` (resumable).

    `train`: settings of `sweep_config` (batch_size, momentum, rho, device); `options`: the runner's (executor, ...);
    `match_from`: a sweep's folder with StableSAM runs whose factors the step-matched controls follow, run by run."""
    train = dict(train or {}, epochs=epochs)
    tags = ('model', 'optimizer', 'lr', 'seed')
    specs = [dict(model=m, optimizer=o, lr=lr, seed=s, data_root=str(data_root), n_train=n_train, train=train,
                  tags=tags)
             for m in models for o in optimizers for lr in lrs for s in seeds]
    check_sweep_folder(out)
    data = mnist_data(data_root, n_train)
    fixed = {k: v for k, v in train.items() if k != 'device'}
    settings = dict(dataset='mnist', models=list(models), optimizers=list(optimizers), lrs=list(lrs), seeds=list(seeds),
                    n_train=n_train, train=fixed)
    if any(variant(o).matched for o in optimizers):
        source = None if match_from is None else match_source(match_from, settings, ('dataset', 'n_train', 'train'),
                                                              data_root)
        specs, matched = match_specs(specs, source, ['model', 'lr', 'seed'], into='train')
        settings.update(match_from=None if match_from is None else str(match_from), matched=matched)
    meta = dict(n_train=len(data.train), n_test=len(data.test), seeds=list(seeds))
    return run_experiment(out, specs, train_sweep_run, key=tags, settings=settings, command=command, meta=meta,
                          desc='lr_sweep', **options)


# %% [markdown]
# `lr_sweep_summary` reduces the records to one row per model, optimizer and learning rate: the share
# of diverged seeds and the final test accuracy (a diverged run counts with the accuracy it ended at),
# mean and min-max over seeds.

# %%
#| export
def final_records(records: list[dict], keys) -> dict:
    """The last record of each run, by run key."""
    last = {}
    for r in records: last[tuple(r[k] for k in keys)] = r
    return last

def lr_sweep_summary(records: list[dict]) -> list[dict]:
    """Per (model, optimizer, lr): runs, share diverged, final test accuracy mean / min / max over seeds."""
    groups = {}
    for (m, o, lr, s), r in final_records(records, ('model', 'optimizer', 'lr', 'seed')).items():
        groups.setdefault((m, o, lr), []).append(r)
    rows = []
    order = variant_order(o for _, o, _ in groups)
    for (m, o, lr), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]), kv[0][2])):
        acc = np.array([r['test_acc'] if r.get('test_acc') is not None else np.nan for r in rs], dtype=float)
        rows.append(dict(model=m, optimizer=o, lr=lr, runs=len(rs),
                         diverged=float(np.mean([r['diverged'] for r in rs])),
                         acc_mean=float(np.nanmean(acc)) if np.isfinite(acc).any() else None,
                         acc_min=float(np.nanmin(acc)) if np.isfinite(acc).any() else None,
                         acc_max=float(np.nanmax(acc)) if np.isfinite(acc).any() else None))
    return rows

def plot_lr_sweep(records: list[dict], model_labels=None, figsize=(9, 5.2)):
    """Share of diverged runs (top) and final test accuracy (bottom) against learning rate, one column per model."""
    import matplotlib.pyplot as plt
    rows = lr_sweep_summary(records)
    if not rows: raise ValueError("plot_lr_sweep needs at least one record")
    models = list(dict.fromkeys(r['model'] for r in rows))
    fig, axs = plt.subplots(2, len(models), figsize=figsize, sharex=True, squeeze=False, layout='constrained')
    band = len({r['optimizer'] for r in rows}) <= 4   # more bands than that hide each other and the lines
    for j, m in enumerate(models):
        for o in dict.fromkeys(r['optimizer'] for r in rows if r['model'] == m):
            rs = [r for r in rows if r['model'] == m and r['optimizer'] == o]
            lr, kw = [r['lr'] for r in rs], plot_kwargs(o, marker=True)   # markers: lines on top of others show
            axs[0, j].plot(lr, [100 * r['diverged'] for r in rs], lw=1.2, **kw)
            mean = np.array([np.nan if r['acc_mean'] is None else 100 * r['acc_mean'] for r in rs])
            lo = np.array([np.nan if r['acc_min'] is None else 100 * r['acc_min'] for r in rs])
            hi = np.array([np.nan if r['acc_max'] is None else 100 * r['acc_max'] for r in rs])
            axs[1, j].plot(lr, mean, lw=1.2, **kw)
            if band: axs[1, j].fill_between(lr, lo, hi, alpha=0.15, color=kw['color'], linewidth=0)
        axs[0, j].set(title=(model_labels or {}).get(m, m), ylim=(-4, 104), ylabel=quantity('diverged').label)
        axs[1, j].set(xlabel=quantity('lr').label, ylim=(0, 100), ylabel=f"final {quantity('test_acc').label}")
        log_x_axis(axs[1, j])
        for ax in axs[:, j]: ax.grid(alpha=0.3)
    ns = sorted({r['runs'] for r in rows})   # a matched control leaves out the seeds whose source diverged
    seeds = f'{ns[0]} seeds each' if len(ns) == 1 else f'{ns[0]}-{ns[-1]} seeds a point'
    figure_legend(fig, f'{seeds}; line: mean' + (', band: min-max over seeds' if band else ' over seeds'))
    return fig


# %% [markdown]
# The verdict per model: the largest learning rate at which each optimizer trained every seed, and the
# learning rates at which StableSAM diverged in fewer seeds than SAM (and the other way round).

# %%
#| export
def lr_sweep_verdict(records: list[dict]) -> list[dict]:
    """Per model and optimizer: largest lr with no seed diverged, smallest with all diverged, test acc at the former."""
    rows, out = lr_sweep_summary(records), []
    for m in dict.fromkeys(r['model'] for r in rows):
        for o in dict.fromkeys(r['optimizer'] for r in rows if r['model'] == m):
            rs = [r for r in rows if r['model'] == m and r['optimizer'] == o]
            stable = [r for r in rs if r['diverged'] == 0]
            all_div = [r['lr'] for r in rs if r['diverged'] == 1]
            best = max(stable, key=lambda r: r['lr']) if stable else None
            out.append(dict(model=m, optimizer=o, largest_stable_lr=best['lr'] if best else None,
                            acc_at_largest_stable=best['acc_mean'] if best else None,
                            smallest_all_diverged_lr=min(all_div) if all_div else None,
                            best_acc=max((r['acc_mean'] or 0) for r in rs)))
    return out

def compare_divergence(records: list[dict], a='stablesam', b='sam') -> dict:
    """Per model: the learning rates where `a` diverged in fewer seeds than `b`, and those where it diverged in more."""
    rows = {(r['model'], r['optimizer'], r['lr']): r['diverged'] for r in lr_sweep_summary(records)}
    out = {}
    for m in dict.fromkeys(k[0] for k in rows):
        lrs = sorted({k[2] for k in rows if k[0] == m and (m, a, k[2]) in rows and (m, b, k[2]) in rows})
        out[m] = dict(fewer=[lr for lr in lrs if rows[m, a, lr] < rows[m, b, lr]],
                      more=[lr for lr in lrs if rows[m, a, lr] > rows[m, b, lr]])
    return out


def critical_lr(fails: dict) -> float | None:
    """The largest learning rate (key of `fails`: lr -> failed flags, one per seed) at which at most half fail."""
    ok = [lr for lr, f in fails.items() if np.sum(f) <= len(f) / 2]
    return max(ok) if ok else None



# %% [markdown]
# An optimizer's **critical learning rate** is the largest at which at most half its seeds fail; `critical_lr` takes
# the failed flags per learning rate, whatever decided them (divergence here; issue 21's two criteria in
# `stablesam.controls_evidence`).

# %%
test_eq(critical_lr({0.1: [False] * 4, 0.2: [True, True, False, False], 0.4: [True, True, True, False]}), 0.2)
test_eq(critical_lr({0.1: [True, True, False]}), None)   # two of three fail at the smallest lr: none

# %% [markdown]
# The quick configuration of the same code (generated data, so it only shows that the sweep, its
# resume and its figure work): two learning rates, one of them absurd, one seed.

# %%
_out = tmp / 'lr_sweep'
_quick = dict(models=('fcn',), lrs=(0.05, 1e4), seeds=(0,), epochs=2, train=dict(batch_size=64, device='cpu'))
_recs = lr_sweep(_out, tmp, **_quick, progress=False)
test_eq(len(final_records(_recs, ('model', 'optimizer', 'lr', 'seed'))), 6)
test_eq({r['lr']: r['diverged'] for r in _recs if r['optimizer'] == 'sgd'}, {0.05: False, 1e4: True})
test_fail(lambda: lr_sweep(_out, tmp, **dict(_quick, epochs=3), progress=False), contains='epochs: 2 there, 3 now')
_again = lr_sweep(_out, tmp, **_quick, progress=False)
test_eq(_again, _recs)   # nothing left to run: the records are read back unchanged
test_eq(len(json.loads((_out / 'config.json').read_text())['done']), 6)
fig = plot_lr_sweep(_recs)
plt.close(fig)

# %% [markdown]
# Every record also carries the training loss at initialisation (`init_train_loss`, for the second failure
# criterion of issue 21) and its epoch's step statistics; a step-matched control (`sam-lrf`, ...) follows the
# factor of the StableSAM run with its model, learning rate and seed in the sweep `match_from` names. Where that
# run recorded no factor (the absurd learning rate: it diverged in its first epoch) the control is left out and
# says so in the settings.

# %%
assert all(r['init_train_loss'] > 0 for r in _recs)
_fine = [r for r in _recs if r['optimizer'] == 'stablesam' and r['lr'] == 0.05]
test_eq(all(r['factor_p10'] <= r['factor_p50'] <= r['factor_p90'] for r in _fine), True)
_ctl = lr_sweep(tmp / 'lr_ctl', tmp, **dict(_quick, optimizers=('sam-lrf',)), match_from=_out, progress=False)
test_close([r['lr'] for r in _ctl], [0.05, 0.05])   # the record names the sweep's lr; the run took lr x f
_settings = json.loads((tmp / 'lr_ctl' / 'config.json').read_text())['settings']
_f = f"{np.mean([r['factor_mean'] for r in _fine]):.6g}"
test_eq(_settings['matched'], {'optimizer=sam-lrf,model=fcn,lr=0.05,seed=0': _f,
                               'optimizer=sam-lrf,model=fcn,lr=10000.0,seed=0': None})

# %% [markdown]
# ## Noisy labels
#
# A fraction (20, 40, 60 or 80%) of the training labels is replaced by a different random class
# (`stablesam.data.noisy_labels`, exact fractions); the test labels stay clean. A validation split is
# held out from the *noisy* training set, as it would be in practice, and each run records validation
# and test accuracy every epoch. Two protocols read a table from the same runs:
#
# - **paper**: the best test accuracy over epochs (Table 4's protocol; it selects on the test set);
# - **held-out**: the epoch with the best validation accuracy, and the test accuracy at that epoch, read once.
#
# $\rho$ is fixed at 0.05 for SAM and StableSAM (as the CPU-size question asks), so only the epoch
# is selected.

# %%
#| export
NOISE_LEVELS = (0.2, 0.4, 0.6, 0.8)

def noisy_split(data: DataBundle, noise: float, seed: int, n_val: int) -> tuple:
    """(train, val) views of `data.train`, a `noise` fraction of its labels randomised (seeded), `n_val` held out."""
    view = data.train
    noisy = LabelledView(view.base, view.indices, noisy_labels(view.targets, noise, data.num_classes, seed))
    return validation_split(noisy, n_val, seed)

def label_noise_sweep(out, data_root, *, n_train=None, noises=NOISE_LEVELS, optimizers=('sgd', 'sam', 'stablesam'),
                      seeds=(0, 1, 2), n_val=2000, model='fcn', epochs=20, lr=0.05, schedule='cosine', train=None,
                      command=None, **options) -> list[dict]:
    """Every optimizer at every noise level and seed, with a held-out validation split, into `out` (resumable)."""
    train = dict(train or {}, epochs=epochs, schedule=schedule)
    tags = ('model', 'noise', 'optimizer', 'seed')
    specs = [dict(model=model, noise=noise, optimizer=o, seed=seed, lr=lr, n_val=n_val, data_root=str(data_root),
                  n_train=n_train, train=train, tags=tags)
             for noise in noises for seed in seeds for o in optimizers]
    check_sweep_folder(out)
    data = mnist_data(data_root, n_train)
    fixed = {k: v for k, v in train.items() if k != 'device'}
    settings = dict(dataset='mnist', model=model, noises=list(noises), optimizers=list(optimizers), seeds=list(seeds),
                    lr=lr, n_val=n_val, n_train=n_train, train=fixed)
    meta = dict(n_train=len(data.train) - n_val, n_val=n_val, n_test=len(data.test), seeds=list(seeds))
    return run_experiment(out, specs, train_sweep_run, key=('noise', 'optimizer', 'seed'), settings=settings,
                          command=command, meta=meta, desc='label_noise', **options)


# %% [markdown]
# `label_noise_table` applies both protocols to every run and reduces over seeds; `label_noise_verdict`
# says at each noise level whether StableSAM's mean beats SAM's by more than the seed spread (the larger
# of the two standard deviations).

# %%
#| export
def selected_accuracy(run: list[dict], protocol: str) -> float:
    """One run's test accuracy under `protocol` ('paper' or 'held-out', as `stablesam.results.run_scores` reads it)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol: {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    acc = run_scores(run)['best_test_acc' if protocol == 'paper' else 'held_out_test_acc']
    return acc if acc is not None and math.isfinite(acc) else 0.0

def label_noise_table(records: list[dict]) -> list[dict]:
    """Per (noise, optimizer, protocol): seeds and mean / std / min / max of the selected test accuracy."""
    runs = {}
    for r in records: runs.setdefault((r['noise'], r['optimizer'], r['seed']), []).append(r)
    rows = []
    for protocol in PROTOCOLS:
        cells = {}
        for (noise, o, seed), run in runs.items():
            cells.setdefault((noise, o), {})[seed] = selected_accuracy(run, protocol)
        order = variant_order(o for _, o in cells)
        for (noise, o), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
            a = np.array(list(by_seed.values()))
            rows.append(dict(protocol=protocol, noise=noise, optimizer=o, seeds=len(a), mean=float(a.mean()),
                             std=float(a.std(ddof=1)) if len(a) > 1 else None, min=float(a.min()), max=float(a.max()),
                             by_seed={int(k): float(v) for k, v in by_seed.items()}))
    return rows

def label_noise_verdict(rows: list[dict], a='stablesam', b='sam') -> list[dict]:
    """Per protocol and noise: mean `a` - `b`, seed spread, seeds where `a` > `b`, and whether it beats the spread."""
    cell = {(r['protocol'], r['noise'], r['optimizer']): r for r in rows}
    out = []
    for (protocol, noise, o) in cell:
        if o != a or (protocol, noise, b) not in cell: continue
        ra, rb = cell[protocol, noise, a], cell[protocol, noise, b]
        spread = max(ra['std'] or 0.0, rb['std'] or 0.0)
        paired = sorted(set(ra['by_seed']) & set(rb['by_seed']))
        diff = ra['mean'] - rb['mean']
        out.append(dict(protocol=protocol, noise=noise, diff=diff, spread=spread, seeds=len(paired),
                        seeds_a_better=sum(ra['by_seed'][s] > rb['by_seed'][s] for s in paired),
                        beats=diff > spread and len(paired) > 1))
    return out

def plot_label_noise(records: list[dict], figsize=(9, 3.4)):
    """Selected test accuracy against label noise, one panel per protocol, one line per optimizer (min-max shaded).

    With one noise level the optimizers are the x-axis: one mark each, its bar the min-max over seeds."""
    import matplotlib.pyplot as plt
    rows = label_noise_table(records)
    optimizers = list(dict.fromkeys(r['optimizer'] for r in rows))
    levels = sorted({r['noise'] for r in rows})
    fig, axs = plt.subplots(1, len(PROTOCOLS), figsize=figsize, sharey=True, layout='constrained')
    if len(levels) == 1: fig.set_figheight(figsize[1] + 1.4)   # room for the optimizers' names under the panels
    for ax, protocol in zip(axs, PROTOCOLS):
        for i, o in enumerate(optimizers):
            rs = [r for r in rows if r['optimizer'] == o and r['protocol'] == protocol]
            kw = plot_kwargs(o, marker=True)   # the registry's markers: SAM's square shows under StableSAM's triangle
            mean, lo, hi = (np.array([100 * r[k] for r in rs]) for k in ('mean', 'min', 'max'))
            if len(levels) == 1:
                ax.errorbar([i], mean, yerr=[mean - lo, hi - mean], capsize=3, **kw)
                continue
            x = [100 * r['noise'] for r in rs]
            ax.plot(x, mean, lw=1.2, **kw)
            ax.fill_between(x, lo, hi, alpha=0.15, color=kw['color'], linewidth=0)
        if len(levels) == 1:
            ax.set_xticks(range(len(optimizers)), [optimizer_style(o).label for o in optimizers], rotation=90,
                          fontsize=8)
            ax.set_xlim(-0.7, len(optimizers) - 0.3)
        else: ax.set_xlabel('training labels randomised (%)')
        ax.set_title(f"{protocol} protocol: " + ('best test accuracy over epochs' if protocol == 'paper'
                                                  else 'test accuracy at the best validation epoch'), fontsize=9)
        ax.grid(alpha=0.3)
    axs[0].set_ylabel(quantity('test_acc').label)
    spread = 'bar' if len(levels) == 1 else 'band'
    if len(levels) == 1: fig.suptitle(f'{100 * levels[0]:g}% of the training labels randomised', fontsize=10)
    figure_legend(fig, f"{rows[0]['seeds']} seeds; mark: mean, {spread}: min-max over seeds")
    return fig


# %% [markdown]
# The quick configuration (generated data; it exercises the code, it is not a finding):

# %%
_recs = label_noise_sweep(tmp / 'noise', tmp, noises=(0.4,), seeds=(0, 1), n_val=64, epochs=2,
                          train=dict(batch_size=64, device='cpu'), progress=False)
test_eq(len(final_records(_recs, ('noise', 'optimizer', 'seed'))), 6)
assert all(r['val_acc'] is not None for r in _recs)
_rows = label_noise_table(_recs)
test_eq(len(_rows), 2 * 3)
_v = label_noise_verdict(_rows)
test_eq([(v['protocol'], v['noise'], v['seeds']) for v in _v], [('paper', 0.4, 2), ('held-out', 0.4, 2)])
_run = [dict(epoch=1, test_acc=0.5, val_acc=0.6), dict(epoch=2, test_acc=0.7, val_acc=0.4)]
test_eq((selected_accuracy(_run, 'paper'), selected_accuracy(_run, 'held-out')), (0.7, 0.5))
fig = plot_label_noise(_recs)
plt.close(fig)


# %% [markdown]
# ## Command line
#
# `stablesam-robustness lr-sweep` and `stablesam-robustness label-noise` run the two experiments on real
# MNIST (from `--data-root`) into `--out` and print their tables; `--resume` continues a killed sweep.
#
# ```sh
# stablesam-robustness lr-sweep --data-root ../shared/data --n-train 5000 --epochs 3 --out results/lr_sweep/mnist-5k-3ep
# stablesam-robustness label-noise --data-root ../shared/data --n-train 12000 --n-val 2000 --epochs 15 --out results/label_noise/fcn-mnist-10k
# ```

# %%
#| export
def robustness_parser():
    """The `stablesam-robustness` argument parser."""
    import argparse
    p = argparse.ArgumentParser(prog='stablesam-robustness', description=(
        "The paper's robustness claims on real MNIST: a learning-rate sweep to divergence for SGD/SAM/StableSAM, "
        "and training on noisy labels with the paper's and a held-out selection protocol."))
    sub = p.add_subparsers(dest='experiment', required=True)
    for name, text in (('lr-sweep', 'share of diverged runs and final test accuracy against the learning rate'),
                       ('label-noise', 'test accuracy with a fraction of the training labels randomised')):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument('--n-train', type=int, default=5000 if name == 'lr-sweep' else 12000,
                       help='training images (a seeded subset; label-noise holds --n-val of them out)')
        q.add_argument('--epochs', type=int, default=3 if name == 'lr-sweep' else 15, help='epochs per run')
        q.add_argument('--optimizers', nargs='+', choices=VARIANTS.keys(), default=['sgd', 'sam', 'stablesam'],
                       metavar='NAME', help=f"optimizers (any of {', '.join(VARIANTS)}; default: sgd sam stablesam)")
        q.add_argument('--rho', type=float, default=0.05, help='perturbation radius (default: 0.05)')
        q.add_argument('--batch-size', type=int, default=128, help='batch size (default: 128)')
        if name == 'lr-sweep':
            q.add_argument('--models', nargs='+', choices=MODELS, default=['fcn', 'lenet'], metavar='MODEL',
                           help='models (default: fcn lenet)')
            q.add_argument('--lrs', type=float, nargs='+', default=list(LR_GRID),
                           help='learning rates (default: 0.01 ... 3.16)')
            q.add_argument('--match-from', default=None, metavar='FOLDER',
                           help='the step-matched controls (sam-lrf, sgd-lrf, sam-lrf-epoch) follow the factor of the '
                                'stablesam runs of this sweep folder, run by run (same model, lr and seed)')
        else:
            q.add_argument('--model', default='fcn', choices=MODELS, metavar='MODEL', help='model (default: fcn)')
            q.add_argument('--noises', type=float, nargs='+', default=list(NOISE_LEVELS), help='noise fractions')
            q.add_argument('--n-val', type=int, default=2000, help='validation images held out of the training images')
            q.add_argument('--lr', type=float, default=0.05, help='learning rate (cosine schedule; default: 0.05)')
        add_common(q)
    return p


def summary_tables(experiment: str, records: list) -> str:
    """The Markdown tables of a `stablesam-robustness` experiment ('lr-sweep' or 'label-noise') from its records."""
    if experiment == 'lr-sweep': return markdown_table(lr_sweep_verdict(records), LR_COLUMNS)
    rows = label_noise_table(records)
    return markdown_table(rows, NOISE_COLUMNS) + '\n\n' + markdown_table(label_noise_verdict(rows), VERDICT_COLUMNS)


def summary_files(folder) -> dict:
    """`{'summary.md': text}` of a `stablesam-robustness` results folder, from its records and recorded command."""
    folder = Path(folder)
    cmd = read_json(folder / CONFIG)['command']
    experiment = robustness_parser().parse_args(cmd[1:]).experiment
    return {'summary.md': f"# {experiment}: {' '.join(cmd)}\n\n"
                          f"{summary_tables(experiment, read_sweep_records(folder / RECORDS))}\n"}


@command('stablesam-robustness')
def main(argv=None):
    """The `stablesam-robustness` command."""
    import matplotlib
    if 'matplotlib.pyplot' not in sys.modules: matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    argv = sys.argv[1:] if argv is None else list(argv)
    args = robustness_parser().parse_args(argv)
    cmd = ['stablesam-robustness', *argv]
    common = dict(optimizers=args.optimizers, seeds=args.seeds, epochs=args.epochs, n_train=args.n_train, command=cmd,
                  train=dict(rho=args.rho, batch_size=args.batch_size, device=args.device), **executor_options(args))
    if args.experiment == 'lr-sweep':
        records = lr_sweep(args.out, args.data_root, models=args.models, lrs=args.lrs, match_from=args.match_from,
                           **common)
        fig = plot_lr_sweep(records, MODEL_TITLES)
    else:
        records = label_noise_sweep(args.out, args.data_root, noises=args.noises, n_val=args.n_val, model=args.model,
                                    lr=args.lr, **common)
        fig = plot_label_noise(records)
    out = Path(args.out)
    save_figure(fig, out / 'figure.png', pdf=True)
    plt.close(fig)
    for name, text in summary_files(out).items(): (out / name).write_text(text)
    print(summary_tables(args.experiment, records))
    print(f"wrote {out / 'records.jsonl'}, {out / 'config.json'}, {out / 'summary.md'}, {out / 'figure.png'} "
          "(and .pdf)")


MODEL_TITLES = {'fcn': 'FCN 784-500-500-10 on MNIST', 'lenet': 'LeNet on MNIST'}
LR_COLUMNS = dict(model=('model', None), optimizer=('optimizer', None),
                  largest_stable_lr=('largest lr, no seed diverged', '{:g}'),
                  acc_at_largest_stable=('test acc there', '{:.4f}'),
                  smallest_all_diverged_lr=('smallest lr, all seeds diverged', '{:g}'),
                  best_acc=('best mean test acc', '{:.4f}'))
NOISE_COLUMNS = dict(protocol=('protocol', None), noise=('noise', '{:.0%}'), optimizer=('optimizer', None),
                     seeds=('seeds', None), mean=('test acc mean', '{:.4f}'), std=('std', '{:.4f}'),
                     min=('min', '{:.4f}'), max=('max', '{:.4f}'))
VERDICT_COLUMNS = dict(protocol=('protocol', None), noise=('noise', '{:.0%}'), diff=('StableSAM - SAM', '{:+.4f}'),
                       spread=('seed spread (max std)', '{:.4f}'), seeds_a_better=('seeds StableSAM > SAM', None),
                       seeds=('paired seeds', None), beats=('beats SAM by more than the spread', None))

# %% [markdown]
# ## On real MNIST
#
# The `slow` cell ran both experiments on this 2-core CPU (resumable: rerun it after a kill and it
# continues); the cells after it read the committed records in `../results/` and draw the figures and
# tables from them, so this page shows the real runs without rerunning them.
#
# - **Learning-rate sweep**: FCN 784-500-500-10 and LeNet, a seeded subset of 10,000 MNIST training images,
#   3 epochs, batch 128, SGD with momentum 0.9 as the base, constant learning rate, $\rho = 0.05$, eleven
#   learning rates from 0.01 to 3.16, seeds 0-2, tested on the full 10,000 test images.
# - **Label noise**: FCN, a seeded subset of 12,000 training images of which 2,000 are held out (noisy) for
#   validation, 15 epochs, batch 128, momentum 0.9, lr 0.05 with a cosine schedule, $\rho = 0.05$, seeds 0-2.

# %%
from stablesam.results_check import rerun   # runs the command a results folder records

# %%
#| slow
# the commands the folders' config.json record, from the repository root
for folder in ('../results/lr_sweep/mnist-10k-3ep', '../results/label_noise/fcn-mnist-10k-15ep'): print(rerun(folder))

# %%
LR_RESULTS, NOISE_RESULTS = Path('../results/lr_sweep/mnist-10k-3ep'), Path('../results/label_noise/fcn-mnist-10k-15ep')
lr_records = read_sweep_records(LR_RESULTS / RECORDS) if (LR_RESULTS / RECORDS).exists() else []
noise_records = read_sweep_records(NOISE_RESULTS / RECORDS) if (NOISE_RESULTS / RECORDS).exists() else []
if lr_records:
    fig = plot_lr_sweep(lr_records, MODEL_TITLES)
    fig.suptitle('Large learning rates on real MNIST (10,000 images, 3 epochs)', fontsize=10)
    plt.show()
    plt.close(fig)
    print(markdown_table(lr_sweep_verdict(lr_records), LR_COLUMNS))
    print(compare_divergence(lr_records))

# %%
if noise_records:
    fig = plot_label_noise(noise_records)
    fig.suptitle('Noisy labels on real MNIST (FCN, 10,000 + 2,000 images, 15 epochs)', fontsize=10)
    plt.show()
    plt.close(fig)
    rows = label_noise_table(noise_records)
    print(markdown_table(rows, NOISE_COLUMNS))
    print()
    print(markdown_table(label_noise_verdict(rows), VERDICT_COLUMNS))

# %% [markdown]
# ### Verdicts
#
# **Large learning rates** (198 runs, 74.8 minutes of wall time on the shared 2-core CPU, `config.json`).
# StableSAM trains at a larger learning rate than SAM and SGD before any seed diverges, by one step of
# the grid (a factor of 1.78), on both networks:
#
# | model | largest lr with no diverged seed: SGD | SAM | StableSAM | lr where all seeds diverge (all three) |
# |---|---|---|---|---|
# | FCN | 0.178 | 0.178 | **0.316** (test acc 67.4% [min-max over seeds in the figure]) | 0.562 |
# | LeNet | 0.1 | 0.1 | **0.178** (test acc 90.8%) | 0.316 (SGD), 0.562 (SAM, StableSAM) |
#
# At lr 0.316 the FCN diverged in 1 of 3 seeds with SGD, 2 of 3 with SAM and 0 of 3 with StableSAM; LeNet
# at 0.178: SGD 1, SAM 2, StableSAM 0 of 3, and at 0.316: SGD 3, SAM 2, StableSAM 1. StableSAM never
# diverged in more seeds than SAM at any learning rate. Beyond 0.56 every optimizer diverges: the range is
# extended, not removed. Below lr 0.1 all three train and reach similar accuracy (best mean test accuracy
# FCN 95.1 / 95.5 / 95.4%, LeNet 96.7 / 97.0 / 97.2% for SGD / SAM / StableSAM). So the paper's claim holds
# on these networks in the form "a somewhat wider stable range", measured over three seeds: three seeds
# are few for a divergence share, and the renormalization factor is mostly below 1 (its steps are
# shorter), so part of the gain is what a smaller learning rate would also give.
#
# **Noisy labels** (36 runs, 67 minutes). SAM and StableSAM beat SGD at every noise level (paper protocol,
# 80% noise: 74.5% and 74.4% against 68.9%). StableSAM does **not** beat SAM by more than the seed spread at
# any noise level under either protocol: the differences are -0.01, +0.05, -0.02, -0.03 points (paper) and
# -0.03, +0.04, +0.37, +1.83 points (held-out), against seed spreads (larger std) of 0.4-2.3 and 0.5-7.7
# points. The two protocols agree within 0.25 points up to 40% noise (and for SAM and StableSAM at 60%);
# SGD at 60% and every optimizer at 80% read 1.1-3.1 points lower held-out (the epoch chosen on noisy
# validation labels is not the test set's best), with a much wider spread at 80%.
