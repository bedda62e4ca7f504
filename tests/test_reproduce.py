"""The main job, `stablesam-reproduce`, end to end and offline, as a new user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stablesam.data import write_fake_mnist
from stablesam.reproduce import estimate, mnist_present, plan


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


def test_quick_job_writes_what_the_report_links(quick_job):
    _, out = quick_job
    report = (out / 'report.md').read_text()
    for name in ('audit.md', 'figure4.png', 'comparison.png'):
        assert (out / name).stat().st_size > 0, name
        assert f'({name})' in report, f'report.md does not link {name}'
    assert (out / 'figure4.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'failed' not in report


def test_quick_job_audit_table_has_every_statement(quick_job):
    _, out = quick_job
    audit = (out / 'audit.md').read_text()
    for statement in ('Lemma 5', 'Theorem 8', 'Theorem 10', 'Theorem 15', 'Theorem 17', 'Theorem 18', 'Remark 19', 'Table 1'):
        assert f'| {statement} |' in audit, statement


def test_quick_job_run_folders(quick_job):
    _, out = quick_job
    for opt in ('sgd', 'sam', 'stablesam'):
        run = out / 'runs' / opt
        cfg = json.loads((run / 'config.json').read_text())
        assert cfg['optimizer'] == opt and cfg['label_noise'] == 0.4
        metrics = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
        assert len(metrics) == cfg['epochs']
        assert all(0 <= m['test_acc'] <= 1 for m in metrics)
    stable = [json.loads(line) for line in (out / 'runs' / 'stablesam' / 'metrics.jsonl').read_text().splitlines()]
    assert all('renorm_factor' in m for m in stable)


def test_missing_out_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, '-c', 'from stablesam.reproduce import main; raise SystemExit(main())',
                           '--quick'], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and '--out' in proc.stderr


def test_full_plan_adds_stability_only_with_mnist(tmp_path):
    assert [n for n, _ in plan(quick=True, data_root=tmp_path)] == ['audit', 'toy', 'compare']
    assert [n for n, _ in plan(quick=False, data_root=tmp_path)] == ['audit', 'toy', 'compare']
    write_fake_mnist(tmp_path, n_train=10, n_test=10)
    assert mnist_present(tmp_path)
    full = plan(quick=False, data_root=tmp_path)
    assert [n for n, _ in full] == ['audit', 'toy', 'compare', 'stability']
    assert estimate(full) > estimate(plan(quick=True, data_root=tmp_path))
