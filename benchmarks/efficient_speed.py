"""Epoch time of every efficient SAM variant over SGD's, through the Trainer that `stablesam-train` runs, measured
side by side in one process (interleaved rounds, so every optimizer sees the same load), on real MNIST (FCN,
10,000 images, batch 128) and on a CIFAR ResNet-20 (generated CIFAR-format files: speed only, never accuracy).

Usage: python benchmarks/efficient_speed.py [--rounds 3] [--setting mnist-fcn cifar-resnet20] [--threads N]
                                            [--data-root ../shared/data] [--cifar-images 1280] [--out FILE.json]

Per optimizer it prints the epoch-time ratio to SGD, the measured share of SAM steps f, and, for the scheduled
variants, the ratio over 1 + f (a SAM step is two passes, so a schedule that costs only its second passes is at
1.00). Targets (issue 20): every=5 and AE-SAM within 5% of 1 + f; LookSAM k=5 <= 1.30x SGD. pytorch_optimizer's
LookSAM (a benchmark-only dependency: pip install "stablesam[bench]") runs beside ours at the same k, called as its
documented `closure(); optimizer.step(closure)`.
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stablesam.config import TrainConfig
from stablesam.data import write_fake_cifar
from stablesam.train import Trainer
from stablesam.variants import EFFICIENT

OPTIMIZERS = ('sgd', 'sam', 'stablesam') + EFFICIENT
TARGET_SCHEDULED, TARGET_LOOKSAM = 0.05, 1.30


def settings(args):
    """The benchmark settings that can run here: name -> TrainConfig keyword arguments."""
    out = {}
    mnist = Path(args.data_root) / 'MNIST' / 'raw'
    if 'mnist-fcn' in args.setting:
        if mnist.exists():
            out['mnist-fcn'] = dict(dataset='mnist', data_root=args.data_root, model='fcn', train_subset=10000,
                                    augment=False, label_smoothing=0.)
        else: print(f"skipping mnist-fcn: no MNIST under {mnist}", file=sys.stderr)
    if 'cifar-resnet20' in args.setting:
        root = tempfile.mkdtemp()
        write_fake_cifar(root, n_train=args.cifar_images, n_test=16)
        out['cifar-resnet20'] = dict(dataset='cifar10', data_root=root, model='resnet20')
    return out


class ThirdPartyLookSAM:
    """pytorch_optimizer's LookSAM on the SGD Trainer's model and batches, one epoch as its documentation steps."""
    def __init__(self, trainer, k, alpha, rho):
        from pytorch_optimizer import LookSAM
        self.t = trainer
        self.opt = LookSAM(trainer.model.parameters(), torch.optim.SGD, rho=rho, k=k, alpha=alpha,
                           lr=trainer.cfg.lr, momentum=trainer.cfg.momentum)

    def train_epoch(self):
        """One epoch; returns its metrics like `Trainer.train_epoch` (time only)."""
        t, net = self.t, self.t.net
        net.train()
        t0 = time.perf_counter()
        for x, y in t.batches(0):
            def closure():
                self.opt.zero_grad()
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                return loss
            closure()
            self.opt.step(closure)
        return dict(time=time.perf_counter() - t0)


def measure(name, kw, rounds):
    """Epoch times (seconds, per round) and SAM-step shares of every optimizer, interleaved round by round."""
    runs = {}
    for opt in OPTIMIZERS:
        runs[opt] = Trainer(TrainConfig(**kw, optimizer=opt, epochs=rounds + 1, batch_size=128, progress=False,
                                        device='cpu', download=False, lr=0.05, checkpoint_every=0))
    try: runs['pytorch_optimizer LookSAM'] = ThirdPartyLookSAM(
        Trainer(TrainConfig(**kw, optimizer='sgd', epochs=rounds + 1, batch_size=128, progress=False, device='cpu',
                            download=False, lr=0.05)), k=5, alpha=0.7, rho=0.05)
    except ImportError: print("pytorch_optimizer is not installed: its LookSAM is left out", file=sys.stderr)
    for r in runs.values(): r.train_epoch()     # warm-up epoch (allocations, first-touch)
    times = {k: [] for k in runs}
    fractions = {k: [] for k in runs}
    for _ in range(rounds):
        for k, r in runs.items():
            m = r.train_epoch()
            times[k].append(m['time'])
            if 'sam_fraction' in m: fractions[k].append(m['sam_fraction'])
    return times, fractions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--setting', nargs='+', default=['mnist-fcn', 'cifar-resnet20'])
    ap.add_argument('--data-root', default='../shared/data')
    ap.add_argument('--cifar-images', type=int, default=1280, help='generated CIFAR images per epoch (10 steps)')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--out', default=None, help='also write the ratios to this JSON file (the figure reads it)')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    record = dict(command=['python', *sys.argv], threads=torch.get_num_threads(), torch=torch.__version__,
                  machine=platform.processor() or platform.machine(), rounds=args.rounds, settings={})
    for name, kw in settings(args).items():
        times, fractions = measure(name, kw, args.rounds)
        sgd = statistics.mean(times['sgd'])
        print(f"\n{name}: batch 128, {torch.get_num_threads()} threads, {args.rounds} interleaved epochs each, "
              f"SGD epoch {sgd:.2f} s (mean)")
        print(f"{'optimizer':28s} {'x SGD':>7s} {'SAM share f':>12s} {'x (1+f)':>8s}  target")
        for k, ts in times.items():
            ratio = statistics.mean(ts) / sgd   # means over the same epochs as f's
            f = statistics.mean(fractions[k]) if fractions[k] else (1. if k in ('sam', 'stablesam') else None)
            over = ratio / (1 + f) if f is not None and k != 'sgd' else None
            target = ''
            if k.endswith('-every') or k.endswith('aesam'):
                met = abs(over - 1) <= TARGET_SCHEDULED
                target = f"|x(1+f) - 1| <= {TARGET_SCHEDULED:.0%}: {'met' if met else 'MISSED'}"
            elif 'looksam' in k.lower():
                target = f"<= {TARGET_LOOKSAM:.2f}x SGD: {'met' if ratio <= TARGET_LOOKSAM else 'MISSED'}"
            fs = '' if f is None or k == 'sgd' else f"{f:.3f}"
            os_ = '' if over is None else f"{over:.3f}"
            print(f"{k:28s} {ratio:7.3f} {fs:>12s} {os_:>8s}  {target}")
            record['settings'].setdefault(name, {})[k] = dict(cost=ratio, sam_fraction=f, epoch_s=ts)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
