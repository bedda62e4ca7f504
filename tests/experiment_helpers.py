"""Train functions for the experiment-runner tests: importable by name, as the processes and slurm executors need."""
import os
import signal


def squares(spec, run):
    """Records `x**2 * epoch` per epoch of a toy run."""
    records = [dict(x=spec['x'], epoch=e, y=spec['x'] ** 2 * e) for e in range(1, spec['epochs'] + 1)]
    for r in records: run.report(r)
    return records


def dies_on_three(spec, run):
    """`squares`, except that the run with x == 3 kills its own process (as the out-of-memory killer would)."""
    if spec['x'] == 3: os.kill(os.getpid(), signal.SIGKILL)
    return squares(spec, run)


def fails_on_two(spec, run):
    """`squares`, except that the run with x == 2 raises; the run with x == 1 takes long enough to be running then."""
    import time
    if spec['x'] == 2: raise ValueError('bad spec x=2')
    if spec['x'] == 1: time.sleep(60)
    return squares(spec, run)

