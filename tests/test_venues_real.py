"""Real Bybit and Hyperliquid captures (tests/data/venues/, provenance in its README.md) import
with books that never cross and equal, at every stored row, a rebuild written here from the raw
lines with plain dicts (independent of the readers and of `PriceLevelBook`).

* Bybit v2 `orderBookL2_25` (cryptofeed's 2021 recordings, inverse and USDT): a book by order
  id, `snapshot` resets it, `delta` applies delete / update / insert in that order; row ts =
  `timestamp_e6`, seq = `cross_seq`.
* Bybit v5 `orderbook.1` (cryptofeed PR #1085's 2025 recordings, linear and spot): a book by
  price, every message a snapshot (resets the book), `u` either the last + 1 or, for the
  venue's re-push of an unchanged book after 3 s, the same `u` with the same levels; row ts =
  `ts`, seq = `u`.
* Hyperliquid `l2Book` (hftbacktest's 2025 example capture): every message the whole book; an
  exact repeat of the previous message (the subscription's first book comes twice) is no row.

In cryptofeed's files only the bare `<seconds>: <json>` lines were received: `<url> <->` is a
connect, `<url> <- ts: json` a request the client sent, `<url> -> ts: json` an HTTP answer.
Every file symbol is imported on its own; the trades of the store are those of the raw messages,
one for one.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import load

VENUES = Path(__file__).parent / "data" / "venues"
ROOT = Path(__file__).resolve().parent.parent
V2_INVERSE = VENUES / "bybit_v2_inverse_orderBookL2_25_20210417.cryptofeed.gz"
V2_USDT = VENUES / "bybit_v2_usdt_orderBookL2_25_20210417_first1700lines.cryptofeed.gz"
V5_LINEAR = VENUES / "bybit_v5_linear_orderbook1_20250613.cryptofeed.gz"
V5_SPOT = VENUES / "bybit_v5_spot_orderbook1_20250613.cryptofeed.gz"
HL = VENUES / "hyperliquid_btc_20250126.hftbacktest.gz"

_RECEIVED = re.compile(r"^(\d+)\.(\d+): (\{.*)$")      # cryptofeed: a received message
_SENT_OR_HEADER = re.compile(r"^[a-z]+://\S+ (<->|<-|->) ")
_STAMPED = re.compile(r"^(\d{16,19}) (\{.*)$")         # hftbacktest: `<local_ns> <json>`


def raw(path: Path) -> dict:
    """The capture's lines, classified by hand: received messages (local ns, obj) and the
    cryptofeed connect / sent / HTTP lines."""
    out = {"received": [], "<->": 0, "<-": 0, "->": 0}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            m = _SENT_OR_HEADER.match(line)
            if m:
                out[m.group(1)] += 1
                continue
            m = _RECEIVED.match(line)
            if m:
                local = int(m.group(1)) * 10**9 + int((m.group(2) + "000000000")[:9])
                out["received"].append((local, json.loads(m.group(3))))
                continue
            m = _STAMPED.match(line)
            assert m, f"{path.name}: unexpected line {line[:80]!r}"
            out["received"].append((int(m.group(1)), json.loads(m.group(2))))
    return out


def top(levels: dict, depth: int, bids: bool):
    """price -> size dict -> (prices [depth] NaN-padded, sizes float32 [depth] 0-padded), best first."""
    px = sorted(levels, reverse=bids)[:depth]
    sz = [levels[p] for p in px]
    pad = depth - len(px)
    return np.array(px + [np.nan] * pad), np.array(sz + [0.0] * pad, np.float32)


def row_of(ts: int, seq: int, bids: dict, asks: dict, depth: int) -> tuple:
    bp, bs = top(bids, depth, True)
    ap, as_ = top(asks, depth, False)
    return ts, seq, bp, bs, ap, as_


def assert_store(book, want: list, what: str) -> None:
    """Every stored row equals the rebuild's, and no row is crossed or locked."""
    assert book.T == len(want), f"{what}: {book.T} rows stored, rebuild has {len(want)}"
    for i, (ts, seq, bp, bs, ap, as_) in enumerate(want):
        assert book.ts[i] == ts and book.seq[i] == seq, (what, i)
        assert np.array_equal(book.bid_px[i], bp, equal_nan=True), (what, i, book.bid_px[i], bp)
        assert np.array_equal(book.ask_px[i], ap, equal_nan=True), (what, i, book.ask_px[i], ap)
        assert np.array_equal(book.bid_sz[i], bs) and np.array_equal(book.ask_sz[i], as_), (what, i)
    both = np.isfinite(book.bid_px[:, 0]) & np.isfinite(book.ask_px[:, 0])
    assert both.all(), f"{what}: a row with an empty side"
    assert np.all(book.bid_px[both, 0] < book.ask_px[both, 0]), f"{what}: crossed or locked row"
    assert np.all(np.diff(book.ts) >= 0)


def assert_trades(book, want: list, what: str) -> None:
    """Stored trades == the raw ones (ts ns, px, qty, side), one for one, with equal count and sums."""
    tr = book.trades
    assert tr is not None and len(tr) == len(want), (what, None if tr is None else len(tr), len(want))
    ts, px, qty, side = (np.array(c) for c in zip(*want))
    assert np.array_equal(tr.ts, ts) and np.array_equal(tr.px, px), what
    assert np.array_equal(tr.qty, qty) and np.array_equal(tr.side, side), what
    assert tr.qty.sum() == qty.sum() and (tr.px * tr.qty).sum() == (px * qty).sum()
    assert int((tr.side == 1).sum()) == int((side == 1).sum())


def clean(rep, what: str) -> None:
    assert rep.gaps == [] and rep.resyncs == 0, (what, rep.gaps)
    assert rep.bad_lines == 0 and rep.crossed == 0 and rep.unsynced == 0, (what, rep)
    assert rep.time_backwards == 0 and "ts_clamped" not in rep.extra, (what, rep.extra)


# ---------------------------------------------------------------- Bybit v2 orderBookL2_25

def rebuild_v2(msgs, sym: str, depth: int):
    """Book by order id: id -> [side, price, size]; rows after every book message."""
    book = None
    rows = []
    for _, m in msgs:
        if m.get("topic") != f"orderBookL2_25.{sym}":
            continue
        d = m["data"]
        if m["type"] == "snapshot":
            levels = d["order_book"] if isinstance(d, dict) else d   # USDT: {"order_book": [...]}
            book = {e["id"]: [e["side"], e["price"], e["size"]] for e in levels}
            assert len(book) == len(levels)
        else:
            assert m["type"] == "delta" and book is not None
            for e in d["delete"]:
                del book[e["id"]]                      # an unknown id would be a KeyError here
            for e in d["update"]:
                lv = book[e["id"]]
                assert e.get("side", lv[0]) == lv[0] and float(e.get("price", lv[1])) == float(lv[1])
                lv[2] = e["size"]
            for e in d["insert"]:
                assert e["id"] not in book
                book[e["id"]] = [e["side"], e["price"], e["size"]]
        bids = {float(p): float(q) for s, p, q in book.values() if s == "Buy"}
        asks = {float(p): float(q) for s, p, q in book.values() if s == "Sell"}
        assert len(bids) + len(asks) == len(book), "two order ids at one price"
        rows.append(row_of(int(m["timestamp_e6"]) * 1000, int(m["cross_seq"]), bids, asks, depth))
    return rows


def trades_v2(msgs, sym: str):
    out = []
    for _, m in msgs:
        if m.get("topic") == f"trade.{sym}":
            out += [(int(t["trade_time_ms"]) * 10**6, float(t["price"]), float(t["size"]),
                     1 if t["side"] == "Buy" else -1) for t in m["data"]]
    return out


V2_CASES = [(V2_INVERSE, ["EOSUSD", "BTCUSD"], "inverse"),
            (V2_USDT, ["BCHUSDT", "XTZUSDT", "UNIUSDT", "LTCUSDT", "DOTUSDT", "LINKUSDT", "ADAUSDT", "ETHUSDT"],
             "linear")]


@pytest.mark.parametrize("path,symbols,market", V2_CASES, ids=["inverse", "usdt"])
def test_bybit_v2_orderbookl2_25_real_captures(tmp_path, path, symbols, market):
    cap = raw(path)
    msgs = cap["received"]
    assert cap["<->"] == 1 and cap["<-"] == 2 * len(symbols) and cap["->"] == 0  # subscribe: trade + book
    seen = {m["topic"].split(".", 1)[1] for _, m in msgs if "topic" in m}
    assert seen == set(symbols)
    depth = 25
    for sym in symbols:
        want = rebuild_v2(msgs, sym, depth)
        seqs = [r[1] for r in want]
        assert len(want) > 50 and all(b > a for a, b in zip(seqs, seqs[1:]))  # cross_seq increasing
        out = tmp_path / f"{sym}.zarr"
        rep = import_files([path], "bybit", out, depth=depth, symbol=sym, progress=False)
        book = load(out)
        assert_store(book, want, sym)
        assert_trades(book, trades_v2(msgs, sym), sym)
        clean(rep, sym)
        # the sent subscribe lines are skipped, not read: every received line is one message
        assert rep.messages == len(msgs) and rep.extra["sent_lines"] == cap["<-"]
        assert rep.extra["control_messages"] == sum("success" in m for _, m in msgs)
        assert rep.symbol == sym and book.attrs["market"] == market and book.attrs["exchange"] == "bybit"
        early = sum(t[0] < want[0][0] for t in trades_v2(msgs, sym))
        assert rep.extra.get("trades_before_first_book", 0) == early
        assert rep.duplicates == 0


# ---------------------------------------------------------------- Bybit v5 orderbook.1

def rebuild_v5(msgs, sym: str, depth: int):
    """Book by price; a snapshot resets it; size 0 deletes. Returns (rows, same-u re-pushes)."""
    bids, asks, last_u = {}, {}, None
    rows, same_u = [], 0
    for _, m in msgs:
        if m.get("topic") != f"orderbook.1.{sym}":
            continue
        d = m["data"]
        u = d["u"]
        before = (dict(bids), dict(asks))
        if m["type"] == "snapshot" or u == 1:
            bids, asks = {}, {}
        else:
            assert u == last_u + 1
        for side, book in (("b", bids), ("a", asks)):
            for p, q in d[side]:
                if float(q) == 0:
                    book.pop(float(p), None)
                else:
                    book[float(p)] = float(q)
        if last_u is not None:
            assert u in (last_u, last_u + 1), (sym, last_u, u)   # consecutive, or the venue's re-push
            if u == last_u:
                same_u += 1
                assert (bids, asks) == before, "a re-pushed snapshot changed the book"
        last_u = u
        rows.append(row_of(m["ts"] * 10**6, u, bids, asks, depth))
    return rows, same_u


V5_CASES = [(V5_LINEAR, ["BANDUSDT", "RADUSDT", "SNTUSDT", "AIOZUSDT"], "linear"),
            (V5_SPOT, ["OPUSDC", "TUSDUSDT", "KCSUSDT", "CPOOLUSDT", "ARBUSDC", "MASAUSDT"], "spot")]


@pytest.mark.parametrize("path,symbols,market", V5_CASES, ids=["linear", "spot"])
def test_bybit_v5_orderbook1_real_captures(tmp_path, path, symbols, market):
    cap = raw(path)
    msgs = cap["received"]
    assert cap["<->"] == 1 and cap["<-"] == len(symbols) and cap["->"] == 0
    assert all(m["type"] == "snapshot" for _, m in msgs if "topic" in m)
    # rows are stamped with Bybit's `ts` (the recording machine's clock ran 0.4-0.9 s behind it, so
    # most lines were "received" before their `ts`; some spot first snapshots carry a `ts` from
    # before the subscribe request was sent)
    assert sum(local < m["ts"] * 10**6 for local, m in msgs if "topic" in m) > len(msgs) // 2
    depth = 3  # the books hold one level a side: levels 2-3 are NaN / 0
    total_same_u = 0
    for sym in symbols:
        want, same_u = rebuild_v5(msgs, sym, depth)
        total_same_u += same_u
        out = tmp_path / f"{sym}.zarr"
        rep = import_files([path], "bybit", out, depth=depth, symbol=sym, progress=False)
        book = load(out)
        assert_store(book, want, sym)
        assert np.all(np.isnan(book.bid_px[:, 1:])) and np.all(book.ask_sz[:, 1:] == 0)
        assert set(np.diff(book.seq)) <= {0, 1}            # u consecutive, or repeated by a re-push
        clean(rep, sym)
        assert rep.duplicates == 0 and rep.messages == len(msgs) and rep.extra["sent_lines"] == len(symbols)
        assert rep.extra.get("same_u_snapshots", 0) == same_u and "same_u_snapshots_changed" not in rep.extra
        assert rep.extra["book_topic_depth"] == 1 and book.attrs["market"] == market
        assert book.trades is None or len(book.trades) == 0
    assert total_same_u == {"linear": 16, "spot": 45}[market]  # the re-pushes are really in these captures


# ---------------------------------------------------------------- Hyperliquid l2Book + trades

def rebuild_hl(msgs, depth: int):
    rows, last = [], None
    for _, m in msgs:
        if m["channel"] != "l2Book":
            continue
        d = m["data"]
        if d == last:       # the exact same message again: no new row
            continue
        last = d
        bids = {float(x["px"]): float(x["sz"]) for x in d["levels"][0]}
        asks = {float(x["px"]): float(x["sz"]) for x in d["levels"][1]}
        rows.append(row_of(d["time"] * 10**6, -1, bids, asks, depth))
    return rows


def test_hyperliquid_real_capture_through_the_command(tmp_path):
    cap = raw(HL)
    msgs = cap["received"]
    books = [m for _, m in msgs if m["channel"] == "l2Book"]
    tmsgs = [m for _, m in msgs if m["channel"] == "trades"]
    assert len(books) == 46 and len(tmsgs) == 9 and books[0] == books[1]   # the first book comes twice
    want = rebuild_hl(msgs, 20)
    assert len(want) == 45
    out = tmp_path / "hl.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "gpu_engine.data", "import", "--format", "hyperliquid",
                        "--out", str(out), "--quiet", str(HL)], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trades_before_first_book" in r.stdout
    book = load(out)
    assert book.attrs["depth"] == 20 and book.attrs["symbol"] == "BTC" and book.attrs["market"] == "perp"
    assert_store(book, want, "BTC")
    trades = [(t["time"] * 10**6, float(t["px"]), float(t["sz"]), 1 if t["side"] == "B" else -1)
              for m in tmsgs for t in m["data"]]
    assert len({t["tid"] for m in tmsgs for t in m["data"]}) == len(trades) == 64   # no repeats to drop
    assert all(a[0] <= b[0] for a, b in zip(trades, trades[1:]))
    assert_trades(book, trades, "BTC")
    # the trades subscription's first message replays the 30 trades before the first book: kept
    # (public at their times; the store orders trades by time only), counted and noted
    early = sum(t[0] < want[0][0] for t in trades)
    assert early == len(tmsgs[0]["data"]) == 30
    imp = book.attrs["import"]
    assert book.attrs["trades_before_first_book"] == early
    assert any("before the first book row" in n for n in book.attrs["import_notes"])
    assert imp["duplicates"] == 1 and imp["bad_lines"] == 0 and imp["crossed"] == 0 and book.attrs["gaps"] == []
