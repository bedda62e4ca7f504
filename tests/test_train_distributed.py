"""`stablesam-train --fsdp` and `--ascent` under torchrun (2 gloo processes): the FSDP run equals one process on
the same global batches, its checkpoint resumes exactly, and `--ascent local` keeps the replicas identical."""
import inspect
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

import stablesam.train
from stablesam.cli import build_parser, config_from_args, main
from stablesam.config import TrainConfig
from stablesam.data import write_fake_mnist
from stablesam.runs import load_checkpoint
from stablesam.train import Trainer

pytestmark = pytest.mark.usefixtures('one_thread')

FLAGS = ['--dataset', 'mnist', '--model', 'fcn', '--batch-size', '64', '--lr', '0.05', '--label-smoothing', '0',
         '--no-augment', '--no-progress', '--optimizer', 'stablesam', '--schedule', 'constant']

SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from stablesam.cli import build_parser, config_from_args
from stablesam.train import Trainer
root, out, flags = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def run(*extra, **kw):
    return Trainer(config_from_args(build_parser().parse_args(flags + ['--data-root', root, *extra])), **kw).fit()
class Stop(Exception): pass
class StopInEpoch2:
    def after_epoch(self, trainer, metrics):
        if trainer.epoch == 2: raise Stop     # the checkpoint of epoch 1 is written, epoch 2's is not
run('--fsdp', '--epochs', '2', '--out', out + '/fsdp')
try: run('--fsdp', '--epochs', '2', '--out', out + '/resumed', callbacks=[StopInEpoch2()])
except Stop: pass
run('--fsdp', '--epochs', '2', '--out', out + '/resumed', '--resume')
t = Trainer(config_from_args(build_parser().parse_args(flags + ['--data-root', root, '--ascent', 'local',
                                                               '--epochs', '1'])))
t.fit()
flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
both = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(both, flat)
if dist.get_rank() == 0:
    with open(out + '/local.json', 'w') as f:
        json.dump(dict(max_diff=(both[0] - both[1]).abs().max().item(), factor=t.history[-1]['renorm_factor']), f)
dist.destroy_process_group()
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)   # gloo teardown race at interpreter finalization (see tests/test_train.py)
"""


def flat_state(sd):
    """The floating tensors of a model state dict, flat, in key order."""
    return torch.cat([sd[k].flatten().double() for k in sorted(sd) if sd[k].is_floating_point()])


def test_fsdp_and_local_ascent_under_torchrun(tmp_path):
    root = tmp_path / 'data'
    write_fake_mnist(root, n_train=256, n_test=128)
    (tmp_path / 'ddp.py').write_text(SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(tmp_path / 'ddp.py'), str(root), str(tmp_path), json.dumps(FLAGS)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', STABLESAM_BACKEND='gloo')
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    cfg = config_from_args(build_parser().parse_args(FLAGS + ['--data-root', str(root), '--epochs', '2']))
    single = Trainer(cfg)
    single.fit()
    fsdp = load_checkpoint(tmp_path / 'fsdp' / 'checkpoint.pt')
    d = ((flat_state(fsdp['model']) - flat_state(single.model.state_dict())).norm()
         / flat_state(single.model.state_dict()).norm()).item()
    print(f'stablesam-train --fsdp vs one process after 2 epochs: relative difference {d:.2e}')
    assert d <= 1e-5
    assert json.loads((tmp_path / 'fsdp' / 'config.json').read_text())['fsdp'] is True
    resumed = load_checkpoint(tmp_path / 'resumed' / 'checkpoint.pt')
    assert torch.equal(flat_state(resumed['model']), flat_state(fsdp['model'])), 'FSDP resume is not exact'
    m = [json.loads(line) for line in (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()]
    assert [x['epoch'] for x in m] == [1, 2]
    local = json.loads((tmp_path / 'local.json').read_text())
    assert local['max_diff'] == 0 and math.isfinite(local['factor']) and 0 < local['factor'] < 1.5


@pytest.mark.parametrize('args, msg', [
    (['--ascent', 'mixed'], "invalid choice: 'mixed'"),
    (['--fsdp', '--ascent', 'local'], "Invalid fsdp with ascent='local'"),
    (['--fsdp', '--amp', 'fp16'], "amp='fp16'"),
    (['--fsdp'], 'Invalid fsdp: FSDP2 shards over processes; run under torchrun'),
])
def test_bad_distributed_flags(args, msg, capsys, tmp_path):
    assert main([*args, '--no-progress', '--dataset', 'mnist', '--model', 'fcn', '--data-root', str(tmp_path)]) == 2
    assert msg in capsys.readouterr().err


def bn_net():
    """A small network with BatchNorm (the worker processes build it from this source)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


UNEVEN = inspect.getsource(bn_net) + """
import json, os, sys
import torch, torch.distributed as dist
from torch import nn
torch.set_num_threads(1)
import stablesam.train
from stablesam.config import TrainConfig
from stablesam.train import Trainer
root, out = sys.argv[1], sys.argv[2]
stablesam.train.EVAL_BATCH = 32   # 129 test images: 65 and 64 per process, 3 and 2 batches before the fix
def config(**kw):
    return TrainConfig(dataset='mnist', data_root=root, model='fcn', optimizer='sgd', batch_size=64, epochs=1,
                       fsdp=True, label_smoothing=0.0, augment=False, progress=False, download=False, device='cpu',
                       **kw)
torch.manual_seed(0)
t = Trainer(config(in_memory=False), model=bn_net())   # batches of 64: 2 and 1
found = {'in_memory=False': t.evaluate(t.data.test)}
torch.manual_seed(0)
t = Trainer(config(out=out + '/bn'), model=bn_net())
found['in_memory=True'] = t.evaluate(t.data.test)
found['bn_test_loss'] = t.fit()[-1]['test_loss']
mine = torch.cat([b.double().flatten() for b in t.model.buffers()])
both = [torch.zeros_like(mine) for _ in range(2)]
dist.all_gather(both, mine)
found['bn_buffers_differ'] = (both[0] - both[1]).abs().max().item()
if dist.get_rank() == 0:
    with open(out + '/found.json', 'w') as f: json.dump(found, f)
dist.destroy_process_group()
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def two_processes(script, *args, timeout=120):
    """Run `script` as ranks 0 and 1 of a gloo group; a process still running after `timeout` s fails the test."""
    env = dict(os.environ, WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()),
               STABLESAM_BACKEND='gloo', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    procs = [subprocess.Popen([sys.executable, '-c', script, *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs: p.kill()
        pytest.fail(f"two processes still running after {timeout} s (a collective that one rank never joined)")
    assert [p.returncode for p in procs] == [0, 0], '\n'.join(o[-3000:] for o in outputs)


def test_fsdp_uneven_evaluation_and_batchnorm_statistics(tmp_path, monkeypatch):
    """Uneven shards of the test set run the same forwards on both ranks; BatchNorm statistics agree after a fit."""
    root = tmp_path / 'data'
    write_fake_mnist(root, n_train=128, n_test=129)
    two_processes(UNEVEN, root, tmp_path)
    found = json.loads((tmp_path / 'found.json').read_text())
    monkeypatch.setattr(stablesam.train, 'EVAL_BATCH', 32)
    torch.manual_seed(0)
    one = Trainer(TrainConfig(dataset='mnist', data_root=str(root), model='fcn', batch_size=64, label_smoothing=0.0,
                              augment=False, progress=False, download=False, device='cpu'), model=bn_net())
    want = one.evaluate(one.data.test)  # every example counted once, as on one process
    for path in ('in_memory=True', 'in_memory=False'):
        assert found[path]['acc'] == want['acc'] and found[path]['loss'] == pytest.approx(want['loss'], rel=1e-6)
    assert found['bn_buffers_differ'] == 0
    one.model.load_state_dict(load_checkpoint(tmp_path / 'bn' / 'checkpoint.pt')['model'])
    # the saved model, evaluated on one process, is the model the processes evaluated
    assert one.evaluate(one.data.test)['loss'] == pytest.approx(found['bn_test_loss'], rel=1e-6)
