"""Esplora HTTP API client for block headers (Blockstream's esplora/electrs, mempool.space-compatible).

Endpoints (Blockstream/esplora `API.md`; field list from electrs `src/rest.rs` `BlockValue`):

* `GET /block-height/:height` -> the hash (text) of the block at that height (404 past the tip);
* `GET /blocks/:start_height` -> JSON array of up to 10 blocks, `start_height` first, then
  walking back by `previousblockhash`; each {id, height, version, timestamp, tx_count, size,
  weight, merkle_root, previousblockhash (absent for genesis), mediantime, nonce, bits,
  difficulty} (older servers lack `mediantime` and `difficulty`: the difficulty is then
  computed from `bits` as Bitcoin Core does, the median time stays unknown);
* `GET /blocks/tip/height`, `GET /blocks/tip/hash`.

Esplora has no per-block fee total, so `fees_sat` is -1 from this source. A range of heights
costs one request per 10 blocks. `user:password@` in the URL is sent as basic auth (for a
server behind an authenticating proxy); 401/403 -> `AuthError`.
"""
from __future__ import annotations

import json
import math

import numpy as np

from gpu_engine.data.blocks import headers as H
from gpu_engine.data.blocks.remote import Credentials, HttpClient, check_genesis, is_hash, split_url
from gpu_engine.data.blocks.rpc import GENESIS_TIME, MAX_TIME, _is_int, _is_num, _short

PAGE = 10  # blocks per /blocks/:start_height reply


def difficulty_from_bits(bits: int) -> float:
    """Bitcoin Core's GetDifficulty: 0xffff / mantissa, scaled by 256 per exponent step from 29."""
    shift = (bits >> 24) & 0xFF
    mant = bits & 0x00FFFFFF
    if mant == 0:
        return math.nan
    d = 0x0000FFFF / mant
    while shift < 29:
        d *= 256.0
        shift += 1
    while shift > 29:
        d /= 256.0
        shift -= 1
    return d


class Esplora:
    """An Esplora server. `fetch(heights)` -> header rows (`headers.HEADER_DTYPE`)."""

    kind = "esplora"

    def __init__(self, url: str, *, concurrency: int = 4, timeout: float = 60.0, retries: int = 4, transport=None):
        clean, user, pw = split_url(url)
        creds = Credentials(user or "", pw or "", "the URL") if (user is not None or pw is not None) else None
        self.http = HttpClient(clean.rstrip("/"), creds, what="Esplora", timeout=timeout, retries=retries,
                               concurrency=concurrency, transport=transport)
        self.label = self.http.label

    def close(self) -> None:
        self.http.close()

    @property
    def stop(self):
        return self.http.stop

    def _get(self, path: str, height=None, what=None):
        """(status, body text) for 200 and 404; anything else raises."""
        r = self.http.request("GET", path, height=height, ok_statuses=(200, 404), expect=what or f"GET {path}")
        return r.status_code, r.text

    def block_hash(self, height: int) -> str | None:
        code, text = self._get(f"/block-height/{int(height)}", height, "the block hash")
        if code == 404:
            return None
        text = text.strip()
        if not is_hash(text):
            raise self.http.error(f"malformed reply: /block-height returned {_short(text)}", height)
        return text

    def genesis_hash(self) -> str:
        h = self.block_hash(0)
        if h is None:
            raise self.http.error("the server has no block at height 0 (HTTP 404)", 0)
        return h

    def check_chain(self) -> str:
        h = self.genesis_hash()
        check_genesis(h, self.label)
        return h

    def tip(self) -> tuple[int, str]:
        code, text = self._get("/blocks/tip/height", None, "the tip height")
        try:
            height = int(text.strip())
        except ValueError:
            height = -1
        if code != 200 or height < 0:
            raise self.http.error(f"malformed reply: /blocks/tip/height returned {_short(text.strip())}")
        code, text = self._get("/blocks/tip/hash", None, "the tip hash")
        if code != 200 or not is_hash(text.strip()):
            raise self.http.error(f"malformed reply: /blocks/tip/hash returned {_short(text.strip())}")
        return height, text.strip()

    def hashes(self, heights) -> list[str | None]:
        return [self.block_hash(h) for h in heights]

    def fetch(self, heights) -> np.ndarray:
        """Header rows for `heights` (in that order): one /blocks/:top request per 10 heights of a run."""
        heights = [int(h) for h in heights]
        want = set(heights)
        got: dict[int, dict] = {}
        for a, b in H.runs(sorted(want)):
            top = b
            while top >= a:
                page = self._page(top)
                for rec in page:
                    if rec["height"] in want:
                        got[rec["height"]] = rec
                top -= PAGE
        for h in heights:
            if h not in got:  # a page that stopped short: ask for the block alone (a 404 names it)
                got[h] = self.single(h)
        return H.make_rows([got[h] for h in heights])

    def _page(self, top: int) -> list[dict]:
        code, text = self._get(f"/blocks/{top}", top, "a page of blocks")
        if code == 404:
            raise self.http.error("the server has no block at this height (HTTP 404)", top)
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, list) or not doc:
            # find the block that breaks the page: ask for each one alone (errors name its height)
            for h in range(top, max(top - PAGE, -1), -1):
                self.single(h)
            raise self.http.error(f"malformed reply: /blocks/{top} is not a non-empty JSON array", top)
        out = []
        for k, blk in enumerate(doc[:PAGE]):
            h = top - k
            if h < 0:
                break
            rec = self._block(h, blk)
            if out and out[-1]["prev_hash"] != rec["hash"]:
                raise self.http.error(f"malformed reply: block {h + 1}'s previousblockhash is not "
                                      f"block {h}'s id", h + 1)
            out.append(rec)
        return out

    def single(self, h: int) -> dict:
        """One block by /block-height/:height then /block/:hash (checked like a page's)."""
        bh = self.block_hash(h)
        if bh is None:
            raise self.http.error("the server has no block at this height (HTTP 404)", h)
        code, text = self._get(f"/block/{bh}", h, "a block")
        if code == 404:
            raise self.http.error(f"the server has no block {bh} (HTTP 404)", h)
        try:
            doc = json.loads(text)
        except ValueError:
            raise self.http.error("malformed reply: /block is not JSON", h) from None
        rec = self._block(h, doc)
        if rec["hash"] != bh:
            raise self.http.error(f"malformed reply: /block/{bh} is block {rec['hash']}", h)
        return rec

    def _block(self, h: int, blk) -> dict:
        bad = lambda what: self.http.error(f"malformed reply: /blocks {what}", h)  # noqa: E731
        if not isinstance(blk, dict):
            raise bad("element is not an object")
        if blk.get("height") != h:
            raise bad(f"field 'height' is {_short(blk.get('height'))}, expected {h}")
        bid = blk.get("id")
        if not is_hash(bid):
            raise bad(f"field 'id' is {_short(bid)}")
        t = blk.get("timestamp")
        if not _is_int(t) or not GENESIS_TIME <= t <= MAX_TIME:
            raise bad(f"field 'timestamp' is {_short(t)}, not a unix time")
        mt = blk.get("mediantime")
        if mt is not None and (not _is_int(mt) or not GENESIS_TIME <= mt <= MAX_TIME):
            raise bad(f"field 'mediantime' is {_short(mt)}, not a unix time")
        prev = blk.get("previousblockhash")
        if h == 0:
            if prev is not None:
                raise bad("the genesis block has a previousblockhash")
        elif not is_hash(prev):
            raise bad(f"field 'previousblockhash' is {_short(prev)}")
        ints = {}
        for name in ("tx_count", "size", "weight"):
            v = blk.get(name)
            if v is not None and (not _is_int(v) or v < (1 if name == "tx_count" else 80) or v > 2**31 - 1):
                raise bad(f"field {name!r} is {_short(v)}")
            ints[name] = v
        d = blk.get("difficulty")
        if d is not None:
            if not _is_num(d) or not d > 0:
                raise bad(f"field 'difficulty' is {_short(d)}")
            d = float(d)
        elif blk.get("bits") is not None:
            bits = blk["bits"]
            if not _is_int(bits) or not 0 < bits < 2**32:
                raise bad(f"field 'bits' is {_short(bits)}")
            d = difficulty_from_bits(bits)
        return {"height": h, "hash": bid, "prev_hash": prev, "time": t, "median_time": mt, "difficulty": d,
                "tx_count": ints["tx_count"], "size_bytes": ints["size"], "weight_wu": ints["weight"]}
