"""Sweep records' `nonfinite` field: the old list form is migrated once (tools/migrate_nonfinite.py), then refused."""
import importlib.util
import json
from pathlib import Path

import pytest

from stablesam.robustness import lr_sweep, read_sweep_records

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ('results/lr_sweep/mnist-10k-3ep', 'results/efficient/lr-sweep-fcn-10k')
OLD = '{"epoch": 2, "train_loss": null, "test_loss": null, "nonfinite": ["train_loss", "test_loss"], "lr": 0.3}'
LINES = ['{"epoch": 1, "train_loss": 0.5}', OLD, '{"epoch": 3, "train_loss": null, "nonfinite": {"train_loss": "inf"}}']


def migrate_module():
    spec = importlib.util.spec_from_file_location('migrate_nonfinite', ROOT / 'tools' / 'migrate_nonfinite.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_rewrites_the_list_form_once(tmp_path):
    path = tmp_path / 'records.jsonl'
    path.write_text('\n'.join(LINES) + '\n')
    migrate = migrate_module().migrate
    assert migrate(path) == 1
    lines = path.read_text().split('\n')
    assert (lines[0], lines[2], lines[3]) == (LINES[0], LINES[2], '')  # the other lines byte for byte
    assert json.loads(lines[1]) == dict(epoch=2, train_loss=None, test_loss=None,
                                        nonfinite=dict(train_loss='nonfinite', test_loss='nonfinite'), lr=0.3)
    text = path.read_text()
    assert migrate(path) == 0 and path.read_text() == text  # idempotent
    assert [r['epoch'] for r in read_sweep_records(path)] == [1, 2, 3]


def test_old_form_is_refused_naming_the_file(tmp_path):
    (tmp_path / 'records.jsonl').write_text('\n'.join(LINES) + '\n')
    with pytest.raises(ValueError, match=r"records.jsonl, record 2: 'nonfinite' is \['train_loss', 'test_loss'\]"):
        read_sweep_records(tmp_path / 'records.jsonl')
    with pytest.raises(ValueError, match='tools/migrate_nonfinite.py .*records.jsonl'):  # before any data or run
        lr_sweep(tmp_path, tmp_path / 'no-data', models=('fcn',), lrs=(0.1,), seeds=(0,), progress=False)


@pytest.mark.parametrize('sweep', SWEEPS)
def test_committed_sweep_records_are_in_the_current_form(sweep):
    records = read_sweep_records(ROOT / sweep / 'records.jsonl')
    named = [v for r in records for v in (r.get('nonfinite') or {}).values()]
    assert named and set(named) <= {'nan', 'inf', '-inf', 'nonfinite'}
