# %%
#| default_exp train

# %% [markdown]
# # train
#
# > The training loop of Sections 5.3-5.4: SGD and the SAM family, data in memory with batched augmentation, exact resume, mixed precision and DistributedDataParallel

# %% [markdown]
# One `Trainer` runs every experiment of the paper from a `TrainConfig` ([config](04a_config.ipynb)),
# writing a run folder ([runs](04b_runs.ipynb)); the `stablesam-train` command ([cli](05a_cli.ipynb)) builds
# the config from the command line. The very same code runs a quick configuration on a CPU in seconds
# (what the tests and this page execute) and the paper's configuration on GPUs.
#
# Each SAM-family step is Algorithm 1 through `stablesam.optim.sam_step`: the first forward-backward pass
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
from stablesam.variants import register_variant, unregister_variant

# %%
#| hide
plt.rcParams['figure.dpi'] = 72
torch.set_num_threads(1)  # the tests share a small machine; one thread per notebook avoids oversubscription

# %%
#| export
import copy
import dataclasses
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

# Some of these names are re-exports for 0.1 code, which imported them from stablesam.train: TrainConfig,
# preset_config, PRESETS, AMP_MODES, LR_SCHEDULES (now in stablesam.config) and the run-folder functions write_json,
# write_jsonl, append_jsonl, read_jsonl, read_metrics, load_checkpoint, ... (now in stablesam.runs). Keep them.
from stablesam.config import (AMP_MODES, LR_SCHEDULES, PRESETS, RESUMABLE, TrainConfig, epochs_change, lr_scales,
                              preset_config)
from stablesam.data import (EpochSampler, SeededAugment, decode, eval_subset, get_datasets, loader_kwargs,
                            split_augmentation, validation_split)
from stablesam.distributed import broadcast_buffers, checkpoint_state, is_sharded, load_checkpoint_state, shard_model
from stablesam.loggers import trainer_loggers
from stablesam.models import get_model
from stablesam.optim import StepChange, global_norm, is_sam, make_optimizer, sam_step
# (nbdev makes a wrapped import relative only when its last line is as long as `from stablesam.runs` at least)
from stablesam.runs import (
    CHECKPOINT, CHECKPOINT_FORMAT, CONFIG, DIVERGED, METRICS, PREVIOUS, CheckpointError, JsonlLog, append_jsonl,
    latest_checkpoint, load_checkpoint, package_versions, provenance, read_jsonl, read_metrics, remove_temporaries,
    save_checkpoint, write_json, write_jsonl)
from stablesam.variants import variant


# %% [markdown]
# ## Devices, processes and mixed precision
#
# Under `torchrun` (environment variable `WORLD_SIZE` > 1) each process joins the process group
# (NCCL on GPUs, gloo on CPUs), uses GPU `LOCAL_RANK`, and takes `batch_size / world_size` examples
# of each global batch. The model is wrapped in `DistributedDataParallel`, and a SAM step follows
# `cfg.ascent` (`--ascent`, through `stablesam.optim.sam_step`): `'global'` (the default: both passes
# all-reduced, the run equals one process on the global batch) or `'local'` (m-sharpness with m the
# per-replica batch: each replica ascends and renormalizes with its own gradients, then the renormalized
# gradients are averaged); see [distributed](00a_distributed.ipynb). `fsdp=True` (`--fsdp`) shards the model
# with FSDP2 (`shard_model`) instead of DDP; it needs torchrun, `ascent='global'` and no fp16 scaler, and
# checkpoints then hold the full state, gathered on every process (`checkpoint_state`) and written by rank 0.
# Under both, every process takes rank 0's buffers (BatchNorm running statistics) after each epoch and before
# each evaluation (`broadcast_buffers`: DDP's own semantics), so that every process evaluates, and rank 0
# saves, the same model.
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
        nccl = torch.cuda.is_available() and os.environ.get('STABLESAM_BACKEND', 'nccl') == 'nccl'
        backend = 'nccl' if nccl else 'gloo'
        if backend == 'nccl': torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist.get_rank(), local, dist.get_world_size()

def resolve_device(device='auto', local_rank=0):
    """`device` as a torch.device; 'auto' is the GPU of this process when there is one, else the CPU."""
    if device == 'auto': device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda': device = f'cuda:{local_rank}'
    return torch.device(device)

AMP_DTYPES = dict(none=None, bf16=torch.bfloat16, fp16=torch.float16)

# %%
test_eq(dist_info(), (0, 0, 1))
test_eq(resolve_device('cpu'), torch.device('cpu'))
test_eq(set(AMP_DTYPES), set(AMP_MODES))


# %% [markdown]
# ## The trainer
#
# Model initialisation and the order in which training examples are visited depend on `cfg.seed`
# alone (`stablesam.data.EpochSampler`, seeded augmentation): two trainers with the same seed and
# training sets of the same size start from the same weights and see the same indices, in the same
# order, with the same augmentation; this is what the stability experiment (Section 5.2) needs when
# it trains on two neighbouring training sets.
#
# Callbacks are objects with any of `before_fit(trainer)`, `after_step(trainer)` (may read
# `trainer.optimizer.last_stats` and `trainer.last_loss`, tensors on the device: accumulate them there, no
# `.item()`), `after_epoch(trainer, metrics)` (may add keys to `metrics` before it is written) and
# `after_fit(trainer)` (when `fit` ends, also on an error). [loggers](05b_loggers.ipynb) is one:
# TensorBoard, W&B and CSV logging. A callback that keeps state within an epoch (the per-step statistics of
# `stablesam.landscape.StepStats`) may also have `state_dict()` (tensors, numbers, strings, lists and dicts)
# and `load_state_dict(state)`: the checkpoint holds that state, and a resumed run gives it back after
# `before_fit`.
#
# The class cell holds the constructor and `fit`; the cells after it add the data path, the step, the
# epoch, the evaluation and the run folder, one concern each, as methods attached with `@patch_to(Trainer)`
# (nbdev's index and the API docs list them as `Trainer` methods).

# %%
#| export
class Diverged(RuntimeError):
    """A non-finite loss or gradient stopped the run (`stablesam-train` exits with status 3)."""
    def __init__(self, epoch, step, batch, lr, checkpoint):
        self.epoch, self.step, self.batch, self.lr, self.checkpoint = epoch, step, batch, lr, checkpoint
        then = (f"Last good checkpoint: {checkpoint} (kept; --resume continues from it, with --on-nonfinite skip to "
                "skip such steps)" if isinstance(checkpoint, Path) else f"No checkpoint to resume from ({checkpoint})")
        super().__init__(f"non-finite loss, gradient or weights at epoch {epoch}, step {step} (batch {batch} of the "
                         f"epoch), lr {lr:g}: training stopped. {then}")

    def record(self):
        """The divergence as a JSON-ready dict (a sweep's record of the run's outcome)."""
        return dict(outcome='diverged', epoch=self.epoch, step=self.step, batch=self.batch, lr=self.lr,
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
            raise ValueError(f"Invalid batch_size: {cfg.batch_size} is not divisible by the {self.world_size} "
                             "processes")
        if cfg.fsdp and self.world_size == 1:
            raise ValueError("Invalid fsdp: FSDP2 shards over processes; run under torchrun")
        if data is None: data = self._load_data()
        else: data = dataclasses.replace(data, test=eval_subset(data.test, cfg.test_subset, cfg.seed))
        self.val = None
        if cfg.val_split:
            train, self.val = validation_split(data.train, cfg.val_split, cfg.seed)
            data = dataclasses.replace(data, train=train)
        self.data = data
        torch.manual_seed(cfg.seed)
        if model is None:
            model = get_model(cfg.model, self.data.num_classes, self.data.in_channels, self.data.image_size)
        self.model = model.to(self.device)
        if self.device.type == 'cuda': torch.backends.cudnn.benchmark = True
        self.net = self.model
        if cfg.fsdp: shard_model(self.model)  # in place: the model's parameters become shards
        elif self.world_size > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self._init_batches()
        self.total_steps = cfg.epochs * self.steps_per_epoch
        extra = dict(renorm_norm=cfg.renorm_norm) if variant(cfg.optimizer).stable else {}
        if cfg.gamma0 is not None: extra['gamma0'] = cfg.gamma0  # else the variant's own (a clamped variant's)
        extra['ascent'] = cfg.ascent
        if variant(cfg.optimizer).cls is not None:  # the efficient variants' schedule (stablesam.efficient)
            extra['total_steps'] = self.total_steps
            if cfg.sam_schedule is not None: extra['schedule'] = cfg.sam_schedule
            if cfg.look_alpha is not None: extra['look_alpha'] = cfg.look_alpha
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), base=cfg.base, lr=cfg.lr,
                                        momentum=cfg.momentum, weight_decay=cfg.weight_decay, rho=cfg.rho, **extra)
        self.sam = is_sam(self.optimizer)
        self.efficient = self.sam and self.optimizer.schedule.spec != 'every:1'  # some steps take one pass
        self._lr_scales = [1.0] if cfg.lr_scale is None else lr_scales(cfg.lr_scale)
        self.change = StepChange(self.model.parameters())  # each step's length ||w_{t+1} - w_t||
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == 'fp16' else None
        self.callbacks = list(callbacks) + trainer_loggers(self)  # + a TrainLogger inside a logging_to block
        self.epoch, self.step, self.history, self._eval_batches = 0, 0, [], {}
        self._callback_states = {}  # from the checkpoint resumed, given to the callbacks after their before_fit
        self.position, self._sums = 0, None  # batches done in the current epoch, and its running sums
        self.last_loss = None  # the last step's first-pass loss (a device tensor; None: skipped), for loggers
        self.last_change = None  # the last step's ||w_{t+1} - w_t|| (a device tensor)
        self._pending, self._saved_at, self.checkpoint_path = None, time.perf_counter(), None
        self.out = Path(cfg.out) if cfg.out and self.rank == 0 else None
        self.metrics_log = JsonlLog(self.out / METRICS) if self.out is not None else None

    def fit(self):
        """Train the remaining epochs, evaluating after each and writing the run folder; returns the epochs' metrics."""
        self._start_run()
        for cb in self.callbacks:
            if hasattr(cb, 'before_fit'): cb.before_fit(self)
        states, self._callback_states = self._callback_states, {}
        self.load_callback_states(states)  # after before_fit, which starts each callback afresh
        try:
            while self.epoch < self.cfg.epochs: self._fit_epoch()
        except Diverged as e:
            if self.out is not None: write_json(self.out / DIVERGED, e.record())
            raise
        finally:
            for cb in self.callbacks:
                if hasattr(cb, 'after_fit'): cb.after_fit(self)
        return self.history

    def _fit_epoch(self):
        """Train (the rest of) one epoch, evaluate, record and checkpoint it."""
        m = self.train_epoch()
        test = self.evaluate(self.data.test)
        val = {} if self.val is None else {f'val_{k}': v for k, v in self.evaluate(self.val).items()}
        metrics = dict(epoch=self.epoch, train_loss=m.pop('train_loss'), train_acc=m.pop('train_acc'),
                       test_loss=test['loss'], test_acc=test['acc'], **val, **m)
        for cb in self.callbacks:
            if hasattr(cb, 'after_epoch'): cb.after_epoch(self, metrics)
        self.history.append(metrics)
        self._save(metrics)
        if self.rank == 0 and self.cfg.progress:
            def f(k): return 'n/a' if metrics[k] is None else f'{metrics[k]:.4f}'
            tqdm.write(f"epoch {self.epoch}: train loss {f('train_loss')} acc {f('train_acc')} | "
                       f"test loss {f('test_loss')} acc {f('test_acc')} | {metrics['images_per_s']:.0f} img/s")


# %%
#| exporti
def patch_to(cls):
    """Decorator: make the function a method of `cls` (a class written over several cells; nbdev's index sees it)."""
    def attach(f):
        f.__qualname__ = f'{cls.__name__}.{f.__name__}'
        setattr(cls, f.__name__, f)
        return f
    return attach


# %% [markdown]
# ### Data
#
# The configured datasets come from `stablesam.data.get_datasets` (under torchrun, rank 0 loads and
# downloads first). A dataset that fits in memory (MNIST, CIFAR-10/100, any subset of them) is decoded
# once into tensors on the training device, and each batch is a slice of them in the order `EpochSampler`
# gives: the same order as the DataLoader path, so without augmentation a run gives the same results
# either way, and resume stays exact. The CIFAR augmentation then runs on the batch, on the device
# (`stablesam.data.CropFlip`, drawn per (seed, epoch, index)). ImageNet folders and `in_memory=False` go
# through a DataLoader with torchvision's per-image transforms, seeded per example (`SeededAugment`).

# %%
#| exporti
@patch_to(Trainer)
def _load_data(self):
    """The configured datasets; under torchrun rank 0 loads (and downloads) first, the others after it."""
    cfg = self.cfg
    def get(download):
        return get_datasets(cfg.dataset, cfg.data_root, train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                            seed=cfg.seed, label_noise=cfg.label_noise, augment=cfg.augment, download=download)
    if self.world_size == 1: return get(cfg.download)
    data = get(cfg.download) if self.rank == 0 else None
    dist.barrier()
    return data if data is not None else get(False)

@patch_to(Trainer)
def in_memory(self, dataset):
    """`(plain, augment)` to decode `dataset` once and augment it in batches, or `(None, None)` for the DataLoader."""
    if not self.cfg.in_memory or self.cfg.dataset == 'imagenet': return None, None
    return split_augmentation(dataset)

@patch_to(Trainer)
def _init_batches(self):
    """The epoch sampler and either the in-memory training tensors (and their batch augmentation) or the DataLoader."""
    cfg = self.cfg
    self.sampler = EpochSampler(len(self.data.train), cfg.seed, self.rank, self.world_size)
    self.batch_size = cfg.batch_size // self.world_size
    self.steps_per_epoch = -(-len(self.sampler) // self.batch_size)
    self.loader_kwargs = loader_kwargs(self.device, cfg.workers)
    self.train_tensors = self.train_loader = None
    plain, self.augment = self.in_memory(self.data.train)
    if plain is None:
        self.train_loader = DataLoader(SeededAugment(self.data.train, cfg.seed), batch_size=self.batch_size,
                                       sampler=self.sampler, generator=torch.Generator(), **self.loader_kwargs)
        # its own generator: iterating the loader never draws from the global RNG, which the checkpoint saves
        return
    self.train_tensors = self._to_device(decode(plain))
    if self.augment is not None: self.augment.to(self.device)

@patch_to(Trainer)
def _to_device(self, tensors):
    """`tensors` moved to the training device."""
    return tuple(t.to(self.device) for t in tensors)

@patch_to(Trainer)
def batches(self, start=0):
    """This epoch's training batches from batch `start` on, on the device, in `EpochSampler` order."""
    if self.train_tensors is None:
        nb, loader = self.loader_kwargs['pin_memory'], self.train_loader
        if start:  # resumed within the epoch: a loader over the rest of its keys (augmentation is seeded per key)
            rest = list(self.sampler)[start * self.batch_size:]
            loader = DataLoader(loader.dataset, batch_size=self.batch_size, sampler=rest,
                                generator=torch.Generator(), **dict(self.loader_kwargs, persistent_workers=False))
        for x, y in loader: yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)
        return
    (x, y), order = self.train_tensors, self.sampler.order().to(self.device)
    for idx in order.split(self.batch_size)[start:]:
        if self.augment is None: yield x[idx], y[idx]
        else: yield self.augment(x[idx], idx, self.cfg.seed, self.sampler.epoch), y[idx]


# %% [markdown]
# The in-memory batches are the DataLoader's, index for index and bit for bit:

# %%
from stablesam.data import write_fake_mnist, write_fake_cifar

# %%
root = Path(tempfile.mkdtemp())
write_fake_mnist(root, n_train=512, n_test=256)
write_fake_cifar(root, n_train=256, n_test=128)
quick = dict(dataset='mnist', data_root=str(root), model='fcn', optimizer='stablesam', lr=0.05, epochs=4, batch_size=64,
             label_smoothing=0.0, schedule='constant', progress=False)
fast, slow = Trainer(TrainConfig(**quick)), Trainer(TrainConfig(**quick, in_memory=False))
test_eq((fast.train_loader, slow.train_tensors), (None, None))
for e in (0, 3):
    fast.sampler.set_epoch(e)
    slow.sampler.set_epoch(e)
    pairs = list(zip(fast.batches(), slow.batches()))
    test_eq(len(pairs), fast.steps_per_epoch)
    for (xa, ya), (xb, yb) in pairs:
        test_eq(xa, xb)
        test_eq(ya, yb)
    for (xa, _), (xb, _) in zip(fast.batches(start=3), slow.batches(start=3)):  # resumed within an epoch
        test_eq(xa, xb)
    test_eq(next(fast.batches(start=3))[0], pairs[3][0][0])


# %% [markdown]
# ### The step
#
# One optimizer step: the learning rate of the schedule (a per-step cosine decay to 0 over the whole run,
# or constant) is set, then `sam_step` runs the step (two passes for the SAM family). The training loss
# uses label smoothing; it is computed in float32 even under autocast.

# %% [markdown]
# **Non-finite steps.** A loss, a gradient or an updated weight that is not finite (a diverged run) stops the
# run by default: `Diverged` names the epoch, the step, the learning rate and the last good checkpoint,
# which is kept (no state after the non-finite step is ever saved), and `stablesam-train` exits with
# status 3. The check costs no host sync of its own: a step's flag (a device tensor) is read at the start
# of the next step or before a checkpoint.
# With `on_nonfinite='skip'` such a step is skipped instead, weights, optimizer state and BatchNorm
# statistics as before it, and counted in the epoch's `skipped_steps`; deciding costs one host sync per pass
# and one after the update (finite losses and gradients can still make the update overflow a weight), and each
# step first copies the weights and the optimizer state to restore them. With a `GradScaler` (fp16),
# overflowing gradients are the scaler's to skip, as always: only the first pass's loss is checked.

# %%
#| exporti
@patch_to(Trainer)
def _finite(self, loss):
    """A device bool: `loss` and the parameters' gradients (unless a GradScaler checks them) are all finite."""
    ok = torch.isfinite(loss.detach())
    if self.scaler is None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        ok = ok & torch.isfinite(global_norm(grads, self.device))
    return ok

@patch_to(Trainer)
def _step_finite(self, loss):
    """A device bool after a step: its loss, gradient norms (SAM family, no GradScaler) and the weights are finite."""
    ok = torch.isfinite(loss) & self._weights_finite()
    if self.sam and self.scaler is None:
        stats = self.optimizer.last_stats
        for key in ('grad_norm', 'asc_grad_norm'):   # a one-pass step has no asc_grad_norm
            if key in stats: ok = ok & torch.isfinite(stats[key])
    return ok

@patch_to(Trainer)
def _everywhere(self, ok):
    """Device bool `ok` as a Python bool, True only if it is True on every process (one host sync)."""
    ok = ok.to(torch.int32)
    if self.world_size > 1: dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)

@patch_to(Trainer)
def _guard(self, loss, pass_number):
    """`sam_step`'s guard in skip mode: whether the step may go on after this pass (same answer on every process)."""
    # a non-finite ascent from overflowing gradients is the scaler's to skip
    if self.scaler is not None and pass_number == 2: return True
    return self._everywhere(self._finite(loss))

@patch_to(Trainer)
def _weights_finite(self):
    """A device bool: every weight of the model is finite."""
    return torch.isfinite(global_norm([p.detach() for p in self.model.parameters()], self.device))

@patch_to(Trainer)
def _snapshot(self):
    """Copies of the weights, buffers (BatchNorm statistics) and optimizer state: what a skipped step restores."""
    with torch.no_grad():
        return ([p.detach().clone() for p in self.model.parameters()], [b.clone() for b in self.model.buffers()],
                copy.deepcopy(self.optimizer.state_dict()))

@patch_to(Trainer)
def _restore(self, snapshot):
    """Put a `_snapshot` back: the model and the optimizer as they were before the step."""
    params, buffers, optimizer = snapshot
    with torch.no_grad():
        for p, saved in zip(self.model.parameters(), params): p.copy_(saved)
        for b, saved in zip(self.model.buffers(), buffers): b.copy_(saved)
    self.optimizer.load_state_dict(optimizer)

@patch_to(Trainer)
def check_finite(self):
    """Raise `Diverged` if the last step had a non-finite loss, gradient or weight (stop mode)."""
    if self._pending is None: return
    (ok, epoch, batch, step, lr), self._pending = self._pending, None
    if not self._everywhere(ok):
        where = self.checkpoint_path or ('no run folder: out is not set' if self.cfg.out is None
                                         else 'none written yet')
        raise Diverged(epoch, step, batch, lr, where)


# %%
#| exporti
@patch_to(Trainer)
def lr_at(self, step):
    """The learning rate at global step `step` (cosine decay to 0 over all steps, or constant), times `lr_scale`."""
    lr = self.cfg.lr * self._lr_scales[min(step // self.steps_per_epoch, len(self._lr_scales) - 1)]
    if self.cfg.schedule == 'constant': return lr
    return 0.5 * lr * (1 + math.cos(math.pi * min(step, self.total_steps) / max(1, self.total_steps)))

@patch_to(Trainer)
def _loss(self, out, y):
    """The training loss: cross entropy with label smoothing, in float32."""
    return F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)

@patch_to(Trainer)
def train_step(self, x, y):
    """One optimizer step on batch (x, y); returns the first pass's outputs and loss (device tensors); None: skipped."""
    self.check_finite()
    lr = self.lr_at(self.step)
    for g in self.optimizer.param_groups: g['lr'] = lr
    skip = self.cfg.on_nonfinite == 'skip'
    before = self._snapshot() if skip else None  # restored if the step is skipped
    self.change.before()
    res = sam_step(self.optimizer, self.net, self._loss, x, y, grad_scaler=self.scaler,
                   autocast_dtype=AMP_DTYPES[self.cfg.amp],
                   bn_first_pass=self.cfg.bn_first_pass, guard=self._guard if skip else None)
    # finite loss and gradients can still make an update overflow: such a step is skipped too
    if skip and res is not None and not self._everywhere(self._weights_finite()): res = None
    self.step += 1  # a skipped step counts: the schedule moves on
    self.last_loss = None if res is None else res[1]
    if res is None:
        self._restore(before)
        return None
    self.last_change = self.change.norm()
    if not skip: self._pending = self._step_finite(res[1]), self.epoch + 1, self.position + 1, self.step, lr
    return res


# %%
t = Trainer(TrainConfig(**dict(quick, schedule='cosine', epochs=2)))
x, y = next(t.batches())
before = [p.detach().clone() for p in t.model.parameters()]
out, loss = t.train_step(x, y)
test_eq((t.step, out.shape, t.optimizer.param_groups[0]['lr']), (1, (64, 10), 0.05))
assert all(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
test_close(t.lr_at(t.total_steps // 2), 0.025, eps=1e-12)
test_eq(t.lr_at(t.total_steps), 0.0)

# %%
t = Trainer(TrainConfig(**dict(quick, lr=1e30)))
x, y = next(t.batches())
def steps(n=5):
    for _ in range(n): t.train_step(x, y)
test_fail(steps, contains='non-finite loss, gradient or weights at epoch 1, step ')
test_fail(steps, contains='lr 1e+30: training stopped. No checkpoint to resume from (no run folder: out is not set)')
t = Trainer(TrainConfig(**dict(quick, lr=1e30, on_nonfinite='skip')))
res = [t.train_step(x, y) for _ in range(4)]
w = [p.detach().clone() for p in t.model.parameters()]
test_eq((t.train_step(x, y), t.step), (None, 5))  # skipped: the weights are as they were
for a, b in zip(w, t.model.parameters()): test_eq(a, b.detach())

# %% [markdown]
# `gamma0` and `renorm_norm` reach the optimizer when its record in the registry of variants says it renormalizes
# (`variant(name).stable`, [variants](00_variants.ipynb)), whatever its name: a variant registered at run time is
# a setting of `TrainConfig` like the built-in ones, and a variant that does not renormalize never gets them.

# %%
register_variant('renormsam', label='SAM, renormalized', color='tab:cyan', cls='SAM', flags=dict(stable=True),
                 stable=True)
try:
    t = Trainer(TrainConfig(**dict(quick, optimizer='renormsam', gamma0=0.5)))
    test_eq((type(t.optimizer).__name__, t.optimizer.stable, t.optimizer.gamma0), ('SAM', True, 0.5))
    test_eq(t.train_step(*next(t.batches()))[0].shape, (64, 10))
finally: unregister_variant('renormsam')
test_eq(Trainer(TrainConfig(**dict(quick, optimizer='sam', renorm_norm='adaptive'))).optimizer.renorm_norm, 'plain')

# %% [markdown]
# ### The epoch
#
# Per epoch the trainer reports `train_loss` and `train_acc` (averaged over the epoch's batches, as
# the model was when it saw them), the learning rate of the last step, the epoch's wall time, the CPU
# time of this process during it (`cpu_time`: on a loaded machine, the work done) and the throughput, and for the SAM family the mean of $\|g\|/\|g^{asc}\|$ (`norm_ratio`) and, for the Stable
# variants, the mean renormalization factor actually applied (`renorm_factor`). Everything is summed on
# the device and read once per epoch (with the progress bar on, at most once a second more).
#
# Every `checkpoint_every` seconds (default 600; 0: at epoch ends only) the run folder gets a checkpoint
# within the epoch too: `state` then holds the position in the epoch and its running sums, so that a run
# resumed from it trains the rest of the epoch and reports exactly what the uninterrupted run reports.
# Under DDP and FSDP checkpoints are written at epoch ends only (the running sums are per process).

# %% [markdown]
# For issue 21 (is renormalization more than a shorter step?) every epoch also reports, for all optimizers,
# the mean length of a step, $\|w_{t+1} - w_t\|$ (`update_norm`), and for the SAM family the renormalization
# factor of each SAM step (the one applied by the Stable variants, the one SAM would have applied,
# $\|g\|/\|g^{asc}\|$, by the others): its mean and 10th/50th/90th percentiles (`factor_mean`, `factor_p10`,
# ...), and the mean $\|g\|$ and $\|g^{asc}\|$ (`grad_norm`, `asc_grad_norm`). The per-step values stay on the
# device until the epoch ends; a checkpoint within the epoch keeps them.

# %%
#| export
STEP_SERIES = ('update', 'step_factor', 'grad', 'asc_grad')  # per-step values of an epoch, kept on the device
FACTOR_KEYS = ('factor_mean', 'factor_p10', 'factor_p50', 'factor_p90', 'grad_norm', 'asc_grad_norm')
STEP_KEYS = ('update_norm', *FACTOR_KEYS)  # what an experiment's per-epoch records copy from the metrics

def step_statistics(sums: dict, sam: bool) -> dict:
    """An epoch's step statistics: mean update norm; SAM family: the factor's mean and percentiles, mean norms."""
    def host(key): return torch.stack(sums[key]).double().cpu().numpy() if sums[key] else None  # one sync a series
    update = host('update')
    out = dict(update_norm=None if update is None else float(update.mean()))
    if not sam: return out
    factor, grad, asc = host('step_factor'), host('grad'), host('asc_grad')
    if factor is None: return dict(out, **dict.fromkeys(FACTOR_KEYS))
    p10, p50, p90 = (float(v) for v in np.percentile(factor, [10, 50, 90]))
    return dict(out, factor_mean=float(factor.mean()), factor_p10=p10, factor_p50=p50, factor_p90=p90,
                grad_norm=float(grad.mean()), asc_grad_norm=float(asc.mean()))


# %%
#| exporti
@patch_to(Trainer)
def _reduce(self, *tensors):
    """Sum device tensors over processes and return them as Python floats (one host sync)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in tensors])
    if self.world_size > 1: dist.all_reduce(t)
    return t.tolist()

@patch_to(Trainer)
def _new_sums(self):
    """Zero running sums of an epoch: device tensors (read once, at its end), step counts and seconds."""
    def zero(): return torch.zeros((), dtype=torch.float64, device=self.device)
    return dict(loss=zero(), correct=zero(), count=0, factor=zero(), ratio=zero(), steps=0, sam_steps=0, skipped=0,
                time=0.0, cpu=0.0, **{k: [] for k in STEP_SERIES})

@patch_to(Trainer)
def _checkpoint_due(self):
    """Whether `checkpoint_every` seconds have passed since the last checkpoint (one process only)."""
    every = self.cfg.checkpoint_every
    return self.out is not None and self.world_size == 1 and every > 0 and time.perf_counter() - self._saved_at >= every

@patch_to(Trainer)
def train_epoch(self):
    """Train the (rest of the) epoch; returns its metrics (loss, accuracy, lr, time, throughput, SAM statistics)."""
    self.net.train()
    self.sampler.set_epoch(self.epoch)
    if self._sums is None: self._sums = self._new_sums()
    sums = self._sums
    bar = tqdm(total=self.steps_per_epoch, initial=self.position, desc=f'epoch {self.epoch + 1}/{self.cfg.epochs}',
               leave=False, disable=not (self.cfg.progress and self.rank == 0), dynamic_ncols=True)
    t0 = last = time.perf_counter()
    cpu0 = time.process_time()
    before, cpu_before = sums['time'], sums['cpu']
    for x, y in self.batches(self.position):
        res = self.train_step(x, y)
        self.position += 1
        if res is None: sums['skipped'] += 1
        else:
            out, loss = res
            sums['loss'].add_(loss, alpha=len(y))
            sums['correct'].add_((out.argmax(1) == y).sum())
            sums['count'] += len(y)
            sums['steps'] += 1
            sums['update'].append(self.last_change)
            if self.sam and self.optimizer.last_stats['sam_step']:  # factor and ratio: means over SAM steps
                st = self.optimizer.last_stats
                sums['factor'].add_(st['renorm_factor'])
                sums['ratio'].add_(st['norm_ratio'])
                sums['sam_steps'] += 1
                # the factor applied (stable variants) or the one SAM would have applied
                sums['step_factor'].append(st['renorm_factor'] if self.optimizer.stable else st['norm_ratio'])
                sums['grad'].append(st['grad_norm'])
                sums['asc_grad'].append(st['asc_grad_norm'])
        for cb in self.callbacks:
            if hasattr(cb, 'after_step'): cb.after_step(self)
        sums['time'], sums['cpu'] = before + time.perf_counter() - t0, cpu_before + time.process_time() - cpu0
        if self.position < self.steps_per_epoch and self._checkpoint_due(): self._save()
        bar.update()
        if not bar.disable and time.perf_counter() - last > 1:  # at most one host sync a second
            last, c = time.perf_counter(), max(sums['count'], 1)
            bar.set_postfix(loss=f"{sums['loss'].item() / c:.3f}", acc=f"{sums['correct'].item() / c:.3f}",
                            img_s=f"{c * self.world_size / max(sums['time'], 1e-9):.0f}")
    self.check_finite()
    bar.close()
    broadcast_buffers(self.model)  # every process ends the epoch with rank 0's BatchNorm statistics, as under DDP
    self.epoch, self.position, self._sums = self.epoch + 1, 0, None
    keys = ('loss', 'correct', 'count', 'factor', 'ratio')
    loss_sum, correct, count, factor_sum, ratio_sum = self._reduce(*(sums[k] for k in keys))
    m = dict(train_loss=loss_sum / count if count else None, train_acc=correct / count if count else None,
             lr=self.optimizer.param_groups[0]['lr'], time=sums['time'], cpu_time=sums['cpu'],
             images_per_s=count / max(sums['time'], 1e-9))
    if self.sam:
        m['norm_ratio'] = ratio_sum / self.world_size / max(sums['sam_steps'], 1)
        if self.optimizer.stable: m['renorm_factor'] = factor_sum / self.world_size / max(sums['sam_steps'], 1)
        if self.efficient: m['sam_fraction'] = sums['sam_steps'] / max(sums['steps'], 1)
    if self.cfg.on_nonfinite == 'skip': m['skipped_steps'] = sums['skipped']
    m.update(step_statistics(sums, self.sam))
    return m


# %%
m = Trainer(TrainConfig(**quick)).train_epoch()
test_eq(set(m), {'train_loss', 'train_acc', 'lr', 'time', 'cpu_time', 'images_per_s', 'norm_ratio', 'renorm_factor',
                 'update_norm', *FACTOR_KEYS})
assert 0 < m['renorm_factor'] and 0 <= m['train_acc'] <= 1
test_close(m['factor_mean'], m['renorm_factor'], eps=1e-9)
assert m['factor_p10'] <= m['factor_p50'] <= m['factor_p90'] and m['grad_norm'] > 0 and m['asc_grad_norm'] > 0


# %% [markdown]
# The step length is measured, not derived: for plain SGD (no momentum, no weight decay) it must equal the
# learning rate times the gradient's norm, which the trainer never computes for SGD; for SAM the factor
# recorded is the ratio it would have applied, and a scaled learning rate (`lr_scale`) scales the steps.

# %%
def one_step(**kw):
    t = Trainer(TrainConfig(**dict(quick, momentum=0.0, weight_decay=0.0, label_smoothing=0.0, **kw)))
    x, y = next(t.batches())
    t.model.zero_grad()
    F.cross_entropy(t.model(x), y).backward()
    g = global_norm([p.grad for p in t.model.parameters()]).item()
    t.train_step(x, y)
    return t, g

t, g = one_step(optimizer='sgd')
test_close(t.last_change.item(), 0.05 * g, eps=1e-6 * g)
t, _ = one_step(optimizer='sgd', lr_scale='0.5')
test_close(t.last_change.item(), 0.025 * g, eps=1e-6 * g)
t, _ = one_step(optimizer='sam')
test_close(t.optimizer.last_stats['norm_ratio'].item(), g / t.optimizer.last_stats['asc_grad_norm'].item(), eps=1e-5)

# %% [markdown]
# ### Evaluation
#
# The test loss is the plain cross entropy (no label smoothing). In-memory datasets are evaluated in
# batches of `EVAL_BATCH` without autograd; the decoded tensors are kept for the next evaluation. Under
# torchrun each process evaluates every `world_size`-th example of the largest multiple of `world_size`
# examples, so that every process runs the same number of batches, and then the few examples left over:
# every process runs them through the model, rank 0 alone counts them, and the sums are reduced. Each example
# counts once; under FSDP every forward pass gathers the parameters from all processes, and a process with
# one batch more would wait for the others forever.

# %%
#| export
EVAL_BATCH = 1024  # evaluation batch of in-memory datasets (no autograd, so large batches are cheap)


# %%
#| exporti
@patch_to(Trainer)
@torch.no_grad()
def evaluate(self, dataset):
    """Mean loss (without label smoothing) and accuracy of the model on `dataset`, shared out over processes."""
    self.model.eval()
    broadcast_buffers(self.model)  # each process evaluates its share with rank 0's BatchNorm statistics
    key = id(dataset)
    if key not in self._eval_batches:  # the dataset is kept so that its id stays unique
        self._eval_batches[key] = (dataset, [(self._eval_batches_of(part), counted)
                                             for part, counted in self._eval_parts(dataset)])
    dtype = AMP_DTYPES[self.cfg.amp]
    loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
    correct, count = torch.zeros_like(loss_sum), 0
    for batches, counted in self._eval_batches[key][1]:
        if isinstance(batches, tuple): batches = zip(batches[0].split(EVAL_BATCH), batches[1].split(EVAL_BATCH))
        for x, y in batches:
            x, y = x.to(self.device), y.to(self.device)
            with torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext():
                out = self.model(x)
            if not counted: continue
            loss_sum += F.cross_entropy(out.float(), y, reduction='sum').double()
            correct += (out.argmax(1) == y).sum()
            count += len(y)
    loss_sum, correct, count = self._reduce(loss_sum, correct, count)
    return dict(loss=loss_sum / max(count, 1), acc=correct / max(count, 1))

@patch_to(Trainer)
def _eval_parts(self, dataset):
    """`(part, counted)`: this process's equal share of `dataset` and the remainder, which only rank 0 counts."""
    if self.world_size == 1: return [(dataset, True)]
    even = len(dataset) - len(dataset) % self.world_size
    parts = [(Subset(dataset, range(self.rank, even, self.world_size)), True),
             (Subset(dataset, range(even, len(dataset))), self.rank == 0)]
    return [(part, counted) for part, counted in parts if len(part)]  # the same parts on every process

@patch_to(Trainer)
def _eval_batches_of(self, part):
    """The evaluation batches of `part`: its decoded tensors on the device (in memory) or a DataLoader."""
    plain = self.in_memory(part)[0]  # evaluated without augmentation
    if plain is not None: return self._to_device(decode(plain))
    return DataLoader(part, batch_size=self.cfg.batch_size, shuffle=False, **self.loader_kwargs)


# %%
ev = fast.evaluate(fast.data.test)
test_close(ev['loss'], slow.evaluate(slow.data.test)['loss'], eps=1e-6)
test_eq(set(ev), {'loss', 'acc'})


# %% [markdown]
# ### The run folder
#
# `state` is the checkpoint: one dict written in one place, holding everything `--resume` needs (model,
# optimizer with its momentum or Adam moments, loss scaler, epoch, step, the metrics so far, and within an
# epoch its position, its running sums and the RNG states). After each epoch the metrics are appended to
# `metrics.jsonl` and then the checkpoint is written; a resumed run rewrites `metrics.jsonl` from the
# checkpoint's history, so the two always agree (and a damaged `metrics.jsonl` is repaired). The checkpoint it replaces is
# kept as `checkpoint.prev.pt`, the fallback when the latest does not load.
#
# The checkpoint also holds the state of each callback that has `state_dict()`, under its class name
# (numbered from the second callback of a class on: `StepStats`, `StepStats.1`); a resumed run gives it to
# the callback of the same name, and a checkpoint written before callbacks were saved resumes without it.

# %%
#| exporti
@patch_to(Trainer)
def _named_callbacks(self):
    """`(name, callback)` pairs: the class name, numbered from a class's second callback on ('StepStats.1')."""
    seen = {}
    for cb in self.callbacks:
        kind = type(cb).__name__
        seen[kind] = n = seen.get(kind, -1) + 1
        yield (kind if n == 0 else f'{kind}.{n}'), cb

@patch_to(Trainer)
def callback_states(self):
    """The `state_dict()` of each callback that has one, by name (what a checkpoint keeps of the callbacks)."""
    return {name: cb.state_dict() for name, cb in self._named_callbacks() if hasattr(cb, 'state_dict')}

@patch_to(Trainer)
def load_callback_states(self, states):
    """Give each callback with `load_state_dict` its state in `states` (from `callback_states`), by name."""
    for name, cb in self._named_callbacks():
        if name in states and hasattr(cb, 'load_state_dict'): cb.load_state_dict(states[name])


# %%
#| exporti
def _moved(v, device):
    """A running sum (a tensor, a list of tensors, or a number) on `device`."""
    if torch.is_tensor(v): return v.to(device)
    return [t.to(device) for t in v] if isinstance(v, list) else v

@patch_to(Trainer)
def state(self):
    """Everything `--resume` needs, as a checkpoint dict."""
    model, optimizer = checkpoint_state(self.model, self.optimizer)  # gathered in full if sharded (every rank calls)
    sums = None if self._sums is None else {k: _moved(v, 'cpu') for k, v in self._sums.items()}
    rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])
    scaler = self.scaler.state_dict() if self.scaler is not None else None
    return dict(format=CHECKPOINT_FORMAT, config=self.cfg.to_dict(), epoch=self.epoch, step=self.step,
                history=self.history, position=self.position, sums=sums, rng=rng, model=model, optimizer=optimizer,
                scaler=scaler, callbacks=self.callback_states())

@patch_to(Trainer)
def load_state(self, state, path='checkpoint'):
    """Continue from a checkpoint dict (see `state`), at an epoch's end or within it."""
    try:
        # sharded again under FSDP
        load_checkpoint_state(self.model, self.optimizer, state['model'], state['optimizer'])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"Checkpoint {path} does not match this model/optimizer: {e}") from e
    if self.scaler is not None and state.get('scaler'): self.scaler.load_state_dict(state['scaler'])
    self.epoch, self.step, self.history = state['epoch'], state['step'], list(state['history'])
    self.position, sums = state.get('position', 0), state.get('sums')
    self._callback_states = state.get('callbacks') or {}  # none in a checkpoint written before callbacks were saved
    self._sums = None if sums is None else {k: _moved(v, self.device) for k, v in sums.items()}
    if self._sums is not None:  # a checkpoint written before the step series were kept: none yet this epoch
        for k in STEP_SERIES: self._sums.setdefault(k, [])
    if state.get('rng') is not None:
        torch.set_rng_state(state['rng']['torch'])
        cuda = state['rng']['cuda']
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

@patch_to(Trainer)
def _start_run(self):
    """Create or check the run folder; resume from its newest checkpoint that loads if asked."""
    run = Path(self.cfg.out) if self.cfg.out else None
    if run is not None and ((run / CHECKPOINT).exists() or (run / PREVIOUS).exists()):
        if not self.cfg.resume:
            raise FileExistsError(f"Run folder {self.cfg.out} already holds a run: pass resume=True (--resume) to "
                                  "continue it, or choose another out")
        state, path = latest_checkpoint(run, self.cfg, ignore=RESUMABLE + ('epochs',))
        why = epochs_change(state['config'].get('epochs'), self.cfg)
        if why: raise ValueError(f"Checkpoint {path} was written by a run with other settings: {why}")
        self.load_state(state, path)
        self.checkpoint_path = path
        # a damaged latest checkpoint is kept aside, never rotated into the previous slot
        if path.name == PREVIOUS and self.rank == 0 and (run / CHECKPOINT).exists():
            os.replace(run / CHECKPOINT, run / f'{CHECKPOINT}.damaged')
    elif run is not None and self.rank == 0 and (run / METRICS).exists() and not self.cfg.resume:
        raise FileExistsError(f"Run folder {self.cfg.out} already holds {METRICS}: choose another out")
    self._saved_at = time.perf_counter()
    if self.out is None: return
    self.out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(self.out)  # left by a process killed while writing
    (self.out / DIVERGED).unlink(missing_ok=True)
    write_jsonl(self.metrics_log.path, self.history)  # the checkpoint's history: also what a damaged metrics.jsonl lost
    dev = torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else platform.processor() or 'cpu'
    made = provenance(device=f'{self.device} ({dev})')
    write_json(self.out / CONFIG, dict(self.cfg.to_dict(), versions=made['versions'], device_used=str(self.device),
                                       device_name=dev, world_size=self.world_size, command=sys.argv,
                                       provenance=made))

@patch_to(Trainer)
def _save(self, metrics=None):
    """Append an epoch's `metrics` to the run folder (none within an epoch), then write the checkpoint (two slots)."""
    self.check_finite()  # no state after a non-finite step is ever saved
    state = self.state() if is_sharded(self.model) else None  # gathering shards communicates: every rank
    if self.out is None: return
    if metrics is not None: self.metrics_log.append(metrics)
    save_checkpoint(self.out / CHECKPOINT, self.state() if state is None else state, previous=self.out / PREVIOUS)
    self.checkpoint_path, self._saved_at = self.out / CHECKPOINT, time.perf_counter()


# %% [markdown]
# A quick run: FCN on a small fake MNIST with StableSAM, no label smoothing, constant learning rate.
# It learns, it records the renormalization factor, and the same seed gives the same metrics (on a CPU,
# with the same number of threads: the thread count changes the order of floating-point sums).

# %%
hist = Trainer(TrainConfig(**quick)).fit()
for m in hist:
    print(f"epoch {m['epoch']}: train acc {m['train_acc']:.3f} test acc {m['test_acc']:.3f} "
          f"renorm {m['renorm_factor']:.3f}")
assert hist[-1]['test_acc'] > 0.5 and hist[-1]['train_loss'] < hist[0]['train_loss']
again = Trainer(TrainConfig(**quick)).fit()
test_eq([{k: v for k, v in m.items() if k not in ('time', 'cpu_time', 'images_per_s')} for m in again],
        [{k: v for k, v in m.items() if k not in ('time', 'cpu_time', 'images_per_s')} for m in hist])

# %% [markdown]
# ## Exact resume
#
# A run killed after any epoch continues from its checkpoint to the same metrics as an uninterrupted
# run: the sampling order and the augmentation depend only on (seed, epoch, index), and the
# checkpoint holds the optimizer state (momentum) and the step counter of the learning-rate schedule.
# Here the first run stops after 2 of 3 epochs (as a killed run would), the second resumes it.

# %%
#| export
_NOT_COMPARED = ('time', 'cpu_time', 'images_per_s')

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
# ## A validation split
#
# `val_split=N` (`--val-split N`) holds N training examples out, drawn with the run's seed
# (`stablesam.data.validation_split`), trains on the rest and records `val_loss` and `val_acc` every epoch:
# what `stablesam-results --protocol held-out` chooses $\rho$ and the epoch on, so that the test set is read
# once.

# %%
tv = Trainer(TrainConfig(**dict(cifar, epochs=2, val_split=16)))
test_eq((len(tv.data.train), len(tv.val)), (48, 16))
test_eq(set(tv.data.train.indices.tolist()) & set(tv.val.indices.tolist()), set())
hv = tv.fit()
assert all(0 <= m['val_acc'] <= 1 and m['val_loss'] > 0 for m in hv)
test_fail(lambda: Trainer(TrainConfig(**dict(cifar, val_split=64))), contains='between 1 and 63')


# %% [markdown]
# Within an epoch too: with a checkpoint every step (`checkpoint_every` is in seconds; 600 by default),
# a run stopped after batch 3 of epoch 2 resumes from its position in that epoch, with the epoch's running
# sums, and reports what the uninterrupted run reports.

# %%
class KillAt:
    def after_step(self, trainer):
        if (trainer.epoch, trainer.position) == (1, 3): raise KeyboardInterrupt  # killed within epoch 2
mid = dict(quick, epochs=2, checkpoint_every=1e-9)
try: Trainer(TrainConfig(**mid, out=str(root / 'mid')), callbacks=[KillAt()]).fit()
except KeyboardInterrupt: pass
saved = torch.load(root / 'mid' / 'checkpoint.pt', weights_only=True)
test_eq((saved['epoch'], saved['position']), (1, 2))
test_eq(comparable(Trainer(TrainConfig(**mid, out=str(root / 'mid'), resume=True)).fit()),
        comparable(Trainer(TrainConfig(**mid)).fit()))

# %% [markdown]
# A checkpoint written before a setting existed (here `ascent` and `fsdp`, added later) resumes: the missing
# setting counts as its default. `fsdp` needs torchrun (`tests/test_train_distributed.py` runs it there).

# %%
old = torch.load(root / 'mid' / 'checkpoint.pt', weights_only=True)
for key in ('ascent', 'fsdp'): del old['config'][key]
save_checkpoint(root / 'mid' / 'checkpoint.pt', old)
test_eq(len(Trainer(TrainConfig(**mid, out=str(root / 'mid'), resume=True)).fit()), 2)
test_fail(lambda: Trainer(TrainConfig(**mid, out=str(root / 'mid'), resume=True, ascent='local')).fit(),
          contains="ascent: 'global' in the checkpoint, 'local' now")
test_fail(lambda: Trainer(TrainConfig(**quick, fsdp=True)),
          contains='Invalid fsdp: FSDP2 shards over processes; run under torchrun')

# %% [markdown]
# ## What survives what
#
# `tests/test_faults.py` measures it. Its chaos tests start a run, SIGKILL it at random moments (during
# start-up, at a random moment of training, while a checkpoint is half written), truncate its latest
# checkpoint, cut its JSON-lines log in the middle of a line, resume after each fault, and compare the
# finished run with an uninterrupted one. `stablesam-train`: FCN with StableSAM on 512 real MNIST
# training images (`../shared/data`; generated ones where it is absent), 8 epochs, a checkpoint every
# 0.05 s. `stablesam-stability`: the SGD and StableSAM pairs of FCN on 399 generated MNIST images,
# 4 epochs, the same checkpoint interval. Measured over four random fault schedules
# (`STABLESAM_CHAOS_SEED=0..3`, `STABLESAM_CHAOS_REPORT=...` writes the counts) on the 2-core development
# machine:
#
# | fault | `stablesam-train`: tried / survived | `stablesam-stability`: tried / survived | data lost |
# |---|---|---|---|
# | SIGKILL during start-up (data loading, model set-up) | 2 / 2 | 3 / 3 | none |
# | SIGKILL at a random moment of training (mid-epoch or between checkpoints) | 13 / 13 | 13 / 13 | none |
# | SIGKILL while a checkpoint is half written | 8 / 8 | 8 / 8 | none |
# | latest checkpoint truncated (resumes from the previous one, with a warning naming both) | 4 / 4 | 4 / 4 | none |
# | `metrics.jsonl` / `records.jsonl` cut in the middle of a line | 4 / 4 | 4 / 4 | none |
#
# "Survived" means the run resumed after the fault and, once all faults were done, finished with its final
# parameters and optimizer state (`stablesam-train`) or both final models of each pair
# (`stablesam-stability`) bit-identical to the uninterrupted run's, and every epoch's metrics (every
# stability record) equal: no epoch and no record was lost. A killed run repeats about `checkpoint_every`
# seconds of training at most.
#
# Also tested there: a non-finite loss (`--lr 100`) stops the run with exit status 3, a message naming
# the epoch, step, learning rate and the last good checkpoint (kept, its weights finite) and
# `diverged.json`; `--on-nonfinite skip` finishes and counts `skipped_steps`; a truncated or corrupt
# MNIST/CIFAR file is reported with its path and what is wrong (`tests/test_data.py`); a damaged
# `config.json` or `metrics.jsonl` is named with its line. What does not survive: both checkpoint slots
# damaged (the error names the previous one); under DDP and FSDP checkpoints are written at epoch ends only;
# a callback's per-step state is in a mid-epoch checkpoint only if the callback has `state_dict()`.

# %% [markdown]
# ## Training curves of a quick run

# %%
hists = {opt: Trainer(TrainConfig(**dict(quick, optimizer=opt, epochs=6, progress=False))).fit()
         for opt in ('sgd', 'sam', 'stablesam')}
fig, axs = plt.subplots(1, 3, figsize=(10, 3))
for opt, h in hists.items():
    ep = [m['epoch'] for m in h]
    axs[0].plot(ep, [m['train_loss'] for m in h], label=opt)
    axs[1].plot(ep, [m['test_acc'] for m in h], label=opt)
    if 'norm_ratio' in h[0]: axs[2].plot(ep, [m['norm_ratio'] for m in h], label=opt)
for ax, t in zip(axs, ('train loss', 'test accuracy', r'mean $\|g\|/\|g^{asc}\|$')):
    ax.set(title=t, xlabel='epoch')
    ax.legend()
plt.tight_layout()
plt.show()
plt.close(fig)

# %% [markdown]
# ## Throughput
#
# `benchmarks/engine_speed.py` compares `stablesam-train` with a plain PyTorch loop on the same decoded
# tensors (real MNIST, FCN, 10,000 images, batch 128, `--no-augment`, one thread; the plain loop is
# `randperm`, index slices, forward, backward, step). On the shared 2-core machine under heavy load (load
# average about 9), three runs of three rounds each gave median epoch-time ratios of 0.99, 0.87, 1.09
# (wall) and 1.02, 0.95, 1.07 (CPU time) for SGD, 0.95, 1.06, 0.97 (wall) and 1.01, 1.07, 0.98 (CPU) for
# StableSAM; single rounds ranged from 0.64 to 1.24, which is the machine, not the engine: measured in
# isolation, the engine's per-step bookkeeping (metrics summed on the device, the learning rate, the
# step function) costs about 15 microseconds, well under 1% of a step. The batched CIFAR augmentation ran
# at 6.0x, 5.4x and 5.6x the images/s of torchvision's per-image transforms through a DataLoader (about
# 25,000 vs 4,500 images/s, one thread).
#
# `benchmarks/train_throughput.py` times `Trainer.train_step` for SGD and StableSAM on ResNet-20 with
# batch 128, interleaving rounds in one process. On the shared 2-core development machine (noisy,
# under load from other jobs; absolute numbers will be re-measured on a quiet machine), with one thread
# and 5 rounds of 3 steps, it printed 147.7 images/s for SGD and 68.3 images/s for StableSAM (ratio 0.463,
# time ratio 2.16); under heavier load earlier 98.3 vs 41.6 (0.42) with one thread and 26.8 vs 12.2 (0.45)
# with two. StableSAM runs two forward-backward passes per step, so 0.5 is the ceiling of the ratio.
