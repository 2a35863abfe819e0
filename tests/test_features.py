"""Feature bank and Market: hand-worked values, windows against naive loops, NaN rules, lookup."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpu_engine.data.books.store import Book, Trades
from gpu_engine.features import DEFAULT_SPEC, FEATURES, build_bank
from gpu_engine.market import (HALVING_INTERVAL, Market, approx_height, power_law_fair)

BLOCK_DTYPE = np.dtype([("height", np.int32), ("time", np.int64), ("subsidy_sat", np.int64),
                        ("supply_sat", np.int64), ("s2f", np.float64), ("fair_pl", np.float64),
                        ("fair_s2f", np.float64), ("price", np.float64), ("price_source", np.uint8)])


def tiny_blocks(heights, times, fair):
    b = np.zeros(len(heights), BLOCK_DTYPE)
    b["height"], b["time"], b["fair_pl"] = heights, times, fair
    return b


def random_book(T=400, L=4, seed=0, trades=True, empty=0.05, t0=1_700_000_000 * 10**9):
    rng = np.random.default_rng(seed)
    mid = 100.0 + np.cumsum(rng.normal(0, 0.05, T))
    ts = t0 + np.cumsum(rng.integers(0, 50_000_000, T))
    bp = mid[:, None] - 0.05 - 0.1 * np.arange(L)[None]
    ap = mid[:, None] + 0.05 + 0.1 * np.arange(L)[None]
    bs = rng.integers(0, 6, (T, L)).astype(np.float32)
    as_ = rng.integers(0, 6, (T, L)).astype(np.float32)
    for px, sz in ((bp, bs), (ap, as_)):
        gone = rng.random((T, L)) < empty
        px[gone], sz[gone] = np.nan, 0.0
    tr = None
    if trades:
        n = T
        tr = Trades(ts=np.sort(rng.integers(ts[0] - 10**8, ts[-1] + 10**8, n)), px=np.full(n, 100.0),
                    qty=rng.uniform(0.1, 2, n), side=rng.choice([-1, 1], n).astype(np.int8))
    return Book.from_arrays(ts, bp, ap, bs, as_, trades=tr)


def bank_for(book, spec, **kw):
    return build_bank(book, spec=spec, xp=np, **kw)


# ----------------------------------------------------------------------------------------------
# hand-worked values
# ----------------------------------------------------------------------------------------------

def test_imbalance1_by_hand():
    # (bid_sz0 - ask_sz0) / (bid_sz0 + ask_sz0): (3-1)/4 = 0.5, 0 when both 0, (1-3)/4 = -0.5,
    # (0-2)/2 = -1, (5-0)/5 = 1; the prices play no part (the last row has a NaN bid price).
    bs = [[3], [0], [1], [0], [5]]
    as_ = [[1], [0], [3], [2], [0]]
    book = Book.from_arrays(range(5), [[9], [9], [9], [9], [np.nan]], [[10]] * 5, bs, as_)
    v = bank_for(book, [("imbalance1", {})]).row("imbalance1")
    assert v.dtype == np.float32
    assert v.tolist() == [0.5, 0.0, -0.5, -1.0, 1.0]


def test_ofi_by_hand():
    # e_n = 1{Pb_n >= Pb_n-1} qb_n - 1{Pb_n <= Pb_n-1} qb_n-1 - 1{Pa_n <= Pa_n-1} qa_n + 1{Pa_n >= Pa_n-1} qa_n-1
    # t0: bid 100 x 5,   ask 101 x 4
    # t1: bid 100 x 7,   ask 101 x 4   -> bid same: +7 - 5; ask same: -4 + 4          e1 = +2
    # t2: bid 100.5 x 3, ask 101 x 2   -> bid up: +3; ask same: -2 + 4                 e2 = +5
    # t3: bid 100 x 6,   ask 100.8 x 1 -> bid down: -3 (old size); ask down: -1 (new)  e3 = -4
    # t4: no bid,        ask 100.8 x 1 -> bid gone (price -inf): -6; ask same: -1 + 1  e4 = -6
    # depth (qb + qa) / 2: t1 5.5, t2 2.5, t3 3.5, t4 0.5
    # ofi(window=1) = e_t / depth_t: t1 2/5.5, t2 2, t3 -4/3.5, t4 -12
    # ofi(window=3) at t3 = (2 + 5 - 4) / ((5.5 + 2.5 + 3.5) / 3) = 9 / 11.5;
    #              at t4 = (5 - 4 - 6) / ((2.5 + 3.5 + 0.5) / 3) = -15 / 6.5
    book = Book.from_arrays(
        ts=range(5),
        bid_px=[[100.0], [100.0], [100.5], [100.0], [np.nan]],
        ask_px=[[101.0], [101.0], [101.0], [100.8], [100.8]],
        bid_sz=[[5], [7], [3], [6], [0]],
        ask_sz=[[4], [4], [2], [1], [1]],
    )
    bank = bank_for(book, [("ofi", {"window": 1}), ("ofi", {"window": 3}),
                           ("mlofi", {"levels": 1, "window": 3})])
    w1 = bank.row("ofi", window=1)
    w3 = bank.row("ofi", window=3)
    assert math.isnan(w1[0])
    np.testing.assert_array_equal(w1[1:], np.float32([2 / 5.5, 2.0, -4 / 3.5, -12.0]))
    assert np.isnan(w3[:3]).all()
    np.testing.assert_array_equal(w3[3:], np.float32([9 / 11.5, -15 / 6.5]))
    # one-level MLOFI is OFI
    np.testing.assert_array_equal(bank.row("mlofi", levels=1, window=3), w3)


def test_microprice_spread_and_depth_imbalance_by_hand():
    # t0: bid 99 x 3 | 98 x 1, ask 101 x 1 | 102 x 3.  mid 100, I = 3/4,
    #     wmid = 0.75 * 101 + 0.25 * 99 = 100.5 -> +50 bps; spread 2/100 -> 200 bps.
    #     depth_imbalance(2 levels, decay 0): (4 - 4) / 8 = 0;
    #     decay ln 2 (weights 1, 1/2): (3.5 - 2.5) / 6 = 1/6.
    # t1: no ask at level 0 -> microprice and spread NaN; depth_imbalance uses level 1 only on the
    #     ask: (4 - 3 * w1) / (4 + 3 * w1): decay 0 -> 1/7.
    # t2: nothing displayed -> depth_imbalance NaN, imbalance1 0.
    book = Book.from_arrays(
        ts=[0, 1, 2],
        bid_px=[[99, 98], [99, 98], [np.nan, np.nan]],
        ask_px=[[101, 102], [np.nan, 102], [np.nan, np.nan]],
        bid_sz=[[3, 1], [3, 1], [0, 0]],
        ask_sz=[[1, 3], [0, 3], [0, 0]],
    )
    bank = bank_for(book, [("microprice_bps", {}), ("spread_bps", {}), ("imbalance1", {}),
                           ("depth_imbalance", {"levels": 2, "decay": 0.0}),
                           ("depth_imbalance", {"levels": 2, "decay": math.log(2)})])
    mp = bank.row("microprice_bps")
    assert mp[0] == pytest.approx(50.0) and np.isnan(mp[1:]).all()
    sp = bank.row("spread_bps")
    assert sp[0] == pytest.approx(200.0) and np.isnan(sp[1:]).all()
    d0 = bank.row("depth_imbalance", levels=2, decay=0.0)
    assert d0[0] == 0.0 and d0[1] == pytest.approx(1 / 7) and math.isnan(d0[2])
    d1 = bank.row("depth_imbalance", levels=2, decay=math.log(2))
    assert d1[0] == pytest.approx(1 / 6)
    assert bank.row("imbalance1")[2] == 0.0


def test_tfi_by_hand_and_causal_trade_alignment():
    # ticks at ts 10, 20, 30, 40.  trades: (5, buy 1) -> tick 0 (before the first tick);
    # (20, sell 3) -> tick 1 (ts == ts[1] counts at t1); (25, buy 2) -> tick 2; (45, ...) after the
    # last tick -> dropped.  tfi(window=1) covers trades in (ts[t-1], ts[t]]:
    # t0 NaN (window not filled), t1 (0 - 3) / 3 = -1, t2 (2 - 0) / 2 = 1, t3 no trade -> 0.
    # tfi(window=2) at t2: (2 - 3) / 5 = -0.2; at t3: (2 - 0) / 2 = 1.
    tr = Trades(ts=np.array([5, 20, 25, 45]), px=np.full(4, 1.0), qty=np.array([1.0, 3.0, 2.0, 9.0]),
                side=np.array([1, -1, 1, 1], np.int8))
    book = Book.from_arrays([10, 20, 30, 40], [[1.0]] * 4, [[2.0]] * 4, [[1]] * 4, [[1]] * 4, trades=tr)
    m = Market.from_book(book, device="cpu")
    assert m.trade_tick.tolist() == [0, 1, 2]
    bank = build_bank(m, spec=[("tfi", {"window": 1}), ("tfi", {"window": 2})])
    w1, w2 = bank.row("tfi", window=1), bank.row("tfi", window=2)
    assert math.isnan(w1[0]) and w1[1:].tolist() == [-1.0, 1.0, 0.0]
    assert np.isnan(w2[:2]).all() and w2[2:].tolist() == pytest.approx([-0.2, 1.0])
    # no trades at all -> 0 wherever the window is filled
    book0 = Book.from_arrays([10, 20, 30, 40], [[1.0]] * 4, [[2.0]] * 4, [[1]] * 4, [[1]] * 4)
    v = bank_for(book0, [("tfi", {"window": 2})]).values[0]
    assert np.isnan(v[:2]).all() and v[2:].tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------------------
# windows against naive loops
# ----------------------------------------------------------------------------------------------

def _naive_e(bp, ap, bs, as_, lvl):
    T = bp.shape[0]
    e = np.zeros(T)
    for n in range(1, T):
        def side(px, sz, t, inf):
            ok = math.isfinite(px[t, lvl]) and px[t, lvl] > 0 and sz[t, lvl] > 0
            return (px[t, lvl], float(sz[t, lvl])) if ok else (inf, 0.0)
        pb, qb = side(bp, bs, n, -math.inf)
        pb0, qb0 = side(bp, bs, n - 1, -math.inf)
        pa, qa = side(ap, as_, n, math.inf)
        pa0, qa0 = side(ap, as_, n - 1, math.inf)
        e[n] = (qb if pb >= pb0 else 0) - (qb0 if pb <= pb0 else 0) \
            - (qa if pa <= pa0 else 0) + (qa0 if pa >= pa0 else 0)
    return e


def _depth(px, sz, lvl):
    ok = np.isfinite(px[:, lvl]) & (px[:, lvl] > 0) & (sz[:, lvl] > 0)
    return np.where(ok, sz[:, lvl].astype(np.float64), 0.0)


def test_rolling_windows_match_naive_loops():
    book = random_book(T=300, L=3, seed=3)
    spec = [("ofi", {"window": 7}), ("mlofi", {"levels": 3, "window": 5}), ("logret", {"window": 4}),
            ("tfi", {"window": 6})]
    bank = bank_for(book, spec)
    bp, ap, bs, as_ = book.bid_px, book.ask_px, book.bid_sz, book.ask_sz
    T = book.T
    e = [_naive_e(bp, ap, bs, as_, lvl) for lvl in range(3)]
    dep = [(_depth(bp, bs, lvl) + _depth(ap, as_, lvl)) / 2 for lvl in range(3)]
    mid = np.where(np.isfinite(bp[:, 0]) & np.isfinite(ap[:, 0]) & (bs[:, 0] > 0) & (as_[:, 0] > 0),
                   (bp[:, 0] + ap[:, 0]) / 2, np.nan)
    tick_of = np.searchsorted(book.ts, book.trades.ts, side="left")
    ofi = np.full(T, np.nan)
    ml = np.full(T, np.nan)
    lr = np.full(T, np.nan)
    tfi = np.full(T, np.nan)
    for t in range(T):
        if t >= 7:
            d = sum(dep[0][t - 6:t + 1]) / 7
            ofi[t] = sum(e[0][t - 6:t + 1]) / d if d else np.nan
        if t >= 5:
            d = sum(sum(dep[m][t - 4:t + 1]) for m in range(3)) / 3 / 5
            ml[t] = sum(sum(e[m][t - 4:t + 1]) for m in range(3)) / 3 / d if d else np.nan
        if t >= 4:
            lr[t] = math.log(mid[t] / mid[t - 4])
        if t >= 6:
            sel = (tick_of > t - 6) & (tick_of <= t)
            vb = book.trades.qty[sel & (book.trades.side > 0)].sum()
            vs = book.trades.qty[sel & (book.trades.side < 0)].sum()
            tfi[t] = (vb - vs) / (vb + vs) if vb + vs > 0 else 0.0
    for name, params, want in (("ofi", {"window": 7}, ofi), ("mlofi", {"levels": 3, "window": 5}, ml),
                               ("logret", {"window": 4}, lr), ("tfi", {"window": 6}, tfi)):
        got = bank.row(name, **params)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=2e-6, atol=1e-7,
                                   equal_nan=True, err_msg=name)
        assert np.isnan(got[: params["window"]]).all(), name


# ----------------------------------------------------------------------------------------------
# bank, table, numpy path, NaN rules
# ----------------------------------------------------------------------------------------------

def test_default_bank_numpy_path_and_table():
    book = random_book(T=1500, L=4, seed=1)
    bank = build_bank(book, xp=np)
    assert isinstance(bank.values, np.ndarray) and bank.values.dtype == np.float32
    assert bank.values.shape == (len(bank.table), book.T)
    assert bank.xp is np
    # levels > depth entries of the default spec are skipped; everything else is there
    expected = [(n, p) for n, p in DEFAULT_SPEC if p.get("levels", 1) <= 4]
    assert len(bank.table) == len(expected)
    assert list(bank.table["row"]) == list(range(len(expected)))
    assert len(set(bank.names)) == len(bank.names)
    assert set(bank.table["name"]) == set(FEATURES)
    assert bank.index("ofi", window=100) == bank.names.index("ofi(window=100)")
    assert bank.index("imbalance1") == bank.names.index("imbalance1")
    assert bank.index("mlofi", levels=3, window=1000) == bank.names.index("mlofi(levels=3,window=1000)")
    assert bank.table.loc[bank.index("ofi", window=10), "window"] == 10
    with pytest.raises(KeyError, match="2 rows"):
        bank.index("mlofi", levels=3)
    with pytest.raises(KeyError, match="no feature row"):
        bank.index("ofi", window=7)
    np.testing.assert_array_equal(bank.to_host(), bank.values)
    # a Market built explicitly gives the same bank
    bank2 = build_bank(Market.from_book(book, device="cpu"))
    np.testing.assert_array_equal(bank2.values, bank.values)


def test_nan_rules():
    book = random_book(T=50, L=2, seed=5, empty=0.3)
    bank = bank_for(book, [("ofi", {"window": 10}), ("logret", {"window": 3}), ("microprice_bps", {}),
                           ("imbalance1", {})])
    assert np.isnan(bank.row("ofi", window=10)[:10]).all()
    bp, ap, bs, as_ = book.bid_px, book.ask_px, book.bid_sz, book.ask_sz
    top = np.isfinite(bp[:, 0]) & np.isfinite(ap[:, 0]) & (bs[:, 0] > 0) & (as_[:, 0] > 0)
    assert (~top).any()
    np.testing.assert_array_equal(np.isnan(bank.row("microprice_bps")), ~top)
    lr = bank.row("logret", window=3)
    np.testing.assert_array_equal(np.isnan(lr[3:]), ~(top[3:] & top[:-3]))
    assert not np.isnan(bank.row("imbalance1")).any()
    # a window longer than the data: NaN everywhere
    assert np.isnan(bank_for(book, [("ofi", {"window": 50})]).values).all()


def test_spec_is_validated():
    book = random_book(T=20, L=2, seed=0)
    with pytest.raises(ValueError, match="unknown feature 'nope'"):
        bank_for(book, [("nope", {})])
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        bank_for(book, [("ofi", {"window": 0})])
    with pytest.raises(ValueError, match="only 2 level"):
        bank_for(book, [("mlofi", {"levels": 3, "window": 2})])
    with pytest.raises(ValueError, match="parameters"):
        bank_for(book, [("ofi", {})])
    with pytest.raises(ValueError, match="duplicate"):
        bank_for(book, [("imbalance1", {}), {"name": "imbalance1"}])
    with pytest.raises(ValueError, match="Market already carries"):
        build_bank(Market.from_book(book, device="cpu"), blocks=tiny_blocks([0], [0], [1.0]))


# ----------------------------------------------------------------------------------------------
# blocks aligned by time
# ----------------------------------------------------------------------------------------------

def test_block_features_aligned_by_time():
    # blocks at unix s 1000 (h 209,998), 1600 (209,999), 1500 (210,000: header time earlier than
    # its parent, so it is known only from 1600 on), 2300 (210,001).
    blocks = tiny_blocks([209_998, 209_999, 210_000, 210_001], [1000, 1600, 1500, 2300],
                         [10.0, 20.0, 40.0, 80.0])
    secs = [999, 1000, 1599, 1600, 2299, 2300, 2400]
    ts = [s * 10**9 + 5 for s in secs]
    T = len(ts)
    book = Book.from_arrays(ts, [[39.0]] * T, [[41.0]] * T, [[1]] * T, [[1]] * T)
    m = Market.from_book(book, blocks=blocks, device="cpu")
    assert m.block_source == "blocks"
    assert m.block_height.tolist() == [-1, 209_998, 209_998, 210_000, 210_000, 210_001, 210_001]
    bank = bank_for(book, [("halving_phase", {}), ("log_fair_dev", {}), ("block_age_s", {}),
                           ("block_interval_s", {})], blocks=blocks)
    ph = bank.row("halving_phase")
    assert math.isnan(ph[0])
    assert ph[1] == np.float32(209_998 / HALVING_INTERVAL) and ph[3] == 0.0
    assert ph[5] == np.float32(1 / HALVING_INTERVAL)
    dev = bank.row("log_fair_dev")  # mid 40
    assert math.isnan(dev[0])
    np.testing.assert_allclose(dev[1:], np.log(40 / np.array([10, 10, 40, 40, 80, 80.0])), rtol=1e-6)
    age = bank.row("block_age_s")
    assert math.isnan(age[0])
    np.testing.assert_allclose(age[1:], np.array([0, 599, 100, 799, 0, 100]) + 5e-9, atol=1e-4)
    iv = bank.row("block_interval_s")
    assert np.isnan(iv[:3]).all()  # no block before 209,998 in the dataset
    assert iv[3:].tolist() == [-100.0, -100.0, 800.0, 800.0]


def test_block_model_without_dataset():
    # computed: the Santostasi law (A = 1.0117e-17, n = 5.82) gives ~ $98k on 2025-06-06 (d = 5,998)
    assert power_law_fair(np.array([1_749_168_000]))[0] == pytest.approx(98_000, rel=0.02)
    assert np.isnan(power_law_fair(np.array([1_230_940_800 - 86_400])))[0]
    # the height anchors are hit exactly; before genesis -1
    assert approx_height(np.array([1_713_571_767, 1_589_225_023, 1_231_006_505])).tolist() == \
        [840_000, 630_000, 0]
    assert approx_height(np.array([1_231_006_504]))[0] == -1
    ts = np.array([1_713_571_767, 1_713_571_767 + 600 * 1050]) * 10**9
    book = Book.from_arrays(ts, [[99.0]] * 2, [[101.0]] * 2, [[1]] * 2, [[1]] * 2)
    m = Market.from_book(book, device="cpu")
    assert m.block_source == "model"
    bank = bank_for(book, [("halving_phase", {}), ("block_age_s", {}), ("log_fair_dev", {})])
    assert bank.row("halving_phase")[0] == 0.0
    assert 0.004 < bank.row("halving_phase")[1] < 0.006  # ~1,050 blocks into the epoch
    assert np.isnan(bank.row("block_age_s")).all()
    np.testing.assert_allclose(bank.row("log_fair_dev"),
                               np.log(100 / power_law_fair(ts // 10**9)), rtol=1e-6)


def test_market_refuses_bad_books():
    with pytest.raises(ValueError, match="non-decreasing"):
        Market.from_book(Book.from_arrays([0, 2, 1], [[1.0]] * 3, [[2.0]] * 3, [[1]] * 3, [[1]] * 3),
                         device="cpu")
    with pytest.raises(ValueError, match="lacks field"):
        Market.from_book(random_book(T=5), blocks=np.zeros(3), device="cpu")


def test_cupy_bank_matches_numpy():
    from gpu_engine.backend import gpu_available
    if not gpu_available():
        pytest.skip("no working GPU here (CuPy + numba-cuda): the cupy path is checked on GPU machines")
    import cupy

    book = random_book(T=3000, L=4, seed=2)
    blocks = tiny_blocks([839_999, 840_000], [1_700_000_000 - 700, 1_700_000_000 - 100], [5e4, 6e4])
    cpu = build_bank(book, xp=np, blocks=blocks)
    gpu = build_bank(book, xp=cupy, blocks=blocks)
    assert isinstance(gpu.values, cupy.ndarray) and gpu.names == cpu.names
    np.testing.assert_allclose(gpu.to_host(), cpu.values, rtol=1e-5, atol=1e-6, equal_nan=True)
