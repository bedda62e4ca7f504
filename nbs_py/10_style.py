# %%
#| default_exp style

# %% [markdown]
# # style
#
# > One vocabulary for every figure and table: each optimizer's name, label, colour and marker, and each recorded quantity's axis label

# %% [markdown]
# Every figure of the package draws an optimizer in the same colour and names it the same way, and
# labels its axes with quantities ("test accuracy (%)"), never with the keys the records use
# (`test_acc`). Both maps live here, and the toy, stability, landscape, results and main-job figures
# import them. The toy problem's plain gradient descent (`gd`) is drawn like SGD, its stochastic
# counterpart in the network experiments.

# %%
#| hide
from fastcore.test import *

# %%
#| export
from typing import NamedTuple


class OptimizerStyle(NamedTuple):
    """How one optimizer is drawn: legend label, colour, line style and marker."""
    label: str
    color: str
    linestyle: str = '-'
    marker: str = 'o'

OPTIMIZER_STYLES = {
    'sgd': OptimizerStyle('SGD', 'black', '-', 'o'),
    'gd': OptimizerStyle('GD', 'black', '-', 'o'),
    'sam': OptimizerStyle('SAM', 'tab:blue', '-', 's'),
    'stablesam': OptimizerStyle('StableSAM', 'tab:red', '-', '^'),
    'asam': OptimizerStyle('ASAM', 'tab:green', '-', 'D'),
    'stableasam': OptimizerStyle('StableASAM', 'tab:purple', '-', 'v'),
    'usam': OptimizerStyle('USAM', 'tab:orange', '--', 'P'),
    'stableusam': OptimizerStyle('StableUSAM', 'tab:brown', '--', 'X'),
}

def optimizer_style(name: str) -> OptimizerStyle:
    """The `OptimizerStyle` of optimizer `name` (a grey fallback, labelled with the name itself, for others)."""
    return OPTIMIZER_STYLES.get(name, OptimizerStyle(str(name), 'tab:gray', ':', '.'))

def plot_kwargs(name: str) -> dict:
    """Matplotlib keyword arguments (label, color, linestyle) that draw optimizer `name` in the package's style."""
    s = optimizer_style(name)
    return dict(label=s.label, color=s.color, linestyle=s.linestyle)


# %%
test_eq(optimizer_style('stablesam').label, 'StableSAM')
test_eq(optimizer_style('gd').color, optimizer_style('sgd').color)
test_eq(len({s.color for k, s in OPTIMIZER_STYLES.items() if k != 'gd'}), len(OPTIMIZER_STYLES) - 1)  # one colour each
test_eq(optimizer_style('lion'), OptimizerStyle('lion', 'tab:gray', ':', '.'))
test_eq(plot_kwargs('sam'), dict(label='SAM', color='tab:blue', linestyle='-'))


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
    'train_loss': Quantity('training loss'), 'test_loss': Quantity('test loss'), 'val_loss': Quantity('validation loss'),
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
    'loss_along': Quantity(r'training loss $f(w + \alpha e_1)$'), 'hessian_top_eig': Quantity(r'top Hessian eigenvalue $\lambda_1$'),
    'ratio_below_1': Quantity(r'steps with $\|g\|/\|g^{asc}\| < 1$ (%)'),
    'alignment_positive': Quantity(r'steps with $\langle g^{asc}, g\rangle > \|g\|^2$ (%)'),
}

def quantity(key: str) -> Quantity:
    """The `Quantity` (axis label, scale) of record key `key`; an unknown key is an error, so no raw key reaches an axis."""
    if key not in QUANTITIES: raise KeyError(f"No axis label for {key!r}: add it to stablesam.style.QUANTITIES")
    return QUANTITIES[key]


# %%
test_eq(quantity('test_acc'), Quantity('test accuracy (%)', 100.0))
test_fail(lambda: quantity('test_accuracy'), contains='QUANTITIES')
