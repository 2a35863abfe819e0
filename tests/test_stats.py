"""Known-answer and property tests of gpu_engine.stats (effective trials, Sharpe SEs, DSR, MinTRL, SPA)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpu_engine import stats as S
from gpu_engine import validation

# Worked example of López de Prado, Lipton & Zoonekynd (2026) "How to Use the Sharpe Ratio"
# (hedge-fund returns; the numbers of their replication code's tests, github.com/zoonek/2025-sharpe-ratio
# functions.py): monthly mean 0.036, std 0.079, skew -2.448, kurtosis 10.164 (non-excess), T = 24.
EX_SR = 0.036 / 0.079
EX_SKEW, EX_KURT, EX_T = -2.448, 10.164, 24


def _blocks(rng, sizes, B, noise=0.0):
    base = rng.standard_normal((len(sizes), B))
    X = np.repeat(base, sizes, axis=0)
    # positive affine maps of a series leave its correlations unchanged
    X = X * rng.uniform(0.5, 2.0, (X.shape[0], 1)) + rng.uniform(-1, 1, (X.shape[0], 1))
    return X + noise * rng.standard_normal(X.shape)


# ---------------------------------------------------------------- effective number of trials

@pytest.mark.parametrize("N,B", [(20, 500), (50, 2000)])
def test_independent_series_give_about_n(N, B):
    # N << B: sample-correlation eigenvalues spread only by ~sqrt(N/B) (Marchenko-Pastur), and the
    # entropy rank is then ~ N exp(-N / 2B) (>= 0.97 N here); tolerance 10%.
    X = np.random.default_rng(0).standard_normal((N, B))
    ne = S.n_effective(X)
    assert 0.9 * N <= ne <= N


def test_rank_cap_when_buckets_fewer_than_configs():
    # N = 200 independent configurations but only B = 64 buckets: the correlation matrix has rank
    # <= B - 1 = 63, so n_effective <= 63 whatever the configurations are (documented cap).
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 64))
    lam, n = S.correlation_eigenvalues(X)
    assert n == 200 and lam.size == 64 and lam[-1] < 1e-9  # one direction lost to centring
    for method in S.N_EFF_METHODS:
        if method in ("nyholt", "li_ji"):  # not rank-bounded (Li & Ji: up to 2 x rank)
            continue
        ne = S.n_effective(X, method)
        assert 1.0 <= ne <= 63.0 + 1e-9, method
    assert S.n_effective(X) > 0.6 * 63
    assert S.summary(X, spa_top=50, spa_reps=100)["n_effective_cap"] == 63


@pytest.mark.parametrize("method", S.N_EFF_METHODS)
def test_copies_of_one_series_give_one(method):
    rng = np.random.default_rng(2)
    X = _blocks(rng, [40], 64)
    X[::3] *= -1.0  # perfectly anti-correlated copies are the same trial too
    assert S.n_effective(X, method) == pytest.approx(1.0, abs=1e-9)


def test_equal_blocks_of_copies():
    rng = np.random.default_rng(3)
    # two blocks of 25 perfect copies; the two base series have sample correlation ~ 1/sqrt(B)
    assert S.n_effective(_blocks(rng, [25, 25], 64)) == pytest.approx(2.0, abs=0.05)
    assert S.n_effective(_blocks(rng, [10, 10, 10, 10, 10], 2000)) == pytest.approx(5.0, abs=0.05)
    # unequal blocks count for less than 2 under the entropy rank (p = 0.25, 0.75)
    ne = S.n_effective(_blocks(rng, [10, 30], 5000))
    assert ne == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))), abs=0.02)
    # Li & Ji counts whole eigenvalues: exactly 2 for uncorrelated blocks
    assert S.n_effective_from_eigenvalues(np.array([10.0, 30.0]), 40, "li_ji") == 2.0


@pytest.mark.parametrize("N,B", [(150, 40), (30, 90)])
def test_gram_trick_matches_full_correlation_matrix(N, B):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((N, B)) @ rng.standard_normal((B, B)) * 0.3 + rng.standard_normal((N, 1))
    X = X + 0.5 * rng.standard_normal((1, B))  # common factor -> correlated rows
    full = np.clip(np.linalg.eigvalsh(np.corrcoef(X)), 0, None)
    lam, n = S.correlation_eigenvalues(X, chunk=17)  # small chunk exercises the accumulation
    assert n == N
    np.testing.assert_allclose(np.sort(lam)[::-1], np.sort(full)[::-1][:lam.size], atol=1e-8)
    assert np.sort(full)[::-1][lam.size:].max(initial=0.0) < 1e-8
    for method in S.N_EFF_METHODS:
        assert S.n_effective(X, method) == pytest.approx(
            S.n_effective_from_eigenvalues(full, N, method), rel=1e-9, abs=1e-9), method


def test_unusable_rows_are_dropped():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 200))
    ne = S.n_effective(X)
    bad = np.vstack([X, np.full((2, 200), np.nan), np.zeros((3, 200)), np.full((1, 200), 7.0)])
    bad[30, 5] = 1.0  # a partly-NaN row
    assert S.n_effective(bad) == pytest.approx(ne, rel=1e-12)
    assert math.isnan(S.n_effective(np.full((4, 10), np.nan)))
    assert S.n_effective(X[:1]) == 1.0


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(2, 12)),
                  elements=st.floats(-1e3, 1e3, allow_nan=False, width=32)),
       st.sampled_from(S.N_EFF_METHODS))
def test_n_effective_in_range_on_arbitrary_arrays(X, method):
    ne = S.n_effective(X, method)
    n = int(S.usable_rows(X).sum())
    if n == 0:
        assert math.isnan(ne)
    else:
        assert 1.0 <= ne <= n


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 80), st.integers(3, 60), st.floats(0.0, 3.0))
def test_entropy_n_effective_bounded_by_rank(seed, N, B, factor):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, B)) + factor * rng.standard_normal((N, 1)) * rng.standard_normal((1, B))
    ne = S.n_effective(X)
    assert 1.0 <= ne <= min(N, B - 1) + 1e-9


# ---------------------------------------------------------------- deflated Sharpe

@pytest.mark.parametrize("n", [2, 10, 24576])
def test_expected_max_sharpe_matches_validation_at_integers(n):
    assert S.expected_max_sharpe(n, 0.02) == validation.expected_max_sharpe(n, 0.02)
    assert S.expected_max_sharpe(float(n), 0.02) == validation.expected_max_sharpe(n, 0.02)


def test_expected_max_sharpe_real_n_is_monotone():
    ns = np.linspace(1.0, 50.0, 200)
    v = [S.expected_max_sharpe(n, 0.01) for n in ns]
    assert v[0] == 0.0 and np.all(np.diff(v) >= 0)


@settings(max_examples=100, deadline=None)
@given(st.floats(-0.5, 1.5), st.integers(10, 500), st.floats(-1.0, 1.0), st.floats(2.0, 8.0),
       st.floats(1.0, 1e5), st.floats(1.0, 1e5), st.floats(1e-4, 0.1))
def test_dsr_with_fewer_trials_is_not_smaller(sr, T, skew, kurt, n_a, n_b, var):
    n_eff, n_trials = min(n_a, n_b), max(n_a, n_b)
    d_eff = S.deflated_sharpe(sr, T, skew, kurt, n_eff, var)
    d_all = S.deflated_sharpe(sr, T, skew, kurt, n_trials, var)
    if math.isnan(d_eff) or math.isnan(d_all):  # PSR undefined when its variance term is <= 0
        return
    assert d_eff >= d_all - 1e-15


def test_dsr_equals_validation_deflated_sharpe():
    rng = np.random.default_rng(6)
    M = rng.standard_normal((64, 300)) * 0.01  # validation's [T, N] layout
    ref = validation.deflated_sharpe_of_search(M)
    r = M[:, int(np.argmax(validation.sharpe(M, axis=0)))]
    sr, sk, ku = S._moments(r)
    assert S.deflated_sharpe(sr, 64, sk, ku, 300, ref.sr_variance) == pytest.approx(ref.dsr, rel=1e-12)


# ---------------------------------------------------------------- Sharpe standard errors

@pytest.mark.parametrize("sr,T", [(0.0, 10), (0.3, 64), (-1.2, 250)])
def test_mertens_normal_reduces_to_lo_iid(sr, T):
    assert S.sharpe_se(sr, T) == pytest.approx(math.sqrt((1 + sr * sr / 2) / T), rel=1e-14)
    assert S.sharpe_se(sr, T, 0.0, 3.0, 0.0) == pytest.approx(math.sqrt((1 + sr * sr / 2) / T), rel=1e-14)


def test_mertens_form_as_written_in_mertens_2002():
    sr, T, g3, g4 = 0.4, 100, -0.7, 6.5
    v = (1 + sr * sr / 2 - g3 * sr + (g4 - 3) / 4 * sr * sr) / T
    assert S.sharpe_variance(sr, T, g3, g4) == pytest.approx(v, rel=1e-14)


def test_worked_example_lpz_2026():
    # By hand: SR = 0.455696, SR^2 = 0.207659.
    # normal: (1 + 0.207659/2)/24 = 0.045993 -> SE 0.2145 (paper: 0.214)
    assert round(S.sharpe_se(EX_SR, EX_T), 3) == 0.214
    # non-normal: (1 + 2.448 * 0.455696 + 9.164/4 * 0.207659)/24 = 2.591291/24 -> SE 0.3286 (paper: 0.329)
    assert round(S.sharpe_se(EX_SR, EX_T, EX_SKEW, EX_KURT), 3) == 0.329
    # MinTRL, their convention (variance under H0: SR* = 0 -> 1): (1.644854/0.455696)^2 = 13.029
    assert round(S.min_track_record_length(EX_SR, 0.0, EX_SKEW, EX_KURT, 0.05, convention="lpz2026"), 3) == 13.029
    # Bailey & López de Prado (2012) convention: 1 + 2.591291 * 13.0288 = 34.761
    assert S.min_track_record_length(EX_SR, 0.0, EX_SKEW, EX_KURT, 0.05) == pytest.approx(34.761, abs=1e-3)


def test_min_trl_is_where_psr_reaches_confidence():
    sr, sr_star, g3, g4, alpha = 0.25, 0.05, -0.5, 5.0, 0.05
    T = S.min_track_record_length(sr, sr_star, g3, g4, alpha)
    # validation.psr uses sqrt(T - 1) and the variance at the observed SR: exactly 1 - alpha at MinTRL
    assert validation.psr(sr, sr_star, T, g3, g4) == pytest.approx(1 - alpha, abs=1e-12)
    assert S.min_track_record_length(0.1, 0.1) == math.inf
    assert S.min_track_record_length(-0.2, 0.0) == math.inf


def test_ar1_variance_is_gaussian_delta_method():
    # For Gaussian AR(1): Var(SR) = [(1+rho)/(1-rho) + SR^2/2 (1+rho^2)/(1-rho^2)] / T
    sr, T, rho = 0.3, 100, 0.4
    v = ((1 + rho) / (1 - rho) + sr * sr / 2 * (1 + rho * rho) / (1 - rho * rho)) / T
    assert S.sharpe_variance(sr, T, 0.0, 3.0, rho) == pytest.approx(v, rel=1e-14)
    assert S.sharpe_variance(sr, T, -0.6, 7.0, 0.0) == S.sharpe_variance(sr, T, -0.6, 7.0)
    assert math.isnan(S.sharpe_variance(sr, T, rho=1.0))


def test_hac_se_without_lags_is_mertens_with_sample_moments():
    r = np.random.default_rng(7).standard_t(5, 200) * 0.01 + 0.002
    sr_pop = r.mean() / r.std()
    _, sk, ku = S._moments(r)
    assert S.sharpe_se_hac(r, lags=0) == pytest.approx(S.sharpe_se(sr_pop, r.size, sk, ku), rel=1e-10)


def test_hac_se_tracks_ar1_formula_on_a_long_series():
    rng = np.random.default_rng(8)
    T, rho = 20000, 0.5
    e = rng.standard_normal(T)
    x = np.empty(T)
    x[0] = e[0]
    for t in range(1, T):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho * rho) * e[t]
    r = x + 0.1
    sr = float(validation.sharpe(r))
    se_ar1 = S.sharpe_se(sr, T, 0.0, 3.0, rho)
    assert S.sharpe_se_hac(r, lags=60) == pytest.approx(se_ar1, rel=0.15)
    assert se_ar1 > 1.5 * S.sharpe_se(sr, T)  # positive autocorrelation widens the SE (sqrt(3) here)


def test_lo_eta():
    assert S.lo_eta(12, 0.0) == pytest.approx(math.sqrt(12))
    assert S.lo_eta(2, 0.5) == pytest.approx(2 / math.sqrt(3))  # 2 / sqrt(2 + 2 * 1 * 0.5)
    rho, q = 0.3, 12
    assert S.lo_eta(q, rho) == pytest.approx(S.lo_eta(q, rho ** np.arange(1, q)))
    # closed form for AR(1): q / sqrt(q + 2 rho/(1-rho) (q - (1 - rho^q)/(1 - rho)))
    closed = q / math.sqrt(q + 2 * rho / (1 - rho) * (q - (1 - rho ** q) / (1 - rho)))
    assert S.lo_eta(q, rho) == pytest.approx(closed, rel=1e-12)


# ---------------------------------------------------------------- SPA

def test_spa_strong_mean_small_pvalue_noise_large():
    rng = np.random.default_rng(9)
    noise = rng.standard_normal((50, 64))
    p_noise = S.spa_test(noise, reps=500, seed=1)
    assert p_noise["consistent"] > 0.2 and p_noise["n_models"] == 50 and not p_noise["preselected"]
    strong = noise.copy()
    strong[17] += 1.0  # per-bucket Sharpe ~1, t ~ 8
    p = S.spa_test(strong, reps=500, seed=1)
    assert p["consistent"] < 0.01 and p["lower"] <= p["consistent"] <= p["upper"]


def test_spa_is_reproducible_and_preselects():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((300, 64))
    a = S.spa_test(X, top=40, reps=300, seed=3)
    b = S.spa_test(X, top=40, reps=300, seed=3)
    assert a == b and a["n_models"] == 40 and a["preselected"]
    X[5] = np.nan
    assert S.spa_test(X, top=None, reps=100, seed=3)["n_models"] == 299
    assert math.isnan(S.spa_test(np.zeros((3, 8)))["consistent"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 60), B=st.integers(3, 40),
       shift=st.floats(-0.5, 0.5), boot=st.sampled_from(["stationary", "circular", "mbb"]))
def test_spa_pvalues_equal_arch_compute(seed, k, B, shift, boot):
    """stats.spa_pvalues (each draw reduced at once) gives arch's own SPA.compute p-values."""
    from arch.bootstrap import SPA

    rng = np.random.default_rng(seed)
    R = rng.standard_normal((B, k)) * rng.uniform(0.1, 2.0, k) + shift * rng.standard_normal(k)
    if k > 2:
        R[:, 1] = R[:, 0]  # copies and ties in the maximum
    make = lambda: SPA(np.zeros(B), -R, reps=97, bootstrap=boot,  # noqa: E731
                       seed=np.random.default_rng(seed % 1000))
    ref = make()
    ref.compute()
    pv = ref.pvalues
    assert S.spa_pvalues(make()) == (float(pv["lower"]), float(pv["consistent"]), float(pv["upper"]))


def test_spa_memory_does_not_grow_with_reps():
    """5,000 models x 1,000 draws: arch's compute holds [k, reps, 3] float64 twice (240 MB);
    spa_test holds one draw's resample (2.5 MB) and the draws' maxima."""
    import tracemalloc

    X = np.random.default_rng(2).standard_normal((5_000, 64))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        S.spa_test(X, reps=200, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2 ** 20, peak / 2 ** 20


# ---------------------------------------------------------------- summary

def test_summary_is_json_and_consistent():
    rng = np.random.default_rng(11)
    X = _blocks(rng, [40] * 5, 64, noise=0.3) * 0.01
    X[123] += 0.01  # the one real edge
    X[3, :4] = np.nan  # too few trades
    X[4] = 0.0  # never traded
    s = S.summary(X, spa_top=100, spa_reps=300, seed=0)
    json.dumps(s, allow_nan=False)
    assert all(v is None or type(v) in (int, float, bool, str) for v in s.values())
    assert s["n_trials"] == 200 and s["n_usable"] == 198 and s["n_buckets"] == 64
    assert s["best_index"] == 123
    assert 1.0 <= s["n_effective"] < 10  # five noisy blocks
    assert s["dsr_n_effective"] >= s["dsr_n_trials"]
    assert s["sr0_n_effective"] <= s["sr0_n_trials"]
    assert s["sharpe_se_iid"] == pytest.approx(math.sqrt((1 + s["best_sharpe"] ** 2 / 2) / 64))
    assert s["spa_pvalue_consistent"] < 0.05 and s["spa_n_models"] == 100
    assert s["min_trl"] > 1


def test_summary_without_usable_rows():
    s = S.summary(np.full((5, 16), np.nan))
    json.dumps(s, allow_nan=False)
    assert s["n_trials"] == 5 and s["n_usable"] == 0 and s["n_effective"] is None and s["best_index"] is None


# ------------------------------------------------------------------ wired into sweeps.inspect

def test_inspect_trial_stats_counts_copies_once_and_keeps_the_number_tried():
    from sweeps import inspect

    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, (64, 6))  # 6 independent series over 64 buckets
    U = np.unique(np.repeat(base, 50, axis=1), axis=1)  # 300 configurations, 6 distinct series
    s = inspect.trial_stats(U, n_tried=300)
    assert s["n_trials"] == 300 and s["n_distinct"] == 6 and s["n_series_used"] == 6
    assert 4.0 < s["n_effective"] <= 6.0
    assert s["dsr_n_effective"] >= s["dsr_n_trials"]  # fewer effective trials: a milder deflation
    assert s["spa_n_models"] == 6 and 0.0 <= s["spa_pvalue_consistent"] <= 1.0
    st = {"stats": s}
    lines = inspect.stats_lines(st)
    assert len(lines) == 3 and "of 300 tried (6 distinct" in lines[0] and "Hansen SPA" in lines[2]
    assert "SPA p=" in inspect.evidence(st) and "N=300" in inspect.evidence(st)
    json.dumps(inspect.stats_attrs(st), allow_nan=False)


def test_inspect_trial_stats_subsamples_at_random_never_the_top():
    from sweeps import inspect

    rng = np.random.default_rng(6)
    U = rng.normal(0, 1, (16, 40))
    U[:, 0] += 3.0  # an outstanding series
    old = inspect.MAX_SPA_CONFIGS
    inspect.MAX_SPA_CONFIGS = 10
    try:
        s = inspect.trial_stats(U, n_tried=40)
    finally:
        inspect.MAX_SPA_CONFIGS = old
    assert s["n_series_used"] == 10 and s["n_distinct"] == 40 and s["spa_preselected"] is False
