"""The look-ahead bar for the long-horizon features (gpu_engine/features_longterm.py): changing any
price after bar t, the times of bars after t, or anything of a block not yet known at bar t (its
fees, tx count, header time, whether its header is real, its S2F) changes no feature value at or
before t, bitwise. Property-based (hypothesis) over random bar markets of 2-5 years laid on a real
block dataset to 2014 with real-header runs, plus one fixed case that checks every feature is
defined somewhere (so the property is not vacuous) and that the fits are what the docstring says."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine.data.blocks import dataset as B
from gpu_engine.data.books.store import Book
from gpu_engine.features import build_bank
from gpu_engine.features_longterm import MIN_HISTORY_DAYS, MIN_POINTS

START_S = 1_243_814_400  # 2009-06-01
SPEC = [("pl_dev", {}), ("pl_under", {}), ("pl_under_fixed", {}), ("log_fair_dev", {}), ("s2f_dev", {}),
        ("s2f_under", {}), ("s2f_dev_fixed", {}), ("s2f_under_fixed", {}), ("halving_days", {}),
        ("halving_phase_c", {}), ("halving_phase", {}),
        *(("ma_dev", {"window": w}) for w in (1, 3, 10)),
        *((f, {"blocks": n}) for f in ("block_interval_mean_s", "block_fees_btc", "block_tx_count")
          for n in (1, 6, 144))]


@pytest.fixture(scope="module")
def chain():
    """Blocks 0 .. end of 2014 (modelled times), with real headers (time_source 1, fees, tx counts) on
    heights 150,000..260,000 except a few unknown ones, and on every fifth block after."""
    arr, _ = B.build(until="2014-12-31")
    arr = arr.copy()
    rng = np.random.default_rng(0)
    h = arr["height"]
    real = ((h >= 150_000) & (h < 260_000)) | ((h >= 260_000) & (h % 5 == 0))
    real &= rng.random(h.size) > 0.001
    arr["time_source"] = real
    arr["time"][real] += rng.integers(-300, 300, int(real.sum()))  # header times: not monotone
    arr["fees_sat"] = np.where(real, rng.integers(0, 5 * 10**8, h.size), -1)
    arr["tx_count"] = np.where(real, rng.integers(1, 3000, h.size), -1)
    return arr


def _book(ts_s, mid):
    ts = np.asarray(ts_s, np.int64) * 1_000_000_000 - 1
    ok = np.isfinite(mid)
    bid = np.where(ok, mid * (1 - 1e-4), np.nan)
    ask = np.where(ok, mid * (1 + 1e-4), np.nan)
    sz = np.where(ok, 1.0, 0.0)
    return Book.from_arrays(ts, bid[:, None], ask[:, None], sz[:, None], sz[:, None])


def _market(seed, T):
    rng = np.random.default_rng(seed)
    step = rng.integers(1, 28, T) * 86_400
    ts = START_S + int(rng.integers(0, 400)) * 86_400 + np.cumsum(step)
    mid = 5.0 * np.exp(np.cumsum(rng.normal(0.01, 0.2, T)))
    mid[rng.random(T) < 0.08] = np.nan  # days without a price
    return ts, mid


def _perturbed(chain, ts, mid, t, seed):
    """Bars after t redrawn (times and prices), and every block not known at bar t redrawn."""
    rng = np.random.default_rng(seed + 1)
    T = ts.size
    ts2, mid2 = ts.copy(), mid.copy()
    n_after = T - t - 1
    if n_after:
        ts2[t + 1:] = ts[t] + np.cumsum(rng.integers(1, 40, n_after) * 86_400)
        mid2[t + 1:] = rng.uniform(0.01, 1e5, n_after)
        mid2[t + 1:][rng.random(n_after) < 0.2] = np.nan
    cut = int(ts[t])  # the bar's last second: blocks with times <= cut - 1 ... see gpu_engine/market.py
    env = np.maximum.accumulate(np.asarray(chain["time"], np.int64))
    k0 = int(np.searchsorted(env, (cut * 1_000_000_000 - 1) // 1_000_000_000, side="right"))  # first unknown
    b2 = chain.copy()
    n = b2.size - k0
    if n > 0:
        b2["fees_sat"][k0:] = rng.integers(-1, 10**9, n)
        b2["tx_count"][k0:] = rng.integers(-1, 5000, n)
        b2["time_source"][k0:] = rng.integers(0, 2, n)
        b2["s2f"][k0:] = rng.uniform(0.1, 500, n)
        if n > 1:  # later blocks' header times: anything, as long as block k0 stays after the cut
            b2["time"][k0 + 1:] = b2["time"][k0 + 1:] + rng.integers(-10**6, 10**6, n - 1)
    return ts2, mid2, b2


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(60, 130), seed=st.integers(0, 2**31 - 2), cuts=st.lists(st.integers(0, 10**6), min_size=4,
                                                                              max_size=4))
def test_long_horizon_features_at_or_before_t_ignore_the_future(chain, T, seed, cuts):
    ts, mid = _market(seed, T)
    v1 = build_bank(_book(ts, mid), spec=SPEC, xp=np, blocks=chain).values
    for t in sorted({c % T for c in cuts} | {T - 1, T // 2}):
        ts2, mid2, b2 = _perturbed(chain, ts, mid, t, seed + t)
        v2 = build_bank(_book(ts2, mid2), spec=SPEC, xp=np, blocks=b2).values
        same = bits(v1[:, : t + 1]) == bits(v2[:, : t + 1])
        assert same.all(), (t, [SPEC[k] for k in np.unique(np.nonzero(~same)[0])])


def test_every_feature_is_defined_and_the_fit_uses_only_earlier_bars(chain):
    ts, mid = _market(7, 130)
    book = _book(ts, mid)
    bank = build_bank(book, spec=SPEC, xp=np, blocks=chain)
    v = bank.values
    for k, (name, params) in enumerate(SPEC):
        assert np.isfinite(v[k]).sum() >= 5, (name, params)
    # pl_dev at t: the OLS line of ln(mid) on ln(days) fitted on the priced bars before t
    days = (ts - 1_230_940_800) / 86_400.0
    x, y = np.log(days), np.log(mid)
    row = bank.index("pl_dev")
    checked = 0
    for t in range(ts.size):
        prior = np.isfinite(y[:t])
        span = days[t] - days[np.argmax(np.isfinite(y))]
        if prior.sum() < MIN_POINTS or span < MIN_HISTORY_DAYS or not np.isfinite(y[t]):
            assert np.isnan(v[row, t])
            continue
        b, a = np.polyfit(x[:t][prior], y[:t][prior], 1)
        assert v[row, t] == pytest.approx(y[t] - (a + b * x[t]), abs=2e-5), t
        checked += 1
    assert checked > 20
    np.testing.assert_array_equal(v[bank.index("pl_under")], -v[row])
    np.testing.assert_array_equal(v[bank.index("pl_under_fixed")], -v[bank.index("log_fair_dev")])
