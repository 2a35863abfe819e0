"""Loopback fakes for `gpu_engine.data download`: a Tardis-like and a Binance-archive-like server.

`FakeServer` is a threading `http.server` on 127.0.0.1 (port 0) serving bytes by URL path, with
HTTP Range (206 / 416), optional Bearer auth, and faults queued per path and consumed one per
request: a status (429 with Retry-After, 500, 403...), a cut (headers promise the whole body,
the connection closes after N bytes), other bytes (a corrupted file), a reply that ignores
Range, a slow body (N bytes, then a pause). Bytes written are counted per path (`sent`). Every request is logged (`requests`, `count(path)`).

Builders turn a slice of a real Binance capture (`<local_ns> <json>` lines) into the files the
providers publish: Tardis CSVs (incremental_book_L2, trades, quotes, book_snapshot_25) and
Binance archive CSVs (trades, aggTrades, bookTicker) zipped with their `.CHECKSUM`; `klines_csv`
writes spot 1d klines (monthly or daily zips: `ArchiveFake.add_klines`).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ---------------------------------------------------------------- the server


class FakeServer:
    def __init__(self, token: str | None = None, needs_auth=None):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list] = {}
        self.requests: list[dict] = []
        self.sent: dict[str, int] = {}   # body bytes written per path
        self.token = token
        self.needs_auth = needs_auth or (lambda path: False)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                server._serve(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hung up (the tests cut connections on purpose)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fault(self, path: str, *faults) -> None:
        self.faults.setdefault(path, []).extend(faults)

    def count(self, path_part: str) -> int:
        return sum(1 for r in self.requests if path_part in r["path"])

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        rng = h.headers.get("Range")
        with self._lock:
            self.requests.append({"path": path, "range": rng, "auth": h.headers.get("Authorization")})
            fault = self.faults[path].pop(0) if self.faults.get(path) else None
        if self.needs_auth(path):
            auth = h.headers.get("Authorization")
            if auth != f"Bearer {self.token}":
                return self._send(h, 401 if auth is None else 403, b'{"code":401,"message":"Invalid API key"}')
        body = self.files.get(path)
        if fault is not None and fault[0] == "status":
            return self._send(h, fault[1], b"slow down", fault[2] if len(fault) > 2 else {})
        if body is None:
            return self._send(h, 404, b"<Error><Code>NoSuchKey</Code></Error>")
        if fault is not None and fault[0] == "body":
            body = fault[1]
            rng = None
        if fault is not None and fault[0] == "ignore-range":
            rng = None
        start = 0
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(body):
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(body)}"})
        part = body[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(part)))
        h.send_header("Content-Type", "application/octet-stream")
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        h.end_headers()
        if fault is not None and fault[0] == "cut":
            h.wfile.write(part[:fault[1]])
            h.wfile.flush()
            self._add_sent(path, fault[1])
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        step, pause = (fault[1], fault[2]) if fault is not None and fault[0] == "slow" else (len(part) or 1, 0)
        try:
            for i in range(0, len(part), step):
                h.wfile.write(part[i:i + step])
                h.wfile.flush()
                self._add_sent(path, len(part[i:i + step]))
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _add_sent(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    @staticmethod
    def _send(h, code: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


class TardisFake(FakeServer):
    """`/v1/{exchange}/{type}/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz`; days other than the 1st need the key."""

    def __init__(self, token: str = "test-key-123"):
        def paid(path: str) -> bool:  # ['', 'v1', exchange, type, YYYY, MM, DD, file]
            parts = path.split("/")
            return len(parts) == 8 and parts[6] != "01"

        super().__init__(token=token, needs_auth=paid)

    @property
    def base(self) -> str:
        return self.url + "/v1"

    @staticmethod
    def path(exchange: str, data_type: str, day: str, symbol: str) -> str:
        y, m, d = day.split("-")
        return f"/v1/{exchange}/{data_type}/{y}/{m}/{d}/{symbol}.csv.gz"

    def add(self, exchange, data_type, day, symbol, gz: bytes) -> str:
        p = self.path(exchange, data_type, day, symbol)
        self.files[p] = gz
        return p


class ArchiveFake(FakeServer):
    """`/data/{spot|futures/um|futures/cm}/daily/{type}/{SYMBOL}/{SYMBOL}-{type}-{day}.zip` + `.CHECKSUM`."""

    MARKETS = {"spot": "spot", "um": "futures/um", "cm": "futures/cm"}

    @property
    def base(self) -> str:
        return self.url

    def path(self, market, data_type, symbol, day) -> str:
        return f"/data/{self.MARKETS[market]}/daily/{data_type}/{symbol}/{symbol}-{data_type}-{day}.zip"

    def add(self, market, data_type, symbol, day, csv_text: str, checksum: str | None = None) -> str:
        p = self.path(market, data_type, symbol, day)
        name = p.rsplit("/", 1)[1]
        data = zip_bytes(name[:-4] + ".csv", csv_text)
        self.files[p] = data
        sha = checksum or hashlib.sha256(data).hexdigest()
        self.files[p + ".CHECKSUM"] = f"{sha}  {name}\n".encode()
        return p


    def kline_path(self, symbol, interval, stamp, market="spot") -> str:
        """`/data/spot/{monthly|daily}/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM[-DD]}.zip`."""
        period = "monthly" if len(stamp) == 7 else "daily"
        return f"/data/{self.MARKETS[market]}/{period}/klines/{symbol}/{interval}/{symbol}-{interval}-{stamp}.zip"

    def add_klines(self, symbol, interval, stamp, csv_text: str, checksum: str | None = None) -> str:
        """A klines zip (monthly when `stamp` is YYYY-MM, daily when YYYY-MM-DD) with its .CHECKSUM."""
        p = self.kline_path(symbol, interval, stamp)
        name = p.rsplit("/", 1)[1]
        data = zip_bytes(name[:-4] + ".csv", csv_text)
        self.files[p] = data
        sha = checksum or hashlib.sha256(data).hexdigest()
        self.files[p + ".CHECKSUM"] = f"{sha}  {name}\n".encode()
        return p


def klines_csv(days, closes, micros: bool | None = None) -> str:
    """Spot 1d klines as the archive publishes them: no header row, 12 fields, open/close times
    in milliseconds before 2025-01-01 and microseconds from then on (`micros` forces one unit).
    `days` are ISO dates, `closes` their closes (open/high/low derived from them)."""
    from datetime import date

    rows = []
    for d, c in zip(days, closes):
        day = (date.fromisoformat(d) - date(1970, 1, 1)).days
        us = micros if micros is not None else d >= "2025-01-01"
        unit = 86_400_000_000 if us else 86_400_000
        t0 = day * unit
        rows.append(f"{t0},{c * 0.99:.8f},{c * 1.02:.8f},{c * 0.97:.8f},{c:.8f},1234.5,{t0 + unit - 1},"
                    f"{1234.5 * c:.8f},1000,600.0,{600.0 * c:.8f},0")
    return "\n".join(rows) + "\n"


def zip_bytes(member: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(member, date_time=(2024, 8, 9, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, text)
    return buf.getvalue()


def gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


# ---------------------------------------------------------------- builders from a real capture


def read_capture(path, max_lines: int) -> list[tuple[int, dict]]:
    """(local_ns, JSON) of the first `max_lines` lines of a `<local_ns> <json>` capture."""
    out = []
    with gzip.open(path, "rb") as f:
        for i, line in enumerate(f):
            if i >= max_lines:
                break
            ts, js = line.split(b" ", 1)
            out.append((int(ts), json.loads(js)))
    return out


def _stream(msgs, kind):
    for local, o in msgs:
        if "stream" in o and o["stream"].endswith(kind):
            yield local, o["data"]


def tardis_csvs(msgs, exchange="binance-futures", symbol="BTCUSDT") -> dict[str, str]:
    """incremental_book_L2, trades and quotes CSV text as Tardis normalises a Binance USD-M feed:
    the REST snapshot as is_snapshot rows, then the depth updates that follow it (u >= lastUpdateId),
    one local_timestamp per message; times in microseconds."""
    snap_at = next(i for i, (_, o) in enumerate(msgs) if "lastUpdateId" in o)
    snap_local, snap = msgs[snap_at]
    lid = snap["lastUpdateId"]
    inc = ["exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"]
    local_us = snap_local // 1000
    t_snap = snap["E"] * 1000
    for side, key in (("bid", "bids"), ("ask", "asks")):
        for px, q in snap[key]:
            inc.append(f"{exchange},{symbol},{t_snap},{local_us},true,{side},{px},{q}")
    last_local = local_us
    for local, d in _stream(msgs, "@depth@0ms"):
        if d["u"] < lid:
            continue
        lu = max(local // 1000, last_local + 1)  # one local_timestamp per message, in order
        last_local = lu
        for side, key in (("bid", "b"), ("ask", "a")):
            for px, q in d[key]:
                inc.append(f"{exchange},{symbol},{d['E'] * 1000},{lu},false,{side},{px},{q}")
    trades = ["exchange,symbol,timestamp,local_timestamp,id,side,price,amount"]
    for local, d in _stream(msgs, "@trade"):
        trades.append(f"{exchange},{symbol},{d['T'] * 1000},{local // 1000},{d['t']},"
                      f"{'sell' if d['m'] else 'buy'},{d['p']},{d['q']}")
    quotes = ["exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"]
    for local, d in _stream(msgs, "@bookTicker"):
        quotes.append(f"{exchange},{symbol},{d['E'] * 1000},{local // 1000},{d['A']},{d['a']},{d['b']},{d['B']}")
    return {"incremental_book_L2": "\n".join(inc) + "\n", "trades": "\n".join(trades) + "\n",
            "quotes": "\n".join(quotes) + "\n"}


def snapshot25_csv(book, exchange="binance-futures", symbol="BTCUSDT", every: int = 10) -> str:
    """book_snapshot_25 rows from every `every`-th row of a loaded book store (25 levels)."""
    import numpy as np

    cols = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(25):
        cols += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    out = [",".join(cols)]
    for r in range(0, book.T, every):
        us = int(book.ts[r]) // 1000
        f = [exchange, symbol, str(us), str(us + 5)]
        for i in range(25):
            for px, sz in ((book.ask_px[r, i], book.ask_sz[r, i]), (book.bid_px[r, i], book.bid_sz[r, i])):
                f += ["", ""] if np.isnan(px) else [repr(float(px)), repr(float(sz))]
        out.append(",".join(f))
    return "\n".join(out) + "\n"


def archive_csvs(msgs, market="um", header=True, micros=False) -> dict[str, str]:
    """trades, aggTrades (and bookTicker for futures) CSV text as data.binance.vision publishes them.
    `header`: futures files from 2022 on have one, spot never; `micros`: spot from 2025 on."""
    spot = market == "spot"
    k = 1000 if micros else 1
    tr = [] if not header or spot else ["id,price,qty,quote_qty,time,is_buyer_maker"]
    ag = [] if not header or spot else ["agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
                                        "is_buyer_maker"]
    bt = [] if not header else ["update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,"
                                "transaction_time,event_time"]
    trades = [d for _, d in _stream(msgs, "@trade")]
    for d in trades:
        quote = f"{float(d['p']) * float(d['q']):.8f}"
        m = "True" if spot and d["m"] else "False" if spot else ("true" if d["m"] else "false")
        tr.append(f"{d['t']},{d['p']},{d['q']},{quote},{d['T'] * k},{m}" + (",True" if spot else ""))
    agg_id = 1000
    i = 0
    while i < len(trades):  # consecutive fills at one price, one side, one time -> one aggTrade
        j = i
        while (j + 1 < len(trades) and trades[j + 1]["p"] == trades[i]["p"] and trades[j + 1]["m"] == trades[i]["m"]
               and trades[j + 1]["T"] == trades[i]["T"] and trades[j + 1]["t"] == trades[j]["t"] + 1):
            j += 1
        d = trades[i]
        qty = sum(float(t["q"]) for t in trades[i:j + 1])
        m = ("True" if d["m"] else "False") if spot else ("true" if d["m"] else "false")
        ag.append(f"{agg_id},{d['p']},{qty:.8g},{d['t']},{trades[j]['t']},{d['T'] * k},{m}" + (",True" if spot else ""))
        agg_id += 1
        i = j + 1
    out = {"trades": "\n".join(tr) + "\n", "aggTrades": "\n".join(ag) + "\n"}
    if not spot:
        for _, d in _stream(msgs, "@bookTicker"):
            bt.append(f"{d['u']},{d['b']},{d['B']},{d['a']},{d['A']},{d['T']},{d['E']}")
        out["bookTicker"] = "\n".join(bt) + "\n"
    return out
