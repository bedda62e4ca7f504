# %%
#| default_exp train

# %% [markdown]
# # train
#
# > The training loop of Sections 5.3-5.4: SGD and the SAM family with the paper's recipes (Tables 2-4), run folders with exact resume, mixed precision, DistributedDataParallel, and the `stablesam-train` CLI

# %% [markdown]
# Section 5.3 trains image classifiers from scratch: on CIFAR-10/100 with SGD (momentum 0.9), a
# cosine learning-rate decay, label smoothing 0.1, batch 128 for 200 epochs, sweeping only the
# perturbation radius $\rho$; on ImageNet-1k for 90 (ResNets, SGD) or 300 (ViT-S/32, AdamW) epochs.
# Section 5.4 repeats the CIFAR-10 recipe with a fraction of the training labels randomised. One
# `Trainer` runs all of them, from a `TrainConfig` that records every setting; the very same code
# runs a quick configuration on a CPU in seconds (what the tests and this page execute) and the
# paper's configuration on GPUs.
#
# Each SAM-family step is Algorithm 1 through `stablesam.optim`: the first forward-backward pass
# gives $g$ at $w$, `first_step` moves to $w + e$, the second pass (on the same batch, with BatchNorm
# statistics left as the first pass set them) gives $g^{asc}$, and `second_step` restores $w$,
# renormalizes (Stable variants: $g^{asc} \cdot \|g\|/\|g^{asc}\|$) and lets the base optimizer step.

# %%
#| hide
from fastcore.test import *
import tempfile
from pathlib import Path
import matplotlib.pyplot as plt
import torch

# %%
#| hide
plt.rcParams['figure.dpi'] = 72
torch.set_num_threads(1)  # the tests share a small machine; one thread per notebook avoids oversubscription

# %%
#| export
import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from stablesam.data import DATASETS, EpochSampler, SeededAugment, decode, get_datasets, loader_kwargs
from stablesam.models import MODELS, get_model
from stablesam.optim import BASES, OPTIMIZERS, first_pass_no_sync, freeze_bn_stats, global_norm, is_sam, make_optimizer

# %% [markdown]
# ## Configuration
#
# Every setting of a run, recorded in its `config.json`. `quick=True` keeps every setting but trains
# one epoch on a small seeded subset (256 training and 256 test examples, batch at most 64): the same
# code path, smaller.

# %%
#| export
AMP_MODES = ('none', 'bf16', 'fp16')
SCHEDULES = ('cosine', 'constant')
NONFINITE = ('stop', 'skip')  # what a non-finite loss or gradient does: stop the run (exit status 3), or skip the step

@dataclass
class TrainConfig:
    """Every setting of a training run (defaults: the CIFAR recipe of Table 2 with plain SGD)."""
    dataset: str = 'cifar10'
    data_root: str = 'data'
    model: str = 'resnet20'
    optimizer: str = 'sgd'
    base: str = 'sgd'
    rho: float = 0.05
    lr: float = 0.1
    momentum: float = 0.9
    epochs: int = 200
    batch_size: int = 128
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    label_noise: float = 0.0
    schedule: str = 'cosine'
    seed: int = 0
    out: str | None = None
    resume: bool = False
    amp: str = 'none'
    quick: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = True
    bn_first_pass: bool = True
    gamma0: float | None = None
    renorm_norm: str = 'plain'
    workers: int | None = None
    device: str = 'auto'
    download: bool = True
    progress: bool = True
    in_memory: bool = True
    checkpoint_every: float = 600.0
    on_nonfinite: str = 'stop'

    def to_dict(self):
        """All settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """A config from `to_dict()` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown: raise ValueError(f"Unknown TrainConfig settings: {unknown}")
        return cls(**d)

    def validate(self):
        """Raise a ValueError naming the first invalid setting."""
        for key, choices in (('dataset', DATASETS), ('model', MODELS), ('optimizer', OPTIMIZERS), ('base', BASES),
                             ('schedule', SCHEDULES), ('amp', AMP_MODES), ('on_nonfinite', NONFINITE)):
            if getattr(self, key) not in choices:
                raise ValueError(f"Unknown {key}: {getattr(self, key)!r} (choose from {', '.join(choices)})")
        for key in ('rho', 'lr', 'momentum', 'weight_decay'):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0): raise ValueError(f"Invalid {key}: {v}")
        for key in ('epochs', 'batch_size'):
            v = getattr(self, key)
            if not (isinstance(v, int) and v >= 1): raise ValueError(f"Invalid {key}: {v} (a positive integer)")
        for key in ('train_subset', 'test_subset'):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, int) and v >= 1): raise ValueError(f"Invalid {key}: {v}")
        if not 0 <= self.label_smoothing < 1: raise ValueError(f"Invalid label_smoothing: {self.label_smoothing} (must be in [0, 1))")
        if not 0 <= self.label_noise <= 1: raise ValueError(f"Invalid label_noise: {self.label_noise} (must be in [0, 1])")
        if self.workers is not None and self.workers < 0: raise ValueError(f"Invalid workers: {self.workers}")
        v = self.checkpoint_every
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"Invalid checkpoint_every: {v} (seconds between checkpoints within an epoch; 0: epoch ends only)")
        return self

    def resolved(self):
        """This config with `quick` applied (one epoch on 256 examples, batch at most 64)."""
        if not self.quick: return self
        sub = lambda n: 256 if n is None else min(n, 256)
        return dataclasses.replace(self, epochs=1, train_subset=sub(self.train_subset), test_subset=sub(self.test_subset),
                                   batch_size=min(self.batch_size, 64))


# %%
cfg = TrainConfig(optimizer='stablesam', quick=True)
test_eq(TrainConfig.from_dict(cfg.to_dict()), cfg)
test_eq((cfg.resolved().epochs, cfg.resolved().train_subset, cfg.resolved().batch_size), (1, 256, 64))
test_fail(lambda: TrainConfig(model='resnet21').validate(), contains="Unknown model: 'resnet21' (choose from fcn")
test_fail(lambda: TrainConfig(lr=float('nan')).validate(), contains='Invalid lr: nan')
test_fail(lambda: TrainConfig(batch_size=0).validate(), contains='Invalid batch_size: 0')
test_fail(lambda: TrainConfig.from_dict({'rh0': 1}), contains="['rh0']")


# %% [markdown]
# ## Devices, processes and mixed precision
#
# Under `torchrun` (environment variable `WORLD_SIZE` > 1) each process joins the process group
# (NCCL on GPUs, gloo on CPUs), uses GPU `LOCAL_RANK`, and takes `batch_size / world_size` examples
# of each global batch. The model is wrapped in `DistributedDataParallel`; the first pass of a SAM
# step runs under `first_pass_no_sync`, so each replica perturbs the weights with its own gradient
# (the "m-sharpness" of the SAM paper with m the per-replica batch) and only the second pass's
# gradients are averaged.
#
# Mixed precision: `bf16` autocast needs no loss scaling; `fp16` uses `torch.amp.GradScaler` as
# `stablesam.optim` documents it: the scaled loss is backpropagated in both passes, `first_step` and
# `second_step` receive the scaler (the ascent direction and the renormalization factor are scale
# invariant, and a step with a non-finite gradient is skipped with the weights restored), then
# `scaler.update()`.

# %%
#| export
def dist_info():
    """(rank, local_rank, world_size) of this process, joining the process group under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1: return 0, 0, 1
    local = int(os.environ.get('LOCAL_RANK', '0'))
    if not dist.is_initialized():
        backend = 'nccl' if torch.cuda.is_available() and os.environ.get('STABLESAM_BACKEND', 'nccl') == 'nccl' else 'gloo'
        if backend == 'nccl': torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist.get_rank(), local, dist.get_world_size()

def resolve_device(device='auto', local_rank=0):
    """`device` as a torch.device; 'auto' is the GPU of this process when there is one, else the CPU."""
    if device == 'auto': device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda': device = f'cuda:{local_rank}'
    return torch.device(device)

def _autocast(device, amp):
    if amp == 'none': return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


# %% [markdown]
# ## Run folders
#
# A run folder holds `config.json` (every setting, the package versions, the device), `metrics.jsonl`
# (one JSON object per epoch) and `checkpoint.pt`. The checkpoint is written atomically (temporary
# file, then rename), holds everything `--resume` needs (model, optimizer with its momentum or Adam
# moments, loss scaler, epoch, step, the metrics so far) and is read with `weights_only=True`, so a
# checkpoint copied from elsewhere can never run code. `metrics.jsonl` is rewritten from the
# checkpoint's history, so the two always agree.

# %%
#| export
CHECKPOINT, PREVIOUS = 'checkpoint.pt', 'checkpoint.prev.pt'  # the latest checkpoint and the one before it
EVAL_BATCH = 1024  # evaluation batch of in-memory datasets (no autograd, so large batches are cheap)
_FORMAT = 'stablesam-checkpoint'
# settings that may differ between a run and its resumption (they do not change the results)
_RESUMABLE = ('out', 'resume', 'workers', 'device', 'download', 'progress', 'data_root', 'in_memory', 'checkpoint_every',
              'on_nonfinite')

def _atomic_write(path, write):
    """Call `write(tmp_path)`, flush the file to disk, then rename it onto `path`."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb') as f: os.fsync(f.fileno())  # a machine that stops right after the rename keeps the file
        os.replace(tmp, path)
    finally:
        if tmp.exists(): tmp.unlink()

def save_checkpoint(path, state, previous=None):
    """Save `state` to `path` atomically once it reads back; with `previous`, the checkpoint it replaces is kept there."""
    path = Path(path)
    def write(tmp):
        torch.save(state, tmp)
        _read(tmp)  # read back: a file that does not load never replaces a good checkpoint
        if previous is not None and path.exists(): os.replace(path, previous)
    _atomic_write(path, write)

def _settings_diff(saved, cfg):
    """How `cfg` differs from the settings `saved` in a checkpoint, in the ways that forbid resuming (empty if none)."""
    now = cfg.to_dict()
    diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in now
            if k not in _RESUMABLE + ('epochs',) and saved.get(k) != now[k]]
    if saved.get('epochs') != now['epochs']:
        if now['schedule'] != 'constant':
            diff.append(f"epochs: {saved.get('epochs')!r} in the checkpoint, {now['epochs']!r} now (the {now['schedule']} "
                        "schedule would change: its learning rate at every step depends on the number of epochs)")
        elif now['epochs'] < saved.get('epochs', 0):
            diff.append(f"epochs: {saved.get('epochs')!r} in the checkpoint, {now['epochs']!r} now (a run is extended, never shortened)")
    return diff

def _read(path):
    """`torch.load` with `weights_only=True` (a checkpoint never runs code); any failure is a RuntimeError naming the file."""
    try: return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        size = f'{Path(path).stat().st_size} bytes' if Path(path).exists() else 'missing'
        why = (str(e).splitlines() or [''])[0]
        if 'Weights only load failed' in why:
            why = 'not a file of plain tensors (damaged, or holding objects whose loading could run code: never loaded)'
        raise RuntimeError(f"Cannot read checkpoint {path} ({size}): {type(e).__name__}: {why}") from e

def load_checkpoint(path, cfg=None):
    """Read a checkpoint safely (`weights_only=True`); if `cfg` is given, check it was written by the same run settings."""
    path = Path(path)
    state = _read(path)
    if not isinstance(state, dict) or state.get('format') != _FORMAT:
        raise RuntimeError(f"Checkpoint {path} is not a stablesam training checkpoint")
    diff = _settings_diff(state['config'], cfg) if cfg is not None else []
    if diff: raise ValueError(f"Checkpoint {path} was written by a run with other settings: " + '; '.join(diff))
    return state

def latest_checkpoint(run_dir, cfg=None):
    """`(state, path)` of the newest checkpoint in `run_dir` that loads (`(None, None)` if there is none)."""
    latest, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    if not (latest.exists() or previous.exists()): return None, None
    try: return load_checkpoint(latest, cfg), latest
    except RuntimeError as e:
        if not previous.exists(): raise
        warnings.warn(f"The latest checkpoint {latest} does not load ({e}); resuming from the previous one, {previous}")
        return load_checkpoint(previous, cfg), previous

def _why(x): return 'nan' if x != x else ('inf' if x > 0 else '-inf')

def _strict(obj, path, bad):
    if isinstance(obj, float) and not math.isfinite(obj): bad[path] = _why(obj); return None
    if isinstance(obj, dict): return {k: _strict(v, f'{path}.{k}' if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)): return [_strict(v, f'{path}[{i}]', bad) for i, v in enumerate(obj)]
    return obj

def strict_json(obj):
    """`obj` with every NaN or infinity replaced by None, and a dict's `nonfinite` field naming each ('nan', 'inf', '-inf')."""
    bad = {}
    out = _strict(obj, '', bad)
    if bad and isinstance(out, dict): out['nonfinite'] = dict(out.get('nonfinite') or {}, **bad)
    return out

def _dumps(obj, **kw): return json.dumps(strict_json(obj), allow_nan=False, **kw)

def write_json(path, obj):
    """Write `obj` as indented strict JSON (no NaN or Infinity tokens: see `strict_json`), atomically."""
    _atomic_write(path, lambda tmp: Path(tmp).write_text(_dumps(obj, indent=2) + '\n'))

def append_jsonl(path, record):
    """Append `record` as one strict JSON line to `path` (a long run that stops keeps what it wrote)."""
    with open(path, 'a') as f: f.write(_dumps(record) + '\n')

def write_jsonl(path, records):
    """Write `records` as a strict JSON-lines file, atomically (replaces what was there)."""
    _atomic_write(path, lambda tmp: Path(tmp).write_text(''.join(_dumps(r) + '\n' for r in records)))

def read_json(path):
    """The object in a JSON file; a damaged file is a ValueError naming it, the line and the column."""
    try: return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e: raise ValueError(f"Damaged {path}: {e.msg} at line {e.lineno}, column {e.colno}") from e

def read_jsonl(path, torn_tail=False):
    """The JSON objects of a JSON-lines file, one per non-empty line; a damaged line is a ValueError naming the file and line.

    With `torn_tail`, a last line cut short (no newline: a writer killed while appending) is dropped with a warning."""
    with open(path) as f: lines = f.readlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip(): continue
        try: out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if torn_tail and n == len(lines) and not line.endswith('\n'):
                warnings.warn(f"Dropped the last line of {path} (line {n}), cut short by a writer that stopped"); break
            raise ValueError(f"Damaged {path}, line {n}: {e.msg} (column {e.colno}) in {line.strip()[:60]!r}") from e
    return out

def read_metrics(run_dir):
    """The per-epoch metrics of a run folder (list of dicts)."""
    p = Path(run_dir) / 'metrics.jsonl'
    return read_jsonl(p) if p.exists() else []

def _versions():
    import torchvision
    from importlib.metadata import version, PackageNotFoundError
    v = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__)
    for pkg in ('stablesam', 'pytorchcv', 'numpy'):
        try: v[pkg] = version(pkg)
        except PackageNotFoundError: v[pkg] = None
    return v


# %%
tmp = Path(tempfile.mkdtemp())
save_checkpoint(tmp / 'c.pt', {'format': _FORMAT, 'config': TrainConfig().to_dict(), 'x': torch.ones(2)})
test_eq(load_checkpoint(tmp / 'c.pt', TrainConfig(out='elsewhere'))['x'], torch.ones(2))
test_fail(lambda: load_checkpoint(tmp / 'c.pt', TrainConfig(lr=0.2)), contains="lr: 0.1 in the checkpoint, 0.2 now")
(tmp / 'bad.pt').write_bytes(b'not a checkpoint')
test_fail(lambda: load_checkpoint(tmp / 'bad.pt'), contains=f'Cannot read checkpoint {tmp}/bad.pt')
test_eq(sorted(p.name for p in tmp.iterdir()), ['bad.pt', 'c.pt'])  # no temporary file left

# %% [markdown]
# ## The trainer
#
# Model initialisation and the order in which training examples are visited depend on `cfg.seed`
# alone (`stablesam.data.EpochSampler`, `SeededAugment`): two trainers with the same seed and
# training sets of the same size start from the same weights and see the same indices, in the same
# order, with the same augmentation; this is what the stability experiment (Section 5.2) needs when
# it trains on two neighbouring training sets.
#
# Callbacks are objects with any of `before_fit(trainer)`, `after_step(trainer)` (may read
# `trainer.optimizer.last_stats`, tensors on the device: accumulate them there, no `.item()`) and
# `after_epoch(trainer, metrics)` (may add keys to `metrics` before it is written).
#
# Per epoch the trainer reports `train_loss` and `train_acc` (averaged over the epoch's batches, as
# the model was when it saw them), `test_loss`, `test_acc`, the learning rate of the last step, the
# epoch's wall time and throughput, and for the SAM family the mean of $\|g\|/\|g^{asc}\|$
# (`norm_ratio`) and, for the Stable variants, the mean renormalization factor actually applied
# (`renorm_factor`). Everything is summed on the device and read once per epoch.

# %%
#| export
DIVERGED = 'diverged.json'  # written into the run folder by a run that stopped on a non-finite loss or gradient

class Diverged(RuntimeError):
    """A non-finite loss or gradient stopped the run (`stablesam-train` exits with status 3)."""
    def __init__(self, epoch, step, position, lr, checkpoint):
        self.epoch, self.step, self.position, self.lr, self.checkpoint = epoch, step, position, lr, checkpoint
        then = (f"Last good checkpoint: {checkpoint} (kept; --resume continues from it, with --on-nonfinite skip to skip "
                "such steps)" if isinstance(checkpoint, Path) else f"No checkpoint to resume from ({checkpoint})")
        super().__init__(f"non-finite loss or gradient at epoch {epoch}, step {step} (batch {position} of the epoch), "
                         f"lr {lr:g}: training stopped. {then}")
    def record(self):
        """The divergence as a JSON-ready dict (what a sweep records as the run's outcome)."""
        return dict(outcome='diverged', epoch=self.epoch, step=self.step, batch=self.position, lr=self.lr,
                    checkpoint=str(self.checkpoint) if isinstance(self.checkpoint, Path) else None, message=str(self))


# %%
#| export
class Trainer:
    """Train `cfg.model` on `cfg.dataset` with `cfg.optimizer`; `fit()` runs all epochs and writes the run folder."""
    def __init__(self, cfg, *, data=None, model=None, callbacks=()):
        self.cfg = cfg = cfg.resolved().validate()
        self.rank, self.local_rank, self.world_size = dist_info()
        self.device = resolve_device(cfg.device, self.local_rank)
        if cfg.batch_size % self.world_size:
            raise ValueError(f"Invalid batch_size: {cfg.batch_size} is not divisible by the {self.world_size} processes")
        self.data = data if data is not None else self._load_data()
        if cfg.test_subset is not None and cfg.test_subset < len(self.data.test):
            g = torch.Generator().manual_seed(cfg.seed)
            self.data = dataclasses.replace(self.data, test=Subset(self.data.test, torch.randperm(len(self.data.test), generator=g)[:cfg.test_subset].tolist()))
        torch.manual_seed(cfg.seed)
        if model is None: model = get_model(cfg.model, self.data.num_classes, self.data.in_channels, self.data.image_size)
        self.model = model.to(self.device)
        if self.device.type == 'cuda': torch.backends.cudnn.benchmark = True
        self.net = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        extra = dict(gamma0=cfg.gamma0, renorm_norm=cfg.renorm_norm) if cfg.optimizer.startswith('stable') else {}
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), base=cfg.base, lr=cfg.lr,
                                        momentum=cfg.momentum, weight_decay=cfg.weight_decay, rho=cfg.rho, **extra)
        self.sam = is_sam(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == 'fp16' else None
        self.callbacks = list(callbacks)
        self.sampler = EpochSampler(len(self.data.train), cfg.seed, self.rank, self.world_size)
        self.loader_kwargs = loader_kwargs(self.device, cfg.workers)
        self.train_loader = DataLoader(SeededAugment(self.data.train, cfg.seed), batch_size=cfg.batch_size // self.world_size,
                                       sampler=self.sampler, generator=torch.Generator(), **self.loader_kwargs)
        self.train_tensors = self._to_device(decode(self.data.train)) if self.in_memory(train=True) else None
        self.epoch, self.step, self.history, self._eval_loaders = 0, 0, [], {}
        self.position, self._sums = 0, None     # batches done in the current epoch and its running sums (mid-epoch)
        self._pending, self._saved_at, self.checkpoint_path = None, time.perf_counter(), None
        self.total_steps = cfg.epochs * len(self.train_loader)
        self.out = Path(cfg.out) if cfg.out and self.rank == 0 else None

    def _load_data(self):
        """The configured datasets; under torchrun rank 0 loads (and downloads) first, the others after it."""
        cfg = self.cfg
        get = lambda download: get_datasets(cfg.dataset, cfg.data_root, train_subset=cfg.train_subset, seed=cfg.seed,
                                            label_noise=cfg.label_noise, augment=cfg.augment, download=download)
        if self.world_size == 1: return get(cfg.download)
        data = get(cfg.download) if self.rank == 0 else None
        dist.barrier()
        return data if data is not None else get(False)

    def lr_at(self, step):
        """The learning rate at global step `step` (cosine decay to 0 over all steps, or constant)."""
        if self.cfg.schedule == 'constant': return self.cfg.lr
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * min(step, self.total_steps) / max(1, self.total_steps)))

    def _loss(self, out, y):
        return F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _backward(self, loss):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _finite(self, loss):
        """A device bool: `loss` and the gradients are finite (with a GradScaler the gradients are its to check and skip)."""
        ok = torch.isfinite(loss.detach())
        if self.scaler is None:
            ok = ok & torch.isfinite(global_norm([p.grad for p in self.model.parameters() if p.grad is not None], self.device))
        if self.cfg.on_nonfinite == 'skip' and self.world_size > 1:  # every process skips the same steps
            ok = ok.to(torch.int32); dist.all_reduce(ok, op=dist.ReduceOp.MIN); ok = ok.bool()
        return ok

    def _skip(self):
        """Drop a non-finite step's gradients (the weights are as before it; the schedule moves on)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def train_step(self, x, y):
        """One optimizer step on batch (x, y); returns the first pass's outputs and loss (device tensors), or None if skipped."""
        self.check_finite()
        opt, net, amp, skip = self.optimizer, self.net, self.cfg.amp, self.cfg.on_nonfinite == 'skip'
        lr = self.lr_at(self.step)
        for g in opt.param_groups: g['lr'] = lr
        opt.zero_grad(set_to_none=True)
        if self.sam:
            with first_pass_no_sync(net):
                with _autocast(self.device, amp): out = net(x); loss = self._loss(out, y)
                self._backward(loss)
            ok = self._finite(loss)
            if skip and not ok: return self._skip()   # skip mode: one host sync per pass
            opt.first_step(zero_grad=True, grad_scaler=self.scaler)
            with freeze_bn_stats(self.model) if self.cfg.bn_first_pass else nullcontext():
                with _autocast(self.device, amp): loss2 = self._loss(net(x), y)
                self._backward(loss2)
            if self.scaler is None:  # with a scaler, a non-finite ascent (from overflowing gradients) is its to skip
                ok = ok & self._finite(loss2)
                if skip and not ok: opt.unperturb(); return self._skip()
            opt.second_step(zero_grad=True, grad_scaler=self.scaler)
        else:
            with _autocast(self.device, amp): out = net(x); loss = self._loss(out, y)
            self._backward(loss)
            ok = self._finite(loss)
            if skip and not ok: return self._skip()
            if self.scaler is not None: self.scaler.step(opt)
            else: opt.step()
        if self.scaler is not None: self.scaler.update()
        self._pending = ok, self.epoch + 1, self.position + 1, self.step + 1, lr  # checked at the next step: no host sync here
        self.step += 1
        return out.detach(), loss.detach()

    def check_finite(self):
        """Raise `Diverged` if the last step had a non-finite loss or gradient (stop mode checks one step late, without a sync of its own)."""
        if self._pending is None: return
        (ok, epoch, position, step, lr), self._pending = self._pending, None
        if self.world_size > 1:
            ok = ok.to(torch.int32); dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not bool(ok):
            where = self.checkpoint_path or ('no run folder: out is not set' if self.cfg.out is None else 'none written yet')
            raise Diverged(epoch, step, position, lr, where)

    def in_memory(self, train=False):
        """Whether batches come from tensors decoded once: datasets that fit in memory, items without random augmentation."""
        cfg = self.cfg
        random_items = train and cfg.augment and cfg.dataset != 'mnist'  # MNIST has no augmentation
        return cfg.in_memory and cfg.dataset != 'imagenet' and not random_items

    def _to_device(self, tensors):
        return tuple(t.to(self.device) for t in tensors)

    def batches(self, start=0):
        """This epoch's training batches from batch `start` on, on the device, in `EpochSampler` order (in-memory slices or the DataLoader's)."""
        size = self.train_loader.batch_size
        if self.train_tensors is None:
            nb, loader = self.loader_kwargs['pin_memory'], self.train_loader
            if start:  # resumed mid-epoch: a loader over the rest of the epoch's keys (augmentation is seeded per key)
                loader = DataLoader(loader.dataset, batch_size=size, sampler=list(self.sampler)[start * size:],
                                    generator=torch.Generator(), **dict(self.loader_kwargs, persistent_workers=False))
            for x, y in loader: yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)
            return
        (x, y), order = self.train_tensors, self.sampler.order().to(self.device)
        for idx in order.split(size)[start:]: yield x[idx], y[idx]

    def _reduce(self, *tensors):
        """Sum device tensors over processes and return them as Python floats (one host sync)."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in tensors])
        if self.world_size > 1: dist.all_reduce(t)
        return t.tolist()

    def _new_sums(self):
        """Zero running sums of an epoch: device tensors (read once, at its end), step counts and seconds."""
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self.device)
        return dict(loss=zero(), correct=zero(), count=zero(), factor=zero(), ratio=zero(), steps=0, skipped=0, time=0.0)

    def _checkpoint_due(self):
        """Whether `checkpoint_every` seconds have passed since the last checkpoint (one process only: epoch ends under DDP)."""
        every = self.cfg.checkpoint_every
        return self.out is not None and self.world_size == 1 and every > 0 and time.perf_counter() - self._saved_at >= every

    def train_epoch(self):
        """Train the (rest of the) epoch; returns its training metrics (loss, accuracy, lr, time, throughput, SAM statistics)."""
        self.net.train()
        self.sampler.set_epoch(self.epoch)
        if self._sums is None: self._sums = self._new_sums()
        sums, n = self._sums, len(self.train_loader)
        bar = tqdm(total=n, initial=self.position, desc=f'epoch {self.epoch + 1}/{self.cfg.epochs}', leave=False,
                   disable=not (self.cfg.progress and self.rank == 0), dynamic_ncols=True)
        t0 = last = time.perf_counter(); before = sums['time']
        for x, y in self.batches(self.position):
            res = self.train_step(x, y)
            self.position += 1
            if res is None: sums['skipped'] += 1
            else:
                out, loss = res
                sums['loss'] += loss.double() * len(y); sums['correct'] += (out.argmax(1) == y).sum(); sums['count'] += len(y)
                sums['steps'] += 1
                if self.sam:
                    stats = self.optimizer.last_stats
                    sums['factor'] += stats['renorm_factor'].double(); sums['ratio'] += stats['norm_ratio'].double()
            for cb in self.callbacks:
                if hasattr(cb, 'after_step'): cb.after_step(self)
            sums['time'] = before + time.perf_counter() - t0
            if self.position < n and self._checkpoint_due(): self._save()
            bar.update()
            if not bar.disable and time.perf_counter() - last > 1:  # at most one host sync a second
                last, c = time.perf_counter(), max(sums['count'].item(), 1)
                bar.set_postfix(loss=f"{sums['loss'].item() / c:.3f}", acc=f"{sums['correct'].item() / c:.3f}",
                                img_s=f"{c * self.world_size / max(sums['time'], 1e-9):.0f}")
        self.check_finite()
        bar.close()
        self.epoch, self.position, self._sums = self.epoch + 1, 0, None
        loss_sum, correct, count, factor_sum, ratio_sum = self._reduce(*(sums[k] for k in ('loss', 'correct', 'count', 'factor', 'ratio')))
        m = dict(train_loss=loss_sum / count if count else None, train_acc=correct / count if count else None,
                 lr=self.optimizer.param_groups[0]['lr'], time=sums['time'], images_per_s=count / max(sums['time'], 1e-9))
        if self.sam:
            m['norm_ratio'] = ratio_sum / self.world_size / max(sums['steps'], 1)
            if self.optimizer.stable: m['renorm_factor'] = factor_sum / self.world_size / max(sums['steps'], 1)
        if self.cfg.on_nonfinite == 'skip': m['skipped_steps'] = sums['skipped']
        return m

    @torch.no_grad()
    def evaluate(self, dataset):
        """Mean loss (without label smoothing) and accuracy of the model on `dataset`, shared out over processes."""
        self.model.eval()
        key = id(dataset)
        if key not in self._eval_loaders:
            part = Subset(dataset, range(self.rank, len(dataset), self.world_size)) if self.world_size > 1 else dataset
            if self.in_memory(): batches = self._to_device(decode(part))
            else: batches = DataLoader(part, batch_size=self.cfg.batch_size, shuffle=False, **self.loader_kwargs)
            self._eval_loaders[key] = (dataset, batches)  # the dataset is kept so that its id stays unique
        batches = self._eval_loaders[key][1]
        if isinstance(batches, tuple): batches = zip(batches[0].split(EVAL_BATCH), batches[1].split(EVAL_BATCH))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device); correct = torch.zeros_like(loss_sum); count = 0
        for x, y in batches:
            x, y = x.to(self.device), y.to(self.device)
            with _autocast(self.device, self.cfg.amp): out = self.model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction='sum').double(); correct += (out.argmax(1) == y).sum(); count += len(y)
        loss_sum, correct, count = self._reduce(loss_sum, correct, count)
        return dict(loss=loss_sum / max(count, 1), acc=correct / max(count, 1))

    def state(self):
        """Everything `--resume` needs, as a checkpoint dict; within an epoch also its position, running sums and the RNG states."""
        sums = None if self._sums is None else {k: v.cpu() if torch.is_tensor(v) else v for k, v in self._sums.items()}
        rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])
        return dict(format=_FORMAT, config=self.cfg.to_dict(), epoch=self.epoch, step=self.step, history=self.history,
                    position=self.position, sums=sums, rng=rng, model=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler is not None else None)

    def load_state(self, state, path='checkpoint'):
        """Continue from a checkpoint dict (see `state`), at an epoch's end or within it."""
        try:
            self.model.load_state_dict(state['model'])
            self.optimizer.load_state_dict(state['optimizer'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise RuntimeError(f"Checkpoint {path} does not match this model/optimizer: {e}") from e
        if self.scaler is not None and state.get('scaler'): self.scaler.load_state_dict(state['scaler'])
        self.epoch, self.step, self.history = state['epoch'], state['step'], list(state['history'])
        self.position, sums = state.get('position', 0), state.get('sums')
        self._sums = None if sums is None else {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in sums.items()}
        rng = state.get('rng')
        if rng is not None:
            torch.set_rng_state(rng['torch'])
            if rng['cuda'] and torch.cuda.is_available() and len(rng['cuda']) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng['cuda'])

    def _start_run(self):
        """Create or check the run folder; resume from its newest checkpoint that loads if asked."""
        run = Path(self.cfg.out) if self.cfg.out else None
        if run is not None and ((run / CHECKPOINT).exists() or (run / PREVIOUS).exists()):
            if not self.cfg.resume:
                raise FileExistsError(f"Run folder {self.cfg.out} already holds a run: pass resume=True (--resume) to continue it, or choose another out")
            state, self.checkpoint_path = latest_checkpoint(run, self.cfg)
            self.load_state(state, self.checkpoint_path)
        elif run is not None and self.rank == 0 and (run / 'metrics.jsonl').exists() and not self.cfg.resume:
            raise FileExistsError(f"Run folder {self.cfg.out} already holds metrics.jsonl: choose another out")
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            for f in self.out.glob('.*.tmp*'): f.unlink()  # left by a process killed while writing
            (self.out / DIVERGED).unlink(missing_ok=True)
            dev = torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else platform.processor() or 'cpu'
            write_json(self.out / 'config.json', dict(self.cfg.to_dict(), versions=_versions(), device_used=str(self.device),
                                                      device_name=dev, world_size=self.world_size, command=sys.argv))
            if self.checkpoint_path is not None: write_jsonl(self.out / 'metrics.jsonl', self.history)  # as the checkpoint resumed from
        self._saved_at = time.perf_counter()

    def _save(self):
        """Write the checkpoint (the one it replaces kept as the previous) and, at an epoch's end, metrics.jsonl."""
        self.check_finite()  # a state after a non-finite step is never saved
        if self.out is None: return
        save_checkpoint(self.out / CHECKPOINT, self.state(), previous=self.out / PREVIOUS)
        self.checkpoint_path, self._saved_at = self.out / CHECKPOINT, time.perf_counter()
        if self.position == 0: write_jsonl(self.out / 'metrics.jsonl', self.history)

    def fit(self):
        """Train the remaining epochs, evaluating after each and writing the run folder; returns the per-epoch metrics."""
        self._start_run()
        for cb in self.callbacks:
            if hasattr(cb, 'before_fit'): cb.before_fit(self)
        try:
            while self.epoch < self.cfg.epochs: self._fit_epoch()
        except Diverged as e:
            if self.out is not None: write_json(self.out / DIVERGED, e.record())
            raise
        return self.history

    def _fit_epoch(self):
        """Train (the rest of) one epoch, evaluate, record and checkpoint it."""
        m = self.train_epoch()
        test = self.evaluate(self.data.test)
        metrics = dict(epoch=self.epoch, train_loss=m.pop('train_loss'), train_acc=m.pop('train_acc'),
                       test_loss=test['loss'], test_acc=test['acc'], **m)
        for cb in self.callbacks:
            if hasattr(cb, 'after_epoch'): cb.after_epoch(self, metrics)
        self.history.append(metrics)
        self._save()
        if self.rank == 0 and self.cfg.progress:
            fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'
            tqdm.write(f"epoch {self.epoch}: train loss {fmt(metrics['train_loss'])} acc {fmt(metrics['train_acc'])} | "
                       f"test loss {fmt(metrics['test_loss'])} acc {fmt(metrics['test_acc'])} | {metrics['images_per_s']:.0f} img/s")


# %% [markdown]
# A quick run: FCN on a small fake MNIST with StableSAM, no label smoothing, constant learning rate.
# It learns, it records the renormalization factor, and the same seed gives the same metrics (on a CPU,
# with the same number of threads: the thread count changes the order of floating-point sums).

# %%
from stablesam.data import write_fake_mnist, write_fake_cifar

# %%
root = Path(tempfile.mkdtemp())
write_fake_mnist(root, n_train=512, n_test=256); write_fake_cifar(root, n_train=256, n_test=128)
quick = dict(dataset='mnist', data_root=str(root), model='fcn', optimizer='stablesam', lr=0.05, epochs=4, batch_size=64,
             label_smoothing=0.0, schedule='constant', progress=False)
hist = Trainer(TrainConfig(**quick)).fit()
print(*(f"epoch {m['epoch']}: train acc {m['train_acc']:.3f} test acc {m['test_acc']:.3f} renorm {m['renorm_factor']:.3f}" for m in hist), sep='\n')
assert hist[-1]['test_acc'] > 0.5 and hist[-1]['train_loss'] < hist[0]['train_loss']
again = Trainer(TrainConfig(**quick)).fit()
test_eq([{k: v for k, v in m.items() if k not in ('time', 'images_per_s')} for m in again],
        [{k: v for k, v in m.items() if k not in ('time', 'images_per_s')} for m in hist])

# %% [markdown]
# ## Exact resume
#
# A run killed after any epoch continues from its checkpoint to the same metrics as an uninterrupted
# run: the sampling order and the augmentation depend only on (seed, epoch, index), and the
# checkpoint holds the optimizer state (momentum) and the step counter of the learning-rate schedule.
# Here the first run stops after 2 of 3 epochs (as a killed run would), the second resumes it.

# %%
#| export
_NOT_COMPARED = ('time', 'images_per_s')

def comparable(history):
    """Per-epoch metrics without the wall-clock entries (for comparing runs)."""
    return [{k: v for k, v in m.items() if k not in _NOT_COMPARED} for m in history]


# %%
cifar = dict(dataset='cifar10', data_root=str(root), model='resnet20', optimizer='stablesam', epochs=3, batch_size=32,
             train_subset=64, test_subset=64, progress=False)
full = Trainer(TrainConfig(**cifar, out=str(root / 'full'))).fit()
class Kill:
    def after_epoch(self, trainer, metrics):
        if trainer.epoch == 3: raise KeyboardInterrupt  # killed during epoch 3, before its checkpoint
try: Trainer(TrainConfig(**cifar, out=str(root / 'part')), callbacks=[Kill()]).fit()
except KeyboardInterrupt: pass
test_eq(len(read_metrics(root / 'part')), 2)
resumed = Trainer(TrainConfig(**cifar, out=str(root / 'part'), resume=True)).fit()
test_eq(comparable(resumed), comparable(full))
test_eq(comparable(read_metrics(root / 'part')), comparable(full))
test_fail(lambda: Trainer(TrainConfig(**cifar, out=str(root / 'full'))).fit(), contains='already holds a run')
test_fail(lambda: Trainer(TrainConfig(**dict(cifar, lr=0.2), out=str(root / 'full'), resume=True)).fit(),
          contains='lr: 0.1 in the checkpoint, 0.2 now')

# %% [markdown]
# ## The paper's recipes
#
# `PRESETS` holds the hyperparameters of Tables 2-4. A preset supplies defaults; settings given
# explicitly win. Where the paper fixes $\rho$ per optimizer family (Table 3, Table 4), the preset's
# `rho` maps the family (`sam`: SAM, StableSAM, USAM, StableUSAM; `asam`: ASAM, StableASAM) to its
# value; Table 2 swept $\rho$ (see `sweep` below), so the `cifar` preset's $\rho$ is only the default
# when none is given.

# %%
#| export
PRESETS = {
    'cifar': dict(help='Table 2: CIFAR-10/100, 200 epochs, batch 128, SGD momentum 0.9, lr 0.1 cosine, '
                       'weight decay 5e-4, label smoothing 0.1 (rho swept: default 0.05 SAM / 0.5 ASAM)',
                  dataset='cifar10', model='resnet20', base='sgd', epochs=200, batch_size=128, lr=0.1, momentum=0.9,
                  weight_decay=5e-4, label_smoothing=0.1, schedule='cosine', rho=dict(sam=0.05, asam=0.5)),
    'imagenet': dict(help='Table 3, ResNets: ImageNet-1k, 90 epochs, batch 256, SGD momentum 0.9, lr 0.1 cosine, '
                          'weight decay 1e-4, rho 0.05 (SAM) / 1.0 (ASAM)',
                     dataset='imagenet', model='resnet50', base='sgd', epochs=90, batch_size=256, lr=0.1, momentum=0.9,
                     weight_decay=1e-4, label_smoothing=0.0, schedule='cosine', rho=dict(sam=0.05, asam=1.0)),
    'imagenet-vit': dict(help='Table 3, ViT-S/32: ImageNet-1k, 300 epochs, batch 256, AdamW lr 3e-4 cosine, '
                              'weight decay 0.3, rho 0.2 (SAM) / 2.0 (ASAM)',
                         dataset='imagenet', model='vit_s32', base='adamw', epochs=300, batch_size=256, lr=3e-4,
                         weight_decay=0.3, label_smoothing=0.0, schedule='cosine', rho=dict(sam=0.2, asam=2.0)),
    'label-noise': dict(help='Table 4: CIFAR-10 with 20/40/60/80%% random labels (--label-noise), the Table 2 recipe, '
                             'rho 0.05', dataset='cifar10', model='resnet56', base='sgd', epochs=200, batch_size=128,
                        lr=0.1, momentum=0.9, weight_decay=5e-4, label_smoothing=0.1, schedule='cosine',
                        label_noise=0.2, rho=dict(sam=0.05, asam=0.05)),
}

def preset_config(preset, **settings):
    """A TrainConfig with `preset`'s hyperparameters (one of `PRESETS`, or None) overridden by `settings`."""
    if preset is None: return TrainConfig(**settings)
    if preset not in PRESETS: raise ValueError(f"Unknown preset: {preset!r} (choose from {', '.join(PRESETS)})")
    p = {k: v for k, v in PRESETS[preset].items() if k != 'help'}
    family = 'asam' if 'asam' in settings.get('optimizer', 'sgd') else 'sam'
    p['rho'] = p['rho'][family]
    return TrainConfig(**{**p, **settings})


# %%
c = preset_config('imagenet-vit', optimizer='stableasam')
test_eq((c.base, c.lr, c.weight_decay, c.epochs, c.rho, c.batch_size), ('adamw', 3e-4, 0.3, 300, 2.0, 256))
test_eq(preset_config('cifar', optimizer='stablesam', rho=0.2).rho, 0.2)
test_eq(preset_config('label-noise', label_noise=0.8, model='wrn28_10').label_noise, 0.8)
test_fail(lambda: preset_config('cifar10'), contains="Unknown preset: 'cifar10'")

# %% [markdown]
# ## Sweeps: the tables' grids as commands
#
# `sweep(table)` lists the runs behind a table: Table 2 is CIFAR-10/100 x five models x SGD, SAM,
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

def sweep(table, seeds=(0, 1, 2), runs_dir='runs', data_root='data', extra=()):
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

def sweep_commands(table, **kwargs):
    """The runs of `table` as shell command lines."""
    return [shlex.join(['stablesam-train', *args]) for args in sweep(table, **kwargs)]


# %%
test_eq(len(sweep('table2')), 3 * 2 * 5 * (1 + 4 * 5))
test_eq(len(sweep('table3', seeds=(0,))), 4 * 5)
test_eq(len(sweep('table4')), 3 * 4 * 2 * 2)
print(*sweep_commands('table4', seeds=(0,))[:2], sep='\n')

# %% [markdown]
# ## The `stablesam-train` command
#
# Every `TrainConfig` setting is a flag. Flags left out take the preset's value (with `--preset`),
# else the saved run's (with `--resume` on an existing run folder), else the `TrainConfig` default.

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
    schedule=f"learning-rate schedule: {', '.join(SCHEDULES)} (cosine: per-step decay to 0)",
    seed="random seed: model initialisation, data order, augmentation, label noise, subsets",
    out="run folder for config.json, metrics.jsonl and checkpoint.pt (none: nothing is written)",
    resume="continue the run in --out from its checkpoint (starts it if there is none yet)",
    amp=f"mixed precision: {', '.join(AMP_MODES)} (fp16 with a GradScaler; GPU)",
    quick="the same code path on a tiny subset: one epoch, 256 train / 256 test examples, batch <= 64",
    train_subset="train on a seeded random subset of this many examples",
    test_subset="evaluate on a seeded random subset of this many test examples",
    augment="data augmentation of the training set (--no-augment: evaluation transform only)",
    bn_first_pass="keep BatchNorm statistics from the first pass only in SAM steps (--no-bn-first-pass to update in both)",
    gamma0="Stable variants: clamp the renormalization factor to [gamma0, sqrt(gamma0)] (Remark 19)",
    renorm_norm="Stable variants: 'plain' (||g||/||g_asc||) or 'adaptive' (the authors' StableASAM)",
    workers="data loader worker processes (default: 8 on GPU, 0 on CPU)",
    device="device: auto, cpu, cuda, cuda:N",
    download="download missing MNIST/CIFAR data (--no-download: fail with a message instead)",
    progress="show a progress bar and per-epoch lines (--no-progress for logs)",
    in_memory="decode MNIST/CIFAR once into tensors and batch by index slicing (--no-in-memory: the DataLoader path)",
    checkpoint_every="seconds between checkpoints within an epoch (0: at epoch ends only); a killed run loses at most that",
    on_nonfinite="a non-finite loss or gradient: stop (exit status 3, the last good checkpoint kept) or skip the step "
                 "(counted in the epoch's skipped_steps; with --amp fp16 the GradScaler skips non-finite gradients itself)",
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

def config_from_args(args):
    """The TrainConfig for parsed `stablesam-train` arguments."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    saved = Path(given['out']) / 'config.json' if given.get('out') and given.get('resume') else None
    if saved is not None and saved.exists():
        d = read_json(saved)
        base = {f.name: d[f.name] for f in dataclasses.fields(TrainConfig) if f.name in d}
        return TrainConfig.from_dict({**base, **given})
    return preset_config(args.preset, **given)

def main(argv=None):
    """The `stablesam-train` command line."""
    args = build_parser().parse_args(argv)
    if args.sweep:
        for c in sweep_commands(args.sweep, seeds=args.seeds, runs_dir=args.out or 'runs', data_root=args.data_root or 'data'):
            print(c)
        return 0
    try:
        cfg = config_from_args(args)
        trainer = Trainer(cfg)
        history = trainer.fit()
    except Diverged as e:
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
main(['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--optimizer', 'stablesam', '--quick',
      '--out', str(root / 'cli'), '--no-progress'])
test_eq([m['epoch'] for m in read_metrics(root / 'cli')], [1])
test_eq(json.loads((root / 'cli' / 'config.json').read_text())['train_subset'], 256)
test_eq(main(['--model', 'nope', '--quick']), 2)
try: main(['--lr', 'fast']); raise AssertionError('no error')
except SystemExit as e: test_eq(e.code, 2)

# %% [markdown]
# ## The paper's runs
#
# Full runs need a GPU and hours each (Table 2: 200 epochs per run); the cell below is what a
# researcher runs (or its commands, spread over machines), skipped by the tests. The quick run next
# to it executes the same code on CPU. A DDP run is `torchrun --nproc_per_node=8 --no-python
# stablesam-train --preset imagenet --model resnet50 --optimizer stablesam --data-root /data/imagenet
# --out runs/r50 --amp bf16`.

# %%
#| gpu
for table in ('table2', 'table3', 'table4'):  # one process after another here; spread the commands over GPUs instead
    for args in sweep(table, runs_dir='runs', data_root='data' if table != 'table3' else 'data/imagenet'):
        main(args + ['--amp', 'bf16', '--no-progress'])

# %%
wanted = ('cifar10/resnet20/sgd/seed0', 'cifar10/resnet20/stablesam_rho0.05/seed0')
quick_jobs = [args + ['--quick', '--no-progress', '--train-subset', '64', '--test-subset', '64']
              for args in sweep('table2', seeds=(0,), runs_dir=root / 'runs', data_root=root) if args[5].endswith(wanted)]
for args in quick_jobs: test_eq(main(args), 0)
test_eq(len(quick_jobs), 2)

# %% [markdown]
# ## Training curves of a quick run

# %%
hists = {opt: Trainer(TrainConfig(**dict(quick, optimizer=opt, epochs=6, progress=False))).fit() for opt in ('sgd', 'sam', 'stablesam')}
fig, axs = plt.subplots(1, 3, figsize=(10, 3))
for opt, h in hists.items():
    ep = [m['epoch'] for m in h]
    axs[0].plot(ep, [m['train_loss'] for m in h], label=opt); axs[1].plot(ep, [m['test_acc'] for m in h], label=opt)
    if 'norm_ratio' in h[0]: axs[2].plot(ep, [m['norm_ratio'] for m in h], label=opt)
for ax, t in zip(axs, ('train loss', 'test accuracy', r'mean $\|g\|/\|g^{asc}\|$')): ax.set_title(t); ax.set_xlabel('epoch'); ax.legend()
plt.tight_layout(); plt.show(); plt.close(fig)

# %% [markdown]
# ## Throughput
#
# `benchmarks/train_throughput.py` times `Trainer.train_step` for SGD and StableSAM on ResNet-20 with
# batch 128, interleaving rounds in one process. On the shared 2-core development machine (noisy,
# under load from other jobs; absolute numbers will be re-measured on a quiet machine), with one thread
# and 5 rounds of 3 steps, it printed 147.7 images/s for SGD and 68.3 images/s for StableSAM (ratio 0.463,
# time ratio 2.16); under heavier load earlier 98.3 vs 41.6 (0.42) with one thread and 26.8 vs 12.2 (0.45)
# with two. StableSAM runs two forward-backward passes per step, so 0.5 is the ceiling of the ratio.
