# %%
#| default_exp integrations

# %% [markdown]
# # integrations
#
# > The SAM family in PyTorch Lightning (`LitSAM`) and Hugging Face's `Trainer` (`SAMTrainer`), as importable code

# %% [markdown]
# `from stablesam.integrations import LitSAM, SAMTrainer` gives the two framework integrations whose reasoning
# [frameworks](00b_frameworks.ipynb) explains. The frameworks are optional: `pip install 'stablesam[lightning]'`
# or `pip install 'stablesam[transformers]'`. Without them this module still imports, and building `LitSAM` or
# `SAMTrainer` raises an `ImportError` that names the extra to install.
#
# Tested (`tests/test_integrations.py`, against the package's own loop `stablesam.optim.sam_step` on the same
# batches, to a relative difference of 1e-5) with lightning 2.6.6, transformers 5.25.0 and accelerate 1.16.0 on
# torch 2.14.1, on a CPU: Lightning in fp32, bf16 autocast and fp16 autocast with a `GradScaler`; Hugging Face
# with one batch per step, with gradient accumulation over 2 micro-batches, and with `max_grad_norm > 0`.

# %%
#| hide
from fastcore.test import test_eq, test_fail

# %%
#| export
import importlib

import torch.nn.functional as F

from stablesam.optim import freeze_bn_stats
from stablesam.runs import require


# %% [markdown]
# ## Optional dependencies
#
# `stablesam.runs.require(module, extra)` imports an optional dependency or raises an `ImportError` naming the
# extra that installs it; `optional_base` gives a class to derive from that works without the framework.

# %%
#| export
def optional_base(module: str, name: str, extra: str) -> type:
    """The class `module.name` to derive from, or a stand-in whose construction raises `require`'s error."""
    try: return getattr(importlib.import_module(module), name)
    except ImportError:
        class Missing:
            def __init__(self, *args, **kwargs): require(module, extra)
        Missing.__name__ = Missing.__qualname__ = f'{name}Missing'
        return Missing


# %%
Missing = optional_base('no_such_module_xyz', 'Thing', 'demo')
test_fail(lambda: Missing(1, a=2),
          contains="no_such_module_xyz is not installed; it comes with pip install 'stablesam[demo]'")
test_eq(optional_base('argparse', 'ArgumentParser', 'demo').__module__, 'argparse')


# %% [markdown]
# ## PyTorch Lightning: manual optimization
#
# `LitSAM(net, make_opt, loss_fn)` trains `net` by manual optimization (`automatic_optimization = False`), both
# passes in `training_step`: the loss, `manual_backward` (scaled under `"16-mixed"`), `first_step` with the
# precision plugin's GradScaler (so the reported norms are unscaled), the second pass with the BatchNorm
# statistics left as the first pass set them, `unperturb()` (restore $w$, renormalize), then `opt.step()`, which
# is the base step: under fp16 the scaler unscales, skips it on an overflow and updates the scale, with the
# weights already restored. It logs `train_loss` and the step's `last_stats` (`grad_norm`, `asc_grad_norm`,
# `norm_ratio`, `renorm_factor`) each step.
#
# For other batches or losses, subclass and override `compute_loss(batch)`. On a CPU, Lightning 2.6 turns
# `precision="16-mixed"` into bf16 autocast without a scaler; pass `plugins=[MixedPrecision('16-mixed', 'cpu')]`
# (from `lightning.pytorch.plugins`) to run fp16 with a scaler there.

# %%
#| export
class LitSAM(optional_base('lightning', 'LightningModule', 'lightning')):
    """A LightningModule that trains `net` on `loss_fn` with the SAM-family optimizer `make_opt(params)`."""
    def __init__(self, net, make_opt, loss_fn=F.cross_entropy):
        super().__init__()
        self.net, self.make_opt, self.loss_fn = net, make_opt, loss_fn
        self.automatic_optimization = False              # SAM needs two passes per step

    def forward(self, x):
        """The wrapped network's output."""
        return self.net(x)

    def configure_optimizers(self):
        """The SAM-family optimizer over the network's parameters."""
        return self.make_opt(self.net.parameters())

    def compute_loss(self, batch):
        """The training loss of `batch`, an `(inputs, targets)` pair (override for other batches)."""
        x, y = batch
        return self.loss_fn(self(x), y)

    def training_step(self, batch, batch_idx):
        """One SAM step: both passes, the renormalization, then the (scaler's) base step; logs `last_stats`."""
        opt = self.optimizers()                           # Lightning's wrapper; opt.optimizer is the SAM
        sam, scaler = opt.optimizer, getattr(self.trainer.precision_plugin, 'scaler', None)
        loss = self.compute_loss(batch)
        self.manual_backward(loss)
        if sam.first_step(zero_grad=True, grad_scaler=scaler):   # False: a one-pass step of an efficient variant
            with freeze_bn_stats(self): self.manual_backward(self.compute_loss(batch))
        sam.unperturb()                                   # restore w, renormalize (the factor ignores the scale)
        opt.step()                                        # (unscale, skip on overflow,) the base step
        opt.zero_grad()
        self.log_dict({'train_loss': loss.detach(), **sam.last_stats}, on_step=True, on_epoch=False)
        return loss


# %% [markdown]
# Training is the usual `L.Trainer(...).fit(LitSAM(net, make_opt), loader)`, with for instance
# `make_opt = lambda ps: StableSAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)`.

# %%
#| slow
import lightning as L
import torch
from torch import nn

from stablesam.optim import StableSAM

torch.manual_seed(0)
x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
lit = LitSAM(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)),
             lambda ps: StableSAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9))
trainer = L.Trainer(max_epochs=2, accelerator='cpu', logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(lit, loader)
test_eq(trainer.global_step, 8)
print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})


# %% [markdown]
# ## Hugging Face `transformers.Trainer`
#
# `SAMTrainer` is a `transformers.Trainer` for a SAM-family optimizer, passed as `optimizers=(opt, None)`. Its
# `training_step` runs the Trainer's own step (forward, loss scaled for gradient accumulation, backward) as the
# first pass; on the last micro-batch of an optimizer step it calls `first_step`, runs the second pass over
# **every** micro-batch of that step at the perturbed weights (kept from the first passes: their inputs only),
# then `unperturb()`. So with `gradient_accumulation_steps > 1` the step is Algorithm 1 on the whole
# accumulated batch (one ascent with the accumulated gradient), as the package's own loop takes it on that
# batch, not one ascent per micro-batch. BatchNorm statistics move in the first passes only.
#
# The Trainer then clips (`max_grad_norm > 0`) and calls the optimizer's `step()`. Because `training_step`
# ended with `unperturb()`, what it clips is the renormalized gradient at $w$ (never the surrogate gradient at
# the ascent point), and `step()` is the base step: with `fp16=True` its GradScaler may skip that step with the
# weights already restored. `log` adds the last step's `last_stats` to the Trainer's logs (one host sync per
# logging step). The model must return its loss, as Hugging Face models do given `labels`. Multi-GPU runs
# (DDP through accelerate) follow the same code but were not tested here.

# %%
#| export
def sam_of(optimizer):
    """The SAM optimizer inside accelerate's `AcceleratedOptimizer` (or `optimizer` itself)."""
    return getattr(optimizer, 'optimizer', optimizer)


class SAMTrainer(optional_base('transformers', 'Trainer', 'transformers')):
    """A Hugging Face Trainer for a SAM-family optimizer (`optimizers=(opt, None)`), with gradient accumulation."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro_batches = []                           # this optimizer step's inputs, for the second pass

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The first pass; on an optimizer step's last micro-batch also the ascent, every second pass, `unperturb`."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.micro_batches.append((inputs, num_items_in_batch))
        if not self.accelerator.sync_gradients: return loss   # more micro-batches of this step to come
        micro, self.micro_batches = self.micro_batches, []
        sam = sam_of(self.optimizer)
        if sam.first_step(zero_grad=True, grad_scaler=getattr(self.accelerator, 'scaler', None)):
            with freeze_bn_stats(model):
                for batch, n in micro: super().training_step(model, batch, n)
        sam.unperturb()                                   # the Trainer clips, then step() is the base step
        return loss

    def log(self, logs, *args, **kwargs):
        """The Trainer's logs plus the last step's SAM statistics."""
        stats = sam_of(self.optimizer).last_stats if self.optimizer is not None else {}
        super().log({**logs, **{k: float(v) for k, v in stats.items()}}, *args, **kwargs)   # sam_step: 0 or 1


# %% [markdown]
# Used as `SAMTrainer(model=model, args=TrainingArguments(...), train_dataset=data,
# optimizers=(StableSAM(model.parameters(), torch.optim.SGD, lr=0.1), None)).train()`:

# %%
#| slow
import tempfile

import torch.nn.functional as F
import transformers


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {'loss': F.cross_entropy(logits, labels), 'logits': logits}


model = Classifier()
args = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8,
                                      gradient_accumulation_steps=2, max_steps=4, logging_steps=2, report_to='none',
                                      save_strategy='no', use_cpu=True, disable_tqdm=True)
data = [{'x': x[i], 'labels': y[i]} for i in range(len(y))]
hf = SAMTrainer(model=model, args=args, train_dataset=data,
                optimizers=(StableSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1), None))
hf.train()
print([{k: round(v, 4) for k, v in h.items() if k in ('loss', 'renorm_factor')} for h in hf.state.log_history][:2])
