"""Capture lines of any of the usual shapes, line by line: what the Bybit and Hyperliquid readers read.

Capture tools write the same exchange messages in different line shapes, and one file
may even mix them (a recorder that restarted with another tool). Each line is classified
on its own (`sniff.split_shape`) and split by the splitters of `feeds/jsonl.py`:

* `<local_ts> <json>` (hftbacktest's collector, what `record --raw` writes): integer stamp,
  unit detected by magnitude (`jsonl.stamp_to_ns`);
* `<seconds>: <json>` (cryptofeed's raw data collection);
* a bare JSON object per line (no receive stamp: local_ts = -1);
* cryptofeed's other lines (its `raw_data_collection.py` writes four kinds, and only the bare
  `<seconds>: <json>` kind above is a message the client RECEIVED): `<ws url> <-> <seconds>`
  starts a connection (yielded as `CONNECT`: a reader drops books that a new connection must
  resnapshot), `<ws url> <- <seconds>: <json>` is a message the client SENT (subscribe,
  ping: never read as market data, counted in `extra["sent_lines"]`), `<http url> ->
  <seconds>: <json>[ header: {...}]` a REST answer (skipped, `extra["rest_lines"]`). The
  arrow is the token right after the url, so a sent payload that happens to contain
  " <-> " is still a sent line.

`iter_mixed(paths, report)` yields the tuples `coinbase.iter_cryptofeed` yields
(`kind, path, lineno, local_ts_ns, payload`; kinds `CONNECT`, `BAD`, `MESSAGE` from
`feeds/coinbase.py`), so a reader handles every shape with one loop. A line that is none
of the above, or whose JSON does not parse to an object, is `BAD` (counted in
`report.bad_lines`, the first few noted as `FILE:LINE: bad line (why)`); a file without a
single usable message raises `InputError` naming the file and its first bad line.

`RecentIds` remembers the last `RECENT_IDS` trade ids of a symbol, for feeds whose trade ids
are unique but not ordered (Bybit UUIDs, Hyperliquid tids): a repeat is a duplicate.

`count_early_trades(items, report)` passes a reader's rows through and counts the trades
stamped before their symbol's first book row (`extra["trades_before_first_book"]`, with a
note): a trade subscription often starts with a replay of recent trades (Hyperliquid's
first `trades` message; the first Bybit v2 trade pushes), older than the first book the
capture holds. They are kept (the store's contract orders trades by time only, and they
were public at their times); a `Market` aligns each to the first tick at or after it, so
they all land on the first tick.
"""
from __future__ import annotations

import json
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.coinbase import BAD, CONNECT, MAX_LISTED_BAD, MESSAGE
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import (LOCAL_TS_TOLERANCE_NS, iter_lines, seconds_to_ns,
                                               split_cryptofeed_line, split_stamped_line)
from gpu_engine.errors import InputError

__all__ = ["iter_mixed", "count_early_trades", "RecentIds", "RECENT_IDS", "BAD", "CONNECT", "MESSAGE"]

RECENT_IDS = 100_000  # trade ids remembered for duplicate detection


def _header_stamp(line: bytes) -> int:
    """`wss://... <-> 1618677785.4827468` -> its stamp in ns (-1 when unreadable)."""
    try:
        return seconds_to_ns(line.rsplit(b" ", 1)[1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return -1


def _arrow(line: bytes) -> bytes:
    """The direction token after a cryptofeed line's url: b"<->" (connect), b"<-" (sent), b"->" (REST)."""
    parts = line.split(b" ", 2)
    return parts[1] if len(parts) > 1 else b""


def iter_mixed(paths, report: ImportReport) -> Iterator[tuple[str, Path, int, int, object]]:
    """(kind, path, lineno, local_ts_ns, payload) over capture files of any line shape (module docstring)."""
    last_local = None
    for path in map(Path, paths):
        good = 0
        first_bad = None
        for lineno, line in iter_lines(path, report):
            s = line.strip()
            if not s:
                report.count("blank_lines")
                continue
            if s.startswith((b"http://", b"https://")) and b" -> " in s:
                report.count("rest_lines")
                continue
            try:
                shape, _ = sniff.split_shape(s)
                if shape == "header":
                    arrow = _arrow(s)
                    if arrow == b"<->":
                        yield CONNECT, path, lineno, _header_stamp(s), s.split(b" ", 1)[0]
                    elif arrow == b"<-":
                        report.count("sent_lines")
                    elif arrow == b"->":
                        report.count("rest_lines")
                    else:
                        report.count("header_lines")
                    continue
                if shape == "stamped":
                    local, payload = split_stamped_line(s)
                elif shape == "cryptofeed":
                    local, payload = split_cryptofeed_line(s)
                elif shape == "json":
                    local, payload = -1, s
                else:
                    raise ValueError("not a capture line (`<local_ts> <json>`, `<seconds>: <json>` "
                                     "or a JSON object)")
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
            if local >= 0:
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


class RecentIds:
    """Membership of the last `n` ids seen (for trade ids that are not ordered: Bybit, Hyperliquid)."""

    def __init__(self, n: int = RECENT_IDS):
        self.n = n
        self.order: deque = deque()
        self.seen: set = set()

    def add(self, key) -> bool:
        """False when `key` was already seen (a duplicate)."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self.order.append(key)
        if len(self.order) > self.n:
            self.seen.discard(self.order.popleft())
        return True


def count_early_trades(items, report: ImportReport) -> Iterator:
    """`items` (a reader's rows) unchanged, counting the trades stamped before their symbol's
    first book row in `report.extra["trades_before_first_book"]` (noted; module docstring).

    A reader yields each symbol's trades in non-decreasing time (`TradeClock`), so the trades
    seen before the first book row are counted with one bisection when it comes."""
    first: dict[str, int] = {}
    pending: dict[str, array] = {}
    early = 0
    for item in items:
        kind = type(item)
        if kind is BookRow:
            if item.symbol not in first:
                first[item.symbol] = item.ts
                waiting = pending.pop(item.symbol, None)
                if waiting:
                    early += bisect_left(waiting, item.ts)
        elif kind is TradeRow:
            t0 = first.get(item.symbol)
            if t0 is None:
                waiting = pending.get(item.symbol)
                if waiting is None:
                    waiting = pending[item.symbol] = array("q")
                waiting.append(item.ts)
            elif item.ts < t0:
                early += 1
        yield item
    if early:
        report.extra["trades_before_first_book"] = early
        report.note(f"{early:,} trades are stamped before the first book row (a trade subscription's "
                    "replay of recent trades): kept at their own times; a backtest sees them at its first tick")
