# %%
#| default_exp loggers

# %% [markdown]
# # loggers
#
# > Training curves in TensorBoard, Weights & Biases or a CSV file: `--logger tensorboard wandb csv`, resumable

# %% [markdown]
# `metrics.jsonl` holds a run's epochs; researchers watch runs in TensorBoard or Weights & Biases. `TrainLogger`
# is a `Trainer` callback ([train](05_train.ipynb)) that writes, to one or several backends at once:
#
# - **per step**, every `every` steps (`--log-every`, 50 by default): `train/loss` (the first pass's loss),
#   `train/lr`, and for the SAM family `train/grad_norm` ($\|g\|$), `train/asc_grad_norm` ($\|g^{asc}\|$),
#   `train/norm_ratio` and `train/renorm_factor`, the values of that step. The optimizer keeps them as device
#   tensors; they are read in one host sync per logged step, never on the others;
# - **per epoch**, the numbers `metrics.jsonl` holds (`epoch/train_loss`, `epoch/test_acc`, ...), at the
#   global step where the epoch ended.
#
# The x-axis is the global step everywhere. Backends (`LOGGERS`), each written under the run folder:
#
# | `--logger` | writes | needs |
# |---|---|---|
# | `tensorboard` | `tensorboard/events.out.tfevents.*` through `torch.utils.tensorboard` | `pip install 'stablesam[tensorboard]'` |
# | `wandb` | a W&B run (`wandb/`), its id in `wandb.json` | `pip install 'stablesam[wandb]'`; `WANDB_MODE=offline` for no network, `WANDB_PROJECT` (default `stablesam`) |
# | `csv` | `scalars.csv`: one `step,tag,value` row per value | nothing |
#
# **Resume.** A resumed run continues the same TensorBoard run (the new writer purges what the killed process
# had logged after the checkpoint it resumes from, so the reader sees each step once), the same W&B run (the id
# kept in `wandb.json`, `resume='allow'`; steps it already holds are not sent again: resume is exact, so they
# would carry the same values) and the same CSV file (its rows after the checkpoint dropped).
#
# **Experiments.** `stablesam-stability`, `-robustness`, `-landscape` and `stablesam-train --sweep ... --executor`
# take the same `--logger` and `--log-every` (`stablesam.experiment.add_common`): the experiment runner opens
# `logging_to(run folder, ...)` around each run, and every `Trainer` built inside it gets a `TrainLogger` writing
# to `runs/<spec id>/log<i>/` of the results folder (`i` counts the run's trainers: a stability pair has two).

# %%
#| hide
from fastcore.test import test_eq, test_fail
import csv
import tempfile
from pathlib import Path
import torch

# %%
#| hide
torch.set_num_threads(1)

# %%
#| export
import csv
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import torch

from stablesam.experiment import LOGGERS
from stablesam.runs import atomic_write, read_json, require, write_json

# %%
#| export
STEP_STATS = ('grad_norm', 'asc_grad_norm', 'norm_ratio', 'renorm_factor')   # from the optimizer's last_stats
WANDB_STATE = 'wandb.json'   # the W&B run id and the last step sent, in the run folder
SCALARS = 'scalars.csv'


# %% [markdown]
# ## Backends
#
# Each backend takes `log(values, step)` (a dict of floats) and `close()`; `start` is the first step the
# process will log (a resumed run's step + 1), before which what is there already stays.

# %%
#| export
class TensorBoardBackend:
    """Scalars to TensorBoard event files in `folder` (purging the steps from `start` on that a killed run wrote)."""
    def __init__(self, folder, start=1, name=None, config=None):
        require('tensorboard', 'tensorboard')
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(folder), purge_step=start)

    def log(self, values, step):
        """Write `values` at `step`."""
        for k, v in values.items(): self.writer.add_scalar(k, v, step)

    def flush(self):
        """Write what is buffered to disk."""
        self.writer.flush()

    def close(self):
        """Flush and close the event file."""
        self.writer.close()


class WandbBackend:
    """Scalars to a Weights & Biases run; its id lives in `folder/wandb.json`, so a resumed run continues it."""
    def __init__(self, folder, start=1, name=None, config=None):
        wandb = require('wandb', 'wandb')
        self.folder, state = Path(folder), Path(folder) / WANDB_STATE
        self.folder.mkdir(parents=True, exist_ok=True)
        saved = read_json(state) if state.exists() else {}
        self.id, self.sent = saved.get('id') or secrets.token_hex(4), dict(saved.get('last_step', {}))
        self.before = dict(self.sent)   # what earlier processes sent, per tag group ('train', 'epoch')
        self.run = wandb.init(dir=str(self.folder), id=self.id, resume='allow', name=name, config=config,
                              project=os.environ.get('WANDB_PROJECT', 'stablesam'), reinit='create_new')
        write_json(state, dict(id=self.id, last_step=self.sent))

    def log(self, values, step):
        """Send `values` at `step`, unless an earlier process sent that step of their group (resume repeats none)."""
        group = next(iter(values), '').split('/')[0]
        if step <= self.before.get(group, 0): return
        self.run.log(dict(values), step=step)
        self.sent[group] = step
        write_json(self.folder / WANDB_STATE, dict(id=self.id, last_step=self.sent))

    def flush(self):
        """Nothing to do: W&B writes as it goes."""

    def close(self):
        """Finish the W&B run."""
        self.run.finish()

class CSVBackend:
    """Scalars as `step,tag,value` rows of `folder/scalars.csv` (rows from step `start` on are dropped first)."""
    def __init__(self, folder, start=1, name=None, config=None):
        self.path = Path(folder) / SCALARS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_scalars(self.path) if r[0] < start] if self.path.exists() else []
        rows = [('step', 'tag', 'value')] + [(s, t, repr(v)) for s, t, v in kept]
        atomic_write(self.path, lambda tmp: _write_rows(tmp, rows))
        self.file = open(self.path, 'a', newline='')
        self.writer = csv.writer(self.file)

    def log(self, values, step):
        """Append `values` at `step`."""
        self.writer.writerows((step, k, repr(float(v))) for k, v in values.items())

    def flush(self):
        """Write what is buffered to disk."""
        self.file.flush()

    def close(self):
        """Flush and close the file."""
        self.file.close()


def _write_rows(path, rows):
    """Write `rows` as a CSV file at `path`."""
    with open(path, 'w', newline='') as f: csv.writer(f).writerows(rows)


BACKENDS = dict(tensorboard=TensorBoardBackend, wandb=WandbBackend, csv=CSVBackend)


def read_scalars(path):
    """The `(step, tag, value)` rows of a `scalars.csv` (a row cut by a kill is dropped)."""
    with open(path, newline='') as f:
        rows = list(csv.reader(f))[1:]
    out = []
    for row in rows:
        try: out.append((int(row[0]), row[1], float(row[2])))
        except (IndexError, ValueError): continue
    return out


# %% [markdown]
# TensorBoard writes under `tensorboard/`, W&B under `wandb/`, the CSV file in the folder itself:

# %%
#| export
def backend_folder(folder, name):
    """Where backend `name` writes in run folder `folder`."""
    return Path(folder) / 'tensorboard' if name == 'tensorboard' else Path(folder)


# %% [markdown]
# ## The callback

# %%
#| export
def check_loggers(names) -> tuple:
    """`names` (a name, or several) as a tuple of known backends; an unknown one is a ValueError listing them."""
    names = (names,) if isinstance(names, str) else tuple(names or ())
    unknown = [n for n in names if n not in LOGGERS]
    if unknown: raise ValueError(f"Unknown logger: {unknown[0]!r} (choose from {', '.join(LOGGERS)})")
    return tuple(dict.fromkeys(names))


class TrainLogger:
    """`Trainer` callback: step scalars every `every` steps and each epoch's metrics, to the `names` backends."""
    def __init__(self, names, folder, every=50, name=None):
        self.names, self.folder, self.every, self.name = check_loggers(names), Path(folder), int(every), name
        if self.every < 1: raise ValueError(f"Invalid log_every: {every} (an integer >= 1)")
        self.backends = None

    def open(self, trainer, start):
        """Open the backends (rank 0 only); what an earlier process logged from step `start` on is replaced."""
        if self.backends is not None: return
        self.backends = []
        if trainer.rank != 0: return
        config = trainer.cfg.to_dict()
        for n in self.names:
            self.backends.append(BACKENDS[n](backend_folder(self.folder, n), start=start,
                                             name=self.name or self.folder.name, config=config))

    def write(self, values, step):
        """Send `values` to every backend."""
        for b in self.backends: b.log(values, step)

    def before_fit(self, trainer): self.open(trainer, trainer.step + 1)

    def after_step(self, trainer):
        """Every `every` steps: the step's loss, lr and SAM statistics (one host sync)."""
        self.open(trainer, trainer.step)   # a trainer driven without fit: its first step is this one
        if trainer.step % self.every: return
        loss = getattr(trainer, 'last_loss', None)
        if not self.backends or loss is None: return   # another rank, or a skipped step
        stats = getattr(trainer.optimizer, 'last_stats', {}) or {}
        names = ['loss'] + [k for k in STEP_STATS if k in stats]
        values = torch.stack([loss.detach().float()] + [stats[k].detach().float() for k in names[1:]]).tolist()
        logged = {f'train/{k}': v for k, v in zip(names, values)}
        logged['train/lr'] = float(trainer.optimizer.param_groups[0]['lr'])
        self.write(logged, trainer.step)

    def after_epoch(self, trainer, metrics):
        """The epoch's metrics (the numbers of its `metrics.jsonl` line) at the step where it ended."""
        self.open(trainer, trainer.step)
        numbers = {f'epoch/{k}': float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.write(numbers, trainer.step)
        for b in self.backends: b.flush()

    def after_fit(self, trainer): self.close()

    def close(self):
        """Close the backends (a later `open` starts them again)."""
        for b in self.backends or (): b.close()
        self.backends = None


# %% [markdown]
# ## Loggers for every trainer of an experiment's run
#
# The experiment runner wraps each run in `logging_to(folder, names, every)`; `trainer_loggers(trainer)`, which
# the `Trainer` calls when it is built, returns a `TrainLogger` for it inside such a block (the `i`-th trainer of
# the run writes to `folder/log<i>`) and nothing outside one. The block closes them.

# %%
#| export
_ACTIVE = []   # the innermost logging_to block: [folder, names, every, loggers made]


@contextmanager
def logging_to(folder, names, every=50):
    """Within the block, every `Trainer` built logs to `folder/log<i>` with backends `names` (none: no logging)."""
    names = check_loggers(names)
    if not names or folder is None:
        yield
        return
    _ACTIVE.append([Path(folder), names, every, []])
    try: yield
    finally:
        for logger in _ACTIVE.pop()[3]: logger.close()


def trainer_loggers(trainer) -> list:
    """The loggers a `Trainer` being built gets: one `TrainLogger` inside a `logging_to` block, else none."""
    if not _ACTIVE: return []
    folder, names, every, made = _ACTIVE[-1]
    logger = TrainLogger(names, folder / f'log{len(made)}', every, name=f'{folder.name}/log{len(made)}')
    made.append(logger)
    return [logger]


# %% [markdown]
# ## A quick run, logged to CSV
#
# FCN with StableSAM on generated MNIST images, 2 epochs of 8 steps, a line every 3 steps: steps 3, 6, 9, 12
# and 15, and the two epochs at steps 8 and 16 (`tests/test_loggers.py` does the same with TensorBoard, read
# back with TensorBoard's own event reader, and with W&B in offline mode, and kills and resumes the run).

# %%
from stablesam.config import TrainConfig
from stablesam.data import write_fake_mnist
from stablesam.train import Trainer

# %%
root = Path(tempfile.mkdtemp())
write_fake_mnist(root, n_train=512, n_test=128)
cfg = TrainConfig(dataset='mnist', data_root=str(root), model='fcn', optimizer='stablesam', epochs=2, batch_size=64,
                  out=str(root / 'run'), progress=False)
trainer = Trainer(cfg, callbacks=[TrainLogger('csv', root / 'run', every=3)])
history = trainer.fit()
rows = read_scalars(root / 'run' / SCALARS)
test_eq(sorted({s for s, t, _ in rows if t == 'train/loss'}), [3, 6, 9, 12, 15])
test_eq([s for s, t, _ in rows if t == 'epoch/test_acc'], [8, 16])
test_eq([v for s, t, v in rows if t == 'epoch/test_acc'], [m['test_acc'] for m in history])
test_eq({t for s, t, _ in rows if s == 3}, {'train/loss', 'train/lr', 'train/grad_norm', 'train/asc_grad_norm',
                                            'train/norm_ratio', 'train/renorm_factor'})
test_fail(lambda: TrainLogger('visdom', root), contains="Unknown logger: 'visdom' (choose from tensorboard, wandb")
for s, t, v in rows[:7]: print(s, t, round(v, 4))
