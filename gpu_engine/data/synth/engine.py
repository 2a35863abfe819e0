"""Numba event loop of the synthetic order-flow generator (docs/SYNTH.md).

Owns the simulation loop only (the book primitives are in synth_book, the state layout in
synth_layout): event arrivals by thinning (Ogata), the latent fair value with its slow
log-volatility, the meta-order sign, and the sampling of top-L rows every `sample_ms`. All
state lives in numpy arrays so generation resumes chunk after chunk with bounded memory;
randomness comes from one `numpy.random.Generator` (its state advances in place, so a seed gives
one bit-identical stream however the run is chunked).

No `cache=True`: numba's on-disk cache is keyed on this file alone, so an edit to synth_book or
synth_layout would silently reuse a stale compiled loop. Compiling costs ~6 s once per process.

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
Market orders lean towards the latent fair value (imbalance a = fair_pull tanh(z) + meta-order
sign, z = (fair - mid) / fair_scale), pulls and gap refills are tilted by z, and each market order
moves the fair value a little (square-root permanent impact).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from gpu_engine.data.synth.book import (add_orders, best_ask, best_bid, emit_row, fw_kth, fw_prefix,
                                        lognormal_lots, market, mid_ticks, recentre, remove_level,
                                        remove_one_order, thin_near)
from gpu_engine.data.synth.layout import *  # noqa: F401,F403  (the P_*, F_*, I_* indices)


@njit
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
        z = (fst[F_FAIR] - mid_ticks(ist, W)) / p[P_L_F]
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
                v = fst[F_LOGVOL] - th * fst[F_LOGVOL] + vsd * np.sqrt(2.0 * th) * rng.standard_normal()
                if v > 2.0 * vsd:  # clipped at 2 sd: the variance factor stays below ~e^(2 sd^2)
                    v = 2.0 * vsd
                if v < -2.0 * vsd:
                    v = -2.0 * vsd
                fst[F_LOGVOL] = v
                act *= np.exp(2.0 * fst[F_LOGVOL] - 2.0 * vsd * vsd)  # mean-one variance factor
            fst[F_FAIR] += p[P_SIG_F] * np.sqrt(dts * act) * rng.standard_normal()
            # the fair value never leaves the traded price by more than fair_max_z * fair_scale
            m = mid_ticks(ist, W)
            lim = p[P_FAIR_MAXZ] * p[P_L_F]
            if m > 0 and fst[F_FAIR] > m + lim:
                fst[F_FAIR] = m + lim
            if m > 0 and fst[F_FAIR] < m - lim:
                fst[F_FAIR] = m - lim
            if t >= fst[F_META_END]:
                fst[F_META_SIGN] = 1.0 if rng.random() < 0.5 else -1.0
                u = 1.0 - rng.random()
                fst[F_META_END] = t + p[P_META_MIN] * u ** (-1.0 / p[P_META_ALPHA])
            fst[F_T] = t
            if p[P_DELTA_NEAR] > 0:
                pc = 1.0 - np.exp(-p[P_DELTA_NEAR] * dts)
                ch = thin_near(rng, pc, p[P_NEAR_RANGE], bsz, bcnt, btree, ist, W, logn, True)
                ch += thin_near(rng, pc, p[P_NEAR_RANGE], asz, acnt, atree, ist, W, logn, False)
                ist[I_SEQ] += ch
            if record and ist[I_SEQ] != ist[I_LAST_ROW_SEQ]:
                emit_row(nrow, start_ns + np.int64(round(t * 1e9)), bsz, bcnt, btree, asz, acnt,
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
            lots = lognormal_lots(rng, p[P_MO_LN_MU], p[P_MO_LN_SIG], minl, p[P_MO_MAX])
            ntr = market(rng, p, side, lots, bsz, bcnt, btree, asz, acnt, atree, ist, W, logn, t_ns,
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
                    lots = lognormal_lots(rng, p[P_TL_LN_MU], p[P_TL_LN_SIG], minl, 1e12)
                    move = rng.random() < p[P_MOVE]
                elif u < gs + n_tl:
                    d = 1
                    if rng.random() > p[P_TOUCH_D1]:
                        d = 2
                        g = p[P_TOUCH_GEOM]
                        while rng.random() > g and d < 4096:
                            d += 1
                    lots = lognormal_lots(rng, p[P_TL_LN_MU], p[P_TL_LN_SIG], minl, 1e12)
                else:
                    if rng.random() * lam_dl < p[P_LAM_NEAR]:
                        d = 1 + np.int64(rng.exponential() * p[P_D_NEAR])
                        if d > p[P_D_MAX]:
                            d = np.int64(p[P_D_MAX])
                    else:
                        d = 1 + np.int64(rng.random() * p[P_D_MAX])
                    lots = lognormal_lots(rng, p[P_DL_LN_MU], p[P_DL_LN_SIG], minl, 1e12)
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
                            remove_level(bsz, bcnt, btree, j)
                        else:
                            ist[I_NB] += 1
                        add_orders(bsz, bcnt, btree, i, lots, nord)
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
                            remove_level(asz, acnt, atree, j)
                        else:
                            ist[I_NA] += 1
                        add_orders(asz, acnt, atree, i, lots, nord)
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
                            i = fw_kth(btree, k, logn)
                            remove_one_order(bsz, bcnt, btree, i)
                            ist[I_NB] = fw_prefix(btree, W - 1)
                            if i == ist[I_BB] and bcnt[i] == 0:
                                ist[I_BB] = best_bid(btree, logn)
                            applied = True
                    else:
                        if ist[I_NA] > 0:
                            k = 1 + np.int64(rng.random() * ist[I_NA])
                            i = fw_kth(atree, k, logn)
                            remove_one_order(asz, acnt, atree, i)
                            ist[I_NA] = fw_prefix(atree, W - 1)
                            if i == ist[I_BA] and acnt[i] == 0:
                                ist[I_BA] = best_ask(atree, logn)
                            applied = True
                else:
                    u -= lam_dcb + lam_dca
                    if u < n_tca:
                        i = ist[I_BA]
                        if i < W and ist[I_NA] > acnt[i]:
                            ist[I_NA] -= remove_level(asz, acnt, atree, i)
                            ist[I_BA] = best_ask(atree, logn)
                            fst[F_YPA] += 1.0
                            applied = True
                    elif u < n_tca + n_tcb:
                        i = ist[I_BB]
                        if i >= 0 and ist[I_NB] > bcnt[i]:
                            ist[I_NB] -= remove_level(bsz, bcnt, btree, i)
                            ist[I_BB] = best_bid(btree, logn)
                            fst[F_YPB] += 1.0
                            applied = True
                    # else: rejected candidate (thinning)
        if applied:
            ist[I_SEQ] += 1
            bb = ist[I_BB]
            ba = ist[I_BA]
            lo = W // 8
            if (bb >= 0 and bb < lo) or (ba < W and ba > W - lo) or (bb >= W - lo) or (ba < lo):
                recentre(bsz, bcnt, btree, asz, acnt, atree, ist, W)
