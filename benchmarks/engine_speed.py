"""Engine speed on CPU, as issue 11 measures it: the epoch time of `stablesam-train` over the epoch time of a
plain PyTorch loop on the same data, for SGD and StableSAM, and the images/s of the batched CIFAR augmentation
over torchvision's per-image transforms.

Usage: python benchmarks/engine_speed.py [--data-root /work/shared/data] [--n 10000] [--batch-size 128]
       [--epochs 4] [--rounds 3] [--threads 1]

Setting: real MNIST under --data-root, FCN 784-500-500-10, the first --n training images (a seeded subset),
batch 128, `--no-augment`, one thread. `stablesam-train` runs as a user runs it (the command's own `main`, in a
fresh process, writing a run folder); its per-epoch training time is the `time` of metrics.jsonl. The plain loop
is `perm = torch.randperm(n)`, then for each slice of --batch-size indices `x, y = X[idx], Y[idx]`, forward,
backward, step (StableSAM: `first_step` / `second_step`), on the same decoded tensors with the same model,
optimizer and loss (label smoothing 0.1), in a fresh process too. The first epoch of each run is a warm-up and
left out; each ratio is a median over epochs, and the printed ratio the median over --rounds interleaved rounds.
Both wall time and the process's CPU time are compared: on a shared, loaded machine the wall time of a run
depends on what else runs at that moment, while the CPU time measures the work each side does. The augmentation
benchmark times one epoch over a fake CIFAR-10 training set of --n images in the real file format: a DataLoader
over the per-image transforms (random crop with 4-pixel padding, flip, to tensor, normalise), against slicing the
decoded tensors and `CropFlip` on the batch.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stablesam.data import EpochSampler, SeededAugment, decode, get_datasets, split_augmentation, write_fake_cifar
from stablesam.models import get_model
from stablesam.optim import is_sam, make_optimizer
from stablesam.runs import read_metrics

CLI = 'import sys; from stablesam.cli import main; sys.exit(main())'


def plain_loop(args, optimizer):
    """Epoch times of the plain loop: a list of (wall, CPU) seconds."""
    data = get_datasets('mnist', args.data_root, train_subset=args.n, augment=False, download=False)
    X, Y = decode(data.train)
    torch.manual_seed(0)
    model = get_model('fcn', 10, 1, 28)
    opt = make_optimizer(optimizer, model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.05)

    def loss_fn(out, y): return F.cross_entropy(out, y, label_smoothing=0.1)

    sam, times = is_sam(opt), []
    for _ in range(args.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(len(X))
        for idx in perm.split(args.batch_size):
            x, y = X[idx], Y[idx]
            loss_fn(model(x), y).backward()
            if sam:
                opt.first_step(zero_grad=True)
                loss_fn(model(x), y).backward()
                opt.second_step(zero_grad=True)
            else:
                opt.step()
                opt.zero_grad()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def run(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode: raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{p.stderr[-3000:]}")
    return p.stdout


def cli_epochs(args, optimizer, out, env):
    """Epoch times of `stablesam-train`: (wall, CPU) seconds, each epoch's `time`, `cpu_time` in its metrics.jsonl."""
    run([sys.executable, '-c', CLI, '--dataset', 'mnist', '--data-root', args.data_root, '--model', 'fcn',
         '--train-subset', str(args.n), '--batch-size', str(args.batch_size), '--no-augment', '--optimizer', optimizer,
         '--epochs', str(args.epochs), '--no-progress', '--no-download', '--out', str(out)], env)
    return [(m['time'], m['cpu_time']) for m in read_metrics(out)]


def plain_epochs(args, optimizer, env):
    """Epoch times of the plain loop, in a fresh process: (wall, CPU) seconds."""
    out = run([sys.executable, __file__, '--plain', optimizer, '--data-root', args.data_root, '--n', str(args.n),
               '--batch-size', str(args.batch_size), '--epochs', str(args.epochs)], env)
    return json.loads(out.strip().splitlines()[-1])


def augmentation(args):
    """Images/s of torchvision's per-image CIFAR transforms through a DataLoader and of the batched path."""
    root = tempfile.mkdtemp()
    write_fake_cifar(root, n_train=args.n, n_test=16)
    train = get_datasets('cifar10', root, augment=True).train
    sampler = EpochSampler(len(train), seed=0)
    loader = torch.utils.data.DataLoader(SeededAugment(train, 0), batch_size=args.batch_size, sampler=sampler)
    plain, aug = split_augmentation(train)
    X = decode(plain)[0]
    rates = dict(torchvision=[], batched=[])
    for epoch in range(args.rounds):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, _ in loader: pass
        rates['torchvision'].append(len(train) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for idx in sampler.order().split(args.batch_size): x = aug(X[idx], idx, 0, epoch)
        rates['batched'].append(len(train) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data-root', default='/work/shared/data')
    ap.add_argument('--n', type=int, default=10000)
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--epochs', type=int, default=4, help='epochs per run (the first is a warm-up)')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--plain', default=None, help=argparse.SUPPRESS)  # internal: run the plain loop, print its times
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plain:
        print(json.dumps(plain_loop(args, args.plain)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp())
    ratios = {(opt, kind): [] for opt in ('sgd', 'stablesam') for kind in ('wall', 'CPU')}
    print(f"MNIST FCN, {args.n} images, batch {args.batch_size}, {args.threads} thread(s), {args.epochs} epochs "
          f"(first left out) x {args.rounds} rounds")

    def median(times, k):   # over the epochs after the warm-up
        return statistics.median(t[k] for t in times[1:])

    for r in range(args.rounds):
        for opt in ('sgd', 'stablesam'):
            engine, plain = cli_epochs(args, opt, tmp / f'{opt}{r}', env), plain_epochs(args, opt, env)
            for k, kind in enumerate(('wall', 'CPU')):
                ratios[opt, kind].append(median(engine, k) / median(plain, k))
            print(f"round {r + 1} {opt:10s} stablesam-train {median(engine, 0):.3f} s/epoch wall, "
                  f"{median(engine, 1):.3f} CPU; plain loop {median(plain, 0):.3f} wall, {median(plain, 1):.3f} CPU; "
                  f"ratios {ratios[opt, 'wall'][-1]:.3f} wall, {ratios[opt, 'CPU'][-1]:.3f} CPU", flush=True)
    for (opt, kind), rs in ratios.items():
        print(f"{opt:10s} stablesam-train / plain loop epoch {kind} time: median {statistics.median(rs):.3f} "
              f"(rounds: {', '.join(f'{x:.3f}' for x in rs)}; target <= 1.10)")
    rates = augmentation(args)
    print(f"CIFAR augmentation, {args.n} images, batch {args.batch_size}: torchvision per-image "
          f"{rates['torchvision']:.0f} images/s, batched {rates['batched']:.0f} images/s, "
          f"ratio {rates['batched'] / rates['torchvision']:.1f}x (target >= 3x)")


if __name__ == '__main__':
    main()
