"""Loopback fake Binance exchange: replays a real `<local_ts> <json>` capture over WebSocket + REST.

`FakeExchange(capture)` binds ONE port on 127.0.0.1 that speaks both protocols:

* WebSocket combined streams, `ws://127.0.0.1:PORT/stream?streams=a/b/c` (Binance spot and
  USD-M use this path). Every `{"stream","data"}` line of the capture is replayed, in file
  order, to each connected client subscribed to its stream; the frame is the line's JSON text
  byte for byte. A diff-depth subscription matches any diff-depth stream of the symbol
  (`btcusdt@depth@100ms` also receives the capture's `btcusdt@depth@0ms`).
* REST on the same port: `/api/v3/depth`, `/fapi/v1/depth` (the snapshot) and
  `/api/v3/exchangeInfo`, `/fapi/v1/exchangeInfo` (symbol check; 400 `-1121 Invalid symbol.`
  for any other symbol, as Binance answers).

The snapshot is real: the exchange keeps a full-depth book that starts from the capture's
own REST snapshot line and applies every diff the replay passes (whether or not a client
received it), so a snapshot asked for at any point is the book at the last diff replayed,
`lastUpdateId` = that diff's `u`. Until the replay passes the capture's snapshot line (its
position in the file), requests get that line byte for byte; with `hold_snapshot` (default)
the replay waits there for the first request, since that is where the capture's own REST
answer arrived. A recorder that syncs at the start therefore sees the capture's own start.

Replay pace: `speed` x the capture's local clock, each message timed from the previous one
(so a pause is not followed by a catch-up burst); `speed=0`: as fast as the client reads;
`send` waits on the socket, so the replay never runs ahead of a slow client). With
`pause_when_idle` (default) the replay waits while no client is connected, so a reconnect
loses only what a cue says it loses.

Cues (thread-safe; or `schedule(index, name, *args)` to fire when the replay reaches message
`index`): `drop(lost=0)` aborts every connection (and loses the next `lost` messages),
`skip(n)` withholds the next n diff-depth messages (a sequence gap), `stale_snapshots(n)`
serves the capture's original (old) snapshot to the next n requests, `http_errors(*codes)`
answers the next snapshot requests with those HTTP statuses (429 carries `Retry-After`),
`refuse_ws(n)` answers the next n WebSocket handshakes with 503, `inject(text)` sends a raw
frame (garbage, an unknown message, an exchange error) to every client; the scheduled-only
cue `wait(predicate, timeout=10)` holds the replay until `predicate()` is true (a test's
sync point, e.g. "the recorder is in sync and has read everything": then a following `skip`
is certain to hit a synced book instead of being covered by a newer snapshot).

Run in a background thread: `with FakeExchange(path, speed=0) as fx: fx.ws_url, fx.rest_url`.
`python -m gpu_engine.testing.fake_exchange CAPTURE [--speed S] [--port P]` serves from the
command line.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import http
import json
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeExchange", "load_capture", "CaptureMessage"]

_DIFF_DEPTH = re.compile(r"^(?P<sym>[a-z0-9_]+)@depth(@\d+ms)?$")


@dataclass
class CaptureMessage:
    local_ns: int
    stream: str
    text: str            # the JSON text of the line, unchanged
    depth: dict | None   # the `data` of a diff-depth message, else None


@dataclass
class Capture:
    messages: list[CaptureMessage]
    snapshot_text: str | None
    snapshot: dict | None
    symbol: str           # upper case, e.g. BTCUSDT
    futures: bool         # USD-M (depth updates carry `pu`)
    snapshot_pos: int     # number of stream messages before the snapshot line (file order)


def _local_ns(tok: str) -> int:
    v = int(tok)
    return v * 1000 if v < 10 ** 17 else v  # 2023 hftbacktest captures are in microseconds


def load_capture(path, limit: int | None = None) -> Capture:
    """Read a `<local_ts> <json>` capture (gz or plain); `limit`: only the first N stream lines."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    msgs: list[CaptureMessage] = []
    snap_text = None
    snap = None
    symbol = None
    futures = False
    snap_pos = 0
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            tok, _, text = line.rstrip("\n").partition(" ")
            if not text:
                continue
            obj = json.loads(text)
            if "stream" not in obj:
                if "lastUpdateId" in obj and snap is None:
                    snap_text, snap, snap_pos = text, obj, len(msgs)
                continue
            if limit is not None and len(msgs) >= limit:
                if snap is not None:
                    break
                continue
            data = obj.get("data") or {}
            depth = data if (isinstance(data, dict) and data.get("e") == "depthUpdate") else None
            if depth is not None:
                futures = futures or "pu" in depth
            if symbol is None and isinstance(data, dict) and isinstance(data.get("s"), str):
                symbol = data["s"].upper()
            msgs.append(CaptureMessage(_local_ns(tok), obj["stream"], text, depth))
    if symbol is None:
        raise ValueError(f"{path}: no stream message names a symbol")
    return Capture(msgs, snap_text, snap, symbol, futures, snap_pos)


class _Side:
    """One side of the exchange's full book: price -> (price text, qty text)."""

    def __init__(self, levels, reverse: bool):
        self.levels = {float(p): (p, q) for p, q, *_ in levels if float(q) > 0}
        self.reverse = reverse

    def apply(self, levels) -> None:
        for p, q, *_ in levels:
            if float(q) > 0:
                self.levels[float(p)] = (p, q)
            else:
                self.levels.pop(float(p), None)

    def top(self, n: int) -> list[list[str]]:
        keys = sorted(self.levels, reverse=self.reverse)[:n]
        return [list(self.levels[k]) for k in keys]


@dataclass
class _Client:
    ws: object
    streams: set[str]
    depth_syms: set[str]


@dataclass
class Stats:
    sent: int = 0               # frames written to a client socket
    conn_sent: int = 0          # ... since the latest connection was accepted (injected frames included)
    replayed: int = 0           # capture messages the replay has passed
    skipped: int = 0            # diff-depth messages withheld by `skip`
    lost: int = 0               # messages lost by `drop(lost=...)`
    drops: int = 0              # connections aborted by `drop`
    connections: int = 0        # WebSocket handshakes accepted
    snapshots: int = 0          # snapshot responses with status 200
    stale_served: int = 0
    http_errors: int = 0
    ws_refused: int = 0
    injected: int = 0
    wait_timeouts: int = 0      # `wait` cues whose predicate never came true
    snapshot_ids: list = field(default_factory=list)


class FakeExchange:
    """A loopback Binance (spot or USD-M) replaying one capture. See the module docstring."""

    def __init__(self, capture, *, speed: float = 0.0, limit: int | None = None,
                 pause_when_idle: bool = True, hold_snapshot: bool = True, port: int = 0,
                 autostart_replay: bool = True):
        self.capture = capture if isinstance(capture, Capture) else load_capture(capture, limit)
        self.hold_snapshot = hold_snapshot
        self.speed = float(speed)
        self.pause_when_idle = pause_when_idle
        self.port = port
        self.autostart_replay = autostart_replay
        self.stats = Stats()
        self.symbol = self.capture.symbol
        snap = self.capture.snapshot
        if snap is None:
            raise ValueError("capture has no REST snapshot line: the fake exchange needs one to serve snapshots")
        self._snap_id = int(snap["lastUpdateId"])
        self._book_id = self._snap_id
        self._past_snap = False             # the replay has passed the capture's snapshot line
        self._snap_served: asyncio.Event | None = None
        self._bids = _Side(snap["bids"], reverse=True)
        self._asks = _Side(snap["asks"], reverse=False)
        self._last_E = None
        self._clients: list[_Client] = []
        self._skip = 0
        self._lost = 0
        self._stale = 0
        self._http_errors: list[int] = []
        self._refuse_ws = 0
        self._schedule: dict[int, list[tuple[str, tuple]]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.done = threading.Event()       # the replay reached the end of the capture
        self._stop: asyncio.Event | None = None
        self._client_event: asyncio.Event | None = None
        self._go: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ public API
    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def n_messages(self) -> int:
        return len(self.capture.messages)

    def start(self) -> "FakeExchange":
        self._thread = threading.Thread(target=self._thread_main, name="fake-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fake exchange did not start")
        if self._error is not None:
            raise RuntimeError(f"fake exchange failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "FakeExchange":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def go(self) -> None:
        """Start the replay (only needed with autostart_replay=False)."""
        self._call(lambda: self._go.set())

    def schedule(self, index: int, name: str, *args) -> None:
        """Fire cue `name(*args)` when the replay reaches capture message `index` (before sending it)."""
        if name not in ("drop", "skip", "stale_snapshots", "http_errors", "refuse_ws", "inject", "wait"):
            raise ValueError(f"unknown cue {name!r}")
        self._schedule[int(index)].append((name, args))

    def drop(self, lost: int = 0) -> None:
        self._call(lambda: self._drop(lost))

    def skip(self, n: int = 1) -> None:
        self._call(lambda: self._do_skip(n))

    def stale_snapshots(self, n: int = 1) -> None:
        self._call(lambda: self._do_stale(n))

    def http_errors(self, *codes: int) -> None:
        self._call(lambda: self._http_errors.extend(int(c) for c in codes))

    def refuse_ws(self, n: int = 1) -> None:
        self._call(lambda: self._do_refuse(n))

    def inject(self, text: str) -> None:
        self._call(lambda: asyncio.ensure_future(self._inject(text)))

    def wait_done(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def clients(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------------ cue bodies (loop thread)
    def _call(self, fn) -> None:
        if self._loop is None:
            raise RuntimeError("fake exchange not started")
        self._loop.call_soon_threadsafe(fn)

    def _do_skip(self, n):
        self._skip += int(n)

    def _do_stale(self, n):
        self._stale += int(n)

    def _do_refuse(self, n):
        self._refuse_ws += int(n)

    def _drop(self, lost: int) -> None:
        self._lost += int(lost)
        for c in list(self._clients):
            self.stats.drops += 1
            transport = getattr(c.ws, "transport", None)
            if transport is not None:
                transport.abort()
        self._clients.clear()

    async def _inject(self, text: str) -> None:
        for c in list(self._clients):
            try:
                await c.ws.send(text)
                self.stats.injected += 1
                self.stats.conn_sent += 1
            except Exception:
                pass

    def _fire(self, name: str, args: tuple) -> None:
        if name == "drop":
            self._drop(*args)
        elif name == "skip":
            self._do_skip(*(args or (1,)))
        elif name == "stale_snapshots":
            self._do_stale(*(args or (1,)))
        elif name == "http_errors":
            self._http_errors.extend(int(c) for c in args)
        elif name == "refuse_ws":
            self._do_refuse(*(args or (1,)))
        elif name == "inject":
            asyncio.ensure_future(self._inject(*args))

    # ------------------------------------------------------------------ server
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._t_start = time.monotonic()
        self._stop = asyncio.Event()
        self._client_event = asyncio.Event()
        self._go = asyncio.Event()
        self._snap_served = asyncio.Event()
        if self.autostart_replay:
            self._go.set()
        async with serve(self._handler, "127.0.0.1", self.port, process_request=self._process_request,
                         ping_interval=None, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            replay = asyncio.ensure_future(self._replay())
            self._ready.set()
            await self._stop.wait()
            replay.cancel()
            for c in list(self._clients):
                transport = getattr(c.ws, "transport", None)
                if transport is not None:
                    transport.abort()

    def _json_response(self, connection, status: int, obj, headers: dict | None = None):
        text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        resp = connection.respond(http.HTTPStatus(status), text)
        del resp.headers["Content-Type"]
        resp.headers["Content-Type"] = "application/json"
        resp.headers["Connection"] = "close"  # the server closes after answering: no stale pooled sockets
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    async def _process_request(self, connection, request):
        url = urlsplit(request.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/stream":
            if self._refuse_ws > 0:
                self._refuse_ws -= 1
                self.stats.ws_refused += 1
                resp = connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "service unavailable\n")
                resp.headers["Connection"] = "close"
                return resp
            return None  # go on with the WebSocket handshake
        if url.path in ("/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo"):
            sym = q.get("symbol", "").upper()
            if sym and sym != self.symbol:
                return self._json_response(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
            return self._json_response(connection, 200, {"timezone": "UTC", "serverTime": self._server_time_ms(),
                                                         "symbols": [self._symbol_info()]})
        if url.path in ("/api/v3/depth", "/fapi/v1/depth"):
            return self._snapshot_response(connection, q)
        return self._json_response(connection, 404, {"code": -1, "msg": f"not found: {url.path}"})

    def _server_time_ms(self) -> int:
        """The exchange clock is the capture's: its first receive stamp, advancing in real time."""
        base = self.capture.messages[0].local_ns // 1_000_000 if self.capture.messages else 0
        return base + int((time.monotonic() - self._t_start) * 1000)

    def _symbol_info(self) -> dict:
        tick = "0.10" if self.capture.futures else "0.01000000"
        lot = "0.001" if self.capture.futures else "0.00001000"
        return {"symbol": self.symbol, "status": "TRADING",
                "filters": [{"filterType": "PRICE_FILTER", "tickSize": tick},
                            {"filterType": "LOT_SIZE", "stepSize": lot}]}

    def _snapshot_response(self, connection, q: dict):
        if self._http_errors:
            code = self._http_errors.pop(0)
            self.stats.http_errors += 1
            headers = {"Retry-After": "0"} if code == 429 else None
            msg = {429: "Too many requests; current limit is 6000 request weight per 1 MINUTE."}.get(
                code, "Service unavailable.")
            return self._json_response(connection, code, {"code": -1003 if code == 429 else -1001, "msg": msg},
                                       headers)
        sym = q.get("symbol", "").upper()
        if sym != self.symbol:
            return self._json_response(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return self._json_response(connection, 400, {"code": -1100, "msg": "Illegal characters in 'limit'."})
        self.stats.snapshots += 1
        n_capture = max(len(self.capture.snapshot["bids"]), len(self.capture.snapshot["asks"]))
        if self._stale > 0 or (not self._past_snap and limit >= n_capture):
            if self._stale > 0:
                self._stale -= 1
                self.stats.stale_served += 1
            else:
                self._snap_served.set()
            self.stats.snapshot_ids.append(self._snap_id)
            return self._json_response(connection, 200, self.capture.snapshot_text)
        self.stats.snapshot_ids.append(self._book_id)
        body = {"lastUpdateId": self._book_id}
        if self.capture.futures and self._last_E is not None:
            body.update(E=self._last_E, T=self._last_E)
        body.update(bids=self._bids.top(limit), asks=self._asks.top(limit))
        return self._json_response(connection, 200, body)

    async def _handler(self, ws) -> None:
        url = urlsplit(ws.request.path)
        streams = set(filter(None, parse_qs(url.query).get("streams", [""])[-1].split("/")))
        depth_syms = {m.group("sym") for s in streams if (m := _DIFF_DEPTH.match(s))}
        client = _Client(ws, streams, depth_syms)
        self._clients.append(client)
        self.stats.connections += 1
        self.stats.conn_sent = 0
        self._client_event.set()
        try:
            await ws.wait_closed()
        finally:
            if client in self._clients:
                self._clients.remove(client)

    def _wants(self, c: _Client, stream: str) -> bool:
        if stream in c.streams:
            return True
        m = _DIFF_DEPTH.match(stream)
        return bool(m and m.group("sym") in c.depth_syms)

    def _apply(self, d: dict) -> None:
        u = int(d["u"])
        if u <= self._book_id:
            return
        self._bids.apply(d.get("b", ()))
        self._asks.apply(d.get("a", ()))
        self._book_id = u
        self._last_E = d.get("E")

    async def _replay(self) -> None:
        await self._go.wait()
        msgs = self.capture.messages
        last_wall = time.monotonic()
        last_cap = msgs[0].local_ns if msgs else 0
        for i, m in enumerate(msgs):
            if i == self.capture.snapshot_pos and not self._past_snap:
                if self.hold_snapshot:  # as in the capture: the REST answer came in here
                    await self._snap_served.wait()
                self._past_snap = True
            if self.speed > 0:  # paced from the previous message: no catch-up burst after a pause
                due = last_wall + max(0, m.local_ns - last_cap) / 1e9 / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                last_wall, last_cap = max(due, time.monotonic() - 0.05), m.local_ns
            for name, args in self._schedule.pop(i, ()):
                if name == "wait":  # hold the replay until predicate() (a test's sync point)
                    predicate, timeout = args[0], (args[1] if len(args) > 1 else 10.0)
                    t_end = time.monotonic() + timeout
                    while not predicate():
                        if time.monotonic() >= t_end:
                            self.stats.wait_timeouts += 1
                            break
                        await asyncio.sleep(0.001)
                else:
                    self._fire(name, args)
            while self.pause_when_idle and not self._clients:
                self._client_event.clear()
                await self._client_event.wait()
            self.stats.replayed += 1
            if m.depth is not None:
                self._apply(m.depth)
                if self._skip > 0:
                    self._skip -= 1
                    self.stats.skipped += 1
                    continue
            if self._lost > 0:
                self._lost -= 1
                self.stats.lost += 1
                continue
            for c in list(self._clients):
                if self._wants(c, m.stream):
                    try:
                        await c.ws.send(m.text)
                        self.stats.sent += 1
                        self.stats.conn_sent += 1
                    except Exception:
                        if c in self._clients:
                            self._clients.remove(c)
            await asyncio.sleep(0)
        self.done.set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu_engine.testing.fake_exchange", description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as the client reads")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N stream messages")
    args = ap.parse_args(argv)
    fx = FakeExchange(args.capture, speed=args.speed, limit=args.limit, port=args.port).start()
    print(f"ws {fx.ws_url}  rest {fx.rest_url}  symbol {fx.symbol}  messages {fx.n_messages}", flush=True)
    try:
        while not fx.done.wait(1):
            pass
        print(f"replay done: {fx.stats}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fx.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def write_synthetic_capture(path, n_updates: int = 200, symbol: str = "TESTUSDT", seed: int = 7,
                            t0_ns: int = 1_700_000_000_000_000_000) -> Path:
    """A small spot-format capture (no real data needed): diff-depth updates with continuous
    U/u ids, trades and bookTickers, and one REST snapshot line after the second update (as in
    the hftbacktest captures). Prices stay uncrossed: bids 90-99.9, asks 100.1-110."""
    import random as _random

    rng = _random.Random(seed)
    path = Path(path)
    s = symbol.lower()
    bids = {round(99.9 - 0.1 * i, 1): round(rng.uniform(0.1, 5), 3) for i in range(100)}
    asks = {round(100.1 + 0.1 * i, 1): round(rng.uniform(0.1, 5), 3) for i in range(100)}
    uid = 1000
    lines = []
    local = t0_ns
    E = t0_ns // 1_000_000 + 5
    tid = 1

    def fmt(d, reverse):
        return [[f"{p:.2f}", f"{q:.5f}"] for p, q in sorted(d.items(), reverse=reverse)]

    snapshot_line = None
    for k in range(n_updates):
        U = uid + 1
        uid += rng.randint(1, 5)
        b, a = [], []
        for _ in range(rng.randint(1, 4)):
            p = round(rng.choice([99.9 - 0.1 * i for i in range(100)]), 1)
            q = 0.0 if rng.random() < 0.3 else round(rng.uniform(0.1, 5), 3)
            b.append([f"{p:.2f}", f"{q:.5f}"])
            p = round(rng.choice([100.1 + 0.1 * i for i in range(100)]), 1)
            q = 0.0 if rng.random() < 0.3 else round(rng.uniform(0.1, 5), 3)
            a.append([f"{p:.2f}", f"{q:.5f}"])
        local += 100_000_000
        E += 100
        data = {"e": "depthUpdate", "E": E, "s": symbol, "U": U, "u": uid, "b": b, "a": a}
        lines.append(f'{local} {json.dumps({"stream": f"{s}@depth@100ms", "data": data}, separators=(",", ":"))}')
        for p, q in b:
            bids.pop(float(p), None) if float(q) == 0 else bids.__setitem__(float(p), float(q))
        for p, q in a:
            asks.pop(float(p), None) if float(q) == 0 else asks.__setitem__(float(p), float(q))
        if k == 1:  # the REST answer: the book after this update
            snapshot_line = (local + 1, {"lastUpdateId": uid, "bids": fmt(bids, True), "asks": fmt(asks, False)})
        if rng.random() < 0.5:
            local += 1000
            tr = {"e": "trade", "E": E, "s": symbol, "t": tid, "p": "100.00000000", "q": f"{rng.uniform(0.01, 1):.5f}",
                  "T": E, "m": rng.random() < 0.5, "M": True}
            tid += 1
            lines.append(f'{local} {json.dumps({"stream": f"{s}@trade", "data": tr}, separators=(",", ":"))}')
        local += 1000
        bt = {"u": uid, "s": symbol, "b": "99.90", "B": "1.0", "a": "100.10", "A": "1.0"}
        lines.append(f'{local} {json.dumps({"stream": f"{s}@bookTicker", "data": bt}, separators=(",", ":"))}')
        if k == 1:
            lines.append(f"{snapshot_line[0] + 2000} {json.dumps(snapshot_line[1], separators=(',', ':'))}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- Coinbase

def load_cryptofeed_capture(path, product: str) -> list[tuple[int, str, dict]]:
    """(local_ns, json text, obj) of one product's data lines in a cryptofeed Coinbase capture."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("wss://") or line.startswith("ws://"):
                continue
            stamp, sep, text = line.rstrip("\n").partition(": ")
            if not sep:
                continue
            obj = json.loads(text)
            if obj.get("product_id") == product:
                whole, _, frac = stamp.partition(".")
                out.append((int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]), text, obj))
    return out


_CB_CHANNEL = {"l2update": "level2", "snapshot": "level2", "match": "matches", "last_match": "matches"}


class FakeCoinbase:
    """A loopback Coinbase Exchange feed replaying one product of a cryptofeed capture.

    WebSocket at `ws://127.0.0.1:PORT` (send `{"type":"subscribe","product_ids":[P],
    "channels":[...]}`; an unknown product gets `{"type":"error",...}`), REST
    `/products/{id}` (404 `NotFound` for another product) and `/time`. The first
    subscription gets the capture's own snapshot line; a later one (a reconnect) gets a
    snapshot of the exchange's book at that point (capture snapshot + every l2update
    replayed so far). Cues: `drop(lost=0)`, `inject(text)`, `schedule(index, name, *args)`.
    """

    def __init__(self, capture, product: str, *, speed: float = 0.0, pause_when_idle: bool = True):
        self.product = product
        self.messages = load_cryptofeed_capture(capture, product)
        first = next((i for i, (_, _, o) in enumerate(self.messages) if o.get("type") == "snapshot"), None)
        if first is None:
            raise ValueError(f"{capture}: no snapshot for {product}")
        self.messages = self.messages[first:]
        self.speed = float(speed)
        self.pause_when_idle = pause_when_idle
        self.port = 0
        self.stats = Stats()
        self._schedule: dict[int, list[tuple[str, tuple]]] = defaultdict(list)
        self._clients: list = []
        self._lost = 0
        self._bids: _Side | None = None
        self._asks: _Side | None = None
        self._pos = 0
        self.done = threading.Event()
        self._ready = threading.Event()
        self._loop = None
        self._thread = None
        self._error = None

    ws_url = property(lambda self: f"ws://127.0.0.1:{self.port}")
    rest_url = property(lambda self: f"http://127.0.0.1:{self.port}")
    start = FakeExchange.start
    stop = FakeExchange.stop
    __enter__ = FakeExchange.__enter__
    __exit__ = FakeExchange.__exit__
    _thread_main = FakeExchange._thread_main
    _call = FakeExchange._call
    _json_response = FakeExchange._json_response

    def schedule(self, index: int, name: str, *args) -> None:
        if name not in ("drop", "inject"):
            raise ValueError(f"unknown cue {name!r}")
        self._schedule[int(index)].append((name, args))

    def drop(self, lost: int = 0) -> None:
        self._call(lambda: self._drop(lost))

    def inject(self, text: str) -> None:
        self._call(lambda: asyncio.ensure_future(self._inject(text)))

    def _drop(self, lost: int) -> None:
        """Abort every connection; the next `lost` messages happen while nobody listens
        (applied to the book, so the reconnect's snapshot includes them)."""
        FakeExchange._drop(self, 0)
        for _ in range(int(lost)):
            if self._pos < len(self.messages):
                self._apply(self.messages[self._pos][2])
                self._pos += 1
                self.stats.lost += 1

    _inject = FakeExchange._inject

    def _apply(self, obj: dict) -> None:
        if obj.get("type") == "l2update":
            for side, p, q in obj.get("changes", ()):
                (self._bids if side == "buy" else self._asks).apply([(p, q)])

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._t_start = time.monotonic()
        self._stop = asyncio.Event()
        self._client_event = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port, process_request=self._process_request,
                         ping_interval=None, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            replay = asyncio.ensure_future(self._replay())
            self._ready.set()
            await self._stop.wait()
            replay.cancel()
            for c in list(self._clients):
                c.ws.transport.abort()

    async def _process_request(self, connection, request):
        url = urlsplit(request.path)
        if url.path == "/":
            return None
        if url.path == "/time":
            t = self.messages[0][0] / 1e9 + (time.monotonic() - self._t_start)
            return self._json_response(connection, 200, {"iso": "", "epoch": t})
        if url.path.startswith("/products/"):
            pid = url.path.rsplit("/", 1)[1]
            if pid != self.product:
                return self._json_response(connection, 404, {"message": "NotFound"})
            return self._json_response(connection, 200, {"id": pid, "quote_increment": "0.0001",
                                                         "base_increment": "0.1", "status": "online"})
        return self._json_response(connection, 404, {"message": "NotFound"})

    def _snapshot_text(self) -> str:
        if self._bids is None:  # the first subscription: the capture's own snapshot line
            return self.messages[0][1]
        return json.dumps({"type": "snapshot", "product_id": self.product, "bids": self._bids.top(10 ** 6),
                           "asks": self._asks.top(10 ** 6)}, separators=(",", ":"))

    async def _handler(self, ws) -> None:
        try:
            sub = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except Exception:
            return
        if sub.get("type") != "subscribe" or self.product not in (sub.get("product_ids") or []):
            await ws.send(json.dumps({"type": "error", "message": "Failed to subscribe",
                                      "reason": f"{(sub.get('product_ids') or ['?'])[0]} is not a valid product"}))
            return
        await ws.send(json.dumps({"type": "subscriptions", "channels": [
            {"name": c, "product_ids": [self.product]} for c in sub.get("channels") or []]}))
        await ws.send(self._snapshot_text())
        if self._bids is None:
            snap = self.messages[0][2]
            self._bids = _Side(snap["bids"], reverse=True)
            self._asks = _Side(snap["asks"], reverse=False)
            self._pos = 1
        client = _Client(ws, set(sub.get("channels") or []), set())
        self._clients.append(client)
        self.stats.connections += 1
        self._client_event.set()
        try:
            await ws.wait_closed()
        finally:
            if client in self._clients:
                self._clients.remove(client)

    def _fire(self, name, args) -> None:
        if name == "drop":
            self._drop(*args)
        else:
            asyncio.ensure_future(self._inject(*args))

    async def _replay(self) -> None:
        i = None
        while True:
            while not self._clients or self._bids is None:
                self._client_event.clear()
                await self._client_event.wait()
            i = self._pos
            if i >= len(self.messages):
                break
            local, text, obj = self.messages[i]
            for name, args in self._schedule.pop(i, ()):
                self._fire(name, args)
            if self._pos != i or (self.pause_when_idle and not self._clients):
                continue  # a drop: wait for the reconnect, then go on from where it left off
            self._pos = i + 1
            self._apply(obj)
            self.stats.replayed += 1
            if self.speed > 0 and i + 1 < len(self.messages):
                await asyncio.sleep(max(0, self.messages[i + 1][0] - local) / 1e9 / self.speed)
            channel = _CB_CHANNEL.get(obj.get("type"), obj.get("type"))
            for c in list(self._clients):
                if channel not in c.streams and not (channel == "level2" and "level2_batch" in c.streams):
                    continue
                try:
                    await c.ws.send(text)
                    self.stats.sent += 1
                except Exception:
                    if c in self._clients:
                        self._clients.remove(c)
            await asyncio.sleep(0)
        self.done.set()
