"""Row windows of a data set of book stores, read from disk without loading the whole set.

    rows = StoreRows(paths)            # one store or several (collection.check: order, one market)
    rows.T                             # committed rows of the whole data set
    book = rows.read(g0, g1)           # Book of global rows [g0, g1) with the trades of those rows
    ts = rows.read_ts(g0, g1)          # their timestamps only

Global row g is row g - start(k) of the k-th store in time order. The trades of a window are
those the rules assign to its rows: a trade goes to the first row whose ts is >= its publish
time, so the window [g0, g1) holds the trades with ts[g0 - 1] < trade ts <= ts[g1 - 1] (the first
window of the set also holds those published before its first row; trades after the last row of
the set belong to no row and are never read). The trades are read from whichever stores hold
that time span, so a trade published in the silence between two stores goes to the next
store's first row, as when the set is loaded whole (collection.load_many).

Each read touches only the zarr chunks that overlap the window: memory is the window's, not
the data set's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_engine.errors import InputError

BOOK_FIELDS = ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz")
TRADE_FIELDS = ("ts", "px", "qty", "side")
TRADE_BLOCK = 65_536  # timestamps read at once when locating a window's trades


@dataclass
class _Part:
    path: Path
    group: object
    start: int      # global row of this store's first row
    rows: int       # committed rows
    trade_rows: int  # committed trades (0: none)
    first_ns: int
    last_ns: int


class StoreRows:
    """Global row windows of one store or a data set of stores (see the module doc)."""

    def __init__(self, paths, flag: str = "--data"):
        from gpu_engine.data.books import collection
        from gpu_engine.data.books.store import _open_group, check_schema

        paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
        if len(paths) > 1:
            infos, gaps = collection.check(paths, flag)
        else:
            infos, gaps = [collection._info(paths[0], flag)], []
        self.gaps = gaps
        self.parts: list[_Part] = []
        start = 0
        for info in infos:
            g = _open_group(info.path)
            attrs = dict(g.attrs)
            check_schema(info.path, attrs, has_trades="trades" in g)
            m = 0
            if "trades" in g:
                m = attrs.get("trade_rows")
                m = g["trades"]["ts"].shape[0] if m is None else min(int(m), g["trades"]["ts"].shape[0])
            self.parts.append(_Part(info.path, g, start, info.rows, int(m), info.first_ns, info.last_ns))
            start += info.rows
        self.T = start
        self.attrs = dict(infos[0].attrs) if infos else {}
        if len(infos) > 1:
            self.attrs["stores"] = [{"path": str(i.path), "rows": i.rows, "first": collection._iso(i.first_ns),
                                     "last": collection._iso(i.last_ns)} for i in infos]
            self.attrs["store_gaps"] = gaps
        self.attrs["rows"] = self.T
        self.has_trades = any(p.trade_rows > 0 for p in self.parts)
        self.depth = int(self.parts[0].group["bid_px"].shape[1]) if self.parts else 0

    def _pieces(self, g0: int, g1: int):
        for p in self.parts:
            lo, hi = max(g0, p.start), min(g1, p.start + p.rows)
            if lo < hi:
                yield p, lo - p.start, hi - p.start

    def read_ts(self, g0: int, g1: int) -> np.ndarray:
        """int64 timestamps of global rows [g0, g1)."""
        self._check(g0, g1)
        parts = [np.asarray(p.group["ts"][a:b], dtype=np.int64) for p, a, b in self._pieces(g0, g1)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def read(self, g0: int, g1: int, trades: bool = True, since_ns: int | None = None):
        """The Book of global rows [g0, g1) with its trades (module doc); attrs are the set's.
        `since_ns`: take the trades published at or after this time instead of after row g0 - 1
        (the first window of a part of the data set: validation.slice_book keeps those)."""
        from gpu_engine.data.books.store import Book, Trades

        self._check(g0, g1)
        cols = {name: [] for name in BOOK_FIELDS}
        for p, a, b in self._pieces(g0, g1):
            for name in BOOK_FIELDS:
                cols[name].append(np.asarray(p.group[name][a:b]))
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
        tr = None
        if trades and self.has_trades and g1 > g0:
            if since_ns is not None:
                lo_ns = int(since_ns) - 1
            else:
                lo_ns = None if g0 == 0 else int(self.read_ts(g0 - 1, g0)[0])
            hi_ns = int(arrays["ts"][-1])
            tr = self.read_trades(lo_ns, hi_ns)
            tr = Trades(**tr)
        return Book(**arrays, trades=tr, attrs=self.attrs)

    def read_trades(self, after_ns: int | None, upto_ns: int) -> dict:
        """The trades with after_ns < ts <= upto_ns (after_ns None: no lower bound), in time
        order across the stores: dict of ts, px, qty, side, match_ts."""
        out = {name: [] for name in TRADE_FIELDS + ("match_ts",)}
        for p in self.parts:
            if p.trade_rows == 0:
                continue
            tg = p.group["trades"]
            lo = 0 if after_ns is None else self._count_upto(p, after_ns)
            hi = self._count_upto(p, upto_ns)
            if lo >= hi:
                continue
            for name in TRADE_FIELDS:
                out[name].append(np.asarray(tg[name][lo:hi]))
            out["match_ts"].append(np.asarray(tg["match_ts"][lo:hi]) if "match_ts" in tg
                                   else np.full(hi - lo, -1, np.int64))
        dtypes = {"ts": np.int64, "px": np.float64, "qty": np.float64, "side": np.int8, "match_ts": np.int64}
        return {k: (np.concatenate(v) if v else np.zeros(0, dtypes[k])).astype(dtypes[k], copy=False)
                for k, v in out.items()}

    def count_before(self, value: int) -> int:
        """How many rows of the data set have ts < value (the stores are in time order)."""
        n = 0
        for p in self.parts:
            if p.rows == 0 or value <= p.first_ns:
                break
            if value > p.last_ns:
                n += p.rows
                continue
            return n + _search(p.group["ts"], p.rows, value, side="left")
        return n

    def _count_upto(self, p: _Part, value: int) -> int:
        """How many of store p's trades have ts <= value: a binary search over the stored
        timestamps reading one block of TRADE_BLOCK values per step until the range fits in
        one block (windows read in order touch each block about once; nothing of size T is
        kept)."""
        return _search(p.group["trades"]["ts"], p.trade_rows, value, side="right")

    def _check(self, g0: int, g1: int) -> None:
        if not (0 <= g0 <= g1 <= self.T):
            raise InputError(f"rows [{g0}, {g1}) outside the data set's {self.T:,} rows")


def _search(arr, n: int, value: int, side: str) -> int:
    """np.searchsorted(arr[:n], value, side) on a stored (zarr) array of non-decreasing int64,
    reading one value per bisection step until the range fits in TRADE_BLOCK values, then that
    block: nothing of the array's size is read or kept."""
    lo, hi = 0, n  # the answer lies in [lo, hi]
    while hi - lo > TRADE_BLOCK:
        mid = (lo + hi) // 2
        x = int(arr[mid])
        if x < value or (side == "right" and x == value):
            lo = mid + 1
        else:
            hi = mid
    block = np.asarray(arr[lo:hi], dtype=np.int64)
    return lo + int(np.searchsorted(block, np.int64(value), side=side))
