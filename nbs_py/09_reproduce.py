# %%
#| default_exp reproduce

# %% [markdown]
# # Reproduce: the main job
#
# > `stablesam-reproduce`: the theory audit, the toy experiment of Figure 4 and a small SGD/SAM/StableSAM comparison, offline, in one command, with a one-page report.

# %% [markdown]
# A newcomer's first question is "what does this do?", and the answer should not wait for a dataset
# download or a GPU. `stablesam-reproduce --quick --out DIR` runs three of the package's experiments on
# embedded defaults and writes what they produce into `DIR`:
#
# 1. the numerical audit of Section 4 ([theory](01c_theory_audit.ipynb)) at CI size: `audit.md`;
# 2. the toy experiment of Section 5.1 ([toy](02_toy.ipynb)), Figure 4 at reduced size: `figure4.png`;
# 3. SGD, SAM and StableSAM trained by the [training engine](05_train.ipynb) on a small synthetic
#    classification task (images written in the real MNIST file format, so the real loading code runs):
#    run folders under `runs/`, `comparison.png` and `comparison.md` built by [results](08_results.ipynb);
#
# and `report.md`, one page that links them. Without `--quick` it runs the full-size CPU experiments:
# the full Figure 4, the full audit and, where MNIST is present in `--data-root`, the CPU-size stability
# run of Figure 5 ([stability](06_stability.ipynb)); it says how long that will take before it starts.
#
# Every stage calls the same exported functions the notebooks use; nothing here is a second
# implementation.

# %%
#| export
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

# %%
#| hide
import tempfile
import matplotlib.pyplot as plt
from fastcore.test import test_eq
from IPython.display import Image, display

# %%
#| hide
plt.rcParams['figure.dpi'] = 72

# %% [markdown]
# ## Sizes
#
# Each stage has a quick and a full size. The quick sizes keep the whole job to a few minutes on two CPU
# cores; the full ones are the paper's (Figure 4: 100 learning rates, 10,000 starts, 1000 steps) or the
# audit's full size (200 instances per statement). `est_s` is the wall time each stage took on two
# CPU cores when we measured it (the toy's includes numba compiling its kernel on a first run; the stability
# run's is the stability notebook's estimate for the CPU size), used for the estimate printed before a run.

# %%
#| export
SIZES = {
    'quick': dict(audit=dict(n_instances=16, est_s=5),
                  toy=dict(n_lrs=24, n_starts=1000, steps=1000, est_s=20),
                  compare=dict(epochs=6, n_train=2048, n_test=512, est_s=15)),
    'full': dict(audit=dict(n_instances=200, est_s=25),
                 toy=dict(n_lrs=100, n_starts=10_000, steps=1000, est_s=25),
                 compare=dict(epochs=15, n_train=8192, n_test=2048, est_s=150),
                 stability=dict(est_s=2500)),
}
COMPARED = ('sgd', 'sam', 'stablesam')


# %% [markdown]
# ## The three stages

# %%
#| export
def run_audit(out, n_instances=16, seed=0, **_):
    "Run the Section 4 audit (`verify_all`) and write `audit.md`; returns the rows."
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
    "Compute Figure 4 (toy saddle problem) at the given size and write `figure4.png`; returns the rates."
    import matplotlib.pyplot as plt
    from stablesam.toy import figure4, paper_lrs
    fig, rates = figure4(lrs=paper_lrs(n_lrs), n_starts=n_starts, steps=steps, seed=seed)
    fig.savefig(Path(out) / 'figure4.png', dpi=100)
    plt.close(fig)
    return rates


# %% [markdown]
# The comparison trains a small fully connected network (the FCN of Section 5.2) on 10-class synthetic
# images written by `write_fake_mnist` in MNIST's IDX format, noisy enough (pixel noise 250) that a model
# can overfit them, with 40% of the training labels randomised as in Table 4 (test labels clean): the
# setting where sharpness-aware training is expected to help. The recipe is Table 2's scaled down: SGD
# with momentum 0.9, cosine schedule, label smoothing 0.1, weight decay 5e-4, batch 128, $\rho = 0.05$.

# %%
#| export
def compare_config(optimizer, out, data_root, epochs=6, seed=0, label_noise=0.4):
    "The TrainConfig of one comparison run."
    from stablesam.train import TrainConfig
    return TrainConfig(dataset='mnist', data_root=str(data_root), model='fcn', optimizer=optimizer, rho=0.05,
                       lr=0.05, momentum=0.9, epochs=epochs, batch_size=128, weight_decay=5e-4, label_noise=label_noise,
                       label_smoothing=0.1, schedule='cosine', seed=seed, out=str(Path(out) / 'runs' / optimizer),
                       augment=False, download=False, device='cpu', workers=0)

def run_comparison(out, epochs=6, n_train=2048, n_test=512, seed=0, **_):
    "Train SGD, SAM and StableSAM on synthetic data; write run folders, `comparison.png` and `comparison.md`; returns the runs."
    import matplotlib.pyplot as plt
    from stablesam.data import write_fake_mnist
    from stablesam.results import load_runs, plot_curves, summarize, table_markdown
    from stablesam.train import Trainer
    data_root = write_fake_mnist(Path(out) / 'data', n_train=n_train, n_test=n_test, seed=seed, noise=250)
    for name in COMPARED: Trainer(compare_config(name, out, data_root, epochs, seed)).fit()
    runs = [r for r in load_runs(Path(out) / 'runs') if r['config']['optimizer'] in COMPARED]
    rows = summarize(runs)
    (Path(out) / 'comparison.md').write_text(table_markdown(rows) + '\n')
    fig = plot_curves(runs, metric='test_acc', rows=rows)
    fig.savefig(Path(out) / 'comparison.png', dpi=100)
    plt.close(fig)
    return runs


# %%
#| export
def mnist_present(data_root):
    "Whether the real MNIST files are in `data_root` (as torchvision stores them)."
    raw = Path(data_root) / 'MNIST' / 'raw'
    return all((raw / f).exists() or (raw / (f + '.gz')).exists()
               for f in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'))

def run_stability(out, data_root, seed=0, **_):
    "The CPU-size stability run of Figure 5 (FCN on MNIST) through `stablesam-stability`; returns its output folder."
    from stablesam.stability import main as stability_main
    dest = Path(out) / 'stability'
    stability_main(['--dataset', 'mnist', '--data-root', str(data_root), '--model', 'fcn', '--cpu-size',
                    '--out', str(dest)])
    return dest


# %% [markdown]
# ## The job
#
# `reproduce` runs the stages in order, times each, and writes `report.md`. A stage that fails does not
# lose the others: its error is written into the report and the job exits non-zero at the end.

# %%
#| export
def plan(quick=True, data_root='data'):
    "The stages to run, with their settings, for the quick or full job."
    sizes = SIZES['quick' if quick else 'full']
    stages = [('audit', sizes['audit']), ('toy', sizes['toy']), ('compare', sizes['compare'])]
    if not quick and mnist_present(data_root): stages.append(('stability', sizes['stability']))
    return stages

def estimate(stages):
    "The expected wall time of `stages` on two CPU cores, in seconds."
    return sum(s['est_s'] for _, s in stages)

def duration(seconds):
    "`seconds` as a short human-readable duration."
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


# %%
#| export
def _report(out, quick, results, timings, errors, total):
    "Write the one-page `report.md` that links everything the job wrote."
    lines = [f"# stablesam reproduce ({'quick' if quick else 'full'})", '',
             f"Wall time {total:.0f} s on this machine. Each section links the notebook that explains it.", '']
    if 'audit' in results:
        rows = results['audit']
        from stablesam.theory_checks import status_counts
        lines += ['## Section 4: theory audit', '',
                  f"{len(rows)} rows: {status_counts(rows)} ([table](audit.md), {timings['audit']:.0f} s). "
                  "Violated or outside rows:", '']
        lines += [f"- {r['statement']} ({r['regime']}): {r['status']}" for r in rows
                  if r['status'] in ('violated', 'outside')] or ['- none']
        lines += ['']
    if 'toy' in results:
        rates = results['toy']
        lines += ['## Section 5.1: Figure 4', '', '![Figure 4](figure4.png)', '',
                  f"{rates['n_starts']:,} starts, {len(rates['lrs'])} learning rates, {rates['steps']} steps "
                  f"({timings['toy']:.0f} s). Mean success rate over the learning rates:", '',
                  '| rho | ' + ' | '.join(m for m in ('gd', 'sam', 'stablesam') if m in rates) + ' |',
                  '|---|' + '---|' * sum(m in rates for m in ('gd', 'sam', 'stablesam'))]
        for i, rho in enumerate(rates['rhos']):
            lines.append(f'| {rho:g} | ' + ' | '.join(f"{rates[m][i].mean():.3f}" for m in ('gd', 'sam', 'stablesam') if m in rates) + ' |')
        lines += ['']
    if 'compare' in results:
        lines += ['## SGD, SAM and StableSAM on synthetic data with 40% label noise', '', '![test accuracy](comparison.png)', '',
                  f"Run folders in `runs/` ({timings['compare']:.0f} s); best test accuracy on clean test labels, one seed:", '',
                  (Path(out) / 'comparison.md').read_text(), '']
    if 'stability' in results:
        lines += ['## Section 5.2: algorithmic stability (FCN on MNIST)', '',
                  f"Output in [stability/](stability/) ({timings['stability']:.0f} s).", '']
    for stage, err in errors.items():
        lines += [f'## {stage}: failed', '', '```', err, '```', '']
    (Path(out) / 'report.md').write_text('\n'.join(lines))


# %%
#| export
STAGES = dict(audit=run_audit, toy=run_toy, compare=run_comparison, stability=run_stability)

def reproduce(out, quick=True, data_root='data', seed=0, stages=None):
    "Run the main job into `out`; returns `{stage: result}` and writes `report.md`. Failed stages are reported, not raised."
    import traceback
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = plan(quick, data_root)
    if stages is not None: todo = [(n, s) for n, s in todo if n in stages]
    results, timings, errors, t0 = {}, {}, {}, time.time()
    for i, (name, size) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {name} (about {duration(size['est_s'])})", flush=True)
        t = time.time()
        try: results[name] = STAGES[name](out, seed=seed, data_root=data_root, **size)
        except Exception: errors[name] = traceback.format_exc(limit=3)
        timings[name] = time.time() - t
    _report(out, quick, results, timings, errors, time.time() - t0)
    written = sorted(str(p.relative_to(out)) for p in out.iterdir() if p.name not in ('data', 'runs'))
    print(f"\nwrote {out}: " + ', '.join(written) + (", runs/" if (out / 'runs').exists() else ''))
    for name in todo:
        print(f"  {name[0]:<10} {'FAILED' if name[0] in errors else 'ok':<7} {timings[name[0]]:6.1f} s")
    return dict(results=results, timings=timings, errors=errors)


# %% [markdown]
# A quick job restricted to the fastest stage, to show the report it writes:

# %%
tmp = Path(tempfile.mkdtemp())
res = reproduce(tmp / 'job', quick=True, stages=('toy',))
display(Image(filename=str(tmp / 'job' / 'figure4.png'), width=700))
print((tmp / 'job' / 'report.md').read_text())

# %%
#| hide
test_eq(res['errors'], {})
test_eq(sorted(p.name for p in (tmp / 'job').iterdir()), ['figure4.png', 'report.md'])
test_eq('![Figure 4](figure4.png)' in (tmp / 'job' / 'report.md').read_text(), True)


# %% [markdown]
# A stage that fails is reported in `report.md` and leaves the others' output in place:

# %%
#| hide
def _broken(out, **_): raise RuntimeError('disk full')
saved, STAGES['toy'] = STAGES['toy'], _broken
try: res = reproduce(tmp / 'broken', quick=True, stages=('toy',))
finally: STAGES['toy'] = saved
test_eq(list(res['errors']), ['toy'])
test_eq('disk full' in (tmp / 'broken' / 'report.md').read_text(), True)


# %% [markdown]
# ## The command

# %%
#| export
def main(argv=None):
    "The `stablesam-reproduce` command."
    ap = argparse.ArgumentParser(prog='stablesam-reproduce', description=(
        'Run the theory audit, the toy Figure 4 and a small SGD/SAM/StableSAM comparison, with no download, '
        'and write the figures, the audit table and report.md into --out.'))
    ap.add_argument('--quick', action='store_true', help='CI-size stages, a few minutes on a laptop CPU')
    ap.add_argument('--out', required=True, type=Path, help='folder to write the report, figures and run folders to')
    ap.add_argument('--data-root', default='data', type=Path,
                    help='where MNIST is looked for (full job only: runs the CPU-size stability experiment if present)')
    ap.add_argument('--seed', default=0, type=int, help='random seed of every stage')
    ap.add_argument('--stages', nargs='+', choices=list(STAGES), help='run only these stages')
    args = ap.parse_args(argv)
    todo = plan(args.quick, args.data_root)
    if args.stages: todo = [(n, s) for n, s in todo if n in args.stages]
    print(f"stablesam-reproduce ({'quick' if args.quick else 'full'}): {', '.join(n for n, _ in todo)}; "
          f"expected about {duration(estimate(todo))} on 2 CPU cores", flush=True)
    if not args.quick and not mnist_present(args.data_root):
        print(f"(no MNIST in {args.data_root}: the stability stage is skipped; put the MNIST files under "
              f"{args.data_root}/MNIST/raw to include it)", flush=True)
    res = reproduce(args.out, quick=args.quick, data_root=args.data_root, seed=args.seed, stages=args.stages)
    return 1 if res['errors'] else 0


# %% [markdown]
# The quick job, as CI runs it (a few minutes on two cores):

# %%
#| slow
main(['--quick', '--out', str(tmp / 'quick')])
