"""Coinbase reader: the real 2021 Exchange level2/matches capture (every product), fault
injection on it, and Advanced Trade l2_data / market_trades messages built from the docs."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds import coinbase
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import seconds_to_ns

FILE = "coinbase_level2_20210417.txt.gz"
PRODUCTS = ["SKL-USD", "SKL-BTC", "SKL-GBP", "BAND-GBP", "BAND-BTC", "NMR-EUR", "YFI-BTC",
            "DASH-BTC", "NU-GBP", "CRV-EUR"]


def run(paths, symbol=None, depth=20):
    report = ImportReport()
    out = list(coinbase.read([Path(p) for p in paths], depth, symbol, report))
    return ([r for r in out if isinstance(r, BookRow)], [r for r in out if isinstance(r, TradeRow)], report)


@pytest.fixture(scope="module")
def lines(real_dir) -> list[str]:
    with gzip.open(real_dir / FILE, "rt") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def messages(lines) -> list[dict]:
    return [json.loads(l.split(": ", 1)[1]) for l in lines if l and not l.startswith("wss://")]


def _replay(messages, product):
    """Independent replay with plain dicts: the top 20 after every l2update of `product`."""
    bids, asks, tops = {}, {}, []
    for m in messages:
        if m.get("product_id") != product:
            continue
        if m["type"] == "snapshot":
            bids = {float(p): float(q) for p, q in m["bids"] if float(q) > 0}
            asks = {float(p): float(q) for p, q in m["asks"] if float(q) > 0}
        elif m["type"] == "l2update":
            for side, p, q in m["changes"]:
                book = bids if side == "buy" else asks
                if float(q) == 0:
                    book.pop(float(p), None)
                else:
                    book[float(p)] = float(q)
            tops.append((sorted(bids, reverse=True)[:20], sorted(asks)[:20], coinbase.iso_to_ns(m["time"])))
    return tops


@pytest.mark.parametrize("product", PRODUCTS)
def test_every_product_syncs_without_crossed_books(real_dir, messages, product):
    books, trades, report = run([real_dir / FILE], product)
    tops = _replay(messages, product)
    n_updates = sum(1 for m in messages if m.get("type") == "l2update" and m["product_id"] == product)
    print(f"\n{product}: {len(books)} rows from {n_updates} l2updates, {report.crossed} crossed, "
          f"{len(trades)} trades")
    assert report.crossed == 0 and report.gaps == [] and report.bad_lines == 0
    assert len(books) == len(tops) == n_updates > 0
    bid0 = np.array([b.bid_px[0] for b in books])
    ask0 = np.array([b.ask_px[0] for b in books])
    assert (bid0 < ask0).all()
    for b, (bp, ap, ts) in zip(books, tops):
        assert b.ts == ts and b.seq == -1 and b.symbol == product
        assert b.bid_px[: len(bp)].tolist() == bp and b.ask_px[: len(ap)].tolist() == ap
    ts = np.array([b.ts for b in books])
    assert (np.diff(ts) >= 0).all()
    n_trades = sum(1 for m in messages if m.get("type") in ("match", "last_match") and m["product_id"] == product)
    assert len(trades) == n_trades


def test_trade_side_is_the_opposite_of_the_maker_side(real_dir, messages):
    # the capture's own `ticker` carries the taker side for the same trade_id
    taker = {(m["product_id"], m["trade_id"]): m["side"] for m in messages if m.get("type") == "ticker"}
    matched = 0
    for product in PRODUCTS:
        _, trades, _ = run([real_dir / FILE], product)
        by_key = {}
        for m in messages:
            if m.get("type") in ("match", "last_match") and m["product_id"] == product:
                by_key[(coinbase.iso_to_ns(m["time"]), float(m["price"]), float(m["size"]))] = m
        for t in trades:
            m = by_key[(t.ts, t.px, t.qty)]
            assert t.side == (1 if m["side"] == "sell" else -1)
            if (product, m["trade_id"]) in taker:
                assert t.side == (1 if taker[(product, m["trade_id"])] == "buy" else -1)
                matched += 1
    assert matched >= 90  # most matches have a ticker with the same trade_id
    print(f"\ncoinbase aggressor side agrees with the ticker's taker side on {matched} trades")


def test_without_symbol_the_first_product_is_selected(real_dir):
    books, _, report = run([real_dir / FILE])
    assert {b.symbol for b in books} == {report.symbol} and report.symbol == "BAND-GBP"  # its snapshot comes first
    assert report.extra["other_symbol"] > 0


def _write(tmp: Path, lines: list[str]) -> Path:
    p = tmp / "cap.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def _index(lines, product, kind, nth=0):
    seen = 0
    for i, l in enumerate(lines):
        if f'"product_id":"{product}"' in l and f'"type":"{kind}"' in l:
            if seen == nth:
                return i
            seen += 1
    raise AssertionError("not found")


def test_corrupt_line_is_a_gap_for_its_product_only(tmp_path, lines):
    i = _index(lines, "SKL-USD", "l2update", 100)
    bad = lines[:i] + [lines[i][: len(lines[i]) // 2]] + lines[i + 1:]
    clean, _, _ = run([_write(tmp_path, lines)], "SKL-USD")
    books, _, report = run([_write(tmp_path, bad)], "SKL-USD")
    assert report.bad_lines == 1 and len(report.gaps) == 1 and "until" not in report.gaps[0]
    assert len(books) == 100  # rows stop at the corrupt line: no snapshot follows in the file
    assert [b.ts for b in books] == [b.ts for b in clean[:100]]
    other, _, report2 = run([_write(tmp_path, bad)], "DASH-BTC")
    assert report2.gaps == [] and len(other) == 1925


def test_negative_and_non_number_sizes_are_refused(tmp_path, lines):
    i = _index(lines, "SKL-USD", "l2update", 10)
    m = json.loads(lines[i].split(": ", 1)[1])
    m["changes"][0][2] = "-5"
    j = _index(lines, "DASH-BTC", "l2update", 10)
    n = json.loads(lines[j].split(": ", 1)[1])
    n["changes"][0][1] = "abc"
    bad = list(lines)
    bad[i] = lines[i].split(": ", 1)[0] + ": " + json.dumps(m)
    bad[j] = lines[j].split(": ", 1)[0] + ": " + json.dumps(n)
    books, _, report = run([_write(tmp_path, bad)], "SKL-USD")
    assert report.negative_sizes == 1 and len(books) == 10 and report.gaps[0]["reason"] == "malformed change"
    books, _, report = run([_write(tmp_path, bad)], "DASH-BTC")
    assert report.bad_lines == 1 and len(books) == 10


def test_unknown_type_is_counted_and_ignored(tmp_path, lines):
    k = _index(lines, "SKL-USD", "match", 3)
    bad = (lines[:20] + ['1618677817.2: {"type":"mystery","product_id":"SKL-USD"}', "1618677817.2: not json"]
           + lines[20:k] + [lines[k][:120]] + lines[k + 1:])  # a damaged match line: no book affected
    books, trades, report = run([_write(tmp_path, bad)], "SKL-USD")
    assert report.bad_lines == 3 and len(books) == 2592 and len(trades) == 53 - 1
    # "not json" names no product and no type: every book is treated as possibly hit, but
    # none is synced yet at line 20 (its snapshot comes later), so no gap is recorded
    assert report.gaps == []


def test_reconnect_then_fresh_snapshot_resyncs(tmp_path, lines):
    i = _index(lines, "SKL-USD", "l2update", 50)
    j = _index(lines, "SKL-USD", "l2update", 52)
    # the book after the two updates lost in the reconnect = the fresh snapshot's content
    bids, asks = {}, {}
    for l in lines[:j]:
        if '"product_id":"SKL-USD"' not in l:
            continue
        m = json.loads(l.split(": ", 1)[1])
        if m["type"] == "snapshot":
            bids, asks = {p: q for p, q in m["bids"]}, {p: q for p, q in m["asks"]}
        elif m["type"] == "l2update":
            for side, p, q in m["changes"]:
                book = bids if side == "buy" else asks
                book.pop(p, None) if float(q) == 0 else book.__setitem__(p, q)
    snap = {"type": "snapshot", "product_id": "SKL-USD", "bids": [[p, q] for p, q in bids.items()],
            "asks": [[p, q] for p, q in asks.items()]}
    local = lines[i].split(": ", 1)[0]
    recon = (lines[:i] + ["wss://ws-feed.pro.coinbase.com <-> " + local, local + ": " + json.dumps(snap)]
             + [l for l in lines[i:j] if '"product_id":"SKL-USD"' not in l] + lines[j:])
    clean, _, _ = run([_write(tmp_path, lines)], "SKL-USD")
    books, _, report = run([_write(tmp_path, recon)], "SKL-USD")
    assert report.resyncs == 1 and report.gaps[0]["reason"] == "reconnect: new connection"
    assert report.gaps[0]["until"] == seconds_to_ns(local)  # the snapshot's receive time
    assert len(books) == 2592 - 2 and report.crossed == 0
    for a, b in zip(books[50:], clean[52:]):
        assert a.ts == b.ts
        np.testing.assert_array_equal(a.bid_px, b.bid_px)
        np.testing.assert_array_equal(a.ask_sz, b.ask_sz)


def test_stale_snapshot_after_reconnect_is_caught_as_crossed(tmp_path, lines):
    # re-using the session's first snapshot 50 updates later: the book crosses -> gap, rows stop
    i = _index(lines, "SKL-USD", "l2update", 50)
    snap = lines[_index(lines, "SKL-USD", "snapshot")]
    local = lines[i].split(": ", 1)[0]
    recon = lines[:i] + ["wss://ws-feed.pro.coinbase.com <-> " + local, local + ": " + snap.split(": ", 1)[1]] + lines[i + 2:]
    books, _, report = run([_write(tmp_path, recon)], "SKL-USD")
    assert report.crossed == 1 and report.gaps[-1]["reason"] == "crossed book"
    assert all(b.bid_px[0] < b.ask_px[0] for b in books) and len(books) < 2592 - 2


def test_iso_time_parsing():
    assert coinbase.iso_to_ns("1970-01-01T00:00:01Z") == 10**9
    assert coinbase.iso_to_ns("2021-04-17T16:43:37.075687Z") == 1618677817075687000
    assert coinbase.iso_to_ns("2023-02-09T20:32:50.714964855Z") == 1675974770714964855
    with pytest.raises(ValueError):
        coinbase.iso_to_ns("2021-04-17T16:43:37.07+02:00")


# ---- Advanced Trade (no real sample: messages shaped as in the docs)

def _at(seq, events, channel="l2_data", ts="2023-02-09T20:32:50.714964855Z"):
    return json.dumps({"channel": channel, "client_id": "", "timestamp": ts, "sequence_num": seq, "events": events})


def _upd(side, px, qty):
    return {"side": side, "event_time": "2023-02-09T20:32:50.7Z", "price_level": str(px), "new_quantity": str(qty)}


def test_advanced_trade_l2_data_and_sequence_gap(tmp_path):
    snap = {"type": "snapshot", "product_id": "BTC-USD",
            "updates": [_upd("bid", 100, 1), _upd("bid", 99, 2), _upd("offer", 101, 3), _upd("offer", 102, 4)]}
    lines = [
        "wss://advanced-trade-ws.coinbase.com <-> 1675974770.0",
        "1675974770.1: " + _at(0, [{"type": "update", "product_id": "BTC-USD", "updates": [_upd("bid", 98, 1)]}]),
        "1675974770.2: " + _at(1, [snap]),
        "1675974770.3: " + _at(2, [{"type": "update", "product_id": "BTC-USD", "updates": [_upd("offer", 101, 0)]}],
                               ts="2023-02-09T20:32:51Z"),
        "1675974770.3: " + _at(2, [{"type": "update", "product_id": "BTC-USD", "updates": [_upd("offer", 101, 0)]}],
                               ts="2023-02-09T20:32:51Z"),                                  # duplicate
        "1675974770.4: " + _at(4, [{"type": "update", "product_id": "BTC-USD", "updates": [_upd("bid", 97, 1)]}],
                               ts="2023-02-09T20:32:52Z"),                                  # 3 was lost
        "1675974770.5: " + _at(5, [{"type": "update", "product_id": "BTC-USD", "updates": [_upd("bid", 96, 1)]}],
                               ts="2023-02-09T20:32:53Z"),
        "1675974770.6: " + _at(6, [snap], ts="2023-02-09T20:32:54Z"),
        "1675974770.7: " + _at(7, [{"type": "snapshot", "trades": [
            {"trade_id": "11", "product_id": "BTC-USD", "price": "100.5", "size": "0.3", "side": "SELL",
             "time": "2023-02-09T20:32:54.5Z"},
            {"trade_id": "12", "product_id": "BTC-USD", "price": "100", "size": "0.1", "side": "BUY",
             "time": "2023-02-09T20:32:54.6Z"}]}], channel="market_trades"),
        "1675974770.8: " + _at(8, [], channel="heartbeats"),
    ]
    books, trades, report = run([_write(tmp_path, lines)], depth=2)
    assert [b.ts for b in books] == [coinbase.iso_to_ns(t) for t in (
        "2023-02-09T20:32:50.714964855Z", "2023-02-09T20:32:51Z", "2023-02-09T20:32:54Z")]
    assert [b.seq for b in books] == [1, 2, 6]
    np.testing.assert_array_equal(books[0].bid_px, [100, 99])
    np.testing.assert_array_equal(books[1].ask_px, [102, np.nan])
    np.testing.assert_array_equal(books[2].ask_px, [101, 102])
    assert report.unsynced == 3 and report.duplicates == 1 and report.resyncs == 1  # before sync + 2 in the gap
    assert report.gaps[0]["reason"] == "sequence_num jump 2 -> 4"
    assert report.gaps[0]["until"] == books[2].ts
    assert [(t.px, t.side) for t in trades] == [(100.5, 1), (100.0, -1)]
    assert report.extra["ignored_heartbeats"] == 1


def test_empty_capture_is_unusable(tmp_path):
    p = _write(tmp_path, ["wss://ws-feed.pro.coinbase.com <-> 1618677816.8"])
    with pytest.raises(InputError, match="no data lines"):
        run([p])
