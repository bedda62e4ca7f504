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


def fails_on_two_while_one_runs(spec, run):
    """`fails_on_two`, except that x == 2 raises only once the run with x == 1 has started (file `spec['started']`)."""
    import time
    from pathlib import Path
    started = Path(spec['started'])
    if spec['x'] == 1: started.touch()
    if spec['x'] == 2:
        t0 = time.time()
        while not started.exists() and time.time() - t0 < 120: time.sleep(0.05)
    return fails_on_two(spec, run)


def fails_on_two(spec, run):
    """`squares`, except that the run with x == 2 raises; the run with x == 1 takes long enough to be running then."""
    import time
    if spec['x'] == 2: raise ValueError('bad spec x=2')
    if spec['x'] == 1: time.sleep(60)
    return squares(spec, run)



def same_records(a, b, rel=1e-6):
    """Two record lists equal: labels exactly, measurements to `rel`."""
    import pytest
    assert len(a) == len(b)
    for r, q in zip(a, b):
        assert r.keys() == q.keys()
        for k, v in r.items():
            assert (v == pytest.approx(q[k], rel=rel, abs=1e-9)) if isinstance(v, float) else v == q[k], k


# ---- the chaos tests' checkpoint-write marks, in every process of a command (spawned workers, submitit jobs) ----

MARKS = 'STABLESAM_CHAOS_MARKS'            # the folder where each checkpoint write leaves a mark
SLOW_SAVE = 'STABLESAM_CHAOS_SLOW_SAVE'    # seconds each write waits half written


def mark_checkpoint_writes(marks, slow_save=0.0):
    """Patch torch.save: write half the file, leave mark `marks/save<n>-<pid>` (this process's nth write), wait
    `slow_save` seconds, write the rest."""
    import io
    import time
    from pathlib import Path
    import torch
    save, count = torch.save, [0]

    def marked_save(obj, f, *args, **kwargs):
        """torch.save with a mark in the middle of the write."""
        count[0] += 1
        buf = io.BytesIO()
        save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(f, 'wb') as out:
            out.write(data[:len(data) // 2])
            out.flush()
            (Path(marks) / f'save{count[0]}-{os.getpid()}').touch()
            if slow_save: time.sleep(slow_save)
            out.write(data[len(data) // 2:])
    torch.save = marked_save


def mark_checkpoint_writes_from_env():
    """`mark_checkpoint_writes` as the environment says (nothing without it); where torch is not imported yet, once it
    is (a spawned worker imports it to unpickle its train function)."""
    import importlib.abc
    import importlib.util
    import sys
    if not os.environ.get(MARKS): return
    args = os.environ[MARKS], float(os.environ.get(SLOW_SAVE) or 0)
    if 'torch' in sys.modules: return mark_checkpoint_writes(*args)

    class AfterTorch(importlib.abc.MetaPathFinder):
        """Finds torch as usual; marks the checkpoint writes once torch has been imported."""
        def find_spec(self, name, path=None, target=None):
            if name != 'torch': return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            load = spec.loader.exec_module

            def exec_module(module):
                """Import torch, then patch its save."""
                load(module)
                mark_checkpoint_writes(*args)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, AfterTorch())


def chaos_environment(folder, marks, slow_save):
    """Environment variables under which every Python process started marks its checkpoint writes in `marks`: a
    `sitecustomize` in `folder` (written here) calls `mark_checkpoint_writes_from_env` at start-up."""
    from pathlib import Path
    here = Path(__file__).resolve().parent
    (Path(folder) / 'sitecustomize.py').write_text(
        'import experiment_helpers\nexperiment_helpers.mark_checkpoint_writes_from_env()\n')
    path = os.pathsep.join([str(folder), str(here), *filter(None, [os.environ.get('PYTHONPATH')])])
    return {MARKS: str(marks), SLOW_SAVE: str(slow_save), 'PYTHONPATH': path}
