"""Reference checks of stablesam.landscape: the power iteration against the exact Hessian, weight restoration."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from stablesam.landscape import hessian_vector_product, loss_along, model_loss_fn, top_hessian_eig


pytestmark = pytest.mark.usefixtures('one_thread')


def exact_hessian(model, loss_of_forward, method='autograd'):
    """Hessian of the loss in the flattened parameters of `model`, by `torch.autograd` or `torch.func` (`method`)."""
    # 'autograd': torch.autograd.functional.hessian; 'func': torch.func.hessian, forward-over-reverse, much faster
    # for many small models
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def f(w):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            ps[n] = w[i:i + k].view(s)
            i += k
        return loss_of_forward(lambda x: functional_call(model, ps, (x,)))
    return torch.func.hessian(f)(flat) if method == 'func' else torch.autograd.functional.hessian(f, flat)


def small_problem(seed, dtype=torch.float64, act=nn.Tanh):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 3)).to(dtype)
    x, y = torch.randn(24, 4, dtype=dtype), torch.randint(0, 3, (24,))
    return model, x, y


@pytest.mark.parametrize('dtype,seeds', [(torch.float64, 20), (torch.float32, 10)])
def test_top_eigenvalue_matches_eigvalsh(dtype, seeds):
    """On random small networks the eigenvalue is within 1e-4 relative at the default tol."""
    errs = []
    for seed in range(seeds):
        model, x, y = small_problem(seed, dtype)
        H = exact_hessian(model, lambda fwd: F.cross_entropy(fwd(x), y), method='func')
        evals, evecs = torch.linalg.eigh(H.double())
        k = evals.abs().argmax()
        eig, vec = top_hessian_eig(lambda: F.cross_entropy(model(x), y), model.parameters(), iters=1000)
        errs.append(abs(eig - evals[k].item()) / abs(evals[k].item()))
        flat = torch.cat([t.flatten() for t in vec]).double()
        assert abs(flat @ evecs[:, k]).item() > 0.99
    assert max(errs) < 1e-4, errs


def test_hvp_matches_exact_hessian_times_vector():
    model, x, y = small_problem(3)
    H = exact_hessian(model, lambda fwd: F.cross_entropy(fwd(x), y))
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    hv = hessian_vector_product(lambda: F.cross_entropy(model(x), y), params)(v)
    flat = torch.cat([t.flatten() for t in hv])
    torch.testing.assert_close(flat, H @ torch.cat([t.flatten() for t in v]), rtol=1e-10, atol=1e-12)


def test_relu_batchnorm_network_in_eval_mode():
    """A ReLU + BatchNorm convnet: eval-mode closure, eigenvalue agrees with the exact Hessian, BN stats untouched."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 3)).double()
    model.train()(torch.randn(16, 2, 6, 6, dtype=torch.float64))   # non-trivial running stats
    x, y = torch.randn(20, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = model_loss_fn(model, (x, y))
    model.eval()
    H = exact_hessian(model, lambda fwd: F.cross_entropy(fwd(x), y), method='func')
    model.train()
    ev = torch.linalg.eigvalsh(H)
    top = ev[ev.abs().argmax()].item()
    eig, vec = top_hessian_eig(loss_fn, model.parameters(), iters=1000)
    assert abs(eig - top) / abs(top) < 1e-4
    losses = loss_along(loss_fn, model.parameters(), vec)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert losses[10] == pytest.approx(loss_fn().item(), rel=1e-6)   # alpha = 0 is the current weights


def test_tighter_tol_costs_more_iterations():
    model, x, y = small_problem(0)
    calls = {}
    for tol in (1e-2, 1e-8):
        hvp = hessian_vector_product(lambda: F.cross_entropy(model(x), y), list(model.parameters()))
        n = [0]

        def counted(v, hvp=hvp, n=n):
            n[0] += 1
            return hvp(v)
        from stablesam.landscape import power_iteration
        power_iteration(counted, [torch.randn_like(p) for p in model.parameters()], iters=2000, tol=tol)
        calls[tol] = n[0]
    assert calls[1e-2] < calls[1e-8], calls
