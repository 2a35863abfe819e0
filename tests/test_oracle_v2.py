"""The oracle's rules v2 (docs/RULES.md "Rules v2") on small books worked through by hand:
queue models, queue position at arrival, trade assignment, lots, inverse contracts, post-only
rejections, time in force with cancel latency, maker take profits, bad input, and v1 defaults."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpu_engine import oracle
from gpu_engine.data.books.store import Trades
from gpu_engine.oracle import UNKNOWN, queue_depth_update
from tests.test_oracle import check, make_book, rel

NAN = math.nan
TEN = [10 * i for i in range(8)]  # ts 0, 10, ..., 70 ns


def trades(*rows) -> Trades:
    """rows: (ts, px, qty, side), side +1 buyer-initiated, -1 seller-initiated."""
    cols = list(zip(*rows)) if rows else [[], [], [], []]
    return Trades(np.asarray(cols[0], np.int64), np.asarray(cols[1], np.float64),
                  np.asarray(cols[2], np.float64), np.asarray(cols[3], np.int8))


def run(book, sig, cfg, B=1, **kw):
    sig = np.asarray(sig, np.float32)
    return oracle.run(book, sig, np.zeros_like(sig), cfg, B, **kw)


# ----------------------------------------------------------------------------------------------
# queue models
# ----------------------------------------------------------------------------------------------

def test_queue_depth_update_by_hand():
    # risk_averse: queue_ahead = min(queue_ahead, new), whatever prev and cum_trade
    assert queue_depth_update("risk_averse", NAN, 4.0, 4.0, 12.0, 0.0) == (4.0, 0.0)
    assert queue_depth_update("risk_averse", NAN, 4.0, 12.0, 3.0, 2.0) == (3.0, 2.0)
    # the level grew (chg = 4 - 12 < 0): min(4, 12) = 4, cum_trade reset
    assert queue_depth_update("power", 2.0, 4.0, 4.0, 12.0, 1.0) == (4.0, 0.0)
    # 12 -> 6, front 4, back 8, chg 6:
    #   power n=2: prob = 64 / (64 + 16) = 0.8 -> 4 - 0.2 * 6 + min(8 - 4.8, 0) = 2.8
    #   power n=1: prob = 8 / 12 -> 4 - 6 / 3 = 2
    #   log: prob = ln 9 / (ln 9 + ln 5) -> 4 - (1 - prob) * 6
    qa, cum = queue_depth_update("power", 2.0, 4.0, 12.0, 6.0, 0.0)
    assert qa == pytest.approx(2.8, abs=1e-12) and cum == 0.0
    assert queue_depth_update("power", 1.0, 4.0, 12.0, 6.0, 0.0)[0] == pytest.approx(2.0, abs=1e-12)
    prob = math.log(9) / (math.log(9) + math.log(5))
    assert queue_depth_update("log", NAN, 4.0, 12.0, 6.0, 0.0)[0] == pytest.approx(4 - (1 - prob) * 6)
    # trades at the price already took 2 from the queue (4 -> 2): chg = 12 - 6 - 2 = 4,
    # front 2, back 10, n=2: prob = 100/104 -> 2 - (4/104) * 4 = 1.846...
    qa, cum = queue_depth_update("power", 2.0, 2.0, 12.0, 6.0, 2.0)
    assert qa == pytest.approx(2 - 16 / 104) and cum == 0.0
    # an unknown new size skips the update; an unknown prev gives min(queue_ahead, new), cum kept
    assert queue_depth_update("power", 2.0, 4.0, 12.0, UNKNOWN, 3.0) == (4.0, 3.0)
    assert queue_depth_update("risk_averse", NAN, 4.0, 12.0, UNKNOWN, 0.0) == (4.0, 0.0)
    assert queue_depth_update("log", NAN, UNKNOWN, UNKNOWN, 7.0, 3.0) == (7.0, 3.0)
    # f(back) + f(front) = 0 -> prob 1: front 0, back 0, the empty level stays empty
    assert queue_depth_update("log", NAN, 0.0, 0.0, 0.0, 0.0) == (0.0, 0.0)
    # a negative estimate is set to 0: front 3, back 1, n=2, the level emptied (4 -> 0):
    # prob = 1 / 10 -> 3 - 0.9 * 4 + min(1 - 0.4, 0) = -0.6 -> 0
    assert queue_depth_update("power", 2.0, 3.0, 4.0, 0.0, 0.0) == (0.0, 0.0)


def _queue_book():
    # tick 0.5; bids at 100.0: 4 (t0, t1), 12 (t2), 6 (t3), 2.5 (t4, t5)
    sizes = [4, 4, 12, 6, 2.5, 2.5]
    bids = [[(100.0, s), (99.5, 5)] for s in sizes]
    asks = [[(100.5, 5), (101.0, 5)]] * 6
    return make_book(TEN[:6], bids, asks, depth=2)


@pytest.mark.parametrize("queue, n, at_t3, filled", [
    ("risk_averse", None, 4.0, 0.0),          # 4 ahead -> 0.5 after the trade: nothing
    ("power", 2.0, 2.8, 0.7),                 # 2.8 -> -0.7: 0.7 fills
    ("power", 1.0, 2.0, 1.5),                 # 2 -> -1.5: 1.5 fills
    ("log", None, 4 - (1 - math.log(9) / (math.log(9) + math.log(5))) * 6, 2.0),  # 1.46 -> all 2
])
def test_queue_models_in_a_run(queue, n, at_t3, filled):
    # long maker entry at tick(100.0), latency 5, lot 0, fees 0, desired min(1000/100.5, 2) = 2.
    # t1 arrival: queue_ahead 4. t2: the level grows to 12 (queue 4). t3: it falls to 6 (chg 6,
    # front 4, back 8; the models differ). t4: a seller trade 3.5 @ 100.0 (ts 35 -> tick 4).
    book = _queue_book()
    book.trades = trades((35, 100.0, 3.5, -1))
    cfg = dict(entry=0.5, entry_type="maker", size_frac=1.0, max_qty=2.0, fee_bps=0.0,
               latency=5, capital=1000.0)
    kw = dict(contract={"tick_size": 0.5}, queue=queue)
    if n is not None:
        kw["queue_n"] = n
    res = run(book, [1, 0, 0, 0, 0, 0], cfg, **kw)
    (o,) = res.orders
    assert (o["arrival_tick"], o["queue_at_arrival"], o["price"]) == (1, 4.0, 100.0)
    hist = dict(o["queue_history"])
    assert hist[2] == 4.0 and hist[3] == pytest.approx(at_t3)
    assert o["filled"] == pytest.approx(filled)
    assert res.metrics["maker_fills"] == (1 if filled else 0)
    if filled:
        (tr,) = res.trades  # closed at T-1 by the exit walk (reason end): bids 100.0 at t5
        assert tr["fills"][0]["tick"] == 4 and tr["fills"][0]["liquidity"] == "maker"
        assert tr["reason"] == "end" and tr["qty"] == pytest.approx(filled)
        assert res.metrics["mean_queue_wait_s"] == pytest.approx((40 - 10) / 1e9)
    else:
        assert res.trades == [] and res.decisions[0]["dropped"] is True
        assert math.isnan(res.metrics["mean_queue_wait_s"])


@pytest.mark.parametrize("bids_at_arrival, offset, want", [
    ([(100.0, 3), (99.0, 5)], 2, 5.0),        # exactly at a displayed level: its size
    ([(100.0, 3), (99.0, 5)], 1, 0.0),        # 99.5: inside the displayed range, no level
    ([(100.0, 3), (99.0, 5)], 3, UNKNOWN),    # 98.5: beyond the deepest displayed level
    ([(99.5, 3), (99.0, 5)], 0, 0.0),         # 100.0: better than the side's best
    ([None, None], 0, UNKNOWN),               # the side displays nothing
])
def test_queue_position_at_arrival(bids_at_arrival, offset, want):
    bids = [[(100.0, 3), (99.0, 5)], bids_at_arrival, [(100.0, 3), (99.0, 5)]]
    asks = [[(100.5, 5), (101.0, 5)]] * 3
    cfg = dict(entry=0.5, entry_type="maker", entry_offset=offset, latency=1, fee_bps=0.0,
               capital=1000.0)
    res = run(make_book([0, 10, 20], bids, asks), [1, 0, 0], cfg, contract={"tick_size": 0.5})
    (o,) = res.orders
    assert o["arrival_tick"] == 1 and o["queue_at_arrival"] == want


def test_trades_go_to_the_first_tick_at_or_after_them():
    # a maker buy at 100.0 behind 10 (risk_averse, level constant): seller trades of 1 at
    # ts 5 (tick 1, the arrival tick: not live yet, ignored), 20 (= ts[2]: tick 2), 25 (tick 3),
    # 31 and 38 (tick 4), 75 (after the last tick: nowhere); a buyer trade at 100.0 at 50
    # (the wrong side) and a seller trade at 100.5 at 60 (above a buy: neither at nor through).
    bids = [[(100.0, 10)]] * 8
    asks = [[(100.5, 10)]] * 8
    book = make_book(TEN, bids, asks, depth=1)
    book.trades = trades((5, 100.0, 1, -1), (20, 100.0, 1, -1), (25, 100.0, 1, -1),
                         (31, 100.0, 1, -1), (38, 100.0, 1, -1), (50, 100.0, 1, 1),
                         (60, 100.5, 1, -1), (75, 100.0, 1, -1))
    cfg = dict(entry=0.5, entry_type="maker", latency=5, fee_bps=0.0, capital=1000.0, max_qty=1.0)
    res = run(book, [1] + [0] * 7, cfg, contract={"tick_size": 0.5})
    (o,) = res.orders
    assert o["queue_at_arrival"] == 10.0
    assert o["queue_history"] == [(2, 9.0), (3, 8.0), (4, 6.0), (5, 6.0), (6, 6.0), (7, 6.0)]
    assert o["filled"] == 0.0 and res.trades == []


# ----------------------------------------------------------------------------------------------
# lots
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lot, want", [(0.0, 500 / 100.5), (1.0, 4.0), (0.5, 4.5), (2.0, 4.0), (0.1, 4.9)])
def test_desired_quantity_is_rounded_down_to_the_lot(lot, want):
    # desired = 0.5 * 1000 / ask 100.5 = 4.975... contracts, then floor_lot
    book = make_book([0, 10], [[(100.0, 50)]] * 2, [[(100.5, 50)]] * 2, depth=1)
    res = run(book, [1, 0], dict(entry=0.5, size_frac=0.5, latency=0, fee_bps=0.0, capital=1000.0),
              contract={"lot_size": lot})
    d = res.decisions[0]
    assert d["desired"] == pytest.approx(want, rel=1e-12)
    (tr,) = res.trades
    assert tr["qty"] == d["desired"]  # the taker fill at t1 takes the whole desired quantity


def test_an_order_below_one_lot_is_not_sent_and_a_thin_book_rounds_down():
    book = make_book([0, 10, 20, 30], [[(100.0, 50)]] * 4,
                     [[(100.5, 50)], [(100.5, 0.6)], [(100.5, 2.7)], [(100.5, 2.7)]], depth=1)
    cfg = dict(entry=0.5, size_frac=0.5, latency=0, fee_bps=0.0, capital=1000.0)
    # lot 10 > 4.975...: no order is sent (no decision, nothing pending), at any tick
    res = run(book, [1, 1, 1, 1], cfg, contract={"lot_size": 10.0})
    assert res.decisions == [] and res.trades == []
    # lot 1: desired 4. t1 displays 0.6 < one lot: dropped like an empty book, next entry from t2;
    # t2's decision fills at t3 floor_lot(min(4, 2.7)) = 2
    res = run(book, [1, 1, 1, 0], cfg, contract={"lot_size": 1.0})
    assert [(d["tick"], d["dropped"]) for d in res.decisions if d["kind"] == "entry"] == [(0, True), (2, False)]
    (tr,) = res.trades
    assert (tr["entry_tick"], tr["qty"], tr["reason"]) == (3, 2.0, "end")


def test_maker_partial_fill_is_rounded_down_to_the_lot():
    # lot 1, maker buy of 4 at 100.0 behind 1; a seller trade of 3.6 @ 100.0 leaves the queue
    # at -2.6: floor_lot(min(4, 2.6)) = 2 fill, the queue is 0 again; then 0.5 more trades at the
    # price: -0.5 rounds to 0 lots, nothing fills (queue 0 again)
    bids = [[(100.0, 1)]] * 5
    asks = [[(100.5, 5)]] * 5
    book = make_book([0, 10, 20, 30, 40], bids, asks, depth=1)
    book.trades = trades((20, 100.0, 3.6, -1), (30, 100.0, 0.5, -1))
    cfg = dict(entry=0.5, entry_type="maker", size_frac=0.5, latency=5, fee_bps=0.0,
               maker_fee_bps=-1.0, capital=1000.0)
    res = run(book, [1, 0, 0, 0, 0], cfg, contract={"tick_size": 0.5, "lot_size": 1.0})
    (o,) = res.orders
    assert o["qty"] == 4.0 and o["filled"] == 2.0
    assert o["queue_history"][:2] == [(2, 0.0), (3, 0.0)]
    (tr,) = res.trades
    assert [(f["tick"], f["qty"], f["price"]) for f in tr["fills"]] == [(2, 2.0, 100.0), (4, 2.0, 100.0)]
    # the maker rebate: -1 bps of 200 = -0.02
    check(res.metrics, fees_maker=-0.02, fees_taker=0.0, maker_fills=1, taker_fills=1,
          orders_posted=1, maker_fill_ratio=0.5)


# ----------------------------------------------------------------------------------------------
# inverse contracts
# ----------------------------------------------------------------------------------------------

def test_inverse_contract_value():
    c = oracle.make_contract({"contract": "inverse", "multiplier": 100, "tick_size": 0.5, "lot_size": 1})
    assert (c.kind, c.sigma, c.m) == ("inverse", -1, 100.0)
    assert c.value(2, 40000.0) == 0.005                # 2 x 100 USD at 40000 = 0.005 BTC
    lin = oracle.make_contract(None)
    assert (lin.kind, lin.sigma, lin.m, lin.tick_size, lin.lot_size) == ("linear", 1, 1.0, None, 0.0)
    assert lin.value(3, 100.5) == 301.5
    # a store's attrs (None = not given) work as a mapping too
    assert oracle.make_contract({"tick_size": None, "lot_size": None}) == oracle.Contract()


def _inverse_book(exit_bid):
    return make_book([0, 10, 20, 30], [[(49999.5, 500)], [(49999.5, 500)], [(49999.5, 500)], [(exit_bid, 500)]],
                     [[(50000.0, 500)]] * 4, depth=1)


def test_inverse_round_trip_costs_what_100_usd_contracts_cost():
    # capital 1 BTC, size_frac 0.2: desired = 0.2 x 1 / value(1, 50000) = 0.2 x 50000 / 100 = 100
    # contracts = 10000 USD. Long bought at 50000 at t1, signal exit at t2, sold at t3.
    inverse = {"contract": "inverse", "multiplier": 100.0, "lot_size": 1.0}
    cfg = dict(entry=0.5, exit=0.5, size_frac=0.2, latency=0, fee_bps=10.0, capital=1.0)
    sig = [1, 0, -1, 0]
    # sold at 50000 too: no price move, the round trip costs the two fees, 10 bps of 10000 USD
    # each = 2 x 10 USD = 20 USD = 0.0004 BTC at 50000
    res = run(_inverse_book(50000.0), sig, cfg, contract=inverse)
    (tr,) = res.trades
    assert tr["qty"] == 100.0 and tr["gross_pnl"] == 0.0
    assert tr["pnl"] == pytest.approx(-20 / 50000, rel=1e-12)
    # sold at 51000: +1000 USD per BTC on 10000 USD = 10000 x (1/50000 - 1/51000) BTC, i.e.
    # 200 USD at 51000; fees 10 bps of 10000 USD at each price
    res = run(_inverse_book(51000.0), sig, cfg, contract=inverse)
    (tr,) = res.trades
    gross = 10000 * (1 / 50000 - 1 / 51000)
    assert tr["gross_pnl"] == pytest.approx(gross, rel=1e-12) and gross == pytest.approx(200 / 51000)
    fees = 1e-3 * (10000 / 50000 + 10000 / 51000)
    assert tr["pnl"] == pytest.approx(gross - fees, rel=1e-12)
    check(res.metrics, net_pnl=gross - fees, fees=fees, final_equity=1 + gross - fees)
    # the mark at t1 (bid 49999.5): 1 - value(100, 50000) fee ... cash + side*sigma*value(q, p)
    assert res.marks[1] == pytest.approx(1 + 10000 / 50000 - 10000 / 49999.5 - 1e-3 * 10000 / 50000, rel=1e-12)


def test_inverse_walk_is_harmonic():
    # a long of 2 contracts (m = 100) walking 1 @ 40000 + 1 @ 50000: average 2 / (1/40000 +
    # 1/50000) = 44444.4...; value(2, average) = 100/40000 + 100/50000 = 0.0045 BTC = e's base
    book = make_book([0, 10, 20], [[(39999.0, 5)]] * 3, [[(40000.0, 1), (50000.0, 1)]] * 3, depth=2)
    cfg = dict(entry=0.5, max_qty=2.0, size_frac=1.0, latency=0, fee_bps=0.0, capital=1.0)
    res = run(book, [1, 0, 0], cfg, contract={"contract": "inverse", "multiplier": 100.0})
    (tr,) = res.trades
    f = tr["fills"][0]
    assert f["qty"] == 2.0 and f["price"] == pytest.approx(2 / (1 / 40000 + 1 / 50000), rel=1e-12)
    assert tr["entry_vwap"] == pytest.approx(f["price"], rel=1e-12)
    assert 2 * 100 / f["price"] == pytest.approx(0.0045, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# post-only, time in force, cancels
# ----------------------------------------------------------------------------------------------

def test_post_only_rejects_a_maker_sell_then_the_next_entry_comes_without_cooldown():
    # short maker entry at t0: a sell at tick(ask 100.5) + 0 = 100.5. At its arrival (t1) the
    # best bid is 100.5 >= 100.5: rejected, flat, next entry from t2 (no cooldown although
    # cooldown = 5); s = -1 at t1 is not acted on; t2 posts a sell at 101.0 which rests.
    bids = [[(100.0, 5)], [(100.5, 5)], [(100.5, 5)], [(100.5, 5)]]
    asks = [[(100.5, 5)], [(101.0, 5)], [(101.0, 5)], [(101.0, 5)]]
    cfg = dict(entry=0.5, side=-1, entry_type="maker", latency=5, cooldown=5, fee_bps=0.0,
               capital=1000.0)
    res = run(make_book(TEN[:4], bids, asks, depth=1), [-1, -1, -1, 0], cfg, contract={"tick_size": 0.5})
    assert [(d["tick"], d["price"], d["dropped"], d.get("rejected", False)) for d in res.decisions] == [
        (0, 100.5, True, True), (2, 101.0, True, False)]
    first, second = res.orders
    assert first["rejected"] and first["arrival_tick"] == 1
    assert not second["rejected"] and second["arrival_tick"] == 3 and second["queue_at_arrival"] == 5.0
    check(res.metrics, orders_posted=2, orders_rejected=1, trades=0, maker_fills=0)


def _tif_book():
    bids = [[(100.0, 3), (99.5, 5)]] * 8
    asks = [[(100.5, 5), (101.0, 5)]] * 8
    return make_book(TEN, bids, asks, depth=2)


TIF_CFG = dict(entry=0.5, entry_type="maker", entry_tif=15, cancel_latency=25, size_frac=0.5,
               latency=5, fee_bps=0.0, capital=1000.0)
LOT1 = {"tick_size": 0.5, "lot_size": 1.0}


def test_time_in_force_cancel_takes_effect_after_the_cancel_latency():
    # maker buy of 4 at 100.0 (behind 3), arrival t1, live from t2. t3: 30 - 10 >= tif 15 ->
    # cancel sent; it takes effect at the first tick with ts >= 30 + 25: t6. Meanwhile (t4) a
    # seller trade of 5 @ 100.0 fills 2 (queue 3 - 5 = -2): fills until the cancel count.
    # At t6 the entry completes with 2: exit decisions from t7; closed at T-1 = 7 (reason end).
    book = _tif_book()
    book.trades = trades((35, 100.0, 5.0, -1))
    res = run(book, [1] * 8, TIF_CFG, contract=LOT1)
    (o,) = res.orders
    assert (o["cancel_sent_tick"], o["cancel_tick"], o["filled"]) == (3, 6, 2.0)
    (tr,) = res.trades
    assert (tr["entry_tick"], tr["complete_tick"], tr["exit_tick"], tr["reason"]) == (4, 6, 7, "end")
    assert tr["qty"] == 2.0
    check(res.metrics, cancels=1, maker_fills=1, taker_fills=1, maker_fill_ratio=0.5,
          exposure=3 / 8)


def test_time_in_force_cancel_with_nothing_filled_then_a_new_entry():
    # no trades: the cancel takes effect at t6 with nothing filled -> flat, next entry from t7
    # (no cooldown): s = 1 at t7 posts a new order, dropped at the end (it never arrives)
    res = run(_tif_book(), [1] * 8, dict(TIF_CFG, cooldown=3), contract=LOT1)
    assert [(d["tick"], d["dropped"]) for d in res.decisions] == [(0, True), (7, True)]
    assert res.orders[0]["cancel_tick"] == 6 and res.orders[1]["arrival_tick"] == -1
    assert res.trades == [] and res.metrics["cancels"] == 1


def test_time_in_force_cancel_with_no_tick_to_take_effect_leaves_the_order_live():
    # cancel latency 1 s: the cancel sent at t3 never takes effect, the order stays live to the
    # end and a seller trade through its price at t7 (ts 65 -> 70) fills all 4
    book = _tif_book()
    book.trades = trades((65, 99.5, 9.0, -1))
    res = run(book, [1] * 8, dict(TIF_CFG, cancel_latency=10**9), contract=LOT1)
    (o,) = res.orders
    assert (o["cancel_sent_tick"], o["cancel_tick"], o["filled"]) == (3, -1, 4.0)
    (tr,) = res.trades
    assert (tr["entry_tick"], tr["complete_tick"], tr["exit_tick"], tr["reason"]) == (7, 7, 7, "end")


# ----------------------------------------------------------------------------------------------
# maker take profits
# ----------------------------------------------------------------------------------------------

def test_maker_take_profit_rejected_becomes_a_taker_exit():
    # short taker entry at t0 (bid 100, desired 0.1 x 1000 / 100 = 1), filled at t1 @ 100.
    # Maker take profit: a buy at floor(100 x (1 - 40 bps) / 0.5) = floor(199.2) = 199 ticks = 99.5,
    # posted at t1. t2: it arrives, the best ask is 99.5 <= 99.5 -> rejected; a taker exit decided
    # at t2, reason take; t3: it buys 1 @ 99.5. fees 10 bps: 0.1 + 0.0995.
    bids = [[(100.0, 5)], [(100.0, 5)], [(99.0, 5)], [(99.0, 5)], [(99.0, 5)]]
    asks = [[(100.5, 5)], [(100.5, 5)], [(99.5, 5)], [(99.5, 5)], [(99.5, 5)]]
    cfg = dict(entry=0.5, side=-1, take_profit=40.0, tp_type="maker", latency=5, fee_bps=10.0,
               maker_fee_bps=2.0, capital=1000.0)
    res = run(make_book(TEN[:5], bids, asks, depth=1), [-1, 0, 0, 0, 0], cfg, contract={"tick_size": 0.5})
    assert [(d["tick"], d["kind"], d.get("reason")) for d in res.decisions] == [
        (0, "entry", None), (1, "take_profit", None), (2, "exit", "take")]
    assert res.decisions[1]["price"] == 99.5 and res.orders[0]["rejected"]
    (tr,) = res.trades
    assert (tr["exit_decision_tick"], tr["exit_tick"], tr["reason"], tr["exit_vwap"]) == (2, 3, "take", 99.5)
    check(res.metrics, exits_take=1, orders_posted=1, orders_rejected=1, taker_fills=2,
          maker_fills=0, fees_taker=0.1995, fees_maker=0.0, net_pnl=0.5 - 0.1995)


def test_take_profit_rejected_while_an_exit_is_pending_is_just_removed():
    # latency 25: the long fills at t3 @ 100.5; take profit at ceil(100.5 x 1.01 / 0.5) = 204
    # ticks = 102.0, posted at t3, arriving at t6. t4: stop (99 - 100.5 <= -1.005) -> a cancel
    # for it (cancel latency 100: never in time) and a taker exit filling at t7. t6: the take
    # profit arrives under a best bid of 102.0 -> rejected, just removed (no second exit).
    bids = [[(100.0, 5)]] * 4 + [[(99.0, 5)]] * 2 + [[(102.0, 5)]] * 2
    asks = [[(100.5, 5)]] * 4 + [[(99.5, 5)]] * 2 + [[(102.5, 5)]] * 2
    cfg = dict(entry=0.5, take_profit=100.0, stop_loss=100.0, tp_type="maker", latency=25,
               cancel_latency=100, fee_bps=0.0, size_frac=0.1, capital=1000.0)
    res = run(make_book(TEN, bids, asks, depth=1), [1] + [0] * 7, cfg, contract={"tick_size": 0.5})
    assert [(d["tick"], d["kind"], d.get("reason")) for d in res.decisions] == [
        (0, "entry", None), (3, "take_profit", None), (4, "exit", "stop")]
    (o,) = res.orders
    assert o["rejected"] and o["arrival_tick"] == 6 and o["cancel_sent_tick"] == 4
    (tr,) = res.trades
    assert (tr["exit_tick"], tr["reason"], tr["exit_vwap"]) == (7, "stop", 102.0)
    check(res.metrics, cancels=1, orders_rejected=1, exits_stop=1, exits_take=0)


def _rest_book():
    # ts 0, 10, 20, 30, 31, 32, 50, 60; latency 10: the long (2 @ 100.5) fills at t1; the take
    # profit (sell 2 at ceil(100.5 x 1.01 / 0.5) = 204 ticks = 102.0) arrives at t2 behind 1;
    # t3: bid 99.0 -> stop decided, a cancel sent for the take profit and a taker exit that
    # fills at t6 (ts 50 >= 30 + 10... the first tick at or after 40)
    ts = [0, 10, 20, 30, 31, 32, 50, 60]
    bids = [[(100.0, 5)]] * 3 + [[(99.0, 5)]] * 5
    asks = [[(100.5, 5), (102.0, 1)]] * 3 + [[(99.5, 5), (102.0, 1)]] * 5
    return make_book(ts, bids, asks, depth=2)


REST_CFG = dict(entry=0.5, take_profit=100.0, stop_loss=100.0, tp_type="maker", latency=10,
                fee_bps=0.0, maker_fee_bps=0.0, size_frac=1.0, max_qty=2.0, capital=1000.0)


@pytest.mark.parametrize("tape, cancel_latency, reason, pnl, tp_filled", [
    # a buyer trade through 102.0 at t4 fills the take profit before its cancel (effective at
    # t6): the trade closes with reason take, the taker exit in flight fills nothing
    ([(31, 102.5, 3.0, 1)], 15, "take", 2 * (102.0 - 100.5), 2.0),
    # no trade: the cancel takes effect at t6 (first ts >= 45), then the taker exit sells 2 @ 99
    ([], 15, "stop", 2 * (99.0 - 100.5), 0.0),
    # cancel latency 0: the cancel takes effect at t4 before that tick's trade
    ([(31, 102.5, 3.0, 1)], 0, "stop", 2 * (99.0 - 100.5), 0.0),
    # a trade of 1.5 at 102.0 (queue 1 -> -0.5) fills 0.5 of the take profit; the taker exit
    # closes the other 1.5 @ 99 at t6, reason stop: cash = -201 + 51 + 148.5 = -1.5
    ([(31, 102.0, 1.5, 1)], 15, "stop", -1.5, 0.5),
])
def test_exit_while_a_take_profit_rests(tape, cancel_latency, reason, pnl, tp_filled):
    book = _rest_book()
    book.trades = trades(*tape)
    res = run(book, [1] + [0] * 7, dict(REST_CFG, cancel_latency=cancel_latency), contract={"tick_size": 0.5})
    assert [(d["tick"], d["kind"], d.get("reason")) for d in res.decisions] == [
        (0, "entry", None), (1, "take_profit", None), (3, "exit", "stop")]
    (o,) = res.orders
    assert (o["price"], o["arrival_tick"], o["queue_at_arrival"], o["cancel_sent_tick"]) == (102.0, 2, 1.0, 3)
    assert o["filled"] == tp_filled
    (tr,) = res.trades
    assert tr["reason"] == reason and tr["pnl"] == pytest.approx(pnl, abs=1e-12)
    assert tr["exit_tick"] == (4 if reason == "take" else 6)
    check(res.metrics, cancels=1, exits_take=int(reason == "take"), exits_stop=int(reason == "stop"),
          taker_fills=1 + int(reason == "stop"), maker_fills=int(tp_filled > 0))


# ----------------------------------------------------------------------------------------------
# v1 defaults, bad input
# ----------------------------------------------------------------------------------------------

def test_v1_configuration_is_unchanged_by_explicit_v2_defaults():
    from tests.test_oracle import _deferred_book
    book = _deferred_book(True)
    sig = np.array([1, 0, 0.5, 0, 0, 0, 0], np.float32)
    cfg = dict(entry=0.5, exit=0.0, latency=0, fee_bps=5.0, size_frac=0.01, capital=1000.0)
    a = run(book, sig, cfg, B=2)
    explicit = dict(cfg, entry_type="taker", entry_offset=0, entry_tif=math.inf, tp_type=0,
                    maker_fee_bps=0.0, cancel_latency=0)
    b = run(book, sig, explicit, B=2, contract={"contract": "linear", "multiplier": 1.0, "lot_size": 0.0},
            queue="risk_averse")
    assert a.metrics == pytest.approx(b.metrics, nan_ok=True, rel=0, abs=0)
    assert a.marks == b.marks and a.trades == b.trades


BOOK3 = make_book([0, 10, 20], [[(100.0, 5)]] * 3, [[(100.5, 5)]] * 3, depth=1)


@pytest.mark.parametrize("cfg, kw, field", [
    (dict(entry_type="maker"), {}, "tick_size"),
    (dict(tp_type="maker", take_profit=10.0), {}, "tick_size"),
    (dict(entry_type="limit"), {}, "entry_type"),
    (dict(tp_type=2), {}, "tp_type"),
    (dict(entry_offset=-1), {}, "entry_offset"),
    (dict(entry_offset=1.5), {}, "entry_offset"),
    (dict(entry_tif=0), {}, "entry_tif"),
    (dict(entry_tif=-5.0), {}, "entry_tif"),
    (dict(entry_tif=math.nan), {}, "entry_tif"),
    (dict(maker_fee_bps=math.inf), {}, "maker_fee_bps"),
    (dict(cancel_latency=-1), {}, "cancel_latency"),
    ({}, dict(contract={"lot_size": -1.0}), "lot_size"),
    ({}, dict(contract={"contract": "inverse"}), "multiplier"),
    ({}, dict(contract={"multiplier": 0.0}), "multiplier"),
    ({}, dict(contract={"tick_size": -0.5}), "tick_size"),
    ({}, dict(contract={"contract": "quanto", "multiplier": 1.0}), "contract"),
    ({}, dict(queue="fifo"), "queue"),
    ({}, dict(queue="power", queue_n=0.0), "queue_n"),
    (dict(contract="inverse", multiplier=100.0), dict(contract={"contract": "linear"}), "contract"),
])
def test_bad_input_is_refused_naming_the_field(cfg, kw, field):
    with pytest.raises(ValueError, match=field):
        run(BOOK3, [1, 0, 0], dict(dict(entry=0.5), **cfg), **kw)


def test_maker_take_profit_without_a_target_needs_no_tick_size():
    res = run(BOOK3, [1, 0, 0], dict(entry=0.5, tp_type="maker", latency=0))
    assert res.orders == [] and res.metrics["trades"] == 1
