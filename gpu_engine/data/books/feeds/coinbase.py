"""Coinbase reader: cryptofeed captures of the Exchange `level2`/`matches` channels and of
Advanced Trade `level2` (`l2_data`) / `market_trades` -> book rows and trades.

Capture lines (see feeds/jsonl.py): `<float seconds>: <json>`; connection headers
`wss://... <-> ts` start a connection (every book must then be rebuilt from a fresh
snapshot, and the Advanced Trade `sequence_num` restarts); `wss://... <- ts: {sent}`
lines are skipped. `iter_cryptofeed` (also used by the OKX reader) walks them; it is
here because `jsonl.iter_capture` hides connection headers and the raw text of bad lines.

Exchange feed (Coinbase Exchange WebSocket docs, `level2` channel): `snapshot` {product_id, bids, asks} then
`l2update` {product_id, time, changes: [[side buy|sell, price, new absolute size]]}.
level2 has no sequence number: seq = -1 (or the message's `sequence` when present,
updates with a `sequence` not above the last are ignored as stale). The snapshot has no
exchange time, so it emits no row; the first row is after the first l2update
(ts = its `time`, ISO-8601 -> ns exactly).

Advanced Trade: {channel "l2_data", timestamp, sequence_num, events: [{type snapshot|update,
product_id, updates: [{side bid|offer, price_level, new_quantity}]}]}. `sequence_num`
counts every message of the connection: a jump is a gap for every book (no rows until
each product's next snapshot); a repeat/older number is a duplicate and is ignored.
A snapshot emits a row at the message `timestamp`.

Trades: Exchange `match` / `last_match` carry `side` = the MAKER order's side (Coinbase
docs: "a sell side match is an up-tick"), so the aggressor is the opposite:
side "sell" -> +1 buyer-initiated, "buy" -> -1. Checked on the 2021 capture: every
`ticker` (whose `side` is the taker side) has the opposite side of the `last_match`/
`match` with the same trade_id. Advanced Trade `market_trades` are read with the same
maker-side convention (as NautilusTrader's Coinbase adapter does; no sample here to
verify it). Trades whose trade_id is not above the product's last are duplicates.

Book known wrong -> no rows until the product's next snapshot, recorded as a gap:
a malformed level (non-number, unknown side; counted in bad_lines), a negative size
(negative_sizes), a crossed/locked book after an update (crossed), an unparseable line
that names the product (or, if it names none, every book; a line recognisably of a
non-book type affects none), a reconnect, a
sequence_num jump. Without --symbol the first product seen is selected (noted);
other products' messages are counted in extra["other_symbol"].
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.book import LevelError, PriceLevelBook, parse_levels
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import LOCAL_TS_TOLERANCE_NS, iter_lines, split_cryptofeed_line

TS_JITTER_NS = 1_000_000_000  # exchange time may step back this much per product (clamped)
CONNECT = "connect"           # iter_cryptofeed kinds
BAD = "bad"
MESSAGE = "message"
MAX_LISTED_BAD = 5

_PRODUCT_RE = re.compile(rb'"(?:product_id|instId)"\s*:\s*"([^"]+)"')
_KIND_RE = re.compile(rb'"(?:type|channel)"\s*:\s*"([^"]+)"')
_day_ns: dict[str, int] = {}


def iter_cryptofeed(paths, report: ImportReport) -> Iterator[tuple[str, Path, int, int, object]]:
    """(kind, path, lineno, local_ts_ns, payload) over cryptofeed capture files.

    kind CONNECT: a `wss://... <->` header (payload: the url bytes); BAD: a line that is
    not `<seconds>: <json>` (payload: the raw bytes; counted in bad_lines and noted);
    MESSAGE: parsed JSON. A file with no message at all raises InputError.
    """
    last_local = None
    for path in map(Path, paths):
        good = 0
        first_bad = None
        for lineno, line in iter_lines(path, report):
            if not line.strip():
                continue
            try:
                parts = split_cryptofeed_line(line)
                if parts is None:
                    if b" <-> " in line:
                        yield CONNECT, path, lineno, -1, line.split(b" ", 1)[0]
                    else:
                        report.count("header_lines")
                    continue
                local, payload = parts
                obj = json.loads(payload)
                if not isinstance(obj, dict):
                    raise ValueError("JSON is not an object")
            except (ValueError, UnicodeDecodeError) as exc:
                report.bad_lines += 1
                first_bad = first_bad or (lineno, exc)
                if report.bad_lines <= MAX_LISTED_BAD:
                    report.note(f"{path.name}:{lineno}: bad line ({str(exc)[:80]})")
                yield BAD, path, lineno, -1, line
                continue
            good += 1
            if last_local is not None and local < last_local - LOCAL_TS_TOLERANCE_NS:
                report.time_backwards += 1
                report.count("local_ts_backwards")
            else:
                last_local = local if last_local is None else max(last_local, local)
            yield MESSAGE, path, lineno, local, obj
        if good == 0:
            if first_bad is None:
                raise InputError.at(path, None, None, "no data lines (empty file?)")
            raise InputError.at(path, first_bad[0], None, f"no usable line in file; first: {first_bad[1]}")


def product_in(raw: bytes) -> str | None:
    """The product/instrument named in a line that did not parse, if recognisable."""
    m = _PRODUCT_RE.search(raw)
    return m.group(1).decode("utf-8", "replace") if m else None


def kind_in(raw: bytes) -> str | None:
    """The first `type` / `channel` value named in a line that did not parse, if any."""
    m = _KIND_RE.search(raw)
    return m.group(1).decode("utf-8", "replace") if m else None


def iso_to_ns(text: str) -> int:
    """'2021-04-17T16:43:37.075687Z' (up to 9 decimals, Z or +00:00) -> epoch ns, exactly."""
    if not isinstance(text, str) or len(text) < 19 or text[10] not in "T " or text[4] != "-":
        raise ValueError(f"not an ISO-8601 time: {text!r}")
    day = text[:10]
    base = _day_ns.get(day)
    if base is None:
        d = _dt.date.fromisoformat(day)
        base = (d - _dt.date(1970, 1, 1)).days * 86_400 * 1_000_000_000
        _day_ns[day] = base
    h, m, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
    rest = text[19:]
    frac = 0
    if rest.startswith("."):
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac = int((rest[1:i] + "000000000")[:9])
        rest = rest[i:]
    if rest not in ("Z", "", "+00:00"):
        raise ValueError(f"time not in UTC: {text!r}")
    return base + ((h * 60 + m) * 60 + s) * 1_000_000_000 + frac


class Picker:
    """The one product the rows are for: --symbol, or the first one seen (noted)."""

    def __init__(self, symbol: str | None, report: ImportReport):
        self.want = symbol
        self.report = report

    def keep(self, product) -> bool:
        if not isinstance(product, str):
            return False
        if self.want is None:
            self.want = product
            self.report.symbol = product
            self.report.note(f"no --symbol given: selected {product}, the first symbol seen")
        if product.upper() != self.want.upper():
            self.report.count("other_symbol")
            return False
        self.report.symbol = product
        return True


class BookState:
    """One product's book plus its sync state, gap bookkeeping and row clock."""

    def __init__(self, report: ImportReport):
        self.book = PriceLevelBook()
        self.report = report
        self.synced = False
        self.open_gap: dict | None = None
        self.last_ts: int | None = None
        self.last_seq = -1

    def lose(self, ts: int, reason: str, **info) -> None:
        """The book is known wrong from `ts`: no rows until the next snapshot."""
        if self.synced:
            self.synced = False
            self.report.add_gap(ts, reason, **info)
            self.open_gap = self.report.gaps[-1]

    def resync(self, ts: int) -> None:
        if self.open_gap is not None:
            self.open_gap["until"] = int(ts)
            self.report.resyncs += 1
            self.open_gap = None
        self.synced = True

    def row(self, ts: int, seq: int, local: int, depth: int, symbol: str) -> BookRow | None:
        """The top-`depth` row at `ts`, or None (crossed -> gap; time far backwards)."""
        if self.book.crossed():
            self.report.crossed += 1
            self.lose(ts, "crossed book")
            return None
        if self.last_ts is not None and ts < self.last_ts:
            if self.last_ts - ts > TS_JITTER_NS:
                self.report.time_backwards += 1
                return None
            self.report.count("ts_clamped")
            ts = self.last_ts
        self.last_ts = ts
        bid_px, ask_px, bid_sz, ask_sz = self.book.top(depth)
        return BookRow(ts, seq, bid_px, ask_px, bid_sz, ask_sz, local, symbol)


class TradeClock:
    """Per-product trade dedupe (by increasing trade id) and non-decreasing trade time."""

    def __init__(self, report: ImportReport):
        self.report = report
        self.last_id: int | None = None
        self.last_ts: int | None = None

    def accept(self, trade_id, ts: int) -> int | None:
        try:
            tid = int(trade_id)
        except (TypeError, ValueError):
            tid = None
        if tid is not None:
            if self.last_id is not None and tid <= self.last_id:
                self.report.duplicates += 1
                return None
            self.last_id = tid
        if self.last_ts is not None and ts < self.last_ts:
            if self.last_ts - ts > TS_JITTER_NS:
                self.report.time_backwards += 1
                return None
            ts = self.last_ts
        self.last_ts = ts
        return ts


def _count_level_error(report: ImportReport, exc: LevelError) -> None:
    if exc.kind == "negative_size":
        report.negative_sizes += 1
    else:
        report.bad_lines += 1
    report.note(str(exc)[:160])


_SIDES = {"buy": True, "bid": True, "sell": False, "offer": False, "ask": False}
_IGNORED = {"ticker", "ticker_batch", "subscriptions", "heartbeat", "heartbeats", "status",
            "received", "open", "done", "change", "activate", "candles"}


def read(paths: list[Path], depth: int, symbol: str | None,
         report: ImportReport, lines=None) -> Iterator[BookRow | TradeRow]:
    """Coinbase Exchange level2/matches and Advanced Trade l2_data/market_trades -> rows.

    `lines`: instead of reading `paths`, iterate these `(kind, path, lineno, local_ts, obj)`
    tuples (the shape `iter_cryptofeed` yields); the live recorder feeds frames this way.
    """
    report.extra.setdefault("exchange", "coinbase")
    pick = Picker(symbol, report)
    books: dict[str, BookState] = {}
    trades: dict[str, TradeClock] = {}
    at_seq: int | None = None  # Advanced Trade sequence_num of this connection

    def state(product: str) -> BookState:
        st = books.get(product)
        if st is None:
            st = books[product] = BookState(report)
        return st

    if lines is None:
        lines = iter_cryptofeed(paths, report)
    for kind, path, lineno, local, obj in lines:
        if kind == CONNECT:
            at_seq = None
            for st in books.values():
                st.lose(st.last_ts or 0, "reconnect: new connection", file=str(path), line=lineno)
            continue
        if kind == BAD:
            if kind_in(obj) not in (None, "snapshot", "l2update", "l2_data", "update"):
                continue  # a damaged ticker / match line: no book is affected
            product = product_in(obj)
            for name, st in books.items():
                if product is None or name == product:
                    st.lose(st.last_ts or 0, "unparseable line", file=str(path), line=lineno)
            continue
        report.messages += 1
        try:
            if "channel" in obj and "events" in obj:
                # ---- Advanced Trade
                channel = obj.get("channel")
                seq = obj.get("sequence_num")
                if isinstance(seq, int):
                    if at_seq is not None and seq <= at_seq:
                        report.duplicates += 1
                        continue
                    if at_seq is not None and seq != at_seq + 1:
                        for st in books.values():
                            st.lose(st.last_ts or 0, f"sequence_num jump {at_seq} -> {seq}",
                                    file=str(path), line=lineno)
                    at_seq = seq
                if channel == "l2_data":
                    ts = iso_to_ns(obj.get("timestamp"))
                    for ev in obj["events"]:
                        product = ev.get("product_id")
                        if not pick.keep(product):
                            continue
                        st = state(product)
                        etype = ev.get("type")
                        if etype not in ("snapshot", "update"):
                            raise ValueError(f"unknown l2_data event type {etype!r}")
                        if etype == "update" and not st.synced:
                            report.unsynced += 1
                            continue
                        try:
                            bids, asks = [], []
                            for u in ev["updates"]:
                                side = _SIDES.get(u.get("side"))
                                if side is None:
                                    raise LevelError("bad_number", f"unknown side {u.get('side')!r}")
                                (bids if side else asks).append((u["price_level"], u["new_quantity"]))
                            bids, asks = parse_levels(bids, "bid"), parse_levels(asks, "offer")
                        except LevelError as exc:
                            _count_level_error(report, exc)
                            st.lose(ts, "malformed level", file=str(path), line=lineno)
                            continue
                        if etype == "snapshot":
                            st.book.apply_snapshot(bids, asks)
                            st.resync(ts)
                        else:
                            st.book.update(bids, asks)
                        row = st.row(ts, seq if isinstance(seq, int) else -1, local, depth, product)
                        if row is not None:
                            yield row
                elif channel == "market_trades":
                    for ev in obj["events"]:
                        for t in ev.get("trades", ()):
                            row = _trade(t, pick, trades, report, t.get("side"))
                            if row is not None:
                                yield row
                elif channel in _IGNORED:
                    report.count(f"ignored_{channel}")
                else:
                    raise ValueError(f"unknown channel {channel!r}")
                continue
            # ---- Exchange feed
            mtype = obj.get("type")
            if mtype in ("l2update", "snapshot") and not isinstance(obj.get("product_id"), str):
                raise ValueError(sniff.not_this("coinbase-jsonl", obj))  # e.g. a Bybit snapshot
            if mtype == "l2update":
                product = obj.get("product_id")
                if not pick.keep(product):
                    continue
                st = state(product)
                if not st.synced:
                    report.unsynced += 1
                    continue
                ts = iso_to_ns(obj.get("time"))
                seq = obj.get("sequence", -1)
                if isinstance(seq, int) and seq >= 0:
                    if seq <= st.last_seq:
                        report.stale += 1
                        continue
                    st.last_seq = seq
                else:
                    seq = -1
                try:
                    bids, asks = [], []
                    for ch in obj["changes"]:
                        side = _SIDES.get(ch[0]) if isinstance(ch, list) and ch else None
                        if side is None or len(ch) != 3:
                            raise LevelError("bad_number", f"changes: not [buy|sell, price, size]: {ch!r}")
                        (bids if side else asks).append(ch[1:])
                    bids, asks = parse_levels(bids, "changes"), parse_levels(asks, "changes")
                except LevelError as exc:
                    _count_level_error(report, exc)
                    st.lose(ts, "malformed change", file=str(path), line=lineno)
                    continue
                st.book.update(bids, asks)
                row = st.row(ts, seq, local, depth, product)
                if row is not None:
                    yield row
            elif mtype == "snapshot":
                product = obj.get("product_id")
                if not pick.keep(product):
                    continue
                st = state(product)
                try:
                    bids = parse_levels(obj["bids"], "bids")
                    asks = parse_levels(obj["asks"], "asks")
                except LevelError as exc:
                    _count_level_error(report, exc)
                    st.lose(st.last_ts or local, "malformed snapshot", file=str(path), line=lineno)
                    continue
                st.book.apply_snapshot(bids, asks)
                st.last_seq = obj.get("sequence", -1) if isinstance(obj.get("sequence"), int) else -1
                st.resync(local)  # the snapshot has no exchange time: the gap ends at its receive time
                if "tick_size" not in report.extra and bids and asks:
                    report.extra["tick_size"] = tick_step(p for p, _ in bids[:50] + asks[:50])
            elif mtype in ("match", "last_match"):
                row = _trade(obj, pick, trades, report, obj.get("side"))
                if row is not None:
                    yield row
            elif mtype == "error":
                report.note(f"{path.name}:{lineno}: exchange error message: {str(obj.get('message'))[:100]}")
                report.count("error_messages")
            elif mtype in _IGNORED:
                report.count(f"ignored_{mtype}")
            elif mtype is None or sniff.identify(obj) != "coinbase-jsonl":
                raise ValueError(sniff.not_this("coinbase-jsonl", obj))
            else:
                raise ValueError(f"unknown message type {mtype!r}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            report.bad_lines += 1
            report.count("unknown_or_malformed_messages")
            if report.extra["unknown_or_malformed_messages"] <= MAX_LISTED_BAD:
                report.note(f"{path.name}:{lineno}: "
                            + (f"field {exc.args[0]!r} missing" if isinstance(exc, KeyError) else str(exc)[:160]))
            product = obj.get("product_id") if isinstance(obj, dict) else None
            for name, st in books.items():
                if name == product and obj.get("type") in ("l2update", "snapshot"):
                    st.lose(st.last_ts or 0, "malformed message", file=str(path), line=lineno)


def _trade(t: dict, pick: Picker, trades: dict, report: ImportReport, maker_side) -> TradeRow | None:
    product = t.get("product_id")
    if not pick.keep(product):
        return None
    ts = iso_to_ns(t.get("time"))
    try:
        (px, qty), = parse_levels([(t["price"], t["size"])], "trade")
    except LevelError as exc:
        _count_level_error(report, exc)
        return None
    side = str(maker_side).lower()
    if side not in ("buy", "sell"):
        raise ValueError(f"trade side {maker_side!r}")
    clock = trades.get(product)
    if clock is None:
        clock = trades[product] = TradeClock(report)
    ts = clock.accept(t.get("trade_id"), ts)
    if ts is None:
        return None
    # `side` is the maker's: a resting sell filled means a buyer took it
    return TradeRow(ts, px, qty, 1 if side == "sell" else -1, product)


def tick_step(values, scale: int = 10**8) -> float | None:
    """Largest multiple of 1e-8 dividing every value: the tick size seen in a snapshot."""
    g = 0
    for v in values:
        g = math.gcd(g, int(round(v * scale)))
        if g == 1:
            break
    return g / scale if g else None
