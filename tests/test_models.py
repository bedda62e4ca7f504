"""Every model by name: builds, runs a forward pass of the right shape; unknown names list the choices."""
import pytest
import torch

from stablesam.models import MODELS, get_model

SHAPES = {'fcn': (10, 1, 28), 'resnet50': (7, 3, 64), 'resnet101': (7, 3, 64), 'resnet152': (7, 3, 64),
          'vit_s32': (7, 3, 64)}


@pytest.mark.parametrize('name', MODELS)
def test_forward(name):
    nc, ch, size = SHAPES.get(name, (10, 3, 32))
    torch.manual_seed(0)
    m = get_model(name, nc, ch, size).eval()
    with torch.no_grad(): out = m(torch.randn(2, ch, size, size))
    assert out.shape == (2, nc) and torch.isfinite(out).all()


def test_same_seed_same_init():
    torch.manual_seed(1)
    a = get_model('resnet20', 10)
    torch.manual_seed(1)
    b = get_model('resnet20', 10)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_cifar100_and_other_class_counts():
    assert get_model('resnet56', 100).output.out_features == 100
    assert get_model('wrn28_10', 4).output.out_features == 4
    assert get_model('lenet', 10, 1, 28)(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_bad_names_and_numbers():
    with pytest.raises(ValueError, match="Unknown model: 'resnet21' .choose from fcn, lenet, resnet20"):
        get_model('resnet21', 10)
    with pytest.raises(ValueError, match='Invalid num_classes: 1'):
        get_model('fcn', 1)
    with pytest.raises(ValueError, match='multiple of 32'):
        get_model('vit_s32', 10, 3, 48)
