"""Coinbase Exchange recording: public `level2_batch` + `matches` + `heartbeat`, cryptofeed capture lines.

The subscription itself brings the snapshot; lines are written and fed in the cryptofeed
capture shape that `feeds/coinbase.py` reads (`<seconds>: <json>`, and a `<url> <->
<seconds>` header at every connection, which makes the reader drop the book until the
next snapshot). level2 has no sequence numbers, so a gap is what the reader flags
(malformed or crossed book) or a dropped connection: either way the recorder reconnects
(`Resync`), and the new subscription's snapshot resyncs the book.
"""
from __future__ import annotations

import json
import logging
import time

from gpu_engine.data.books.recorder.loop import (Adapter, ExchangeError, LiveReader, Resync, json_or_none, secs,
                                                 to_float)
from gpu_engine.errors import InputError

FED = frozenset({"snapshot", "l2update", "match", "last_match"})


class CoinbaseAdapter(Adapter):
    ws = "wss://ws-feed.exchange.coinbase.com"
    rest = "https://api.exchange.coinbase.com"
    info_path = "/products/{symbol}"
    time_path = "/time"
    format = "coinbase-jsonl"

    def __init__(self, rec):
        super().__init__(rec)
        # Exchange feed: level2_batch is the public (unauthenticated) level2 channel, same schema
        self.streams = ("level2_batch", "matches", "heartbeat")

    def make_reader(self) -> LiveReader:
        from gpu_engine.data.books.feeds import coinbase

        return LiveReader(coinbase, self.rec.cfg.depth, self.rec.symbol, "tagged")

    async def startup_check(self, http) -> dict:
        import httpx

        rec = self.rec
        url = rec.rest_base + self.info_path.format(symbol=rec.symbol)
        try:
            r = await http.get(url)
            t = await http.get(rec.rest_base + self.time_path) if rec.cfg.clock == "server" else None
        except httpx.HTTPError as exc:
            raise InputError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        body = json_or_none(r)
        if r.status_code in (400, 404):
            msg = body.get("message") if isinstance(body, dict) else r.text[:80]
            raise InputError(f"invalid symbol {rec.symbol!r} on coinbase: {msg}")
        if r.status_code != 200 or not isinstance(body, dict):
            raise InputError(f"{url}: HTTP {r.status_code} at start: {r.text[:200]!r}")
        tb = json_or_none(t) if t is not None else None
        if isinstance(tb, dict) and isinstance(tb.get("epoch"), (int, float)):
            rec.clock_offset = int(tb["epoch"] * 1e9) - time.time_ns()
        return {"tick_size": to_float(body.get("quote_increment")), "lot_size": to_float(body.get("base_increment"))}

    async def on_connect(self, ws, url: str) -> None:
        """A connection header line (the reader drops every book), then subscribe."""
        rec = self.rec
        local = rec.now_ns()
        if rec.raw is not None:
            rec.raw.write_line(f"{url} <-> {secs(local)}")
        rec.reader.feed("connect", local, url.encode())
        await ws.send(json.dumps({"type": "subscribe", "product_ids": [rec.symbol], "channels": list(self.streams)}))

    def handle_frame(self, local: int, text: str) -> None:
        rec = self.rec
        obj = rec.parse_frame(text)
        if obj is None:
            return
        mtype = obj.get("type")
        if mtype == "error":
            rec.stats.exchange_errors += 1
            raise ExchangeError(f"{obj.get('message')}: {obj.get('reason')}")
        if mtype in ("subscriptions", "heartbeat"):
            return
        if mtype not in FED or obj.get("product_id") != rec.symbol:
            rec.unknown(text, "unknown message type or product")
            return
        if mtype == "l2update" and isinstance(obj.get("time"), str):
            try:
                from gpu_engine.data.books.feeds.coinbase import iso_to_ns

                rec.stats.lag_ms = (local - iso_to_ns(obj["time"])) / 1e6
            except ValueError:
                pass
        if "\n" in text:
            text = json.dumps(obj, separators=(",", ":"))
        if rec.raw is not None:
            rec.raw.write_line(f"{secs(local)}: {text}")
        rec.stats.messages += 1
        reader = rec.reader
        n_gaps = len(reader.report.gaps)
        rec.store(reader.feed("message", local, obj))
        gaps = reader.report.gaps
        if len(gaps) > n_gaps:
            for g in gaps[n_gaps:]:
                rec.log(logging.WARNING, f"gap: {g.get('reason')}; resubscribing for a new snapshot")
            raise Resync(gaps[-1].get("reason"))
