# %%
#| default_exp variants

# %% [markdown]
# # variants
#
# > One registry of optimizer variants: how each is built, its rho family, the settings it takes, how figures draw it

# %% [markdown]
# Every place that needs to know about an optimizer variant reads one record from `VARIANTS`: the optimizer
# factory (`stablesam.optim.make_optimizer`), the Trainer (whether `gamma0` and `renorm_norm` apply), the
# presets and table sweeps (which rho grid: SAM's or ASAM's), every CLI's `choices`, the style of every
# figure and the column order of every table. A new variant is one `register_variant` call; it then appears
# in `stablesam-train --optimizer NAME`, in figures and in tables with no other edit.
#
# The registry imports nothing heavy (no torch), so `stablesam-results` reads run folders without torch. A
# built-in variant names its class in `stablesam.optim` (resolved when it is built); a user's variant may
# pass the class itself.

# %%
#| hide
from fastcore.test import *

# %%
#| export
import re
from typing import NamedTuple


class Variant(NamedTuple):
    """One optimizer variant: how to build it, its rho family, whether it renormalizes, and how figures draw it."""
    label: str                # legend and table label
    color: str                # one colour per variant across the package
    marker: str = 'o'
    linestyle: str = '-'
    cls: object = None        # a SAM class (or its name in stablesam.optim); None: the base optimizer alone
    flags: dict = {}          # extra keyword arguments of `cls` (e.g. dict(adaptive=True))
    family: str | None = 'sam'  # 'sam' or 'asam': which rho grid the presets and table sweeps use; None: no rho
    stable: bool = False      # renormalizes (takes gamma0 and renorm_norm)
    matched: str | None = None  # a step-matched control: its lr is scaled by StableSAM's measured factor, the run's
                                # mean ('mean') or each epoch's ('epoch'), given as the `lr_scale` setting


VARIANTS = {
    'sgd': Variant('SGD', 'black', 'o', '-', None, {}, None, False),
    'sam': Variant('SAM', 'tab:blue', 's', '-', 'SAM'),
    'stablesam': Variant('StableSAM', 'tab:red', '^', '-', 'StableSAM', stable=True),
    'asam': Variant('ASAM', 'tab:green', 'D', '-', 'ASAM', family='asam'),
    'stableasam': Variant('StableASAM', 'tab:purple', 'v', '-', 'StableASAM', family='asam', stable=True),
    'usam': Variant('USAM', 'tab:orange', 'P', '--', 'USAM'),
    'stableusam': Variant('StableUSAM', 'tab:brown', 'X', '--', 'StableUSAM', stable=True),
    # efficient variants (stablesam.efficient): a second pass on some steps only, or LookSAM's reuse of its direction
    'sam-every': Variant('SAM every 5', 'deepskyblue', '<', '--', 'SAM', {'schedule': 'every:5'}),
    'stablesam-every': Variant('StableSAM every 5', 'teal', '<', '-', 'StableSAM', {'schedule': 'every:5'},
                               stable=True),
    'sam-random': Variant('RandSAM p=0.2', 'tab:pink', '>', '--', 'SAM', {'schedule': 'random:0.2'}),
    'stablesam-random': Variant('StableRandSAM p=0.2', 'deeppink', '>', '-', 'StableSAM', {'schedule': 'random:0.2'},
                                stable=True),
    'sam-late': Variant('SAM last 20%', 'yellowgreen', 'h', '--', 'SAM', {'schedule': 'late:0.8'}),
    'stablesam-late': Variant('StableSAM last 20%', 'darkolivegreen', 'h', '-', 'StableSAM',
                              {'schedule': 'late:0.8'}, stable=True),
    'aesam': Variant('AE-SAM', 'gold', 'd', '--', 'SAM', {'schedule': 'ae'}),
    'stableaesam': Variant('StableAE-SAM', 'darkgoldenrod', 'd', '-', 'StableSAM', {'schedule': 'ae'}, stable=True),
    'looksam': Variant('LookSAM k=5', 'slateblue', '*', '--', 'SAM', {'schedule': 'every:5', 'look_alpha': 0.7}),
    'stablelooksam': Variant('StableLookSAM k=5', 'indigo', '*', '-', 'StableSAM',
                             {'schedule': 'every:5', 'look_alpha': 0.7}, stable=True),
    # controls of issue 21 (stablesam.controls): is renormalization more than a shorter step?
    'sam-lrf': Variant('SAM at lr×f', 'cornflowerblue', 's', ':', 'SAM', matched='mean'),
    'sgd-lrf': Variant('SGD at lr×f', 'gray', 'o', ':', None, {}, None, matched='mean'),
    'sam-lrf-epoch': Variant('SAM at lr×f(epoch)', 'navy', 's', '-.', 'SAM', matched='epoch'),
    'stablesam-clamp10': Variant('StableSAM γ0=0.1', 'lightsalmon', '^', ':', 'StableSAM', {'gamma0': 0.1},
                                 stable=True),
    'stablesam-clamp50': Variant('StableSAM γ0=0.5', 'orangered', '^', '--', 'StableSAM', {'gamma0': 0.5},
                                 stable=True),
    'stablesam-clamp90': Variant('StableSAM γ0=0.9', 'maroon', '^', '-.', 'StableSAM', {'gamma0': 0.9},
                                 stable=True),
}
EFFICIENT = ('sam-every', 'stablesam-every', 'sam-random', 'stablesam-random', 'sam-late', 'stablesam-late',
             'aesam', 'stableaesam', 'looksam', 'stablelooksam')  # the efficient variants of stablesam.efficient
FAMILIES = ('sam', 'asam')
MATCHED = ('mean', 'epoch')  # how a step-matched control follows StableSAM's factor
CONTROLS = ('sam-lrf', 'sgd-lrf', 'sam-lrf-epoch')  # step-matched: lr x StableSAM's factor (stablesam.controls)
CLAMPED = ('stablesam-clamp10', 'stablesam-clamp50', 'stablesam-clamp90')  # Remark 19's clamp [gamma0, sqrt(gamma0)]


# %% [markdown]
# `variant` is the one lookup: an unknown name is an error that lists the known ones.

# %%
#| export
def variant(name: str) -> Variant:
    """The registered `Variant` called `name`; an unknown name is a ValueError listing the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown optimizer: {name!r} (choose from {', '.join(VARIANTS)})")
    return VARIANTS[name]


def variant_order(names) -> list:
    """`names` without repeats, registered variants first in registry order, then the others as given."""
    names = list(dict.fromkeys(names))
    known = [n for n in VARIANTS if n in names]
    return known + [n for n in names if n not in VARIANTS]


# %%
test_eq(variant('stablesam').stable, True)
test_eq(variant('asam').family, 'asam')
test_fail(lambda: variant('lion'), contains="choose from sgd, sam, stablesam")
test_eq(variant_order(['zeta', 'stablesam', 'sgd', 'stablesam']), ['sgd', 'stablesam', 'zeta'])
test_eq(len({v.color for v in VARIANTS.values()}), len(VARIANTS))  # one colour each


# %% [markdown]
# ## Registering a variant
#
# `register_variant` checks what it is given: a name that is a lower-case identifier (it becomes a CLI
# choice and a folder name), a known rho family, and a colour no other variant uses (figures must tell
# them apart). A SAM class given by the user is built like the built-in ones,
# `cls(params, base_optimizer, rho=rho, **flags, **settings)`.

# %%
#| export
def register_variant(name: str, *, label: str, color: str, cls=None, flags: dict | None = None,
                     family: str | None = 'sam', stable: bool = False, marker: str = 'o', linestyle: str = '-',
                     matched: str | None = None, replace: bool = False) -> Variant:
    """Add optimizer variant `name` to `VARIANTS` (CLI choices, presets, the Trainer, figures and tables know it)."""
    if not re.fullmatch(r'[a-z][a-z0-9_-]*', str(name)):
        raise ValueError(f"Invalid variant name: {name!r} "
                         "(lower-case letters, digits, '-' and '_', starting with a letter)")
    if name in VARIANTS and not replace:
        raise ValueError(f"Variant {name!r} is already registered (pass replace=True to redefine it)")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Invalid family: {family!r} (choose from {', '.join(FAMILIES)}, or None for no rho)")
    if matched not in (None, *MATCHED):
        raise ValueError(f"Invalid matched: {matched!r} (choose from {', '.join(MATCHED)}, or None)")
    taken = [k for k, v in VARIANTS.items() if v.color == color and k != name]
    if taken: raise ValueError(f"Colour {color!r} is taken by {taken[0]!r}: each variant has its own colour")
    VARIANTS[name] = Variant(label, color, marker, linestyle, cls, dict(flags or {}), family, bool(stable), matched)
    return VARIANTS[name]


def unregister_variant(name: str) -> Variant:
    """Remove a registered variant (a test's or a user's); returns its record."""
    variant(name)  # an unknown name is an error that lists the known ones
    return VARIANTS.pop(name)


# %%
v = register_variant('lookahead-sam', label='SAM (lookahead)', color='tab:olive', cls='SAM', marker='*')
test_eq(variant('lookahead-sam').label, 'SAM (lookahead)')
test_eq(variant_order(['lookahead-sam', 'sam']), ['sam', 'lookahead-sam'])
test_fail(lambda: register_variant('lookahead-sam', label='x', color='tab:cyan'), contains='already registered')
test_fail(lambda: register_variant('Bad Name', label='x', color='tab:cyan'), contains='Invalid variant name')
test_fail(lambda: register_variant('other', label='x', color='tab:red'), contains="taken by 'stablesam'")
test_fail(lambda: register_variant('other', label='x', color='tab:cyan', family='usam'), contains='Invalid family')
test_eq(unregister_variant('lookahead-sam'), v)
assert 'lookahead-sam' not in VARIANTS
