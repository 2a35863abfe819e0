"""The look-ahead bar: changing any tick after t changes no feature value at or before t and no
decision taken at or before t (property-based, hypothesis)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine import oracle
from gpu_engine.data.books.store import Book, Trades
from gpu_engine.features import build_bank

BLOCK_DTYPE = np.dtype([("height", np.int32), ("time", np.int64), ("subsidy_sat", np.int64),
                        ("supply_sat", np.int64), ("s2f", np.float64), ("fair_pl", np.float64),
                        ("fair_s2f", np.float64), ("price", np.float64), ("price_source", np.uint8)])
T0_S = 1_700_000_000


def _rows(rng, n, L, mid0, empty):
    """n random book rows around a random walk from mid0: empty levels, sometimes wide spreads."""
    mid = mid0 + np.cumsum(rng.normal(0, 0.2, n))
    half = np.where(rng.random(n) < 0.2, rng.uniform(0.5, 5.0, n), 0.05)
    bp = mid[:, None] - half[:, None] - 0.1 * np.arange(L)[None]
    ap = mid[:, None] + half[:, None] + 0.1 * np.arange(L)[None]
    bs = rng.integers(0, 4, (n, L)).astype(np.float32) * 0.5
    as_ = rng.integers(0, 4, (n, L)).astype(np.float32) * 0.5
    for px, sz in ((bp, bs), (ap, as_)):
        gone = (rng.random((n, L)) < empty) | (sz == 0)
        px[gone], sz[gone] = np.nan, 0.0
    return bp, ap, bs, as_


def _trades(rng, lo_ns, hi_ns, n):
    ts = np.sort(rng.integers(lo_ns, hi_ns + 1, n)) if n else np.zeros(0, np.int64)
    return ts, rng.uniform(0.1, 3.0, n), rng.choice(np.array([-1, 0, 1], np.int8), n)


def make_pair(seed, T, L, t, empty):
    """A random book and a copy whose ticks (and trades) after t were all redrawn."""
    rng = np.random.default_rng(seed)
    step = rng.integers(0, 3 * 10**9, T)  # up to 3 s per update, so block times get crossed
    ts = T0_S * 10**9 + np.cumsum(step)
    bp, ap, bs, as_ = _rows(rng, T, L, 100.0, empty)
    tr_ts, tr_q, tr_s = _trades(rng, ts[0] - 10**9, ts[-1] + 10**9, int(rng.integers(0, 3 * T)))
    book = Book.from_arrays(ts, bp, ap, bs, as_, trades=Trades(tr_ts, np.ones_like(tr_q), tr_q, tr_s))

    # the perturbed copy: ts after t redrawn (still non-decreasing), rows after t redrawn,
    # trades stamped after ts[t] redrawn
    rng2 = np.random.default_rng(seed + 1)
    ts2 = ts.copy()
    n_after = T - t - 1
    ts2[t + 1:] = ts[t] + np.cumsum(rng2.integers(0, 5 * 10**9, n_after))
    bp2, ap2, bs2, as2 = bp.copy(), ap.copy(), bs.copy(), as_.copy()
    if n_after:
        r = _rows(rng2, n_after, L, float(rng2.uniform(90, 110)), empty)
        bp2[t + 1:], ap2[t + 1:], bs2[t + 1:], as2[t + 1:] = r
    keep = tr_ts <= ts[t]
    n_new = int(rng2.integers(0, 3 * T))
    new_ts, new_q, new_s = _trades(rng2, ts[t] + 1, ts2[-1] + 10**9, n_new)
    tr2 = Trades(np.concatenate([tr_ts[keep], new_ts]), np.ones(keep.sum() + n_new),
                 np.concatenate([tr_q[keep], new_q]), np.concatenate([tr_s[keep], new_s]))
    book2 = Book.from_arrays(ts2, bp2, ap2, bs2, as2, trades=tr2)
    return book, book2


def make_blocks(seed):
    """Blocks every ~10 s around the books' time span, header times slightly non-monotonic."""
    rng = np.random.default_rng(seed)
    n = 400
    b = np.zeros(n, BLOCK_DTYPE)
    b["height"] = 209_900 + np.arange(n)
    b["time"] = T0_S - 30 + 10 * np.arange(n) + rng.integers(-12, 13, n)
    b["fair_pl"] = rng.uniform(50, 150, n)
    return b


def small_spec(L):
    spec = [("imbalance1", {}), ("microprice_bps", {}), ("spread_bps", {}),
            ("log_fair_dev", {}), ("halving_phase", {}), ("block_age_s", {}),
            ("block_interval_s", {})]
    for w in (1, 2, 5):
        spec += [("ofi", {"window": w}), ("tfi", {"window": w}), ("logret", {"window": w})]
    for lv in range(1, L + 1):
        spec += [("mlofi", {"levels": lv, "window": 3}),
                 ("depth_imbalance", {"levels": lv, "decay": 0.0}),
                 ("depth_imbalance", {"levels": lv, "decay": 0.7})]
    return spec


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


book_shape = st.tuples(st.integers(2, 40), st.integers(1, 3))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=book_shape, seed=st.integers(0, 2**31 - 2), empty=st.sampled_from([0.0, 0.1, 0.4]),
       with_blocks=st.booleans())
def test_features_at_or_before_t_ignore_the_future(shape, seed, empty, with_blocks):
    T, L = shape
    blocks = make_blocks(seed) if with_blocks else None
    spec = small_spec(L)
    v1 = None
    for t in range(T):  # every cut point of this book
        book, book2 = make_pair(seed, T, L, t, empty)
        if v1 is None:
            v1 = build_bank(book, spec=spec, xp=np, blocks=blocks).values
        v2 = build_bank(book2, spec=spec, xp=np, blocks=blocks).values
        same = bits(v1[:, : t + 1]) == bits(v2[:, : t + 1])
        assert same.all(), (t, [spec[k] for k in np.unique(np.nonzero(~same)[0])])


def _decisions_upto(res, t):
    out = []
    for d in res.decisions:
        if d["tick"] <= t:
            out.append((d["tick"], d["kind"], d["side"], d.get("desired"), d.get("reason")))
    return out


def _fills_upto(res, t):
    """Every fill at or before t: entries (with their decision tick) and exits."""
    out = []
    for tr in res.trades:
        if tr["entry_tick"] <= t:
            out.append(("entry", tr["entry_decision_tick"], tr["entry_tick"], tr["side"],
                        tr["qty"], tr["entry_vwap"], tr["entry_fee"]))
        if tr["exit_tick"] <= t:
            out.append(("exit", tr["exit_decision_tick"], tr["exit_tick"], tr["exit_vwap"], tr["pnl"],
                        tr["reason"]))
    return out


configs = st.fixed_dictionaries({
    "entry": st.sampled_from([0.05, 0.2, 0.5, 1.0]),
    "exit": st.sampled_from([0.0, 0.1, math.inf]),
    "side": st.sampled_from([-1, 0, 1]),
    "band": st.sampled_from([math.inf, 0.3, 1.0]),
    "take_profit": st.sampled_from([math.inf, 5.0, 50.0]),
    "stop_loss": st.sampled_from([math.inf, 5.0, 50.0]),
    "max_hold": st.sampled_from([math.inf, 2e9, 1e10]),
    "size_frac": st.sampled_from([0.1, 1.0]),
    "max_qty": st.sampled_from([math.inf, 0.7, 3.0]),
    "cooldown": st.integers(0, 3),
    "fee_bps": st.sampled_from([0.0, 10.0]),
    "latency": st.sampled_from([0, 10**9, 4 * 10**9, 10**12]),
    "capital": st.just(1000.0),
})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=book_shape, seed=st.integers(0, 2**31 - 2), empty=st.sampled_from([0.0, 0.15]),
       cfg=configs, rows=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)))
def test_oracle_decisions_at_or_before_t_ignore_the_future(shape, seed, empty, cfg, rows):
    T, L = shape
    spec = small_spec(L)
    r1 = None
    for t in range(T):  # every cut point of this book
        book, book2 = make_pair(seed, T, L, t, empty)
        if r1 is None:
            bank1 = build_bank(book, spec=spec, xp=np)
            sig_row, reg_row = rows[0] % bank1.K, rows[1] % bank1.K
            r1 = oracle.run(book, bank1.values[sig_row], bank1.values[reg_row], cfg, 3)
        bank2 = build_bank(book2, spec=spec, xp=np)
        r2 = oracle.run(book2, bank2.values[sig_row], bank2.values[reg_row], cfg, 3)
        assert _decisions_upto(r1, t) == _decisions_upto(r2, t), t
        assert _fills_upto(r1, t) == _fills_upto(r2, t), t
        assert np.array(r1.marks[: t + 1]).tobytes() == np.array(r2.marks[: t + 1]).tobytes(), t
