"""Provenance in every config.json: what made a record, and a resume on other data files refused."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stablesam.config import TrainConfig
from stablesam.data import write_fake_mnist
from stablesam.results import main as results_main
from stablesam.runs import read_json
from stablesam.stability import main as stability_main
from stablesam.train import Trainer

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = Path(__file__).resolve().parents[1]
STABILITY = ['--epochs', '1', '--seeds', '0', '--optimizers', 'sgd', '--batch-size', '16', '--device', 'cpu',
             '--no-download', '--quiet']


@pytest.fixture
def data_root(tmp_path):
    write_fake_mnist(tmp_path / 'data', 64, 32)
    return tmp_path / 'data'


def sha256s(data_root):
    """The sha256 of the four MNIST files, by the path a loader given `data_root` reads them at."""
    raw = Path(data_root) / 'MNIST' / 'raw'
    return {str(raw / f): hashlib.sha256((raw / f).read_bytes()).hexdigest() for f in sorted(os.listdir(raw))}


def head_commit():
    return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def check_provenance(made, data_root, argv, threads):
    assert made['data'] == {**made['data'], **sha256s(data_root)}   # every MNIST file read, with its checksum
    assert set(sha256s(data_root)) <= set(made['data'])
    assert made['threads'] == threads and made['device'].startswith('cpu')
    assert made['argv'] == argv
    assert set(made['versions']) >= {'python', 'torch', 'torchvision', 'numpy', 'stablesam'}
    if (ROOT / '.git').exists() and Path(__import__('stablesam').__file__).resolve().is_relative_to(ROOT):
        assert made['code']['commit'] == head_commit() and isinstance(made['code']['dirty'], bool)


def test_experiment_and_training_run_configs_record_provenance(data_root, tmp_path):
    out = tmp_path / 'stability'
    assert stability_main(['--data-root', str(data_root), '--out', str(out), *STABILITY]) == 0
    config = read_json(out / 'config.json')
    check_provenance(config['provenance'], data_root, sys.argv, torch.get_num_threads())
    assert config['key'] == ['optimizer', 'seed']
    cfg = TrainConfig(dataset='mnist', data_root=str(data_root), model='fcn', epochs=1, batch_size=16, device='cpu',
                      download=False, progress=False, out=str(tmp_path / 'run'))
    Trainer(cfg).fit()
    run_config = read_json(tmp_path / 'run' / 'config.json')
    check_provenance(run_config['provenance'], data_root, sys.argv, torch.get_num_threads())
    shown = subprocess.run([sys.executable, '-c', 'import sys; from stablesam.results import main; sys.exit(main())',
                            'provenance', str(tmp_path / 'run')], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    for path, sha in sha256s(data_root).items(): assert f"data     {path}  sha256 {sha}" in shown.stdout
    assert 'threads  1, device cpu' in shown.stdout


def test_processes_executor_records_the_workers_threads(data_root, tmp_path):
    out = tmp_path / 'stability'
    assert stability_main(['--data-root', str(data_root), '--out', str(out), *STABILITY[:3], '0', '1', *STABILITY[4:],
                           '--executor', 'processes', '--processes', '2']) == 0
    assert read_json(out / 'config.json')['provenance']['threads'] == max(1, (os.cpu_count() or 1) // 2)


def test_resume_on_other_data_files_is_refused(data_root, tmp_path, capsys):
    out = tmp_path / 'stability'
    argv = ['--data-root', str(data_root), '--out', str(out), *STABILITY]
    assert stability_main(argv) == 0
    images = data_root / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'
    raw = bytearray(images.read_bytes())
    raw[-1] = (raw[-1] + 1) % 256   # one pixel of the last image changed: the file is still valid
    images.write_bytes(bytes(raw))
    assert stability_main(argv) == 2
    err = capsys.readouterr().err
    assert f"holds an experiment made from other data files ({images}: sha256" in err
    assert 'pass --fresh to start it over' in err
    assert stability_main(argv + ['--fresh']) == 0
    assert read_json(out / 'config.json')['provenance']['data'][str(images)] == sha256s(data_root)[str(images)]
