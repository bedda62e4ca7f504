"""The experiment runner: every executor gives the records of one process; killed runs resume to them."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment_helpers import dies_on_three, fails_on_two, same_records, squares
from stablesam.data import write_fake_mnist
from stablesam.experiment import CONFIG, RECORDS, run_experiment
from stablesam.runs import read_json, read_jsonl
from stablesam.stability import run_stability, stability_config

pytestmark = pytest.mark.usefixtures('one_thread')
STABILITY = ['--epochs', '2', '--seeds', '0', '1', '--optimizers', 'sgd', 'stablesam', '--batch-size', '16',
             '--device', 'cpu', '--no-download', '--quiet', '--lr', '0.1']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_fake_mnist(root, 64, 32)
    return root


@pytest.fixture(scope='module')
def inline(data_root, tmp_path_factory):
    """The stability records of a one-process run."""
    cfg = stability_config('mnist', 'fcn', data_root=data_root, lr=0.1, epochs=2, batch_size=16, device='cpu',
                           download=False)
    return run_stability(cfg, ('sgd', 'stablesam'), (0, 1), out=tmp_path_factory.mktemp('inline'), progress=False)


def stability(data_root, out, *extra):
    """`stablesam-stability` in this process."""
    from stablesam.stability import main
    return main(['--data-root', str(data_root), '--out', str(out), *STABILITY, *extra])


def test_processes_give_the_records_of_one_process(data_root, inline, tmp_path):
    assert [(r['optimizer'], r['seed'], r['epoch']) for r in inline] == \
        [(o, s, e) for s in (0, 1) for o in ('sgd', 'stablesam') for e in range(3)]
    assert stability(data_root, tmp_path, '--executor', 'processes', '--processes', '2') == 0
    same_records(read_jsonl(tmp_path / RECORDS), inline)
    cfg = read_json(tmp_path / CONFIG)
    assert cfg['executor'] == 'processes' and cfg['command'][0] == 'stablesam-stability' and len(cfg['done']) == 4


def test_slurm_local_gives_the_records_of_one_process(data_root, inline, tmp_path):
    pytest.importorskip('submitit')
    assert stability(data_root, tmp_path, '--executor', 'slurm', '--slurm', 'cluster=local', 'timeout_min=10') == 0
    same_records(read_jsonl(tmp_path / RECORDS), inline)
    assert list((tmp_path / 'slurm').iterdir())   # submitit's job folders


@pytest.mark.parametrize('executor', ['processes', 'slurm'])
def test_killed_run_resumes_to_the_same_records(data_root, inline, tmp_path, executor):
    """SIGKILL the whole command (parent and workers) once a pair has checkpointed; the same command continues."""
    if executor == 'slurm': pytest.importorskip('submitit')
    args = ['--executor', executor] + (['--slurm', 'cluster=local'] if executor == 'slurm' else ['--processes', '2'])
    code = 'import sys; from stablesam.stability import main; sys.exit(main())'
    argv = [sys.executable, '-c', code, '--data-root', str(data_root), '--out', str(tmp_path), *STABILITY, *args]
    p = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        if list((tmp_path / 'runs').glob('*/checkpoint.pt')): break   # a pair is under way
        time.sleep(0.05)
    finished_first = p.poll() is not None
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    if not finished_first:
        assert len(read_json(tmp_path / CONFIG)['done']) < 4, 'killed after every run'
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    same_records(read_jsonl(tmp_path / RECORDS), inline)


def test_a_dead_worker_stops_the_run(tmp_path):
    """A worker killed mid-run stops the run with an error saying the same command continues (no hang)."""
    specs = [dict(x=x, epochs=2) for x in (1, 2, 3, 4)]
    with pytest.raises(RuntimeError, match='worker process died.*run the same command again'):
        run_experiment(tmp_path, specs, dies_on_three, key=('x',), settings={}, executor='processes', processes=2,
                       progress=False)
    assert {r['x'] for r in read_jsonl(tmp_path / RECORDS)} <= {1, 2, 4}
    again = run_experiment(tmp_path, specs, squares, key=('x',), settings={}, executor='processes', progress=False)
    assert again == run_experiment(tmp_path / 'one', specs, squares, key=('x',), settings={}, progress=False)


def test_a_failing_run_stops_the_others_at_once(tmp_path):
    """An exception in one worker's run reaches the caller without waiting for the other worker's long run."""
    t0 = time.monotonic()
    with pytest.raises(ValueError, match='bad spec x=2'):
        run_experiment(tmp_path, [dict(x=x, epochs=1) for x in (1, 2)], fails_on_two, key=('x',), settings={},
                       executor='processes', processes=2, progress=False)
    assert time.monotonic() - t0 < 45


def test_runner_refuses_bad_input(tmp_path):
    specs = [dict(x=1, epochs=1), dict(x=1, epochs=2)]
    with pytest.raises(ValueError, match='share a key'):
        run_experiment(tmp_path, specs, squares, key=('x',), settings={})
    with pytest.raises(ValueError, match="Unknown executor: 'mpi'"):
        run_experiment(tmp_path, specs[:1], squares, key=('x',), settings={}, executor='mpi')
    with pytest.raises(ValueError, match="needs a results folder"):
        run_experiment(None, specs[:1], squares, key=('x',), settings={}, executor='processes')
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / CONFIG).write_text(json.dumps(dict(command='python -c ...')))
    with pytest.raises(ValueError, match='not written by the experiment runner'):
        run_experiment(tmp_path / 'old', specs[:1], squares, key=('x',), settings={})


def test_records_of_another_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match='returned records of another run'):
        run_experiment(tmp_path, [dict(x=1, epochs=1)], lambda spec, run: [dict(x=2)], key=('x',), settings={},
                       progress=False)

