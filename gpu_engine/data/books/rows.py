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
the data set's. `read(..., out=WindowBuffer(rows, n))` reads into arrays allocated once and
reused for every window (the Book it returns holds views of them, valid until the buffer's next
read), through the buffer's ChunkReader (chunks.py: each chunk decoded into one reused buffer in
the calling thread): a stream of windows then allocates no window- or chunk-sized arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_engine.data.books.chunks import ChunkReader, Source
from gpu_engine.errors import InputError

BOOK_FIELDS = ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz")
TRADE_FIELDS = ("ts", "px", "qty", "side")
TRADE_BLOCK = 65_536  # timestamps read at once when locating a window's trades
TRADE_DTYPES = {"ts": np.int64, "px": np.float64, "qty": np.float64, "side": np.int8, "match_ts": np.int64}


@dataclass
class _Part:
    path: Path
    group: object
    start: int      # global row of this store's first row
    rows: int       # committed rows
    trade_rows: int  # committed trades (0: none)
    first_ns: int
    last_ns: int
    book: dict      # BOOK_FIELDS -> chunks.Source
    trades: dict    # TRADE_FIELDS (+ match_ts when stored) -> chunks.Source; empty without trades


class WindowBuffer:
    """Arrays that windows of up to `rows` rows of a StoreRows are read into (`read(out=...)`),
    allocated once: the book fields at the stores' dtypes, and the trades, grown to the most
    trades one window has held (by half again each time, so a run grows them a few times).
    `chunks`: the ChunkReader it reads through (one may serve several buffers used by one
    thread at a time)."""

    def __init__(self, store_rows: "StoreRows", rows: int, chunks: ChunkReader | None = None):
        self.rows = max(1, int(rows))
        self.chunks = ChunkReader() if chunks is None else chunks
        self.book = {}
        for name in BOOK_FIELDS:
            src = store_rows.parts[0].book[name] if store_rows.parts else None
            shape = (self.rows,) + (tuple(src.shape[1:]) if src is not None else ())
            dtype = src.dtype if src is not None else np.float64
            self.book[name] = np.empty(shape, dtype=dtype)
        self._trades = {k: np.empty(0, dt) for k, dt in TRADE_DTYPES.items()}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.book.values()) + sum(int(a.nbytes) for a in self._trades.values())

    def book_views(self, n: int) -> dict:
        """The book fields' first `n` rows (n <= self.rows)."""
        if n > self.rows:
            raise ValueError(f"a window of {n:,} rows does not fit a buffer of {self.rows:,}")
        return {k: a[:n] for k, a in self.book.items()}

    def trade_views(self, m: int) -> dict:
        """The trade fields' first `m` entries, growing the arrays when they hold fewer."""
        cap = self._trades["ts"].shape[0]
        if m > cap:
            cap = max(m, cap + cap // 2)
            self._trades = {k: np.empty(cap, dt) for k, dt in TRADE_DTYPES.items()}
        return {k: a[:m] for k, a in self._trades.items()}


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
            trades = {}
            if "trades" in g:
                tg = g["trades"]
                trades = {name: Source(tg[name]) for name in TRADE_FIELDS + ("match_ts",) if name in tg}
                m = attrs.get("trade_rows")
                m = trades["ts"].shape[0] if m is None else min(int(m), trades["ts"].shape[0])
            book = {name: Source(g[name]) for name in BOOK_FIELDS}
            self.parts.append(_Part(info.path, g, start, info.rows, int(m), info.first_ns, info.last_ns,
                                    book, trades))
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

    def read(self, g0: int, g1: int, trades: bool = True, since_ns: int | None = None,
             out: WindowBuffer | None = None):
        """The Book of global rows [g0, g1) with its trades (module doc); attrs are the set's.
        `since_ns`: take the trades published at or after this time instead of after row g0 - 1
        (the first window of a part of the data set: validation.slice_book keeps those).
        `out`: read into that buffer (the Book's arrays are views of it; module doc)."""
        from gpu_engine.data.books.store import Book, Trades

        self._check(g0, g1)
        if out is not None:
            arrays = out.book_views(g1 - g0)
            for p, a, b in self._pieces(g0, g1):
                at = p.start + a - g0
                for name in BOOK_FIELDS:
                    out.chunks.read(p.book[name], a, b, arrays[name][at:at + b - a])
        else:
            cols = {name: [] for name in BOOK_FIELDS}
            for p, a, b in self._pieces(g0, g1):
                for name in BOOK_FIELDS:
                    cols[name].append(np.asarray(p.group[name][a:b]))
            arrays = {k: np.concatenate(v) for k, v in cols.items()}
        tr = None
        if trades and self.has_trades and g1 > g0:
            if since_ns is not None:
                lo_ns = int(since_ns) - 1
            elif g0 == 0:
                lo_ns = None
            elif out is not None:
                (p, a, _), = self._pieces(g0 - 1, g0)
                lo_ns = int(out.chunks.values(p.book["ts"], a, a + 1)[0])
            else:
                lo_ns = int(self.read_ts(g0 - 1, g0)[0])
            hi_ns = int(arrays["ts"][-1])
            tr = Trades(**self.read_trades(lo_ns, hi_ns, out=out))
        return Book(**arrays, trades=tr, attrs=self.attrs)

    def read_trades(self, after_ns: int | None, upto_ns: int, out: WindowBuffer | None = None) -> dict:
        """The trades with after_ns < ts <= upto_ns (after_ns None: no lower bound), in time
        order across the stores: dict of ts, px, qty, side, match_ts (`out`: views of that
        buffer's trade arrays, read into them)."""
        chunks = out.chunks if out is not None else None
        spans = []
        for p in self.parts:
            if p.trade_rows == 0:
                continue
            lo = 0 if after_ns is None else self._count_upto(p, after_ns, chunks)
            hi = self._count_upto(p, upto_ns, chunks)
            if lo < hi:
                spans.append((p, lo, hi))
        if out is not None:
            cols = out.trade_views(sum(hi - lo for _, lo, hi in spans))
            at = 0
            for p, lo, hi in spans:
                for name in TRADE_DTYPES:
                    if name in p.trades:
                        chunks.read(p.trades[name], lo, hi, cols[name][at:at + hi - lo])
                    else:  # no matching times stored
                        cols[name][at:at + hi - lo] = -1
                at += hi - lo
            return cols
        parts = {name: [] for name in TRADE_DTYPES}
        for p, lo, hi in spans:
            tg = p.group["trades"]
            for name in TRADE_FIELDS:
                parts[name].append(np.asarray(tg[name][lo:hi]))
            parts["match_ts"].append(np.asarray(tg["match_ts"][lo:hi]) if "match_ts" in tg
                                     else np.full(hi - lo, -1, np.int64))
        return {k: (np.concatenate(v) if v else np.zeros(0, TRADE_DTYPES[k])).astype(TRADE_DTYPES[k], copy=False)
                for k, v in parts.items()}

    def count_before(self, value: int) -> int:
        """How many rows of the data set have ts < value (the stores are in time order)."""
        n = 0
        for p in self.parts:
            if p.rows == 0 or value <= p.first_ns:
                break
            if value > p.last_ns:
                n += p.rows
                continue
            return n + _search(_zarr_values(p.book["ts"]), p.rows, value, side="left")
        return n

    def _count_upto(self, p: _Part, value: int, chunks: ChunkReader | None = None) -> int:
        """How many of store p's trades have ts <= value: a binary search over the stored
        timestamps reading one value per step until the range fits in one block of
        TRADE_BLOCK values, then that block (nothing of size T is kept), through `chunks`
        when given."""
        src = p.trades["ts"]
        read = _zarr_values(src) if chunks is None else (lambda a, b: chunks.values(src, a, b))
        return _search(read, p.trade_rows, value, side="right")

    def _check(self, g0: int, g1: int) -> None:
        if not (0 <= g0 <= g1 <= self.T):
            raise InputError(f"rows [{g0}, {g1}) outside the data set's {self.T:,} rows")


def _zarr_values(src: Source):
    """read(a, b) -> int64 values [a, b) of a stored array, read by zarr."""
    return lambda a, b: np.asarray(src.arr[a:b], dtype=np.int64)


def _search(read, n: int, value: int, side: str) -> int:
    """np.searchsorted(values[:n], value, side) over stored non-decreasing int64 values that
    read(a, b) returns [a, b) of, reading one value per bisection step until the range fits in
    TRADE_BLOCK values, then that block: nothing of the array's size is read or kept."""
    lo, hi = 0, n  # the answer lies in [lo, hi]
    while hi - lo > TRADE_BLOCK:
        mid = (lo + hi) // 2
        x = int(read(mid, mid + 1)[0])
        if x < value or (side == "right" and x == value):
            lo = mid + 1
        else:
            hi = mid
    block = read(lo, hi)
    return lo + int(np.searchsorted(block, np.int64(value), side=side))
