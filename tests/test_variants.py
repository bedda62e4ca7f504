"""A variant registered at run time: in the CLI's choices, through training, in a results table and in a figure."""
import matplotlib
import pytest
import torch

from stablesam.cli import build_parser, main as train_main
from stablesam.data import write_fake_mnist
from stablesam.optim import SAM, make_optimizer
from stablesam.results import main as results_main
from stablesam.style import optimizer_style
from stablesam.variants import register_variant, unregister_variant, variant

matplotlib.use('Agg')


class HalfRhoSAM(SAM):
    """A user's variant: StableSAM with half the given radius."""
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, base_optimizer, rho / 2, stable=True, **kwargs)


@pytest.fixture
def half_rho():
    register_variant('halfrho', label='StableSAM (rho/2)', color='tab:cyan', cls=HalfRhoSAM, stable=True, marker='*')
    yield 'halfrho'
    unregister_variant('halfrho')


def test_registered_variant_everywhere(half_rho, tmp_path, capsys):
    assert half_rho in build_parser()._option_string_actions['--optimizer'].choices
    opt = make_optimizer(half_rho, [torch.nn.Parameter(torch.ones(3))], lr=0.1, rho=0.2)
    assert isinstance(opt, HalfRhoSAM) and opt.param_groups[0]['rho'] == pytest.approx(0.1)
    write_fake_mnist(tmp_path / 'data', 128, 64)
    common = ['--dataset', 'mnist', '--data-root', str(tmp_path / 'data'), '--model', 'fcn', '--epochs', '1',
              '--batch-size', '32', '--no-augment', '--no-progress']
    assert train_main([*common, '--optimizer', 'sgd', '--out', str(tmp_path / 'runs' / 'sgd')]) == 0
    assert train_main([*common, '--optimizer', half_rho, '--gamma0', '0.5',
                       '--out', str(tmp_path / 'runs' / half_rho)]) == 0
    capsys.readouterr()
    assert results_main([str(tmp_path / 'runs')]) == 0
    table = (tmp_path / 'runs' / 'results.md').read_text()
    header = table.splitlines()[0]
    assert header.index('SGD') < header.index('StableSAM (rho/2)')        # a column of its own, after the built-ins
    assert (tmp_path / 'runs' / 'curves.png').stat().st_size > 1000
    assert optimizer_style(half_rho).color == 'tab:cyan'


def test_unknown_names_are_listed():
    with pytest.raises(ValueError, match='choose from sgd, sam, stablesam, asam'):
        variant('lion')
    assert train_main(['--optimizer', 'lion', '--quick']) == 2
