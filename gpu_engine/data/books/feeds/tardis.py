"""Tardis.dev CSV reader: incremental_book_L2, book_snapshot_N, quotes and trades files -> rows.

Columns (docs.tardis.dev/downloadable-csv-files/data-types); the
kind of each file is recognised from its header row; `.gz` files are read as gzip:

  incremental_book_L2  exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount
  book_snapshot_N      exchange,symbol,timestamp,local_timestamp,asks[0].price,asks[0].amount,
                       bids[0].price,bids[0].amount,... (level 0 best; empty = no level)
  quotes, book_ticker  exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount
                       (top of book: a level-1 row; empty = no level)
  trades               exchange,symbol,timestamp,local_timestamp,id,side,price,amount

Timestamps are microseconds since the epoch (UTC); `timestamp` is the exchange time (the
local one when it is empty), `local_timestamp` the arrival time.

Incremental book: rows of one exchange message share `local_timestamp`; one book row is
emitted per message. Rows before the first `is_snapshot=true` are dropped (counted as
`unsynced`). A snapshot row after non-snapshot rows means the recorder reconnected: the
book is cleared and rebuilt (a resync, recorded as a gap). A malformed level row in a
message (non-number, unknown side, negative amount) leaves the book unknown: it is counted
and no rows are emitted until the next snapshot. Trades: `side` is the aggressor
(buy -> +1, sell -> -1); `unknown` trades are skipped and counted in
report.extra["tardis_unknown_side"]. A crossed/locked book is counted and no row is
emitted while it stays crossed (Tardis has no sequence numbers to prove a gap, and
some venues' recorded books cross transiently).

Ordering: exchange timestamps may jitter backwards; a step back of at most
TS_JITTER_NS is emitted at the previous row's time (the store needs non-decreasing ts),
a larger one is counted in `time_backwards` and that row is not emitted. Several files
are read in time order (by their first timestamp) and book rows and trades are merged
by ts. Without --symbol the first symbol seen is selected (others counted). A file with
missing columns, an unknown header, or mixed book-file kinds raises InputError.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds.book import PriceLevelBook
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import iter_lines

TS_JITTER_NS = 1_000_000_000  # exchange time may step back this much without being an error

INCREMENTAL = ("exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount")
TRADES = ("exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount")
SNAPSHOT_HEAD = ("exchange", "symbol", "timestamp", "local_timestamp")
QUOTES = ("exchange", "symbol", "timestamp", "local_timestamp", "ask_amount", "ask_price", "bid_price", "bid_amount")


def _header(path: Path) -> list[str]:
    for _, line in iter_lines(path, ImportReport()):
        return [h.strip() for h in line.decode("utf-8", "replace").split(",")]
    return []


def _rows(path: Path, report: ImportReport) -> Iterator[tuple[int, list[str] | None]]:
    """(line number, fields) of the data rows; a truncated or corrupt gzip (counted by
    `iter_lines`) ends with (line, None) after the last readable row, recorded as a gap."""
    before = report.extra.get("truncated_files", 0)
    lineno = 1
    for lineno, line in iter_lines(path, report):
        if lineno == 1 or not line:
            continue
        try:
            yield lineno, line.decode("utf-8").split(",")
        except UnicodeDecodeError:
            yield lineno, []  # counted as a bad row by the caller (IndexError)
    if report.extra.get("truncated_files", 0) > before:
        report.add_gap(report.ts_max or 0, "truncated file", file=str(path), line=lineno)
        yield lineno, None


def _kind(path: Path) -> tuple[str, list[str], int]:
    """('incremental' | 'snapshot' | 'trades', header, levels) from the header row."""
    header = _header(path)
    if not header or header == [""]:
        raise InputError.at(path, 1, None, "empty file: no Tardis CSV header row")
    cols = set(header)

    def need(names):
        for name in names:
            if name not in cols:
                raise InputError.at(path, 1, name, "column missing from the Tardis CSV header")

    if "is_snapshot" in cols:
        need(INCREMENTAL)
        return "incremental", header, 0
    if any(h.startswith("asks[") or h.startswith("bids[") for h in header):
        need(SNAPSHOT_HEAD)
        levels = 0
        while f"asks[{levels}].price" in cols or f"bids[{levels}].price" in cols:
            levels += 1
        for i in range(levels):
            need((f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"))
        return "snapshot", header, levels
    if "id" in cols or "side" in cols:
        need(TRADES)
        return "trades", header, 0
    if "ask_price" in cols or "bid_price" in cols:
        need(QUOTES)
        return "quotes", header, 1
    raise InputError.at(path, 1, None, "unknown Tardis CSV header (expected incremental_book_L2, "
                        "book_snapshot_N, quotes or trades columns): " + ",".join(header[:8]))


def _micros(text: str) -> int:
    return int(text) * 1000


class _Clock:
    """Keeps one stream's ts non-decreasing (jitter <= TS_JITTER_NS absorbed, larger counted)."""

    def __init__(self, report: ImportReport):
        self.last: int | None = None
        self.report = report

    def __call__(self, ts: int) -> int | None:
        if self.last is not None and ts < self.last:
            if self.last - ts > TS_JITTER_NS:
                self.report.time_backwards += 1
                return None
            return self.last
        self.last = ts
        return ts


class _Symbol:
    """The one symbol a stream is for: --symbol, or else the first one seen (noted);
    rows of any other symbol are skipped and counted in extra["other_symbol"]."""

    def __init__(self, symbol: str | None, report: ImportReport):
        self.want = symbol.upper() if symbol else None
        self.report = report

    def keep(self, f: list[str], i_sym: int, path: Path, line: int) -> bool:
        sym = f[i_sym]
        if self.want is None:
            self.want = sym.upper()
            self.report.note(f"no --symbol given: selected {sym}, the first symbol seen")
        if sym.upper() != self.want:
            self.report.count("other_symbol")
            return False
        if "exchange" not in self.report.extra:
            self.report.symbol = sym
            self.report.extra["exchange"] = f[0]  # `exchange` is the first column
        return True


def _pad(px: np.ndarray, sz: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    n = min(depth, px.shape[0])
    opx, osz = np.full(depth, np.nan), np.zeros(depth)
    opx[:n], osz[:n] = px[:n], sz[:n]
    return opx, osz


def _read_incremental(path, header, depth, pick, report, clock) -> Iterator[BookRow]:
    col = {name: header.index(name) for name in INCREMENTAL}
    i_sym, i_ts, i_local, i_snap, i_side, i_px, i_amt = (col[k] for k in (
        "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"))
    book = PriceLevelBook()
    synced = False      # a snapshot has been applied and nothing since is known wrong
    seen_snapshot = False
    open_gap: dict | None = None  # the gap waiting for its resync
    prev_snap = False   # previous row was a snapshot row
    group_key = None    # local_timestamp of the message being applied
    group_ts = 0
    group_local = 0
    dirty = False       # the current message changed a synced book: emit a row at its end

    def flush():
        if not (dirty and synced):
            return None
        if book.crossed():
            report.crossed += 1
            return None
        ts = clock(group_ts)
        if ts is None:
            return None
        bid_px, ask_px, bid_sz, ask_sz = book.top(depth)
        report.see_ts(ts)
        return BookRow(ts, -1, bid_px, ask_px, bid_sz, ask_sz, group_local, pick.want)

    def lose(ts, reason, line):  # the book is unknown from here to the next snapshot
        nonlocal synced, open_gap
        if synced:
            synced = False
            report.add_gap(ts, reason + ": book unknown until the next snapshot", file=str(path), line=line)
            open_gap = report.gaps[-1]

    for line, f in _rows(path, report):
        if f is None:  # truncated (gap recorded by _rows): the last message may be incomplete
            synced = False
            break
        try:
            if not pick.keep(f, i_sym, path, line):
                continue
            local = _micros(f[i_local])
            ts = _micros(f[i_ts]) if f[i_ts] else local
            is_snap = f[i_snap].strip().lower() == "true"
        except (ValueError, IndexError):
            report.bad_lines += 1
            lose(group_ts, "malformed row", line)
            continue
        if local != group_key or is_snap != prev_snap:
            row = flush()
            if row is not None:
                yield row
            report.messages += 1
            group_key, dirty = local, False
        if is_snap and not prev_snap:  # a new snapshot starts: clear the book
            if open_gap is not None:
                open_gap["until"] = ts
                report.resyncs += 1
                open_gap = None
            elif seen_snapshot:
                report.add_gap(group_ts, "snapshot after updates (recorder reconnect): book reset",
                               file=str(path), line=line, until=ts)
                report.resyncs += 1
            book.clear()
            synced = seen_snapshot = True
        group_ts, group_local = ts, local
        prev_snap = is_snap
        if not seen_snapshot:
            report.unsynced += 1
            continue
        if not synced:
            continue
        side = f[i_side].strip().lower()
        try:
            px, amt = float(f[i_px]), float(f[i_amt])
            if side not in ("bid", "ask") or not (0 < px < math.inf and math.isfinite(amt)):
                raise ValueError
        except (ValueError, IndexError):
            report.bad_lines += 1
            lose(ts, "malformed level row", line)
            continue
        if amt < 0:
            report.negative_sizes += 1
            lose(ts, "negative amount", line)
            continue
        if side == "bid":
            book.set_bid(px, amt)
        else:
            book.set_ask(px, amt)
        dirty = True
    row = flush()
    if row is not None:
        yield row


def _read_snapshots(path, header, levels, depth, pick, report, clock) -> Iterator[BookRow]:
    i_sym, i_ts, i_local = (header.index(k) for k in ("symbol", "timestamp", "local_timestamp"))
    idx = {side: [(header.index(f"{side}[{i}].price"), header.index(f"{side}[{i}].amount"))
                  for i in range(levels)] for side in ("asks", "bids")}

    def side_levels(f, side):
        px, sz = np.full(levels, np.nan), np.zeros(levels)
        for i, (ip, ia) in enumerate(idx[side]):
            p, a = f[ip], f[ia]
            if p == "" and a == "":
                continue
            p, a = float(p), float(a)
            if not (math.isfinite(p) and math.isfinite(a)):
                raise ValueError("non-finite")
            if a < 0:
                raise OverflowError
            if a > 0:
                px[i], sz[i] = p, a
        return px, sz

    for line, f in _rows(path, report):
        if f is None:
            break
        report.messages += 1
        try:
            if not pick.keep(f, i_sym, path, line):
                continue
            local = _micros(f[i_local])
            ts = _micros(f[i_ts]) if f[i_ts] else local
            ask_px, ask_sz = side_levels(f, "asks")
            bid_px, bid_sz = side_levels(f, "bids")
        except OverflowError:
            report.negative_sizes += 1
            continue
        except (ValueError, IndexError):
            report.bad_lines += 1
            continue
        if bid_sz[0] > 0 and ask_sz[0] > 0 and bid_px[0] >= ask_px[0]:
            report.crossed += 1
            continue
        ts = clock(ts)
        if ts is None:
            continue
        report.see_ts(ts)
        bp, bs = _pad(bid_px, bid_sz, depth)
        ap, as_ = _pad(ask_px, ask_sz, depth)
        yield BookRow(ts, -1, bp, ap, bs, as_, local, pick.want)


def _read_quotes(path, header, depth, pick, report, clock) -> Iterator[BookRow]:
    """quotes / book_ticker: the top of the book as a level-1 row (deeper levels absent)."""
    i_sym, i_ts, i_local, i_ap, i_aa, i_bp, i_ba = (header.index(k) for k in (
        "symbol", "timestamp", "local_timestamp", "ask_price", "ask_amount", "bid_price", "bid_amount"))

    def level(p, a):
        if p == "" and a == "":
            return math.nan, 0.0
        p, a = float(p), float(a)
        if not (math.isfinite(p) and math.isfinite(a)):
            raise ValueError("non-finite")
        if a < 0:
            raise OverflowError
        return (p, a) if a > 0 else (math.nan, 0.0)

    for line, f in _rows(path, report):
        if f is None:
            break
        report.messages += 1
        try:
            if not pick.keep(f, i_sym, path, line):
                continue
            local = _micros(f[i_local])
            ts = _micros(f[i_ts]) if f[i_ts] else local
            ask_px, ask_sz = level(f[i_ap], f[i_aa])
            bid_px, bid_sz = level(f[i_bp], f[i_ba])
        except OverflowError:
            report.negative_sizes += 1
            continue
        except (ValueError, IndexError):
            report.bad_lines += 1
            continue
        if bid_sz > 0 and ask_sz > 0 and bid_px >= ask_px:
            report.crossed += 1
            continue
        ts = clock(ts)
        if ts is None:
            continue
        report.see_ts(ts)
        bp, bs = np.full(depth, np.nan), np.zeros(depth)
        ap, as_ = np.full(depth, np.nan), np.zeros(depth)
        bp[0], bs[0], ap[0], as_[0] = bid_px, bid_sz, ask_px, ask_sz
        yield BookRow(ts, -1, bp, ap, bs, as_, local, pick.want)


def _read_trades(path, header, pick, report, clock) -> Iterator[TradeRow]:
    i_sym, i_ts, i_local, i_side, i_px, i_amt = (header.index(k) for k in (
        "symbol", "timestamp", "local_timestamp", "side", "price", "amount"))
    for line, f in _rows(path, report):
        if f is None:
            break
        report.messages += 1
        try:
            if not pick.keep(f, i_sym, path, line):
                continue
            local = _micros(f[i_local])
            ts = _micros(f[i_ts]) if f[i_ts] else local
            px, amt = float(f[i_px]), float(f[i_amt])
            if not (math.isfinite(px) and math.isfinite(amt)):
                raise ValueError
            side = f[i_side].strip().lower()
        except (ValueError, IndexError):
            report.bad_lines += 1
            continue
        if amt < 0:
            report.negative_sizes += 1
            continue
        if side not in ("buy", "sell"):
            report.extra["tardis_unknown_side"] = report.extra.get("tardis_unknown_side", 0) + 1
            continue
        ts = clock(ts)
        if ts is None:
            continue
        report.see_ts(ts)
        yield TradeRow(ts, px, amt, 1 if side == "buy" else -1, pick.want)


def _first_ts(path: Path, header: list[str]) -> int:
    i_ts, i_local = header.index("timestamp"), header.index("local_timestamp")
    for lineno, line in iter_lines(path, ImportReport()):
        if lineno == 1:
            continue
        f = line.decode("utf-8", "replace").split(",")
        try:
            return _micros(f[i_ts]) if f[i_ts] else _micros(f[i_local])
        except (ValueError, IndexError):
            continue
    return 0


def read(paths: list[Path], depth: int, symbol: str | None,
         report: ImportReport) -> Iterator[BookRow | TradeRow]:
    files = []
    for p in map(Path, paths):
        kind, header, levels = _kind(p)
        files.append((_first_ts(p, header), kind, p, header, levels))
    files.sort(key=lambda t: (t[0], str(t[2])))
    book_kinds = {f[1] for f in files if f[1] != "trades"}
    if len(book_kinds) > 1:
        raise InputError.at(files[0][2], None, None, "mix of " + " and ".join(
                            n for k, n in (("incremental", "incremental_book_L2"), ("snapshot", "book_snapshot"),
                                           ("quotes", "quotes")) if k in book_kinds) + " book "
                            "files (incremental_book_L2, book_snapshot_N, quotes): import one kind of book at a time")
    pick = _Symbol(symbol, report)
    book_clock, trade_clock = _Clock(report), _Clock(report)

    def books():
        for _, kind, p, header, levels in files:
            if kind == "incremental":
                yield from _read_incremental(p, header, depth, pick, report, book_clock)
            elif kind == "snapshot":
                yield from _read_snapshots(p, header, levels, depth, pick, report, book_clock)
            elif kind == "quotes":
                yield from _read_quotes(p, header, depth, pick, report, book_clock)

    def trades():
        for _, kind, p, header, _levels in files:
            if kind == "trades":
                yield from _read_trades(p, header, pick, report, trade_clock)

    yield from heapq.merge(books(), trades(), key=lambda r: r.ts)
