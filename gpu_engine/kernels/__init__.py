"""Kernel dispatch: prepare the book arrays once, run the CPU or CUDA kernel in batches.

`prepare_book` turns a Book-like object into the contiguous arrays the kernels read
(strategy.py documents each): the book, its top-of-book helpers, its trades with each
tick's index range of trades, and the run-wide market array (enums.MARKET_FIELDS). `run` takes validated, typed configuration arrays (the
`enums.CONFIG_FIELDS` order), runs batches of at most `batch` configurations, and returns
host arrays raw [C, NRAW] float64, bucket_pnl [C, B] float64, bucket_trades and
bucket_wins [C, B] int32. Kernel modules are imported lazily: importing this package
compiles nothing and never imports cupy.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from gpu_engine.backend import Backend
from gpu_engine.enums import (
    CONFIG_FIELDS,
    DEFAULT_QUEUE_N,
    M_INVERSE,
    M_LOT,
    M_MULT,
    M_QUEUE,
    M_QUEUE_N,
    M_TICK,
    NMARKET,
    NRAW,
    QUEUE_RISK_AVERSE,
)

FIELDS = tuple(CONFIG_FIELDS)
DEFAULT_BATCH = 1 << 18

# Startup figures of this process's first CPU kernel call (seconds since the process began):
# "ready" when its inputs were ready, "loaded" once the kernel was loaded from the disk cache
# (or compiled), i.e. just before the first configuration runs. Empty until then.
STARTUP: dict[str, float] = {}


def process_age() -> float:
    """Seconds since this process started (Linux /proc; else since this module was imported)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            start_ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def last_seen_top(px0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(current, last_seen): level-0 price where finite and > 0 else NaN, and the same
    forward-filled with the last valid price at an earlier tick (NaN before the first)."""
    px0 = np.asarray(px0, dtype=np.float64)
    valid = np.isfinite(px0) & (px0 > 0)
    cur = np.where(valid, px0, np.nan)
    idx = np.where(valid, np.arange(px0.shape[0]), -1)
    np.maximum.accumulate(idx, out=idx)
    last = np.where(idx >= 0, px0[np.maximum(idx, 0)], np.nan)
    return cur, last


def best_displayed(px, sz, bid: bool) -> np.ndarray:
    """Per tick, the best displayed price of one side (the highest displayed bid or the
    lowest displayed ask; a level is displayed when its price and size are finite and > 0),
    NaN when the side displays nothing."""
    px = np.asarray(px, dtype=np.float64)
    sz = np.asarray(sz, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        shown = np.isfinite(px) & (px > 0) & np.isfinite(sz) & (sz > 0)
    if px.shape[0] == 0:
        return np.zeros(0, np.float64)
    if bid:
        best = np.where(shown, px, -np.inf).max(axis=1)
    else:
        best = np.where(shown, px, np.inf).min(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def trade_ranges(ts, trade_ts) -> np.ndarray:
    """int64 [T + 1]: the trades of tick t are k in [out[t], out[t + 1]). Trade k goes to the
    first tick with ts >= its time (np.searchsorted, side "left"); trades after the last
    tick go to no tick. `trade_ts` must be non-decreasing (sweep.validate_book checks it)."""
    ts = np.asarray(ts, dtype=np.int64)
    tick_of = np.searchsorted(ts, np.asarray(trade_ts, dtype=np.int64), side="left")
    return np.searchsorted(tick_of, np.arange(ts.shape[0] + 1), side="left").astype(np.int64)


def default_market() -> np.ndarray:
    """The run-wide market of rules v1: linear, multiplier 1, no tick size (NaN: no maker
    orders), continuous size (lot 0), risk-averse queue."""
    mkt = np.zeros(NMARKET, np.float64)
    mkt[M_INVERSE] = 0.0
    mkt[M_MULT] = 1.0
    mkt[M_TICK] = np.nan
    mkt[M_LOT] = 0.0
    mkt[M_QUEUE] = float(QUEUE_RISK_AVERSE)
    mkt[M_QUEUE_N] = DEFAULT_QUEUE_N
    return mkt


@dataclass
class BookArrays:
    """The book as the kernels read it (on the backend's device)."""

    ts: object
    bid_px: object
    ask_px: object
    bid_sz: object
    ask_sz: object
    bid0: object
    ask0: object
    pbid: object
    pask: object
    dbid: object
    dask: object
    tr_start: object
    tr_px: object
    tr_qty: object
    tr_side: object
    mkt: object

    @property
    def T(self) -> int:
        return int(self.ts.shape[0])

    def as_args(self) -> tuple:
        return (self.ts, self.bid_px, self.ask_px, self.bid_sz, self.ask_sz,
                self.bid0, self.ask0, self.pbid, self.pask, self.dbid, self.dask,
                self.tr_start, self.tr_px, self.tr_qty, self.tr_side, self.mkt)


def prepare_book(book, backend: Backend, market=None, trades: bool = True) -> BookArrays:
    """Contiguous, canonically typed book arrays plus the top-of-book helpers, the trades
    (`book.trades`, when present and `trades` is true: only maker orders read them) with each
    tick's trade range, and the market array (`market`, enums.MARKET_FIELDS order; None =
    default_market(), rules v1), on device. Computed once per book and run."""
    ts = np.ascontiguousarray(book.ts, dtype=np.int64)
    bid_px = np.ascontiguousarray(book.bid_px, dtype=np.float64)
    ask_px = np.ascontiguousarray(book.ask_px, dtype=np.float64)
    bid_sz = np.ascontiguousarray(book.bid_sz, dtype=np.float32)
    ask_sz = np.ascontiguousarray(book.ask_sz, dtype=np.float32)
    bid0, pbid = last_seen_top(bid_px[:, 0])
    ask0, pask = last_seen_top(ask_px[:, 0])
    dbid = best_displayed(bid_px, bid_sz, bid=True)
    dask = best_displayed(ask_px, ask_sz, bid=False)
    tr = getattr(book, "trades", None) if trades else None
    if tr is not None and len(tr.ts) > 0:
        tr_start = trade_ranges(ts, tr.ts)
        tr_px = np.ascontiguousarray(tr.px, dtype=np.float64)
        tr_qty = np.ascontiguousarray(tr.qty, dtype=np.float64)
        tr_side = np.ascontiguousarray(tr.side, dtype=np.int8)
    else:
        # no trades: every tick's range is empty (one dummy trade keeps the arrays non-empty)
        tr_start = np.zeros(ts.shape[0] + 1, np.int64)
        tr_px = np.zeros(1, np.float64)
        tr_qty = np.zeros(1, np.float64)
        tr_side = np.zeros(1, np.int8)
    mkt = default_market() if market is None else np.ascontiguousarray(market, dtype=np.float64)
    if mkt.shape != (NMARKET,):
        raise ValueError(f"market must be a float64 array of {NMARKET} values, got shape {mkt.shape}")
    dev = backend.to_device
    return BookArrays(dev(ts), dev(bid_px), dev(ask_px), dev(bid_sz), dev(ask_sz),
                      dev(bid0), dev(ask0), dev(pbid), dev(pask), dev(dbid), dev(dask),
                      dev(tr_start), dev(tr_px), dev(tr_qty), dev(tr_side), dev(mkt))


def allocate(C: int, B: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros((C, NRAW), np.float64), np.zeros((C, B), np.float64),
            np.zeros((C, B), np.int32), np.zeros((C, B), np.int32))


def with_defaults(cfg: dict[str, np.ndarray], C: int) -> dict[str, np.ndarray]:
    """`cfg` with every CONFIG_FIELDS field it lacks at its default (callers written for rules
    v1, which pass v1 fields only, get the v1 behaviour of the v2 fields)."""
    missing = [f for f in FIELDS if f not in cfg]
    if not missing:
        return cfg
    out = dict(cfg)
    for f in missing:
        dtype, default = CONFIG_FIELDS[f]
        if default is None:
            raise ValueError(f"config field {f!r} is required")
        out[f] = np.full(C, default, dtype=dtype)
    return out


def run(backend: Backend, book: BookArrays, bank, cfg: dict[str, np.ndarray], buckets: int,
        batch: int = DEFAULT_BATCH, chunk: int | None = None):
    """Run the kernel for every configuration in `cfg` (typed host arrays, FIELDS order;
    fields it lacks take their CONFIG_FIELDS defaults).

    `chunk`: ticks per chunk of the CPU kernel (default kernels.cpu.DEFAULT_CHUNK; the
    results do not depend on it); the CUDA kernel runs all ticks in one call.
    Returns host (raw, bucket_pnl, bucket_trades, bucket_wins).
    """
    if chunk is not None and not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1 (ticks), got {chunk!r}")
    C = int(cfg[FIELDS[0]].shape[0])
    cfg = with_defaults(cfg, C)
    out = allocate(C, buckets)
    batch = max(1, int(batch))
    if backend.is_cuda:
        from gpu_engine.kernels import cuda as kcuda

        xp = backend.xp
        dbank = backend.to_device(bank)
        for lo in range(0, C, batch):
            hi = min(C, lo + batch)
            n = hi - lo
            dcfg = tuple(backend.to_device(np.ascontiguousarray(cfg[f][lo:hi])) for f in FIELDS)
            dout = (xp.zeros((n, NRAW), xp.float64), xp.zeros((n, buckets), xp.float64),
                    xp.zeros((n, buckets), xp.int32), xp.zeros((n, buckets), xp.int32))
            kcuda.launch(book.as_args() + (dbank,) + dcfg + dout, n)
            for host, dev in zip(out, dout):
                host[lo:hi] = backend.to_host(dev)
    else:
        from gpu_engine.kernels.cpu import DEFAULT_CHUNK, sweep_cpu

        step = int(chunk) if chunk is not None else DEFAULT_CHUNK
        hbook = tuple(_cpu_input(a, dt) for a, dt in zip(book.as_args(), BOOK_DTYPES))
        hbank = _cpu_input(bank, np.float32)
        for lo in range(0, C, batch):
            hi = min(C, lo + batch)
            args = tuple(_cpu_input(cfg[f][lo:hi], CONFIG_FIELDS[f][0]) for f in FIELDS)
            if not STARTUP:
                _load_cpu_kernel(sweep_cpu, hbook + (hbank,) + args + tuple(o[lo:hi] for o in out)
                                 + (np.int64(step),))
            sweep_cpu(*hbook, hbank, *args, *(o[lo:hi] for o in out), np.int64(step))
    return out


def cpu_signature() -> tuple:
    """The one argument type set kernels.run passes to the CPU kernel (see _cpu_input)."""
    import numba

    one, two = (1,), (1, 1)
    book = tuple(_cpu_input(np.zeros(two if k in (1, 2, 3, 4) else one, dt), dt)
                 for k, dt in enumerate(BOOK_DTYPES))
    bank = _cpu_input(np.zeros(two, np.float32), np.float32)
    cfg = tuple(_cpu_input(np.zeros(one, CONFIG_FIELDS[f][0]), CONFIG_FIELDS[f][0]) for f in FIELDS)
    out = tuple(o[0:1] for o in allocate(1, 1))
    return tuple(numba.typeof(a) for a in book + (bank,) + cfg + out + (np.int64(1),))


def preload_cpu():
    """Start loading the CPU kernel from the disk cache in a background thread, so that it
    overlaps the data loading (numba's LLVM work runs outside the GIL). Only a cached kernel is
    preloaded: a cold compile stays in the caller's thread. Returns the thread or None."""
    import threading

    def load():
        try:
            from gpu_engine.kernels import cache
            from gpu_engine.kernels.cpu import sweep_cpu

            if cache.holds(sweep_cpu):
                sweep_cpu.compile(cpu_signature())
        except Exception:  # the caller's own call compiles or reports it
            pass

    thread = threading.Thread(target=load, name="kernel-preload", daemon=True)
    thread.start()
    return thread


def _load_cpu_kernel(kernel, args: tuple) -> None:
    """Load (or compile) the one specialisation `args` need, timing it into STARTUP."""
    import numba

    STARTUP["ready"] = process_age()
    kernel.compile(tuple(numba.typeof(a) for a in args))
    STARTUP["loaded"] = process_age()


# dtypes of BookArrays.as_args(), in that order (prepare_book)
BOOK_DTYPES = (np.int64, np.float64, np.float64, np.float32, np.float32,
               np.float64, np.float64, np.float64, np.float64, np.float64, np.float64,
               np.int64, np.float64, np.float64, np.int8, np.float64)


def _cpu_input(a, dtype) -> np.ndarray:
    """An input of the CPU kernel in its one canonical numba type: C-contiguous, aligned,
    native `dtype`, read-only.

    numba compiles (and caches) one specialisation per argument type set, and an array's
    type includes its layout, alignment and writeable flag: a memory-mapped block or a
    caller's read-only array would otherwise cost a second 20-40 s compile. Every input is
    passed as a read-only view (no copy unless the dtype, layout or alignment is off); the
    outputs are the caller's own C-contiguous arrays.
    """
    a = np.require(a, dtype=dtype, requirements=("C_CONTIGUOUS", "ALIGNED"))
    view = a.view()
    view.flags.writeable = False
    return view
