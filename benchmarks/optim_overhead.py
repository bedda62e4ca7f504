"""Overhead of StableSAM against SAM and SGD: pytorchcv resnet20_cifar10 on CPU, batch 64.

Everything is measured side by side in one process with interleaved rounds (the order rotates every round)
and summarised by medians, so the printed RATIOS are meaningful on a busy machine; absolute times are not.

    python benchmarks/optim_overhead.py            # default: about 1-2 minutes on 2 cores
    python benchmarks/optim_overhead.py --rounds 30 --threads 0   # longer, torch's default threads

Prints: full-step time ratios StableSAM/SAM (target <= 1.02) and StableSAM/SGD (target <= 2.05; two
forward-backward passes make 2.0 the floor), optimizer-only time (first_step + second_step, no passes)
against the SGD step, and the extra persistent optimizer memory against SGD in bytes (target <= one copy
of the parameters).
"""
import argparse
import statistics
import time

import torch
from pytorchcv.model_provider import get_model
from torch import nn

from stablesam.optim import SAM, StableSAM, freeze_bn_stats


def build(kind, seed=0):
    """A resnet20 and its optimizer: 'sgd', 'sam' or 'stablesam' (SGD, momentum 0.9, weight decay 5e-4)."""
    torch.manual_seed(seed)
    model = get_model('resnet20_cifar10', pretrained=False)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
    if kind == 'sgd': opt = torch.optim.SGD(model.parameters(), **kw)
    else: opt = (SAM if kind == 'sam' else StableSAM)(model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    return model, opt


def full_step(model, opt, x, y):
    """One training step: forward-backward (twice for SAM, BatchNorm statistics frozen in the second)."""
    loss_fn = nn.functional.cross_entropy
    if isinstance(opt, SAM):
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with freeze_bn_stats(model):
            loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
    else:
        loss_fn(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def optimizer_only(opt):
    """The optimizer's own work on gradients already in `.grad`: the SGD step, or first_step + second_step."""
    if isinstance(opt, SAM):
        opt.first_step()
        opt.second_step()
    else: opt.step()


def timed(fn, n, repeat=1):
    """Seconds per call of `fn` (averaged over `n` calls), best of `repeat` such measurements."""
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def state_bytes(opt):
    """Bytes of every tensor an optimizer keeps between steps (its own and its base optimizer's state)."""
    opts = [opt, opt.base_optimizer] if isinstance(opt, SAM) else [opt]
    return sum(t.numel() * t.element_size() for o in opts for st in o.state.values()
               for t in st.values() if isinstance(t, torch.Tensor))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=6, help='interleaved rounds (default 6)')
    ap.add_argument('--steps', type=int, default=2, help='full training steps per optimizer per round (best is kept)')
    ap.add_argument('--opt-steps', type=int, default=10, help='optimizer-only steps per optimizer per round')
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads (default 1: steadier ratios on a shared machine; 0 leaves torch\'s default)')
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    kinds = ('sgd', 'sam', 'stablesam')
    runs = {k: build(k) for k in kinds}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    for model, opt in runs.values(): full_step(model, opt, x, y)          # warm-up, allocates the state
    full, only = {k: [] for k in kinds}, {k: [] for k in kinds}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        order = kinds[r % 3:] + kinds[:r % 3]
        best = dict.fromkeys(kinds, float('inf'))
        for _ in range(args.steps):                      # interleaved step by step, best kept
            for k in order:
                model, opt = runs[k]
                best[k] = min(best[k], timed(lambda: full_step(model, opt, x, y), 1))
        for k in kinds: full[k].append(best[k])
        for k in order:
            model, opt = runs[k]
            for p in model.parameters(): p.grad = torch.randn_like(p) * 1e-3
            only[k].append(timed(lambda: optimizer_only(opt), args.opt_steps, repeat=3))
            opt.zero_grad()
    n_params = sum(p.numel() for p in runs['sgd'][0].parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in runs['sgd'][0].parameters())

    def ratio(times, a, b):
        """Median over rounds of the per-round ratio a/b (each round: best of its steps)."""
        return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))

    print(f"resnet20_cifar10 ({n_params} parameters), batch {args.batch}, CPU, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds, best of {args.steps} steps each ({time.perf_counter() - t_start:.0f}s)")
    print("median full step (s): " + ', '.join(f"{k} {statistics.median(full[k]):.4f}" for k in kinds))
    print(f"full step  StableSAM / SAM = {ratio(full, 'stablesam', 'sam'):.3f}   (target <= 1.02)")
    print(f"full step  StableSAM / SGD = {ratio(full, 'stablesam', 'sgd'):.3f}   (target <= 2.05, floor 2.0)")
    print(f"full step        SAM / SGD = {ratio(full, 'sam', 'sgd'):.3f}")
    print("median optimizer-only (ms): " + ', '.join(f"{k} {1e3 * statistics.median(only[k]):.3f}" for k in kinds))
    print(f"optimizer-only (first_step + second_step incl. the SGD step) / SGD step: "
          f"StableSAM {ratio(only, 'stablesam', 'sgd'):.2f}, SAM {ratio(only, 'sam', 'sgd'):.2f}")
    extra_ms = statistics.median(a - b for a, b in zip(only['stablesam'], only['sam']))
    print(f"StableSAM's own extra work (optimizer-only, StableSAM - SAM): {1e3 * extra_ms:.3f} ms per step, i.e. a "
          f"full-step ratio of {1 + extra_ms / statistics.median(full['sam']):.4f} (less noisy than the direct ratio)")
    sgd_bytes = state_bytes(runs['sgd'][1])
    for k in ('sam', 'stablesam'):
        extra = state_bytes(runs[k][1]) - sgd_bytes
        print(f"extra persistent memory {k} vs SGD: {extra} bytes = {extra / param_bytes:.2f} x parameters "
              f"({param_bytes} bytes)   (target <= 1.00)")
    model, opt = runs['stablesam']
    tracked = StableSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, track_alignment=True)
    full_step(model, tracked, x, y)
    extra = state_bytes(tracked) - sgd_bytes
    print(f"extra persistent memory stablesam track_alignment=True vs SGD: {extra} bytes = "
          f"{extra / param_bytes:.2f} x parameters (opt-in diagnostics)")


if __name__ == '__main__':
    main()
