"""stablesam-results on run folders: the paper's layout, mean ± std over seeds, rho chosen per cell, CSV, errors."""
import csv
import json
import math

import pytest

from stablesam.results import load_runs, main, summarize, table_markdown


def run(root, name, accs, **cfg):
    d = root / name
    d.mkdir(parents=True)
    base = dict(dataset='cifar100', model='resnet56', label_noise=0.0, optimizer='stablesam', rho=0.05, seed=0,
                base='sgd', epochs=len(accs), lr=0.1)
    (d / 'config.json').write_text(json.dumps(dict(base, **cfg)))
    (d / 'metrics.jsonl').write_text(''.join(json.dumps(dict(epoch=i + 1, test_acc=a, train_loss=1.0)) + '\n'
                                             for i, a in enumerate(accs)))


@pytest.fixture
def runs(tmp_path):
    # best accuracy per run is the max over epochs, not the last epoch
    for seed, accs in enumerate([(0.70, 0.76, 0.75), (0.71, 0.77, 0.74), (0.72, 0.78, 0.76)]):
        run(tmp_path, f'st05_{seed}', accs, seed=seed, rho=0.05)
        run(tmp_path, f'st20_{seed}', [a - 0.02 for a in accs], seed=seed, rho=0.2)
        run(tmp_path, f'sam05_{seed}', [a - 0.01 for a in accs], seed=seed, optimizer='sam')
    for noise, acc in ((0.2, 0.94), (0.8, 0.80)):
        run(tmp_path, f'noise{noise}', [acc], label_noise=noise, model='wrn28_10', optimizer='sam')
    return tmp_path


def test_summary_best_accuracy_mean_std_and_rho(runs):
    rows = summarize(load_runs(runs))
    st = next(r for r in rows if r['optimizer'] == 'stablesam' and not r['label_noise'])
    assert st['rho'] == 0.05 and st['n_seeds'] == 3 and st['seeds'] == [0, 1, 2]
    assert math.isclose(st['mean'], 0.77) and math.isclose(st['std'], 0.01)
    assert math.isclose(st['rho_means'][0.2], 0.75)


def test_cli_writes_markdown_csv_figure(runs, capsys):
    assert main([str(runs)]) == 0
    md = (runs / 'results.md').read_text()
    assert '| CIFAR-100 | ResNet-56 | 76.00 ± 1.00 | **77.00 ± 1.00** |' in md
    assert '| 20% | 94.00 (1 seed) |' in md and '± 0.00' not in md
    assert 'CIFAR-10' not in md.split('Noise level')[0].replace('CIFAR-100', '')
    rows = list(csv.DictReader(open(runs / 'results.csv')))
    assert len(rows) == 4 and {r['optimizer'] for r in rows} == {'sam', 'stablesam'}
    assert (runs / 'curves.png').stat().st_size > 1000
    assert '4 cells' in capsys.readouterr().out


def test_errors(tmp_path, capsys):
    assert main([str(tmp_path / 'missing')]) == 2
    assert 'No runs folder' in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert 'No run folders with metrics' in capsys.readouterr().err
    run(tmp_path, 'a', [0.5])
    run(tmp_path, 'b', [0.6], lr=0.2, seed=1)
    assert main([str(tmp_path), '--no-figure']) == 2
    assert 'differ in settings other than rho and seed' in capsys.readouterr().err


def test_markdown_layout_for_table3_bases(tmp_path):
    run(tmp_path, 'vit_sgd', [0.68], dataset='imagenet', model='vit_s32', optimizer='sgd', base='adamw')
    run(tmp_path, 'r50_sgd', [0.77], dataset='imagenet', model='resnet50', optimizer='sgd')
    md = table_markdown(summarize(load_runs(tmp_path)))
    assert md.splitlines()[0] == '| Dataset | Model | SGD/AdamW |'


def test_held_out_protocol_end_to_end(tmp_path, capsys):
    """`stablesam-train --val-split` records val_acc; `stablesam-results --protocol held-out` selects on it, says so."""
    from stablesam.cli import main as train_main
    from stablesam.data import write_fake_mnist
    write_fake_mnist(tmp_path / 'data', n_train=96, n_test=48)
    for opt in ('sgd', 'stablesam'):
        for seed in (0, 1):
            assert train_main(['--dataset', 'mnist', '--data-root', str(tmp_path / 'data'), '--model', 'fcn',
                               '--optimizer', opt, '--epochs', '2', '--batch-size', '32', '--val-split', '32',
                               '--seed', str(seed), '--no-progress', '--no-download', '--device', 'cpu',
                               '--out', str(tmp_path / 'runs' / f'{opt}{seed}')]) in (None, 0)
    runs = load_runs(tmp_path / 'runs')
    assert all(r['best_val_acc'] is not None and r['held_out_epoch'] in (1, 2) for r in runs)
    for r in runs:   # the held-out number is the test accuracy at the epoch of best validation accuracy
        m = r['metrics'][r['held_out_epoch'] - 1]
        assert r['held_out_test_acc'] == m['test_acc'] and m['val_acc'] == max(x['val_acc'] for x in r['metrics'])
    assert main([str(tmp_path / 'runs'), '--protocol', 'held-out', '--no-figure']) == 0
    out = capsys.readouterr().out
    assert 'Protocol held-out' in out and 'Protocol paper' not in out


def test_committed_figures_are_print_quality():
    """Every committed figure under results/ is a PNG of 150 dpi or more; each Figure 5-7 panel has a PDF beside it."""
    from pathlib import Path

    from PIL import Image
    results = Path(__file__).resolve().parents[1] / 'results'
    pngs = [p for p in results.rglob('*.png') if 'runs' not in p.relative_to(results).parts]
    assert len(pngs) >= 17
    low = {str(p.relative_to(results)): Image.open(p).info.get('dpi') for p in pngs
           if min(Image.open(p).info.get('dpi', (0, 0))) < 149.5}
    assert not low, f'below 150 dpi: {low}'
    panels = [p for p in pngs if p.name == 'stability.png']
    assert len(panels) >= 8 and all(p.with_suffix('.pdf').exists() for p in panels)
