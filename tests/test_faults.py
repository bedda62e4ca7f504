"""Fault tolerance: runs killed at random moments (also while writing a checkpoint), damaged checkpoints and run files,
divergence and strict JSON. The chaos tests drive the command lines in forked processes and SIGKILL them."""
import json
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

from experiment_helpers import (chaos_environment, fails_on_two_while_one_runs, mark_checkpoint_writes_from_env,
                                same_records)
from stablesam.cli import main as train_main
from stablesam.data import write_fake_mnist
from stablesam.experiment import RECORDS, run_experiment, worker_threads
from stablesam.runs import (CONFIG, PREVIOUS, append_jsonl, read_json, read_jsonl, read_metrics, strict_json,
                            write_json, write_jsonl)
from stablesam.config import TrainConfig
from stablesam.train import Trainer, comparable

pytestmark = pytest.mark.usefixtures('one_thread')
REAL_MNIST = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'  # ../shared/data from the project root
REPORT = os.environ.get('STABLESAM_CHAOS_REPORT')  # where the chaos tests write what they measured (notebook's table)
SEED = int(os.environ.get('STABLESAM_CHAOS_SEED', '0'))  # the random schedule of faults (moments, kinds)


@pytest.fixture(scope='module')
def fake_root(tmp_path_factory):
    return write_fake_mnist(tmp_path_factory.mktemp('data'), n_train=512, n_test=128)


# ---- the harness: a command line in a forked process that can be SIGKILLed at a chosen moment ----

def _child(main, argv, log, marks, slow_save):
    """Run `main(argv)` as the leader of a new process group with stderr to `log`; mark start-up and each checkpoint
    write of every process it starts (spawned workers, submitit jobs too) in `marks`; exit with its code."""
    os.setpgid(0, 0)
    os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)
    warnings.resetwarnings()  # pytest's warning capture stays in the parent: warnings go to stderr
    warnings.showwarning = lambda msg, cat, fname, line, file=None, text=None: \
        sys.stderr.write(warnings.formatwarning(msg, cat, fname, line, text))
    os.environ.update(chaos_environment(marks.parent, marks, slow_save))
    mark_checkpoint_writes_from_env()
    (marks / 'ready').touch()
    try: code = main(argv)
    except SystemExit as e: code = e.code
    except BaseException as e:
        print(f'{type(e).__name__}: {e}', file=sys.stderr)
        code = 1
    sys.stderr.flush()
    os._exit(code or 0)


def _live(pgid=None, mentioning=None):
    """{pid: command line} of the live (not zombie) processes of process group `pgid`, or whose command line
    mentions `mentioning`."""
    found = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
            cmdline = (stat.parent / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
        except (OSError, IndexError): continue
        if fields[0] != 'Z' and (int(fields[2]) == pgid or mentioning is not None and mentioning in cmdline):
            found[int(stat.parent.name)] = cmdline
    return found


def _wait_mark(marks, mark, p, timeout):
    """The pid that left `mark` (`ready`, or `save<n>`: the nth checkpoint write of some process) once it appears;
    None if the command ended first."""
    t0 = time.time()
    while p.is_alive() and time.time() - t0 < timeout:
        if mark == 'ready' and (marks / mark).exists(): return p.pid
        found = list(marks.glob(f'{mark}-*'))
        if found: return int(found[0].name.split('-')[1])
        time.sleep(0.002)


def _run(main, argv, tmp, *, kill_on=None, delay=0.0, slow_save=0.0, worker=False, timeout=120):
    """Run `main(argv)` in a forked process; with `kill_on` (a mark), SIGKILL its whole process group `delay` s after
    the mark appears, or with `worker`, the process that left the mark alone (a worker; the command then stops on
    its own). Returns (exit status or 'killed', stderr text, what the kill hit: 'group', 'worker' or None); no
    process of the command may be left running."""
    marks, log = tmp / 'marks', tmp / 'stderr.txt'
    marks.mkdir(exist_ok=True)
    for m in marks.iterdir(): m.unlink()
    log.write_text('')
    p = multiprocessing.get_context('fork').Process(target=_child, args=(main, argv, str(log), marks, slow_save))
    p.start()
    hit = None
    try:
        pid = None if kill_on is None else _wait_mark(marks, kill_on, p, timeout)
        if pid is not None:
            time.sleep(delay)
            alive = pid in _live(p.pid)
            if worker and pid != p.pid:
                hit = 'worker' if alive else None
                if alive: os.kill(pid, signal.SIGKILL)
            else:
                hit = 'group' if p.is_alive() else None
                if hit: os.killpg(p.pid, signal.SIGKILL)
        p.join(timeout)
        assert not p.is_alive(), 'the run did not finish in time'
        t0 = time.time()
        while _live(p.pid) and time.time() - t0 < 30: time.sleep(0.05)
        assert not _live(p.pid), f'processes of the command left running after it ended: {_live(p.pid)}'
    finally:
        if _live(p.pid): os.killpg(p.pid, signal.SIGKILL)
    return ('killed' if p.exitcode == -signal.SIGKILL else p.exitcode), log.read_text(), hit


def _faults(seed, kills, workers=()):
    """A random order of `kills` SIGKILLs (at start-up, at random moments of training, during checkpoint writes; with
    `workers`, also of one worker process alone), each kind at least once."""
    rng = random.Random(seed)
    kinds = ['start-up', 'write', 'training', *workers]
    kinds += [rng.choice(['training', 'write', *workers]) for _ in range(kills - len(kinds))]
    rng.shuffle(kinds)
    plan = [(k, rng.uniform(0, 0.4) if k == 'start-up' else rng.uniform(0, 0.05), rng.randint(1, 3)) for k in kinds]
    return plan + [(None, 0, 0)]


KILLS = {'start-up': 'SIGKILL during start-up (data loading, model set-up, workers starting)',
         'training': 'SIGKILL at a random moment of training (between checkpoints, or mid-epoch)',
         'write': 'SIGKILL while a checkpoint is half written',
         'worker': 'SIGKILL of one worker alone (a pool process; a submitit job) at a random moment of training',
         'worker-write': 'SIGKILL of one worker alone while it half wrote a checkpoint',
         'corrupt': 'latest checkpoint truncated (resume falls back to the previous one)',
         'metrics': 'the JSON-lines log (metrics.jsonl, records.jsonl) cut in the middle of a line',
         'temp': "temporary files of interrupted atomic writes left behind (config.json's, a checkpoint's)"}
WORKER_KILLS = ('worker', 'worker-write')   # the command sees its worker die and stops; the same command continues


def _file_fault(ckpt_dir, log, todo):
    """Apply the first fault of `todo` that the run allows now (a truncated latest checkpoint in `ckpt_dir` needs a
    previous one, a cut `log` needs a line, the temporaries a `config.json` beside `log`); returns `(name, checkpoint
    damaged)` or None."""
    latest, config = None if ckpt_dir is None else ckpt_dir / 'checkpoint.pt', log.parent / CONFIG
    for kind in todo:
        if kind == 'corrupt' and latest is not None and latest.exists() and (ckpt_dir / PREVIOUS).exists():
            latest.write_bytes(latest.read_bytes()[:latest.stat().st_size // 2])
        elif kind == 'metrics' and log.exists() and log.stat().st_size:
            log.write_bytes(log.read_bytes()[:-7])
        elif kind == 'temp' and config.exists():  # as `atomic_write` names them, by a writer (pid 1) killed midway
            config.with_name(f'.{CONFIG}.tmp1').write_bytes(config.read_bytes()[:config.stat().st_size // 2])
            if latest is not None and latest.exists(): latest.with_name('.checkpoint.pt.tmp1').write_bytes(b'\0' * 64)
        else: continue
        todo.remove(kind)
        return kind, latest


def _progress(ckpt_dir):
    """(epoch, batch in it) of the newest checkpoint in `ckpt_dir` that loads (either trainer of a pair), or None."""
    for name in ('checkpoint.pt', PREVIOUS) if ckpt_dir is not None else ():
        try: state = torch.load(ckpt_dir / name, weights_only=True)
        except Exception: continue
        trainers = [state['a'], state['b']] if 'a' in state else [state]
        return min(t['epoch'] for t in trainers), max(t.get('position', 0) for t in trainers)


def _job_logs(out):
    """The stderr of the submitit jobs of results folder `out` (their warnings are not on the command's stderr)."""
    return ''.join(f.read_text() for f in sorted((out / 'slurm').glob('*/*.err'))) if (out / 'slurm').exists() else ''


def chaos(main, argv, tmp, checkpoints, log, *, kills=6, seed=SEED, workers=(), files=('corrupt', 'metrics')):
    """Apply the faults to the run `argv` (resuming after each), then finish it; `checkpoints()` is the folder of the
    checkpoint being written, `log` the JSON-lines file the run appends to, `workers` the kinds of kill of one worker
    alone, `files` the kinds of damaged files. Returns the per-fault rows."""
    rows, todo, plan, more, unnoticed = [], list(files), _faults(seed, kills, workers), 3, None
    while plan:
        kind, delay, nth = plan.pop(0)
        damaged = None if kind == 'start-up' else _file_fault(checkpoints(), log, todo)  # killed before it resumes
        if kind is None and todo and len(rows) < 3 * kills:  # file faults the run did not allow yet: a damaged
            if 'corrupt' in todo:                              # checkpoint needs a run under way: train on further,
                kind, delay, nth, more = 'training', 0.0, more, 2 * more   # twice as far each time; the others a
            plan.append((None, 0, 0))                                        # pair finished: finish, then again
        if damaged is not None: rows.append(dict(fault=damaged[0], tried=True))
        mark = None if kind is None else 'ready' if kind == 'start-up' else f'save{nth}'
        slow = 0.3 if kind in ('write', 'worker-write') else 0.0
        status, err, hit = _run(main, argv, tmp, kill_on=mark, delay=delay, slow_save=slow, worker=kind in WORKER_KILLS)
        if hit == 'worker':  # the command stops on its own, naming the dead worker
            assert status == 0 or (status == 1 and ('worker process died' in err or 'SLURM job' in err)), err[-2000:]
        else: assert status == 'killed' or status == 0, err[-2000:]
        if damaged is not None and damaged[0] == 'corrupt': unnoticed = damaged[1]
        if unnoticed is not None and f'The latest checkpoint {unnoticed} does not load' in err + _job_logs(log.parent):
            assert str(unnoticed.parent / PREVIOUS) in err + _job_logs(log.parent), err[-2000:]  # it names both files
            unnoticed = None   # (a run killed before it resumed that pair warns in a later run)
        if kind in WORKER_KILLS and hit == 'group':  # the mark was the command's own: it trains a last run itself
            kind = 'write' if kind == 'worker-write' else 'training'
        if kind is not None:
            rows.append(dict(fault=kind, tried=(hit, status) in (('group', 'killed'), ('worker', 1)),
                             saved=_progress(checkpoints())))
    assert status == 0, err[-2000:]
    assert not todo, f'faults not tried: {todo} (the run is too short): {rows}'
    assert unnoticed is None, f'no warning that the latest checkpoint {unnoticed} does not load: {err[-2000:]}'
    assert any(r.get('saved') and r['saved'][1] > 0 for r in rows), rows  # some kills hit runs resumed within an epoch
    return rows


def report(name, rows, lost, table_file=None):
    """The measured table (fault, tried, survived, data lost), printed and, with STABLESAM_CHAOS_REPORT, saved; with
    `table_file`, appended there as Markdown."""
    table = {}
    for r in rows:
        t = table.setdefault(KILLS[r['fault']], dict(tried=0, survived=0))
        t['tried'] += r['tried']
        t['survived'] += r['tried']  # each fault was followed by a resume that finished
    print(f'\n{name}: ' + '; '.join(f"{k}: {v['tried']} tried, {v['survived']} survived" for k, v in table.items())
          + f'; data lost: {lost}')
    if REPORT:
        path = Path(REPORT)
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(dict(old, **{f'{name}, seed {SEED}': dict(faults=table, data_lost=lost)}), indent=2))
    if table_file is not None:
        lines = [f'### {name}, fault seed {SEED} (STABLESAM_CHAOS_SEED)', '', '| fault | tried | survived |',
                 '|---|---:|---:|', *(f"| {k} | {v['tried']} | {v['survived']} |" for k, v in table.items()), '',
                 f'Data lost: {lost}.', '']
        with open(table_file, 'a') as f: f.write('\n'.join(lines) + '\n')
        print('\n'.join(lines) + f'fault table: {table_file}')
    return table


@pytest.fixture(scope='module')
def fault_table(tmp_path_factory):
    """The Markdown file under pytest's temporary folder that the chaos tests append their tables to."""
    return tmp_path_factory.getbasetemp() / 'chaos_faults.md'


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


def test_chaos_train(fake_root, fault_table, tmp_path):
    """SIGKILL stablesam-train at least 5 times at random moments (start-up, training, half-written checkpoints),
    damage its latest checkpoint and metrics.jsonl, resume after each: parameters and metrics equal an uninterrupted
    run's."""
    real = (REAL_MNIST / 'MNIST' / 'raw' / 'train-images-idx3-ubyte').exists()
    root = REAL_MNIST if real else fake_root  # real MNIST where ../shared/data has it, else generated files
    argv = ['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--optimizer', 'stablesam',
            '--train-subset', '512', '--test-subset', '256', '--batch-size', '32', '--epochs', '8', '--lr', '0.05',
            '--schedule', 'cosine', '--label-smoothing', '0', '--no-download', '--no-progress', '--device', 'cpu',
            '--checkpoint-every', '0.05', '--resume']
    status, err, _ = _run(train_main, argv + ['--out', str(tmp_path / 'straight')], tmp_path)
    assert status == 0, err
    out = tmp_path / 'chaos'
    rows = chaos(train_main, argv + ['--out', str(out)], tmp_path, lambda: out, out / 'metrics.jsonl')
    assert sum(r['tried'] for r in rows if r['fault'] in ('start-up', 'training', 'write')) >= 5
    assert any(r['tried'] for r in rows if r['fault'] == 'write')
    got, want = read_metrics(tmp_path / 'chaos'), read_metrics(tmp_path / 'straight')
    assert [m['epoch'] for m in got] == list(range(1, 9))
    assert comparable(got) == comparable(want)
    assert _same_state(tmp_path / 'chaos' / 'checkpoint.pt', tmp_path / 'straight' / 'checkpoint.pt')
    assert not list((tmp_path / 'chaos').glob('.*.tmp*'))
    report('stablesam-train' + (' (real MNIST)' if real else ' (generated MNIST)'), rows,
           lost='0 epochs; parameters and optimizer state bit-identical to the uninterrupted run',
           table_file=fault_table)


def _partial_pair(out):
    """The checkpoint folder of a pair a stability run is training (not yet marked done by the runner), one with a
    previous checkpoint where there is one (the processes and slurm executors train pairs side by side), or None."""
    done = {','.join(f'{k}={v}' for k, v in zip(('optimizer', 'seed'), d['run']))
            for d in read_json(out / 'config.json')['done']} if (out / 'config.json').exists() else set()
    pairs = [p for p in sorted((out / 'runs').glob('*')) if p.name not in done] if (out / 'runs').exists() else []
    return next((p for p in pairs if (p / 'checkpoint.pt').exists() and (p / PREVIOUS).exists()),
                pairs[0] if pairs else None)


STABILITY_CHAOS = ['--dataset', 'mnist', '--model', 'fcn', '--optimizers', 'sgd', 'stablesam', '--seeds', '0',
                   '--subset', '96', '--epochs', '3', '--batch-size', '16', '--lr', '0.05', '--no-download', '--quiet',
                   '--device', 'cpu', '--checkpoint-every', '1e-9']   # a checkpoint after every step
EXECUTOR_ARGS = {'inline': [], 'processes': ['--executor', 'processes', '--processes', '2'],
                 'slurm': ['--executor', 'slurm', '--slurm', 'cluster=local', 'timeout_min=10']}


@pytest.fixture(scope='module')
def stability_straight(fake_root, tmp_path_factory):
    """The results folder of an uninterrupted stablesam-stability run (inline, one torch thread)."""
    from stablesam.stability import main as stability_main
    tmp = tmp_path_factory.mktemp('straight')
    status, err, _ = _run(stability_main, [*STABILITY_CHAOS, '--data-root', str(fake_root), '--out', str(tmp / 'out')],
                          tmp)
    assert status == 0, err
    return tmp / 'out'


@pytest.mark.parametrize('executor', list(EXECUTOR_ARGS))
def test_chaos_stability(fake_root, stability_straight, fault_table, tmp_path, executor):
    """The same for stablesam-stability under each executor: killed within pairs (within epochs, during checkpoint
    writes; under processes and slurm also one worker or submitit job alone), damaged pair checkpoint and
    records.jsonl, temporaries left behind; the resumed run's records and both final models of every pair equal an
    uninterrupted inline run's."""
    if executor == 'slurm': pytest.importorskip('submitit')
    from stablesam.stability import main as stability_main
    out = tmp_path / 'chaos'
    argv = [*STABILITY_CHAOS, '--data-root', str(fake_root), *EXECUTOR_ARGS[executor], '--out', str(out)]
    workers = WORKER_KILLS if executor != 'inline' else ()   # each restart there starts Python processes: 5 kills
    rows = chaos(stability_main, argv, tmp_path, lambda: _partial_pair(out), out / RECORDS, kills=5 if workers else 6,
                 workers=workers, files=('corrupt', 'metrics', 'temp'))
    assert sum(r['tried'] for r in rows if r['fault'] in ('start-up', 'training', 'write', *workers)) >= 5
    assert all(any(r['tried'] for r in rows if r['fault'] == k) for k in workers), rows
    # bit-identical where every run trained on one torch thread, as the uninterrupted run did (float sums on the
    # CPU depend on the thread count; processes' workers get cpu_count // 2 threads: one on a two-core machine)
    exact = executor != 'processes' or worker_threads('processes', 2) == 1
    got, want = read_jsonl(out / RECORDS), read_jsonl(stability_straight / RECORDS)
    assert len(got) == 2 * 4   # two pairs, epochs 0-3
    if exact: assert got == want
    else: same_records(got, want)
    for pair in ('optimizer=sgd,seed=0', 'optimizer=stablesam,seed=0'):
        a, b = (torch.load(run / 'runs' / pair / 'checkpoint.pt', weights_only=True)
                for run in (out, stability_straight))
        for k in ('a', 'b'):
            assert all(torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-6, atol=1e-9)
                       for x, y in zip(a[k]['model'].values(), b[k]['model'].values()))
    assert not [f for d in (out, *(out / 'runs').iterdir()) for f in d.glob('.*.tmp*')]
    report(f'stablesam-stability --executor {executor} (generated MNIST)', rows,
           lost='0 records; both final models of each pair ' + ('bit-identical to' if exact else 'within 1e-6 of')
           + ' the uninterrupted run', table_file=fault_table)


@pytest.mark.parametrize('sigint', ['default', 'ignored'])
def test_a_failed_slurm_job_cancels_the_other_jobs(tmp_path, monkeypatch, sigint):
    """A SLURM job that fails stops the run, and the runner cancels the other jobs: left running, they would train the
    same run folders as the jobs that the same command, run again, submits. Also where the command runs with SIGINT
    ignored (a background job of a non-interactive shell, as CI runs it), which submitit's local cancel relies on."""
    pytest.importorskip('submitit')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(Path(__file__).parent), os.environ.get('PYTHONPATH', '')]))
    before = signal.getsignal(signal.SIGINT)
    if sigint == 'ignored': signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(RuntimeError, match=r'SLURM job \d+ \(x=2\) failed'):
            # x=2 fails once x=1 is running: a job cancelled while submitit's local controller still starts it can
            # outlive the cancel (the controller's own race), which is not what this test is about
            run_experiment(tmp_path, [dict(x=x, epochs=1, started=str(tmp_path / 'x1-started')) for x in (1, 2)],
                           fails_on_two_while_one_runs, key=('x',), settings={},
                           executor='slurm', slurm=dict(cluster='local', timeout_min=5), progress=False)
        t0 = time.time()
        while _live(mentioning=str(tmp_path)) and time.time() - t0 < 20: time.sleep(0.1)
        assert not _live(mentioning=str(tmp_path)), 'the job of x=1 is still running'
    finally:
        signal.signal(signal.SIGINT, before)
        for pid in _live(mentioning=str(tmp_path)): os.kill(pid, signal.SIGKILL)


# ---- mid-epoch checkpoints and the two slots, in process ----

@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    from stablesam.data import write_fake_cifar
    return write_fake_cifar(tmp_path_factory.mktemp('cifar'), n_train=64, n_test=32)


class KillAt:
    """A callback that stops training (as a kill would) after batch `position` of epoch `epoch` (1-based)."""
    def __init__(self, epoch, position): self.epoch, self.position = epoch, position
    def after_step(self, trainer):
        if trainer.epoch + 1 == self.epoch and trainer.position == self.position: raise KeyboardInterrupt


@pytest.mark.parametrize('kind', ['in-memory', 'in-memory-cropflip-batchnorm', 'dataloader-augment', 'fp16-gradscaler'])
def test_mid_epoch_resume_is_exact(fake_root, cifar_root, tmp_path, kind):
    """Stopped within an epoch, after a checkpoint at every step, and resumed: parameters, optimizer state (momentum,
    GradScaler) and every metric equal the uninterrupted run's."""
    kw = dict(dataset='mnist', data_root=str(fake_root), model='fcn', optimizer='stablesam', epochs=2, batch_size=64,
              train_subset=256, test_subset=64, progress=False, checkpoint_every=1e-9)
    if kind.startswith('in-memory-cropflip'):  # batched crops and flips on the device; BatchNorm statistics
        kw.update(dataset='cifar10', data_root=str(cifar_root), model='resnet20', optimizer='sam', batch_size=16,
                  train_subset=48, test_subset=16)
    if kind == 'dataloader-augment':  # torchvision transforms per image, seeded per (seed, epoch, index)
        kw.update(dataset='cifar10', data_root=str(cifar_root), model='lenet', optimizer='stablesam', batch_size=16,
                  train_subset=48, test_subset=16, in_memory=False)
    if kind == 'fp16-gradscaler': kw.update(optimizer='sgd', amp='fp16', lr=0.05)
    straight = Trainer(TrainConfig(**kw, out=str(tmp_path / 'straight')))
    want = straight.fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**kw, out=str(tmp_path / 'r')), callbacks=[KillAt(2, 2)]).fit()
    state = torch.load(tmp_path / 'r' / 'checkpoint.pt', weights_only=True)
    assert (state['epoch'], state['position']) == (1, 1) and state['sums']['steps'] == 1  # mid-epoch, with its sums
    resumed = Trainer(TrainConfig(**kw, out=str(tmp_path / 'r'), resume=True))
    assert comparable(resumed.fit()) == comparable(want)
    assert _same_state(tmp_path / 'r' / 'checkpoint.pt', tmp_path / 'straight' / 'checkpoint.pt')
    if straight.scaler is not None: assert resumed.scaler.state_dict() == straight.scaler.state_dict()


def test_damaged_latest_checkpoint_falls_back_to_previous(fake_root, tmp_path):
    kw = dict(dataset='mnist', data_root=str(fake_root), model='fcn', optimizer='stablesam', epochs=2, batch_size=64,
              progress=False)
    want = Trainer(TrainConfig(**kw)).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**kw, out=str(tmp_path / 'r'), checkpoint_every=1e-9), callbacks=[KillAt(2, 3)]).fit()
    latest, previous = tmp_path / 'r' / 'checkpoint.pt', tmp_path / 'r' / PREVIOUS
    assert torch.load(previous, weights_only=True)['step'] == torch.load(latest, weights_only=True)['step'] - 1
    latest.write_bytes(b'\0' * 100)
    with pytest.warns(UserWarning, match=f'(?s)The latest checkpoint {latest} does not load .*resuming from the '
                                         f'previous one, {previous}'):
        got = Trainer(TrainConfig(**kw, out=str(tmp_path / 'r'), resume=True)).fit()
    assert comparable(got) == comparable(want)
    for f in (latest, previous): f.write_bytes(b'garbage')
    with (pytest.warns(UserWarning, match='does not load'),
          pytest.raises(RuntimeError, match=f'Cannot read checkpoint {previous}')):
        Trainer(TrainConfig(**kw, out=str(tmp_path / 'r'), resume=True)).fit()


def test_checkpoint_every_zero_writes_at_epoch_ends_only(fake_root, tmp_path):
    saves = []
    class Count:
        def after_step(self, trainer): saves.append(trainer.checkpoint_path)
    Trainer(TrainConfig(dataset='mnist', data_root=str(fake_root), model='fcn', epochs=2, batch_size=64, progress=False,
                        checkpoint_every=0, out=str(tmp_path / 'r')), callbacks=[Count()]).fit()
    assert len(saves) == 16 and set(saves[:8]) == {None} and set(saves[8:]) == {tmp_path / 'r' / 'checkpoint.pt'}
    assert torch.load(tmp_path / 'r' / 'checkpoint.pt', weights_only=True)['position'] == 0
    with pytest.raises(ValueError, match='Invalid checkpoint_every: -1'):
        TrainConfig(checkpoint_every=-1).validate()


# ---- divergence ----

DIVERGE = ['--dataset', 'mnist', '--model', 'fcn', '--optimizer', 'stablesam', '--lr', '100', '--epochs', '2',
           '--no-progress', '--device', 'cpu', '--no-download']


def test_divergence_stops_with_status_3_and_keeps_last_good_checkpoint(fake_root, tmp_path, capsys):
    out = tmp_path / 'r'
    assert train_main([*DIVERGE, '--data-root', str(fake_root), '--out', str(out), '--checkpoint-every', '1e-9']) == 3
    err = capsys.readouterr().err
    d = read_json(out / 'diverged.json')
    assert d['outcome'] == 'diverged' and d['checkpoint'] == str(out / 'checkpoint.pt')
    assert (f"non-finite loss, gradient or weights at epoch {d['epoch']}, step {d['step']} (batch {d['batch']} of the "
            f"epoch), lr {d['lr']:g}: training stopped. Last good checkpoint: {out / 'checkpoint.pt'} (kept") in err
    good = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert good['step'] == d['step'] - 1  # the step before the non-finite one
    assert all(torch.isfinite(t).all() for t in good['model'].values())
    assert not (tmp_path / 'no_out').exists()
    assert train_main([*DIVERGE, '--data-root', str(fake_root), '--checkpoint-every', '0']) == 3
    assert 'No checkpoint to resume from (no run folder: out is not set)' in capsys.readouterr().err


def test_on_nonfinite_skip_finishes_and_counts(fake_root, tmp_path):
    out = tmp_path / 'r'
    assert train_main([*DIVERGE, '--data-root', str(fake_root), '--out', str(out), '--on-nonfinite', 'skip']) == 0
    ms = read_metrics(out)
    assert len(ms) == 2 and sum(m['skipped_steps'] for m in ms) > 0
    text = (out / 'metrics.jsonl').read_text()
    assert 'NaN' not in text and 'Infinity' not in text
    state = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert all(torch.isfinite(t).all() for t in state['model'].values())  # skipped steps never reach the weights
    # a diverged run resumed with skip continues from its last good checkpoint
    assert train_main([*DIVERGE, '--data-root', str(fake_root), '--out', str(tmp_path / 's')]) == 3
    assert train_main([*DIVERGE, '--data-root', str(fake_root), '--out', str(tmp_path / 's'), '--resume',
                       '--on-nonfinite', 'skip']) == 0
    assert not (tmp_path / 's' / 'diverged.json').exists() and len(read_metrics(tmp_path / 's')) == 2


def test_gradscaler_skips_on_its_own(fake_root):
    """With fp16 the GradScaler skips steps with non-finite gradients (and lowers its scale); the run is not stopped."""
    t = Trainer(TrainConfig(dataset='mnist', data_root=str(fake_root), model='fcn', optimizer='stablesam', amp='fp16',
                            epochs=1, batch_size=64, progress=False))
    t.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 60)  # overflows the fp16 gradients at first
    assert len(t.fit()) == 1 and t.scaler.get_scale() < 2.0 ** 60


# ---- strict JSON and damaged run files ----

def _strict_load(text):
    def refuse(token): raise AssertionError(f'non-standard JSON token {token}')
    return json.loads(text, parse_constant=refuse)


def test_writers_write_strict_json(tmp_path):
    rec = dict(epoch=1, train_loss=float('nan'), test_loss=float('inf'), curve=[1.0, -float('inf')],
               sub=dict(x=float('nan')))
    write_json(tmp_path / 'a.json', rec)
    write_jsonl(tmp_path / 'b.jsonl', [rec, dict(epoch=2, train_loss=0.5)])
    append_jsonl(tmp_path / 'b.jsonl', rec)
    want = dict(epoch=1, train_loss=None, test_loss=None, curve=[1.0, None], sub=dict(x=None),
                nonfinite={'train_loss': 'nan', 'test_loss': 'inf', 'curve[1]': '-inf', 'sub.x': 'nan'})
    assert _strict_load((tmp_path / 'a.json').read_text()) == want == read_json(tmp_path / 'a.json')
    lines = (tmp_path / 'b.jsonl').read_text().splitlines()
    assert [_strict_load(line) for line in lines] == [want, dict(epoch=2, train_loss=0.5), want]
    assert read_jsonl(tmp_path / 'b.jsonl')[2] == want
    assert strict_json(dict(a=1.0)) == dict(a=1.0)


def test_damaged_config_json_is_named_with_line(fake_root, tmp_path, capsys):
    args = ['--dataset', 'mnist', '--data-root', str(fake_root), '--model', 'fcn', '--epochs', '1', '--no-progress',
            '--out', str(tmp_path / 'r')]
    assert train_main(args) == 0
    cfg = tmp_path / 'r' / 'config.json'
    lines = cfg.read_text().splitlines()
    cfg.write_text('\n'.join(lines[:3] + ['  "lr": 0.1,,'] + lines[3:]))
    assert train_main(['--out', str(tmp_path / 'r'), '--resume']) == 2
    err = capsys.readouterr().err
    assert f"Damaged {cfg}: Expecting property name enclosed in double quotes at line 4, column" in err


def test_damaged_metrics_jsonl_is_named_with_line(fake_root, tmp_path):
    from stablesam.results import load_runs
    assert train_main(['--dataset', 'mnist', '--data-root', str(fake_root), '--model', 'fcn', '--epochs', '2',
                       '--no-progress', '--out', str(tmp_path / 'runs' / 'r')]) == 0
    m = tmp_path / 'runs' / 'r' / 'metrics.jsonl'
    first, second = m.read_text().splitlines()
    m.write_text(first + '\n' + second[:40] + '\n')
    for read in (lambda: read_metrics(m.parent), lambda: load_runs(tmp_path / 'runs')):
        with pytest.raises(ValueError, match=f"Damaged {m}, line 2: "):
            read()
    m.write_text(first + '\n' + second[:40])  # cut short by a writer that was killed: left out where asked
    assert read_jsonl(m, torn_tail=True) == read_metrics(m.parent) == [json.loads(first)]
    with pytest.raises(ValueError, match=f"Damaged {m}, line 2: "):
        read_jsonl(m)


# ---- extending a run ----

def test_extend_constant_schedule_refuse_cosine(fake_root, tmp_path, capsys):
    base = ['--dataset', 'mnist', '--data-root', str(fake_root), '--model', 'fcn', '--optimizer', 'stablesam',
            '--no-progress', '--batch-size', '64']
    assert train_main([*base, '--schedule', 'constant', '--epochs', '3', '--out', str(tmp_path / 'three')]) == 0
    assert train_main([*base, '--schedule', 'constant', '--epochs', '2', '--out', str(tmp_path / 'ext')]) == 0
    assert train_main(['--out', str(tmp_path / 'ext'), '--resume', '--epochs', '3', '--no-progress']) == 0
    assert comparable(read_metrics(tmp_path / 'ext')) == comparable(read_metrics(tmp_path / 'three'))
    assert read_json(tmp_path / 'ext' / 'config.json')['epochs'] == 3
    assert train_main(['--out', str(tmp_path / 'ext'), '--resume', '--epochs', '2', '--no-progress']) == 2
    assert 'a run is extended, never shortened' in capsys.readouterr().err
    assert train_main([*base, '--schedule', 'cosine', '--epochs', '1', '--out', str(tmp_path / 'cos')]) == 0
    assert train_main(['--out', str(tmp_path / 'cos'), '--resume', '--epochs', '2', '--no-progress']) == 2
    assert ('epochs: 1 in the checkpoint, 2 now (the cosine schedule would change: its learning rate at every step '
            'depends on the number of epochs)') in capsys.readouterr().err
