"""Time the full Figure 4 sweep (stablesam.toy) and compare it with a straightforward NumPy float64 sweep.

Usage: python benchmarks/toy_sweep.py [--starts 100] [--rounds 2] [--no-full]

The numba kernel is compiled (or loaded from numba's cache in __pycache__) by a tiny warm-up sweep first,
timed and printed on its own; every timing after that is of compiled code.

The straightforward version is the obvious vectorised code: float64 arrays of shape (learning rates, starts),
one array expression per formula of Algorithm 1, every run for every step, nothing dropped. It is timed on a
reduced number of starts, interleaved with the fast sweep on the same size (ratios, not absolute times, are
what a shared machine can measure). The straightforward sweep costs the same at every step (it drops nothing),
so its full-size time is extrapolated from a few steps at the full array size (100 x 10,000) and compared with
the measured full-size fast sweep. Both sweeps' rates are compared, curve by curve, against their binomial
sampling noise.
"""
import argparse
import time

import numpy as np

from stablesam import toy
from stablesam.toy import EPS, METHODS, default_threads, paper_lrs, reached_minimum, sample_starts, sweep


def straightforward_rates(method, lrs, rho, starts, steps=1000, tol=0.05):
    "Success rate per learning rate: float64, one array expression per formula, all runs for all steps."
    ascent, normalize, stable = METHODS[method]
    lr = np.asarray(lrs, np.float64)[:, None]
    x1 = np.repeat(starts[None, :, 0], lr.shape[0], 0)
    x2 = np.repeat(starts[None, :, 1], lr.shape[0], 0)
    with np.errstate(all="ignore"):
        for _ in range(steps):
            g1, g2 = x1 * x1 * x1 - x2, x2 - x1
            if ascent:
                n = np.sqrt(g1 ** 2 + g2 ** 2)
                s = rho / (n + EPS) if normalize else rho
                a1, a2 = x1 + s * g1, x2 + s * g2
                g1, g2 = a1 * a1 * a1 - a2, a2 - a1
                if stable:
                    f = n / np.maximum(np.sqrt(g1 ** 2 + g2 ** 2), EPS)
                    g1, g2 = f * g1, f * g2
            x1, x2 = x1 - lr * g1, x2 - lr * g2
    return reached_minimum(x1, x2, tol).mean(1)


def straightforward_sweep(methods, rhos, lrs, n_starts, steps=1000, tol=0.05, seed=0):
    "The Figure 4 sweep with `straightforward_rates` (GD once, as in `sweep`)."
    starts = sample_starts(n_starts, seed)
    out = dict(lrs=lrs, rhos=rhos, n_starts=n_starts)
    for m in methods:
        rows = [straightforward_rates(m, lrs, r, starts, steps, tol) for r in (rhos[:1] if m == "gd" else rhos)]
        out[m] = np.array(rows * len(rhos) if m == "gd" else rows)
    return out


def compare(a, b, n):
    "Largest |difference| of two sweeps' curves in binomial standard errors, and the largest mean shift in SEs."
    worst, shift = 0., 0.
    for m in ("gd", "sam", "stablesam"):
        for i in range(len(a["rhos"])):
            p = (a[m][i] + b[m][i]) / 2
            se = np.sqrt(np.maximum(p * (1 - p), 1 / n) / n)
            d = a[m][i] - b[m][i]
            worst = max(worst, float(np.max(np.abs(d) / (np.sqrt(2) * se))))
            shift = max(shift, float(abs(d.sum()) / (np.sqrt(2) * np.sqrt((se ** 2).sum()))))
    return worst, shift


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=100, help="starts per learning rate for the reduced comparison")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the reduced comparison")
    ap.add_argument("--probe-steps", type=int, default=20, help="steps of the straightforward sweep at full array size")
    ap.add_argument("--no-full", dest="full", action="store_false", help="skip the full-size sweep")
    args = ap.parse_args()
    methods, rhos, lrs, steps = ("gd", "sam", "stablesam"), (0.05, 0.2, 0.5), paper_lrs(), 1000

    def steps_per_sweep(n): return (1 + 2 * len(rhos)) * lrs.size * n * steps   # GD once

    print(f"threads: {default_threads()}")
    t, c = time.perf_counter(), time.process_time()
    sweep(methods, rhos, lrs[:2], n_starts=4, steps=3, progress=False)   # compiles the kernel for each method
    stats = toy._sweep.stats   # one entry per dtype, with a belt per method inside
    print(f"warm-up (the float32 kernel, all methods): {time.perf_counter() - t:.1f} s wall, "
          f"{time.process_time() - c:.1f} s CPU; {sum(stats.cache_misses.values())} compiled, "
          f"{sum(stats.cache_hits.values())} loaded from numba's cache in __pycache__")

    if args.full:
        t, c = time.perf_counter(), time.process_time()
        full = sweep(methods, rhos, lrs, n_starts=10_000, steps=steps)
        t_full, c_full = time.perf_counter() - t, time.process_time() - c
        print(f"full Figure 4 (3 rho x 3 methods x 100 lrs x 10,000 starts x {steps} steps, "
              f"{steps_per_sweep(10_000):.2e} trajectory-steps with GD once): {t_full:.1f} s "
              f"({t_full / steps_per_sweep(10_000) * 1e9:.2f} ns per trajectory-step)  target < 60 s: "
              f"{'met' if t_full < 60 else 'MISSED'}")
        print(f"  CPU time of this process: {c_full:.1f} s, i.e. about {c_full / default_threads():.1f} s wall on "
              f"{default_threads()} idle cores (the wall time above includes waiting for a shared CPU)")
        at = np.log([1e-3, 1e-2, 0.1, 0.3])
        print("  rates at lr = 0.001, 0.01, 0.1, 0.3:",
              {f"{m} rho={r:g}": np.round(np.interp(at, np.log(lrs), full[m][i]), 3).tolist()
               for m in methods for i, r in enumerate(rhos) if m != "gd" or i == 0})

    n, probe = args.starts, args.probe_steps
    wall = {"fast": [], "plain": [], "probe": []}
    cpu = {"fast": [], "plain": [], "probe": []}
    for k in range(args.rounds):
        for name in ("fast", "plain", "probe"):
            t, c = time.perf_counter(), time.process_time()
            if name == "fast": fast = sweep(methods, rhos, lrs, n_starts=n, steps=steps, progress=False)
            elif name == "plain": plain = straightforward_sweep(methods, rhos, lrs, n, steps)
            else: straightforward_sweep(methods, rhos, lrs, 10_000, probe)   # full-size arrays, a few steps
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        print(f"round {k + 1}: reduced sweep ({n} starts, {steps_per_sweep(n):.2e} trajectory-steps): "
              f"fast {wall['fast'][-1]:.2f} s (CPU {cpu['fast'][-1]:.2f} s), "
              f"straightforward float64 {wall['plain'][-1]:.2f} s (CPU {cpu['plain'][-1]:.2f} s); "
              f"straightforward at full array size, {probe} steps: {wall['probe'][-1]:.2f} s "
              f"(CPU {cpu['probe'][-1]:.2f} s)")
    tf, tp = min(wall["fast"]), min(wall["plain"])
    cf, cp = min(cpu["fast"]), min(cpu["plain"])
    print(f"speedup at the reduced size (same work): wall {tp / tf:.1f}x, CPU time {cp / cf:.1f}x "
          f"(the fast sweep uses {default_threads()} threads)")
    if args.full:
        scale = steps / probe   # the straightforward sweep costs the same every step: it drops nothing
        est_wall, est_cpu = min(wall["probe"]) * scale, min(cpu["probe"]) * scale
        print(f"straightforward float64 at full size (from {probe} steps at full array size): "
              f"about {est_wall / 60:.1f} min wall, {est_cpu / 60:.1f} min CPU")
        print(f"speedup at full size: wall {est_wall / t_full:.1f}x, CPU time {est_cpu / c_full:.1f}x  target >= 20x: "
              f"{'met' if est_wall / t_full >= 20 else 'MISSED'}")
    worst, shift = compare(fast, plain, n)
    verdict = 'same within sampling noise' if worst < 4 and shift < 3 else 'DIFFERENT'
    print(f"agreement fast (float32) vs straightforward (float64), {n} starts: largest per-lr difference "
          f"{worst:.2f} SE, largest per-curve mean shift {shift:.2f} SE -> {verdict}")


if __name__ == "__main__":
    main()
