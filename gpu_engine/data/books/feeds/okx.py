"""OKX v5 reader: cryptofeed captures of `books` (and `books-l2-tbt`, `books50-l2-tbt`) and
`trades` -> book rows and trades, with the CRC32 checksum verified on every book message.

Message: {"arg": {"channel", "instId"}, "action": "snapshot"|"update", "data": [{"asks":
[[px, sz, "0", numOrders]...], "bids": [...], "ts": ms string, "checksum": int,
"seqId"?, "prevSeqId"?}]}; sz is the new absolute size, "0" deletes.

Checksum (OKX v5 docs, "Checksum"): take the top 25 levels of each side of the book
after the message; for i = 0..24 append bid[i] then ask[i] (whichever exists) as
"price:size" using the strings exactly as received; join with ":"; CRC32; compare as a
signed 32-bit int. Every book message is checked (report.checksum_ok / checksum_failed);
a failure means the book is known wrong: a gap, no rows until the instrument's next
snapshot. A message without a checksum cannot be verified and is treated the same way
(extra["checksum_missing"]).

Sequence (when present; the 2022 capture predates seqId): an update whose prevSeqId is
not the last seqId is a gap; one whose seqId is not above the last is a duplicate and
ignored. Without seqId, a duplicated update is idempotent (absolute sizes) and a lost one
is caught by the checksum. seq = seqId or -1; ts = data `ts` (ms) -> ns.

Trades (`trades`, `trades-all`): `side` is the taker's side: buy -> +1, sell -> -1;
trades whose tradeId is not above the instrument's last are duplicates. A crossed book,
a malformed level (non-number, negative size), an unparseable line naming the
instrument (or naming none: every book), a reconnect header -> gap. Without --symbol the
first instrument seen is selected (noted); others are counted in extra["other_symbol"].
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.book import LevelError, parse_levels
from gpu_engine.data.books.feeds.coinbase import (BAD, CONNECT, MAX_LISTED_BAD, BookState, Picker, TradeClock,
                                            iter_cryptofeed, kind_in, product_in, tick_step)
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow

BOOK_CHANNELS = {"books", "books-l2-tbt", "books50-l2-tbt"}
TRADE_CHANNELS = {"trades", "trades-all"}
CHECKSUM_LEVELS = 25


def checksum(bids: list[str], asks: list[str]) -> int:
    """OKX book checksum of the best-first 'price:size' strings of each side (signed int32)."""
    parts = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts.append(bids[i])
        if i < len(asks):
            parts.append(asks[i])
    c = zlib.crc32(":".join(parts).encode())
    return c - (1 << 32) if c >= 1 << 31 else c


class _OkxBook(BookState):
    """BookState plus the received 'price:size' strings of each level (for the checksum)."""

    def __init__(self, report: ImportReport):
        super().__init__(report)
        self.bid_str: dict[float, str] = {}
        self.ask_str: dict[float, str] = {}

    def apply(self, bids, asks, raw_bids, raw_asks, snapshot: bool) -> None:
        if snapshot:
            self.book.apply_snapshot(bids, asks)
            self.bid_str.clear()
            self.ask_str.clear()
        else:
            self.book.update(bids, asks)
        for (p, q), raw in zip(bids, raw_bids):
            if q > 0:
                self.bid_str[p] = f"{raw[0]}:{raw[1]}"
            else:
                self.bid_str.pop(p, None)
        for (p, q), raw in zip(asks, raw_asks):
            if q > 0:
                self.ask_str[p] = f"{raw[0]}:{raw[1]}"
            else:
                self.ask_str.pop(p, None)

    def checksum(self) -> int:
        bid_px, ask_px, _, _ = self.book.top(CHECKSUM_LEVELS)
        bs = [self.bid_str[p] for p in bid_px.tolist() if p == p]
        as_ = [self.ask_str[p] for p in ask_px.tolist() if p == p]
        return checksum(bs, as_)


def read(paths: list[Path], depth: int, symbol: str | None,
         report: ImportReport) -> Iterator[BookRow | TradeRow]:
    report.extra.setdefault("exchange", "okx")
    pick = Picker(symbol, report)
    books: dict[str, _OkxBook] = {}
    trades: dict[str, TradeClock] = {}

    for kind, path, lineno, local, obj in iter_cryptofeed(paths, report):
        if kind == CONNECT:
            for st in books.values():
                st.lose(st.last_ts or 0, "reconnect: new connection", file=str(path), line=lineno)
            continue
        if kind == BAD:
            if kind_in(obj) not in (None, *BOOK_CHANNELS):
                continue  # a damaged trades / tickers line: no book is affected
            inst = product_in(obj)
            for name, st in books.items():
                if inst is None or name == inst:
                    st.lose(st.last_ts or 0, "unparseable line", file=str(path), line=lineno)
            continue
        report.messages += 1
        inst = None
        try:
            if "event" in obj:  # subscribe acks, errors
                if obj["event"] == "error":
                    report.note(f"{path.name}:{lineno}: OKX error {obj.get('code')}: {str(obj.get('msg'))[:80]}")
                report.count(f"ignored_event_{obj['event']}")
                continue
            arg = obj.get("arg")
            if not isinstance(arg, dict) or "channel" not in arg:
                raise ValueError(sniff.not_this("okx-jsonl", obj))
            channel, inst = arg["channel"], arg.get("instId")
            if channel in BOOK_CHANNELS:
                if not pick.keep(inst):
                    continue
                yield from _book_message(obj, inst, books, depth, report, path, lineno, local)
            elif channel in TRADE_CHANNELS:
                for t in obj["data"]:
                    if not pick.keep(t.get("instId", inst)):
                        continue
                    row = _trade(t, inst, trades, report)
                    if row is not None:
                        yield row
            elif channel in ("tickers", "bbo-tbt", "books5", "mark-price", "funding-rate", "open-interest"):
                report.count(f"ignored_{channel}")
            else:
                raise ValueError(f"unknown channel {channel!r}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            report.bad_lines += 1
            report.count("unknown_or_malformed_messages")
            if report.extra["unknown_or_malformed_messages"] <= MAX_LISTED_BAD:
                report.note(f"{path.name}:{lineno}: "
                            + (f"field {exc.args[0]!r} missing" if isinstance(exc, KeyError) else str(exc)[:160]))
            st = books.get(inst) if isinstance(inst, str) else None
            if st is not None:
                st.lose(st.last_ts or 0, "malformed book message", file=str(path), line=lineno)


def _book_message(obj, inst, books, depth, report, path, lineno, local) -> Iterator[BookRow]:
    action = obj.get("action")
    if action not in ("snapshot", "update"):
        raise ValueError(f"unknown books action {action!r}")
    st = books.get(inst)
    if st is None:
        st = books[inst] = _OkxBook(report)
    for d in obj["data"]:
        ts = int(d["ts"]) * 1_000_000
        if action == "update" and not st.synced:
            report.unsynced += 1
            continue
        seq, prev = d.get("seqId"), d.get("prevSeqId")
        if action == "update" and isinstance(seq, int) and st.last_seq >= 0:
            if seq <= st.last_seq and prev != st.last_seq:
                report.duplicates += 1
                continue
            if prev != st.last_seq:
                st.lose(ts, f"prevSeqId {prev} != last seqId {st.last_seq}", file=str(path), line=lineno)
                continue
        try:
            raw_bids, raw_asks = d["bids"], d["asks"]
            bids, asks = parse_levels(raw_bids, "bids"), parse_levels(raw_asks, "asks")
        except LevelError as exc:
            if exc.kind == "negative_size":
                report.negative_sizes += 1
            else:
                report.bad_lines += 1
            report.note(str(exc)[:160])
            st.lose(ts, "malformed level", file=str(path), line=lineno)
            continue
        snapshot = action == "snapshot"
        st.apply(bids, asks, raw_bids, raw_asks, snapshot)
        if snapshot:
            st.synced = False  # until its checksum is verified
            if "tick_size" not in report.extra and bids and asks:
                report.extra["tick_size"] = tick_step(p for p, _ in bids[:50] + asks[:50])
        want = d.get("checksum")
        if not isinstance(want, int):
            report.count("checksum_missing")
            _fail(st, snapshot, ts, "no checksum: book cannot be verified", report, path, lineno)
            continue
        if st.checksum() != want:
            report.checksum_failed += 1
            _fail(st, snapshot, ts, "checksum mismatch", report, path, lineno)
            continue
        report.checksum_ok += 1
        if snapshot:
            st.resync(ts)
        st.last_seq = seq if isinstance(seq, int) else -1
        if not (bids or asks or snapshot):
            continue  # keep-alive (empty update): verified, nothing changed
        row = st.row(ts, st.last_seq, local, depth, inst)
        if row is not None:
            yield row


def _fail(st: _OkxBook, snapshot: bool, ts: int, reason: str, report, path, lineno) -> None:
    """The book is known wrong after this message: a gap until a snapshot verifies."""
    if snapshot:
        if st.open_gap is None:
            report.add_gap(ts, f"snapshot {reason}", file=str(path), line=lineno)
            st.open_gap = report.gaps[-1]
    else:
        st.lose(ts, reason, file=str(path), line=lineno)


def _trade(t: dict, inst, trades: dict, report: ImportReport) -> TradeRow | None:
    inst = t.get("instId", inst)
    ts = int(t["ts"]) * 1_000_000
    try:
        (px, qty), = parse_levels([(t["px"], t["sz"])], "trade")
    except LevelError as exc:
        if exc.kind == "negative_size":
            report.negative_sizes += 1
        else:
            report.bad_lines += 1
        report.note(str(exc)[:160])
        return None
    side = t.get("side")
    if side not in ("buy", "sell"):
        raise ValueError(f"trade side {side!r}")
    clock = trades.get(inst)
    if clock is None:
        clock = trades[inst] = TradeClock(report)
    ts = clock.accept(t.get("tradeId"), ts)
    if ts is None:
        return None
    return TradeRow(ts, px, qty, 1 if side == "buy" else -1, inst)  # side = taker side
