"""The recipes of nbs/00b_frameworks.ipynb, run as written (the cells marked `# recipe:`): each trains 10 steps and
must match the package's own loop (`sam_step`) on the same batches (the Lightning and Hugging Face integrations,
importable code now, are tested in tests/test_integrations.py). Each test prints the relative difference
||w - w_own|| / ||w_own|| it reached (`pytest -s`)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stablesam.optim import StableSAM, sam_step

RECIPES = Path(__file__).resolve().parents[1] / 'nbs' / '00b_frameworks.ipynb'
STEPS, BATCH, TOL = 10, 16, 1e-5

pytestmark = pytest.mark.usefixtures('one_thread')


def recipe(name):
    """The namespace left by executing the notebook cell marked `# recipe: name`."""
    for cell in json.loads(RECIPES.read_text())['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'code' and f'# recipe: {name}\n' in src:
            ns = {'__name__': f'recipe_{name}'}
            exec(compile(src, f'{RECIPES.name} (recipe: {name})', 'exec'), ns)
            return ns
    raise LookupError(f'no cell marked "# recipe: {name}" in {RECIPES}')


def make_net():
    """A small classifier with BatchNorm (the second pass must not touch its statistics)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def make_opt(params):
    """The optimizer every recipe and the reference use."""
    return StableSAM(params, torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)


def batches():
    """STEPS fixed batches."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 6, generator=g), torch.randint(0, 3, (BATCH,), generator=g)) for _ in range(STEPS)]


def own_loop(data, amp=None):
    """The package's own loop on `data`; `amp` ('fp16' with a GradScaler, or 'bf16') autocasts on the CPU."""
    net, scaler = make_net(), (torch.amp.GradScaler('cpu') if amp == 'fp16' else None)
    opt = make_opt(net.parameters())
    dtype = dict(fp16=torch.float16, bf16=torch.bfloat16).get(amp)
    for x, y in data: sam_step(opt, net, F.cross_entropy, x, y, grad_scaler=scaler, autocast_dtype=dtype)
    return net, opt


def rel_diff(a, b):
    """||a - b|| / ||b|| over the state dicts' floating tensors (parameters and BatchNorm statistics)."""
    fa = torch.cat([v.flatten() for v in a.state_dict().values() if v.is_floating_point()])
    fb = torch.cat([v.flatten() for v in b.state_dict().values() if v.is_floating_point()])
    return ((fa - fb).norm() / fb.norm()).item()


def test_torch_compile_loop():
    """A torch.compile'd model (inductor) in the package's loop equals the eager loop."""
    ns = recipe('compile')
    data = batches()
    net = make_net()
    factors = ns['train_compiled'](net, make_opt(net.parameters()), data)
    ref, opt = own_loop(data)
    d = rel_diff(net, ref)
    print(f'torch.compile: relative difference {d:.2e}')
    assert d <= TOL and factors.shape == (STEPS,)
    torch.testing.assert_close(factors[-1], opt.last_stats['renorm_factor'])
