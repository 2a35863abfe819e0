"""Bybit v5 recording: public `orderbook.{N}.{symbol}` + `publicTrade.{symbol}`, one WebSocket.

Endpoints (bybit-exchange.github.io/docs/v5/ws/connect): `wss://stream.bybit.com/v5/public/
linear` (USDT/USDC perpetuals, `--exchange bybit`) or `.../v5/public/spot` (`--exchange
bybit-spot`); REST `GET /v5/market/instruments-info?category=..&symbol=..` checks the symbol
and gives tick size (`priceFilter.tickSize`) and lot size (`lotSizeFilter.qtyStep`, spot
`basePrecision`); `GET /v5/market/time` gives the server clock for `--clock server`.

Subscribe with `{"req_id", "op": "subscribe", "args": [topics]}`; the book topic's depth is the
smallest of `BOOK_DEPTHS` that covers `--depth`. The subscription starts with a snapshot, so
there is no REST snapshot to fetch. Bybit drops a connection that sends nothing: the
recorder sends `{"req_id", "op": "ping"}` every `PING_SECONDS` (20 s, as Bybit recommends;
the pong `{"success": true, "ret_msg": "pong", "op": "ping"}` is not written to the capture).

Every topic message is written as a `<local_ts_ns> <json>` line (hftbacktest's shape) and
fed to `feeds/bybit.py`'s reader; each connection starts with a `<url> <-> <seconds>` line,
which makes the reader drop the book until the new subscription's snapshot. A gap the
reader finds (an update id jump, a crossed book, a malformed level) is resynced the way
Bybit's stream allows: unsubscribe and subscribe the book topic again on the same
connection, whose first message is a fresh snapshot (trades keep flowing); if no book row
comes back within `RESUBSCRIBE_TIMEOUT` s the connection is dropped and re-established
(`Resync`). A request Bybit refuses (`"success": false`) is an exchange error: reconnect
with backoff.
"""
from __future__ import annotations

import json
import logging
import time

from gpu_engine.data.books.recorder.loop import (Adapter, ExchangeError, LiveReader, Resync, json_or_none, secs,
                                                 to_float)
from gpu_engine.errors import InputError

BOOK_DEPTHS = (1, 50, 200, 1000)   # v5 orderbook depths of linear and spot
PING_SECONDS = 20.0
RESUBSCRIBE_TIMEOUT = 10.0


def book_depth_for(depth: int) -> int:
    """The smallest Bybit orderbook depth that holds `depth` levels (the deepest if none does)."""
    return next((n for n in BOOK_DEPTHS if n >= depth), BOOK_DEPTHS[-1])


class BybitAdapter(Adapter):
    ws = "wss://stream.bybit.com"
    rest = "https://api.bybit.com"
    category = "linear"
    format = "bybit"

    def __init__(self, rec):
        super().__init__(rec)
        self.book_depth = book_depth_for(rec.cfg.depth)
        self.book_topic = f"orderbook.{self.book_depth}.{rec.symbol}"
        self.trade_topic = f"publicTrade.{rec.symbol}"
        self.streams = (self.book_topic, self.trade_topic)
        self.last_ping = time.monotonic()
        self.want_resub = False
        self.waiting_since: float | None = None  # subscribed to the book, no row since
        self.last_u = -1
        self.last_book_ts: int | None = None
        self._req = 0

    def ws_url(self) -> str:
        return f"{self.rec.ws_base}/v5/public/{self.category}"

    def store_attrs(self) -> dict:
        return {"market": self.category, "book_topic": self.book_topic}

    def make_reader(self) -> LiveReader:
        from gpu_engine.data.books.feeds import bybit

        return LiveReader(bybit, self.rec.cfg.depth, self.rec.symbol, "tagged", book_depth=self.book_depth,
                          market=self.category)

    async def startup_check(self, http) -> dict:
        import httpx

        rec = self.rec
        url = rec.rest_base + "/v5/market/instruments-info"
        try:
            r = await http.get(url, params={"category": self.category, "symbol": rec.symbol})
            t = await http.get(rec.rest_base + "/v5/market/time") if rec.cfg.clock == "server" else None
        except httpx.HTTPError as exc:
            raise InputError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        body = json_or_none(r)
        if r.status_code != 200 or not isinstance(body, dict):
            raise InputError(f"{url}: HTTP {r.status_code} at start: {r.text[:200]!r}")
        listed = (body.get("result") or {}).get("list") if isinstance(body.get("result"), dict) else None
        if body.get("retCode") != 0 or not listed:
            why = body.get("retMsg") if body.get("retCode") != 0 else f"not listed in category {self.category}"
            raise InputError(f"invalid symbol {rec.symbol!r} on {rec.cfg.exchange}: {why}")
        info = next((x for x in listed if isinstance(x, dict) and x.get("symbol") == rec.symbol), listed[0])
        lot = info.get("lotSizeFilter") or {}
        tb = json_or_none(t) if t is not None else None
        nano = ((tb or {}).get("result") or {}).get("timeNano") if isinstance(tb, dict) else None
        if isinstance(nano, str) and nano.isdigit():
            rec.clock_offset = int(nano) - time.time_ns()
        return {"tick_size": to_float((info.get("priceFilter") or {}).get("tickSize")),
                "lot_size": to_float(lot.get("qtyStep", lot.get("basePrecision")))}

    # -- a connection
    async def _send(self, ws, op: str, args=None) -> None:
        self._req += 1
        msg = {"req_id": f"{op}-{self._req}", "op": op}
        if args is not None:
            msg["args"] = list(args)
        await ws.send(json.dumps(msg))

    async def on_connect(self, ws, url: str) -> None:
        rec = self.rec
        local = rec.now_ns()
        if rec.raw is not None:
            rec.raw.write_line(f"{url} <-> {secs(local)}")
        rec.reader.feed("connect", local, url.encode())
        self.want_resub = False
        self.last_ping = time.monotonic()
        self.waiting_since = time.monotonic()
        await self._send(ws, "subscribe", self.streams)

    def handle_frame(self, local: int, text: str) -> None:
        rec = self.rec
        obj = rec.parse_frame(text)
        if obj is None:
            return
        topic = obj.get("topic")
        if topic is None:
            op = obj.get("op")
            if obj.get("ret_msg") == "pong" or op == "pong":
                return
            if obj.get("success") is False:
                rec.stats.exchange_errors += 1
                raise ExchangeError(f"{op} refused: {str(obj.get('ret_msg'))[:200]}")
            if op in ("subscribe", "unsubscribe", "ping"):
                return  # acknowledgements
            rec.unknown(text)
            return
        if topic not in self.streams:
            rec.unknown(text, "unknown topic")
            return
        ts = obj.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            rec.stats.lag_ms = (local - ts * 1_000_000) / 1e6
        if "\n" in text:
            text = json.dumps(obj, separators=(",", ":"))
        if rec.raw is not None:
            rec.raw.write(local, text)
        rec.stats.messages += 1
        reader = rec.reader
        n_gaps = len(reader.report.gaps)
        rows = reader.feed("message", local, obj)
        rec.store(rows)
        for row in rows:
            if hasattr(row, "bid_px"):
                self.waiting_since = None
                self.last_u = row.seq
                self.last_book_ts = row.ts
        for g in reader.report.gaps[n_gaps:]:
            rec.log(logging.WARNING, f"gap at u {g.get('seq', self.last_u)}: {g.get('reason')}; "
                                     f"resubscribing to {self.book_topic} for a new snapshot")
            self.want_resub = True

    async def tick(self, ws) -> None:
        rec = self.rec
        now = time.monotonic()
        if now - self.last_ping >= PING_SECONDS:
            await self._send(ws, "ping")
            rec.stats.pings += 1
            self.last_ping = now
        if self.want_resub:
            self.want_resub = False
            await self._send(ws, "unsubscribe", [self.book_topic])
            await self._send(ws, "subscribe", [self.book_topic])
            rec.stats.resubscribes += 1
            self.waiting_since = now
        if self.waiting_since is not None and now - self.waiting_since > RESUBSCRIBE_TIMEOUT:
            self.waiting_since = None
            raise Resync(f"no book snapshot {RESUBSCRIBE_TIMEOUT:g} s after subscribing to {self.book_topic}")

    # -- bookkeeping
    def gap_seq(self) -> int:
        return self.last_u

    def last_ts(self) -> int | None:
        return self.last_book_ts


class BybitSpotAdapter(BybitAdapter):
    category = "spot"
