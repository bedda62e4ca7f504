"""SAM under DistributedDataParallel and FSDP2: two gloo processes on CPU.

`ascent='global'` equals one process on the global batch (SAM, StableSAM, ASAM, StableASAM); `ascent='local'`
equals, computed in one process, the average of the per-replica directions (each replica's own ascent and own
renormalization); replicas stay identical after every step. Under `fully_shard` every variant equals one
process, the backups are shards, and a checkpoint resumes exactly. Each worker writes the largest relative
difference it saw to a JSON file, printed by the test (`pytest -s`).
"""
import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stablesam.distributed import checkpoint_state, load_checkpoint_state, shard_model
from stablesam.optim import ASAM, SAM, StableASAM, StableSAM, first_pass_no_sync, sam_step

WORLD, LR, STEPS, TOL = 2, 0.1, 10, 1e-5
VARIANTS = dict(sam=(SAM, 0.2), stablesam=(StableSAM, 0.2), asam=(ASAM, 0.5), stableasam=(StableASAM, 0.5))


def make_net():
    """The same small network on every process."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def batch_of(rank, step):
    """Replica `rank`'s slice of step `step`'s global batch."""
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def global_batch(step):
    """The whole batch of step `step`: the replicas' slices in rank order."""
    xs, ys = zip(*(batch_of(r, step) for r in range(WORLD)))
    return torch.cat(xs), torch.cat(ys)


def loss(net, batch):
    """Cross-entropy of `net` on `batch`."""
    x, y = batch
    return nn.functional.cross_entropy(net(x), y)


def flat(ts):
    """One flat vector of `ts`."""
    return torch.cat([t.detach().reshape(-1) for t in ts])


def rel_diff(a, b):
    """Relative difference ||a - b|| / ||b|| of two flat vectors."""
    return ((a - b).norm() / b.norm()).item()


def assert_replicas_equal(vec):
    """Every process holds exactly `vec`."""
    every = [torch.empty_like(vec) for _ in range(WORLD)]
    dist.all_gather(every, vec)
    assert all(torch.equal(every[0], v) for v in every[1:]), 'replicas differ'


def one_process(cls, rho, steps=STEPS):
    """The package's own single-process loop on the global batches."""
    net = make_net()
    opt = cls(net.parameters(), torch.optim.SGD, rho=rho, lr=LR, momentum=0.9)
    for step in range(steps): sam_step(opt, net, nn.functional.cross_entropy, *global_batch(step))
    return flat(net.parameters())


def grad_at(net, weights, batch):
    """The gradient of `loss` at `weights` (functional, no optimizer involved)."""
    names = [n for n, _ in net.named_parameters()]
    ws = [w.detach().clone().requires_grad_() for w in weights]
    x, y = batch
    out = torch.func.functional_call(net, dict(zip(names, ws)), (x,))
    return torch.autograd.grad(nn.functional.cross_entropy(out, y), ws)


def local_reference(stable, rho, steps=STEPS):
    """m-sharpness in one process: each replica's own ascent and factor, the average direction, SGD with momentum."""
    net = make_net()
    sgd = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    for step in range(steps):
        w = [p.detach().clone() for p in net.parameters()]
        directions = []
        for r in range(WORLD):
            g = grad_at(net, w, batch_of(r, step))
            n = flat(g).norm()
            ga = grad_at(net, [wi + rho * gi / (n + 1e-12) for wi, gi in zip(w, g)], batch_of(r, step))
            factor = n / flat(ga).norm() if stable else 1.
            directions.append([factor * d for d in ga])
        for p, *ds in zip(net.parameters(), *directions): p.grad = sum(ds) / WORLD
        sgd.step()
    return flat(net.parameters())


def exit_worker():
    """Leave a worker process that passed without finalizing the interpreter."""
    # Gloo's worker threads can abort a process at interpreter finalization after a successful run (a torch
    # teardown race).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ddp_worker(rank, init_file, out):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    diffs = {}
    try:
        for ascent in ('global', 'local'):
            for name, (cls, rho) in VARIANTS.items():
                if ascent == 'local' and name not in ('sam', 'stablesam'): continue
                net = make_net()
                model = nn.parallel.DistributedDataParallel(net)
                opt = cls(model.parameters(), torch.optim.SGD, rho=rho, lr=LR, momentum=0.9, ascent=ascent)
                for step in range(STEPS):
                    sam_step(opt, model, nn.functional.cross_entropy, *batch_of(rank, step))
                    assert_replicas_equal(flat(net.parameters()))
                want = one_process(cls, rho) if ascent == 'global' else local_reference(cls is StableSAM, rho)
                diffs[f'{ascent}/{name}'] = d = rel_diff(flat(net.parameters()), want)
                assert d <= TOL, (ascent, name, d)
        # the two semantics are different algorithms: the test above could tell them apart
        assert rel_diff(local_reference(True, 0.2), one_process(StableSAM, 0.2)) > 100 * TOL
        # the local ascent point is the replica's own: w + rho g_i / ||g_i||, different on the two replicas
        net = make_net()
        model = nn.parallel.DistributedDataParallel(net)
        opt = StableSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=LR, ascent='local')
        with first_pass_no_sync(model): loss(model, batch_of(rank, 0)).backward()
        g = [p.grad.clone() for p in net.parameters()]
        opt.first_step(zero_grad=True)
        n = flat(g).norm()
        for p, w, gi in zip(net.parameters(), make_net().parameters(), g):
            torch.testing.assert_close(p.detach(), w.detach() + 0.2 * gi / n, rtol=1e-6, atol=1e-7)
        every = [torch.empty(()) for _ in range(WORLD)]
        dist.all_gather(every, n)
        assert every[0] != every[1], 'the replicas ascend with their own gradients'
        opt.unperturb()
        if rank == 0: out.write_text(json.dumps(diffs))
    finally:
        dist.destroy_process_group()
    exit_worker()


def fsdp_model(cls, rho):
    """A sharded network and its optimizer."""
    net = make_net()
    shard_model(net)
    return net, cls(net.parameters(), torch.optim.SGD, rho=rho, lr=LR, momentum=0.9)


def full(net):
    """The whole parameters of a sharded network, flat."""
    return flat([p.full_tensor() for p in net.parameters()])


def assert_resumes_exactly(rank, build, ckpt, split, steps, what='run'):
    """Train `build()`'s sharded (net, optimizer) `split` steps, checkpoint, resume in a fresh `build()`, train both
    to `steps`: the resumed weights equal the uninterrupted ones bit for bit; the resumed optimizer."""
    net, opt = build()
    for step in range(split): sam_step(opt, net, nn.functional.cross_entropy, *batch_of(rank, step))
    state = checkpoint_state(net, opt)
    if rank == 0: torch.save(state, ckpt)
    dist.barrier()
    resumed, ropt = build()
    load_checkpoint_state(resumed, ropt, *torch.load(ckpt, weights_only=True))
    for step in range(split, steps):
        for n, o in ((net, opt), (resumed, ropt)):
            sam_step(o, n, nn.functional.cross_entropy, *batch_of(rank, step))
    assert torch.equal(full(net), full(resumed)), f'{what}: resumed run differs'
    return ropt


def fsdp_worker(rank, init_file, out, ckpt):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    diffs = {}
    try:
        for name, (cls, rho) in VARIANTS.items():
            net, opt = fsdp_model(cls, rho)
            for step in range(STEPS):
                sam_step(opt, net, nn.functional.cross_entropy, *batch_of(rank, step))
                assert_replicas_equal(torch.stack([opt.last_stats['grad_norm'], opt.last_stats['renorm_factor']]))
            diffs[f'fsdp/{name}'] = d = rel_diff(full(net), one_process(cls, rho))
            assert d <= TOL, (name, d)
            for p in net.parameters():   # the copy of w is this process's shard, not the whole parameter
                assert opt.state[p]['w'].shape == p.to_local().shape and p.to_local().numel() < p.numel()
        # checkpoint after 5 steps, resume in fresh objects, 5 more: exactly the uninterrupted run
        ropt = assert_resumes_exactly(rank, lambda: fsdp_model(*VARIANTS['stablesam']), ckpt, STEPS // 2, STEPS)
        assert ropt.stable and ropt.ascent == 'global'
        net = make_net()
        shard_model(net)
        opt = StableSAM(net.parameters(), torch.optim.SGD, lr=LR, ascent='local')
        loss(net, batch_of(rank, 0)).backward()
        try: opt.first_step()
        except RuntimeError as e: assert "use ascent='global'" in str(e)
        else: raise AssertionError('local ascent on shards must fail')
        if rank == 0: out.write_text(json.dumps(diffs))
    finally:
        dist.destroy_process_group()
    exit_worker()


pytestmark = [pytest.mark.skipif(not dist.is_available(), reason='torch.distributed not available'),
              pytest.mark.usefixtures('one_thread')]


def test_ddp_global_and_local(tmp_path):
    """Both ascent semantics under DDP against their single-process definitions; replicas identical."""
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    mp.spawn(ddp_worker, args=(str(tmp_path / 'init'), tmp_path / 'diffs.json'), nprocs=WORLD, join=True)
    diffs = json.loads((tmp_path / 'diffs.json').read_text())
    print('||w - w_ref|| / ||w_ref|| after 10 steps:', diffs)
    assert set(diffs) == {'global/sam', 'global/stablesam', 'global/asam', 'global/stableasam',
                          'local/sam', 'local/stablesam'}


def test_fsdp_equals_one_process_and_resumes(tmp_path):
    """FSDP2: every variant equals one process, backups are shards, a checkpoint resumes exactly."""
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    mp.spawn(fsdp_worker, args=(str(tmp_path / 'init'), tmp_path / 'diffs.json', tmp_path / 'ckpt.pt'), nprocs=WORLD,
             join=True)
    diffs = json.loads((tmp_path / 'diffs.json').read_text())
    print('||w - w_ref|| / ||w_ref|| after 10 steps:', diffs)
    assert set(diffs) == {f'fsdp/{n}' for n in VARIANTS}


def test_bad_ascent_name():
    """An unknown ascent is a ValueError naming it."""
    with pytest.raises(ValueError, match="Invalid ascent: 'mixed'"):
        StableSAM(make_net().parameters(), torch.optim.SGD, lr=0.1, ascent='mixed')
