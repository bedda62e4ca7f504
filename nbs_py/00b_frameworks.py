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
# the weights perturbed). The Lightning module and the Hugging Face Trainer built on these two rules are
# importable code, `from stablesam.integrations import LitSAM, SAMTrainer` ([integrations](00d_integrations.ipynb),
# `pip install 'stablesam[lightning]'` / `'stablesam[transformers]'`); this page says why they are written the
# way they are, and keeps the `torch.compile` recipe. Each integration logs `last_stats` (the exact and surrogate
# gradient norms and the renormalization factor). `tests/test_integrations.py` trains each for 10 steps and
# compares it with the package's own loop (`stablesam.optim.sam_step`) on the same batches; `tests/test_frameworks.py`
# runs the recipe cell marked `# recipe: compile` as written. Tested with lightning 2.6.6, transformers 5.25.0 and
# accelerate 1.16.0; the cells that need them are flagged `slow` so the docs build does not need the frameworks.

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
# `stablesam.integrations.LitSAM` is that module; override its `compute_loss(batch)` for other batches.

# %%
#| slow
import lightning as L
import torch
from torch import nn

from stablesam.integrations import LitSAM
from stablesam.optim import StableSAM

# %%
#| slow
torch.manual_seed(0)
x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
lit = LitSAM(nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
             lambda ps: StableSAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9))
L.Trainer(max_steps=4, accelerator='cpu', logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(lit, loader)

# %% [markdown]
# For fp16 on a CPU, pass `plugins=[MixedPrecision('16-mixed', 'cpu')]` (from `lightning.pytorch.plugins`)
# instead of `precision=`.

# %% [markdown]
# ## Hugging Face `transformers.Trainer`
#
# Override `training_step`: the first backward, `first_step`, the second backward. The Trainer then calls the
# (accelerate-wrapped) optimizer's `step()`. The Trainer clips gradients between `training_step` and `step()`
# (`max_grad_norm`, 1.0 by default), which would clip the surrogate gradient before the renormalization if the
# weights were still perturbed: so `training_step` ends with `sam.unperturb()`, the Trainer clips the
# renormalized gradient, and `step()` is the base step (which also keeps `fp16=True` safe: its GradScaler may
# skip `step()`). With gradient accumulation the Trainer calls `training_step` once per micro-batch and steps
# after the last: the ascent needs the gradient of the whole batch, so the first passes accumulate it, and on the
# last micro-batch `first_step` perturbs once and the second pass runs over every micro-batch of the step
# (their inputs are kept until then). The model must return its loss, as Hugging Face models do given `labels`.
# `log` adds the last step's statistics to the Trainer's logs (one host sync per logging step).
# `stablesam.integrations.SAMTrainer` does all of this:

# %%
#| slow
import tempfile

import torch.nn.functional as F
import transformers

from stablesam.integrations import SAMTrainer


class Classifier(nn.Module):
    """A model that returns its loss given `labels`, as Hugging Face models do."""
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {'loss': F.cross_entropy(logits, labels), 'logits': logits}


# %%
#| slow
model = Classifier()
args = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=16, max_steps=4,
                                      max_grad_norm=1.0, logging_steps=1, report_to='none', save_strategy='no',
                                      use_cpu=True, disable_tqdm=True)
hf = SAMTrainer(model=model, args=args, train_dataset=[{'x': x[i], 'labels': y[i]} for i in range(len(y))],
                optimizers=(StableSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1), None))
hf.train()
print([round(h['renorm_factor'], 4) for h in hf.state.log_history if 'loss' in h])

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
