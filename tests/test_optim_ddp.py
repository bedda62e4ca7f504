"""SAM under DistributedDataParallel: two gloo processes on CPU.

Checks the m-sharpness semantics of `first_pass_no_sync`: each replica perturbs with its OWN gradient, the
second pass is all-reduced, the stable factor uses the replica-average of the local gradient norms, and the
replicas end every step with identical weights equal to a single-process reference.
"""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stablesam.optim import SAM, StableSAM, first_pass_no_sync

WORLD, LR, RHO = 2, 0.1, 0.2


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def batch_of(rank, step):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


def loss_at(net, weights, batch):
    """Loss of `net`'s architecture at `weights` on `batch` (functional, no DDP)."""
    x, y = batch
    names = [n for n, _ in net.named_parameters()]
    out = torch.func.functional_call(net, dict(zip(names, weights)), (x,))
    return nn.functional.cross_entropy(out, y)


def grad_at(net, weights, batch):
    ws = [w.detach().clone().requires_grad_() for w in weights]
    return list(torch.autograd.grad(loss_at(net, ws, batch), ws))


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def reference_step(net, w0, step, stable):
    """One SAM/StableSAM step with per-replica ascent, averaged surrogate gradient, plain SGD."""
    gs = [grad_at(net, w0, batch_of(r, step)) for r in range(WORLD)]
    perturbed, gas = [], []
    for r, g in enumerate(gs):
        n = flat(g).norm()
        wr = [w + RHO * d / (n + 1e-12) for w, d in zip(w0, g)]
        perturbed.append(wr)
        gas.append(grad_at(net, wr, batch_of(r, step)))
    ga = [sum(parts) / WORLD for parts in zip(*gas)]
    factor = (sum(flat(g).norm() for g in gs) / WORLD) / flat(ga).norm() if stable else 1.
    return perturbed, [w - LR * factor * d for w, d in zip(w0, ga)]


def worker(rank, init_file):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    try:
        for cls in (StableSAM, SAM):
            net = make_net()
            model = nn.parallel.DistributedDataParallel(net)
            opt = cls(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
            for step in range(3):
                w0 = [p.detach().clone() for p in net.parameters()]
                perturbed, expected = reference_step(make_net(), w0, step, cls is StableSAM)
                x, y = batch_of(rank, step)
                with first_pass_no_sync(model):
                    nn.functional.cross_entropy(model(x), y).backward()
                opt.first_step(zero_grad=True)
                for p, q in zip(net.parameters(), perturbed[rank]):   # own gradient, not the average
                    torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
                nn.functional.cross_entropy(model(x), y).backward()   # synced pass
                opt.second_step(zero_grad=True)
                for p, q in zip(net.parameters(), expected):
                    torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
                mine = flat([p.detach() for p in net.parameters()])
                other = [torch.empty_like(mine) for _ in range(WORLD)]
                dist.all_gather(other, mine)
                assert torch.equal(other[0], other[1]), 'replicas identical after the step'
            assert not torch.equal(flat(perturbed[0]), flat(perturbed[1])), 'the replicas did perturb differently'
    finally:
        dist.destroy_process_group()
    # Gloo's worker threads can abort a process at interpreter finalization after a successful run (a torch
    # teardown race): a worker that passed leaves without finalizing.
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed not available')
def test_ddp_m_sharpness(tmp_path):
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    mp.spawn(worker, args=(str(tmp_path / 'init'),), nprocs=WORLD, join=True)
