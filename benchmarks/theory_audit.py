"""Time the theory audit: `verify_all` at the CI size the notebook runs and at the full size (>= 200 per statement).

Usage: python benchmarks/theory_audit.py [--full-instances 200] [--skip-full]
Targets (2 CPU cores): CI size < 60 s, full audit < 5 min. Prints both timings and the status counts.
"""
import argparse
import collections
import time

from stablesam.theory_audit import verify_all


def timed(n_instances, seed):
    """Run the audit once; return (seconds, rows)."""
    t0 = time.perf_counter()
    rows = verify_all(n_instances=n_instances, seed=seed)
    return time.perf_counter() - t0, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--ci-instances', type=int, default=16)
    ap.add_argument('--full-instances', type=int, default=200)
    ap.add_argument('--skip-full', action='store_true')
    args = ap.parse_args()
    verify_all(n_instances=4, seed=0)          # warm-up: imports (cvxpy, scipy) and caches, not timed
    sizes = [('CI', args.ci_instances)] + ([] if args.skip_full else [('full', args.full_instances)])
    for name, n in sizes:
        secs, rows = timed(n, seed=1)
        counts = collections.Counter(r['status'] for r in rows)
        target = 60 if name == 'CI' else 300
        print(f'{name:>4} verify_all(n_instances={n}): {secs:6.1f} s (target < {target} s), {len(rows)} rows, '
              + ', '.join(f'{k} {v}' for k, v in sorted(counts.items())))


if __name__ == '__main__':
    main()
