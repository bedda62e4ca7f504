# %%
#| default_exp theory

# %% [markdown]
# # theory
#
# > Section 4 of the paper made computable: random strongly convex quadratics, their constants certified by cvxpy, every bound of Lemma 5 to Theorem 18 as a function, and SAM / StableSAM on them in closed form

# %% [markdown]
# Section 4 of the paper bounds the expected excess risk of SAM and StableSAM on $\mu$-strongly
# convex, $L$-smooth, $G$-Lipschitz losses. This notebook builds what is needed to check those
# claims numerically; the audit itself (`verify_all`, the table and the figures) is in
# [theory_audit](01c_theory_audit.ipynb) (with the checks in [theory_checks](01a_theory_checks.ipynb) and
# [theory_runs](01b_theory_runs.ipynb)).
#
# * **Problems.** $n$ per-example losses $f(\mathbf w, z_i) = \tfrac12 (\mathbf w - \mathbf c_i)^\top
#   \mathbf H_i (\mathbf w - \mathbf c_i)$, every $\mathbf H_i$ with a spectrum in $[\mu, L]$ that
#   contains both $\mu$ and $L$, optionally one Hessian shared by all examples (what Assumption 1
#   asks when two different examples are compared), and neighbouring sets $S, S'$.
# * **Constants.** $\mu$ and $L$ as semidefinite programs, $\mathbf w^*$ as a quadratic program and
#   $G$ as the largest gradient norm over a ball, each cross-checked against numpy.
# * **Bounds.** Every inequality of Section 4 as a plain function of its constants.
# * **Dynamics.** SGD, SAM and StableSAM (Algorithm 1) with closed-form gradients, vectorised over
#   instances and Monte Carlo paths, including the modified iterations the proofs actually analyse
#   (Assumption 1's shared $\xi_t$, a shared renormalisation factor $\gamma_t$, Remark 19's clamp).

# %%
#| hide
from fastcore.test import *

# %%
#| export
from dataclasses import dataclass

import numpy as np


# %% [markdown]
# ## Random strongly convex quadratics
#
# `Quadratics` holds a batch of problems: `H` has shape `(..., n, d, d)` and `c` has shape
# `(..., n, d)`; the leading axes index independent instances, so every function below works on many
# instances at once. Each Hessian is $\mathbf Q\,\mathrm{diag}(\lambda)\,\mathbf Q^\top$ with a
# random rotation $\mathbf Q$ and eigenvalues $\lambda$ that contain $\mu$ and $L$ (for $d = 1$ the
# examples alternate between $\mu$ and $L$, so the family still hits both ends).

# %%
#| export
@dataclass
class Quadratics:
    """Per-example losses `f(w, z_i) = 1/2 (w - c_i)^T H_i (w - c_i)`, batched over leading axes."""
    H: np.ndarray  # (..., n, d, d), symmetric positive definite
    c: np.ndarray  # (..., n, d), per-example minimisers

    @property
    def n(self): return self.c.shape[-2]
    @property
    def d(self): return self.c.shape[-1]
    @property
    def batch_shape(self): return self.c.shape[:-2]

    def __getitem__(self, i):
        """Instance (or sub-batch) `i` along the leading batch axes."""
        return Quadratics(self.H[i], self.c[i])


# %%
#| export
def _rotations(rng, shape, d):
    """Uniformly random orthogonal `d x d` matrices with leading `shape`."""
    q, r = np.linalg.qr(rng.standard_normal(shape + (d, d)))
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def random_spectra(rng, shape, d, mu, L):
    """Eigenvalues of shape `shape + (n, d)` in `[mu, L]` (`mu`, `L` broadcast over `shape`) hitting both ends."""
    n = shape[-1]
    mu = np.broadcast_to(np.asarray(mu, float), shape[:-1])[..., None, None]
    L = np.broadcast_to(np.asarray(L, float), shape[:-1])[..., None, None]
    lam = mu + (L - mu) * rng.uniform(size=shape + (d,))
    if d == 1:
        ends = np.where(np.arange(n) % 2 == 0, 0.0, 1.0)[:, None]
        lam = mu + (L - mu) * ends
    else:
        lam[..., 0], lam[..., 1] = mu[..., 0], L[..., 0]
    return lam


def random_quadratics(n, d, mu, L, *, batch=(), shared_hessian=False, spread=1.0, seed=None):
    """A batch of `n`-example quadratic problems in dimension `d` with every Hessian's spectrum in `[mu, L]`."""
    if n < 1 or d < 1: raise ValueError(f"Invalid problem size: n={n}, d={d}")
    if np.any(np.asarray(mu) <= 0) or np.any(np.asarray(L) < np.asarray(mu)):
        raise ValueError(f"Invalid spectrum bounds: mu={mu}, L={L} (need 0 < mu <= L)")
    rng = np.random.default_rng(seed)
    batch = tuple(np.atleast_1d(batch)) if np.ndim(batch) else ((batch,) if batch else ())
    shape = batch + ((1,) if shared_hessian else (n,))
    lam = random_spectra(rng, shape, d, mu, L)
    Q = _rotations(rng, shape, d)
    H = np.einsum('...ij,...j,...kj->...ik', Q, lam, Q)
    H = np.broadcast_to(H, batch + (n, d, d)).copy()
    if shared_hessian and d == 1: H[..., 1::2, :, :] = np.asarray(L, float).reshape(batch + (1, 1, 1))
    c = spread * rng.standard_normal(batch + (n, d))
    return Quadratics(H, c)


# %%
q = random_quadratics(5, 3, 0.5, 4.0, batch=(7,), seed=0)
test_eq(q.H.shape, (7, 5, 3, 3))
test_eq(q.c.shape, (7, 5, 3))
test_eq((q.n, q.d), (5, 3))
lam = np.linalg.eigvalsh(q.H)
test_close(lam.min(-1), 0.5, eps=1e-12)
test_close(lam.max(-1), 4.0, eps=1e-12)
qs = random_quadratics(4, 2, 1.0, 9.0, shared_hessian=True, seed=1)
test_eq(qs.H[0], qs.H[3])
test_fail(lambda: random_quadratics(3, 2, 2.0, 1.0), contains="Invalid spectrum bounds")


# %% [markdown]
# Neighbouring training sets: $S'$ is $S$ with the example at `index` replaced by a fresh draw from
# the same family (with a shared Hessian only the minimiser $\mathbf c_i$ changes).

# %%
#| export
def neighbour(q, mu, L, *, index=0, shared_hessian=False, spread=1.0, seed=None):
    """The training set `S'` that differs from `q` (the set `S`) in the example at `index` only."""
    fresh = random_quadratics(1, q.d, mu, L, batch=q.batch_shape, shared_hessian=False, spread=spread, seed=seed)
    H, c = q.H.copy(), q.c.copy()
    if not shared_hessian: H[..., index, :, :] = fresh.H[..., 0, :, :]
    c[..., index, :] = fresh.c[..., 0, :]
    return Quadratics(H, c)


# %%
q2 = neighbour(q, 0.5, 4.0, index=2, seed=3)
test_eq(np.abs(q2.c - q.c).sum(-1).nonzero()[1], [2] * 7)
test_eq(q2.H[:, [0, 1, 3, 4]], q.H[:, [0, 1, 3, 4]])


# %% [markdown]
# ## Losses, gradients and the empirical minimiser
#
# $F_S(\mathbf w) = \frac1n \sum_i f(\mathbf w, z_i)$ is itself a quadratic with Hessian
# $\bar{\mathbf H} = \frac1n\sum_i \mathbf H_i$ and minimiser
# $\mathbf w^* = \bar{\mathbf H}^{-1} \frac1n \sum_i \mathbf H_i \mathbf c_i$, so a full-batch run is a
# one-example run on `full_batch(q)`. Points `w` carry extra axes after the batch axes (Monte Carlo
# paths): shape `batch + (P, d)`.

# %%
#| export
def _mv(A, x): return np.einsum('...ij,...j->...i', A, x)


def losses(q, w):
    """Per-example losses `f(w, z_i)`: shape `batch + (P, n)` for `w` of shape `batch + (P, d)`."""
    r = w[..., None, :] - q.c[..., None, :, :]
    return 0.5 * np.einsum('...pni,...nij,...pnj->...pn', r, q.H, r)


def empirical_minimizer(q):
    """The minimiser `w*` of the empirical risk `F_S` (closed form), shape `batch + (d,)`."""
    return np.linalg.solve(q.H.sum(-3), _mv(q.H, q.c).sum(-2)[..., None])[..., 0]


def empirical_risk(q, w):
    """The empirical risk `F_S(w)`, shape `batch + (P,)`."""
    return losses(q, w).mean(-1)


def full_batch(q):
    """`F_S` as a one-example problem (same Hessian and minimiser; constant term dropped)."""
    return Quadratics(q.H.mean(-3, keepdims=True), empirical_minimizer(q)[..., None, :])


# %%
ws = empirical_minimizer(q)
g = np.einsum('bnij,bnj->bi', q.H, ws[:, None] - q.c)  # gradient of n * F_S at w*
test_close(np.abs(g).max(), 0, eps=1e-10)
w = ws[:, None] + np.random.default_rng(0).standard_normal((7, 4, 3))
fb = full_batch(q)
test_close(empirical_risk(q, w) - empirical_risk(q, ws[:, None]), empirical_risk(fb, w), eps=1e-10)


# %% [markdown]
# ## Constants, certified
#
# **$\mu$ and $L$.** Over every example, $\mu = \max\{t : \mathbf H_i \succeq t\mathbf I\ \forall i\}$
# and $L = \min\{t : \mathbf H_i \preceq t\mathbf I\ \forall i\}$: two small semidefinite programs
# (cvxpy) against the extreme eigenvalues (numpy).
#
# **$\mathbf w^*$** as the quadratic program $\min_{\mathbf w} \frac1{2n}\sum_i (\mathbf w-\mathbf c_i)^\top
# \mathbf H_i(\mathbf w-\mathbf c_i)$, against the closed form.
#
# **$G$.** A strongly convex function has $\|\nabla f(\mathbf w)\| \ge \mu\|\mathbf w-\mathbf w^*\|$,
# so it is *not* Lipschitz on $\mathbb R^d$: Definitions 2 and 4 taken globally, as the paper writes
# them, can never hold together. We read $G$ the only way that makes the statements meaningful: the
# largest per-example gradient norm over a ball $B(\mathbf a, R)$ that contains every point the proofs
# use (iterates of both runs and all ascent points). On a convex set this is exactly the Lipschitz
# constant of each $f(\cdot, z_i)$ there. For one example, with $\mathbf x = \mathbf w - \mathbf a$,
# $\mathbf b = \mathbf H(\mathbf a-\mathbf c)$,
# $$G_i^2 = \max_{\|\mathbf x\|\le R} \|\mathbf H\mathbf x + \mathbf b\|^2 ,$$
# the maximum of a convex quadratic over a ball: a *trust-region subproblem*. It is non-convex, but it
# has one quadratic constraint and a Slater point ($\mathbf x = 0$, $R > 0$), so by the S-lemma its
# Lagrangian dual is exact (no duality gap):
# $$G_i^2 = \min_{t,\ \nu\ge 0}\ t \quad\text{s.t.}\quad
# \begin{pmatrix} \nu\mathbf I - \mathbf H^2 & -\mathbf H\mathbf b \\ -\mathbf b^\top\mathbf H & t - \|\mathbf b\|^2 - \nu R^2\end{pmatrix} \succeq 0 ,$$
# an SDP (cvxpy). The numpy fast path minimises the same dual in closed form over the scalar $\nu$:
# with $\mathbf H = \mathbf Q\,\mathrm{diag}(s)\mathbf Q^\top$ and $\beta = \mathbf Q^\top\mathbf b$,
# $G_i^2 = \min_{\nu > s_{\max}^2} \nu R^2 + \sum_j \beta_j^2\,\nu/(\nu - s_j^2)$, a convex function of
# $\nu$ solved by bisection on its derivative (every $\nu$ gives an upper bound, so an early stop can
# only make $G$ larger, never invalid; $\nu - s_{\max}^2$ is kept above $10^{-13}s_{\max}^2$ so that it
# stays resolvable in floating point, which costs at most a relative $10^{-13}$).

# %%
#| export
def strong_convexity_smoothness(H):
    """`(mu, L)`: extreme eigenvalues over all examples (numpy), shape `batch`."""
    lam = np.linalg.eigvalsh(H)
    return lam[..., 0].min(-1), lam[..., -1].max(-1)


def max_grad_norm(q, center, radius, iters=200):
    """`G`: the largest per-example gradient norm over the ball `B(center, radius)` (exact S-lemma dual, numpy)."""
    s, Q = np.linalg.eigh(q.H)                                             # (..., n, d)
    b = _mv(q.H, center[..., None, :] - q.c)
    beta2 = np.einsum('...ji,...j->...i', Q, b) ** 2
    R2 = np.maximum(np.asarray(radius, float), 1e-300)[..., None] ** 2
    s2, top = s ** 2, s[..., -1] ** 2
    lo = 1e-13 * top   # nu - top is kept resolvable in floating point; any nu > top is an upper bound
    hi = np.maximum(np.sqrt(top) * np.sqrt(beta2.sum(-1)) / np.sqrt(R2), lo)   # g'(top + hi) >= 0
    def dg(t):
        den = (top[..., None] + t[..., None] - s2) ** 2
        return R2 - np.divide(beta2 * s2, den, out=np.zeros_like(den), where=beta2 > 0).sum(-1)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        up = dg(mid) >= 0
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    nu = top + hi
    den = nu[..., None] - s2
    terms = np.divide(beta2 * nu[..., None], den, out=np.zeros_like(den), where=beta2 > 0)
    return np.sqrt((nu * R2 + terms.sum(-1)).max(-1))


# %%
qq = random_quadratics(6, 4, 0.3, 5.0, batch=(3,), seed=5)
center, radius = np.zeros((3, 4)), np.array([0.5, 1.0, 3.0])
G = max_grad_norm(qq, center, radius)
# sampled points of the ball never exceed G, and the best sampled point comes close to it
x = np.random.default_rng(1).standard_normal((3, 20000, 4))
x *= radius[:, None, None] / np.linalg.norm(x, axis=-1, keepdims=True)
gn = np.linalg.norm(np.einsum('bnij,bpnj->bpni', qq.H, x[:, :, None] - qq.c[:, None]), axis=-1).max((-1, -2))
assert np.all(gn <= G * (1 + 1e-9)) and np.all(gn >= 0.97 * G), (gn, G)
# the hard case (gradient zero at the centre, so beta = 0): G = L R exactly
q1 = Quadratics(np.diag([1.0, 3.0])[None], np.zeros((1, 2)))
test_close(max_grad_norm(q1, np.zeros(2), np.array(2.0)), 6.0, eps=1e-9)
mu_, L_ = strong_convexity_smoothness(qq.H)
test_close(mu_, 0.3, eps=1e-12)
test_close(L_, 5.0, eps=1e-12)


# %% [markdown]
# The cvxpy certificates (one instance at a time: they are the slow, independent path). Each solve must
# end with status `optimal` (Clarabel, then SCS at tolerance $10^{-9}$), otherwise it raises.

# %%
#| exporti
def _solve(prob):
    """Solve with Clarabel; fall back to SCS at tight tolerance when Clarabel reports an inaccurate optimum."""
    import warnings
    import cvxpy as cp
    with warnings.catch_warnings():   # an inaccurate optimum is not accepted anyway: the status is checked
        warnings.filterwarnings('ignore', message='Solution may be inaccurate')
        prob.solve(solver=cp.CLARABEL)
        if prob.status != cp.OPTIMAL: prob.solve(solver=cp.SCS, eps=1e-9)
    if prob.status != cp.OPTIMAL: raise RuntimeError(f"Certificate failed: solver status {prob.status}")
    return prob.value


# %%
#| export
def certify_mu_L(H):
    """`(mu, L)` of one instance's Hessians `H` `(n, d, d)` as two semidefinite programs (cvxpy)."""
    import cvxpy as cp
    d = H.shape[-1]
    t = cp.Variable()
    sym = [0.5 * (h + h.T) for h in H]
    mu = _solve(cp.Problem(cp.Maximize(t), [h - t * np.eye(d) >> 0 for h in sym]))
    L = _solve(cp.Problem(cp.Minimize(t), [t * np.eye(d) - h >> 0 for h in sym]))
    return mu, L


def certify_minimizer(q):
    """`w*` of one instance as a quadratic program (cvxpy)."""
    import cvxpy as cp
    w = cp.Variable(q.d)
    obj = sum(cp.quad_form(w - ci, cp.psd_wrap(0.5 * (h + h.T))) for h, ci in zip(q.H, q.c)) / (2 * q.n)
    _solve(cp.Problem(cp.Minimize(obj)))
    return w.value


def certify_max_grad_norm(q, center, radius):
    """`G` of one instance over `B(center, radius)` as one S-lemma SDP per example (cvxpy, exact: no duality gap)."""
    import cvxpy as cp
    d, best = q.d, 0.0
    for h, ci in zip(q.H, q.c):
        h = 0.5 * (h + h.T)
        b = h @ (center - ci)
        hb = (h @ b)[:, None]
        t, nu = cp.Variable(), cp.Variable(nonneg=True)
        M = cp.bmat([[nu * np.eye(d) - h @ h, -hb],
                     [-hb.T, cp.reshape(t - b @ b - nu * radius ** 2, (1, 1), order='C')]])
        best = max(best, _solve(cp.Problem(cp.Minimize(t), [0.5 * (M + M.T) >> 0])))
    return float(np.sqrt(best))


# %%
mu_c, L_c = certify_mu_L(qq.H[0])
test_close(mu_c, mu_[0], eps=1e-6)
test_close(L_c, L_[0], eps=1e-6)
test_close(certify_minimizer(qq[0]), empirical_minimizer(qq)[0], eps=1e-6)
for i in range(3):
    Gc = certify_max_grad_norm(qq[i], center[i], radius[i])
    test_close(Gc / G[i], 1.0, eps=1e-6)


# %% [markdown]
# ## The bounds of Section 4, as functions of their constants
#
# Notation: $a = \mu\rho/G$, $b = CL\rho/G$. Each function evaluates one right-hand side exactly as
# printed in the paper (the audit never edits them; corrected versions carry `corrected` in their
# name).

# %%
#| export
def coercivity_lower_bound(mu, L, dist2, gdiff2):
    """Lemma 5's right-hand side: `mu L/(mu+L) ||v-w||^2 + ||grad f(v) - grad f(w)||^2/(mu+L)`."""
    return mu * L / (mu + L) * dist2 + gdiff2 / (mu + L)


def sgd_lr_max(mu, L):
    """Remark 9 / Table 1: SGD's learning-rate range `eta <= 2/(mu+L)` (Hardt et al., 2016)."""
    return 2.0 / (mu + L)


def sam_lr_max(mu, L, rho, G, C):
    """Lemmas 6-7, Theorem 8, Table 1: `eta <= 2(1 + mu rho/G) / ((mu+L)(1 + C L rho/G)^2)`."""
    return 2.0 * (1 + mu * rho / G) / ((mu + L) * (1 + C * L * rho / G) ** 2)


def stablesam_lr_max(mu, L, rho, G, C, gamma1):
    """Lemmas 13-14, Theorem 15, Table 1: `eta <= 2(1 + mu rho/G) / (gamma1 (mu+L)(1 + C L rho/G)^2)`."""
    return sam_lr_max(mu, L, rho, G, C) / gamma1


def sam_contraction(mu, L, rho, G, eta):
    """Lemmas 6, 7, 13, 14: the per-step factor `1 - (1 + mu rho/G) eta mu L/(mu+L)`."""
    return 1 - (1 + mu * rho / G) * eta * mu * L / (mu + L)


def stability_bound(n, mu, L, rho, G, gamma1=1.0):
    """Theorems 8 (`gamma1=1`), 15 and Remark 9 (`rho=0`): `2 gamma1 G^2 (mu+L) / (n mu L (1 + mu rho/G))`."""
    return 2 * gamma1 * G ** 2 * (mu + L) / (n * mu * L * (1 + mu * rho / G))


def noise_ball_bound(t, e0, mu, L, rho, G, eta, gamma0=1.0, gamma1=1.0):
    """Theorems 10 (`gamma0=gamma1=1`), 17: `(1-2 mu gamma0 eta(1+a))^t e0 + eta gamma1^2 G^2 L/(4 mu gamma0(1+a))`."""
    a = mu * rho / G
    return ((1 - 2 * mu * gamma0 * eta * (1 + a)) ** t * e0
            + eta * gamma1 ** 2 * G ** 2 * L / (4 * mu * gamma0 * (1 + a)))


def excess_risk_bound(n, mu, L, rho, G, eta, gamma0=1.0, gamma1=1.0, t=np.inf, e0=0.0):
    """Theorems 11, 18 and Table 1: `eps_gen` bound plus the noise-ball bound at step `t` (`t=inf`: the limit)."""
    opt = noise_ball_bound(t, e0, mu, L, rho, G, eta, gamma0, gamma1) if np.isfinite(t) else \
        noise_ball_bound(1, 0.0, mu, L, rho, G, eta, gamma0, gamma1)
    return stability_bound(n, mu, L, rho, G, gamma1) + opt


def assumption3_margin(lam_min, mu, rho, G, gamma0):
    """Assumption 3 holds iff this is >= 0: `sigma_min(H_t) - (G/rho)(1-gamma0)/gamma0 - mu/gamma0`."""
    return lam_min - (G / rho) * (1 - gamma0) / gamma0 - mu / gamma0


# %%
test_close(sam_lr_max(1., 3., 0., 1., 2.), sgd_lr_max(1., 3.), eps=1e-15)
test_close(stability_bound(10, 1., 1., 0., 2.), 2 * 4 * 2 / 10, eps=1e-15)
test_close(noise_ball_bound(0, 5., 1., 2., .1, 1., .1), 5. + .1 * 2 / (4 * 1.1), eps=1e-12)
test_close(excess_risk_bound(10, 1., 2., .1, 1., .1),
           stability_bound(10, 1., 2., .1, 1.) + noise_ball_bound(1, 0., 1., 2., .1, 1., .1), eps=1e-15)


# %% [markdown]
# Corrections found by the audit (derived in [theory_audit](01c_theory_audit.ipynb)): without
# Assumption 3, the renormalised step $\eta\gamma_t$ contracts by $1-\gamma_0(1+a)\eta\mu L/(\mu+L)$
# only, which multiplies Theorem 15's bound by $1/\gamma_0$; and the recursions of Theorems 10 and 17
# need a non-negative factor, $2\mu\gamma_0\eta(1+a) \le 1$.

# %%
#| export
def stablesam_contraction_corrected(mu, L, rho, G, eta, gamma0):
    """Lemmas 13-14 without Assumption 3: `1 - gamma0 (1 + mu rho/G) eta mu L/(mu+L)`."""
    return 1 - gamma0 * (1 + mu * rho / G) * eta * mu * L / (mu + L)


def stability_bound_corrected(n, mu, L, rho, G, gamma0, gamma1):
    """Theorem 15 without Assumption 3: `2 (gamma1/gamma0) G^2 (mu+L) / (n mu L (1 + mu rho/G))`."""
    return stability_bound(n, mu, L, rho, G, gamma1 / gamma0)


def noise_ball_lr_max(mu, rho, G, gamma0=1.0):
    """Theorems 10 and 17 need `eta <= 1 / (2 mu gamma0 (1 + mu rho/G))` (factor in [0, 1])."""
    return 1.0 / (2 * mu * gamma0 * (1 + mu * rho / G))


# %% [markdown]
# ## SAM and StableSAM in closed form
#
# For a quadratic example the gradient at the ascent point is exact:
# $\nabla f(\mathbf w + \mathbf e) = \mathbf g + \mathbf H\mathbf e$ with $\mathbf g = \mathbf H(\mathbf w -
# \mathbf c)$. Algorithm 1 takes $\mathbf e = \rho\,\mathbf g/\|\mathbf g\|$ (line 4; no perturbation
# when $\mathbf g = 0$), the surrogate gradient $\mathbf g^{asc} = \mathbf g + \mathbf H\mathbf e$
# (line 5), StableSAM rescales it by $\gamma_t = \|\mathbf g\|/\|\mathbf g^{asc}\|$ (line 6) and the
# base optimizer is plain SGD (line 7). The proofs analyse modified iterations, which `sam_direction`
# exposes explicitly:
#
# * `xi`: Assumption 1's ascent $\mathbf e = \xi_t\mathbf g$ with a step size $\xi_t$ **shared** by the
#   runs on $S$ and $S'$ (in Algorithm 1, $\xi_t = \rho/\|\mathbf g\|$ differs between them);
# * `gamma`: a renormalisation factor **shared** by both runs (Lemmas 13-14 write the same $\gamma_t$ in
#   both updates; Algorithm 1 computes one per run);
# * `gamma0`: Remark 19's clamp $\gamma_t = \min(\max(\|\mathbf g\|/\|\mathbf g^{asc}\|, \gamma_0), \sqrt{\gamma_0})$.

# %%
#| export
METHODS = ('sgd', 'sam', 'stablesam')


def sam_direction(H, c, w, rho, method='sam', *, xi=None, gamma=None, gamma0=None):
    """Update direction of one step, the ascent step length and the ratio `||g||/||g_asc||` (closed form)."""
    if method not in METHODS: raise ValueError(f"Invalid method: {method!r} (choose from {METHODS})")
    g = _mv(H, w - c)
    gn = np.linalg.norm(g, axis=-1)
    if method == 'sgd': return g, np.zeros_like(gn), np.ones_like(gn)
    rho = np.asarray(rho, float)[..., None]
    if xi is None: e = np.where(gn[..., None] > 0, rho * g / np.where(gn > 0, gn, 1.0)[..., None], 0.0)
    else: e = np.asarray(xi, float)[..., None] * g
    g_asc = g + _mv(H, e)
    an = np.linalg.norm(g_asc, axis=-1)
    ratio = np.where(an > 0, gn / np.where(an > 0, an, 1.0), 1.0)
    if method == 'sam': return g_asc, np.linalg.norm(e, axis=-1), ratio
    if gamma is not None: factor = np.broadcast_to(np.asarray(gamma, float), ratio.shape)
    elif gamma0 is not None: factor = np.clip(ratio, gamma0, np.sqrt(gamma0))
    else: factor = ratio
    return factor[..., None] * g_asc, np.linalg.norm(e, axis=-1), factor


# %%
H1, c1, w1 = np.array([[2.0]]), np.array([1.0]), np.array([3.0])
d_sam, e_len, r = sam_direction(H1, c1, w1, 0.5, 'sam')
test_close(d_sam, [2 * (3 + 0.5 - 1)], eps=1e-15)
test_close(e_len, 0.5, eps=1e-15)
d_st, _, r = sam_direction(H1, c1, w1, 0.5, 'stablesam')
test_close(np.abs(d_st), [4.0], eps=1e-15)    # ||g|| = 4 kept
test_close(r, 4 / 5, eps=1e-15)
test_close(sam_direction(H1, c1, w1, 0.5, 'sam', xi=0.25)[0], [4 * (1 + 0.25 * 2)], eps=1e-15)
test_eq(sam_direction(H1, c1, c1, 0.5, 'stablesam')[0], [0.0])       # zero gradient: no step, no NaN
test_close(sam_direction(H1, c1, w1, 0.5, 'stablesam', gamma0=0.9)[2], 0.9, eps=1e-15)
test_fail(lambda: sam_direction(H1, c1, w1, 0.5, 'adam'), contains="Invalid method")


# %% [markdown]
# `run` iterates a batch of instances and Monte Carlo paths at once. `idx[t]` holds the example each
# path uses at step `t` (batch size 1, sampled with replacement as in Hardt et al.; a full-batch run
# is `run(full_batch(q), ...)` with `idx=None`). It records the largest distance from `center` of
# the iterates and the longest ascent step (together they size the ball of $G$), the range of the renormalisation factors,
# and optionally the empirical risk at every step. With `share_factor=True` the batch holds the runs on
# $S$ in its first half and on $S'$ in its second, and StableSAM's factor $\gamma_t$ of the run on $S$
# is applied to both (Lemmas 13-14 write one $\gamma_t$ in both updates).

# %%
#| export
def run(q, w0, eta, rho, method='sam', *, T=None, idx=None, xi=None, gamma=None, gamma0=None,
        center=None, risk=None, share_factor=False):
    """Run SGD/SAM/StableSAM on a batch of quadratic problems; returns a dict of final iterates and diagnostics."""
    B = q.batch_shape
    w = np.array(w0, float)
    P = w.shape[len(B):-1]
    if idx is None:
        if T is None: raise ValueError("Invalid arguments: give T or idx")
        idx = np.zeros((T,) + B + P, int)
    T = len(idx)
    eta = np.broadcast_to(np.asarray(eta, float), B).reshape(B + (1,) * (len(P) + 1))
    rho_b = np.broadcast_to(np.asarray(rho, float), B).reshape(B + (1,) * len(P))
    bi = np.indices(B + P)[:len(B)]
    center = np.zeros(B + (q.d,)) if center is None else center
    cexp = center.reshape(B + (1,) * len(P) + (q.d,))
    far = np.linalg.norm(w - cexp, axis=-1)
    reach = np.zeros(B + P)
    fmin, fmax = np.full(B + P, np.inf), np.full(B + P, -np.inf)
    risks = [risk(w)] if risk is not None else None
    for t in range(T):
        H, c = q.H[(*bi, idx[t])], q.c[(*bi, idx[t])]
        step, e_len, factor = sam_direction(H, c, w, rho_b, 'sam' if share_factor else method,
                                            xi=None if xi is None else xi[t],
                                            gamma=None if gamma is None else gamma[t], gamma0=gamma0)
        if share_factor:   # one StableSAM factor, the first half's, for both halves of the batch
            if gamma0 is not None: factor = np.clip(factor, gamma0, np.sqrt(gamma0))
            half = len(factor) // 2
            factor = np.concatenate([factor[:half], factor[:half]])
            step = factor[..., None] * step
        reach = np.maximum(reach, e_len)
        fmin, fmax = np.minimum(fmin, factor), np.maximum(fmax, factor)
        w = w - eta * step
        far = np.maximum(far, np.linalg.norm(w - cexp, axis=-1))
        if risk is not None: risks.append(risk(w))
    ax = tuple(range(len(B), len(B) + len(P)))
    out = dict(w=w, radius=far.max(ax) if ax else far, reach=reach.max(ax) if ax else reach,
               factor_min=fmin.min(ax) if ax else fmin, factor_max=fmax.max(ax) if ax else fmax)
    if risk is not None: out['risk'] = np.stack(risks)
    return out


# %%
# full-batch gradient descent (rho = 0) on a well-conditioned problem converges to w*
qb = random_quadratics(4, 3, 1.0, 2.0, batch=(2,), seed=2)
fb = full_batch(qb)
out = run(fb, np.zeros((2, 1, 3)), 0.5, 0.0, 'sgd', T=200, center=fb.c[:, 0])
test_close(out['w'][:, 0], empirical_minimizer(qb), eps=1e-9)
# StableSAM never moves further than GD in one step (the factor keeps ||step|| = ||g||)
o1 = run(fb, np.ones((2, 5, 3)), 0.1, 0.3, 'stablesam', T=1)
o0 = run(fb, np.ones((2, 5, 3)), 0.1, 0.3, 'sgd', T=1)
test_close(np.linalg.norm(o1['w'] - 1, axis=-1), np.linalg.norm(o0['w'] - 1, axis=-1), eps=1e-12)
assert np.all(o1['factor_max'] < 1)   # same-batch quadratics: ||g_asc|| > ||g||, so gamma_t < 1

# shared factor: both halves take the first half's StableSAM factor
two = Quadratics(np.concatenate([fb.H, fb.H]), np.concatenate([fb.c, fb.c + 1]))
o2 = run(two, np.ones((4, 3, 3)), 0.1, 0.3, 'stablesam', T=3, share_factor=True)
o1 = run(fb, np.ones((2, 3, 3)), 0.1, 0.3, 'stablesam', T=3)
test_close(o2['w'][:2], o1['w'], eps=1e-12)
test_eq(o2['factor_min'][2:], o2['factor_min'][:2])


# %% [markdown]
# `run_all_sequences` is the exact-path helper: `run` on every one of the $n^T$ sampling sequences
# of batch size one (all with probability $n^{-T}$), so a mean over the path axis is the exact
# expectation over the sampling. The audit's smallest counterexamples use it instead of Monte Carlo paths.

# %%
#| export
def all_sequences(n, T):
    """Every sampling sequence of `T` steps over `n` examples: an index array of shape `(T, n**T)`."""
    return (np.arange(n ** T)[None, :] // n ** np.arange(T)[:, None]) % n


def run_all_sequences(q, w0, eta, rho, method='sam', *, T, **kwargs):
    """`run` from `w0` (shape `batch + (d,)`) on all `n**T` sampling sequences: the path axis is exact."""
    S = q.n ** T
    idx = np.broadcast_to(all_sequences(q.n, T).reshape((T,) + (1,) * len(q.batch_shape) + (S,)),
                          (T,) + q.batch_shape + (S,))
    w = np.broadcast_to(np.asarray(w0, float)[..., None, :], q.batch_shape + (S, q.d))
    return run(q, w, eta, rho, method, idx=idx, **kwargs)


# %%
test_eq(all_sequences(2, 3).T.tolist(),
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
# the exact expectation of one SGD step on two examples is the full-batch step
q2e = random_quadratics(2, 2, 0.5, 2.0, batch=(3,), seed=4)
ex = run_all_sequences(q2e, np.ones((3, 2)), 0.3, 0.0, 'sgd', T=1)
fb2 = full_batch(q2e)
test_close(ex['w'].mean(-2), run(fb2, np.ones((3, 1, 2)), 0.3, 0.0, 'sgd', T=1)['w'][:, 0], eps=1e-12)
