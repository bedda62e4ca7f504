"""stablesam.loggers: a quick stablesam-train run writes TensorBoard events that TensorBoard's own reader returns
with the right steps and values, a W&B offline run writes its files (read back record by record), both continue
the same run on resume with no step twice, an experiment (stablesam-stability) takes --logger too, and a missing
backend is an error naming the extra to install."""
import glob
import struct
import sys
from pathlib import Path

import pytest
import torch

from stablesam.cli import main
from stablesam.config import TrainConfig
from stablesam.data import write_fake_mnist
from stablesam.loggers import SCALARS, STEP_STATS, WANDB_STATE, TrainLogger, read_scalars
from stablesam.runs import read_json, read_metrics
from stablesam.train import Trainer

pytestmark = pytest.mark.usefixtures('one_thread')

STEP_TAGS = ('train/loss', 'train/lr', 'train/grad_norm', 'train/asc_grad_norm', 'train/norm_ratio',
             'train/renorm_factor')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp('data')
    write_fake_mnist(r, n_train=256, n_test=64)
    return r


class Recorder:
    """The truth: every step's loss, lr and SAM statistics, read with .item() (what the loggers must write)."""
    def __init__(self): self.steps = {}

    def after_step(self, trainer):
        stats = trainer.optimizer.last_stats
        self.steps[trainer.step] = {'train/loss': trainer.last_loss.item(),
                                    'train/lr': trainer.optimizer.param_groups[0]['lr'],
                                    **{f'train/{k}': stats[k].item() for k in STEP_STATS if k in stats}}


class KillAt:
    """Stop the run like a kill after global step `step` (its checkpoint not yet written)."""
    def __init__(self, step): self.step = step

    def after_step(self, trainer):
        if trainer.step == self.step: raise KeyboardInterrupt


def config(root, out, **kw):
    """FCN with StableSAM on 256 generated MNIST images: 3 epochs of 4 steps, cosine lr, a checkpoint every step."""
    return TrainConfig(**dict(dataset='mnist', data_root=str(root), model='fcn', optimizer='stablesam', epochs=3,
                              batch_size=64, lr=0.05, progress=False, out=None if out is None else str(out),
                              checkpoint_every=1e-9, **kw))


def killed_and_resumed(root, out, names, every):
    """Train to step 6 (of 12), killed there after logging it, then resume to the end: (recorder, history)."""
    truth = Recorder()
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(root, out), callbacks=[TrainLogger(names, out, every), truth, KillAt(6)]).fit()
    history = Trainer(config(root, out, resume=True), callbacks=[TrainLogger(names, out, every), truth]).fit()
    return truth, history


def tensorboard_scalars(folder):
    """{tag: [(step, value)]} as TensorBoard's event reader returns them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={'scalars': 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def check_logged(scalars, truth, history, steps, rel=1e-6):
    """Step tags at exactly `steps` with the recorded values; epoch tags at the epochs' last steps, = metrics."""
    for tag in STEP_TAGS:
        assert [s for s, _ in scalars[tag]] == steps, tag
        for s, v in scalars[tag]: assert v == pytest.approx(truth.steps[s][tag], rel=rel, abs=1e-7), (tag, s)
    for key in ('train_loss', 'test_acc', 'test_loss', 'renorm_factor', 'lr'):
        assert scalars[f'epoch/{key}'] == [(4 * m['epoch'], pytest.approx(m[key], rel=rel)) for m in history]


def test_cli_quick_run_writes_tensorboard_events(root, tmp_path):
    """stablesam-train --quick --logger tensorboard csv: the reader gives the steps and values the CSV has and the
    epoch metrics metrics.jsonl has."""
    out = tmp_path / 'run'
    assert main(['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--optimizer', 'stablesam',
                 '--quick', '--batch-size', '32', '--out', str(out), '--no-progress', '--logger', 'tensorboard', 'csv',
                 '--log-every', '2']) == 0
    tb, rows = tensorboard_scalars(out / 'tensorboard'), read_scalars(out / SCALARS)
    steps = [s for s, t, _ in rows if t == 'train/loss']
    assert steps == [2, 4, 6, 8]                                  # quick: 256 images, batch 32: 8 steps
    assert set(tb) == set(STEP_TAGS) | {t for _, t, _ in rows if t.startswith('epoch/')}
    for tag in tb:
        assert tb[tag] == [(s, pytest.approx(v, rel=1e-6)) for s, t, v in rows if t == tag], tag
    metrics = read_metrics(out)
    assert tb['epoch/test_acc'] == [(8, pytest.approx(metrics[0]['test_acc'], rel=1e-6))]
    assert 0 < tb['train/renorm_factor'][-1][1] < 1.5


def test_tensorboard_resume_continues_the_run_without_duplicate_steps(root, tmp_path):
    """Killed after logging step 6 with its checkpoint at step 5, resumed: the reader sees every step once, with
    the values an uninterrupted run logs, in one run folder."""
    out = tmp_path / 'run'
    truth, history = killed_and_resumed(root, out, ['tensorboard'], every=1)
    assert len(glob.glob(str(out / 'tensorboard' / 'events.out.tfevents.*'))) == 2   # one per process, one run
    check_logged(tensorboard_scalars(out / 'tensorboard'), truth, history, list(range(1, 13)))


def test_resume_of_a_trainer_driven_without_fit(root, tmp_path):
    """As the stability and robustness experiments drive their trainers (train_epoch, load_state; no fit): the
    resumed logger replaces what the killed one wrote after the state it resumes from, from the first step on."""
    out = tmp_path / 'log'
    cfg = config(root, None)

    class SaveAt:
        def after_step(self, trainer):
            if trainer.step == 5: self.state = trainer.state()

    saver, first = SaveAt(), TrainLogger(['tensorboard'], out, every=1)
    killed = Trainer(cfg, callbacks=[first, saver, KillAt(6)])
    with pytest.raises(KeyboardInterrupt):
        while killed.epoch < cfg.epochs: killed.train_epoch()
    first.close()                                    # step 6 is in its event file
    truth, logger = Recorder(), TrainLogger(['tensorboard'], out, every=1)
    resumed = Trainer(cfg, callbacks=[logger, truth])
    resumed.load_state(saver.state)
    while resumed.epoch < cfg.epochs: resumed.train_epoch()
    logger.close()
    scalars = tensorboard_scalars(out / 'tensorboard')
    assert [s for s, _ in scalars['train/loss']] == list(range(1, 13))
    for s, v in scalars['train/loss'][5:]: assert v == pytest.approx(truth.steps[s]['train/loss'], rel=1e-6)


def test_csv_resume_drops_the_rows_after_the_checkpoint(root, tmp_path):
    """The CSV backend: the same rows as the TensorBoard one, after a kill and a resume."""
    out = tmp_path / 'run'
    truth, history = killed_and_resumed(root, out, ['csv'], every=3)
    rows = read_scalars(out / SCALARS)
    scalars = {}
    for s, t, v in rows: scalars.setdefault(t, []).append((s, v))
    check_logged(scalars, truth, history, [3, 6, 9, 12], rel=1e-12)


def wandb_records(path):
    """The protobuf records of a W&B `.wandb` file (its LevelDB-style log: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, chunk, block = Path(path).read_bytes(), 7, b'', 32768
    assert data[:4] == b':W&B'
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack('<IHB', data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):   # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b''
            yield record


def test_wandb_offline_run_writes_its_files_and_resumes_the_same_run(root, tmp_path, monkeypatch):
    """WANDB_MODE=offline: each process writes an offline run of the same id; together they hold every step once,
    with the recorded values, and the epoch metrics."""
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    out = tmp_path / 'run'
    truth, history = killed_and_resumed(root, out, ['wandb'], every=2)
    run_id = read_json(out / WANDB_STATE)['id']
    runs = sorted(glob.glob(str(out / 'wandb' / 'offline-run-*')))
    assert len(runs) == 2 and all(r.endswith('-' + run_id) for r in runs)
    scalars, ids = {}, set()
    for run in runs:
        files = glob.glob(f'{run}/run-{run_id}.wandb')
        assert len(files) == 1
        for rec in wandb_records(files[0]):
            kind = rec.WhichOneof('record_type')
            if kind == 'run': ids.add(rec.run.run_id)
            if kind == 'history':
                items = {i.key or '/'.join(i.nested_key): float(i.value_json) for i in rec.history.item}
                items = {k: v for k, v in items.items() if not k.startswith('_')}   # W&B's _step, _runtime
                for tag, v in items.items(): scalars.setdefault(tag, []).append((rec.history.step.num, v))
    assert ids == {run_id}
    check_logged(scalars, truth, history, [2, 4, 6, 8, 10, 12])


def test_stability_experiment_takes_logger(tmp_path):
    """stablesam-stability --logger csv: both trainers of each pair log under the run's folder."""
    from stablesam.stability import main as stability
    write_fake_mnist(tmp_path / 'data', 48, 24)
    out = tmp_path / 'out'
    assert stability(['--dataset', 'mnist', '--data-root', str(tmp_path / 'data'), '--optimizers', 'stablesam',
                      '--epochs', '2', '--seeds', '0', '--subset', '40', '--batch-size', '13', '--out', str(out),
                      '--quiet', '--no-download', '--device', 'cpu', '--logger', 'csv', '--log-every', '2']) == 0
    for i in (0, 1):
        rows = read_scalars(out / 'runs' / 'optimizer=stablesam,seed=0' / f'log{i}' / SCALARS)
        assert [s for s, t, _ in rows if t == 'train/loss'] == [2, 4, 6]   # 39 images, batch 13: 3 steps an epoch
        assert all(torch.isfinite(torch.tensor(v)) for _, _, v in rows)


def test_missing_backend_names_the_extra(root, tmp_path, monkeypatch, capsys):
    """Without tensorboard (or wandb) installed, --logger exits with status 2 and names the extra to install."""
    for module, extra in (('tensorboard', 'tensorboard'), ('wandb', 'wandb')):
        monkeypatch.setitem(sys.modules, module, None)   # import fails as if it were not installed
        assert main(['--dataset', 'mnist', '--data-root', str(root), '--model', 'fcn', '--quick', '--no-progress',
                     '--out', str(tmp_path / module), '--logger', module]) == 2
        assert f"pip install 'stablesam[{extra}]'" in capsys.readouterr().err
    assert main(['--quick', '--logger', 'csv', '--data-root', str(root), '--no-progress']) == 2
    assert '--logger writes into the run folder: give --out' in capsys.readouterr().err
