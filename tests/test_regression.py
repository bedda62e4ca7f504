"""Each experiment's quick configuration gives the records the code before the 0.3 runner gave (tests/regression/)."""
import json
import math
from pathlib import Path

import pytest

from stablesam.data import write_fake_mnist
from stablesam.runs import read_jsonl
from stablesam.train import STEP_KEYS

pytestmark = pytest.mark.usefixtures('one_thread')
FIXTURES = Path(__file__).parent / 'regression'
ADDED = {*STEP_KEYS, 'init_train_loss'}   # record fields added after the fixtures were written


def assert_same_records(got, want, rel=1e-9, path='records'):
    """Equal nested records, floats to `rel` (the fixtures were written with one torch thread)."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-12), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        # the step statistics of issue 21 (and the initial training loss) came after the fixtures: added, never changed
        assert isinstance(got, dict) and set(want) <= set(got) and set(got) - set(want) <= ADDED, \
            f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want: assert_same_records(got[k], want[k], rel, f'{path}.{k}')
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)): assert_same_records(g, w, rel, f'{path}[{i}]')
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def fixture(name):
    return json.loads((FIXTURES / f'{name}.json').read_text())


def assert_same_summary(path, name, root, tmp):
    """The summary at `path` equals the fixture's, temporary folders aside (the fixture's were TMP/data and TMP)."""
    got = Path(path).read_text().replace(str(root), 'TMP/data').replace(str(tmp), 'TMP')
    assert got == (FIXTURES / f'{name}.summary.md').read_text()


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    """The generated MNIST-format files the fixtures were made on."""
    root = tmp_path_factory.mktemp('data')
    write_fake_mnist(root, 160, 64)
    return root


def test_stability(root, tmp_path):
    from stablesam.stability import main
    assert main(['--data-root', str(root), '--epochs', '2', '--seeds', '0', '1', '--subset', '48', '--batch-size', '16',
                 '--device', 'cpu', '--no-download', '--quiet', '--out', str(tmp_path / 'st'),
                 '--optimizers', 'sgd', 'sam', 'stablesam']) == 0
    assert_same_records(read_jsonl(tmp_path / 'st' / 'records.jsonl'), fixture('stability'))
    assert_same_summary(tmp_path / 'st' / 'summary.md', 'stability', root, tmp_path)


def test_lr_sweep(root, tmp_path):
    from stablesam.robustness import main
    out = tmp_path / 'lr'
    assert main(['lr-sweep', '--data-root', str(root), '--n-train', '64', '--epochs', '2', '--seeds', '0', '1',
                 '--lrs', '0.05', '3.0', '--models', 'fcn', '--batch-size', '16', '--device', 'cpu', '--quiet',
                 '--out', str(out)]) == 0
    assert_same_records(read_jsonl(out / 'records.jsonl'), fixture('lr_sweep'))
    assert_same_summary(out / 'summary.md', 'lr_sweep', root, tmp_path)


def test_label_noise(root, tmp_path):
    from stablesam.robustness import main
    out = tmp_path / 'ln'
    assert main(['label-noise', '--data-root', str(root), '--n-train', '96', '--n-val', '32', '--epochs', '2',
                 '--seeds', '0', '1', '--noises', '0.4', '--batch-size', '16', '--device', 'cpu', '--quiet',
                 '--out', str(out)]) == 0
    assert_same_records(read_jsonl(out / 'records.jsonl'), fixture('label_noise'))
    assert_same_summary(out / 'summary.md', 'label_noise', root, tmp_path)


def test_comparison(tmp_path):
    from stablesam.reproduce import run_comparison
    run_comparison(tmp_path / 'cmp', epochs=2, n_seeds=2, progress=False)
    assert_same_records(read_jsonl(tmp_path / 'cmp' / 'digits-quick' / 'records.jsonl'), fixture('comparison'))
    assert_same_summary(tmp_path / 'cmp' / 'digits-quick' / 'summary.md', 'comparison', tmp_path, tmp_path)


def test_landscape(root, tmp_path):
    """Records as before; the summary too, but for its reproduce line (now the stablesam-landscape command)."""
    from stablesam.landscape_experiment import landscape_config, landscape_experiment, write_landscape_report
    cfg = landscape_config(data_root=str(root), train_subset=64, epochs=2, batch_size=16, device='cpu')
    landscape_experiment(tmp_path / 'ls', cfg, rhos=(0.05,), seeds=(0,), probe_epochs=(0, 2), n_probe=32, probe_iters=5,
                         progress=False)
    assert_same_records(read_jsonl(tmp_path / 'ls' / 'records.jsonl'), fixture('landscape'))
    write_landscape_report(tmp_path / 'ls')
    got = (tmp_path / 'ls' / 'summary.md').read_text().splitlines()
    want = (FIXTURES / 'landscape.summary.md').read_text().splitlines()
    reproduce = [i for i, line in enumerate(want) if line.startswith('Reproduce')]
    assert len(got) == len(want) and reproduce
    for i, (g, w) in enumerate(zip(got, want)):
        if i in reproduce: assert g.startswith('Reproduce (from the repository root): `stablesam-landscape --out ')
        elif i == 2: assert g.split('wall time')[0] == w.split('wall time')[0]   # the wall time differs
        else: assert g == w


def test_train_sweep(capsys):
    from stablesam.cli import main
    assert main(['--sweep', 'table4', '--seeds', '0']) == 0
    assert capsys.readouterr().out.splitlines() == fixture('train_sweep')
