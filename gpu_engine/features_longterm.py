"""Long-horizon features of the bank: power law and stock-to-flow deviations fitted causally,
halving calendar, moving-average deviation, block flow. Registered into `features.FEATURES`.

Every value at tick t depends on ticks <= t and on the blocks known at ts[t] only (tested
bitwise in tests/test_lookahead_longterm.py); built with `xp` (numpy or cupy): elementwise ops,
`cumsum` prefix sums and gathers. Sums run in float64. Mostly meant for the bar market of the
block history (`--data blocks`, gpu_engine/data/blocks/market.py, docs/POWERLAW.md), where a
tick is a bar; on a recorded book of a few hours the fits never reach their minimum history
(NaN).

Causal fits ("refit at every bar on the prices before it")
-----------------------------------------------------------
For the power law, x = ln(d), d = days since 2009-01-03 00:00 UTC at the tick; for
stock-to-flow, x = ln(S2F) of the block known at the tick (dataset.py's nominal S2F). y =
ln(mid). At tick t the OLS line y = a + b x is fitted on every tick i < t (strictly before t)
with a finite mid (expanding window, from prefix sums of 1, x, y, x^2, xy), and the deviation
is y_t - (a + b x_t), in natural log units: 0.69 is twice the fitted value. It is NaN until the
fit has `MIN_HISTORY_DAYS` (730 days) between the first priced tick and t and at least
`MIN_POINTS` (30) priced ticks: two years of real daily closes (2010-07-18 .. 2012-07-18)
already give an exponent of 6.2, near the published 5.7-5.85, and the window is shorter than a
halving cycle on purpose, so the feature exists in the first cycle's second half. The published
(fixed) parameters are kept as separate, labelled features: they were
fitted on data that includes later prices, so they are look-ahead (`FIXED_OF` maps each causal
feature to its fixed counterpart; sweeps.optimize runs the same search on both).

Features (name: parameters -- definition)
----------------------------------------
pl_dev -- causal power-law deviation ln(mid) - fit(ln d), see above.
pl_under -- -pl_dev: how far BELOW the causal power law (enter long when s >= entry buys cheap).
pl_under_fixed -- -log_fair_dev: the same with the fixed published law (Santostasi, A = 1.0117e-17,
    n = 5.82), "fixed (look-ahead)". Its mirror is the bank's `log_fair_dev`.
s2f_dev, s2f_under -- causal stock-to-flow deviation ln(mid) - fit(ln S2F) and its negative
    (NaN without a block dataset).
s2f_dev_fixed, s2f_under_fixed -- ln(mid / (e^-1.84 S2F^3.36)) (PlanB's per-coin form, fitted on
    data to 2019: fixed (look-ahead)) and its negative.
halving_days -- days from the last halving block (the genesis block in epoch 0) to the tick;
    with a block dataset the halving block's own time (NaN when the dataset's rows are not its
    heights), without one the halving dates of gpu_engine/market.py HEIGHT_ANCHORS (NaN from the
    fifth halving on).
halving_phase_c -- halving_phase - 0.5, in [-0.5, 0.5): as a regime, band 0 lets longs in the
    first half of an epoch and shorts in the second (longs need regime <= band, shorts
    regime >= -band).
ma_dev: window -- ln(mid_t / mean(mid over ticks t-w+1..t)); NaN unless all w mids are finite
    and t >= w (the bank's window convention).
block_interval_mean_s: blocks -- mean interval of the last `blocks` blocks up to the known one,
    (time[k] - time[k - blocks]) / blocks, from REAL header times only: NaN unless every one of
    those blocks + 1 has time_source 1 (fetched headers, `blocks --source`).
block_fees_btc: blocks -- mean total fees per block (BTC) over the last `blocks` blocks; NaN
    unless every one's fees are known (fees_sat >= 0).
block_tx_count: blocks -- mean transactions per block over the last `blocks` blocks; NaN unless
    every one's tx_count is known.
"""
from __future__ import annotations

import math

import numpy as np

from gpu_engine.market import HALVING_INTERVAL, HEIGHT_ANCHORS, NS_PER_S, POWER_LAW_DAY0_UNIX

MIN_HISTORY_DAYS = 730.0
MIN_POINTS = 30
X0_PL = 8.0  # centre of ln(days) (about 8 years): keeps the prefix sums of x^2 well conditioned
S2F_A, S2F_B = -1.84, 3.36  # PlanB's per-coin form (gpu_engine/data/blocks/dataset.py S2F_MODEL)

# causal feature -> its fixed (look-ahead) counterpart
FIXED_OF = {"pl_dev": "log_fair_dev", "pl_under": "pl_under_fixed",
            "s2f_dev": "s2f_dev_fixed", "s2f_under": "s2f_under_fixed"}
LABELS = {
    "pl_dev": "power law refit causally (expanding OLS on earlier bars)",
    "pl_under": "power law refit causally, negated",
    "log_fair_dev": "power law, fixed published parameters (look-ahead)",
    "pl_under_fixed": "power law, fixed published parameters (look-ahead), negated",
    "s2f_dev": "stock-to-flow refit causally",
    "s2f_under": "stock-to-flow refit causally, negated",
    "s2f_dev_fixed": "stock-to-flow, fixed published parameters (look-ahead)",
    "s2f_under_fixed": "stock-to-flow, fixed published parameters (look-ahead), negated",
}


def _log_mid(c):
    xp = c.xp
    mid = c.mid()
    ok = xp.isfinite(mid) & (mid > 0)
    return xp.where(ok, xp.log(xp.where(ok, mid, 1.0)), xp.nan)


def _tick_days(c):
    return (c.m.ts.astype(c.xp.float64) / NS_PER_S - POWER_LAW_DAY0_UNIX) / 86_400.0


def _exclusive_cumsum(xp, v):
    """out[t] = sum of v[0..t-1] (0 at t = 0): prefix sums that never read v[t] or later."""
    out = xp.zeros(v.shape[0], dtype=xp.float64)
    if v.shape[0] > 1:
        out[1:] = xp.cumsum(v[:-1].astype(xp.float64))
    return out


def _gather(c, name):
    """Column `name` of the block known at each tick (float64, NaN where no block or unknown)."""
    xp, m = c.xp, c.m
    col = m.block_column(name)
    if col is None or m.block_index is None:
        return xp.full(m.T, xp.nan, dtype=xp.float64)

    def make():
        return m.backend.to_device(m.block_index.astype("int64"))
    idx = c.cached("block_index_dev", make)
    ok = idx >= 0
    return xp.where(ok, col[xp.where(ok, idx, 0)], xp.nan)


def _causal_fit_dev(c, x, key):
    """y_t - (a + b x_t), the OLS line fitted on the ticks before t (see the module docstring)."""
    def make():
        xp = c.xp
        y = _log_mid(c)
        ok = xp.isfinite(x) & xp.isfinite(y)
        one = ok.astype(xp.float64)
        xv = xp.where(ok, x, 0.0)
        yv = xp.where(ok, y, 0.0)
        n = _exclusive_cumsum(xp, one)
        sx = _exclusive_cumsum(xp, xv)
        sy = _exclusive_cumsum(xp, yv)
        sxx = _exclusive_cumsum(xp, xv * xv)
        sxy = _exclusive_cumsum(xp, xv * yv)
        den = n * sxx - sx * sx
        # the first priced tick's day: the history starts there (a tick with nothing before it
        # gets n = 0, NaN, whatever this picks)
        days = _tick_days(c)
        first = xp.argmax(ok) if int(ok.shape[0]) else 0
        span = days - days[first]
        good = (n >= MIN_POINTS) & (span >= MIN_HISTORY_DAYS) & (den > 0) & xp.isfinite(x) & xp.isfinite(y)
        dens = xp.where(good, den, 1.0)
        ns = xp.where(good, n, 1.0)
        b = (n * sxy - sx * sy) / dens
        a = (sy - b * sx) / ns
        return xp.where(good, y - (a + b * x), xp.nan)
    return c.cached(("causal_fit", key), make)


def _pl_x(c):
    xp = c.xp
    d = _tick_days(c)
    ok = d > 0
    return xp.where(ok, xp.log(xp.where(ok, d, 1.0)) - X0_PL, xp.nan)


def _s2f_x(c):
    xp = c.xp
    s2f = _gather(c, "s2f")
    ok = xp.isfinite(s2f) & (s2f > 0)
    return xp.where(ok, xp.log(xp.where(ok, s2f, 1.0)), xp.nan)


def _f_pl_dev(c):
    return _causal_fit_dev(c, _pl_x(c), "pl")


def _f_pl_under(c):
    return -_f_pl_dev(c)


def _f_pl_under_fixed(c):
    from gpu_engine.features import FEATURES

    return -FEATURES["log_fair_dev"][0](c)


def _f_s2f_dev(c):
    return _causal_fit_dev(c, _s2f_x(c), "s2f")


def _f_s2f_under(c):
    return -_f_s2f_dev(c)


def _f_s2f_dev_fixed(c):
    x = _s2f_x(c)
    return _log_mid(c) - (S2F_A + S2F_B * x)


def _f_s2f_under_fixed(c):
    return -_f_s2f_dev_fixed(c)


def _f_halving_days(c):
    xp, m = c.xp, c.m
    h = m.block_height
    ok = h >= 0
    epoch = xp.where(ok, h // HALVING_INTERVAL, 0)
    t_s = m.ts.astype(xp.float64) / NS_PER_S
    times = m.block_column("time")
    heights = m.block_column("height")
    if times is not None and heights is not None:
        # the halving block's row (rows are heights in a block dataset; anything else: NaN)
        first = xp.minimum(epoch * HALVING_INTERVAL, times.shape[0] - 1)
        t_halving = times[first]
        ok = ok & (epoch * HALVING_INTERVAL < times.shape[0]) & (heights[first] == epoch * HALVING_INTERVAL)
    else:
        anchors = {hh: tt for hh, tt in HEIGHT_ANCHORS if hh % HALVING_INTERVAL == 0}
        table = [float(anchors.get(e * HALVING_INTERVAL, math.nan)) for e in range(8)]
        tab = m.backend.to_device(np.asarray(table))
        t_halving = tab[xp.minimum(epoch, len(table) - 1)]
        ok = ok & (epoch < len(table))
    return xp.where(ok, (t_s - t_halving) / 86_400.0, xp.nan)


def _f_halving_phase_c(c):
    return c.m.halving_phase.astype(c.xp.float64) - 0.5


def _f_ma_dev(c, window: int):
    from gpu_engine.features import _rolling_sum

    xp = c.xp
    mid = c.mid()
    ok = xp.isfinite(mid) & (mid > 0)
    s = _rolling_sum(xp, xp.where(ok, mid, 0.0), window)
    n = _rolling_sum(xp, ok.astype(xp.float64), window)
    good = (n == window) & ok
    ma = xp.where(good, s / window, 1.0)
    return xp.where(good, xp.log(xp.where(good, mid, 1.0) / ma), xp.nan)


def _block_window_mean(c, name: str, blocks: int):
    """Mean of block column `name` over the `blocks` blocks ending at the known one; NaN unless all known."""
    xp, m = c.xp, c.m
    col = m.block_column(name)
    if col is None or m.block_index is None:
        return xp.full(m.T, xp.nan, dtype=xp.float64)

    def prefix():
        ok = xp.isfinite(col)
        p_sum = xp.zeros(col.shape[0] + 1, dtype=xp.float64)
        p_cnt = xp.zeros(col.shape[0] + 1, dtype=xp.float64)
        p_sum[1:] = xp.cumsum(xp.where(ok, col, 0.0))
        p_cnt[1:] = xp.cumsum(ok.astype(xp.float64))
        return p_sum, p_cnt
    p_sum, p_cnt = c.cached(("block_prefix", name), prefix)
    idx = c.cached("block_index_dev", lambda: m.backend.to_device(m.block_index.astype("int64")))
    hi = idx + 1
    lo = hi - blocks
    good = lo >= 0
    hi_s, lo_s = xp.where(good, hi, 0), xp.where(good, lo, 0)
    cnt = p_cnt[hi_s] - p_cnt[lo_s]
    good = good & (cnt == blocks)
    return xp.where(good, (p_sum[hi_s] - p_sum[lo_s]) / blocks, xp.nan)


def _f_block_fees_btc(c, blocks: int):
    return _block_window_mean(c, "fees_sat", blocks) / 1e8


def _f_block_tx_count(c, blocks: int):
    return _block_window_mean(c, "tx_count", blocks)


def _f_block_interval_mean_s(c, blocks: int):
    xp, m = c.xp, c.m
    times = m.block_column("time")
    src = m.block_column("time_source")
    if times is None or src is None or m.block_index is None:
        return xp.full(m.T, xp.nan, dtype=xp.float64)
    real = _block_window_mean(c, "time_source", blocks + 1)  # 1.0 exactly when all blocks + 1 are real
    idx = c.cached("block_index_dev", lambda: m.backend.to_device(m.block_index.astype("int64")))
    lo = idx - blocks
    good = (lo >= 0) & (real == 1.0)
    hi_s, lo_s = xp.where(good, idx, 0), xp.where(good, lo, 0)
    return xp.where(good, (times[hi_s] - times[lo_s]) / blocks, xp.nan)


FEATURES = {
    "pl_dev": (_f_pl_dev, ()),
    "pl_under": (_f_pl_under, ()),
    "pl_under_fixed": (_f_pl_under_fixed, ()),
    "s2f_dev": (_f_s2f_dev, ()),
    "s2f_under": (_f_s2f_under, ()),
    "s2f_dev_fixed": (_f_s2f_dev_fixed, ()),
    "s2f_under_fixed": (_f_s2f_under_fixed, ()),
    "halving_days": (_f_halving_days, ()),
    "halving_phase_c": (_f_halving_phase_c, ()),
    "ma_dev": (_f_ma_dev, ("window",)),
    "block_interval_mean_s": (_f_block_interval_mean_s, ("blocks",)),
    "block_fees_btc": (_f_block_fees_btc, ("blocks",)),
    "block_tx_count": (_f_block_tx_count, ("blocks",)),
}
