# %%
#| default_exp experiment

# %% [markdown]
# # experiment
#
# > One way to run an experiment, here or on a cluster: specs in, records out, resumable; one shared command line

# %% [markdown]
# An experiment of this package (the stability pairs of Figures 5-7, the learning-rate sweep, the label-noise
# sweep, the landscape runs of Figures 1-3, the main job's comparison, a table's training runs) is a list of
# **run specs**, plain dicts of settings, and a **function that trains one spec** and returns its records
# (a list of dicts). `run_experiment` does everything else, the same way for all of them:
#
# - it alone writes the results folder: `records.jsonl` (strict JSON, a torn last line tolerated) and
#   `config.json` (one schema: `command` as an argv list, `settings`, `n_train`, `n_test`, `seeds`, wall time,
#   machine, package versions, and which runs are done);
# - it resumes by default: runs recorded as done are kept, the others are trained (each may continue from its
#   own checkpoint in `runs/<spec id>/`); a folder made with other settings is refused with a message naming
#   the setting; `fresh=True` starts over;
# - it runs the specs through an **executor**: `inline` (this process), `processes` (N local processes
#   started with `spawn`, so the same code runs on Linux, macOS and Windows) or `slurm` (through submitit, the
#   library research groups use to submit Python functions to SLURM; a preempted job is requeued and continues
#   from its run's checkpoint);
# - it shows one progress bar and returns the records in the order of a one-process run, whatever the
#   executor and however often the run was interrupted.
#
# A spec's **key** is the tuple of its fields that also appear in each of its records (for the stability
# experiment: optimizer and seed); the runner uses it to tell which records belong to which run.

# %%
#| hide
from fastcore.test import *
import tempfile
from pathlib import Path

# %%
#| export
import argparse
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

from stablesam.runs import (CONFIG, CheckpointError, machine, provenance, read_json, read_jsonl, remove_temporaries,
                            write_json, write_jsonl)

# %% [markdown]
# ## Specs and their runs
#
# A train function is called as `train(spec, run)`. `run.folder` is the spec's own folder for checkpoints
# (None when the experiment has no folder), and `run.report(record)` tells the progress bar that one unit of
# work (an epoch, say) is done. The function must be importable at module level (the `processes` and `slurm`
# executors send it to other processes by name) and must give the same records wherever it runs.

# %%
#| export
RECORDS = 'records.jsonl'
RUNS = 'runs'        # each spec's own folder (checkpoints) under the results folder
EXECUTORS = ('inline', 'processes', 'slurm')
LOGGERS = ('tensorboard', 'wandb', 'csv')   # --logger: the backends of stablesam.loggers


class Run(NamedTuple):
    """What a train function gets besides its spec: its own folder (or None), a progress callback, its loggers."""
    folder: Path | None
    report: Callable
    loggers: dict | None = None   # `logging_to` arguments (names, every): every Trainer of the run logs there


def spec_key(spec: dict, key) -> tuple:
    """The values of the `key` fields of a spec or of one of its records."""
    return tuple(spec[k] for k in key)


def spec_id(spec: dict, key) -> str:
    """A spec's name for folders and logs: `field=value` of its key fields, joined by commas."""
    return ','.join(f'{k}={spec[k]}' for k in key)


_PER_PROCESS = {}   # what this process loaded once for the runs it trains (decoded datasets), by key


def per_process(key, load):
    """`load()`, called once per process and `key`: the data that all the runs a process trains share."""
    if key not in _PER_PROCESS: _PER_PROCESS[key] = load()
    return _PER_PROCESS[key]


# %%
test_eq(spec_id(dict(optimizer='sam', seed=0, lr=0.1), ('optimizer', 'seed')), 'optimizer=sam,seed=0')
test_eq(spec_key(dict(optimizer='sam', seed=0, epoch=3), ('optimizer', 'seed')), ('sam', 0))
loads = []
test_eq([per_process(('demo', 1), lambda: loads.append(1) or 'data') for _ in range(2)], ['data', 'data'])
test_eq(loads, [1])   # loaded once


# %% [markdown]
# ## The results folder
#
# The runner appends a finished run's records to `records.jsonl`, then marks the run done in `config.json`
# (written atomically) with the number of its records and its wall time. A run killed before it is marked done
# is trained again on resume (from its own checkpoint where it has one), and whatever it had appended, a torn
# line included, is dropped; so is a run marked done whose records in `records.jsonl` are not all there. So a
# folder resumed any number of times ends with the records of an uninterrupted run. At the end `records.jsonl`
# is rewritten in the order of a one-process run.
#
# A resumed folder must hold the same settings: `check_settings` names each one that differs.

# %%
#| export
def flat_settings(settings: dict, prefix: str = '') -> dict:
    """Nested settings as one level of dotted names (`train.epochs`)."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict) and v: out.update(flat_settings(v, f'{prefix}{k}.'))
        else: out[f'{prefix}{k}'] = v
    return out


def check_settings(saved: dict, now: dict, where) -> None:
    """Raise a ValueError naming every setting that differs between a results folder's config and this run's."""
    saved, now = flat_settings(saved), flat_settings(now)
    diff = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"{where} holds an experiment with other settings ({'; '.join(diff)}): "
                         "choose another --out, or pass --fresh to start it over")


def _reset(out: Path) -> None:
    """Delete what a runner wrote in `out` (records, config, the runs' checkpoints and job logs)."""
    import shutil
    for name in (RECORDS, CONFIG):
        (out / name).unlink(missing_ok=True)
    for name in (RUNS, 'slurm'):
        shutil.rmtree(out / name, ignore_errors=True)


def _strict_round_trip(records: list) -> list:
    """`records` as they read back from `records.jsonl` (strict JSON: non-finite floats become None)."""
    from stablesam.runs import strict_json
    return [json.loads(json.dumps(strict_json(r), allow_nan=False)) for r in records]


# %%
test_fail(lambda: check_settings(dict(epochs=2, lr=0.1), dict(epochs=3, lr=0.1), 'out'),
          contains="epochs: 2 there, 3 now")
test_fail(lambda: check_settings(dict(train=dict(lr=0.1, seed=0)), dict(train=dict(lr=0.2, seed=0)), 'out'),
          contains="out holds an experiment with other settings (train.lr: 0.1 there, 0.2 now)")
check_settings(dict(epochs=2), dict(epochs=2), 'out')

# %% [markdown]
# ## Executors
#
# `inline` trains the specs one after another in this process. `processes` starts N worker processes with
# `spawn` (no fork-only path), each with `cpu_count // N` torch threads, and hands them the specs most
# expensive first (`cost`); a worker that dies (killed, out of memory) stops the run with an error that says
# the same command resumes it. Workers report progress through a queue.

# %%
#| export
_REPORTS = None   # in a worker process: the queue that carries progress reports to the parent


def _init_worker(reports, threads: int) -> None:
    """Set up a worker process: its progress queue and its torch threads."""
    global _REPORTS
    _REPORTS = reports
    import torch
    torch.set_num_threads(threads)


def _progress_note(record) -> dict:
    """The scalar fields of a record (what the progress bar shows)."""
    if not isinstance(record, dict): return {}
    return {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _timed(train, spec: dict, run: Run) -> tuple:
    """`(records, seconds)` of `train(spec, run)`, each `Trainer` it builds logging as `run.loggers` says."""
    t0 = time.perf_counter()
    if run.loggers and run.folder is not None:
        from stablesam.loggers import logging_to
        with logging_to(run.folder, **run.loggers): records = train(spec, run)
    else: records = train(spec, run)
    return records, time.perf_counter() - t0


def _train_spec(train, spec: dict, folder, j: int, loggers=None) -> tuple:
    """Train spec number `j` in a worker process: `(records, seconds)`; progress goes to the parent's queue."""
    return _timed(train, spec, Run(None if folder is None else Path(folder),
                                   lambda rec: _REPORTS.put((j, _progress_note(rec))), loggers))


def _run_processes(train, todo, folders, processes: int, finish, tick, loggers=None) -> None:
    """Train `todo` in `processes` spawned processes, calling `finish(j, records, seconds)` as spec `j` ends."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    ctx = mp.get_context('spawn')
    reports = ctx.Queue()
    threads = worker_threads('processes', processes)
    pool = ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker, initargs=(reports, threads))
    pending = {pool.submit(_train_spec, train, todo[j], folders[j], j, loggers): j for j in range(len(todo))}
    finished = False
    try:
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(reports, tick)
            for future in done:
                finish(pending.pop(future), *future.result())
        _drain(reports, tick)
        finished = True
    except BrokenProcessPool as e:
        raise RuntimeError("a worker process died (killed, or out of memory?); the finished runs are recorded: "
                           "run the same command again to continue") from e
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:   # a run that failed stops its other workers now instead of waiting for their runs
            for proc in list((getattr(pool, '_processes', None) or {}).values()): proc.terminate()


def _drain(queue, tick) -> None:
    """Pass every progress report waiting in `queue` to `tick`."""
    import queue as q
    while True:
        try: tick(*queue.get_nowait())
        except q.Empty: return


# %% [markdown]
# `slurm` submits one job per spec through submitit (`pip install 'stablesam[slurm]'`). Each job is a
# `submitit.helpers.Checkpointable`: when SLURM preempts it or its time runs out, submitit requeues the same
# call, and the train function continues from the checkpoint in its run folder. `slurm` settings (a dict, or
# `--slurm KEY=VALUE` on a command line) go to `AutoExecutor.update_parameters` (`timeout_min`,
# `slurm_partition`, `gpus_per_node`, ...), except `cluster`: `local` runs the jobs as local processes
# (how the tests check this path without a cluster), `debug` in this process. The parent waits for the jobs
# and records each as it finishes; a job that fails stops the run and cancels the other jobs (as does Ctrl-C);
# if the parent itself is killed, cancel its jobs (`scancel`) before running the same command again, which
# resubmits the runs not recorded as done.

# %%
#| export
def slurm_job_class():
    """The Checkpointable job callable (submitit imported only when the slurm executor is used)."""
    try:
        from submitit.helpers import Checkpointable
    except ImportError as e:
        raise RuntimeError("the slurm executor needs submitit: pip install 'stablesam[slurm]'") from e

    class SpecJob(Checkpointable):
        """One spec as a SLURM job: requeued on preemption, resuming from the run's own checkpoint."""
        def __call__(self, train, spec, folder, threads, loggers=None):
            import torch
            torch.set_num_threads(threads)
            return _timed(train, spec, Run(None if folder is None else Path(folder), _progress_note, loggers))
    return SpecJob


def _run_slurm(train, todo, folders, names, out: Path, slurm: dict, finish, loggers=None) -> None:
    """Submit `todo` (named `names`) as SLURM jobs and call `finish(j, records, seconds)` as job `j` ends."""
    import submitit
    SpecJob = slurm_job_class()
    params = dict(slurm or {})
    cluster = params.pop('cluster', None)
    threads = worker_threads('slurm', 1, params)
    params.pop('threads', None)
    executor = submitit.AutoExecutor(folder=str(out / 'slurm' / '%j'), cluster=cluster)
    if params: executor.update_parameters(**params)
    with _sigint_inherited_as_default():   # so that cancelling a local job (SIGINT to its controller) stops it
        jobs = {i: executor.submit(SpecJob(), train, todo[i], folders[i], threads, loggers) for i in range(len(todo))}
    try:
        while jobs:
            for i, job in list(jobs.items()):
                if job.done():
                    del jobs[i]
                    try: records, seconds = job.result()
                    except Exception as e:
                        raise RuntimeError(f"SLURM job {job.job_id} ({names[i]}) failed: "
                                           f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__} "
                                           f"(log: {job.paths.stderr})") from e
                    finish(i, records, seconds)
            if jobs: time.sleep(0.5)
    finally:   # stopped by a failure (or Ctrl-C): the other jobs would go on training runs the next command resubmits
        for job in jobs.values(): job.cancel(check=False)   # scancel on SLURM, SIGINT to a local job's controller


@contextmanager
def _sigint_inherited_as_default():
    """Processes started in this block get SIGINT's default action even where this process ignores SIGINT."""
    import signal
    import threading
    ignored = (threading.current_thread() is threading.main_thread()   # only the main thread may set handlers
               and signal.getsignal(signal.SIGINT) == signal.SIG_IGN)   # a background job of a non-interactive shell
    if ignored: signal.signal(signal.SIGINT, signal.default_int_handler)   # a handled signal resets to default on exec
    try: yield
    finally:
        if ignored: signal.signal(signal.SIGINT, signal.SIG_IGN)


# %% [markdown]
# ## `run_experiment`

# %%
#| export
def run_experiment(out, specs: list, train, *, key, settings: dict, command=None, executor: str = 'inline',
                   processes: int = 2, fresh: bool = False, progress: bool = True, cost=None, units=None,
                   slurm: dict | None = None, desc: str | None = None, meta: dict | None = None,
                   loggers: dict | None = None) -> list:
    """Train every spec of `specs` with `train(spec, run)` into results folder `out`; all records, in spec order."""
    specs = [dict(s) for s in specs]
    keys = [spec_key(s, key) for s in specs]
    if len(set(keys)) != len(keys): raise ValueError(f"Two specs share a key {key}: each run needs its own")
    if executor not in EXECUTORS:
        raise ValueError(f"Unknown executor: {executor!r} (choose from {', '.join(EXECUTORS)})")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"Invalid processes: {processes} (an integer >= 1)")
    if out is None: return _run_in_memory(specs, train, executor, progress, units, desc)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fresh: _reset(out)
    remove_temporaries(out)
    saved = read_json(out / CONFIG) if (out / CONFIG).exists() else None
    if saved is not None and 'done' not in saved:
        raise ValueError(f"{out / CONFIG} was not written by the experiment runner (an older results folder): "
                         "choose another --out, or pass --fresh to start over")
    if saved is not None: check_settings(saved['settings'], json.loads(json.dumps(settings)), out / CONFIG)
    counts = {tuple(d['run']): d['records'] for d in (saved or {}).get('done', [])}
    kept = read_jsonl(out / RECORDS, torn_tail=True) if (out / RECORDS).exists() and counts else []
    by_key = {k: [] for k in keys}
    for r in kept:
        k = spec_key(r, key)
        if k in counts and k in by_key: by_key[k].append(r)
    done = {k for k in keys if k in counts and len(by_key[k]) == counts[k]}   # else trained again
    by_key = {k: (v if k in done else []) for k, v in by_key.items()}
    write_jsonl(out / RECORDS, [r for k in keys for r in by_key[k]])   # drops the records of unfinished runs
    made = _provenance(executor, processes, slurm)
    earlier = _earlier_provenance(saved, made, out / CONFIG)
    config = dict(experiment=desc or out.name, command=list(command) if command is not None else None,
                  settings=settings, **(meta or {}), key=list(key), runs=len(specs), executor=executor,
                  processes=processes if executor == 'processes' else 1, machine=machine(),
                  versions=made['versions'] if made else {}, provenance=made,
                  **(dict(earlier_provenance=earlier) if earlier else {}))
    wall0, run_wall = (saved or {}).get('wall_time_s', 0.0), dict((saved or {}).get('run_wall_s', {}))
    t0 = time.perf_counter()

    def write_config():
        write_json(out / CONFIG, dict(config,
                                      done=[dict(run=list(k), records=len(by_key[k])) for k in keys if k in done],
                                      run_wall_s=run_wall,
                                      wall_time_s=round(wall0 + time.perf_counter() - t0, 1)))
    write_config()
    units = units or _one
    todo = [i for i, k in enumerate(keys) if k not in done]
    if cost is not None: todo.sort(key=lambda i: -cost(specs[i]))
    folders = {i: out / RUNS / spec_id(specs[i], key) for i in todo}
    bar = _progress_bar(sum(units(specs[i]) for i in todo), desc or out.name, progress)
    counted = {i: 0 for i in todo}

    def finish(j, records, seconds):
        i = todo[j]
        records = _strict_round_trip(records)
        wrong = [spec_key(r, key) for r in records if spec_key(r, key) != keys[i]]
        if wrong: raise ValueError(f"run {spec_id(specs[i], key)} returned records of another run: {wrong[0]}")
        with open(out / RECORDS, 'a') as f: f.write(''.join(json.dumps(r, allow_nan=False) + '\n' for r in records))
        by_key[keys[i]] = records
        done.add(keys[i])
        run_wall[spec_id(specs[i], key)] = round(seconds, 1)
        write_config()
        bar.update(units(specs[i]) - counted[i])
        counted[i] = units(specs[i])

    def tick(j, note):
        i = todo[j]
        if counted[i] < units(specs[i]):
            counted[i] += 1
            bar.update(1)
        shown = {k: (f'{v:.4g}' if isinstance(v, float) else v) for k, v in list(_progress_note(note).items())[:4]}
        if shown: bar.set_postfix(shown)

    todo_specs, todo_folders = [specs[i] for i in todo], [folders[i] for i in todo]
    if executor == 'inline' or (executor == 'processes' and len(todo) < 2):
        for j, i in enumerate(todo):
            finish(j, *_timed(train, specs[i], Run(folders[i], partial(tick, j), loggers)))
    elif executor == 'processes':
        _run_processes(train, todo_specs, todo_folders, min(processes, len(todo)), finish, tick, loggers)
    else:
        _run_slurm(train, todo_specs, todo_folders, [spec_id(s, key) for s in todo_specs], out, slurm, finish,
                   loggers)
    bar.close()
    records = [r for k in keys for r in by_key[k]]
    write_jsonl(out / RECORDS, records)   # the order of a one-process run
    write_config()
    return records


def _run_in_memory(specs, train, executor, progress, units, desc) -> list:
    """The records of `specs` trained in this process with no results folder (nothing written, nothing resumed)."""
    if executor != 'inline': raise ValueError(f"executor {executor!r} needs a results folder (out)")
    bar = _progress_bar(sum((units or _one)(s) for s in specs), desc or 'runs', progress)
    records = []
    for spec in specs:
        records += _strict_round_trip(train(spec, Run(None, lambda note: bar.update(1))))
    bar.close()
    return records


def _one(spec) -> int:
    """Default progress units of a spec: one."""
    return 1


def worker_threads(executor: str, processes: int, slurm: dict | None = None) -> int | None:
    """The torch threads each run trains with under `executor` (None inline: this process's own)."""
    if executor == 'processes': return max(1, (os.cpu_count() or 1) // processes)
    if executor == 'slurm': return int((slurm or {}).get('threads', 1))
    return None


def _provenance(executor: str, processes: int, slurm: dict | None):
    """This invocation's provenance for `config.json` (None where torch was never imported: nothing trained here)."""
    if 'torch' not in sys.modules: return None
    return provenance(threads=worker_threads(executor, processes, slurm))


def _earlier_provenance(saved, made, where) -> list:
    """The provenance of the earlier invocations of a resumed experiment; other data files than before: ValueError."""
    earlier = list((saved or {}).get('earlier_provenance', []))
    before = (saved or {}).get('provenance')
    if not before or not made: return earlier
    changed = [f"{f}: sha256 {before['data'][f][:12]}... there, {made['data'][f][:12]}... now"
               for f in sorted(set(before['data']) & set(made['data'])) if before['data'][f] != made['data'][f]]
    if changed:
        raise ValueError(f"{where} holds an experiment made from other data files ({'; '.join(changed)}): its runs "
                         "would not be comparable; choose another --out, or pass --fresh to start it over")
    same = all(before.get(k) == made.get(k) for k in ('code', 'versions', 'threads', 'device'))
    return earlier if same else earlier + [dict(before, runs_done=len((saved or {}).get('done', [])))]


def _progress_bar(total: int, desc: str, enabled: bool):
    """The runner's one progress bar."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


# %% [markdown]
# A toy experiment shows the contract. Its train function squares a number per "epoch" and reports each
# epoch; it must live in an importable module for the `processes` and `slurm` executors, so the toy here
# runs inline (the tests run the real experiments under all three executors).

# %%
def toy_train(spec, run):
    """Records of a toy run: `x**2 * epoch` for each epoch."""
    recs = []
    for epoch in range(1, spec['epochs'] + 1):
        recs.append(dict(x=spec['x'], epoch=epoch, y=spec['x'] ** 2 * epoch))
        run.report(recs[-1])
    return recs


tmp = Path(tempfile.mkdtemp())
specs = [dict(x=x, epochs=2) for x in (3, 1, 2)]
recs = run_experiment(tmp / 'toy', specs, toy_train, key=('x',), settings=dict(epochs=2), command=['toy'],
                      progress=False)
test_eq([(r['x'], r['epoch']) for r in recs], [(3, 1), (3, 2), (1, 1), (1, 2), (2, 1), (2, 2)])
cfg = read_json(tmp / 'toy' / CONFIG)
test_eq((cfg['command'], cfg['runs']), (['toy'], 3))
test_eq(cfg['done'], [dict(run=[3], records=2), dict(run=[1], records=2), dict(run=[2], records=2)])

# %% [markdown]
# Resuming: a run not marked done is trained again and its stray records (a torn line too) are dropped;
# a changed setting is refused; `fresh=True` starts over.

# %%
cfg['done'] = cfg['done'][:1]
write_json(tmp / 'toy' / CONFIG, cfg)
with open(tmp / 'toy' / RECORDS, 'a') as f: f.write('{"x": 1, "epoch": 1, "y"')   # killed mid-append
again = run_experiment(tmp / 'toy', specs, toy_train, key=('x',), settings=dict(epochs=2), command=['toy'],
                       progress=False)
test_eq(again, recs)
test_eq(read_jsonl(tmp / 'toy' / RECORDS), recs)
test_fail(lambda: run_experiment(tmp / 'toy', specs, toy_train, key=('x',), settings=dict(epochs=3), progress=False),
          contains='epochs: 2 there, 3 now')
test_eq(len(run_experiment(tmp / 'toy', specs[:1], toy_train, key=('x',), settings=dict(epochs=3), fresh=True,
                           progress=False)), 2)

# %% [markdown]
# ## The command line every experiment shares
#
# Every `stablesam-*` command takes the same options for what they share, from one function: the data
# root and `--download/--no-download`, the device, the seeds, the output folder, `--resume/--fresh`,
# `--progress/--no-progress` (with `--quiet` for `--no-progress`), the executor, its processes and its
# SLURM settings, and `--debug`. A command adds those it uses (`stablesam-train` generates most of its
# options from `TrainConfig` and adds the rest here).

# %%
#| export
COMMON = ('data_root', 'download', 'device', 'seeds', 'out', 'resume', 'progress', 'executor', 'logger', 'debug')


def add_common(p: argparse.ArgumentParser, *names, seeds=(0, 1, 2), out=None,
               data_root='data') -> argparse.ArgumentParser:
    """Add the shared options `names` (default: all of `COMMON`) to parser `p`, the same way for every command."""
    names = names or COMMON
    unknown = sorted(set(names) - set(COMMON))
    if unknown: raise ValueError(f"Unknown common options: {unknown} (choose from {', '.join(COMMON)})")
    if 'data_root' in names:
        p.add_argument('--data-root', default=data_root, help=f'folder holding the datasets (default: {data_root})')
    if 'download' in names:
        p.add_argument('--download', action=argparse.BooleanOptionalAction, default=True,
                       help='download a missing MNIST/CIFAR dataset (--no-download: fail with a message instead)')
    if 'device' in names:
        p.add_argument('--device', default='auto',
                       help='device: auto (cuda if available), cpu, cuda, cuda:N (default: auto)')
    if 'seeds' in names:
        p.add_argument('--seeds', type=int, nargs='+', default=list(seeds),
                       help=f"seeds (default: {' '.join(map(str, seeds))})")
    if 'out' in names:
        p.add_argument('--out', required=out is None, default=out,
                       help='results folder' + (f' (default: {out})' if out else ''))
    if 'resume' in names:
        g = p.add_mutually_exclusive_group()
        g.add_argument('--resume', action='store_true', default=True,
                       help='continue the experiment in --out if it holds one with the same settings (the default)')
        g.add_argument('--fresh', action='store_true', help='delete what --out holds of this experiment and start over')
    if 'progress' in names:
        p.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                       help='show a progress bar (--no-progress for logs)')
        p.add_argument('--quiet', dest='progress', action='store_false', help='the same as --no-progress')
    if 'executor' in names:
        p.add_argument('--executor', choices=EXECUTORS, default='inline',
                       help='where the runs train: inline (this process), processes (--processes local processes, '
                            'spawned), slurm (one SLURM job per run through submitit; --slurm KEY=VALUE ...)')
        p.add_argument('--processes', type=int, default=2, help='worker processes of --executor processes (default: 2)')
        p.add_argument('--slurm', nargs='+', default=[], metavar='KEY=VALUE', type=key_value,
                       help="submitit settings of --executor slurm, e.g. timeout_min=120 slurm_partition=gpu "
                            "gpus_per_node=1 (cluster=local runs the jobs as local processes)")
    if 'logger' in names:
        p.add_argument('--logger', nargs='+', default=[], choices=LOGGERS, metavar='LOGGER',
                       help=f"log training curves to {', '.join(LOGGERS)} (several at once allowed): per step the "
                            "loss, lr and SAM statistics, per epoch the metrics, under the run folders")
        p.add_argument('--log-every', type=int, default=50, metavar='N',
                       help='log the step scalars every N steps (one host sync each; default: 50)')
    if 'debug' in names:
        p.add_argument('--debug', action='store_true', help='show the traceback of an unexpected error')
    return p


def key_value(text: str):
    """`KEY=VALUE` as a pair, the value read as JSON where it parses (numbers, true/false), else a string."""
    if '=' not in text: raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split('=', 1)
    try: v = json.loads(v)
    except json.JSONDecodeError: pass
    return k, v


def executor_options(args) -> dict:
    """The runner's keyword arguments from parsed common options (a parser without `--fresh` never starts over)."""
    loggers = getattr(args, 'logger', None)
    return dict(executor=args.executor, processes=args.processes, slurm=dict(args.slurm),
                fresh=getattr(args, 'fresh', False), progress=args.progress is not False,
                loggers=dict(names=list(loggers), every=args.log_every) if loggers else None)


# %% [markdown]
# One exit wrapper for every command, which returns the status (so `main(argv)` is testable, and the console
# script exits with it): 0 on success, 2 for a usage error (argparse's own message, or a setting that turns
# out invalid: a bad value, a missing file, a damaged checkpoint, a results folder of other settings), 3 when
# training diverged (an exception with `exit_status = 3`), 130 when interrupted, and 1 for anything
# unexpected, with one line naming what failed (the traceback only with `--debug`).

# %%
#| export
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CheckpointError)


def command(prog: str):
    """Decorator for a command's `main(argv)`: errors become one line on stderr and the exit status documented above."""
    def wrap(main):
        def run(argv=None):
            argv = sys.argv[1:] if argv is None else list(argv)
            try:
                status = main(argv)
            except SystemExit as e:   # argparse: --help (0) or a usage error (2), its message already printed
                return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; the same command continues where it stopped", file=sys.stderr)
                return 130
            except Exception as e:
                if '--debug' in argv: traceback.print_exc()
                status = getattr(e, 'exit_status', None)
                if status is not None:
                    print(f"{prog}: {e}", file=sys.stderr)
                    return status
                if isinstance(e, USAGE_ERRORS):
                    print(f"{prog}: error: {e}", file=sys.stderr)
                    return 2
                hint = '' if '--debug' in argv else ' (--debug shows the traceback)'
                print(f"{prog}: unexpected error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
                return 1
            return 0 if status is None else status
        run.__name__, run.__doc__, run.__wrapped__ = main.__name__, main.__doc__, main
        return run
    return wrap


# %%
@command('demo')
def demo(argv):
    """A command that fails as its argument says."""
    p = add_common(argparse.ArgumentParser(prog='demo'), 'debug')
    p.add_argument('what')
    what = p.parse_args(argv).what
    if what == 'bad': raise ValueError('invalid lr: -1')
    if what == 'crash': raise KeyError('oops')
    if what == 'diverge':
        e = RuntimeError('diverged at epoch 3')
        e.exit_status = 3
        raise e


test_eq([demo([w]) for w in ('ok', 'bad', 'crash', 'diverge')], [0, 2, 1, 3])
test_eq((demo([]), demo(['--help'])), (2, 0))   # argparse's usage error and --help
p = add_common(argparse.ArgumentParser(prog='x'), out='runs/x')
a = p.parse_args(['--quiet', '--fresh', '--executor', 'slurm', '--slurm', 'cluster=local', 'timeout_min=5'])
test_eq((a.progress, a.fresh, executor_options(a)['slurm']), (False, True, dict(cluster='local', timeout_min=5)))
test_eq(executor_options(a)['loggers'], None)
a = p.parse_args(['--logger', 'csv', 'tensorboard', '--log-every', '5'])
test_eq(executor_options(a)['loggers'], dict(names=['csv', 'tensorboard'], every=5))
try:
    p.parse_args(['--executor', 'mpi'])
    raise AssertionError('an unknown executor was accepted')
except SystemExit as e: test_eq(e.code, 2)
