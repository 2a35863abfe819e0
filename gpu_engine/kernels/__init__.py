"""Kernel dispatch: prepare the book arrays once, run the CPU or CUDA kernel in batches.

`prepare_book` turns a Book-like object into the contiguous arrays the kernels read
(strategy.py documents each): the book, its top-of-book helpers, its trades with each
tick's index range of trades, and the run-wide market array (enums.MARKET_FIELDS, then the
window: enums.WINDOW_FIELDS). `run` takes validated, typed configuration arrays (the
`enums.CONFIG_FIELDS` order), runs batches of at most `batch` configurations, and returns
host arrays raw [C, NRAW] float64, bucket_pnl [C, B] float64, bucket_trades and
bucket_wins [C, B] int32. Kernel modules are imported lazily: importing this package
compiles nothing and never imports cupy.

A book too large for memory runs window by window (kernels/stream.py, `Stream`):
`prepare_window` builds the arrays of rows [g0, g1) of a book of T rows from a Book-like
slice of those rows and what the previous window carries (`Carry`: the last valid tops,
the trades not yet given a tick), so that the kernels see exactly the values the whole
book's arrays hold at those rows; `prepare_book` is the one-window case.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

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
    NROWSUM,
    QUEUE_RISK_AVERSE,
    RS_ASK_DEEP,
    RS_BID_DEEP,
    RS_BUY_HI,
    RS_SELL_LO,
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


def last_seen_top(px0: np.ndarray, before: float = np.nan) -> tuple[np.ndarray, np.ndarray]:
    """(current, last_seen): level-0 price where finite and > 0 else NaN, and the same
    forward-filled with the last valid price at an earlier tick (`before` before the first:
    NaN, or the last valid price of the rows before these)."""
    px0 = np.asarray(px0, dtype=np.float64)
    valid = np.isfinite(px0) & (px0 > 0)
    cur = np.where(valid, px0, np.nan)
    idx = np.where(valid, np.arange(px0.shape[0]), -1)
    np.maximum.accumulate(idx, out=idx)
    last = np.where(idx >= 0, px0[np.maximum(idx, 0)], np.float64(before))
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


def levels_sorted(bid_px, bid_sz, ask_px, ask_sz) -> bool:
    """Whether, at every row, the displayed levels are in price order: bid prices non-increasing
    and ask prices non-decreasing from level 0 on (undisplayed levels anywhere). Then level 0,
    when displayed, is its side's best and the last level, when displayed, its deepest, and a
    maker order's level search can stop early (strategy.level_size; same result either way)."""
    with np.errstate(invalid="ignore"):
        for px, sz, acc in ((bid_px, bid_sz, np.fmin), (ask_px, ask_sz, np.fmax)):
            shown = np.isfinite(px) & (px > 0) & np.isfinite(sz) & (sz > 0)
            p = np.where(shown, px, np.nan)
            run = acc.accumulate(p, axis=1)
            if not np.all(~shown | (p == run)):
                return False
    return True


def row_summary(bid_px, bid_sz, ask_px, ask_sz, tr_start, tr_px, tr_side) -> np.ndarray:
    """float64 [T, NROWSUM] (enums.ROWSUM_FIELDS): per tick, each side's deepest displayed
    price (NaN: none displayed) and the extreme prices of the tick's trades by aggressor
    (the lowest sell-aggressor price, +inf when none; the highest buy-aggressor price, -inf
    when none). Read by a resting maker order (strategy.level_size, run_ticks): the price
    tick is monotonic in the price, so comparing an order's tick with the tick of these
    extremes tells exactly whether any level or trade of the tick can be at or through it."""
    T = int(np.shape(bid_px)[0])
    out = np.empty((T, NROWSUM), np.float64)
    if T == 0:
        return out
    with np.errstate(invalid="ignore"):
        for px, sz, col, acc, none in ((bid_px, bid_sz, RS_BID_DEEP, np.min, np.inf),
                                       (ask_px, ask_sz, RS_ASK_DEEP, np.max, -np.inf)):
            px = np.asarray(px, dtype=np.float64)
            sz = np.asarray(sz, dtype=np.float64)
            shown = np.isfinite(px) & (px > 0) & np.isfinite(sz) & (sz > 0)
            deep = acc(np.where(shown, px, none), axis=1)
            out[:, col] = np.where(np.isfinite(deep), deep, np.nan)
    out[:, RS_SELL_LO] = np.inf
    out[:, RS_BUY_HI] = -np.inf
    tr_start = np.asarray(tr_start, dtype=np.int64)
    m = int(tr_start[-1])
    if m > 0:
        tick_of = np.repeat(np.arange(T), np.diff(tr_start))
        px = np.asarray(tr_px, dtype=np.float64)[:m]
        side = np.asarray(tr_side)[:m]
        sell = side == -1
        np.minimum.at(out[:, RS_SELL_LO], tick_of[sell], px[sell])
        buy = side == 1
        np.maximum.at(out[:, RS_BUY_HI], tick_of[buy], px[buy])
    return out


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
    """The book as the kernels read it (on the backend's device): all of it, or the window
    of rows [offset, offset + T) of a book of `total` rows (prepare_window; the kernels read
    both from `mkt`, enums.M_OFFSET and M_TOTAL)."""

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
    rsum: object
    tr_start: object
    tr_px: object
    tr_qty: object
    tr_side: object
    mkt: object
    offset: int = 0
    total: int | None = None  # None: the whole book (offset 0, total T)

    @property
    def T(self) -> int:
        return int(self.ts.shape[0])

    @property
    def whole(self) -> bool:
        """Whether these are the arrays of a whole book (not a window of a longer one)."""
        return self.offset == 0 and (self.total is None or self.total == self.T)

    def as_args(self) -> tuple:
        return (self.ts, self.bid_px, self.ask_px, self.bid_sz, self.ask_sz,
                self.bid0, self.ask0, self.pbid, self.pask, self.dbid, self.dask, self.rsum,
                self.tr_start, self.tr_px, self.tr_qty, self.tr_side, self.mkt)


def _no_trades():
    return (np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.float64),
            np.zeros(0, np.int8))


@dataclass(frozen=True)
class Carry:
    """What the rows of a book before a window leave to it (prepare_window): how many rows
    there were (`offset`, the global index of the window's row 0), the time of the last one
    (`last_ts`, None when there were none), the last valid level-0 bid and ask prices seen
    (`pbid`, `pask`; NaN: none yet), and the trades published after `last_ts` not yet given
    to a tick (`trades`: ts int64, px float64, qty float64, side int8, in stored order;
    they belong to the first later tick with ts >= their time)."""

    offset: int = 0
    last_ts: int | None = None
    pbid: float = math.nan
    pask: float = math.nan
    trades: tuple = field(default_factory=_no_trades)


def prepare_window(book, backend: Backend, total: int, carry: Carry | None = None, market=None,
                   trades: bool = True) -> tuple[BookArrays, Carry]:
    """The kernels' arrays of one window of a book of `total` rows, and what it carries to the
    next window. `book` is Book-like: the window's rows (ts, bid_px, ask_px, bid_sz, ask_sz)
    and optionally `trades` (ts, px, qty, side: the trades published after the rows before
    the window, in time order; any of them after the window's last row are carried on).
    `carry` is what the previous window returned (None: the window starts the book).

    The arrays equal rows [carry.offset, carry.offset + n) of prepare_book's arrays of the
    whole book: the last-seen tops continue from the previous rows, a trade goes to the first
    tick with ts >= its time whichever window that tick is in (trades after the book's last
    row go to no tick), and the market array holds the window (enums.M_OFFSET, M_TOTAL).
    A window may have no rows (its trades are carried on); it is then not run."""
    carry = Carry() if carry is None else carry
    total = int(total)
    g0 = int(carry.offset)
    ts = np.ascontiguousarray(book.ts, dtype=np.int64)
    n = int(ts.shape[0])
    if g0 + n > total:
        raise ValueError(f"window rows [{g0}, {g0 + n}) run past the book's {total} rows")
    if n and carry.last_ts is not None and ts[0] < carry.last_ts:
        raise ValueError(f"window starts at ts {int(ts[0])}, before the previous row's "
                         f"{carry.last_ts}: windows must follow each other in time")
    bid_px = np.ascontiguousarray(book.bid_px, dtype=np.float64)
    ask_px = np.ascontiguousarray(book.ask_px, dtype=np.float64)
    bid_sz = np.ascontiguousarray(book.bid_sz, dtype=np.float32)
    ask_sz = np.ascontiguousarray(book.ask_sz, dtype=np.float32)
    bid0, pbid = last_seen_top(bid_px[:, 0], carry.pbid)
    ask0, pask = last_seen_top(ask_px[:, 0], carry.pask)
    dbid = best_displayed(bid_px, bid_sz, bid=True)
    dask = best_displayed(ask_px, ask_sz, bid=False)

    held = carry.trades
    tr = getattr(book, "trades", None) if trades else None
    if tr is not None and len(tr.ts) > 0:
        new = (np.asarray(tr.ts, dtype=np.int64), np.asarray(tr.px, dtype=np.float64),
               np.asarray(tr.qty, dtype=np.float64), np.asarray(tr.side, dtype=np.int8))
        if carry.last_ts is not None and new[0][0] <= carry.last_ts:
            raise ValueError(f"a trade at ts {int(new[0][0])} is not after the previous "
                             f"window's last row ({carry.last_ts}): its tick was run already")
        if len(held[0]) and new[0][0] < held[0][-1]:
            raise ValueError("trades must follow the carried trades in time")
        held = tuple(np.concatenate((a, b)) for a, b in zip(held, new)) if len(held[0]) else new
    # the window's trades: those up to its last row (the rest wait for a later tick)
    m = int(np.searchsorted(held[0], ts[-1], side="right")) if n else 0
    if m > 0:
        tr_start = trade_ranges(ts, held[0][:m])
        tr_px = np.ascontiguousarray(held[1][:m])
        tr_qty = np.ascontiguousarray(held[2][:m])
        tr_side = np.ascontiguousarray(held[3][:m])
    else:
        # no trades: every tick's range is empty (one dummy trade keeps the arrays non-empty)
        tr_start = np.zeros(n + 1, np.int64)
        tr_px = np.zeros(1, np.float64)
        tr_qty = np.zeros(1, np.float64)
        tr_side = np.zeros(1, np.int8)
    # trades after the book's last row go to no tick
    rest = _no_trades() if g0 + n == total else tuple(a[m:] for a in held)
    rsum = row_summary(bid_px, bid_sz, ask_px, ask_sz, tr_start, tr_px, tr_side)

    base = default_market() if market is None else np.ascontiguousarray(market, dtype=np.float64)
    if base.shape != (NMARKET,):
        raise ValueError(f"market must be a float64 array of {NMARKET} values, got shape {base.shape}")
    mkt = np.concatenate((base, np.array([g0, total, float(levels_sorted(bid_px, bid_sz, ask_px, ask_sz))],
                                         np.float64)))
    dev = backend.to_device
    arrays = BookArrays(dev(ts), dev(bid_px), dev(ask_px), dev(bid_sz), dev(ask_sz),
                        dev(bid0), dev(ask0), dev(pbid), dev(pask), dev(dbid), dev(dask), dev(rsum),
                        dev(tr_start), dev(tr_px), dev(tr_qty), dev(tr_side), dev(mkt),
                        offset=g0, total=total)
    after = Carry(offset=g0 + n, last_ts=int(ts[-1]) if n else carry.last_ts,
                  pbid=float(pbid[-1]) if n else carry.pbid,
                  pask=float(pask[-1]) if n else carry.pask, trades=rest)
    return arrays, after


def prepare_book(book, backend: Backend, market=None, trades: bool = True) -> BookArrays:
    """Contiguous, canonically typed book arrays plus the top-of-book helpers, the trades
    (`book.trades`, when present and `trades` is true: only maker orders read them) with each
    tick's trade range, and the market array (`market`, enums.MARKET_FIELDS order; None =
    default_market(), rules v1; then the window: 0 and T), on device. Computed once per book
    and run: the one window of prepare_window that holds the whole book."""
    return prepare_window(book, backend, int(np.shape(book.ts)[0]), None, market, trades)[0]


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
    check_chunk(chunk)
    if not book.whole:
        raise ValueError("kernels.run takes the arrays of a whole book (prepare_book); "
                         "run the windows of a longer one with kernels.stream.Stream")
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
        from gpu_engine.strategy import WIN_FIRST, WIN_LAST

        step = np.int64(chunk if chunk is not None else DEFAULT_CHUNK)
        flags = np.int64(WIN_FIRST | WIN_LAST)
        hbook = tuple(_cpu_input(a, dt) for a, dt in zip(book.as_args(), BOOK_DTYPES))
        hbank = _cpu_input(bank, np.float32)
        for lo in range(0, C, batch):
            hi = min(C, lo + batch)
            args = tuple(_cpu_input(cfg[f][lo:hi], CONFIG_FIELDS[f][0]) for f in FIELDS)
            fs, ist = allocate_state(hi - lo)
            call = hbook + (hbank,) + args + tuple(o[lo:hi] for o in out) + (step, fs, ist, flags)
            if not STARTUP:
                _load_cpu_kernel(sweep_cpu, call)
            sweep_cpu(*call)
    return out


def check_chunk(chunk) -> None:
    if chunk is not None and not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1 (ticks), got {chunk!r}")


def allocate_state(C: int) -> tuple[np.ndarray, np.ndarray]:
    """The carry arrays of C configurations' states (strategy.py: fs [C, NSTATE_F] float64,
    ist [C, NSTATE_I] int64), uninitialised: the first window starts them."""
    from gpu_engine.strategy import NSTATE_F, NSTATE_I

    return np.empty((C, NSTATE_F), np.float64), np.empty((C, NSTATE_I), np.int64)


def cpu_signature() -> tuple:
    """The one argument type set kernels.run passes to the CPU kernel (see _cpu_input)."""
    import numba

    book = tuple(_cpu_input(np.zeros((1,) * nd, dt), dt) for dt, nd in zip(BOOK_DTYPES, BOOK_NDIMS))
    bank = _cpu_input(np.zeros((1, 1), np.float32), np.float32)
    cfg = tuple(_cpu_input(np.zeros((1,), CONFIG_FIELDS[f][0]), CONFIG_FIELDS[f][0]) for f in FIELDS)
    out = tuple(o[0:1] for o in allocate(1, 1))
    state = allocate_state(1)
    return tuple(numba.typeof(a) for a in book + (bank,) + cfg + out
                 + (np.int64(1),) + state + (np.int64(3),))


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
               np.float64, np.int64, np.float64, np.float64, np.int8, np.float64)
# and their numbers of dimensions: the four [T, L] level arrays and the [T, NROWSUM] row summary
BOOK_NDIMS = (1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1)


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
