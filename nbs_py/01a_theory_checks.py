# %%
#| default_exp theory_checks

# %% [markdown]
# # theory_checks
#
# > The audit's one-step and formula checks: Lemma 5, Lemmas 6-7 and 13-14, the joint infeasibility of Assumptions 2 and 3, the remarks about the bounds, and the certified constants

# %% [markdown]
# Part one of the numerical audit of Section 4 (the overview, the full table and the figures are in
# [theory_audit](01c_theory_audit.ipynb); the checks that run many steps are in
# [theory_runs](01b_theory_runs.ipynb)). Every numbered statement is tested *as written* on the random
# strongly convex quadratics of [theory](01_theory.ipynb), with the constants certified there, across the
# whole range of learning rates, radii $\rho$, constants $C$ and factors $\gamma_0, \gamma_1$ the
# statement admits. Expectations over the sampling sequence are Monte Carlo averages; an instance counts
# as a violation only when the bound lies below a 99% confidence band of the mean. Where a statement
# fails or cannot apply, a separate row states the corrected claim and the regime in which it does hold;
# the original row is never weakened.
#
# Each check is a public function `check_*(rng, size)` of a random generator and an `AuditSize`; it
# returns rows: dicts with keys `statement`, `regime`, `status`, `instances`, `violations`,
# `worst_slack`, `note`. `worst_slack` is the smallest relative slack
# $(\text{bound} - \text{measured}) / \max(|\text{bound}|, |\text{measured}|)$ over the instances
# (negative: the measured value exceeds the bound). For vacuous rows it is the largest margin by which
# the incompatible hypotheses were satisfied together (negative: never). The helpers here (rows, slack,
# draws, `AuditSize`, `audit_table`) are the audit's shared public vocabulary, used by
# [theory_runs](01b_theory_runs.ipynb) and [theory_audit](01c_theory_audit.ipynb).

# %%
#| hide
from fastcore.test import *
from IPython.display import Markdown

# %%
#| export
from dataclasses import dataclass

import numpy as np

from stablesam.style import markdown_table
from stablesam.theory import (
    Quadratics, random_quadratics, empirical_minimizer, strong_convexity_smoothness, max_grad_norm, certify_mu_L,
    certify_minimizer, certify_max_grad_norm, coercivity_lower_bound, sgd_lr_max, sam_lr_max, stablesam_lr_max,
    sam_contraction, stability_bound, excess_risk_bound, assumption3_margin, stablesam_contraction_corrected,
    stability_bound_corrected, sam_direction, run)

# %% [markdown]
# ## Rows, slack and status
#
# One status vocabulary for every row of the audit:
#
# | status | meaning |
# |---|---|
# | `holds` | the conclusion held on every instance drawn inside the row's regime |
# | `violated` | the conclusion fails on some instance *inside* the statement's hypotheses |
# | `vacuous` | the hypotheses cannot hold together, so the statement says nothing |
# | `outside` | the algorithm as run breaks one of the hypotheses, and the conclusion then fails |
# | `does not follow` | a remark's claim that the proven bounds do not imply (for example, comparing two upper bounds) |
#
# A check decides which failure word its row uses (`fails_as`); `make_row` turns per-instance flags into
# the row, and `vacuity_row` records a pair of hypotheses that were never met together.

# %%
#| export
AUDIT_STATUSES = {
    'holds': 'the conclusion held on every instance drawn inside the regime',
    'violated': "the conclusion fails inside the statement's hypotheses",
    'vacuous': 'the hypotheses cannot hold together',
    'outside': 'the algorithm as run breaks a hypothesis and the conclusion then fails',
    'does not follow': "a remark's claim that the bounds do not imply (e.g. comparing two upper bounds)",
}
Z99 = 2.576  # two-sided 99% normal quantile for Monte Carlo bands


def rel_slack(bound, measured):
    """Relative slack `(bound - measured) / max(|bound|, |measured|)` (negative: bound exceeded)."""
    bound, measured = np.asarray(bound, float), np.asarray(measured, float)
    scale = np.maximum(np.maximum(np.abs(bound), np.abs(measured)), 1e-300)
    return (bound - measured) / scale


def mean_se(x, axis=-1):
    """Monte Carlo mean and standard error along `axis` (scaled first, so huge divergent values do not overflow)."""
    scale = np.abs(x).max(axis, keepdims=True)
    scale = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
    y = x / scale
    n = x.shape[axis]
    se = y.std(axis, ddof=1, keepdims=True) / np.sqrt(n) if n > 1 else np.zeros_like(scale)
    return (y.mean(axis, keepdims=True) * scale).squeeze(axis), (se * scale).squeeze(axis)


def make_row(statement, regime, failed, slack, note='', *, fails_as='violated'):
    """One audit row from per-instance failure flags and slacks; any failure gives the status `fails_as`."""
    if fails_as not in AUDIT_STATUSES or fails_as in ('holds', 'vacuous'):
        raise ValueError(f"Invalid fails_as: {fails_as!r}")
    failed, slack = np.atleast_1d(failed), np.atleast_1d(slack)
    return dict(statement=statement, regime=regime, status=fails_as if failed.any() else 'holds',
                instances=int(failed.size), violations=int(failed.sum()),
                worst_slack=float(np.min(slack)) if slack.size else float('nan'), note=note)


def vacuity_row(statement, regime, met, margin, note=''):
    """A `vacuous` row: `met` flags the instances where the incompatible hypotheses held together (must be none)."""
    met, margin = np.atleast_1d(met), np.atleast_1d(margin)
    if met.any(): raise ValueError(f"{statement}: hypotheses met together on {int(met.sum())} instances, not vacuous")
    return dict(statement=statement, regime=regime, status='vacuous', instances=int(met.size), violations=0,
                worst_slack=float(np.max(margin)), note=note)


def audit_rows(rows, statement, regime=''):
    """The rows of `statement` whose regime starts with `regime` (rows are looked up by name, never by position)."""
    found = [r for r in rows if r['statement'] == statement and r['regime'].startswith(regime)]
    if not found: raise KeyError(f"No audit row {statement!r} with regime {regime!r}")
    return found


def status_counts(rows):
    """How many rows carry each status, in the order of `AUDIT_STATUSES`: one phrase ('30 holds, 9 violated, ...')."""
    return ', '.join(f"{sum(r['status'] == s for r in rows)} {s}" for s in AUDIT_STATUSES)


def _escape_pipes(value):
    """`value` as table-cell text, its `|` escaped so that it does not end the cell."""
    return str(value).replace('|', '\\|')


def audit_table(rows, columns=('statement', 'regime', 'status', 'instances', 'violations', 'worst_slack', 'note')):
    """The audit rows as a Markdown table, every cell in full."""
    return markdown_table(rows, {k: (k, '{:.3g}' if k == 'worst_slack' else _escape_pipes) for k in columns})


# %%
r = make_row('Lemma 5', 'x', np.array([False, True]), np.array([0.1, -0.2]))
test_eq((r['status'], r['instances'], r['violations']), ('violated', 2, 1))
test_close(r['worst_slack'], -0.2, eps=1e-15)
test_eq(make_row('Lemma 6', 'y', [True], [-1.0], fails_as='outside')['status'], 'outside')
test_eq(make_row('Remark 12', 'z', [False], [0.5], fails_as='does not follow')['status'], 'holds')
test_fail(lambda: make_row('Lemma 5', 'x', [True], [0.0], fails_as='wrong'), contains='Invalid fails_as')
test_eq(vacuity_row('Lemma 13', 'A2+A3', [False, False], [-1.0, -0.5])['worst_slack'], -0.5)
test_fail(lambda: vacuity_row('Lemma 13', 'A2+A3', [True], [0.1]), contains='not vacuous')
test_eq(status_counts([r]), '0 holds, 1 violated, 0 vacuous, 0 outside, 0 does not follow')
test_eq(audit_rows([r], 'Lemma 5')[0], r)
test_fail(lambda: audit_rows([r], 'Lemma 6'), contains='No audit row')
test_close(rel_slack(1.0, 3.0), -2 / 3, eps=1e-15)
m_, se_ = mean_se(np.array([[1.0, 3.0], [1e300, 3e300]]))
test_close(m_ / [2.0, 2e300], 1.0, eps=1e-12)
test_close(se_ / [1.0, 1e300], 1.0, eps=1e-12)


# %% [markdown]
# ## How large an audit is
#
# `AuditSize` carries the numbers every check reads: instances per statement, Monte Carlo paths and
# steps, and how many instances get the (slow) cvxpy certificates. `AuditSize.for_instances(n)` is the
# default scaling that `verify_all` uses.

# %%
#| export
@dataclass(frozen=True)
class AuditSize:
    """Instances per statement, Monte Carlo `paths` and `steps`, and the number of cvxpy-certified instances."""
    instances: int = 16
    paths: int = 32
    steps: int = 60
    certify: int = 2

    @classmethod
    def for_instances(cls, n, *, paths=None, steps=None, certify=None):
        """The default size for `n` instances per statement (more paths and steps from 100 instances on)."""
        big = n >= 100
        return cls(n, paths or (64 if big else 32), steps or (120 if big else 60),
                   certify if certify is not None else max(2, n // 25))


# %%
test_eq(AuditSize.for_instances(200), AuditSize(200, 64, 120, 8))
test_eq(AuditSize.for_instances(16, steps=30).steps, 30)

# %% [markdown]
# ## Drawing instances across each statement's regime
#
# Constants are drawn log-uniformly: $\mu \in [0.05, 1]$, condition number $\kappa = L/\mu \in [1, 100]$
# (one draw in eight exactly $\kappa = 1$), $\rho \in [10^{-3}, 3]$, $C \in (1, 10]$ (including
# $C \to 1^+$). Learning rates are fractions $u\,\eta_{\max}$ of the statement's own range with
# $u \in [10^{-3}, 1]$ and one draw in four exactly at $u = 1$, the edge. Sizes cycle through
# $(n, d) \in \{(2,1), (3,2), (5,3), (8,5)\}$.

# %%
#| export
SHAPES = ((2, 1), (3, 2), (5, 3), (8, 5))


def loguniform(rng, lo, hi, size):
    """Log-uniform draws in `[lo, hi]`."""
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def draw_constants(rng, B):
    """`(mu, L, rho, C, u)` for `B` instances: u is the learning rate as a fraction of the statement's maximum."""
    mu = loguniform(rng, 0.05, 1.0, B)
    kappa = np.where(rng.uniform(size=B) < 0.125, 1.0, loguniform(rng, 1.0, 100.0, B))
    rho = loguniform(rng, 1e-3, 3.0, B)
    C = np.where(rng.uniform(size=B) < 0.2, 1 + 1e-9, 1 + loguniform(rng, 1e-3, 9.0, B))
    u = np.where(rng.uniform(size=B) < 0.25, 1.0, loguniform(rng, 1e-3, 1.0, B))
    return mu, mu * kappa, rho, C, u


def in_range(rng, lo, hi, size):
    """Values in `[lo, hi]`, a quarter at each endpoint."""
    v = rng.uniform(size=size)
    x = lo + (hi - lo) * rng.uniform(size=size)
    return np.where(v < 0.25, lo, np.where(v < 0.5, hi, x))


def shape_groups(n_instances):
    """Split `n_instances` over the problem `SHAPES`: yields `(B, n, d)`."""
    base, extra = divmod(n_instances, len(SHAPES))
    for k, (n, d) in enumerate(SHAPES):
        B = base + (k < extra)
        if B: yield B, n, d


def grouped_constants(rng, N):
    """Draw the constants of `N` instances (`draw_constants`), then yield `(B, n, d, (mu, L, rho, C, u))` per shape."""
    consts, k = draw_constants(rng, N), 0
    for B, n, d in shape_groups(N):
        yield B, n, d, tuple(x[k:k + B] for x in consts)
        k += B


def stack_problems(*qs):
    """Stack problems along the batch axis."""
    return Quadratics(np.concatenate([q.H for q in qs]), np.concatenate([q.c for q in qs]))


# %%
test_eq([B for B, n, d in shape_groups(10)], [3, 3, 2, 2])
mu_, L_, rho_, C_, u_ = draw_constants(np.random.default_rng(0), 400)
assert (L_ >= mu_).all() and (C_ > 1).all() and (u_ <= 1).all() and (u_ == 1).mean() > 0.15
test_eq(sum(B for B, *_ in grouped_constants(np.random.default_rng(0), 9)), 9)


# %% [markdown]
# ## Lemma 5: coercivity
#
# Tested on quadratics with certified $\mu$, $L$ (where it is tight along eigenvectors, including
# $\mu = L$) and on non-quadratic functions
# $f(\mathbf w) = \tfrac12\mathbf w^\top\mathbf A\mathbf w + \sum_j \alpha_j \log(1 + e^{\mathbf b_j^\top\mathbf w})$
# with valid constants $\mu = \lambda_{\min}(\mathbf A)$, $L = \lambda_{\max}(\mathbf A) + \sum_j \alpha_j\|\mathbf b_j\|^2/4$.

# %%
#| export
def check_lemma5(rng, size):
    """Lemma 5 (coercivity) on quadratics with certified constants and on quadratic + softplus functions."""
    N, rows = size.instances, []
    flags, slacks = [], []
    for B, n, d, (mu, L, *_) in grouped_constants(rng, N):
        q = random_quadratics(1, d, mu, L, batch=(B,), seed=rng)
        m, l = strong_convexity_smoothness(q.H)
        v, w = rng.standard_normal((2, B, 64, d))
        v[:, 0] = w[:, 0] + np.linalg.eigh(q.H[:, 0])[1][..., 0]     # along an extreme eigenvector
        dv = v - w
        dg = np.einsum('bij,bpj->bpi', q.H[:, 0], dv)
        lhs = (dg * dv).sum(-1)
        rhs = coercivity_lower_bound(m[:, None], l[:, None], (dv ** 2).sum(-1), (dg ** 2).sum(-1))
        flags.append((lhs < rhs - 1e-10 * np.abs(rhs)).any(-1))
        slacks.append(rel_slack(lhs, rhs).min(-1))
    rows.append(make_row('Lemma 5', 'quadratics, certified mu <= L (incl. mu = L), random v, w',
                         np.concatenate(flags), np.concatenate(slacks),
                         'tight: equality along eigenvectors (worst slack is rounding, ~1e-15)'))
    flags, slacks = [], []
    for B, n, d in shape_groups(N):
        A = random_quadratics(1, d, 0.1, 2.0, batch=(B,), seed=rng).H[:, 0]
        bvec, alpha = rng.standard_normal((B, 4, d)), rng.uniform(0.1, 2.0, (B, 4))

        def grad(x):   # of 1/2 x^T A x + sum_k alpha_k log(1 + exp(b_k^T x))
            sigmoid = 1 / (1 + np.exp(-np.einsum('bkd,bpd->bpk', bvec, x)))
            return np.einsum('bij,bpj->bpi', A, x) + np.einsum('bk,bpk,bkd->bpd', alpha, sigmoid, bvec)

        m = np.linalg.eigvalsh(A)[:, 0]
        l = np.linalg.eigvalsh(A)[:, -1] + (alpha * (bvec ** 2).sum(-1)).sum(-1) / 4
        v, w = 2 * rng.standard_normal((2, B, 64, d))
        dv, dg = v - w, grad(v) - grad(w)
        lhs = (dg * dv).sum(-1)
        rhs = coercivity_lower_bound(m[:, None], l[:, None], (dv ** 2).sum(-1), (dg ** 2).sum(-1))
        flags.append((lhs < rhs - 1e-10 * np.abs(rhs)).any(-1))
        slacks.append(rel_slack(lhs, rhs).min(-1))
    rows.append(make_row('Lemma 5', 'non-quadratic (quadratic + softplus terms), valid mu, L',
                         np.concatenate(flags), np.concatenate(slacks)))
    return rows


# %%
rows5 = check_lemma5(np.random.default_rng(0), AuditSize(16))
test_eq([r['status'] for r in rows5], ['holds', 'holds'])
assert rows5[0]['worst_slack'] < 1e-8   # equality is attained: the lemma is tight


# %% [markdown]
# ## One-step lemmas: 6, 7 (SAM) and 13, 14 (StableSAM)
#
# A single step from two points $\mathbf w, \mathbf v$, with the same example (Lemmas 6, 13) or two
# different examples $z, z'$ (Lemmas 7, 14). $G$ is certified on the smallest ball around
# $\mathbf w, \mathbf v$ that also contains every ascent point of either example (reach $C\rho$ for
# Assumption 1's $\xi_t \le C\rho/G$, since $\xi_t\|\nabla f\| \le C\rho$; reach $\rho$ for
# Algorithm 1). Assumption 1 is implemented as written: one $\xi_t \in [\rho/G, C\rho/G]$ shared by both
# points (the endpoints drawn a quarter of the time each); Lemmas 13-14's $\gamma_t \in [\gamma_0,
# \gamma_1]$ is likewise shared by both updates.
#
# **Why Lemma 6 holds under Assumption 1.** For a quadratic, $\mathbf v_{t+1}-\mathbf w_{t+1} =
# (\mathbf I - \eta(\mathbf I+\xi\mathbf H)\mathbf H)(\mathbf v_t-\mathbf w_t)$, whose eigenvalues are
# $1-\eta\lambda(1+\xi\lambda)$, $\lambda\in[\mu, L]$. With $a=\mu\rho/G$, $b=CL\rho/G > a$ and
# $q = 1-(1+a)\eta\mu L/(\mu+L)$: the lower side $\eta\lambda(1+\xi\lambda) \ge \eta\mu(1+a) \ge (1-q)$
# always holds, and at the edge $\eta = \eta_{\max}$ the upper side needs
# $\eta L(1+b) + (1-q) \le 2$, which follows from $\eta L(1+b) \le 2L(1+a)/((\mu+L)(1+b)) < 2L/(\mu+L)$
# and $1-q < 2\mu L/(\mu+L)^2$ because $L(L+2\mu) < (\mu+L)^2$. The audit confirms it.
#
# **Why Algorithm 1 breaks it.** With $\xi_t = \rho/\|\nabla f\|$ per run, two points on either side of
# a minimiser ascend in opposite directions: $\|\mathbf v_{t+1}-\mathbf w_{t+1}\| \approx 2\eta\lambda\rho$
# however small $\|\mathbf v_t - \mathbf w_t\|$ is. Assumption 1's shared $\xi_t$ is what makes SAM
# non-expansive, so these rows are `outside` (the algorithm breaks the hypothesis), not `violated`.
#
# **Lemmas 13-14 without Assumption 3.** StableSAM's step is $\eta\gamma_t$, so the eigenvalues become
# $1-\eta\gamma_t\lambda(1+\xi\lambda)$. The upper side is as above because
# $\eta\gamma_t \le \eta\gamma_1 \le \eta_{\max}^{SAM}$, but the lower side only gives
# $\eta\gamma_t\lambda(1+\xi\lambda) \ge \gamma_0\eta\mu(1+a)$: the factor is
# $1-\gamma_0(1+a)\eta\mu L/(\mu+L)$, not the stated one without $\gamma$. (Assumption 3 was meant to
# restore the lower side, and it cannot hold; see below.) Unrolling as in Theorem 8 multiplies
# Theorem 15's bound by $1/\gamma_0$.

# %%
#| export
def one_step_check(rng, N, *, same_example, method, shared_xi, shared_hessian=False, stable_factor='stated'):
    """Per-instance (failed, slack) of one step of Lemma 6/7 (`sam`) or 13/14 (`stablesam`)."""
    flags, slacks = [], []
    for B, n, d, (mu, L, rho, C, u) in grouped_constants(rng, N):
        q = random_quadratics(2, d, mu, L, batch=(B,), shared_hessian=shared_hessian, seed=rng)
        qw = q[:, :1]
        qv = qw if same_example else Quadratics(q.H[:, 1:], q.c[:, 1:])
        m, l = strong_convexity_smoothness(q.H)
        w = q.c[:, 0] + loguniform(rng, 1e-3, 3, (B, 1)) * rng.standard_normal((B, d))
        v = w + loguniform(rng, 1e-4, 3, (B, 1)) * rng.standard_normal((B, d))
        center, half = 0.5 * (w + v), 0.5 * np.linalg.norm(w - v, axis=-1)
        reach = C * rho if shared_xi else rho
        G = max_grad_norm(q, center, half + reach)
        g1 = in_range(rng, 0.05, 0.999, B)
        g0 = g1 * in_range(rng, 0.05, 1.0, B)
        eta = u * (sam_lr_max(m, l, rho, G, C) if method == 'sam' else stablesam_lr_max(m, l, rho, G, C, g1))
        xi = in_range(rng, rho / G, C * rho / G, B) if shared_xi else None
        gam = in_range(rng, g0, g1, B) if method == 'stablesam' and shared_xi else None
        dw = sam_direction(qw.H[:, 0], qw.c[:, 0], w, rho, method, xi=xi, gamma=gam)[0]
        dv = sam_direction(qv.H[:, 0], qv.c[:, 0], v, rho, method, xi=xi, gamma=gam)[0]
        lhs = np.linalg.norm((v - eta[:, None] * dv) - (w - eta[:, None] * dw), axis=-1)
        qf = (sam_contraction(m, l, rho, G, eta) if stable_factor == 'stated'
              else stablesam_contraction_corrected(m, l, rho, G, eta, g0))
        extra = 0.0 if same_example else 2 * eta * G * (1.0 if method == 'sam' else g1)
        rhs = qf * 2 * half + extra
        flags.append(lhs > rhs * (1 + 1e-9))
        slacks.append(rel_slack(rhs, lhs))
    return np.concatenate(flags), np.concatenate(slacks)


def check_one_step(rng, size):
    """Lemmas 6, 7 (SAM) and 13, 14 (StableSAM, Assumption 3 dropped): one step from two points."""
    N = size.instances
    A1 = 'Assumption 1 (shared xi_t in [rho/G, C rho/G])'
    A12 = 'Assumptions 1-2 (shared xi_t, shared gamma_t in [gamma0, gamma1]), Assumption 3 dropped'
    cases = [('Lemma 6', f'{A1}, eta <= eta_SAM', dict(same_example=True, method='sam', shared_xi=True),
              '', 'violated'),
             ('Lemma 6', 'Algorithm 1 SAM (xi_t = rho/||g|| per run; Assumption 1 not met)',
              dict(same_example=True, method='sam', shared_xi=False),
              "Algorithm 1's per-run xi_t breaks Assumption 1 (its ascent directions are not Lipschitz)", 'outside'),
             ('Lemma 7', f'{A1}, one shared Hessian, eta <= eta_SAM',
              dict(same_example=False, method='sam', shared_xi=True, shared_hessian=True), '', 'violated'),
             ('Lemma 7', f'{A1}, per-example Hessians, eta <= eta_SAM',
              dict(same_example=False, method='sam', shared_xi=True),
              'holds because G covers the ascent points of both examples', 'violated'),
             ('Lemma 7', 'Algorithm 1 SAM (Assumption 1 not met)',
              dict(same_example=False, method='sam', shared_xi=False), '', 'outside'),
             ('Lemma 13', f'{A12}, stated factor', dict(same_example=True, method='stablesam', shared_xi=True),
              'the step eta*gamma_t < eta contracts less than the stated factor (no gamma in it)', 'violated'),
             ('Lemma 13', f'corrected: factor 1 - gamma0 (1 + mu rho/G) eta mu L/(mu+L); {A12}',
              dict(same_example=True, method='stablesam', shared_xi=True, stable_factor='corrected'), '', 'violated'),
             ('Lemma 14', f'{A12}, stated factor', dict(same_example=False, method='stablesam', shared_xi=True),
              '', 'violated'),
             ('Lemma 14', f'corrected: factor with gamma0 (as Lemma 13); {A12}',
              dict(same_example=False, method='stablesam', shared_xi=True, stable_factor='corrected'), '', 'violated')]
    return [make_row(stmt, regime, *one_step_check(rng, N, **kw), note, fails_as=fails)
            for stmt, regime, kw, note, fails in cases]


# %%
rows_1 = check_one_step(np.random.default_rng(0), AuditSize(24))
test_eq(audit_rows(rows_1, 'Lemma 6', 'Assumption 1')[0]['status'], 'holds')
test_eq(audit_rows(rows_1, 'Lemma 7', 'Assumption 1 (shared xi_t in [rho/G, C rho/G]), one shared')[0]['status'],
        'holds')
test_eq(audit_rows(rows_1, 'Lemma 13', 'corrected')[0]['status'], 'holds')
assert audit_rows(rows_1, 'Lemma 6', 'Algorithm 1')[0]['status'] in ('holds', 'outside')
Markdown(audit_table(rows_1))


# %% [markdown]
# ## Assumptions 2 and 3 cannot hold together: Lemmas 13-14, Theorems 15 and 18, Remark 16
#
# **Derivation.** Let $\mathbf g = \nabla f(\mathbf w_t)$ and let $\mathbf H_t$ be the (locally constant,
# Assumption 1) Hessian. The ascent point is $\mathbf w_t + \xi_t\mathbf g$ with $\xi_t \ge \rho/G$
# (Algorithm 1 has $\xi_t = \rho/\|\mathbf g\|$ and $\|\mathbf g\| \le G$; Assumption 1 asks
# $\xi_t \ge \rho/G$ directly), so
# $$\|\nabla f(\mathbf w_t^{asc})\| \ \ge\ \langle \mathbf g + \xi_t\mathbf H_t\mathbf g, \mathbf g\rangle/\|\mathbf g\|
#   \ \ge\ (1 + \xi_t\sigma_{\min}(\mathbf H_t))\|\mathbf g\| ,\qquad
#   \gamma_t \le \frac{1}{1 + \rho\,\sigma_{\min}(\mathbf H_t)/G}.$$
# Assumption 2 needs $\gamma_0 \le \gamma_t$, hence $\sigma_{\min}(\mathbf H_t) \le \frac G\rho\frac{1-\gamma_0}{\gamma_0}$,
# while Assumption 3 needs $\sigma_{\min}(\mathbf H_t) \ge \frac G\rho\frac{1-\gamma_0}{\gamma_0} + \frac{\mu}{\gamma_0}$,
# strictly larger because $\mu > 0$. No instance, $\rho$, $\gamma_0$ or valid $\mu$ satisfies both: every
# statement that assumes both (Lemmas 13, 14, Theorem 15, hence Theorem 18, Remark 16 and Table 1's
# StableSAM row) is **vacuous**. (With the certified, tight $\mu = \min_t\sigma_{\min}(\mathbf H_t)$ Assumption 3
# alone already fails, since it asks $\sigma_{\min} > \mu/\gamma_0 > \mu$.) Remark 19's clamp makes $\gamma_t \ge \gamma_0$
# artificially, which escapes the first half of the argument but not the second with the tight $\mu$.
#
# **Numerical check.** Runs of Algorithm 1 StableSAM (batch size one) record, at every step, $\gamma_t$
# and $\sigma_{\min}$ of the sampled example's Hessian. Per path, $\gamma_0 = \min_t\gamma_t$ is the best
# constant of Assumption 2; Assumption 3's margin is then evaluated with the certified $\mu$ and with
# $\mu \to 0$ (the most favourable valid constant), and the key inequality
# $\gamma_t(1+\rho\sigma_{\min}(\mathbf H_t)/G) \le 1$ is checked at every step.

# %%
#| export
def assumption23_data(rng, N, P, T, clamp=None):
    """Per instance: best Assumption-3 margins (certified mu, mu -> 0) and max of gamma_t (1 + rho s_min/G)."""
    parts = []
    for B, n, d, (mu, L, rho, _, _) in grouped_constants(rng, N):
        q = random_quadratics(n, d, mu, L, batch=(B,), seed=rng)
        ws, (m, l) = empirical_minimizer(q), strong_convexity_smoothness(q.H)
        smin = np.linalg.eigvalsh(q.H)[..., 0]                                     # (B, n)
        eta = loguniform(rng, 1e-3, 1.0, B) * stablesam_lr_max(m, l, rho, l * 10, 1.0, 1.0)
        start = ws + loguniform(rng, 0.1, 3.0, (B, 1)) * rng.standard_normal((B, d))
        w = np.broadcast_to(start[:, None], (B, P, d)).copy()
        bi = np.arange(B)[:, None]
        gam, lam, far, gn = [], [], np.linalg.norm(w - ws[:, None], axis=-1), []
        for t in range(T):
            i = rng.integers(0, n, (B, P))
            step, e_len, f = sam_direction(q.H[bi, i], q.c[bi, i], w, rho[:, None], 'stablesam', gamma0=clamp)
            ratio = sam_direction(q.H[bi, i], q.c[bi, i], w, rho[:, None], 'sam')[2]
            gam.append(f)
            lam.append(smin[bi, i])
            gn.append(ratio)
            w = w - eta[:, None, None] * step
            far = np.maximum(far, np.linalg.norm(w - ws[:, None], axis=-1))
        gam, lam, ratio = np.array(gam), np.array(lam), np.array(gn)
        G = max_grad_norm(q, ws, far.max(-1) + rho)
        g0 = gam.min(0)                                                            # (B, P)
        lmin = lam.min(0)
        tight = assumption3_margin(lmin, m[:, None], rho[:, None], G[:, None], g0) / lmin
        loose = assumption3_margin(lmin, 0.0, rho[:, None], G[:, None], g0) / lmin
        key = (ratio * (1 + rho[None, :, None] * lam / G[None, :, None])).max((0, 2))
        parts.append(dict(tight=tight.max(-1), loose=loose.max(-1), key=key))
    return {k_: np.concatenate([p[k_] for p in parts]) for k_ in parts[0]}


def check_assumptions23(rng, size):
    """Assumptions 2 and 3 never hold together: statements assuming both are vacuous (also with Remark 19's clamp)."""
    N, P, T = size.instances, size.paths, size.steps
    r = assumption23_data(rng, N, P, T)
    met = (r['loose'] >= 0) | (r['tight'] >= 0)
    note = (f"Assumptions 2+3 jointly infeasible (derivation in the notebook); best normalised A3 margin "
            f"{r['tight'].max():.3g} (certified mu), {r['loose'].max():.3g} (mu -> 0); "
            f"max gamma_t(1 + rho s_min/G) = {r['key'].max():.6f} <= 1")
    margin = np.maximum(r['tight'], r['loose'])
    rows = [vacuity_row(s, 'as stated: Assumptions 1, 2 and 3', met, margin, note)
            for s in ('Lemma 13', 'Lemma 14', 'Theorem 15', 'Theorem 18', 'Remark 16')]
    rows.append(vacuity_row('Table 1', 'StableSAM row (= Theorem 18)', met, margin, note))
    rc = assumption23_data(rng, N, P, T, clamp=0.9)
    rows.append(vacuity_row('Remark 19', 'Assumption 3 under the clamp gamma_t in [gamma0, sqrt(gamma0)], certified mu',
                            rc['tight'] >= 0, rc['tight'],
                            f"gamma0 = 0.9; best normalised margin {rc['tight'].max():.3g}; with mu -> 0 instead: "
                            f"{int((rc['loose'] >= 0).sum())} of {rc['loose'].size} instances feasible"))
    return rows


# %%
rows_v = check_assumptions23(np.random.default_rng(0), AuditSize(16, paths=16, steps=30))
test_eq({r['status'] for r in rows_v}, {'vacuous'})
Markdown(audit_table(rows_v, columns=('statement', 'regime', 'status', 'instances', 'worst_slack')))


# %% [markdown]
# ## Statements about the bounds themselves: Remarks 9, 12, 16, 19 and Table 1's learning rates
#
# These compare formulas, so they are evaluated on random constants; Remark 12's claim that the bound
# (hence generalisation) improves with $\rho$ is also evaluated with $G$ certified for each $\rho$ on a
# ball that must contain the ascent points, so it grows with $\rho$. Remarks 12 and 16 compare upper
# bounds: where the comparison fails the remark's claim `does not follow` from the theorems (an upper
# bound that is larger says nothing about the error itself), which is not a violation of a theorem.

# %%
#| export
def check_bound_remarks(rng, size):
    """Remarks 9, 12, 16, 19 and Table 1's learning-rate ranges: comparisons between the bounds as formulas."""
    N = size.instances
    mu, L, rho, C, u = draw_constants(rng, N)
    G = loguniform(rng, 1e-2, 1e2, N) * np.maximum(mu, L * rho)
    n = rng.integers(2, 100, N)
    g1 = in_range(rng, 0.05, 0.999, N)
    g0 = g1 * in_range(rng, 0.05, 1.0, N)
    eta = u * sam_lr_max(mu, L, rho, G, C)
    rows = []
    r1, r2 = sam_lr_max(mu, L, rho, G, C), sgd_lr_max(mu, L)
    rows.append(make_row('Remark 9', "SAM's range eta_SAM = 2/(mu+L) (1+a)/(1+b)^2 < SGD's 2/(mu+L)",
                         r1 >= r2, rel_slack(r2, r1), f'median eta_SAM/eta_SGD = {np.median(r1 / r2):.3g}'))
    sam_b = excess_risk_bound(n, mu, L, rho, G, eta)
    sgd_b = excess_risk_bound(n, mu, L, 0.0, G, eta)
    rows.append(make_row('Remark 12', 'SAM bound = SGD bound / (1 + mu rho/G) < SGD bound (same G, eta)',
                         sam_b >= sgd_b, rel_slack(sgd_b, sam_b), fails_as='does not follow'))
    flags, slacks = [], []          # Remark 12: monotone in rho, with G certified per rho
    for B, nn, d in shape_groups(N):
        q = random_quadratics(nn, d, mu[:B], L[:B], batch=(B,), seed=rng)
        ws, (m, l) = empirical_minimizer(q), strong_convexity_smoothness(q.H)
        R0 = np.linalg.norm(q.c - ws[:, None], axis=-1).max(-1)
        rhos = np.logspace(-3, 1, 25)
        Gs = np.stack([max_grad_norm(q, ws, R0 + r) for r in rhos])               # (25, B)
        b = stability_bound(nn, m, l, rhos[:, None], Gs)
        flags.append((np.diff(b, axis=0) > 1e-12 * b[1:]).any(0))
        slacks.append(rel_slack(b[:-1], b[1:]).min(0))
    rows.append(make_row('Remark 12',
                         'eps_gen bound decreases with rho when G is certified on a ball that holds the ascent points',
                         np.concatenate(flags), np.concatenate(slacks),
                         'G grows with rho (ball radius R0 + rho), so G^2/(1 + mu rho/G) grows: a larger rho loosens '
                         'the bound; a looser upper bound does not show worse generalisation either, so the claim '
                         'does not follow (it is not a theorem violated)', fails_as='does not follow'))
    st, sm = stability_bound_corrected(n, mu, L, rho, G, g0, g1), stability_bound(n, mu, L, rho, G)
    rows.append(make_row('Remark 16',
                         'claimed reduction, with the corrected Theorem 15: gamma1/gamma0 x SAM bound < SAM bound',
                         st >= sm, rel_slack(sm, st), "gamma1/gamma0 >= 1: the corrected bound is never below SAM's, "
                         "so the claimed reduction does not follow from the bounds", fails_as='does not follow'))
    eq = excess_risk_bound(n, mu, L, rho, G, eta, g1, g1)
    rows.append(make_row('Remark 19', 'gamma0 = gamma1 < 1: Theorem 18 bound < Theorem 11 bound', eq >= sam_b,
                         rel_slack(sam_b, eq), fails_as='does not follow'))
    cl = excess_risk_bound(n, mu, L, rho, G, eta, g0, np.sqrt(g0))
    rows.append(make_row('Remark 19',
                         'gamma1^2 <= gamma0 (clamp to [gamma0, sqrt(gamma0)]): Theorem 18 bound <= Theorem 11 bound',
                         cl > sam_b * (1 + 1e-12), rel_slack(sam_b, cl), fails_as='does not follow'))
    s1 = stablesam_lr_max(mu, L, rho, G, C, g1)
    rows.append(make_row('Table 1',
                         'learning-rate ranges: eta_SAM <= eta_SGD and eta_SAM < eta_StableSAM = eta_SAM/gamma1',
                         (r1 > r2) | (s1 <= r1), np.minimum(rel_slack(r2, r1), rel_slack(s1, r1)),
                         f'eta_StableSAM exceeds eta_SGD in {int((s1 > r2).sum())} of {N} draws'))
    return rows


def clamp_factor_range(rng, N, P, T, gamma0):
    """Smallest and largest factor of Algorithm 1 StableSAM runs with Remark 19's clamp `gamma0`, per instance."""
    q = random_quadratics(3, 2, loguniform(rng, 0.05, 1, N), 1.0, batch=(N,), seed=rng)
    w0 = np.broadcast_to(rng.standard_normal((N, 1, 2)), (N, P, 2))
    out = run(q, w0, 0.5, loguniform(rng, 1e-3, 3, N), 'stablesam', idx=rng.integers(0, 3, (T, N, P)), gamma0=gamma0)
    return out['factor_min'], out['factor_max']


def check_clamp(rng, size):
    """Remark 19: the clamp keeps gamma_t in [gamma0, sqrt(gamma0)] (Assumption 2 with gamma1^2 = gamma0)."""
    N, flags, slacks = max(4, size.instances // 4), [], []
    for gamma0 in (0.1, 0.5, 0.9):
        lo, hi = clamp_factor_range(rng, N, 8, 20, gamma0)
        flags.append((lo < gamma0 - 1e-15) | (hi > np.sqrt(gamma0) + 1e-15))
        slacks.append(np.minimum(lo - gamma0, np.sqrt(gamma0) - hi))
    return [make_row('Remark 19',
                     'the clamp keeps gamma_t in [gamma0, sqrt(gamma0)] (Assumption 2 with gamma1^2 = gamma0)',
                     np.concatenate(flags), np.concatenate(slacks),
                     'Algorithm 1 StableSAM with gamma0 in {0.1, 0.5, 0.9}')]


# %%
rows_b = (check_bound_remarks(np.random.default_rng(0), AuditSize(32))
          + check_clamp(np.random.default_rng(0), AuditSize(32)))
test_eq(audit_rows(rows_b, 'Remark 16')[0]['status'], 'does not follow')
test_eq(audit_rows(rows_b, 'Remark 12', 'eps_gen')[0]['status'], 'does not follow')
test_eq(audit_rows(rows_b, 'Remark 19', 'the clamp')[0]['status'], 'holds')
Markdown(audit_table(rows_b, columns=('statement', 'regime', 'status', 'instances', 'violations', 'worst_slack')))


# %% [markdown]
# ## Constants: cvxpy against numpy, and the global reading of $G$
#
# On a subset of instances, $\mu$, $L$ (SDPs), $\mathbf w^*$ (QP) and $G$ (S-lemma SDPs) from cvxpy are
# compared with the numpy fast path; the relative gap must stay below $10^{-5}$ (solver tolerance).
# And Definitions 2 and 4 read globally: $G(R)/R \ge \mu$ on every ball $B(\mathbf w^*, R)$, so no finite
# $G$ exists on $\mathbb R^d$.

# %%
#| export
def check_constants(rng, size):
    """The certified constants (cvxpy against numpy), and Definitions 2 + 4 read globally (vacuous)."""
    gaps = []
    for k in range(size.certify):
        n, d = SHAPES[k % len(SHAPES)]
        q = random_quadratics(n, d, loguniform(rng, 0.05, 1, 1), loguniform(rng, 1, 20, 1), batch=(1,), seed=rng)
        ws, (m, l) = empirical_minimizer(q), strong_convexity_smoothness(q.H)
        R = np.array([loguniform(rng, 0.1, 5, 1)[0]])
        G = max_grad_norm(q, ws, R)
        mc, lc = certify_mu_L(q.H[0])
        wc = certify_minimizer(q[0])
        Gc = certify_max_grad_norm(q[0], ws[0], R[0])
        gaps.append(max(abs(mc - m[0]) / m[0], abs(lc - l[0]) / l[0],
                        np.linalg.norm(wc - ws[0]) / max(1.0, np.linalg.norm(ws[0])), abs(Gc - G[0]) / G[0]))
    gaps = np.array(gaps)
    rows = [make_row('Constants', 'cvxpy (SDP for mu, L; QP for w*; S-lemma SDP for G) vs numpy',
                     gaps > 1e-5, 1e-5 - gaps,
                     f'largest relative gap {gaps.max():.2e}; slack = 1e-5 - gap')]
    q = random_quadratics(4, 3, 0.2, 5.0, batch=(16,), seed=rng)
    ws, (m, _) = empirical_minimizer(q), strong_convexity_smoothness(q.H)
    ratios = np.stack([max_grad_norm(q, ws, np.full(16, R)) / R for R in np.logspace(0, 6, 7)])
    rows.append(vacuity_row('Definitions 2+4', 'mu-strongly convex and G-Lipschitz on all of R^d', ratios.min(0) < m,
                            m - ratios.min(0), 'G(R)/R >= mu on every ball (R up to 1e6): no global G exists; '
                            'G is read on a ball holding every point the proofs use'))
    return rows


# %%
rows_c = check_constants(np.random.default_rng(0), AuditSize(certify=2))
test_eq([r['status'] for r in rows_c], ['holds', 'vacuous'])
Markdown(audit_table(rows_c))
