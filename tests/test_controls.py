"""The step-matched controls on the command line: a control without its factor is a usage error naming the fix."""
import json

from stablesam.cli import main as train_main
from stablesam.data import write_fake_mnist
from stablesam.robustness import main as robustness_main
from stablesam.stability import main as stability_main


def test_a_control_needs_its_factor(tmp_path, capsys):
    write_fake_mnist(tmp_path / 'data', 64, 32)
    common = ['--data-root', str(tmp_path / 'data'), '--no-download', '--device', 'cpu', '--quiet']
    assert stability_main([*common, '--optimizers', 'sam-lrf', '--epochs', '1', '--out', str(tmp_path / 's')]) == 2
    assert 'give --match-from' in capsys.readouterr().err
    assert stability_main([*common, '--optimizers', 'sam-lrf', '--epochs', '1', '--match-from', str(tmp_path / 'no'),
                           '--out', str(tmp_path / 's')]) == 2
    assert 'no config.json there' in capsys.readouterr().err
    assert robustness_main(['lr-sweep', *common, '--optimizers', 'sgd-lrf', '--models', 'fcn', '--lrs', '0.1',
                            '--n-train', '32', '--epochs', '1', '--out', str(tmp_path / 'l')]) == 2
    assert 'give --match-from' in capsys.readouterr().err
    assert train_main(['--dataset', 'mnist', '--data-root', str(tmp_path / 'data'), '--model', 'fcn', '--quick',
                       '--optimizer', 'sam-lrf', '--no-progress']) == 2
    assert 'without lr_scale' in capsys.readouterr().err


def test_a_control_trains_at_the_scaled_lr(tmp_path, capsys):
    write_fake_mnist(tmp_path / 'data', 64, 32)
    out = tmp_path / 'run'
    assert train_main(['--dataset', 'mnist', '--data-root', str(tmp_path / 'data'), '--model', 'fcn', '--epochs', '2',
                       '--batch-size', '32', '--optimizer', 'sam-lrf', '--lr', '0.1', '--lr-scale', '0.5,0.25',
                       '--schedule', 'constant', '--no-augment', '--no-progress', '--out', str(out)]) == 0
    lrs = [json.loads(line)['lr'] for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert lrs == [0.05, 0.025]
