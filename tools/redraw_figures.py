"""Redraw every committed figure under results/ from its committed records, with the package's own plot functions.

Run from the repository root: `python tools/redraw_figures.py [--write] [stability robust landscape comparison toy
efficient]`. Without --write it prints, per figure, the text problems `stablesam.style.figure_text_problems` finds
(text outside the figure, overlapping, too small at 700 px) and writes previews to /tmp; with --write it stores the
PNG (150 dpi or more) and, for the paper-size figures, a PDF beside it. Nothing trains, except Figure 4 of the main
job, which has no records and is recomputed at the job's quick size (seconds). This is how the figures committed
with issue 22 were made; a command that finishes an experiment draws the same figure itself.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from stablesam.runs import read_json, read_jsonl  # noqa: E402
from stablesam.style import figure_text_problems, save_figure  # noqa: E402

WRITE = '--write' in sys.argv
ONLY = [a for a in sys.argv[1:] if not a.startswith('--')]


def want(kind):
    """Whether figures of `kind` are to be drawn (all when none is named)."""
    return not ONLY or kind in ONLY


def done(fig, path, pdf=True):
    """Report `fig`'s text problems; store it at `path` (with --write) or a preview in /tmp."""
    problems = figure_text_problems(fig)
    print(path, fig.get_size_inches(), problems[:6], len(problems))
    if WRITE: print(save_figure(fig, path, pdf=pdf))
    else: fig.savefig('/tmp/preview_' + str(path).replace('/', '_'), dpi=150, bbox_inches='tight')
    plt.close(fig)


if want('stability'):
    from stablesam.stability import plot_stability, stability_title, write_stability_figure
    for folder in sorted(Path('results/stability').iterdir()) + [Path('results/efficient/stability-fcn-10k-constant')]:
        if not (folder / 'records.jsonl').exists(): continue
        cfg = read_json(folder / 'config.json')
        train = cfg.get('settings', {}).get('train', {})
        model, dataset = cfg.get('model') or train['model'], cfg.get('dataset') or train['dataset']
        setting = cfg.get('schedule') or ('weight-decay' if train.get('weight_decay') else train['schedule'])
        records = read_jsonl(folder / 'records.jsonl')
        title = stability_title(model, dataset, setting, cfg.get('n_train'))
        fig = plot_stability(records, title)
        print(folder, title, figure_text_problems(fig))
        plt.close(fig)
        if WRITE: print(write_stability_figure(folder, records, title))
if want('robust'):
    from stablesam.robustness import MODEL_TITLES, plot_label_noise, plot_lr_sweep
    for f in ['results/label_noise/fcn-mnist-10k-15ep', 'results/efficient/label-noise-80-fcn-10k']:
        done(plot_label_noise(read_jsonl(f + '/records.jsonl')), Path(f) / 'figure.png')
    for f in ['results/lr_sweep/mnist-10k-3ep', 'results/efficient/lr-sweep-fcn-10k']:
        done(plot_lr_sweep(read_jsonl(f + '/records.jsonl'), MODEL_TITLES), Path(f) / 'figure.png')
if want('landscape'):
    from stablesam.landscape_experiment import landscape_figure
    f = Path('results/landscape/fcn-mnist-10k')
    title = (f / 'summary.md').read_text().splitlines()[0].removeprefix('# ')
    done(landscape_figure(read_jsonl(f / 'records.jsonl'), title), f / 'landscape.png')
if want('comparison'):
    from stablesam.reproduce import plot_comparison
    f = Path('results/main_job/digits-quick')
    done(plot_comparison(read_jsonl(f / 'records.jsonl')), f / 'comparison.png', pdf=False)
if want('toy'):
    from stablesam.toy import figure4, paper_lrs
    fig, rates = figure4(lrs=paper_lrs(24), n_starts=1000, steps=1000, seed=0, progress=False)
    print({m: [round(float(rates[m][i].mean()), 3) for i in range(3)] for m in ('gd', 'sam', 'stablesam')})
    done(fig, Path('results/main_job/figure4.png'), pdf=False)
if want('efficient'):
    from stablesam.efficient_evidence import efficiency_inputs, efficiency_rows, plot_cost_benefit
    from stablesam.stability import stability_figure
    from stablesam.variants import VARIANTS
    R = Path('results/efficient')
    rows = efficiency_rows(*efficiency_inputs(R))
    levels = [p for p in (80, 60) if any(r.get(f'kept_best{p}') is not None for r in rows)]
    done(plot_cost_benefit(rows, levels=levels, figsize=(4 * len(levels), 6.5)), R / 'cost_benefit.png')
    st = read_jsonl(R / 'stability-fcn-10k-constant/records.jsonl')
    flavour = {'SAM and its efficient variants': lambda o: o == 'sgd' or not VARIANTS[o].stable,
               'StableSAM and its efficient variants': lambda o: o == 'sgd' or VARIANTS[o].stable}
    done(stability_figure({n: [r for r in st if k(r['optimizer'])] for n, k in flavour.items()}, figsize=(7.2, 8)),
         R / 'stability-fcn-10k-constant/stability_by_flavour.png')
