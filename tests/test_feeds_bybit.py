"""`import --format bybit`: Bybit v5 orderbook/publicTrade and v2 orderBookL2_25 captures -> book store.

Fixtures are generated here from the documented message layouts (bybit-exchange.github.io,
v5 "Orderbook" and "Trade"; the v2 layout as in cryptofeed's 2021 sample captures), in the
three line shapes capture tools write. Every book row is checked against an independent
dict-based rebuild written below; books never cross; a sequence gap drops the rows until
the next snapshot and is reported; malformed lines are named by file and line.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from gpu_engine.data.books.feeds import bybit
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import load
from gpu_engine.errors import InputError

SYM = "BTCUSDT"
T0 = 1_758_841_134_603      # ms (2025-09-25)
DEPTH = 5
URL = "wss://stream.bybit.com/v5/public/linear"


# ----------------------------------------------------------------------------- documented messages

class Exchange:
    """A tiny exchange-side book on a fixed price grid (bids 64990.0-64999.9, asks 65000.0-65009.9:
    it cannot cross) that emits v5 messages as Bybit documents them."""

    def __init__(self, seed: int = 1, depth_topic: int = 50, u0: int = 13_079_592):
        self.rng = random.Random(seed)
        self.topic = f"orderbook.{depth_topic}.{SYM}"
        self.u = u0
        self.seq = 22_520_573_250
        self.t = T0
        self.bids = {round(64999.9 - 0.1 * i, 1): self._size() for i in range(12)}
        self.asks = {round(65000.0 + 0.1 * i, 1): self._size() for i in range(12)}
        self.trade_no = 0

    def _size(self) -> float:
        return round(self.rng.uniform(0.001, 3.0), 3)

    def _msg(self, mtype: str, b, a) -> dict:
        self.t += self.rng.randint(1, 30)
        self.seq += self.rng.randint(1, 9)
        return {"topic": self.topic, "type": mtype, "ts": self.t,
                "data": {"s": SYM, "b": b, "a": a, "u": self.u, "seq": self.seq}, "cts": self.t - 2}

    def snapshot(self, u: int | None = None) -> dict:
        if u is not None:
            self.u = u
        b = [[f"{p:.2f}", f"{q:.3f}"] for p, q in sorted(self.bids.items(), reverse=True)]
        a = [[f"{p:.2f}", f"{q:.3f}"] for p, q in sorted(self.asks.items())]
        return self._msg("snapshot", b, a)

    def delta(self) -> dict:
        self.u += 1
        b, a = [], []
        for _ in range(self.rng.randint(1, 3)):
            bid = self.rng.random() < 0.5
            side, out = (self.bids, b) if bid else (self.asks, a)
            p = round((64990.0 if bid else 65000.0) + 0.1 * self.rng.randrange(100), 1)
            q = 0.0 if (p in side and self.rng.random() < 0.3) else self._size()
            if q:
                side[p] = q
            else:
                side.pop(p, None)
            out.append([f"{p:.2f}", "0" if q == 0 else f"{q:.3f}"])
        return self._msg("delta", b, a)

    def trade(self) -> dict:
        self.trade_no += 1
        buy = self.rng.random() < 0.5
        px = min(self.asks) if buy else max(self.bids)
        return {"topic": f"publicTrade.{SYM}", "type": "snapshot", "ts": self.t + 1,
                "data": [{"T": self.t, "s": SYM, "S": "Buy" if buy else "Sell", "v": "0.020", "p": f"{px:.2f}",
                          "L": "ZeroPlusTick", "i": f"2a74ac78-691c-5b54-9dbe-{self.trade_no:012d}", "BT": False}]}


def v5_messages(gap_after: int | None = 20, resnap_after: int = 6, n: int = 60, seed: int = 1) -> list[dict]:
    """snapshot, deltas (one withheld after `gap_after` deltas: an id gap), a fresh snapshot
    `resnap_after` deltas later, more deltas; a trade every 7th message."""
    ex = Exchange(seed)
    out = [{"success": True, "ret_msg": "", "conn_id": "d30fdpbboasp1pjbe7r0", "req_id": "", "op": "subscribe"},
           ex.snapshot()]
    lost_at = None
    for i in range(n):
        m = ex.delta()
        if i == gap_after:
            lost_at = i
            continue  # lost on the way: u jumps by 2 at the next delta
        out.append(m)
        if lost_at is not None and i == lost_at + resnap_after:
            out.append(ex.snapshot())  # Bybit's fresh snapshot (after a resubscribe)
        if i % 7 == 3:
            out.append(ex.trade())
    return out


def write_forms(tmp_path, msgs: list[dict], name: str = "bybit") -> dict:
    """The same messages as hftbacktest, cryptofeed and bare JSON lines."""
    def local(i):  # receive stamps a little after the exchange time
        return (T0 + 5 + 10 * i) * 1_000_000

    stamped = [f"{local(i)} {json.dumps(m, separators=(',', ':'))}" for i, m in enumerate(msgs)]
    cf = [f"{URL} <-> {local(0) / 1e9 - 1:.6f}",
          f'{URL} <- {local(0) / 1e9 - 0.5:.6f}: {{"req_id": "subscribe", "op": "subscribe", '
          f'"args": ["orderbook.50.{SYM}", "publicTrade.{SYM}"]}}']
    cf += [f"{local(i) / 1e9:.9f}: {json.dumps(m)}" for i, m in enumerate(msgs)]
    bare = [json.dumps(m) for m in msgs]
    out = {}
    for form, lines in (("hftbacktest", stamped), ("cryptofeed", cf), ("bare", bare)):
        p = tmp_path / f"{name}_{form}.txt"
        p.write_text("\n".join(lines) + "\n")
        out[form] = p
    return out


# ----------------------------------------------------------------------------- the independent rebuild

def _top(side: dict, n: int, best_high: bool):
    items = sorted(side.items(), reverse=best_high)[:n]
    px = np.full(n, np.nan)
    sz = np.zeros(n, np.float32)
    for k, (p, q) in enumerate(items):
        px[k], sz[k] = p, q
    return px, sz


def rebuild_v5(msgs: list[dict], depth: int, topic: str = f"orderbook.50.{SYM}"):
    """Expected rows [(ts, u, bid_px, bid_sz, ask_px, ask_sz)] and (gap u's) from the v5 rules, with dicts."""
    rows, bids, asks, last_u, synced = [], {}, {}, None, False
    for m in msgs:
        if m.get("topic") != topic:
            continue
        d = m["data"]
        u = d["u"]
        if m["type"] == "snapshot" or u == 1:
            bids = {float(p): float(q) for p, q in d["b"] if float(q) > 0}
            asks = {float(p): float(q) for p, q in d["a"] if float(q) > 0}
            synced = True
        else:
            if not synced or u <= last_u:
                continue
            if u != last_u + 1:
                synced = False
                continue
            for side, key in ((bids, "b"), (asks, "a")):
                for p, q in d[key]:
                    if float(q) == 0:
                        side.pop(float(p), None)
                    else:
                        side[float(p)] = float(q)
        last_u = u
        if bids and asks and max(bids) >= min(asks):
            synced = False
            continue
        bp, bs = _top(bids, depth, True)
        ap, as_ = _top(asks, depth, False)
        rows.append((m["ts"] * 1_000_000, u, bp, bs, ap, as_))
    return rows


def assert_rows(book, want):
    assert book.T == len(want), (book.T, len(want))
    for i, (ts, u, bp, bs, ap, as_) in enumerate(want):
        assert book.ts[i] == ts and book.seq[i] == u, i
        assert np.array_equal(book.bid_px[i], bp, equal_nan=True), i
        assert np.array_equal(book.ask_px[i], ap, equal_nan=True), i
        assert np.array_equal(book.bid_sz[i], bs) and np.array_equal(book.ask_sz[i], as_), i


def assert_never_crossed(book):
    both = ~np.isnan(book.bid_px[:, 0]) & ~np.isnan(book.ask_px[:, 0])
    assert np.all(book.bid_px[both, 0] < book.ask_px[both, 0])


# ----------------------------------------------------------------------------- v5

def test_v5_every_line_form_imports_to_the_independent_rebuild(tmp_path):
    msgs = v5_messages(gap_after=None)
    want = rebuild_v5(msgs, DEPTH)
    trades = [t for m in msgs if m.get("topic", "").startswith("publicTrade") for t in m["data"]]
    published = [max(t["T"], m["ts"]) * 1_000_000 for m in msgs if m.get("topic", "").startswith("publicTrade")
                 for t in m["data"]]
    assert len(want) == 61 and len(trades) >= 8
    stores = []
    for form, path in write_forms(tmp_path, msgs).items():
        rep = import_files([path], "bybit", tmp_path / f"{form}.zarr", depth=DEPTH, progress=False)
        book = load(tmp_path / f"{form}.zarr")
        assert_rows(book, want)
        assert_never_crossed(book)
        assert rep.gaps == [] and rep.bad_lines == 0 and rep.symbol == SYM
        # ts: when the trade became public (the message's ts); match_ts: the trade's T
        assert np.array_equal(book.trades.ts, published)
        assert np.array_equal(book.trades.match_ts, [t["T"] * 1_000_000 for t in trades])
        assert np.array_equal(book.trades.side, [1 if t["S"] == "Buy" else -1 for t in trades])
        assert np.array_equal(book.trades.px, [float(t["p"]) for t in trades])
        assert book.attrs["exchange"] == "bybit" and book.attrs["tick_size"] == 0.1
        stores.append(book)
    # the cryptofeed form names the endpoint: the market comes from it; the others infer it from the trades
    assert all(b.attrs["market"] == "linear" for b in stores)


def test_v5_sequence_gap_drops_rows_until_the_next_snapshot_and_is_reported(tmp_path):
    msgs = v5_messages(gap_after=20, resnap_after=6)
    path = write_forms(tmp_path, msgs)["hftbacktest"]
    rep = import_files([path], "bybit", tmp_path / "g.zarr", depth=DEPTH, progress=False)
    book = load(tmp_path / "g.zarr")
    want = rebuild_v5(msgs, DEPTH)
    assert_rows(book, want)
    assert_never_crossed(book)
    snaps = [m for m in msgs if m.get("type") == "snapshot" and m.get("topic", "").startswith("orderbook.")]
    snap_u = [m["data"]["u"] for m in snaps]
    first_u = snap_u[0]
    # deltas after the lost one (u = first_u + 21) up to the resync snapshot: not in the store
    lost = first_u + 21
    assert not np.any((book.seq >= lost) & (book.seq < snap_u[1]))
    assert np.all(np.diff(book.seq) >= 1)
    assert len(rep.gaps) == 1 and rep.resyncs == 1
    g = rep.gaps[0]
    assert g["kind"] == "id_gap" and g["seq"] == lost - 1 and f"u {lost - 1} -> {lost + 1}" in g["reason"]
    assert g["until"] == snaps[1]["ts"] * 1_000_000
    assert rep.unsynced == 5  # the deltas after the one that revealed the gap, up to the snapshot
    stored = book.attrs["gaps"]
    assert len(stored) == 1 and stored[0]["until"] == g["until"]


def test_v5_u1_is_a_restart_snapshot_and_duplicates_are_ignored(tmp_path):
    ex = Exchange(seed=3)
    msgs = [ex.snapshot()] + [ex.delta() for _ in range(5)]
    msgs.append(dict(msgs[-1]))                 # the same delta again: a duplicate
    # the service restarted: a full book with u = 1 (sent as a delta here: u == 1 alone decides)
    restart = ex.snapshot(u=1)
    restart["type"] = "delta"
    ex.bids.pop(max(ex.bids))                   # ... and the book it sends differs from ours
    restart["data"]["b"] = [[f"{p:.2f}", f"{q:.3f}"] for p, q in sorted(ex.bids.items(), reverse=True)]
    msgs.append(restart)
    msgs += [ex.delta() for _ in range(4)]      # u = 2..5
    path = write_forms(tmp_path, msgs)["hftbacktest"]
    rep = import_files([path], "bybit", tmp_path / "r.zarr", depth=DEPTH, progress=False)
    book = load(tmp_path / "r.zarr")
    assert_rows(book, rebuild_v5(msgs, DEPTH))
    assert list(book.seq[-5:]) == [1, 2, 3, 4, 5]
    assert rep.duplicates == 1 and rep.gaps == [] and rep.extra["service_restart_snapshots"] == 1


def test_v5_crossed_book_is_a_gap_until_the_next_snapshot(tmp_path):
    ex = Exchange(seed=4)
    msgs = [ex.snapshot()] + [ex.delta() for _ in range(3)]
    bad = ex.delta()
    bad["data"]["b"].append(["65005.00", "1.000"])  # a bid above the best ask: crossed
    msgs.append(bad)
    msgs += [ex.delta() for _ in range(3)] + [ex.snapshot()] + [ex.delta() for _ in range(2)]
    path = write_forms(tmp_path, msgs)["bare"]
    rep = import_files([path], "bybit", tmp_path / "c.zarr", depth=DEPTH, progress=False)
    book = load(tmp_path / "c.zarr")
    want = rebuild_v5(msgs, DEPTH)
    assert len(want) == 1 + 3 + 1 + 2
    assert_rows(book, want)
    assert_never_crossed(book)
    assert rep.crossed == 1 and len(rep.gaps) == 1 and rep.gaps[0]["reason"] == "crossed book"
    assert rep.gaps[0]["until"] is not None


def test_v5_rows_come_from_the_deepest_book_topic(tmp_path):
    deep, top = Exchange(seed=5, depth_topic=200), Exchange(seed=5, depth_topic=1)
    msgs = []
    msgs.append(top.snapshot())
    msgs.append(deep.snapshot())
    for _ in range(10):
        msgs.append(top.snapshot())  # orderbook.1 only ever sends snapshots
        msgs.append(deep.delta())
    path = write_forms(tmp_path, msgs)["hftbacktest"]
    rep = import_files([path], "bybit", tmp_path / "d.zarr", depth=DEPTH, progress=False)
    book = load(tmp_path / "d.zarr")
    assert_rows(book, rebuild_v5(msgs, DEPTH, topic=f"orderbook.200.{SYM}"))
    assert rep.extra["other_depth_messages"] == 11 and rep.extra["book_topic_depth"] == 200


# ----------------------------------------------------------------------------- v2 orderBookL2_25

def _v2(mtype: str, data, seq: int, t_us: int, symbol: str = "BTCUSD") -> dict:
    return {"topic": f"orderBookL2_25.{symbol}", "type": mtype, "data": data, "cross_seq": seq, "timestamp_e6": t_us}


def _lvl(price: str, side: str, size=None, symbol: str = "BTCUSD") -> dict:
    d = {"price": price, "symbol": symbol, "id": int(round(float(price) * 10_000)), "side": side}
    if size is not None:
        d["size"] = size
    return d


def test_v2_orderbookl2_by_order_id(tmp_path):
    """Inverse form (snapshot `data` is the list; cryptofeed's 2021 capture of `realtime`): deletes
    without a price are resolved through the id -> price map; an update of an unknown id is a gap."""
    t = 1_618_677_786_558_146
    snap = [_lvl(f"{60600 - 0.5 * i:.1f}", "Buy", 100 + i) for i in range(6)] + \
           [_lvl(f"{60600.5 + 0.5 * i:.1f}", "Sell", 200 + i) for i in range(6)]
    deltas = [
        {"delete": [], "update": [_lvl("60600.0", "Buy", 150)], "insert": []},
        {"delete": [{"id": 606005000, "symbol": "BTCUSD", "side": "Sell"}],        # no price: from the map
         "update": [], "insert": [_lvl("60603.5", "Sell", 7)]},
        {"delete": [_lvl("60599.5", "Buy")], "update": [{"id": 606010000, "symbol": "BTCUSD", "side": "Sell",
                                                          "size": 9}],            # update without a price
         "insert": [_lvl("60597.0", "Buy", 1)], "transactTimeE6": 0},
        {"delete": [], "update": [_lvl("60590.0", "Buy", 5)], "insert": []},       # unknown id: the book is wrong
        {"delete": [], "update": [_lvl("60600.0", "Buy", 151)], "insert": []},     # dropped (unsynced)
    ]
    msgs = [_v2("snapshot", snap, 1225777224, t)]
    for k, d in enumerate(deltas):
        msgs.append(_v2("delta", d, 1225777225 + k, t + 20_000 * (k + 1)))
    msgs.append(_v2("snapshot", snap, 1225777300, t + 500_000))
    lines = ["wss://stream.bybit.com/realtime <-> 1618677785.489609",
             'wss://stream.bybit.com/realtime <- 1618677786.5114200: '
             '{"op":"subscribe","args":["orderBookL2_25.BTCUSD"]}']
    lines += [f"{(t + 1000 + 20_000 * i) / 1e6:.6f}: {json.dumps(m)}" for i, m in enumerate(msgs)]
    path = tmp_path / "BYBIT.ws.26.0"
    path.write_text("\n".join(lines) + "\n")
    rep = import_files([path], "bybit", tmp_path / "v2.zarr", depth=4, progress=False)
    book = load(tmp_path / "v2.zarr")

    # the rebuild, by price from the documented semantics
    bids = {float(x["price"]): x["size"] for x in snap if x["side"] == "Buy"}
    asks = {float(x["price"]): x["size"] for x in snap if x["side"] == "Sell"}
    states = [(bids.copy(), asks.copy())]
    bids[60600.0] = 150
    states.append((bids.copy(), asks.copy()))
    del asks[60600.5]
    asks[60603.5] = 7
    states.append((bids.copy(), asks.copy()))
    del bids[60599.5]
    asks[60601.0] = 9
    bids[60597.0] = 1
    states.append((bids.copy(), asks.copy()))
    states.append(states[0])  # the second snapshot
    assert book.T == len(states) == 5
    for i, (b, a) in enumerate(states):
        bp, bs = _top(b, 4, True)
        ap, as_ = _top(a, 4, False)
        assert np.array_equal(book.bid_px[i], bp) and np.array_equal(book.ask_px[i], ap), i
        assert np.array_equal(book.bid_sz[i], bs) and np.array_equal(book.ask_sz[i], as_), i
    assert list(book.ts) == [(t + 20_000 * k) * 1000 for k in (0, 1, 2, 3)] + [(t + 500_000) * 1000]
    assert list(book.seq[:2]) == [1225777224, 1225777225]
    assert_never_crossed(book)
    assert len(rep.gaps) == 1 and "unknown order id 605900000" in rep.gaps[0]["reason"] and rep.resyncs == 1
    assert rep.unsynced == 1 and book.attrs["market"] == "inverse" and rep.extra["sent_lines"] == 1


def test_v2_linear_order_book_form_and_trades(tmp_path):
    """Linear form (`data.order_book`, string ids and stamps; cryptofeed's `realtime_public` capture)."""
    snap = {"order_book": [{"price": "1053.05", "symbol": "BCHUSDT", "id": "10530500", "side": "Buy", "size": 2.63},
                           {"price": "1053.10", "symbol": "BCHUSDT", "id": "10531000", "side": "Buy", "size": 5.48},
                           {"price": "1053.15", "symbol": "BCHUSDT", "id": "10531500", "side": "Sell", "size": 1.5},
                           {"price": "1053.20", "symbol": "BCHUSDT", "id": "10532000", "side": "Sell", "size": 4}]}
    delta = {"delete": [{"price": "1053.15", "symbol": "BCHUSDT", "id": "10531500", "side": "Sell"}],
             "update": [{"price": "1053.10", "symbol": "BCHUSDT", "id": "10531000", "side": "Buy", "size": 3.66}],
             "insert": [{"price": "1052.95", "symbol": "BCHUSDT", "id": "10529500", "side": "Buy", "size": 20.3}]}
    trade = {"topic": "trade.BCHUSDT", "data": [{"symbol": "BCHUSDT", "tick_direction": "MinusTick", "price": "1053.90",
                                                 "size": 0.14, "timestamp": "2021-04-17T16:43:05.000Z",
                                                 "trade_time_ms": "1618677785116", "side": "Buy",
                                                 "trade_id": "01cacfe9-8d1c-5ee4-995d-d79a43f955a6"}]}
    msgs = [{"topic": "orderBookL2_25.BCHUSDT", "type": "snapshot", "data": snap, "cross_seq": "864131773",
             "timestamp_e6": "1618677786389362"}, trade,
            {"topic": "orderBookL2_25.BCHUSDT", "type": "delta", "data": delta, "cross_seq": "864131802",
             "timestamp_e6": "1618677786430132"}, trade]
    path = tmp_path / "v2l.txt"
    path.write_text("wss://stream.bybit.com/realtime_public <-> 1618677785.4827468\n"
                    + "".join(f"1618677786.{900 + i}: {json.dumps(m)}\n" for i, m in enumerate(msgs)))
    rep = import_files([path], "bybit", tmp_path / "l.zarr", depth=2, progress=False)
    book = load(tmp_path / "l.zarr")
    assert book.T == 2 and list(book.seq) == [864131773, 864131802]
    assert list(book.bid_px[1]) == [1053.10, 1053.05] and list(book.bid_sz[1]) == [np.float32(3.66), np.float32(2.63)]
    assert book.ask_px[1][0] == 1053.20 and np.isnan(book.ask_px[1][1]) and book.ask_sz[1][1] == 0
    assert len(book.trades) == 1 and rep.duplicates == 1  # the repeated trade id
    assert book.trades.side[0] == 1 and book.trades.ts[0] == 1618677785116 * 1_000_000
    assert book.attrs["market"] == "linear"


# ----------------------------------------------------------------------------- bad input

def test_malformed_lines_are_named_by_file_and_line(tmp_path):
    ex = Exchange(seed=6)
    msgs = [ex.snapshot()] + [ex.delta() for _ in range(6)]
    lines = [f"{(T0 + i) * 1_000_000} {json.dumps(m)}" for i, m in enumerate(msgs)]
    # a truncated line naming the book topic (line 4): the book is wrong from there, no resync follows
    cut = lines[:3] + ['1758841134999000000 {"topic": "orderbook.50.BTCUSDT", "type": "delta", "ts'] + lines[3:]
    path = tmp_path / "cap.txt"
    path.write_text("\n".join(cut) + "\n")
    rep = ImportReport()
    rows = list(bybit.read([path], DEPTH, None, rep))
    assert rep.bad_lines == 1 and any(n.startswith("cap.txt:4: bad line") for n in rep.notes), rep.notes
    assert len(rep.gaps) == 1 and rep.gaps[0]["line"] == 4 and rep.gaps[0].get("until") is None
    assert len([r for r in rows if isinstance(r, BookRow)]) == 3  # snapshot + the 2 deltas before the damage
    # a price that is not a number (line 3): named in the notes, a gap from there
    bad = json.loads(lines[2].split(" ", 1)[1])
    bad["data"]["b"] = [["abc", "1.0"]]
    lines[2] = f"{(T0 + 2) * 1_000_000} {json.dumps(bad)}"
    path2 = tmp_path / "cap2.txt"
    path2.write_text("\n".join(lines) + "\n")
    rep = ImportReport()
    rows = list(bybit.read([path2], DEPTH, None, rep))
    assert rep.bad_lines == 1 and any("abc" in n for n in rep.notes), rep.notes
    assert len(rep.gaps) == 1 and rep.gaps[0]["line"] == 3 and rep.gaps[0]["file"].endswith("cap2.txt")
    assert len([r for r in rows if isinstance(r, BookRow)]) == 2

    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a capture\n{also not json\n")
    with pytest.raises(InputError, match=r"garbage\.txt:1: no usable line"):
        list(bybit.read([garbage], DEPTH, None, ImportReport()))


def test_format_sniffing_suggests_bybit_and_refuses_others(tmp_path):
    path = write_forms(tmp_path, v5_messages(gap_after=None, n=5))["hftbacktest"]
    with pytest.raises(InputError) as e:
        import_files([path], "binance-jsonl", tmp_path / "x.zarr", progress=False)
    assert "looks like a Bybit v5 message" in str(e.value) and "try --format bybit" in str(e.value)
    binance = tmp_path / "binance.txt"
    binance.write_text('1723161600000000000 {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,'
                       '"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}\n')
    with pytest.raises(InputError, match="try --format binance-jsonl"):
        import_files([binance], "bybit", tmp_path / "y.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_trade_rows_and_the_live_line_feed(tmp_path):
    """`lines=` (what the recorder feeds) gives the same rows as reading the file."""
    from gpu_engine.data.books.feeds.mixed import iter_mixed

    msgs = v5_messages(gap_after=None, n=20)
    path = write_forms(tmp_path, msgs)["hftbacktest"]
    a = list(bybit.read([path], DEPTH, None, ImportReport()))
    b = list(bybit.read([], DEPTH, None, ImportReport(), lines=iter_mixed([path], ImportReport()), book_depth=50))
    assert len(a) == len(b) > 20
    for x, y in zip(a, b):
        assert type(x) is type(y)
        if isinstance(x, TradeRow):
            assert x == y
        else:
            assert x.ts == y.ts and x.seq == y.seq and np.array_equal(x.bid_px, y.bid_px, equal_nan=True)


# ----------------------------------------------------------------------------- cryptofeed line kinds, re-pushes

def test_cryptofeed_sent_connect_and_http_lines_are_never_read_as_data(tmp_path):
    """cryptofeed writes received messages as bare `<ts>: <json>`; `<url> <- ts: json` is what the
    client SENT (here a payload that names a book topic and even contains " <-> "), `<url> <->` a
    connect, `<url> -> ts: json` an HTTP answer."""
    ex = Exchange(seed=8)
    msgs = [ex.snapshot()] + [ex.delta() for _ in range(4)]
    fake = json.dumps({"op": "subscribe", "args": [f"orderbook.50.{SYM}"], "note": " <-> ", "topic":
                       f"orderbook.50.{SYM}", "type": "snapshot", "ts": T0, "data": {"b": [], "a": [], "u": 1}})
    lines = [f"{URL} <-> 1758841133.000001", f"{URL} <- 1758841133.5: {fake}",
             f'https://api.bybit.com/v5/market/time -> 1758841133.6: {{"retCode": 0}}']
    lines += [f"{(T0 + i) / 1e3:.6f}: {json.dumps(m)}" for i, m in enumerate(msgs)]
    lines.insert(5, f"{URL} <- 1758841134.7: {fake}")   # mid-stream: no reset, no reconnect
    path = tmp_path / "cf.txt"
    path.write_text("\n".join(lines) + "\n")
    rep = ImportReport()
    rows = [r for r in bybit.read([path], DEPTH, None, rep) if isinstance(r, BookRow)]
    assert len(rows) == 5 and rep.gaps == [] and rep.messages == 5
    assert rep.extra["sent_lines"] == 2 and rep.extra["rest_lines"] == 1 and rep.extra["market"] == "linear"
    assert [r.ts for r in rows] == [w[0] for w in rebuild_v5(msgs, DEPTH)]


def test_v5_same_u_snapshot_is_a_snapshot_and_counted(tmp_path):
    """orderbook.1 re-pushes an unchanged book with the same u after 3 s: a row at the new ts."""
    ex = Exchange(seed=9, depth_topic=1)
    first = ex.snapshot()
    again = ex.snapshot(u=ex.u)                 # same u, same levels, later ts
    changed = ex.snapshot(u=ex.u)
    changed["data"]["b"][0][1] = "9.999"        # same u but other levels: not what Bybit documents
    path = write_forms(tmp_path, [first, again, changed])["bare"]
    rep = ImportReport()
    rows = list(bybit.read([path], DEPTH, None, rep))
    assert [r.ts for r in rows] == [m["ts"] * 1_000_000 for m in (first, again, changed)]
    assert [r.seq for r in rows] == [ex.u] * 3 and float(rows[2].bid_sz[0]) == pytest.approx(9.999)
    assert rep.extra["same_u_snapshots"] == 2 and rep.extra["same_u_snapshots_changed"] == 1
    assert any("same u" in n for n in rep.notes) and rep.gaps == [] and rep.duplicates == 0
