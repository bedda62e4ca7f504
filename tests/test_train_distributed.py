"""`stablesam-train --fsdp` and `--ascent` under torchrun (2 gloo processes): the FSDP run equals one process on
the same global batches, its checkpoint resumes exactly, and `--ascent local` keeps the replicas identical."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from stablesam.cli import build_parser, config_from_args, main
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
