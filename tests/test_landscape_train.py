"""The landscape callbacks on the real Trainer: they do not change training, and they survive a resume."""
import pytest
import torch

from stablesam.data import write_fake_cifar, write_fake_mnist
from stablesam.experiment import RUNS
from stablesam.landscape import HESSIAN_PROBE, STEP_STATS, HessianProbe, StepStats
from stablesam.landscape_experiment import landscape_config, landscape_experiment
from stablesam.config import TrainConfig
from stablesam.runs import read_jsonl, save_checkpoint
from stablesam.train import Trainer, comparable

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('landscape')
    write_fake_cifar(root / 'data', n_train=64, n_test=16, num_classes=100)
    return root


def config(root, **kw):
    base = dict(dataset='cifar100', data_root=str(root / 'data'), model='lenet', optimizer='sam', epochs=2,
                batch_size=16, lr=0.05, label_smoothing=0.0, augment=False, download=False, progress=False,
                device='cpu')
    return TrainConfig(**{**base, **kw})


def drop(history, keys):
    return [{k: v for k, v in m.items() if not any(k.startswith(p) for p in keys)} for m in comparable(history)]


@pytest.mark.filterwarnings('ignore:top_hessian_eig')   # random inputs at init: a +-lambda pair, slow power iteration
def test_callbacks_do_not_change_training(root):
    """A run with StepStats (alignment on) and a HessianProbe has the same metrics and weights as a bare run."""
    bare = Trainer(config(root))
    h_bare = bare.fit()
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 100, (8,))
    rec, probe = StepStats(alignment=True), HessianProbe((x, y), epochs=[0, 1, 2], iters=50, tol=1e-2)
    watched = Trainer(config(root), callbacks=[rec, probe])
    h_watched = watched.fit()
    assert watched.optimizer.track_alignment
    keys = ('norm_ratio_min', 'grad_norm_min', 'asc_grad_norm_min', 'renorm_factor_min', 'alignment_min',
            'cosine_min', 'hessian_top_eig')
    assert drop(h_watched, keys) == drop(h_bare, ())
    for p, q in zip(bare.model.parameters(), watched.model.parameters()):
        assert torch.equal(p, q)
    assert [r['epoch'] for r in probe.history] == [0, 1, 2]
    assert [len(r['norm_ratio']) for r in rec.history] == [4, 4]
    assert all(len(r['alignment']) == 4 for r in rec.history)


def test_step_stats_resume_matches_uninterrupted_run(root):
    Trainer(config(root, out=str(root / 'full')), callbacks=[StepStats()]).fit()

    class Kill:
        def after_epoch(self, trainer, metrics):
            if metrics['epoch'] == 1: raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(root, out=str(root / 'part')), callbacks=[StepStats(), Kill()]).fit()
    # killed after StepStats wrote epoch 1 but before its checkpoint: the file has a line the checkpoint lacks
    assert [r['epoch'] for r in read_jsonl(root / 'part' / STEP_STATS)] == [1]
    resumed = StepStats()
    Trainer(config(root, out=str(root / 'part'), resume=True), callbacks=[resumed]).fit()
    rows = read_jsonl(root / 'part' / STEP_STATS)
    assert [r['epoch'] for r in rows] == [1, 2]
    assert rows == read_jsonl(root / 'full' / STEP_STATS)
    assert [r['epoch'] for r in resumed.history] == [1, 2]


@pytest.mark.filterwarnings('ignore:top_hessian_eig')
def test_probe_writes_run_folder(root):
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,))
    Trainer(config(root, optimizer='sgd', epochs=1, out=str(root / 'probe')),
            callbacks=[HessianProbe((x, y), epochs=[1], alphas=[-0.1, 0, 0.1], iters=50, tol=1e-2)]).fit()
    (row,) = read_jsonl(root / 'probe' / HESSIAN_PROBE)
    assert row['epoch'] == 1 and row['alphas'] == pytest.approx([-0.1, 0, 0.1]) and len(row['losses']) == 3


def test_step_stats_resume_mid_epoch_matches_uninterrupted_run(root):
    """Killed within epoch 2 after a checkpoint there: the resumed run's per-step statistics equal an unbroken run's."""
    kw = dict(epochs=2, checkpoint_every=1e-9)  # a checkpoint after every step
    full = StepStats(alignment=True)
    h_full = Trainer(config(root, **kw, out=str(root / 'mid-full')),
                     callbacks=[full, StepStats(fname='plain.jsonl')]).fit()

    class KillInEpoch2:
        def after_step(self, trainer):
            if (trainer.epoch, trainer.position) == (1, 3): raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(root, **kw, out=str(root / 'mid')),
                callbacks=[StepStats(alignment=True), StepStats(fname='plain.jsonl'), KillInEpoch2()]).fit()
    saved = torch.load(root / 'mid' / 'checkpoint.pt', weights_only=True)
    assert (saved['epoch'], saved['position']) == (1, 2)
    assert saved['callbacks']['StepStats']['rows'].shape == (2, 6)  # epoch 2's first two steps, six statistics
    resumed = StepStats(alignment=True)
    h_resumed = Trainer(config(root, **kw, out=str(root / 'mid'), resume=True),
                        callbacks=[resumed, StepStats(fname='plain.jsonl')]).fit()
    for name in (STEP_STATS, 'plain.jsonl'):  # two of a class: each gets its own state back
        assert read_jsonl(root / 'mid' / name) == read_jsonl(root / 'mid-full' / name)
    assert resumed.history == full.history and [len(r['norm_ratio']) for r in resumed.history] == [4, 4]
    assert comparable(h_resumed) == comparable(h_full)


def test_checkpoint_without_callback_state_still_resumes(root):
    kw = dict(epochs=2, checkpoint_every=1e-9, out=str(root / 'old'))

    class KillInEpoch2:
        def after_step(self, trainer):
            if (trainer.epoch, trainer.position) == (1, 2): raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(root, **kw), callbacks=[StepStats(), KillInEpoch2()]).fit()
    state = torch.load(root / 'old' / 'checkpoint.pt', weights_only=True)
    del state['callbacks']  # as written before callbacks were saved
    save_checkpoint(root / 'old' / 'checkpoint.pt', state)
    rec = StepStats()
    assert len(Trainer(config(root, **kw, resume=True), callbacks=[rec]).fit()) == 2
    assert [len(r['norm_ratio']) for r in rec.history] == [4, 3]  # the steps before the kill are lost, as before


@pytest.mark.filterwarnings('ignore:top_hessian_eig')
def test_landscape_sweep_run_killed_mid_epoch_resumes_to_the_same_records(root, tmp_path, monkeypatch):
    """A sweep's SAM run killed within epoch 2 after a checkpoint continues from it to an unbroken sweep's records."""
    write_fake_mnist(root / 'mnist', n_train=128, n_test=32)
    cfg = landscape_config(data_root=str(root / 'mnist'), train_subset=128, epochs=2, batch_size=32,
                           checkpoint_every=1e-9)
    kw = dict(rhos=(0.1,), seeds=(0,), sgd=False, probe_epochs=(1,), n_probe=16, probe_iters=10, progress=False)
    full = landscape_experiment(tmp_path / 'full', cfg, **kw)
    real_step, calls = Trainer.train_step, []

    def killed_at_step_7(self, x, y):
        calls.append(1)
        if len(calls) == 7: raise KeyboardInterrupt  # epoch 2, step 3 of 4: checkpointed after step 6
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, 'train_step', killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        landscape_experiment(tmp_path / 'part', cfg, **kw)
    monkeypatch.setattr(Trainer, 'train_step', real_step)
    (folder,) = (tmp_path / 'part' / RUNS).iterdir()
    saved = torch.load(folder / 'checkpoint.pt', weights_only=True)
    assert (saved['epoch'], saved['position']) == (1, 2)
    assert landscape_experiment(tmp_path / 'part', cfg, **kw) == full
    assert [len(r['norm_ratio']) for r in full] == [4, 4]
