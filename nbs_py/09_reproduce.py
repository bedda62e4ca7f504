# %%
#| default_exp reproduce

# %% [markdown]
# # Reproduce: the main job
#
# > `stablesam-reproduce`: theory audit, toy Figure 4, SGD/SAM/StableSAM on noisy-label digits; offline, one report

# %% [markdown]
# A newcomer's first question is "what does this do?", and the answer should not wait for a dataset
# download or a GPU. `stablesam-reproduce --quick --out DIR` runs three of the package's experiments on
# embedded defaults and writes what they produce into `DIR`:
#
# 1. the numerical audit of Section 4 ([theory](01c_theory_audit.ipynb)) at CI size: `audit.md`;
# 2. the toy experiment of Section 5.1 ([toy](02_toy.ipynb)), Figure 4 at reduced size: `figure4.png`;
# 3. SGD, SAM and StableSAM trained by the [training engine](05_train.ipynb) on real data that needs no
#    download: scikit-learn's 1,797 handwritten 8x8 digits ([data](03_data.ipynb), dataset `digits`)
#    with 40% of the training labels randomised, five seeds: `digits-quick/` with the per-epoch records,
#    the settings, the table of mean and spread over the seeds and the figure;
#
# and `report.md`, one page that links them. Without `--quick` it runs the full-size experiments: the
# full Figure 4, the full audit, the same comparison on MNIST from `--data-root` (downloaded there on
# first use, on a machine with network) and, where MNIST is present in `--data-root`, the CPU-size
# stability run of Figure 5 ([stability](06_stability.ipynb)); it says how long that will take before it
# starts.
#
# Every stage calls the same exported functions the notebooks use; nothing here is a second
# implementation, and no stage runs another command's argument list. Generated images
# (`stablesam.data.write_fake_mnist`) serve the tests only: no result of this job comes from them.

# %%
#| export
import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from stablesam.experiment import add_common, command
from stablesam.style import markdown_table, save_figure

# %%
#| hide
import json
import tempfile
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail
from IPython.display import Image, Markdown, display
from stablesam.runs import read_jsonl

# %%
#| hide
plt.rcParams['figure.dpi'] = 72

# %% [markdown]
# ## Sizes
#
# Each stage has a quick and a full size. The quick sizes keep the whole job to about a minute on two CPU
# cores; the full ones are the paper's (Figure 4: 100 learning rates, 10,000 starts, 1000 steps) or the
# audit's full size (200 instances per statement). `est_s` is the wall time each stage took on two
# CPU cores when we measured it (the toy's includes numba compiling its kernel on a first run; the stability
# run's is the stability notebook's estimate for the CPU size; the full comparison's is projected from
# one measured MNIST epoch on a loaded machine: 11 s for SGD, 20 s for SAM), used for the estimate printed
# before a run.

# %%
#| export
SIZES = {
    'quick': dict(audit=dict(n_instances=16, est_s=5),
                  toy=dict(n_lrs=24, n_starts=1000, steps=1000, est_s=20),
                  compare=dict(setting='digits-quick', dataset='digits', epochs=20, n_seeds=5, label_noise=0.4,
                               device='cpu', est_s=30)),
    'full': dict(audit=dict(n_instances=200, est_s=25),
                 toy=dict(n_lrs=100, n_starts=10_000, steps=1000, est_s=25),
                 compare=dict(setting='mnist-full', dataset='mnist', epochs=15, n_seeds=3, label_noise=0.4,
                              device='auto', est_s=2300),
                 stability=dict(n_seeds=3, est_s=2500)),
}
COMPARED = ('sgd', 'sam', 'stablesam')

def command_line(out, quick=True, data_root='data', seed=0, stages=None):
    """The `stablesam-reproduce` command line of a job (recorded in each result folder's config.json)."""
    return (['stablesam-reproduce'] + (['--quick'] if quick else ['--data-root', str(data_root)])
            + ['--seed', str(seed), '--out', str(out)] + (['--stages', *stages] if stages else []))


# %% [markdown]
# ## Theory and toy

# %%
#| export
def run_audit(out, n_instances=16, seed=0, **_):
    """Run the Section 4 audit (`verify_all`) and write `audit.md`; returns the rows."""
    from stablesam.theory_audit import audit_table, verify_all
    from stablesam.theory_checks import status_counts
    rows = verify_all(n_instances=n_instances, seed=seed, progress=True)
    text = (f"# Section 4 audit ({n_instances} instances per statement, seed {seed})\n\n"
            f"{len(rows)} rows: {status_counts(rows)}.\n\n" + audit_table(rows) + '\n')
    (Path(out) / 'audit.md').write_text(text)
    return rows


# %%
#| export
def run_toy(out, n_lrs=24, n_starts=1000, steps=1000, seed=0, **_):
    """Compute Figure 4 (toy saddle problem) at the given size and write `figure4.png`; returns the rates."""
    import matplotlib.pyplot as plt
    from stablesam.toy import figure4, paper_lrs
    fig, rates = figure4(lrs=paper_lrs(n_lrs), n_starts=n_starts, steps=steps, seed=seed)
    save_figure(fig, Path(out) / 'figure4.png')
    plt.close(fig)
    return rates


# %% [markdown]
# ## SGD, SAM and StableSAM on real digits with label noise
#
# The comparison trains the fully connected network of Section 5.2 (two hidden layers of 500 units; 64
# inputs for the 8x8 digits, 784 for MNIST) with Table 4's question: a fraction of the training labels
# randomised (exactly 40%, each moved to another class; the test labels are clean), where
# sharpness-aware training is expected to help. The recipe is Table 2's scaled down: SGD with momentum
# 0.9, cosine schedule, label smoothing 0.1, weight decay 5e-4, batch 128, learning rate 0.05,
# $\rho = 0.05$, no augmentation. The seed fixes the initialisation, the batch order and which labels
# are randomised, so the three optimizers of one seed see the same noisy training set: the comparison is
# paired by seed.

# %%
#| export
def compare_config(optimizer, seed=0, dataset='digits', data_root='data', epochs=20, label_noise=0.4, device='cpu'):
    """TrainConfig of one comparison run: FCN, Table 2's recipe scaled down, `label_noise` of the labels randomised."""
    from stablesam.config import TrainConfig
    return TrainConfig(dataset=dataset, data_root=str(data_root), model='fcn', optimizer=optimizer, rho=0.05, lr=0.05,
                       momentum=0.9, epochs=epochs, batch_size=128, weight_decay=5e-4, label_noise=label_noise,
                       label_smoothing=0.1, schedule='cosine', seed=seed, augment=False, device=device, workers=0,
                       progress=False).validate()


# %% [markdown]
# The verdict table gives, per optimizer, the final and the best test accuracy (the best over epochs is
# the paper's protocol, chosen on the test set) and the final training accuracy on the noisy labels (how
# much of the noise the network memorised: 60% is all the clean labels and none of the noise), each as
# mean ± standard deviation [min, max] over the seeds; one seed shows its value alone, with no spread. Below
# it, the differences paired by seed: StableSAM - SAM and SAM - SGD in final test accuracy, and in how
# many seeds the first is higher.

# %%
#| export
DATA_LABELS = dict(digits='scikit-learn digits (8x8)', mnist='MNIST')

def _runs(records):
    """Per (optimizer, seed): that run's records in epoch order."""
    runs = {}
    for r in records: runs.setdefault((r['optimizer'], r['seed']), []).append(r)
    return {k: sorted(v, key=lambda r: r['epoch']) for k, v in runs.items()}

def spread(values, scale=100.0, signed=False):
    """`values` times `scale` as 'mean ± std [min, max]' (sample std); one value alone, without a spread."""
    v = [scale * x for x in values]
    f = (lambda x: f"{x:+.1f}") if signed else (lambda x: f"{x:.1f}")
    if len(v) == 1: return f(v[0])
    return f"{f(statistics.mean(v))} ± {statistics.stdev(v):.1f} [{f(min(v))}, {f(max(v))}]"

def comparison_table(records):
    """Markdown verdict: per optimizer final/best test and final training accuracy over seeds; paired differences."""
    runs = _runs(records)
    seeds = sorted({s for _, s in runs})
    opts = [o for o in COMPARED if any(k[0] == o for k in runs)]
    first = records[0]
    over = (f"mean ± std [min, max] over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
            else f"one seed ({seeds[0]}), so no spread")
    def plural(n, word):
        """`n` and `word`, plural unless `n` is 1."""
        return f"{n} {word}{'s' if n != 1 else ''}"
    lines = [f"FCN on {DATA_LABELS.get(first['dataset'], first['dataset'])}, {100 * first['label_noise']:g}% of the "
             f"training labels randomised, {plural(first['epochs'], 'epoch')}; accuracies in %, {over}.", '']
    rows = []
    for o in opts:
        rs = [runs[o, s] for s in seeds if (o, s) in runs]
        rows.append(dict(optimizer=optimizer_label(o), final=spread([r[-1]['test_acc'] for r in rs]),
                         best=spread([max(e['test_acc'] for e in r) for r in rs]),
                         train=spread([r[-1]['train_acc'] for r in rs])))
    lines.append(markdown_table(rows, dict(optimizer=('optimizer', None), final=('final test accuracy', None),
                                           best=("best test accuracy (paper's protocol)", None),
                                           train=('final training accuracy (noisy labels)', None))))
    pairs = [(a, b) for a, b in (('stablesam', 'sam'), ('sam', 'sgd')) if a in opts and b in opts]
    if pairs: lines.append('')
    for a, b in pairs:
        paired = [s for s in seeds if (a, s) in runs and (b, s) in runs]
        d = [runs[a, s][-1]['test_acc'] - runs[b, s][-1]['test_acc'] for s in paired]
        lines.append(f"- {optimizer_label(a)} - {optimizer_label(b)}, final test accuracy paired by seed: "
                     f"{spread(d, signed=True)} points; {optimizer_label(a)} higher in {sum(x > 0 for x in d)} "
                     f"of {plural(len(d), 'seed')}.")
    return '\n'.join(lines)

def optimizer_label(name):
    """The optimizer's display name from `stablesam.style`."""
    from stablesam.style import optimizer_style
    return optimizer_style(name).label


def summary_files(folder) -> dict:
    """What a `stablesam-reproduce` folder's records give: a stage's `summary.md`, or the job's `report.md`."""
    from stablesam.experiment import RECORDS
    from stablesam.runs import CONFIG, read_json, read_jsonl
    folder = Path(folder)
    if not (folder / RECORDS).exists(): return {'report.md': report_text(folder)}
    records = read_jsonl(folder / RECORDS)
    if read_json(folder / CONFIG).get('experiment') == 'stability':
        from stablesam import stability as st
        return {'summary.md': st.format_summary(st.stability_summary(records)) + '\n'}
    return {'summary.md': comparison_table(records) + '\n'}


# %%
test_eq(spread([0.9]), '90.0')
test_eq(spread([0.9, 0.92, 0.94]), '92.0 ± 2.0 [90.0, 94.0]')
test_eq(spread([-0.01, 0.03], signed=True), '+1.0 ± 2.8 [-1.0, +3.0]')
fake = [dict(dataset='digits', model='fcn', optimizer=o, seed=s, label_noise=0.4, rho=0.05, lr=0.05, epochs=2, epoch=e,
             test_acc=a + 0.01 * s + 0.1 * e, train_acc=0.5 + 0.01 * e)
        for s in (0, 1) for o, a in (('sgd', 0.7), ('sam', 0.71), ('stablesam', 0.72)) for e in (1, 2)]
print(comparison_table(fake))

# %%
#| hide
table = comparison_table(fake)
test_eq(table.count('| SGD |') + table.count('| SAM |') + table.count('| StableSAM |'), 3)
assert '| StableSAM | 92.5 ± 0.7 [92.0, 93.0] |' in table, table
assert 'higher in 2 of 2 seeds' in table and '0.00' not in table
one = comparison_table([r for r in fake if r['seed'] == 0])
assert '±' not in one and 'one seed (0), so no spread' in one, one


# %% [markdown]
# The figure: test accuracy and training accuracy on the noisy labels against the epoch, one line per
# optimizer in the package's colours (`stablesam.style`), the mean over seeds with the spread (min to max
# over seeds) shaded. The y-axis shows the last three quarters of training, where the optimizers differ;
# the first epochs lie below it.

# %%
#| export
def plot_comparison(records, title=None):
    """Test and training accuracy per epoch, one line per optimizer: mean over seeds, min-max over seeds shaded."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    from stablesam.stability import curves
    from stablesam.style import figure_legend, plot_kwargs, quantity
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout='constrained')
    for ax, key in zip(axes, ('test_acc', 'train_acc')):
        q, lo_all, hi_all = quantity(key), np.inf, -np.inf
        for opt, (ep, mean, lo, hi) in curves(records, key).items():
            kw = plot_kwargs(opt, marker=True, points=len(ep))   # marks at other epochs per optimizer: lines told apart
            ax.plot(ep, q.scale * mean, lw=1.2, **kw)
            ax.fill_between(ep, q.scale * lo, q.scale * hi, color=kw['color'], alpha=0.2, linewidth=0)
            late = ep >= ep.max() / 4
            lo_all, hi_all = min(lo_all, q.scale * lo[late].min()), max(hi_all, q.scale * hi[late].max())
        pad = 0.1 * max(hi_all - lo_all, 1e-6)
        ax.set_ylim(lo_all - pad, hi_all + pad)
        ax.set_xlabel(quantity('epoch').label)
        ax.set_ylabel(q.label)
        ax.set_title('clean test labels' if key == 'test_acc' else 'noisy training labels', fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    r, n = records[0], len({r['seed'] for r in records})
    figure_legend(fig, f"mean over {n} seed{'s' if n > 1 else ''}" + ('; band: min-max over seeds' if n > 1 else ''))
    if title is None:
        title = f"FCN on {DATA_LABELS.get(r['dataset'], r['dataset'])}, {100 * r['label_noise']:g}% label noise"
    fig.suptitle(title, fontsize=10)
    return fig


# %%
fig = plot_comparison(fake)
plt.show()
plt.close(fig)

# %% [markdown]
# `run_comparison` trains the three optimizers for each seed through the experiment runner
# (`stablesam.experiment.run_experiment`, the runner of every experiment of the package), one run spec per
# (optimizer, seed) trained by `train_comparison_run`, and writes the setting's folder `OUT/<setting>/` in the
# layout of `results/`: `records.jsonl` (one strict-JSON record per run and epoch: a non-finite number is
# written as `null`), `config.json` (the settings, the command line, `n_train`, `n_test`, the seeds, the
# wall time in seconds and the machine), `summary.md` (the verdict table) and `comparison.png`. A job that
# is stopped resumes from its records: finished runs are kept, the others are trained again; a folder whose
# records were written with other settings is an error that names the setting.

# %%
#| export
_NOT_SETTINGS = ('optimizer', 'seed', 'data_root', 'device', 'download', 'progress', 'workers', 'out', 'resume')


def train_comparison_run(spec: dict, run) -> list:
    """One (optimizer, seed) run of the comparison: its per-epoch records."""
    from stablesam.data import get_datasets, in_memory
    from stablesam.robustness import run_epochs
    data = get_datasets(spec['dataset'], spec['data_root'], label_noise=spec['label_noise'], seed=spec['seed'],
                        augment=False, download=True)
    data = dataclasses.replace(data, train=in_memory(data.train), test=in_memory(data.test))
    cfg = compare_config(spec['optimizer'], spec['seed'], spec['dataset'], spec['data_root'], spec['epochs'],
                         spec['label_noise'], spec['device'])
    tags = dict(dataset=spec['dataset'], model='fcn', label_noise=spec['label_noise'], epochs=spec['epochs'],
                seed=spec['seed'], optimizer=spec['optimizer'])
    records = run_epochs(cfg, data, **tags)
    run.report(records[-1])
    return records


def run_comparison(out, setting='digits-quick', dataset='digits', data_root='data', epochs=20, n_seeds=5,
                   label_noise=0.4, seed=0, device='cpu', command=None, progress=True, **_):
    """SGD, SAM, StableSAM for seeds `seed`..`seed+n_seeds-1` into `out/setting/` (records, config, summary, figure)."""
    import matplotlib.pyplot as plt
    from stablesam.data import get_datasets
    from stablesam.experiment import run_experiment
    dest = Path(out) / setting
    seeds = list(range(seed, seed + n_seeds))
    train = {k: v
             for k, v in compare_config('sgd', seed, dataset, data_root, epochs, label_noise, device).to_dict().items()
             if k not in _NOT_SETTINGS}
    specs = [dict(dataset=dataset, data_root=str(data_root), label_noise=label_noise, epochs=epochs, device=device,
                  optimizer=o, seed=s) for s in seeds for o in COMPARED]
    data = get_datasets(dataset, data_root, label_noise=label_noise, seed=seed, augment=False, download=True)
    meta = dict(setting=setting, dataset=dataset, model='fcn', optimizers=list(COMPARED), seeds=seeds, epochs=epochs,
                label_noise=label_noise, n_train=len(data.train), n_test=len(data.test))
    records = run_experiment(dest, specs, train_comparison_run, key=('optimizer', 'seed'),
                             settings=dict(train=train, seeds=seeds), meta=meta, progress=progress, desc=setting,
                             command=command or command_line(out, stages=['compare'], seed=seed))
    (dest / 'summary.md').write_text(summary_files(dest)['summary.md'])
    fig = plot_comparison(records)
    save_figure(fig, dest / 'comparison.png')
    plt.close(fig)
    return records


# %% [markdown]
# A small run (two seeds, three epochs) shows the folder it writes; run again, it resumes: every run is
# finished, nothing is trained, the records stay as they were.

# %%
tmp = Path(tempfile.mkdtemp())
recs = run_comparison(tmp, setting='digits-small', epochs=3, n_seeds=2, progress=False)
print((tmp / 'digits-small' / 'summary.md').read_text())

# %%
#| hide
small = tmp / 'digits-small'
test_eq(sorted(p.name for p in small.iterdir()), ['comparison.png', 'config.json', 'records.jsonl', 'summary.md'])
test_eq(len(read_jsonl(small / 'records.jsonl')), 3 * 2 * 3)
cfg = json.loads((small / 'config.json').read_text())
test_eq((cfg['n_train'], cfg['n_test'], cfg['seeds']), (1297, 500, [0, 1]))
before = (small / 'records.jsonl').read_text()
again = run_comparison(tmp, setting='digits-small', epochs=3, n_seeds=2, progress=False)
test_eq((small / 'records.jsonl').read_text(), before)
test_fail(lambda: run_comparison(tmp, setting='digits-small', epochs=4, n_seeds=2, progress=False),
          contains='other settings')


# %% [markdown]
# ## Algorithmic stability at CPU size
#
# The full job adds the CPU-size run of Figure 5 ([stability](06_stability.ipynb)): FCN on the first
# 10,000 MNIST training images (S and S' of 9,999), 60 epochs, constant learning rate, one seed per
# `n_seeds` from `seed`, through `stablesam.stability`'s functions; it resumes from its records.

# %%
#| export
def mnist_present(data_root):
    """Whether the real MNIST files are in `data_root` (as torchvision stores them)."""
    raw = Path(data_root) / 'MNIST' / 'raw'
    return all((raw / f).exists() or (raw / (f + '.gz')).exists()
               for f in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
                         't10k-labels-idx1-ubyte'))

def run_stability_figure5(out, data_root, seed=0, n_seeds=3, epochs=60, subset=None, command=None, **_):
    """The CPU-size stability run of Figure 5 (FCN on `subset` MNIST images, default CPU_SUBSET) in `out/stability/`."""
    import matplotlib.pyplot as plt
    from stablesam import stability as st
    dest = Path(out) / 'stability'
    seeds, subset = list(range(seed, seed + n_seeds)), subset or st.CPU_SUBSET
    cfg = st.stability_config('mnist', 'fcn', 'constant', data_root=data_root, epochs=epochs, device='cpu',
                              download=False)
    records = st.run_stability(cfg, seeds=seeds, subset=subset, out=dest, command=command)
    st.write_stability_figure(dest, records, st.stability_title('fcn', 'mnist', 'constant', subset - 1), pdf=False)
    (dest / 'summary.md').write_text(summary_files(dest)['summary.md'])
    return records


# %% [markdown]
# ## The job
#
# `reproduce` runs the stages in order, times each, and writes `report.md`. A stage that fails does not
# lose the others: its error is written into the report and the job exits non-zero at the end. `seed`
# reaches every stage: the audit's and the toy's draws, and the first of the comparison's and the
# stability run's seeds.

# %%
#| export
def plan(quick=True, data_root='data', stages=None):
    """The stages to run (all, or those named in `stages`), with their settings, for the quick or full job."""
    sizes = SIZES['quick' if quick else 'full']
    todo = [('audit', sizes['audit']), ('toy', sizes['toy']), ('compare', sizes['compare'])]
    if not quick and mnist_present(data_root): todo.append(('stability', sizes['stability']))
    return todo if stages is None else [(n, s) for n, s in todo if n in stages]

def estimate(stages):
    """The expected wall time of `stages` on two CPU cores, in seconds."""
    return sum(s['est_s'] for _, s in stages)

def duration(seconds):
    """`seconds` as a short human-readable duration."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


# %%
#| export
TOY_METHODS = ('gd', 'sam', 'stablesam')


def _job_record(out, quick, results, timings, errors, total, command):
    """Write the job's `config.json`: its command, provenance, wall times and the numbers `report.md` shows."""
    from stablesam.runs import CONFIG, machine, provenance, write_json
    stages = {}
    if 'audit' in results:
        stages['audit'] = [dict(statement=r['statement'], regime=r['regime'], status=r['status'])
                           for r in results['audit']]
    if 'toy' in results:
        rates = results['toy']
        stages['toy'] = dict(n_starts=rates['n_starts'], n_lrs=len(rates['lrs']), steps=rates['steps'],
                             rhos=[float(r) for r in rates['rhos']],
                             success={m: [float(rates[m][i].mean()) for i in range(len(rates['rhos']))]
                                      for m in TOY_METHODS if m in rates})
    if 'compare' in results:
        r = results['compare'][0]
        stages['compare'] = dict(setting=SIZES['quick' if quick else 'full']['compare']['setting'],
                                 dataset=r['dataset'], label_noise=r['label_noise'])
    if 'stability' in results: stages['stability'] = dict(folder='stability')
    write_json(Path(out) / CONFIG, dict(command=command, quick=quick, wall_time_s=round(total, 1),
                                        stage_wall_s={k: round(v, 1) for k, v in timings.items()}, stages=stages,
                                        errors=errors, machine=machine(), provenance=provenance()))


def report_text(out) -> str:
    """The one-page `report.md` of a main job, from its `config.json` and its stages' records."""
    from stablesam.runs import CONFIG, read_json
    from stablesam.theory_checks import status_counts
    out = Path(out)
    job = read_json(out / CONFIG)
    stages, t = job['stages'], job['stage_wall_s']
    lines = [f"# stablesam reproduce ({'quick' if job['quick'] else 'full'})", '',
             f"Wall time {job['wall_time_s']:.0f} s on this machine ({job['machine']}). "
             "Each section links the notebook that explains it.", '']
    if 'audit' in stages:
        rows = stages['audit']
        lines += ['## Section 4: theory audit', '',
                  f"{len(rows)} rows: {status_counts(rows)} ([table](audit.md), {t['audit']:.0f} s). "
                  "Violated or outside rows:", '']
        lines += [f"- {r['statement']} ({r['regime']}): {r['status']}" for r in rows
                  if r['status'] in ('violated', 'outside')] or ['- none']
        lines += ['']
    if 'toy' in stages:
        toy = stages['toy']
        methods = [m for m in TOY_METHODS if m in toy['success']]
        lines += ['## Section 5.1: Figure 4', '', '![Figure 4](figure4.png)', '',
                  f"{toy['n_starts']:,} starts, {toy['n_lrs']} learning rates, {toy['steps']} steps "
                  f"({t['toy']:.0f} s). Mean success rate over the learning rates:", '',
                  '| rho | ' + ' | '.join(methods) + ' |', '|---|' + '---|' * len(methods)]
        lines += [f'| {rho:g} | ' + ' | '.join(f"{toy['success'][m][i]:.3f}" for m in methods) + ' |'
                  for i, rho in enumerate(toy['rhos'])]
        lines += ['']
    if 'compare' in stages:
        c = stages['compare']
        setting = c['setting']
        lines += [f"## SGD, SAM and StableSAM on {DATA_LABELS.get(c['dataset'], c['dataset'])}, "
                  f"{100 * c['label_noise']:g}% label noise", '',
                  f'![test and training accuracy]({setting}/comparison.png)', '',
                  summary_files(out / setting)['summary.md'].strip(), '',
                  f"Records, settings and wall time in [{setting}/]({setting}/) ({t['compare']:.0f} s).", '']
    if 'stability' in stages:
        lines += ['## Section 5.2: algorithmic stability (FCN on MNIST, CPU size)', '',
                  '![stability](stability/stability.png)', '',
                  summary_files(out / 'stability')['summary.md'].strip(), '',
                  f"Records in [stability/](stability/) ({t['stability']:.0f} s).", '']
    for stage, err in job['errors'].items():
        lines += [f'## {stage}: failed', '', '```', err, '```', '']
    return '\n'.join(lines)


# %%
#| export
STAGES = dict(audit=run_audit, toy=run_toy, compare=run_comparison, stability=run_stability_figure5)

def reproduce(out, quick=True, data_root='data', seed=0, stages=None):
    """Run the main job into `out`; returns `{stage: result}`, writes `report.md`; failures reported, not raised."""
    import traceback
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = plan(quick, data_root, stages)
    command = command_line(out, quick, data_root, seed, stages)
    results, timings, errors, t0 = {}, {}, {}, time.time()
    for i, (name, size) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {name} (about {duration(size['est_s'])})", flush=True)
        t = time.time()
        try: results[name] = STAGES[name](out, seed=seed, data_root=data_root, command=command, **size)
        except Exception: errors[name] = traceback.format_exc(limit=3)
        timings[name] = time.time() - t
    _job_record(out, quick, results, timings, errors, time.time() - t0, command)
    (out / 'report.md').write_text(report_text(out))
    written = sorted(p.name + ('/' if p.is_dir() else '') for p in out.iterdir())
    print(f"\nwrote {out}: " + ', '.join(written))
    for name, _ in todo:
        print(f"  {name:<10} {'FAILED' if name in errors else 'ok':<7} {timings[name]:6.1f} s")
    if 'compare' in results: print('\n' + comparison_table(results['compare']))
    return dict(results=results, timings=timings, errors=errors)


# %% [markdown]
# A quick job restricted to the fastest stage, to show the report it writes:

# %%
res = reproduce(tmp / 'job', quick=True, stages=('toy',))
display(Image(filename=str(tmp / 'job' / 'figure4.png'), width=700))
print((tmp / 'job' / 'report.md').read_text())

# %%
#| hide
test_eq(res['errors'], {})
test_eq(sorted(p.name for p in (tmp / 'job').iterdir()), ['config.json', 'figure4.png', 'report.md'])
test_eq('![Figure 4](figure4.png)' in (tmp / 'job' / 'report.md').read_text(), True)
test_eq(summary_files(tmp / 'job')['report.md'], (tmp / 'job' / 'report.md').read_text())   # made from config.json


# %% [markdown]
# A stage that fails is reported in `report.md` and leaves the others' output in place; the seed and the
# command line reach every stage:

# %%
#| hide
def _broken(out, **_): raise RuntimeError('disk full')
saved, STAGES['toy'] = STAGES['toy'], _broken
try: res = reproduce(tmp / 'broken', quick=True, stages=('toy',))
finally: STAGES['toy'] = saved
test_eq(list(res['errors']), ['toy'])
test_eq('disk full' in (tmp / 'broken' / 'report.md').read_text(), True)
seen, saved = {}, dict(STAGES)
def _recorder(name):
    def stage(out, **kw):
        seen[name] = kw
        raise RuntimeError('recorded')
    return stage
STAGES.update({name: _recorder(name) for name in STAGES})
try: reproduce(tmp / 'seeds', quick=True, seed=7, stages=('audit', 'toy'))
finally: STAGES.update(saved)
test_eq({n: kw['seed'] for n, kw in seen.items()}, dict(audit=7, toy=7))
test_eq(seen['toy']['command'],
        ['stablesam-reproduce', '--quick', '--seed', '7', '--out', str(tmp / 'seeds'), '--stages', 'audit', 'toy'])


# %% [markdown]
# ## The command

# %%
#| export
@command('stablesam-reproduce')
def main(argv=None):
    """The `stablesam-reproduce` command."""
    ap = argparse.ArgumentParser(prog='stablesam-reproduce', description=(
        'Run the theory audit, the toy Figure 4 and SGD/SAM/StableSAM on real data with label noise over several '
        'seeds (quick: scikit-learn\'s digits, no download; full: MNIST from --data-root), and write the figures, the '
        'tables, the records and report.md into --out.'))
    ap.add_argument('--quick', action='store_true',
                    help='CI-size stages on the bundled digits, about a minute on a laptop CPU')
    ap.add_argument('--out', required=True, type=Path,
                    help='folder to write the report, figures, tables and records to')
    ap.add_argument('--data-root', default='data', type=Path,
                    help='full job only: where MNIST is read from (downloaded there if missing); the CPU-size '
                         'stability run is added if MNIST is already present')
    ap.add_argument('--seed', default=0, type=int,
                    help='random seed of every stage (the first of the comparison\'s seeds)')
    ap.add_argument('--stages', nargs='+', choices=list(STAGES), help='run only these stages')
    add_common(ap, 'debug')
    args = ap.parse_args(argv)
    todo = plan(args.quick, args.data_root, args.stages)
    print(f"stablesam-reproduce ({'quick' if args.quick else 'full'}): {', '.join(n for n, _ in todo)}; "
          f"expected about {duration(estimate(todo))} on 2 CPU cores", flush=True)
    if not args.quick and not mnist_present(args.data_root):
        print(f"(no MNIST in {args.data_root}: the comparison downloads it, the stability stage is skipped; put the "
              f"MNIST files under {args.data_root}/MNIST/raw to include it)", flush=True)
    res = reproduce(args.out, quick=args.quick, data_root=args.data_root, seed=args.seed, stages=args.stages)
    return 1 if res['errors'] else 0


# %% [markdown]
# ## The quick job's result
#
# The quick job as CI runs it, writing the committed results folder `results/main_job/` (about a minute
# on two cores; skipped by the tests, which run it elsewhere):

# %%
from stablesam.results_check import rerun   # runs the command a results folder records

# %%
#| slow
# the command results/main_job/config.json records, from the repository root
print(rerun('../results/main_job'))

# %% [markdown]
# What it wrote, read back from the committed records in `results/main_job/digits-quick/`: FCN on the
# 1,297 training digits with 40% of their labels randomised, tested on the 500 clean test digits, five
# seeds.

# %%
committed = Path('../results/main_job/digits-quick')
records = read_jsonl(committed / 'records.jsonl')
config = json.loads((committed / 'config.json').read_text())
print(f"{len(records)} records; n_train {config['n_train']}, n_test {config['n_test']}, seeds {config['seeds']}, "
      f"{config['epochs']} epochs, wall time {config['wall_time_s']:.0f} s on {config['machine']}")
fig = plot_comparison(records)
plt.show()
plt.close(fig)
display(Markdown(comparison_table(records)))
