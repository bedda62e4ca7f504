"""Theory audit: counterexamples (regression, by name), reference dynamics, constants, module boundary, bad input."""
import ast
from pathlib import Path

import numpy as np
import pytest

from stablesam.theory import (Quadratics, random_quadratics, neighbour, empirical_minimizer, full_batch, run,
                              run_all_sequences, all_sequences, sam_direction, max_grad_norm, certify_max_grad_norm,
                              certify_mu_L, certify_minimizer, strong_convexity_smoothness, noise_ball_bound,
                              sam_lr_max, sam_contraction)
from stablesam.theory_checks import AUDIT_STATUSES, AuditSize, audit_rows, make_row, check_one_step
from stablesam.theory_audit import (COUNTEREXAMPLES, AUDIT_CHECKS, counterexamples, smallest_G, theorem15_search,
                                    verify_all, audit_table, counterexample_lemma6, counterexample_theorem15,
                                    counterexample_theorem10_batch1)

THEORY_MODULES = ('theory', 'theory_checks', 'theory_runs', 'theory_audit')
LIB = Path(__file__).resolve().parents[1] / 'stablesam'


@pytest.mark.parametrize('make', COUNTEREXAMPLES, ids=lambda f: f.__name__)
def test_counterexample_still_violates(make):
    """Each counterexample function violates its statement as written (regression), and names existing audit rows."""
    cex = make()
    assert cex['violated'] and cex['lhs'] > cex['rhs']
    assert cex['status'] in ('violated', 'outside') and cex['rows']


def test_counterexamples_carry_their_robustness():
    """`counterexamples()` lists one entry per function, each with a G at or above the tight one where it vanishes."""
    cex = counterexamples()
    assert [c['name'] for c in cex] == [f.__name__ for f in COUNTEREXAMPLES]
    for c in cex:
        assert c['G_vanishes'] >= c['G']
        if np.isfinite(c['G_vanishes']):   # just above the threshold the bound holds again
            make = COUNTEREXAMPLES[[f.__name__ for f in COUNTEREXAMPLES].index(c['name'])]
            assert not make(c['G_vanishes'] * 1.001)['violated']


def test_lemma6_counterexample_is_outside_and_holds_with_shared_xi():
    c = counterexample_lemma6()
    assert c['status'] == 'outside' and c['lhs_shared_xi'] < 1e-10 <= c['rhs']
    assert smallest_G(counterexample_lemma6) == float('inf')


def test_theorem15_counterexample_is_the_degenerate_corner():
    """mu = L, gamma_t = 0.01 imposed and eta gamma_t (1 + xi) = 1: every step lands on a minimiser."""
    c = counterexample_theorem15()
    assert abs(c['step_factor'] - 1) < 1e-9 and 'degenerate corner' in c['instance']


def test_theorem10_batch1_counterexample_by_numbers():
    """The exact batch-size-1 counterexample: tight G = 3.009, inside eta <= 1/(2 mu (1+mu rho/G)), gone at larger G."""
    c = counterexample_theorem10_batch1()
    assert c['inside'] and abs(c['G'] - 3.009) < 1e-3
    G = smallest_G(counterexample_theorem10_batch1)
    assert c['G'] < G < 2 * c['G'] and counterexample_theorem10_batch1(0.999 * G)['violated']


def test_theorem15_search_is_exact_and_reports_the_shown_draw():
    s = theorem15_search(60, seed=2)
    assert 0 < s['draws'] <= 60 and s['found'] <= s['draws']
    w = s['shown']
    assert w['L'] / w['mu'] >= 1.1 - 1e-12 and w['gamma1'] / w['gamma0'] >= 1.05 - 1e-12
    assert (s['found'] > 0) == (w['mean'] > w['bound'] * (1 + 1e-9))


def test_theorem10_counterexample_by_hand():
    """d=n=1, f=w^2/2, w0=1, rho=0.01, eta=1, T=1: SAM lands at -rho, the bound is negative."""
    w1 = 1.0 - 1.0 * (1.0 + 0.01)
    G = 1.01                                        # ball [-0.02, 1.01] around the points, |w| <= 1.01
    bound = noise_ball_bound(1, 0.5, 1.0, 1.0, 0.01, G, 1.0)
    assert bound < 0 < 0.5 * w1 ** 2


def test_run_all_sequences_is_the_exact_expectation():
    """All 2^T sequences once each: the mean equals a brute-force average over explicit index sequences."""
    q = random_quadratics(2, 2, 0.5, 3.0, batch=(1,), seed=7)
    T, w0 = 4, np.array([[1.0, -0.5]])
    out = run_all_sequences(q, w0, 0.2, 0.1, 'stablesam', T=T)
    seqs = all_sequences(2, T)
    assert seqs.shape == (T, 16) and len({tuple(s) for s in seqs.T}) == 16
    ref = np.mean([_algorithm1_reference(q.H[0], q.c[0], w0[0], 0.2, 0.1, True, seqs[:, k]) for k in range(16)], 0)
    np.testing.assert_allclose(out['w'][0].mean(0), ref, rtol=1e-12, atol=1e-12)


def _algorithm1_reference(H, c, w, eta, rho, stable, idx):
    """Plain loop over Algorithm 1 (lines 3-7) for one quadratic problem, written independently."""
    w = w.copy()
    for i in idx:
        g = H[i] @ (w - c[i])
        n = np.linalg.norm(g)
        w_asc = w + (rho * g / n if n > 0 else 0.0)
        g_asc = H[i] @ (w_asc - c[i])
        if stable and np.linalg.norm(g_asc) > 0:
            g_asc = g_asc * n / np.linalg.norm(g_asc)
        w = w - eta * g_asc
    return w


@pytest.mark.parametrize('method', ['sam', 'stablesam'])
def test_run_matches_reference_algorithm1(method):
    q = random_quadratics(4, 3, 0.3, 5.0, batch=(3,), seed=0)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 4, (25, 3, 2))
    w0 = rng.standard_normal((3, 2, 3))
    out = run(q, w0, 0.1, 0.2, method, idx=idx)
    for b in range(3):
        for p in range(2):
            ref = _algorithm1_reference(q.H[b], q.c[b], w0[b, p], 0.1, 0.2, method == 'stablesam', idx[:, b, p])
            np.testing.assert_allclose(out['w'][b, p], ref, rtol=1e-12, atol=1e-12)


def test_closed_form_matches_stablesam_optimizer():
    """One StableSAM step of stablesam.optim on a torch quadratic equals the closed form used by the audit."""
    torch = pytest.importorskip('torch')
    optim = pytest.importorskip('stablesam.optim')
    q = random_quadratics(1, 4, 0.5, 3.0, batch=(1,), seed=2)
    H, c = q.H[0, 0], q.c[0, 0]
    w0 = np.random.default_rng(3).standard_normal(4)
    Ht, ct = torch.tensor(H), torch.tensor(c)
    for stable, method in ((False, 'sam'), (True, 'stablesam')):
        w = torch.nn.Parameter(torch.tensor(w0))
        opt = (optim.StableSAM if stable else optim.SAM)([w], torch.optim.SGD, rho=0.3, lr=0.1)

        def loss_fn(): return 0.5 * (w - ct) @ Ht @ (w - ct)

        loss_fn().backward()
        opt.first_step(zero_grad=True)
        loss_fn().backward()
        opt.second_step(zero_grad=True)
        expected = w0 - 0.1 * sam_direction(H, c, w0, 0.3, method)[0]
        np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_constants_cvxpy_agree_with_numpy():
    q = random_quadratics(5, 3, 0.2, 7.0, batch=(2,), seed=4)
    ws = empirical_minimizer(q)
    m, l = strong_convexity_smoothness(q.H)
    G = max_grad_norm(q, ws, np.array([0.7, 2.5]))
    for b, R in enumerate((0.7, 2.5)):
        mc, lc = certify_mu_L(q.H[b])
        assert abs(mc - m[b]) < 1e-6 * l[b] and abs(lc - l[b]) < 1e-6 * l[b]
        np.testing.assert_allclose(certify_minimizer(q[b]), ws[b], atol=1e-6)
        assert abs(certify_max_grad_norm(q[b], ws[b], R) / G[b] - 1) < 1e-6


def test_max_grad_norm_is_an_upper_bound_and_tight():
    q = random_quadratics(3, 4, 0.1, 4.0, batch=(4,), seed=5)
    center, R = np.random.default_rng(6).standard_normal((4, 4)), np.array([0.1, 1.0, 10.0, 1e6])
    G = max_grad_norm(q, center, R)
    x = np.random.default_rng(7).standard_normal((4, 5000, 4))
    x = center[:, None] + x * (R[:, None, None] / np.linalg.norm(x, axis=-1, keepdims=True))
    gn = np.linalg.norm(np.einsum('bnij,bpnj->bpni', q.H, x[:, :, None] - q.c[:, None]), axis=-1).max((1, 2))
    assert np.all(gn <= G * (1 + 1e-9)) and np.all(gn >= 0.95 * G)


def test_lemma6_exhaustive_grid_under_assumption1():
    """Lemma 6 under Assumption 1 on a grid of 1-d and 2-d cases, edge learning rate and both xi endpoints."""
    for mu, L in ((1.0, 1.0), (0.1, 1.0), (0.01, 5.0)):
        H = np.diag([mu, L])
        for rho in (1e-3, 0.1, 3.0):
            for C in (1 + 1e-9, 2.0, 10.0):
                w, v = np.array([1.0, -2.0]), np.array([-0.5, 0.3])
                center, half = (w + v) / 2, np.linalg.norm(w - v) / 2
                G = max_grad_norm(Quadratics(H[None], np.zeros((1, 2))), center, np.array(half + C * rho))
                eta = sam_lr_max(mu, L, rho, G, C)
                for xi in (rho / G, C * rho / G):
                    def step(x): return x - eta * (np.eye(2) + xi * H) @ H @ x
                    lhs = np.linalg.norm(step(v) - step(w))
                    assert lhs <= sam_contraction(mu, L, rho, G, eta) * np.linalg.norm(v - w) * (1 + 1e-12)


def test_verify_all_schema_vocabulary_and_key_findings():
    rows = verify_all(n_instances=8, seed=3, search_draws=40)
    keys = {'statement', 'regime', 'status', 'instances', 'violations', 'worst_slack', 'note'}
    assert all(set(r) == keys for r in rows) and {r['status'] for r in rows} <= set(AUDIT_STATUSES)

    def status(s, reg): return {r['status'] for r in audit_rows(rows, s, reg)}

    assert status('Lemma 5', 'quadratics') == {'holds'}
    assert status('Lemma 6', 'Assumption 1') == {'holds'}
    assert status('Lemma 6', 'Algorithm 1') == {'outside'}
    assert status('Lemma 13', 'as stated') == {'vacuous'}
    assert status('Theorem 15', 'as stated') == {'vacuous'}
    assert status('Theorem 15', 'Assumption 3 dropped; shared xi_t; gamma_t = ') == {'holds'}
    assert status('Theorem 10', 'Algorithm 1 ') == {'violated'}
    assert status('Remark 12', 'eps_gen') == {'does not follow'}
    assert status('Remark 16', 'claimed') == {'does not follow'}
    assert all(r['status'] == 'holds' for r in rows if r['regime'].startswith('corrected'))
    free = audit_rows(rows, 'Theorem 15', 'Assumption 3 dropped; shared xi_t; gamma_t any')[0]['note']
    assert 'degenerate corner' in free and 'non-degenerate exact search' in free
    assert 'disappears for G >=' in audit_rows(rows, 'Theorem 10', 'eta <= 1/(2 mu')[0]['note']
    table = audit_table(rows)
    assert table.count('\n') == len(rows) + 1 and '| Lemma 5 |' in table


def test_checks_are_registered_and_looked_up_by_name():
    """Every check in AUDIT_CHECKS takes (rng, size); rows are found by statement and regime, not by position."""
    assert all(f.__name__.startswith('check_') for f in AUDIT_CHECKS) and len(set(AUDIT_CHECKS)) == len(AUDIT_CHECKS)
    rows = check_one_step(np.random.default_rng(0), AuditSize(8))
    assert audit_rows(rows, 'Lemma 13', 'corrected')[0]['status'] == 'holds'
    with pytest.raises(KeyError, match='No audit row'): audit_rows(rows, 'Lemma 99')


@pytest.mark.parametrize('module', THEORY_MODULES)
def test_theory_modules_import_no_private_names_and_form_no_cycle(module):
    """Module boundary: only public names cross the audit's modules; imports go theory <- checks <- runs <- audit."""
    tree = ast.parse((LIB / f'{module}.py').read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and
               n.module.lstrip('.').split('.')[-1] in THEORY_MODULES]
    for node in imports:
        assert not [a.name for a in node.names if a.name.startswith('_')], (module, node.module)
        assert THEORY_MODULES.index(node.module.lstrip('.').split('.')[-1]) < THEORY_MODULES.index(module)


def test_bad_input():
    with pytest.raises(ValueError, match='Invalid n_instances'): verify_all(n_instances=2)
    with pytest.raises(ValueError, match='Invalid fails_as'): make_row('Lemma 5', 'x', [True], [0.0], fails_as='wrong')
    with pytest.raises(ValueError, match='Invalid spectrum bounds'): random_quadratics(2, 2, 0.0, 1.0)
    with pytest.raises(ValueError, match='Invalid problem size'): random_quadratics(0, 2, 1.0, 2.0)
    with pytest.raises(ValueError, match='Invalid method'):
        sam_direction(np.eye(1), np.zeros(1), np.ones(1), 0.1, 'adam')
    with pytest.raises(ValueError, match='give T or idx'):
        run(random_quadratics(1, 1, 1., 1.), np.zeros((1, 1)), .1, .1)
