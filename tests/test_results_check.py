"""`stablesam-results check` on copies of committed results: passes on them, fails naming what was tampered with."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stablesam.results_check import check_results

RESULTS = Path(__file__).resolve().parents[1] / 'results'
FOLDERS = ('stability/lenet-mnist-3k-constant', 'main_job')   # a stability experiment; the main job (report.md)


@pytest.fixture
def results(tmp_path):
    """A copy of some committed results folders (the same relative layout)."""
    for name in FOLDERS:
        shutil.copytree(RESULTS / name, tmp_path / name, ignore=shutil.ignore_patterns('runs', 'slurm', '*.png'))
    return tmp_path


def check_cli(root) -> subprocess.CompletedProcess:
    """`stablesam-results check ROOT` as a user runs it."""
    return subprocess.run([sys.executable, '-c', 'import sys; from stablesam.results import main; sys.exit(main())',
                           'check', str(root)], capture_output=True, text=True, timeout=300)


def test_committed_copies_check_out(results):
    assert check_results(results) == []
    done = check_cli(results)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'all check out' in done.stdout


def test_tampered_summary_is_named_with_its_first_differing_line(results):
    path = results / 'stability/lenet-mnist-3k-constant/summary.md'
    lines = path.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith('| StableSAM'))
    lines[n] = lines[n].replace('0.', '0.1', 1)   # one number nudged
    path.write_text('\n'.join(lines) + '\n')
    done = check_cli(results)
    assert done.returncode == 1
    assert f"{path}: line {n + 1} differs from what its records give" in done.stdout
    assert f"committed: {lines[n]}" in done.stdout


def test_tampered_report_is_named(results):
    path = results / 'main_job/report.md'
    path.write_text(path.read_text().replace('32 holds', '33 holds'))
    problems = check_results(results)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: line 7 differs")


def test_a_lost_record_and_a_lost_run_fail(results):
    folder = results / 'stability/lenet-mnist-3k-constant'
    lines = (folder / 'records.jsonl').read_text().splitlines()
    dropped = json.loads(lines[5])
    (folder / 'records.jsonl').write_text('\n'.join(lines[:5] + lines[6:]) + '\n')
    problems = check_results(results)
    run = f"optimizer={dropped['optimizer']},seed={dropped['seed']}"
    assert f"{folder / 'records.jsonl'}: run {run} has 60 of its 61 records" in problems
    assert f"{folder / 'records.jsonl'}: run {run} lacks epoch {dropped['epoch']}" in problems
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, runs=config['runs'] + 1)))
    assert f"{folder / 'records.jsonl'}: 9 of the 10 runs in config.json finished" in check_results(results)


def test_commands_that_are_not_argv_lists_or_not_ours_fail(results):
    path = results / 'stability/lenet-mnist-3k-constant/config.json'
    config = json.loads(path.read_text())
    path.write_text(json.dumps(dict(config, command='python -c "train()"')))
    assert check_results(results) == [f"{path}: `command` is not an argv list: 'python -c \"train()\"'"]
    path.write_text(json.dumps(dict(config, command=['/tmp/rt.py', '--out', 'x'])))
    assert check_results(results) == [f"{path}: made by '/tmp/rt.py', which is no command of this repository "
                                      "(code outside it)"]
    path.write_text(json.dumps({k: v for k, v in config.items() if k != 'provenance'}))
    assert check_results(results) == [f"{path}: no provenance (commit, versions, data checksums, threads, device, "
                                      "argv)"]
