"""Binance diff-depth captures (spot, USD-M / COIN-M futures) -> book rows and trades.

Input: hftbacktest-style lines `<local_ts> <json>` (see `feeds/jsonl.py`), the JSON
being a combined-stream envelope `{"stream": ..., "data": {...}}`, a bare stream
event, or the REST depth snapshot `{"lastUpdateId", "bids", "asks"}` (the
snapshot line is the REST response's receive time, so it usually follows a few
diffs). Several files are read as one stream, in the order given (a capture
split across days keeps its book).

Book sync (Binance's "How to manage a local order book correctly", spot and futures
API docs), `DepthSync`:
* Until a usable snapshot, depthUpdates are buffered (at most `BUFFER_MAX`; the
  oldest are dropped and counted as unsynced beyond that).
* On a snapshot line `lastUpdateId` = L: drop buffered events with u <= L (spot)
  or u < L (futures); the first remaining must straddle: spot U <= L+1 <= u,
  futures U <= L <= u. If it does not, the snapshot is older than the buffered
  updates: counted (`stale_snapshots`), not applied, wait for the next snapshot
  line. Otherwise book := snapshot, then the buffered events are applied.
* Live events: u <= local id -> ignored (u == local: `duplicates`, else `stale`).
  Continuity: spot U == local+1 (the first event after a snapshot only needs
  U <= local+1), futures pu == local (first event after a snapshot: U <= L <= u).
  Anything else is a gap: recorded (`report.gaps`: time, reason, kind, seq = last
  good update id, `until` = first row after the resync or None), the book
  is discarded and NO row is emitted until a resync from the next snapshot line
  (the event that revealed the gap is kept in the buffer for that resync).
  A depthUpdate refused for bad content (see below) whose ids the book needed is a
  gap at once.
* A book that comes out crossed or locked after an update is treated as a gap too
  (`crossed` counted): no row is ever emitted from it.
* The REST snapshot is truncated (1000 or 5000 levels): below its lowest bid and
  above its highest ask, levels that have not changed since are invisible (doc
  note). Row levels beyond that range are therefore reported absent (NaN / 0;
  `rows_depth_cut_at_snapshot_range`), and while the best bid or ask itself lies
  beyond it no row is emitted (recorded as a gap, `until` = the first row after the
  price came back; `rows_outside_snapshot_range`). A new snapshot resets the range.
* Futures vs spot: from the presence of `pu` in the depth events.
* A snapshot line while in sync is held if it is newer than the book (a recorder
  reconnect writes its new snapshot before the new connection's diffs): a gap before
  the book reaches it resyncs from it at once. Otherwise it is not needed (counted
  in `snapshots_ignored_in_sync`).
* A file with no snapshot line yields no book rows; the summary says so.

Rows: `ts` = event time `E` (ms -> ns) for spot and futures alike (futures also
carry the transaction time `T`; `E` is used so both markets share one clock),
`seq` = `u`, `local_ts` = receive stamp; one row after every applied depthUpdate.
Trades (`@trade`): ts = trade time `T` (`E` if absent), side = -1 if `m` (buyer is
maker: the seller was the aggressor) else +1. Trade ids are checked for
continuity (`trade_id_gaps`, informational: the docs do not promise it); a
trade id not above the last one is a duplicate or out of order and is skipped.
`bookTicker` lines are counted only (`book_ticker`; tests compare against them):
for speed their JSON is not parsed when the combined-stream envelope is intact
(their content is never used, so a damaged ticker cannot harm the book).

Bad input (counted, shown in the summary, never applied): non-JSON lines, unknown
streams, prices/sizes that are not finite numbers, negative sizes, missing or
non-integer ids, exchange times going backwards by more than `TS_TOLERANCE_NS`
or jumping forward by more than the receive clock moved plus `TS_FORWARD_SLACK_NS`
(or lying more than `TS_MAX_SKEW_NS` from the receive stamp). A refused depth
message leaves a hole in the update ids, so the continuity rule turns it into a
gap. Small exchange-time regressions (<= tolerance) are clamped to keep `ts`
non-decreasing and counted (`ts_clamped`).
"""
from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.book import LevelError, PriceLevelBook, parse_levels
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import MAX_LISTED_BAD, iter_capture

BUFFER_MAX = 50_000                     # depthUpdates buffered while waiting for a snapshot
TS_TOLERANCE_NS = 1_000_000_000         # exchange time may step back <= 1 s (clamped, counted)
TS_FORWARD_SLACK_NS = 60_000_000_000    # ... and may run ahead of the receive clock by <= 60 s
TS_MAX_SKEW_NS = 86_400_000_000_000     # |exchange time - receive time| <= 1 day

DIFF_DEPTH = "depth"
IGNORED_STREAMS = frozenset({
    "aggTrade", "markPrice", "ticker", "miniTicker", "forceOrder", "indexPrice",
    "contractInfo", "compositeIndex", "avgPrice", "rollingWindow", "depth5", "depth10", "depth20",
})


class _Bad(Exception):
    """A message that cannot be used: `kind` names the summary counter."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class _Event:
    __slots__ = ("U", "u", "pu", "ts", "local", "bids", "asks")

    def __init__(self, U, u, pu, ts, local, bids, asks):
        self.U, self.u, self.pu, self.ts, self.local, self.bids, self.asks = U, u, pu, ts, local, bids, asks


def _int(d: dict, key: str) -> int:
    v = d.get(key)
    if type(v) is not int:
        raise _Bad("bad_lines", f"field {key!r}: not an integer ({v!r})")
    return v


def _levels(d: dict, key: str) -> list[tuple[float, float]]:
    v = d.get(key)
    if not isinstance(v, list):
        raise _Bad("bad_lines", f"field {key!r}: not a list")
    try:
        return parse_levels(v, key)
    except LevelError as exc:
        raise _Bad("negative_sizes" if exc.kind == "negative_size" else "bad_lines", str(exc)) from None


class _Clock:
    """Keeps one stream's exchange times non-decreasing; refuses implausible ones."""

    __slots__ = ("name", "report", "last", "last_local")

    def __init__(self, name: str, report: ImportReport):
        self.name, self.report = name, report
        self.last = None
        self.last_local = None

    def check(self, ts: int, local: int) -> int:
        if abs(ts - local) > TS_MAX_SKEW_NS:
            raise _Bad("bad_lines", f"{self.name} time {ts} more than a day from the receive time {local}")
        last = self.last
        if last is not None:
            if ts < last:
                if last - ts > TS_TOLERANCE_NS:
                    raise _Bad("time_backwards", f"{self.name} time goes back {(last - ts) / 1e9:.3f} s "
                               f"(tolerance {TS_TOLERANCE_NS / 1e9:g} s)")
                self.report.count("ts_clamped")
                return last
            if ts - last > max(0, local - self.last_local) + TS_FORWARD_SLACK_NS:
                raise _Bad("time_backwards", f"{self.name} time jumps {(ts - last) / 1e9:.3f} s ahead of "
                           "the receive clock")
        self.last = ts
        self.last_local = local
        return ts


class DepthSync:
    """Snapshot + diff-depth book maintenance for one symbol (see the module docstring).

    Feed it `on_depth(event)` and `on_snapshot(L, bids, asks, ts)`; both return the
    list of (event, top-`depth` arrays) to emit a row for, in order. Also usable by a live recorder
    (there `on_snapshot` is fed from a REST response).
    """

    def __init__(self, report: ImportReport, depth: int, buffer_max: int = BUFFER_MAX):
        self.report = report
        self.depth = depth
        self.book = PriceLevelBook()
        self.synced = False
        self.futures: bool | None = None
        self.local_id = -1
        self.book_ts: int | None = None  # exchange time of the last applied update
        self.first_after_snapshot = False
        self.buffer: deque[_Event] = deque()
        self.buffer_max = buffer_max
        self.snapshots = 0
        self.held = None           # (lastUpdateId, bids, asks, ts) of a snapshot newer than the book
        self.in_gap = False        # a gap was recorded and not resynced yet
        self.out_of_range = False  # best level beyond the snapshot's range (rows withheld)
        self.bid_floor = -math.inf
        self.ask_ceiling = math.inf
        self.until_pending = False  # resynced; the gap's `until` is the next emitted row

    # -- events
    def on_depth(self, ev: _Event) -> list:
        """Apply or buffer one depthUpdate; returns the events after which to emit a row."""
        if not self.synced:
            self._buffer(ev)
            return []
        out: list = []
        self._apply(ev, out)
        if not self.synced and self.held is not None:
            # the gap may be bridged by a snapshot that arrived while the book was in sync
            held, self.held = self.held, None
            out.extend(self.on_snapshot(*held, held_back=True))
        return out

    def _buffer(self, ev: _Event) -> None:
        self.buffer.append(ev)
        if len(self.buffer) > self.buffer_max:
            self.buffer.popleft()
            self.report.unsynced += 1

    def _apply(self, ev: _Event, out: list) -> None:
        r = self.report
        local = self.local_id
        if self.futures:
            if self.first_after_snapshot:
                if ev.u < local:
                    r.stale += 1
                    return
                ok = ev.U <= local
            else:
                if ev.u <= local:
                    if ev.u == local:
                        r.duplicates += 1
                    else:
                        r.stale += 1
                    return
                ok = ev.pu == local
            expected = f"pu={local}" if not self.first_after_snapshot else f"U<={local}<=u"
            got = f"pu={ev.pu}, U={ev.U}, u={ev.u}"
        else:
            if ev.u <= local:
                if ev.u == local:
                    r.duplicates += 1
                else:
                    r.stale += 1
                return
            ok = ev.U <= local + 1 if self.first_after_snapshot else ev.U == local + 1
            expected = f"U={'<=' if self.first_after_snapshot else ''}{local + 1}"
            got = f"U={ev.U}, u={ev.u}"
        if not ok:
            self._gap(ev, f"update id gap: expected {expected}, got {got}", "id_gap")
            return
        book = self.book
        book.update(ev.bids, ev.asks)
        self.local_id = ev.u
        self.book_ts = ev.ts
        if self.held is not None and ev.u >= self.held[0]:
            self.held = None  # the book got past the held snapshot: not needed
            r.count("snapshots_ignored_in_sync")
        self.first_after_snapshot = False
        if book.crossed():
            r.crossed += 1
            bb, ba = book.best_bid()[0], book.best_ask()[0]
            self._gap(ev, f"crossed book after u={ev.u} (bid {bb} >= ask {ba})", "crossed", keep=False)
            return
        top = book.top(self.depth)
        bid_px, ask_px, bid_sz, ask_sz = top
        if bid_px[0] < self.bid_floor or ask_px[0] > self.ask_ceiling:
            # best level outside what the snapshot covered: levels may be missing there
            r.count("rows_outside_snapshot_range")
            if not self.out_of_range:
                self.out_of_range = True
                r.add_gap(ev.ts, "best level moved beyond the snapshot's depth (levels there are unknown)",
                          kind="out_of_range", seq=ev.u, until=None)
            return
        if self.out_of_range:
            self.out_of_range = False
            r.gaps[-1]["until"] = ev.ts
        if bid_px[-1] < self.bid_floor or ask_px[-1] > self.ask_ceiling:
            bid_px, ask_px, bid_sz, ask_sz = (x.copy() for x in top)  # top's arrays are read-only
            top = (bid_px, ask_px, bid_sz, ask_sz)
            cut = bid_px < self.bid_floor
            bid_px[cut] = np.nan
            bid_sz[cut] = 0
            cut = ask_px > self.ask_ceiling
            ask_px[cut] = np.nan
            ask_sz[cut] = 0
            r.count("rows_depth_cut_at_snapshot_range")
        out.append((ev, top))

    def refuse(self, U: int, u: int, local_ts: int, why: str) -> None:
        """A depthUpdate with ids U..u could not be applied (bad content): if the book
        needed it, it is known wrong from now on -> gap at once (no more rows from it)."""
        if self.synced and u > self.local_id:
            ts = self.book_ts if self.book_ts is not None else local_ts
            self._gap(_Event(U, u, None, ts, local_ts, (), ()), f"refused update U={U}, u={u}: {why}", "refused",
                      keep=False)

    def _gap(self, ev: _Event, reason: str, kind: str, keep: bool = True) -> None:
        self.report.add_gap(ev.ts, reason, kind=kind, seq=self.local_id, until=None)
        self.in_gap = True
        self.until_pending = False
        self.out_of_range = False
        self.synced = False
        self.book.clear()
        self.buffer.clear()
        if keep:
            self.buffer.append(ev)

    def on_snapshot(self, last_id: int, bids, asks, ts: int | None, held_back: bool = False) -> list:
        """A depth snapshot with `lastUpdateId` = last_id; returns events to emit rows after.

        In sync, a snapshot newer than the book is held back (the updates up to it are
        still to come): if a gap follows before the book reaches it, the resync uses it
        at once (as after a recorder reconnect, whose new snapshot line can precede the
        first diff of the new connection). Older or equal ones are not needed (counted).
        """
        r = self.report
        if not held_back:
            self.snapshots += 1
        if self.synced:
            if last_id > self.local_id:
                self.held = (last_id, bids, asks, ts)
            else:
                r.count("snapshots_ignored_in_sync")
            return []
        self.held = None
        futures = bool(self.futures)
        drop = 0
        buf = self.buffer
        while buf and (buf[0].u < last_id if futures else buf[0].u <= last_id):
            buf.popleft()
            drop += 1
        r.unsynced += drop
        if buf:
            first = buf[0]
            if not (first.U <= last_id if futures else first.U <= last_id + 1):
                r.stale_snapshots += 1
                r.note(f"snapshot lastUpdateId={last_id} is older than the buffered updates "
                       f"(first buffered U={first.U}): not applied, waiting for the next snapshot")
                return []
        self.book.apply_snapshot(bids, asks)
        self.local_id = last_id
        # the snapshot is truncated (REST limit): beyond its last levels the book is unknown
        self.bid_floor = min((p for p, _ in bids), default=-math.inf)
        self.ask_ceiling = max((p for p, _ in asks), default=math.inf)
        self.synced = True
        self.first_after_snapshot = True
        if self.in_gap:
            r.resyncs += 1
            self.in_gap = False
            self.until_pending = True
        if self.book.crossed():
            r.crossed += 1
            self._gap(_Event(0, last_id, None, ts or 0, 0, (), ()),
                      f"snapshot lastUpdateId={last_id} is crossed", "crossed", keep=False)
            buf.clear()
            return []
        out: list = []
        pending = list(buf)
        buf.clear()
        for i, ev in enumerate(pending):
            if not self.synced:  # a gap inside the buffer: the rest waits for the next snapshot
                for rest in pending[i:]:
                    self._buffer(rest)
                break
            self._apply(ev, out)
        return out

    def snapshot(self) -> dict | None:
        """The whole local book as a REST-style snapshot object (None when not in sync):
        what a recorder writes into a capture so that a later reader can resync there."""
        if not self.synced:
            return None
        bids, asks = self.book.levels()
        return {"lastUpdateId": self.local_id,
                "bids": [[repr(p), repr(q)] for p, q in bids], "asks": [[repr(p), repr(q)] for p, q in asks]}

    def finish(self) -> None:
        """End of input: buffered events never synced are counted."""
        self.report.unsynced += len(self.buffer)
        self.buffer.clear()


def _tick(values, scale: int = 10**8) -> float | None:
    """Largest step (a multiple of 1e-8) dividing every value: the tick/lot size seen."""
    g = 0
    for v in values:
        g = math.gcd(g, int(round(v * scale)))
        if g == 1:
            break
    return g / scale if g else None


BOOK_TICKER = object()  # what `_fast_book_ticker` yields instead of the parsed JSON


def _fast_book_ticker(payload: bytes):
    """A combined-stream bookTicker line (counted only, never used): skip its JSON parse.
    Only its envelope is checked; any other line goes through the JSON parser."""
    if payload[-2:] == b"}}" and payload[:11] == b'{"stream":"' and b'@bookTicker","data":{' in payload[:64]:
        return BOOK_TICKER
    return None


def read(paths: list[Path], depth: int, symbol: str | None, report: ImportReport,
         sync: DepthSync | None = None, lines=None) -> Iterator[BookRow | TradeRow]:
    """The `binance-jsonl` reader (registered in `gpu_engine.data.books.importers.FORMATS`).

    `sync`: an existing `DepthSync` to continue (or to inspect while the generator is
    suspended after a row); by default a new one.
    `lines`: instead of reading `paths`, iterate these `(path, lineno, local_ts_ns, obj)`
    (what `iter_capture` yields; `obj` the parsed JSON) -- the live recorder's feed.
    """
    want = symbol.upper() if symbol else None
    report.extra.setdefault("exchange", "binance")
    if sync is None:
        sync = DepthSync(report, depth)
    depth_clock = _Clock("depthUpdate", report)
    trade_clock = _Clock("trade", report)
    last_trade_id = None
    bad_listed = 0
    chosen = want
    kinds: dict[str, str] = {}  # stream name -> kind ("btcusdt@depth@100ms" -> "depth")
    n_msgs = 0     # counted locally (hot loop), added to the report at the end
    n_ticker = 0
    if lines is None:
        lines = iter_capture(paths, report, "stamped", fast=_fast_book_ticker)
    for path, lineno, local, obj in lines:
        n_msgs += 1
        if obj is BOOK_TICKER:
            n_ticker += 1
            continue
        try:
            if type(obj) is not dict:
                raise _Bad("bad_lines", "JSON is not an object")
            data = obj.get("data")
            stream = obj.get("stream")
            if stream is not None:
                if type(stream) is not str or type(data) is not dict:
                    raise _Bad("bad_lines", "envelope without a stream name and a data object")
                kind = kinds.get(stream)
                if kind is None:
                    kind = kinds[stream] = stream.partition("@")[2].partition("@")[0]
            elif "lastUpdateId" in obj:
                kind = "snapshot"
                data = obj
            else:  # a bare stream event
                data = obj
                e = obj.get("e")
                kind = {"depthUpdate": DIFF_DEPTH, "trade": "trade", "bookTicker": "bookTicker"}.get(e)
                if kind is None:
                    kind = "bookTicker" if e is None and {"u", "b", "B", "a", "A"} <= obj.keys() else f"?{e}"

            if kind == "bookTicker":
                n_ticker += 1
                continue
            if kind == "snapshot":
                last_id = _int(data, "lastUpdateId")
                bids = _levels(data, "bids")
                asks = _levels(data, "asks")
                ts = data.get("E")
                ts = ts * 1_000_000 if type(ts) is int else None
                if "tick_size" not in report.extra and bids and asks:
                    report.extra["tick_size"] = _tick(p for p, _ in bids + asks)
                    report.extra["lot_size"] = _tick(q for _, q in bids + asks)
                emit = sync.on_snapshot(last_id, bids, asks, ts)
            elif kind == DIFF_DEPTH:
                if data.get("e") != "depthUpdate":
                    raise _Bad("bad_lines", f"depth stream event type {data.get('e')!r}")
                s = data.get("s")
                if chosen is None and type(s) is str:
                    chosen = s
                    report.note(f"no --symbol given: selected {s}, the first symbol seen")
                if s != chosen:
                    report.count("other_symbol")
                    continue
                U = data.get("U")
                u = data.get("u")
                pu = data.get("pu")
                if type(U) is not int or type(u) is not int or (pu is not None and type(pu) is not int):
                    raise _Bad("bad_lines", f"update ids not integers (U={U!r}, u={u!r}, pu={pu!r})")
                if U > u:
                    raise _Bad("bad_lines", f"first update id U={U} > final u={u}")
                fut = pu is not None
                if sync.futures is not fut:
                    if sync.futures is None:
                        sync.futures = fut
                        report.extra.setdefault("market", ("coinm" if "_" in s else "usdm") if fut else "spot")
                    else:
                        raise _Bad("bad_lines", "depthUpdate shape differs from the stream's (pu present/absent)")
                try:
                    ts = depth_clock.check(_int(data, "E") * 1_000_000, local)
                    try:
                        ev = _Event(U, u, pu, ts, local, parse_levels(data["b"], "b"), parse_levels(data["a"], "a"))
                    except LevelError as exc:
                        raise _Bad("negative_sizes" if exc.kind == "negative_size" else "bad_lines", str(exc)) from None
                    except KeyError as exc:
                        raise _Bad("bad_lines", f"field {exc.args[0]!r} missing") from None
                except _Bad as exc:
                    sync.refuse(U, u, local, str(exc))
                    raise
                emit = sync.on_depth(ev)
            elif kind == "trade":
                if data.get("e") != "trade":
                    raise _Bad("bad_lines", f"trade stream event type {data.get('e')!r}")
                s = data.get("s")
                if chosen is None and type(s) is str:
                    chosen = s
                    report.note(f"no --symbol given: selected {s}, the first symbol seen")
                if s != chosen:
                    report.count("other_symbol")
                    continue
                tid = _int(data, "t")
                # ts = publish time (event time E), match_ts = trade time T: no fill or feature at a
                # book row may use a trade published after it (docs/RULES.md)
                t_ms = data.get("E", data.get("T"))
                if type(t_ms) is not int:
                    raise _Bad("bad_lines", f"field 'E': not an integer ({t_ms!r})")
                m_ms = data.get("T", t_ms)
                if type(m_ms) is not int:
                    raise _Bad("bad_lines", f"field 'T': not an integer ({m_ms!r})")
                m = data.get("m")
                if type(m) is not bool:
                    raise _Bad("bad_lines", f"field 'm': not a boolean ({m!r})")
                try:
                    px = float(data["p"])
                    qty = float(data["q"])
                except (KeyError, TypeError, ValueError):
                    raise _Bad("bad_lines", "field 'p'/'q': not a number") from None
                if qty < 0:
                    raise _Bad("negative_sizes", f"negative trade quantity {data['q']!r}")
                if not (0 < px < math.inf and 0 < qty < math.inf):
                    raise _Bad("bad_lines", f"trade price/quantity not a positive finite number: "
                                            f"{data['p']!r}/{data['q']!r}")
                if last_trade_id is not None and tid <= last_trade_id:
                    report.duplicates += 1
                    report.count("trades_out_of_order_or_repeated")
                    continue
                ts = trade_clock.check(t_ms * 1_000_000, local)
                if last_trade_id is not None and tid != last_trade_id + 1:
                    report.count("trade_id_gaps")
                last_trade_id = tid
                yield TradeRow(ts, px, qty, -1 if m else 1, chosen or "", m_ms * 1_000_000)
                continue
            elif kind in IGNORED_STREAMS or kind.startswith("kline"):
                report.count(f"ignored_{kind}")
                continue
            else:
                report.count("unknown_stream")
                if stream is None and obj.get("e") is None:
                    raise _Bad("bad_lines", sniff.not_this("binance-jsonl", obj))
                raise _Bad("bad_lines", f"unknown stream {stream or obj.get('e')!r}")
        except _Bad as exc:
            if exc.kind == "bad_lines":
                report.bad_lines += 1
            elif exc.kind == "negative_sizes":
                report.negative_sizes += 1
            elif exc.kind == "time_backwards":
                report.time_backwards += 1
            bad_listed += 1
            if bad_listed <= MAX_LISTED_BAD:
                report.note(f"{path.name}:{lineno}: refused ({exc})")
            continue
        for ev, (bid_px, ask_px, bid_sz, ask_sz) in emit:
            if sync.until_pending:
                report.gaps[-1]["until"] = ev.ts
                sync.until_pending = False
            yield BookRow(ev.ts, ev.u, bid_px, ask_px, bid_sz, ask_sz, ev.local, chosen or "")
    sync.finish()
    report.messages += n_msgs
    if n_ticker:
        report.count("book_ticker", n_ticker)
    if chosen:
        report.symbol = chosen
        report.extra.setdefault("symbol", chosen)
    if sync.snapshots == 0:
        report.note("no depth snapshot line in the input: the book could not be synced, no book rows emitted")
    elif sync.in_gap:
        report.note("the last gap was never resynced (no later snapshot line)")
