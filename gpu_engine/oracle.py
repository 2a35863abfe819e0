"""The test oracle: a slow, plain-Python event loop of the trading rules v1, one configuration at a time.

Written from the text of docs/RULES.md only (it imports neither
`gpu_engine.strategy` nor `gpu_engine.kernels`, so that a mistake shared with the kernels cannot
hide). Plain Python floats and loops; clarity over speed.

    result = run(book, signal, regime, config, buckets)

`book` has `ts` (int64 ns), `bid_px`/`ask_px` ([T, L] float), `bid_sz`/`ask_sz` ([T, L] float);
`signal` and `regime` are 1-D float32 arrays of length T (promoted to float64); `config` holds the
keys of `enums.CONFIG_FIELDS` (missing keys take the defaults there; `signal`/`entry` rows are not
needed because the arrays are passed in, but `entry` has no default and must be given).

Per tick t the work is, in order (docs/RULES.md "Order of work inside one tick"):
  1. pending fill: if an order is pending and t is its fill tick, fill it;
  2. decision, only if no order was pending at the start of the tick;
  3. mark.
After the last tick: a pending entry is dropped, a pending exit fills at T-1 keeping its reason,
an open position is closed at T-1 (reason "end"); the marks are not recomputed.

Readings where docs/RULES.md is silent (kept conservative):
* "worst displayed price" for the part of an exit beyond the displayed depth is the lowest
  displayed bid (a sell) or the highest displayed ask (a buy). On a well-formed book (level 0
  best, prices monotone in the level) that is the deepest displayed level.
* the executable top price p uses level 0's price alone (finite and > 0), as RULES defines it,
  even when level 0's size is 0; its fallback is the last such price at any earlier tick,
  whether or not a position was open then.

Besides `.trades` the result lists every `.decisions` entry (tick, kind, side, ...), including
entries later dropped, for the look-ahead test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from gpu_engine.enums import CONFIG_FIELDS, EXIT_REASONS, METRICS

BPS = 1e-4
Z95 = float(norm.ppf(0.975))


@dataclass
class OracleResult:
    metrics: dict[str, float]
    bucket_pnl: np.ndarray      # float64 [B]
    bucket_trades: np.ndarray   # int64 [B]
    bucket_wins: np.ndarray     # int64 [B]
    trades: list[dict[str, Any]] = field(default_factory=list)
    marks: list[float] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Book helpers (docs/RULES.md "Definitions")
# ---------------------------------------------------------------------------------------------

def _is_displayed(px: float, sz: float) -> bool:
    """A level is displayed when its price is finite and > 0 and its size is finite and > 0."""
    return math.isfinite(px) and px > 0.0 and math.isfinite(sz) and sz > 0.0


def _displayed_levels(prices, sizes) -> list[tuple[float, float]]:
    """The displayed (price, size) levels of one side of one tick, in level order (0 first)."""
    out = []
    for px, sz in zip(prices, sizes):
        px, sz = float(px), float(sz)
        if _is_displayed(px, sz):
            out.append((px, sz))
    return out


def _walk_entry(levels: list[tuple[float, float]], desired: float) -> tuple[float, float]:
    """Entry walk: take min(desired, total displayed); returns (qty, vwap). qty 0 when nothing shown."""
    remaining = desired
    qty = 0.0
    notional = 0.0
    for px, sz in levels:
        if remaining <= 0.0:
            break
        take = min(remaining, sz)
        qty += take
        notional += take * px
        remaining -= take
    if qty <= 0.0:
        return 0.0, math.nan
    return qty, notional / qty


def _walk_exit(levels: list[tuple[float, float]], qty: float, closing_side: int) -> float:
    """Exit walk for the whole `qty`; beyond the displayed depth, the worst displayed price.

    `closing_side` is +1 for a sell into bids (worst = lowest displayed bid) and -1 for a buy
    from asks (worst = highest displayed ask). `levels` must not be empty. Returns the VWAP.
    """
    remaining = qty
    notional = 0.0
    for px, sz in levels:
        if remaining <= 0.0:
            break
        take = min(remaining, sz)
        notional += take * px
        remaining -= take
    if remaining > 0.0:
        prices = [px for px, _ in levels]
        worst = min(prices) if closing_side == 1 else max(prices)
        notional += remaining * worst
    return notional / qty


# ---------------------------------------------------------------------------------------------
# The event loop
# ---------------------------------------------------------------------------------------------

def _full_config(config: dict) -> dict:
    cfg = {}
    for name, (_dtype, default) in CONFIG_FIELDS.items():
        if name in config:
            cfg[name] = config[name]
        elif name in ("signal", "regime"):
            cfg[name] = default  # rows are irrelevant here: the arrays are passed in
        elif default is None:
            raise ValueError(f"oracle config: required field {name!r} is missing")
        else:
            cfg[name] = default
    out = {}
    for name, value in cfg.items():
        if isinstance(value, str):  # "inf" in JSON files
            value = float(value)
        out[name] = value
    return out


def run(book, signal, regime, config: dict, buckets: int) -> OracleResult:
    """Run one configuration over the book; see the module docstring."""
    cfg = _full_config(config)
    entry_th = float(cfg["entry"])
    exit_th = float(cfg["exit"])
    side_cfg = int(cfg["side"])
    band = float(cfg["band"])
    take_profit = float(cfg["take_profit"])
    stop_loss = float(cfg["stop_loss"])
    max_hold = float(cfg["max_hold"])
    size_frac = float(cfg["size_frac"])
    max_qty = float(cfg["max_qty"])
    cooldown = int(cfg["cooldown"])
    fee_rate = float(cfg["fee_bps"]) * BPS
    latency = int(cfg["latency"])
    capital = float(cfg["capital"])

    ts = [int(x) for x in np.asarray(book.ts)]
    T = len(ts)
    B = int(buckets)
    if B < 1:
        raise ValueError("buckets must be >= 1")
    bid_px = np.asarray(book.bid_px, dtype=np.float64)
    ask_px = np.asarray(book.ask_px, dtype=np.float64)
    bid_sz = np.asarray(book.bid_sz, dtype=np.float64)
    ask_sz = np.asarray(book.ask_sz, dtype=np.float64)
    # float32 bank values promoted to float64 (docs/RULES.md)
    s = [float(x) for x in np.asarray(signal, dtype=np.float32).astype(np.float64)]
    reg = [float(x) for x in np.asarray(regime, dtype=np.float32).astype(np.float64)]
    if len(s) != T or len(reg) != T:
        raise ValueError(f"signal/regime length {len(s)}/{len(reg)} != book length {T}")

    def bids(t):
        return _displayed_levels(bid_px[t], bid_sz[t])

    def asks(t):
        return _displayed_levels(ask_px[t], ask_sz[t])

    # State
    state = "flat"  # flat | entry_pending | position | exit_pending
    equity = capital
    next_entry_tick = 0
    # pending order
    pend_decision_tick = -1
    pend_side = 0
    pend_desired = 0.0
    pend_reason = ""
    pend_fill_tick = -1  # known once reached; -1 = not yet reached
    # position
    pos_side = 0
    pos_qty = 0.0
    pos_e = 0.0
    pos_entry_fee = 0.0
    pos_entry_tick = -1
    pos_entry_decision_tick = -1
    # last finite > 0 level-0 price seen on each side (for the executable top price p)
    last_bid = math.nan
    last_ask = math.nan

    trades: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    marks: list[float] = []

    def close(t_fill: int, vwap: float, reason: str, exit_decision_tick: int) -> None:
        nonlocal equity, state, next_entry_tick, pos_side, pos_qty
        exit_fee = fee_rate * vwap * pos_qty
        gross = pos_side * pos_qty * (vwap - pos_e)
        pnl = gross - pos_entry_fee - exit_fee
        equity += pnl
        trades.append(dict(
            side=pos_side, qty=pos_qty,
            entry_decision_tick=pos_entry_decision_tick, entry_tick=pos_entry_tick,
            exit_decision_tick=exit_decision_tick, exit_tick=t_fill,
            entry_vwap=pos_e, exit_vwap=vwap, entry_fee=pos_entry_fee, exit_fee=exit_fee,
            gross_pnl=gross, pnl=pnl, reason=reason,
        ))
        state = "flat"
        next_entry_tick = t_fill + 1 + cooldown
        pos_side = 0
        pos_qty = 0.0

    for t in range(T):
        # here last_bid/last_ask hold the last valid level-0 prices of ticks < t (updated below)
        pending_at_start = state in ("entry_pending", "exit_pending")

        # ---- 1. pending fill -----------------------------------------------------------------
        if pending_at_start:
            if pend_fill_tick < 0 and ts[t] >= ts[pend_decision_tick] + latency:
                pend_fill_tick = t  # the first t' > t_decision with ts[t'] >= ts[t_dec] + latency
            if pend_fill_tick >= 0:
                if state == "entry_pending":
                    levels = asks(t) if pend_side == 1 else bids(t)
                    qty, vwap = _walk_entry(levels, pend_desired)
                    if qty > 0.0:
                        state = "position"
                        pos_side = pend_side
                        pos_qty = qty
                        pos_e = vwap
                        pos_entry_fee = fee_rate * vwap * qty
                        pos_entry_tick = t
                        pos_entry_decision_tick = pend_decision_tick
                    else:
                        state = "flat"  # dropped: nothing displayed
                        next_entry_tick = t + 1
                        decisions[-1]["dropped"] = True
                else:  # exit pending: fills at the first tick from its fill tick that displays
                    levels = bids(t) if pos_side == 1 else asks(t)
                    if levels:
                        vwap = _walk_exit(levels, pos_qty, pos_side)
                        close(t, vwap, pend_reason, pend_decision_tick)

        # ---- 2. decision ---------------------------------------------------------------------
        if not pending_at_start:
            if state == "position" and t > pos_entry_tick:
                p = _current_top(t, pos_side, bid_px, ask_px, last_bid, last_ask, pos_e)
                move = pos_side * (p - pos_e)
                reason = ""
                if move <= -stop_loss * BPS * pos_e:
                    reason = "stop"
                elif move >= take_profit * BPS * pos_e:
                    reason = "take"
                elif ts[t] - ts[pos_entry_tick] >= max_hold:
                    reason = "time"
                elif (pos_side == 1 and s[t] <= -exit_th) or (pos_side == -1 and s[t] >= exit_th):
                    reason = "signal"
                if reason:
                    state = "exit_pending"
                    pend_decision_tick = t
                    pend_reason = reason
                    pend_fill_tick = -1
                    decisions.append(dict(tick=t, kind="exit", side=pos_side, reason=reason))
            elif state == "flat" and t >= next_entry_tick and equity > 0.0:
                want = 0
                if side_cfg != -1 and s[t] >= entry_th and (math.isinf(band) or reg[t] <= band):
                    want = 1
                elif side_cfg != 1 and s[t] <= -entry_th and (math.isinf(band) or reg[t] >= -band):
                    want = -1
                if want != 0:
                    px = float(ask_px[t, 0]) if want == 1 else float(bid_px[t, 0])
                    if math.isfinite(px) and px > 0.0:
                        desired = min(size_frac * equity / px, max_qty)
                        state = "entry_pending"
                        pend_decision_tick = t
                        pend_side = want
                        pend_desired = desired
                        pend_fill_tick = -1
                        decisions.append(dict(tick=t, kind="entry", side=want, desired=desired,
                                              dropped=False))

        # ---- 3. mark -------------------------------------------------------------------------
        if state in ("position", "exit_pending"):
            p = _current_top(t, pos_side, bid_px, ask_px, last_bid, last_ask, pos_e)
            marks.append(equity + pos_side * pos_qty * (p - pos_e) - pos_entry_fee)
        else:
            marks.append(equity)

        # remember the last valid level-0 prices (used at later ticks)
        b0, a0 = float(bid_px[t, 0]), float(ask_px[t, 0])
        if math.isfinite(b0) and b0 > 0.0:
            last_bid = b0
        if math.isfinite(a0) and a0 > 0.0:
            last_ask = a0

    # ---- after the last tick ---------------------------------------------------------------------
    if T > 0:
        last = T - 1
        if state == "entry_pending":
            state = "flat"
            decisions[-1]["dropped"] = True
        elif state in ("exit_pending", "position"):
            reason = pend_reason if state == "exit_pending" else "end"
            dec_tick = pend_decision_tick if state == "exit_pending" else last
            levels = bids(last) if pos_side == 1 else asks(last)
            if levels:
                vwap = _walk_exit(levels, pos_qty, pos_side)
            else:  # nothing displayed: the executable top price p (last seen price)
                # last_bid/last_ask now include tick T-1, which is fine: T-1 has no valid top here
                vwap = _current_top(last, pos_side, bid_px, ask_px, last_bid, last_ask, pos_e)
            close(last, vwap, reason, dec_tick)

    metrics, bpnl, btr, bwin = _metrics(trades, marks, ts, T, B, capital, equity)
    return OracleResult(metrics=metrics, bucket_pnl=bpnl, bucket_trades=btr, bucket_wins=bwin,
                        trades=trades, marks=marks, decisions=decisions)


def _current_top(t, side, bid_px, ask_px, last_bid, last_ask, e) -> float:
    """p at tick t: level-0 price of the closing side when finite and > 0, else the last such
    price seen at an earlier tick (`last_*` hold those), else the entry VWAP `e`."""
    px = float(bid_px[t, 0]) if side == 1 else float(ask_px[t, 0])
    if math.isfinite(px) and px > 0.0:
        return px
    last = last_bid if side == 1 else last_ask
    return last if not math.isnan(last) else e


# ---------------------------------------------------------------------------------------------
# Metrics (docs/RULES.md: the metric list under "The rules", and "Marks and metrics")
# ---------------------------------------------------------------------------------------------

def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for wins / n; (NaN, NaN) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    p = wins / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return centre - half, centre + half


def _metrics(trades, marks, ts, T, B, capital, equity):
    n = len(trades)
    pnls = [tr["pnl"] for tr in trades]
    win_pnls = [x for x in pnls if x > 0.0]
    loss_pnls = [x for x in pnls if x < 0.0]
    wins = len(win_pnls)

    bucket_pnl = np.zeros(B, dtype=np.float64)
    bucket_trades = np.zeros(B, dtype=np.int64)
    bucket_wins = np.zeros(B, dtype=np.int64)
    for tr in trades:
        b = tr["exit_tick"] * B // T
        bucket_pnl[b] += tr["pnl"]
        bucket_trades[b] += 1
        if tr["pnl"] > 0.0:
            bucket_wins[b] += 1

    m: dict[str, float] = {}
    m["trades"] = n
    m["wins"] = wins
    m["win_rate"] = wins / n if n else math.nan
    m["win_rate_lo"], m["win_rate_hi"] = wilson(wins, n)
    m["net_pnl"] = sum(pnls)
    m["gross_pnl"] = sum(tr["gross_pnl"] for tr in trades)
    m["fees"] = sum(tr["entry_fee"] + tr["exit_fee"] for tr in trades)
    m["expectancy"] = m["net_pnl"] / n if n else math.nan
    if n == 0:
        m["profit_factor"] = math.nan
    elif not loss_pnls:
        m["profit_factor"] = math.inf
    else:
        m["profit_factor"] = sum(win_pnls) / -sum(loss_pnls)
    m["avg_win"] = sum(win_pnls) / len(win_pnls) if win_pnls else math.nan
    m["avg_loss"] = sum(loss_pnls) / len(loss_pnls) if loss_pnls else math.nan
    if math.isnan(m["avg_win"]) or math.isnan(m["avg_loss"]):
        m["payoff_ratio"] = math.nan
    else:
        m["payoff_ratio"] = m["avg_win"] / -m["avg_loss"]

    r = [float(x) / capital for x in bucket_pnl]
    sharpe = sortino = 0.0
    if B >= 2:
        mean = sum(r) / B
        var = sum((x - mean) ** 2 for x in r) / (B - 1)
        sd = math.sqrt(var)
        if sd > 0.0:
            sharpe = mean / sd
        dd = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / B)
        if dd > 0.0:
            sortino = mean / dd
    m["sharpe"] = sharpe
    m["sortino"] = sortino

    peak = capital
    mdd = 0.0
    for mark in marks:
        peak = max(peak, mark)
        mdd = max(mdd, (peak - mark) / peak)
    m["max_drawdown"] = mdd
    m["final_equity"] = equity
    m["exposure"] = sum(tr["exit_tick"] - tr["entry_tick"] for tr in trades) / T if T else 0.0
    m["mean_hold_s"] = (sum((ts[tr["exit_tick"]] - ts[tr["entry_tick"]]) / 1e9 for tr in trades) / n
                        if n else math.nan)
    for reason in EXIT_REASONS:
        m[f"exits_{reason}"] = sum(1 for tr in trades if tr["reason"] == reason)
    return {k: m[k] for k in METRICS}, bucket_pnl, bucket_trades, bucket_wins
