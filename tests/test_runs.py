"""Run folders: the JSON-lines log that resumes by truncation, checkpoints, and reading runs without torch."""
import json
import subprocess
import sys

import pytest

from stablesam.data import write_fake_mnist
from stablesam.runs import CONFIG, METRICS, JsonlLog, read_metrics, read_run
from stablesam.config import TrainConfig
from stablesam.train import Trainer, comparable

pytestmark = pytest.mark.usefixtures('one_thread')


def test_log_resume_truncates_then_appends(tmp_path):
    log = JsonlLog(tmp_path / 'x.jsonl')
    assert log.resume(3) == [] and not log.path.exists()
    for e in range(1, 5): log.append(dict(epoch=e, v=[e] * 2))
    assert [r['epoch'] for r in log.resume(2)] == [1, 2]
    log.append(dict(epoch=3, v=[0, 0]))
    assert [r['epoch'] for r in log.records()] == [1, 2, 3] and log.records()[-1]['v'] == [0, 0]


def test_log_partial_last_line_is_dropped_other_bad_lines_are_errors(tmp_path):
    p = tmp_path / 'x.jsonl'
    p.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "v": [1, ')
    assert [r['epoch'] for r in JsonlLog(p).resume(5)] == [1, 2]
    assert p.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    p.write_text('{"epoch": 1}\n{"ep\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=f'Damaged {p}, line 2: Unterminated string'): JsonlLog(p).records()


def test_trainer_resume_after_kill_between_log_and_checkpoint(tmp_path):
    """Killed after appending epoch 3's metrics but before its checkpoint (and mid-way through a further line):
    the resumed run truncates metrics.jsonl to the checkpoint's epochs and ends with the uninterrupted run's file."""
    write_fake_mnist(tmp_path, n_train=128, n_test=64)
    kw = dict(dataset='mnist', data_root=str(tmp_path), model='fcn', optimizer='stablesam', epochs=4, batch_size=32,
              progress=False)
    full = Trainer(TrainConfig(**kw, out=str(tmp_path / 'full'))).fit()

    class Kill:
        def after_epoch(self, trainer, metrics):
            if trainer.epoch == 3: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**kw, out=str(tmp_path / 'part')), callbacks=[Kill()]).fit()
    log = tmp_path / 'part' / METRICS
    with open(log, 'a') as f: f.write(json.dumps(dict(full[2], train_loss=-1.0)) + '\n{"epoch": 4, "tra')
    resumed = Trainer(TrainConfig(**kw, out=str(tmp_path / 'part'), resume=True)).fit()
    assert comparable(resumed) == comparable(full) == comparable(read_metrics(tmp_path / 'part'))
    cfg, metrics = read_run(tmp_path / 'part')
    assert cfg['optimizer'] == 'stablesam' and len(metrics) == 4


def test_results_read_run_folders_without_torch(tmp_path):
    run = tmp_path / 'runs' / 'a'
    run.mkdir(parents=True)
    (run / CONFIG).write_text(json.dumps(dict(dataset='mnist', model='fcn', optimizer='sgd', label_noise=0.0, seed=0,
                                              rho=0.05, epochs=1)))
    JsonlLog(run / METRICS).append(dict(epoch=1, test_acc=0.9))
    code = ('import sys; from stablesam.results import load_runs; r = load_runs(sys.argv[1]); '
            'assert "torch" not in sys.modules, "torch imported"; print(r[0]["best_test_acc"])')
    p = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'runs')], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == '0.9'
