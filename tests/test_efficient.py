"""Efficient SAM variants (stablesam.efficient): limits equal SAM/StableSAM and the base optimizer bit for bit,
one forward-backward pass on a one-pass step through every API, LookSAM against the paper's formula, AE-SAM against
its definition, exact resume mid-schedule, and clear errors for bad input."""
import io
import math

import pytest
import torch
from torch import nn

from stablesam.config import TrainConfig
from stablesam.data import write_fake_mnist
from stablesam.efficient import AdaptivePolicy, make_schedule
from stablesam.optim import SAM, StableSAM, make_optimizer, sam_step
from stablesam.runs import read_metrics
from stablesam.train import Trainer, comparable
from stablesam.variants import EFFICIENT, VARIANTS

pytestmark = pytest.mark.usefixtures('one_thread')
LOSS = nn.functional.cross_entropy


def make_net(seed=0):
    """A small MLP, deterministic from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(n, seed=1, size=16):
    """`n` classification batches."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def train(cls, n=12, momentum=0.9, **kw):
    """Weights after `n` package-loop steps of `cls` on SGD, with the per-step SAM flags."""
    net = make_net()
    opt = cls(net.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=momentum, **kw)
    flags = []
    for x, y in batches(n):
        sam_step(opt, net, LOSS, x, y)
        flags.append(opt.last_stats['sam_step'] if isinstance(opt, SAM) else False)
    return [p.detach().clone() for p in net.parameters()], flags


def same(a, b):
    """Bitwise equality of two lists of tensors."""
    return all(torch.equal(x, y) for x, y in zip(a, b))


ALWAYS = ['every:1', 'random:1', 'late:0', 'ae:0.9:-1e9:-1e9']
NEVER = ['every:inf', 'random:0', 'late:1', 'ae:0.9:1e9:1e9']


@pytest.mark.parametrize('cls', [SAM, StableSAM])
@pytest.mark.parametrize('spec', ALWAYS)
def test_a_schedule_that_always_fires_is_sam_bit_for_bit(cls, spec):
    want, _ = train(cls)
    got, flags = train(cls, schedule=spec, total_steps=12)
    assert all(flags) and same(got, want)


@pytest.mark.parametrize('look_alpha', [None, 0.7])
@pytest.mark.parametrize('spec', NEVER)
def test_a_schedule_that_never_fires_is_the_base_optimizer_bit_for_bit(spec, look_alpha):
    net = make_net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches(12):
        sgd.zero_grad()
        LOSS(net(x), y).backward()
        sgd.step()
    got, flags = train(StableSAM, schedule=spec, total_steps=12, look_alpha=look_alpha)
    assert not any(flags) and same(got, list(net.parameters()))


class PassCounter:
    """Counts forward passes of a module (each is followed by one backward in these tests)."""
    def __init__(self, net):
        self.n = 0
        net.register_forward_hook(lambda *_: setattr(self, 'n', self.n + 1))


@pytest.mark.parametrize('k', [1, 2, 3, 5, 7])
@pytest.mark.parametrize('api', ['sam_step', 'closure', 'two_call'])
def test_passes_are_steps_plus_sam_steps(k, api):
    """Every API runs the second pass on SAM steps only: N steps cost N + ceil(N/k) passes for every=k."""
    n = 20
    net = make_net()
    counter = PassCounter(net)
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, schedule=f'every:{k}', look_alpha=0.5)
    for x, y in batches(n):
        if api == 'sam_step': sam_step(opt, net, LOSS, x, y)
        elif api == 'closure':
            def closure():
                loss = LOSS(net(x), y)
                loss.backward()
                return loss
            opt.step(closure)
        else:
            opt.zero_grad()
            LOSS(net(x), y).backward()
            if opt.first_step(zero_grad=True): LOSS(net(x), y).backward()
            opt.step()
    assert counter.n == n + math.ceil(n / k) == n + opt.schedule.sam_steps


def test_two_call_api_one_pass_step_keeps_grad_and_base_steps_on_it():
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, lr=0.1, schedule='every:2')
    x, y = batches(2)[1]
    for i in range(2):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        g = [p.grad.clone() for p in net.parameters()]
        w = [p.detach().clone() for p in net.parameters()]
        perturbed = opt.first_step(zero_grad=True)
        assert perturbed == (i == 0)
        if perturbed: LOSS(net(x), y).backward()
        else:
            assert same([p.grad for p in net.parameters()], g)   # .grad kept, weights untouched
            assert same([p.detach() for p in net.parameters()], w)
        opt.second_step(zero_grad=True)
    assert same([p.detach() for p in net.parameters()], [wi - 0.1 * gi for wi, gi in zip(w, g)])


def looksam_reference(stable, n=12, k=3, alpha=0.7, rho=0.1, lr=0.1):
    """LookSAM written from Liu et al.'s formula on flat vectors: plain SGD, every k steps a SAM step storing g_v."""
    net = make_net()
    names = [nm for nm, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()

    def grad(v, x, y):
        ps, i = {}, 0
        for nm, s in zip(names, shapes):
            ps[nm] = v[i:i + s.numel()].reshape(s).float().clone().requires_grad_()
            i += s.numel()
        LOSS(torch.func.functional_call(net, ps, (x,)), y).backward()
        return torch.cat([ps[nm].grad.reshape(-1) for nm in names]).double()

    gv = None
    for t, (x, y) in enumerate(batches(n)):
        g = grad(w, x, y)
        if t % k == 0:
            gs = grad(w + rho * g / g.norm(), x, y)
            gv = gs - (g @ gs) / (g @ g) * g                   # g_v = g_s - ||g_s|| cos(theta) g / ||g||
            d = gs * (g.norm() / gs.norm()) if stable else gs
        else:
            d = g + alpha * (g.norm() / gv.norm()) * gv
            if stable: d = d * (g.norm() / d.norm())
        w = w - lr * d
    return w


@pytest.mark.parametrize('cls', [SAM, StableSAM])
def test_looksam_equals_the_papers_formula(cls):
    got, flags = train(cls, momentum=0, schedule='every:3', look_alpha=0.7)
    assert flags == [t % 3 == 0 for t in range(12)]
    want = looksam_reference(cls is StableSAM)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in got]).double(), want, rtol=1e-5, atol=1e-6)
    # and the formula is not vacuous: without the g_v term the weights differ
    plain, _ = train(cls, momentum=0, schedule='every:3')
    assert not torch.allclose(torch.cat([p.reshape(-1) for p in plain]).double(), want, rtol=1e-3)


def test_stable_looksam_one_pass_steps_have_the_gradients_norm():
    net = make_net()
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, schedule='every:4', look_alpha=0.9)
    for x, y in batches(3):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        g = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone()
        if opt.first_step(zero_grad=True): LOSS(net(x), y).backward()
        opt.unperturb()
        d = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        if not opt.last_stats['sam_step']:
            torch.testing.assert_close(d.norm(), g.norm())
            assert not torch.allclose(d, g)                       # the direction changed, its length did not
            assert opt.last_stats['renorm_factor'] < 1
        opt.step()


def test_looksam_one_pass_step_without_a_parameters_gradient_uses_g_v_of_the_rest():
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, lr=0.1, schedule='every:3', look_alpha=0.7)
    x, y = batches(1)[0]
    sam_step(opt, net, LOSS, x, y)                                # the SAM step keeps g_v over every parameter
    gv = opt.state_dict()['sam']['look_gv']
    bias = net[2].bias
    bias.requires_grad_(False)                                    # no gradient for it on the one-pass step
    opt.zero_grad()
    LOSS(net(x), y).backward()
    g = [p.grad.clone() if p.grad is not None else None for p in net.parameters()]
    assert not opt.first_step(zero_grad=True)
    opt.unperturb()
    kept = [(gi, vi) for gi, vi in zip(g, gv) if gi is not None]
    gnorm = torch.cat([gi.reshape(-1) for gi, _ in kept]).norm()
    vnorm = torch.cat([vi.reshape(-1) for _, vi in kept]).norm()   # the norm over these parameters only
    assert vnorm < torch.cat([v.reshape(-1) for v in gv]).norm()
    for p, gi, vi in zip(net.parameters(), g, gv):
        if gi is None: assert p.grad is None
        else: torch.testing.assert_close(p.grad, gi + 0.7 * gnorm / vnorm * vi)


def test_ae_sam_decides_by_its_definition():
    """The decisions of AE-SAM inside the optimizer equal ||g||^2 >= mu_t + c_t sigma_t computed by hand."""
    n, delta = 30, 0.9
    net = make_net()
    opt = StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, schedule='ae', total_steps=n)
    mu = var = 0.
    for t, (x, y) in enumerate(batches(n, size=8)):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        sq = sum(p.grad.square().sum() for p in net.parameters()).item()
        mu = delta * mu + (1 - delta) * sq
        var = delta * var + (1 - delta) * (sq - mu) ** 2
        c = 1 - 2 * t / (n - 1)
        want = sq >= mu + c * math.sqrt(var)
        if opt.first_step(zero_grad=True): LOSS(net(x), y).backward()
        opt.step()
        assert opt.last_stats['sam_step'] == want, t
    assert 0 < opt.schedule.sam_steps < n


@pytest.mark.parametrize('spec', ['every:3', 'random:0.4:5', 'late:0.5', 'ae'])
@pytest.mark.parametrize('look_alpha', [None, 0.7])
def test_state_dict_resumes_mid_schedule_exactly(spec, look_alpha):
    """Saved after 5 of 12 steps and loaded into fresh objects: the same weights as the uninterrupted run."""
    data = batches(12)

    def build(net):
        return StableSAM(net.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, schedule=spec, total_steps=12,
                         look_alpha=look_alpha)
    net = make_net()
    opt = build(net)
    for x, y in data[:5]: sam_step(opt, net, LOSS, x, y)
    buf = io.BytesIO()
    torch.save(dict(model=net.state_dict(), opt=opt.state_dict()), buf)
    flags = []
    for x, y in data[5:]:
        sam_step(opt, net, LOSS, x, y)
        flags.append(opt.last_stats['sam_step'])
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    net2 = make_net(seed=3)
    net2.load_state_dict(saved['model'])
    opt2 = build(net2)
    opt2.load_state_dict(saved['opt'])
    flags2 = []
    for x, y in data[5:]:
        sam_step(opt2, net2, LOSS, x, y)
        flags2.append(opt2.last_stats['sam_step'])
    assert flags == flags2 and opt2.schedule.count == opt.schedule.count == 12
    assert same(list(net.parameters()), list(net2.parameters()))
    if look_alpha is not None and not spec.startswith('late'):
        # without the stored g_v the resumed run would differ: the check above could fail
        net3 = make_net(seed=3)
        net3.load_state_dict(saved['model'])
        opt3 = build(net3)
        opt3.load_state_dict({**saved['opt'], 'sam': {**saved['opt']['sam'], 'look_gv': [None] * 4}})
        for x, y in data[5:]: sam_step(opt3, net3, LOSS, x, y)
        assert not same(list(net.parameters()), list(net3.parameters()))


def test_registry_variants_build_and_say_their_schedule():
    for name in EFFICIENT:
        v = VARIANTS[name]
        opt = make_optimizer(name, make_net().parameters(), lr=0.1, total_steps=100)
        assert opt.schedule.spec.startswith(v.flags['schedule'])
        assert opt.stable == v.stable and opt.look_alpha == v.flags.get('look_alpha')
    assert [make_optimizer(n, make_net().parameters(), lr=0.1, total_steps=100).schedule.spec for n in EFFICIENT] \
        == ['every:5'] * 2 + ['random:0.2:0'] * 2 + ['late:0.8'] * 2 + ['ae:0.9:1.0:-1.0'] * 2 + ['every:5'] * 2
    assert make_optimizer('sam-late', make_net().parameters(), lr=0.1, total_steps=100).schedule.start == 80
    assert make_optimizer('stablesam-every', make_net().parameters(), lr=0.1, schedule='every:2').schedule.k == 2


def test_bad_input_is_a_clear_error():
    params = make_net().parameters
    with pytest.raises(ValueError, match='needs total_steps'): make_optimizer('aesam', params(), lr=0.1)
    with pytest.raises(ValueError, match='needs total_steps'): make_optimizer('sam-late', params(), lr=0.1)
    with pytest.raises(ValueError, match='Invalid look_alpha'): SAM(params(), torch.optim.SGD, lr=0.1, look_alpha=-1)
    with pytest.raises(ValueError, match='Unknown schedule'): SAM(params(), torch.optim.SGD, lr=0.1, schedule='x:1')
    with pytest.raises(TypeError, match='a SAMSchedule or a spec'): make_schedule(5)
    with pytest.raises(ValueError, match='Invalid delta'): AdaptivePolicy(10, delta=1.0)
    with pytest.raises(ValueError, match='cannot be loaded'):
        opt = SAM(params(), torch.optim.SGD, lr=0.1, schedule='every:2')
        sd = opt.state_dict()
        SAM(params(), torch.optim.SGD, lr=0.1, schedule='every:3').load_state_dict(sd)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp('data')
    write_fake_mnist(r, n_train=256, n_test=64)
    return r


@pytest.mark.parametrize('optimizer', ['stablelooksam', 'stableaesam', 'sam-random'])
def test_trainer_killed_mid_schedule_resumes_exactly(root, tmp_path, optimizer):
    """A Trainer run killed mid-epoch (checkpoints every step) and resumed equals the uninterrupted run."""
    kw = dict(dataset='mnist', data_root=str(root), model='fcn', optimizer=optimizer, epochs=2, batch_size=16,
              lr=0.05, label_smoothing=0., progress=False, checkpoint_every=1e-9)
    full = Trainer(TrainConfig(**kw)).fit()
    assert 0 < sum(m['sam_fraction'] for m in full) < len(full)   # some one-pass steps, some SAM steps

    class Kill:
        def after_step(self, trainer):
            if trainer.step == 21: raise KeyboardInterrupt   # epoch 2, step 5 of 16
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**kw, out=str(tmp_path / 'r')), callbacks=[Kill()]).fit()
    resumed = Trainer(TrainConfig(**kw, out=str(tmp_path / 'r'), resume=True)).fit()
    assert comparable(resumed) == comparable(full)
    assert comparable(read_metrics(tmp_path / 'r')) == comparable(full)
