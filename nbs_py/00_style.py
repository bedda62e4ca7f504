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


def plot_kwargs(name: str) -> dict:
    """Matplotlib keyword arguments (label, color, linestyle) that draw optimizer `name` in the package's style."""
    s = optimizer_style(name)
    return dict(label=s.label, color=s.color, linestyle=s.linestyle)


# %%
test_eq(optimizer_style('stablesam').label, 'StableSAM')
test_eq(optimizer_style('gd').color, optimizer_style('sgd').color)
test_eq(optimizer_style('lion'), OptimizerStyle('lion', 'tab:gray', ':', '.'))
test_eq(plot_kwargs('sam'), dict(label='SAM', color='tab:blue', linestyle='-'))
register_variant('my-sam', label='my SAM', color='tab:cyan', cls='SAM')
test_eq(plot_kwargs('my-sam'), dict(label='my SAM', color='tab:cyan', linestyle='-'))  # no other edit
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
    'param_distance': Quantity('normalised distance $\\|w-w\'\\|/(\\|w\\|+\\|w\'\\|)$'),
    'gen_error': Quantity('generalisation error (test - train loss)'),
    'acc_gap': Quantity('accuracy gap (train - test, %)', 100.0),
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
