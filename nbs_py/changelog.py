# %% [markdown]
# # Changelog
#
# > What changed between versions, and what to do about it

# %% [markdown]
# Each behaviour change is named with what to do about it (**Do:**). `CHANGELOG.md` is generated from this page
# (`nbs_py/changelog.py`) by `python tools/make_readme.py`; edit the page, not the file. The installed version is
# `stablesam.__version__`, and every `config.json` a run or an experiment writes records it under
# `versions.stablesam`.

# %% [markdown]
# ## 0.3.0 (unreleased)
#
# ### Installable and watchable (issue 23)
#
# - **A wheel that installs clean.** `python -m build` makes an sdist and a wheel that pass `twine check`; CI
#   installs the wheel into a fresh virtual environment with the runtime dependencies only and runs the README's
#   drop-in example, `stablesam-train --quick` and `stablesam-reproduce --help` there (`tools/check_wheel.sh`).
#   Runtime dependencies are what the library imports (`scipy` and `pillow` are now named; lightning,
#   transformers and accelerate are no longer in `dev` only but optional extras). **Do:** `pip install stablesam`,
#   plus the extras you use: `stablesam[lightning]`, `stablesam[transformers]`, `stablesam[tensorboard]`,
#   `stablesam[wandb]`, `stablesam[slurm]` (`[dev]` installs all of them). A missing one is an `ImportError` that
#   names the extra (a command exits with status 2).
# - **Integrations as code.** `from stablesam.integrations import LitSAM, SAMTrainer`
#   ([integrations](00d_integrations.ipynb)). `SAMTrainer` differs from the 0.2 recipe of the frameworks page:
#   it ends `training_step` with `unperturb()`, so the Trainer's `max_grad_norm` (1.0 by default) now clips the
#   renormalized gradient (0.2's recipe needed `max_grad_norm=0`), and with `gradient_accumulation_steps > 1` it
#   takes one ascent with the accumulated gradient and runs the second pass over every micro-batch (0.2's recipe
#   failed there). **Do:** replace a copied recipe by the import; drop `max_grad_norm=0` unless you want no
#   clipping.
# - **Logging.** `stablesam-train --logger tensorboard wandb csv --log-every N`, and the same options on
#   `stablesam-stability`, `-robustness`, `-landscape` and `stablesam-train --sweep ... --executor`
#   ([loggers](05b_loggers.ipynb)). New files in a run folder: `tensorboard/`, `wandb/` with `wandb.json`,
#   `scalars.csv`. `Trainer` callbacks may define `after_fit(trainer)` (called when `fit` ends, also on an error)
#   and read `trainer.last_loss`.
# - **Versions.** `config.json` records `versions.stablesam` from `stablesam.__version__` (0.2 read pip's record,
#   which says 0.1.0 for a source tree installed with `pip install -e` before a version bump). **Do:** nothing;
#   records written before 0.3 say `0.1.0`.
#
# ### Architecture 0.3: one experiment runner, one registry of variants
#
# - **The experiment runner** (`stablesam.experiment.run_experiment`, [experiment](04c_experiment.ipynb)) runs
#   every experiment (stability, learning-rate sweep, label noise, landscape, the main job's comparison,
#   `stablesam-train --sweep TABLE --executor ...`): specs in, `records.jsonl` and `config.json` out, on an
#   executor `inline`, `processes` (spawned, `--processes N`) or `slurm` (submitit, `--slurm KEY=VALUE ...`).
#   Every experiment command shares `--data-root`, `--download/--no-download`, `--device`, `--seeds`, `--out`,
#   `--fresh`, `--progress/--quiet`, `--executor` and `--debug`, and exits with 2 on a usage error, 3 when
#   training diverged, 1 on anything unexpected.
# - **Resume is the default.** A results folder with other settings is refused with a message naming the
#   setting. **Do:** `--fresh` to start over, or another `--out`.
# - **Old results folders are refused by resume.** A `config.json` without `done` (written before 0.3) is not
#   continued. **Do:** finish such a run with 0.2, or start it again with `--fresh` (or another `--out`).
# - **`stablesam-stability --workers N` changed meaning**: it is now `--executor processes --processes N`, with a
#   warning (spawned processes instead of forked ones; the records are the same). **Do:** write
#   `--executor processes --processes N`.
# - **Run folders of an experiment** are `runs/<spec id>/` of its results folder (0.2: `pairs/<optimizer>-seed<seed>/`
#   for stability). **Do:** read checkpoints from the new place; records are unchanged (checked against fixtures
#   recorded by 0.2's code).
# - **The variant registry** (`stablesam.variants`: `VARIANTS`, `register_variant`, `variant`): one entry per
#   optimizer variant gives its label, colour, class and flags to the optimizer factory, every `--optimizer(s)`
#   choice, the presets, figures and tables. `stablesam.optim.OPTIMIZERS` is now a live view of the registry's
#   names. **Do:** register a new variant there (`register_variant('mysam', ..., cls=MySAM)`) instead of editing
#   lists.
# - **`gamma0` with a variant that does not renormalize is an error** (0.2 dropped it silently). **Do:** remove
#   `--gamma0` for `sgd`, `sam`, `asam`, `usam`.
# - **A damaged or foreign checkpoint** (`CheckpointError`) is a usage error, exit status 2 (0.2: 1).
# - **The landscape experiment moved** to `stablesam.landscape_experiment` (Figures 1-3, with its command
#   `stablesam-landscape`); `stablesam.landscape` keeps the tools. **Do:** `from stablesam.landscape_experiment
#   import landscape_experiment`.
#
# ### Efficient SAM variants (issue 20)
#
# New: schedules that take SAM's second pass on some steps only (`every:K`, `random:P`, `late:F`, AE-SAM's `ae`) and
# LookSAM's reuse of the SAM direction (`look_alpha`), as `SAM(..., schedule=, look_alpha=, total_steps=)`, ten
# registry variants (`sam-every`, `stablesam-every`, `sam-random`, `stablesam-random`, `sam-late`, `stablesam-late`,
# `aesam`, `stableaesam`, `looksam`, `stablelooksam`) and `stablesam-train --sam-schedule SPEC --look-alpha A`
# ([efficient](00c_efficient.ipynb)). Behaviour changes:
#
# - **`first_step()` returns a bool**: True when it perturbed the weights, False on a one-pass step of an efficient
#   variant (weights and `.grad` untouched; `zero_grad=True` does not clear the gradient then). The two-pass
#   variants always return True, so existing loops are unaffected. **Do:** with an efficient variant, run the second
#   forward-backward only `if opt.first_step(...)`, then `second_step()` / `step()` as before; `sam_step`,
#   `step(closure)`, the Trainer and `stablesam.integrations` already do.
# - **`last_stats` has a `sam_step` key, a Python bool** (the others stay 0-dim tensors); a one-pass step's
#   `last_stats` holds only `sam_step`, `grad_norm` and `renorm_factor`. **Do:** skip `sam_step` where code turns
#   every value into a number or stacks them (`{k: v for k, v in opt.last_stats.items() if k != 'sam_step'}`).
# - **The Trainer's epoch `norm_ratio` and `renorm_factor` are means over SAM steps**, and efficient variants add
#   `sam_fraction` (the share of SAM steps) to `metrics.jsonl`; for the two-pass variants nothing changes.
# - **`TrainConfig` has `sam_schedule` and `look_alpha`** (None by default), so a 0.3 `config.json` has two more
#   keys. **Do:** nothing; 0.2 configs load with the defaults.
# - **`SAM.state_dict()['sam']` also holds `schedule` and `look_gv`** (the schedule's counters, moving averages and
#   generator state; LookSAM's g_v, gathered whole under FSDP2); a 0.2 optimizer state dict still loads.
#
#
# ### Evidence that cannot drift (issue 22)
#
# - **Provenance in every `config.json`**: a `provenance` record (commit, dirty, changed files, versions, sha256 of
#   every data file read, threads, device, argv, machine); experiments also record their runner `key`.
#   `stablesam-results provenance FOLDER` prints it. **Do:** nothing; readers of `config.json` see one more key.
# - **A resumed experiment refuses other data files**: when a data file's sha256 differs from the one the
#   experiment started with, the command stops (exit 2) naming the file. **Do:** `--fresh` (start over on the files
#   present) or another `--out`.
# - **`stablesam-results check [ROOT]`** re-derives every committed summary from its records and checks that
#   every record set is complete and made by a command of this package; CI runs it. Each command's summary is
#   written by its module's `summary_files(folder)` (stability, robustness, landscape_experiment, reproduce,
#   efficient_evidence, cli). **Do:** an experiment committed before all its runs finished says so in its
#   `config.json` (`"unfinished": "why, and how to continue"`).
# - **`stablesam-reproduce` writes a job `config.json`** beside `report.md` (the command, stage wall times, the
#   audit's statuses, Figure 4's success rates) and `report.md` is made from it (`report_text`).
# - **`stablesam-train --sweep mnist-noise40`**: Table 4's layout at CPU size on real MNIST (the committed
#   `results/results_table/mnist-noise40`, remade with it); a table sweep also writes `results.md`.
# - **Results tables ignore `provenance`** when grouping runs into cells (it differs from run to run).
# - **`--on-nonfinite skip` also skips a step whose update makes a weight non-finite** (the loss and gradient were
#   finite): the weights, BatchNorm statistics and optimizer state are restored. In skip mode each step keeps a
#   copy of them and syncs once more. **Do:** nothing; `stop` (the default) is unchanged.
# - **Sweep records carry `nonfinite` as a dict only**: a record with the list form (written before 0.2's dict) is
#   an error naming the file and the fix. **Do:** `python tools/migrate_nonfinite.py FOLDER` once (the committed
#   lr-sweep records are migrated).
# - **Callback state in checkpoints**: a Trainer callback with `state_dict()`/`load_state_dict()` (the landscape's
#   `StepStats`) is saved in every checkpoint, mid-epoch too, and restored on resume; landscape runs now checkpoint
#   into `runs/<run>/`. Older checkpoints load without it.
# - **Distributed evaluation and BatchNorm**: every process evaluates an equal share (the remainder counted once),
#   so FSDP2 no longer deadlocks on uneven shards; BatchNorm running statistics are broadcast from rank 0 after
#   each epoch and before evaluation under DDP and FSDP2.
# - **Figures**: `stablesam.style.save_figure` (PNG at 150 dpi or more, optional PDF) and `figure_text_problems`
#   (text outside the figure, overlapping, or too small at 700 px); every stored figure was redrawn from its
#   records (`tools/redraw_figures.py`), the stability figures as one column with the legend below and markers.

# %% [markdown]
# ### Renormalization or a shorter step? (issue 21)
#
# - **Step statistics in every epoch's metrics and records**: `update_norm` (the mean length of a step,
#   $\|w_{t+1} - w_t\|$, measured by `stablesam.optim.StepChange`) for every optimizer, and for the SAM family the
#   factor of each SAM step (applied by the Stable variants, the one SAM would have applied otherwise):
#   `factor_mean`, `factor_p10/p50/p90`, and the mean `grad_norm` and `asc_grad_norm`. The stability records carry
#   the S model's, the lr-sweep records also `init_train_loss` (the loss before the first step). The step length
#   costs two more passes over the weights a step (3.5% of a StableSAM step's CPU time for the MNIST FCN).
#   **Do:** nothing; readers of records see more keys (the regression fixtures check the old ones unchanged).
# - **`lr_scale`** (`--lr-scale F` or `F1,F2,...` per epoch) multiplies the learning rate; **step-matched controls**
#   in the registry: `sam-lrf` and `sgd-lrf` (lr x StableSAM's mean factor), `sam-lrf-epoch` (lr x each epoch's
#   factor); `Variant.matched` says which. `stablesam-stability` and the lr sweep take `--match-from FOLDER`: each
#   control follows the StableSAM run of its seed (and model and lr) recorded there, after the folder's settings and
#   data files are checked (`stablesam.controls`).
# - **Remark 19's clamp as variants**: `stablesam-clamp10`, `-clamp50`, `-clamp90` (gamma0 0.1, 0.5, 0.9). A
#   variant's own `gamma0` flag is kept unless `--gamma0` is given (before, the Trainer passed `gamma0=None`).
# - **`stablesam.controls_evidence`** (critical learning rates under two failure criteria with a bootstrap over
#   seeds, seed-range comparisons at equal epochs and at equal training loss, correlations three ways, the verdict
#   table; `python -m stablesam.controls_evidence results/controls`) and **`stablesam.open_questions`** (the loss
#   barrier between final models, Hessian top eigenvalue and Hutchinson trace, FGSM/PGD accuracy with
#   `torchattacks`; `python -m stablesam.open_questions`). New extra: `stablesam[attacks]` (torchattacks).
# - `stablesam.data.normalization(dataset)`; `results_check.folder_problems` lost its unused `derive` parameter.
# - **Flatness at equal training loss**: `open_questions.epoch_model` retrains a stability run to an epoch in its
#   batch order (checked against the recorded training loss), and the open questions measure each run of SGD, SAM,
#   StableSAM and SAM at lr x f at the highest final training loss of those runs; `python -m stablesam.open_questions`
#   takes `--executor`/`--processes`. The equal-loss level of `controls_evidence` is now the highest final loss of
#   any run (was: of any optimizer's seed mean), so every seed counts.
# - **One `critical_lr`** (`stablesam.robustness.critical_lr`, from failed flags per lr); **`efficient_evidence.
#   critical_lr` is now `divergence_critical_lr`**. **Do:** rename calls of the old name.
# - **`controls_evidence` reads its settings from one registry**, `STABILITY` (name -> `Setting`: verdict section,
#   figure title, column title, results folders): the FCN settings, the LeNet panel (§5) and the constant-lr factor
#   control, whose clamp and StableUSAM rows compare each control's distance with SAM's and StableSAM's
#   (`factor_stability_verdicts`). It draws Figures 6 and 7 in the paper's layout (FCN left, LeNet right) and names
#   each setting's figures after its folder (`stability-fcn-10k-weight-decay.png`, was `stability-weight-decay.png`).
#   `question_verdicts(records, setting)` names the models it speaks of. A critical learning rate at its grid's
#   largest lr is printed `>=`: the grid cannot tell how much higher it is. `stability_verdicts(rows, ...)` and
#   `factor_stability_verdicts(rows, ...)` take the rows of `stability_rows` / `factor_stability_rows` (were: records),
#   so the summary computes each table once. **Do:** pass `stability_rows(records)` where you passed `records`.

# %% [markdown]
# ## 0.2.0 (2026-12-01)
#
# - **Stability records are `records.jsonl`**, next to a `config.json` with the command, settings and wall time
#   (0.1 wrote `stability.jsonl`). **Do:** read `records.jsonl` (`stablesam.runs.read_jsonl`); rename an old
#   `stability.jsonl` to read it with the new tools.
# - **`verify_all` moved** from `stablesam.theory` to `stablesam.theory_audit` when the audit was split into
#   `theory_checks`, `theory_runs` and `theory_audit`; the statuses gained `outside` and `does not follow`.
#   **Do:** `from stablesam.theory_audit import verify_all`.
# - **The engine was split into modules**: `TrainConfig` and the presets in `stablesam.config`, run folders in
#   `stablesam.runs`, `stablesam-train` in `stablesam.cli`. `stablesam.train` still re-exports 0.1's names.
#   **Do:** nothing now; new code imports from the defining modules.
# - **`ascent='global'|'local'`** (`--ascent`): under DDP, 0.1's Trainer took a local first pass and an
#   all-reduced second pass; 0.2 runs Algorithm 1 on the global batch by default (`global`), or per-replica
#   ascent and renormalization (`local`). Multi-GPU runs of 0.1 and 0.2 differ. **Do:** `--ascent local` for
#   m-sharpness; compare multi-GPU runs only within one version. FSDP2 (`--fsdp`) is new.
# - **`stablesam.distributed.sam_step` was removed**: `stablesam.optim.sam_step` follows `opt.ascent`. **Do:**
#   import it from `stablesam.optim`.
# - **`opt.step()` without a closure finishes a step begun with `first_step`** (0.1: an error); frameworks whose
#   closure only runs hooks work.
# - **Divergence stops a run**: a non-finite loss, gradient or weight ends `stablesam-train` with exit status 3,
#   `diverged.json` and the last good checkpoint kept. **Do:** `--on-nonfinite skip` to skip such steps instead.
# - **Mid-epoch checkpoints** every `--checkpoint-every` seconds (600 by default; 0: epoch ends only), two slots
#   (`checkpoint.pt`, `checkpoint.prev.pt`).
# - **`stablesam-reproduce --quick` compares on scikit-learn's real 8x8 digits** (0.1: generated images).
# - New: `--val-split` and `stablesam-results --protocol held-out`, `stablesam-robustness`, the in-memory data
#   path and batched CIFAR augmentation on the device (the same batches as the DataLoader path), the framework
#   recipes (Lightning, Hugging Face, `torch.compile`), `stablesam-stability --workers N`.
# - **One vocabulary**: `landscape_label` and `LANDSCAPE_QUANTITIES` were removed. **Do:** use
#   `stablesam.style.QUANTITIES`.

# %% [markdown]
# ## 0.1.0 (2026-11-29)
#
# The first version: the SAM family (SAM, StableSAM, ASAM, StableASAM, USAM, StableUSAM) as one PyTorch optimizer
# with `last_stats`, `freeze_bn_stats` and `make_optimizer`; the Section 4 theory audit (`verify_all`); the toy
# experiment of Figure 4; the Trainer with exact resume, AMP and DDP, and `stablesam-train`; the stability
# experiment (`stablesam-stability`, Figures 5-7); the landscape tools (Figures 1-3); `stablesam-results`; and
# the main job `stablesam-reproduce`.
