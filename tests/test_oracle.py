"""The oracle against the golden cases and against small books worked through by hand."""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gpu_engine import oracle
from gpu_engine.data.books.store import Book
from gpu_engine.enums import METRICS

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "rules_v1.json"
NAN = math.nan


def make_book(ts, bids, asks, depth=2) -> Book:
    """bids/asks: per tick a list of (price, size) levels; None = an absent level (NaN, 0)."""
    T = len(ts)
    bp = np.full((T, depth), np.nan)
    ap = np.full((T, depth), np.nan)
    bs = np.zeros((T, depth), np.float32)
    as_ = np.zeros((T, depth), np.float32)
    for t in range(T):
        for lvl, item in enumerate(bids[t]):
            if item is not None:
                bp[t, lvl], bs[t, lvl] = item
        for lvl, item in enumerate(asks[t]):
            if item is not None:
                ap[t, lvl], as_[t, lvl] = item
    return Book.from_arrays(ts, bp, ap, bs, as_)


def rel(a, b):
    if math.isinf(b):
        return a == b
    return a == b or abs(a - b) <= 1e-9 * abs(b)  # relative, as the golden README asks


def check(metrics, **expected):
    for name, want in expected.items():
        got = metrics[name]
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), (name, got)
        elif isinstance(want, int):
            assert got == want, (name, got, want)
        else:
            assert rel(got, want), (name, got, want)


# ----------------------------------------------------------------------------------------------
# golden cases
# ----------------------------------------------------------------------------------------------

def golden_cases():
    if not GOLDEN.is_file():
        return []
    return json.loads(GOLDEN.read_text())["cases"]


@pytest.mark.skipif(not GOLDEN.is_file(), reason=f"{GOLDEN} not present: the golden cases live in "
                    "../shared/golden beside the repo, which a fresh clone does not have")
@pytest.mark.parametrize("case", golden_cases(), ids=lambda c: c["name"][:40])
def test_golden(case):
    b = case["book"]
    book = Book.from_arrays(b["ts"], b["bid_px"], b["ask_px"], b["bid_sz"], b["ask_sz"])
    cfg = dict(case["config"])
    cfg.update(case["run"])
    B = cfg.pop("B")
    sig = np.asarray(case["signal"], np.float32)
    res = oracle.run(book, sig, np.zeros_like(sig), cfg, B)
    exp = case["expected"]
    for name, want in exp.items():
        if name == "reasons":
            for reason, count in want.items():
                assert res.metrics[f"exits_{reason}"] == count, reason
        elif name in ("trades", "wins"):
            assert res.metrics[name] == want, name
        else:
            assert rel(res.metrics[name], want), (name, res.metrics[name], want)
    assert list(res.metrics) == list(METRICS) + [k for k in oracle.V2_METRICS if k not in METRICS]
    assert res.bucket_pnl.dtype == np.float64 and res.bucket_pnl.shape == (B,)
    assert rel(float(res.bucket_pnl.sum()), exp["net_pnl"])
    assert int(res.bucket_trades.sum()) == exp["trades"]
    assert int(res.bucket_wins.sum()) == exp["wins"]


# ----------------------------------------------------------------------------------------------
# hand-worked cases
# ----------------------------------------------------------------------------------------------

def test_stop_loss_long():
    # latency 0, fee 0, capital 1000, size_frac 1, max_qty 1, stop 100 bps, take inf.
    # t0: s=1 >= 0.5 -> long decision, px = ask 101, desired = min(1000/101, 1) = 1.
    # t1: fill: asks 101 x 5 -> qty 1 @ 101 (entry tick 1).
    # t2: p = bid 100.5, move -0.5 > -1.01 (= -100 bps x 101): hold.
    # t3: p = bid 99.9, move -1.1 <= -1.01 -> stop decision.
    # t4: fill: bids 0.4 @ 99.8 + 0.6 @ 99.7 -> VWAP 99.74; PnL = 99.74 - 101 = -1.26.
    # t5: flat, s = 0: nothing.  T = 6, B = 3 -> bucket(t) = t // 2: the exit (t4) in bucket 2.
    # marks: 1000, 999 (bid 100), 999.5, 998.9, 998.74, 998.74 -> max drawdown 1.26 / 1000.
    ts = [0, 1, 2, 3, 4, 5]
    bids = [[(100.0, 5), (99.9, 5)], [(100.0, 5), (99.9, 5)], [(100.5, 5), (100.4, 5)],
            [(99.9, 5), (99.8, 5)], [(99.8, 0.4), (99.7, 5)], [(99.8, 5), (99.7, 5)]]
    asks = [[(101.0, 5), (101.1, 5)]] * 6
    book = make_book(ts, bids, asks)
    sig = np.array([1, 0, 0, 0, 0, 0], np.float32)
    cfg = dict(entry=0.5, stop_loss=100.0, size_frac=1.0, max_qty=1.0, fee_bps=0.0, latency=0,
               capital=1000.0)
    res = oracle.run(book, sig, np.zeros(6, np.float32), cfg, 3)
    (tr,) = res.trades
    assert (tr["side"], tr["entry_decision_tick"], tr["entry_tick"]) == (1, 0, 1)
    assert (tr["exit_decision_tick"], tr["exit_tick"], tr["reason"]) == (3, 4, "stop")
    assert rel(tr["qty"], 1.0) and rel(tr["entry_vwap"], 101.0) and rel(tr["exit_vwap"], 99.74)
    assert np.allclose(res.marks, [1000, 999, 999.5, 998.9, 998.74, 998.74], rtol=0, atol=1e-9)
    check(res.metrics, trades=1, wins=0, win_rate=0.0, net_pnl=-1.26, gross_pnl=-1.26, fees=0.0,
          expectancy=-1.26, profit_factor=0.0, avg_win=NAN, avg_loss=-1.26, payoff_ratio=NAN,
          max_drawdown=0.00126, final_equity=998.74, exposure=3 / 6, mean_hold_s=3e-9,
          exits_stop=1, exits_take=0, exits_time=0, exits_signal=0, exits_end=0)
    assert np.allclose(res.bucket_pnl, [0, 0, -1.26]) and list(res.bucket_trades) == [0, 0, 1]
    # r = [0, 0, -1.26e-3]: mean -4.2e-4, sample std 1.26e-3/sqrt(3) -> sharpe -1/sqrt(3)
    # sortino: -4.2e-4 / sqrt(1.26e-3^2 / 3) = -1/sqrt(3) as well
    check(res.metrics, sharpe=-1 / math.sqrt(3), sortino=-1 / math.sqrt(3))


def test_time_exit_cooldown_and_latency_longer_than_the_data():
    # short only, latency 10 ns, ts = 0, 5, ..., 55 (T = 12), max_hold 12 ns, cooldown 2,
    # fee 10 bps, size_frac 0.5, max_qty 2, capital 1000.
    # t0: s=-1 -> short decision; px = bid 50 -> desired min(0.5*1000/50, 2) = 2.
    # fill: first t' > 0 with ts >= 0 + 10 -> t2. Bids at t2: 1 @ 50 + 1 @ 49.9 -> VWAP 49.95,
    #   entry fee 1e-3 * 49.95 * 2 = 0.0999.
    # t3 (held 5 ns), t4 (10 ns): hold. t5: 25 - 10 = 15 >= 12 -> time exit decision.
    # fill: ts >= 25 + 10 -> t7; asks at t7: 10 @ 50.2 -> VWAP 50.2, exit fee 0.1004.
    #   gross = -2 * (50.2 - 49.95) = -0.5; PnL = -0.5 - 0.0999 - 0.1004 = -0.7003.
    # cooldown: next entry from 7 + 1 + 2 = 10: s=-1 at t8, t9 is ignored; t10 decides a short,
    #   whose fill needs ts >= 60 > ts[11] = 55: dropped at the end.  s=+1 at t1 is ignored
    #   (short only, and an order is pending anyway).
    # marks: t0, t1 1000; t2..t6: 1000 - 2 * (50.1 - 49.95) - 0.0999 = 999.6001; then 999.2997.
    T = 12
    ts = [5 * i for i in range(T)]
    bids = [[(50.0, 1), (49.9, 5)]] * T
    asks = [[(50.1, 10), (50.2, 10)]] * 7 + [[(50.2, 10), (50.3, 10)]] + [[(50.1, 10), (50.2, 10)]] * 4
    book = make_book(ts, bids, asks)
    sig = np.array([-1, 1, 0, 0, 0, 0, -1, 0, -1, -1, -1, -1], np.float32)
    cfg = dict(entry=0.5, side=-1, max_hold=12.0, cooldown=2, fee_bps=10.0, latency=10,
               size_frac=0.5, max_qty=2.0, capital=1000.0)
    res = oracle.run(book, sig, np.zeros(T, np.float32), cfg, 2)
    (tr,) = res.trades
    assert (tr["side"], tr["entry_tick"], tr["exit_decision_tick"], tr["exit_tick"]) == (-1, 2, 5, 7)
    assert tr["reason"] == "time"
    assert rel(tr["entry_fee"], 0.0999) and rel(tr["exit_fee"], 0.1004) and rel(tr["pnl"], -0.7003)
    assert [(d["tick"], d["kind"]) for d in res.decisions] == [(0, "entry"), (5, "exit"), (10, "entry")]
    assert res.decisions[-1]["dropped"] is True and res.decisions[0]["dropped"] is False
    want_marks = [1000, 1000] + [999.6001] * 5 + [999.2997] * 5
    assert np.allclose(res.marks, want_marks, rtol=0, atol=1e-9)
    check(res.metrics, trades=1, wins=0, net_pnl=-0.7003, gross_pnl=-0.5, fees=0.2003,
          final_equity=999.2997, max_drawdown=0.0007003, exposure=5 / 12, mean_hold_s=25e-9,
          exits_time=1, exits_stop=0, exits_end=0)
    assert list(res.bucket_trades) == [0, 1]  # exit tick 7 -> floor(7 * 2 / 12) = 1


def test_regime_band_and_entry_dropped_on_an_empty_book():
    # band 0.5, side both, latency 0, fee 0, size_frac 0.1, max_qty 3, capital 1000.
    # t0: s=1 but regime NaN -> blocked (NaN compares false).
    # t1: s=1, regime 0.2 <= 0.5 -> long decision (px = ask 10).
    # t2: fill tick, but no ask is displayed (NaN price / size 0) -> dropped, state flat,
    #     no decision at t2 although s=1 and regime 0.
    # t3: s=-1, regime -0.9 < -0.5 -> short blocked.  (and s=-1 is not a long)
    # t4: s=-1, regime -0.4 >= -0.5 -> short decision, px = bid 9.9 -> desired min(100/9.9, 3) = 3.
    # t5 = T-1: fill 3 @ bid 9.9; the position is still open after T-1 -> closed at T-1 by the
    #     exit walk: asks 3 @ 10.1 -> PnL = -3 * 0.2 = -0.6, reason "end", exposure 0.
    ts = [0, 1000, 2000, 3000, 4000, 5000]
    bids = [[(9.9, 100), (9.8, 100)]] * 6
    asks = [[(10.0, 100), (10.1, 100)]] * 2 + [[None, None]] + [[(10.0, 100), (10.1, 100)]] * 2 \
        + [[(10.1, 100), (10.2, 100)]]
    book = make_book(ts, bids, asks)
    sig = np.array([1, 1, 1, -1, -1, 0], np.float32)
    reg = np.array([np.nan, 0.2, 0.0, -0.9, -0.4, 0.0], np.float32)
    cfg = dict(entry=0.5, band=0.5, latency=0, fee_bps=0.0, size_frac=0.1, max_qty=3.0,
               capital=1000.0)
    res = oracle.run(book, sig, reg, cfg, 2)
    assert [(d["tick"], d["kind"], d["side"], d.get("dropped")) for d in res.decisions] == [
        (1, "entry", 1, True), (4, "entry", -1, False)]
    (tr,) = res.trades
    assert (tr["side"], tr["entry_tick"], tr["exit_tick"], tr["reason"]) == (-1, 5, 5, "end")
    assert rel(tr["qty"], 3.0) and rel(tr["entry_vwap"], 9.9) and rel(tr["exit_vwap"], 10.1)
    check(res.metrics, trades=1, wins=0, net_pnl=-0.6, exposure=0.0, mean_hold_s=0.0,
          exits_end=1, final_equity=999.4)
    # marks: flat (or pending) until t5, then 1000 - 3 * (ask 10.1 - 9.9) = 999.4 (not recomputed
    # after the final close, which lands at the same number here)
    assert res.marks[:5] == [1000.0] * 5 and rel(res.marks[5], 999.4)
    # with the regime filter disabled (band = inf) the NaN regime no longer blocks: entry at t0
    res2 = oracle.run(book, sig, reg, dict(cfg, band=math.inf), 2)
    assert res2.decisions[0]["tick"] == 0 and res2.decisions[0]["side"] == 1


def _deferred_book(last_tick_has_bids: bool):
    ts = list(range(7))
    bids = [[(19.9, 5), None], [(19.9, 5), None], [(20.5, 5), None], [(21.0, 5), None],
            [None, None], [None, None],
            [(22.0, 0.25), (21.5, 0.125)] if last_tick_has_bids else [None, None]]
    asks = [[(20.0, 1), (20.1, 5)]] * 7
    return make_book(ts, bids, asks)


def test_exit_deferred_by_an_empty_side():
    # long, latency 0, fee 0, size_frac 0.01 -> desired 0.01 * 1000 / 20 = 0.5, exit = 0.
    # t0: s=1 -> long; t1: fill 0.5 @ 20.  t2: s=0.5 > -0: hold.  t3: s=0 <= -0 -> signal exit.
    # t4: fill tick but no bid displayed -> stays pending; t5: same; t6 shows bids:
    #     0.25 @ 22 + 0.125 @ 21.5 + the other 0.125 at the worst displayed price 21.5
    #     -> VWAP (5.5 + 2.6875 + 2.6875) / 0.5 = 21.75; PnL 0.5 * 1.75 = 0.875; exit tick 6.
    # marks: 1000, 999.95 (bid 19.9), 1000.25, 1000.5, then p falls back to the last seen
    #     bid 21 at t4, t5: 1000.5, 1000.5; t6: equity 1000.875.
    sig = np.array([1, 0, 0.5, 0, 0, 0, 0], np.float32)
    cfg = dict(entry=0.5, exit=0.0, latency=0, fee_bps=0.0, size_frac=0.01, capital=1000.0)
    res = oracle.run(_deferred_book(True), sig, np.zeros(7, np.float32), cfg, 1)
    (tr,) = res.trades
    assert (tr["exit_decision_tick"], tr["exit_tick"], tr["reason"]) == (3, 6, "signal")
    assert rel(tr["exit_vwap"], 21.75) and rel(tr["pnl"], 0.875)
    assert np.allclose(res.marks, [1000, 999.95, 1000.25, 1000.5, 1000.5, 1000.5, 1000.875],
                       rtol=0, atol=1e-9)
    check(res.metrics, trades=1, wins=1, win_rate=1.0, profit_factor=math.inf, avg_win=0.875,
          avg_loss=NAN, payoff_ratio=NAN, max_drawdown=0.00005, exits_signal=1,
          sharpe=0.0, sortino=0.0)  # B = 1 -> sharpe and sortino 0
    # if no tick up to T-1 displays a bid, the exit fills at T-1 at the last seen bid 21:
    res2 = oracle.run(_deferred_book(False), sig, np.zeros(7, np.float32), cfg, 1)
    (tr2,) = res2.trades
    assert (tr2["exit_tick"], tr2["reason"]) == (6, "signal")
    assert rel(tr2["exit_vwap"], 21.0) and rel(tr2["pnl"], 0.5)
    assert res2.marks[-1] == pytest.approx(1000.5)  # marks of T-1 are not recomputed


def test_no_trades_metrics_and_nan_signal():
    book = _deferred_book(True)
    sig = np.full(7, np.nan, np.float32)  # a NaN signal satisfies no comparison
    res = oracle.run(book, sig, np.zeros(7, np.float32), dict(entry=0.5), 3)
    assert res.trades == [] and res.decisions == []
    m = res.metrics
    assert m["trades"] == 0 and m["wins"] == 0 and m["net_pnl"] == 0.0
    for name in ("win_rate", "win_rate_lo", "win_rate_hi", "expectancy", "profit_factor",
                 "avg_win", "avg_loss", "payoff_ratio", "mean_hold_s"):
        assert math.isnan(m[name]), name
    assert m["sharpe"] == 0.0 and m["sortino"] == 0.0 and m["max_drawdown"] == 0.0
    assert m["final_equity"] == 10_000.0  # the enums default capital


def test_wilson_interval_against_reference_numbers():
    # Wilson (1927) 95% interval, computed by hand: p = 0.55, n = 100 -> [0.452, 0.644];
    # n = 1000 -> [0.519, 0.581]
    lo, hi = oracle.wilson(55, 100)
    assert round(lo, 3) == 0.452 and round(hi, 3) == 0.644
    lo, hi = oracle.wilson(550, 1000)
    assert round(lo, 3) == 0.519 and round(hi, 3) == 0.581
    lo, hi = oracle.wilson(0, 0)
    assert math.isnan(lo) and math.isnan(hi)


def test_oracle_imports_neither_strategy_nor_kernels():
    tree = ast.parse(Path(oracle.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert not any("strategy" in n or "kernels" in n for n in names), names


def test_missing_required_field_is_refused():
    with pytest.raises(ValueError, match="entry"):
        oracle.run(_deferred_book(True), np.zeros(7, np.float32), np.zeros(7, np.float32), {}, 1)


def test_exit_with_latency_past_the_end_fills_at_the_last_tick():
    # ts = 0, 10, 20, 21, 22; latency 10; fee 0; desired = 0.1 * 1000 / 100 = 1.
    # t0: s=1 -> long; fill at t1 (ts 10 >= 0 + 10): 1 @ 100.
    # t2: s=-1 <= -0.5 -> signal exit decision; its fill needs ts >= 30: no such tick, so the
    #     exit stays pending (t3's s=1 decides nothing) and fills at T-1 = 4 by the exit walk:
    #     bids at t4: 1 @ 98 -> PnL -2, reason "signal" (kept), exit tick 4.
    # marks: 1000, 999 (bid 99), 999, 999, 998.
    ts = [0, 10, 20, 21, 22]
    bids = [[(99.0, 5), (98.5, 5)]] * 4 + [[(98.0, 1), (97.0, 5)]]
    asks = [[(100.0, 5), (100.5, 5)]] * 5
    sig = np.array([1, 0, -1, 1, 0], np.float32)
    cfg = dict(entry=0.5, exit=0.5, latency=10, fee_bps=0.0, size_frac=0.1, capital=1000.0)
    res = oracle.run(make_book(ts, bids, asks), sig, np.zeros(5, np.float32), cfg, 2)
    (tr,) = res.trades
    assert (tr["entry_tick"], tr["exit_decision_tick"], tr["exit_tick"], tr["reason"]) == (1, 2, 4, "signal")
    assert rel(tr["pnl"], -2.0)
    assert [d["tick"] for d in res.decisions] == [0, 2]
    assert np.allclose(res.marks, [1000, 999, 999, 999, 998], rtol=0, atol=1e-9)
    check(res.metrics, trades=1, net_pnl=-2.0, final_equity=998.0, exits_signal=1, exposure=3 / 5,
          max_drawdown=0.002, mean_hold_s=12e-9)
    assert list(res.bucket_trades) == [0, 1]  # exit tick 4 -> floor(4 * 2 / 5) = 1


def _late_exit_book():
    # ts = 0, 10, 20, 21, 22; two bid levels at the last tick, so the exit walk there differs
    # from the top price used by the mark
    ts = [0, 10, 20, 21, 22]
    bids = [[(99.0, 5), (98.5, 5)]] * 4 + [[(98.0, 0.5), (97.0, 5)]]
    asks = [[(100.0, 5), (100.5, 5)]] * 5
    return make_book(ts, bids, asks)


def test_exit_without_fill_tick_fills_at_the_last_tick_before_its_mark():
    # RULES "Order of work": an exit decided at t < T-1 with no fill tick fills as a fill of
    # T-1, before the mark of T-1. latency 10, fee 10 bps, desired 0.1 * 1000 / 100 = 1.
    # t0 long; t1 fill 1 @ 100 (entry fee 0.1). t2: s = -1 -> signal exit; its fill needs
    # ts >= 30: none. t4 = T-1: filled there by the walk 0.5 @ 98 + 0.5 @ 97 = 97.5,
    # exit fee 0.0975; PnL = -2.5 - 0.1 - 0.0975 = -2.6975.
    # marks: 1000, 1000 - 1 - 0.1 = 998.9 (bid 99), 998.9, 998.9, then the closed trade:
    # 997.3025 (the mark before the clarification, 1000 - 2 - 0.1 = 997.9, is gone).
    sig = np.array([1, 0, -1, 1, 0], np.float32)
    cfg = dict(entry=0.5, exit=0.5, latency=10, fee_bps=10.0, size_frac=0.1, capital=1000.0)
    res = oracle.run(_late_exit_book(), sig, np.zeros(5, np.float32), cfg, 1)
    (tr,) = res.trades
    assert (tr["exit_decision_tick"], tr["exit_tick"], tr["reason"]) == (2, 4, "signal")
    assert rel(tr["exit_vwap"], 97.5) and rel(tr["pnl"], -2.6975)
    assert np.allclose(res.marks, [1000, 998.9, 998.9, 998.9, 997.3025], rtol=0, atol=1e-9)
    check(res.metrics, final_equity=997.3025, max_drawdown=0.0026975)


def test_exit_decided_at_the_last_tick_comes_after_its_mark():
    # the same book with latency 0: the signal exit is decided at t4 = T-1 itself, so it
    # fills after the mark of T-1 (mark 1000 - 2 - 0.1 = 997.9 at bid 98), like the "end" close
    sig = np.array([1, 0, 0, 0, -1], np.float32)
    cfg = dict(entry=0.5, exit=0.5, latency=0, fee_bps=10.0, size_frac=0.1, capital=1000.0)
    res = oracle.run(_late_exit_book(), sig, np.zeros(5, np.float32), cfg, 1)
    (tr,) = res.trades
    assert (tr["exit_decision_tick"], tr["exit_tick"], tr["reason"]) == (4, 4, "signal")
    assert rel(tr["pnl"], -2.6975)
    assert rel(res.marks[-1], 997.9)
    check(res.metrics, final_equity=997.3025, max_drawdown=0.0021)
