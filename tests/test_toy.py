"Reference equivalence, edge cases and bad input for stablesam.toy (Figure 4)."
import warnings

import matplotlib
matplotlib.use("Agg")
import numpy as np
import pytest

from stablesam.toy import (METHODS, OUTCOMES, claims, claims_markdown, figure4, final_points, outcome_shares,
                           plain_run, reached_minimum, sample_starts, success_rates, sweep)

RHO = {"gd": 0.0, "sam": 0.5, "stablesam": 0.5, "usam": 0.2, "stableusam": 0.2}


def _plain(method, starts, lrs, rho, steps, dtype):
    return np.array([[plain_run(method, s, lr, rho, steps, dtype) for s in starts] for lr in lrs])


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype,n,steps", [(np.float64, 40, 401), (np.float32, 12, 400)])
def test_kernel_gives_the_plain_loops_bits(method, dtype, n, steps):
    "Lanes, refilling, chunks and threads change nothing: the kernel's final points are the plain loop's, bit for bit."
    starts, lrs = sample_starts(n, seed=3), [0.002, 0.04, 0.12, 0.3]
    want = _plain(method, starts, lrs, RHO[method], steps, dtype)
    fin = np.isfinite(want).all(-1)
    for kw in (dict(threads=1), dict(threads=2, block=3, width=5, chunk=37),
               dict(threads=3, block=8, width=64, period=5)):
        got = np.stack(final_points(method, starts, lrs, RHO[method], steps, dtype=dtype, **kw), -1)
        np.testing.assert_array_equal(np.isfinite(got).all(-1), fin)
        np.testing.assert_array_equal(got[fin], want[fin])


@pytest.mark.parametrize("method", ["gd", "sam", "stablesam"])
def test_success_rates_equal_the_plain_loop(method):
    "A few hundred runs at the default 1000 steps: the rates equal the plain loop's share of successes."
    lrs, n, rho = [0.003, 0.03, 0.25], 80, 0.2
    plain = _plain(method, sample_starts(n, seed=5), lrs, rho, 1000, np.float64)
    want = reached_minimum(*np.moveaxis(plain, -1, 0)).mean(1)
    got = success_rates(method, lrs, rho, n_starts=n, seed=5, dtype=np.float64, progress=False)
    np.testing.assert_array_equal(got, want)


def test_float32_rates_match_float64_within_noise():
    "float32 changes single chaotic SAM runs, not the rates beyond sampling noise."
    lrs, n = np.geomspace(0.01, 0.3, 8), 400
    for m in ("gd", "sam", "stablesam"):
        a = success_rates(m, lrs, 0.2, n_starts=n, progress=False)
        b = success_rates(m, lrs, 0.2, n_starts=n, dtype=np.float64, progress=False)
        assert np.all(np.abs(a - b) <= 4 * np.sqrt(np.maximum(b * (1 - b), 1 / n) / n) + 1e-12), (m, a, b)


def test_deterministic_and_independent_of_threads():
    lrs = [0.01, 0.2]
    r = [success_rates("stablesam", lrs, 0.5, n_starts=300, steps=200, threads=t, progress=False) for t in (1, 2, 3)]
    np.testing.assert_array_equal(r[0], r[1])
    np.testing.assert_array_equal(r[0], r[2])
    other_seed = success_rates("stablesam", lrs, 0.5, n_starts=300, steps=200, seed=1, progress=False)
    assert not np.array_equal(r[0], other_seed)


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 7])
def test_few_steps(steps):
    starts = np.array([[1.0, 1.0], [1.5, -0.5], [-1.02, -1.0]])
    for period in (1, 2, 4):
        got = np.stack(final_points("sam", starts, [0.1], 0.2, steps, dtype=np.float64, block=5, period=period), -1)[0]
        np.testing.assert_array_equal(got, [plain_run("sam", s, 0.1, 0.2, steps) for s in starts])


def test_cycles_leave_with_the_right_final_point():
    "Runs on long exact cycles (SAM, rho = 0.2, large lr) leave early and still end where the plain loop ends."
    starts, lrs = sample_starts(30, seed=7), [0.05, 0.3]
    for steps in (600, 601, 603):
        want = _plain("sam", starts, lrs, 0.2, steps, np.float32)
        got = np.stack(final_points("sam", starts, lrs, 0.2, steps, period=16, block=20), -1)
        np.testing.assert_array_equal(got, want)


def test_overflow_is_silent_failure():
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a RuntimeWarning from any thread would raise
        for m in METHODS:
            np.testing.assert_array_equal(success_rates(m, [3.0, 10.0], 0.5, n_starts=200, progress=False), [0.0, 0.0])
        assert not np.isfinite(plain_run("sam", (2.0, -2.0), 10.0, 0.5, 50)[0])


def test_zero_gradient_means_no_perturbation():
    "At a critical point every method stays put (e = 0 when ||g|| = 0)."
    for m in METHODS:
        for p in [(1.0, 1.0), (-1.0, -1.0), (0.0, 0.0)]:
            assert plain_run(m, p, 0.1, 0.5, 10) == p
            np.testing.assert_array_equal(np.stack(final_points(m, [p], [0.1], 0.5, 10), -1)[0, 0], p)


@pytest.mark.parametrize("call,msg", [
    (lambda: success_rates("adam", [0.1], 0.1), "Invalid method: 'adam'"),
    (lambda: success_rates("sam", [0.1, 0.0], 0.1), "Invalid lrs: [0.]"),
    (lambda: success_rates("sam", [np.inf], 0.1), "Invalid lrs: [inf]"),
    (lambda: success_rates("sam", [0.1], -1), "Invalid rho: -1"),
    (lambda: success_rates("sam", [0.1], 0.1, steps=2.5), "Invalid steps: 2.5"),
    (lambda: success_rates("sam", [0.1], 0.1, tol=-0.1), "Invalid tol: -0.1"),
    (lambda: success_rates("sam", [0.1], 0.1, n_starts=0), "Invalid n_starts: 0"),
    (lambda: success_rates("sam", [0.1], 0.1, steps=2**31), "Invalid steps: 2147483648"),
    (lambda: final_points("sam", [[0, 0]], [0.1], 0.1, block=1), "Invalid block/width/period/chunk: 1/128/2/65536"),
    (lambda: final_points("sam", [[0, 0]], [0.1], 0.1, period=0), "Invalid block/width/period/chunk: 64/128/0/65536"),
    (lambda: final_points("sam", [[0, 0]], [0.1], 0.1, chunk=0), "Invalid block/width/period/chunk: 64/128/2/0"),
    (lambda: final_points("sam", [[0, 0]], [0.1], 0.1, dtype=np.int32), "Invalid dtype"),
    (lambda: sweep(("gd", "lion"), (0.1,), [0.1]), "Invalid method: 'lion'"),
])
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=None) as e:
        call()
    assert msg in str(e.value)


def test_figure4_small_and_from_rates():
    fig, rates = figure4(rhos=(0.1, 0.3), lrs=[0.01, 0.1], n_starts=50, steps=50, progress=False)
    assert len(fig.axes) == 3 and rates["sam"].shape == (2, 2) and rates["rhos"] == (0.1, 0.3)
    np.testing.assert_array_equal(rates["gd"][0], rates["gd"][1])
    fig2, again = figure4(rates=rates)
    assert again is rates and len(fig2.axes) == 3


def _synthetic(lrs, sam_tail, stable_tail, gd_small):
    "Rates with a chosen shape: GD/SAM/StableSAM curves that plateau, with given large-lr and small-lr values."
    rise = np.clip((np.log(lrs) - np.log(lrs[0])) / (np.log(0.01) - np.log(lrs[0])), 0, 1)
    base = gd_small + (0.99 - gd_small) * rise
    big = lrs >= 0.1
    sam = np.where(big, sam_tail, 0.9 * base)
    st = 0.9 * base
    st[big] = stable_tail
    return dict(lrs=lrs, rhos=(0.2,), n_starts=10_000, gd=base[None], sam=sam[None], stablesam=st[None])


def test_claims_can_pass_and_fail():
    lrs = np.geomspace(1e-3, 0.3, 60)
    good = {r["claim"]: r["verdict"] for r in claims(_synthetic(lrs, sam_tail=0.05, stable_tail=0.88, gd_small=0.05))}
    assert set(good.values()) == {"supported"}, good
    bad_tail = np.linspace(0.9, 0.2, (lrs >= 0.1).sum())
    worse = _synthetic(lrs, sam_tail=0.89, stable_tail=bad_tail, gd_small=0.99)
    worse["sam"][0, :5] = 1.0                      # SAM above GD at the smallest learning rates
    bad = [r["verdict"] for r in claims(worse)]
    assert bad == ["not at every lr", "not supported", "not supported", "not for every curve"], bad
    assert claims_markdown(claims(_synthetic(lrs, 0.05, 0.88, 0.05))).count("\n") == 5


def test_outcome_shares_sum_to_one():
    x1, x2 = final_points("sam", sample_starts(300), [0.001, 0.05, 0.3], 0.5, 300)
    sh = outcome_shares(x1, x2)
    np.testing.assert_allclose(sum(sh[k] for k in OUTCOMES), 1.0)
    np.testing.assert_array_equal(sh["minimum"], reached_minimum(x1, x2).mean(1))


def test_figure4_into_given_axes():
    import matplotlib.pyplot as plt
    rates = sweep(("gd", "sam"), (0.1,), [0.01, 0.1], n_starts=20, steps=20, progress=False)
    fig, axs = plt.subplots(2, 1)
    got, _ = figure4(rates=rates, axs=axs)
    assert got is fig and axs[1].get_title().endswith("$\\rho = 0.1$")
    with pytest.raises(ValueError, match="Invalid axs: 3 axes for 1 rhos"):
        figure4(rates=rates, axs=plt.subplots(1, 3)[1])
    plt.close("all")


def test_several_radii_in_one_sweep_equal_separate_runs():
    starts, lrs, rhos = sample_starts(50, seed=2), [0.01, 0.1, 0.3], [0.05, 0.5]
    for m in ("sam", "stableusam"):
        together = np.stack(final_points(m, starts, lrs, rhos, 300), -1)
        assert together.shape == (2, 3, 50, 2)
        for i, r in enumerate(rhos):
            np.testing.assert_array_equal(together[i], np.stack(final_points(m, starts, lrs, r, 300), -1))
