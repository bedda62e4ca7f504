"""The landscape callbacks on the real Trainer: they do not change training, and they survive a resume."""
import pytest
import torch

from stablesam.data import write_fake_cifar
from stablesam.landscape import HESSIAN_PROBE, STEP_STATS, HessianProbe, StepStats
from stablesam.config import TrainConfig
from stablesam.runs import read_jsonl
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
