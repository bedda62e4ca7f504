"""Fault tolerance: runs killed at random moments (also while writing a checkpoint), damaged checkpoints and run files,
divergence and strict JSON. The chaos tests drive the command lines in forked processes and SIGKILL them."""
import io
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from stablesam.data import write_fake_mnist
from stablesam.train import (PREVIOUS, Trainer, TrainConfig, comparable, read_json, read_jsonl, read_metrics,
                             strict_json, write_json, write_jsonl)
from stablesam.train import main as train_main

pytestmark = pytest.mark.usefixtures('one_thread')
REAL_MNIST = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'  # ../shared/data from the project root
REPORT = os.environ.get('STABLESAM_CHAOS_REPORT')  # where the chaos tests write what they measured (the notebook's table)


@pytest.fixture(scope='module')
def fake_root(tmp_path_factory):
    return write_fake_mnist(tmp_path_factory.mktemp('data'), n_train=512, n_test=128)


# ---- the harness: a command line in a forked process that can be SIGKILLed at a chosen moment ----

def _child(main, argv, log, marks, slow_save):
    """Run `main(argv)` with stderr to `log`; mark start-up and each checkpoint write in `marks`; exit with its status."""
    os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)
    warnings.resetwarnings()  # pytest's warning capture stays in the parent: warnings go to stderr
    warnings.showwarning = lambda msg, cat, fname, line, file=None, text=None: \
        sys.stderr.write(warnings.formatwarning(msg, cat, fname, line, text))
    save, count = torch.save, [0]
    def marked_save(obj, f, *args, **kwargs):
        """torch.save that marks each write; with `slow_save`, it writes half the file, marks, pauses, then the rest."""
        count[0] += 1
        buf = io.BytesIO(); save(obj, buf, *args, **kwargs); data = buf.getvalue()
        with open(f, 'wb') as out:
            out.write(data[:len(data) // 2]); out.flush()
            (marks / f'save{count[0]}').touch()
            if slow_save: time.sleep(slow_save)
            out.write(data[len(data) // 2:])
    torch.save = marked_save
    (marks / 'ready').touch()
    try: code = main(argv)
    except SystemExit as e: code = e.code
    except BaseException as e: print(f'{type(e).__name__}: {e}', file=sys.stderr); code = 1
    sys.stderr.flush(); os._exit(code or 0)


def _run(main, argv, tmp, *, kill_on=None, delay=0.0, slow_save=0.0, timeout=120):
    """Run `main(argv)` in a forked process; with `kill_on` (a mark), SIGKILL it `delay` s after the mark appears.
    Returns (exit status or 'killed', stderr text, whether the kill hit a live process)."""
    marks, log = tmp / 'marks', tmp / 'stderr.txt'
    marks.mkdir(exist_ok=True)
    for m in marks.iterdir(): m.unlink()
    log.write_text('')
    p = multiprocessing.get_context('fork').Process(target=_child, args=(main, argv, str(log), marks, slow_save))
    p.start()
    hit = False
    if kill_on is not None:
        t0 = time.time()
        while not (marks / kill_on).exists() and p.is_alive() and time.time() - t0 < timeout: time.sleep(0.002)
        time.sleep(delay)
        hit = p.is_alive()
        os.kill(p.pid, signal.SIGKILL)
    p.join(timeout)
    assert not p.is_alive(), 'the run did not finish in time'
    return ('killed' if p.exitcode == -signal.SIGKILL else p.exitcode), log.read_text(), hit


def _faults(seed, kills):
    """A random order of `kills` SIGKILLs (at start-up, at random moments of training, during checkpoint writes)."""
    rng = random.Random(seed)
    kinds = ['start-up', 'write'] + [rng.choice(['training', 'training', 'write']) for _ in range(kills - 2)]
    rng.shuffle(kinds)
    return [(k, rng.uniform(0, 0.4) if k == 'start-up' else rng.uniform(0, 0.05), rng.randint(1, 3)) for k in kinds]


KILLS = {'start-up': 'SIGKILL during start-up (data loading, model set-up)',
         'training': 'SIGKILL at a random moment of training (between checkpoints, or mid-epoch)',
         'write': 'SIGKILL while a checkpoint is half written',
         'corrupt': 'latest checkpoint truncated (resume falls back to the previous one)',
         'metrics': 'metrics.jsonl cut in the middle of a line'}


def chaos(main, argv, out, tmp, *, kills=6, seed=0):
    """Apply the faults to the run `argv` in `out` (resuming after each), then finish it; returns the per-fault rows."""
    rows = []
    for kind, delay, nth in _faults(seed, kills):
        mark = 'ready' if kind == 'start-up' else f'save{nth}'
        status, err, hit = _run(main, argv, tmp, kill_on=mark, delay=delay, slow_save=0.3 if kind == 'write' else 0.0)
        assert status == 'killed' or status == 0, err[-2000:]
        rows.append(dict(fault=kind, tried=hit and status == 'killed'))
    latest = out / 'checkpoint.pt'
    if latest.exists() and (out / PREVIOUS).exists():
        latest.write_bytes(latest.read_bytes()[:latest.stat().st_size // 2])
        rows.append(dict(fault='corrupt', tried=True))
    if (out / 'metrics.jsonl').stat().st_size:
        (out / 'metrics.jsonl').write_bytes((out / 'metrics.jsonl').read_bytes()[:-7])
        rows.append(dict(fault='metrics', tried=True))
    status, err, _ = _run(main, argv, tmp)
    assert status == 0, err[-2000:]
    print(rows)
    if any(r['fault'] == 'corrupt' for r in rows):  # the warning names both files
        assert f'The latest checkpoint {latest} does not load' in err and str(out / PREVIOUS) in err, err[-2000:]
    return rows


def report(name, rows, lost):
    """The measured table (fault, tried, survived, data lost), printed and, with STABLESAM_CHAOS_REPORT, saved."""
    table = {}
    for r in rows:
        t = table.setdefault(KILLS[r['fault']], dict(tried=0, survived=0))
        t['tried'] += r['tried']; t['survived'] += r['tried']  # each fault was followed by a resume that finished
    print(f'\n{name}: ' + '; '.join(f"{k}: {v['tried']} tried, {v['survived']} survived" for k, v in table.items())
          + f'; data lost: {lost}')
    if REPORT:
        path = Path(REPORT); old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(dict(old, **{name: dict(faults=table, data_lost=lost)}), indent=2))
    return table


def _same_state(a, b):
    """Whether two checkpoints hold bit-identical model and optimizer tensors."""
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    ta = [t for t in (*sa['model'].values(), *_tensors(sa['optimizer']))]
    tb = [t for t in (*sb['model'].values(), *_tensors(sb['optimizer']))]
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


def _tensors(obj):
    if torch.is_tensor(obj): yield obj
    elif isinstance(obj, dict):
        for v in obj.values(): yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj: yield from _tensors(v)


def test_chaos_train(fake_root, tmp_path):
    """SIGKILL stablesam-train at least 5 times at random moments (start-up, training, half-written checkpoints),
    damage its latest checkpoint and metrics.jsonl, resume after each: parameters and metrics equal an uninterrupted run's."""
    real = (REAL_MNIST / 'MNIST' / 'raw' / 'train-images-idx3-ubyte').exists()
    root = REAL_MNIST if real else fake_root  # real MNIST where ../shared/data has it, else generated files
    argv = ['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--optimizer', 'stablesam',
            '--train-subset', '512', '--test-subset', '256', '--batch-size', '16', '--epochs', '4', '--lr', '0.05',
            '--schedule', 'cosine', '--label-smoothing', '0', '--no-download', '--no-progress', '--device', 'cpu',
            '--checkpoint-every', '0.05', '--resume']
    status, err, _ = _run(train_main, argv + ['--out', str(tmp_path / 'straight')], tmp_path)
    assert status == 0, err
    rows = chaos(train_main, argv + ['--out', str(tmp_path / 'chaos')], tmp_path / 'chaos', tmp_path)
    assert sum(r['tried'] for r in rows if r['fault'] in ('start-up', 'training', 'write')) >= 5
    assert any(r['tried'] for r in rows if r['fault'] == 'write')
    got, want = read_metrics(tmp_path / 'chaos'), read_metrics(tmp_path / 'straight')
    assert [m['epoch'] for m in got] == [1, 2, 3, 4]
    assert comparable(got) == comparable(want)
    assert _same_state(tmp_path / 'chaos' / 'checkpoint.pt', tmp_path / 'straight' / 'checkpoint.pt')
    assert not list((tmp_path / 'chaos').glob('.*.tmp*'))
    report('stablesam-train' + (' (real MNIST)' if real else ' (generated MNIST)'), rows, lost='0 epochs; parameters and '
           'optimizer state bit-identical to the uninterrupted run')
