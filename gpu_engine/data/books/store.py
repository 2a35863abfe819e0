"""Canonical L2 book store (Zarr) and the in-memory `Book` it loads into.

`Book` is the contract every consumer reads (features, kernels, oracle, sweeps):
  ts      int64   [T]     exchange event time, ns, non-decreasing
  seq     int64   [T]     exchange update id after the row, -1 where the feed has none
  bid_px  float64 [T, L]  level 0 best; absent level -> NaN price, size 0
  ask_px  float64 [T, L]
  bid_sz  float32 [T, L]
  ask_sz  float32 [T, L]
  trades  Trades | None   ts int64 ns, px float64, qty float64, side int8 (+1 buy aggressor, -1 sell)
  attrs   dict            exchange, symbol, depth, tick_size, lot_size, source, schema_version, gaps, ...

This module owns the on-disk store too:

* Format: a plain Zarr **v3** group (zarr-python 3 API, no consolidated metadata:
  the store is opened with `use_consolidated=False`, so no `.zmetadata` file can go
  stale). Arrays `ts`, `seq` [T] and `bid_px`, `ask_px`, `bid_sz`, `ask_sz` [T, L],
  chunked along T only (`chunk_rows` rows a chunk, the whole depth in a chunk; a
  store completed with fewer rows than that gets one chunk of about its size),
  Blosc zstd with byte shuffle. Optional sub-group `trades/` with `ts` int64,
  `px` float64, `qty` float64, `side` int8.
* Attrs (group `zarr.json`): exchange, symbol, depth, tick_size, lot_size,
  source (list of {file, bytes, sha256}), schema_version, gaps (list of
  {time, reason, ...}), `rows` and `trade_rows` (the committed row counts),
  `complete` (True once closed), plus whatever the writer was given.
* `BookStoreWriter` buffers at most `chunk_rows` rows (book and trades each) in
  preallocated arrays and flushes whole chunks, so memory is bounded whatever
  the length of the input. By default it writes to `.<name>.tmp-<pid>` beside `path`
  (`gpu_engine.outputs.tmp_sibling`) and moves it to `path` on `close()`
  (`outputs.replace_with`); on an exception or `abort()` the temp is deleted, so a
  half-written store never exists under `path`.
  `incremental=True` (the live recorder) writes at `path` directly and, after
  every flush, records the committed row counts in the attrs (each Zarr file is
  written atomically by zarr's LocalStore). A reader after a `kill -9` therefore
  sees every flushed row: `load` trusts only the committed counts, never the
  array shapes, which may run ahead of them.
* `load(path, start, end, to_device)` reads a time window [start, end) (ns) into a
  `Book`. This package does not import the engine (no kernels, backend or sweep): to put
  the arrays on a device, pass `to_device` (e.g. `gpu_engine.backend`'s array
  converter); it is applied to every array and defaults to the identity (host
  numpy arrays).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gpu_engine import outputs
from gpu_engine.errors import InputError

# Schema 2: a trade's `ts` is the time it became public (Binance: the event time `E`), its
# matching time is kept as `match_ts` (-1 where the feed gives one time only). Schema 1 stored
# the matching time in `ts`: a schema-1 store of a feed with both times is refused on load
# (OUTDATED_FORMATS), since its trades could be used before they were published.
SCHEMA_VERSION = 2
OUTDATED_FORMATS = {"binance-jsonl": "binance", "bybit": "bybit"}  # --format -> record --exchange
DEFAULT_CHUNK_ROWS = 65536
BOOK_ARRAYS = ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz")
TRADE_ARRAYS = ("ts", "px", "qty", "side")


@dataclass
class Trades:
    ts: np.ndarray        # publish time, ns (every feature and fill uses this one)
    px: np.ndarray
    qty: np.ndarray
    side: np.ndarray
    match_ts: np.ndarray | None = None   # matching time, ns; -1 / None where unknown

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass
class Book:
    ts: np.ndarray
    seq: np.ndarray
    bid_px: np.ndarray
    ask_px: np.ndarray
    bid_sz: np.ndarray
    ask_sz: np.ndarray
    trades: Trades | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def T(self) -> int:
        return int(self.ts.shape[0])

    @property
    def depth(self) -> int:
        return int(self.bid_px.shape[1])

    @classmethod
    def from_arrays(cls, ts, bid_px, ask_px, bid_sz, ask_sz, seq=None, trades=None, attrs=None) -> "Book":
        """Build a Book from array-likes with the canonical dtypes (used by tests and synth)."""
        bid_px = np.atleast_2d(np.asarray(bid_px, dtype=np.float64))
        T = bid_px.shape[0]
        return cls(
            ts=np.asarray(ts, dtype=np.int64),
            seq=np.full(T, -1, np.int64) if seq is None else np.asarray(seq, dtype=np.int64),
            bid_px=bid_px,
            ask_px=np.atleast_2d(np.asarray(ask_px, dtype=np.float64)),
            bid_sz=np.atleast_2d(np.asarray(bid_sz, dtype=np.float32)),
            ask_sz=np.atleast_2d(np.asarray(ask_sz, dtype=np.float32)),
            trades=trades,
            attrs=dict(attrs or {}),
        )


# ----------------------------------------------------------------------------- writing

def _compressors():
    import zarr

    return (zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)


def _jsonable(value):
    """Attrs go to JSON: numpy scalars -> Python, tuples -> lists, Paths -> str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def writer_bytes(depth: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Memory a `BookStoreWriter` of `depth` levels needs: its row buffer (ts, seq 8 B; four
    [depth] columns, 24 B a level) plus, at a flush, about three more copies of a chunk
    (the slice written, zarr's encode buffer, the compressed chunk), and the trade buffer."""
    row = 16 + 24 * int(depth)
    return 4 * int(chunk_rows) * row + int(chunk_rows) * 25


def check_depth_fits(depth: int, chunk_rows: int = DEFAULT_CHUNK_ROWS, flag: str = "--depth") -> None:
    """Refuse (InputError naming `flag`) a depth whose buffers would not fit in this machine's
    memory (gpu_engine/memory.py), before anything is allocated."""
    from gpu_engine.memory import gib, total_memory

    need = writer_bytes(depth, chunk_rows)
    total = total_memory()
    if total is not None and need > total:
        raise InputError(f"{flag} {depth}: the store's buffers for {depth:,} levels per side need about "
                         f"{gib(need)}, more than this machine's {gib(total)} of memory; use a smaller {flag}")


class _Buffer:
    """Preallocated column buffers of `cap` rows, flushed into Zarr arrays by append."""

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], Any, Any]], cap: int):
        self.cap = cap
        self.specs = specs
        # uninitialised: every row is written before it is flushed (and pages stay lazy)
        self.cols = {name: np.empty((cap,) + shape, dtype) for name, (shape, dtype, fill) in specs.items()}
        self.n = 0

    def reset(self) -> None:
        self.n = 0


class BookStoreWriter:
    """Append book rows (and trades) to a Zarr book store with bounded memory.

    Use as a context manager: a clean exit calls `close()` (rename into place),
    an exception calls `abort()` (temp deleted; in incremental mode the rows
    already flushed stay readable and `complete` stays False).

    Rows must come in non-decreasing `ts` (book rows and trades separately);
    anything else raises ValueError: the store contract says `ts` is sorted and
    `load` relies on it.
    """

    def __init__(self, path, depth: int, attrs: dict | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 incremental: bool = False):
        import zarr

        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.path = Path(path)
        self.depth = int(depth)
        self.chunk_rows = int(chunk_rows)
        self.incremental = bool(incremental)
        self.rows = 0          # rows appended (flushed or buffered)
        self.trade_rows = 0
        self._committed_rows = 0
        self._committed_trades = 0
        self._last_ts = np.iinfo(np.int64).min
        self._last_trade_ts = np.iinfo(np.int64).min
        self._closed = False
        attrs = dict(attrs or {})
        self._gaps: list[dict] = [dict(g) for g in attrs.pop("gaps", [])]
        self._attrs = {
            "exchange": None, "symbol": None, "tick_size": None, "lot_size": None, "source": [],
            **attrs,
            "depth": self.depth, "schema_version": SCHEMA_VERSION,
        }
        if self.incremental:
            if self.path.exists():
                raise FileExistsError(f"{self.path}: incremental store already exists (refusing to overwrite)")
            self._target = self.path
        else:
            self._target = outputs.tmp_sibling(self.path)
            outputs.remove_path(self._target)
        check_depth_fits(self.depth, self.chunk_rows)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._group = zarr.open_group(str(self._target), mode="w", zarr_format=3)
        except BaseException:
            if not self.incremental:
                outputs.remove_path(self._target)
            raise
        L, C = self.depth, self.chunk_rows
        book_specs = {
            "ts": ((), np.int64, 0), "seq": ((), np.int64, -1),
            "bid_px": ((L,), np.float64, np.nan), "ask_px": ((L,), np.float64, np.nan),
            "bid_sz": ((L,), np.float32, 0), "ask_sz": ((L,), np.float32, 0),
        }
        trade_specs = {"ts": ((), np.int64, 0), "px": ((), np.float64, np.nan),
                       "qty": ((), np.float64, 0), "side": ((), np.int8, 0), "match_ts": ((), np.int64, -1)}
        self._book_specs = book_specs
        self._trade_specs = trade_specs
        self._arrays = None        # created at the first flush (see _create)
        self._trade_arrays = None  # created on the first trade flush
        if self.incremental:
            self._arrays = self._create(self._group, book_specs, C)
        self._book = _Buffer(book_specs, C)
        self._trades = _Buffer(trade_specs, C)
        self._write_attrs(complete=False)

    # -- context manager
    def __enter__(self) -> "BookStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # -- attrs
    def set_attrs(self, **attrs) -> None:
        """Add or replace store attrs (written at the next flush/close)."""
        if "gaps" in attrs:
            self._gaps = [dict(g) for g in attrs.pop("gaps")]
        self._attrs.update(attrs)

    def add_gap(self, time_ns: int, reason: str, **info) -> None:
        self._gaps.append({"time": int(time_ns), "reason": str(reason), **info})

    def _write_attrs(self, complete: bool) -> None:
        attrs = dict(self._attrs)
        attrs.update(gaps=self._gaps, rows=self._committed_rows, trade_rows=self._committed_trades,
                     complete=complete, chunk_rows=self.chunk_rows)
        self._group.attrs.put(_jsonable(attrs))

    # -- appending
    def append(self, ts, seq, bid_px, ask_px, bid_sz, ask_sz) -> None:
        """Append n rows: ts, seq [n]; bid_px, ask_px, bid_sz, ask_sz [n, L]."""
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        n = ts.shape[0]
        if n == 0:
            return
        seq = np.asarray(seq, dtype=np.int64).reshape(-1)
        cols = {"ts": ts, "seq": seq}
        for name, a in (("bid_px", bid_px), ("ask_px", ask_px), ("bid_sz", bid_sz), ("ask_sz", ask_sz)):
            a = np.asarray(a)
            if a.shape != (n, self.depth):
                raise ValueError(f"{name}: shape {a.shape}, expected {(n, self.depth)}")
            cols[name] = a
        if seq.shape != (n,):
            raise ValueError(f"seq: shape {seq.shape}, expected {(n,)}")
        self._check_sorted(ts, self._last_ts, "ts")
        self._last_ts = int(ts[-1])
        self._put(self._book, cols, n, self._flush_book)
        self.rows += n

    def append_row(self, row) -> None:
        """Append one `BookRow` (ts, seq, bid_px, ask_px, bid_sz, ask_sz [L] each)."""
        ts = int(row.ts)
        if ts < self._last_ts:
            raise ValueError(f"ts not non-decreasing: {ts} after {self._last_ts}")
        self._last_ts = ts
        b = self._book
        i = b.n
        c = b.cols
        c["ts"][i] = ts
        c["seq"][i] = row.seq
        c["bid_px"][i] = row.bid_px
        c["ask_px"][i] = row.ask_px
        c["bid_sz"][i] = row.bid_sz
        c["ask_sz"][i] = row.ask_sz
        b.n = i + 1
        self.rows += 1
        if b.n == b.cap:
            self._flush_book()

    def append_trades(self, ts, px, qty, side, match_ts=None) -> None:
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        n = ts.shape[0]
        if n == 0:
            return
        cols = {"ts": ts, "px": np.asarray(px, np.float64).reshape(-1),
                "qty": np.asarray(qty, np.float64).reshape(-1), "side": np.asarray(side, np.int8).reshape(-1),
                "match_ts": (np.full(n, -1, np.int64) if match_ts is None
                             else np.asarray(match_ts, np.int64).reshape(-1))}
        for name, a in cols.items():
            if a.shape != (n,):
                raise ValueError(f"trades {name}: shape {a.shape}, expected {(n,)}")
        self._check_sorted(ts, self._last_trade_ts, "trades ts")
        self._last_trade_ts = int(ts[-1])
        self._put(self._trades, cols, n, self._flush_trades)
        self.trade_rows += n

    def append_trade(self, row) -> None:
        """Append one `TradeRow` (ts, px, qty, side)."""
        ts = int(row.ts)
        if ts < self._last_trade_ts:
            raise ValueError(f"trades ts not non-decreasing: {ts} after {self._last_trade_ts}")
        self._last_trade_ts = ts
        b = self._trades
        i = b.n
        c = b.cols
        c["ts"][i] = ts
        c["px"][i] = row.px
        c["qty"][i] = row.qty
        c["side"][i] = row.side
        c["match_ts"][i] = getattr(row, "match_ts", -1)
        b.n = i + 1
        self.trade_rows += 1
        if b.n == b.cap:
            self._flush_trades()

    @staticmethod
    def _check_sorted(ts: np.ndarray, last: int, name: str) -> None:
        if ts[0] < last or (ts.shape[0] > 1 and bool(np.any(ts[1:] < ts[:-1]))):
            raise ValueError(f"{name} not non-decreasing")

    @staticmethod
    def _put(buf: _Buffer, cols: dict, n: int, flush: Callable[[], None]) -> None:
        done = 0
        while done < n:
            k = min(buf.cap - buf.n, n - done)
            for name, a in cols.items():
                buf.cols[name][buf.n:buf.n + k] = a[done:done + k]
            buf.n += k
            done += k
            if buf.n == buf.cap:
                flush()

    # -- flushing
    @staticmethod
    def _create(group, specs: dict, chunk: int) -> dict:
        return {name: group.create_array(name, shape=(0,) + shape, chunks=(chunk,) + shape, dtype=dtype,
                                         fill_value=fill, compressors=_compressors())
                for name, (shape, dtype, fill) in specs.items()}

    def _chunk_for(self, buf: _Buffer, final: bool) -> int:
        """chunk_rows, except for a store completed before its first chunk filled up: then the
        chunk is the row count (rounded up to 1024), so a small store is not padded to a full
        chunk_rows chunk on disk (the padding dominated small imports)."""
        if final and not self.incremental and buf.n < self.chunk_rows:
            return min(self.chunk_rows, max(1024, -(-buf.n // 1024) * 1024))
        return self.chunk_rows

    def _flush_book(self, final: bool = False) -> None:
        b = self._book
        if self._arrays is None and (b.n or final):
            self._arrays = self._create(self._group, self._book_specs, self._chunk_for(b, final))
        if b.n:
            start = self._committed_rows
            for name, arr in self._arrays.items():
                arr.resize((start + b.n,) + arr.shape[1:])
                arr[start:start + b.n] = b.cols[name][:b.n]
            self._committed_rows = start + b.n
            b.reset()
            if self.incremental:
                self._write_attrs(complete=False)

    def _flush_trades(self, final: bool = False) -> None:
        b = self._trades
        if b.n:
            if self._trade_arrays is None:
                self._trade_arrays = self._create(self._group.create_group("trades"), self._trade_specs,
                                                  self._chunk_for(b, final))
            start = self._committed_trades
            for name, arr in self._trade_arrays.items():
                arr.resize((start + b.n,))
                arr[start:start + b.n] = b.cols[name][:b.n]
            self._committed_trades = start + b.n
            b.reset()
            if self.incremental:
                self._write_attrs(complete=False)

    def flush(self) -> None:
        """Write every buffered row (a partial chunk is rewritten by the next flush)."""
        self._check_open()
        self._flush_book()
        self._flush_trades()
        self._write_attrs(complete=False)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer already closed")

    def close(self) -> Path:
        """Flush, mark complete and (non-incremental) rename the temp store to `path`."""
        if self._closed:
            return self.path
        try:
            self._flush_book(final=True)
            self._flush_trades(final=True)
            self._write_attrs(complete=True)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if not self.incremental:
            try:
                outputs.replace_with(self._target, self.path)
            except BaseException:
                outputs.remove_path(self._target)
                raise
        return self.path

    def abort(self) -> None:
        """Give up: delete the temp store (incremental: keep what was flushed, incomplete)."""
        if self._closed:
            return
        self._closed = True
        if self.incremental:
            try:
                self._flush_book()
                self._flush_trades()
                self._write_attrs(complete=False)
            except Exception:
                pass
        else:
            outputs.remove_path(self._target)


def write_store(path, book: Book, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Path:
    """Write a whole in-memory `Book` as a store (temp path + rename)."""
    attrs = dict(book.attrs)
    attrs.pop("depth", None)
    for key in ("rows", "trade_rows", "complete", "schema_version", "chunk_rows"):
        attrs.pop(key, None)
    with BookStoreWriter(path, book.depth, attrs, chunk_rows=chunk_rows) as w:
        w.append(book.ts, book.seq, book.bid_px, book.ask_px, book.bid_sz, book.ask_sz)
        if book.trades is not None:
            t = book.trades
            w.append_trades(t.ts, t.px, t.qty, t.side, t.match_ts)
    return Path(path)


# ----------------------------------------------------------------------------- reading

def _open_group(path):
    import zarr

    p = Path(path)
    if not (p / "zarr.json").is_file():
        raise FileNotFoundError(f"{p}: not a book store (no zarr.json)")
    return zarr.open_group(str(p), mode="r", use_consolidated=False)


def check_schema(path, attrs: dict, has_trades: bool) -> None:
    """Refuse a store whose trades carry match times where schema 2 needs publish times."""
    version = int(attrs.get("schema_version", 1) or 1)
    if version > SCHEMA_VERSION:
        raise InputError(f"{path}: book store schema {version} is newer than this engine's "
                         f"({SCHEMA_VERSION}); upgrade gpu-sweep-engine")
    fmt = attrs.get("format")
    if version < 2 and has_trades and fmt in OUTDATED_FORMATS:
        how = (f"python -m gpu_engine.data import FILE... --format {fmt} --out {path} --overwrite"
               if not attrs.get("clock") else
               f"python -m gpu_engine.data import RAW_CAPTURE --format {fmt} --out {path} --overwrite "
               f"(the recorder's --raw file), or record again")
        raise InputError(f"{path}: book store schema {version}: its trade times are matching times, and "
                         f"schema {SCHEMA_VERSION} stamps each trade with the time it was published, so that no "
                         f"fill or feature uses a trade before it was public; re-import it: {how}")


def open_attrs(path) -> dict:
    """The store's attrs (cheap: reads only the group metadata)."""
    return dict(_open_group(path).attrs)


def _window(ts: np.ndarray, start, end) -> tuple[int, int]:
    lo = 0 if start is None else int(np.searchsorted(ts, np.int64(start), side="left"))
    hi = ts.shape[0] if end is None else int(np.searchsorted(ts, np.int64(end), side="left"))
    return lo, max(lo, hi)


def load(path, start: int | None = None, end: int | None = None,
         to_device: Callable[[np.ndarray], Any] | None = None) -> Book:
    """Load rows with start <= ts < end (ns; None = open) and the trades in the same window.

    Only the committed rows (`rows` / `trade_rows` attrs) are read, so a store being
    written incrementally, or left by a killed recorder, loads consistently.
    `to_device` is applied to every array (default: host numpy arrays).
    """
    g = _open_group(path)
    attrs = dict(g.attrs)
    check_schema(path, attrs, has_trades="trades" in g)
    conv = to_device or (lambda a: a)
    n = attrs.get("rows")
    n = g["ts"].shape[0] if n is None else min(int(n), g["ts"].shape[0])
    ts_all = g["ts"][:n]
    lo, hi = _window(ts_all, start, end)
    arrays = {"ts": ts_all[lo:hi]}
    for name in BOOK_ARRAYS[1:]:
        arrays[name] = g[name][lo:hi]
    trades = None
    if "trades" in g:
        tg = g["trades"]
        m = attrs.get("trade_rows")
        m = tg["ts"].shape[0] if m is None else min(int(m), tg["ts"].shape[0])
        tts = tg["ts"][:m]
        tlo, thi = _window(tts, start, end)
        trades = Trades(ts=conv(tts[tlo:thi]), px=conv(tg["px"][tlo:thi]), qty=conv(tg["qty"][tlo:thi]),
                        side=conv(tg["side"][tlo:thi]),
                        match_ts=conv(tg["match_ts"][tlo:thi]) if "match_ts" in tg else None)
    return Book(**{k: conv(v) for k, v in arrays.items()}, trades=trades, attrs=attrs)
