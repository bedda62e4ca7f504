"""The main job, `stablesam-reproduce`, end to end and offline, as a new user runs it: real digits, several seeds."""
import json
import subprocess
import sys

import pytest

from stablesam.data import write_fake_mnist
from stablesam.reproduce import (SIZES, compare_config, estimate, mnist_present, plan, run_comparison,
                                 run_stability_figure5)

QUICK = SIZES['quick']['compare']
OPTIMIZERS = ('SGD', 'SAM', 'StableSAM')


def _strict(line):
    """Parse one JSON line, refusing NaN and Infinity (not JSON)."""
    def refuse(name): raise ValueError(f'non-standard JSON constant {name}')
    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope='module')
def quick_job(tmp_path_factory):
    """Run `stablesam-reproduce --quick` once in a subprocess (no network needed)."""
    out = tmp_path_factory.mktemp('job') / 'out'
    proc = subprocess.run([sys.executable, '-c', 'from stablesam.reproduce import main; raise SystemExit(main())',
                           '--quick', '--out', str(out)], capture_output=True, text=True, timeout=900)
    return proc, out


def test_quick_job_succeeds(quick_job):
    proc, out = quick_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'expected about' in proc.stdout  # says how long before it starts
    assert f'wrote {out}' in proc.stdout    # final summary of what it wrote
    assert proc.stdout.count('| StableSAM |') == 1  # prints the verdict table once


def test_quick_job_writes_what_the_report_links(quick_job):
    _, out = quick_job
    report = (out / 'report.md').read_text()
    for name in ('audit.md', 'figure4.png', 'digits-quick/comparison.png', 'digits-quick/'):
        assert (out / name).exists(), name
        assert f'({name})' in report, f'report.md does not link {name}'
    for png in ('figure4.png', 'digits-quick/comparison.png'):
        assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'failed' not in report


def test_quick_job_reports_mean_and_spread_over_seeds_once(quick_job):
    _, out = quick_job
    report = (out / 'report.md').read_text()
    summary = (out / 'digits-quick' / 'summary.md').read_text().strip()
    seeds = ', '.join(map(str, range(QUICK['n_seeds'])))
    assert f"over {QUICK['n_seeds']} seeds ({seeds})" in summary and '40% of the training labels randomised' in summary
    assert report.count(summary) == 1                     # the table is in the report, once
    assert report.count('| optimizer |') == 1 and report.count('| rho |') == 1  # no table twice
    for opt in OPTIMIZERS:
        row = next(line for line in summary.splitlines() if line.startswith(f'| {opt} |'))
        assert row.count('±') == 3 and row.count('[') == 3, row  # mean ± std [min, max] per column
    assert '± 0.0 ' not in summary and '± 0.00' not in report   # several seeds differ
    assert 'StableSAM - SAM' in summary and f"of {QUICK['n_seeds']} seeds" in summary


def test_quick_job_records_are_strict_json_per_run_and_epoch(quick_job):
    _, out = quick_job
    records = [_strict(line) for line in (out / 'digits-quick' / 'records.jsonl').read_text().splitlines()]
    assert len(records) == 3 * QUICK['n_seeds'] * QUICK['epochs']
    runs = {(r['optimizer'], r['seed']) for r in records}
    assert runs == {(o, s) for o in ('sgd', 'sam', 'stablesam') for s in range(QUICK['n_seeds'])}
    assert all(r['dataset'] == 'digits' and r['model'] == 'fcn' and r['label_noise'] == 0.4 for r in records)
    assert all(0 <= r['test_acc'] <= 1 for r in records)
    finals = [r for r in records if r['epoch'] == QUICK['epochs']]
    assert min(r['test_acc'] for r in finals) > 0.8       # real digits are learnt despite 40% noisy labels
    assert max(r['train_acc'] for r in finals) < 0.7      # ... and the noise is not memorised (60% clean)
    assert not any(r['diverged'] for r in records)


def test_quick_job_config_says_what_ran_and_where(quick_job):
    _, out = quick_job
    cfg = json.loads((out / 'digits-quick' / 'config.json').read_text())
    assert cfg['command'] == ['stablesam-reproduce', '--quick', '--seed', '0', '--out', str(out)]
    assert (cfg['n_train'], cfg['n_test'], cfg['seeds']) == (1297, 500, list(range(QUICK['n_seeds'])))
    train = cfg['settings']['train']
    assert train['label_noise'] == 0.4 and train['epochs'] == QUICK['epochs']
    assert cfg['wall_time_s'] > 0 and 'cores' in cfg['machine'] and len(cfg['done']) == 3 * QUICK['n_seeds']


def test_quick_job_audit_table_has_every_statement(quick_job):
    _, out = quick_job
    audit = (out / 'audit.md').read_text()
    for statement in ('Lemma 5', 'Theorem 8', 'Theorem 10', 'Theorem 15', 'Theorem 17', 'Theorem 18', 'Remark 19',
                      'Table 1'):
        assert f'| {statement} |' in audit, statement


def test_comparison_seed_single_seed_and_resume(tmp_path, one_thread):
    """The seed reaches the runs; one seed shows no spread; a rerun resumes and trains nothing."""
    recs = run_comparison(tmp_path, setting='one', epochs=1, n_seeds=1, seed=3)
    assert {r['seed'] for r in recs} == {3} and len(recs) == 3
    summary = (tmp_path / 'one' / 'summary.md').read_text()
    assert 'one seed (3), so no spread' in summary and '±' not in summary
    before = (tmp_path / 'one' / 'records.jsonl').read_text()
    wall = json.loads((tmp_path / 'one' / 'config.json').read_text())['wall_time_s']
    run_comparison(tmp_path, setting='one', epochs=1, n_seeds=1, seed=3)
    assert (tmp_path / 'one' / 'records.jsonl').read_text() == before
    assert json.loads((tmp_path / 'one' / 'config.json').read_text())['wall_time_s'] < wall + 5


def test_shared_data_gives_the_trainers_own_records(one_thread):
    """The comparison loads each seed's noisy digits once for three optimizers: the same records as a Trainer's own."""
    import dataclasses
    from stablesam.data import get_datasets, in_memory
    from stablesam.train import Trainer, comparable
    cfg = compare_config('stablesam', seed=2, epochs=2)
    own = comparable(Trainer(cfg).fit())
    data = get_datasets('digits', 'data', label_noise=0.4, seed=2, augment=False)
    data = dataclasses.replace(data, train=in_memory(data.train), test=in_memory(data.test))
    assert comparable(Trainer(cfg, data=data).fit()) == own


def test_missing_out_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, '-c', 'from stablesam.reproduce import main; raise SystemExit(main())',
                           '--quick'], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and '--out' in proc.stderr


def test_full_plan_compares_on_mnist_and_adds_stability_only_with_mnist(tmp_path):
    assert [n for n, _ in plan(quick=True, data_root=tmp_path)] == ['audit', 'toy', 'compare']
    assert dict(plan(quick=True, data_root=tmp_path))['compare']['dataset'] == 'digits'
    full = dict(plan(quick=False, data_root=tmp_path))
    assert list(full) == ['audit', 'toy', 'compare'] and full['compare']['dataset'] == 'mnist'
    write_fake_mnist(tmp_path, n_train=10, n_test=10)
    assert mnist_present(tmp_path)
    full = plan(quick=False, data_root=tmp_path)
    assert [n for n, _ in full] == ['audit', 'toy', 'compare', 'stability']
    assert estimate(full) > estimate(plan(quick=True, data_root=tmp_path))
    assert [n for n, _ in plan(quick=False, data_root=tmp_path, stages=('toy', 'stability'))] == ['toy', 'stability']


def test_full_job_stages_run_on_mnist_files(tmp_path, one_thread):
    """The full job's MNIST comparison and stability stages, at toy size on generated MNIST files (a test of the code
    path only: generated data is never a result)."""
    write_fake_mnist(tmp_path / 'data', n_train=60, n_test=30)
    recs = run_comparison(tmp_path, setting='mnist-tiny', dataset='mnist', data_root=tmp_path / 'data', epochs=1,
                          n_seeds=1, seed=4, progress=False)
    assert {(r['dataset'], r['seed']) for r in recs} == {('mnist', 4)} and len(recs) == 3
    assert json.loads((tmp_path / 'mnist-tiny' / 'config.json').read_text())['n_train'] == 60
    recs = run_stability_figure5(tmp_path, tmp_path / 'data', seed=5, n_seeds=1, epochs=1, subset=20, command=['x'])
    assert {r['seed'] for r in recs} == {5} and {r['optimizer'] for r in recs} == {'sgd', 'sam', 'stablesam'}
    cfg = json.loads((tmp_path / 'stability' / 'config.json').read_text())
    assert (cfg['n_train'], cfg['seeds'], cfg['command']) == (19, [5], ['x'])
    assert sorted(p.name for p in (tmp_path / 'stability').iterdir()) == ['config.json', 'records.jsonl', 'runs',
                                                                         'stability.png', 'summary.md']
