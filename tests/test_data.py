"""Datasets through the real loading code on generated files: formats, label noise, subsets, errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from scipy.stats import chisquare
import torchvision.transforms.functional as TF

from stablesam.data import (CropFlip, DataFileError, EpochSampler, SeededAugment, decode, get_datasets, noisy_labels,
                            split_augmentation, write_fake_cifar, write_fake_imagefolder, write_fake_mnist)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp('data')
    write_fake_mnist(r, n_train=200, n_test=50)
    write_fake_cifar(r, n_train=1000, n_test=100)
    write_fake_cifar(r, n_train=300, n_test=100, num_classes=100)
    write_fake_imagefolder(r / 'imagenet', n_train=9, n_test=6, num_classes=3, image_size=40)
    return r


@pytest.mark.parametrize('frac', [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
def test_label_noise_exact_fraction(root, frac):
    clean = get_datasets('cifar10', root, seed=5).train.targets
    d = get_datasets('cifar10', root, label_noise=frac, seed=5)
    assert (d.train.targets != clean).sum().item() == round(frac * 1000)
    assert torch.equal(d.train.targets, get_datasets('cifar10', root, label_noise=frac, seed=5).train.targets)
    assert torch.equal(d.test.targets, get_datasets('cifar10', root, seed=5).test.targets)  # test labels untouched
    if 0 < frac < 1:
        assert not torch.equal(d.train.targets, get_datasets('cifar10', root, label_noise=frac, seed=6).train.targets)
    # the label an item returns is the noisy one
    i = int(torch.nonzero(d.train.targets != clean)[0]) if frac else 0
    assert d.train[i][1] == int(d.train.targets[i])


def test_label_noise_on_subset_and_odd_sizes():
    y = torch.arange(7) % 3
    assert (noisy_labels(y, 0.5, 3, seed=0) != y).sum().item() == round(3.5)
    assert noisy_labels(y, 0.5, 3, seed=0).max() < 3


def test_formats(root):
    m = get_datasets('mnist', root)
    assert (len(m.train), len(m.test), m.num_classes, m.in_channels, m.image_size) == (200, 50, 10, 1, 28)
    assert tuple(m.train[0][0].shape) == (1, 28, 28)
    c = get_datasets('cifar100', root)
    assert (len(c.train), c.num_classes) == (300, 100)
    im = get_datasets('imagenet', root / 'imagenet')
    assert (len(im.train), len(im.test), im.num_classes) == (9, 6, 3)
    assert tuple(im.train[0][0].shape) == tuple(im.test[0][0].shape) == (3, 224, 224)


def test_augmentation_cifar_and_reproducible_seeding(root):
    d = get_datasets('cifar10', root)
    aug = SeededAugment(d.train, seed=0)
    a, b = aug[(3, 0)][0], aug[(3, 0)][0]
    assert torch.equal(a, b)
    views = {aug[(3, e)][0].sum().item() for e in range(8)}  # crops/flips differ between epochs
    assert len(views) > 1
    plain = get_datasets('cifar10', root, augment=False).train
    assert torch.equal(plain[3][0], plain[3][0])


def test_subset_seeded(root):
    a = get_datasets('cifar10', root, train_subset=100, seed=1).train
    b = get_datasets('cifar10', root, train_subset=100, seed=1).train
    assert len(a) == 100 and torch.equal(a.indices, b.indices)


def test_sampler_shards_are_a_partition():
    full = EpochSampler(10, seed=3).order()
    shards = [EpochSampler(10, seed=3, rank=r, world_size=2).order() for r in range(2)]
    assert torch.equal(torch.stack(shards, 1).flatten(), full)


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'cifar-10-batches-py')):
        get_datasets('cifar10', tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match='MNIST idx files'):
        get_datasets('mnist', tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match='train/<class>'):
        get_datasets('imagenet', tmp_path)


def test_real_cifar_checksums_still_checked(root, tmp_path):
    """Only folders marked by write_fake_cifar skip the MD5 check: unmarked, a fake file is a damaged real one."""
    write_fake_cifar(tmp_path, n_train=10, n_test=10)
    (tmp_path / 'cifar-10-batches-py' / 'FAKE_DATA').unlink()
    for download in (False, True):  # a damaged file is reported as such, never downloaded over
        with pytest.raises(DataFileError, match=f"{tmp_path / 'cifar-10-batches-py' / 'data_batch_1'} .*its MD5 sum "
                                                "differs from the real file's .*extract cifar-10-python.tar.gz again"):
            get_datasets('cifar10', tmp_path, download=download)


def _mnist(tmp_path, n_train=40, n_test=20):
    return write_fake_mnist(tmp_path, n_train=n_train, n_test=n_test) / 'MNIST' / 'raw'


def test_truncated_mnist_names_file_and_sizes(tmp_path):
    f = _mnist(tmp_path) / 'train-images-idx3-ubyte'
    f.write_bytes(f.read_bytes()[:-1000])
    expected = 16 + 40 * 28 * 28
    with pytest.raises(DataFileError, match=f"Damaged MNIST file {f}: {expected - 1000} bytes, expected {expected} "
                                            r"\(header: 40 x 28 x 28 uint8\): truncated"):
        get_datasets('mnist', tmp_path, download=True)


def test_mnist_bad_magic_number(tmp_path):
    f = _mnist(tmp_path) / 't10k-labels-idx1-ubyte'
    f.write_bytes(b'\x1f\x8b\x08\x00' + f.read_bytes()[4:])  # e.g. a gzip file under the uncompressed name
    with pytest.raises(DataFileError, match=f"{f}: bad magic number 0x1f8b0800 \\(expected 0x00000801"):
        get_datasets('mnist', tmp_path, download=False)


def test_mnist_header_shorter_than_header(tmp_path):
    f = _mnist(tmp_path) / 'train-labels-idx1-ubyte'
    f.write_bytes(b'\x00\x00')
    with pytest.raises(DataFileError, match=f"{f}: 2 bytes, shorter than its 8-byte header"):
        get_datasets('mnist', tmp_path, download=False)


def test_mnist_images_and_labels_disagree(tmp_path):
    raw = _mnist(tmp_path)
    _mnist(tmp_path / 'other', n_train=39)
    other = tmp_path / 'other' / 'MNIST' / 'raw'
    (raw / 'train-labels-idx1-ubyte').write_bytes((other / 'train-labels-idx1-ubyte').read_bytes())
    with pytest.raises(DataFileError, match='holds 40 images, .*train-labels-idx1-ubyte 39 labels'):
        get_datasets('mnist', tmp_path, download=False)


def test_mnist_label_out_of_range(tmp_path):
    f = _mnist(tmp_path) / 't10k-labels-idx1-ubyte'
    f.write_bytes(f.read_bytes()[:-1] + bytes([200]))
    with pytest.raises(DataFileError, match=f"{f}: label 200, expected 0-9"):
        get_datasets('mnist', tmp_path, download=False)


@pytest.mark.parametrize('num_classes, fname', [(10, 'data_batch_4'), (10, 'test_batch'), (100, 'train')])
def test_truncated_cifar_pickle_names_file(tmp_path, num_classes, fname):
    write_fake_cifar(tmp_path, n_train=100, n_test=20, num_classes=num_classes)
    f = next(tmp_path.iterdir()) / fname
    f.write_bytes(f.read_bytes()[:-500])
    name = f'cifar{num_classes}'
    size = f.stat().st_size
    with pytest.raises(DataFileError, match=f"Damaged {name} file {f} \\({size} bytes\\): cannot be unpickled"):
        get_datasets(name, tmp_path, download=False)


def test_cifar_rows_of_the_wrong_size(tmp_path):
    import pickle
    write_fake_cifar(tmp_path, n_train=10, n_test=10)
    f = tmp_path / 'cifar-10-batches-py' / 'test_batch'
    f.write_bytes(pickle.dumps({'data': np.zeros((10, 1024), np.uint8), 'labels': [0] * 10}))
    with pytest.raises(DataFileError, match=r"'data' holds \(10, 1024\), expected rows of 3\*32\*32 = 3072 bytes"):
        get_datasets('cifar10', tmp_path, download=False)


def test_missing_file_is_still_not_found(tmp_path):
    """Only files that are there can be damaged: a missing one is still reported as missing."""
    raw = _mnist(tmp_path)
    (raw / 't10k-images-idx3-ubyte').unlink()
    with pytest.raises(FileNotFoundError, match='MNIST idx files'):
        get_datasets('mnist', tmp_path, download=False)


@pytest.mark.parametrize('kw, msg', [(dict(name='svhn'), "Unknown dataset: 'svhn'"),
                                     (dict(label_noise=1.5), 'Invalid label noise fraction: 1.5'),
                                     (dict(label_noise=-0.1), 'Invalid label noise fraction: -0.1'),
                                     (dict(train_subset=0), 'Invalid train_subset: 0')])
def test_bad_input(root, kw, msg):
    kw = dict(dict(name='cifar10'), **kw)
    with pytest.raises(ValueError, match=msg.replace('(', r'\(')):
        get_datasets(kw.pop('name'), root, **kw)
    with pytest.raises(ValueError, match='num_classes'):
        write_fake_cifar(root, num_classes=20)


def test_digits_real_offline_fixed_split():
    """`digits`: scikit-learn's 1,797 real 8x8 digits, a fixed 1,297/500 split (50 test images a class), normalised."""
    from sklearn.datasets import load_digits
    d = get_datasets('digits', 'not-used', augment=False)
    assert (len(d.train), len(d.test), d.num_classes, d.in_channels, d.image_size) == (1297, 500, 10, 1, 8)
    x, y = d.train[0]
    assert tuple(x.shape) == (1, 8, 8) and x.dtype == torch.float32
    xs = torch.stack([d.train[i][0] for i in range(len(d.train))])
    assert abs(xs.mean().item()) < 1e-4 and abs(xs.std().item() - 1) < 1e-3  # normalised by the training split
    assert torch.bincount(d.test.targets).tolist() == [50] * 10
    # the images are the real ones: every test image is one of load_digits' images, rescaled
    raw = torch.tensor(load_digits().images, dtype=torch.float32).flatten(1)
    xt = torch.stack([d.test[i][0] for i in range(len(d.test))]).flatten(1)
    rescaled = (xt - xt.min()) / (xt.max() - xt.min()) * 16
    assert torch.cdist(rescaled, raw).min(1).values.max() < 0.1  # distinct images differ by >= 1 grey level
    # the split does not depend on the run's seed; label noise does, on the training labels only
    other = get_datasets('digits', 'not-used', seed=5, label_noise=0.2)
    assert torch.equal(other.test.targets, d.test.targets) and torch.equal(other.test[7][0], d.test[7][0])
    assert (other.train.targets != d.train.targets).sum().item() == round(0.2 * 1297)
    assert len(get_datasets('digits', 'not-used', train_subset=100).train) == 100


def test_digits_through_the_trainer(one_thread):
    """`TrainConfig(dataset='digits')` trains FCN and builds LeNet (padded to 32x32) for the 8x8 digits."""
    from stablesam.config import TrainConfig
    from stablesam.train import Trainer
    kw = dict(dataset='digits', epochs=2, batch_size=64, lr=0.05, device='cpu', progress=False, augment=False)
    hist = Trainer(TrainConfig(model='fcn', optimizer='stablesam', **kw)).fit()
    assert hist[-1]['test_acc'] > 0.8  # real digits are learnt in two epochs
    lenet = Trainer(TrainConfig(model='lenet', optimizer='sgd', **dict(kw, epochs=1)))
    assert lenet.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_digits_through_the_cli(tmp_path, one_thread):
    """`stablesam-train --dataset digits` writes a run folder."""
    import json
    from stablesam.cli import main
    assert main(['--dataset', 'digits', '--model', 'fcn', '--optimizer', 'sam', '--epochs', '1', '--no-progress',
                 '--device', 'cpu', '--out', str(tmp_path / 'run')]) == 0
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert cfg['dataset'] == 'digits' and len((tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()) == 1


def test_crop_flip_draws_uniform_and_independent():
    """Chi-square on 162,000 draws: offsets x flip uniform on the 9 x 9 x 2 cells, and independent between epochs,
    seeds and neighbouring indices (p > 1e-4 each: the test fails by chance about once in 2,000 runs at most)."""
    aug, n = CropFlip(4), 162_000
    idx = torch.arange(n)

    def cells(dy, dx, f): return (dy * 9 + dx) * 2 + f.long()

    draws = {(s, e): aug.draws(idx, s, e) for s, e in ((0, 0), (0, 1), (1, 0), (3, 7))}
    for d in draws.values():
        assert chisquare(torch.bincount(cells(*d), minlength=162).numpy()).pvalue > 1e-4
        assert d[0].min() == 0 and d[0].max() == 8 and d[1].max() == 8

    def joint(a, b): return torch.bincount(a * 9 + b, minlength=81).numpy()

    assert chisquare(joint(draws[0, 0][0], draws[0, 1][0])).pvalue > 1e-4    # epoch 0 vs epoch 1
    assert chisquare(joint(draws[0, 0][1], draws[1, 0][1])).pvalue > 1e-4    # seed 0 vs seed 1
    assert chisquare(joint(draws[0, 0][0][:-1], draws[0, 0][0][1:])).pvalue > 1e-4  # index i vs index i + 1
    assert chisquare(joint(draws[0, 0][0], draws[0, 0][1])).pvalue > 1e-4    # dy vs dx


def test_crop_flip_same_seed_same_draws_whatever_the_batch():
    aug = CropFlip(4)
    idx = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    a, b = aug.draws(idx, 2, 5), aug.draws(idx, 2, 5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    part = aug.draws(idx[100:164], 2, 5)   # the same items in another batch: the same draws
    assert all(torch.equal(u[100:164], v) for u, v in zip(a, part))
    assert not torch.equal(aug.draws(idx, 3, 5)[0], a[0]) and not torch.equal(aug.draws(idx, 2, 6)[0], a[0])
    assert not CropFlip(4, flip=False).draws(idx, 2, 5)[2].any()


def test_crop_flip_is_torchvision_crop_and_flip(root):
    """For the same offsets, the batched crop of the decoded image is torchvision's pad-crop-flip-normalise."""
    train = get_datasets('cifar10', root).train
    plain, aug = split_augmentation(train)
    assert isinstance(aug, CropFlip) and (aug.padding, aug.flip) == (4, True)
    raw = get_datasets('cifar10', root, augment=False).train
    idx = torch.arange(0, 1000, 37)
    x = decode(plain)[0][idx]
    dy, dx, flip = aug.draws(idx, 0, 1)
    assert 0 < flip.sum() < len(idx)
    out = aug(x, idx, 0, 1)
    images = _raw(train.base)
    for k, i in enumerate(idx.tolist()):
        img = TF.crop(TF.pad(images[i][0], 4), int(dy[k]), int(dx[k]), 32, 32)
        want = TF.normalize(TF.to_tensor(TF.hflip(img) if flip[k] else img),
                            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        assert torch.equal(out[k], want), i
    assert torch.equal(plain[5][0], raw[5][0])


def _raw(ds):
    """A copy of torchvision dataset `ds` that returns PIL images."""
    import copy
    c = copy.copy(ds)
    c.transform = None
    return c


def test_split_augmentation_kinds(root):
    m = get_datasets('mnist', root).train
    assert split_augmentation(m) == (m, None)
    assert split_augmentation(get_datasets('imagenet', root / 'imagenet').train) == (None, None)
    plain, aug = split_augmentation(get_datasets('cifar100', root, label_noise=0.5, seed=1).train)
    assert torch.equal(plain.targets, get_datasets('cifar100', root, label_noise=0.5, seed=1).train.targets)


REAL_MNIST = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'MNIST' / 'raw'  # ../shared/data


def test_real_mnist_passes_the_checks_and_a_truncated_copy_is_named(tmp_path):
    """The real idx files pass the header checks; a cut-short copy of the real test images is named with its sizes."""
    if not (REAL_MNIST / 't10k-images-idx3-ubyte').exists():
        pytest.skip(f'real MNIST not found in {REAL_MNIST} (../shared/data from the project root): '
                    'the checks run on generated files above')
    assert len(get_datasets('mnist', REAL_MNIST.parents[1], download=False).train) == 60000
    raw = tmp_path / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    for f in REAL_MNIST.iterdir(): (raw / f.name).symlink_to(f)
    cut = raw / 't10k-images-idx3-ubyte'
    cut.unlink()
    cut.write_bytes((REAL_MNIST / cut.name).read_bytes()[:-1000])
    with pytest.raises(DataFileError, match=f"Damaged MNIST file {cut}: 7839016 bytes, expected 7840016 "
                                            r"\(header: 10000 x 28 x 28 uint8\): truncated"):
        get_datasets('mnist', tmp_path, download=False)
