"""The Python half of benchmarks/gpu_check.sh (never in CI): full-step time ratios and the no-host-sync check.

(a) StableSAM/SAM and StableSAM/SGD full-step time ratios (two forward-backward passes make 2.0 the floor for
    StableSAM/SGD) for ResNet-20 at batch 128 (CIFAR shapes) and ViT-S/32 at batch 64 (224 px), random data,
    fp32 and bf16 autocast; interleaved rounds, medians of CUDA-event timings.
(b) one StableSAM step (both passes, BatchNorm frozen in the second, SGD base) under
    `torch.cuda.set_sync_debug_mode('error')`: any host sync in the step raises.

    python benchmarks/gpu_check.py                 # on a GPU: about 2-4 minutes
    python benchmarks/gpu_check.py --smoke         # any device, tiny: checks that the code runs (no timings)
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from stablesam.models import get_model
from stablesam.optim import make_optimizer, sam_step

KINDS = ('sgd', 'sam', 'stablesam')
MODELS = (('resnet20', 128, 32, 10), ('vit_s32', 64, 224, 1000))   # name, batch, image size, classes


def build(kind, name, size, classes, device):
    """Model `name` and optimizer `kind` (SGD momentum 0.9 base, rho 0.05), seeded."""
    torch.manual_seed(0)
    model = get_model(name, classes, 3, size).to(device)
    return model, make_optimizer(kind, model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, rho=0.05)


def step(model, opt, x, y, amp):
    """One full training step of `opt` (two passes for the SAM family) under `amp` autocast."""
    sam_step(opt, model, lambda out, y: F.cross_entropy(out.float(), y), x, y,
             autocast_dtype=torch.bfloat16 if amp == 'bf16' else None)


def seconds(fn, n, device):
    """Seconds per call of `fn` over `n` calls (CUDA events on a GPU)."""
    if device.type != 'cuda':
        t0 = time.perf_counter()
        for _ in range(n): fn()
        return (time.perf_counter() - t0) / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n): fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / n


def ratios(name, batch, size, classes, amp, device, rounds, steps):
    """Median per-round full-step times of each optimizer, interleaved, after a warm-up."""
    runs = {k: build(k, name, size, classes, device) for k in KINDS}
    g = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    for model, opt in runs.values():
        model.train()
        for _ in range(2): step(model, opt, x, y, amp)                 # warm-up: cudnn autotune, state
    times = {k: [] for k in KINDS}
    for r in range(rounds):
        for k in KINDS[r % 3:] + KINDS[:r % 3]:
            model, opt = runs[k]
            times[k].append(seconds(lambda: step(model, opt, x, y, amp), steps, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name:8s} batch {batch:3d} {amp:4s}: step (ms) " + ', '.join(f"{k} {1e3 * med[k]:.1f}" for k in KINDS)
          + f" | StableSAM/SAM {med['stablesam'] / med['sam']:.3f} (target <= 1.02)"
          + f" | StableSAM/SGD {med['stablesam'] / med['sgd']:.3f} (floor 2.0, target <= 2.05)", flush=True)


def sync_check(device):
    """One StableSAM step under sync debug mode 'error'; prints OK or the offending call."""
    model, opt = build('stablesam', 'resnet20', 32, 10, device)
    x, y = torch.randn(128, 3, 32, 32, device=device), torch.randint(0, 10, (128,), device=device)
    step(model, opt, x, y, 'none')                                      # warm-up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        step(model, opt, x, y, 'none')
        _ = opt.last_stats['renorm_factor'] * 1                        # the statistics stay on the device
        print("(b) StableSAM step under set_sync_debug_mode('error'): OK, no host sync", flush=True)
    except RuntimeError as e:
        print(f"(b) StableSAM step under set_sync_debug_mode('error'): FAILED, a host sync: {e}", flush=True)
        raise SystemExit(1)
    finally:
        torch.cuda.set_sync_debug_mode('default')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=5, help='interleaved rounds (default 5)')
    ap.add_argument('--steps', type=int, default=10, help='steps per optimizer per round (default 10)')
    ap.add_argument('--smoke', action='store_true', help='tiny batches, one round of one step, on any device')
    args = ap.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type != 'cuda' and not args.smoke: raise SystemExit('gpu_check.py needs a CUDA GPU (or --smoke)')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    rounds, steps = (1, 1) if args.smoke else (args.rounds, args.steps)
    print("(a) full-step times, median of interleaved rounds", flush=True)
    for name, batch, size, classes in MODELS:
        for amp in ('none', 'bf16'):
            ratios(name, 2 if args.smoke else batch, size, classes, amp, device, rounds, steps)
    if device.type == 'cuda': sync_check(device)
    else: print("(b) skipped: no CUDA device", flush=True)


if __name__ == '__main__':
    main()
