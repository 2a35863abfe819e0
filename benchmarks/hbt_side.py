"""The hftbacktest side of benchmarks/vs_hftbacktest.py (runs in the hftbacktest venv only).

    <hbt-venv>/bin/python benchmarks/hbt_side.py --data EVENTS.npz --rows ROWS.npy \
        --configs CONFIGS.json --queue {risk_averse,power} --out OUT.json [--jobs N]

Never imported by the project (hftbacktest 2.4.4 needs numpy < 2.3; the project runs a newer
numpy). Written with hftbacktest's Python API, the strategy in a numba `njit` function as its
docs do: BacktestAsset (linear, contract size 1, tick 0.1, lot 0.001), the partial-fill
exchange, RiskAdverseQueueModel or PowerProbQueueModel(n), constant order latency (entry
`latency`, response 0), trading-value fees (maker, taker), HashMapMarketDepthBacktest.

The strategy mirrors this engine's rules v2 (docs/RULES.md) *decision by decision*: the
strategy wakes at the timestamps of this engine's book rows (ROWS.npy, the schedule) and
takes the same decisions at the same rows, so that every remaining difference comes from the
two exchange simulations (book, queue, trade matching), not from the strategy:

- flat, row t >= next_entry: post a GTX (post-only) buy, LIMIT, at tick(best bid) - k for qty;
- the entry works: GTX rejection (EXPIRED) -> flat, next entry from the arrival row + 1;
  time in force: at the first row u after the arrival row a with ts[u] - ts[a] >= tif and
  quantity left, cancel; filled in full, or cancelled -> the entry completes at that row;
- completed with a position: post a GTX sell (the maker take profit) at
  ceil(e (1 + tp bps) / tick) ticks for the position, e = the entry price; from the next row
  on, the taker stop: best bid - e <= -sl bps x e -> cancel the take profit and send a MARKET
  sell for the position (a rejected take profit is a MARKET sell too);
- flat again (position 0) -> next entry from the next row;
- after the last row: an open position is marked at the best bid less the taker fee (this
  engine closes it by a walk of its last row).

Output (JSON): per configuration trades, maker_fills (book rows at which a maker order was
seen to have filled more), taker_fills (MARKET orders that executed, and the close at the
end), taker_multi_level (MARKET orders that took more than one level: priced at their last
level), fees, gross_pnl, net_pnl, position_left, anomalies (take profit and stop both
filled), error (hftbacktest's return code when a backtest stopped early; 0 = none); and the
wall time of the backtests (workers warm: data loaded, numba compiled).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

# hftbacktest 2.4.4's partial-fill exchange keeps an order in its book when a queue fill
# completes it exactly (PartialFillExchange::check_if_{buy,sell}_filled push it to the
# filled list only when filled_qty > leaves_qty, not >=), and the next trade at that price
# then fails the whole backtest with InvalidOrderStatus (code 14). Maker orders are sent
# 1e-9 below their whole number of lots (one millionth of a lot): a fill that completes the
# order then takes the "filled_qty > leaves_qty" branch. Effect on fees and PnL < 1e-4 USDT.
QTY_EPS = 1e-9


def _build(data, queue, queue_n, latency, tick, lot, maker_fee, taker_fee):
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest

    asset = (
        BacktestAsset()
        .data([data])
        .linear_asset(1.0)
        .constant_order_latency(int(latency), 0)
        .trading_value_fee_model(maker_fee, taker_fee)
        .tick_size(tick)
        .lot_size(lot)
        .partial_fill_exchange()
    )
    if queue == "risk_averse":
        asset = asset.risk_adverse_queue_model()
    elif queue == "power":
        asset = asset.power_prob_queue_model(float(queue_n))
    else:
        raise ValueError(f"unknown queue model {queue!r}")
    return HashMapMarketDepthBacktest([asset])


def _strategy():
    from numba import njit
    from hftbacktest import GTC, GTX, LIMIT, MARKET
    from hftbacktest.order import CANCELED, EXPIRED, FILLED

    @njit
    def run(hbt, rts, arrive, cancel_eff, k, tif, tp_bps, sl_bps, qty, tick, lot, maker_fee,
            taker_fee, debug):
        # The accounting is the strategy's own, from the local order copies (filled = qty -
        # leaves_qty, at the order's price for a LIMIT order, at exec_price for a MARKET one):
        # hftbacktest 2.4.4's local state (position, balance, fee, num_trades) applies only
        # responses with status FILLED, so partial fills of the partial-fill exchange are lost
        # from it (upstream issues #299, #316).
        FLAT, WORK, POS, EXITP = 0, 1, 2, 3
        T = rts.shape[0]
        state = FLAT
        next_entry = 0
        oid = 0
        entry_id = -1
        entry_arr = -1
        entry_cancelled = False
        tp_id = -1
        tp_live = False
        mkt_id = -1
        mkt_buy = False
        e = 0.0
        trades = 0
        maker_fills = 0
        taker_walks = 0
        taker_multi = 0
        anomalies = 0
        entry_seen = 0.0
        tp_seen = 0.0
        pos = 0.0
        cash = 0.0
        fees = 0.0
        half = lot * 0.5
        error = 0
        hbt.elapse(0)  # the clock starts at the first event (before: i64 max)
        for t in range(T):
            cur = hbt.current_timestamp
            if rts[t] > cur:
                rc = hbt.elapse(rts[t] - cur)
                if rc != 0 and rc != 1:  # 1: the end of the data (this row is still taken)
                    error = rc
                    break
            orders = hbt.orders(0)
            # --- fills since the last row
            if entry_id >= 0 and entry_id in orders:
                o = orders.get(entry_id)
                f = o.qty - o.leaves_qty
                if f > entry_seen + half:
                    dq = f - entry_seen
                    entry_seen = f
                    pos += dq
                    cash -= dq * o.price
                    fees += dq * o.price * maker_fee
                    maker_fills += 1
            if tp_id >= 0 and tp_id in orders:
                o = orders.get(tp_id)
                f = o.qty - o.leaves_qty
                if f > tp_seen + half:
                    dq = f - tp_seen
                    tp_seen = f
                    pos -= dq
                    cash += dq * o.price
                    fees += dq * o.price * maker_fee
                    maker_fills += 1
            if mkt_id >= 0 and mkt_id in orders:
                o = orders.get(mkt_id)
                if o.status == FILLED or o.status == EXPIRED:
                    dq = o.qty - o.leaves_qty
                    if dq > half:
                        px = o.exec_price  # the last level taken (a multi-level walk: its worst)
                        taker_walks += 1
                        if o.exec_qty < dq - half:
                            taker_multi += 1
                        if mkt_buy:
                            pos += dq
                            cash -= dq * px
                        else:
                            pos -= dq
                            cash += dq * px
                        fees += dq * px * taker_fee
                    mkt_id = -1
            # --- state machine (this engine's order of work: fills/cancels, then decisions)
            if state == WORK:
                o = orders.get(entry_id)
                done = False
                if o.status == EXPIRED:  # GTX rejection at arrival
                    state = FLAT
                    next_entry = entry_arr + 1
                    entry_id = -1
                elif o.status == FILLED or o.status == CANCELED:
                    done = True
                elif (not entry_cancelled) and t > entry_arr and rts[t] - rts[entry_arr] >= tif:
                    hbt.cancel(0, entry_id, False)
                    entry_cancelled = True
                if done:
                    if debug:
                        print("complete", t, rts[t], o.status, pos)
                    entry_id = -1
                    hbt.clear_inactive_orders(0)
                    if pos > half:
                        trades += 1
                        e = o.price  # every maker fill is at the order's own price
                        oid += 1
                        tp_id = oid
                        tp_seen = 0.0
                        tpk = math.ceil(e * (1.0 + tp_bps * 1e-4) / tick)
                        q = round(pos / lot) * lot - QTY_EPS
                        hbt.submit_sell_order(0, tp_id, tpk * tick, q, GTX, LIMIT, False)
                        tp_live = True
                        state = POS
                        continue  # exit decisions from the next row
                    state = FLAT
                    next_entry = t + 1
            elif state == POS or state == EXITP:
                if tp_live and tp_id in orders:
                    o = orders.get(tp_id)
                    if o.status == EXPIRED:  # take profit rejected post-only: a taker exit
                        tp_live = False
                        if state == POS and pos > half:
                            oid += 1
                            mkt_id = oid
                            mkt_buy = False
                            hbt.submit_sell_order(0, mkt_id, hbt.depth(0).best_bid,
                                                  round(pos / lot) * lot, GTC, MARKET, False)
                            state = EXITP
                    elif o.status == FILLED or o.status == CANCELED:
                        tp_live = False
                if pos < -half and mkt_id < 0:
                    anomalies += 1  # take profit and stop both filled: flatten
                    oid += 1
                    mkt_id = oid
                    mkt_buy = True
                    hbt.submit_buy_order(0, mkt_id, hbt.depth(0).best_ask,
                                         round(-pos / lot) * lot, GTC, MARKET, False)
                if abs(pos) <= half and mkt_id < 0 and not tp_live:
                    if debug:
                        print("closed", t, rts[t])
                    state = FLAT
                    next_entry = t + 1
                    tp_id = -1
                    hbt.clear_inactive_orders(0)
                    continue
                if state == POS and pos > half:
                    bid = hbt.depth(0).best_bid
                    if bid - e <= -sl_bps * 1e-4 * e:
                        if debug:
                            print("stop", t, rts[t], bid, e)
                        if tp_live:
                            hbt.cancel(0, tp_id, False)
                        oid += 1
                        mkt_id = oid
                        mkt_buy = False
                        hbt.submit_sell_order(0, mkt_id, bid, round(pos / lot) * lot,
                                              GTC, MARKET, False)
                        state = EXITP
            if state == FLAT and t >= next_entry:
                d = hbt.depth(0)
                bid = d.best_bid
                ask = d.best_ask
                if bid > 0 and ask > 0 and not math.isnan(bid) and not math.isnan(ask):
                    pk = round(bid / tick) - k
                    if pk >= 1:
                        oid += 1
                        entry_id = oid
                        entry_seen = 0.0
                        hbt.submit_buy_order(0, entry_id, pk * tick, qty - QTY_EPS, GTX, LIMIT,
                                             False)
                        if debug:
                            print("entry", t, rts[t], pk)
                        entry_arr = arrive[t]
                        entry_cancelled = False
                        state = WORK
        # after the last row: an open position is closed at the best bid (taker fee)
        bid = hbt.depth(0).best_bid
        if pos > half:
            if state == WORK:
                trades += 1  # a partly filled entry at the end is a trade closed at the end
            taker_walks += 1
            cash += pos * bid
            fees += pos * bid * taker_fee
            pos = 0.0
        out = np.empty(10)
        out[0] = trades
        out[1] = maker_fills
        out[2] = taker_walks
        out[3] = taker_multi
        out[4] = fees
        out[5] = cash
        out[6] = cash - fees
        out[7] = pos
        out[8] = anomalies
        out[9] = error
        return out

    return run


_G = {}


def _worker_init(args):
    _G.update(args)
    _G["data"] = np.load(args["data_path"])["data"]
    _G["rts"] = np.load(args["rows_path"])
    _G["run"] = _strategy()


def _one(cfg):
    g = _G
    rts = g["rts"]
    lat = int(g["latency"])
    arrive = np.searchsorted(rts, rts + lat, side="left")
    arrive = np.maximum(arrive, np.arange(rts.shape[0]) + 1).astype(np.int64)
    hbt = _build(g["data"], g["queue"], g["queue_n"], lat, g["tick"], g["lot"],
                 g["maker_fee"], g["taker_fee"])
    tif = float(cfg["entry_tif"])
    out = g["run"](hbt, rts, arrive, arrive, int(cfg["entry_offset"]),
                   tif if math.isfinite(tif) else 1e300, float(cfg["take_profit"]),
                   float(cfg["stop_loss"]), float(g["qty"]), float(g["tick"]), float(g["lot"]),
                   float(g["maker_fee"]), float(g["taker_fee"]), bool(g.get("debug", False)))
    hbt.close()
    keys = ("trades", "maker_fills", "taker_fills", "taker_multi_level", "fees", "gross_pnl",
            "net_pnl", "position_left", "anomalies", "error")
    return {k: float(v) for k, v in zip(keys, out)}


def convert(capture: str, out_npz: str, feed: str) -> dict:
    """The capture -> hftbacktest events, by hftbacktest's own converter
    (hftbacktest.data.utils.binancefutures.convert) on a copy of the capture in which every
    depth update and trade carries its publish time E as the exchange time ("T" := "E"), the
    clock of this engine's book store; with feed "zero" the receive stamp is E too (no feed
    latency: the strategy sees each message at the time the engine's book row has), with
    "capture" the capture's receive stamps are kept (hftbacktest's converter then shifts them
    by the most negative receive - E so that no feed latency is negative). bookTicker lines
    are left out (the converter ignores them unless asked)."""
    import gzip
    import tempfile

    from hftbacktest.data.utils import binancefutures

    kept = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "capture.jsonl.gz")
        with gzip.open(capture, "rt") as fin, gzip.open(path, "wt", compresslevel=1) as fout:
            for line in fin:
                if "@bookTicker" in line[:80]:
                    continue
                sp = line.index(" ")
                local, msg = line[:sp], json.loads(line[sp + 1:])
                d = msg.get("data")
                if d is not None and d.get("e") in ("depthUpdate", "trade") and "E" in d:
                    d["T"] = d["E"]
                    stamp = d["E"]
                elif d is None and "T" in msg:  # the REST snapshot line
                    stamp = msg["T"]
                else:
                    stamp = None
                if feed == "zero" and stamp is not None:
                    local = str(int(stamp) * 1_000_000)
                fout.write(local + " " + json.dumps(msg, separators=(",", ":")) + "\n")
                kept += 1
        data = binancefutures.convert(path, output_filename=None, combined_stream=True)
    np.savez_compressed(out_npz, data=data)
    lat = (data["local_ts"] - data["exch_ts"]).astype(np.int64)
    return {"lines": kept, "events": int(data.shape[0]),
            "feed_latency_ns": {"min": int(lat.min()), "median": int(np.median(lat)),
                                "p99": int(np.percentile(lat, 99)), "max": int(lat.max())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--convert", metavar="CAPTURE", help="convert CAPTURE to --data and exit")
    ap.add_argument("--feed", choices=("zero", "capture"), default="zero")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows")
    ap.add_argument("--configs")
    ap.add_argument("--queue", choices=("risk_averse", "power"))
    ap.add_argument("--queue-n", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=1)
    a = ap.parse_args(argv)
    if a.convert:
        info = convert(a.convert, a.data, a.feed)
        json.dump(info, open(a.out, "w"), indent=1)
        return 0
    spec = json.load(open(a.configs))
    shared = dict(spec["shared"], queue=a.queue, queue_n=a.queue_n,
                  data_path=a.data, rows_path=a.rows)
    configs = spec["configs"]
    t_load = time.perf_counter()
    if a.jobs <= 1:
        _worker_init(shared)
        _one(configs[0])  # warm: numba compiles the strategy
        t0 = time.perf_counter()
        results = [_one(c) for c in configs]
        wall = time.perf_counter() - t0
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        with ctx.Pool(a.jobs, initializer=_worker_init, initargs=(shared,)) as pool:
            pool.map(_one, [configs[0]] * a.jobs, chunksize=1)  # warm every worker
            t0 = time.perf_counter()
            results = pool.map(_one, configs, chunksize=max(1, len(configs) // (8 * a.jobs)))
            wall = time.perf_counter() - t0
    import hftbacktest

    json.dump({"results": results, "wall_s": wall, "jobs": a.jobs,
               "setup_s": t0 - t_load, "hftbacktest": hftbacktest.__version__,
               "numpy": np.__version__}, open(a.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
