"""Bitcoin Core JSON-RPC client for block headers: getblockhash, getblockheader, getblockstats, in batches.

Calls (Bitcoin Core `src/rpc/blockchain.cpp`; `src/httprpc.cpp` for batches and auth):

* `getblockhash height` -> hash of the block at that height on the best chain (error -8
  "Block height out of range" past the tip);
* `getblockheader hash true` -> {hash, height, time, mediantime, bits, difficulty, nTx (0 when
  the node has the header only), previousblockhash (absent for genesis), ...};
* `getblockstats hash ["blockhash", "height", "subsidy", "totalfee", "txs"]` -> those stats;
  it needs the block's undo data: on a pruned node it fails (-1 "... not available (pruned
  data)") and the fees stay unknown (-1), the header is still used. Its `total_size` and
  `total_weight` count non-coinbase transactions only, so the block's size and weight are not
  taken from Core (-1); Esplora has them.
* `getblockcount`, `getbestblockhash` for the tip.

A batch is one HTTP POST of a JSON array; the node answers HTTP 200 with an array of
{result, error, id}. Wrong credentials: HTTP 401 -> `AuthError`. Every reply is checked
(types, the hash asked for, the height, the previous hash, the subsidy against the consensus
rule); anything else is a `SourceError` naming the height.
"""
from __future__ import annotations

import json
import math

import numpy as np

from gpu_engine.data.blocks import headers as H
from gpu_engine.data.blocks.remote import (HttpClient, SourceError, check_genesis, core_credentials, is_hash,
                                           split_url)

STATS = ["blockhash", "height", "subsidy", "totalfee", "txs"]
MAX_TIME = 2**32 - 1
GENESIS_TIME = 1231006505


class BatchMalformed(SourceError):
    """A whole batch reply is unusable (not JSON, not an array): `fetch` splits the batch to find the height."""


class RpcError(Exception):
    """A JSON-RPC error object in a reply (code, message)."""

    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class CoreRPC:
    """A Bitcoin Core node over JSON-RPC. `fetch(heights)` -> header rows (`headers.HEADER_DTYPE`)."""

    kind = "core-rpc"

    def __init__(self, url: str, cookie=None, *, concurrency: int = 4, timeout: float = 60.0, retries: int = 4,
                 env=None, transport=None):
        clean, user, pw = split_url(url)
        creds = core_credentials(user, pw, cookie, env)
        self.http = HttpClient(clean, creds, what="Bitcoin Core JSON-RPC", timeout=timeout, retries=retries,
                               concurrency=concurrency, transport=transport)
        self.label = self.http.label
        self._next_id = 0

    def close(self) -> None:
        self.http.close()

    @property
    def stop(self):
        return self.http.stop

    # -- the wire
    def batch(self, calls, heights=None) -> list:
        """Results of [(method, params), ...] in order; an error element becomes an `RpcError` in the list.

        `heights` (one per call, or None) name the height in error messages.
        """
        if not calls:
            return []
        first = self._next_id
        self._next_id += len(calls)
        body = [{"jsonrpc": "1.0", "id": first + i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        where = _span(heights)
        reply = self.http.request("POST", "", json=body, height=None, expect=f"a JSON-RPC reply{where}")
        try:
            doc = json.loads(reply.content)
        except ValueError:
            raise self._malformed(heights, None, "the reply is not JSON") from None
        if not isinstance(doc, list):
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                raise self.http.error(f"the node refused the batch{where}: {_err_text(doc['error'])}")
            raise self._malformed(heights, None, "the reply to a batch is not a JSON array")
        by_id = {}
        for item in doc:
            if not isinstance(item, dict) or "id" not in item:
                raise self._malformed(heights, None, "a batch reply element is not an object with an id")
            by_id[item["id"]] = item
        out = []
        for i, (method, _) in enumerate(calls):
            item = by_id.get(first + i)
            h = heights[i] if heights is not None else None
            if item is None:
                raise self._malformed(heights, h, f"no reply to {method}")
            err = item.get("error")
            if err is not None:
                if not isinstance(err, dict):
                    raise self._malformed(heights, h, f"{method}: the error is not an object")
                out.append(RpcError(err.get("code"), str(err.get("message", ""))))
            elif "result" not in item:
                raise self._malformed(heights, h, f"{method}: the reply has neither result nor error")
            else:
                out.append(item["result"])
        return out

    def _malformed(self, heights, h, problem: str) -> SourceError:
        if h is None and heights:
            lo, hi = min(heights), max(heights)
            where = f"heights {lo}..{hi}: " if lo != hi else f"height {lo}: "
            return BatchMalformed(f"{self.label}: {where}malformed reply: {problem}")
        return self.http.error(f"malformed reply: {problem}", h)

    def _one(self, method, params, height=None):
        res = self.batch([(method, params)], None if height is None else [height])[0]
        if isinstance(res, RpcError):
            raise self.http.error(f"{method} failed: {res}", height)
        return res

    # -- what the driver asks
    def genesis_hash(self) -> str:
        h = self._one("getblockhash", [0], 0)
        if not is_hash(h):
            raise self.http.error(f"malformed reply: getblockhash 0 returned {_short(h)}", 0)
        return h

    def check_chain(self) -> str:
        h = self.genesis_hash()
        check_genesis(h, self.label)
        return h

    def tip(self) -> tuple[int, str]:
        count, best = self.batch([("getblockcount", []), ("getbestblockhash", [])])
        for r in (count, best):
            if isinstance(r, RpcError):
                raise self.http.error(f"cannot read the tip: {r}")
        if not _is_int(count) or count < 0 or not is_hash(best):
            raise self.http.error(f"malformed reply: tip {_short(count)} / {_short(best)}")
        return int(count), best

    def hashes(self, heights) -> list[str | None]:
        """Current best-chain hash at each height (None past the tip)."""
        heights = [int(h) for h in heights]
        res = self.batch([("getblockhash", [h]) for h in heights], heights)
        out = []
        for h, r in zip(heights, res):
            if isinstance(r, RpcError):
                if r.code == -8:
                    out.append(None)
                    continue
                raise self.http.error(f"getblockhash failed: {r}", h)
            if not is_hash(r):
                raise self.http.error(f"malformed reply: getblockhash returned {_short(r)}", h)
            out.append(r)
        return out

    def fetch(self, heights) -> np.ndarray:
        """Header rows for `heights` (in that order), two batches: hashes, then headers + stats.

        A batch whose whole reply is unusable is split in halves (and so on) until the error
        names the one height whose reply breaks it."""
        heights = [int(h) for h in heights]
        try:
            return self._fetch(heights)
        except BatchMalformed:
            if len(set(heights)) <= 1:
                raise
        mid = len(heights) // 2
        return np.concatenate([self.fetch(heights[:mid]), self.fetch(heights[mid:])])

    def _fetch(self, heights) -> np.ndarray:
        from gpu_engine.data.blocks.dataset import subsidy_sat

        hashes = self.batch([("getblockhash", [h]) for h in heights], heights)
        for h, r in zip(heights, hashes):
            if isinstance(r, RpcError):
                if r.code == -8:
                    raise self.http.error(f"the node has no block at this height ({r.message})", h)
                raise self.http.error(f"getblockhash failed: {r}", h)
            if not is_hash(r):
                raise self.http.error(f"malformed reply: getblockhash returned {_short(r)}", h)
        calls, hs = [], []
        for h, bh in zip(heights, hashes):
            calls += [("getblockheader", [bh, True]), ("getblockstats", [bh, STATS])]
            hs += [h, h]
        res = self.batch(calls, hs)
        records = []
        for k, (h, bh) in enumerate(zip(heights, hashes)):
            hdr, st = res[2 * k], res[2 * k + 1]
            if isinstance(hdr, RpcError):
                raise self.http.error(f"getblockheader failed: {hdr}", h)
            rec = self._header(h, bh, hdr)
            if isinstance(st, RpcError):
                if st.code != -1:  # -1: undo data not available (pruned): fees unknown
                    raise self.http.error(f"getblockstats failed: {st}", h)
            else:
                bad = lambda what: self.http.error(f"malformed reply: getblockstats {what}", h)  # noqa: E731
                if not isinstance(st, dict):
                    raise bad("is not an object")
                if st.get("blockhash") != bh or st.get("height") != h:
                    raise bad(f"is for block {_short(st.get('blockhash'))} at height {_short(st.get('height'))}")
                fee, txs, sub = st.get("totalfee"), st.get("txs"), st.get("subsidy")
                if not _is_int(fee) or fee < 0:
                    raise bad(f"field 'totalfee' is {_short(fee)}, not a count of satoshi")
                if not _is_int(txs) or (rec["tx_count"] is not None and txs != rec["tx_count"]):
                    raise bad(f"field 'txs' is {_short(txs)}, the header says nTx {rec['tx_count']}")
                if not _is_int(sub) or sub != int(subsidy_sat(h)):
                    raise bad(f"field 'subsidy' is {_short(sub)}, the consensus rule gives {int(subsidy_sat(h))} "
                              "(not Bitcoin mainnet?)")
                rec["fees_sat"] = int(fee)
                rec["tx_count"] = int(txs)
            records.append(rec)
        return H.make_rows(records)

    def _header(self, h: int, bh: str, hdr) -> dict:
        bad = lambda what: self.http.error(f"malformed reply: getblockheader {what}", h)  # noqa: E731
        if not isinstance(hdr, dict):
            raise bad("is not an object")
        if hdr.get("hash") != bh:
            raise bad(f"is for block {_short(hdr.get('hash'))}, asked for {bh}")
        if hdr.get("height") != h:
            raise bad(f"field 'height' is {_short(hdr.get('height'))}")
        t = hdr.get("time")
        if not _is_int(t) or not GENESIS_TIME <= t <= MAX_TIME:
            raise bad(f"field 'time' is {_short(t)}, not a unix time")
        mt = hdr.get("mediantime")
        if mt is not None and (not _is_int(mt) or not GENESIS_TIME <= mt <= MAX_TIME):
            raise bad(f"field 'mediantime' is {_short(mt)}, not a unix time")
        d = hdr.get("difficulty")
        if d is not None and (not _is_num(d) or not d > 0):
            raise bad(f"field 'difficulty' is {_short(d)}")
        n = hdr.get("nTx")  # 0 for a block whose data the node does not have (headers only)
        if not _is_int(n) or n < 0:
            raise bad(f"field 'nTx' is {_short(n)}")
        prev = hdr.get("previousblockhash")
        if h == 0:
            if prev is not None:
                raise bad("the genesis block has a previousblockhash")
        elif not is_hash(prev):
            raise bad(f"field 'previousblockhash' is {_short(prev)}")
        return {"height": h, "hash": bh, "prev_hash": prev, "time": t, "median_time": mt,
                "difficulty": None if d is None else float(d), "tx_count": n if n > 0 else None}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v, n: int = 70) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


def _span(heights) -> str:
    if not heights:
        return ""
    lo, hi = min(heights), max(heights)
    return f" (heights {lo}..{hi})" if lo != hi else f" (height {lo})"


def _err_text(err: dict) -> str:
    return f"{err.get('message', '')} (code {err.get('code')})"
