# %%
#| default_exp results_check

# %% [markdown]
# # results check
#
# > `stablesam-results check`: every committed summary re-derived from its records, every record set complete, every record traced to a command of this repository

# %% [markdown]
# A committed result is a folder under `results/`: `config.json` (the command that made it, its settings,
# its provenance), `records.jsonl` and the `summary.md` (or `report.md`) computed from them. Nothing but
# care keeps them in agreement: a summary edited by hand, a record lost in a copy, a table made by a script
# that never reached the repository. `check_results` makes that agreement a test that CI runs. For every
# folder holding a `config.json` it fails when
#
# - the recorded `command` is not an argv list, or names no command of this package (code outside the
#   repository);
# - the config has no `provenance` (see `stablesam.runs.provenance`);
# - the record set is incomplete: a run the config counts has no records, a run has fewer records than
#   it finished with, a run's epochs have a gap; a training run folder has fewer epochs than it was set to;
# - a summary differs from what the command's own `summary_files(folder)` derives from the records: the
#   message names the file and the first line that differs.
#
# Each command owns its derivation (`stablesam.stability.summary_files`, `stablesam.robustness...`): the
# command writes its summary with the same function the check calls, so there is one way to make a summary.

# %%
#| hide
from fastcore.test import *
import json
import shutil
import tempfile
from pathlib import Path

# %%
#| export
import importlib
from pathlib import Path

from stablesam.experiment import RECORDS
from stablesam.runs import CONFIG, METRICS, read_json, read_jsonl

# %% [markdown]
# ## Which code derives a folder's summaries
#
# The command's name (the first word of its argv, without a path) says which module made the folder.
# `python -m MODULE` counts as `MODULE`. A training run's folder (`metrics.jsonl`, written by the `Trainer`)
# has no summary of its own: it is checked for its epochs; the table sweep that made it derives `results.md`.

# %%
#| export
DERIVERS = {'stablesam-stability': 'stablesam.stability', 'stablesam-robustness': 'stablesam.robustness',
            'stablesam-landscape': 'stablesam.landscape_experiment', 'stablesam-reproduce': 'stablesam.reproduce',
            'stablesam.efficient_evidence': 'stablesam.efficient_evidence', 'stablesam-train': 'stablesam.cli',
            'stablesam.open_questions': 'stablesam.open_questions',
            'stablesam.controls_evidence': 'stablesam.controls_evidence'}
SKIPPED = ('runs', 'slurm')      # the runner's working folders (checkpoints, job logs): not committed


def command_name(command) -> str | None:
    """The package command an argv ran (`stablesam-stability`, or MODULE of `python -m MODULE`); None if not one."""
    if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)): return None
    first = Path(command[0]).name
    if first.startswith('python') and len(command) > 2 and command[1] == '-m': return command[2]
    return first


def first_difference(found: str, derived: str):
    """`(line number, committed line, derived line)` of the first line where two texts differ; None if equal."""
    a, b = found.splitlines(), derived.splitlines()
    for n, (x, y) in enumerate(zip(a, b), 1):
        if x != y: return n, x, y
    if len(a) != len(b):
        n = min(len(a), len(b)) + 1
        return n, a[n - 1] if n <= len(a) else '(end of file)', b[n - 1] if n <= len(b) else '(end of file)'
    return None


# %%
test_eq(command_name(['/usr/bin/stablesam-stability', '--out', 'x']), 'stablesam-stability')
test_eq(command_name(['python', '-m', 'stablesam.efficient_evidence', 'results/efficient']),
        'stablesam.efficient_evidence')
test_eq(command_name('python -c "..."'), None)
test_eq(first_difference('a\nb\nc\n', 'a\nB\nc\n'), (2, 'b', 'B'))
test_eq(first_difference('a\nb\n', 'a\nb\nc\n'), (3, '(end of file)', 'c'))
test_eq(first_difference('same\n', 'same\n'), None)


# %% [markdown]
# ## Complete record sets
#
# The experiment runner's `config.json` names its key fields (`key`) and, per finished run, how many
# records it returned (`done`). A complete set has every run the config counts (`runs`), each with
# exactly its records, and each run's epochs without a gap. An experiment committed before all its runs
# finished says so in its config (`unfinished`: why, and how to continue it); its finished runs must still
# be complete, and `check_results` lists it as unfinished.

# %%
#| export
def record_problems(folder, config: dict, records: list) -> list:
    """What is missing from an experiment's records (runs, records, epochs), as messages naming the folder."""
    key, done = config.get('key'), config.get('done')
    where = Path(folder) / RECORDS
    if key is None or done is None: return [f"{Path(folder) / CONFIG}: no `key`/`done`: cannot tell a complete set"]
    problems = []
    if config.get('runs') != len(done) and not config.get('unfinished'):
        problems.append(f"{where}: {len(done)} of the {config.get('runs')} runs in config.json finished")
    runs = {}
    for r in records: runs.setdefault(tuple(r.get(k) for k in key), []).append(r)
    for d in done:
        got = runs.pop(tuple(d['run']), [])
        name = ','.join(f'{k}={v}' for k, v in zip(key, d['run']))
        if len(got) != d['records']:
            problems.append(f"{where}: run {name} has {len(got)} of its {d['records']} records")
        epochs = sorted(r['epoch'] for r in got if isinstance(r.get('epoch'), int))
        if epochs and epochs != list(range(epochs[0], epochs[0] + len(epochs))):
            gap = next(e + 1 for e, f in zip(epochs, epochs[1:]) if f != e + 1)
            problems.append(f"{where}: run {name} lacks epoch {gap}")
    problems += [f"{where}: records of a run config.json does not list: {dict(zip(key, k))}" for k in runs]
    return problems


def run_folder_problems(folder, config: dict) -> list:
    """What is missing from a training run folder: epochs short of `epochs` (unless it stopped on divergence)."""
    metrics = read_jsonl(Path(folder) / METRICS) if (Path(folder) / METRICS).exists() else []
    epochs = [m['epoch'] for m in metrics]
    if epochs != list(range(1, len(epochs) + 1)):
        return [f"{Path(folder) / METRICS}: epochs {epochs[:12]} are not 1, 2, ... without a gap"]
    if len(epochs) < config.get('epochs', 0) and not (Path(folder) / 'diverged.json').exists():
        return [f"{Path(folder) / METRICS}: {len(epochs)} of {config['epochs']} epochs"]
    return []


# %%
cfg = dict(key=['optimizer', 'seed'], runs=2, done=[dict(run=['sam', 0], records=3), dict(run=['sgd', 0], records=3)])
recs = [dict(optimizer=o, seed=0, epoch=e) for o in ('sam', 'sgd') for e in (0, 1, 2)]
test_eq(record_problems('f', cfg, recs), [])
test_eq(record_problems('f', cfg, recs[:1] + recs[2:]),
        ['f/records.jsonl: run optimizer=sam,seed=0 has 2 of its 3 records',
         'f/records.jsonl: run optimizer=sam,seed=0 lacks epoch 1'])
test_eq(record_problems('f', dict(cfg, runs=3), recs), ['f/records.jsonl: 2 of the 3 runs in config.json finished'])
test_eq(record_problems('f', dict(cfg, runs=3, unfinished='stopped for time'), recs), [])


# %% [markdown]
# ## The check

# %%
#| export
def folder_problems(folder) -> list:
    """Everything wrong with one results folder holding a `config.json` (empty: it checks out)."""
    folder = Path(folder)
    config = read_json(folder / CONFIG)
    command, where = config.get('command'), folder / CONFIG
    name = command_name(command)
    if name is None: return [f"{where}: `command` is not an argv list: {command!r}"]
    if name not in DERIVERS:
        return [f"{where}: made by {command[0]!r}, which is no command of this repository (code outside it)"]
    problems = []
    made = config.get('provenance')
    if not made: problems.append(f"{where}: no provenance (commit, versions, data checksums, threads, device, argv)")
    elif made['code'].get('commit') is None and not made.get('migrated'):
        problems.append(f"{where}: made from code outside a checkout of this repository ({made['code'].get('source')})")
    if (folder / METRICS).exists(): return problems + run_folder_problems(folder, config)   # a training run
    if (folder / RECORDS).exists(): problems += record_problems(folder, config, read_jsonl(folder / RECORDS))
    if problems: return problems
    for file, text in importlib.import_module(DERIVERS[name]).summary_files(folder).items():
        path = folder / file
        if not path.exists():
            problems.append(f"{path}: missing (its records give it)")
            continue
        diff = first_difference(path.read_text(), text)
        if diff: problems.append(f"{path}: line {diff[0]} differs from what its records give:\n"
                                 f"    committed: {diff[1][:200]}\n    derived:   {diff[2][:200]}")
    return problems


def results_folders(root) -> list:
    """Every folder under `root` holding a `config.json`, the runner's working folders left out."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(CONFIG) if not set(p.relative_to(root).parts[:-1]) & set(SKIPPED))


def check_results(root='results', progress: bool = False) -> list:
    """The problems of every results folder under `root` (empty: every summary, record set and command checks out)."""
    folders = results_folders(root)
    if not folders: return [f"{root}: no results folders (config.json) found"]
    problems = []
    for folder in folders:
        if progress: print(f"checking {folder}", flush=True)
        try: problems += folder_problems(folder)
        except Exception as e:   # a summary that cannot be derived at all is a problem of that folder
            problems.append(f"{folder}: cannot derive its summaries: {type(e).__name__}: {e}")
    return problems


# %% [markdown]
# One committed folder, checked: the stand-in conv-net panel of Figure 5 (`stablesam-results check results`
# checks them all; CI runs it).

# %%
test_eq(folder_problems('../results/stability/lenet-mnist-3k-constant'), [])


# %% [markdown]
# ## Provenance of a folder
#
# `stablesam-results provenance FOLDER` prints what made a run or an experiment: commit, versions, data
# checksums, threads, device and argv (and, for an experiment resumed under other code, each earlier
# invocation's).

# %%
#| export
def provenance_text(folder) -> str:
    """A run or results folder's provenance as a few readable lines."""
    config = read_json(Path(folder) / CONFIG)
    made = config.get('provenance')
    if not made: return f"{Path(folder) / CONFIG}: no provenance recorded"
    def lines(p, head):
        code = p['code']
        state = 'not a checkout' if code.get('commit') is None else ('dirty: ' + ', '.join(code['changed'][:5])
                                                                     if code.get('dirty') else 'clean')
        out = [head, f"  commit   {code.get('commit') or '-'} ({state})",
               f"  versions {', '.join(f'{k} {v}' for k, v in p['versions'].items())}",
               f"  threads  {p['threads']}, device {p['device']}", f"  machine  {p.get('machine', '-')}",
               f"  argv     {' '.join(p['argv'])}"]
        out += [f"  data     {f}  sha256 {h}" for f, h in p['data'].items()] or ['  data     (none read)']
        if p.get('migrated'): out.append(f"  note     {p['migrated']}")
        return out
    text = lines(made, f"{folder}:")
    for i, p in enumerate(config.get('earlier_provenance', []), 1):
        text += lines(p, f"earlier invocation {i} ({p.get('runs_done', '?')} runs done before it):")
    return '\n'.join(text)


def check_main(argv) -> int:
    """`stablesam-results check [ROOT]`: print every problem of the results under ROOT; exit status 1 if any."""
    import argparse
    p = argparse.ArgumentParser(prog='stablesam-results check', description=(
        'Re-derive every summary.md/report.md under ROOT from its records and fail naming the file and the first '
        'line that differs; fail on an incomplete record set, a command that is not an argv list or not of this '
        'repository, a config without provenance.'))
    p.add_argument('root', nargs='?', default='results', help='results folder (default: results)')
    p.add_argument('--progress', action='store_true', help='name each folder as it is checked')
    args = p.parse_args(argv)
    problems = check_results(args.root, args.progress)
    for problem in problems: print(problem)
    n = len(results_folders(args.root))
    for folder in results_folders(args.root):
        why = read_json(folder / CONFIG).get('unfinished')
        if why: print(f"note: {folder} is unfinished, as its config.json says: {why}")
    print(f"{n} results folders under {args.root}: " + (f"{len(problems)} problems" if problems else 'all check out'))
    return 1 if problems else 0


# %%
print(provenance_text('../results/results_table/mnist-noise40/stablesam_rho0.05_seed0'))


# %% [markdown]
# ## Rerunning a result
#
# `rerun(folder)` runs the command a results folder's `config.json` records, from the repository root,
# exactly as recorded. The notebooks' `slow` cells call it, so the cell that documents a result is the
# command that made it. The runner resumes: on a complete folder nothing trains again and the summary
# and figure are rewritten from the records (and `stablesam-results check` must still pass). A folder
# whose records were made from other data files than those present now (the MNIST copy before
# 2026-12-04, see `provenance`) is not resumed: the command stops and says so. `fresh=True` adds `--fresh`:
# the experiment is made again from scratch, on the files present.

# %%
#| export
def repository_root(folder) -> Path:
    """The checkout that holds results folder `folder` (the nearest parent with a `settings.ini`)."""
    folder = Path(folder).resolve()
    root = next((p for p in folder.parents if (p / 'settings.ini').exists()), None)
    if root is None: raise FileNotFoundError(f"{folder} is not inside a stablesam checkout")
    return root


def rerun(folder, fresh: bool = False, dry_run: bool = False) -> list:
    """Run the command `folder/config.json` records, from the repository root (`fresh`: with --fresh); the argv."""
    import subprocess
    command = read_json(Path(folder) / CONFIG)['command']
    if command_name(command) not in DERIVERS: raise ValueError(f"{folder}: not a command of this package: {command!r}")
    command = command + ['--fresh'] * fresh
    if not dry_run: subprocess.run(command, cwd=repository_root(folder), check=True)
    return command


# %%
test_eq(rerun('../results/stability/lenet-mnist-3k-constant', dry_run=True)[:2], ['stablesam-stability', '--dataset'])
test_eq(repository_root('../results/main_job'), Path('..').resolve())
