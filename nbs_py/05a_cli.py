# %%
#| default_exp cli

# %% [markdown]
# # cli
#
# > The `stablesam-train` command: every `TrainConfig` setting as a flag, the paper's presets, the tables' runs

# %% [markdown]
# `stablesam-train` builds a `TrainConfig` ([config](04a_config.ipynb)) from its flags and runs a
# `Trainer` ([train](05_train.ipynb)). `--sweep` prints the command lines of a table's runs instead.

# %%
#| hide
from fastcore.test import *
import json
import tempfile
from pathlib import Path
import torch
from stablesam.experiment import RECORDS

# %%
#| hide
torch.set_num_threads(1)

# %%
#| export
import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch.distributed as dist

from stablesam.config import PRESETS, TrainConfig, preset_config
from stablesam.experiment import add_common, command, executor_options, run_experiment
from stablesam.loggers import TrainLogger
from stablesam.runs import CONFIG, read_json
from stablesam.train import Diverged, Trainer
from stablesam.variants import variant

# %% [markdown]
# ## Sweeps: the tables' grids as commands
#
# `table_runs(table)` lists the runs behind a table: Table 2 is CIFAR-10/100 x five models x SGD, SAM,
# StableSAM, ASAM, StableASAM x the $\rho$ grids $\{0.01, 0.02, 0.05, 0.1, 0.2\}$ (SAM, StableSAM) and
# $\{0.1, 0.2, 0.5, 1, 2\}$ (ASAM, StableASAM) x three seeds; Table 3 the four ImageNet models x the
# five optimizers at the fixed $\rho$; Table 4 the noise levels x ResNet-56, WRN-28-10 x SAM,
# StableSAM at $\rho = 0.05$. Each job is a `stablesam-train` command line with its own run folder
# and `--resume`, so a job list can be rerun after a preemption and finished runs cost nothing.
# `stablesam-train --sweep table2` prints the commands, one per line (for `xargs`, a SLURM array or a
# job queue).

# %%
#| export
TABLE2_MODELS = ('resnet20', 'resnet56', 'resnext29_32x4d', 'wrn28_10', 'pyramidnet110')
RHO_GRID = dict(sam=(0.01, 0.02, 0.05, 0.1, 0.2), asam=(0.1, 0.2, 0.5, 1.0, 2.0))
TABLE_OPTIMIZERS = ('sgd', 'sam', 'stablesam', 'asam', 'stableasam')
TABLES = ('table2', 'table3', 'table4', 'mnist-noise40')   # the last: Table 4's layout at CPU size on real MNIST

def _rho_tag(rho): return f'{rho:g}'

def table_runs(table, seeds=(0, 1, 2), runs_dir='runs', data_root='data', extra=()):
    """The runs of `table` (one of `TABLES`) as a list of `stablesam-train` argument lists."""
    if table not in TABLES: raise ValueError(f"Unknown table: {table!r} (choose from {', '.join(TABLES)})")
    jobs = []
    def add(preset, out, **s):
        args = ([] if preset is None else ['--preset', preset]) + ['--data-root', str(data_root),
                                                                   '--out', str(Path(runs_dir, table, out)), '--resume']
        for k, v in s.items():
            flag = '--' + k.replace('_', '-')
            args += [flag] if v is True else ['--no-' + flag[2:]] if v is False else [flag, str(v)]
        jobs.append(args + list(extra))
    for seed in seeds:
        if table == 'table2':
            for ds in ('cifar10', 'cifar100'):
                for model in TABLE2_MODELS:
                    for opt in TABLE_OPTIMIZERS:
                        family = variant(opt).family
                        for rho in (None,) if family is None else RHO_GRID[family]:
                            tag = opt if rho is None else f'{opt}_rho{_rho_tag(rho)}'
                            add('cifar', f'{ds}/{model}/{tag}/seed{seed}', dataset=ds, model=model, optimizer=opt,
                                **({} if rho is None else dict(rho=rho)), seed=seed)
        elif table == 'table3':
            for model in ('resnet50', 'resnet101', 'resnet152', 'vit_s32'):
                for opt in TABLE_OPTIMIZERS:
                    add('imagenet-vit' if model == 'vit_s32' else 'imagenet', f'{model}/{opt}/seed{seed}',
                        model=model, optimizer=opt, seed=seed)
        elif table == 'mnist-noise40':   # FCN on 5,000 real MNIST images, 40% noisy labels, 1,000 held out
            for opt, rho in [('sgd', 0.05)] + [(o, r) for o in ('sam', 'stablesam') for r in (0.02, 0.05, 0.1)]:
                add(None, f'{opt}_rho{_rho_tag(rho)}_seed{seed}', dataset='mnist', model='fcn', optimizer=opt,
                    rho=rho, label_noise=0.4, train_subset=5000, val_split=1000, epochs=8, lr=0.05, momentum=0.9,
                    weight_decay=0, label_smoothing=0, augment=False, download=False, seed=seed)
        else:
            for noise in (0.2, 0.4, 0.6, 0.8):
                for model in ('resnet56', 'wrn28_10'):
                    for opt in ('sam', 'stablesam'):
                        add('label-noise', f'noise{_rho_tag(noise)}/{model}/{opt}/seed{seed}', label_noise=noise,
                            model=model, optimizer=opt, seed=seed)
    return jobs

def table_commands(table, **kwargs):
    """The runs of `table` as shell command lines."""
    return [shlex.join(['stablesam-train', *args]) for args in table_runs(table, **kwargs)]


# %%
test_eq(len(table_runs('table2')), 3 * 2 * 5 * (1 + 4 * 5))
test_eq(len(table_runs('table3', seeds=(0,))), 4 * 5)
test_eq(len(table_runs('table4')), 3 * 4 * 2 * 2)
print(*table_commands('table4', seeds=(0,))[:2], sep='\n')


# %% [markdown]
# ## The `stablesam-train` command
#
# Every `TrainConfig` setting is a flag. Flags left out take the preset's value (with `--preset`),
# else the saved run's (with `--resume` on an existing run folder), else the `TrainConfig` default.
# Exit status: 0 done, 2 a usage or data error (the message says which setting or file), 3 the run
# diverged (a non-finite loss or gradient; the message names the epoch, step, lr and the last good
# checkpoint, and the run folder gets `diverged.json` with the same: the outcome a sweep records).

# %%
#| export
def build_parser():
    """The argument parser of `stablesam-train`: one flag per `TrainConfig` setting, with its help and choices."""
    ap = argparse.ArgumentParser(prog='stablesam-train', description='Train an image classifier with SGD or a SAM '
                                 'variant (StableSAM: Algorithm 1 of the paper), writing a run folder.')
    ap.add_argument('--preset', choices=list(PRESETS), default=None,
                    help='the paper\'s hyperparameters: ' + '; '.join(f"{k}: {v['help']}" for k, v in PRESETS.items()))
    ap.add_argument('--sweep', choices=TABLES, default=None,
                    help='the runs of a table (--seeds, --out as the runs folder, --data-root): printed as '
                         'commands one per line, or, with --executor, trained through the experiment runner')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='seeds of --sweep (default: 0 1 2)')
    for f in dataclasses.fields(TrainConfig):
        flag, help, choices = '--' + f.name.replace('_', '-'), f.metadata['help'], f.metadata['choices']
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
            continue
        conv = next(c for c in (int, float, str) if f.type is c or c in getattr(f.type, '__args__', ()))
        ap.add_argument(flag, type=_number(conv, f.name), default=None, metavar=f.name.upper(), choices=choices,
                        help=help + (f" ({', '.join(choices)})" if choices is not None else '')
                             + f' (default: {f.default})')
    ap.add_argument('--quiet', dest='progress', action='store_false', help='the same as --no-progress')
    add_common(ap, 'executor', 'logger', 'debug')
    ap.set_defaults(executor=None)   # --sweep prints its commands unless an executor is named
    return ap


def _number(conv, name):
    """An argparse type that converts with `conv` and names the setting in its error."""
    def parse(s):
        try: return conv(s)
        except ValueError: raise argparse.ArgumentTypeError(f"invalid {name}: {s!r}")
    return parse


# %% [markdown]
# `main` runs the command through the package's exit wrapper (`stablesam.experiment.command`): invalid
# settings, missing data and run-folder conflicts end with a one-line error and exit status 2, a diverged
# run with status 3, anything unexpected with status 1 and one line naming it (`--debug` for the traceback).
#
# With `--executor`, `--sweep TABLE` trains the table's runs through the experiment runner instead of
# printing them: `inline` one after another, `processes` side by side, `slurm` as one SLURM job per run
# (`--slurm gpus_per_node=1 timeout_min=600 ...`). Each run keeps its own run folder under `--out` and its
# `--resume`, so a preempted job continues from its checkpoint; the runner records each finished run's final
# and best test accuracy in `--out/records.jsonl`, and `stablesam-results --out` builds the table.

# %%
#| export
def config_from_args(args):
    """The TrainConfig for parsed `stablesam-train` arguments."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name) is not None}
    saved = Path(given['out']) / CONFIG if given.get('out') and given.get('resume') else None
    if saved is not None and saved.exists():
        d = read_json(saved)
        base = {f.name: d[f.name] for f in dataclasses.fields(TrainConfig) if f.name in d}
        return TrainConfig.from_dict({**base, **given})
    return preset_config(args.preset, **given)


def train_table_run(spec: dict, run) -> list:
    """One run of a table sweep (`spec['args']`: its `stablesam-train` arguments): its final and best test accuracy."""
    cfg = config_from_args(build_parser().parse_args([*spec['args'], '--no-progress']))
    history = Trainer(cfg).fit()
    run.report(history[-1])
    return [dict(out=spec['out'], epochs=len(history), final_test_acc=history[-1]['test_acc'],
                 best_test_acc=max(m['test_acc'] for m in history))]


def given_settings(args) -> list:
    """The `TrainConfig` flags given on the command line (besides --out and --data-root), as arguments again."""
    flags = []
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is None or f.name in ('out', 'data_root'): continue
        flag = '--' + f.name.replace('_', '-')
        flags += [flag if v else '--no-' + flag[2:]] if f.type is bool else [flag, str(v)]
    return flags


def run_table(table, args, argv) -> list:
    """Train the runs of `table` through the experiment runner (`--sweep TABLE --executor ...`)."""
    runs_dir = args.out or 'runs'
    jobs = table_runs(table, seeds=args.seeds, runs_dir=runs_dir, data_root=args.data_root or 'data',
                      extra=given_settings(args))
    specs = [dict(out=job[job.index('--out') + 1], args=job) for job in jobs]
    records = run_experiment(Path(runs_dir) / table, specs, train_table_run, key=('out',), desc=table,
                             settings=dict(table=table, seeds=list(args.seeds), extra=given_settings(args)),
                             command=['stablesam-train', *argv], **executor_options(args))
    for name, text in summary_files(Path(runs_dir) / table).items(): (Path(runs_dir) / table / name).write_text(text)
    return records


def summary_files(folder) -> dict:
    """`{'results.md': text}` of a table sweep's folder: its run folders tabulated under both protocols."""
    from stablesam.results import PROTOCOLS, load_runs, summarize, table_markdown
    runs = load_runs(folder)
    held_out = all(r['best_val_acc'] is not None for r in runs)
    parts = [f"## {protocol} protocol: {PROTOCOLS[protocol]}\n\n{table_markdown(summarize(runs, protocol=protocol))}"
             for protocol in PROTOCOLS if protocol == 'paper' or held_out]
    return {'results.md': '\n\n'.join(parts) + '\n'}


@command('stablesam-train')
def main(argv=None):
    """The `stablesam-train` command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.sweep and args.executor:
        records = run_table(args.sweep, args, argv)
        print(f"{len(records)} runs of {args.sweep} done; "
              f"stablesam-results {args.out or 'runs'}/{args.sweep} tabulates them")
        return 0
    if args.sweep:
        for c in table_commands(args.sweep, seeds=args.seeds, runs_dir=args.out or 'runs',
                                data_root=args.data_root or 'data', extra=given_settings(args)):
            print(c)
        return 0
    trainer = None
    try:
        cfg = config_from_args(args)
        if args.logger and not cfg.out: raise ValueError("--logger writes into the run folder: give --out")
        logger = [TrainLogger(args.logger, cfg.out, args.log_every)] if args.logger else []
        trainer = Trainer(cfg, callbacks=logger)
        history = trainer.fit()
    except Diverged as e:
        if trainer is not None and trainer.rank > 0: return 3
        print(f'stablesam-train: diverged: {e}', file=sys.stderr)
        return 3
    finally:
        if dist.is_initialized(): dist.destroy_process_group()
    if history and trainer.rank == 0:
        best = max(m['test_acc'] for m in history)
        print(f"done: {len(history)} epochs, final test acc {history[-1]['test_acc']:.4f}, best {best:.4f}"
              + (f", run folder {cfg.out}" if cfg.out else ''))
    return 0


# %%
from stablesam.data import write_fake_cifar, write_fake_mnist
from stablesam.runs import read_jsonl, read_metrics

# %%
root = Path(tempfile.mkdtemp())
write_fake_mnist(root, n_train=512, n_test=256)
write_fake_cifar(root, n_train=256, n_test=128)

# %%
main(['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--optimizer', 'stablesam', '--quick',
      '--out', str(root / 'cli'), '--no-progress'])
test_eq([m['epoch'] for m in read_metrics(root / 'cli')], [1])
test_eq(json.loads((root / 'cli' / 'config.json').read_text())['train_subset'], 256)
test_eq(main(['--model', 'nope', '--quick']), 2)             # argparse: invalid choice
test_eq(main(['--optimizer', 'sam', '--gamma0', '0.5', '--quick']), 2)   # gamma0 needs a renormalizing variant
test_eq(build_parser().parse_args(['--ascent', 'local', '--fsdp']).fsdp, True)
test_eq(main(['--lr', 'fast']), 2)

# %% [markdown]
# ## The paper's runs
#
# Full runs need a GPU and hours each (Table 2: 200 epochs per run); the cell below is what a
# researcher runs (or its commands, spread over machines), skipped by the tests. The quick run next
# to it executes the same code on CPU. A DDP run is `torchrun --nproc_per_node=8 --no-python
# stablesam-train --preset imagenet --model resnet50 --optimizer stablesam --data-root /data/imagenet
# --out runs/r50 --amp bf16`; add `--fsdp` to shard the model with FSDP2, or `--ascent local` for
# per-replica ascent (m-sharpness).

# %%
#| gpu
for table in ('table2', 'table3', 'table4'):  # one process after another here; spread the commands over GPUs instead
    for args in table_runs(table, runs_dir='runs', data_root='data' if table != 'table3' else 'data/imagenet'):
        main(args + ['--amp', 'bf16', '--no-progress'])

# %%
wanted = ('cifar10/resnet20/sgd/seed0', 'cifar10/resnet20/stablesam_rho0.05/seed0')
quick_jobs = [args + ['--quick', '--no-progress', '--train-subset', '64', '--test-subset', '64']
              for args in table_runs('table2', seeds=(0,), runs_dir=root / 'runs', data_root=root)
              if args[5].endswith(wanted)]
for args in quick_jobs: test_eq(main(args), 0)
test_eq(len(quick_jobs), 2)

# %% [markdown]
# The same two runs through the experiment runner, as `--sweep TABLE --executor inline` trains a table (a
# whole table is too large for a quick cell): a finished run is trained again only with a new run folder.

# %%
specs = [dict(out=job[job.index('--out') + 1], args=job) for job in quick_jobs]
swept = run_experiment(root / 'runs' / 'table2', specs, train_table_run, key=('out',), settings={}, progress=False)
test_eq([r['out'] for r in swept], [s['out'] for s in specs])
test_eq([r['epochs'] for r in read_jsonl(root / 'runs' / 'table2' / RECORDS)], [1, 1])
test_eq(given_settings(build_parser().parse_args(['--quick', '--no-augment', '--lr', '0.2', '--out', 'x'])),
        ['--lr', '0.2', '--quick', '--no-augment'])
