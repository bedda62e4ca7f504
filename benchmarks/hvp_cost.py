"""Cost of one Hessian-vector product relative to one gradient evaluation (target: <= 2.5x).

Usage: python benchmarks/hvp_cost.py [--model resnet20] [--batch 64] [--rounds 7] [--device cpu]

Times, in interleaved rounds in one process (so machine load hits all alike), on the same model and batch:
  grad        forward + backward (one gradient evaluation, what a training step pays per pass)
  hvp         one product inside `top_hessian_eig`'s power iteration: double backward on the retained
              gradient graph (the gradient graph is built once per eigen-solve)
  hvp+graph   a standalone product: forward + backward with create_graph + double backward
and prints the median ratios to `grad`. The model is in eval mode, as in `model_loss_fn`.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from stablesam.landscape import hessian_vector_product, model_loss_fn
from stablesam.models import get_model


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def _timed(fn, device, reps):
    """Median seconds of `reps` calls of `fn`."""
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--classes', type=int, default=100)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--reps', type=int, default=3, help='calls per measurement within a round')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = get_model(args.model, args.classes).to(device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    loss_fn = model_loss_fn(model, (x, y))
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]

    def grad():
        torch.autograd.grad(loss_fn(), params)

    hvp = hessian_vector_product(loss_fn, params)

    def hvp_reuse():
        hvp(v)

    def hvp_standalone():
        hessian_vector_product(loss_fn, params)(v)

    for f in (grad, hvp_reuse, hvp_standalone): f()   # warm-up
    res = {'grad': [], 'hvp': [], 'hvp+graph': []}
    for _ in range(args.rounds):
        g = _timed(grad, device, args.reps)
        res['grad'].append(g)
        res['hvp'].append(_timed(hvp_reuse, device, args.reps))
        res['hvp+graph'].append(_timed(hvp_standalone, device, args.reps))
    n_params = sum(p.numel() for p in params)
    print(f"model {args.model} ({n_params / 1e6:.2f}M params), batch {args.batch}, device {device}, "
          f"{args.rounds} interleaved rounds x {args.reps} calls")
    gm = statistics.median(res['grad'])
    for k, ts in res.items():
        ratios = [t / g for t, g in zip(ts, res['grad'])]
        print(f"{k:10s} median {statistics.median(ts) * 1e3:8.1f} ms   ratio to grad: median "
              f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")
    ratio = statistics.median(t / g for t, g in zip(res['hvp'], res['grad']))
    print(f"HVP/gradient cost ratio (power-iteration product): {ratio:.2f}x "
          f"({'meets' if ratio <= 2.5 else 'MISSES'} the <= 2.5x target)")


if __name__ == '__main__':
    main()
