"""Behaviour of stablesam.optim: correctness edge cases, resume, schedulers, mixed precision, bad input."""
import io
import math
import warnings

import pytest
import torch
from torch import nn

import stablesam.optim as optim
from stablesam.optim import (OPTIMIZERS, SAM, VARIANTS, StableASAM, StableSAM, first_pass_no_sync, freeze_bn_stats,
                             is_sam, make_optimizer, register_variant)
from stablesam.variants import unregister_variant

# The variants under test come from the registry, read at import (before any test registers one of its own):
BUILT_IN = dict(VARIANTS)
SAM_VARIANTS = [n for n, v in BUILT_IN.items() if v.cls is not None and 'schedule' not in v.flags]  # two passes a step
# (the efficient variants, one pass on some steps, are tested in tests/test_efficient.py)
STABLE_VARIANTS = [n for n in SAM_VARIANTS if BUILT_IN[n].stable]
# Remark 19's clamped variants keep the factor in [gamma0, sqrt(gamma0)], below 1 even where rho = 0 makes it 1
UNCLAMPED = [n for n in SAM_VARIANTS if 'gamma0' not in BUILT_IN[n].flags]


def build(name, params, base=torch.optim.SGD, **kw):
    """Built-in variant `name` as its registry record says: its class in stablesam.optim, its flags under `kw`."""
    v = BUILT_IN[name]
    return getattr(optim, v.cls)(params, base, **{**v.flags, **kw})


def make_net(seed=0, bn=False):
    """A small MLP (optionally with BatchNorm), deterministic from `seed`."""
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def batches(n, seed=1, size=16):
    """`n` classification batches."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def sam_step(opt, net, batch, **kw):
    """One step with the two-call API."""
    x, y = batch
    nn.functional.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.second_step(zero_grad=True)


def base_step(opt, net, batch):
    """One plain optimizer step."""
    x, y = batch
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def weights(net):
    return [p.detach().clone() for p in net.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# --- correctness ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', UNCLAMPED)
def test_rho_zero_is_base_optimizer_exactly(name):
    net_a, net_b = make_net(), make_net()
    sam = build(name, net_a.parameters(), rho=0., lr=0.1, momentum=0.9, weight_decay=1e-3)
    sgd = torch.optim.SGD(net_b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for b in batches(5):
        sam_step(sam, net_a, b)
        base_step(sgd, net_b, b)
    assert same(weights(net_a), weights(net_b))


@pytest.mark.parametrize('name', SAM_VARIANTS)
def test_restore_is_exact_and_in_place(name):
    net = make_net()
    p = net[0].weight
    ptr, view, before = p.data_ptr(), p.view(-1), weights(net)
    opt = build(name, net.parameters(), rho=0.3, lr=0.0)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    assert not torch.equal(p, before[0]), 'first_step moved the weights'
    nn.functional.cross_entropy(net(x), y).backward()
    opt.second_step(zero_grad=True)
    assert same(weights(net), before), 'lr=0: weights back bit for bit'
    assert p.data_ptr() == ptr and net[0].weight is p
    assert torch.equal(view, p.detach().view(-1))


def test_zero_gradient_no_perturbation_no_nan():
    w = nn.Parameter(torch.randn(4))
    for name in SAM_VARIANTS:
        opt = build(name, [w], lr=0.1)
        before = w.detach().clone()
        (w * 0).sum().backward()
        opt.first_step(zero_grad=True)
        assert torch.equal(w.detach(), before)
        (w * 0).sum().backward()
        opt.second_step(zero_grad=True)
        assert torch.equal(w.detach(), before)
        assert opt.last_stats['sam_step'] is True
        assert all(torch.isfinite(v) for k, v in opt.last_stats.items() if k != 'sam_step')


def test_param_with_gradient_in_one_pass_only():
    a, b, c = (nn.Parameter(torch.randn(3)) for _ in range(3))
    opt = StableSAM([a, b, c], torch.optim.SGD, rho=0.5, lr=0.1)
    a0, b0, c0 = a.detach().clone(), b.detach().clone(), c.detach().clone()
    ((a * a).sum() + (c * c).sum()).backward()        # first pass: a and c
    opt.first_step(zero_grad=True)
    assert not torch.equal(a.detach(), a0) and torch.equal(b.detach(), b0)
    ga_b = 2 * b.detach()
    ga_c = 2 * c.detach()
    ((b * b).sum() + (c * c).sum()).backward()        # second pass: b and c
    opt.second_step(zero_grad=True)
    assert torch.equal(a.detach(), a0), 'a: perturbed, no second gradient: restored, not stepped'
    gnorm = torch.cat([2 * a0, 2 * c0]).norm()
    factor = gnorm / torch.cat([ga_b, ga_c]).norm()
    torch.testing.assert_close(b.detach(), b0 - 0.1 * factor * ga_b)
    torch.testing.assert_close(c.detach(), c0 - 0.1 * factor * ga_c)


def test_no_host_sync_inside_a_step(monkeypatch):
    """first_step and unperturb never turn a tensor into a Python value."""
    net = make_net(bn=True)
    opt = StableASAM(net.parameters(), torch.optim.SGD, lr=0.1, gamma0=0.5, track_alignment=True)
    x, y = batches(1)[0]

    def forbidden(*args, **kwargs):
        raise AssertionError('host sync inside the optimizer step')

    nn.functional.cross_entropy(net(x), y).backward()
    with monkeypatch.context() as m:
        for name in ('item', 'tolist', '__bool__', '__float__', '__int__', '__index__', 'numpy'):
            m.setattr(torch.Tensor, name, forbidden)
        opt.first_step(zero_grad=True)
    nn.functional.cross_entropy(net(x), y).backward()
    with monkeypatch.context() as m:
        for name in ('item', 'tolist', '__bool__', '__float__', '__int__', '__index__', 'numpy'):
            m.setattr(torch.Tensor, name, forbidden)
        opt.unperturb()
    opt.base_optimizer.step()
    assert set(opt.last_stats) == {'sam_step', 'grad_norm', 'asc_grad_norm', 'norm_ratio', 'renorm_factor', 'alignment',
                                   'cosine'}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for k, v in opt.last_stats.items() if k != 'sam_step')


@pytest.mark.parametrize('name', STABLE_VARIANTS)
def test_runs_on_a_device_without_values(name):
    """On the 'meta' device no value can reach the host: the accelerator code path (no CPU fast path) runs whole."""
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).to('meta')
    opt = build(name, net.parameters(), lr=0.1, momentum=0.9, gamma0=0.5, track_alignment=True,
                renorm_norm='adaptive')
    for p in net.parameters(): p.grad = torch.randn_like(p)
    opt.first_step()
    for p in net.parameters(): p.grad = torch.randn_like(p)
    opt.second_step()
    stats = {k: v for k, v in opt.last_stats.items() if k != 'sam_step'}   # sam_step: a Python bool
    assert len(stats) == 6 and all(v.device.type == 'meta' for v in stats.values())


def test_persistent_memory_is_one_copy_of_the_parameters():
    net = make_net()
    n = sum(p.numel() for p in net.parameters())
    for track, copies in ((False, 1), (True, 2)):
        opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, track_alignment=track)
        for b in batches(2): sam_step(opt, net, b)
        held = sum(t.numel() for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor))
        assert held == copies * n


def test_half_precision_norms_in_float32():
    w = nn.Parameter(torch.full((1000,), 1., dtype=torch.bfloat16))
    opt = StableSAM([w], torch.optim.SGD, lr=0.0, rho=0.05)
    (w.float() * 300).sum().backward()   # ||g|| = 300 * sqrt(1000): its square overflows no float32
    opt.first_step(zero_grad=True)
    (w.float() * 300).sum().backward()
    opt.second_step(zero_grad=True)
    assert opt.last_stats['grad_norm'].dtype == torch.float32
    torch.testing.assert_close(opt.last_stats['grad_norm'], torch.tensor(300 * math.sqrt(1000)), rtol=1e-2, atol=0)


def test_alignment_and_cosine():
    w = nn.Parameter(torch.tensor([1., -2., 0.5]))
    A = torch.tensor([3., 1., 0.5])
    opt = SAM([w], torch.optim.SGD, rho=0.2, lr=0.1, track_alignment=True)
    (0.5 * A * w * w).sum().backward()
    g = A * w.detach()
    opt.first_step(zero_grad=True)
    (0.5 * A * w * w).sum().backward()
    ga = w.grad.detach().clone()
    opt.second_step(zero_grad=True)
    torch.testing.assert_close(opt.last_stats['alignment'], ga @ g - g @ g)
    torch.testing.assert_close(opt.last_stats['cosine'], ga @ g / (ga.norm() * g.norm()))
    torch.testing.assert_close(opt.last_stats['renorm_factor'], torch.tensor(1.))
    torch.testing.assert_close(opt.last_stats['norm_ratio'], g.norm() / ga.norm())


# --- base optimizer: class or instance, schedulers, resume ---------------------------------------------------

def test_base_optimizer_class_or_instance():
    net_a, net_b = make_net(), make_net()
    a = StableSAM(net_a.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    b = StableSAM(net_b.parameters(), torch.optim.SGD(net_b.parameters(), lr=0.1, momentum=0.9))
    c = StableSAM(None, torch.optim.SGD(make_net().parameters(), lr=0.1))
    assert c.param_groups[0]['rho'] == 0.05
    for bt in batches(4):
        sam_step(a, net_a, bt)
        sam_step(b, net_b, bt)
    assert same(weights(net_a), weights(net_b))
    assert b.param_groups is b.base_optimizer.param_groups
    with pytest.raises(ValueError, match='params differ'):
        StableSAM(make_net().parameters(), torch.optim.SGD(net_a.parameters(), lr=0.1))
    with pytest.raises(TypeError, match='already built'):
        StableSAM(None, torch.optim.SGD(net_a.parameters(), lr=0.1), momentum=0.9)
    with pytest.raises(TypeError, match='Invalid base_optimizer'):
        StableSAM(net_a.parameters(), 'sgd', lr=0.1)


@pytest.mark.parametrize('on', ['wrapper', 'base'])
def test_lr_scheduler_on_wrapper_or_base(on):
    net_a, net_b = make_net(), make_net()
    sam = SAM(net_a.parameters(), torch.optim.SGD, rho=0., lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD(net_b.parameters(), lr=0.1, momentum=0.9)
    sched_a = torch.optim.lr_scheduler.StepLR(sam if on == 'wrapper' else sam.base_optimizer, step_size=2, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(sgd, step_size=2, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # no "lr_scheduler.step() before optimizer.step()" warning
        for b in batches(6):
            sam_step(sam, net_a, b)
            base_step(sgd, net_b, b)
            sched_a.step()
            sched_b.step()
    assert sam.param_groups[0]['lr'] == sgd.param_groups[0]['lr'] == 0.0125
    assert same(weights(net_a), weights(net_b))


@pytest.mark.parametrize('base', ['sgd', 'adamw'])
def test_state_dict_resume_is_exact(base):
    data = batches(10)

    def build(seed=0, rho=0.1):
        net = make_net(seed)
        opt = make_optimizer('stablesam', net.parameters(), base=base, lr=0.05, rho=rho, weight_decay=1e-3,
                             gamma0=0.2)
        return net, opt

    net, opt = build()
    for b in data: sam_step(opt, net, b)
    straight = weights(net)

    net, opt = build()
    for b in data[:5]: sam_step(opt, net, b)
    buf = io.BytesIO()
    torch.save({'model': net.state_dict(), 'opt': opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    net2, opt2 = build(seed=123, rho=0.3)     # everything must come from the checkpoint
    opt2.gamma0 = None
    net2.load_state_dict(ckpt['model'])
    opt2.load_state_dict(ckpt['opt'])
    assert opt2.gamma0 == 0.2 and opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]['rho'] == 0.1
    for b in data[5:]: sam_step(opt2, net2, b)
    assert same(weights(net2), straight)


def test_deepcopy_keeps_everything():
    import copy
    net = make_net()
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, gamma0=0.4)
    for b in batches(2): sam_step(opt, net, b)
    twin = copy.deepcopy(opt)
    assert twin.gamma0 == 0.4 and twin.param_groups is twin.base_optimizer.param_groups
    p = twin.param_groups[0]['params'][0]
    assert p is not net[0].weight and torch.equal(p, net[0].weight)
    assert torch.equal(twin.base_optimizer.state[p]['momentum_buffer'],
                       opt.base_optimizer.state[net[0].weight]['momentum_buffer'])


def test_add_param_group():
    net = make_net()
    opt = StableSAM(net[0].parameters(), torch.optim.SGD, lr=0.1)
    opt.add_param_group(dict(params=net[2].parameters(), rho=0.3))
    assert len(opt.base_optimizer.param_groups) == 2 and opt.param_groups[1]['rho'] == 0.3
    assert opt.param_groups[1]['lr'] == 0.1 and opt.param_groups[1]['adaptive'] is False
    with pytest.raises(ValueError, match='Invalid rho: -0.1'):
        opt.add_param_group(dict(params=[nn.Parameter(torch.zeros(2))], rho=-0.1))


# --- mixed precision, clipping, accumulation -----------------------------------------------------------------

@pytest.mark.parametrize('name', SAM_VARIANTS)
def test_grad_scaler_is_scale_invariant(name):
    """With a power-of-two scale on float32 the AMP recipe is bit-identical to no scaler."""
    net_a, net_b = make_net(), make_net()
    a = build(name, net_a.parameters(), lr=0.1, momentum=0.9)
    b = build(name, net_b.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', init_scale=2. ** 12)
    for x, y in batches(4):
        scaler.scale(nn.functional.cross_entropy(net_a(x), y)).backward()
        a.first_step(zero_grad=True, grad_scaler=scaler)
        scaler.scale(nn.functional.cross_entropy(net_a(x), y)).backward()
        a.second_step(zero_grad=True, grad_scaler=scaler)
        scaler.update()
        sam_step(b, net_b, (x, y))
        for k in a.last_stats: torch.testing.assert_close(a.last_stats[k], b.last_stats[k])
    assert same(weights(net_a), weights(net_b))


def test_grad_scaler_nonfinite_skips_with_weights_restored():
    net = make_net(bn=True)
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', init_scale=2. ** 10)
    data = batches(3)
    for x, y in data[:2]:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        opt.first_step(zero_grad=True, grad_scaler=scaler)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        opt.second_step(zero_grad=True, grad_scaler=scaler)
        scaler.update()
    before, momentum = weights(net), [opt.base_optimizer.state[p]['momentum_buffer'].clone() for p in net.parameters()]
    x, y = data[2]
    for poison in ('first', 'second'):
        scale = scaler.get_scale()
        loss = nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss * (math.inf if poison == 'first' else 1.)).backward()
        opt.first_step(zero_grad=True, grad_scaler=scaler)
        with freeze_bn_stats(net):    # the second forward may run at non-finite weights: keep BN's statistics
            loss = nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss * (math.inf if poison == 'second' else 1.)).backward()
        opt.second_step(zero_grad=True, grad_scaler=scaler)
        scaler.update()
        assert same(weights(net), before), f'{poison} pass non-finite: step skipped, weights restored'
        assert all(torch.isfinite(b.float()).all() for b in net.buffers())
        assert same([opt.base_optimizer.state[p]['momentum_buffer'] for p in net.parameters()], momentum)
        assert scaler.get_scale() < scale
    sam_step(opt, net, (x, y))
    assert all(torch.isfinite(w).all() for w in weights(net))


def test_clipping_after_renormalization_with_scaler_unscales_once():
    """Recipe: unperturb, unscale_, clip, scaler.step: the clipped update is that of the renormalized gradient."""
    net_a, net_b = make_net(), make_net()
    a = StableSAM(net_a.parameters(), torch.optim.SGD, lr=0.1)
    b = StableSAM(net_b.parameters(), torch.optim.SGD, lr=0.1)
    scaler = torch.amp.GradScaler('cpu', init_scale=2. ** 8)
    max_norm = 0.05
    for x, y in batches(3):
        scaler.scale(nn.functional.cross_entropy(net_a(x), y)).backward()
        a.first_step(zero_grad=True, grad_scaler=scaler)
        scaler.scale(nn.functional.cross_entropy(net_a(x), y)).backward()
        a.unperturb()
        scaler.unscale_(a.base_optimizer)
        nn.utils.clip_grad_norm_(net_a.parameters(), max_norm)
        scaler.step(a.base_optimizer)
        scaler.update()
        a.zero_grad()
        # reference without scaler: renormalized gradient clipped by hand
        nn.functional.cross_entropy(net_b(x), y).backward()
        b.first_step(zero_grad=True)
        nn.functional.cross_entropy(net_b(x), y).backward()
        b.unperturb()
        total = torch.cat([p.grad.flatten() for p in net_b.parameters()]).norm()
        assert total > max_norm, 'clipping is active in this test'
        for p in net_b.parameters(): p.grad.mul_(max_norm / (total + 1e-6))
        b.base_optimizer.step()
        b.zero_grad()
        torch.testing.assert_close(a.last_stats['renorm_factor'], b.last_stats['renorm_factor'])
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    """Accumulate both passes over micro-batches (loss / k): same step as the whole batch."""
    torch.manual_seed(0)
    net_a = make_net().double()
    net_b = make_net().double()
    a = StableSAM(net_a.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    b = StableSAM(net_b.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    for x, y in batches(3, size=24):
        x = x.double()
        micro = list(zip(x.chunk(4), y.chunk(4)))
        for xm, ym in micro: (nn.functional.cross_entropy(net_a(xm), ym) / len(micro)).backward()
        a.first_step(zero_grad=True)
        for xm, ym in micro: (nn.functional.cross_entropy(net_a(xm), ym) / len(micro)).backward()
        a.second_step(zero_grad=True)
        sam_step(b, net_b, (x, y))
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


# --- BatchNorm helper ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('momentum', [0.1, None])
def test_freeze_bn_stats_exact_nested_and_on_error(momentum):
    net = make_net(bn=True)
    net[1].momentum = momentum
    x = torch.randn(16, 5)
    net(x)
    snap = {k: v.clone() for k, v in net.state_dict().items()}
    with freeze_bn_stats(net):
        net(x * 2)
        with freeze_bn_stats(net):
            net(x * 3)
        assert not torch.equal(net[1].running_mean, snap['1.running_mean'])
    assert all(torch.equal(v, snap[k]) for k, v in net.state_dict().items())
    with pytest.raises(RuntimeError, match='boom'):
        with freeze_bn_stats(net):
            net(x * 4)
            raise RuntimeError('boom')
    assert all(torch.equal(v, snap[k]) for k, v in net.state_dict().items())
    nobn = nn.Sequential(nn.BatchNorm1d(8, track_running_stats=False))
    with freeze_bn_stats(nobn): nobn(torch.randn(4, 8))
    lazy = nn.Sequential(nn.LazyBatchNorm1d())
    with freeze_bn_stats(lazy): lazy(torch.randn(4, 8))       # uninitialized on entry: nothing to restore
    assert lazy[0].num_batches_tracked == 1


def test_sam_with_bn_recipe_updates_stats_once_per_step():
    net, ref = make_net(bn=True), make_net(bn=True)
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.0)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    with freeze_bn_stats(net):
        nn.functional.cross_entropy(net(x), y).backward()
    opt.second_step(zero_grad=True)
    ref(x)
    assert all(torch.equal(a, b) for a, b in zip(net.buffers(), ref.buffers()))


def test_first_pass_no_sync_is_noop_without_ddp():
    net = make_net()
    with first_pass_no_sync(net):
        pass


# --- errors and the factory ----------------------------------------------------------------------------------

@pytest.mark.parametrize('rho', [-0.1, math.nan, math.inf, '0.1'])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match=f'Invalid rho: {rho}'):
        SAM(make_net().parameters(), torch.optim.SGD, rho=rho, lr=0.1)


def test_bad_group_rho():
    net = make_net()
    with pytest.raises(ValueError, match='Invalid rho: -1'):
        SAM([dict(params=net[0].parameters(), rho=-1)], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize('gamma0', [0, 1, 1.5, -0.2, math.nan])
def test_bad_gamma0(gamma0):
    with pytest.raises(ValueError, match=f'Invalid gamma0: {gamma0}'):
        StableSAM(make_net().parameters(), torch.optim.SGD, gamma0=gamma0, lr=0.1)


def test_bad_renorm_norm_and_eps():
    with pytest.raises(ValueError, match="Invalid renorm_norm: 'l1'"):
        StableSAM(make_net().parameters(), torch.optim.SGD, renorm_norm='l1', lr=0.1)
    with pytest.raises(ValueError, match='Invalid eps: 0'):
        StableSAM(make_net().parameters(), torch.optim.SGD, eps=0, lr=0.1)


def test_sparse_gradient_error():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = SAM(emb.parameters(), torch.optim.SGD, lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match='sparse gradients'):
        opt.first_step()


def test_call_order_errors():
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match='needs a closure'):
        opt.step()
    with pytest.raises(RuntimeError, match='without first_step'):
        opt.second_step()
    x, y = batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match='twice'):
        opt.first_step()


def test_make_optimizer():
    net = make_net()
    for name, v in BUILT_IN.items():
        for base, cls in (('sgd', torch.optim.SGD), ('adamw', torch.optim.AdamW)):
            opt = make_optimizer(name, net.parameters(), base=base, lr=0.01, weight_decay=1e-4, rho=0.2,
                                 total_steps=100)  # the late-phase and AE-SAM variants need it
            assert is_sam(opt) == (v.cls is not None)
            inner = opt.base_optimizer if is_sam(opt) else opt
            assert type(inner) is cls and inner.param_groups[0]['weight_decay'] == 1e-4
            if is_sam(opt):
                assert type(opt) is getattr(optim, v.cls) and opt.param_groups[0]['rho'] == 0.2
                assert opt.stable == v.stable                                    # the record says what the class does
                assert opt.param_groups[0]['adaptive'] == (v.family == 'asam')   # the ASAM family is the adaptive one
    assert make_optimizer('sgd', net.parameters(), lr=0.1).param_groups[0]['momentum'] == 0.9
    opt = make_optimizer('stablesam', net.parameters(), lr=0.1, gamma0=0.5, nesterov=True, track_alignment=True)
    assert opt.gamma0 == 0.5 and opt.track_alignment and opt.param_groups[0]['nesterov']
    with pytest.raises(ValueError, match="Unknown optimizer: 'adam'.*stablesam"):
        make_optimizer('adam', net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Unknown base optimizer: 'rmsprop'"):
        make_optimizer('sam', net.parameters(), base='rmsprop', lr=0.1)


def test_registry_is_reexported_and_optimizers_is_live():
    import stablesam.variants as variants
    assert optim.VARIANTS is variants.VARIANTS and optim.Variant is variants.Variant
    assert optim.variant is variants.variant and optim.register_variant is variants.register_variant
    assert {'VARIANTS', 'Variant', 'register_variant', 'variant', 'OPTIMIZERS'} <= set(optim.__all__)
    assert OPTIMIZERS == VARIANTS.keys() and list(OPTIMIZERS) == list(VARIANTS) and len(OPTIMIZERS) == len(VARIANTS)
    assert 'stablesam' in OPTIMIZERS and 'adam' not in OPTIMIZERS
    assert ', '.join(OPTIMIZERS).startswith('sgd, sam, stablesam')


class HalfRhoSAM(SAM):
    """A user's variant: SAM that ascends with half the given rho."""
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, base_optimizer, rho / 2, **kwargs)


def test_registered_variant_is_built_by_make_optimizer():
    """A variant registered at run time (a class of one's own, with flags) is a name like the built-in ones."""
    register_variant('test-halfsam', label='SAM (half rho)', color='tab:cyan', cls=HalfRhoSAM,
                     flags=dict(stable=True), stable=True)
    try:
        assert 'test-halfsam' in OPTIMIZERS and list(OPTIMIZERS)[-1] == 'test-halfsam'
        net_a, net_b = make_net(), make_net()
        a = make_optimizer('test-halfsam', net_a.parameters(), lr=0.1, rho=0.2, gamma0=0.5)
        b = StableSAM(net_b.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, gamma0=0.5)
        assert type(a) is HalfRhoSAM and a.stable and a.gamma0 == 0.5 and a.param_groups[0]['rho'] == 0.1
        for batch in batches(3):
            sam_step(a, net_a, batch)
            sam_step(b, net_b, batch)
        assert same(weights(net_a), weights(net_b)) and not same(weights(net_a), weights(make_net()))
    finally:
        unregister_variant('test-halfsam')
    assert 'test-halfsam' not in OPTIMIZERS
    with pytest.raises(ValueError, match="Unknown optimizer: 'test-halfsam'"):
        make_optimizer('test-halfsam', make_net().parameters(), lr=0.1)


def test_sam_methods_are_defined_in_the_class():
    """SAM's methods live in its class body (IDEs and the docs index see them), not attached from module functions."""
    for name in ('first_step', 'unperturb', 'second_step', 'step', 'zero_grad', 'state_dict', 'load_state_dict',
                 '_local_groups', '_record'):
        assert name in vars(SAM) and vars(SAM)[name].__qualname__ == f'SAM.{name}'
        assert not hasattr(optim, name), f'stablesam.optim.{name} should not exist at module level'
    assert not hasattr(optim, '_method_of')


# --- step() as frameworks call it ----------------------------------------------------------------------------

def framework_step(opt, net, batch, how):
    """A step finished by `step()` the way a framework calls it: 'perturbed', 'unperturbed', or 'hook-closure'."""
    x, y = batch
    nn.functional.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.functional.cross_entropy(net(x), y).backward()
    calls = []
    if how == 'unperturbed': opt.unperturb()
    loss = opt.step(lambda: calls.append(1) or 7.) if how == 'hook-closure' else opt.step()
    if how == 'hook-closure': assert calls == [1] and loss == 7.
    opt.zero_grad()


@pytest.mark.parametrize('how', ['perturbed', 'unperturbed', 'hook-closure'])
def test_step_without_closure_finishes_first_step(how):
    net_a, net_b = make_net(), make_net()
    a = StableSAM(net_a.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    b = StableSAM(net_b.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    for batch in batches(3):
        sam_step(a, net_a, batch)
        framework_step(b, net_b, batch, how)
    assert same(weights(net_a), weights(net_b))
    torch.testing.assert_close(a.last_stats['renorm_factor'], b.last_stats['renorm_factor'])


def test_step_without_pending_first_step_is_an_error():
    net = make_net()
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match='needs a closure'): opt.step()
    x, y = batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.unperturb()
    opt.zero_grad()                       # drops the pending base step
    with pytest.raises(RuntimeError, match='needs a closure'): opt.step()
