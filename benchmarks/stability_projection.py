"""Projected wall time of one Section 5.2 figure (FCN on all of MNIST, S and S' of 59,999 images, 60 epochs,
3 seeds x SGD/SAM/StableSAM) on this machine, from one measured epoch of each optimizer's pair.

Usage: python benchmarks/stability_projection.py [--data-root ../shared/data] [--n-train 10000] [--processes 2]
It times one epoch of `stablesam.stability.train_pair` (both models trained, both evaluated on their training
set and the test set, the parameter distance) per optimizer on the first N real MNIST images, on one thread,
scales linearly to 59,999 images, and divides by the number of processes run side by side (one per core: the
experiment's runs are independent: `stablesam-stability --executor processes --processes N` runs them so).
Also prints the ratio of the measured epoch to a plain loop over the same work (train both models by index
slicing, evaluate both in batches of 1024), which is the engine's overhead.
Absolute times depend on what else runs; quote the load with the numbers.
"""
import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stablesam.data import decode
from stablesam.optim import make_optimizer
from stablesam.models import get_model
from stablesam.stability import load_stability_data, neighbouring_subsets, stability_config, train_pair

FULL, EPOCHS, SEEDS = 59_999, 60, 3


def plain_epoch(opt_name, x, y, tests, batch=128, lr=0.01, rho=0.05):
    """The same epoch's work written as a plain loop: train two FCNs by slicing, evaluate each on its sets."""
    t0 = time.perf_counter()
    for _ in range(2):
        torch.manual_seed(0)
        model = get_model('fcn', 10, 1, 28)
        opt = make_optimizer(opt_name, model.parameters(), base='sgd', lr=lr, momentum=0.0, weight_decay=0.0, rho=rho)
        for idx in torch.randperm(len(x)).split(batch):
            xb, yb = x[idx], y[idx]
            F.cross_entropy(model(xb), yb).backward()
            if opt_name == 'sgd':
                opt.step()
                opt.zero_grad()
            else:
                opt.first_step(zero_grad=True)
                F.cross_entropy(model(xb), yb).backward()
                opt.second_step(zero_grad=True)
        with torch.no_grad():
            for xs, ys in tests:
                for xb, yb in zip(xs.split(1024), ys.split(1024)): F.cross_entropy(model(xb), yb, reduction='sum')
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data-root', default=str(Path(__file__).resolve().parents[1].parent / 'shared' / 'data'))
    ap.add_argument('--n-train', type=int, default=10_000)
    ap.add_argument('--processes', type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = stability_config('mnist', 'fcn', 'constant', data_root=args.data_root, epochs=1, download=False, device='cpu')
    data = load_stability_data(cfg)
    _, _, nb = neighbouring_subsets(data.train, seed=0, subset=args.n_train)
    x, y = decode(data.train)
    x, y = x[:args.n_train - 1], y[:args.n_train - 1]
    tests = [(x, y), decode(data.test)]
    total = 0.0
    print(f"one epoch on {args.n_train - 1} images, one thread (load average {os.getloadavg()[0]:.1f}):")
    for opt in ('sgd', 'sam', 'stablesam'):
        times = []
        for epochs in (1, 2):   # the difference is one epoch of the steady state (set-up and epoch-0 evaluation cancel)
            t0 = time.perf_counter()
            train_pair(dataclasses.replace(cfg, optimizer=opt, epochs=epochs), data, nb)
            times.append(time.perf_counter() - t0)
        engine = times[1] - times[0]
        plain = plain_epoch(opt, x, y, tests)
        total += engine
        print(f"  {opt:9s} engine {engine:6.2f} s   plain loop {plain:6.2f} s   engine / plain {engine / plain:.2f}")
    minutes = total * FULL / (args.n_train - 1) * EPOCHS * SEEDS / args.processes / 60
    print(f"projected minutes per figure (3 seeds x 3 optimizers x 2 models x 60 epochs, {FULL} images, "
          f"{args.processes} processes side by side): {minutes:.0f} (target <= 60)")


if __name__ == '__main__':
    main()
