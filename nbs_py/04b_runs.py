# %%
#| default_exp runs

# %% [markdown]
# # runs
#
# > Run folders: atomic writes, checkpoints read safely, `config.json`, `metrics.jsonl` and the JSON-lines logs that resume exactly

# %% [markdown]
# A training run writes a folder: `config.json` (every setting, the package versions, the device),
# `metrics.jsonl` (one JSON object per epoch), `checkpoint.pt` (everything `--resume` needs), and any
# JSON-lines logs its callbacks keep (step statistics, Hessian probes). Tables and figures are computed
# from these folders alone, so a run made on a GPU elsewhere can be copied back and tabulated here.
#
# This module is the one place that reads and writes them. It imports torch only inside the functions
# that need it (checkpoints, versions), so `stablesam-results` reads run folders without it.

# %%
#| hide
from fastcore.test import *
import tempfile
from pathlib import Path
import torch

# %%
#| export
import json
import os
import platform
from pathlib import Path

# %% [markdown]
# ## Atomic writes
#
# A file that must never be seen half written (a checkpoint, `config.json`) is written to a temporary
# file in the same folder and renamed onto its name: a run killed mid-save leaves the previous version.

# %%
#| export
CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
CHECKPOINT = 'checkpoint.pt'

def atomic_write(path, write):
    """Call `write(tmp_path)`, then rename the temporary file onto `path` (no half-written file is ever seen)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists(): tmp.unlink()

def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + '\n'))

def write_jsonl(path, records):
    """Write `records` as a JSON-lines file, atomically (replaces what was there)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(''.join(json.dumps(r) + '\n' for r in records)))

def append_jsonl(path, record):
    """Append `record` as one JSON line to `path` (a long run that stops keeps what it wrote)."""
    with open(path, 'a') as f: f.write(json.dumps(record) + '\n')

def read_jsonl(path):
    """The JSON objects of a JSON-lines file, one per non-empty line."""
    with open(path) as f: return [json.loads(line) for line in f if line.strip()]


# %%
tmp = Path(tempfile.mkdtemp())
write_jsonl(tmp / 'a.jsonl', [dict(epoch=1), dict(epoch=2)])
append_jsonl(tmp / 'a.jsonl', dict(epoch=3))
test_eq([r['epoch'] for r in read_jsonl(tmp / 'a.jsonl')], [1, 2, 3])
def fail(tmp_path): Path(tmp_path).write_text('half'); raise KeyboardInterrupt
try: atomic_write(tmp / 'a.jsonl', fail)
except KeyboardInterrupt: pass
test_eq(len(read_jsonl(tmp / 'a.jsonl')), 3)              # the old file survives a write killed half way
test_eq(sorted(p.name for p in tmp.iterdir()), ['a.jsonl'])  # and no temporary file is left


# %% [markdown]
# ## Logs that resume
#
# Every per-epoch record of a run (the metrics, a callback's statistics) goes into a `JsonlLog`. A run
# appends one record after each epoch and only then writes its checkpoint; a resumed run first
# truncates each log to the epochs its checkpoint finished, then appends again. So a run killed between
# the two writes, or in the middle of an append (a partial last line), resumes to the very file an
# uninterrupted run writes.

# %%
#| export
class JsonlLog:
    """A run folder's JSON-lines log of per-epoch records: appended after each epoch, truncated to the finished epochs on resume."""
    def __init__(self, path): self.path = Path(path)

    def records(self):
        """The records written so far (a partial last line, from a run killed mid-append, is left out)."""
        if not self.path.exists(): return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        out = []
        for i, line in enumerate(lines):
            try: out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1: raise ValueError(f"{self.path}, line {i + 1}: not JSON: {line[:80]!r}") from None
        return out

    def resume(self, epoch):
        """Truncate the log to the records of epochs up to `epoch` (all finished) and return them."""
        kept = [r for r in self.records() if r['epoch'] <= epoch]
        if self.path.exists(): write_jsonl(self.path, kept)
        return kept

    def append(self, record):
        """Append one record (a dict with an `epoch`)."""
        append_jsonl(self.path, record)


# %%
log = JsonlLog(tmp / 'log.jsonl')
test_eq(log.records(), [])
for e in (1, 2, 3): log.append(dict(epoch=e, loss=1 / e))
with open(log.path, 'a') as f: f.write('{"epoch": 4, "lo')   # killed mid-append
test_eq([r['epoch'] for r in log.records()], [1, 2, 3])
test_eq([r['epoch'] for r in log.resume(2)], [1, 2])          # the checkpoint had finished epoch 2
log.append(dict(epoch=3, loss=0.3))
test_eq([r['epoch'] for r in read_jsonl(log.path)], [1, 2, 3])
log.path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
test_fail(log.records, contains='line 2: not JSON')

# %% [markdown]
# ## Checkpoints
#
# A checkpoint is one dict written in one place (`Trainer.state`), saved atomically and read with
# `weights_only=True`: a checkpoint copied from elsewhere can never run code. A corrupt file, a file
# that is not a stablesam checkpoint and a checkpoint written by a run with other settings each get an
# error that names the file and what is wrong. Settings in `ignore` may differ (the run folder, the
# device, the number of loader workers: they do not change the results).

# %%
#| export
CHECKPOINT_FORMAT = 'stablesam-checkpoint'

def save_checkpoint(path, state):
    """Save the checkpoint dict `state` to `path` atomically."""
    import torch
    atomic_write(path, lambda tmp: torch.save(state, tmp))

def load_checkpoint(path, config=None, ignore=()):
    """Read a checkpoint safely (`weights_only=True`); with `config` (a dict or a `TrainConfig`), check it was written by the same settings."""
    import torch
    path = Path(path)
    try: state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e: raise RuntimeError(f"Cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise RuntimeError(f"Checkpoint {path} is not a stablesam training checkpoint")
    if config is not None:
        saved, now = state['config'], (config.to_dict() if hasattr(config, 'to_dict') else dict(config))
        diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in now
                if k not in ignore and saved.get(k) != now[k]]
        if diff: raise ValueError(f"Checkpoint {path} was written by a run with other settings: " + '; '.join(diff))
    return state


# %%
save_checkpoint(tmp / 'c.pt', {'format': CHECKPOINT_FORMAT, 'config': dict(lr=0.1, out='here'), 'x': torch.ones(2)})
test_eq(load_checkpoint(tmp / 'c.pt', dict(lr=0.1, out='elsewhere'), ignore=('out',))['x'], torch.ones(2))
test_fail(lambda: load_checkpoint(tmp / 'c.pt', dict(lr=0.2, out='here')), contains="lr: 0.1 in the checkpoint, 0.2 now")
(tmp / 'bad.pt').write_bytes(b'not a checkpoint')
test_fail(lambda: load_checkpoint(tmp / 'bad.pt'), contains=f'Cannot read checkpoint {tmp}/bad.pt')
save_checkpoint(tmp / 'other.pt', {'format': 'other'})
test_fail(lambda: load_checkpoint(tmp / 'other.pt'), contains='is not a stablesam training checkpoint')


# %% [markdown]
# ## Reading run folders
#
# `config.json` records the settings with what produced them: the package versions and the machine.
# `read_run` returns a folder's config and metrics; it needs only the standard library.

# %%
#| export
def package_versions():
    """The versions of Python, torch, torchvision and the packages a run's results depend on."""
    import torch, torchvision
    from importlib.metadata import version, PackageNotFoundError
    v = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__)
    for pkg in ('stablesam', 'pytorchcv', 'numpy'):
        try: v[pkg] = version(pkg)
        except PackageNotFoundError: v[pkg] = None
    return v

def read_metrics(run_dir):
    """The per-epoch metrics of a run folder (list of dicts; empty if there are none yet)."""
    return JsonlLog(Path(run_dir) / METRICS).records()

def read_run(run_dir):
    """`(config, metrics)` of a run folder: its `config.json` as a dict and its per-epoch metrics."""
    path = Path(run_dir) / CONFIG
    try: return json.loads(path.read_text()), read_metrics(run_dir)
    except (json.JSONDecodeError, OSError, ValueError) as e: raise ValueError(f"Unreadable run folder {path.parent}: {e}") from e


# %%
write_json(tmp / CONFIG, dict(lr=0.1, versions=package_versions()))
JsonlLog(tmp / METRICS).append(dict(epoch=1, test_acc=0.5))
cfg, ms = read_run(tmp)
test_eq((cfg['lr'], ms), (0.1, [dict(epoch=1, test_acc=0.5)]))
test_eq(set(cfg['versions']) >= {'python', 'torch', 'stablesam'}, True)
test_fail(lambda: read_run(tmp / 'nowhere'), contains='Unreadable run folder')
