"""Stability experiment (Section 5.2): neighbouring sets, the distance, the CLI end to end, bad input."""
import copy
import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

from stablesam.data import LabelledView, get_datasets, write_fake_cifar, write_fake_mnist
from stablesam.stability import (CPU_SUBSET, Neighbours, check_run, format_summary, main, parse_args,
                                 neighbouring_indices, neighbouring_subsets, param_distance,
                                 run_stability, stability_config, stability_summary, train_pair)
from stablesam.runs import read_jsonl


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('n', [2, 3, 17, 1000])
def test_neighbouring_indices(n):
    for seed in range(10):
        nb = neighbouring_indices(n, seed)
        assert len(nb.s) == len(nb.s_prime) == n - 1
        assert [i for i in range(n - 1) if nb.s[i] != nb.s_prime[i]] == [nb.position]
        assert nb.removed not in nb.s and nb.s_prime[nb.position] == nb.removed
        assert sorted(nb.s + [nb.removed]) == list(range(n))          # S is the set minus one example
        assert len(set(nb.s_prime)) == n - 1                          # no duplicates in S'
        assert set(nb.s) ^ set(nb.s_prime) == {nb.removed, nb.s[nb.position]}


def test_neighbouring_seeds_cover_choices():
    picks = {(nb.removed, nb.position) for nb in (neighbouring_indices(5, s) for s in range(200))}
    assert len({r for r, _ in picks}) == 5 and len({p for _, p in picks}) == 4


def test_neighbouring_subsets_on_real_format_data(tmp_path):
    write_fake_mnist(tmp_path, 40, 10)
    data = get_datasets('mnist', tmp_path, augment=False, download=False)
    s, sp, nb = neighbouring_subsets(data.train, seed=3, subset=30)
    assert len(s) == len(sp) == 29 and max(nb.s_prime) < 30
    for i in range(29):
        if i != nb.position:
            assert torch.equal(s[i][0], sp[i][0]) and s[i][1] == sp[i][1]
    for view, index in ((s, nb.s[nb.position]), (sp, nb.removed)):
        x, y = data.train[index]
        assert torch.equal(view[nb.position][0], x) and view[nb.position][1] == y
    assert not torch.equal(s[nb.position][0], sp[nb.position][0])


def test_param_distance():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    b = copy.deepcopy(a)
    assert param_distance(a, b) == 0.0
    with torch.no_grad():
        for p in b.parameters(): p.add_(0.1 * torch.randn_like(p))
    w = torch.cat([p.detach().flatten() for p in a.parameters()]).double()
    w2 = torch.cat([p.detach().flatten() for p in b.parameters()]).double()
    assert param_distance(a, b) == pytest.approx(((w - w2).norm() / (w.norm() + w2.norm())).item(), rel=1e-12)
    assert param_distance(a, b) == pytest.approx(param_distance(b, a), rel=1e-12)
    with torch.no_grad():                     # scale-free: both scaled by the same factor
        for p in list(a.parameters()) + list(b.parameters()): p.mul_(4.0)
    w4 = torch.cat([p.detach().flatten() for p in a.parameters()]).double()
    assert param_distance(a, b) == pytest.approx(((w - w2).norm() / (w.norm() + w2.norm())).item(), rel=1e-5)
    assert w4.norm() > 3 * w.norm()
    with pytest.raises(ValueError, match='same parameter shapes'):
        param_distance(a, nn.Linear(5, 7))


def test_identical_sets_never_drift(tmp_path):
    """With S' = S the two trainers must stay bit-identical: same init, same sampling order, same steps."""
    write_fake_mnist(tmp_path, 64, 32)
    cfg = dataclasses.replace(stability_config('mnist', 'fcn', data_root=tmp_path, lr=0.1, epochs=2, batch_size=16),
                              optimizer='stablesam')
    data = get_datasets('mnist', tmp_path, augment=False, download=False)
    nb = neighbouring_indices(len(data.train), 0)
    same = Neighbours(nb.s, nb.s, nb.removed, nb.position)
    recs = train_pair(cfg, data, same)
    assert [r['epoch'] for r in recs] == [0, 1, 2]
    assert all(r['param_distance'] == 0.0 for r in recs)
    assert recs[-1]['train_loss'] < recs[0]['train_loss']      # it did train
    differ = train_pair(cfg, data, nb)
    assert differ[0]['param_distance'] == 0.0 and differ[-1]['param_distance'] > 0.0


@pytest.mark.parametrize('dataset,writer', [('mnist', write_fake_mnist), ('cifar10', write_fake_cifar)])
def test_cli_end_to_end(tmp_path, dataset, writer, capsys):
    writer(tmp_path / 'data', 48, 24)
    out = tmp_path / 'out'
    # main returns the exit status (console scripts sys.exit() it)
    assert main(['--dataset', dataset, '--data-root', str(tmp_path / 'data'), '--optimizers', 'sgd', 'stablesam',
                    '--epochs', '2', '--seeds', '0', '1', '--subset', '40', '--batch-size', '13', '--lr', '0.05',
                    '--schedule', 'cosine', '--out', str(out), '--quiet', '--no-download', '--device', 'cpu']) == 0
    recs = read_jsonl(out / 'records.jsonl')
    assert len(recs) == 2 * 2 * 3                                   # optimizers x seeds x (epochs 0..2)
    assert {(r['optimizer'], r['seed'], r['epoch']) for r in recs} == \
        {(o, s, e) for o in ('sgd', 'stablesam') for s in (0, 1) for e in range(3)}
    for r in recs:
        assert {'optimizer', 'seed', 'epoch', 'param_distance', 'gen_error', 'acc_gap'} <= set(r)
        assert r['gen_error'] == pytest.approx(r['test_loss'] - r['train_loss'])
        assert r['acc_gap'] == pytest.approx(r['train_acc'] - r['test_acc'])
        assert 0.0 <= r['param_distance'] <= 1.0
        assert (r['param_distance'] == 0.0) == (r['epoch'] == 0)          # 39 = 3 x 13: every example seen
        if r['epoch'] == 2:
            first = next(q for q in recs if (q['optimizer'], q['seed'], q['epoch']) == (r['optimizer'], r['seed'], 0))
            assert r['lr'] < first['lr']                                # cosine schedule decays
    assert (out / 'stability.png').stat().st_size > 1000
    table = format_summary(stability_summary(recs))
    assert table in (out / 'summary.md').read_text()
    printed = capsys.readouterr().out
    assert table in printed and 'records.jsonl' in printed


@pytest.mark.parametrize('args,message', [
    (['--schedule', 'linear'], "invalid choice: 'linear'"),
    (['--optimizers', 'sgd', 'adam'], "invalid choice: 'adam'"),
    (['--dataset', 'svhn'], "invalid choice: 'svhn'"),
    (['--lr', '-1'], 'Invalid lr: -1.0'),
    (['--lr', 'nan'], 'Invalid lr: nan'),
    (['--rho', '-0.1'], 'Invalid rho: -0.1'),
    (['--epochs', '0'], 'Invalid epochs: 0'),
    (['--epochs', 'two'], "invalid int value: 'two'"),
    (['--seeds', '0', '-1'], 'Invalid seeds: [0, -1]'),
    (['--subset', '1'], 'Invalid subset: 1'),
    (['--model', 'nonet'], "invalid choice: 'nonet'"),
    (['--executor', 'processes', '--processes', '0'], 'Invalid processes: 0'),
    (['--executor', 'mpi'], "invalid choice: 'mpi'"),
])
def test_cli_bad_input(tmp_path, args, message, capsys):
    write_fake_mnist(tmp_path / 'data', 16, 8)
    assert main(['--data-root', str(tmp_path / 'data'), '--no-download', '--epochs', '1', '--out', str(tmp_path / 'o'),
                 '--quiet'] + args) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_data_names_folder(tmp_path, capsys):
    assert main(['--data-root', str(tmp_path / 'nothing'), '--no-download', '--out', str(tmp_path / 'o'),
                 '--quiet']) == 2
    assert str(tmp_path / 'nothing') in capsys.readouterr().err


def test_cli_refuses_a_folder_of_other_settings(tmp_path, capsys):
    write_fake_mnist(tmp_path / 'data', 24, 12)
    args = ['--data-root', str(tmp_path / 'data'), '--no-download', '--seeds', '0', '--optimizers', 'sgd',
            '--batch-size', '8', '--device', 'cpu', '--quiet', '--out', str(tmp_path / 'o')]
    assert main(args + ['--epochs', '1']) == 0
    assert main(args + ['--epochs', '2']) == 2
    err = capsys.readouterr().err
    assert 'epochs' in err and '1 there, 2 now' in err and '--fresh' in err
    assert main(args + ['--epochs', '2', '--fresh']) == 0
    assert max(r['epoch'] for r in read_jsonl(tmp_path / 'o' / 'records.jsonl')) == 2


def test_bad_arguments_in_python():
    with pytest.raises(ValueError, match="Invalid schedule: 'linear'"):
        stability_config(schedule='linear')
    with pytest.raises(ValueError, match="Invalid optimizers: \\['adam'\\]"):
        check_run(['sgd', 'adam'], [0])
    with pytest.raises(ValueError, match='Invalid seeds'):
        check_run(['sgd'], [])
    with pytest.raises(ValueError, match="starts CPU processes; on device 'cuda'"):
        run_stability(stability_config(device='cuda'), ['sgd'], [0, 1], executor='processes')
    with pytest.raises(ValueError, match='Invalid n: 1'):
        neighbouring_indices(1)
    with pytest.raises(ValueError, match='Invalid subset: 1'):
        neighbouring_subsets(LabelledView([(0, 0)] * 5, targets=[0] * 5), subset=1)


def test_console_script_exit_status(tmp_path):
    """The installed `stablesam-stability` entry point exits 0 on success and 2 on bad input."""
    write_fake_mnist(tmp_path / 'data', 24, 12)
    args = ['--data-root', str(tmp_path / 'data'), '--no-download', '--epochs', '1', '--seeds', '0',
            '--optimizers', 'sgd', '--batch-size', '8', '--device', 'cpu', '--quiet', '--out', str(tmp_path / 'out')]
    code = 'import sys; from stablesam.stability import main; sys.exit(main())'
    ok = subprocess.run([sys.executable, '-c', code] + args, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / 'out' / 'stability.png').exists()
    bad = subprocess.run([sys.executable, '-c', code] + args + ['--schedule', 'step'], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'step'" in bad.stderr


def test_cpu_size_preset():
    args = parse_args(['--cpu-size'])
    assert (args.subset, args.device, args.epochs, args.seeds) == (CPU_SUBSET, 'cpu', 60, [0, 1, 2])
    assert parse_args(['--cpu-size', '--subset', '500']).subset == 500
    assert parse_args([]).subset is None and parse_args([]).device == 'auto'


def test_workers_is_the_old_name_of_processes():
    with pytest.warns(UserWarning, match='--workers 2 is now --executor processes --processes 2'):
        args = parse_args(['--workers', '2'])
    assert (args.executor, args.processes) == ('processes', 2)
