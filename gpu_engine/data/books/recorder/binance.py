"""Binance spot / USD-M recording: combined streams + REST depth snapshots (Binance's documented sync).

Subscribe (in the URL) to `<sym>@depth@100ms`, `<sym>@trade`, `<sym>@bookTicker` on the
combined-stream endpoint. Every frame is written as a `<local_ts_ns> <json>` line and fed
to `feeds/binance.py`'s reader with its `DepthSync`; when the reader holds buffered diffs
and no book (start, or after a gap it detected), a REST snapshot is fetched and fed as its
own line; a stale snapshot (older than the buffered diffs) is refused by the reader and
fetched again. A reconnect that lost diffs shows up as an id gap in the reader, and a
fresh snapshot resyncs the book (a reconnect that lost nothing keeps a provably
continuous book). HTTP 429/5xx or an unreadable snapshot: logged, retried with backoff,
honouring Retry-After. An error message on the stream: reconnect with backoff.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time

from gpu_engine.data.books.recorder.loop import (Adapter, Backoff, ExchangeError, LiveReader, json_or_none,
                                                 to_float)
from gpu_engine.errors import InputError


class BinanceAdapter(Adapter):
    ws = "wss://stream.binance.com:9443"
    rest = "https://api.binance.com"
    depth_path = "/api/v3/depth"
    info_path = "/api/v3/exchangeInfo"
    limit = 1000
    format = "binance-jsonl"

    def __init__(self, rec):
        super().__init__(rec)
        s = rec.symbol.lower()
        self.streams = (f"{s}@depth@100ms", f"{s}@trade", f"{s}@bookTicker")

    def ws_url(self) -> str:
        return f"{self.rec.ws_base}/stream?streams={'/'.join(self.streams)}"

    def make_reader(self) -> LiveReader:
        from gpu_engine.data.books.feeds import binance

        return LiveReader(binance, self.rec.cfg.depth, self.rec.symbol, "stamped", sync=binance.DepthSync)

    async def startup_check(self, http) -> dict:
        import httpx

        rec = self.rec
        url = rec.rest_base + self.info_path
        try:
            r = await http.get(url, params={"symbol": rec.symbol})
        except httpx.HTTPError as exc:
            raise InputError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        body = json_or_none(r)
        if r.status_code == 400 and isinstance(body, dict) and body.get("code") == -1121:
            raise InputError(f"invalid symbol {rec.symbol!r} on {rec.cfg.exchange}: {body.get('msg')}")
        if r.status_code != 200 or not isinstance(body, dict):
            raise InputError(f"{url}: HTTP {r.status_code} at start: {r.text[:200]!r}")
        out = {}
        for sym in body.get("symbols") or []:
            if sym.get("symbol") == rec.symbol:
                for f in sym.get("filters") or []:
                    if f.get("filterType") == "PRICE_FILTER":
                        out["tick_size"] = to_float(f.get("tickSize"))
                    elif f.get("filterType") == "LOT_SIZE":
                        out["lot_size"] = to_float(f.get("stepSize"))
        if rec.cfg.clock == "server" and isinstance(body.get("serverTime"), int):
            rec.clock_offset = body["serverTime"] * 1_000_000 - time.time_ns()
        return out

    # -- frames
    def handle_frame(self, local: int, text: str) -> None:
        rec = self.rec
        obj = rec.parse_frame(text)
        if obj is None:
            return
        if "stream" in obj:
            stream = obj.get("stream")
            if not self._our_stream(stream) or not isinstance(obj.get("data"), dict):
                rec.unknown(text, "unknown stream or message")
                return
            data = obj["data"]
            e = data.get("E", data.get("T"))
            if isinstance(e, int) and data.get("e") in ("depthUpdate", "trade"):
                rec.stats.lag_ms = (local - e * 1_000_000) / 1e6
            if "\n" in text:
                text = json.dumps(obj, separators=(",", ":"))
            self._feed_line(local, text, obj)
            return
        if "error" in obj or ("code" in obj and "msg" in obj):
            rec.stats.exchange_errors += 1
            err = obj.get("error", obj)
            raise ExchangeError(json.dumps(err)[:200])
        if "result" in obj and "id" in obj:
            return  # a subscription acknowledgement
        rec.unknown(text)

    def _our_stream(self, stream) -> bool:
        """One of the subscribed streams (a diff-depth stream at any update speed)."""
        if stream in self.streams:
            return True
        if not isinstance(stream, str):
            return False
        sym, _, rest = stream.partition("@")
        return sym == self.rec.symbol.lower() and (rest == "depth" or re.fullmatch(r"depth@\d+ms", rest) is not None)

    def _feed_line(self, local: int, text: str, obj=None) -> None:
        """Write the capture line, then feed it to the reader; rows -> the store."""
        rec = self.rec
        reader = rec.reader
        if obj is None:
            obj = json.loads(text)
        if rec.raw is not None:
            rec.raw.write(local, text)
        rec.stats.messages += 1
        n_gaps = len(reader.report.gaps)
        was_synced = reader.sync.synced
        n_stale = reader.report.stale_snapshots
        rec.store(reader.feed(local, obj))
        if "lastUpdateId" in obj:
            if reader.report.stale_snapshots > n_stale:
                rec.log(logging.WARNING, f"snapshot lastUpdateId={obj['lastUpdateId']} is older than the "
                                         "buffered updates (stale): fetching another")
            elif not was_synced and reader.sync.synced:
                rec.log(logging.INFO, f"book synced from snapshot lastUpdateId={obj['lastUpdateId']}")
        for g in reader.report.gaps[n_gaps:]:
            rec.log(logging.WARNING, f"gap at seq {g.get('seq')}: {g.get('reason')}; resyncing from a new snapshot")

    # -- REST snapshots
    def needs_snapshot(self) -> bool:
        return self.rec.reader.needs_snapshot()

    def feed_snapshot(self, line) -> bool:
        self._feed_line(*line)
        return self.rec.reader.sync.synced

    async def fetch_snapshot(self, http, delay: float):
        """GET the REST snapshot (with backoff on 429/5xx/network/garbage). Returns (local, text) or None."""
        import httpx

        rec = self.rec
        if delay > 0:
            await asyncio.sleep(delay)
        url = rec.rest_base + self.depth_path
        params = {"symbol": rec.symbol, "limit": self.limit}
        backoff = Backoff(rec.cfg.backoff_base, rec.cfg.backoff_max)
        while not rec.stopping:
            retry_after = 0.0
            try:
                r = await http.get(url, params=params)
                local = rec.now_ns()
                body = json_or_none(r)
                if r.status_code == 200 and isinstance(body, dict) and isinstance(body.get("lastUpdateId"), int):
                    rec.stats.snapshots += 1
                    text = r.text.strip()
                    if "\n" in text:
                        text = json.dumps(body, separators=(",", ":"))
                    return local, text
                if r.status_code == 400 and isinstance(body, dict) and body.get("code") == -1121:
                    raise ExchangeError(f"snapshot: invalid symbol {rec.symbol}: {body.get('msg')}")
                why = f"HTTP {r.status_code}" + (f" {body.get('msg')}" if isinstance(body, dict) else
                                                 f" {r.text[:80]!r}")
                retry_after = to_float(r.headers.get("Retry-After")) or 0.0
                if r.status_code in (418, 429):
                    why += " (rate limited)"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            rec.stats.snapshot_failures += 1
            d = backoff.next(at_least=retry_after)
            rec.log(logging.WARNING, f"snapshot {url} failed: {why}; retrying in {d:.2f} s")
            await asyncio.sleep(d)
        return None

    # -- bookkeeping
    def gap_seq(self) -> int:
        sync = self.rec.reader.sync if self.rec.reader is not None else None
        return sync.local_id if sync is not None else -1

    def last_ts(self) -> int | None:
        sync = self.rec.reader.sync if self.rec.reader is not None else None
        return sync.book_ts if sync is not None else None


class BinanceUsdmAdapter(BinanceAdapter):
    ws = "wss://fstream.binance.com"
    rest = "https://fapi.binance.com"
    depth_path = "/fapi/v1/depth"
    info_path = "/fapi/v1/exchangeInfo"
