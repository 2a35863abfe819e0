"""Validation statistics against hand-worked examples from their definitions, plus a null test."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gpu_engine import validation as V
from gpu_engine.data.books.store import Book


# ------------------------------------------------------------------ PBO

def test_pbo_sharpe_hand_example():
    # T = 4 rows, S = 2 blocks of 2 rows; Sharpe = mean / std(ddof=1) of 2 rows.
    # A = [2, 4 | -1, -3]: block0 mean 3, std sqrt2 -> 2.1213; block1 mean -2, std sqrt2 -> -1.4142
    # B = [1, 3 |  2,  3]: block0 mean 2, std sqrt2 -> 1.4142; block1 mean 2.5, std 1/sqrt2 -> 3.5355
    # C = [0, 2 |  1,  2]: block0 mean 1, std sqrt2 -> 0.7071; block1 mean 1.5, std 1/sqrt2 -> 2.1213
    # c1: train block0 -> n* = A; test block1: A is worst, rank 1 -> omega 1/4, lambda = ln(1/3) < 0
    # c2: train block1 -> n* = B; test block0: B is rank 2 of 3 -> omega 2/4, lambda = 0 (counts)
    M = np.array([[2, 1, 0], [4, 3, 2], [-1, 2, 1], [-3, 3, 2]], dtype=float)
    r = V.pbo(M, n_splits=2)
    assert r.n_combinations == 2 and r.n_configs == 3
    assert r.pbo == 1.0
    np.testing.assert_allclose(sorted(r.logits), [math.log(1 / 3), 0.0], atol=1e-12)
    # in-sample best statistic: A on block0 (3/sqrt2) and B on block1 (2.5*sqrt2)
    np.testing.assert_allclose(sorted(r.is_best), sorted([3 / math.sqrt(2), 2.5 * math.sqrt(2)]), rtol=1e-12)
    # out-of-sample of the chosen: A on block1 (-2/sqrt2) and B on block0 (2/sqrt2)
    np.testing.assert_allclose(sorted(r.oos_of_best), sorted([-2 / math.sqrt(2), 2 / math.sqrt(2)]), rtol=1e-12)
    assert r.prob_loss == 0.5


def test_pbo_mean_hand_example_anti_persistent():
    # S = 4 single-row blocks, 6 halves. X = [3,0,0,0], Y = [0,1,1,1].
    # Any half containing row 0 has mean(X) = 1.5 > mean(Y) <= 1 -> picks X, whose test mean is 0 < Y's 1.
    # Any half without row 0 has X 0 < Y 1 -> picks Y; its test half holds row 0: X 1.5 > Y 0.5.
    # The in-sample winner is last out of sample in all 6 halves: omega = 1/3, PBO = 1.
    M = np.array([[3, 0], [0, 1], [0, 1], [0, 1]], dtype=float)
    r = V.pbo(M, n_splits=4, stat="mean")
    assert r.n_combinations == 6
    assert r.pbo == 1.0
    np.testing.assert_allclose(r.logits, math.log(0.5))


def test_pbo_persistent_winner_is_zero():
    rng = np.random.default_rng(1)
    M = rng.normal(0, 1, (64, 20))
    M[:, 7] += 2.0  # a config that is better in every block
    assert V.pbo(M, n_splits=8).pbo == 0.0


def test_pbo_matches_direct_loop():
    rng = np.random.default_rng(2)
    M = rng.normal(0.01, 1, (40, 9))
    r = V.pbo(M, n_splits=4)
    import itertools
    blocks = np.split(M, 4)
    lam = []
    for c in itertools.combinations(range(4), 2):
        tr = np.concatenate([blocks[i] for i in c])
        te = np.concatenate([blocks[i] for i in range(4) if i not in c])
        sr_tr = tr.mean(0) / tr.std(0, ddof=1)
        sr_te = te.mean(0) / te.std(0, ddof=1)
        n = int(np.argmax(sr_tr))
        w = stats.rankdata(sr_te)[n] / (M.shape[1] + 1)
        lam.append(math.log(w / (1 - w)))
    np.testing.assert_allclose(r.logits, lam, rtol=1e-9)


def test_pbo_rejects_bad_input():
    with pytest.raises(ValueError):
        V.pbo(np.zeros((8, 3)), n_splits=3)
    with pytest.raises(ValueError):
        V.pbo(np.zeros((8, 1)), n_splits=2)
    with pytest.raises(ValueError):
        V.pbo(np.full((8, 3), np.nan), n_splits=2)


# ------------------------------------------------------------------ DSR

@pytest.mark.parametrize("n, mult", [(10, 1.57), (100, 2.53), (1000, 3.26), (10_000, 3.86)])
def test_expected_max_sharpe_multipliers(n, mult):
    # Bailey & Lopez de Prado 2014, expected max of N unskilled Sharpes in std units:
    # (1-g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e)), g = Euler-Mascheroni
    assert V.expected_max_sharpe(n, 1.0) == pytest.approx(mult, abs=0.006)
    assert V.expected_max_sharpe(n, 4.0) == pytest.approx(2 * mult, abs=0.012)


def test_psr_hand_example_uses_raw_kurtosis():
    # r = [2, 0, 2, 0]: mean 1, sample std sqrt(4/3) -> SR = 0.8660; population skew 0,
    # raw kurtosis m4/m2^2 = 1/1 = 1, so the (kurt - 1)/4 term vanishes:
    # PSR(0) = Phi(0.8660 * sqrt(3) / 1) = Phi(1.5) = 0.9332
    r = np.array([2.0, 0.0, 2.0, 0.0])
    d = V.deflated_sharpe(r, n_trials=1, sr_variance=0.0)
    assert d.sr == pytest.approx(math.sqrt(3) / 2)
    assert d.skew == pytest.approx(0.0, abs=1e-12)
    assert d.kurt_raw == pytest.approx(1.0)
    assert d.sr0 == 0.0
    assert d.dsr == pytest.approx(stats.norm.cdf(1.5), rel=1e-12)
    # excess kurtosis (-2) plugged in would give Phi(1.5 / sqrt(1 - 0.5625)) = Phi(2.268): not what we return
    assert d.dsr != pytest.approx(stats.norm.cdf(1.5 / math.sqrt(0.4375)), rel=1e-3)


def test_psr_normal_hand_example():
    # SR 0.2, 101 observations, skew 0, raw kurtosis 3: z = 0.2 * 10 / sqrt(1 + 0.5 * 0.04) = 1.98030
    assert V.psr(0.2, 0.0, 101, 0.0, 3.0) == pytest.approx(stats.norm.cdf(2 / math.sqrt(1.02)), rel=1e-12)
    # deflated against SR0 = 0.1: z = 0.1 * 10 / sqrt(1.02)
    assert V.psr(0.2, 0.1, 101, 0.0, 3.0) == pytest.approx(stats.norm.cdf(1 / math.sqrt(1.02)), rel=1e-12)


def test_dsr_of_search_counts_every_trial():
    rng = np.random.default_rng(3)
    M = rng.normal(0, 1, (50, 30))
    d = V.deflated_sharpe_of_search(M)
    srs = M.mean(0) / M.std(0, ddof=1)
    assert d.n_trials == 30 and d.n_obs == 50
    assert d.sr == pytest.approx(srs.max())
    assert d.sr_variance == pytest.approx(np.var(srs, ddof=1))
    assert d.sr0 == pytest.approx(V.expected_max_sharpe(30, np.var(srs, ddof=1)))


# ------------------------------------------------------------------ null test

def test_null_configurations_look_overfit_and_insignificant():
    rng = np.random.default_rng(4)
    pbos, dsrs = [], []
    for _ in range(5):
        M = rng.normal(0, 0.01, (64, 200))  # 200 configurations of pure noise, 64 buckets
        pbos.append(V.pbo(M, n_splits=8).pbo)
        dsrs.append(V.deflated_sharpe_of_search(M).dsr)
    assert np.mean(pbos) >= 0.4  # near or above 0.5 (CSCV on noise)
    assert max(dsrs) < 0.95      # the best noise Sharpe is not significant once deflated


def test_skilled_configuration_is_significant():
    rng = np.random.default_rng(5)
    M = rng.normal(0, 0.01, (200, 50))
    M[:, 3] += 0.01  # Sharpe ~1 per bucket
    d = V.deflated_sharpe_of_search(M)
    assert d.dsr > 0.99
    assert V.pbo(M, n_splits=10).pbo < 0.05


# ------------------------------------------------------------------ Wilson

def test_wilson_reference_values_and_scipy():
    # Wilson (1927) 95% interval, computed by hand for p = 0.55:
    # n=100 -> [0.452, 0.644]; n=400 -> [0.501, 0.598]; n=1000 -> [0.519, 0.581]
    lo, hi = V.wilson([55, 220, 550], [100, 400, 1000])
    np.testing.assert_allclose(lo, [0.452, 0.501, 0.519], atol=6e-4)
    np.testing.assert_allclose(hi, [0.644, 0.598, 0.581], atol=6e-4)
    ci = stats.binomtest(37, 61).proportion_ci(confidence_level=0.9, method="wilson")
    lo, hi = V.wilson(37, 61, conf=0.9)
    assert (float(lo), float(hi)) == pytest.approx((ci.low, ci.high), rel=1e-12)
    lo, hi = V.wilson(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


# ------------------------------------------------------------------ splits and walk-forward

def _book(T=1000):
    ts = np.arange(T, dtype=np.int64) * 1_000_000_000
    px = np.full((T, 2), 100.0)
    return Book.from_arrays(ts, px - 0.5, px + 0.5, np.ones((T, 2)), np.ones((T, 2)))


def test_split_time_purges_the_boundary():
    b = _book(1001)  # 1000 s span
    s = V.split_time(b.ts, is_frac=0.7, purge_frac=0.01)
    assert s.in_sample == slice(0, 700)       # ts < 700 s
    assert s.out_sample == slice(710, 1001)   # ts >= 710 s
    sub = V.slice_book(b, s.out_sample)
    assert sub.T == 291 and sub.ts[0] == 710_000_000_000
    assert b.T == 1001  # original untouched
    with pytest.raises(ValueError):
        V.split_time(b.ts, is_frac=1.2)
    with pytest.raises(ValueError):
        V.split_time(b.ts, is_frac=0.7, purge_frac=0.5)


def test_walk_forward_anchored_and_rolling():
    # 10 rows, 4 folds of 2 test rows: tests start at row 2, 4, 6, 8.
    M = np.zeros((10, 2))
    M[:, 0] = [1, 2, 1, 2, -1, -2, -1, -2, -1, -2]   # good early, bad late
    M[:, 1] = [0, 0, 0, 1, 1, 2, 1, 2, 1, 2]          # bad early, good late
    a = V.walk_forward(M, n_folds=4, mode="anchored")
    assert [f[0] for f in a.folds] == [slice(0, 2), slice(0, 4), slice(0, 6), slice(0, 8)]
    r = V.walk_forward(M, n_folds=4, mode="rolling")
    assert [f[0] for f in r.folds] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    # rolling: train rows 0-1 -> config 0 (SR 1.5/.707 vs 0); rows 2-3 -> config 0 (SR 2.12 vs 0.707);
    # rows 4-5 -> config 1; rows 6-7 -> config 1
    assert [f[2] for f in r.folds] == [0, 0, 1, 1]
    np.testing.assert_array_equal(r.oos_returns, [1, 2, -1, -2, 1, 2, 1, 2])
    assert r.oos_sharpe == pytest.approx(V.sharpe(r.oos_returns))
    # anchored keeps config 0 longer: rows 0-5 give config 0 SR 0.5/1.5 vs config 1 SR 0.67/0.82
    assert [f[2] for f in a.folds][0] == 0
    # 3 folds of 2 rows: tests start at rows 4, 6, 8; purge 1 row, rolling train of 2 rows
    p = V.walk_forward(M, n_folds=3, mode="rolling", train=2, purge=1)
    assert [f[:2] for f in p.folds] == [(slice(1, 3), slice(4, 6)), (slice(3, 5), slice(6, 8)),
                                        (slice(5, 7), slice(8, 10))]
    with pytest.raises(ValueError):
        V.walk_forward(M, n_folds=4, mode="rolling", train=1)
