"""Price-level book primitives of the synthetic generator (numba): Fenwick trees of resting-order
counts, best-quote search, adding/removing orders and levels, market-order execution with one
trade per maker fill, near-touch thinning, window recentring and top-L row emission.

A side is three arrays over a window of W ticks: size in lots, order count, and a Fenwick tree
(length W + 1) of the counts, so the k-th resting order, the best quote and the next level are
found in O(log W).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from gpu_engine.data.synth.layout import (I_BA, I_BASE, I_BB, I_DROPPED, I_NA, I_NB, I_RECENTRES,
                                          I_SEQ, P_FILL_GEOM, P_FILL_SIG, P_MO_SLIP)

# ---------------------------------------------------------------- Fenwick tree (1-based inside)
@njit
def fw_add(tree, i, v):
    i += 1
    n = tree.shape[0]
    while i < n:
        tree[i] += v
        i += i & (-i)


@njit
def fw_prefix(tree, i):
    """Sum of entries 0..i (inclusive)."""
    s = 0
    i += 1
    while i > 0:
        s += tree[i]
        i -= i & (-i)
    return s


@njit
def fw_kth(tree, k, logn):
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


@njit
def fw_build(tree, cnt):
    tree[:] = 0
    n = tree.shape[0]
    for i in range(cnt.shape[0]):
        tree[i + 1] += cnt[i]
    for i in range(1, n):
        j = i + (i & (-i))
        if j < n:
            tree[j] += tree[i]


# ---------------------------------------------------------------- helpers
@njit
def lognormal_lots(rng, ln_mu, ln_sig, lo, hi):
    q = np.exp(ln_mu + ln_sig * rng.standard_normal())
    v = np.int64(q + 0.5)
    if v < lo:
        v = np.int64(lo)
    if v > hi:
        v = np.int64(hi)
    return v


@njit
def best_bid(ftree, logn):
    c = fw_prefix(ftree, ftree.shape[0] - 2)
    if c == 0:
        return -1
    return fw_kth(ftree, c, logn)


@njit
def best_ask(ftree, logn):
    if fw_prefix(ftree, ftree.shape[0] - 2) == 0:
        return ftree.shape[0] - 1  # W
    return fw_kth(ftree, 1, logn)


@njit
def add_orders(sz, cnt, tree, i, lots, norders):
    sz[i] += lots
    cnt[i] += norders
    fw_add(tree, i, norders)


@njit
def remove_one_order(sz, cnt, tree, i):
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
    fw_add(tree, i, -1)
    if sz[i] <= 0:  # rounding left orders without size: drop them all
        fw_add(tree, i, -cnt[i])
        cnt[i] = 0
        sz[i] = 0
    return lots


@njit
def mid_ticks(ist, W):
    bb = ist[I_BB]
    ba = ist[I_BA]
    if bb >= 0 and ba < W:
        return ist[I_BASE] + 0.5 * (bb + ba)
    if bb >= 0:
        return ist[I_BASE] + bb + 0.5
    if ba < W:
        return ist[I_BASE] + ba - 0.5
    return -1.0


@njit
def recentre(bsz, bcnt, btree, asz, acnt, atree, ist, W):
    """Shift the window so the mid sits at W/2; levels falling off the edge are dropped."""
    mid = mid_ticks(ist, W)
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
    fw_build(btree, bcnt)
    fw_build(atree, acnt)
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
    ist[I_BB] = best_bid(btree, logn)
    ist[I_BA] = best_ask(atree, logn)
    ist[I_RECENTRES] += 1


@njit
def emit_row(row, ts_ns, bsz, bcnt, btree, asz, acnt, atree, ist, W, logn, depth,
             o_ts, o_seq, o_bpx, o_apx, o_bsz, o_asz):
    o_ts[row] = ts_ns
    o_seq[row] = ist[I_SEQ]
    base = ist[I_BASE]
    # bids, best first
    c = fw_prefix(btree, W - 1)
    for j in range(depth):
        if c <= 0:
            o_bpx[row, j] = np.nan
            o_bsz[row, j] = 0.0
            continue
        i = fw_kth(btree, c, logn)
        o_bpx[row, j] = base + i  # ticks; converted to price outside
        o_bsz[row, j] = bsz[i]
        c -= bcnt[i]
    total = fw_prefix(atree, W - 1)
    c = 0
    for j in range(depth):
        if c >= total:
            o_apx[row, j] = np.nan
            o_asz[row, j] = 0.0
            continue
        i = fw_kth(atree, c + 1, logn)
        o_apx[row, j] = base + i
        o_asz[row, j] = asz[i]
        c += acnt[i]


@njit
def remove_level(sz, cnt, tree, i):
    """Remove a whole level (a market maker pulling its quote); returns the orders removed."""
    n = cnt[i]
    if n > 0:
        fw_add(tree, i, -n)
    cnt[i] = 0
    sz[i] = 0
    return n


@njit
def market(rng, p, side, lots, bsz, bcnt, btree, asz, acnt, atree, ist, W, logn, t_ns,
           tr_ts, tr_px, tr_qty, tr_side, ntr, tr_cap, record, wbuf):
    """Execute a market order of `lots` against the opposite side, best level first, never more
    than p[P_MO_SLIP] ticks through the book (price protection: the rest expires).

    At each level the filled quantity is split over m maker orders (m = all of the level's
    orders when it is emptied, else min(orders, Geometric)), with lognormal weights, one trade
    per maker fill: Binance reports one trade per maker order.
    """
    base = ist[I_BASE]
    remaining = lots
    g = p[P_FILL_GEOM]
    fsig = p[P_FILL_SIG]
    slip = np.int64(p[P_MO_SLIP])
    first = ist[I_BA] if side > 0 else ist[I_BB]
    while remaining > 0:
        if side > 0:
            i = ist[I_BA]
            if i >= W or i - first > slip:
                break  # price protection: the rest of the order expires
            sz = asz
            cnt = acnt
            tree = atree
        else:
            i = ist[I_BB]
            if i < 0 or first - i > slip:
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
            fw_add(tree, i, -removed)
            if side > 0:
                ist[I_NA] -= removed
            else:
                ist[I_NB] -= removed
        if cnt[i] == 0:
            if side > 0:
                ist[I_BA] = best_ask(atree, logn)
            else:
                ist[I_BB] = best_bid(btree, logn)
    return ntr


@njit
def thin_near(rng, pc, rng_ticks, sz, cnt, tree, ist, W, logn, bid_side):
    """Cancel each resting order within `rng_ticks` of the best (best level excluded) with
    probability pc: market makers keep little stale liquidity near the touch. Returns levels changed."""
    changed = 0
    if bid_side:
        b = ist[I_BB]
        if b < 0:
            return 0
        c = fw_prefix(tree, b) - cnt[b]
        while c > 0:
            i = fw_kth(tree, c, logn)
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
                    ist[I_NB] -= remove_level(sz, cnt, tree, i)
                else:
                    sz[i] -= (sz[i] // cnt[i]) * r
                    cnt[i] -= r
                    fw_add(tree, i, -r)
                    ist[I_NB] -= r
    else:
        b = ist[I_BA]
        if b >= W:
            return 0
        c = fw_prefix(tree, b)
        total = fw_prefix(tree, W - 1)
        while c < total:
            i = fw_kth(tree, c + 1, logn)
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
                    ist[I_NA] -= remove_level(sz, cnt, tree, i)
                else:
                    sz[i] -= (sz[i] // cnt[i]) * r
                    cnt[i] -= r
                    fw_add(tree, i, -r)
                    ist[I_NA] -= r
            c += cnt[i]
    return changed
