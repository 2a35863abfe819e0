"""Loopback fakes of a Bitcoin Core JSON-RPC node and an Esplora server, for tests (127.0.0.1 only).

`FakeChain` holds blocks by height (sparse: a test may serve the genesis block plus a slice of
real headers; heights in between do not exist there). `extend(n)` appends blocks,
`reorg(fork, n)` switches the tip to another branch whose first block is at height `fork`.
Blocks of abandoned branches stay known by hash (as a node keeps them).

`FakeCore(chain, user=, password=)` speaks Bitcoin Core's JSON-RPC over HTTP with basic auth
(401 + WWW-Authenticate on wrong credentials), single requests and batches (a JSON array in,
an array of {result, error, id} out, HTTP 200): getblockcount, getbestblockhash,
getblockhash (-8 "Block height out of range"), getblockheader (verbose), getblockstats (the
selected stats; -5 "Block not found"). `FakeEsplora(chain)` serves /blocks/tip/height,
/blocks/tip/hash, /block-height/H, /block/HASH and /blocks[/START] (10 blocks walking back).

A block field set to None is unknown to the fake: Core then answers nTx 0 (as for a block it
has the header of only), no difficulty or mediantime, and getblockstats fails with -1 "Block
not available" (as a pruned node does); Esplora leaves the field out.

Test controls: `chain.malform[height] = "time" | "json" | "hash"` makes the replies about that
block malformed (a bad field, a truncated JSON body, a bad hash); `fake.fail_next = [503, ...]`
answers the next requests with those statuses; `fake.hook(names)` runs in
the server thread before each request is answered (names: the JSON-RPC methods, or the
path), e.g. to extend or reorg the chain at a given poll; `fake.fetched[height]` counts the
header replies per height; `fake.requests` counts requests.

    with FakeCore(chain, user="u", password="p") as node:
        node.url   # http://127.0.0.1:PORT/
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAINNET_GENESIS = {
    "height": 0, "hash": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f", "prev": None,
    "time": 1231006505, "mediantime": 1231006505, "bits": 0x1D00FFFF, "difficulty": 1.0, "ntx": 1,
    "size": 285, "weight": 1140, "fee": 0,
}


def subsidy(h: int) -> int:
    e = h // 210_000
    return 0 if e >= 64 else (50 * 100_000_000) >> e


def fake_hash(*parts) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


class FakeChain:
    """Blocks by height (the best chain) and by hash (every block ever made)."""

    def __init__(self, blocks=()):
        self.lock = threading.RLock()
        self.by_height: dict[int, dict] = {}
        self.by_hash: dict[str, dict] = {}
        self.malform: dict[int, str] = {}
        self.genesis = dict(MAINNET_GENESIS)
        self.add(self.genesis)
        for b in blocks:
            self.add(b)

    def add(self, b: dict) -> None:
        with self.lock:
            b = dict(b)
            b.setdefault("ntx", 1)
            b.setdefault("fee", 0)
            b.setdefault("difficulty", 1.0)
            b.setdefault("bits", 0x1D00FFFF)
            b.setdefault("size", 300)
            b.setdefault("weight", 1200)
            self.by_height[b["height"]] = b
            self.by_hash[b["hash"]] = b

    def fill_mediantime(self, strict: bool = False) -> None:
        """mediantime = median of the times of the block and the 10 before it (BIP 113) that exist
        here; with `strict`, only where all 11 exist (else unknown: None, and not served)."""
        with self.lock:
            for h in sorted(self.by_height):
                b = self.by_height[h]
                if "mediantime" not in b:
                    ts = sorted(self.by_height[k]["time"] for k in range(h - 10, h + 1) if k in self.by_height)
                    b["mediantime"] = ts[len(ts) // 2] if len(ts) == min(11, h + 1) or not strict else None

    @property
    def tip(self) -> int:
        return max(self.by_height)

    def block(self, h: int) -> dict | None:
        return self.by_height.get(h)

    def extend(self, n: int, branch: str = "main", spacing: int = 600) -> None:
        with self.lock:
            for _ in range(n):
                top = self.by_height[self.tip]
                h = top["height"] + 1
                t = top["time"] + spacing + (h % 7) * 13 - 40
                self.add({"height": h, "hash": fake_hash(branch, h), "prev": top["hash"], "time": t,
                          "ntx": 1 + h % 50, "fee": 1000 * (h % 97), "size": 1000 + h % 500,
                          "weight": 4000 + h % 2000, "difficulty": 1.0 + h})
            self.fill_mediantime()

    def reorg(self, fork: int, n: int, branch: str = "alt") -> None:
        """Replace heights >= fork by a new branch of n blocks (its first block at `fork`)."""
        with self.lock:
            for h in [h for h in self.by_height if h >= fork]:
                del self.by_height[h]
            for h in range(fork, fork + n):
                prev = self.by_height[h - 1]
                self.add({"height": h, "hash": fake_hash(branch, h), "prev": prev["hash"],
                          "time": prev["time"] + 555, "ntx": 2 + h % 30, "fee": 777 * (h % 89),
                          "size": 900 + h % 400, "weight": 3600 + h % 1600, "difficulty": 2.0 + h})
            self.fill_mediantime()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Fake:
    def __init__(self, chain: FakeChain, user: str | None = None, password: str | None = None):
        self.chain = chain
        self.user, self.password = user, password
        self.hook = None
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with
        self.fetched: Counter = Counter()
        self.requests = 0
        self.auth_failures = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, delayed ACKs cost ~40 ms a reply
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, code: int, body: bytes, ctype="application/json", headers=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _failing(self) -> bool:
                with fake._lock:
                    code = fake.fail_next.pop(0) if fake.fail_next else None
                if code is None:
                    return False
                self._send(code, b"Work queue depth exceeded", "text/plain")
                return True

            def _authorized(self) -> bool:
                if fake.user is None:
                    return True
                want = "Basic " + base64.b64encode(f"{fake.user}:{fake.password}".encode()).decode()
                if self.headers.get("Authorization") == want:
                    return True
                with fake._lock:
                    fake.auth_failures += 1
                self._send(401, b"", "text/plain", [("WWW-Authenticate", 'Basic realm="jsonrpc"')])
                return False

            def do_POST(self):
                with fake._lock:
                    fake.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self._failing() or not self._authorized():
                    return
                code, reply, ctype = fake.post(body)
                self._send(code, reply, ctype)

            def do_GET(self):
                with fake._lock:
                    fake.requests += 1
                if self._failing() or not self._authorized():
                    return
                code, reply, ctype = fake.get(self.path)
                self._send(code, reply, ctype)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-node", daemon=True)

    def _hook(self, names):
        if self.hook is not None:
            self.hook(names)

    def post(self, body: bytes):
        return 405, b"", "text/plain"

    def get(self, path: str):
        return 405, b"", "text/plain"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class FakeCore(_Fake):
    """Bitcoin Core JSON-RPC (see the module docstring)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def post(self, body: bytes):
        try:
            req = json.loads(body)
        except ValueError:
            return 500, json.dumps({"result": None, "error": {"code": -32700, "message": "Parse error"},
                                    "id": None}).encode(), "application/json"
        calls = req if isinstance(req, list) else [req]
        self._hook([c.get("method") for c in calls if isinstance(c, dict)])
        out = []
        broken = False
        with self.chain.lock:
            for c in calls:
                res, err, bad = self._call(c.get("method"), c.get("params") or [])
                broken |= bad
                out.append({"result": res, "error": err, "id": c.get("id")})
        text = json.dumps(out if isinstance(req, list) else out[0]).encode()
        if broken:
            text = text[: len(text) // 2]  # a truncated body
        return 200, text, "application/json"

    def _call(self, method, params):
        ch = self.chain
        if method == "getblockcount":
            return ch.tip, None, False
        if method == "getbestblockhash":
            return ch.block(ch.tip)["hash"], None, False
        if method == "getblockhash":
            b = ch.block(params[0]) if params and isinstance(params[0], int) else None
            if b is None:
                return None, {"code": -8, "message": "Block height out of range"}, False
            return b["hash"], None, False
        if method in ("getblockheader", "getblockstats"):
            key = params[0] if params else None
            b = ch.by_hash.get(key) if isinstance(key, str) else ch.block(key)
            if b is None:
                return None, {"code": -5, "message": "Block not found"}, False
            how = ch.malform.get(b["height"])
            if method == "getblockheader":
                with self._lock:
                    self.fetched[b["height"]] += 1
                r = {"hash": b["hash"], "confirmations": 1, "height": b["height"], "version": 0x20000000,
                     "versionHex": "20000000", "merkleroot": fake_hash("merkle", b["hash"]), "time": b["time"],
                     "mediantime": b.get("mediantime"), "nonce": 0,
                     "bits": None if b["bits"] is None else f"{b['bits']:08x}",
                     "difficulty": b["difficulty"], "chainwork": "00" * 32, "nTx": b["ntx"] or 0}
                for k in ("mediantime", "difficulty", "bits"):
                    if r[k] is None:
                        del r[k]
                if b["prev"] is not None:
                    r["previousblockhash"] = b["prev"]
                if how == "time":
                    r["time"] = "soon"
                if how == "hash":
                    r["previousblockhash"] = "xyz"
                return r, None, how == "json"
            if b["fee"] is None or b["ntx"] is None:
                return None, {"code": -1, "message": "Block not available (pruned data)"}, False
            allstats = {"blockhash": b["hash"], "height": b["height"], "subsidy": subsidy(b["height"]),
                        "totalfee": b["fee"], "txs": b["ntx"], "time": b["time"],
                        "mediantime": b.get("mediantime", b["time"])}
            want = params[1] if len(params) > 1 and params[1] else list(allstats)
            if any(s not in allstats for s in want):
                return None, {"code": -8, "message": "Invalid selected statistic"}, False
            return {s: allstats[s] for s in want}, None, False
        return None, {"code": -32601, "message": "Method not found"}, False


class FakeEsplora(_Fake):
    """Esplora HTTP API (see the module docstring)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _value(self, b: dict):
        how = self.chain.malform.get(b["height"])
        v = {"id": b["hash"], "height": b["height"], "version": 0x20000000, "timestamp": b["time"],
             "tx_count": b["ntx"], "size": b["size"], "weight": b["weight"],
             "merkle_root": fake_hash("merkle", b["hash"]), "previousblockhash": b["prev"],
             "mediantime": b.get("mediantime"), "nonce": 0, "bits": b["bits"],
             "difficulty": b["difficulty"]}
        for k in [k for k, x in v.items() if x is None]:
            del v[k]  # previousblockhash of genesis; what the fake does not know
        if how == "time":
            v["timestamp"] = "soon"
        if how == "hash":
            v["id"] = "xyz"
        return v, how == "json"

    def get(self, path: str):
        self._hook([path])
        parts = [p for p in path.split("?")[0].split("/") if p]
        if parts and parts[0] == "api":
            parts = parts[1:]
        ch = self.chain
        text = lambda s, code=200: (code, s.encode(), "text/plain")  # noqa: E731
        with ch.lock:
            if parts == ["blocks", "tip", "height"]:
                return text(str(ch.tip))
            if parts == ["blocks", "tip", "hash"]:
                return text(ch.block(ch.tip)["hash"])
            if len(parts) == 2 and parts[0] == "block-height":
                b = ch.block(int(parts[1])) if parts[1].isdigit() else None
                return text(b["hash"]) if b else text("Block not found", 404)
            if len(parts) == 2 and parts[0] == "block":
                b = ch.by_hash.get(parts[1])
                if b is None:
                    return text("Block not found", 404)
                v, broken = self._value(b)
                body = json.dumps(v).encode()
                return 200, (body[: len(body) // 2] if broken else body), "application/json"
            if parts and parts[0] == "blocks" and len(parts) <= 2:
                start = int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else ch.tip
                b = ch.block(start)
                if b is None:
                    return text("Block not found", 404)
                out, broken = [], False
                while b is not None and len(out) < 10:
                    v, bad = self._value(b)
                    broken |= bad
                    out.append(v)
                    with self._lock:
                        self.fetched[b["height"]] += 1
                    b = ch.by_hash.get(b["prev"]) if b["prev"] else None
                body = json.dumps(out).encode()
                return 200, (body[: len(body) // 2] if broken else body), "application/json"
        return text(f"endpoint does not exist {path!r}", 404)
