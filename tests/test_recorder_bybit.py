"""`record --exchange bybit`: Bybit v5 recording against a loopback fake Bybit (127.0.0.1 only).

The fake serves documented v5 messages (`tests/test_feeds_bybit.Exchange`): REST
`/v5/market/instruments-info` and `/v5/market/time`, WebSocket `/v5/public/linear` with
`op` subscribe / unsubscribe / ping, a snapshot on every book subscription, then deltas and
trades. It withholds one delta (an update-id gap: the recorder must resubscribe for a new
snapshot) and drops the connection once (reconnect + resubscribe). The recording must equal
the import of its own raw capture with the bybit reader, and an independent rebuild.
"""
from __future__ import annotations

import asyncio
import http
import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.record import RecordConfig, Recorder
from gpu_engine.data.books.store import load
from gpu_engine.errors import InputError
from tests.test_feeds_bybit import DEPTH, SYM, Exchange, assert_never_crossed, assert_rows, rebuild_v5

BOOK = f"orderbook.50.{SYM}"
TRADE = f"publicTrade.{SYM}"


class FakeBybit:
    """One port on 127.0.0.1: Bybit v5 REST + public WebSocket, replaying a generated stream.

    `n` deltas are replayed (a trade every 5th) while a client is subscribed to the book;
    the delta number `gap_at` is applied but not sent (an id gap); at `drop_at` every
    connection is aborted and `lost` deltas happen while nobody listens."""

    def __init__(self, n: int = 240, gap_at: int = 80, drop_at: int | None = 170, lost: int = 3, pace: float = 0.002):
        self.ex = Exchange(seed=11, depth_topic=50)
        self.n, self.gap_at, self.drop_at, self.lost, self.pace = n, gap_at, drop_at, lost, pace
        self.port = 0
        self.clients: dict = {}       # ws -> (queue, set of topics)
        self.ops: list[tuple[str, tuple]] = []
        self.pings = 0
        self.connections = 0
        self.done = threading.Event()
        self._ready = threading.Event()
        self._loop = None
        self._stop = None
        self._subscribed = None

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}"

    rest_url = ws_url

    def __enter__(self):
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(20)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self):
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._subscribed = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._rest, ping_interval=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            replay = asyncio.ensure_future(self._replay())
            self._ready.set()
            await self._stop.wait()
            replay.cancel()

    def _json(self, connection, obj, status=200):
        resp = connection.respond(http.HTTPStatus(status), json.dumps(obj))
        del resp.headers["Content-Type"]
        resp.headers["Content-Type"] = "application/json"
        resp.headers["Connection"] = "close"
        return resp

    async def _rest(self, connection, request):
        url = urlsplit(request.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        now_ms = int(time.time() * 1000)
        if url.path == "/v5/public/linear":
            return None
        if url.path == "/v5/market/instruments-info":
            if q.get("symbol") != SYM or q.get("category") != "linear":
                return self._json(connection, {"retCode": 10001, "retMsg": "params error: symbol invalid",
                                               "result": {}, "time": now_ms})
            return self._json(connection, {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [
                {"symbol": SYM, "contractType": "LinearPerpetual", "status": "Trading", "baseCoin": "BTC",
                 "quoteCoin": "USDT", "priceFilter": {"minPrice": "0.10", "tickSize": "0.10"},
                 "lotSizeFilter": {"maxOrderQty": "1190", "minOrderQty": "0.001", "qtyStep": "0.001"}}]},
                "time": now_ms})
        if url.path == "/v5/market/time":
            # the exchange clock is the generated stream's (2025), as the fake Binance does it
            t = self.ex.t * 1_000_000
            return self._json(connection, {"retCode": 0, "retMsg": "OK", "result": {
                "timeSecond": str(t // 10**9), "timeNano": str(t)}, "time": self.ex.t})
        return self._json(connection, {"retCode": 10002, "retMsg": "not found"}, 404)

    def _post(self, msg: dict, topic: str | None = None):
        text = json.dumps(msg, separators=(",", ":"))
        for q, topics in self.clients.values():
            if topic is None or topic in topics:
                q.put_nowait(text)

    async def _writer(self, ws, q):
        while True:
            text = await q.get()
            await ws.send(text)

    async def _handler(self, ws):
        q: asyncio.Queue = asyncio.Queue()
        topics: set = set()
        self.clients[ws] = (q, topics)
        self.connections += 1
        writer = asyncio.ensure_future(self._writer(ws, q))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                op, args = msg.get("op"), tuple(msg.get("args") or ())
                self.ops.append((op, args))
                if op == "ping":
                    self.pings += 1
                    q.put_nowait(json.dumps({"success": True, "ret_msg": "pong", "conn_id": "c1", "req_id": "",
                                             "op": "ping"}))
                    continue
                q.put_nowait(json.dumps({"success": True, "ret_msg": "", "conn_id": "c1",
                                         "req_id": msg.get("req_id", ""), "op": op}))
                if op == "subscribe":
                    topics.update(args)
                    if BOOK in args:  # Bybit: a book subscription starts with a snapshot
                        q.put_nowait(json.dumps(self.ex.snapshot(), separators=(",", ":")))
                        self._subscribed.set()
                elif op == "unsubscribe":
                    topics.difference_update(args)
        except Exception:
            pass
        finally:
            writer.cancel()
            self.clients.pop(ws, None)

    async def _replay(self):
        await self._subscribed.wait()
        i = 0
        while i < self.n:
            if not any(BOOK in t for _, t in self.clients.values()):
                await asyncio.sleep(0.005)  # nobody listens (a reconnect under way): wait
                continue
            if i == self.drop_at and not any(op == "unsubscribe" for op, _ in self.ops):
                await asyncio.sleep(0.005)  # drop only after the gap's resubscription (timing under load)
                continue
            if i == self.drop_at:
                self.drop_at = None
                for ws in list(self.clients):
                    ws.transport.abort()
                self.clients.clear()
                for _ in range(self.lost):
                    self.ex.delta()
                i += self.lost
                continue
            d = self.ex.delta()
            if i != self.gap_at:
                self._post(d, BOOK)
            if i % 5 == 2:
                self._post(self.ex.trade(), TRADE)
            i += 1
            await asyncio.sleep(self.pace)
        self.done.set()


def _record(fx: FakeBybit, tmp_path, **kw) -> Recorder:
    cfg = RecordConfig(exchange="bybit", symbol=SYM, out=tmp_path / "rec.zarr", raw=tmp_path / "rec.txt.gz",
                       ws_url=fx.ws_url, rest_url=fx.rest_url, depth=DEPTH, clock="server", backoff_base=0.01,
                       backoff_max=0.05, flush_seconds=0.3, status_seconds=60, **kw)
    rec = Recorder(cfg)

    def stopper():
        fx.done.wait(60)
        last = -1
        while rec.stats.messages != last:  # (frames would not settle: pongs keep coming)
            last = rec.stats.messages
            time.sleep(0.3)
        while rec._loop is None:
            time.sleep(0.01)
        rec.request_stop()

    threading.Thread(target=stopper, daemon=True).start()
    assert asyncio.run(asyncio.wait_for(rec.run(), 60)) == 0
    return rec


def _raw_messages(path) -> list[dict]:
    import gzip

    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("ws://"):
                continue
            out.append(json.loads(line.split(" ", 1)[1]))
    return out


def test_bybit_recording_resubscribes_on_a_gap_pings_and_equals_its_import(tmp_path, monkeypatch):
    from gpu_engine.data.books.recorder import bybit as adapter

    monkeypatch.setattr(adapter, "PING_SECONDS", 0.1)
    with FakeBybit() as fx:
        rec = _record(fx, tmp_path)
    got = load(tmp_path / "rec.zarr")
    assert got.attrs["complete"] is True and got.attrs["format"] == "bybit"
    assert got.attrs["tick_size"] == 0.1 and got.attrs["lot_size"] == 0.001 and got.attrs["market"] == "linear"
    st, report = rec.stats, rec.reader.report
    # the id gap: found, logged in the store, resynced by unsubscribe + subscribe on the same connection
    id_gaps = [g for g in report.gaps if g.get("kind") == "id_gap"]
    assert len(id_gaps) == 1 and id_gaps[0]["until"] is not None
    assert st.resubscribes == 1 and ("unsubscribe", (BOOK,)) in fx.ops and ("subscribe", (BOOK,)) in fx.ops
    # the dropped connection: reconnected, subscribed again, the new snapshot resynced the book
    assert st.disconnects == 1 and st.connects == fx.connections == 2
    kinds = [g["kind"] for g in got.attrs["gaps"]]
    assert kinds.count("disconnect") == 1 and kinds.count("id_gap") == 1 and kinds.count("reconnect") == 1
    assert report.resyncs == 2
    # Bybit's application-level heartbeat
    assert fx.pings >= 2 and st.pings >= fx.pings
    # the recording is the import of its own raw capture, and the independent rebuild
    import_files([tmp_path / "rec.txt.gz"], "bybit", tmp_path / "imp.zarr", depth=DEPTH, progress=False)
    want = load(tmp_path / "imp.zarr")
    # how many deltas arrive between the gap and the new snapshot depends on how far the recorder
    # lags (thread timing): 1-80 of the 240 are dropped as unsynced
    assert got.T == want.T > 100
    for f in ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz"):
        assert np.array_equal(getattr(got, f), getattr(want, f), equal_nan=True), f
    for f in ("ts", "px", "qty", "side"):
        assert np.array_equal(getattr(got.trades, f), getattr(want.trades, f)), f
    assert len(got.trades) > 30
    msgs = _raw_messages(tmp_path / "rec.txt.gz")
    assert_rows(got, rebuild_v5(msgs, DEPTH))
    assert_never_crossed(got)
    assert all(m.get("topic") in (BOOK, TRADE) for m in msgs)  # acks and pongs are not captured


def test_bybit_invalid_symbol_is_one_line_and_leaves_nothing(tmp_path, capsys):
    from gpu_engine.data.__main__ import main

    with FakeBybit(n=1) as fx:
        rc = main(["record", "--exchange", "bybit", "--symbol", "NOSUCHUSDT", "--out", str(tmp_path / "x.zarr"),
                   "--ws-url", fx.ws_url, "--rest-url", fx.rest_url])
        rec = Recorder(RecordConfig(exchange="bybit-spot", symbol=SYM, out=tmp_path / "y.zarr",
                                    ws_url=fx.ws_url, rest_url=fx.rest_url))
        with pytest.raises(InputError, match="invalid symbol 'BTCUSDT' on bybit-spot"):
            asyncio.run(rec.run())  # the fake lists it as linear only
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: invalid symbol 'NOSUCHUSDT' on bybit: params error: symbol invalid"], err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
