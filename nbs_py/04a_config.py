# %%
#| default_exp config

# %% [markdown]
# # config
#
# > Every setting of a training run (`TrainConfig`) and the paper's recipes of Tables 2-4 as presets

# %% [markdown]
# A training run is described completely by a `TrainConfig`: it is recorded in the run's `config.json`,
# checked against the checkpoint on resume, and built from the command line by `stablesam-train`.
# Section 5.3 trains on CIFAR-10/100 with SGD (momentum 0.9), a cosine learning-rate decay, label
# smoothing 0.1, batch 128 for 200 epochs, sweeping only $\rho$; on ImageNet-1k for 90 (ResNets, SGD)
# or 300 (ViT-S/32, AdamW) epochs; Section 5.4 repeats the CIFAR-10 recipe with noisy labels.

# %%
#| hide
from fastcore.test import *

# %%
#| export
import dataclasses
import math
from dataclasses import dataclass

from stablesam.data import DATASETS
from stablesam.models import MODELS
from stablesam.efficient import make_schedule
from stablesam.optim import ASCENTS, BASES, RENORM_NORMS
from stablesam.variants import VARIANTS, variant

# %% [markdown]
# ## Configuration
#
# `quick=True` keeps every setting but trains one epoch on a small seeded subset (256 training and 256
# test examples, batch at most 64): the same code path, smaller. `RESUMABLE` names the settings that
# may differ between a run and its resumption (where the run lives, how it is computed and how often it is
# checkpointed, not what; `in_memory` is not one of them: with augmentation, the batched path draws other
# crops than torchvision). `on_nonfinite` is among them: a run that stopped on a non-finite loss may be
# resumed with `'skip'`.
#
# `ascent` is the SAM ascent semantics under torchrun (`'global'`: Algorithm 1 on the global batch;
# `'local'`: per-replica ascent and renormalization, then the average; see
# [distributed](00a_distributed.ipynb)); `fsdp` shards the model with FSDP2 instead of
# DistributedDataParallel. A checkpoint whose config lacks a setting added later (these two, for one) is
# compared with that setting's default, so older runs resume: on one process they were `'global'` runs
# without FSDP (under DDP their SAM steps used the older mixed semantics, which no longer exists).

# %% [markdown]
# Each setting is declared with `setting(default, help, choices)`: its help text (what `stablesam-train
# --help` prints) and, for a name, its choices live in the field's metadata, so no setting can lack either,
# and the command line, `validate` and the docs read the same words. The optimizer's choices are the variant
# registry's names at the moment they are read (`stablesam.variants.VARIANTS`), so a variant registered at
# run time is a valid `--optimizer`.

# %%
#| export
AMP_MODES = ('none', 'bf16', 'fp16')
LR_SCHEDULES = ('cosine', 'constant')
NONFINITE = ('stop', 'skip')  # what a non-finite loss or gradient does: stop the run (exit status 3), or skip the step
RESUMABLE = ('out', 'resume', 'workers', 'device', 'download', 'progress', 'data_root', 'checkpoint_every',
             'on_nonfinite')


def setting(default, help: str, choices=None):
    """A `TrainConfig` field with its help text and, for a name, its choices (a collection, read when used)."""
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices))


@dataclass
class TrainConfig:
    """Every setting of a training run (defaults: the CIFAR recipe of Table 2 with plain SGD)."""
    dataset: str = setting('cifar10', "dataset (imagenet: an ImageFolder tree with train/ and val/ under --data-root)",
                           DATASETS)
    data_root: str = setting('data',
                             "folder holding the datasets (torchvision downloads MNIST/CIFAR there on first use)")
    model: str = setting('resnet20', "network", MODELS)
    optimizer: str = setting('sgd', "optimizer variant (sgd: the base optimizer alone; see stablesam.variants)",
                             VARIANTS.keys())
    base: str = setting('sgd', "base optimizer of the SAM family (sgd has momentum --momentum)", BASES)
    rho: float = setting(0.05, "perturbation radius rho of the SAM family")
    lr: float = setting(0.1, "peak learning rate")
    lr_scale: str | None = setting(None, "multiply the learning rate by F, or by F1,F2,... in epochs 1, 2, ... (the "
                                         "last repeats): the step-matched controls' StableSAM factor "
                                         "(stablesam.controls)")
    momentum: float = setting(0.9, "SGD momentum")
    epochs: int = setting(200, "number of training epochs")
    batch_size: int = setting(128, "global mini-batch size (split over the processes under torchrun)")
    weight_decay: float = setting(5e-4, "weight decay (decoupled for AdamW)")
    label_smoothing: float = setting(0.1, "label smoothing factor of the training loss")
    label_noise: float = setting(0.0, "fraction of training labels randomised (Table 4), exactly that fraction, "
                                      "seeded by --seed")
    schedule: str = setting('cosine', "learning-rate schedule (cosine: per-step decay to 0)", LR_SCHEDULES)
    seed: int = setting(0, "random seed: model initialisation, data order, augmentation, label noise, subsets")
    out: str | None = setting(None, "run folder for config.json, metrics.jsonl and checkpoint.pt (none: nothing is "
                                    "written)")
    resume: bool = setting(False, "continue the run in --out from its checkpoint (starts it if there is none yet)")
    amp: str = setting('none', "mixed precision (fp16 with a GradScaler; GPU)", AMP_MODES)
    quick: bool = setting(False, "the same code path on a tiny subset: one epoch, 256 train / 256 test examples, "
                                 "batch <= 64")
    train_subset: int | None = setting(None, "train on a seeded random subset of this many examples")
    test_subset: int | None = setting(None, "evaluate on a seeded random subset of this many test examples")
    val_split: int | None = setting(None, "hold this many training examples out (seeded) as a validation split, "
                                          "evaluated every epoch (val_loss, val_acc: the held-out protocol of "
                                          "stablesam-results --protocol held-out)")
    augment: bool = setting(True, "data augmentation of the training set (--no-augment: evaluation transform only)")
    bn_first_pass: bool = setting(True, "keep BatchNorm statistics from the first pass only in SAM steps "
                                        "(--no-bn-first-pass to update in both)")
    ascent: str = setting('global', "SAM ascent under torchrun (global: Algorithm 1 on the global batch, equals one "
                                    "process; local: per-replica ascent and renormalization, then the average, "
                                    "m-sharpness)", ASCENTS)
    fsdp: bool = setting(False, "shard the model with FSDP2 (fully_shard) instead of DistributedDataParallel; needs "
                                "torchrun, --ascent global and no --amp fp16; checkpoints hold the gathered full "
                                "state, at epoch ends only")
    gamma0: float | None = setting(None, "renormalizing variants: clamp the renormalization factor to "
                                         "[gamma0, sqrt(gamma0)] (Remark 19)")
    renorm_norm: str = setting('plain', "renormalizing variants: plain (||g||/||g_asc||) or adaptive (the authors' "
                                        "StableASAM)", RENORM_NORMS)
    sam_schedule: str | None = setting(None, "SAM-family variants: when a step takes SAM's second pass, "
                                             "overriding the variant's own (every:K, random:P[:SEED], late:F, "
                                             "ae[:DELTA:C_START:C_END]; see stablesam.efficient)")
    look_alpha: float | None = setting(None, "SAM-family variants: LookSAM's weight alpha of the stored direction "
                                             "g_v on one-pass steps (overrides the variant's own)")
    workers: int | None = setting(None, "data loader worker processes (default: 8 on GPU, 0 on CPU)")
    device: str = setting('auto', "device: auto, cpu, cuda, cuda:N")
    download: bool = setting(True, "download missing MNIST/CIFAR data (--no-download: fail with a message instead)")
    progress: bool = setting(True, "show a progress bar and per-epoch lines (--no-progress or --quiet for logs)")
    in_memory: bool = setting(True, "decode MNIST/CIFAR once into tensors on the device and augment there in batches "
                                    "(--no-in-memory: a DataLoader with per-image transforms, as for ImageNet folders)")
    checkpoint_every: float = setting(600.0, "seconds between checkpoints within an epoch (0: at epoch ends only); a "
                                             "killed run loses at most that")
    on_nonfinite: str = setting('stop', "a non-finite loss or gradient: stop (exit status 3, the last good checkpoint "
                                        "kept) or skip (the step is skipped and counted in skipped_steps; with --amp "
                                        "fp16 the GradScaler skips overflowing gradients itself)", NONFINITE)

    def to_dict(self):
        """All settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """A config from `to_dict()` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown: raise ValueError(f"Unknown TrainConfig settings: {unknown}")
        return cls(**d)

    def resolved(self):
        """This config with `quick` applied (one epoch on 256 examples, batch at most 64)."""
        if not self.quick: return self
        return dataclasses.replace(self, epochs=1, train_subset=_at_most(self.train_subset, 256),
                                   test_subset=_at_most(self.test_subset, 256), batch_size=min(self.batch_size, 64))

    def validate(self):
        """Raise a ValueError naming the first invalid setting; returns the config."""
        for f in dataclasses.fields(self):
            choices = f.metadata['choices']
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"Unknown {f.name}: {getattr(self, f.name)!r} (choose from {', '.join(choices)})")
        for key in ('rho', 'lr', 'momentum', 'weight_decay'):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Invalid {key}: {v}")
        for key in ('epochs', 'batch_size'):
            v = getattr(self, key)
            if not (isinstance(v, int) and v >= 1): raise ValueError(f"Invalid {key}: {v} (a positive integer)")
        for key in ('train_subset', 'test_subset', 'val_split'):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, int) and v >= 1): raise ValueError(f"Invalid {key}: {v}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"Invalid label_smoothing: {self.label_smoothing} (must be in [0, 1))")
        if not 0 <= self.label_noise <= 1:
            raise ValueError(f"Invalid label_noise: {self.label_noise} (must be in [0, 1])")
        if self.workers is not None and self.workers < 0: raise ValueError(f"Invalid workers: {self.workers}")
        v = self.checkpoint_every
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"Invalid checkpoint_every: {v} "
                             "(seconds between checkpoints within an epoch; 0: epoch ends only)")
        if self.fsdp and (self.ascent == 'local' or self.amp == 'fp16'):
            raise ValueError(f"Invalid fsdp with ascent={self.ascent!r}, amp={self.amp!r}: FSDP shards need ascent "
                             "'global' (no replica holds whole parameters) and no fp16 GradScaler")
        if self.gamma0 is not None and not variant(self.optimizer).stable:
            raise ValueError(f"Invalid gamma0 with optimizer {self.optimizer!r}: gamma0 clamps the renormalization "
                             "factor of a renormalizing variant "
                             f"({', '.join(k for k, v in VARIANTS.items() if v.stable)})")
        if (self.sam_schedule is not None or self.look_alpha is not None) and variant(self.optimizer).cls is None:
            raise ValueError(f"Invalid sam_schedule/look_alpha with optimizer {self.optimizer!r}: they set when a "
                             "SAM-family variant takes its second pass")
        if self.lr_scale is not None: lr_scales(self.lr_scale)  # the syntax and the values
        if variant(self.optimizer).matched and self.lr_scale is None:
            raise ValueError(f"Invalid optimizer {self.optimizer!r} without lr_scale: a step-matched control runs at "
                             "lr x StableSAM's measured factor (give --lr-scale, or --match-from to an experiment)")
        if self.sam_schedule is not None: make_schedule(self.sam_schedule, total_steps=1)  # the spec's syntax
        if self.look_alpha is not None and not (math.isfinite(self.look_alpha) and self.look_alpha >= 0):
            raise ValueError(f"Invalid look_alpha: {self.look_alpha} (a finite number >= 0)")
        return self


def lr_scales(text: str) -> list[float]:
    """The factors of an `lr_scale` setting ('0.9' or '0.9,0.92,...'): finite and positive, else a ValueError."""
    try: scales = [float(v) for v in str(text).split(',')]
    except ValueError: scales = []
    if not scales or not all(math.isfinite(v) and v > 0 for v in scales):
        raise ValueError(f"Invalid lr_scale: {text!r} (a positive number, or comma-separated numbers, one an epoch)")
    return scales


def _at_most(n, cap):
    """`n` capped at `cap` (`cap` where `n` is None: all examples)."""
    return cap if n is None else min(n, cap)


# %% [markdown]
# `validate` raises a `ValueError` that names the first invalid setting and, for a name, the choices.

# %%
cfg = TrainConfig(optimizer='stablesam', quick=True)
test_eq(TrainConfig.from_dict(cfg.to_dict()), cfg)
test_eq((cfg.resolved().epochs, cfg.resolved().train_subset, cfg.resolved().batch_size), (1, 256, 64))
test_fail(lambda: TrainConfig(model='resnet21').validate(), contains="Unknown model: 'resnet21' (choose from fcn")
test_fail(lambda: TrainConfig(lr=float('nan')).validate(), contains='Invalid lr: nan')
test_fail(lambda: TrainConfig(batch_size=0).validate(), contains='Invalid batch_size: 0')
test_fail(lambda: TrainConfig.from_dict({'rh0': 1}), contains="['rh0']")
test_fail(lambda: TrainConfig(sam_schedule='every:5').validate(),
          contains="Invalid sam_schedule/look_alpha with optimizer 'sgd'")
test_fail(lambda: TrainConfig(optimizer='sam', sam_schedule='sometimes').validate(), contains="Unknown schedule")
test_fail(lambda: TrainConfig(optimizer='looksam', look_alpha=-1.).validate(), contains="Invalid look_alpha: -1.0")
TrainConfig(optimizer='stablesam', sam_schedule='ae:0.9:1:-1').validate()
test_fail(lambda: TrainConfig(on_nonfinite='ignore').validate(),
          contains="Unknown on_nonfinite: 'ignore' (choose from stop, skip)")
test_fail(lambda: TrainConfig(ascent='mixed').validate(),
          contains="Unknown ascent: 'mixed' (choose from global, local)")
test_fail(lambda: TrainConfig(fsdp=True, ascent='local').validate(), contains="Invalid fsdp with ascent='local'")
test_fail(lambda: TrainConfig(fsdp=True, amp='fp16').validate(), contains="amp='fp16'")
test_fail(lambda: TrainConfig(optimizer='sam', gamma0=0.5).validate(), contains="Invalid gamma0 with optimizer 'sam'")
test_eq(lr_scales('0.9'), [0.9])
test_eq(lr_scales('0.9,0.95'), [0.9, 0.95])
test_fail(lambda: TrainConfig(lr_scale='0.9,-1').validate(), contains="Invalid lr_scale: '0.9,-1'")
test_fail(lambda: TrainConfig(lr_scale='fast').validate(), contains="Invalid lr_scale: 'fast'")
test_fail(lambda: TrainConfig(optimizer='sam-lrf').validate(), contains="without lr_scale")
TrainConfig(optimizer='sam-lrf', lr_scale='0.93').validate()
TrainConfig(optimizer='stablesam', gamma0=0.5).validate()
assert all(f.metadata.get('help') for f in dataclasses.fields(TrainConfig))   # every setting has its help text
TrainConfig(fsdp=True, amp='bf16').validate()


# %% [markdown]
# A run may be resumed with more epochs under the constant schedule (the steps done are the steps the
# longer run does); under the cosine schedule the learning rate of every step depends on the number of
# epochs, so a longer run would be another run, and is refused with that reason.

# %%
#| export
def epochs_change(saved_epochs, cfg):
    """Why a run saved at `saved_epochs` epochs can't resume as `cfg` (None if it can: same, or more at constant lr)."""
    if saved_epochs == cfg.epochs: return None
    if cfg.schedule != 'constant':
        return (f"epochs: {saved_epochs!r} in the checkpoint, {cfg.epochs!r} now "
                f"(the {cfg.schedule} schedule would change: "
                "its learning rate at every step depends on the number of epochs)")
    if cfg.epochs < saved_epochs:
        return f"epochs: {saved_epochs!r} in the checkpoint, {cfg.epochs!r} now (a run is extended, never shortened)"
    return None


# %%
test_eq(epochs_change(2, TrainConfig(epochs=3, schedule='constant')), None)
assert 'the cosine schedule would change' in epochs_change(2, TrainConfig(epochs=3))
assert 'never shortened' in epochs_change(3, TrainConfig(epochs=2, schedule='constant'))

# %% [markdown]
# ## The paper's recipes
#
# `PRESETS` holds the hyperparameters of Tables 2-4. A preset supplies defaults; settings given
# explicitly win. Where the paper fixes $\rho$ per optimizer family (Table 3, Table 4), the preset's
# `rho` maps the variant's rho family (its `family` in the registry: `sam` for SAM, StableSAM, USAM, StableUSAM;
# `asam` for ASAM, StableASAM) to its
# value; Table 2 swept $\rho$ (see `table_runs` in [cli](05a_cli.ipynb)), so the `cifar` preset's $\rho$
# is only the default when none is given.

# %%
#| export
PRESETS = {
    'cifar': dict(help='Table 2: CIFAR-10/100, 200 epochs, batch 128, SGD momentum 0.9, lr 0.1 cosine, '
                       'weight decay 5e-4, label smoothing 0.1 (rho swept: default 0.05 SAM / 0.5 ASAM)',
                  dataset='cifar10', model='resnet20', base='sgd', epochs=200, batch_size=128, lr=0.1, momentum=0.9,
                  weight_decay=5e-4, label_smoothing=0.1, schedule='cosine', rho=dict(sam=0.05, asam=0.5)),
    'imagenet': dict(help='Table 3, ResNets: ImageNet-1k, 90 epochs, batch 256, SGD momentum 0.9, lr 0.1 cosine, '
                          'weight decay 1e-4, rho 0.05 (SAM) / 1.0 (ASAM)',
                     dataset='imagenet', model='resnet50', base='sgd', epochs=90, batch_size=256, lr=0.1, momentum=0.9,
                     weight_decay=1e-4, label_smoothing=0.0, schedule='cosine', rho=dict(sam=0.05, asam=1.0)),
    'imagenet-vit': dict(help='Table 3, ViT-S/32: ImageNet-1k, 300 epochs, batch 256, AdamW lr 3e-4 cosine, '
                              'weight decay 0.3, rho 0.2 (SAM) / 2.0 (ASAM)',
                         dataset='imagenet', model='vit_s32', base='adamw', epochs=300, batch_size=256, lr=3e-4,
                         weight_decay=0.3, label_smoothing=0.0, schedule='cosine', rho=dict(sam=0.2, asam=2.0)),
    'label-noise': dict(help='Table 4: CIFAR-10 with 20/40/60/80%% random labels (--label-noise), the Table 2 recipe, '
                             'rho 0.05', dataset='cifar10', model='resnet56', base='sgd', epochs=200, batch_size=128,
                        lr=0.1, momentum=0.9, weight_decay=5e-4, label_smoothing=0.1, schedule='cosine',
                        label_noise=0.2, rho=dict(sam=0.05, asam=0.05)),
}

def preset_config(preset, **settings):
    """A TrainConfig with `preset`'s hyperparameters (one of `PRESETS`, or None) overridden by `settings`."""
    if preset is None: return TrainConfig(**settings)
    if preset not in PRESETS: raise ValueError(f"Unknown preset: {preset!r} (choose from {', '.join(PRESETS)})")
    p = {k: v for k, v in PRESETS[preset].items() if k != 'help'}
    p['rho'] = p['rho'][variant(settings.get('optimizer', 'sgd')).family or 'sam']   # the variant's rho grid
    return TrainConfig(**{**p, **settings})


# %%
c = preset_config('imagenet-vit', optimizer='stableasam')
test_eq((c.base, c.lr, c.weight_decay, c.epochs, c.rho, c.batch_size), ('adamw', 3e-4, 0.3, 300, 2.0, 256))
test_eq(preset_config('cifar', optimizer='stablesam', rho=0.2).rho, 0.2)
test_eq(preset_config('label-noise', label_noise=0.8, model='wrn28_10').label_noise, 0.8)
test_fail(lambda: preset_config('cifar10'), contains="Unknown preset: 'cifar10'")
