"""Training throughput on CPU: images/s of SGD and StableSAM on ResNet-20 (batch 128) through the real
`Trainer.train_step`, measured in one process with interleaved rounds, and their ratio.

Usage: python benchmarks/train_throughput.py [--rounds 3] [--steps 3] [--batch-size 128] [--threads N]
The ratio is what matters on a shared machine (the two optimizers see the same load); StableSAM does two
forward-backward passes per step, so its throughput is at most half of SGD's (ratio <= 0.5).
"""
import argparse
import tempfile
import time

import torch

from stablesam.data import write_fake_cifar
from stablesam.config import TrainConfig
from stablesam.train import Trainer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--steps', type=int, default=3, help='steps per optimizer per round')
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp()
    write_fake_cifar(root, n_train=args.batch_size, n_test=16)
    trainers = {}
    for opt in ('sgd', 'stablesam'):
        cfg = TrainConfig(dataset='cifar10', data_root=root, model=args.model, optimizer=opt,
                          batch_size=args.batch_size, epochs=1, progress=False, device='cpu')
        t = Trainer(cfg)
        t.net.train()
        x, y = next(t.batches())  # the first batch of epoch 0, augmented as in training
        trainers[opt] = (t, x, y)
        t.train_step(x, y)  # warm-up
    seconds = {k: 0.0 for k in trainers}
    for _ in range(args.rounds):
        for opt, (t, x, y) in trainers.items():
            t0 = time.perf_counter()
            for _ in range(args.steps): t.train_step(x, y)
            seconds[opt] += time.perf_counter() - t0
    n = args.rounds * args.steps * args.batch_size
    ips = {k: n / s for k, s in seconds.items()}
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps")
    for k, v in ips.items(): print(f"{k:10s} {v:8.1f} images/s")
    print(f"StableSAM/SGD throughput ratio: {ips['stablesam'] / ips['sgd']:.3f} "
          f"(time ratio {seconds['stablesam'] / seconds['sgd']:.3f})")


if __name__ == '__main__':
    main()
