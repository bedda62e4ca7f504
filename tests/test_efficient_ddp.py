"""Efficient SAM variants under DDP and FSDP2 (two gloo processes on CPU): `ascent='global'` takes the same
decisions on every replica and equals one process on the global batch (AE-SAM's trigger, LookSAM's global g_v);
under FSDP2 g_v is kept as shards and a checkpoint taken mid-schedule resumes exactly."""
import json
import os
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stablesam.distributed import shard_model
from stablesam.optim import SAM, StableSAM, sam_step
from test_optim_ddp import (WORLD, assert_replicas_equal, assert_resumes_exactly, batch_of, exit_worker, flat, full,
                            global_batch, make_net, rel_diff)

LR, STEPS, TOL = 0.1, 12, 1e-5
# name: (class, rho, schedule, look_alpha)
CASES = dict(stablelooksam=(StableSAM, 0.2, 'every:3', 0.7), looksam=(SAM, 0.2, 'every:4', 0.5),
             stableaesam=(StableSAM, 0.2, 'ae', None), stablerandom=(StableSAM, 0.2, 'random:0.5:3', None))


def build(params, case):
    """The optimizer of `CASES[case]` on SGD with momentum."""
    cls, rho, schedule, look_alpha = CASES[case]
    return cls(params, torch.optim.SGD, rho=rho, lr=LR, momentum=0.9, schedule=schedule, look_alpha=look_alpha,
               total_steps=STEPS)


def one_process(case):
    """The package's own loop in one process on the global batches: its weights and its SAM-step flags."""
    net = make_net()
    opt = build(net.parameters(), case)
    flags = []
    for step in range(STEPS):
        sam_step(opt, net, nn.functional.cross_entropy, *global_batch(step))
        flags.append(opt.last_stats['sam_step'])
    return flat(net.parameters()), flags


def check(rank, net, opt, weights, case, diffs, prefix):
    """Train `STEPS` steps, replicas identical after each; compare with one process."""
    flags = []
    for step in range(STEPS):
        sam_step(opt, net, nn.functional.cross_entropy, *batch_of(rank, step))
        assert_replicas_equal(weights())
        flags.append(opt.last_stats['sam_step'])
    want, want_flags = one_process(case)
    assert flags == want_flags, (case, flags, want_flags)
    assert 0 < sum(flags) < STEPS, (case, flags)
    diffs[f'{prefix}/{case}'] = d = rel_diff(weights(), want)
    assert d <= TOL, (case, d)


def ddp_worker(rank, init_file, out):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    diffs = {}
    try:
        for case in CASES:
            net = make_net()
            model = nn.parallel.DistributedDataParallel(net)
            check(rank, model, build(model.parameters(), case), lambda: flat(net.parameters()), case, diffs, 'ddp')
        # ascent='local': a one-pass step averages the replicas' own gradients (the first pass ran without sync), so
        # a schedule that never fires is SGD on the global batch; LookSAM keeps replicas identical
        for schedule, look_alpha in (('every:inf', None), ('every:3', 0.7)):
            net = make_net()
            model = nn.parallel.DistributedDataParallel(net)
            opt = StableSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=LR, momentum=0.9, ascent='local',
                            schedule=schedule, look_alpha=look_alpha)
            for step in range(STEPS):
                sam_step(opt, model, nn.functional.cross_entropy, *batch_of(rank, step))
                assert_replicas_equal(flat(net.parameters()))
            if schedule == 'every:inf':
                ref = make_net()
                sgd = torch.optim.SGD(ref.parameters(), lr=LR, momentum=0.9)
                for step in range(STEPS):
                    sgd.zero_grad()
                    nn.functional.cross_entropy(ref(global_batch(step)[0]), global_batch(step)[1]).backward()
                    sgd.step()
                diffs['ddp-local/never'] = d = rel_diff(flat(net.parameters()), flat(ref.parameters()))
                assert d <= TOL, d
        if rank == 0: out.write_text(json.dumps(diffs))
    finally:
        dist.destroy_process_group()
    exit_worker()


def sharded(case):
    """A sharded network and the optimizer of `CASES[case]`."""
    net = make_net()
    shard_model(net)
    return net, build(net.parameters(), case)


def fsdp_worker(rank, init_file, out, ckpt):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    diffs = {}
    try:
        for case in CASES:
            net, opt = sharded(case)
            check(rank, net, opt, lambda: full(net), case, diffs, 'fsdp')
            if CASES[case][3] is not None:
                for p in net.parameters():   # g_v is this process's shard
                    assert opt.state[p]['gv'].shape == p.to_local().shape and p.to_local().numel() < p.numel()
        # checkpoint after 5 steps (mid-schedule: g_v stored, AE's averages moving), resume in fresh objects
        for case in ('stablelooksam', 'stableaesam'):
            ropt = assert_resumes_exactly(rank, partial(sharded, case), ckpt, 5, STEPS, case)
            assert ropt.schedule.state_dict()['count'] == STEPS
        if rank == 0: out.write_text(json.dumps(diffs))
    finally:
        dist.destroy_process_group()
    exit_worker()


pytestmark = [pytest.mark.skipif(not dist.is_available(), reason='torch.distributed not available'),
              pytest.mark.usefixtures('one_thread')]


def test_ddp_global_efficient_variants_equal_one_process(tmp_path):
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    mp.spawn(ddp_worker, args=(str(tmp_path / 'init'), tmp_path / 'diffs.json'), nprocs=WORLD, join=True)
    diffs = json.loads((tmp_path / 'diffs.json').read_text())
    print('||w - w_ref|| / ||w_ref|| after 12 steps:', diffs)
    assert set(diffs) == {f'ddp/{c}' for c in CASES} | {'ddp-local/never'}


def test_fsdp_efficient_variants_equal_one_process_and_resume(tmp_path):
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    mp.spawn(fsdp_worker, args=(str(tmp_path / 'init'), tmp_path / 'diffs.json', tmp_path / 'ckpt.pt'),
             nprocs=WORLD, join=True)
    diffs = json.loads((tmp_path / 'diffs.json').read_text())
    print('||w - w_ref|| / ||w_ref|| after 12 steps:', diffs)
    assert set(diffs) == {f'fsdp/{c}' for c in CASES}
