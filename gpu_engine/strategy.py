"""The trading rules v1 (docs/RULES.md), written once as scalar numba functions for both kernels.

Every function here is `@numba.njit(inline="always")` plain scalar code (no cupy, no
allocation, no exceptions), and numba-cuda compiles it for the GPU (deliberately not
`cuda.jit(device=True)`, which breaks compile_ptx without a GPU). The rules are
`init_state` (before tick 0), `run_ticks` (the tick loop over [t0, t1), state in and out as
a tuple of scalars) and `finish_config` (the close after the last tick). The CUDA kernel
(kernels/cuda.py, one thread per configuration) calls `run_config` = those three over
[0, T) with the state in registers; the CPU kernel (kernels/cpu.py) calls them per chunk of
ticks with a prange over configurations, carrying the state in arrays between chunks.

Book inputs prepared once per sweep by `kernels.prepare_book`:
  ts int64 [T]; bid_px/ask_px float64 [T, L]; bid_sz/ask_sz float32 [T, L];
  bid0/ask0 float64 [T]: level-0 price where finite and > 0, else NaN (entry decisions);
  pbid/pask float64 [T]: the executable top price of RULES.md, i.e. the level-0 price
  where finite and > 0, else the last such price at an earlier tick, NaN if none yet
  (the kernel then falls back to the entry VWAP).

Arithmetic follows the rules' text left to right (e.g. the mark is
`equity + side * qty * (p - e) - entry_fee`, the take-profit test
`side * (p - e) >= take_profit * 1e-4 * e`) so that an independent implementation of
the same text gets the same bits.

Outputs per configuration c: raw[c, :] (metrics.RAW layout) and bucket_pnl/
bucket_trades/bucket_wins[c, :] by the bucket floor(t * B / T) of the exit fill tick.
"""
from __future__ import annotations

import math

import numba

from gpu_engine.enums import (
    ENTRY_PENDING,
    EXIT_END,
    EXIT_PENDING,
    EXIT_SIGNAL,
    EXIT_STOP,
    EXIT_TAKE,
    EXIT_TIME,
    FLAT,
    IN_POSITION,
)
from gpu_engine.metrics import (
    NRAW,
    R_EQUITY,
    R_EXIT0,
    R_FEES,
    R_GROSS,
    R_HELD_NS,
    R_HELD_TICKS,
    R_LOSSES,
    R_MAXDD,
    R_NET,
    R_SUMLOSS,
    R_SUMWIN,
    R_TRADES,
    R_WINS,
)

INF = math.inf
BPS = 1e-4

inline = numba.njit(inline="always")


@inline
def displayed(p, s):
    """A level is displayed when its price and size are finite and > 0 (NaN fails every test)."""
    return p > 0.0 and p < INF and s > 0.0 and s < INF


@inline
def entry_walk(px, sz, t, desired):
    """Entry fill at tick t: take min(desired, total displayed) walking from level 0.

    Returns (qty, vwap); qty == 0.0 when nothing is displayed (the entry is dropped).
    The first pass stops once the running total reaches `desired` (the sum of positive sizes
    only grows, so min(desired, total) is then `desired` exactly): fills touch few levels.
    """
    L = px.shape[1]
    total = 0.0
    for l in range(L):
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            total += s
            if total >= desired:
                break
    if not total > 0.0:
        return 0.0, 0.0
    q = min(desired, total)
    rem = q
    notional = 0.0
    for l in range(L):
        if rem <= 0.0:
            break
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            take = min(rem, s)
            notional += p * take
            rem -= take
    return q, notional / q


@inline
def exit_walk(px, sz, t, qty, sell):
    """Exit fill at tick t for the whole qty: walk the displayed levels from level 0; what is
    beyond the displayed depth fills at the worst displayed price (lowest bid for a sell,
    highest ask for a buy). Returns (filled, vwap); filled is False when nothing is displayed.
    The walk stops once the quantity is filled: the worst price matters only when it is not,
    and then every level has been seen.
    """
    L = px.shape[1]
    rem = qty
    notional = 0.0
    worst = 0.0
    seen = False
    for l in range(L):
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            if not seen:
                worst = p
                seen = True
            elif sell:
                if p < worst:
                    worst = p
            else:
                if p > worst:
                    worst = p
            take = min(rem, s)
            notional += p * take
            rem -= take
            if rem <= 0.0:
                break
    if not seen:
        return False, 0.0
    if rem > 0.0:
        notional += rem * worst
    return True, notional / qty


@inline
def top_price(p, e):
    """Executable top price: the last-seen top p (pbid[t] or pask[t]), else the entry VWAP.

    Scalars only: passing arrays into an inlined function costs an atomic refcount pair per
    call, which dominated the per-tick cost of an open position on the CPU.
    """
    if p != p:
        return e
    return p


@inline
def exit_reason(d, stop_thr, take_thr, held_ns, max_hold, s, pos, exit_thr):
    """Rule 4 in order stop, take, time, signal; -1 when none holds.

    d = side * (p - e); stop_thr = -stop_loss * bps * e; take_thr = take_profit * bps * e.
    """
    if d <= stop_thr:
        return EXIT_STOP
    if d >= take_thr:
        return EXIT_TAKE
    if held_ns >= max_hold:
        return EXIT_TIME
    if pos > 0:
        if s <= -exit_thr:
            return EXIT_SIGNAL
    else:
        if s >= exit_thr:
            return EXIT_SIGNAL
    return -1


@inline
def entry_side(s, r, side, entry, band, use_band):
    """Rule 2: +1 long, -1 short, 0 none (s and r already float64; NaN compares false)."""
    if side != -1 and s >= entry and (not use_band or r <= band):
        return 1
    if side != 1 and s <= -entry and (not use_band or r >= -band):
        return -1
    return 0


@inline
def book_trade(c, raw, bpnl, btr, bwin, B, T, t, pnl, gross, fees, held_ticks, held_ns, reason):
    """Add one closed trade to the raw sums and to the bucket of its exit fill tick t."""
    raw[c, R_TRADES] += 1.0
    if pnl > 0.0:
        raw[c, R_WINS] += 1.0
        raw[c, R_SUMWIN] += pnl
    elif pnl < 0.0:
        raw[c, R_LOSSES] += 1.0
        raw[c, R_SUMLOSS] += pnl
    raw[c, R_NET] += pnl
    raw[c, R_GROSS] += gross
    raw[c, R_FEES] += fees
    raw[c, R_HELD_TICKS] += held_ticks
    raw[c, R_HELD_NS] += held_ns
    raw[c, R_EXIT0 + reason] += 1.0
    b = (t * B) // T
    bpnl[c, b] += pnl
    btr[c, b] += 1
    if pnl > 0.0:
        bwin[c, b] += 1


@inline
def close_trade(c, raw, bpnl, btr, bwin, B, T, t, ts, pos, qty, v, e, efee, fee, etick, ets, reason):
    """Rule 5 at the exit fill tick t with exit VWAP v: book the trade, return its net PnL."""
    gross = pos * qty * (v - e)
    xfee = fee * v * qty
    pnl = gross - efee - xfee
    book_trade(c, raw, bpnl, btr, bwin, B, T, t, pnl, gross, efee + xfee,
               float(t - etick), float(ts[t] - ets), reason)
    return pnl


@inline
def drawdown(m, peak, trough, max_dd):
    """Rule 6 for one mark m: (peak, trough, max_dd) after it. The deepest drawdown from a
    peak is at the lowest mark after it, so max_dd only needs a look at new troughs."""
    if m > peak:
        peak = m
        trough = m
    elif m < trough:
        trough = m
        dd = (peak - m) / peak
        if dd > max_dd:
            max_dd = dd
    return peak, trough, max_dd


@inline
def reset_outputs(c, raw, bpnl, btr, bwin):
    """Zero configuration c's raw sums and buckets (the trades then add into them)."""
    for k in range(NRAW):
        raw[c, k] = 0.0
    for b in range(bpnl.shape[1]):
        bpnl[c, b] = 0.0
        btr[c, b] = 0
        bwin[c, b] = 0


# The state of one configuration between ticks, in this order (floats, then integers):
#   equity, peak, trough, max_dd, qty, e, efee, stop_thr, take_thr, desired,
#   state, pos, etick, ets, reason, target, next_entry.
# `run_ticks` takes it as scalars and returns it as a tuple, so a caller can keep it in
# registers (CUDA: one call over [0, T)) or carry it across tick chunks in arrays (CPU).
NSTATE_F = 10
NSTATE_I = 7


@inline
def init_state(ts0, cap):
    """The state before tick 0 (ts0 = ts[0], cap = the configuration's capital)."""
    return (cap, cap, cap, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            FLAT, 0, 0, ts0, 0, ts0, 0)


@inline
def run_ticks(c, t0, t1, book, cfg, raw, bpnl, btr, bwin, st):
    """Configuration c over ticks [t0, t1) (RULES.md order of work); returns the new state.

    book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank); cfg = the
    configuration arrays in enums.CONFIG_FIELDS order; raw, bpnl, btr, bwin = the outputs; st = the
    state tuple (NSTATE_F floats, NSTATE_I integers; see above). Tuples, because CPython
    compiles a call with more than 30 arguments to CALL_FUNCTION_EX, which numba cannot
    inline. Running [0, T) in one call or in consecutive chunks gives the same bits: every
    value the loop carries from one tick to the next is in the state tuple, and the trades
    add into the raw/bucket sums at their global exit tick.
    """
    (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank) = book
    (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
     size_frac, max_qty, cooldown, fee_bps, latency, capital) = cfg
    (equity, peak, trough, max_dd, qty, e, efee, stop_thr, take_thr, desired,
     state, pos, etick, ets, reason, target, next_entry) = st
    T = ts.shape[0]
    B = bpnl.shape[1]
    srow = signal[c]
    rrow = regime[c]
    cfg_side = int(side[c])
    ent = entry[c]
    ex = exit_[c]
    bd = band[c]
    use_band = bd < INF
    tp = take_profit[c]
    sl = stop_loss[c]
    mh = max_hold[c]
    use_time = mh < INF
    sf = size_frac[c]
    mq = max_qty[c]
    cd = cooldown[c]
    fee = fee_bps[c] * BPS
    lat = latency[c]

    for t in range(t0, t1):
        if state == ENTRY_PENDING:
            if ts[t] >= target:
                if pos > 0:
                    q, v = entry_walk(ask_px, ask_sz, t, desired)
                else:
                    q, v = entry_walk(bid_px, bid_sz, t, desired)
                if q > 0.0:
                    qty = q
                    e = v
                    efee = fee * e * qty
                    etick = t
                    ets = ts[t]
                    stop_thr = -sl * BPS * e
                    take_thr = tp * BPS * e
                    state = IN_POSITION
                else:
                    state = FLAT
                    pos = 0
        elif state == EXIT_PENDING:
            if ts[t] >= target:
                if pos > 0:
                    ok, v = exit_walk(bid_px, bid_sz, t, qty, True)
                else:
                    ok, v = exit_walk(ask_px, ask_sz, t, qty, False)
                if ok:
                    equity = equity + close_trade(c, raw, bpnl, btr, bwin, B, T, t, ts, pos, qty, v,
                                                  e, efee, fee, etick, ets, reason)
                    state = FLAT
                    pos = 0
                    next_entry = t + 1 + cd
                    # the mark of a flat tick is the equity: only an exit fill moves it
                    peak, trough, max_dd = drawdown(equity, peak, trough, max_dd)
        elif state == IN_POSITION:
            if pos > 0:
                p = top_price(pbid[t], e)
            else:
                p = top_price(pask[t], e)
            d = pos * (p - e)
            held = 0.0
            if use_time:
                held = float(ts[t] - ets)
            rsn = exit_reason(d, stop_thr, take_thr, held, mh, float(bank[srow, t]), pos, ex)
            if rsn >= 0:
                reason = rsn
                state = EXIT_PENDING
                target = ts[t] + lat
        else:
            if t >= next_entry and equity > 0.0:
                s = float(bank[srow, t])
                r = 0.0
                if use_band:
                    r = float(bank[rrow, t])
                want = entry_side(s, r, cfg_side, ent, bd, use_band)
                if want != 0:
                    if want > 0:
                        px = ask0[t]
                    else:
                        px = bid0[t]
                    if px > 0.0 and px < INF:
                        desired = min(sf * equity / px, mq)
                        pos = want
                        state = ENTRY_PENDING
                        target = ts[t] + lat

        if state == IN_POSITION or state == EXIT_PENDING:
            if pos > 0:
                p = top_price(pbid[t], e)
            else:
                p = top_price(pask[t], e)
            m = equity + pos * qty * (p - e) - efee
            peak, trough, max_dd = drawdown(m, peak, trough, max_dd)

    return (equity, peak, trough, max_dd, qty, e, efee, stop_thr, take_thr, desired,
            state, pos, etick, ets, reason, target, next_entry)


@inline
def finish_config(c, book, cfg, raw, bpnl, btr, bwin, st):
    """After the last tick: close what is open and write max_dd and the final equity
    (arguments as for run_ticks)."""
    (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank) = book
    (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
     size_frac, max_qty, cooldown, fee_bps, latency, capital) = cfg
    (equity, peak, trough, max_dd, qty, e, efee, stop_thr, take_thr, desired,
     state, pos, etick, ets, reason, target, next_entry) = st
    T = ts.shape[0]
    B = bpnl.shape[1]
    fee = fee_bps[c] * BPS
    # after the last tick: a pending entry is dropped; a pending exit or an open position
    # fills at T-1 by the exit walk (at the last seen price when nothing is displayed);
    # the marks of tick T-1 are not recomputed.
    if state == IN_POSITION or state == EXIT_PENDING:
        t = T - 1
        if state == IN_POSITION:
            reason = EXIT_END
        if pos > 0:
            ok, v = exit_walk(bid_px, bid_sz, t, qty, True)
        else:
            ok, v = exit_walk(ask_px, ask_sz, t, qty, False)
        if not ok:
            if pos > 0:
                v = top_price(pbid[t], e)
            else:
                v = top_price(pask[t], e)
        equity = equity + close_trade(c, raw, bpnl, btr, bwin, B, T, t, ts, pos, qty, v,
                                      e, efee, fee, etick, ets, reason)

    raw[c, R_MAXDD] = max_dd
    raw[c, R_EQUITY] = equity


@inline
def run_config(c, ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank,
               signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
               size_frac, max_qty, cooldown, fee_bps, latency, capital,
               raw, bpnl, btr, bwin):
    """Simulate configuration c over all ticks in one call (the CUDA kernel's thread body)."""
    book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank)
    cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
           size_frac, max_qty, cooldown, fee_bps, latency, capital)
    reset_outputs(c, raw, bpnl, btr, bwin)
    st0 = init_state(ts[0], capital[c])
    st1 = run_ticks(c, 0, ts.shape[0], book, cfg, raw, bpnl, btr, bwin, st0)
    finish_config(c, book, cfg, raw, bpnl, btr, bwin, st1)


_RULE_FUNCTIONS = ("displayed", "entry_walk", "exit_walk", "top_price", "exit_reason",
                   "entry_side", "book_trade", "close_trade", "drawdown", "reset_outputs", "init_state", "run_ticks",
                   "finish_config", "run_config")


def python_twin(name: str = "run_config"):
    """The same rule function as plain Python, calling plain-Python twins of its helpers.

    For numba-cuda's simulator, whose device arrays a compiled njit function cannot unbox:
    the twins re-use each function's code object with globals in which every rule function is
    its own twin, so the simulated kernel runs exactly this module's text.
    """
    import types

    namespace = dict(globals())
    for fn in _RULE_FUNCTIONS:
        code = globals()[fn].py_func.__code__
        namespace[fn] = types.FunctionType(code, namespace, fn)
    return namespace[name]
