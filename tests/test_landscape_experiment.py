"""The real-data Figures 1-3 sweep: records, resume, verdict numbers, the committed results folder."""
import json
from pathlib import Path

import numpy as np
import pytest

from stablesam.landscape_experiment import (_epoch_list, _quadratic_model, epoch_ranges, format_landscape_summary,
                                            landscape_config, landscape_experiment, landscape_runs, landscape_summary,
                                            parabola_fit)
from stablesam.runs import read_jsonl

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data'
RESULTS = ROOT / 'results' / 'landscape' / 'fcn-mnist-10k'
needs_mnist = pytest.mark.skipif(not (DATA / 'MNIST' / 'raw').exists(), reason=f'real MNIST not found at {DATA}')


def strict(c):
    raise ValueError(f'not strict JSON: {c}')


def test_parabola_fit_exact_and_not():
    a = np.linspace(-0.5, 0.5, 21)
    fit = parabola_fit(a, 1 + 0.3 * a + 2.5 * a ** 2)
    assert fit['curvature'] == pytest.approx(5.0) and fit['r2'] == pytest.approx(1.0) and fit['max_rel_residual'] < 1e-9
    bent = parabola_fit(a, np.abs(a))   # a kink: a parabola leaves a visible residual
    assert bent['r2'] < 0.97 and bent['max_rel_residual'] > 0.05
    assert parabola_fit(a, np.r_[np.ones(20), np.nan])['r2'] is None


def test_quadratic_model_is_exact_on_a_quadratic():
    a = np.linspace(-0.5, 0.5, 21).astype(np.float32)
    f = 0.2 + 0.3 * a + 0.5 * 4.0 * a.astype(float) ** 2
    np.testing.assert_allclose(_quadratic_model(a, f, 4.0), f, atol=1e-6)


def test_summary_counts_steps_per_range():
    def rec(seed, epoch, ratio, align):
        return dict(optimizer='sam', rho=0.05, seed=seed, epoch=epoch, norm_ratio=ratio, alignment=align,
                    cosine=[0.5] * len(ratio))
    records = [rec(0, 1, [0.5, 1.5], [1, -1]), rec(0, 2, [0.5, 0.5], [1, 1]), rec(1, 1, [2., 2.], [-1, -1]),
               rec(1, 2, [.9, .9], [1, 1]),
               dict(optimizer='sgd', rho=None, seed=0, epoch=2, hessian=dict(eigenvalue=2.0, curvature=1.0, r2=0.99))]
    s = landscape_summary(records, ranges=[(1, 1), (2, 2), (1, 2)])
    first, second, whole = s['steps']
    assert first['ratio_below_1'] == dict(mean=0.25, min=0.0, max=0.5, n=2) and first['alignment_negative_steps'] == 3
    assert second['ratio_below_1']['mean'] == 1.0 and second['alignment_positive']['min'] == 1.0
    assert whole['steps'] == 8 and whole['ratio_below_1']['mean'] == pytest.approx((0.75 + 0.5) / 2)
    (p,) = s['probes']
    assert p['curvature_over_eig']['mean'] == 0.5 and p['r2']['mean'] == 0.99
    assert '| SAM, ρ=0.05 | 1-2 | 8 | 62.5 (50.0-75.0) |' in format_landscape_summary(s)
    v = {(x['statement'], x['run']): x for x in s['verdicts']}
    ratio, align = v[('Figure 1: ratio < 1', 'SAM, ρ=0.05')], v[('Figure 3: alignment > 0', 'SAM, ρ=0.05')]
    assert (ratio['share'], ratio['exceptions'], ratio['where']) == (5 / 8, 3, '1')
    assert (align['share'], align['exceptions'], align['where']) == (5 / 8, 3, '1')
    par = v[('Figure 2: parabola (R² ≥ 0.99)', 'SGD')]
    assert (par['share'], par['exceptions'], par['where']) == (1.0, 0, 'none')
    assert _epoch_list([1, 2, 3, 7, 9, 10]) == '1-3, 7, 9-10' and _epoch_list([]) == 'none'
    assert epoch_ranges(20) == [(1, 5), (6, 10), (11, 15), (16, 20), (1, 20)]
    assert landscape_runs((0.1,), (0, 1)) == [('sgd', None, 0), ('sam', 0.1, 0), ('sgd', None, 1), ('sam', 0.1, 1)]


@needs_mnist
@pytest.mark.filterwarnings('ignore:top_hessian_eig')
def counting(monkeypatch):
    """The (optimizer, rho, seed) of every run the sweep trains from now on."""
    import stablesam.landscape_experiment as lx
    trained, real = [], lx.train_landscape_run
    def train(spec, run):
        trained.append((spec['optimizer'], spec['rho'], spec['seed']))
        return real(spec, run)
    monkeypatch.setattr(lx, 'train_landscape_run', train)
    return trained


def test_sweep_resumes_to_the_same_records(tmp_path, monkeypatch):
    """Killed mid-run (its records cut, the last line half-written): the second call retrains only that run."""
    cfg = landscape_config(data_root=str(DATA), train_subset=256, test_subset=256, epochs=2)
    kw = dict(rhos=(0.1,), seeds=(0, 1), probe_epochs=(2,), n_probe=64, probe_iters=30)
    full = landscape_experiment(tmp_path / 'full', cfg, progress=False, **kw)
    written = (tmp_path / 'full' / 'records.jsonl').read_text().splitlines()
    assert [json.loads(l, parse_constant=strict) for l in written] == full
    assert [(r['optimizer'], r['seed'], r['epoch']) for r in full] == [(o, s, e) for s in (0, 1)
                                                                       for o in ('sgd', 'sam') for e in (1, 2)]
    part = tmp_path / 'part'
    part.mkdir()
    (part / 'config.json').write_text((tmp_path / 'full' / 'config.json').read_text())
    lines = (tmp_path / 'full' / 'records.jsonl').read_text().splitlines()
    (part / 'records.jsonl').write_text('\n'.join(lines[:-1]) + '\n' + lines[-1][:30])
    trained = counting(monkeypatch)
    assert landscape_experiment(part, cfg, progress=False, **kw) == full
    assert trained == [('sam', 0.1, 1)]
    trained.clear()
    (part / 'records.jsonl').write_text('\n'.join(lines[:-3]) + '\n')   # killed during seed 1's SGD run, then SAM's
    assert landscape_experiment(part, cfg, progress=False, **kw) == full
    assert trained == [('sgd', None, 1), ('sam', 0.1, 1)]
    assert read_jsonl(part / 'records.jsonl') == full
    cfg_json = json.loads((part / 'config.json').read_text())
    assert cfg_json['n_train'] == 256 and cfg_json['n_test'] == 256 and cfg_json['seeds'] == [0, 1]
    assert cfg_json['wall_time_s'] > 0 and cfg_json['command'][0] == 'stablesam-landscape'


@pytest.mark.skipif(not (RESULTS / 'records.jsonl').exists(), reason='no committed records')
def test_committed_results_are_complete_and_strict():
    cfg = json.loads((RESULTS / 'config.json').read_text())
    records = [json.loads(l, parse_constant=strict) for l in (RESULTS / 'records.jsonl').read_text().splitlines()]
    runs = {tuple(d['run']) for d in cfg['done']}   # the runs the runner recorded as finished
    done = {(r['optimizer'], r['rho'], r['seed']) for r in records}
    assert done == runs and cfg['key'] == ['optimizer', 'rho', 'seed']
    if len(runs) == cfg['runs']:   # a finished sweep: every run has every epoch, the summary and the figure are there
        epochs = cfg['settings']['train']['epochs']
        for key in runs:
            epochs_done = sorted(r['epoch'] for r in records if (r['optimizer'], r['rho'], r['seed']) == key)
            assert epochs_done == list(range(epochs + 1))
        assert (RESULTS / 'summary.md').exists() and (RESULTS / 'landscape.png').stat().st_size > 10_000
        for k in ('n_train', 'n_test', 'seeds', 'wall_time_s', 'machine', 'command'):
            assert cfg[k], k


@needs_mnist
def test_sweep_killed_by_a_signal_resumes(tmp_path, monkeypatch):
    """A sweep killed (SIGKILL) once its first run is written continues to the records of an uninterrupted sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time
    settings = dict(data_root=str(DATA), train_subset=256, test_subset=256, epochs=2)
    kw = dict(rhos=(0.1, 0.2), seeds=(0,), probe_epochs=(2,), n_probe=64, probe_iters=30)
    out = tmp_path / 'killed'
    code = ("import torch, warnings; torch.set_num_threads(1); warnings.simplefilter('ignore')\n"
            "from stablesam.landscape_experiment import landscape_config, landscape_experiment\n"
            f"landscape_experiment({str(out)!r}, landscape_config(**{settings!r}), progress=False, **{kw!r})\n")
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, '-c', code], env=env)
    t0 = time.time()
    def one_run_recorded():
        """The runner has written a finished run to records.jsonl and listed it in config.json."""
        try: return bool(json.loads((out / 'config.json').read_text()).get('done'))
        except (OSError, ValueError): return False   # not yet written, or caught mid-rename
    while not one_run_recorded():
        assert proc.poll() is None and time.time() - t0 < 300, 'the sweep ended before it could be killed'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_jsonl(out / 'records.jsonl')) < 6   # killed before the last run was written
    trained = counting(monkeypatch)
    resumed = landscape_experiment(out, landscape_config(**settings), progress=False, **kw)
    assert 1 <= len(trained) < 3   # the finished runs are not trained again
    assert resumed == landscape_experiment(tmp_path / 'whole', landscape_config(**settings), progress=False, **kw)
