"""The training engine end to end: the CLI on generated MNIST/CIFAR files, exact resume after a kill,
reproducibility, mixed precision, DDP with two gloo processes, and clear errors for bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stablesam.data import write_fake_cifar, write_fake_mnist
from stablesam.cli import main, table_runs
from stablesam.runs import load_checkpoint, read_metrics, save_checkpoint
from stablesam.config import TrainConfig
from stablesam.train import Trainer, comparable

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp('data')
    write_fake_mnist(r, n_train=256, n_test=128)
    write_fake_cifar(r, n_train=128, n_test=64)
    return r


def cli(*args, check=True, timeout=300):
    p = subprocess.run([sys.executable, '-c', 'import sys; from stablesam.cli import main; sys.exit(main())',
                        *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check: assert p.returncode == 0, p.stderr[-3000:]
    return p


MNIST = ['--dataset', 'mnist', '--model', 'fcn', '--batch-size', '64', '--lr', '0.05', '--label-smoothing', '0',
         '--no-progress']


def test_cli_mnist_end_to_end(root, tmp_path):
    p = cli(*MNIST, '--data-root', root, '--optimizer', 'stablesam', '--epochs', '2', '--out', tmp_path / 'run')
    assert 'done: 2 epochs' in p.stdout
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert (cfg['optimizer'], cfg['epochs'], cfg['dataset']) == ('stablesam', 2, 'mnist')
    assert cfg['versions']['torch'] == torch.__version__ and cfg['device_used'] == 'cpu'
    ms = read_metrics(tmp_path / 'run')
    assert [m['epoch'] for m in ms] == [1, 2]
    for key in ('train_loss', 'train_acc', 'test_loss', 'test_acc', 'lr', 'time', 'renorm_factor', 'norm_ratio'):
        assert all(math.isfinite(m[key]) for m in ms), key
    assert ms[1]['train_loss'] < ms[0]['train_loss']
    assert (tmp_path / 'run' / 'checkpoint.pt').exists()
    assert not [f for f in (tmp_path / 'run').iterdir() if '.tmp' in f.name]


def test_cli_cifar_quick_preset(root, tmp_path):
    assert main(['--preset', 'cifar', '--optimizer', 'stableasam', '--data-root', str(root), '--quick',
                 '--out', str(tmp_path / 'q'), '--no-progress']) == 0
    cfg = json.loads((tmp_path / 'q' / 'config.json').read_text())
    assert ((cfg['model'], cfg['rho'], cfg['label_smoothing'], cfg['weight_decay'], cfg['epochs'], cfg['batch_size'])
            == ('resnet20', 0.5, 0.1, 5e-4, 1, 64))
    assert len(read_metrics(tmp_path / 'q')) == 1


def test_help_explains_every_flag(capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    for flag in ('--dataset', '--data-root', '--model', '--optimizer', '--rho', '--lr', '--epochs', '--batch-size',
                 '--weight-decay', '--label-smoothing', '--label-noise', '--seed', '--out', '--resume', '--amp',
                 '--preset', '--quick', '--sweep'):
        assert flag in out, flag


def test_sweep_prints_commands(capsys):
    assert main(['--sweep', 'table4', '--seeds', '0', '--out', 'R']) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 * 2 * 2 and all(l.startswith('stablesam-train --preset label-noise') for l in out)
    assert len(table_runs('table2', seeds=(0,))) == 2 * 5 * 21


def test_resume_after_kill_matches_uninterrupted(root, tmp_path):
    """SIGKILL a CLI run after its first checkpoint, resume it: the metrics equal an uninterrupted run's."""
    args = [*MNIST, '--data-root', root, '--optimizer', 'sam', '--epochs', '3', '--schedule', 'cosine']
    assert main([*map(str, args), '--out', str(tmp_path / 'full')]) == 0
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; from stablesam.cli import main; sys.exit(main())',
                             *map(str, args), '--out', str(tmp_path / 'part')], env=ENV)
    ckpt = tmp_path / 'part' / 'checkpoint.pt'
    t0 = time.time()
    while not ckpt.exists() and proc.poll() is None and time.time() - t0 < 120: time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main([*map(str, args), '--out', str(tmp_path / 'part'), '--resume']) == 0
    assert comparable(read_metrics(tmp_path / 'part')) == comparable(read_metrics(tmp_path / 'full'))


@pytest.mark.parametrize('in_memory', [True, False])
def test_resume_exact_with_batchnorm_and_augmentation(root, tmp_path, in_memory):
    """ResNet-20 (BatchNorm, momentum, cosine schedule, random crops, batched on the device or per image in the
    DataLoader): stopped after epoch 1 and resumed = straight run."""
    kw = dict(dataset='cifar10', data_root=str(root), model='resnet20', optimizer='stablesam', epochs=2, batch_size=32,
              train_subset=64, test_subset=32, progress=False, in_memory=in_memory)
    full = Trainer(TrainConfig(**kw)).fit()

    class Kill:
        def after_epoch(self, trainer, metrics):
            if trainer.epoch == 2: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**kw, out=str(tmp_path / 'r')), callbacks=[Kill()]).fit()
    assert len(read_metrics(tmp_path / 'r')) == 1
    resumed = Trainer(TrainConfig(**kw, out=str(tmp_path / 'r'), resume=True)).fit()
    assert comparable(resumed) == comparable(full)


def batch_indices(trainer):
    """The dataset indices of each batch of the trainer's current epoch, as its data path visits them."""
    if trainer.train_loader is None: return [b.tolist() for b in trainer.sampler.order().split(trainer.batch_size)]
    return [[i for i, _ in keys] for keys in trainer.train_loader.batch_sampler]


@pytest.mark.parametrize('dataset, model', [('mnist', 'fcn'), ('cifar10', 'resnet20')])
def test_fast_path_gives_the_dataloader_batches(root, dataset, model):
    """Without augmentation the in-memory batches are the DataLoader's: the same indices and the same tensors."""
    kw = dict(dataset=dataset, data_root=str(root), model=model, batch_size=48, augment=False, epochs=3, progress=False)
    fast, slow = Trainer(TrainConfig(**kw)), Trainer(TrainConfig(**kw, in_memory=False))
    assert fast.train_loader is None and fast.augment is None and slow.train_tensors is None
    for epoch in (0, 2):
        fast.sampler.set_epoch(epoch)
        slow.sampler.set_epoch(epoch)
        assert batch_indices(fast) == batch_indices(slow)
        pairs = list(zip(fast.batches(), slow.batches()))
        assert len(pairs) == fast.steps_per_epoch == len(slow.train_loader)
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in pairs)


@pytest.mark.parametrize('optimizer, model', [('stablesam', 'fcn'), ('sam', 'resnet20')])
def test_fast_path_same_seed_same_metrics_as_dataloader(root, optimizer, model):
    """Regression: a same-seed run gives the same weights and training metrics on either data path; the test
    metrics differ only by the evaluation batch (1024 in memory, batch_size in the DataLoader): float rounding."""
    kw = dict(dataset='mnist' if model == 'fcn' else 'cifar10', data_root=str(root), model=model, optimizer=optimizer,
              epochs=2, batch_size=32, train_subset=96, test_subset=64, augment=False, schedule='cosine',
              progress=False)
    fast, slow = Trainer(TrainConfig(**kw)), Trainer(TrainConfig(**kw, in_memory=False))
    a, b = fast.fit(), slow.fit()
    for p, q in zip(fast.model.state_dict().values(), slow.model.state_dict().values()): assert torch.equal(p, q)
    train_keys = ('epoch', 'train_loss', 'train_acc', 'lr', 'norm_ratio', 'renorm_factor')
    assert [{k: m[k] for k in train_keys if k in m} for m in a] == [{k: m[k] for k in train_keys if k in m} for m in b]
    for m, n in zip(a, b):
        assert m['test_acc'] == n['test_acc']
        assert abs(m['test_loss'] - n['test_loss']) <= 1e-6 * max(1, abs(n['test_loss']))


def test_batched_augmentation_is_seeded_per_example(root):
    """The in-memory CIFAR crops and flips of an example depend on (seed, epoch, index), not on the batch it is in."""
    kw = dict(dataset='cifar10', data_root=str(root), model='lenet', epochs=2, train_subset=64, progress=False)
    def images(trainer, epoch):
        trainer.sampler.set_epoch(epoch)
        return {i: x for idx, (xb, _) in zip(batch_indices(trainer), trainer.batches()) for i, x in zip(idx, xb)}
    small, large = Trainer(TrainConfig(**kw, batch_size=16)), Trainer(TrainConfig(**kw, batch_size=64))
    assert small.augment is not None and small.train_loader is None
    a0, b0 = images(small, 0), images(large, 0)
    assert sorted(a0) == sorted(b0) == list(range(64))
    assert all(torch.equal(a0[i], b0[i]) for i in a0)
    a1 = images(small, 1)
    assert sum(not torch.equal(a0[i], a1[i]) for i in a0) > 48   # a new draw each epoch (same: 1/162 per image)
    other = images(Trainer(TrainConfig(**kw, batch_size=16, seed=1)), 0)
    assert sum(not torch.equal(a0[i], other[i]) for i in a0) > 48


def test_loader_workers_do_not_change_results(root):
    """Persistent worker processes draw the same augmentation as the main process (seeded per example)."""
    kw = dict(dataset='cifar10', data_root=str(root), model='lenet', optimizer='sgd', epochs=2, batch_size=32,
              train_subset=64, test_subset=32, progress=False, in_memory=False)
    assert (comparable(Trainer(TrainConfig(**kw, workers=0)).fit())
            == comparable(Trainer(TrainConfig(**kw, workers=2)).fit()))


def test_same_seed_same_metrics_other_seed_differs(root):
    kw = dict(dataset='mnist', data_root=str(root), model='lenet', optimizer='stablesam', epochs=1, batch_size=64,
              progress=False)
    a, b = (comparable(Trainer(TrainConfig(**kw)).fit()) for _ in range(2))
    assert a == b
    assert a != comparable(Trainer(TrainConfig(**kw, seed=1)).fit())


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_on_cpu(root, amp):
    t = Trainer(TrainConfig(dataset='mnist', data_root=str(root), model='fcn', optimizer='stablesam', epochs=1,
                            batch_size=64, amp=amp, progress=False))
    m = t.fit()[0]
    assert (t.scaler is not None) == (amp == 'fp16')
    assert math.isfinite(m['train_loss']) and math.isfinite(m['renorm_factor'])


DDP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from stablesam.config import TrainConfig
from stablesam.train import Trainer
root, out = sys.argv[1:]
kw = dict(dataset='mnist', data_root=root, model='fcn', batch_size=64, lr=0.05, label_smoothing=0.0, augment=False,
          progress=False)
Trainer(TrainConfig(**kw, optimizer='sgd', epochs=2, out=out + '/sgd')).fit()
t = Trainer(TrainConfig(**kw, optimizer='stablesam', epochs=1, out=out + '/stable'))
t.fit()
flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
both = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(both, flat)
if dist.get_rank() == 0:
    with open(out + '/replicas.json', 'w') as f: json.dump(dict(max_diff=(both[0] - both[1]).abs().max().item()), f)
dist.destroy_process_group()
# Gloo's worker threads can still hold tensors at interpreter finalization and abort the process after a
# successful run (a torch teardown race seen here about once in ten runs under pytest): leave without finalizing.
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def test_ddp_two_gloo_processes(root, tmp_path):
    """Under torchrun (2 gloo processes): SGD follows the single-process run with the same global batch (the
    sharding, batch split and metric reduction are right); StableSAM (per-replica ascent) keeps replicas identical."""
    script = tmp_path / 'ddp.py'
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script),
           str(root), str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, STABLESAM_BACKEND='gloo'), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    single = Trainer(TrainConfig(dataset='mnist', data_root=str(root), model='fcn', batch_size=64, lr=0.05,
                                 label_smoothing=0.0, augment=False, progress=False, optimizer='sgd', epochs=2)).fit()
    ddp = read_metrics(tmp_path / 'sgd')
    assert json.loads((tmp_path / 'sgd' / 'config.json').read_text())['world_size'] == 2
    assert len(ddp) == 2
    for a, b in zip(single, ddp):
        for k in ('train_loss', 'train_acc', 'test_loss', 'test_acc'):
            assert abs(a[k] - b[k]) < 1e-4, (k, a[k], b[k])
    m = read_metrics(tmp_path / 'stable')[0]
    assert math.isfinite(m['renorm_factor']) and m['renorm_factor'] > 0
    assert json.loads((tmp_path / 'replicas.json').read_text())['max_diff'] == 0


@pytest.mark.parametrize('args, msg', [
    (['--model', 'resnet21'], "invalid choice: 'resnet21' (choose from 'fcn', 'lenet'"),
    (['--optimizer', 'adam'], "invalid choice: 'adam'"),
    (['--dataset', 'svhn'], "invalid choice: 'svhn'"),
    (['--optimizer', 'sam', '--gamma0', '0.5'], "Invalid gamma0 with optimizer 'sam'"),
    (['--lr', '-1'], 'Invalid lr: -1.0'),
    (['--rho', 'nan'], 'Invalid rho: nan'),
    (['--label-noise', '1.5'], 'Invalid label_noise: 1.5'),
    (['--epochs', '0'], 'Invalid epochs: 0'),
    (['--preset', 'cifar', '--batch-size', '0'], 'Invalid batch_size: 0'),
])
def test_bad_input(args, msg, capsys):
    assert main([*args, '--no-progress']) == 2
    assert msg in capsys.readouterr().err


def test_bad_number_syntax(capsys):
    assert main(['--lr', 'fast']) == 2 and "invalid lr: 'fast'" in capsys.readouterr().err


def test_missing_data_error_names_folder(tmp_path, capsys):
    assert main(['--dataset', 'cifar10', '--data-root', str(tmp_path), '--no-download', '--quick',
                 '--no-progress']) == 2
    assert str(tmp_path / 'cifar-10-batches-py') in capsys.readouterr().err


def test_run_folder_errors(root, tmp_path, capsys):
    args = [*MNIST, '--data-root', str(root), '--epochs', '1', '--train-subset', '64', '--out', str(tmp_path / 'r')]
    assert main(args) == 0
    assert main(args) == 2 and 'already holds a run' in capsys.readouterr().err
    assert main([*args, '--resume', '--lr', '0.2']) == 2
    assert 'lr: 0.05 in the checkpoint, 0.2 now' in capsys.readouterr().err
    assert main([*args, '--resume']) == 0  # finished run: nothing to do
    assert main(['--out', str(tmp_path / 'r'), '--resume', '--no-progress']) == 0  # settings come from config.json
    (tmp_path / 'r' / 'checkpoint.pt').write_bytes(b'garbage')
    assert main([*args, '--resume']) == 2
    assert f"Cannot read checkpoint {tmp_path / 'r' / 'checkpoint.pt'}" in capsys.readouterr().err


def test_checkpoint_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self): return (print, ('pwned',))
    torch.save({'format': 'stablesam-checkpoint', 'x': Evil()}, tmp_path / 'evil.pt')
    with pytest.raises(RuntimeError, match='Cannot read checkpoint'):
        load_checkpoint(tmp_path / 'evil.pt')
    save_checkpoint(tmp_path / 'ok.pt', {'format': 'other'})
    with pytest.raises(RuntimeError, match='not a stablesam training checkpoint'):
        load_checkpoint(tmp_path / 'ok.pt')


@pytest.mark.parametrize('optimizer', ['sgd', 'stablesam'])
def test_skip_restores_a_step_whose_update_overflows_the_weights(root, optimizer):
    """Finite loss and gradients, but lr 3e38 makes the update overflow: skip mode skips the step, weights restored."""
    cfg = dict(dataset='mnist', data_root=str(root), model='fcn', optimizer=optimizer, batch_size=64,
               schedule='constant', progress=False, on_nonfinite='skip')
    t = Trainer(TrainConfig(**cfg, lr=0.05))
    x, y = next(t.batches())
    t.train_step(x, y)  # a good step first: the momentum buffers exist
    weights = [p.detach().clone() for p in t.model.parameters()]
    momentum = {k: v['momentum_buffer'].clone() for k, v in t.optimizer.state_dict()['state'].items()}
    t.cfg = TrainConfig(**cfg, lr=3e38).resolved()  # (float32's largest is 3.4e38)
    assert t.train_step(100 * x, y) is None and t.step == 2
    for a, b in zip(weights, t.model.parameters()): assert torch.equal(a, b.detach())
    state = t.optimizer.state_dict()['state']
    assert set(state) == set(momentum) and all(torch.equal(state[k]['momentum_buffer'], momentum[k]) for k in state)
    t.cfg = TrainConfig(**cfg, lr=0.05).resolved()
    assert t.train_step(x, y) is not None  # training goes on from the restored state
