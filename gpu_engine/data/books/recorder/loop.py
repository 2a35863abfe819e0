"""The recorder loop, shared by every venue: connections, backoff, signals, flushing, status, raw capture.

Owns the live plumbing only: WebSocket (`websockets`) and REST (`httpx`) clients,
reconnects with exponential backoff + jitter, signal handling, flushing, the raw
capture writer and the status line. What differs per venue (URL, subscription, snapshot
fetch, frame routing, what a gap means) is the venue's `Adapter` (`recorder/binance.py`,
`coinbase.py`, `bybit.py`). Book maintenance and parsing are not here either: an adapter
turns every frame into exactly the capture line the importer reads and feeds it, in that
order, through the importer's own reader (`LiveReader`), so a recording equals the import
of its own `--raw` capture by construction. Rows go to the shared `BookStoreWriter`
(incremental: every flushed row is readable after a `kill -9`).

`LiveReader` runs an importer reader (a generator over capture lines) in a worker thread,
in lockstep with the event loop (one line in, that line's rows out), handing it the live
lines through the reader's `lines=` parameter.

A dropped connection is logged, recorded in the store's gaps (kind `disconnect`) and
reconnected with backoff; an adapter may also ask for a reconnect (`ExchangeError`: the
exchange sent an error; `Resync`: the book can only come back through a new
subscription). Invalid symbol or unreachable endpoint at start: `InputError` -> one line,
exit 2, nothing left behind.

`--clock server` stamps receive times on the exchange's clock (wall clock plus the
offset to the exchange's server time measured once at start): for re-recording an old
capture through a loopback fake exchange whose messages carry their original times.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import os
import queue
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gpu_engine.data.books import contract
from gpu_engine.errors import InputError

# the command's logger (tests and users filter on this name)
log = logging.getLogger("gpu_engine.data.books.record")

SYMBOL_RE = re.compile(r"^[A-Za-z0-9_\-]{2,30}$")


def parse_duration(text: str) -> float:
    """'1h', '30m', '90s', '1.5h', '2d' or plain seconds -> seconds (> 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise InputError(f"--duration: not a duration {text!r} (e.g. 90s, 30m, 1h)")
    v = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if v <= 0:
        raise InputError(f"--duration must be > 0, got {text!r}")
    return v


class Backoff:
    """Exponential backoff with jitter: delay n = uniform(0.5, 1) * min(cap, base * 2**n)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base, self.cap = float(base), float(cap)
        self.n = 0
        self.rng = rng or random.Random()

    def next(self, at_least: float = 0.0) -> float:
        d = min(self.cap, self.base * (2 ** min(self.n, 30)))
        self.n += 1
        return max(min(at_least, self.cap), d * self.rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.n = 0


class RawCapture:
    """`<local_ts_ns> <json>` lines (or whole lines in another capture shape), gzip when the name
    ends in .gz. Flushed with the store (gzip sync flush: everything flushed decompresses even if
    the process dies later)."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f"{self.path}: raw capture already exists (refusing to overwrite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = (gzip.open(self.path, "wb", compresslevel=6) if self.path.suffix == ".gz"
                    else open(self.path, "wb"))
        self.lines = 0

    def write(self, local_ts: int, text: str) -> None:
        self._fh.write(b"%d %s\n" % (local_ts, text.encode("utf-8")))
        self.lines += 1

    def write_line(self, line: str) -> None:
        self._fh.write(line.encode("utf-8") + b"\n")
        self.lines += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


# ----------------------------------------------------------------------------- the importer's reader, live

_LINE_DONE = object()
_READER_END = object()


class _LiveSource:
    """What a reader iterates instead of a file: lines pushed one at a time (worker thread)."""

    path = Path("<live>")

    def __init__(self, shape):
        self.inq: queue.SimpleQueue = queue.SimpleQueue()
        self.outq: queue.SimpleQueue = queue.SimpleQueue()
        self.shape = shape  # (path, lineno, item) -> the tuple the reader's line iterator yields

    def __fspath__(self) -> str:  # never opened: only lets Path-minded code name it
        return "<live>"

    def lines(self):
        lineno = 0
        while True:
            self.outq.put(_LINE_DONE)  # every row of the previous line has been yielded
            item = self.inq.get()
            if item is None:
                return
            lineno += 1
            yield self.shape(self.path, lineno, item)


# the line tuples the readers iterate: "stamped" (binance): (path, lineno, local_ts, obj), item =
# (local_ts, obj); "tagged" (coinbase, bybit, hyperliquid): (kind, path, lineno, local_ts, payload),
# item = (kind, local_ts, payload)
SHAPES = {
    "stamped": lambda path, n, item: (path, n, item[0], item[1]),
    "tagged": lambda path, n, item: (item[0], path, n, item[1], item[2]),
}


class LiveReader:
    """Drives the importer's generator `module.read(paths, depth, symbol, report, lines=..., **kwargs)`
    one line at a time, in a worker thread, in lockstep: `feed(*item)` returns the rows that line made.

    `sync`: Binance's `DepthSync`, passed to the reader and kept here for the adapter to inspect.
    """

    def __init__(self, module, depth: int, symbol: str, shape: str = "stamped", sync=None, **kwargs):
        from gpu_engine.data.books.feeds.events import ImportReport

        self.module = module
        self.report = ImportReport()
        self.sync = sync(self.report, depth) if callable(sync) else sync
        self._src = _LiveSource(SHAPES[shape])
        if self.sync is not None:
            kwargs["sync"] = self.sync
        kwargs["lines"] = self._src.lines()
        self._gen = module.read([], depth, symbol, self.report, **kwargs)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="live-reader", daemon=True)
        self._thread.start()
        self._expect_done()

    def _work(self) -> None:
        try:
            for row in self._gen:
                self._src.outq.put(row)
        except BaseException as exc:  # surfaced in feed()
            self._error = exc
        self._src.outq.put(_READER_END)

    def _expect_done(self) -> list:
        rows = []
        while True:
            item = self._src.outq.get()
            if item is _LINE_DONE:
                return rows
            if item is _READER_END:
                raise RuntimeError(f"live reader stopped: {self._error!r}")
            rows.append(item)

    def feed(self, *item) -> list:
        """One line: "stamped" (local_ts, obj); "tagged" (kind, local_ts, payload)."""
        self._src.inq.put(item)
        return self._expect_done()

    def close(self) -> None:
        self._src.inq.put(None)
        self._thread.join(10)

    def needs_snapshot(self) -> bool:
        """Diffs are buffered and there is no book: a REST snapshot is wanted (Binance only)."""
        return self.sync is not None and not self.sync.synced and bool(self.sync.buffer)


# ----------------------------------------------------------------------------- venue adapters

class ExchangeError(Exception):
    """The exchange sent an error message on the stream: reconnect with backoff."""


class Resync(Exception):
    """The book is lost and only a new connection (subscription) brings it back."""


class Adapter:
    """One venue: what the loop asks of it. Subclasses set the class attributes and override
    what their venue needs; `rec` is the `Recorder` (config, stats, reader, raw capture, store)."""

    ws = ""                 # default WebSocket base URL
    rest = ""               # default REST base URL
    format = ""             # the importer format the raw capture is in

    def __init__(self, rec: "Recorder"):
        self.rec = rec
        self.streams: tuple = ()

    # -- set-up
    def ws_url(self) -> str:
        return self.rec.ws_base

    async def startup_check(self, http) -> dict:
        """Symbol valid and endpoints reachable, else InputError; returns {tick_size, lot_size}
        and may set `rec.clock_offset` (--clock server)."""
        raise NotImplementedError

    def make_reader(self) -> LiveReader:
        raise NotImplementedError

    def store_attrs(self) -> dict:
        """Extra store attrs (market, ...)."""
        return {}

    # -- a connection
    async def on_connect(self, ws, url: str) -> None:
        """Just connected: subscribe, write a connection header, ..."""

    def handle_frame(self, local: int, text: str) -> None:
        """One received frame (text): route, write the capture line, feed the reader, store rows.
        May raise ExchangeError or Resync."""
        raise NotImplementedError

    async def tick(self, ws) -> None:
        """Called every loop turn (at least every 0.25 s): pings, resubscribes, timeouts."""

    # -- REST snapshots (Binance)
    def needs_snapshot(self) -> bool:
        return False

    async def fetch_snapshot(self, http, delay: float):
        return None

    def feed_snapshot(self, line) -> bool:
        """Feed a fetched snapshot; True when the book is in sync again (backoffs reset)."""
        return False

    # -- bookkeeping
    def gap_seq(self) -> int:
        """The last good update id, for a disconnect gap (-1 if none)."""
        return -1

    def last_ts(self) -> int | None:
        """Exchange time of the last book row, if known."""
        return None


# ----------------------------------------------------------------------------- the recorder

@dataclass
class RecordConfig:
    exchange: str
    symbol: str
    out: Path
    depth: int = 20
    duration: float | None = None
    raw: Path | None = None
    ws_url: str | None = None
    rest_url: str | None = None
    flush_seconds: float = 5.0
    flush_rows: int = 10_000
    status_seconds: float = 5.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    clock: str = "local"
    chunk_rows: int = 16_384


@dataclass
class RecordStats:
    frames: int = 0
    conn_frames: int = 0       # frames on the current connection, counted once fully processed
    messages: int = 0          # frames fed to the reader
    bad_frames: int = 0        # non-JSON / not an object
    unknown: int = 0           # unknown stream or message type
    exchange_errors: int = 0
    connects: int = 0
    disconnects: int = 0
    snapshots: int = 0         # snapshot lines fed (REST snapshots)
    snapshot_failures: int = 0
    resubscribes: int = 0      # book resubscriptions on a live connection (Bybit)
    pings: int = 0             # application-level pings sent (Bybit)
    rows: int = 0
    trades: int = 0
    refused_rows: int = 0
    flushed_rows: int = 0
    lag_ms: float = math.nan   # local receive - exchange event time (last depth/trade)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


class Recorder:
    """One recording session. `await run()`; `request_stop()` from anywhere (thread-safe)."""

    def __init__(self, cfg: RecordConfig):
        from gpu_engine.data.books.recorder import ADAPTERS

        if cfg.exchange not in ADAPTERS:
            raise InputError(f"--exchange {cfg.exchange}: not supported by this recorder "
                             f"(supported: {', '.join(ADAPTERS)})")
        if not SYMBOL_RE.match(cfg.symbol):
            raise InputError(f"--symbol {cfg.symbol!r}: not a symbol")
        if cfg.depth < 1:
            raise InputError(f"--depth must be >= 1, got {cfg.depth}")
        self.cfg = cfg
        self.symbol = cfg.symbol.upper()
        cls = ADAPTERS[cfg.exchange]
        self.ws_base = (cfg.ws_url or cls.ws).rstrip("/")
        self.rest_base = (cfg.rest_url or cls.rest).rstrip("/")
        self.stats = RecordStats()
        self.disconnect_gaps: list[dict] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock_offset = 0
        self._last_flush = time.monotonic()
        self._last_status = time.monotonic()
        self._status_msgs = 0
        self._tty = sys.stderr.isatty()
        self.reader: LiveReader | None = None
        self.writer = None
        self.raw: RawCapture | None = None
        self.attrs: dict = {}
        self._backoff = Backoff(cfg.backoff_base, cfg.backoff_max)
        self.adapter: Adapter = cls(self)

    # -- control
    def request_stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def now_ns(self) -> int:
        return time.time_ns() + self.clock_offset

    def ws_url(self) -> str:
        return self.adapter.ws_url()

    def log(self, level: int, msg: str) -> None:
        log.log(level, msg)


    # -- main
    async def run(self) -> int:
        import httpx

        from gpu_engine.data.books.store import BookStoreWriter

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests call request_stop instead)
        deadline = None if self.cfg.duration is None else time.monotonic() + self.cfg.duration
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=not is_loopback(self.rest_base),
                                     headers={"User-Agent": "gpu-engine-recorder"}) as http:
            info = await self.adapter.startup_check(http)
            self.attrs = {
                "exchange": self.cfg.exchange, "symbol": self.symbol, "format": self.adapter.format,
                "tick_size": info.get("tick_size"), "lot_size": info.get("lot_size"),
                **self.adapter.store_attrs(),
                **contract.resolve(self.adapter.format, self.symbol, {**info, **self.adapter.store_attrs()}, {},
                                   str(self.cfg.out)),
                "source": [{"recorder": self.ws_url(), "rest": self.rest_base, "streams": list(self.adapter.streams),
                            "started_ns": time.time_ns()}],
                "clock": self.cfg.clock,
            }
            self.raw = RawCapture(self.cfg.raw) if self.cfg.raw else None
            try:
                self.writer = BookStoreWriter(self.cfg.out, self.cfg.depth, dict(self.attrs),
                                              chunk_rows=self.cfg.chunk_rows, incremental=True)
            except FileExistsError as exc:
                if self.raw is not None:
                    self.raw.close()
                    os.unlink(self.raw.path)
                raise InputError(str(exc)) from None
            self.reader = self.adapter.make_reader()
            try:
                await self._loop_sessions(http, deadline)
            except InputError:
                if self.stats.connects == 0:  # never connected: leave nothing behind
                    self._discard()
                    raise
                self._finish()
                raise
            except BaseException:
                self._finish()
                raise
            self._finish()
        return 0

    def _discard(self) -> None:
        import shutil

        self.reader.close()
        self.writer.abort()
        shutil.rmtree(self.cfg.out, ignore_errors=True)
        if self.raw is not None:
            self.raw.close()
            self.raw.path.unlink(missing_ok=True)

    async def _loop_sessions(self, http, deadline) -> None:
        backoff = self._backoff
        first = True
        while not self.stopping:
            reason = None
            try:
                # a signal also interrupts a connect in progress (open_timeout is 10 s)
                session = asyncio.ensure_future(self._session(http, deadline))
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait([session, stop], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not session.done():
                    session.cancel()
                    try:
                        await session
                    except (asyncio.CancelledError, Exception):
                        pass
                    return
                session.result()
                return  # stop or deadline
            except ExchangeError as exc:
                reason = f"exchange error: {exc}"
            except Resync as exc:
                reason = f"resync: {exc}"
            except InputError:
                raise
            except Exception as exc:  # connection dropped, refused, timed out, protocol error
                if first and self.stats.connects == 0:
                    raise InputError(f"cannot connect to {self.ws_url()}: {type(exc).__name__}: {exc}") from None
                reason = f"connection lost: {type(exc).__name__}: {exc}"
            first = False
            self.stats.disconnects += 1
            t = self.adapter.last_ts()
            self.disconnect_gaps.append({"time": int(t) if t is not None else self.now_ns(), "reason": reason,
                                         "kind": "disconnect", "seq": self.adapter.gap_seq(),
                                         "local_ns": self.now_ns()})
            delay = backoff.next()
            self.log(logging.WARNING, f"{reason}; reconnecting in {delay:.2f} s")
            self._maybe_flush(force=True)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                return

    async def _session(self, http, deadline) -> None:
        from websockets.asyncio.client import connect

        url = self.ws_url()
        ad = self.adapter
        async with connect(url, proxy=None if is_loopback(url) else True, max_size=None, open_timeout=10,
                           ping_interval=20, ping_timeout=20, close_timeout=2) as ws:
            self.stats.connects += 1
            self.stats.conn_frames = 0
            self.log(logging.INFO, f"connected to {url}")
            await ad.on_connect(ws, url)
            snap_task: asyncio.Task | None = None
            snap_backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_max)
            recv = asyncio.ensure_future(ws.recv())
            try:
                while True:
                    if self.stopping or (deadline is not None and time.monotonic() >= deadline):
                        return
                    waits = [recv] if snap_task is None else [recv, snap_task]
                    done, _ = await asyncio.wait(waits, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                    if snap_task is not None and snap_task in done:
                        line = snap_task.result()
                        snap_task = None
                        if line is not None and ad.feed_snapshot(line):
                            snap_backoff.reset()
                            self._backoff.reset()
                    if recv in done:
                        frame = recv.result()  # raises ConnectionClosed on a dropped connection
                        recv = asyncio.ensure_future(ws.recv())
                        self._on_frame(frame)
                    if snap_task is None and ad.needs_snapshot():
                        delay = 0.0 if snap_backoff.n == 0 else snap_backoff.next()
                        if snap_backoff.n == 0:
                            snap_backoff.n = 1  # the next refusal (stale snapshot) backs off
                        snap_task = asyncio.ensure_future(ad.fetch_snapshot(http, delay))
                    await ad.tick(ws)
                    self._maybe_flush()
                    self._maybe_status()
            finally:
                for t in (recv, snap_task):
                    if t is not None and not t.done():
                        t.cancel()
                        try:
                            await t
                        except BaseException:
                            pass

    # -- frames (helpers for the adapters)
    def _on_frame(self, frame) -> None:
        local = self.now_ns()
        self.stats.frames += 1
        self._status_msgs += 1
        try:
            text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
            self.adapter.handle_frame(local, text)
        finally:
            self.stats.conn_frames += 1

    def parse_frame(self, text: str):
        """The frame's JSON object, or None (counted and logged) for non-JSON / non-object frames."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            self.stats.bad_frames += 1
            self.log_limited(f"non-JSON frame ignored ({exc}): {text[:80]!r}")
            return None
        if not isinstance(obj, dict):
            self.stats.bad_frames += 1
            self.log_limited(f"frame is not a JSON object, ignored: {text[:80]!r}")
            return None
        return obj

    def unknown(self, text: str, what: str = "unknown message type") -> None:
        self.stats.unknown += 1
        self.log_limited(f"{what} ignored: {text[:80]!r}")

    def store(self, rows) -> None:
        w = self.writer
        for row in rows:
            try:
                if hasattr(row, "bid_px"):
                    w.append_row(row)
                    self.stats.rows += 1
                else:
                    w.append_trade(row)
                    self.stats.trades += 1
            except ValueError as exc:  # out-of-order time: never corrupt the store
                self.stats.refused_rows += 1
                self.log(logging.WARNING, f"row refused by the store: {exc}")


    def log_limited(self, msg: str) -> None:
        n = self.stats.bad_frames + self.stats.unknown
        if n <= 20 or n % 1000 == 0:
            self.log(logging.WARNING, msg + ("" if n < 20 else f" (#{n}; further ones logged every 1000th)"))


    # -- flush / status / finish
    def _gaps(self) -> list[dict]:
        gaps = [dict(g) for g in self.reader.report.gaps] + [dict(g) for g in self.disconnect_gaps]
        gaps.sort(key=lambda g: (g.get("time") or 0))
        return gaps

    def _counters(self) -> dict:
        s = self.stats
        r = self.reader.report
        out = {"frames": s.frames, "messages": s.messages, "bad_frames": s.bad_frames, "unknown": s.unknown,
               "exchange_errors": s.exchange_errors, "connects": s.connects, "disconnects": s.disconnects,
               "snapshots": s.snapshots, "snapshot_failures": s.snapshot_failures, "rows": s.rows,
               "trades": s.trades, "refused_rows": s.refused_rows, "gaps": len(r.gaps), "resyncs": r.resyncs,
               "stale_snapshots": r.stale_snapshots, "reader_bad_lines": r.bad_lines,
               "raw_lines": self.raw.lines if self.raw is not None else 0}
        if s.resubscribes or s.pings:
            out.update(resubscribes=s.resubscribes, pings=s.pings)
        return out

    def _maybe_flush(self, force: bool = False) -> None:
        w = self.writer
        pending = w.rows - self.stats.flushed_rows
        now = time.monotonic()
        if not force and pending < self.cfg.flush_rows and now - self._last_flush < self.cfg.flush_seconds:
            return
        if self.raw is not None:
            self.raw.flush()  # the capture is never behind the store
        w.set_attrs(gaps=self._gaps(), record=self._counters())
        w.flush()
        self.stats.flushed_rows = w.rows
        self._last_flush = now
        self._status(flushed=True)

    def _maybe_status(self) -> None:
        if time.monotonic() - self._last_status >= self.cfg.status_seconds:
            self._status()

    def status_line(self) -> str:
        s = self.stats
        r = self.reader.report
        now = time.monotonic()
        rate = self._status_msgs / max(1e-9, now - self._last_status)
        lag = "-" if math.isnan(s.lag_ms) else f"{s.lag_ms:,.0f} ms"
        return (f"record {self.symbol}: {rate:,.0f} msg/s, rows {s.rows:,} (flushed {s.flushed_rows:,}), "
                f"trades {s.trades:,}, gaps {len(r.gaps)}, resyncs {r.resyncs}, disconnects {s.disconnects}, "
                f"lag {lag}")

    def _status(self, flushed: bool = False) -> None:
        line = self.status_line()
        self._last_status = time.monotonic()
        self._status_msgs = 0
        if self._tty:
            sys.stderr.write("\r\x1b[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _finish(self) -> None:
        """Flush everything and close: the store opens whole (complete=True)."""
        try:
            if self.raw is not None:
                self.raw.close()
            if self.writer is not None:
                self.writer.set_attrs(gaps=self._gaps(), record=self._counters(),
                                      import_notes=list(self.reader.report.notes))
                self.writer.close()
                self.stats.flushed_rows = self.writer.rows
        finally:
            if self.reader is not None:
                self.reader.close()
        if self._tty:
            sys.stderr.write("\n")
        sys.stderr.write(self.status_line() + f" -> {self.cfg.out} closed\n")
        sys.stderr.flush()


def secs(ns: int) -> str:
    """ns -> exact decimal seconds, the cryptofeed stamp the tagged readers parse."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def json_or_none(r):
    try:
        return r.json()
    except ValueError:
        return None


def to_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

