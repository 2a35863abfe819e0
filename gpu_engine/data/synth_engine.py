"""Numba event loop of the synthetic order-flow generator (docs/SYNTH.md).

Owns the simulation only: a price-level book on an integer tick grid (sizes in lots, resting
order counts per level, one Fenwick tree of order counts per side), event arrivals by thinning
(Ogata), the latent fair value and the meta-order sign, and the sampling of top-L rows every
`sample_ms`. All state lives in numpy arrays so generation resumes chunk after chunk with
bounded memory; randomness comes from one `numpy.random.Generator` (its state advances in place,
so a seed gives one bit-identical stream however the run is chunked).

Event types (per side unless noted):
  market buy / sell      bivariate Hawkes, two exponential kernels (fast, slow), self + cross
  touch limit            at the opposite best - 1 tick, or a geometric distance behind it
  gap refill             while the spread is > 1 tick: a limit order 1 tick from the other side
  deep limit             uniform in distance 1..d_max from the opposite best (Santa Fe),
                         plus a near component at distance 1 + Exp(d_near)
  deep cancel            rate delta per resting order, order chosen uniformly (Fenwick)
  level pull             the whole best level cancelled (a quote moved); excited by market orders
  near thinning          every sample step, orders within near_range of the best (best level
                         excluded) cancel at rate delta_near: little stale liquidity near the touch
"""
from __future__ import annotations

import numpy as np
from numba import njit

# ---- parameter vector indices (filled by synth_params.SynthParams.vector) ----
P_MU_MO = 0          # baseline market-order rate per side, 1/s
P_A_SELF_F = 1       # fast kernel: self excitation (jump in intensity per event, 1/s)
P_A_CROSS_F = 2
P_BETA_F = 3         # fast kernel decay, 1/s
P_A_SELF_S = 4       # slow kernel
P_A_CROSS_S = 5
P_BETA_S = 6
P_MO_LN_MU = 7       # ln(median market-order size in lots)
P_MO_LN_SIG = 8
P_MO_MAX = 9         # lots
P_MIN_LOTS = 10      # minimum order size in lots (exchange minimum notional)
P_LAM_TOUCH = 11     # touch limit orders per side, 1/s (baseline)
P_A_TOUCH = 12       # touch-limit excitation per market order (either side), uses fast kernel
P_TOUCH_GEOM = 13    # P(d = 1) of the geometric touch distance
P_TL_LN_MU = 14      # touch-limit size, ln lots
P_TL_LN_SIG = 15
P_LAM_DEEP = 16      # deep limit orders per side, 1/s
P_D_MAX = 17         # deep placement: uniform distance 1..d_max ticks
P_DL_LN_MU = 18
P_DL_LN_SIG = 19
P_DELTA = 20         # deep cancel rate per resting order, 1/s
P_LAM_TC = 21        # touch cancels per side, 1/s (baseline)
P_A_TC = 22          # touch-cancel excitation per same-direction market order (fast kernel)
P_SIG_F = 23         # fair value volatility, ticks / sqrt(s)
P_K_F = 24           # fair-value pull on order-flow imbalance (max |a| from it)
P_L_F = 25           # fair-value distance scale, ticks
P_W_META = 26        # meta-order weight on imbalance
P_META_ALPHA = 27    # Pareto tail index of meta-order durations
P_META_MIN = 28      # minimum meta-order duration, s
P_TC_BIAS = 29       # level pulls: ask side x exp(k z), bid side x exp(-k z), z = (fair - mid) / L
P_SAMPLE_S = 30      # row interval, s
P_DEPTH = 31
P_FILL_GEOM = 32     # maker orders filled at a level that is not emptied: Geometric(p), capped
P_FILL_SIG = 33      # lognormal sigma of the weights splitting a fill over maker orders
P_FAIR_ACT = 34      # 1: fair-value steps scale with sqrt(market-order activity / its mean)
P_MO_MEAN = 35       # stationary market-order rate per side (for the activity ratio)
P_TOUCH_D1 = 36      # P(touch limit exactly 1 tick from the opposite best)
P_LAM_GAP = 37       # per side, while the spread is wider than one tick (queue-reactive refill)
P_LAM_NEAR = 38      # per side, distance 1 + Exp(d_near) ticks from the opposite best
P_D_NEAR = 39
P_MOVE = 40          # P(a gap refill moves the side's best level rather than adding an order)
P_DELTA_NEAR = 41    # extra cancel rate per order within near_range ticks of the best (not at it)
P_NEAR_RANGE = 42
P_GAP_TILT = 43      # gap refills: bid share (1 + tanh(k z)) / 2
P_A_PULL = 44        # pull self-excitation: intensity jump per pull on the same side
P_BETA_PULL = 45     # its decay, 1/s
P_VOL_TAU = 46       # log-volatility OU time scale, s
P_VOL_SD = 47        # its stationary standard deviation
P_KYLE = 48          # permanent impact: a market order moves the fair value by side * k * sqrt(q / median)
P_KYLE_CAP = 49      # cap on sqrt(q / median)
P_N = 50

# ---- float state indices ----
F_T = 0              # current time, s since start
F_YBF = 1            # fast kernel state from buys
F_YSF = 2            # fast kernel state from sells
F_YBS = 3            # slow kernel, buys
F_YSS = 4            # slow kernel, sells
F_FAIR = 5           # latent fair value, ticks (absolute)
F_META_END = 6       # end time of the current meta-order
F_META_SIGN = 7
F_YPA = 8            # pull kernel state from ask-side pulls (quote-move cascades)
F_YPB = 9
F_LOGVOL = 10        # slow log-volatility factor of the fair value (OU)
F_N = 11

# ---- int state indices ----
I_BASE = 0           # absolute tick of array index 0
I_BB = 1             # best bid index (-1: empty side)
I_BA = 2             # best ask index (W: empty side)
I_SEQ = 3            # book events applied (the store's update id)
I_LAST_ROW_SEQ = 4
I_K = 5              # sample boundaries passed
I_NB = 6             # resting orders, bid side
I_NA = 7
I_RECENTRES = 8
I_DROPPED = 9       # trades lost to a full buffer (the driver raises if > 0)
I_N = 10


# ---------------------------------------------------------------- Fenwick tree (1-based inside)
@njit(cache=True)
def _fw_add(tree, i, v):
    i += 1
    n = tree.shape[0]
    while i < n:
        tree[i] += v
        i += i & (-i)


@njit(cache=True)
def _fw_prefix(tree, i):
    """Sum of entries 0..i (inclusive)."""
    s = 0
    i += 1
    while i > 0:
        s += tree[i]
        i -= i & (-i)
    return s


@njit(cache=True)
def _fw_kth(tree, k, logn):
    """Smallest index whose prefix sum is >= k (k >= 1)."""
    pos = 0
    step = 1 << logn
    while step > 0:
        nxt = pos + step
        if nxt < tree.shape[0] and tree[nxt] < k:
            pos = nxt
            k -= tree[nxt]
        step >>= 1
    return pos  # 0-based index


@njit(cache=True)
def _fw_build(tree, cnt):
    tree[:] = 0
    n = tree.shape[0]
    for i in range(cnt.shape[0]):
        tree[i + 1] += cnt[i]
    for i in range(1, n):
        j = i + (i & (-i))
        if j < n:
            tree[j] += tree[i]


# ---------------------------------------------------------------- helpers
@njit(cache=True)
def _lognormal_lots(rng, ln_mu, ln_sig, lo, hi):
    q = np.exp(ln_mu + ln_sig * rng.standard_normal())
    v = np.int64(q + 0.5)
    if v < lo:
        v = np.int64(lo)
    if v > hi:
        v = np.int64(hi)
    return v


@njit(cache=True)
def _best_bid(ftree, ist, logn):  # noqa: ARG001 (ist kept for symmetry)
    c = _fw_prefix(ftree, ftree.shape[0] - 2)
    if c == 0:
        return -1
    return _fw_kth(ftree, c, logn)


@njit(cache=True)
def _best_ask(ftree, logn):
    if _fw_prefix(ftree, ftree.shape[0] - 2) == 0:
        return ftree.shape[0] - 1  # W
    return _fw_kth(ftree, 1, logn)


@njit(cache=True)
def _add_orders(sz, cnt, tree, i, lots, norders):
    sz[i] += lots
    cnt[i] += norders
    _fw_add(tree, i, norders)


@njit(cache=True)
def _remove_one_order(sz, cnt, tree, i):
    """Remove one order of the level's average size (the whole level when it holds one)."""
    n = cnt[i]
    if n <= 0:
        return 0
    if n == 1:
        lots = sz[i]
    else:
        lots = sz[i] // n
        if lots < 1:
            lots = 1
    sz[i] -= lots
    cnt[i] -= 1
    _fw_add(tree, i, -1)
    if sz[i] <= 0:  # rounding left orders without size: drop them all
        _fw_add(tree, i, -cnt[i])
        cnt[i] = 0
        sz[i] = 0
    return lots


@njit(cache=True)
def _mid_ticks(ist, W):
    bb = ist[I_BB]
    ba = ist[I_BA]
    if bb >= 0 and ba < W:
        return ist[I_BASE] + 0.5 * (bb + ba)
    if bb >= 0:
        return ist[I_BASE] + bb + 0.5
    if ba < W:
        return ist[I_BASE] + ba - 0.5
    return -1.0


@njit(cache=True)
def _recentre(bsz, bcnt, btree, asz, acnt, atree, ist, W):
    """Shift the window so the mid sits at W/2; levels falling off the edge are dropped."""
    mid = _mid_ticks(ist, W)
    if mid < 0:
        return
    shift = np.int64(mid - ist[I_BASE]) - W // 2  # new index = old index - shift
    if shift == 0:
        return
    for arr in (bsz, asz):
        tmp = arr.copy()
        arr[:] = 0
        for i in range(W):
            j = i - shift
            if 0 <= j < W:
                arr[j] = tmp[i]
    for arr in (bcnt, acnt):
        tmp = arr.copy()
        arr[:] = 0
        for i in range(W):
            j = i - shift
            if 0 <= j < W:
                arr[j] = tmp[i]
    _fw_build(btree, bcnt)
    _fw_build(atree, acnt)
    ist[I_BASE] += shift
    nb = 0
    na = 0
    for i in range(W):
        nb += bcnt[i]
        na += acnt[i]
    ist[I_NB] = nb
    ist[I_NA] = na
    logn = 0
    while (1 << (logn + 1)) <= W:
        logn += 1
    ist[I_BB] = _best_bid(btree, ist, logn)
    ist[I_BA] = _best_ask(atree, logn)
    ist[I_RECENTRES] += 1


@njit(cache=True)
def _emit_row(row, ts_ns, bsz, bcnt, btree, asz, acnt, atree, ist, W, logn, depth,
              o_ts, o_seq, o_bpx, o_apx, o_bsz, o_asz):
    o_ts[row] = ts_ns
    o_seq[row] = ist[I_SEQ]
    base = ist[I_BASE]
    # bids, best first
    c = _fw_prefix(btree, W - 1)
    for j in range(depth):
        if c <= 0:
            o_bpx[row, j] = np.nan
            o_bsz[row, j] = 0.0
            continue
        i = _fw_kth(btree, c, logn)
        o_bpx[row, j] = base + i  # ticks; converted to price outside
        o_bsz[row, j] = bsz[i]
        c -= bcnt[i]
    total = _fw_prefix(atree, W - 1)
    c = 0
    for j in range(depth):
        if c >= total:
            o_apx[row, j] = np.nan
            o_asz[row, j] = 0.0
            continue
        i = _fw_kth(atree, c + 1, logn)
        o_apx[row, j] = base + i
        o_asz[row, j] = asz[i]
        c += acnt[i]


@njit(cache=True)
def _remove_level(sz, cnt, tree, i):
    """Remove a whole level (a market maker pulling its quote); returns the orders removed."""
    n = cnt[i]
    if n > 0:
        _fw_add(tree, i, -n)
    cnt[i] = 0
    sz[i] = 0
    return n


@njit(cache=True)
def _market(rng, p, side, lots, bsz, bcnt, btree, asz, acnt, atree, ist, W, logn, t_ns,
            tr_ts, tr_px, tr_qty, tr_side, ntr, tr_cap, record, wbuf):
    """Execute a market order of `lots` against the opposite side, best level first.

    At each level the filled quantity is split over m maker orders (m = all of the level's
    orders when it is emptied, else min(orders, Geometric)), with lognormal weights, one trade
    per maker fill: Binance reports one trade per maker order.
    """
    base = ist[I_BASE]
    remaining = lots
    g = p[P_FILL_GEOM]
    fsig = p[P_FILL_SIG]
    while remaining > 0:
        if side > 0:
            i = ist[I_BA]
            if i >= W:
                break
            sz = asz
            cnt = acnt
            tree = atree
        else:
            i = ist[I_BB]
            if i < 0:
                break
            sz = bsz
            cnt = bcnt
            tree = btree
        n = cnt[i]
        level = sz[i]
        take = level if level < remaining else remaining
        if take == level:
            m = n
            removed = n
        else:
            m = 1
            while m < n and rng.random() > g:
                m += 1
            removed = m - 1
        if m > wbuf.shape[0]:
            m = wbuf.shape[0]
        if m > take:
            m = take
        # split `take` lots into m fills >= 1 lot with lognormal weights
        tot = 0.0
        for j in range(m):
            wbuf[j] = np.exp(fsig * rng.standard_normal())
            tot += wbuf[j]
        prev = 0
        acc = 0.0
        for j in range(m):
            acc += wbuf[j]
            if j == m - 1:
                cut = take
            else:
                cut = np.int64(take * acc / tot + 0.5)
                if cut < prev + 1:
                    cut = prev + 1
                if cut > take - (m - 1 - j):
                    cut = take - (m - 1 - j)
            q = cut - prev
            prev = cut
            if ntr < tr_cap:
                tr_ts[ntr] = t_ns
                tr_px[ntr] = base + i
                tr_qty[ntr] = q
                tr_side[ntr] = side
                ntr += 1
            elif record:
                ist[I_DROPPED] += 1
        remaining -= take
        sz[i] -= take
        if sz[i] <= 0:
            removed = n
            sz[i] = 0
        if removed > 0:
            cnt[i] -= removed
            _fw_add(tree, i, -removed)
            if side > 0:
                ist[I_NA] -= removed
            else:
                ist[I_NB] -= removed
        if cnt[i] == 0:
            if side > 0:
                ist[I_BA] = _best_ask(atree, logn)
            else:
                ist[I_BB] = _best_bid(btree, ist, logn)
    return ntr


@njit(cache=True)
def _thin_near(rng, pc, rng_ticks, sz, cnt, tree, ist, W, logn, bid_side):
    """Cancel each resting order within `rng_ticks` of the best (best level excluded) with
    probability pc: market makers keep little stale liquidity near the touch. Returns levels changed."""
    changed = 0
    if bid_side:
        b = ist[I_BB]
        if b < 0:
            return 0
        c = _fw_prefix(tree, b) - cnt[b]
        while c > 0:
            i = _fw_kth(tree, c, logn)
            if b - i > rng_ticks:
                break
            c -= cnt[i]
            r = 0
            for _ in range(cnt[i]):
                if rng.random() < pc:
                    r += 1
            if r > 0:
                changed += 1
                if r >= cnt[i]:
                    ist[I_NB] -= _remove_level(sz, cnt, tree, i)
                else:
                    sz[i] -= (sz[i] // cnt[i]) * r
                    cnt[i] -= r
                    _fw_add(tree, i, -r)
                    ist[I_NB] -= r
    else:
        b = ist[I_BA]
        if b >= W:
            return 0
        c = _fw_prefix(tree, b)
        total = _fw_prefix(tree, W - 1)
        while c < total:
            i = _fw_kth(tree, c + 1, logn)
            if i - b > rng_ticks:
                break
            r = 0
            for _ in range(cnt[i]):
                if rng.random() < pc:
                    r += 1
            if r > 0:
                changed += 1
                total -= min(r, cnt[i])
                if r >= cnt[i]:
                    ist[I_NA] -= _remove_level(sz, cnt, tree, i)
                else:
                    sz[i] -= (sz[i] // cnt[i]) * r
                    cnt[i] -= r
                    _fw_add(tree, i, -r)
                    ist[I_NA] -= r
            c += cnt[i]
    return changed


@njit(cache=True)
def simulate(p, fst, ist, bsz, bcnt, btree, asz, acnt, atree, rng, start_ns, t_stop, record, tr_guard,
             o_ts, o_seq, o_bpx, o_apx, o_bsz, o_asz, tr_ts, tr_px, tr_qty, tr_side):
    """Advance the simulation until `t_stop` (s) or until an output buffer is full.

    Returns (rows written, trades written). Rows are emitted at sample boundaries (every
    p[P_SAMPLE_S] seconds) where at least one book event happened since the previous row;
    prices in the row buffers are absolute ticks. With record False nothing is written (warm-up).
    """
    W = bsz.shape[0]
    logn = 0
    while (1 << (logn + 1)) <= W:
        logn += 1
    depth = np.int64(p[P_DEPTH])
    dts = p[P_SAMPLE_S]
    row_cap = o_ts.shape[0]
    tr_cap = tr_ts.shape[0]
    nrow = 0
    ntr = 0
    minl = p[P_MIN_LOTS]
    wbuf = np.empty(64, np.float64)
    bf = p[P_BETA_F]
    bs = p[P_BETA_S]
    t = fst[F_T]
    while True:
        # event rates at t (Hawkes parts decay until the next event: an upper bound)
        z = (fst[F_FAIR] - _mid_ticks(ist, W)) / p[P_L_F]
        if z > 3.0:
            z = 3.0
        if z < -3.0:
            z = -3.0
        a = p[P_K_F] * np.tanh(z) + p[P_W_META] * fst[F_META_SIGN]
        if a > 0.95:
            a = 0.95
        if a < -0.95:
            a = -0.95
        yb_f = fst[F_YBF]
        ys_f = fst[F_YSF]
        yb_s = fst[F_YBS]
        ys_s = fst[F_YSS]
        lam_b = p[P_MU_MO] * (1.0 + a) + p[P_A_SELF_F] * yb_f + p[P_A_CROSS_F] * ys_f \
            + p[P_A_SELF_S] * yb_s + p[P_A_CROSS_S] * ys_s
        lam_s = p[P_MU_MO] * (1.0 - a) + p[P_A_SELF_F] * ys_f + p[P_A_CROSS_F] * yb_f \
            + p[P_A_SELF_S] * ys_s + p[P_A_CROSS_S] * yb_s
        lam_tl = p[P_LAM_TOUCH] + p[P_A_TOUCH] * (yb_f + ys_f)
        lam_dl = p[P_LAM_DEEP] + p[P_LAM_NEAR]
        wide = 1.0 if (ist[I_BB] >= 0 and ist[I_BA] < W and ist[I_BA] - ist[I_BB] > 1) else 0.0
        gt = np.tanh(p[P_GAP_TILT] * z)
        g_b = p[P_LAM_GAP] * (1.0 + gt) * wide
        g_a = p[P_LAM_GAP] * (1.0 - gt) * wide
        lam_dcb = p[P_DELTA] * ist[I_NB]
        lam_dca = p[P_DELTA] * ist[I_NA]
        tb = np.exp(p[P_TC_BIAS] * z)
        tight = 1.0 - wide if (ist[I_BB] >= 0 and ist[I_BA] < W) else 0.0  # pulls only at a 1-tick spread
        lam_tca = (p[P_LAM_TC] * tb + p[P_A_TC] * yb_f + p[P_A_PULL] * fst[F_YPA]) * tight  # buys make ask makers pull
        lam_tcb = (p[P_LAM_TC] / tb + p[P_A_TC] * ys_f + p[P_A_PULL] * fst[F_YPB]) * tight
        lam_tot = lam_b + lam_s + 2.0 * lam_tl + 2.0 * lam_dl + g_b + g_a + lam_dcb + lam_dca + lam_tca + lam_tcb
        dt = rng.exponential() / lam_tot
        t_b = (ist[I_K] + 1) * dts
        if t + dt >= t_b:
            # --- sample boundary: decay kernels, move fair value / meta-order, emit a row
            dd = t_b - t
            ef = np.exp(-bf * dd)
            es = np.exp(-bs * dd)
            fst[F_YBF] *= ef
            fst[F_YSF] *= ef
            fst[F_YBS] *= es
            fst[F_YSS] *= es
            ep = np.exp(-p[P_BETA_PULL] * dd)
            fst[F_YPA] *= ep
            fst[F_YPB] *= ep
            t = t_b
            ist[I_K] += 1
            act = 1.0
            if p[P_FAIR_ACT] > 0:
                act = (2.0 * p[P_MU_MO] + (p[P_A_SELF_F] + p[P_A_CROSS_F]) * (fst[F_YBF] + fst[F_YSF])
                       + (p[P_A_SELF_S] + p[P_A_CROSS_S]) * (fst[F_YBS] + fst[F_YSS])) / (2.0 * p[P_MO_MEAN])
            vsd = p[P_VOL_SD]
            if vsd > 0:
                th = dts / p[P_VOL_TAU]
                fst[F_LOGVOL] += -th * fst[F_LOGVOL] + vsd * np.sqrt(2.0 * th) * rng.standard_normal()
                act *= np.exp(2.0 * fst[F_LOGVOL] - 2.0 * vsd * vsd)  # mean-one variance factor
            fst[F_FAIR] += p[P_SIG_F] * np.sqrt(dts * act) * rng.standard_normal()
            if t >= fst[F_META_END]:
                fst[F_META_SIGN] = 1.0 if rng.random() < 0.5 else -1.0
                u = 1.0 - rng.random()
                fst[F_META_END] = t + p[P_META_MIN] * u ** (-1.0 / p[P_META_ALPHA])
            fst[F_T] = t
            if p[P_DELTA_NEAR] > 0:
                pc = 1.0 - np.exp(-p[P_DELTA_NEAR] * dts)
                ch = _thin_near(rng, pc, p[P_NEAR_RANGE], bsz, bcnt, btree, ist, W, logn, True)
                ch += _thin_near(rng, pc, p[P_NEAR_RANGE], asz, acnt, atree, ist, W, logn, False)
                ist[I_SEQ] += ch
            if record and ist[I_SEQ] != ist[I_LAST_ROW_SEQ]:
                _emit_row(nrow, start_ns + np.int64(round(t * 1e9)), bsz, bcnt, btree, asz, acnt,
                          atree, ist, W, logn, depth, o_ts, o_seq, o_bpx, o_apx, o_bsz, o_asz)
                ist[I_LAST_ROW_SEQ] = ist[I_SEQ]
                nrow += 1
            if t >= t_stop - 1e-9 or nrow >= row_cap or ntr + tr_guard >= tr_cap:
                return nrow, ntr
            continue
        # --- candidate event at t + dt: decay, then thinning
        t += dt
        ef = np.exp(-bf * dt)
        es = np.exp(-bs * dt)
        fst[F_YBF] *= ef
        fst[F_YSF] *= ef
        fst[F_YBS] *= es
        fst[F_YSS] *= es
        ep = np.exp(-p[P_BETA_PULL] * dt)
        fst[F_YPA] *= ep
        fst[F_YPB] *= ep
        yb_f = fst[F_YBF]
        ys_f = fst[F_YSF]
        yb_s = fst[F_YBS]
        ys_s = fst[F_YSS]
        n_b = p[P_MU_MO] * (1.0 + a) + p[P_A_SELF_F] * yb_f + p[P_A_CROSS_F] * ys_f \
            + p[P_A_SELF_S] * yb_s + p[P_A_CROSS_S] * ys_s
        n_s = p[P_MU_MO] * (1.0 - a) + p[P_A_SELF_F] * ys_f + p[P_A_CROSS_F] * yb_f \
            + p[P_A_SELF_S] * ys_s + p[P_A_CROSS_S] * yb_s
        n_tl = p[P_LAM_TOUCH] + p[P_A_TOUCH] * (yb_f + ys_f)
        n_tca = (p[P_LAM_TC] * tb + p[P_A_TC] * yb_f + p[P_A_PULL] * fst[F_YPA]) * tight
        n_tcb = (p[P_LAM_TC] / tb + p[P_A_TC] * ys_f + p[P_A_PULL] * fst[F_YPB]) * tight
        u = rng.random() * lam_tot
        fst[F_T] = t
        t_ns = start_ns + np.int64(round(t * 1e9))
        applied = False
        if u < n_b + n_s:
            side = 1 if u < n_b else -1
            lots = _lognormal_lots(rng, p[P_MO_LN_MU], p[P_MO_LN_SIG], minl, p[P_MO_MAX])
            ntr = _market(rng, p, side, lots, bsz, bcnt, btree, asz, acnt, atree, ist, W, logn, t_ns,
                          tr_ts, tr_px, tr_qty, tr_side, ntr, tr_cap if record else 0, record, wbuf)
            if p[P_KYLE] > 0:
                x = np.sqrt(lots / np.exp(p[P_MO_LN_MU]))
                if x > p[P_KYLE_CAP]:
                    x = p[P_KYLE_CAP]
                fst[F_FAIR] += side * p[P_KYLE] * x
            if side > 0:
                fst[F_YBF] += 1.0
                fst[F_YBS] += 1.0
            else:
                fst[F_YSF] += 1.0
                fst[F_YSS] += 1.0
            applied = True
        else:
            u -= n_b + n_s
            if u < 2.0 * (n_tl + lam_dl) + g_b + g_a:
                # limit order: side, then touch / gap-fill / deep
                if u < n_tl + lam_dl + g_b:
                    side = 1  # bid
                    gs = g_b
                else:
                    side = -1
                    u -= n_tl + lam_dl + g_b
                    gs = g_a
                move = False
                if u < gs:
                    # the spread is wider than a tick: a maker re-quotes next to the other side,
                    # moving its best level there (with probability p_move) or posting a new order
                    d = 1
                    lots = _lognormal_lots(rng, p[P_TL_LN_MU], p[P_TL_LN_SIG], minl, 1e12)
                    move = rng.random() < p[P_MOVE]
                elif u < gs + n_tl:
                    d = 1
                    if rng.random() > p[P_TOUCH_D1]:
                        d = 2
                        g = p[P_TOUCH_GEOM]
                        while rng.random() > g and d < 4096:
                            d += 1
                    lots = _lognormal_lots(rng, p[P_TL_LN_MU], p[P_TL_LN_SIG], minl, 1e12)
                else:
                    if rng.random() * lam_dl < p[P_LAM_NEAR]:
                        d = 1 + np.int64(rng.exponential() * p[P_D_NEAR])
                        if d > p[P_D_MAX]:
                            d = np.int64(p[P_D_MAX])
                    else:
                        d = 1 + np.int64(rng.random() * p[P_D_MAX])
                    lots = _lognormal_lots(rng, p[P_DL_LN_MU], p[P_DL_LN_SIG], minl, 1e12)
                nord = 1
                if side > 0:
                    ref = ist[I_BA]
                    if ref >= W:
                        ref = ist[I_BB] + 1 if ist[I_BB] >= 0 else W // 2
                    i = ref - d
                    if 0 <= i < W:
                        j = ist[I_BB]
                        if move and j >= 0 and j < i:
                            lots = bsz[j]
                            nord = bcnt[j]
                            _remove_level(bsz, bcnt, btree, j)
                        _add_orders(bsz, bcnt, btree, i, lots, nord)
                        ist[I_NB] += 1 if not move else 0
                        if i > ist[I_BB]:
                            ist[I_BB] = i
                        applied = True
                else:
                    ref = ist[I_BB]
                    if ref < 0:
                        ref = ist[I_BA] - 1 if ist[I_BA] < W else W // 2
                    i = ref + d
                    if 0 <= i < W:
                        j = ist[I_BA]
                        if move and j < W and j > i:
                            lots = asz[j]
                            nord = acnt[j]
                            _remove_level(asz, acnt, atree, j)
                        _add_orders(asz, acnt, atree, i, lots, nord)
                        ist[I_NA] += 1 if not move else 0
                        if i < ist[I_BA]:
                            ist[I_BA] = i
                        applied = True
            else:
                u -= 2.0 * (n_tl + lam_dl) + g_b + g_a
                if u < lam_dcb + lam_dca:
                    # deep cancel: a uniformly chosen resting order of that side
                    if u < lam_dcb:
                        if ist[I_NB] > 0:
                            k = 1 + np.int64(rng.random() * ist[I_NB])
                            i = _fw_kth(btree, k, logn)
                            _remove_one_order(bsz, bcnt, btree, i)
                            ist[I_NB] = _fw_prefix(btree, W - 1)
                            if i == ist[I_BB] and bcnt[i] == 0:
                                ist[I_BB] = _best_bid(btree, ist, logn)
                            applied = True
                    else:
                        if ist[I_NA] > 0:
                            k = 1 + np.int64(rng.random() * ist[I_NA])
                            i = _fw_kth(atree, k, logn)
                            _remove_one_order(asz, acnt, atree, i)
                            ist[I_NA] = _fw_prefix(atree, W - 1)
                            if i == ist[I_BA] and acnt[i] == 0:
                                ist[I_BA] = _best_ask(atree, logn)
                            applied = True
                else:
                    u -= lam_dcb + lam_dca
                    if u < n_tca:
                        i = ist[I_BA]
                        if i < W and ist[I_NA] > acnt[i]:
                            ist[I_NA] -= _remove_level(asz, acnt, atree, i)
                            ist[I_BA] = _best_ask(atree, logn)
                            fst[F_YPA] += 1.0
                            applied = True
                    elif u < n_tca + n_tcb:
                        i = ist[I_BB]
                        if i >= 0 and ist[I_NB] > bcnt[i]:
                            ist[I_NB] -= _remove_level(bsz, bcnt, btree, i)
                            ist[I_BB] = _best_bid(btree, ist, logn)
                            fst[F_YPB] += 1.0
                            applied = True
                    # else: rejected candidate (thinning)
        if applied:
            ist[I_SEQ] += 1
            bb = ist[I_BB]
            ba = ist[I_BA]
            lo = W // 8
            if (bb >= 0 and bb < lo) or (ba < W and ba > W - lo) or (bb >= W - lo) or (ba < lo):
                _recentre(bsz, bcnt, btree, asz, acnt, atree, ist, W)
