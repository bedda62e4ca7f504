# %%
#| default_exp open_questions

# %% [markdown]
# # open_questions
#
# > The questions the paper leaves open (its Section 6), measured on the final models of a stability experiment

# %% [markdown]
# The paper's conclusion asks whether StableSAM and SAM "converge to the same attractor of minima", how the
# renormalization reshapes what training finds, and how it affects adversarial robustness. This page measures
# each on the models that a stability experiment ([stability](06_stability.ipynb)) leaves in its run folders
# (`runs/optimizer=NAME,seed=S/checkpoint.pt`: the last epoch's models on $S$ and $S'$); the models on $S$ are used.
#
# - **Same attractor?** Loss and accuracy along the straight line $w(\alpha) = (1-\alpha) w_a + \alpha w_b$
#   between two final models, and the **barrier**: the largest rise of the loss above the straight line between
#   its ends, $\max_\alpha L(w(\alpha)) - [(1-\alpha) L(w_a) + \alpha L(w_b)]$. Pairs: SAM and StableSAM from
#   the same initialisation and batch order (the same seed); SAM and SGD likewise; and two SAM runs that differ
#   only in batch order (the seed's initialisation, another seed's order), the reference for "the same basin".
# - **How flat?** The top Hessian eigenvalue (power iteration, [landscape](07_landscape.ipynb)) and the Hessian
#   trace by Hutchinson's estimator, $\mathrm{tr} H \approx \frac{1}{m}\sum_i z_i^\top H z_i$ with Rademacher
#   $z_i$, with its standard error, on a fixed batch of training examples.
# - **Adversarial robustness.** Test accuracy under FGSM and PGD ($L_\infty$, in pixel space $[0, 1]$) from
#   `torchattacks`, the maintained library; its PGD is checked against a PGD written here from its definition.

# %%
#| hide
from fastcore.test import *
import tempfile

# %%
#| export
import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablesam.data import normalization
from stablesam.landscape import hessian_vector_product, model_loss_fn, top_hessian_eig
from stablesam.stability import param_distance as distance   # ||w_a - w_b|| / (||w_a|| + ||w_b||)


# %% [markdown]
# ## Flatness: the Hessian trace

# %%
#| export
def hutchinson_trace(loss_fn, params, probes: int = 100, seed: int = 0) -> dict:
    """Hutchinson's estimate of the Hessian trace of `loss_fn()` at `params`: mean and standard error over probes."""
    if int(probes) < 2: raise ValueError(f"Invalid probes: {probes} (at least 2, for a standard error)")
    params = [p for p in params if p.requires_grad]
    hvp = hessian_vector_product(loss_fn, params)
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(int(probes)):
        z = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in params]
        values.append(float(sum((a * b).sum() for a, b in zip(z, hvp(z)))))
    v = np.array(values)
    return dict(trace=float(v.mean()), stderr=float(v.std(ddof=1) / np.sqrt(len(v))), probes=len(v))


# %% [markdown]
# On a quadratic $\frac12 w^\top A w$ the Hessian is $A$: the estimate must be within a few standard errors of
# $\mathrm{tr} A$, and the standard error must shrink with more probes.

# %%
_A = torch.diag(torch.arange(1., 21.)) + 0.1
_w = nn.Parameter(torch.randn(20))
_est = hutchinson_trace(lambda: 0.5 * _w @ _A @ _w, [_w], probes=400)
assert abs(_est['trace'] - float(_A.trace())) < 4 * _est['stderr'], _est
assert hutchinson_trace(lambda: 0.5 * _w @ _A @ _w, [_w], probes=25)['stderr'] > _est['stderr']
test_fail(lambda: hutchinson_trace(lambda: _w.sum(), [_w], probes=1), contains='Invalid probes')


# %% [markdown]
# ## Same attractor: the path between two models

# %%
#| export
@torch.no_grad()
def loss_acc(model: nn.Module, batches) -> tuple:
    """Mean cross-entropy and accuracy of `model` (eval mode) over `batches` [(x, y), ...]."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in batches:
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction='sum'))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    return loss / n, correct / n


def interpolate(model_a: nn.Module, model_b: nn.Module, sets: dict, alphas=None) -> list[dict]:
    """Loss and accuracy on each of `sets` (name -> batches) along (1 - alpha) w_a + alpha w_b (default: 11 alphas)."""
    import copy
    alphas = np.linspace(0, 1, 11) if alphas is None else alphas
    mid, a, b = copy.deepcopy(model_a), model_a.state_dict(), model_b.state_dict()
    rows = []
    for alpha in alphas:
        mid.load_state_dict({k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a})
        row = dict(alpha=float(alpha))
        for name, batches in sets.items(): row[f'{name}_loss'], row[f'{name}_acc'] = loss_acc(mid, batches)
        rows.append(row)
    return rows


def barrier(rows: list[dict], key: str = 'train_loss') -> float:
    """The largest rise of `key` along the path above the straight line between its two ends."""
    ends = rows[0][key], rows[-1][key]
    return max(r[key] - ((1 - r['alpha']) * ends[0] + r['alpha'] * ends[1]) for r in rows)


# %%
torch.manual_seed(0)
_x, _y = torch.randn(64, 5), torch.randint(0, 3, (64,))
_ma, _mb = nn.Linear(5, 3), nn.Linear(5, 3)
_rows = interpolate(_ma, _mb, {'train': [(_x, _y)]})
test_close(_rows[0]['train_loss'], loss_acc(_ma, [(_x, _y)])[0], eps=1e-6)
test_close(_rows[-1]['train_loss'], loss_acc(_mb, [(_x, _y)])[0], eps=1e-6)
test_eq(barrier([dict(alpha=0., l=1.), dict(alpha=.5, l=3.), dict(alpha=1., l=2.)], 'l'), 1.5)
test_eq(distance(_ma, _ma), 0.0)
assert barrier(interpolate(_ma, _ma, {'train': [(_x, _y)]})) < 1e-6   # a model and itself: no barrier


# %% [markdown]
# ## Adversarial robustness
#
# The models take normalised images; the attacks work on pixels in $[0, 1]$ with an $L_\infty$ budget
# $\epsilon$, so each model is wrapped by `PixelModel`, which normalises first. `torchattacks` runs FGSM and
# PGD (10 steps of $2.5\epsilon/10$, random start). `pgd_reference` is PGD from its definition (Madry et al.):
# repeat $x \leftarrow \Pi_{\|x - x_0\|_\infty \le \epsilon, [0,1]}(x + \alpha\,\mathrm{sign}\nabla_x L)$. Without
# the random start both are deterministic, and they must give the same adversarial images.

# %%
#| export
class PixelModel(nn.Module):
    """`model` on images in [0, 1]: normalises them as the dataset's transform does, then applies `model`."""
    def __init__(self, model: nn.Module, dataset: str = 'mnist'):
        super().__init__()
        self.model = model
        mean, std = normalization(dataset)
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x): return self.model((x - self.mean) / self.std)


def torchattacks_attack(model: nn.Module, name: str, eps: float, steps: int = 10, random_start: bool = True):
    """A `torchattacks` FGSM or PGD ($L_\\infty$ `eps`, PGD step 2.5 eps / steps) on `model` (pixel inputs)."""
    try: import torchattacks
    except ImportError as e:
        raise ImportError("the adversarial attacks need torchattacks: pip install 'stablesam[attacks]'") from e
    if name == 'fgsm': return torchattacks.FGSM(model, eps=eps)
    if name == 'pgd': return torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                              random_start=random_start)
    raise ValueError(f"Unknown attack: {name!r} (choose from fgsm, pgd)")


def pgd_reference(model: nn.Module, x, y, eps: float, alpha: float, steps: int):
    """PGD from its definition, no random start: signed gradient steps projected on the eps-ball within [0, 1]."""
    x0, adv = x.detach(), x.detach().clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    return adv


def adversarial_accuracy(model: nn.Module, x, y, name: str, eps: float, batch: int = 500) -> float:
    """Accuracy of `model` (pixel inputs) on `x`, `y` attacked by `torchattacks_attack(model, name, eps)`."""
    model.eval()
    attack, correct = torchattacks_attack(model, name, eps), 0
    for xb, yb in zip(x.split(batch), y.split(batch)):
        adv = attack(xb, yb)   # with gradients: the attack differentiates the loss
        with torch.no_grad(): correct += int((model(adv).argmax(1) == yb).sum())
    return correct / len(y)


# %%
torch.manual_seed(0)
_net = PixelModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)))
_px, _py = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
_ref = pgd_reference(_net, _px, _py, eps=0.1, alpha=0.025, steps=10)
_lib = torchattacks_attack(_net, 'pgd', 0.1, random_start=False)(_px, _py)
test_close(_lib, _ref, eps=1e-6)   # the library's PGD is PGD
assert (_ref - _px).abs().max() <= 0.1 + 1e-6 and _ref.min() >= 0 and _ref.max() <= 1
assert adversarial_accuracy(_net, _px, _py, 'fgsm', 0.3) <= loss_acc(_net, [(_px, _py)])[1]
test_fail(lambda: torchattacks_attack(_net, 'cw', 0.1), contains='Unknown attack')

# %% [markdown]
# ## The experiment
#
# `question_specs` lists the measurements: one per final model (flatness, robustness) and one per pair of models
# (the path between them), for every seed of the given stability folders, plus the batch-order reference: SAM
# trained from a seed's initialisation with another seed's batch order (seed + 1000), compared with that seed's
# SAM; and the flatness **at equal training loss**: L is the highest final training loss (on S) among the runs of
# SGD, SAM, StableSAM and step-matched SAM, and each of those runs is retrained from its initialisation to its
# first epoch at or below L (the same batches as the stability run, checked against its recorded loss). They run through the experiment runner ([experiment](04c_experiment.ipynb)), so a stopped run continues
# and the folder's `config.json` records the command, the data files and the code.

# %%
#| export
PAIRS = (('sam', 'stablesam'), ('sam', 'sgd'), ('sam', 'sam-lrf'), ('stablesam', 'sam-lrf'))
KEY = ('kind', 'a', 'b', 'seed')
ORDER_OFFSET = 1000   # the batch-order reference trains with seed + ORDER_OFFSET's order
FLAT = ('sgd', 'sam', 'stablesam', 'sam-lrf')   # the optimizers whose flatness is compared at equal training loss


def _sources(folders) -> dict:
    """(optimizer, seed) -> the stability folder whose run folder holds its final models."""
    from stablesam.runs import CONFIG, read_json
    out = {}
    for folder in map(Path, folders):
        for d in read_json(folder / CONFIG).get('done', []):
            out[tuple(d['run'])] = str(folder)
    return out


def question_specs(folders, seeds, pairs=PAIRS, order_seeds=(0,)) -> list[dict]:
    """The measurements of the stability `folders`' final models: each model, each pair in `pairs`, the order runs."""
    src = _sources(folders)
    models = [o for o, _ in dict.fromkeys(src)]
    specs = [dict(kind='model', a=o, b=None, seed=s, folders=[src[o, s]]) for o in dict.fromkeys(models)
             for s in seeds if (o, s) in src]
    specs += [dict(kind='path', a=a, b=b, seed=s, folders=[src[a, s], src[b, s]]) for a, b in pairs for s in seeds
              if (a, s) in src and (b, s) in src]
    specs += [dict(kind='order', a='sam', b='sam', seed=s, folders=[src['sam', s]]) for s in order_seeds
              if ('sam', s) in src]
    level, epochs = equal_loss_epochs(folders, seeds)
    specs += [dict(kind='equal-loss', a=o, b=None, seed=s, folders=[src[o, s]], epoch=e, level=level)
              for (o, s), e in epochs.items()]
    return specs


def equal_loss_epochs(folders, seeds, optimizers=FLAT) -> tuple:
    """`(L, {(optimizer, seed): epoch})`: L the highest final training loss on S of the runs of `optimizers`, each
    run's first epoch at or below it (`(None, {})` without such runs)."""
    from stablesam.experiment import RECORDS
    from stablesam.runs import read_jsonl
    src, runs = _sources(folders), {}
    for folder in dict.fromkeys(src.values()):
        for r in read_jsonl(Path(folder) / RECORDS):
            k = (r['optimizer'], r['seed'])
            if r['optimizer'] in optimizers and r['seed'] in seeds and src.get(k) == folder:
                runs.setdefault(k, []).append(r)
    finals = {k: max(rs, key=lambda r: r['epoch'])['train_loss'] for k, rs in runs.items()}
    finals = {k: v for k, v in finals.items() if np.isfinite(v)}   # a diverged run has no equal-loss epoch
    if not finals: return None, {}
    level = max(finals.values())
    return level, {k: min(r['epoch'] for r in runs[k] if r['train_loss'] <= level) for k in finals}


# %% [markdown]
# `final_model` rebuilds a stability run's model on $S$ from its checkpoint; `pair_data` gives the training set
# $S$ of a seed and the test set. `initial_model` is the initialisation a Trainer of that seed starts from (checked
# against a Trainer below), from which the batch-order reference trains.

# %%
#| export
def folder_config(folder, optimizer: str, seed: int, data_root=None):
    """The `TrainConfig` of `optimizer`'s run with `seed` in stability folder `folder` (its recorded settings)."""
    from stablesam.config import TrainConfig
    from stablesam.runs import CONFIG, read_json
    settings = read_json(Path(folder) / CONFIG)['settings']
    matched = (settings.get('matched') or {}).get(f'optimizer={optimizer},seed={seed}')
    extra = dict(data_root=str(data_root)) if data_root is not None else {}
    return TrainConfig(**dict(settings['train'], optimizer=optimizer, seed=seed, lr_scale=matched, device='cpu',
                              progress=False, download=False, **extra)), settings.get('subset')


def pair_data(cfg, subset):
    """`(S, test)`: the training set S of `cfg.seed`'s stability pair and the test set, in memory."""
    from stablesam.data import LabelledView
    from stablesam.stability import neighbouring_indices, stability_data
    data = stability_data(cfg)
    n = len(data.train) if subset is None else min(len(data.train), int(subset))
    return LabelledView(data.train, neighbouring_indices(n, cfg.seed).s), data


def initial_model(cfg, data) -> nn.Module:
    """The model a Trainer of `cfg` starts from: `cfg.model` initialised under `torch.manual_seed(cfg.seed)`."""
    from stablesam.models import get_model
    torch.manual_seed(cfg.seed)
    return get_model(cfg.model, data.num_classes, data.in_channels, data.image_size)


def final_model(folder, optimizer: str, seed: int, data_root=None) -> nn.Module:
    """The last epoch's model on S of `optimizer`'s pair with `seed` in stability folder `folder`."""
    from stablesam.experiment import spec_id
    from stablesam.runs import load_checkpoint
    cfg, subset = folder_config(folder, optimizer, seed, data_root)
    path = Path(folder) / 'runs' / spec_id(dict(optimizer=optimizer, seed=seed), ('optimizer', 'seed')) / \
        'checkpoint.pt'
    if not path.exists():
        raise FileNotFoundError(f"{path}: no final model (the run folders of {folder} are not committed: run its "
                                "command here first)")
    _, data = pair_data(cfg, subset)
    model = initial_model(cfg, data)
    model.load_state_dict(load_checkpoint(path)['a']['model'])
    return model.eval()


def epoch_model(folder, optimizer: str, seed: int, epoch: int, data_root=None, rtol: float = 1e-3) -> nn.Module:
    """`optimizer`'s model on S with `seed` after `epoch` epochs, retrained from its initialisation in the stability
    run's batch order; its training loss is checked against the run's record of that epoch."""
    import dataclasses
    from stablesam.experiment import RECORDS
    from stablesam.runs import read_jsonl
    from stablesam.train import Trainer
    cfg, subset = folder_config(folder, optimizer, seed, data_root)
    rec = next((r for r in read_jsonl(Path(folder) / RECORDS) if (r['optimizer'], r['seed'], r['epoch']) ==
                (optimizer, seed, epoch)), None)
    if rec is None:
        raise ValueError(f"Invalid epoch: {folder} has no record of {optimizer}, seed {seed}, epoch {epoch}")
    train, data = pair_data(cfg, subset)
    t = Trainer(cfg, data=dataclasses.replace(data, train=train))   # cfg.epochs unchanged: the same lr schedule
    for _ in range(epoch): t.train_epoch()
    got = loss_acc(t.model, _batches(train))[0]
    if abs(got - rec['train_loss']) > rtol * abs(rec['train_loss']):
        raise RuntimeError(f"{optimizer}, seed {seed}: the retrained model's training loss at epoch {epoch} is "
                           f"{got:.6g}, the run recorded {rec['train_loss']:.6g} (not the same training)")
    return t.model.eval()


# %%
#| export
def _batches(dataset, n=None, size=1000):
    """The first `n` examples of in-memory `dataset` (all if None) as normalised (x, y) batches."""
    from stablesam.data import decode
    x, y = decode(dataset)
    if n is not None: x, y = x[:n], y[:n]
    return list(zip(x.split(size), y.split(size)))


def flatness(model, train, *, n_hessian=2000, probes=100, seed=0) -> dict:
    """Top Hessian eigenvalue (power iteration) and trace (Hutchinson, with its standard error) on `n_hessian` of
    `train`."""
    from stablesam.landscape import fixed_batch
    hb = fixed_batch(train, min(n_hessian, len(train)), seed=seed)
    loss_fn = model_loss_fn(model, [hb])
    params = [p for p in model.parameters() if p.requires_grad]
    top = top_hessian_eig(loss_fn, params, iters=100, tol=1e-3, seed=seed)[0]
    tr = hutchinson_trace(loss_fn, params, probes=probes, seed=seed)
    return dict(top_eig=top, trace=tr['trace'], trace_se=tr['stderr'])


def measure_model(model, train, test, dataset='mnist', *, n_hessian=2000, probes=100, n_attack=2000,
                  eps=(0.05, 0.1, 0.2, 0.3), seed=0) -> dict:
    """Losses, accuracies, top Hessian eigenvalue and trace (on `n_hessian` of `train`), attacked test accuracy."""
    out = {}
    out['train_loss'], out['train_acc'] = loss_acc(model, _batches(train))
    out['test_loss'], out['test_acc'] = loss_acc(model, _batches(test))
    out.update(flatness(model, train, n_hessian=n_hessian, probes=probes, seed=seed))
    mean, std = normalization(dataset)
    x, y = map(torch.cat, zip(*_batches(test, n_attack)))
    pixels = (x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)
    pm = PixelModel(model, dataset).eval()
    out['attack_clean_acc'] = loss_acc(pm, [(pixels, y)])[1]
    for e in eps:
        for name in ('fgsm', 'pgd'): out[f'{name}_{e:g}'] = adversarial_accuracy(pm, pixels, y, name, e)
    return out


def measure(spec: dict, run, data_root=None, **kw) -> list[dict]:
    """One measurement of `question_specs` (`run`: the runner's run, for its folder): its one record."""
    a_folder = spec['folders'][0]
    cfg, subset = folder_config(a_folder, spec['a'], spec['seed'], data_root)
    train, data = pair_data(cfg, subset)
    rec = {k: spec[k] for k in KEY}
    if spec['kind'] == 'model':
        rec.update(measure_model(final_model(a_folder, spec['a'], spec['seed'], data_root), train, data.test, **kw))
    elif spec['kind'] == 'equal-loss':
        model = epoch_model(a_folder, spec['a'], spec['seed'], spec['epoch'], data_root)
        rec.update(epoch=spec['epoch'], level=spec['level'], train_loss=loss_acc(model, _batches(train))[0],
                   **flatness(model, train, n_hessian=kw.get('n_hessian', 2000), probes=kw.get('probes', 100)))
    else:
        ma = final_model(a_folder, spec['a'], spec['seed'], data_root)
        if spec['kind'] == 'path': mb = final_model(spec['folders'][1], spec['b'], spec['seed'], data_root)
        else: mb = order_model(cfg, train, data, run.folder)
        rows = interpolate(ma, mb, {'train': _batches(train), 'test': _batches(data.test)})
        rec.update(distance=distance(ma, mb), barrier_train=barrier(rows, 'train_loss'),
                   barrier_test=barrier(rows, 'test_loss'), path=rows)
    run.report(rec)
    return [rec]


def order_model(cfg, train, data, folder) -> nn.Module:
    """`cfg`'s model trained on `train` from `cfg.seed`'s initialisation in seed + ORDER_OFFSET's batch order."""
    import dataclasses
    from stablesam.train import Trainer
    other = dataclasses.replace(cfg, seed=cfg.seed + ORDER_OFFSET, out=str(Path(folder) / 'order-run'), resume=True)
    t = Trainer(other, data=dataclasses.replace(data, train=train), model=initial_model(cfg, data))
    t.fit()
    return t.model.eval()


# %% [markdown]
# ## Command line and summary
#
# ```sh
# python -m stablesam.open_questions --stability FOLDER [FOLDER ...] --out OUT [--seeds 0 1 2]
# ```
#
# measures the final models that the stability experiments in the given folders left in their run folders, and
# writes `records.jsonl`, `config.json` and `summary.md` into `OUT`.

# %%
#| export
EPS = (0.05, 0.1, 0.2, 0.3)


def questions_parser() -> argparse.ArgumentParser:
    """The `python -m stablesam.open_questions` argument parser."""
    from stablesam.experiment import add_common
    p = argparse.ArgumentParser(prog='python -m stablesam.open_questions', description=(
        "The paper's open questions (Section 6) on the final models of stability experiments: the loss barrier "
        "between SAM and StableSAM (and references), Hessian top eigenvalue and trace, adversarial accuracy."))
    p.add_argument('--stability', nargs='+', required=True, metavar='FOLDER',
                   help='stability results folders whose run folders hold the final models')
    p.add_argument('--order-seeds', type=int, nargs='*', default=[0],
                   help='seeds whose SAM is retrained in another batch order, the same-basin reference (default: 0)')
    p.add_argument('--n-hessian', type=int, default=2000, help='training examples of the Hessian batch (default: 2000)')
    p.add_argument('--probes', type=int, default=100, help="Hutchinson probes of the trace (default: 100)")
    p.add_argument('--n-attack', type=int, default=2000, help='test examples attacked (default: 2000)')
    add_common(p, 'data_root', 'seeds', 'out', 'resume', 'progress', 'executor', 'debug')
    return p


def summary_files(folder) -> dict:
    """`{'summary.md': text}` of an open-questions folder: per optimizer and per pair, mean [min, max] over seeds."""
    from stablesam.experiment import RECORDS
    from stablesam.runs import read_jsonl
    from stablesam.style import markdown_table, optimizer_style
    from stablesam.variants import variant_order
    records = read_jsonl(Path(folder) / RECORDS)

    def rng(rs, k, scale=1.0):
        v = scale * np.array([r[k] for r in rs], float)
        return f"{v.mean():.3g}" if len(v) == 1 else f"{v.mean():.3g} [{v.min():.3g}, {v.max():.3g}]"
    models = {}
    for r in records:
        if r['kind'] == 'model': models.setdefault(r['a'], []).append(r)
    attacks = [k for k in next(iter(models.values()), [{}])[0] if k.startswith(('fgsm_', 'pgd_'))]
    rows = [dict(optimizer=optimizer_style(o).label, seeds=len(rs), test_acc=rng(rs, 'test_acc', 100),
                 top_eig=rng(rs, 'top_eig'), trace=rng(rs, 'trace'),
                 se=f"{np.mean([r['trace_se'] for r in rs]):.2g}", **{k: rng(rs, k, 100) for k in attacks})
            for o, rs in ((o, models[o]) for o in variant_order(models))]
    cols = dict(optimizer=('optimizer', None), seeds=('seeds', None), test_acc=('test acc (%)', None),
                top_eig=('top Hessian eigenvalue', None), trace=('Hessian trace', None),
                se=('trace std. error (mean)', None),
                **{k: (f"{k.split('_')[0].upper()} eps {k.split('_')[1]} (%)", None) for k in attacks})
    paths = {}
    for r in records:
        if r['kind'] in ('path', 'order'): paths.setdefault((r['kind'], r['a'], r['b']), []).append(r)
    prow = [dict(pair=f"{optimizer_style(a).label} - {optimizer_style(b).label}" +
                 (' (same init, other batch order)' if kind == 'order' else ' (same init and order)'),
                 seeds=len(rs), distance=rng(rs, 'distance'), train=rng(rs, 'barrier_train'),
                 test=rng(rs, 'barrier_test')) for (kind, a, b), rs in paths.items()]
    pcols = dict(pair=('models', None), seeds=('seeds', None), distance=('distance', None),
                 train=('loss barrier, train', None), test=('loss barrier, test', None))
    text = ["# Open questions: final models", '', markdown_table(rows, cols), '', 'mean [min, max] over seeds', '',
            '## The straight path between two final models', '', markdown_table(prow, pcols), '']
    equal = {}
    for r in records:
        if r['kind'] == 'equal-loss': equal.setdefault(r['a'], []).append(r)
    if equal:
        erow = [dict(optimizer=optimizer_style(o).label, seeds=len(rs), epoch=rng(rs, 'epoch'),
                     loss=rng(rs, 'train_loss'), top_eig=rng(rs, 'top_eig'), trace=rng(rs, 'trace'),
                     se=f"{np.mean([r['trace_se'] for r in rs]):.2g}")
                for o, rs in ((o, equal[o]) for o in variant_order(equal))]
        ecols = dict(optimizer=('optimizer', None), seeds=('seeds', None), epoch=('epoch', None),
                     loss=('training loss', None), top_eig=('top Hessian eigenvalue', None),
                     trace=('Hessian trace', None), se=('trace std. error (mean)', None))
        level = next(iter(equal.values()))[0]['level']
        text += ['## Flatness at equal training loss', '',
                 f'Each run retrained to its first epoch with training loss at or below {level:.4g} (the highest '
                 'final training loss of these runs).', '', markdown_table(erow, ecols), '']
    return {'summary.md': '\n'.join(text)}


def _main(argv) -> None:
    """Run the measurements of `questions_parser`'s arguments and write the summary."""
    from stablesam.experiment import executor_options, run_experiment
    args = questions_parser().parse_args(argv)
    specs = question_specs(args.stability, args.seeds, order_seeds=args.order_seeds)
    if not specs: raise ValueError(f"No final models of seeds {args.seeds} in {args.stability}")
    kw = dict(n_hessian=args.n_hessian, probes=args.probes, n_attack=args.n_attack, eps=EPS)
    settings = dict(stability=list(args.stability), seeds=args.seeds, order_seeds=args.order_seeds,
                    **dict(kw, eps=list(EPS)), pairs=[list(p) for p in PAIRS])
    run_experiment(args.out, specs, functools.partial(measure, data_root=args.data_root, **kw), key=KEY,
                   settings=settings,
                   command=['python', '-m', 'stablesam.open_questions', *argv], desc='open-questions',
                   **executor_options(args))
    for name, text in summary_files(args.out).items(): (Path(args.out) / name).write_text(text)
    print(summary_files(args.out)['summary.md'])


def main(argv=None):
    """`python -m stablesam.open_questions`: exit status 0, 2 on a usage error (see `stablesam.experiment.command`)."""
    from stablesam.experiment import command
    return command('python -m stablesam.open_questions')(_main)(argv)


# %%
#| eval: false
#| export
if __name__ == '__main__': sys.exit(main())   # python -m stablesam.open_questions (not run in the notebook)

# %% [markdown]
# The same code on generated MNIST-format files (a code check, not a finding): a tiny stability experiment with
# SGD, SAM, StableSAM and the step-matched SAM, then the measurements of its final models.

# %%
from stablesam.data import write_fake_mnist
from stablesam.experiment import RECORDS
from stablesam.runs import read_jsonl
from stablesam.stability import main as stability_main
from stablesam.train import Trainer

# %%
_tmp = Path(tempfile.mkdtemp())
write_fake_mnist(_tmp / 'data', 160, 64)
_common = ['--data-root', str(_tmp / 'data'), '--no-download', '--device', 'cpu', '--quiet', '--epochs', '2',
           '--subset', '96', '--batch-size', '32', '--lr', '0.1', '--seeds', '0', '1']
assert stability_main([*_common, '--optimizers', 'stablesam', '--out', str(_tmp / 'src')]) == 0
assert stability_main([*_common, '--optimizers', 'sgd', 'sam', 'sam-lrf', '--match-from', str(_tmp / 'src'),
                       '--out', str(_tmp / 'ctl')]) == 0
_args = ['--stability', str(_tmp / 'src'), str(_tmp / 'ctl'), '--data-root', str(_tmp / 'data'), '--seeds', '0', '1',
         '--n-hessian', '64', '--probes', '4', '--n-attack', '32', '--out', str(_tmp / 'oq'), '--quiet']
test_eq(main(_args), 0)
_recs = read_jsonl(_tmp / 'oq' / RECORDS)
test_eq(sorted({(r['kind'], r['a'], r['b']) for r in _recs}, key=str),
        sorted([('model', 'sam', None), ('model', 'sam-lrf', None), ('model', 'sgd', None),
                ('model', 'stablesam', None), ('equal-loss', 'sam', None), ('equal-loss', 'sam-lrf', None),
                ('equal-loss', 'sgd', None),
                ('equal-loss', 'stablesam', None), ('order', 'sam', 'sam'), ('path', 'sam', 'sam-lrf'),
                ('path', 'sam', 'sgd'), ('path', 'sam', 'stablesam'), ('path', 'stablesam', 'sam-lrf')], key=str))
_eq = [r for r in _recs if r['kind'] == 'equal-loss']
assert all(r['train_loss'] <= r['level'] * (1 + 1e-3) and r['epoch'] in (1, 2) for r in _eq), _eq
test_eq(max(r['train_loss'] for r in _eq if r['epoch'] == 2) > 0, True)
_m = next(r for r in _recs if r['kind'] == 'model' and r['a'] == 'sam' and r['seed'] == 0)
assert _m['pgd_0.3'] <= _m['fgsm_0.05'] + 0.2 and _m['top_eig'] > 0 and _m['trace_se'] > 0
_p = next(r for r in _recs if r['kind'] == 'path' and r['b'] == 'stablesam' and r['seed'] == 0)
test_eq(len(_p['path']), 11)
assert _p['distance'] > 0
test_eq(main(_args), 0)   # everything done: read back
assert (_tmp / 'oq' / 'summary.md').read_text() == summary_files(_tmp / 'oq')['summary.md']
print(summary_files(_tmp / 'oq')['summary.md'])

# %% [markdown]
# A Trainer of a seed starts from `initial_model` of that seed: the batch-order reference starts where the pair did.

# %%
_cfg, _sub = folder_config(_tmp / 'ctl', 'sam', 1, _tmp / 'data')
_train, _data = pair_data(_cfg, _sub)
_t = Trainer(_cfg, data=_data)
for _a, _b in zip(_t.model.parameters(), initial_model(_cfg, _data).parameters()): assert torch.equal(_a, _b)
test_fail(lambda: final_model(_tmp / 'src', 'sam', 0, _tmp / 'data'), contains='no final model')

# %% [markdown]
# `epoch_model` retrains a run to an epoch in the stability run's batch order: at the last epoch it is the run's
# final model, and an epoch without a record is refused.

# %%
_final = final_model(_tmp / 'ctl', 'sam', 1, _tmp / 'data')
_again = epoch_model(_tmp / 'ctl', 'sam', 1, 2, _tmp / 'data')
for _a, _b in zip(_final.parameters(), _again.parameters()): test_close(_a, _b, eps=1e-6)
test_fail(lambda: epoch_model(_tmp / 'ctl', 'sam', 1, 5, _tmp / 'data'), contains='no record')
