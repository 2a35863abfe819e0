"""What every feed reader yields and counts: book rows, trades, and the import report.

A reader is a generator `read(paths, depth, symbol, report) -> Iterator[BookRow | TradeRow]`
(registered by format name in `gpu_engine.data.books.importers.FORMATS`). It never yields a
row from a book known to be wrong (between a gap and its resync, or crossed without a
flag); it counts everything it skipped or refused in `report`.

Reader duties (the importer relies on them):
* `report.messages += 1` per exchange message read (header/blank lines excluded);
* rows in non-decreasing `ts` (book rows and trades separately; the store refuses
  anything else); set `symbol` on rows when the input mixes instruments;
* record gaps with `report.add_gap(time_ns, reason, **info)` and set
  `report.gaps[-1]["until"] = ts` plus `report.resyncs += 1` on the resync;
* put per-store attrs (exchange, tick_size, lot_size, market, ...) and
  format-specific counters in `report.extra` (JSON-able; all of it lands in the
  store attrs); `report.count(key)` increments a counter in `report.extra`;
* unusable input -> raise `InputError.at(path, line, field, problem)`;
* read files through `gpu_engine.data.books.feeds.jsonl.iter_lines` (gzip detection,
  truncated-gzip handling, byte progress via `report.advance`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np


class BookRow(NamedTuple):
    ts: int              # exchange event time, ns
    seq: int             # exchange update id after this row, -1 if none
    bid_px: np.ndarray   # float64 [L], NaN where absent
    ask_px: np.ndarray
    bid_sz: np.ndarray   # float32-compatible [L], 0 where absent
    ask_sz: np.ndarray
    local_ts: int = -1   # local receive time, ns (for latency stats), -1 if unknown
    symbol: str = ""


class TradeRow(NamedTuple):
    ts: int      # the time the trade became public (the message's event time), ns
    px: float
    qty: float
    side: int    # +1 buyer-initiated (aggressor buy), -1 seller-initiated
    symbol: str = ""
    match_ts: int = -1   # the matching engine's trade time, ns; -1 when the feed gives only one time


@dataclass
class ImportReport:
    """Counters shown in the import summary; `gaps` lists {time, reason, ...} dicts for store attrs."""

    messages: int = 0
    rows: int = 0
    trades: int = 0
    gaps: list[dict] = field(default_factory=list)
    resyncs: int = 0
    crossed: int = 0
    checksum_ok: int = 0
    checksum_failed: int = 0
    stale: int = 0            # updates older than the book (ignored, harmless)
    duplicates: int = 0
    bad_lines: int = 0        # non-JSON, truncated, unknown stream, non-numeric fields
    negative_sizes: int = 0
    time_backwards: int = 0
    stale_snapshots: int = 0  # snapshot older than the buffered updates
    unsynced: int = 0         # messages dropped while waiting for a snapshot
    ts_min: int | None = None
    ts_max: int | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # store attrs + format-specific counters (e.g. LOBSTER agreement)
    symbol: str | None = None  # instrument the rows belong to (set by the reader or the importer)
    bytes_read: int = 0        # input bytes consumed so far (compressed bytes for gzip)
    progress: Callable[[int], None] | None = field(default=None, repr=False, compare=False)

    def advance(self, nbytes: int) -> None:
        """Readers call this as they consume input; drives the importer's progress bar."""
        self.bytes_read += nbytes
        if self.progress is not None:
            self.progress(nbytes)

    def count(self, key: str, n: int = 1) -> None:
        """Increment a format-specific counter in `extra`."""
        self.extra[key] = self.extra.get(key, 0) + n

    def note(self, text: str) -> None:
        """A line for the summary (deduplicated)."""
        if text not in self.notes:
            self.notes.append(text)

    def add_gap(self, time_ns: int, reason: str, **info) -> None:
        self.gaps.append({"time": int(time_ns), "reason": reason, **info})

    def see_ts(self, ts: int) -> None:
        if self.ts_min is None or ts < self.ts_min:
            self.ts_min = ts
        if self.ts_max is None or ts > self.ts_max:
            self.ts_max = ts
