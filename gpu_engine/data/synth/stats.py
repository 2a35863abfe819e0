"""Stylised facts of a quote + trade record, measured the same way on real captures and on synth.

Input is plain arrays (quote times in ns with best bid/ask and their sizes; trades with time,
quantity and aggressor side), so the calibration test can feed Binance bookTicker/trade messages
parsed straight from the capture and the unit tests can feed a generated `Book`.
Used by tests/test_synth.py, tests/real/test_synth_calibration.py and docs/SYNTH.md.
"""
from __future__ import annotations

import numpy as np

SIGN_LAGS = (1, 2, 5, 10, 20, 50)
ABS_LAGS = tuple(range(1, 11))


def acf(x, lags) -> np.ndarray:
    """Sample autocorrelation at the given lags (mean removed, biased normalisation)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    v = float((x * x).mean())
    if v == 0.0:
        return np.zeros(len(lags))
    n = x.shape[0]
    return np.array([float((x[: n - k] * x[k:]).sum()) / n / v for k in lags])


def excess_kurtosis(x) -> float:
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    v = float((x * x).mean())
    return float((x ** 4).mean() / v ** 2 - 3.0) if v > 0 else 0.0


def sample_last(ts, values, grid):
    """Value of the last update at or before each grid time (grid starts after ts[0])."""
    idx = np.searchsorted(ts, grid, side="right") - 1
    return values[idx]


def group_orders(ts, side, qty):
    """Collapse consecutive trades with the same time and side into one aggressive order."""
    new = np.r_[True, (np.diff(ts) != 0) | (np.diff(side) != 0)]
    grp = np.cumsum(new) - 1
    return ts[new], side[new], np.bincount(grp, weights=qty)


def quote_facts(ts, bid, ask, bid_sz, ask_sz, tick: float) -> dict:
    """Spread, level-1 size and mid-return facts from best quotes (ts in ns, non-decreasing)."""
    ts = np.asarray(ts, np.int64)
    bid = np.asarray(bid, np.float64)
    ask = np.asarray(ask, np.float64)
    ok = np.isfinite(bid) & np.isfinite(ask)
    ts, bid, ask = ts[ok], bid[ok], ask[ok]
    bid_sz = np.asarray(bid_sz, np.float64)[ok]
    ask_sz = np.asarray(ask_sz, np.float64)[ok]
    step = 100_000_000
    g0 = (ts[0] // step + 1) * step
    grid = np.arange(g0, ts[-1] + 1, step)
    sp = np.rint((sample_last(ts, ask, grid) - sample_last(ts, bid, grid)) / tick)
    mid_ticks = (sample_last(ts, bid, grid) + sample_last(ts, ask, grid)) / tick  # 2 * mid in ticks
    sec = grid[(grid - grid[0]) % 1_000_000_000 == 0]
    m1 = 0.5 * sample_last(ts, (bid + ask) / tick, sec)
    r1 = np.diff(m1)
    r10 = np.diff(m1[::10])
    bb = bid / tick
    jumps = np.diff(bb)
    jumps = np.abs(jumps[jumps != 0])
    span_s = (ts[-1] - ts[0]) / 1e9
    l1 = np.r_[sample_last(ts, bid_sz, grid), sample_last(ts, ask_sz, grid)]
    return {
        "span_s": float(span_s),
        "spread_1tick_frac": float(np.mean(sp == 1)),
        "spread_q90_ticks": float(np.quantile(sp, 0.9)),
        "spread_q99_ticks": float(np.quantile(sp, 0.99)),
        "crossed_rows": int(np.sum(sp <= 0)),
        "mid_half_tick_grid": bool(np.all(np.abs(mid_ticks - np.rint(mid_ticks)) < 1e-6)),
        "l1_size_median": float(np.median(l1)),
        "l1_size_mean": float(np.mean(l1)),
        "ret1s_n": int(r1.shape[0]),
        "ret1s_std_ticks": float(r1.std()),
        "ret1s_zero_frac": float(np.mean(r1 == 0)),
        "ret1s_excess_kurtosis": excess_kurtosis(r1),
        "ret1s_acf1": float(acf(r1, (1,))[0]),
        "absret1s_acf": acf(np.abs(r1), ABS_LAGS).tolist(),
        "absret1s_acf_mean_1_10": float(acf(np.abs(r1), ABS_LAGS).mean()),
        "ret10s_std_ticks": float(r10.std()),
        "best_bid_changes_per_s": float(jumps.shape[0] / span_s),
        "best_bid_jump_median_ticks": float(np.median(jumps)) if jumps.size else 0.0,
    }


def trade_facts(ts, qty, side) -> dict:
    """Rates, sizes and sign autocorrelation of trades (ts in ns; side +1 buy aggressor, -1 sell)."""
    ts = np.asarray(ts, np.int64)
    qty = np.asarray(qty, np.float64)
    side = np.asarray(side, np.int64)
    span_s = (ts[-1] - ts[0]) / 1e9
    ots, oside, oqty = group_orders(ts, side, qty)
    per_s = np.bincount(((ots - ots[0]) // 1_000_000_000).astype(np.int64))
    return {
        "trades_per_s": float(ts.shape[0] / span_s),
        "orders_per_s": float(ots.shape[0] / span_s),
        "orders_per_s_var_over_mean": float(per_s.var() / per_s.mean()),
        "buy_frac": float(np.mean(oside > 0)),
        "trade_qty_q50": float(np.quantile(qty, 0.5)),
        "trade_qty_q90": float(np.quantile(qty, 0.9)),
        "trade_qty_q99": float(np.quantile(qty, 0.99)),
        "trade_qty_mean": float(qty.mean()),
        "order_qty_q50": float(np.quantile(oqty, 0.5)),
        "order_qty_q90": float(np.quantile(oqty, 0.9)),
        "order_qty_q99": float(np.quantile(oqty, 0.99)),
        "order_qty_mean": float(oqty.mean()),
        "trade_sign_acf": acf(side, SIGN_LAGS).tolist(),
        "order_sign_acf": acf(oside, SIGN_LAGS).tolist(),
    }


def book_facts(book) -> dict:
    """quote_facts + trade_facts of a `Book` with trades, plus depth-profile facts."""
    tick = float(book.attrs.get("tick_size", 0.01))
    out = quote_facts(book.ts, book.bid_px[:, 0], book.ask_px[:, 0], book.bid_sz[:, 0],
                      book.ask_sz[:, 0], tick)
    if book.trades is not None and len(book.trades) > 1:
        out.update(trade_facts(book.trades.ts, book.trades.qty, book.trades.side))
    L = book.depth
    far = np.abs(np.r_[book.bid_px[:, 0] - book.bid_px[:, L - 1], book.ask_px[:, L - 1] - book.ask_px[:, 0]]) / tick
    out["level_last_distance_median_ticks"] = float(np.nanmedian(far))
    return out
