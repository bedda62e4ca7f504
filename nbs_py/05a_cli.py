# %%
#| default_exp cli

# %% [markdown]
# # cli
#
# > The `stablesam-train` command: every `TrainConfig` setting as a flag, the paper's presets, and the tables' runs as command lines

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

# %%
#| hide
torch.set_num_threads(1)

# %%
#| export
import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import torch.distributed as dist

from stablesam.config import AMP_MODES, LR_SCHEDULES, NONFINITE, PRESETS, TrainConfig, preset_config
from stablesam.data import DATASETS
from stablesam.models import MODELS
from stablesam.optim import ASCENTS, BASES, OPTIMIZERS
from stablesam.runs import CONFIG, read_json
from stablesam.train import Diverged, Trainer

# %% [markdown]
# ## Sweeps: the tables' grids as commands
#
# `table_runs(table)` lists the runs behind a table: Table 2 is CIFAR-10/100 x five models x SGD, SAM,
# StableSAM, ASAM, StableASAM x the $\rho$ grids $\{0.01, 0.02, 0.05, 0.1, 0.2\}$ (SAM, StableSAM) and
# $\{0.1, 0.2, 0.5, 1, 2\}$ (ASAM, StableASAM) x three seeds; Table 3 the four ImageNet models x the
# five optimizers at the fixed $\rho$; Table 4 the noise levels x ResNet-56, WRN-28-10 x SAM,
# StableSAM at $\rho = 0.05$. Each job is a `stablesam-train` command line with its own run folder
# and `--resume`, so a job list can be rerun after a preemption and finished runs cost nothing.
# `stablesam-train --sweep table2` prints the commands, one a line (for `xargs`, a SLURM array or a
# job queue).

# %%
#| export
TABLE2_MODELS = ('resnet20', 'resnet56', 'resnext29_32x4d', 'wrn28_10', 'pyramidnet110')
RHO_GRID = dict(sam=(0.01, 0.02, 0.05, 0.1, 0.2), asam=(0.1, 0.2, 0.5, 1.0, 2.0))
TABLE_OPTIMIZERS = ('sgd', 'sam', 'stablesam', 'asam', 'stableasam')
TABLES = ('table2', 'table3', 'table4')

def _rho_tag(rho): return f'{rho:g}'

def table_runs(table, seeds=(0, 1, 2), runs_dir='runs', data_root='data', extra=()):
    """The runs of `table` ('table2', 'table3', 'table4') as a list of `stablesam-train` argument lists."""
    if table not in TABLES: raise ValueError(f"Unknown table: {table!r} (choose from {', '.join(TABLES)})")
    jobs = []
    def add(preset, out, **s):
        args = ['--preset', preset, '--data-root', str(data_root), '--out', str(Path(runs_dir, table, out)), '--resume']
        for k, v in s.items(): args += [f"--{k.replace('_', '-')}", str(v)]
        jobs.append(args + list(extra))
    for seed in seeds:
        if table == 'table2':
            for ds in ('cifar10', 'cifar100'):
                for model in TABLE2_MODELS:
                    for opt in TABLE_OPTIMIZERS:
                        for rho in (None,) if opt == 'sgd' else RHO_GRID['asam' if 'asam' in opt else 'sam']:
                            tag = opt if rho is None else f'{opt}_rho{_rho_tag(rho)}'
                            add('cifar', f'{ds}/{model}/{tag}/seed{seed}', dataset=ds, model=model, optimizer=opt,
                                **({} if rho is None else dict(rho=rho)), seed=seed)
        elif table == 'table3':
            for model in ('resnet50', 'resnet101', 'resnet152', 'vit_s32'):
                for opt in TABLE_OPTIMIZERS:
                    add('imagenet-vit' if model == 'vit_s32' else 'imagenet', f'{model}/{opt}/seed{seed}',
                        model=model, optimizer=opt, seed=seed)
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
_HELP = dict(
    dataset=f"dataset: {', '.join(DATASETS)} (imagenet: an ImageFolder tree with train/ and val/ under --data-root)",
    data_root="folder holding the datasets (torchvision downloads MNIST/CIFAR there on first use)",
    model=f"network: {', '.join(MODELS)}",
    optimizer=f"optimizer: {', '.join(OPTIMIZERS)} (sgd: the base optimizer alone)",
    base=f"base optimizer of the SAM family: {', '.join(BASES)} (sgd has momentum --momentum)",
    rho="perturbation radius rho of the SAM family",
    lr="peak learning rate",
    momentum="SGD momentum",
    epochs="number of training epochs",
    batch_size="global mini-batch size (split over the processes under torchrun)",
    weight_decay="weight decay (decoupled for AdamW)",
    label_smoothing="label smoothing factor of the training loss",
    label_noise="fraction of training labels randomised (Table 4), exactly that fraction, seeded by --seed",
    schedule=f"learning-rate schedule: {', '.join(LR_SCHEDULES)} (cosine: per-step decay to 0)",
    seed="random seed: model initialisation, data order, augmentation, label noise, subsets",
    out="run folder for config.json, metrics.jsonl and checkpoint.pt (none: nothing is written)",
    resume="continue the run in --out from its checkpoint (starts it if there is none yet)",
    amp=f"mixed precision: {', '.join(AMP_MODES)} (fp16 with a GradScaler; GPU)",
    quick="the same code path on a tiny subset: one epoch, 256 train / 256 test examples, batch <= 64",
    train_subset="train on a seeded random subset of this many examples",
    test_subset="evaluate on a seeded random subset of this many test examples",
    val_split="hold this many training examples out (seeded) as a validation split, evaluated every epoch "
              "(val_loss, val_acc: the held-out protocol of stablesam-results --protocol held-out)",
    augment="data augmentation of the training set (--no-augment: evaluation transform only)",
    bn_first_pass="keep BatchNorm statistics from the first pass only in SAM steps (--no-bn-first-pass to update in both)",
    ascent=f"SAM ascent under torchrun: {', '.join(ASCENTS)} (global: Algorithm 1 on the global batch, equals one "
           "process; local: per-replica ascent and renormalization, then the average, m-sharpness)",
    fsdp="shard the model with FSDP2 (fully_shard) instead of DistributedDataParallel; needs torchrun, "
         "--ascent global and no --amp fp16; checkpoints hold the gathered full state, at epoch ends only",
    gamma0="Stable variants: clamp the renormalization factor to [gamma0, sqrt(gamma0)] (Remark 19)",
    renorm_norm="Stable variants: 'plain' (||g||/||g_asc||) or 'adaptive' (the authors' StableASAM)",
    workers="data loader worker processes (default: 8 on GPU, 0 on CPU)",
    device="device: auto, cpu, cuda, cuda:N",
    download="download missing MNIST/CIFAR data (--no-download: fail with a message instead)",
    progress="show a progress bar and per-epoch lines (--no-progress for logs)",
    in_memory="decode MNIST/CIFAR once into tensors on the device and augment there in batches "
              "(--no-in-memory: a DataLoader with per-image transforms, as for ImageNet folders)",
    checkpoint_every="seconds between checkpoints within an epoch (0: at epoch ends only); a killed run loses at most that",
    on_nonfinite=f"a non-finite loss or gradient: {' or '.join(NONFINITE)} (stop: exit status 3, the last good checkpoint "
                 "kept; skip: the step is skipped and counted in skipped_steps; with --amp fp16 the GradScaler skips "
                 "overflowing gradients itself)",
)

def build_parser():
    """The argument parser of `stablesam-train`."""
    ap = argparse.ArgumentParser(prog='stablesam-train', description='Train an image classifier with SGD or a SAM '
        'variant (StableSAM: Algorithm 1 of the paper), writing a run folder.')
    ap.add_argument('--preset', choices=list(PRESETS), default=None,
                    help='the paper\'s hyperparameters: ' + '; '.join(f"{k}: {v['help']}" for k, v in PRESETS.items()))
    ap.add_argument('--sweep', choices=TABLES, default=None, help='print the commands of a table\'s runs (--seeds, --out '
                    'as the runs folder, --data-root) one a line, and exit')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='seeds of --sweep (default: 0 1 2)')
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_HELP[f.name])
            continue
        conv = next(c for c in (int, float, str) if f.type is c or c in getattr(f.type, '__args__', ()))
        ap.add_argument(flag, type=_number(conv, f.name), default=None, metavar=f.name.upper(),
                        help=_HELP[f.name] + f' (default: {f.default})')
    return ap

def _number(conv, name):
    def parse(s):
        try: return conv(s)
        except ValueError: raise argparse.ArgumentTypeError(f"invalid {name}: {s!r}")
    return parse


# %% [markdown]
# `main` runs the command: invalid settings, missing data and run-folder conflicts end with a one-line
# error and exit status 2 (under torchrun the exception propagates, so that every process stops).

# %%
#| export
def config_from_args(args):
    """The TrainConfig for parsed `stablesam-train` arguments."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    saved = Path(given['out']) / CONFIG if given.get('out') and given.get('resume') else None
    if saved is not None and saved.exists():
        d = read_json(saved)
        base = {f.name: d[f.name] for f in dataclasses.fields(TrainConfig) if f.name in d}
        return TrainConfig.from_dict({**base, **given})
    return preset_config(args.preset, **given)

def main(argv=None):
    """The `stablesam-train` command line."""
    args = build_parser().parse_args(argv)
    if args.sweep:
        for c in table_commands(args.sweep, seeds=args.seeds, runs_dir=args.out or 'runs', data_root=args.data_root or 'data'):
            print(c)
        return 0
    try:
        cfg = config_from_args(args)
        trainer = Trainer(cfg)
        history = trainer.fit()
    except Diverged as e:
        if int(os.environ.get('WORLD_SIZE', '1')) > 1 and trainer.rank > 0: return 3
        print(f'stablesam-train: diverged: {e}', file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        if int(os.environ.get('WORLD_SIZE', '1')) > 1: raise
        print(f'stablesam-train: error: {e}', file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized(): dist.destroy_process_group()
    if history and trainer.rank == 0:
        best = max(m['test_acc'] for m in history)
        print(f"done: {len(history)} epochs, final test acc {history[-1]['test_acc']:.4f}, best {best:.4f}"
              + (f", run folder {cfg.out}" if cfg.out else ''))
    return 0


# %%
from stablesam.data import write_fake_cifar, write_fake_mnist
from stablesam.runs import read_metrics

# %%
root = Path(tempfile.mkdtemp())
write_fake_mnist(root, n_train=512, n_test=256); write_fake_cifar(root, n_train=256, n_test=128)

# %%
main(['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--optimizer', 'stablesam', '--quick',
      '--out', str(root / 'cli'), '--no-progress'])
test_eq([m['epoch'] for m in read_metrics(root / 'cli')], [1])
test_eq(json.loads((root / 'cli' / 'config.json').read_text())['train_subset'], 256)
test_eq(main(['--model', 'nope', '--quick']), 2)
test_eq(main(['--ascent', 'mixed', '--quick']), 2)
test_eq(build_parser().parse_args(['--ascent', 'local', '--fsdp']).fsdp, True)
try: main(['--lr', 'fast']); raise AssertionError('no error')
except SystemExit as e: test_eq(e.code, 2)

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
              for args in table_runs('table2', seeds=(0,), runs_dir=root / 'runs', data_root=root) if args[5].endswith(wanted)]
for args in quick_jobs: test_eq(main(args), 0)
test_eq(len(quick_jobs), 2)
