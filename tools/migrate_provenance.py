"""Give every committed results config made before provenance was recorded a `provenance`, `key` and `done`, once.

Run from the repository root: `python tools/migrate_provenance.py [results]`. Idempotent: a config that has a
`provenance` keeps it. What a migrated provenance says, and how it was established:

- `code`: commit None (the code's exact commit was not recorded), with `recorded_in`, the commit that first
  added the folder's records to the repository (the code that made them is that commit's or older).
- `versions`, `threads`, `device`, `machine`: from the config's own `versions` and `machine` fields.
- `data`: the sha256 of the MNIST files the records were made from. The shared copy of MNIST was replaced on
  2026-12-04 (../shared/data/README.md): before, its image bytes were round(v * 255 / 256) of the official ones
  (this rounding reproduces the image md5s the README gives for the old copy, 3b106686... and 8c7e93d8...;
  labels unchanged). Records first committed before 2026-12-04 get the old copy's checksums, computed here from
  the official files; later ones the official files' (`data_copy` says which, and why).
- `argv`: the recorded command. `key` and `done`: the runner's fields, from the records as committed now.
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / 'shared' / 'data' / 'MNIST' / 'raw'
FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
REPLACED = '2026-12-04'   # the day the shared MNIST copy became byte-identical to the official files
KEYS = (('noise', 'optimizer', 'seed'), ('model', 'optimizer', 'lr', 'seed'), ('optimizer', 'rho', 'seed'),
        ('optimizer', 'seed'))   # the runner keys of label noise, lr sweep, landscape, stability and comparison


def mnist_checksums(old: bool) -> dict:
    """sha256 of the four MNIST files: the official ones, or the copy used before `REPLACED` (images rounded)."""
    import numpy as np
    out = {}
    for name in FILES:
        raw = (MNIST / name).read_bytes()
        if old and 'images' in name:
            px = np.frombuffer(raw[16:], dtype=np.uint8).astype(np.float64)
            raw = raw[:16] + np.rint(px * 255 / 256).astype(np.uint8).tobytes()
        out[f'../shared/data/MNIST/raw/{name}'] = hashlib.sha256(raw).hexdigest()
    return out


def first_commit(folder: Path):
    """`(hash, ISO date)` of the commit that first added `folder`'s files."""
    out = subprocess.run(['git', 'log', '--diff-filter=A', '--format=%H %cs', '--', str(folder)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split('\n')
    line = [x for x in out if x.strip()][-1]
    return tuple(line.split())


def runner_fields(config: dict, records: list) -> dict:
    """`key`, `done` (and `runs` if absent) for a config, inferred from its records."""
    if config.get('key') and config.get('done'): return {}
    fields = set(records[0]) if records else set()
    done_runs = {tuple(d['run']) for d in config.get('done') or []}
    for key in (k for k in KEYS if set(k) <= fields):   # the first key whose runs are the ones the config lists
        runs = {}
        for r in records: runs.setdefault(tuple(r[k] for k in key), []).append(r)
        count = config.get('runs')   # a count, a list of the runs (the landscape's old config) or absent
        if (set(runs) == done_runs) if done_runs else len(runs) == (len(count) if isinstance(count, list) else
                                                                    count or len(runs)): break
    else: raise ValueError(f"no key of {KEYS} fits the records of {config.get('experiment')}")
    done = config.get('done') or [dict(run=list(k), records=len(v)) for k, v in runs.items()]
    count = config.get('runs')
    return dict(key=list(key), done=done, runs=count if isinstance(count, int) else len(runs))


def landscape_argv(folder: Path, config: dict) -> list:
    """The `stablesam-landscape` argv of the landscape sweep an old config recorded as a `python -c` call."""
    from stablesam.landscape_experiment import landscape_command, landscape_config
    s = config['settings']
    title = (folder / 'summary.md').read_text().splitlines()[0].removeprefix('# ')
    cfg = landscape_config(data_root=config['data_root'])
    return landscape_command(str(folder.relative_to(ROOT)), cfg, s['rhos'], s['seeds'], s['sgd'], s['probe_epochs'],
                             s['n_probe'], s['probe_iters']) + ['--title', title]


class _Captured(Exception):
    """Raised by the stand-in runner once it has the settings: nothing trains."""


def command_settings(command: list) -> dict:
    """The runner `settings` that `command` (a stablesam-stability argv) gives with today's code; nothing trains."""
    import stablesam.stability as st
    def capture(out, specs, train, *, settings, **_): raise _Captured(settings)
    real, st.run_experiment = st.run_experiment, capture
    try: st.main.__wrapped__(command[1:])
    except _Captured as e: return e.args[0]
    finally: st.run_experiment = real
    raise RuntimeError(f"{command[0]} did not reach the runner")


def migrated_provenance(folder: Path, config: dict, data: dict) -> dict:
    """The provenance a config made before provenance existed gets (see the module docstring)."""
    commit, date = first_commit(folder)
    old = date < REPLACED
    machine = config.get('machine', '')
    threads = next((int(w) for w, nxt in zip(machine.split()[:-1], machine.split()[1:]) if nxt == 'threads'), None)
    versions = config.get('versions') or {'torch': next((w.rstrip(',') for w, prev in
                                                         zip(machine.split()[1:], machine.split()) if prev == 'torch'),
                                                        None)}
    uses_mnist = 'mnist' in json.dumps(config.get('settings', config)).lower() or 'shared/data' in json.dumps(config)
    return dict(migrated=f"added on migration (tools/migrate_provenance.py): the records were first committed in "
                         f"{commit[:10]} on {date}",
                code=dict(commit=None, dirty=None, changed=[], source=None, recorded_in=commit),
                versions=versions, data=data['old' if old else 'new'] if uses_mnist else {},
                data_copy=(('the MNIST copy before ' + REPLACED + ' (image bytes round(v*255/256))') if old
                           else 'the official MNIST files') if uses_mnist else None,
                threads=threads, device='cpu', argv=config.get('command_was', config.get('command')), machine=machine)


def migrate(folder: Path, data: dict) -> bool:
    """Add the missing fields to `folder/config.json`; True if it changed."""
    path = folder / 'config.json'
    config = json.loads(path.read_text())
    records_path = folder / 'records.jsonl'
    lines = records_path.read_text().splitlines() if records_path.exists() else []
    records = [json.loads(x) for x in lines if x.strip()]
    extra = runner_fields(config, records) if records else {}
    if 'settings' not in config and config['command'][0] == 'stablesam-stability':   # resumable by its command
        extra['settings'] = json.loads(json.dumps(command_settings(config['command'])))
    if isinstance(config.get('command'), str) and 'landscape_experiment(' in config['command']:
        extra.update(command=landscape_argv(folder, config), command_was=config['command'])
    if 'provenance' not in config: extra['provenance'] = migrated_provenance(folder, config, data)
    if not extra: return False
    if 'experiment' not in config and config.get('command', [''])[0] == 'stablesam-stability':
        extra['experiment'] = 'stability'
    path.write_text(json.dumps({**config, **extra}, indent=2) + '\n')
    return True


def main(argv) -> int:
    """Migrate every results config under the folder given (default: results)."""
    root = ROOT / (argv[0] if argv else 'results')
    data = dict(old=mnist_checksums(old=True), new=mnist_checksums(old=False))
    skipped = {'runs', 'slurm'}
    for path in sorted(root.rglob('config.json')):
        if set(path.relative_to(root).parts[:-1]) & skipped: continue
        if (path.parent / 'metrics.jsonl').exists(): continue   # a training run's folder: rerun, not migrated
        if migrate(path.parent, data): print(f"migrated {path.relative_to(ROOT)}")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
