"""The trading rules (docs/RULES.md, v2 = v1 plus maker orders, queue position and
contracts), written once as scalar numba functions for both kernels.

Every function here is `@numba.njit(inline="always")` plain scalar code (no cupy, no
allocation, no exceptions), and numba-cuda compiles it for the GPU (deliberately not
`cuda.jit(device=True)`, which breaks compile_ptx without a GPU). The rules are
`init_state` (before tick 0), `run_ticks` (the tick loop over [t0, t1), state in and out as
a tuple of scalars) and `finish_config` (the close after the last tick). The CUDA kernel
(kernels/cuda.py, one thread per configuration) calls `run_one` = those three over [0, T)
with the state in registers; the CPU kernel (kernels/cpu.py) calls them per chunk of ticks
with a prange over configurations, carrying the state in arrays between chunks. The queue
position models of a resting maker order are in gpu_engine/queue.py, called from here.

The arrays may hold a window of the book instead of all of it (a streamed run,
kernels/stream.py): rows [off, off + n) of a book of T ticks, `off` and `T` read from the
market array (enums.M_OFFSET, M_TOTAL; 0 and the row count for a whole book). Every rule
that depends on where a tick lies in the book uses global indices: the state's tick indices,
the last-tick rules (t == T - 1, the close after the last tick), the bucket of a trade;
`run_window` = one window with the state carried in arrays (load_state / store_state), and
consecutive windows give the bits of one call over the whole book.

Book inputs prepared once per sweep by `kernels.prepare_book` (or per window by
`kernels.prepare_window`; then T below is the window's row count n, and "earlier tick"
includes the ticks of earlier windows) (the `book` tuple, in order):
  ts int64 [T]; bid_px/ask_px float64 [T, L]; bid_sz/ask_sz float32 [T, L];
  bid0/ask0 float64 [T]: level-0 price where finite and > 0, else NaN (entry decisions);
  pbid/pask float64 [T]: the executable top price of RULES.md, i.e. the level-0 price
  where finite and > 0, else the last such price at an earlier tick, NaN if none yet
  (the kernel then falls back to the entry price);
  dbid/dask float64 [T]: the best displayed price (highest displayed bid, lowest displayed
  ask; NaN when the side displays nothing): post-only checks and crossing fills;
  rsum float64 [T, NROWSUM] (enums.ROWSUM_FIELDS, kernels.row_summary): each side's
  deepest displayed price and the tick's extreme trade prices by aggressor (a resting
  maker order's level search and trades start from them);
  tr_start int64 [T + 1]: the trades of tick t are tr_start[t] <= k < tr_start[t + 1]
  (trade k goes to the first tick with ts >= its time); tr_px float64, tr_qty float64,
  tr_side int8 (+1 buyer-, -1 seller-initiated) [N >= 1];
  mkt float64 [NKMARKET]: the run-wide market (enums.MARKET_FIELDS: inverse flag,
  multiplier, tick size, lot size, queue model, power exponent), then the window
  (enums.WINDOW_FIELDS: global index of row 0, tick count of the whole book, 1 when the
  window's displayed levels are in price order at every row: kernels.levels_sorted);
  bank float32 [K, T]: the feature bank (signal and regime rows).

Arithmetic follows the rules' text left to right (e.g. value(q, p) = `q * m * p`, the
take-profit test `side * (p - e) >= take_profit * 1e-4 * e`, a fill's fee
`rate * value(q, p)`) so that an independent implementation of the same text gets the same
bits. Integer price ticks: tick(x) = round(x / tick_size) (half to even); every comparison of a maker
order's price with a book or trade price is made in ticks.

Outputs per configuration c: raw[c, :] (enums.RAW layout) and bucket_pnl/
bucket_trades/bucket_wins[c, :] by the bucket floor(t * B / T) of the exit fill tick
(t global, T the whole book's tick count).
"""
from __future__ import annotations

import math

import numba

from gpu_engine.enums import (
    ENTRY_PENDING,
    ENTRY_WORKING,
    EXIT_END,
    EXIT_PENDING,
    EXIT_SIGNAL,
    EXIT_STOP,
    EXIT_TAKE,
    EXIT_TIME,
    FLAT,
    IN_POSITION,
    M_INVERSE,
    M_LOT,
    M_MULT,
    M_OFFSET,
    M_SORTED,
    M_QUEUE,
    M_QUEUE_N,
    M_TICK,
    M_TOTAL,
    MAKER,
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
    RS_ASK_DEEP,
    RS_BID_DEEP,
    RS_BUY_HI,
    RS_SELL_LO,
)
from gpu_engine.queue import QUEUE_FUNCTIONS, queue_arrive, queue_depth, queue_trade

INF = math.inf
BPS = 1e-4

# The maker order slot of a configuration (at most one maker order at a time: the entry
# while it works, or the take profit while a position is open): MST_FLIGHT = posted, not
# yet arrived; MST_LIVE = resting in the book; MST_CANCEL (a flag added to either) = a
# cancel is on its way.
MST_NONE, MST_FLIGHT, MST_LIVE, MST_CANCEL = 0, 1, 2, 4
# What a maker order's tick asks of the size at its price (run_ticks): nothing, the depth
# update of a live order, or the queue position of an arriving one.
LOOK_NONE, LOOK_DEPTH, LOOK_ARRIVE = 0, 1, 2

inline = numba.njit(inline="always")


@inline
def displayed(p, s):
    """A level is displayed when its price and size are finite and > 0 (NaN fails every test)."""
    return p > 0.0 and p < INF and s > 0.0 and s < INF


@inline
def value(q, p, m, inv):
    """value(q, p): q * m * p (linear, quote currency) or q * m / p (inverse, base currency)."""
    if inv:
        return q * m / p
    return q * m * p


@inline
def floor_units(q, lot):
    """q contracts rounded down to whole lots, in units: floor(q / lot) lots when lot > 0;
    with lot 0 (continuous) the unit is the contract and q is unchanged. Every quantity of the
    rules is held in units (contracts = units * unit, unit = lot or 1), so that lot-rounded
    quantities add and subtract exactly and are never rounded twice."""
    if lot > 0.0:
        return math.floor(q / lot)
    return q


@inline
def to_tick(x, tick):
    """The integer price tick of price x: round(x / tick_size), half to even."""
    return round(x / tick)


@inline
def tick_cmp(x, k, tick):
    """The sign of to_tick(x) - k (-1, 0 or 1) for a price x > 0 (+inf and -inf compare as
    beyond every tick). A price more than 3/4 of a tick from k's is on its side of k without
    the division: x > (k + 3/4) tick gives x / tick > k + 1/2, which rounds to k + 1 or more;
    only a price near k's tick is converted."""
    if x > (k + 0.75) * tick:
        return 1
    if x < (k - 0.75) * tick:
        return -1
    d = to_tick(x, tick) - k
    if d > 0:
        return 1
    if d < 0:
        return -1
    return 0


@inline
def entry_walk(px, sz, t, desired, lot, inv):
    """Taker entry fill at tick t of `desired` units: min(desired, floor_units(total
    displayed)) units, walking from level 0. Returns (units, average price): volume-weighted
    (linear) or harmonic, sum q / sum(q / p) (inverse); units == 0.0 when nothing (or less
    than a lot) can be taken (the entry is dropped). The first pass stops once the running
    total covers `desired` (the minimum is then `desired` exactly): fills touch few levels.
    """
    L = px.shape[1]
    total = 0.0
    for l in range(L):
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            total += s
            if lot > 0.0:
                if total / lot >= desired:
                    break
            elif total >= desired:
                break
    if not total > 0.0:
        return 0.0, 0.0
    u = min(desired, floor_units(total, lot))
    if not u > 0.0:
        return 0.0, 0.0
    q = u
    if lot > 0.0:
        q = u * lot
    rem = q
    acc = 0.0
    for l in range(L):
        if rem <= 0.0:
            break
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            take = min(rem, s)
            if inv:
                acc += take / p
            else:
                acc += p * take
            rem -= take
    if inv:
        return u, q / acc
    return u, acc / q


@inline
def exit_walk(px, sz, t, qty, sell, inv):
    """Taker exit fill at tick t for the whole qty: walk the displayed levels from level 0;
    what is beyond the displayed depth fills at the worst displayed price (lowest bid for a
    sell, highest ask for a buy). Returns (filled, average price as in entry_walk); filled is
    False when nothing is displayed. The walk stops once the quantity is filled: the worst
    price matters only when it is not, and then every level has been seen.
    """
    L = px.shape[1]
    rem = qty
    acc = 0.0
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
            if inv:
                acc += take / p
            else:
                acc += p * take
            rem -= take
            if rem <= 0.0:
                break
    if not seen:
        return False, 0.0
    if rem > 0.0:
        if inv:
            acc += rem / worst
        else:
            acc += rem * worst
    if inv:
        return True, qty / acc
    return True, acc / qty


@inline
def level_size(px, sz, t, k, tick, buy):
    """The displayed size at price tick k on one side of tick t (bids for a buy order, asks
    for a sell), as the rules define it: the sum of the displayed levels at tick k; 0 when k
    is better than the side's best displayed price or inside the displayed range without a
    level; +inf (unknown) when k lies beyond the deepest displayed level or nothing is
    displayed. The whole scan: the definition `level_search` is tested against."""
    L = px.shape[1]
    hi = -INF
    lo = INF
    size = 0.0
    for l in range(L):
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            hi = max(hi, p)
            lo = min(lo, p)
            if to_tick(p, tick) == k:
                size += s
    if not lo < INF:
        return INF
    if size > 0.0:
        return size
    if (buy and k < to_tick(lo, tick)) or (not buy and k > to_tick(hi, tick)):
        return INF
    return 0.0


@inline
def level_bound(best, deep, k, tick, buy):
    """What a side's best and deepest displayed prices (NaN: nothing displayed;
    kernels.row_summary) alone say of the size at price tick k: +inf (unknown: nothing
    displayed, or k beyond the deepest level), 0.0 (k better than the best), or -1.0 (k
    inside the displayed range: the levels must be searched). The price tick is monotonic
    in the price, so no level can be at k outside [deepest tick, best tick]."""
    if not best > 0.0:
        return INF
    if buy:
        if tick_cmp(deep, k, tick) > 0:
            return INF
        if tick_cmp(best, k, tick) < 0:
            return 0.0
    else:
        if tick_cmp(deep, k, tick) < 0:
            return INF
        if tick_cmp(best, k, tick) > 0:
            return 0.0
    return -1.0


@inline
def level_side(p, k, tick, buy):
    """Where a displayed level at price p lies against price tick k on its side: > 0 better
    than k (nearer the touch), 0 at k, < 0 behind k (tick_cmp, signed for the side)."""
    d = tick_cmp(p, k, tick)
    if buy:
        return d
    return -d


@inline
def level_at_hint(pb, sb, pa, sa, pc, sc, first, last, k, tick, buy):
    """The size at price tick k from three consecutive levels of a side whose displayed levels
    are in price order (before, at and after a hint: prices and sizes; `first`: the middle
    one is level 0, nothing before it; `last`: it is the last level, nothing after it), or
    -1.0 when they do not settle it. Settled: the middle level displayed at k, after a
    displayed level better than k (or none) and before a displayed level behind k (or none):
    its size; the middle level displayed behind k after a displayed level better than k (or
    none): 0, no level is at k. Scalars only (run_ticks reads the three levels itself: no
    array arguments to an inlined function)."""
    if not displayed(pa, sa):
        return -1.0
    if not first and not (displayed(pb, sb) and level_side(pb, k, tick, buy) > 0):
        return -1.0
    g = level_side(pa, k, tick, buy)
    if g < 0:
        return 0.0
    if g == 0 and (last or (displayed(pc, sc) and level_side(pc, k, tick, buy) < 0)):
        return sa
    return -1.0


@numba.njit(nogil=True)
def level_search(bid_px, bid_sz, ask_px, ask_sz, t, k, tick, buy, srt, best, deep, hint):
    """level_size of the order's side (the bids for a buy, the asks for a sell: both sides'
    arrays are passed, so that the rules call this at one place whichever the side), with
    the side's best and deepest displayed prices at tick t (`best`, `deep`) and, for
    a book whose displayed levels are in price order at every row (`srt`,
    kernels.levels_sorted), a search from level `hint` (any index in [0, L): the answer does
    not depend on it; the first level at or behind k last time is a good one, books move
    little between rows). Returns (size, the new hint). Same answer as level_size: in price
    order the displayed levels at k are consecutive among the displayed ones, summed here in
    level order as the whole scan sums them."""
    size = level_bound(best, deep, k, tick, buy)
    if not size < 0.0:
        return size, hint
    if buy:
        px = bid_px
        sz = bid_sz
    else:
        px = ask_px
        sz = ask_sz
    L = px.shape[1]
    size = 0.0
    if not srt:
        for l in range(L):
            p = px[t, l]
            s = float(sz[t, l])
            if displayed(p, s) and level_side(p, k, tick, buy) == 0:
                size += s
        return size, hint
    # a displayed level at or behind k from the hint on (wrapping round: the deepest
    # displayed level is at or behind k, as k is inside the displayed range) ...
    f = -1
    gf = 0
    sf = 0.0
    l = hint
    for _ in range(L):
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            g = level_side(p, k, tick, buy)
            if g <= 0:
                f = l
                gf = g
                sf = s
                break
        l += 1
        if l == L:
            l = 0
    if f < 0:
        return 0.0, hint
    # ... then back to the first such level (every displayed level before it is better) ...
    l = f - 1
    while l >= 0:
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            g = level_side(p, k, tick, buy)
            if g > 0:
                break
            f = l
            gf = g
            sf = s
        l -= 1
    if gf < 0:
        return 0.0, f
    # ... and the displayed levels at k from there on
    size = sf
    l = f + 1
    while l < L:
        p = px[t, l]
        s = float(sz[t, l])
        if displayed(p, s):
            if level_side(p, k, tick, buy) < 0:
                break
            size += s
        l += 1
    return size, f


@inline
def crosses(opp_best, k, tick, buy):
    """Whether the opposite side's best displayed price (NaN: none) is at or through price
    tick k: best ask <= k for a buy, best bid >= k for a sell (post-only rejection at
    arrival, crossing fill while live)."""
    if not opp_best > 0.0:
        return False
    if buy:
        return tick_cmp(opp_best, k, tick) <= 0
    return tick_cmp(opp_best, k, tick) >= 0


@inline
def trades_reach(reach, k, tick, buy):
    """Whether any trade of a tick can hit a maker order at price tick k: its extreme
    aggressor price `reach` (kernels.row_summary: the lowest sell-aggressor price for a buy
    order, +inf when none; the highest buy-aggressor price for a sell, -inf when none) is at
    or through k. When not, trade_hit would leave the order as it is for every trade of the
    tick (the price tick is monotonic in the price)."""
    if not reach == reach:
        return True  # not a number (no valid tape has one): read the trades as the rules do
    if buy:
        return tick_cmp(reach, k, tick) <= 0
    return tick_cmp(reach, k, tick) >= 0


@inline
def top_price(p, e):
    """Executable top price: the last-seen top p (pbid[t] or pask[t]), else the entry price.

    Scalars only: passing arrays into an inlined function costs an atomic refcount pair per
    call, which dominated the per-tick cost of an open position on the CPU.
    """
    if p != p:
        return e
    return p


@inline
def exit_reason(d, stop_thr, take_thr, held_ns, max_hold, s, pos, exit_thr):
    """Rule 4 in order stop, take, time, signal; -1 when none holds.

    d = side * (p - e); stop_thr = -stop_loss * bps * e; take_thr = take_profit * bps * e
    (inf while a maker take profit rests: the take test is off).
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
def book_fill(opening, sgn, u, unit, p, rate, m, inv, qopen, cash, fees):
    """Trade accounting of one fill of u units (q = u * unit contracts) at price p (sgn =
    side * sigma, +-1; rate = fee bps * 1e-4 of the fill's liquidity): opening q_open += u,
    cash -= sgn * value(q, p); closing q_open -= u, cash += sgn * value(q, p); fees +=
    rate * value(q, p). Returns (q_open, cash, fees, this fill's fee)."""
    v = value(u * unit, p, m, inv)
    if opening:
        qopen = qopen + u
        cash = cash - sgn * v
    else:
        qopen = qopen - u
        cash = cash + sgn * v
    fee = rate * v
    return qopen, cash, fees + fee, fee


@inline
def entry_price(qopen, unit, cash, sgn, m, inv):
    """e after the opening fills: sum(q m p) / sum(q m) (linear) or sum(q m) / sum(q m / p)
    (inverse), with sum(value) = -sgn * cash (only opening fills so far) and sum(q m) =
    q_open * unit * m."""
    s = -sgn * cash
    if inv:
        return qopen * unit * m / s
    return s / (qopen * unit * m)


@inline
def taker_fill(c, raw, opening, sgn, u, unit, p, rate, m, inv, qopen, cash, fees):
    """book_fill of a taker walk, counted in the order-flow sums."""
    qopen, cash, fees, fee = book_fill(opening, sgn, u, unit, p, rate, m, inv, qopen, cash, fees)
    raw[c, R_TAKER_FILLS] += 1.0
    raw[c, R_FEES_TAKER] += fee
    return qopen, cash, fees


@inline
def trade_hit(px, qty, k, oq, qa, qcum, tick, lot, buy):
    """A trade (price px, quantity qty) from the aggressor side that hits a live maker order
    at price tick k with oq units remaining: through its price, all that remains fills; at its
    price, the queue ahead shrinks by qty and, once below 0, min(oq, floor_units(-queue ahead))
    fills and the queue ahead is 0. Returns (units filled, qa, qcum).

    The order's tick in run_ticks, in the order of work: its trades of the tick in stored
    order (this), then once, if anything remains, the crossing book (`crosses`), then the
    depth update (`level_size` and queue.queue_depth); every fill is at the order's own price
    and is its own fill (accounting and fee). Written in run_ticks itself rather than in a
    helper taking the book's arrays: numba counts references on arrays passed to an inlined
    function at every call (measured: the maker path ran 1.4x slower)."""
    kk = to_tick(px, tick)
    if (buy and kk < k) or (not buy and kk > k):
        return oq, qa, qcum
    if kk == k:
        qa, qcum = queue_trade(qa, qcum, qty)
        if qa < 0.0:
            return min(oq, floor_units(-qa, lot)), 0.0, qcum
    return 0.0, qa, qcum




@inline
def book_trade(c, raw, bpnl, btr, bwin, B, T, t, pnl, gross, fees, held_ticks, held_ns, reason):
    """Add one closed trade to the raw sums and to the bucket of its exit fill tick t (the
    global tick index, of T ticks of the whole book)."""
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
def close_trade(c, raw, bpnl, btr, bwin, B, mkt, t, ts, cash, fees, ftick, fts, reason):
    """The trade closes at tick t (q_open back to 0): PnL = cash - fees; book it (held from
    its first opening fill tick ftick), return its PnL. t and ftick are indices of the
    window's arrays (the bucket is global: window_offset, book_ticks); fts as for
    first_fill_ts."""
    pnl = cash - fees
    book_trade(c, raw, bpnl, btr, bwin, B, book_ticks(mkt), t + window_offset(mkt), pnl, cash,
               fees, float(t - ftick), float(ts[t] - first_fill_ts(ts, ftick, fts)), reason)
    return pnl


@inline
def first_fill_ts(ts, ftick, fts):
    """ts of the first opening fill tick ftick (an index of the window's arrays): ts[ftick]
    when the window holds it, else (ftick < 0: an earlier window) the state's fts, which
    run_ticks sets to ts[ftick] as it leaves a window. Not set at the fill itself: a value
    carried through the tick loop costs the GPU kernel registers, and its occupancy."""
    if ftick >= 0:
        return ts[ftick]
    return fts


@inline
def window_offset(mkt):
    """The global tick index of the arrays' row 0 (0 for a whole book; strategy.py doc)."""
    return int(mkt[M_OFFSET])


@inline
def book_ticks(mkt):
    """T, the tick count of the whole book."""
    return int(mkt[M_TOTAL])


@inline
def last_tick(mkt):
    """The book's last tick T - 1, as an index of the window's arrays (read where it is
    needed, on rare paths: a value held across the tick loop costs the GPU registers)."""
    return int(mkt[M_TOTAL]) - 1 - int(mkt[M_OFFSET])


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
def entry_complete(c, raw, t, ts, pos, e, qopen, unit, sl, tp, maker_tp, tick, lat,
                   mst, mk, mtick, marr, oq):
    """The entry completes at tick t with q_open > 0 at price e: the position is open (exit
    decisions from t + 1, max_hold from ts[t]); a maker take profit (maker_tp) is posted now
    for the whole position at ceil(e (1 + tp bps) / tick) (long) or floor(e (1 - tp bps) /
    tick) (short), unless that tick is <= 0 (the maker slot mst, mk, mtick, marr, oq is
    returned as given, empty, when none is posted). Returns (state, ets, stop_thr, take_thr,
    mst, mk, mtick, marr, oq)."""
    stop_thr = -sl * BPS * e
    take_thr = tp * BPS * e
    if maker_tp:
        if pos > 0:
            k = math.ceil(e * (1.0 + tp * BPS) / tick)
        else:
            k = math.floor(e * (1.0 - tp * BPS) / tick)
        if k > 0:
            mst = MST_FLIGHT
            mk = k
            mtick = t
            marr = ts[t] + lat
            oq = qopen
            raw[c, R_POSTED] += 1.0
            raw[c, R_POSTED_QTY] += qopen * unit
    return IN_POSITION, ts[t], stop_thr, take_thr, mst, mk, mtick, marr, oq


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
#   equity, peak, trough, max_dd, qopen, e, cash, fees, stop_thr, take_thr,
#   oq (taker entry: desired quantity; maker order: remaining quantity; both and qopen in
#   units, see floor_units),
#   qa, qprev, qcum (queue.py: queue ahead, last known size, traded since the last update);
#   state, pos, fts (ts of ftick, once ftick is in an earlier window than the one running:
#   first_fill_ts), ets (ts of the entry completion tick), reason (of the
#   pending exit), target (fill time of the pending taker order), next_entry, ftick (first
#   opening fill tick), mst (maker order slot, MST_*), mk (its price tick), mtick (tick it
#   was posted, then the tick it arrived), marr (its arrival time: ts[posting tick] + latency
#   while in flight, then ts[mtick], the time it arrived), mcan (when its cancel takes effect).
# Tick indices in the state (next_entry, ftick, mtick) are global: indices into the whole
# book, whatever window of it the arrays hold (run_ticks turns them into window indices while
# it runs); a tick's time is read from ts only at a tick of the window being run (fts, ets,
# marr hold the times of earlier ticks).
# `run_ticks` takes it as scalars and returns it as a tuple, so a caller can keep it in
# registers (CUDA: one call over [0, T)) or carry it across tick chunks and windows of the
# book in arrays (CPU chunks; both kernels' streamed windows: load_state / store_state).
NSTATE_F = 14
NSTATE_I = 13


@inline
def init_state(ts0, cap):
    """The state before tick 0 (ts0 = ts[0], cap = the configuration's capital)."""
    return (cap, cap, cap, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            FLAT, 0, 0, ts0, 0, ts0, 0, 0, MST_NONE, 0, 0, ts0, ts0)


@inline
def mark_value(equity, cash, sgn, qopen, unit, p, mult, inv, fees):
    """Rule 6 while a trade is live: equity + cash + side * sigma * value(q_open, p) - fees."""
    return equity + cash + sgn * value(qopen * unit, p, mult, inv) - fees


@inline
def run_ticks(c, t0, t1, book, cfg, raw, bpnl, btr, bwin, st):
    """Configuration c over ticks [t0, t1) (RULES.md order of work); returns the new state.

    book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
    tr_start, tr_px, tr_qty, tr_side, mkt, bank); cfg = the configuration arrays in enums.CONFIG_FIELDS
    order; raw, bpnl, btr, bwin = the outputs; st = the state tuple (NSTATE_F floats,
    NSTATE_I integers; see above). Tuples, because CPython compiles a call with more than
    30 arguments to CALL_FUNCTION_EX, which numba cannot inline. Running [0, T) in one call
    or in consecutive chunks gives the same bits: every value the loop carries from one tick
    to the next is in the state tuple, and the trades add into the raw/bucket sums at their
    global exit tick.

    Inside tick t, in this order: a cancel taking effect; the taker fill of a pending taker
    order; the live maker order (trades, crossing, depth, then its time in force); a maker
    order arriving (post-only check, queue position); decisions; the mark.

    Most ticks of most configurations are flat with nothing in flight (an entry decision, no
    mark: the mark of a flat tick is the equity), in a position with no order of any kind
    (an exit decision and the mark), or have one maker order resting alone that nothing can
    reach at this tick (no trade of the tick at or through its price and no crossing book,
    by kernels.row_summary; its time in force not run out; no exit decided): only its queue
    and the mark move. Those run in three tight inner loops, which the compiler keeps in
    registers; every other tick runs the whole order of work above. Every path reads the
    same rule functions (entry_side, exit_reason, trades_reach, crosses, level_search,
    queue_depth, mark_value, ...).

    The size at a resting order's price (level_size, for the queue model) is searched from
    the side's bounds (level_bound), then, for levels in price order, from the three levels
    around the last answer (level_at_hint: books move little between rows), and only then
    by level_search, a called function on the CPU (inlining it at each place cost several
    times the kernel's compile time).
    """
    (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
     tr_start, tr_px, tr_qty, tr_side, mkt, bank) = book
    (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
     size_frac, max_qty, cooldown, fee_bps, latency, capital,
     entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency) = cfg
    (equity, peak, trough, max_dd, qopen, e, cash, fees, stop_thr, take_thr, oq, qa, qprev, qcum,
     state, pos, fts, ets, reason, target, next_entry, ftick, mst, mk, mtick, marr, mcan) = st
    # the window: ts[0] is the book's tick window_offset(mkt); the state's tick indices
    # become indices into the window's arrays until the return
    off = window_offset(mkt)
    next_entry = next_entry - off
    ftick = ftick - off
    mtick = mtick - off
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
    rate = fee_bps[c] * BPS
    lat = latency[c]
    maker_entry = entry_type[c] == MAKER
    maker_tp = tp_type[c] == MAKER and tp < INF
    koff = entry_offset[c]
    tif = entry_tif[c]
    clat = cancel_latency[c]
    mrate = maker_fee_bps[c] * BPS
    inv = mkt[M_INVERSE] != 0.0
    sigma = 1
    if inv:
        sigma = -1
    mult = mkt[M_MULT]
    tick = mkt[M_TICK]
    lot = mkt[M_LOT]
    unit = 1.0  # quantities are held in units: whole lots, or contracts when lot is 0
    if lot > 0.0:
        unit = lot
    qmodel = int(mkt[M_QUEUE])
    qn = mkt[M_QUEUE_N]
    srt = mkt[M_SORTED] != 0.0
    hint = 0  # level_search's starting level (any level gives the same answer)
    L = bid_px.shape[1]

    t = t0
    while t < t1:
        if state == FLAT:
            # flat with nothing in flight: entry decisions (rule 2) until one sends an order
            while t < t1:
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
                            desired = floor_units(min(sf * equity / value(1.0, px, mult, inv), mq),
                                                  lot)
                            if desired > 0.0:
                                if not maker_entry:
                                    pos = want
                                    oq = desired
                                    state = ENTRY_PENDING
                                    target = ts[t] + lat
                                else:
                                    # a maker entry k ticks behind the touch, sized with px
                                    if want > 0:
                                        pp = bid0[t]
                                    else:
                                        pp = ask0[t]
                                    if pp > 0.0 and pp < INF:
                                        k = to_tick(pp, tick) - want * koff
                                        if k > 0:
                                            pos = want
                                            oq = desired
                                            state = ENTRY_WORKING
                                            qopen = 0.0
                                            cash = 0.0
                                            fees = 0.0
                                            mst = MST_FLIGHT
                                            mk = k
                                            mtick = t
                                            marr = ts[t] + lat
                                            raw[c, R_POSTED] += 1.0
                                            raw[c, R_POSTED_QTY] += desired * unit
                t += 1
                if state != FLAT:
                    break
            continue

        if state == IN_POSITION and mst == MST_NONE:
            # in a position with no order of any kind: exit decisions (rule 4) and marks
            while t < t1:
                if pos > 0:
                    p = pbid[t]
                else:
                    p = pask[t]
                p = top_price(p, e)
                held = 0.0
                if use_time:
                    held = float(ts[t] - ets)
                rsn = exit_reason(pos * (p - e), stop_thr, take_thr, held, mh, float(bank[srow, t]),
                                  pos, ex)
                if rsn >= 0:
                    reason = rsn
                    state = EXIT_PENDING
                    target = ts[t] + lat
                m = mark_value(equity, cash, pos * sigma, qopen, unit, p, mult, inv, fees)
                peak, trough, max_dd = drawdown(m, peak, trough, max_dd)
                t += 1
                if state != IN_POSITION:
                    break
            continue

        if mst == MST_LIVE and t > mtick and (state == IN_POSITION or state == ENTRY_WORKING):
            # a maker order resting alone (the entry, or the take profit of an open position):
            # every tick at which no trade or crossing book can reach it, its time in force
            # has not run out (an entry) and no exit is decided (a position) changes only its
            # queue (the depth update) and the mark; the first tick at which any of those can
            # happen runs the whole order of work below, which reads the same rule functions
            opening = state == ENTRY_WORKING
            buy = (pos > 0) == opening
            while t < t1:
                if buy:
                    reach = rsum[t, RS_SELL_LO]
                    opp_best = dask[t]
                    own_best = dbid[t]
                    own_deep = rsum[t, RS_BID_DEEP]
                else:
                    reach = rsum[t, RS_BUY_HI]
                    opp_best = dbid[t]
                    own_best = dask[t]
                    own_deep = rsum[t, RS_ASK_DEEP]
                if trades_reach(reach, mk, tick, buy) or crosses(opp_best, mk, tick, buy):
                    break
                if pos > 0:
                    p = pbid[t]
                else:
                    p = pask[t]
                p = top_price(p, e)
                if opening:
                    if float(ts[t] - marr) >= tif:
                        break
                else:
                    held = 0.0
                    if use_time:
                        held = float(ts[t] - ets)
                    if exit_reason(pos * (p - e), stop_thr, INF, held, mh, float(bank[srow, t]),
                                   pos, ex) >= 0:
                        break
                # the size at the order's price: the bounds, then (levels in price order) the
                # levels around the last search's answer, then the whole search (same answer)
                new = level_bound(own_best, own_deep, mk, tick, buy)
                if new < 0.0 and srt:
                    hb = max(hint - 1, 0)
                    hc = min(hint + 1, L - 1)
                    if buy:
                        pb, sb, pa, sa = bid_px[t, hb], bid_sz[t, hb], bid_px[t, hint], bid_sz[t, hint]
                        pc, sc = bid_px[t, hc], bid_sz[t, hc]
                    else:
                        pb, sb, pa, sa = ask_px[t, hb], ask_sz[t, hb], ask_px[t, hint], ask_sz[t, hint]
                        pc, sc = ask_px[t, hc], ask_sz[t, hc]
                    new = level_at_hint(pb, float(sb), pa, float(sa), pc, float(sc), hint == 0,
                                        hint == L - 1, mk, tick, buy)
                if new < 0.0:
                    new, hint = level_search(bid_px, bid_sz, ask_px, ask_sz, t, mk, tick, buy, srt,
                                             own_best, own_deep, hint)
                qa, qprev, qcum = queue_depth(qa, qprev, qcum, new, qmodel, qn)
                if qopen > 0.0:
                    m = mark_value(equity, cash, pos * sigma, qopen, unit, p, mult, inv, fees)
                    peak, trough, max_dd = drawdown(m, peak, trough, max_dd)
                t += 1
            if t >= t1:
                continue

        # any other tick: the whole order of work
        start = state
        done = False  # the entry completes at t
        close = False  # the trade closes at t, for reason crsn
        crsn = reason
        # 1. a cancel taking effect (before anything else at t)
        if mst >= MST_CANCEL and ts[t] >= mcan:
            mst = MST_NONE
            if state == ENTRY_WORKING:
                if qopen > 0.0:
                    done = True
                else:
                    state = FLAT
                    pos = 0
        # 2. the fill of a pending taker order
        if state == ENTRY_PENDING:
            if ts[t] >= target:
                if pos > 0:
                    wpx = ask_px
                    wsz = ask_sz
                else:
                    wpx = bid_px
                    wsz = bid_sz
                q, v = entry_walk(wpx, wsz, t, oq, lot, inv)
                if q > 0.0:
                    qopen, cash, fees = taker_fill(c, raw, True, pos * sigma, q, unit, v, rate, mult,
                                                   inv, 0.0, 0.0, 0.0)
                    e = entry_price(qopen, unit, cash, pos * sigma, mult, inv)
                    ftick = t
                    done = True
                else:
                    state = FLAT
                    pos = 0
        elif state == EXIT_PENDING:
            # an exit with no fill tick (or nothing displayed until then) fills at T-1
            if ts[t] >= target or t == last_tick(mkt):
                if pos > 0:
                    wpx = bid_px
                    wsz = bid_sz
                    p = pbid[t]
                else:
                    wpx = ask_px
                    wsz = ask_sz
                    p = pask[t]
                ok, v = exit_walk(wpx, wsz, t, qopen * unit, pos > 0, inv)
                if not ok and t == last_tick(mkt):
                    v = top_price(p, e)
                    ok = True
                if ok:
                    qopen, cash, fees = taker_fill(c, raw, False, pos * sigma, qopen, unit, v, rate,
                                                   mult, inv, qopen, cash, fees)
                    close = True
                    mst = MST_NONE  # a resting take profit goes with the trade
        look = LOOK_NONE
        if mst != MST_NONE:
            opening = state == ENTRY_WORKING
            buy = (pos > 0) == opening
            # the order's own side is read as bid_px/bid_sz or ask_px/ask_sz in each branch,
            # never through a variable holding either array: numba counts references on such
            # array variables at every tick (measured: the maker path ran 1.4x slower)
            if buy:
                opp_best = dask[t]
            else:
                opp_best = dbid[t]
            # 3. the live maker order (live from the tick after its arrival)
            if (mst & MST_LIVE) != 0 and t > mtick:
                q0 = qopen
                # (1) the tick's trades that hit it, in stored order, then (2) once, if anything
                # remains, the crossing book (trade_hit's doc)
                sgn = pos * sigma
                mprice = mk * tick
                aggressor = 1
                if buy:
                    aggressor = -1
                j = tr_start[t]
                j1 = tr_start[t + 1]
                # none of the tick's trades can reach the order's price (kernels.row_summary):
                # nothing to read (trade_hit would leave everything as it is)
                if buy:
                    reach = rsum[t, RS_SELL_LO]
                else:
                    reach = rsum[t, RS_BUY_HI]
                if not trades_reach(reach, mk, tick, buy):
                    j = j1
                crossed = False
                while oq > 0.0:
                    q = 0.0
                    if j < j1:
                        if tr_side[j] == aggressor:
                            q, qa, qcum = trade_hit(tr_px[j], tr_qty[j], mk, oq, qa, qcum, tick, lot,
                                                    buy)
                        j += 1
                    elif not crossed:
                        crossed = True
                        if crosses(opp_best, mk, tick, buy):
                            q = oq
                    else:
                        break
                    if q > 0.0:
                        qopen, cash, fees, fee = book_fill(opening, sgn, q, unit, mprice, mrate, mult,
                                                           inv, qopen, cash, fees)
                        raw[c, R_MAKER_FILLS] += 1.0
                        raw[c, R_MAKER_QTY] += q * unit
                        raw[c, R_QUEUE_WAIT_NS] += float(ts[t] - marr)
                        raw[c, R_FEES_MAKER] += fee
                        oq = oq - q
                if oq > 0.0:
                    look = LOOK_DEPTH  # (3) the depth update of the queue model (below)
                if opening:
                    if qopen > q0:
                        if not q0 > 0.0:
                            ftick = t
                        e = entry_price(qopen, unit, cash, pos * sigma, mult, inv)
                    if not oq > 0.0:
                        mst = MST_NONE
                        done = True
                    elif mst < MST_CANCEL and float(ts[t] - marr) >= tif:
                        # time in force: the cancel takes effect at the first tick after t
                        # with ts >= ts[t] + cancel_latency
                        mst = mst | MST_CANCEL
                        mcan = ts[t] + clat
                        raw[c, R_CANCELS] += 1.0
                elif not oq > 0.0:
                    # the take profit filled: the trade closes (reason take) and a taker exit
                    # in flight fills nothing
                    qopen = 0.0
                    mst = MST_NONE
                    close = True
                    crsn = EXIT_TAKE
            # 4. a maker order arriving: post-only check, then its place in the queue
            elif (mst & MST_FLIGHT) != 0 and t > mtick and ts[t] >= marr:
                if crosses(opp_best, mk, tick, buy):
                    raw[c, R_REJECTED] += 1.0
                    mst = MST_NONE
                    if opening:
                        state = FLAT
                        pos = 0
                    elif state != EXIT_PENDING:
                        # a rejected take profit becomes a taker exit decided now
                        state = EXIT_PENDING
                        reason = EXIT_TAKE
                        target = ts[t] + lat
                else:
                    look = LOOK_ARRIVE  # its place in the queue (below)
                    mst = MST_LIVE | (mst & MST_CANCEL)
                    mtick = t
                    marr = ts[t]
            if look != LOOK_NONE:
                # the size at the order's price, read at one place for (3) and (4): nothing
                # else in tick t reads the queue state, so when it is written makes no difference
                if buy:
                    own_best = dbid[t]
                    own_deep = rsum[t, RS_BID_DEEP]
                else:
                    own_best = dask[t]
                    own_deep = rsum[t, RS_ASK_DEEP]
                size, hint = level_search(bid_px, bid_sz, ask_px, ask_sz, t, mk, tick, buy, srt,
                                          own_best, own_deep, hint)
                if look == LOOK_DEPTH:
                    qa, qprev, qcum = queue_depth(qa, qprev, qcum, size, qmodel, qn)
                else:
                    qa, qprev, qcum = queue_arrive(size)
        if done:
            (state, ets, stop_thr, take_thr, mst, mk, mtick, marr,
             oq) = entry_complete(c, raw, t, ts, pos, e, qopen, unit, sl, tp, maker_tp, tick, lat,
                                  mst, mk, mtick, marr, oq)
        elif close:
            equity = equity + close_trade(c, raw, bpnl, btr, bwin, B, mkt, t, ts, cash, fees,
                                          ftick, fts, crsn)
            state = FLAT
            pos = 0
            qopen = 0.0
            next_entry = t + 1 + cd
            # the mark of a flat tick is the equity: only a closing fill moves it
            peak, trough, max_dd = drawdown(equity, peak, trough, max_dd)

        # 5. decisions: an exit decision in a position that was open at the start of the tick
        # (a flat tick never comes here); the take test is off while a take profit rests
        if start == IN_POSITION and state == IN_POSITION:
            if pos > 0:
                p = pbid[t]
            else:
                p = pask[t]
            p = top_price(p, e)
            held = 0.0
            if use_time:
                held = float(ts[t] - ets)
            tt = take_thr
            if mst != MST_NONE:
                tt = INF
            rsn = exit_reason(pos * (p - e), stop_thr, tt, held, mh, float(bank[srow, t]), pos, ex)
            if rsn >= 0:
                reason = rsn
                state = EXIT_PENDING
                target = ts[t] + lat
                if mst != MST_NONE:
                    # a take profit rests: cancel it (it may fill until the cancel takes effect)
                    mst = mst | MST_CANCEL
                    mcan = ts[t] + clat
                    raw[c, R_CANCELS] += 1.0

        # 6. the mark, while a trade is live (from its first opening fill)
        if qopen > 0.0:
            if pos > 0:
                p = pbid[t]
            else:
                p = pask[t]
            p = top_price(p, e)
            m = mark_value(equity, cash, pos * sigma, qopen, unit, p, mult, inv, fees)
            peak, trough, max_dd = drawdown(m, peak, trough, max_dd)
        t += 1

    # back to global tick indices (the first fill's time kept for the windows after this one)
    fts = first_fill_ts(ts, ftick, fts)
    off = window_offset(mkt)
    return (equity, peak, trough, max_dd, qopen, e, cash, fees, stop_thr, take_thr, oq, qa, qprev,
            qcum, state, pos, fts, ets, reason, target, next_entry + off, ftick + off, mst, mk,
            mtick + off, marr, mcan)


@inline
def finish_config(c, book, cfg, raw, bpnl, btr, bwin, st):
    """After the last tick: close what is open and write max_dd and the final equity
    (arguments as for run_ticks; the book's arrays must hold its last tick)."""
    (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
     tr_start, tr_px, tr_qty, tr_side, mkt, bank) = book
    (equity, peak, trough, max_dd, qopen, e, cash, fees, stop_thr, take_thr, oq, qa, qprev, qcum,
     state, pos, fts, ets, reason, target, next_entry, ftick, mst, mk, mtick, marr, mcan) = st
    (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
     size_frac, max_qty, cooldown, fee_bps, latency, capital,
     entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency) = cfg
    B = bpnl.shape[1]
    rate = fee_bps[c] * BPS
    inv = mkt[M_INVERSE] != 0.0
    sigma = 1
    if inv:
        sigma = -1
    unit = 1.0
    if mkt[M_LOT] > 0.0:
        unit = mkt[M_LOT]
    # after the last tick: a pending taker entry is dropped, and so is what remains of a
    # working maker entry; an exit decided at T-1 or a live trade (reason "end") is closed
    # at T-1 by the exit walk (at the last seen price when nothing is displayed); the marks
    # of tick T-1 are not recomputed.
    if qopen > 0.0:
        t = last_tick(mkt)
        if state != EXIT_PENDING:
            reason = EXIT_END
        if pos > 0:
            wpx = bid_px
            wsz = bid_sz
            p = pbid[t]
        else:
            wpx = ask_px
            wsz = ask_sz
            p = pask[t]
        ok, v = exit_walk(wpx, wsz, t, qopen * unit, pos > 0, inv)
        if not ok:
            v = top_price(p, e)
        qopen, cash, fees = taker_fill(c, raw, False, pos * sigma, qopen, unit, v, rate, mkt[M_MULT],
                                       inv, qopen, cash, fees)
        equity = equity + close_trade(c, raw, bpnl, btr, bwin, B, mkt, t, ts, cash, fees,
                                      ftick - window_offset(mkt), fts, reason)

    raw[c, R_MAXDD] = max_dd
    raw[c, R_EQUITY] = equity


@inline
def run_one(c, book, cfg, raw, bpnl, btr, bwin):
    """Simulate configuration c over all ticks in one call (the CUDA kernel's thread body);
    book and cfg are the tuples of run_ticks."""
    ts = book[0]
    capital = cfg[14]
    reset_outputs(c, raw, bpnl, btr, bwin)
    st0 = init_state(ts[0], capital[c])
    st1 = run_ticks(c, 0, ts.shape[0], book, cfg, raw, bpnl, btr, bwin, st0)
    finish_config(c, book, cfg, raw, bpnl, btr, bwin, st1)


@inline
def load_state(fs, ist, c):
    """Configuration c's state tuple (the order above) from the carry arrays fs [C, NSTATE_F]
    float64 and ist [C, NSTATE_I] int64."""
    return (fs[c, 0], fs[c, 1], fs[c, 2], fs[c, 3], fs[c, 4], fs[c, 5], fs[c, 6], fs[c, 7],
            fs[c, 8], fs[c, 9], fs[c, 10], fs[c, 11], fs[c, 12], fs[c, 13], ist[c, 0],
            ist[c, 1], ist[c, 2], ist[c, 3], ist[c, 4], ist[c, 5], ist[c, 6], ist[c, 7],
            ist[c, 8], ist[c, 9], ist[c, 10], ist[c, 11], ist[c, 12])


@inline
def store_state(fs, ist, c, st):
    """Write configuration c's state tuple into the carry arrays."""
    fs[c, 0] = st[0]
    fs[c, 1] = st[1]
    fs[c, 2] = st[2]
    fs[c, 3] = st[3]
    fs[c, 4] = st[4]
    fs[c, 5] = st[5]
    fs[c, 6] = st[6]
    fs[c, 7] = st[7]
    fs[c, 8] = st[8]
    fs[c, 9] = st[9]
    fs[c, 10] = st[10]
    fs[c, 11] = st[11]
    fs[c, 12] = st[12]
    fs[c, 13] = st[13]
    ist[c, 0] = st[14]
    ist[c, 1] = st[15]
    ist[c, 2] = st[16]
    ist[c, 3] = st[17]
    ist[c, 4] = st[18]
    ist[c, 5] = st[19]
    ist[c, 6] = st[20]
    ist[c, 7] = st[21]
    ist[c, 8] = st[22]
    ist[c, 9] = st[23]
    ist[c, 10] = st[24]
    ist[c, 11] = st[25]
    ist[c, 12] = st[26]


# Window flags of a streamed run (run_window, kernels.cpu.sweep_cpu): the first window of the
# book resets the outputs and starts the state; the last one closes what is open.
WIN_FIRST, WIN_LAST = 1, 2


@inline
def run_window(c, book, cfg, raw, bpnl, btr, bwin, fs, ist, flags):
    """Configuration c over every tick of a window of the book (the streamed CUDA kernel's
    thread body): its state from the carry arrays (init_state on the window flagged
    WIN_FIRST, which holds the book's tick 0), run_ticks, then finish_config on the window
    flagged WIN_LAST (which holds the book's last tick), else the state back into the
    carry arrays. A book run window by window gives the bits of run_one."""
    ts = book[0]
    capital = cfg[14]
    if (flags & WIN_FIRST) != 0:
        reset_outputs(c, raw, bpnl, btr, bwin)
        store_state(fs, ist, c, init_state(ts[0], capital[c]))
    st = run_ticks(c, 0, ts.shape[0], book, cfg, raw, bpnl, btr, bwin, load_state(fs, ist, c))
    if (flags & WIN_LAST) != 0:
        finish_config(c, book, cfg, raw, bpnl, btr, bwin, st)
    else:
        store_state(fs, ist, c, st)


@inline
def run_config(c, ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask,
               rsum, tr_start, tr_px, tr_qty, tr_side, mkt, bank,
               signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
               size_frac, max_qty, cooldown, fee_bps, latency, capital,
               entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency,
               raw, bpnl, btr, bwin):
    """run_one with every array as its own argument (kernels.BookArrays.as_args() + bank, the
    configuration arrays in enums.CONFIG_FIELDS order, the outputs): for callers from Python
    (more than 30 arguments: a kernel calls run_one with tuples instead)."""
    book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
            tr_start, tr_px, tr_qty, tr_side, mkt, bank)
    cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
           size_frac, max_qty, cooldown, fee_bps, latency, capital,
           entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
    run_one(c, book, cfg, raw, bpnl, btr, bwin)


_RULE_FUNCTIONS = ("displayed", "value", "floor_units", "to_tick", "entry_walk", "exit_walk",
                   "tick_cmp", "level_size", "level_bound", "level_side", "level_at_hint", "level_search", "crosses", "trades_reach",
                   "top_price", "exit_reason", "entry_side", "book_fill", "entry_price", "taker_fill", "trade_hit", "book_trade",
                   "close_trade", "first_fill_ts", "window_offset", "book_ticks", "last_tick",
                   "drawdown", "entry_complete", "reset_outputs", "init_state", "mark_value",
                   "run_ticks", "finish_config", "run_one", "load_state", "store_state",
                   "run_window", "run_config") + QUEUE_FUNCTIONS


def _twins(wrap):
    """Every rule function (this module's and gpu_engine/queue.py's) rebuilt from its code
    object as wrap(function), in a namespace where each name is its rebuilt twin."""
    import types

    from gpu_engine import queue

    namespace = dict(vars(queue))
    namespace.update(globals())
    for fn in _RULE_FUNCTIONS:
        code = namespace[fn].py_func.__code__
        namespace[fn] = wrap(types.FunctionType(code, namespace, fn))
    return namespace


def python_twin(name: str = "run_config"):
    """The same rule function as plain Python, calling plain-Python twins of its helpers.

    For numba-cuda's simulator, whose device arrays a compiled njit function cannot unbox:
    the twins re-use each function's code object with globals in which every rule function
    (this module's and gpu_engine/queue.py's) is its own twin, so the simulated kernel runs
    exactly this text.
    """
    return _twins(lambda f: f)[name]


def inlined_twin(name: str = "run_one"):
    """The same rule function with every rule function it calls compiled inline
    (`njit(inline="always")`), for the CUDA kernel. On the CPU a few costly, rarely taken
    helpers (level_search, queue.queue_prob) are called rather than inlined, which keeps the
    kernel's compile time down; numba-cuda turns a called njit function into a device
    function, whose compilation asks the current device for its compute capability, so
    `cuda.compile_ptx` without a GPU (tests/test_ptx.py) could not compile the kernel. The
    text is the same: only numba's inlining differs."""
    return _twins(numba.njit(inline="always"))[name]
