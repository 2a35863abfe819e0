"""Bybit reader: public order-book and trade streams, v5 and the older v2 -> book rows and trades.

Input: hftbacktest (`<local_ns> <json>`), cryptofeed raw captures or bare JSON lines, in any
mix (`feeds/mixed.py`); what `record --exchange bybit --raw` writes is the first shape plus a
`<url> <-> <seconds>` line at every connection. In a cryptofeed capture only the bare
`<seconds>: <json>` lines are received messages: `<url> <-> <seconds>` is a connect (every
book then waits for a fresh snapshot), `<url> <- <seconds>: <json>` a message the client sent
(its subscribe requests: skipped, counted in `extra["sent_lines"]`, never read as data) and
`<url> -> <seconds>: <json>` an HTTP answer (skipped, `extra["rest_lines"]`).

Checked on real captures (tests/data/venues/, tests/test_venues_real.py): cryptofeed's 2021
v2 `orderBookL2_25` inverse and USDT recordings and its 2025 v5 `orderbook.1` linear and
spot recordings import without a gap, never crossed, equal at every row to an independent
rebuild.

v5 (bybit-exchange.github.io/docs/v5/websocket/public/orderbook, .../trade):
* `{"topic": "orderbook.{depth}.{symbol}", "type": "snapshot"|"delta", "ts": ms, "data": {"s",
  "b": [[price, size]...], "a": [...], "u": update id, "seq": cross sequence}, "cts": ms}`.
  Sizes are absolute, "0" deletes. A snapshot resets the book (the subscription starts with
  one; Bybit re-sends one when its service needs to). `orderbook.1` is all snapshots, and
  one is pushed again with the same `u` after 3 s without a change: it is applied like any
  snapshot (a row at its later `ts`, seq = the same `u`) and counted in
  `extra["same_u_snapshots"]` (`extra["same_u_snapshots_changed"]`, noted, if its levels
  differ from the book's, which the venue says cannot happen). `u` is a per-topic sequence: a delta
  must carry u = last u + 1; `u` == 1 means the service restarted and the message is a full
  book, so it is applied as a snapshot whatever its `type`. A delta whose u is not above the
  last is a duplicate (ignored); any other jump is a gap: recorded (kind `id_gap`, `seq` =
  the last good u), no row until the next snapshot (Bybit's resync: resubscribe for a fresh
  snapshot -- what the recorder does; a capture resyncs at the next snapshot it holds).
  Rows: ts = `ts` (ms -> ns), seq = `u`, one row after every applied message.
  Several depths of one symbol in one file (hftbacktest's Bybit example capture holds
  orderbook.1 and orderbook.50 together): each depth is its own book with its own `u`; rows come from the deepest one
  found in the first `SCAN_LINES` lines of the input (noted); the others are counted in
  `extra["other_depth_messages"]`.
* `{"topic": "publicTrade.{symbol}", "type": "snapshot", "ts", "data": [{"T": ms, "s", "S":
  "Buy"|"Sell" (the taker's side), "v": size, "p": price, "i": trade id, "BT", ...}]}`:
  side Buy -> +1, Sell -> -1; ts = `T`. Trade ids are UUIDs (not ordered): a repeated id
  among the last `mixed.RECENT_IDS` is a duplicate.

v2 (the cryptofeed sample captures of 2021, `wss://stream.bybit.com/realtime` and
`/realtime_public`): `{"topic": "orderBookL2_25.{symbol}" (or "orderBook_200.100ms.{symbol}"),
"type": "snapshot", "data": [levels] | {"order_book": [levels]}, "cross_seq", "timestamp_e6"}`
then `"type": "delta", "data": {"delete": [...], "update": [...], "insert": [...]}` applied in
that order; a level is `{"id", "price", "side": "Buy"|"Sell", "size", "symbol"}` and the
order id names the price level: the reader keeps id -> (side, price), so a delete or update
may omit the price. A delete or update of an id the book does not hold means the book is
wrong: a gap until the next snapshot. ts = `timestamp_e6` (us -> ns), seq = `cross_seq`
(not continuous: no sequence check). Trades `trade.{symbol}`: `trade_time_ms`, `side` (taker),
`size`, `price`, `trade_id`.

Trades stamped before the symbol's first book row (the first v2 pushes after a subscribe
hold trades from before it) are kept and counted (`mixed.count_early_trades`).

Book known wrong -> no rows until the symbol's next snapshot, recorded as a gap: an id gap,
a malformed level (non-number, negative size), a crossed or locked book, a line that does
not parse but names the book topic, a reconnect header. Without --symbol the first symbol
seen is selected (noted). Store attrs: exchange "bybit", market ("linear", "inverse",
"spot" from the connection URL, else from the trades' `L` tick-direction field, which only
derivatives carry), tick_size / lot_size (the finest step in the first snapshot).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.book import LevelError, parse_levels
from gpu_engine.data.books.feeds.coinbase import (BAD, CONNECT, MAX_LISTED_BAD, BookState, Picker, TradeClock,
                                                  tick_step)
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import iter_lines
from gpu_engine.data.books.feeds.mixed import RecentIds, count_early_trades, iter_mixed

SCAN_LINES = 5000        # lines per file looked at to find the deepest orderbook topic
V5_BOOK = re.compile(r"^orderbook\.(\d+)\.(.+)$")
V2_BOOK = re.compile(r"^(?:orderBookL2_\d+|orderBook_\d+\.\d+ms)\.(.+)$")
_TOPIC_RAW = re.compile(rb'"topic"\s*:\s*"([^"]+)"')
_SCAN_RE = re.compile(rb'"topic"\s*:\s*"orderbook\.(\d+)\.')
_SIDES = {"Buy": True, "Sell": False}
_IGNORED = {"tickers", "kline", "liquidation", "allLiquidation", "lt", "insurance",   # v5
            "instrument_info", "klineV2"}                                           # v2
_MARKETS = {"linear": "linear", "spot": "spot", "inverse": "inverse", "option": "option",
            "realtime_public": "linear", "realtime": "inverse"}


def deepest_book_depth(paths) -> int | None:
    """The largest N of the `orderbook.N.*` topics in the first SCAN_LINES lines of each file."""
    best = None
    for path in paths:
        scratch = ImportReport()
        try:
            for lineno, line in iter_lines(path, scratch):
                m = _SCAN_RE.search(line, 0, 200)
                if m:
                    best = max(best or 0, int(m.group(1)))
                if lineno >= SCAN_LINES:
                    break
        except Exception:  # unreadable: the real read says so
            continue
    return best


def market_from_url(url) -> str | None:
    """'wss://stream.bybit.com/v5/public/linear' -> 'linear'; v2 '.../realtime_public' -> 'linear'."""
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    tail = str(url).rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return _MARKETS.get(tail)


class _Book(BookState):
    """One symbol's book (one topic); v2 adds order id -> (is_bid, price)."""

    def __init__(self, report: ImportReport):
        super().__init__(report)
        self.ids: dict = {}


def _count_level_error(report: ImportReport, exc: LevelError) -> None:
    if exc.kind == "negative_size":
        report.negative_sizes += 1
    else:
        report.bad_lines += 1
    report.note(str(exc)[:160])


def read(paths: list[Path], depth: int, symbol: str | None, report: ImportReport,
         lines=None, book_depth: int | None = None, market: str | None = None) -> Iterator[BookRow | TradeRow]:
    """The `bybit` reader (registered in `gpu_engine.data.books.importers.FORMATS`).

    `lines`: instead of reading `paths`, iterate these `(kind, path, lineno, local_ts, obj)`
    tuples (what `feeds.mixed.iter_mixed` yields) -- the live recorder's feed.
    `book_depth`: the orderbook.N topic to build rows from (default: the deepest in the input).
    `market`: store attr when the caller knows it (the recorder does).
    """
    return count_early_trades(_read(paths, depth, symbol, report, lines, book_depth, market), report)


def _read(paths, depth, symbol, report: ImportReport, lines, book_depth, market) -> Iterator[BookRow | TradeRow]:
    report.extra.setdefault("exchange", "bybit")
    if market:
        report.extra["market"] = market
    pick = Picker(symbol, report)
    if lines is None:
        if book_depth is None:
            book_depth = deepest_book_depth(paths)
            if book_depth is not None:
                report.extra["book_topic_depth"] = book_depth
        lines = iter_mixed(paths, report)
    books: dict[str, _Book] = {}
    clocks: dict[str, TradeClock] = {}
    recent: dict[str, RecentIds] = {}
    depth_noted = False

    def state(sym: str) -> _Book:
        st = books.get(sym)
        if st is None:
            st = books[sym] = _Book(report)
        return st

    for kind, path, lineno, local, obj in lines:
        if kind == CONNECT:
            if "market" not in report.extra and market_from_url(obj):
                report.extra["market"] = market_from_url(obj)
            for st in books.values():
                st.lose(st.last_ts or 0, "reconnect: new connection", kind="reconnect", file=str(path), line=lineno)
            continue
        if kind == BAD:
            m = _TOPIC_RAW.search(obj)
            topic = m.group(1).decode("utf-8", "replace") if m else None
            if topic is not None and not (V5_BOOK.match(topic) or V2_BOOK.match(topic)):
                continue  # a damaged trade / ticker line: no book is affected
            sym = topic.rsplit(".", 1)[-1] if topic else None
            for name, st in books.items():
                if sym is None or name == sym:
                    st.lose(st.last_ts or 0, "unparseable line", kind="bad_line", file=str(path), line=lineno)
            continue
        report.messages += 1
        book_sym = None
        try:
            topic = obj.get("topic")
            if not isinstance(topic, str):
                if "success" in obj or "op" in obj or "ret_msg" in obj or "request" in obj:
                    if obj.get("success") is False:
                        report.count("error_messages")
                        report.note(f"{path.name}:{lineno}: Bybit refused a request: "
                                    f"{str(obj.get('ret_msg'))[:100]}")
                    else:
                        report.count("control_messages")  # subscribe acks, pongs
                    continue
                raise ValueError(sniff.not_this("bybit", obj))
            m = V5_BOOK.match(topic)
            if m:
                n, sym = int(m.group(1)), m.group(2)
                if not pick.keep(sym):
                    continue
                if book_depth is None:
                    book_depth = n
                    report.extra["book_topic_depth"] = n
                if n != book_depth:
                    report.count("other_depth_messages")
                    if not depth_noted:
                        depth_noted = True
                        report.note(f"several order-book depths in the input: rows from orderbook.{book_depth}, "
                                    f"other depths (e.g. orderbook.{n}) counted in other_depth_messages")
                    continue
                book_sym = sym
                row = _v5_book(obj, state(sym), sym, depth, report, path, lineno, local)
                if row is not None:
                    yield row
                continue
            m = V2_BOOK.match(topic)
            if m:
                sym = m.group(1)
                if not pick.keep(sym):
                    continue
                book_sym = sym
                row = _v2_book(obj, state(sym), sym, depth, report, path, lineno, local)
                if row is not None:
                    yield row
                continue
            name, _, sym = topic.partition(".")
            if name == "publicTrade":
                for t in _as_list(obj.get("data")):
                    s = t.get("s", sym)
                    if not pick.keep(s):
                        continue
                    if "market" not in report.extra and isinstance(s, str):
                        report.extra["market"] = (("linear" if s.endswith(("USDT", "USDC", "PERP")) else "inverse")
                                                  if "L" in t else "spot")
                        report.note(f"market {report.extra['market']} inferred from the trades' fields "
                                    "(derivative trades carry a tick direction 'L', spot ones do not)")
                    # published at the message's ts (v5), matched at the trade's T
                    row = _trade(s, t.get("T"), t.get("p"), t.get("v"), t.get("S"), t.get("i"),
                                 clocks, recent, report, publish_ms=obj.get("ts"))
                    if row is not None:
                        yield row
            elif name == "trade":  # v2
                for t in _as_list(obj.get("data")):
                    s = t.get("symbol", sym)
                    if not pick.keep(s):
                        continue
                    row = _trade(s, t.get("trade_time_ms"), t.get("price"), t.get("size"), t.get("side"),
                                 t.get("trade_id"), clocks, recent, report)
                    if row is not None:
                        yield row
            elif name in _IGNORED or name.startswith("orderbook"):
                report.count(f"ignored_{name}")
            else:
                raise ValueError(f"unknown topic {topic!r}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            report.bad_lines += 1
            report.count("unknown_or_malformed_messages")
            if report.extra["unknown_or_malformed_messages"] <= MAX_LISTED_BAD:
                report.note(f"{path.name}:{lineno}: "
                            + (f"field {exc.args[0]!r} missing" if isinstance(exc, KeyError) else str(exc)[:160]))
            st = books.get(book_sym) if book_sym is not None else None
            if st is not None:
                st.lose(st.last_ts or 0, "malformed book message", kind="bad_line", file=str(path), line=lineno)
    if pick.want:
        report.extra.setdefault("symbol", pick.want)


def _as_list(data) -> list:
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ValueError("trade message: data is not a list of trades")
    return data


def _ms(value, field: str) -> int:
    """An epoch-ms int (or digit string) -> ns."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"field {field!r}: not an epoch-ms integer ({value!r})")
    return int(value) * 1_000_000


def _snapshot_meta(report: ImportReport, bids, asks) -> None:
    if "tick_size" not in report.extra and bids and asks:
        report.extra["tick_size"] = tick_step(p for p, _ in bids[:50] + asks[:50])
        report.extra["lot_size"] = tick_step(q for _, q in bids[:50] + asks[:50])


def _refuse_snapshot(st: _Book, ts: int, path, lineno) -> None:
    """A crossed or locked snapshot: the book is wrong until the next one (a gap, opened once)."""
    st.report.crossed += 1
    if st.open_gap is None:
        st.synced = True  # lose() records a gap only from a synced book
        st.lose(ts, "crossed snapshot", kind="crossed", file=str(path), line=lineno)
    st.synced = False


def _v5_book(obj, st: _Book, sym, depth, report, path, lineno, local) -> BookRow | None:
    mtype = obj.get("type")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise ValueError("orderbook message: data is not an object")
    ts = _ms(obj.get("ts"), "ts")
    u = data.get("u")
    if isinstance(u, bool) or not isinstance(u, int):
        raise ValueError(f"orderbook message: update id u not an integer ({u!r})")
    if mtype not in ("snapshot", "delta"):
        raise ValueError(f"unknown orderbook message type {mtype!r}")
    snapshot = mtype == "snapshot" or u == 1
    if not snapshot:
        if not st.synced:
            report.unsynced += 1
            return None
        if u <= st.last_seq:
            report.duplicates += 1
            return None
        if u != st.last_seq + 1:
            st.lose(ts, f"update id gap: u {st.last_seq} -> {u}", kind="id_gap", seq=st.last_seq,
                    file=str(path), line=lineno)
            return None
    try:
        bids, asks = parse_levels(data["b"], "b"), parse_levels(data["a"], "a")
    except LevelError as exc:
        _count_level_error(report, exc)
        st.lose(ts, "malformed level", kind="bad_line", file=str(path), line=lineno)
        return None
    if snapshot:
        if u == 1 and st.last_seq > 1:
            report.count("service_restart_snapshots")
        before = st.book.levels() if st.synced and u == st.last_seq else None
        st.book.apply_snapshot(bids, asks)
        if before is not None:  # orderbook.1 re-pushes an unchanged book with the same u
            report.count("same_u_snapshots")
            if st.book.levels() != before:
                report.count("same_u_snapshots_changed")
                report.note(f"{path.name}:{lineno}: {sym}: a snapshot with the same u {u} as the book "
                            "but other levels (applied: a snapshot resets the book)")
        _snapshot_meta(report, bids, asks)
        if st.book.crossed():
            _refuse_snapshot(st, ts, path, lineno)
            return None
        st.resync(ts)
    else:
        st.book.update(bids, asks)
    st.last_seq = u
    return st.row(ts, u, local, depth, sym)


def _v2_levels(entries, field: str, need_size: bool, ids: dict | None = None):
    """v2 level dicts -> [(id, is_bid, price, size)] (price from `ids` when the entry has none)."""
    out = []
    for e in entries:
        if not isinstance(e, dict) or "id" not in e:
            raise LevelError("bad_number", f"{field}: not a level with an id: {e!r}")
        oid = e["id"]
        known = ids.get(oid) if ids is not None else None
        side = _SIDES.get(e.get("side")) if "side" in e else (known[0] if known else None)
        if side is None:
            raise LevelError("bad_number", f"{field}: side {e.get('side')!r} of id {oid!r}")
        price = e.get("price", known[1] if known else None)
        size = e.get("size", 0) if not need_size else e.get("size")
        (p, q), = parse_levels([(price, size)], field)
        out.append((oid, side, p, q))
    return out


def _v2_book(obj, st: _Book, sym, depth, report, path, lineno, local) -> BookRow | None:
    mtype = obj.get("type")
    data = obj.get("data")
    stamp = obj.get("timestamp_e6")
    ts = int(stamp) * 1_000 if isinstance(stamp, (int, str)) and str(stamp).isdigit() else local
    if ts is None or ts < 0:
        raise ValueError("orderbook message without timestamp_e6 (and no receive stamp)")
    cs = obj.get("cross_seq")
    seq = int(cs) if isinstance(cs, (int, str)) and str(cs).isdigit() else -1
    try:
        if mtype == "snapshot":
            rows = data.get("order_book") if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise ValueError("orderbook snapshot: data is not a list of levels")
            levels = _v2_levels(rows, "snapshot", True)
            st.ids = {oid: (side, p) for oid, side, p, q in levels}
            bids = [(p, q) for _, side, p, q in levels if side]
            asks = [(p, q) for _, side, p, q in levels if not side]
            st.book.apply_snapshot(bids, asks)
            _snapshot_meta(report, sorted(bids, reverse=True), sorted(asks))
            if st.book.crossed():
                _refuse_snapshot(st, ts, path, lineno)
                return None
            st.resync(ts)
            return st.row(ts, seq, local, depth, sym)
        if mtype != "delta":
            raise ValueError(f"unknown orderbook message type {mtype!r}")
        if not isinstance(data, dict):
            raise ValueError("orderbook delta: data is not an object")
        if not st.synced:
            report.unsynced += 1
            return None
        bids, asks = [], []
        for oid, side, p, _ in _v2_levels(data.get("delete", ()), "delete", False, st.ids):
            if st.ids.pop(oid, None) is None:
                st.lose(ts, f"delete of unknown order id {oid!r}", kind="unknown_id", file=str(path), line=lineno)
                return None
            (bids if side else asks).append((p, 0.0))
        for oid, side, p, q in _v2_levels(data.get("update", ()), "update", True, st.ids):
            if oid not in st.ids:
                st.lose(ts, f"update of unknown order id {oid!r}", kind="unknown_id", file=str(path), line=lineno)
                return None
            st.ids[oid] = (side, p)
            (bids if side else asks).append((p, q))
        for oid, side, p, q in _v2_levels(data.get("insert", ()), "insert", True, st.ids):
            st.ids[oid] = (side, p)
            (bids if side else asks).append((p, q))
    except LevelError as exc:
        _count_level_error(report, exc)
        st.lose(ts, "malformed level", kind="bad_line", file=str(path), line=lineno)
        return None
    st.book.update(bids, asks)  # in message order: delete, update, insert
    return st.row(ts, seq, local, depth, sym)


def _trade(sym, t_ms, px, qty, side, trade_id, clocks: dict, recent: dict, report: ImportReport,
           publish_ms=None) -> TradeRow | None:
    """A trade row: `ts` is the publish time (the message's `ts` when given, never before the
    match time), `match_ts` the matching time `T`."""
    match = _ms(t_ms, "T")
    ts = max(match, _ms(publish_ms, "ts")) if publish_ms is not None else match
    try:
        (p, q), = parse_levels([(px, qty)], "trade")
    except LevelError as exc:
        _count_level_error(report, exc)
        return None
    s = _SIDES.get(side)
    if s is None:
        raise ValueError(f"trade side {side!r} (want Buy or Sell)")
    ids = recent.get(sym)
    if ids is None:
        ids = recent[sym] = RecentIds()
    if trade_id is not None and not ids.add(trade_id):
        report.duplicates += 1
        return None
    clock = clocks.get(sym)
    if clock is None:
        clock = clocks[sym] = TradeClock(report)
    ts = clock.accept(None, ts)  # ids are not ordered: time only
    if ts is None:
        return None
    return TradeRow(ts, p, q, 1 if s else -1, sym, match if publish_ms is not None else -1)  # side = the taker's
