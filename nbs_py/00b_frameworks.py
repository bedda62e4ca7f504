# %% [markdown]
# # frameworks
#
# > Recipes: the SAM family inside PyTorch Lightning, Hugging Face's `Trainer`, and a `torch.compile` loop.

# %% [markdown]
# A SAM step needs two forward-backward passes on the same batch, and frameworks own the loop. Two things make
# that work without patching them:
#
# - `first_step` after the first backward, then the second backward inside the framework's step, and
# - `opt.step()` (no closure, or a framework closure that only runs hooks) *finishes* the step: while the
#   weights are perturbed it is `second_step()`; after `unperturb()` it is the base step alone.
#
# Call `unperturb()` yourself before the framework's step when something must see the final gradient
# (gradient clipping, a `GradScaler` that may skip the step on an overflow: a skipped `second_step` would leave
# the weights perturbed). Each recipe logs `last_stats` (the exact and surrogate gradient norms and the
# renormalization factor). The cells below are the recipes exactly as `tests/test_frameworks.py` runs them (it
# executes the cells marked `# recipe:`): each trains 10 steps and is compared with the package's own loop
# (`stablesam.optim.sam_step`) on the same batches. Tested with lightning 2.6.6, transformers 5.24.0 and
# accelerate 1.15.0 (the dev dependencies); the cells are flagged `slow` so the docs build does not need the
# frameworks.

# %% [markdown]
# ## PyTorch Lightning: manual optimization
#
# With `automatic_optimization = False` the `training_step` runs both passes. `self.manual_backward` scales
# the loss when `precision="16-mixed"`; `first_step` gets the GradScaler so that its reported norms are
# unscaled (the normalized ascent does not depend on the scale). `unperturb()` before `opt.step()` is what
# makes the scaler safe: `opt.step()` then unscales, skips the base step on an overflow and updates the scale.
# On a CPU, Lightning 2.6 quietly turns `precision="16-mixed"` into bf16 autocast without a scaler; a
# `MixedPrecision('16-mixed', 'cpu')` plugin runs the fp16 code path there (CPU autocast to float16 with a
# `torch.amp.GradScaler('cpu')`), which is how the test exercises the scaler. `"bf16-mixed"` needs no scaler.

# %%
#| slow
# recipe: lightning
import lightning as L
import torch
import torch.nn.functional as F

from stablesam.optim import freeze_bn_stats


class LitSAM(L.LightningModule):
    """A LightningModule trained by manual optimization with the SAM-family optimizer `make_opt(params)`."""
    def __init__(self, net, make_opt):
        super().__init__()
        self.net, self.make_opt = net, make_opt
        self.automatic_optimization = False              # SAM needs two passes per step

    def configure_optimizers(self): return self.make_opt(self.net.parameters())

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()                           # Lightning's wrapper; opt.optimizer is the SAM
        sam, scaler = opt.optimizer, getattr(self.trainer.precision_plugin, 'scaler', None)
        loss = F.cross_entropy(self.net(x), y)
        self.manual_backward(loss)                        # scaled under 16-mixed
        sam.first_step(zero_grad=True, grad_scaler=scaler)
        with freeze_bn_stats(self.net): self.manual_backward(F.cross_entropy(self.net(x), y))
        sam.unperturb()                                   # restore w, renormalize (the factor ignores the scale)
        opt.step()                                        # (unscale, skip on overflow,) the base step
        opt.zero_grad()
        self.log_dict({'train_loss': loss.detach(), **sam.last_stats}, on_step=True, on_epoch=False)
        return loss


# %% [markdown]
# Training is the usual `L.Trainer(...).fit(LitSAM(net, make_opt), loader)`; for fp16 on a CPU, pass
# `plugins=[MixedPrecision('16-mixed', 'cpu')]` (from `lightning.pytorch.plugins`) instead of `precision=`.

# %% [markdown]
# ## Hugging Face `transformers.Trainer`
#
# Override `training_step`: the first backward, `first_step`, the second backward. The Trainer then calls the
# (accelerate-wrapped) optimizer's `step()`, which is `second_step()`. The Trainer clips gradients between
# `training_step` and `step()` (`max_grad_norm`, 1.0 by default), which would clip the surrogate gradient before
# the renormalization: set `max_grad_norm=0` as below, or end `training_step` with `sam.unperturb()` to clip
# the renormalized gradient (then `step()` is the base step; do that too with `fp16=True`, whose GradScaler may
# skip `step()`). The model must return its loss, as Hugging Face models do given `labels`. `log` adds the
# last step's statistics to the Trainer's logs (one host sync per logging step).

# %%
#| slow
# recipe: transformers
import transformers

from stablesam.optim import freeze_bn_stats


def sam_of(optimizer):
    """The SAM optimizer inside accelerate's `AcceleratedOptimizer` (or `optimizer` itself)."""
    return getattr(optimizer, 'optimizer', optimizer)


class SAMTrainer(transformers.Trainer):
    """A Hugging Face Trainer for a SAM-family optimizer (pass it as `optimizers=(opt, None)`; `max_grad_norm=0`)."""
    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss = self.compute_loss(model, inputs)
        self.accelerator.backward(loss)
        sam_of(self.optimizer).first_step(zero_grad=True)
        with freeze_bn_stats(model): self.accelerator.backward(self.compute_loss(model, inputs))
        return loss.detach()                              # the Trainer's optimizer.step() is second_step()

    def log(self, logs, *args, **kwargs):
        stats = sam_of(self.optimizer).last_stats if self.optimizer is not None else {}
        super().log({**logs, **{k: v.item() for k, v in stats.items()}}, *args, **kwargs)


# %% [markdown]
# Used as `SAMTrainer(model=model, args=TrainingArguments(..., max_grad_norm=0), train_dataset=data,
# optimizers=(StableSAM(model.parameters(), torch.optim.SGD, lr=0.1), None)).train()`.

# %% [markdown]
# ## `torch.compile`
#
# Compile the model, not the step: both passes run the compiled graph at different weights (the parameters are
# graph inputs, changed in place, so nothing recompiles), and the optimizer's multi-tensor kernels run eagerly.
# The factor is kept as device tensors and stacked at the end: no host sync in the loop.

# %%
#| slow
# recipe: compile
import torch
import torch.nn.functional as F

from stablesam.optim import sam_step


def train_compiled(net, opt, batches, backend='inductor'):
    """Train `net`, compiled, with the SAM-family `opt` on `batches`; returns the per-step renormalization factors."""
    model = torch.compile(net, backend=backend)
    factors = []
    for x, y in batches:
        sam_step(opt, model, F.cross_entropy, x, y)
        factors.append(opt.last_stats['renorm_factor'])
    return torch.stack(factors)
