"""`python -m gpu_engine.data record`: live Binance / Coinbase WebSocket order book -> book store (+ raw capture).

Owns the live plumbing only: WebSocket (`websockets`) and REST (`httpx`) clients,
reconnects with exponential backoff + jitter, signal handling, flushing, the raw
capture writer and the status line. Book maintenance and parsing are NOT here:
every frame becomes exactly the capture line the importer reads (`<local_ts_ns>
<json>`, the REST snapshot as its own line) and is fed, in that order, through the
importer's own reader (`gpu_engine.data.books.feeds.binance.read` with its `DepthSync`).
So a recording equals the import of its own `--raw` capture by construction, and
the rows go to the shared `BookStoreWriter` (incremental: every flushed row is
readable after a `kill -9`). The readers are generators over capture lines, so
`LiveReader` runs one in a worker thread, in lockstep with the event loop (one line
in, that line's rows out), handing it the live lines through the reader's `lines=`
parameter.

Sync (Binance's documented diff-depth procedure, as in `feeds/binance.py`): subscribe to `<sym>@depth@100ms`, `<sym>@trade`,
`<sym>@bookTicker` on the combined-stream endpoint; when the reader holds
buffered diffs and no book (start, or after a gap it detected), GET a REST
snapshot and feed it; a stale snapshot (older than the buffered diffs) is
refused by the reader and fetched again. A dropped connection is logged,
recorded in the store's gaps (kind `disconnect`) and reconnected with backoff;
if diffs were lost meanwhile, the reader sees the id gap and a fresh snapshot
resyncs the book (a reconnect that lost nothing keeps a provably continuous book).

Coinbase (Exchange feed, public `level2_batch` + `matches` + `heartbeat`): the
subscription itself brings the snapshot; lines are written and fed in the cryptofeed
capture shape that `feeds/coinbase.py` reads (`<seconds>: <json>`, and a
`<url> <-> <seconds>` header at every connection, which makes the reader drop the
book until the next snapshot). level2 has no sequence numbers, so a gap is what
the reader flags (malformed or crossed book) or a dropped connection: either way
the recorder reconnects, and the new subscription's snapshot resyncs the book.

Bad input: non-JSON frames, unknown streams or message types (logged, counted,
not written to the capture), an exchange error message (logged, reconnect with
backoff), HTTP 429/5xx or an unreadable snapshot (logged, retried with backoff,
honouring Retry-After). Invalid symbol or unreachable endpoint at start:
`InputError` -> one line, exit 2.

`--clock server` stamps receive times on the exchange's clock (wall clock plus
the offset to `serverTime` measured once at start): for re-recording an old
capture through `gpu_engine.testing.fake_exchange`, whose messages carry their
original (e.g. 2024) times, which the reader would otherwise refuse as a day off.
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

from gpu_engine.errors import InputError

log = logging.getLogger("gpu_engine.data.books.record")

EXCHANGES = {
    "binance": {"ws": "wss://stream.binance.com:9443", "rest": "https://api.binance.com",
                "depth_path": "/api/v3/depth", "info_path": "/api/v3/exchangeInfo", "limit": 1000},
    "binance-usdm": {"ws": "wss://fstream.binance.com", "rest": "https://fapi.binance.com",
                     "depth_path": "/fapi/v1/depth", "info_path": "/fapi/v1/exchangeInfo", "limit": 1000},
    # Exchange feed: level2_batch is the public (unauthenticated) level2 channel, same schema
    "coinbase": {"ws": "wss://ws-feed.exchange.coinbase.com", "rest": "https://api.exchange.coinbase.com",
                 "info_path": "/products/{symbol}", "time_path": "/time",
                 "channels": ("level2_batch", "matches", "heartbeat")},
}
COINBASE_FED = frozenset({"snapshot", "l2update", "match", "last_match"})
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
    """`<local_ts_ns> <json>` lines, gzip when the name ends in .gz. Flushed with the store
    (gzip sync flush: everything flushed decompresses even if the process dies later)."""

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
    """What `binance.read` iterates instead of a file: lines pushed one at a time (worker thread)."""

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


# the line tuples the readers iterate: binance (path, lineno, local_ts, obj);
# coinbase (kind, path, lineno, local_ts, payload), item = (kind, local_ts, payload)
_SHAPES = {
    "binance": lambda path, n, item: (path, n, item[0], item[1]),
    "coinbase": lambda path, n, item: (item[0], path, n, item[1], item[2]),
}


class LiveReader:
    """Drives the importer's generator `read(paths, depth, symbol, report, sync=...)` one line at a
    time, in a worker thread, in lockstep: `feed(local_ts, obj)` returns the rows that line made."""

    def __init__(self, module, depth: int, symbol: str, feed: str = "binance"):
        from gpu_engine.data.books.feeds.events import ImportReport

        self.module = module
        self.report = ImportReport()
        shape = _SHAPES[feed]
        self.sync = module.DepthSync(self.report, depth) if feed == "binance" else None
        self._src = _LiveSource(shape)
        kwargs = {"sync": self.sync} if self.sync is not None else {}
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
        """One line: binance (local_ts, obj); coinbase (kind, local_ts, payload)."""
        self._src.inq.put(item)
        return self._expect_done()

    def close(self) -> None:
        self._src.inq.put(None)
        self._thread.join(10)

    def needs_snapshot(self) -> bool:
        """Diffs are buffered and there is no book: a REST snapshot is wanted (Binance only)."""
        return self.sync is not None and not self.sync.synced and bool(self.sync.buffer)


# ----------------------------------------------------------------------------- the recorder

class _ExchangeError(Exception):
    """The exchange sent an error message on the stream: reconnect with backoff."""


class _Resync(Exception):
    """Coinbase: the reader lost the book; a new subscription (connection) brings a snapshot."""


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
    snapshots: int = 0         # snapshot lines fed
    snapshot_failures: int = 0
    rows: int = 0
    trades: int = 0
    refused_rows: int = 0
    flushed_rows: int = 0
    lag_ms: float = math.nan   # local receive - exchange event time (last depth/trade)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


class Recorder:
    """One recording session. `await run()`; `request_stop()` from anywhere (thread-safe)."""

    def __init__(self, cfg: RecordConfig):
        if cfg.exchange not in EXCHANGES:
            raise InputError(f"--exchange {cfg.exchange}: not supported by this recorder "
                             f"(supported: {', '.join(EXCHANGES)})")
        if not SYMBOL_RE.match(cfg.symbol):
            raise InputError(f"--symbol {cfg.symbol!r}: not a symbol")
        if cfg.depth < 1:
            raise InputError(f"--depth must be >= 1, got {cfg.depth}")
        self.cfg = cfg
        ex = EXCHANGES[cfg.exchange]
        self.ex = ex
        self.symbol = cfg.symbol.upper()
        self.ws_base = (cfg.ws_url or ex["ws"]).rstrip("/")
        self.rest_base = (cfg.rest_url or ex["rest"]).rstrip("/")
        self.coinbase = cfg.exchange == "coinbase"
        s = self.symbol.lower()
        self.streams = ex["channels"] if self.coinbase else (f"{s}@depth@100ms", f"{s}@trade", f"{s}@bookTicker")
        self.stats = RecordStats()
        self.disconnect_gaps: list[dict] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock_offset = 0
        self._last_flush = time.monotonic()
        self._last_status = time.monotonic()
        self._status_msgs = 0
        self._tty = sys.stderr.isatty()
        self.reader: LiveReader | None = None
        self.writer = None
        self.raw: RawCapture | None = None
        self.attrs: dict = {}

    # -- control
    def request_stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def now_ns(self) -> int:
        return time.time_ns() + self._clock_offset

    def _log(self, level: int, msg: str) -> None:
        log.log(level, msg)

    # -- main
    async def run(self) -> int:
        import httpx

        from gpu_engine.data.books.store import BookStoreWriter
        from gpu_engine.data.books.feeds import binance, coinbase

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests call request_stop instead)
        deadline = None if self.cfg.duration is None else time.monotonic() + self.cfg.duration
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=not _is_loopback(self.rest_base),
                                     headers={"User-Agent": "gpu-engine-recorder"}) as http:
            info = await self._startup_check(http)
            self.attrs = {
                "exchange": self.cfg.exchange, "symbol": self.symbol,
                "format": "coinbase-jsonl" if self.coinbase else "binance-jsonl",
                "tick_size": info.get("tick_size"), "lot_size": info.get("lot_size"),
                "source": [{"recorder": self.ws_url(), "rest": self.rest_base, "streams": list(self.streams),
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
            self.reader = (LiveReader(coinbase, self.cfg.depth, self.symbol, "coinbase") if self.coinbase
                           else LiveReader(binance, self.cfg.depth, self.symbol))
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

    async def _startup_check(self, http) -> dict:
        """Symbol valid and endpoints reachable, else InputError (exit 2)."""
        import httpx

        if self.coinbase:
            return await self._startup_check_coinbase(http)
        url = self.rest_base + self.ex["info_path"]
        try:
            r = await http.get(url, params={"symbol": self.symbol})
        except httpx.HTTPError as exc:
            raise InputError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        body = _json_or_none(r)
        if r.status_code == 400 and isinstance(body, dict) and body.get("code") == -1121:
            raise InputError(f"invalid symbol {self.symbol!r} on {self.cfg.exchange}: {body.get('msg')}")
        if r.status_code != 200 or not isinstance(body, dict):
            raise InputError(f"{url}: HTTP {r.status_code} at start: {r.text[:200]!r}")
        out = {}
        for sym in body.get("symbols") or []:
            if sym.get("symbol") == self.symbol:
                for f in sym.get("filters") or []:
                    if f.get("filterType") == "PRICE_FILTER":
                        out["tick_size"] = _float(f.get("tickSize"))
                    elif f.get("filterType") == "LOT_SIZE":
                        out["lot_size"] = _float(f.get("stepSize"))
        if self.cfg.clock == "server" and isinstance(body.get("serverTime"), int):
            self._clock_offset = body["serverTime"] * 1_000_000 - time.time_ns()
        return out

    async def _startup_check_coinbase(self, http) -> dict:
        import httpx

        url = self.rest_base + self.ex["info_path"].format(symbol=self.symbol)
        try:
            r = await http.get(url)
            t = await http.get(self.rest_base + self.ex["time_path"]) if self.cfg.clock == "server" else None
        except httpx.HTTPError as exc:
            raise InputError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        body = _json_or_none(r)
        if r.status_code in (400, 404):
            msg = body.get("message") if isinstance(body, dict) else r.text[:80]
            raise InputError(f"invalid symbol {self.symbol!r} on coinbase: {msg}")
        if r.status_code != 200 or not isinstance(body, dict):
            raise InputError(f"{url}: HTTP {r.status_code} at start: {r.text[:200]!r}")
        tb = _json_or_none(t) if t is not None else None
        if isinstance(tb, dict) and isinstance(tb.get("epoch"), (int, float)):
            self._clock_offset = int(tb["epoch"] * 1e9) - time.time_ns()
        return {"tick_size": _float(body.get("quote_increment")), "lot_size": _float(body.get("base_increment"))}

    async def _loop_sessions(self, http, deadline) -> None:
        backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_max)
        self._backoff = backoff
        first = True
        while not self.stopping:
            reason = None
            try:
                # a signal also interrupts a connect in progress (open_timeout is 10 s)
                session = asyncio.ensure_future(self._session(http, deadline, first))
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
            except _ExchangeError as exc:
                reason = f"exchange error: {exc}"
            except _Resync as exc:
                reason = f"resync: {exc}"
            except InputError:
                raise
            except Exception as exc:  # connection dropped, refused, timed out, protocol error
                if first and self.stats.connects == 0:
                    raise InputError(f"cannot connect to {self.ws_url()}: {type(exc).__name__}: {exc}") from None
                reason = f"connection lost: {type(exc).__name__}: {exc}"
            first = False
            self.stats.disconnects += 1
            t = self._last_ts()
            self.disconnect_gaps.append({"time": t, "reason": reason, "kind": "disconnect",
                                         "seq": self.reader.sync.local_id if self.reader.sync is not None else -1,
                                         "local_ns": self.now_ns()})
            delay = backoff.next()
            self._log(logging.WARNING, f"{reason}; reconnecting in {delay:.2f} s")
            self._maybe_flush(force=True)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                return

    def ws_url(self) -> str:
        if self.coinbase:
            return self.ws_base
        return f"{self.ws_base}/stream?streams={'/'.join(self.streams)}"

    def _last_ts(self) -> int:
        sync = self.reader.sync if self.reader is not None else None
        bt = sync.book_ts if sync is not None else None
        return int(bt) if bt is not None else self.now_ns()

    async def _session(self, http, deadline, first: bool) -> None:
        from websockets.asyncio.client import connect

        url = self.ws_url()
        async with connect(url, proxy=None if _is_loopback(url) else True, max_size=None, open_timeout=10,
                           ping_interval=20, ping_timeout=20, close_timeout=2) as ws:
            self.stats.connects += 1
            self.stats.conn_frames = 0
            self._log(logging.INFO, f"connected to {url}")
            if self.coinbase:  # a connection header line (the reader drops every book), then subscribe
                local = self.now_ns()
                if self.raw is not None:
                    self.raw.write_line(f"{url} <-> {_secs(local)}")
                self.reader.feed("connect", local, url.encode())
                await ws.send(json.dumps({"type": "subscribe", "product_ids": [self.symbol],
                                          "channels": list(self.streams)}))
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
                        if line is not None:
                            self._feed_line(*line)
                            if self.reader.sync.synced:
                                snap_backoff.reset()
                                self._backoff.reset()
                    if recv in done:
                        frame = recv.result()  # raises ConnectionClosed on a dropped connection
                        recv = asyncio.ensure_future(ws.recv())
                        self._on_frame(frame)
                    if snap_task is None and self.reader.needs_snapshot():
                        delay = 0.0 if snap_backoff.n == 0 else snap_backoff.next()
                        if snap_backoff.n == 0:
                            snap_backoff.n = 1  # the next refusal (stale snapshot) backs off
                        snap_task = asyncio.ensure_future(self._fetch_snapshot(http, delay))
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

    # -- frames
    def _on_frame(self, frame) -> None:
        local = self.now_ns()
        self.stats.frames += 1
        self._status_msgs += 1
        try:
            self._handle_frame(local, frame)
        finally:
            self.stats.conn_frames += 1

    def _handle_frame(self, local: int, frame) -> None:
        text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
        if self.coinbase:
            return self._handle_coinbase(local, text)
        try:
            obj = json.loads(text)
        except ValueError as exc:
            self.stats.bad_frames += 1
            self._log_limited(f"non-JSON frame ignored ({exc}): {text[:80]!r}")
            return
        if not isinstance(obj, dict):
            self.stats.bad_frames += 1
            self._log_limited(f"frame is not a JSON object, ignored: {text[:80]!r}")
            return
        if "stream" in obj:
            stream = obj.get("stream")
            if not self._our_stream(stream) or not isinstance(obj.get("data"), dict):
                self.stats.unknown += 1
                self._log_limited(f"unknown stream or message ignored: {text[:80]!r}")
                return
            data = obj["data"]
            e = data.get("E", data.get("T"))
            if isinstance(e, int) and data.get("e") in ("depthUpdate", "trade"):
                self.stats.lag_ms = (local - e * 1_000_000) / 1e6
            if "\n" in text:
                text = json.dumps(obj, separators=(",", ":"))
            self._feed_line(local, text, obj)
            return
        if "error" in obj or ("code" in obj and "msg" in obj):
            self.stats.exchange_errors += 1
            err = obj.get("error", obj)
            raise _ExchangeError(json.dumps(err)[:200])
        if "result" in obj and "id" in obj:
            return  # a subscription acknowledgement
        self.stats.unknown += 1
        self._log_limited(f"unknown message type ignored: {text[:80]!r}")

    def _handle_coinbase(self, local: int, text: str) -> None:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            self.stats.bad_frames += 1
            self._log_limited(f"non-JSON frame ignored ({exc}): {text[:80]!r}")
            return
        if not isinstance(obj, dict):
            self.stats.bad_frames += 1
            self._log_limited(f"frame is not a JSON object, ignored: {text[:80]!r}")
            return
        mtype = obj.get("type")
        if mtype == "error":
            self.stats.exchange_errors += 1
            raise _ExchangeError(f"{obj.get('message')}: {obj.get('reason')}")
        if mtype in ("subscriptions", "heartbeat"):
            return
        if mtype not in COINBASE_FED or obj.get("product_id") != self.symbol:
            self.stats.unknown += 1
            self._log_limited(f"unknown message type or product ignored: {text[:80]!r}")
            return
        if mtype == "l2update" and isinstance(obj.get("time"), str):
            try:
                from gpu_engine.data.books.feeds.coinbase import iso_to_ns

                self.stats.lag_ms = (local - iso_to_ns(obj["time"])) / 1e6
            except ValueError:
                pass
        if "\n" in text:
            text = json.dumps(obj, separators=(",", ":"))
        if self.raw is not None:
            self.raw.write_line(f"{_secs(local)}: {text}")
        self.stats.messages += 1
        n_gaps = len(self.reader.report.gaps)
        self._store(self.reader.feed("message", local, obj))
        gaps = self.reader.report.gaps
        if len(gaps) > n_gaps:
            for g in gaps[n_gaps:]:
                self._log(logging.WARNING, f"gap: {g.get('reason')}; resubscribing for a new snapshot")
            raise _Resync(gaps[-1].get("reason"))

    def _store(self, rows) -> None:
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
                self._log(logging.WARNING, f"row refused by the store: {exc}")

    def _our_stream(self, stream) -> bool:
        """One of the subscribed streams (a diff-depth stream at any update speed)."""
        if stream in self.streams:
            return True
        if not isinstance(stream, str):
            return False
        sym, _, rest = stream.partition("@")
        return sym == self.symbol.lower() and (rest == "depth" or re.fullmatch(r"depth@\d+ms", rest) is not None)

    def _log_limited(self, msg: str) -> None:
        n = self.stats.bad_frames + self.stats.unknown
        if n <= 20 or n % 1000 == 0:
            self._log(logging.WARNING, msg + ("" if n < 20 else f" (#{n}; further ones logged every 1000th)"))

    def _feed_line(self, local: int, text: str, obj=None) -> None:
        """Write the capture line, then feed it to the reader; rows -> the store."""
        if obj is None:
            obj = json.loads(text)
        if self.raw is not None:
            self.raw.write(local, text)
        self.stats.messages += 1
        n_gaps = len(self.reader.report.gaps)
        was_synced = self.reader.sync.synced
        n_stale = self.reader.report.stale_snapshots
        rows = self.reader.feed(local, obj)
        self._store(rows)
        if "lastUpdateId" in obj:
            if self.reader.report.stale_snapshots > n_stale:
                self._log(logging.WARNING, f"snapshot lastUpdateId={obj['lastUpdateId']} is older than the "
                                           "buffered updates (stale): fetching another")
            elif not was_synced and self.reader.sync.synced:
                self._log(logging.INFO, f"book synced from snapshot lastUpdateId={obj['lastUpdateId']}")
        gaps = self.reader.report.gaps
        for g in gaps[n_gaps:]:
            self._log(logging.WARNING, f"gap at seq {g.get('seq')}: {g.get('reason')}; resyncing from a new snapshot")

    async def _fetch_snapshot(self, http, delay: float):
        """GET the REST snapshot (with backoff on 429/5xx/network/garbage). Returns (local, text) or None."""
        import httpx

        if delay > 0:
            await asyncio.sleep(delay)
        url = self.rest_base + self.ex["depth_path"]
        params = {"symbol": self.symbol, "limit": self.ex["limit"]}
        backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_max)
        while not self.stopping:
            retry_after = 0.0
            try:
                r = await http.get(url, params=params)
                local = self.now_ns()
                body = _json_or_none(r)
                if r.status_code == 200 and isinstance(body, dict) and isinstance(body.get("lastUpdateId"), int):
                    self.stats.snapshots += 1
                    text = r.text.strip()
                    if "\n" in text:
                        text = json.dumps(body, separators=(",", ":"))
                    return local, text
                if r.status_code == 400 and isinstance(body, dict) and body.get("code") == -1121:
                    raise _ExchangeError(f"snapshot: invalid symbol {self.symbol}: {body.get('msg')}")
                why = f"HTTP {r.status_code}" + (f" {body.get('msg')}" if isinstance(body, dict) else
                                                 f" {r.text[:80]!r}")
                retry_after = _float(r.headers.get("Retry-After")) or 0.0
                if r.status_code in (418, 429):
                    why += " (rate limited)"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            self.stats.snapshot_failures += 1
            d = backoff.next(at_least=retry_after)
            self._log(logging.WARNING, f"snapshot {url} failed: {why}; retrying in {d:.2f} s")
            await asyncio.sleep(d)
        return None

    # -- flush / status / finish
    def _gaps(self) -> list[dict]:
        gaps = [dict(g) for g in self.reader.report.gaps] + [dict(g) for g in self.disconnect_gaps]
        gaps.sort(key=lambda g: (g.get("time") or 0))
        return gaps

    def _counters(self) -> dict:
        s = self.stats
        r = self.reader.report
        return {"frames": s.frames, "messages": s.messages, "bad_frames": s.bad_frames, "unknown": s.unknown,
                "exchange_errors": s.exchange_errors, "connects": s.connects, "disconnects": s.disconnects,
                "snapshots": s.snapshots, "snapshot_failures": s.snapshot_failures, "rows": s.rows,
                "trades": s.trades, "refused_rows": s.refused_rows, "gaps": len(r.gaps), "resyncs": r.resyncs,
                "stale_snapshots": r.stale_snapshots, "reader_bad_lines": r.bad_lines,
                "raw_lines": self.raw.lines if self.raw is not None else 0}

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


def _secs(ns: int) -> str:
    """ns -> exact decimal seconds, the cryptofeed stamp the Coinbase reader parses."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _json_or_none(r):
    try:
        return r.json()
    except ValueError:
        return None


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- CLI

def _run(args) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("httpx", "httpcore", "websockets"):  # one line per request/frame is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = RecordConfig(
        exchange=args.exchange, symbol=args.symbol, out=Path(args.out), depth=args.depth,
        duration=None if args.duration is None else parse_duration(args.duration),
        raw=None if args.raw is None else Path(args.raw), ws_url=args.ws_url, rest_url=args.rest_url,
        flush_seconds=args.flush_seconds, flush_rows=args.flush_rows, status_seconds=args.status_seconds,
        backoff_base=args.backoff_base, backoff_max=args.backoff_max, clock=args.clock,
    )
    if cfg.flush_seconds <= 0 or cfg.flush_rows < 1:
        raise InputError("--flush-seconds must be > 0 and --flush-rows >= 1")
    check_outputs(cfg)
    return asyncio.run(Recorder(cfg).run())


def check_outputs(cfg) -> None:
    """Before any connection: --out (and --raw) must not exist and must be writable, and
    --depth must fit in memory; each refusal is one line naming the flag (exit 2)."""
    from gpu_engine.data.books.store import check_depth_fits
    from gpu_engine.outputs import check_parent_writable

    if isinstance(cfg.depth, int) and cfg.depth >= 1:
        check_depth_fits(cfg.depth, cfg.chunk_rows)
    for flag, p in (("--out", cfg.out), ("--raw", cfg.raw)):
        if p is None:
            continue
        p = Path(p)
        if p.exists() or p.is_symlink():
            raise InputError(f"{p}: {flag}: already exists; record never replaces data, choose another path")
        check_parent_writable(p, flag)
    if cfg.raw is not None and Path(cfg.raw).absolute() == Path(cfg.out).absolute():
        raise InputError(f"{cfg.raw}: --raw: same path as --out")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("record", help="record a live exchange order book into a Zarr book store",
                              description=__doc__.splitlines()[0])
    p.add_argument("--exchange", required=True, choices=("binance", "binance-usdm", "coinbase"))
    p.add_argument("--symbol", required=True, help="e.g. BTCUSDT")
    p.add_argument("--depth", type=int, default=20, help="levels per side stored (default 20)")
    p.add_argument("--duration", default=None, help="stop after this long (e.g. 90s, 30m, 1h; default: until signalled)")
    p.add_argument("--out", required=True, help="output book store (must not exist; record never replaces "
                        "data), e.g. data/books/x.zarr")
    p.add_argument("--raw", default=None, help="also write the raw capture here, in the format the importer reads (Binance "
                        "'<local_ts_ns> <json>', Coinbase cryptofeed '<seconds>: <json>'; .gz ok)")
    p.add_argument("--ws-url", default=None, help="WebSocket base URL (default: the exchange's)")
    p.add_argument("--rest-url", default=None, help="REST base URL (default: the exchange's)")
    p.add_argument("--flush-seconds", type=float, default=5.0, help="flush the store at least this often (default 5)")
    p.add_argument("--flush-rows", type=int, default=10_000, help="... or after this many new rows (default 10000)")
    p.add_argument("--status-seconds", type=float, default=5.0, help="status line interval (default 5)")
    p.add_argument("--backoff-base", type=float, default=0.5, help="first reconnect/retry delay, s (default 0.5)")
    p.add_argument("--backoff-max", type=float, default=30.0, help="largest reconnect/retry delay, s (default 30)")
    p.add_argument("--clock", choices=("local", "server"), default="local",
                   help="receive stamps: local wall clock, or shifted onto the exchange's serverTime "
                        "(for replaying old captures through the fake exchange)")
    p.set_defaults(func=_run)
