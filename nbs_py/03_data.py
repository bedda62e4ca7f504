# %%
#| default_exp data

# %% [markdown]
# # data
#
# > Datasets of Sections 5.2-5.4 (MNIST, CIFAR-10/100, ImageNet-1k) with the paper's augmentation, exact label noise, and small fake datasets in the real on-disk formats

# %% [markdown]
# The experiments of the paper train on MNIST and CIFAR-10 (algorithmic stability, Section 5.2),
# CIFAR-10/100 and ImageNet-1k (image classification from scratch, Section 5.3) and CIFAR-10 with
# a fraction of its training labels randomised (Section 5.4, Table 4). This module returns each of
# them as a `DataBundle` with the paper's augmentation, and writes small *fake* datasets in the very
# same file formats, so that tests, quick runs and the docs go through the real loading code
# without a download.

# %%
#| hide
from fastcore.test import *
import tempfile
from pathlib import Path

# %%
#| export
import copy
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T

from stablesam.runs import note_data_read


# %% [markdown]
# ## Fake datasets in the real formats
#
# Each writer produces images that carry a learnable class signal: every class has its own smooth
# random template (a 4x4 pattern upsampled to the image size) and each image is its class template
# plus pixel noise. A quick run on these files shows the loss going down, and the files are read
# by torchvision's own MNIST / CIFAR / ImageFolder code.

# %%
#| exporti
def _write_idx(path, array):
    """Write `array` (uint8) as an IDX file (the MNIST format: magic, big-endian dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    Path(path).write_bytes(header + array.tobytes())


# %%
#| exporti
def _mix(seed, salt):
    """A derived seed: `seed` and `salt` mixed into one non-negative integer."""
    return int(np.random.SeedSequence([int(seed), int(salt)]).generate_state(1)[0])


# %%
#| exporti
def _fake_images(n, num_classes, size, channels, seed, split=0, contrast=56, noise=40):
    """`n` uint8 images (N, H, W, C) with a per-class smooth template plus noise, and their labels."""
    trng = np.random.default_rng(_mix(seed, 7))
    coarse = 128 + trng.uniform(-contrast, contrast, size=(num_classes, 4, 4, channels))
    reps = -(-size // 4)
    templates = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    rng = np.random.default_rng(_mix(seed, 100 + split))
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = templates[labels] + rng.normal(0, noise, size=(n, size, size, channels))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


# %%
#| export
def write_fake_mnist(root, n_train=256, n_test=128, seed=0, noise=40):
    """Write a fake MNIST (28x28, 10 classes, pixel noise std `noise`): torchvision's IDX files in `root`/MNIST/raw."""
    raw = Path(root) / 'MNIST' / 'raw'
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, k in (('train', n_train, 0), ('t10k', n_test, 1)):
        x, y = _fake_images(n, 10, 28, 1, seed, split=k, noise=noise)
        _write_idx(raw / f'{split}-images-idx3-ubyte', x[..., 0])
        _write_idx(raw / f'{split}-labels-idx1-ubyte', y)
    return Path(root)


# %%
tmp = Path(tempfile.mkdtemp())
write_fake_mnist(tmp, n_train=50, n_test=20)
m = tvd.MNIST(tmp, train=True)
test_eq((len(m), tuple(m.data.shape[1:])), (50, (28, 28)))
test_eq(sorted(set(m.targets.tolist())), list(range(10)))

# %% [markdown]
# CIFAR-10 and CIFAR-100 are python pickles of `uint8` rows (`3*32*32`, channel-major), five training
# batches plus a test batch for CIFAR-10, one `train` and one `test` file for CIFAR-100, and a meta
# file with the class names. torchvision checks each file's MD5 against the real dataset's; a fake
# file cannot match, so the writer leaves a marker `FAKE_DATA` in the folder and the loader below skips
# the checksum (only that check) for folders that carry it.

# %%
#| export
FAKE_MARKER = 'FAKE_DATA'

def write_fake_cifar(root, n_train=256, n_test=128, num_classes=10, seed=0):
    """Write a small CIFAR-10/100 as torchvision's pickles in `root`/cifar-10-batches-py (or cifar-100-python)."""
    if num_classes not in (10, 100):
        raise ValueError(f"Invalid num_classes for CIFAR: {num_classes} (choose 10 or 100)")
    folder = Path(root) / ('cifar-10-batches-py' if num_classes == 10 else 'cifar-100-python')
    folder.mkdir(parents=True, exist_ok=True)
    key = 'labels' if num_classes == 10 else 'fine_labels'
    def dump(name, x, y):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        with open(folder / name, 'wb') as f: pickle.dump({'data': rows, key: y.tolist()}, f)
    xtr, ytr = _fake_images(n_train, num_classes, 32, 3, seed, split=0)
    xte, yte = _fake_images(n_test, num_classes, 32, 3, seed, split=1)
    if num_classes == 10:
        for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
            dump(f'data_batch_{i + 1}', xtr[part], ytr[part])
        dump('test_batch', xte, yte)
        meta = ('batches.meta', {'label_names': [f'class{i}' for i in range(10)]})
    else:
        dump('train', xtr, ytr)
        dump('test', xte, yte)
        meta = ('meta', {'fine_label_names': [f'class{i}' for i in range(100)]})
    with open(folder / meta[0], 'wb') as f: pickle.dump(meta[1], f)
    (folder / FAKE_MARKER).write_text('written by stablesam.data.write_fake_cifar: checksums are not checked\n')
    return Path(root)


# %%
#| export
def write_fake_imagefolder(root, n_train=60, n_test=30, num_classes=3, image_size=64, seed=0):
    """Write a small ImageNet-style ImageFolder of PNGs: `root`/train/<class>/*.png and `root`/val/<class>/*.png."""
    from PIL import Image
    for split, n, k in (('train', n_train, 0), ('val', n_test, 1)):
        x, y = _fake_images(n, num_classes, image_size, 3, seed, split=k)
        for i, (img, label) in enumerate(zip(x, y)):
            d = Path(root) / split / f'n{label:08d}'
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f'{split}_{i:06d}.png')
    return Path(root)


# %% [markdown]
# ## Augmentation
#
# As in the paper: CIFAR random crop 32 with padding 4, horizontal flip and normalisation; ImageNet
# Inception-style random resized crop to 224 and flip for training, resize to 256 and centre crop 224
# for evaluation; MNIST normalisation only. `augment=False` keeps only the evaluation transform
# (Section 5.2 trains without augmentation).

# %%
#| export
DATASETS = ('mnist', 'cifar10', 'cifar100', 'imagenet', 'digits')

_STATS = {'mnist': ((0.1307,), (0.3081,)),
          'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
          'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
          'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}

def _check_dataset(name):
    if name not in DATASETS: raise ValueError(f"Unknown dataset: {name!r} (choose from {', '.join(DATASETS)})")

def normalization(name) -> tuple:
    """`(mean, std)` per channel with which dataset `name`'s images are normalised (pixels in [0, 1] before)."""
    _check_dataset(name)
    return _STATS[name]

def get_transforms(name, train=True, augment=True):
    """The paper's transform for dataset `name`: augmentation for the training split if `augment`, else evaluation."""
    _check_dataset(name)
    norm = [T.ToTensor(), T.Normalize(*_STATS[name])]
    if name == 'imagenet':
        if train and augment: return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] + norm)
        return T.Compose([T.Resize(256), T.CenterCrop(224)] + norm)
    if name.startswith('cifar') and train and augment:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] + norm)
    return T.Compose(norm)


# %%
get_transforms('cifar10')


# %% [markdown]
# ## Label noise (Table 4)
#
# Exactly `round(fraction * n)` training labels are replaced, chosen by a generator seeded with the
# run's seed; each chosen label is moved to a uniformly drawn *other* class, so exactly that fraction
# of the labels is wrong. Test labels are never touched.

# %%
#| export
def noisy_labels(targets, fraction, num_classes, seed=0):
    """`targets` with exactly `round(fraction*len(targets))` of them changed to a different random class."""
    if not (0.0 <= fraction <= 1.0): raise ValueError(f"Invalid label noise fraction: {fraction} (must be in [0, 1])")
    targets = torch.as_tensor(targets, dtype=torch.long).clone()
    g = torch.Generator().manual_seed(_mix(seed, 0x1abe1))
    n_noisy = int(round(fraction * len(targets)))
    idx = torch.randperm(len(targets), generator=g)[:n_noisy]
    shift = torch.randint(1, num_classes, (n_noisy,), generator=g)
    targets[idx] = (targets[idx] + shift) % num_classes
    return targets


# %%
y = torch.arange(1000) % 10
for frac in (0.0, 0.2, 0.4, 0.6, 0.8):
    test_eq((noisy_labels(y, frac, 10, seed=3) != y).sum().item(), round(frac * 1000))
test_eq(noisy_labels(y, 0.4, 10, seed=3), noisy_labels(y, 0.4, 10, seed=3))
assert not torch.equal(noisy_labels(y, 0.4, 10, seed=3), noisy_labels(y, 0.4, 10, seed=4))
test_fail(lambda: noisy_labels(y, 1.5, 10), contains='Invalid label noise fraction: 1.5')


# %% [markdown]
# ## Datasets
#
# A `LabelledView` presents a subset of a dataset with its own labels (the subset for quick runs,
# the noisy labels of Table 4); `targets` is a tensor that other modules (the stability experiment,
# the landscape diagnostics) read and may replace.

# %%
#| export
class LabelledView(Dataset):
    """Items `indices` of `base` (all if None) with labels `targets` (the base's if None)."""
    def __init__(self, base, indices=None, targets=None):
        self.base = base
        self.indices = torch.arange(len(base)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if targets is None: targets = torch.as_tensor(_targets(base), dtype=torch.long)[self.indices]
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if len(self.targets) != len(self.indices):
            raise ValueError(f"Invalid targets: {len(self.targets)} labels for {len(self.indices)} items")
    def __len__(self): return len(self.indices)
    def __getitem__(self, i):
        x, _ = self.base[int(self.indices[i])]
        return x, int(self.targets[i])

def _targets(ds):
    """The labels of a torchvision dataset (or a `LabelledView`) as a tensor."""
    if isinstance(ds, LabelledView): return ds.targets
    return torch.as_tensor(ds.targets)


# %% [markdown]
# A validation split is held out from the *training* set (never from the test set), so that a
# hyperparameter or an epoch can be chosen without looking at the test set. `validation_split` draws
# it with its own seed; the two views point into the same base dataset, with the same (possibly noisy)
# labels the training set has.

# %%
#| export
def validation_split(dataset, n_val, seed=0):
    """Views (train, val) of `dataset`: `n_val` items drawn by `seed` held out, the rest (in order) for training."""
    n = len(dataset)
    if isinstance(n_val, bool) or int(n_val) != n_val or not 0 < n_val < n:
        raise ValueError(f"Invalid validation split: {n_val} (between 1 and {n - 1} of the {n} training examples)")
    view = dataset if isinstance(dataset, LabelledView) else LabelledView(dataset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, 0x7a1)))
    val, train = perm[:int(n_val)], perm[int(n_val):].sort().values
    return tuple(LabelledView(view.base, view.indices[i], view.targets[i]) for i in (train, val))


# %%
_base = LabelledView(list(zip(range(10), range(10))), targets=torch.arange(10) % 3)
_tr, _va = validation_split(_base, 3, seed=1)
test_eq(sorted(_tr.indices.tolist() + _va.indices.tolist()), list(range(10)))
test_eq(_va.targets, _va.indices % 3)
test_eq(validation_split(_base, 3, seed=1)[1].indices, _va.indices)
assert not torch.equal(validation_split(_base, 3, seed=2)[1].indices, _va.indices)
test_fail(lambda: validation_split(_base, 10), contains='between 1 and 9')


# %%
#| export
@dataclass
class DataBundle:
    """A training set, a test set and what a model needs to know about them."""
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int


# %% [markdown]
# ## Damaged files
#
# A dataset file that is there but damaged (a download cut short, a copy that ran out of disk, a bit
# flip) is reported as damaged, with its path and what is wrong, never as missing. An MNIST idx file
# is checked before every load, from its header alone: the magic number (uint8 data, 3 dimensions for
# images, 1 for labels), the size the header promises against the size on disk, 28x28 images and one
# label per image. CIFAR pickles are checked when torchvision fails to load them (so a healthy folder is
# not read twice): each must unpickle to rows of 3x32x32 bytes with one label each, and a real file
# (not one of `write_fake_cifar`'s) must match its MD5 sum.

# %%
#| export
class DataFileError(ValueError):
    """A dataset file that exists but is damaged; the message names the file and what is wrong."""


# %%
#| exporti
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # uint8 labels (1 dimension), uint8 images (3 dimensions)

def _idx_shape(path):
    """The shape an MNIST idx file's header declares, after checking its magic number and its size against it."""
    path, ndim = Path(path), 3 if 'idx3' in Path(path).name else 1
    size, header = path.stat().st_size, 4 + 4 * ndim
    with open(path, 'rb') as f: head = f.read(header)
    if len(head) < header:
        raise DataFileError(f"Damaged MNIST file {path}: {size} bytes, shorter than its {header}-byte header")
    magic = int.from_bytes(head[:4], 'big')
    if magic != _IDX_MAGIC[ndim]:
        raise DataFileError(f"Damaged MNIST file {path}: bad magic number 0x{magic:08x} "
                            f"(expected 0x{_IDX_MAGIC[ndim]:08x}: uint8, {ndim} dimension{'s' * (ndim > 1)})")
    shape = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(shape))
    if size != expected:
        raise DataFileError(f"Damaged MNIST file {path}: {size} bytes, expected {expected} (header: "
                            f"{' x '.join(map(str, shape))} uint8){': truncated' if size < expected else ''}")
    return shape

def _check_mnist(root, train):
    """Check one MNIST split's idx files if both are present: headers, sizes, 28x28 images, a label in 0-9 per image."""
    raw, split = Path(root).expanduser() / 'MNIST' / 'raw', 'train' if train else 't10k'
    images, labels = raw / f'{split}-images-idx3-ubyte', raw / f'{split}-labels-idx1-ubyte'
    if not (images.is_file() and labels.is_file()):
        return  # missing files are torchvision's (and `_missing`'s) to report
    (n, h, w), (m,) = _idx_shape(images), _idx_shape(labels)
    if (h, w) != (28, 28): raise DataFileError(f"Damaged MNIST file {images}: images of {h}x{w} pixels, expected 28x28")
    if n != m: raise DataFileError(f"MNIST files disagree: {images} holds {n} images, {labels} {m} labels")
    top = max(labels.read_bytes()[8:], default=0)
    if top > 9: raise DataFileError(f"Damaged MNIST file {labels}: label {top}, expected 0-9")


# %%
tmp = Path(tempfile.mkdtemp())
raw = write_fake_mnist(tmp, n_train=30, n_test=10) / 'MNIST' / 'raw'
test_eq(_idx_shape(raw / 'train-images-idx3-ubyte'), (30, 28, 28))
f = raw / 't10k-images-idx3-ubyte'
f.write_bytes(f.read_bytes()[:-100])
test_fail(lambda: _check_mnist(tmp, train=False),
          contains=f'{f}: 7756 bytes, expected 7856 (header: 10 x 28 x 28 uint8): truncated')
f = raw / 'train-labels-idx1-ubyte'
f.write_bytes(b'\x00\x00\x08\x03' + f.read_bytes()[4:])
test_fail(lambda: _check_mnist(tmp, train=True), contains='bad magic number 0x00000803 (expected 0x00000801')


# %%
#| exporti
def _check_cifar(name, root, train):
    """Check a CIFAR split's pickles and meta file where present: 3x32x32-byte rows, one label each, real files' MD5."""
    from torchvision.datasets.utils import check_integrity
    cls = {'cifar10': tvd.CIFAR10, 'cifar100': tvd.CIFAR100}[name]
    folder = Path(root).expanduser() / cls.base_folder
    fake = (folder / FAKE_MARKER).exists()
    for fname, md5 in (cls.train_list if train else cls.test_list) + [[cls.meta['filename'], cls.meta['md5']]]:
        path = folder / fname
        if not path.is_file(): continue  # missing files are torchvision's (and `_missing`'s) to report
        size = path.stat().st_size

        def bad(what):   # the error for this file: what is wrong and how to get a good copy
            fix = 'write it again (write_fake_cifar)' if fake else f'extract {cls.filename} again'
            return DataFileError(f"Damaged {name} file {path} ({size} bytes): {what}; " + fix)

        try:
            with open(path, 'rb') as f: d = pickle.load(f, encoding='latin1')
        except Exception as e: raise bad(f"cannot be unpickled ({type(e).__name__}: {e})") from e
        if fname == cls.meta['filename']:
            if not (isinstance(d, dict) and cls.meta['key'] in d): raise bad(f"no {cls.meta['key']!r} in the meta file")
        else:
            key = 'labels' if name == 'cifar10' else 'fine_labels'
            x = d.get('data') if isinstance(d, dict) else None
            if getattr(x, 'ndim', 0) != 2 or x.shape[1] != 3 * 32 * 32:
                raise bad(f"'data' holds {getattr(x, 'shape', type(x).__name__)}, "
                          "expected rows of 3*32*32 = 3072 bytes")
            if len(d.get(key, ())) != len(x): raise bad(f"{len(x)} images but {len(d.get(key, ()))} {key!r}")
        if not fake and not check_integrity(str(path), md5):
            raise bad(f"its MD5 sum differs from the real file's ({md5})")


# %%
write_fake_cifar(tmp, n_train=20, n_test=10)
f = tmp / 'cifar-10-batches-py' / 'data_batch_3'
_check_cifar('cifar10', tmp, train=True)
f.write_bytes(f.read_bytes()[:-50])
test_fail(lambda: _check_cifar('cifar10', tmp, train=True), contains=f'{f} (')
test_fail(lambda: _check_cifar('cifar10', tmp, train=True),
          contains='cannot be unpickled (UnpicklingError: pickle data was truncated)')


# %% [markdown]
# torchvision checks CIFAR files against the real MD5 sums. The subclasses skip that check, and
# only it, in folders marked as fake by `write_fake_cifar`; real data is always verified.

# %%
#| exporti
def _fake_folder(ds): return (Path(ds.root) / ds.base_folder / FAKE_MARKER).exists()

class _CIFAR10(tvd.CIFAR10):
    def _check_integrity(self):
        if not _fake_folder(self): return super()._check_integrity()
        return all((Path(self.root) / self.base_folder / f).exists() for f, _ in self.train_list + self.test_list)
    def _load_meta(self):
        if _fake_folder(self): self.meta = dict(self.meta, md5=None)
        super()._load_meta()

class _CIFAR100(_CIFAR10, tvd.CIFAR100): pass

_FOLDERS = {'mnist': 'MNIST/raw', 'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python', 'imagenet': '.'}
_WHAT = {'mnist': 'the four MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, '
                  't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)',
         'cifar10': 'the extracted cifar-10-python.tar.gz (data_batch_1..5, test_batch, batches.meta)',
         'cifar100': 'the extracted cifar-100-python.tar.gz (train, test, meta)',
         'imagenet': 'an ImageFolder tree: train/<class>/*.JPEG and val/<class>/*.JPEG (val sorted into class folders)'}

def _missing(name, root, err):
    folder = Path(root).expanduser().resolve() / _FOLDERS[name]
    return FileNotFoundError(f"{name} not found in {folder} ({err}). Without network, put {_WHAT[name]} there "
                             f"(or point --data-root elsewhere); stablesam.data.write_fake_* writes small fake ones.")

def _torchvision(name, root, train, transform, download):
    """A torchvision dataset, downloaded if asked and possible; a clear error naming the folder, or the damaged file."""
    cls = {'mnist': tvd.MNIST, 'cifar10': _CIFAR10, 'cifar100': _CIFAR100}[name]
    if name == 'mnist': _check_mnist(root, train)
    try: ds = cls(root, train=train, transform=transform, download=False)
    except Exception as e:
        if name != 'mnist': _check_cifar(name, root, train)  # a file that is there but damaged is named as such
        if not isinstance(e, RuntimeError): raise
        if not download: raise _missing(name, root, 'download=False') from e
        try: ds = cls(root, train=train, transform=transform, download=True)
        except Exception as e2: raise _missing(name, root, f'download failed: {type(e2).__name__}: {e2}') from e2
    note_data_read(*_split_files(name, root, train))
    return ds

def _split_files(name, root, train):
    """The files a torchvision dataset's split reads (for the provenance of what a run writes)."""
    if name == 'mnist':
        split = 'train' if train else 't10k'
        return [Path(root) / 'MNIST' / 'raw' / f'{split}-{kind}' for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte')]
    cls = {'cifar10': tvd.CIFAR10, 'cifar100': tvd.CIFAR100}[name]
    return [Path(root) / cls.base_folder / f for f, _ in (cls.train_list if train else cls.test_list) + [
        [cls.meta['filename'], None]]]

def _imagefolder(root, split, transform):
    folder = Path(root) / split
    if not folder.is_dir(): raise _missing('imagenet', root, f'no folder {folder}')
    note_data_read(folder)
    return tvd.ImageFolder(str(folder), transform=transform)


# %% [markdown]
# ## Digits: real handwriting, offline
#
# scikit-learn ships 1,797 real 8x8 handwritten digits (`sklearn.datasets.load_digits`, grey levels 0-16,
# 10 classes): the one real image dataset that needs no download. `digits` splits them once, by a
# fixed seed that no run's seed changes, into 500 test images (50 per class) and 1,297 training
# images, scales the grey levels to [0, 1] and normalises them with the training split's mean and
# standard deviation. The images are held as tensors (N, 1, 8, 8) from the start, so the
# in-memory training path slices them directly. `root` is not used.

# %%
#| exporti
from torch.utils.data import TensorDataset

DIGITS_TEST_PER_CLASS = 50  # 500 test images, 1,297 training images
_DIGITS_SPLIT_SEED = 0xd1917  # fixed: the split is the same for every run
_STATS['digits'] = ((0.30546905,), (0.37613807,))  # of the training split's grey levels / 16

class _InMemory(TensorDataset):
    """Inputs and labels held as tensors, with the `targets` attribute of torchvision's datasets."""
    def __init__(self, x, y):
        super().__init__(x, y)
        self.targets = y

def _digits_split(target):
    """The digits' fixed split: sorted index arrays (train, test), `DIGITS_TEST_PER_CLASS` test images per class."""
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    per_class = [rng.permutation(np.flatnonzero(target == c))[:DIGITS_TEST_PER_CLASS] for c in range(10)]
    test = np.sort(np.concatenate(per_class))
    return np.setdiff1d(np.arange(len(target)), test), test

def _digits():
    """scikit-learn's 8x8 digits as normalised (training, test) tensor datasets of 1,297 and 500 images."""
    import sklearn.datasets
    d = sklearn.datasets.load_digits()
    note_data_read(Path(sklearn.datasets.__file__).parent / 'data' / 'digits.csv.gz')
    train, test = _digits_split(d.target)
    (mean,), (std,) = _STATS['digits']
    x = torch.tensor((d.images / 16 - mean) / std, dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(d.target, dtype=torch.long)
    return _InMemory(x[train], y[train]), _InMemory(x[test], y[test])


# %%
dtrain, dtest = _digits()
test_eq((len(dtrain), len(dtest), tuple(dtrain[0][0].shape)), (1297, 500, (1, 8, 8)))
test_eq(torch.bincount(dtest.targets).tolist(), [50] * 10)
test_close(dtrain.tensors[0].mean().item(), 0.0, eps=1e-5)
test_close(dtrain.tensors[0].std().item(), 1.0, eps=1e-3)
test_eq(_digits()[1].tensors[0], dtest.tensors[0])  # the same split every time

# %%
#| hide
from sklearn.datasets import load_digits

# %%
#| hide
raw_digits = load_digits()
tr, te = _digits_split(raw_digits.target)
test_eq(set(tr) & set(te), set())
test_eq(len(tr) + len(te), 1797)
test_close(raw_digits.images[tr].mean() / 16, _STATS['digits'][0][0], eps=1e-7)
test_close((raw_digits.images[tr] / 16).std(), _STATS['digits'][1][0], eps=1e-7)


# %% [markdown]
# A quick run evaluates on a seeded random subset of the test set (`test_subset`), drawn here, where the
# training subset is drawn; a training loop given a test set of its own applies the same function.

# %%
#| export
def eval_subset(dataset, n, seed=0):
    """A seeded random subset of `n` items of `dataset` in drawn order (`dataset` if `n` is None or not smaller)."""
    if n is None or n >= len(dataset): return dataset
    if int(n) != n or n < 1: raise ValueError(f"Invalid test_subset: {n} (a positive number of examples or None)")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.Subset(dataset, perm[:int(n)].tolist())


# %%
#| export
def get_datasets(name, root, *, train_subset=None, test_subset=None, label_noise=0.0, seed=0, augment=True,
                 download=True):
    """The training and test sets of `name` in `root`: paper's augmentation, optional seeded subsets and label noise."""
    _check_dataset(name)
    if train_subset is not None and (int(train_subset) != train_subset or train_subset < 1):
        raise ValueError(f"Invalid train_subset: {train_subset} (a positive number of examples or None)")
    if not (0.0 <= label_noise <= 1.0):
        raise ValueError(f"Invalid label noise fraction: {label_noise} (must be in [0, 1])")
    root = Path(root).expanduser()
    ttrain, ttest = get_transforms(name, True, augment), get_transforms(name, False)
    if name == 'digits': (train, test), num_classes, in_channels, size = _digits(), 10, 1, 8  # root unused
    elif name == 'imagenet':
        train, test = _imagefolder(root, 'train', ttrain), _imagefolder(root, 'val', ttest)
        if train.class_to_idx != test.class_to_idx:
            raise ValueError(f"ImageNet folders disagree: {root / 'train'} has {len(train.classes)} classes, "
                             f"{root / 'val'} has {len(test.classes)} (val must be sorted into the same class folders)")
        num_classes, in_channels, size = len(train.classes), 3, 224
    else:
        train = _torchvision(name, root, True, ttrain, download)
        test = _torchvision(name, root, False, ttest, download)
        num_classes = {'mnist': 10, 'cifar10': 10, 'cifar100': 100}[name]
        in_channels, size = (1, 28) if name == 'mnist' else (3, 32)
    indices = None
    if train_subset is not None and train_subset < len(train):
        g = torch.Generator().manual_seed(_mix(seed, 0x5b5e7))
        indices = torch.randperm(len(train), generator=g)[:int(train_subset)].sort().values
    train = LabelledView(train, indices)
    if label_noise > 0: train.targets = noisy_labels(train.targets, label_noise, num_classes, seed)
    return DataBundle(train, eval_subset(LabelledView(test), test_subset, seed), num_classes, in_channels, size)


# %%
tmp = Path(tempfile.mkdtemp())
write_fake_cifar(tmp, n_train=100, n_test=40)
d = get_datasets('cifar10', tmp, label_noise=0.2, seed=1)
x, label = d.train[0]
test_eq((tuple(x.shape), len(d.train), len(d.test), d.num_classes), ((3, 32, 32), 100, 40, 10))
clean = get_datasets('cifar10', tmp, seed=1).train.targets
test_eq((d.train.targets != clean).sum().item(), 20)
test_eq(get_datasets('cifar10', tmp, train_subset=30).train.targets.shape, (30,))
small = get_datasets('cifar10', tmp, test_subset=10, seed=1).test
test_eq((len(small), small[3][0]), (10, get_datasets('cifar10', tmp).test[small.indices[3]][0]))
test_eq(small.indices, get_datasets('cifar10', tmp, test_subset=10, seed=1).test.indices)

# %% [markdown]
# The class signal of the fake images is visible even in the per-class mean images:

# %%
#| hide
import matplotlib.pyplot as plt

# %%
#| hide
plt.rcParams['figure.dpi'] = 72

# %%
raw = _CIFAR10(tmp, train=True)
fig, axs = plt.subplots(1, 10, figsize=(10, 1.3))
for c, ax in enumerate(axs):
    ax.imshow(raw.data[np.array(raw.targets) == c].mean(0).astype(np.uint8))
    ax.set_axis_off()
    ax.set_title(f'class {c}', fontsize=8)
plt.show()
plt.close(fig)

# %% [markdown]
# CIFAR-100 and an ImageNet-style folder load the same way; missing data gives an error that names
# the folder and what to put there.

# %%
write_fake_cifar(tmp, n_train=200, n_test=100, num_classes=100)
test_eq(get_datasets('cifar100', tmp).num_classes, 100)
write_fake_imagefolder(tmp / 'imagenet', n_train=12, n_test=6, num_classes=3)
d = get_datasets('imagenet', tmp / 'imagenet')
test_eq((d.num_classes, tuple(d.train[0][0].shape), tuple(d.test[0][0].shape)), (3, (3, 224, 224), (3, 224, 224)))
test_fail(lambda: get_datasets('mnist', tmp / 'nowhere', download=False), contains='nowhere/MNIST/raw')
test_fail(lambda: get_datasets('imagenet', tmp / 'nowhere'), contains='ImageFolder tree')
test_fail(lambda: get_datasets('svhn', tmp), contains='choose from mnist, cifar10')


# %% [markdown]
# ## Reproducible order and augmentation
#
# The training loop visits the training set in an order that depends on the seed and the epoch
# only, and draws each example's augmentation from a generator seeded by (seed, epoch, index). So two
# runs with the same seed see the same batches with the same crops and flips, whatever the number
# of loader workers, whether workers persist across epochs, and whether the run was resumed from a
# checkpoint. With several processes (DistributedDataParallel), rank `r` of `w` takes positions
# `r, r+w, r+2w, ...` of the epoch's permutation, so that batch `k` of all ranks together is batch
# `k` of a single process with the global batch size.

# %%
#| export
class EpochSampler(torch.utils.data.Sampler):
    """Yields `(index, epoch)` keys: a permutation of range(n) fixed by (seed, epoch), sharded over ranks."""
    def __init__(self, n, seed=0, rank=0, world_size=1, shuffle=True):
        self.n, self.seed, self.rank, self.world_size, self.shuffle, self.epoch = n, seed, rank, world_size, shuffle, 0
    def set_epoch(self, epoch): self.epoch = epoch
    def order(self):
        """This rank's indices for the current epoch."""
        if self.shuffle:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch)))
        else:
            perm = torch.arange(self.n)
        perm = perm[:self.n - self.n % self.world_size]
        return perm[self.rank::self.world_size]
    def __iter__(self): return iter([(int(i), self.epoch) for i in self.order()])
    def __len__(self): return self.n // self.world_size

class SeededAugment(Dataset):
    """Wraps a dataset so that item `(index, epoch)` is transformed with torch's RNG seeded by (seed, epoch, index)."""
    def __init__(self, dataset, seed=0): self.dataset, self.seed = dataset, seed
    def __len__(self): return len(self.dataset)
    def __getitem__(self, key):
        i, epoch = key
        gen = torch.default_generator  # the CPU generator that torchvision's random transforms draw from
        saved = gen.get_state() if torch.utils.data.get_worker_info() is None else None
        gen.manual_seed(_mix(self.seed, (epoch << 32) + i))
        try: return self.dataset[i]
        finally:
            if saved is not None: gen.set_state(saved)


# %%
d = get_datasets('cifar10', tmp)
s = EpochSampler(len(d.train), seed=0)
aug = SeededAugment(d.train, seed=0)
keys = list(s)
test_eq(sorted(k[0] for k in keys), list(range(len(d.train))))
test_eq(aug[keys[0]][0], aug[keys[0]][0])
s.set_epoch(1)
assert [k[0] for k in s] != [k[0] for k in keys]
shards = [EpochSampler(len(d.train), seed=0, rank=r, world_size=2).order() for r in range(2)]
test_eq(torch.stack(shards, 1).flatten(), EpochSampler(len(d.train), seed=0).order())


# %% [markdown]
# ## Loaders
#
# Data loading must never be the bottleneck on a GPU: worker processes, pinned memory and
# persistent workers there; on a CPU, the main process (workers would compete with the training
# for the same few cores).

# %%
#| export
def loader_kwargs(device, workers=None):
    """DataLoader settings for `device`: workers, pinned memory and persistent workers on GPU, none on CPU."""
    cuda = torch.device(device).type == 'cuda'
    if workers is None: workers = min(8, os.cpu_count() or 1) if cuda else 0
    if workers < 0: raise ValueError(f"Invalid workers: {workers}")
    kw = dict(num_workers=workers, pin_memory=cuda)
    if workers > 0: kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


# %%
test_eq(loader_kwargs('cpu'), dict(num_workers=0, pin_memory=False))
test_eq(loader_kwargs('cuda', 4)['persistent_workers'], True)


# %% [markdown]
# ## In memory
#
# MNIST, CIFAR-10/100 and any subset of them fit in memory. `decode` turns a dataset into two tensors
# once (a view of tensors already in memory is sliced, not iterated), so that a training loop can take a
# batch by index slicing instead of calling `__getitem__` and collating per image. The tensors are the
# very ones the DataLoader would have collated: without augmentation the batches are bit-identical.
# `in_memory` wraps them back into a `LabelledView`, the type every other part of the package takes.

# %%
#| export
def decode(dataset, batch_size=1024):
    """`dataset` as two tensors (inputs, labels), decoded once; a `LabelledView` of tensors is sliced, not iterated."""
    from torch.utils.data import DataLoader, TensorDataset
    if isinstance(dataset, LabelledView) and isinstance(dataset.base, TensorDataset):
        return dataset.base.tensors[0][dataset.indices], dataset.targets
    if len(dataset) == 0: raise ValueError("decode needs a non-empty dataset")
    xs, ys = zip(*DataLoader(dataset, batch_size=batch_size, shuffle=False))
    return torch.cat(xs), torch.cat(ys).long()

def in_memory(dataset, batch_size=1024):
    """`dataset` decoded once into tensors, as a `LabelledView` (valid where items never change: no augmentation)."""
    from torch.utils.data import TensorDataset
    x, y = decode(dataset, batch_size)
    return LabelledView(TensorDataset(x, y), targets=y)


# %%
d = get_datasets('cifar10', tmp, augment=False, label_noise=0.2)
x, y = decode(d.train)
test_eq(x.shape, (len(d.train), 3, 32, 32))
test_eq(y, d.train.targets)
test_eq(x[5], d.train[5][0])
m = in_memory(d.train)
test_eq(m[5][0], d.train[5][0])
test_eq(m.targets, d.train.targets)
sub = LabelledView(m, [3, 1, 4])
test_eq(decode(sub)[0], torch.stack([d.train[i][0] for i in (3, 1, 4)]))
test_eq(decode(LabelledView(m.base, torch.tensor([2, 0]), targets=torch.tensor([7, 7])))[1], torch.tensor([7, 7]))

# %% [markdown]
# ## Batched augmentation
#
# The CIFAR augmentation (random crop 32 of the image padded by 4 pixels, horizontal flip with probability
# 1/2) also runs on a whole batch of decoded tensors at once, on the training device. Each item's crop
# offsets and flip are a function of (seed, epoch, index) alone: a 32-bit hash of the index keyed by the
# seed and the epoch, with no generator state. So the draws are reproducible, the same for an item whatever
# batch it lands in (and whatever the number of processes), and resuming a run at any epoch draws what
# the uninterrupted run drew. The padding is applied to the normalised image with the value that a
# black pixel takes after normalisation, so a crop is exactly torchvision's crop of the padded image.

# %%
#| exporti
_M32 = 0xFFFFFFFF

def _mul32(x, m):
    """`x * m mod 2**32` for an int64 tensor `x` in [0, 2**32) and a 32-bit constant `m`, without int64 overflow."""
    return ((x * (m >> 16)) % 65536 * 65536 + x * (m & 0xFFFF)) & _M32

def _hash32(x):
    """A 32-bit integer hash (lowbias32: a bijection of [0, 2**32)) of each element of an int64 tensor."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7feb352d)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846ca68b)
    return x ^ (x >> 16)


# %%
#| export
class CropFlip:
    """Batched random crop (`padding` pixels of `fill` around) and horizontal flip, drawn per (seed, epoch, index)."""
    def __init__(self, padding=4, flip=True, fill=0.0):
        self.padding, self.flip, self.fill = int(padding), bool(flip), torch.as_tensor(fill, dtype=torch.float32)

    def draws(self, indices, seed, epoch):
        """`(dy, dx, flip)` of items `indices` at `epoch`: crop offsets in [0, 2*padding] and flip flags."""
        key = _mix(seed, epoch)
        u = _hash32(_mul32(indices.long() & _M32, 0x9E3779B9) ^ key)
        u = _hash32(u ^ _mix(key, 1))
        k = 2 * self.padding + 1
        flip = (u // (k * k)) % 2 == 1 if self.flip else torch.zeros_like(u, dtype=torch.bool)
        return u % k, (u // k) % k, flip

    def apply(self, x, dy, dx, flip):
        """The crops of `x` (N, C, H, W), padded, at offsets `(dy, dx)`, flipped where `flip`."""
        n, c, h, w = x.shape
        p = self.padding
        padded = self.fill.to(x).reshape(-1, 1, 1).expand(c, h + 2 * p, w + 2 * p).repeat(n, 1, 1, 1)
        padded[:, :, p:p + h, p:p + w] = x
        rows = dy[:, None] + torch.arange(h, device=x.device)
        cols = dx[:, None] + torch.arange(w, device=x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        i = torch.arange(n, device=x.device)[:, None, None, None]
        j = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[i, j, rows[:, None, :, None], cols[:, None, None, :]]

    def to(self, device):
        """Keep the fill value on `device` (where the batches are); returns self."""
        self.fill = self.fill.to(device)
        return self

    def __call__(self, x, indices, seed, epoch):
        """Augment the batch `x` of items `indices` (their positions in the training set) at `epoch`."""
        return self.apply(x, *self.draws(indices, seed, epoch))


# %% [markdown]
# A crop is exactly torchvision's, pixel for pixel, for the same offsets; the draws depend on the index,
# not on the batch; another epoch or seed draws anew.

# %%
import torchvision.transforms.functional as TF

# %%
d = get_datasets('cifar10', tmp, augment=False)
raw = _CIFAR10(tmp, train=True)
norm = T.Normalize(*_STATS['cifar10'])
aug = CropFlip(4, fill=norm(torch.zeros(3, 1, 1)))
idx = torch.tensor([5, 17, 2, 40, 8, 99])
x = decode(d.train)[0][idx]
dy, dx, flip = aug.draws(idx, seed=0, epoch=3)
for k, i in enumerate(idx.tolist()):
    img = TF.crop(TF.pad(raw[i][0], 4), int(dy[k]), int(dx[k]), 32, 32)
    test_eq(aug.apply(x[k:k + 1], dy[k:k + 1], dx[k:k + 1], flip[k:k + 1])[0],
            norm(TF.to_tensor(TF.hflip(img) if flip[k] else img)))
test_eq(aug(x, idx, 0, 3)[2], aug(x[2:3], idx[2:3], 0, 3)[0])        # independent of the batch
test_eq([t.tolist() for t in aug.draws(idx, 0, 3)], [t.tolist() for t in (dy, dx, flip)])
assert not torch.equal(aug.draws(idx, 0, 4)[0], dy) and not torch.equal(aug.draws(idx, 1, 3)[0], dy)

# %% [markdown]
# `split_augmentation` takes a dataset apart into the same items without their random transforms (to be
# decoded once) and the batched augmentation that replaces them: `CropFlip` for the CIFAR transform (its
# fill is what a black pixel becomes after the remaining transforms), None for a dataset without random
# transforms, and `(None, None)` for a random transform that has no batched version here (ImageNet's
# random resized crop), which stays on the DataLoader path.

# %%
#| exporti
_POINTWISE = (T.ToTensor, T.Normalize, T.PILToTensor, T.ConvertImageDtype)
_DETERMINISTIC = _POINTWISE + (T.Resize, T.CenterCrop)

def _innermost(ds):
    """The dataset under views and subsets (the one that holds the transform)."""
    while isinstance(ds, (LabelledView, torch.utils.data.Subset)):
        ds = ds.base if isinstance(ds, LabelledView) else ds.dataset
    return ds

def _with_transform(ds, transform):
    """`ds` with the innermost dataset's transform replaced (views rebuilt around a shallow copy; data shared)."""
    if isinstance(ds, LabelledView): return LabelledView(_with_transform(ds.base, transform), ds.indices, ds.targets)
    if isinstance(ds, torch.utils.data.Subset):
        return torch.utils.data.Subset(_with_transform(ds.dataset, transform), ds.indices)
    ds = copy.copy(ds)
    ds.transform = transform
    return ds

def _batchable_crop(crop, size):
    """The padding of a `RandomCrop` that `CropFlip` reproduces (image-sized, equal zero padding), else None."""
    pad = crop.padding if isinstance(crop.padding, (list, tuple)) else [crop.padding or 0]
    ok = (len(set(pad)) == 1 and crop.fill == 0 and crop.padding_mode == 'constant' and not crop.pad_if_needed
          and tuple(crop.size) == tuple(size))
    return pad[0] if ok else None


# %%
#| export
def split_augmentation(dataset):
    """`(plain, augment)`: dataset minus random transforms, their `CropFlip` or None; `(None, None)` if unbatchable."""
    inner = _innermost(dataset)
    t = getattr(inner, 'transform', None)
    steps = list(t.transforms) if isinstance(t, T.Compose) else [] if t is None else [t]
    if all(isinstance(s, _DETERMINISTIC) for s in steps): return dataset, None
    crop = steps.pop(0) if isinstance(steps[0], T.RandomCrop) else None
    flip = steps.pop(0) if steps and isinstance(steps[0], T.RandomHorizontalFlip) else None
    if not all(isinstance(s, _POINTWISE) for s in steps) or (flip is not None and flip.p != 0.5): return None, None
    img = _with_transform(inner, None)[0][0]
    padding = _batchable_crop(crop, img.size[::-1]) if crop is not None else 0
    if padding is None: return None, None
    plain = T.Compose(steps)
    fill = plain(img.point(lambda _: 0).crop((0, 0, 1, 1)))  # a black pixel after the remaining transforms
    return _with_transform(dataset, plain), CropFlip(padding, flip is not None, fill)


# %%
aug_d = get_datasets('cifar10', tmp, augment=True, label_noise=0.2)
plain, aug = split_augmentation(aug_d.train)
test_eq((aug.padding, aug.flip), (4, True))
test_eq(aug.fill.flatten(), norm(torch.zeros(3, 1, 1)).flatten())
test_eq(plain[7][0], get_datasets('cifar10', tmp, augment=False).train[7][0])
test_eq(plain.targets, aug_d.train.targets)
test_eq(aug_d.train[7][0].shape, (3, 32, 32))                                     # the original still augments
test_eq(split_augmentation(d.train), (d.train, None))
test_eq(split_augmentation(get_datasets('imagenet', tmp / 'imagenet').train), (None, None))
