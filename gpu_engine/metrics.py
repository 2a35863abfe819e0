"""Per-configuration metrics from the kernels' raw sums and per-bucket arrays (host side, numpy).

The kernels (gpu_engine/kernels) accumulate, per configuration, the raw sums named by
`enums.RAW` (the layout lives in enums.py with the `R_*` column indices and is re-exported
here) and the per-bucket realised PnL, trade and win counts [C, B]. `finish`
turns those into the `[C, M]` float64 table in `enums.METRICS` order, following
docs/RULES.md "Marks and metrics":

- win_rate = wins / trades, with its Wilson 95% interval (z = scipy.stats.norm.ppf(0.975)),
  clipped to [0, 1] (the closed form can land an ulp outside when wins is 0 or trades);
- expectancy = net_pnl / trades; profit_factor = sum of winning PnL / -sum of losing PnL
  (inf with trades but no losing trade); avg_win / avg_loss (negative) / payoff_ratio;
- sharpe = mean(r_b) / std(r_b, ddof=1) and sortino = mean(r_b) / sqrt(mean(min(r_b, 0)^2))
  on bucket returns r_b = bucket_pnl / capital, 0 when the denominator is 0 or B < 2;
- exposure = (sum of held ticks) / T; mean_hold_s = (sum of held ns) / 1e9 / trades;
- rules v2 order flow: maker_fills, taker_fills, orders_posted, orders_rejected, cancels,
  fees_maker, fees_taker as summed; maker_fill_ratio = maker filled quantity / posted
  quantity (NaN when nothing was posted); mean_queue_wait_s = (sum over maker fills of
  ts[fill] - ts[arrival]) / 1e9 / maker_fills (NaN with no maker fill).

Every ratio with no trades is NaN. This module imports only numpy and scipy (no numba).
"""
from __future__ import annotations

import numpy as np

from gpu_engine.enums import (  # noqa: F401  (the raw layout is re-exported from here)
    METRIC_INDEX,
    METRICS,
    NRAW,
    R_CANCELS,
    R_EQUITY,
    R_EXIT0,
    R_FEES,
    R_FEES_MAKER,
    R_FEES_TAKER,
    R_GROSS,
    R_HELD_NS,
    R_HELD_TICKS,
    R_LOSSES,
    R_MAKER_FILLS,
    R_MAKER_QTY,
    R_MAXDD,
    R_NET,
    R_POSTED,
    R_POSTED_QTY,
    R_QUEUE_WAIT_NS,
    R_REJECTED,
    R_SUMLOSS,
    R_SUMWIN,
    R_TAKER_FILLS,
    R_TRADES,
    R_WINS,
    RAW,
    RAW_INDEX,
)


def wilson_z() -> float:
    """z of the two-sided 95% Wilson interval."""
    from scipy.stats import norm

    return float(norm.ppf(0.975))


def wilson(wins: np.ndarray, trades: np.ndarray, z: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of wins / trades; NaN where trades == 0."""
    z = wilson_z() if z is None else z
    n = np.asarray(trades, dtype=np.float64)
    w = np.asarray(wins, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = w / n
        z2 = z * z
        denom = 1.0 + z2 / n
        centre = (p + z2 / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
        lo = np.clip(centre - half, 0.0, 1.0)
        hi = np.clip(centre + half, 0.0, 1.0)
    lo = np.where(n > 0, lo, np.nan)
    hi = np.where(n > 0, hi, np.nan)
    return lo, hi


def bucket_ratios(bucket_pnl: np.ndarray, capital: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sharpe and Sortino of bucket returns r_b = bucket_pnl / capital (not annualised)."""
    bp = np.asarray(bucket_pnl, dtype=np.float64)
    C, B = bp.shape
    if C == 0 or B < 2:
        return np.zeros(C), np.zeros(C)
    r = bp / np.asarray(capital, dtype=np.float64)[:, None]
    mean = r.mean(axis=1)
    sd = r.std(axis=1, ddof=1)
    down = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        sharpe = np.where(sd > 0, mean / sd, 0.0)
        sortino = np.where(down > 0, mean / down, 0.0)
    return sharpe, sortino


def finish(raw: np.ndarray, bucket_pnl: np.ndarray, capital: np.ndarray, T: int) -> np.ndarray:
    """[C, NRAW] raw sums + [C, B] bucket PnL -> [C, M] metrics in enums.METRICS order."""
    raw = np.asarray(raw, dtype=np.float64)
    C = raw.shape[0]
    out = np.empty((C, len(METRICS)), dtype=np.float64)
    trades = raw[:, R_TRADES]
    wins = raw[:, R_WINS]
    losses = raw[:, R_LOSSES]
    net = raw[:, R_NET]
    sum_win = raw[:, R_SUMWIN]
    sum_loss = raw[:, R_SUMLOSS]
    has = trades > 0
    nan = np.nan

    def put(name: str, values) -> None:
        out[:, METRIC_INDEX[name]] = values

    with np.errstate(invalid="ignore", divide="ignore"):
        put("trades", trades)
        put("wins", wins)
        put("win_rate", np.where(has, wins / trades, nan))
        lo, hi = wilson(wins, trades)
        put("win_rate_lo", lo)
        put("win_rate_hi", hi)
        put("net_pnl", net)
        put("gross_pnl", raw[:, R_GROSS])
        put("fees", raw[:, R_FEES])
        put("expectancy", np.where(has, net / trades, nan))
        pf = np.where(losses > 0, sum_win / -sum_loss, np.inf)
        put("profit_factor", np.where(has, pf, nan))
        avg_win = np.where(wins > 0, sum_win / wins, nan)
        avg_loss = np.where(losses > 0, sum_loss / losses, nan)
        put("avg_win", avg_win)
        put("avg_loss", avg_loss)
        put("payoff_ratio", avg_win / -avg_loss)
        sharpe, sortino = bucket_ratios(bucket_pnl, capital)
        put("sharpe", sharpe)
        put("sortino", sortino)
        put("max_drawdown", raw[:, R_MAXDD])
        put("final_equity", raw[:, R_EQUITY])
        put("exposure", raw[:, R_HELD_TICKS] / float(T))
        put("mean_hold_s", np.where(has, raw[:, R_HELD_NS] / 1e9 / trades, nan))
        for k, name in enumerate(("exits_stop", "exits_take", "exits_time", "exits_signal", "exits_end")):
            put(name, raw[:, R_EXIT0 + k])
        maker_fills = raw[:, R_MAKER_FILLS]
        posted_qty = raw[:, R_POSTED_QTY]
        put("maker_fills", maker_fills)
        put("taker_fills", raw[:, R_TAKER_FILLS])
        put("orders_posted", raw[:, R_POSTED])
        put("orders_rejected", raw[:, R_REJECTED])
        put("cancels", raw[:, R_CANCELS])
        put("maker_fill_ratio", np.where(posted_qty > 0, raw[:, R_MAKER_QTY] / posted_qty, nan))
        put("mean_queue_wait_s", np.where(maker_fills > 0, raw[:, R_QUEUE_WAIT_NS] / 1e9 / maker_fills, nan))
        put("fees_maker", raw[:, R_FEES_MAKER])
        put("fees_taker", raw[:, R_FEES_TAKER])
    return out
