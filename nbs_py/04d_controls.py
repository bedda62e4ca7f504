# %%
#| default_exp controls

# %% [markdown]
# # controls
#
# > Step-matched controls: SAM and SGD at StableSAM's learning rate times its measured renormalization factor

# %% [markdown]
# StableSAM multiplies SAM's surrogate gradient by $\gamma_t = \|g_t\|/\|g^{asc}_t\|$, which is below 1 on almost
# every step of the committed runs: it takes shorter steps than SAM. Whether renormalization does anything a
# smaller learning rate would not is the question of issue 21, and its controls are registered variants
# ([variants](00_variants.ipynb), `CONTROLS`): SAM and SGD at $\eta f$ (`sam-lrf`, `sgd-lrf`, `matched='mean'`)
# and SAM whose learning rate follows StableSAM's factor epoch by epoch (`sam-lrf-epoch`, `matched='epoch'`).
#
# **How $f$ is measured.** A control never guesses $f$: it is read from the records of StableSAM runs made in
# the same setting, on the same data files, with the same seed (and, in the learning-rate sweep, the same model
# and learning rate). Each epoch's record carries `factor_mean`, the mean factor over that epoch's steps
# ([train](05_train.ipynb)); every epoch has the same number of steps, so their mean is the mean over all of
# the run's steps. `sam-lrf` and `sgd-lrf` take that one number; `sam-lrf-epoch` takes the list, epoch $e$
# training at $\eta f_e$. The factor is the StableSAM model's on $S$ in the stability pairs. The matched value
# becomes the run's `lr_scale` setting (`TrainConfig.lr_scale`), so it is in every run's config and in the
# experiment's settings, and a resumed experiment whose source changed is refused.

# %%
#| hide
from fastcore.test import *
import json
import tempfile
from pathlib import Path

# %%
#| export
from pathlib import Path

import numpy as np

from stablesam.runs import CONFIG, file_sha256, read_json, read_jsonl
from stablesam.variants import variant

SOURCE = 'stablesam'  # the optimizer whose measured factor the controls follow


# %% [markdown]
# `factor_series` picks one run's per-epoch factors out of an experiment's records; `matched_lr_scale` turns
# them into the `lr_scale` setting of a control.

# %%
#| export
def factor_series(records: list[dict], **run) -> list[float]:
    """StableSAM's per-epoch mean factor, in epoch order, in `records` of the run whose fields equal `run`."""
    rs = [r for r in records if r.get('optimizer') == SOURCE and r.get('factor_mean') is not None
          and all(r.get(k) == v for k, v in run.items())]
    return [r['factor_mean'] for r in sorted(rs, key=lambda r: r['epoch'])]


def matched_lr_scale(name: str, factors: list[float]) -> str | None:
    """The `lr_scale` of control `name` from StableSAM's `factors` (None: no factor was measured)."""
    how = variant(name).matched
    if how is None: raise ValueError(f"{name!r} is not a step-matched control (its variant has no 'matched')")
    if not factors: return None
    if how == 'mean': return f"{float(np.mean(factors)):.6g}"
    return ','.join(f"{f:.6g}" for f in factors)


# %%
recs = [dict(optimizer='stablesam', seed=0, epoch=e, factor_mean=f) for e, f in ((2, 0.8), (1, 0.9))] + \
       [dict(optimizer='stablesam', seed=1, epoch=1, factor_mean=0.5), dict(optimizer='sam', seed=0, epoch=1)]
test_eq(factor_series(recs, seed=0), [0.9, 0.8])
test_eq(matched_lr_scale('sam-lrf', factor_series(recs, seed=0)), '0.85')
test_eq(matched_lr_scale('sam-lrf-epoch', factor_series(recs, seed=0)), '0.9,0.8')
test_eq(matched_lr_scale('sgd-lrf', factor_series(recs, seed=7)), None)
test_fail(lambda: matched_lr_scale('sam', [0.9]), contains="not a step-matched control")


# %% [markdown]
# ## The source experiment
#
# `match_source` reads the experiment a control is matched to and refuses one that cannot be compared: made
# with other settings (the keys named by the caller: everything but the optimizers and seeds), on other data
# files (the checksums in its provenance against the files under this run's data root), or without StableSAM's
# factor in its records (made before the factor was recorded).

# %%
#| export
def _data_problems(source: dict, data_root) -> list[str]:
    """The data files in `source`'s provenance whose checksum differs from the file of that name under `data_root`."""
    root, problems = Path(data_root).resolve(), []
    for path, digest in ((source.get('provenance') or {}).get('data') or {}).items():
        path = Path(path)
        if path.exists():   # the file itself, if it is one of this data root's (a process may read other datasets)
            here = path if path.resolve().is_relative_to(root) else None
        else:               # the source was made in another checkout: the file of that name here
            here = next(root.rglob(path.name), None) if root.exists() else None
        if here is not None and file_sha256(here) != digest:
            problems.append(f"{Path(path).name}: sha256 {digest[:12]}... there, {file_sha256(here)[:12]}... here")
    return problems


def match_source(folder, settings: dict, keys, data_root) -> list[dict]:
    """StableSAM's records in results folder `folder`, after checking that its `keys` of `settings` agree."""
    folder = Path(folder)
    if not (folder / CONFIG).exists():
        raise FileNotFoundError(f"--match-from {folder}: no {CONFIG} there (an experiment's results folder with "
                                f"{SOURCE} runs)")
    source = read_json(folder / CONFIG)
    theirs = source.get('settings') or {}
    diff = [f"{k}: {theirs.get(k)!r} there, {settings.get(k)!r} here" for k in keys if theirs.get(k) != settings.get(k)]
    if diff: raise ValueError(f"--match-from {folder} was made with other settings ({'; '.join(diff)})")
    problems = _data_problems(source, data_root)
    if problems: raise ValueError(f"--match-from {folder} was made from other data files ({'; '.join(problems)})")
    records = [r for r in read_jsonl(folder / 'records.jsonl', torn_tail=True) if r.get('optimizer') == SOURCE]
    if not any(r.get('factor_mean') is not None for r in records):
        raise ValueError(f"--match-from {folder}: no {SOURCE} run there records factor_mean (made before the "
                         f"factor was recorded, or without {SOURCE}); run it again")
    return records


# %% [markdown]
# `match_specs` gives each control spec of an experiment its `lr_scale` from the source: the specs of other
# optimizers pass through; a control whose StableSAM run recorded no factor (it diverged in its first epoch)
# is left out and named in the returned dict, which goes into the experiment's settings.

# %%
#| export
def match_specs(specs: list[dict], source: list[dict] | None, run_keys, into: str = 'config') -> tuple:
    """`(specs, matched)`: each control's `into` settings with its `lr_scale`; `matched`: id -> lr_scale or None."""
    out, matched = [], {}
    for spec in specs:
        if variant(spec['optimizer']).matched is None:
            out.append(spec)
            continue
        if source is None:
            raise ValueError(f"{spec['optimizer']!r} is a step-matched control: give --match-from, the results "
                             f"folder of {SOURCE} runs made in the same setting")
        run = {k: spec[k] for k in run_keys}
        scale = matched_lr_scale(spec['optimizer'], factor_series(source, **run))
        matched[','.join(f'{k}={v}' for k, v in (('optimizer', spec['optimizer']), *run.items()))] = scale
        if scale is not None: out.append(dict(spec, **{into: dict(spec[into], lr_scale=scale)}))
    return out, matched


# %%
specs = [dict(optimizer=o, seed=s, config=dict(optimizer=o, lr=0.01)) for s in (0, 7) for o in ('sam', 'sam-lrf')]
kept, matched = match_specs(specs, recs, ['seed'])
test_eq([(s['optimizer'], s['seed'], s['config'].get('lr_scale')) for s in kept],
        [('sam', 0, None), ('sam-lrf', 0, '0.85'), ('sam', 7, None)])
test_eq(matched, {'optimizer=sam-lrf,seed=0': '0.85', 'optimizer=sam-lrf,seed=7': None})
test_fail(lambda: match_specs(specs, None, ['seed']), contains='give --match-from')

# %%
tmp = Path(tempfile.mkdtemp())
(tmp / 'data').mkdir()
(tmp / 'data' / 'f.bin').write_bytes(b'abc')
(tmp / 'src').mkdir()
src = dict(settings=dict(train=dict(lr=0.01), subset=100),
           provenance=dict(data={'/elsewhere/f.bin': file_sha256(tmp / 'data' / 'f.bin')}))
(tmp / 'src' / CONFIG).write_text(json.dumps(src))
(tmp / 'src' / 'records.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
test_eq(len(match_source(tmp / 'src', src['settings'], ['train', 'subset'], tmp / 'data')), 3)
test_fail(lambda: match_source(tmp / 'src', dict(src['settings'], subset=50), ['train', 'subset'], tmp / 'data'),
          contains="other settings (subset: 100 there, 50 here)")
(tmp / 'other').mkdir()
(tmp / 'other' / 'f.bin').write_bytes(b'xyz')   # a file of the same name in another data root: not this one's
src['provenance']['data'][str(tmp / 'other' / 'f.bin')] = file_sha256(tmp / 'other' / 'f.bin')
(tmp / 'src' / CONFIG).write_text(json.dumps(src))
test_eq(len(match_source(tmp / 'src', src['settings'], ['train'], tmp / 'data')), 3)
(tmp / 'data' / 'f.bin').write_bytes(b'abcd')
test_fail(lambda: match_source(tmp / 'src', src['settings'], ['train'], tmp / 'data'),
          contains='other data files (f.bin')
test_fail(lambda: match_source(tmp / 'none', {}, [], tmp / 'data'), contains='no config.json there')
