# %%
#| default_exp style

# %% [markdown]
# # style
#
# > One vocabulary for figures and tables: optimizer labels, colours, markers, axis labels, one Markdown table writer

# %% [markdown]
# Every figure of the package draws an optimizer in the same colour and names it the same way, and
# labels its axes with quantities ("test accuracy (%)"), never with the keys the records use
# (`test_acc`). Each optimizer's label, colour and marker come from its record in the variant registry
# (`stablesam.variants`), so a variant registered at run time is drawn in its own colour with no other
# edit; the toy problem's plain gradient descent (`gd`), which is no optimizer variant, is drawn like SGD,
# its stochastic counterpart in the network experiments. Any other name gets a grey dotted line labelled
# with the name itself.

# %%
#| hide
from fastcore.test import *
from stablesam.variants import VARIANTS, register_variant, unregister_variant

# %%
#| export
from typing import NamedTuple

from stablesam.variants import VARIANTS


class OptimizerStyle(NamedTuple):
    """How one optimizer is drawn: legend label, colour, line style and marker."""
    label: str
    color: str
    linestyle: str = '-'
    marker: str = 'o'


TOY_STYLES = {'gd': OptimizerStyle('GD', 'black', '-', 'o')}  # the toy's full-batch gradient descent: drawn like SGD


def optimizer_style(name: str) -> OptimizerStyle:
    """The `OptimizerStyle` of optimizer `name`: its registered variant's, the toy's `gd`, else grey and `name`."""
    if name in VARIANTS:
        v = VARIANTS[name]
        return OptimizerStyle(v.label, v.color, v.linestyle, v.marker)
    return TOY_STYLES.get(name, OptimizerStyle(str(name), 'tab:gray', ':', '.'))


def plot_kwargs(name: str, *, marker: bool = False, points: int | None = None, markers: int = 8) -> dict:
    """Matplotlib keyword arguments (label, color, linestyle; with `marker`, its marker) drawing optimizer `name`."""
    s = optimizer_style(name)
    kw = dict(label=s.label, color=s.color, linestyle=s.linestyle)
    if not marker: return kw
    kw.update(marker=s.marker, markersize=5 if s.marker in 'so' else 6)   # a square shows round a triangle over it
    if points and points > markers:   # about `markers` marks a line, staggered per variant: marks of two lines apart
        step = points // markers
        order = list(VARIANTS).index(name) if name in VARIANTS else 0
        kw['markevery'] = (order * max(step // 3, 1) % step, step)
    return kw


# %%
test_eq(optimizer_style('stablesam').label, 'StableSAM')
test_eq(optimizer_style('gd').color, optimizer_style('sgd').color)
test_eq(optimizer_style('lion'), OptimizerStyle('lion', 'tab:gray', ':', '.'))
test_eq(plot_kwargs('sam'), dict(label='SAM', color='tab:blue', linestyle='-'))
register_variant('my-sam', label='my SAM', color='tab:cyan', cls='SAM')
test_eq(plot_kwargs('my-sam'), dict(label='my SAM', color='tab:cyan', linestyle='-'))  # no other edit
test_eq(plot_kwargs('stablesam', marker=True)['marker'], '^')   # the registry's marker: SAM's square shows under it
test_eq([plot_kwargs(o, marker=True, points=61)['markevery'] for o in ('sgd', 'sam', 'stablesam')],
        [(0, 7), (2, 7), (4, 7)])   # about 8 marks a line, each optimizer's at other epochs
unregister_variant('my-sam')


# %% [markdown]
# Recorded quantities and the axis label each is plotted under. Accuracies are recorded as fractions
# and plotted in percent: `scale` is the factor from the record to the axis.

# %%
#| export
class Quantity(NamedTuple):
    """An axis label and the factor from the recorded value to the plotted one."""
    label: str
    scale: float = 1.0

QUANTITIES = {
    'train_loss': Quantity('training loss'), 'test_loss': Quantity('test loss'),
    'val_loss': Quantity('validation loss'),
    'train_acc': Quantity('training accuracy (%)', 100.0), 'test_acc': Quantity('test accuracy (%)', 100.0),
    'val_acc': Quantity('validation accuracy (%)', 100.0),
    'lr': Quantity('learning rate'), 'epoch': Quantity('epoch'),
    'param_distance': Quantity('normalised distance\n$\\|w-w\'\\|/(\\|w\\|+\\|w\'\\|)$'),   # two lines: a short
    'gen_error': Quantity('generalisation error\n(test - train loss)'),          # panel of Figures 5-7 fits them
    'acc_gap': Quantity('accuracy gap\n(train - test, %)', 100.0),
    'norm_ratio': Quantity('$\\|g\\| / \\|g^{asc}\\|$'), 'renorm_factor': Quantity('renormalization factor'),
    'diverged': Quantity('diverged runs (%)', 100.0),
    'alignment': Quantity(r'$\langle g^{asc}, g\rangle - \|g\|^2$'), 'cosine': Quantity(r'$\cos\angle(g^{asc}, g)$'),
    'grad_norm': Quantity(r'exact gradient norm $\|g\|$'), 'alpha': Quantity(r'step $\alpha$ along $e_1$'),
    'loss_along': Quantity(r'training loss $f(w + \alpha e_1)$'),
    'hessian_top_eig': Quantity(r'top Hessian eigenvalue $\lambda_1$'),
    'ratio_below_1': Quantity(r'steps with $\|g\|/\|g^{asc}\| < 1$ (%)'),
    'alignment_positive': Quantity(r'steps with $\langle g^{asc}, g\rangle > \|g\|^2$ (%)'),
}

def quantity(key: str) -> Quantity:
    """The `Quantity` (axis label, scale) of record key `key`; an unknown key is an error (no raw key on an axis)."""
    if key not in QUANTITIES: raise KeyError(f"No axis label for {key!r}: add it to stablesam.style.QUANTITIES")
    return QUANTITIES[key]


# %%
test_eq(quantity('test_acc'), Quantity('test accuracy (%)', 100.0))
test_fail(lambda: quantity('test_accuracy'), contains='QUANTITIES')

# %% [markdown]
# ## Saving a figure
#
# Every stored figure is written by `save_figure`: a PNG at 150 dpi or more, cropped to what is drawn
# (`bbox_inches='tight'`, so nothing drawn is cut off), and, for a paper-size figure, a PDF beside it.
# `figure_text_problems` says what keeps a figure from print quality: text that lies outside the figure,
# texts that run into each other, and text too small to read when the figure is shown `width` pixels wide
# (the docs show figures about 700 pixels wide).

# %%
#| export
from itertools import combinations
from pathlib import Path

MIN_DPI = 150   # the least resolution of a stored figure


def save_figure(fig, path, *, dpi: int = MIN_DPI, pdf: bool = False) -> list:
    """Write `fig` to PNG `path` at `dpi` (at least `MIN_DPI`) cropped to what is drawn; with `pdf`, a PDF beside it."""
    if dpi < MIN_DPI: raise ValueError(f"Invalid dpi: {dpi} (a stored figure has at least {MIN_DPI})")
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches='tight', pad_inches=0.05)
    paths = [path]
    if pdf:
        fig.savefig(path.with_suffix('.pdf'), bbox_inches='tight', pad_inches=0.05)
        paths.append(path.with_suffix('.pdf'))
    return paths


def wrapped(text: str, inches: float, fontsize: float) -> str:
    """`text` broken into lines that fit `inches` at `fontsize` points (0.6 em a character, a safe width)."""
    import textwrap
    return textwrap.fill(text, max(int(inches * 72 / (0.6 * fontsize)), 12), break_on_hyphens=False)


def log_x_axis(ax):
    """A logarithmic x axis (learning rate, loss) labelled at 1, 2 and 5 times each power of ten, in plain numbers."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    ax.set_xscale('log')
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))
    ax.xaxis.set_minor_formatter(NullFormatter())


def figure_legend(fig, title: str | None = None, fontsize: float = 8, loc: str = 'outside lower center'):
    """One legend for all of `fig`'s labelled lines, outside its panels (it hides no line), in the columns that fit."""
    handles = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()): handles.setdefault(label, h)
    column = 30 + 0.6 * fontsize * max(map(len, handles), default=1)   # points: the handle, then the longest label
    beside = 'right' in loc or 'left' in loc   # one column beside the panels, else rows below or above them
    per_row = 1 if beside else max(1, min(len(handles), int(fig.get_figwidth() * 72 // column)))
    return fig.legend(list(handles.values()), list(handles), loc=loc, ncols=per_row, fontsize=fontsize, title=title,
                      title_fontsize=fontsize, frameon=False)


def _undrawn_axis_texts(fig) -> set:
    """Axis texts matplotlib keeps but does not draw: tick labels outside the view limits, all of an axes turned off."""
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not ax.axison or not lo - 1e-9 * (hi - lo) <= tick.get_loc() <= hi + 1e-9 * (hi - lo):
                    undrawn.update((tick.label1, tick.label2))
            if not ax.axison: undrawn.update((axis.label, axis.get_offset_text()))
    return undrawn


def drawn_texts(fig) -> list:
    """The text artists `fig` draws: visible, not empty, and (tick labels) inside their axis's view limits."""
    from matplotlib.text import Text
    fig.canvas.draw()
    undrawn = _undrawn_axis_texts(fig)
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t not in undrawn]


def figure_text_problems(fig, width: float = 700, min_px: float = 8.0) -> list:
    """What keeps `fig` from print quality: texts outside it, texts overlapping, texts under `min_px` at `width` px."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    shown = fig.get_tightbbox(renderer).width * 72   # points across the saved (cropped) figure
    problems, frame = [], fig.bbox
    for t, b in boxes:
        if b.x0 < frame.x0 - 1 or b.y0 < frame.y0 - 1 or b.x1 > frame.x1 + 1 or b.y1 > frame.y1 + 1:
            problems.append(f"outside the figure: {t.get_text()!r}")
        if t.get_fontsize() * width / shown < min_px:
            problems.append(f"{t.get_fontsize():g} pt is {t.get_fontsize() * width / shown:.1f} px at {width:g} px "
                            f"wide: {t.get_text()!r}")
    for (s, a), (t, b) in combinations(boxes, 2):
        x = min(a.x1, b.x1) - max(a.x0, b.x0)
        y = min(a.y1, b.y1) - max(a.y0, b.y0)
        if x > 1 and y > 1: problems.append(f"overlapping: {s.get_text()!r} and {t.get_text()!r}")
    return problems


# %% [markdown]
# A figure saved by `save_figure` is a PNG at 150 dpi with a PDF beside it; a lower resolution is an error.
# `figure_text_problems` finds a title wider than its figure, and two labels drawn on top of each other:

# %%
import tempfile
import matplotlib
import matplotlib.pyplot as plt
from PIL import Image

fig, ax = plt.subplots(figsize=(3, 2), layout='constrained')
ax.plot([0, 1], [0, 1], **plot_kwargs('sam'))
ax.set(xlabel=quantity('epoch').label, ylabel=quantity('test_acc').label)
test_eq(figure_text_problems(fig), [])
with tempfile.TemporaryDirectory() as d:
    paths = save_figure(fig, Path(d) / 'f.png', pdf=True)
    test_eq([p.name for p in paths], ['f.png', 'f.pdf'])
    assert Image.open(paths[0]).info['dpi'][0] >= 150
    assert paths[1].read_bytes()[:5] == b'%PDF-'
    test_fail(lambda: save_figure(fig, Path(d) / 'g.png', dpi=100), contains='Invalid dpi: 100')
ax.set_title('a title far wider than this small figure of three inches')
test_eq(figure_text_problems(fig), ["outside the figure: 'a title far wider than this small figure of three inches'"])
ax.set_title(wrapped(ax.get_title(), 3, 10), fontsize=10)   # two lines, each fits
test_eq(figure_text_problems(fig), [])
ax.set_title('a title far wider than this small figure of three inches')
ax.text(0.5, 0.5, 'here', transform=ax.transAxes)
ax.text(0.5, 0.5, 'there', transform=ax.transAxes)
test_eq(figure_text_problems(fig), ["outside the figure: 'a title far wider than this small figure of three inches'",
                                    "overlapping: 'here' and 'there'"])
ax.title.set_fontsize(2)   # fits now, but is too small to read
test_eq([p.split(' is ')[0] for p in figure_text_problems(fig)], ['2 pt', "overlapping: 'here' and 'there'"])
plt.close(fig)


# %% [markdown]
# ## One Markdown table writer
#
# Every summary, verdict and report table of the package is written by `markdown_table`: rows are dicts,
# and `columns` maps a row key to its header and its format (a format string, a function of the value, or
# None for `str`). A missing or None value is shown as `-`.

# %%
#| export
def markdown_table(rows, columns: dict) -> str:
    """`rows` (dicts) as a Markdown table; `columns` maps a key to `(header, format)` (str format, function or None)."""
    def cell(value, fmt):
        if value is None: return '-'
        if fmt is None: return str(value)
        return fmt(value) if callable(fmt) else fmt.format(value)
    lines = ['| ' + ' | '.join(header for header, _ in columns.values()) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(r.get(k), fmt) for k, (_, fmt) in columns.items()) + ' |' for r in rows]
    return '\n'.join(lines)


# %%
table = markdown_table([dict(name='sam', acc=0.91234), dict(name='sgd', acc=None)],
                       dict(name=('optimizer', lambda n: optimizer_style(n).label), acc=('test acc', '{:.2%}')))
print(table)
test_eq(table.splitlines(), ['| optimizer | test acc |', '|---|---|', '| SAM | 91.23% |', '| SGD | - |'])
