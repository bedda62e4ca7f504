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
import stablesam
import warnings
from pathlib import Path
import torch

# %%
#| export
import dataclasses
import json
import math
import os
import platform
import warnings
from pathlib import Path

# %% [markdown]
# ## Atomic writes
#
# A file that must never be seen half written (a checkpoint, `config.json`) is written to a temporary
# file in the same folder, flushed to disk and renamed onto its name: a run killed mid-save (or a machine
# that stops) leaves the previous version. A temporary file left by a killed process is removed when the
# run resumes.
#
# Every JSON file is strict JSON: a NaN or an infinity (a diverged loss) is written as `null`, and the
# record's `nonfinite` field says which entries were what, so any JSON reader reads every file.

# %%
#| export
CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
CHECKPOINT = 'checkpoint.pt'
DIVERGED = 'diverged.json'  # written by a run that stopped on a non-finite loss or gradient: where, and what to do

def atomic_write(path, write):
    """Call `write(tmp_path)`, flush the file to disk, then rename it onto `path` (no half-written file is seen)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb') as f: os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists(): tmp.unlink()

def remove_temporaries(folder):
    """Delete the temporary files that processes killed in `atomic_write` left in `folder`."""
    for f in Path(folder).glob('.*.tmp*'): f.unlink(missing_ok=True)

def _strict(obj, path, bad):
    if isinstance(obj, float) and not math.isfinite(obj):
        bad[path] = 'nan' if obj != obj else ('inf' if obj > 0 else '-inf')
        return None
    if isinstance(obj, dict): return {k: _strict(v, f'{path}.{k}' if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)): return [_strict(v, f'{path}[{i}]', bad) for i, v in enumerate(obj)]
    return obj

def strict_json(obj):
    """`obj` with each NaN or infinity replaced by None, named in a dict's `nonfinite` field ('nan', 'inf', '-inf')."""
    bad = {}
    out = _strict(obj, '', bad)
    if bad and isinstance(out, dict): out['nonfinite'] = dict(out.get('nonfinite') or {}, **bad)
    return out

def _dumps(obj, **kw): return json.dumps(strict_json(obj), allow_nan=False, **kw)

def write_json(path, obj):
    """Write `obj` as indented strict JSON (see `strict_json`), atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(_dumps(obj, indent=2) + '\n'))

def write_jsonl(path, records):
    """Write `records` as a strict JSON-lines file, atomically (replaces what was there)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(''.join(_dumps(r) + '\n' for r in records)))

def append_jsonl(path, record):
    """Append `record` as one strict JSON line to `path` (a long run that stops keeps what it wrote)."""
    with open(path, 'a') as f: f.write(_dumps(record) + '\n')

def read_json(path):
    """The object in a JSON file; a damaged file is a ValueError naming it, the line and the column."""
    try: return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"Damaged {path}: {e.msg} at line {e.lineno}, column {e.colno}") from e

def read_jsonl(path, torn_tail=False):
    """Objects of a JSON-lines file; a damaged line is a ValueError naming it (`torn_tail`: drop a cut last line)."""
    lines = Path(path).read_text().split('\n')  # a last line without a newline was cut short by a writer that stopped
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip(): continue
        try: out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if torn_tail and n == len(lines): break
            raise ValueError(f"Damaged {path}, line {n}: {e.msg} (column {e.colno}) in {line.strip()[:60]!r}") from e
    return out


# %%
tmp = Path(tempfile.mkdtemp())
write_jsonl(tmp / 'a.jsonl', [dict(epoch=1), dict(epoch=2)])
append_jsonl(tmp / 'a.jsonl', dict(epoch=3))
test_eq([r['epoch'] for r in read_jsonl(tmp / 'a.jsonl')], [1, 2, 3])
def fail(tmp_path):
    Path(tmp_path).write_text('half')
    raise KeyboardInterrupt
try: atomic_write(tmp / 'a.jsonl', fail)
except KeyboardInterrupt: pass
test_eq(len(read_jsonl(tmp / 'a.jsonl')), 3)              # the old file survives a write killed half way
test_eq(sorted(p.name for p in tmp.iterdir()), ['a.jsonl'])  # and no temporary file is left
write_jsonl(tmp / 'n.jsonl', [dict(epoch=1, train_loss=float('nan'), curve=[1.0, float('inf')])])
print((tmp / 'n.jsonl').read_text())
test_eq(read_jsonl(tmp / 'n.jsonl'),
        [dict(epoch=1, train_loss=None, curve=[1.0, None], nonfinite={'train_loss': 'nan', 'curve[1]': 'inf'})])
(tmp / 'n.jsonl').write_text('{"epoch": 1}\n{"epoch": 2,, }\n')
test_fail(lambda: read_jsonl(tmp / 'n.jsonl'), contains=f"Damaged {tmp / 'n.jsonl'}, line 2: Expecting property name")
(tmp / 'c.json').write_text('{\n  "lr": 0.1\n  "epochs": 3\n}')
test_fail(lambda: read_json(tmp / 'c.json'),
          contains=f"Damaged {tmp / 'c.json'}: Expecting ',' delimiter at line 3, column 3")
for f in ('n.jsonl', 'c.json'): (tmp / f).unlink()


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
    """A run's JSON-lines log of per-epoch records: appended after each epoch, cut to the finished ones on resume."""
    def __init__(self, path): self.path = Path(path)

    def records(self):
        """The records written so far (a partial last line, from a run killed mid-append, is left out)."""
        return read_jsonl(self.path, torn_tail=True) if self.path.exists() else []

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
test_fail(log.records, contains=f'Damaged {log.path}, line 2: Expecting value')

# %% [markdown]
# ## Checkpoints
#
# A checkpoint is one dict written in one place (`Trainer.state`), saved atomically and read with
# `weights_only=True`: a checkpoint copied from elsewhere can never run code. A corrupt file, a file
# that is not a stablesam checkpoint and a checkpoint written by a run with other settings each get an
# error that names the file and what is wrong. Settings in `ignore` may differ (the run folder, the
# device, the number of loader workers: they do not change the results). When `config` is a dataclass (a
# `TrainConfig`), a setting the checkpoint's config lacks (one added after it was written) counts as that
# setting's default, so older checkpoints still resume.
#
# A run folder keeps two checkpoints: `checkpoint.pt` and the one before it, `checkpoint.prev.pt`. A new
# checkpoint is written to a temporary file and read back before the latest moves to the previous slot
# and the new one takes its place, so a good checkpoint is on disk at every moment. `latest_checkpoint`
# falls back to the previous one, with a warning naming both files, when the latest does not load.

# %%
#| export
CHECKPOINT_FORMAT = 'stablesam-checkpoint'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or used (damaged, not a stablesam checkpoint, another model's)."""
PREVIOUS = 'checkpoint.prev.pt'  # the checkpoint before the latest

def _read(path):
    """`torch.load` with `weights_only=True` (a checkpoint never runs code); a failure is a CheckpointError."""
    import torch
    try: return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        size = f'{Path(path).stat().st_size} bytes' if Path(path).exists() else 'missing'
        why = (str(e).splitlines() or [''])[0]
        if 'Weights only load failed' in why:
            why = 'not a file of plain tensors (damaged, or holding objects whose loading could run code: never loaded)'
        raise CheckpointError(f"Cannot read checkpoint {path} ({size}): {type(e).__name__}: {why}") from e

def save_checkpoint(path, state, previous=None):
    """Save checkpoint dict `state` to `path` atomically once it reads back; the one it replaces goes to `previous`."""
    import torch
    path = Path(path)
    def write(tmp):
        torch.save(state, tmp)
        _read(tmp)  # a file that does not load never replaces a good checkpoint
        if previous is not None and path.exists(): os.replace(path, previous)
    atomic_write(path, write)

def load_checkpoint(path, config=None, ignore=()):
    """Read a checkpoint safely (`weights_only=True`); with `config` (dict or `TrainConfig`), check its settings."""
    path = Path(path)
    state = _read(path)
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f"Checkpoint {path} is not a stablesam training checkpoint")
    if config is not None:
        saved, now = state['config'], (config.to_dict() if hasattr(config, 'to_dict') else dict(config))
        fields = dataclasses.fields(config) if dataclasses.is_dataclass(config) else ()
        saved = {**{f.name: f.default for f in fields if f.default is not dataclasses.MISSING}, **saved}
        diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in now
                if k not in ignore and saved.get(k) != now[k]]
        if diff: raise ValueError(f"Checkpoint {path} was written by a run with other settings: " + '; '.join(diff))
    return state

def latest_checkpoint(run_dir, config=None, ignore=()):
    """`(state, path)` of the newest checkpoint in `run_dir` that loads (warns if not the latest), or (None, None)."""
    latest, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    if not (latest.exists() or previous.exists()): return None, None
    try: return load_checkpoint(latest, config, ignore), latest
    except RuntimeError as e:  # a checkpoint of other settings (ValueError) is no reason to go back
        if not previous.exists(): raise
        warnings.warn(f"The latest checkpoint {latest} does not load ({e}); resuming from the previous one, {previous}")
        return load_checkpoint(previous, config, ignore), previous


# %%
save_checkpoint(tmp / 'c.pt', {'format': CHECKPOINT_FORMAT, 'config': dict(lr=0.1, out='here'), 'x': torch.ones(2)})
test_eq(load_checkpoint(tmp / 'c.pt', dict(lr=0.1, out='elsewhere'), ignore=('out',))['x'], torch.ones(2))
test_fail(lambda: load_checkpoint(tmp / 'c.pt', dict(lr=0.2, out='here')),
          contains="lr: 0.1 in the checkpoint, 0.2 now")
@dataclasses.dataclass
class Settings:  # a TrainConfig in small: `ascent` was added after c.pt was written
    lr: float = 0.1
    out: str = 'here'
    ascent: str = 'global'
    def to_dict(self): return dataclasses.asdict(self)
test_eq(load_checkpoint(tmp / 'c.pt', Settings())['x'], torch.ones(2))
test_fail(lambda: load_checkpoint(tmp / 'c.pt', Settings(ascent='local')),
          contains="ascent: 'global' in the checkpoint, 'local' now")
(tmp / 'bad.pt').write_bytes(b'not a checkpoint')
test_fail(lambda: load_checkpoint(tmp / 'bad.pt'), contains=f'Cannot read checkpoint {tmp}/bad.pt')
save_checkpoint(tmp / 'other.pt', {'format': 'other'})
test_fail(lambda: load_checkpoint(tmp / 'other.pt'), contains='is not a stablesam training checkpoint')
run = tmp / 'run'
run.mkdir()
for step in (1, 2):
    save_checkpoint(run / CHECKPOINT, {'format': CHECKPOINT_FORMAT, 'config': {}, 'step': step},
                    previous=run / PREVIOUS)
test_eq(latest_checkpoint(run)[0]['step'], 2)
(run / CHECKPOINT).write_bytes((run / CHECKPOINT).read_bytes()[:100])   # damaged
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    state, path = latest_checkpoint(run)
test_eq((state['step'], path.name), (1, PREVIOUS))
message = str(caught[0].message)
assert f'The latest checkpoint {run / CHECKPOINT} does not load' in message and str(run / PREVIOUS) in message
test_eq(sorted(p.name for p in run.iterdir()), sorted([CHECKPOINT, PREVIOUS]))  # no temporary file left


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
    from stablesam import __version__   # the code that ran (a source tree on the path may differ from pip's record)
    v = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
             stablesam=__version__)
    for pkg in ('pytorchcv', 'numpy'):
        try: v[pkg] = version(pkg)
        except PackageNotFoundError: v[pkg] = None
    return v

def machine():
    """This machine in a few words for a results config: CPU model, cores, GPU if any, torch version and threads."""
    import os, torch
    cpu = platform.processor() or platform.machine()
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ''
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"

_DATA_READ = {}   # the data files and folders this process has read, in the order it read them
_SHA256 = {}      # sha256 of files already hashed, by (path, size, mtime)


def note_data_read(*paths):
    """Record data files (or image folders) this process read: `provenance` hashes them."""
    for p in paths: _DATA_READ[str(p)] = None


def data_read():
    """The data files and folders this process has read (see `note_data_read`), in order."""
    return list(_DATA_READ)


def file_sha256(path):
    """The sha256 of a file (cached by size and mtime); of a folder, of its sorted relative file names and sizes."""
    import hashlib
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob('*') if f.is_file())
        listing = ''.join(f'{f.relative_to(path)}\t{f.stat().st_size}\n' for f in files)
        return 'listing:' + hashlib.sha256(listing.encode()).hexdigest()
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''): h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def code_state():
    """`dict(commit, dirty, changed)` of the git checkout holding the imported stablesam; commit None outside one."""
    import subprocess
    import stablesam
    src = Path(stablesam.__file__).resolve().parent
    def git(*args):
        r = subprocess.run(['git', '-C', str(src), *args], capture_output=True, text=True, timeout=30)
        return r.stdout.rstrip('\n') if r.returncode == 0 else None
    root = git('rev-parse', '--show-toplevel')
    if root is None or not (Path(root) / 'settings.ini').exists():   # an installed wheel: no checkout of ours
        return dict(commit=None, dirty=None, changed=[], source=str(src))
    changed = git('status', '--porcelain', '--', root, f':(exclude){root}/results') or ''
    changed = [line[3:] for line in changed.splitlines()]   # results/ is what runs write, not code
    return dict(commit=git('rev-parse', 'HEAD'), dirty=bool(changed), changed=changed[:20], source=root)


def provenance(argv=None, threads=None, device=None):
    """What made a record: the code's commit and dirtiness, versions, sha256 of the data read, threads, device, argv."""
    import sys, torch
    if device is None:
        device = f'cuda ({torch.cuda.get_device_name()})' if torch.cuda.is_available() else 'cpu'
    return dict(code=code_state(), versions=package_versions(),
                data={p: file_sha256(p) for p in data_read() if Path(p).exists()},
                threads=torch.get_num_threads() if threads is None else threads, device=str(device),
                argv=list(sys.argv if argv is None else argv), machine=machine())


class MissingExtra(ImportError):
    """An optional dependency is not installed (a command exits with status 2 and this message)."""
    exit_status = 2


def require(module: str, extra: str):
    """`import module`, or a `MissingExtra` error naming the extra to install (`pip install 'stablesam[extra]'`)."""
    import importlib
    try: return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{module} is not installed; it comes with pip install 'stablesam[{extra}]'") from e

def read_metrics(run_dir):
    """The per-epoch metrics of a run folder (list of dicts; empty if there are none yet)."""
    return JsonlLog(Path(run_dir) / METRICS).records()

def read_run(run_dir):
    """`(config, metrics)` of a run folder: `config.json` as a dict, its epochs' metrics (a damaged file is named)."""
    path = Path(run_dir) / CONFIG
    try: return read_json(path), read_metrics(run_dir)
    except (OSError, ValueError) as e: raise ValueError(f"Unreadable run folder {path.parent}: {e}") from e


# %%
write_json(tmp / CONFIG, dict(lr=0.1, versions=package_versions()))
JsonlLog(tmp / METRICS).append(dict(epoch=1, test_acc=0.5))
cfg, ms = read_run(tmp)
test_eq((cfg['lr'], ms), (0.1, [dict(epoch=1, test_acc=0.5)]))
test_eq(set(cfg['versions']) >= {'python', 'torch', 'stablesam'}, True)
test_eq(cfg['versions']['stablesam'], stablesam.__version__)   # what every config.json records
test_fail(lambda: read_run(tmp / 'nowhere'), contains='Unreadable run folder')
test_fail(lambda: require('no_such_module_xyz', 'demo'), contains="pip install 'stablesam[demo]'")

# %% [markdown]
# ## Provenance
#
# Every `config.json` (a training run's and an experiment's) carries a `provenance` record: the git
# commit of the code that ran and whether its checkout had uncommitted changes outside `results/` (with
# the changed files), the versions of Python, torch, torchvision, numpy and stablesam, the sha256 of every
# data file the process read (the data loaders call `note_data_read`), the torch thread count, the device
# and the exact argv. Two runs that differ in any of them need not give the same bits; two that agree in
# all of them on the same kind of machine do (see the README's "Reproducibility"). `stablesam-results
# provenance RUN_DIR` prints it.

# %%
(tmp / 'data').mkdir()
(tmp / 'data' / 'f.bin').write_bytes(b'abc')
note_data_read(tmp / 'data' / 'f.bin')
p = provenance(argv=['stablesam-train', '--quick'], threads=1, device='cpu')
test_eq(p['data'][str(tmp / 'data' / 'f.bin')], 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
test_eq((p['argv'], p['threads'], p['device']), (['stablesam-train', '--quick'], 1, 'cpu'))
test_eq(set(p['versions']) >= {'python', 'torch', 'torchvision', 'numpy', 'stablesam'}, True)
test_eq(len(p['code']['commit'] or '') in (0, 40), True)   # 40 hex digits in a checkout, None in an installed wheel
test_eq(file_sha256(tmp / 'data').startswith('listing:'), True)   # a folder (ImageFolder): its file list and sizes
