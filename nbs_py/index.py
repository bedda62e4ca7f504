# %% [markdown]
# # stablesam
#
# > Sharpness-aware minimization, stabilised by renormalization: a drop-in PyTorch optimizer, the paper's theory checked numerically, and its experiments as notebooks.

# %% [markdown]
# Sharpness-aware minimization (SAM) takes each step with the gradient evaluated at an ascent point
# $w + \rho\, g/\|g\|$ rather than at $w$, which biases training towards flat minima; but that surrogate
# gradient is often much larger than the true one, and training can overshoot or blow up.
# **StableSAM** (Tan et al., *Stabilizing Sharpness-aware Minimization Through A Simple Renormalization
# Strategy*) rescales the surrogate gradient to the norm of the exact gradient,
# $g^{asc} \leftarrow \frac{\|g\|}{\|g^{asc}\|} g^{asc}$, at no extra cost and with no new hyperparameter.
# This package implements the whole SAM family with that renormalization as one PyTorch optimizer, checks the
# paper's theory numerically, and reproduces every table and figure from notebooks that are also its
# documentation and its tests.

# %% [markdown]
# ## Install
#
# ```sh
# git clone https://github.com/stablesam/stablesam && cd stablesam
# pip install -e ".[dev]"
# ```
#
# `pip install -e .` alone installs the library and what it needs at run time; `[dev]` adds the notebook
# and test tools (nbdev, jupytext, jupyterlab, pytest) and every optional extra. PyTorch is not pinned: on a GPU
# machine install the build for your CUDA first. From a wheel (`python -m build`, or a package index):
# `pip install stablesam`, plus the extras you use: `stablesam[lightning]` and `stablesam[transformers]` for
# `stablesam.integrations`, `stablesam[tensorboard]` and `stablesam[wandb]` for `--logger`, `stablesam[slurm]` for
# `--executor slurm`; a missing one is an error that names it. What changed between versions, and what to do
# about it: [changelog](changelog.ipynb).
#
# ## See what it does, offline, in a few minutes
#
# ```sh
# stablesam-reproduce --quick --out reproduce-quick
# ```
#
# runs the theory audit, the toy experiment of Figure 4 and SGD/SAM/StableSAM on real handwritten digits
# (scikit-learn's bundled 8x8 digits, 40% of the training labels randomised, five seeds, mean and spread),
# with no download, in about a minute, and writes the figures, the tables, the records and a one-page
# `report.md` (its output is committed in `results/main_job/`).
# Without `--quick` it runs the full-size experiments, the comparison on MNIST from `--data-root`
# (it says how long first).
#
# ## Test
#
# ```sh
# nbdev_test --n_workers 2 && python -m pytest
# ```
#
# `nbdev_test` executes every notebook (cells that need a GPU or hours are flagged and skipped) and
# `pytest` runs `tests/`. `bash .ci/run` is what CI runs: install, the sync checks, then this command.

# %% [markdown]
# ## Drop-in use
#
# `StableSAM` wraps any `torch.optim` optimizer. Each step takes two forward-backward passes on the same
# batch: the first at $w$, the second at the ascent point.

# %%
import torch
from torch import nn
from stablesam.optim import StableSAM

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = StableSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, weight_decay=5e-4)
loss_fn = nn.CrossEntropyLoss()
x, y = torch.randn(256, 10), torch.randint(0, 2, (256,))
for step in range(20):
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)           # ascend to w + rho * g / ||g|| (returns True: a SAM step)
    loss_fn(model(x), y).backward()          # surrogate gradient at the ascent point
    opt.second_step(zero_grad=True)          # restore w, renormalize, base optimizer step

# %% [markdown]
# `stablesam.optim.sam_step(opt, model, loss_fn, x, y)` is this step as one function (it also takes a
# `GradScaler` and an autocast dtype, and keeps BatchNorm statistics from the first pass): the one the
# training engine uses. `opt.step(closure)` works too, and `opt.last_stats` holds the step's gradient norms
# and renormalization factor as tensors. With BatchNorm, mixed precision, gradient clipping or accumulation,
# see the recipes in [the optimizer page](00_optim.ipynb); DistributedDataParallel (the `global` and `local`
# ascent semantics) and FSDP2 in [distributed](00a_distributed.ipynb); PyTorch Lightning, Hugging Face's
# `Trainer` and `torch.compile` in [frameworks](00b_frameworks.ipynb), with `from stablesam.integrations import
# LitSAM, SAMTrainer` ([integrations](00d_integrations.ipynb)).

# %%
#| hide
from fastcore.test import test_eq, test_close
final = loss_fn(model(x), y).item()
assert final < 0.69, final  # it learns the random labels a little
test_eq(set(opt.last_stats) >= {'grad_norm', 'asc_grad_norm', 'renorm_factor'}, True)

# %% [markdown]
# **Cheaper steps.** The efficient variants take SAM's second pass on some steps only: `first_step` returns whether
# it perturbed the weights, so the loop above becomes (StableLookSAM: a full StableSAM step every 5 steps, the steps
# in between reuse its direction at the gradient's length; see [efficient](00c_efficient.ipynb) for every-k,
# random, late-phase and AE-SAM schedules, and [their evidence on MNIST](06b_efficient_evidence.ipynb)):

# %%
opt = StableSAM(model.parameters(), torch.optim.SGD, schedule='every:5', look_alpha=0.7, lr=0.1, momentum=0.9)
for step in range(20):
    loss_fn(model(x), y).backward()
    if opt.first_step(zero_grad=True): loss_fn(model(x), y).backward()   # the second pass on SAM steps only
    opt.second_step(zero_grad=True)

# %%
#| hide
test_eq((opt.schedule.count, opt.schedule.sam_steps), (20, 4))

# %% [markdown]
# ## The paper's GPU experiments
#
# One run of Table 2 (CIFAR, 200 epochs) on one GPU, with bf16 autocast:
#
# ```sh
# stablesam-train --preset cifar --dataset cifar100 --model resnet56 --optimizer stablesam --rho 0.05 \
#     --amp bf16 --data-root data --out runs/table2/cifar100/resnet56/stablesam_rho0.05/seed0
# ```
#
# CIFAR and MNIST download into `--data-root` on first use; ImageNet-1k is read from an ImageFolder tree
# (`train/`, `val/`) there. Several GPUs or nodes: the same command under
# `torchrun --nproc_per_node=8 "$(which stablesam-train)" ...` (`--ascent global`, the default, is Algorithm 1 on
# the global batch; `--ascent local` perturbs each replica with its own gradient; `--fsdp` shards the model). A
# killed run continues exactly with `--resume`, from within an epoch too (a checkpoint every
# `--checkpoint-every` seconds, 600 by default); a run whose loss turns non-finite stops with exit status 3
# and keeps its last good checkpoint (`--on-nonfinite skip` skips such steps instead). The whole grid of a
# table: `stablesam-train --sweep table2` prints its command lines (Table 3: `table3`, Table 4: `table4`), and
# `stablesam-train --sweep table2 --executor slurm --slurm gpus_per_node=1 timeout_min=600` submits them as
# SLURM jobs (requeued on preemption, each continuing from its checkpoint); `stablesam-results runs/table2`
# builds the table (mean $\pm$ std over seeds, $\rho$ chosen per cell) as Markdown and CSV with the training
# curves (`--protocol held-out` chooses $\rho$ and the epoch on a `--val-split` instead of the test set). The
# figures: `stablesam-stability` (Figures 5-7), `stablesam-robustness lr-sweep` / `label-noise` (the
# large-learning-rate and noisy-label claims on networks) and `stablesam-landscape` (Figures 1-3). Every
# experiment command shares one set of options: `--data-root`, `--download/--no-download`, `--device`,
# `--seeds`, `--out`, `--fresh` (it resumes by default), `--progress/--no-progress` (`--quiet`), `--executor
# inline|processes|slurm` with `--processes N` or `--slurm KEY=VALUE ...`, and `--debug`; each exits with 2 on
# a usage error, 3 when training diverged and 1 on anything unexpected. `stablesam-train --quick` runs the
# same code on a tiny subset for one epoch, on a CPU. `--logger tensorboard wandb csv` (on every command that
# trains) writes the training curves for TensorBoard or Weights & Biases ([loggers](05b_loggers.ipynb)).

# %% [markdown]
# ## What the package reproduces
#
# | paper | what | notebook | runs on |
# |---|---|---|---|
# | Algorithm 1, Remark 19 | SAM, StableSAM, ASAM, StableASAM, USAM, StableUSAM | [optim](00_optim.ipynb) | CPU |
# | Algorithm 1 on several processes | DDP (`global` and `local` ascent), FSDP2; Lightning, Hugging Face, `torch.compile` | [distributed](00a_distributed.ipynb), [frameworks](00b_frameworks.ipynb) | CPU (2 gloo processes) |
# | Section 4, Lemma 5 - Theorem 18, Table 1 | numerical audit of every statement | [theory](01_theory.ipynb), [audit](01c_theory_audit.ipynb) | CPU |
# | Section 5.1, Figure 4 | toy saddle problem, success rate against learning rate | [toy](02_toy.ipynb) | CPU |
# | Section 5.2, Figures 5-7 | algorithmic stability on neighbouring training sets | [stability](06_stability.ipynb) | CPU (MNIST FCN at the paper's size, `--executor processes`), GPU |
# | Figures 1-3 | gradient-norm ratio, alignment, loss along the top Hessian direction | [landscape](07_landscape.ipynb), [landscape_experiment](07a_landscape_experiment.ipynb) | GPU (quick on CPU) |
# | Section 5.3, Tables 2-3 | CIFAR-10/100 and ImageNet training | [data](03_data.ipynb), [models](04_models.ipynb), [config](04a_config.ipynb) (presets), [runs](04b_runs.ipynb) (run folders), [train](05_train.ipynb), [cli](05a_cli.ipynb) (`stablesam-train`) | GPU |
# | Section 5.4, Table 4 | label noise | [config](04a_config.ipynb), [train](05_train.ipynb) | GPU |
# | Tables 2-4 from run folders | mean $\pm$ std over seeds | [results](08_results.ipynb) | CPU |
# | Section 6, and the controls the paper lacks (issue 21) | step-matched SAM/SGD at lr x StableSAM's factor, two failure criteria and a bootstrapped critical lr, correlations three ways, loss barrier, Hessian eigenvalue and trace, FGSM/PGD | [controls](04d_controls.ipynb), [controls_evidence](06c_controls_evidence.ipynb), [open_questions](06d_open_questions.ipynb) | CPU |
# | all experiments | one runner: specs in, records out, resumable; inline, spawned processes or SLURM (submitit) | [experiment](04c_experiment.ipynb) | CPU, cluster |
# | all figures and tables | one registry of optimizer variants; one label, colour and marker each; axis labels for every recorded quantity | [variants](00_variants.ipynb), [style](00_style.ipynb) | CPU |

# %% [markdown]
# ## What was run, on what data, at what size
#
# Every number on these pages that is read as evidence comes from a committed record in `results/`
# (records, the config with its command line and wall time, a summary), produced on a 2-core CPU. Generated
# images appear only in tests and in the quick cells that check the code path; they are labelled so.
#
# | figure / table | run here | data | size | what remains for a GPU |
# |---|---|---|---|---|
# | Figure 4 | full size | the paper's 2-D function | 10,000 starts x 1,000 steps, 3 radii | nothing |
# | Section 4 audit | full audit (200 instances) | closed-form quadratics | as in the notebook | nothing |
# | Figures 5-7, FCN panel | yes, all three settings, at the paper's size | real MNIST | all 60,000 training images (S and S' of 59,999), full test set, 60 epochs, 3 seeds; also on the first 10,000 | nothing (on a GPU the same runs take minutes) |
# | Figures 5-7, conv-net panel | LeNet on MNIST as a stand-in, all three settings (Figure 5 on the earlier MNIST copy; Figures 6 and 7 on the official files, issue 21, `results/controls/figure-6.png`, `figure-7.png`) | real MNIST | 3,000 training images, 60 epochs, 3 seeds | LeNet on CIFAR-10 (not available offline), all three settings |
# | "robust with large learning rates" on networks | learning-rate sweep 0.01-3.16 | real MNIST | FCN and LeNet, 10,000 images, 3 epochs, 3 seeds | CIFAR models |
# | Table 4's question (label noise) | 20/40/60/80% noise, paper and held-out protocols | real MNIST | FCN, 10,000 + 2,000 validation images, 15 epochs, 3 seeds | CIFAR-10 with ResNets, Table 4's size |
# | Figures 1-3 | norm ratio, alignment, loss along $e_1$ | real MNIST | FCN, 10,000 images, 20 epochs, SAM at 4 radii, 3 seeds | ResNet-18 / ResNet-20 on CIFAR |
# | efficient variants (issue 20): gain kept, cost, critical lr, Figure 5's distance | 80% label noise (60% partial), lr sweep 0.1-0.56, stability pair (constant lr, 60 epochs), speed benchmark | real MNIST (speed also on generated CIFAR files) | FCN, 10,000 + 2,000 images, 15 epochs, 5 seeds, 13 optimizers; sweep 10,000 images, 3 epochs, 5 seeds; stability 10,000 images, 1 seed | 60% noise beyond 2 seeds for the variants; more seeds for the distance; CIFAR/ImageNet accuracy |
# | issue 21: renormalization or a shorter step? | lr sweep 0.1-0.56 (10 lrs) with SAM at lr x f, Remark 19's clamp (gamma0 0.1/0.5/0.9) and StableUSAM; Figures 6 (weight decay) and 7 (cosine) with SGD, SAM, StableSAM, SAM at lr x f, SAM at lr x f(epoch), SGD at lr x f; Figure 5 (constant lr) at the paper's size with the same six, and at 10,000 images with Remark 19's clamp and StableUSAM; the LeNet panel of Figures 6 and 7; the open questions on the FCN and LeNet weight-decay models, flatness also at equal training loss; correlations three ways (all stability records) | real MNIST | sweep: FCN and LeNet (clamp rows FCN only), 10,000 images, 3 epochs, 5 seeds; stability: FCN, 10,000 images (60,000 for Figure 5), LeNet 3,000 images, 60 epochs, 3 seeds (`results/controls/summary.md` lists the folders read) | CIFAR (not available offline); the LeNet panel at CIFAR's 50,000 images |
# | main job (`stablesam-reproduce --quick`) | SGD / SAM / StableSAM with 40% label noise | scikit-learn's real 8x8 digits | 1,297 / 500 images, 20 epochs, 5 seeds | the full job on MNIST |
# | Tables 2-3 | code path only (generated CIFAR / ImageFolder files in tests) | - | - | everything |

# %% [markdown]
# ## Provenance and reproducibility
#
# Every `config.json` (an experiment's and a training run's) records what made it: the git commit and whether
# the checkout had uncommitted changes outside `results/`, the versions of Python, torch, torchvision, numpy and
# stablesam, the sha256 of every data file read, the torch thread count, the device and the exact argv
# (`stablesam-results provenance FOLDER` prints them). A resumed experiment refuses data files whose checksums
# differ from those it started with. Configs written before this was recorded were migrated once
# (`tools/migrate_provenance.py`: the commit that first added the records, the versions and threads their
# `machine` field gave, and the checksums of the MNIST copy they were made on).
#
# `stablesam-results check results` (run by CI) re-derives every committed `summary.md`, `results.md` and
# `report.md` from its records with the function its command writes it with, and fails naming the file and the
# first line that differs; it also fails on a missing run, record or epoch, on a `command` that is not an argv
# list of this package's commands, and on a config without provenance. Each notebook's `slow` cell runs
# the command its folder's `config.json` records (`stablesam.results_check.rerun`).
#
# **Bitwise reproducible** on a CPU: the same commit, the same versions, the same data files and the same torch
# thread count give the same records, bit for bit. Checked: `OMP_NUM_THREADS=1 stablesam-reproduce --quick --seed 0
# --stages compare`, run twice, gives `records.jsonl` identical to the committed `results/main_job/digits-quick`
# (all 300 records, every field). **Not** bitwise reproducible across thread counts (a matrix product sums in
# another order): the same command with 2 threads differs from the first record on (SGD, seed 0, epoch 1: training
# loss 2.243858457 against 2.243858433; 269 of the 300 records differ), and its final test accuracies read SAM
# 92.24 ± 1.28 and StableSAM 92.24 ± 1.37 where one thread reads 92.28 ± 1.25 and 92.12 ± 1.32 (5 seeds), so the
# paired StableSAM - SAM difference is +0.0 with 2 threads and -0.2 with one: differences of that size are not
# findings. The committed main-job records were made with one thread (their `provenance` says so). A run interrupted and resumed gives the bits of an uninterrupted
# one (the fault-injection tests check this). The `processes` and `slurm` executors train each run with
# `cpu_count // processes` and `--slurm threads=N` threads (recorded as `threads`); compare records across
# executors to rounding unless those thread counts agree. On a GPU (cuDNN's algorithm choice) and across torch
# versions, expect agreement to rounding, not bits.

# %% [markdown]
# ## Contributing
#
# The notebooks in `nbs/` are the source: `stablesam/` is exported from them and never edited by hand.
#
# - Set up: `pip install -e ".[dev]"`, then `nbdev_install_hooks` (cleans notebooks on save and on merge).
# - Every notebook `nbs/NAME.ipynb` is paired with a percent-format script `nbs_py/NAME.py`
#   (`jupytext.toml`): edit either, then `jupytext --sync` the one you edited. `python tools/run_nb.py
#   nbs_py/NAME.py` syncs, executes in a fresh kernel (skipping flagged cells), stores outputs and cleans.
# - Add a notebook: `nbs_py/NN_topic.py` starting with a `#| default_exp topic` cell, a `# Title` and a
#   `> subtitle` line; run it with `tools/run_nb.py`, add it to `nbs/sidebar.yml`, then `nbdev_export`.
# - Cells that need a GPU or hours start with `#| gpu` or `#| slow` (`tst_flags` in `settings.ini`); the
#   same code runs next to them in a quick configuration.
# - Before committing: `nbdev_export && nbdev_clean && python tools/check_pairs.py && ruff check .`, then the
#   test command above. `bash .ci/run` runs all of it as CI does. Ruff lints only (`ruff.toml`: lines up to 120,
#   no `;` chains, no named lambdas); nothing is auto-formatted.
#
# **A new optimizer variant** is one entry in the registry: a line in `VARIANTS` in
# [variants](00_variants.ipynb) (label, colour, marker, rho family, whether it renormalizes, and its class
# and flags), plus its class in [optim](00_optim.ipynb) if it needs new code (most are flags of `SAM`). The
# optimizer factory, `stablesam-train --optimizer`, every experiment's `--optimizers`, the presets' rho grid,
# the Trainer's `gamma0`, figures and tables then know it, and `tests/test_optim.py` runs its checks over every
# registered variant. From your own code, `stablesam.optim.register_variant('mysam', label=..., color=...,
# cls=MySAM)` does the same at run time, with no edit to the package.
#
# **A new experiment** is one notebook (its `nbs_py/` script, and the module it exports) plus its entry point
# in `settings.ini` and its line in `nbs/sidebar.yml`: in the notebook, a function that trains one run spec
# (a plain dict) and returns its records, a function that lists the specs and hands them to
# `stablesam.experiment.run_experiment` (which writes `records.jsonl` and `config.json`, resumes, and runs them
# inline, in processes or on SLURM), a `main` built with `add_common` and `@command` (the options and exit
# statuses every command shares), and the figure and verdict read from the records. Its quick configuration
# runs in the notebook; its regression records go in `tests/regression/`.
