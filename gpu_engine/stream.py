"""Sweeps over data sets longer than memory: rows stream through host and device memory in
windows, within a memory budget.

    rows = StoreRows(paths)                                   # gpu_engine/data/books/rows.py
    bank = DiskBank.build(rows, spec, path, window=...)       # the feature bank, streamed once to disk
    ds = sweep_stream(rows, bank, configs, part=(lo, hi), window=plan.window_rows, ...)

`sweep_stream` returns what `gpu_engine.sweep(book[lo:hi], bank[:, lo:hi], configs, ...)` returns
for the same rows, bit for bit (tests/test_stream.py): the book's rows [lo, hi) are read window by
window (`StoreRows.read`), each window's top-of-book helpers and trade ranges are built with what
the previous window left (kernels.Stream.prepare), the bank's columns of the same rows are read
from disk, and every configuration's state (position, orders, queue, equity, peak, counters,
cooldown) is carried from one window to the next on the device (kernels/stream.py). The next
window is read and prepared in a background thread while the current one runs (the kernels
release the GIL). A part's trades are those `validation.slice_book` keeps: published at or after
the part's first row.

Memory that stays put across windows and runs: one long-lived reader thread does the reading
for every run of the process (`prefetched`; a second thread only while two runs overlap), and
every window is read into one of two window buffers (`WindowSlots`: the book fields, the trades,
the bank columns) allocated for the largest window and reused, the reader filling one while
the kernels read the other, and the store chunks are decompressed into one reused buffer
(gpu_engine/data/books/chunks.py). The buffers are kept for the next run (a grid's evaluations
reuse them; `reserve_buffers` sizes them for the largest window up front, `release_buffers()`
frees them). New threads, zarr's pool threads and fresh window and chunk arrays each window
left the allocator holding freed memory in many arenas and raised glibc's mmap threshold, which
then inflated every later allocation (benchmarks/RESULTS.md, issue 12).

`DiskBank.build` runs the feature bank over the whole data set window by window
(gpu_engine/features_stream.py: each window's rolling sums carry the history they need, so the
columns equal the one-shot bank's bits; the windows read on the reader thread into the same
buffers) and writes it to one `.npy` file, [T, K] float32, through a temporary file renamed
when complete; `read(g0, g1)` reads a window's columns with one
positioned read (no memory map: mapped pages would count as the process's memory).

The budget (`plan`): `--max-memory` bytes for the data in flight (two windows: the one running and
the one being read, each with its book, trades, helpers and bank columns, plus the reading's
temporaries) and the configurations' state and outputs; the interpreter, numba, the compiled
kernels and the libraries are a fixed overhead outside it (measured in benchmarks/RESULTS.md).
Default: half of the memory available now (and, on a GPU, no more than half of its free memory).
"""
from __future__ import annotations

import atexit
import json
import os
import queue as queue_mod
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gpu_engine.enums import NRAW
from gpu_engine.errors import InputError

# bytes the budget counts per configuration: its state carry (strategy.NSTATE_F + NSTATE_I
# values), raw sums, fields and result columns (upper bounds), plus 3 x 8 bytes per bucket
CONFIG_BYTES = 8 * (32 + NRAW + 24 + 40)
BUCKET_BYTES = 24
# what reading and preparing one window costs per row beyond its arrays (zarr chunk buffers,
# concatenation copies, helper temporaries): a factor on the window's own bytes
READ_FACTOR = 3.0
MIN_WINDOW = 256
DEFAULT_FRACTION = 0.5


def parse_bytes(text, flag: str = "--max-memory") -> int:
    """'512M', '2G', '1.5GiB', '800MB', '1e9' or a plain number of bytes -> bytes (> 0)."""
    s = str(text).strip().upper().replace("IB", "").replace("B", "")
    mult = 1
    for suffix, m in (("K", 2 ** 10), ("M", 2 ** 20), ("G", 2 ** 30), ("T", 2 ** 40)):
        if s.endswith(suffix):
            s, mult = s[:-1], m
            break
    try:
        value = float(s) * mult
    except ValueError:
        raise InputError(f"{flag}: not a size: {text!r} (e.g. 512M, 2G, or bytes)") from None
    if not (np.isfinite(value) and value >= 1):
        raise InputError(f"{flag}: must be a positive size, got {text!r}")
    return int(value)


def default_budget(backend=None) -> int:
    """Half of the host memory available now; on a GPU, no more than half its free memory."""
    from gpu_engine.memory import available_memory, total_memory

    host = available_memory() or total_memory() or 2 ** 31
    budget = int(host * DEFAULT_FRACTION)
    if backend is not None and backend.is_cuda and not backend.simulated:
        try:
            free, _ = backend.xp.cuda.runtime.memGetInfo()
            budget = min(budget, int(free * DEFAULT_FRACTION))
        except Exception:  # no device query: the host figure alone
            pass
    return budget


def row_bytes(depth: int, K: int, trades_per_row: float = 0.0) -> int:
    """Bytes of one row of a window as the kernels and the bank read it: prices (float64) and
    sizes (float32) of both sides, ts and seq, six top-of-book helpers and the trade range
    (float64/int64), the row summary (kernels.row_summary: 4 float64), the bank's K float32
    columns, and its trades (33 bytes each)."""
    return int(depth * 2 * (8 + 4) + 16 + 11 * 8 + 4 * K + 33 * trades_per_row + 0.999)


@dataclass
class Plan:
    """How a data set of `total` rows runs within `budget` bytes."""

    budget: int
    window_rows: int
    row_bytes: int
    config_bytes: int
    total: int

    @property
    def windows(self) -> int:
        return max(1, -(-self.total // self.window_rows))

    def describe(self) -> str:
        return (f"streaming {self.total:,} rows in {self.windows:,} windows of {self.window_rows:,} rows "
                f"within --max-memory {self.budget / 2 ** 20:,.0f} MiB "
                f"({self.config_bytes / 2 ** 20:,.1f} MiB for the configurations' state)")


def plan(total: int, depth: int, K: int, configs: int, buckets: int, budget: int,
         trades_per_row: float = 0.0, flag: str = "--max-memory") -> Plan:
    """The window size that keeps two windows in flight plus the configurations' state within
    `budget`; InputError naming the flag when not even MIN_WINDOW rows fit."""
    rb = row_bytes(depth, K, trades_per_row)
    cb = int(configs) * (CONFIG_BYTES + BUCKET_BYTES * int(buckets))
    per_row = rb * (1.0 + READ_FACTOR)  # the running window, and the next one being read
    rows = int((budget - cb) // per_row)
    need = cb + int(per_row * min(MIN_WINDOW, max(1, total)))
    if rows < min(MIN_WINDOW, max(1, total)):
        raise InputError(f"{flag}: {budget / 2 ** 20:,.1f} MiB is too small: {configs:,} configurations "
                         f"need {cb / 2 ** 20:,.1f} MiB of state and a window of {MIN_WINDOW} rows "
                         f"{per_row * MIN_WINDOW / 2 ** 20:,.1f} MiB; give at least {need / 2 ** 20:,.1f} MiB")
    return Plan(int(budget), max(1, min(rows, int(total))), rb, cb, int(total))


class ArrayBank:
    """A bank held in memory ([K, T] values), read by windows like a DiskBank."""

    def __init__(self, values, names=None):
        self.values = np.asarray(getattr(values, "values", values), dtype=np.float32)
        self.names = list(names if names is not None else getattr(values, "names", []) or [])
        self.K, self.T = (int(x) for x in self.values.shape)

    def read(self, g0: int, g1: int, out: np.ndarray | None = None, scratch=None) -> np.ndarray:
        """float32 [K, g1 - g0]: columns [g0, g1) (into `out`, [K, g1 - g0] C-contiguous, when
        given; `scratch` is DiskBank's and unused here)."""
        if out is None:
            return np.ascontiguousarray(self.values[:, g0:g1])
        np.copyto(out, self.values[:, g0:g1])
        return out


class DiskBank:
    """The feature bank of a data set in one `.npy` file, [T, K] float32 (module doc)."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise InputError(f"{self.path}: not a streamed feature bank ([T, K] float32)")
        self.T, self.K = (int(x) for x in shape)
        side = rows_sidecar(self.path)
        self.rows = json.loads(side.read_text()) if side.is_file() else []
        self.names = [r["label"] for r in self.rows]

    def index(self, name: str, **params) -> int:
        """Row of a feature, as FeatureBank.index."""
        from gpu_engine.features import FeatureBank

        return FeatureBank(None, self.rows).index(name, **params)

    def read(self, g0: int, g1: int, out: np.ndarray | None = None,
             scratch: np.ndarray | None = None) -> np.ndarray:
        """float32 [K, g1 - g0]: the bank's columns of rows [g0, g1). `out` ([K, g1 - g0]
        C-contiguous float32) receives them and `scratch` (float32, at least (g1 - g0) * K
        values) the rows as stored, when given: then nothing is allocated."""
        if not (0 <= g0 <= g1 <= self.T):
            raise ValueError(f"rows [{g0}, {g1}) outside the bank's {self.T:,} rows")
        n = g1 - g0
        raw = np.empty(n * self.K, np.float32) if scratch is None else scratch[:n * self.K]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(raw).cast("B")], self.offset + g0 * self.K * 4)
        finally:
            os.close(fd)
        if got != raw.nbytes:
            raise InputError(f"{self.path}: truncated streamed feature bank")
        rows = raw.reshape(n, self.K).T
        if out is None:
            return np.ascontiguousarray(rows)
        np.copyto(out, rows)
        return out

    @classmethod
    def build(cls, rows, spec, path, window: int, blocks=None, xp=None,
              progress: Callable[[int], None] | None = None) -> "DiskBank":
        """Build the bank of every row of `rows` (a StoreRows) window by window and write it to
        `path` (a temporary sibling first, renamed when whole)."""
        from gpu_engine.features_stream import BankStream
        from gpu_engine.outputs import tmp_sibling

        path = Path(path)
        stream = BankStream(spec, depth=rows.depth, xp=xp, blocks=blocks)
        K, T = stream.K, rows.T
        window = max(1, min(int(window), T))
        bounds = [(g0, min(T, g0 + window)) for g0 in range(0, T, window)]
        slots = _take_slots(rows, K, window)  # kept for the sweeps that follow

        def produce(i):  # on the reader thread, while the previous window's features run
            return rows.read(*bounds[i], out=slots.book[i % 2])

        tmp = tmp_sibling(path)
        try:
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                         "fortran_order": False, "shape": (T, K)})
                for i, book in enumerate(prefetched(produce, len(bounds), depth=1)):
                    g0, g1 = bounds[i]
                    vals = stream.feed(book)
                    vals = np.asarray(getattr(vals, "get", lambda: vals)(), dtype=np.float32)
                    out = slots.scratch[:(g1 - g0) * K].reshape(g1 - g0, K)
                    np.copyto(out, vals.T)
                    fh.write(memoryview(out).cast("B"))
                    if progress:
                        progress(g1 - g0)
            _keep_slots(slots)
            side = rows_sidecar(path)
            side_tmp = tmp_sibling(side)
            side_tmp.write_text(json.dumps(stream.rows))
            os.replace(side_tmp, side)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return cls(path)


def rows_sidecar(path: Path) -> Path:
    """The JSON file beside a DiskBank with its feature rows (FeatureBank.rows)."""
    return Path(path).with_name(Path(path).name + ".rows.json")


def whole_load_bytes(total: int, depth: int, K: int, trades_per_row: float = 0.0) -> int:
    """About what loading a data set whole costs (the book, its kernel copies and helpers, the
    bank and its float64 build temporaries): above the budget, the sweeps stream it."""
    return int(total * (2 * row_bytes(depth, K, trades_per_row) + 16 * K))


def split_rows(rows, is_frac: float, purge_frac: float):
    """validation.split_time of a StoreRows data set, reading only the timestamps it needs."""
    from gpu_engine import validation

    if rows.T < 4:
        raise ValueError(f"need at least 4 ticks to split, got {rows.T}")
    if not 0.0 < is_frac < 1.0:
        raise ValueError(f"is_frac must be in (0, 1), got {is_frac}")
    if not 0.0 <= purge_frac < 1.0 - is_frac:
        raise ValueError(f"purge_frac must be in [0, {1.0 - is_frac:g}), got {purge_frac}")
    t0 = int(rows.read_ts(0, 1)[0])
    t1 = int(rows.read_ts(rows.T - 1, rows.T)[0])
    return validation.split_counted(t0, t1, rows.T, is_frac, purge_frac, rows.count_before)


SCALE_CHUNK = 1 << 16  # columns per step of row_scale: fixed, so the result never depends on a budget
SCALE_PIECE = 1 << 13  # columns per read inside a step


def row_scale(read, lo: int, hi: int, K: int) -> np.ndarray:
    """Per bank row, the sample standard deviation (ddof 1) of its finite values over columns
    [lo, hi), read SCALE_CHUNK columns at a time by `read(a, b)` -> [K, b - a]: sums run in that
    fixed order, so a bank in memory and one read from disk give the same bits. Each step's
    columns are read SCALE_PIECE at a time into one reused float32 buffer and summed one bank
    row at a time (the same bits as summing the [K, n] block along its rows): the temporaries
    are one row of a step in float64, not the block."""
    n = np.zeros(K, np.int64)
    total = np.zeros(K, np.float64)
    block = np.empty(K * min(SCALE_CHUNK, max(0, hi - lo)), np.float32)
    for v in _scale_steps(read, lo, hi, K, block):
        for k in range(K):
            x = v[k].astype(np.float64)
            finite = np.isfinite(x)
            n[k] += finite.sum()
            total[k] += np.where(finite, x, 0.0).sum()
    with np.errstate(all="ignore"):
        mean = total / np.maximum(n, 1)
        sq = np.zeros(K, np.float64)
        for v in _scale_steps(read, lo, hi, K, block):
            for k in range(K):
                x = v[k].astype(np.float64)
                sq[k] += np.where(np.isfinite(x), (x - mean[k]) ** 2, 0.0).sum()
        return np.sqrt(sq / np.maximum(n - 1, 1))


def _scale_steps(read, lo: int, hi: int, K: int, block: np.ndarray):
    """row_scale's steps: [K, n] float32 views of `block` holding columns [a, a + n)."""
    for a in range(lo, hi, SCALE_CHUNK):
        b = min(hi, a + SCALE_CHUNK)
        v = block[:K * (b - a)].reshape(K, b - a)
        for c in range(a, b, SCALE_PIECE):
            d = min(b, c + SCALE_PIECE)
            v[:, c - a:d - a] = read(c, d)
        yield v


class WindowSlots:
    """The two window buffers of a streamed run (module doc): window i is read into slot
    i % 2, each the book fields and trades of up to `rows` rows (rows.WindowBuffer) and
    the bank's columns of those rows. The two share one ChunkReader and the scratch a
    DiskBank read passes through (the reader thread fills one slot at a time)."""

    def __init__(self, store_rows, K: int, rows: int, chunks=None):
        from gpu_engine.data.books.chunks import ChunkReader
        from gpu_engine.data.books.rows import WindowBuffer

        self.rows, self.K = max(1, int(rows)), int(K)
        self.key = _slots_key(store_rows, K)
        self.chunks = ChunkReader() if chunks is None else chunks
        self.book = [WindowBuffer(store_rows, self.rows, self.chunks) for _ in range(2)]
        self.bank = [np.empty(self.K * self.rows, np.float32) for _ in range(2)]
        self.scratch = np.empty(self.K * self.rows, np.float32)  # one: read, then copied out

    def bank_out(self, i: int, n: int) -> np.ndarray:
        """Slot i % 2's bank columns of an n-row window: [K, n], C-contiguous."""
        return self.bank[i % 2][:self.K * n].reshape(self.K, n)


def _slots_key(store_rows, K: int) -> tuple:
    return (int(store_rows.depth), int(K),
            tuple(str(p.book[name].dtype) for p in store_rows.parts[:1] for name in ("ts", "bid_px", "bid_sz")))


_FREE_SLOTS: list[WindowSlots] = []
_SLOTS_LOCK = threading.Lock()


def _take_slots(store_rows, K: int, rows: int) -> WindowSlots:
    """Window buffers for windows of up to `rows` rows: the kept ones when they fit, else new
    ones of that size (with the kept ones' ChunkReader: its chunk buffers stay)."""
    key = _slots_key(store_rows, K)
    chunks = None
    with _SLOTS_LOCK:
        for k, slots in enumerate(_FREE_SLOTS):
            if slots.key == key:
                del _FREE_SLOTS[k]
                if slots.rows >= rows:
                    return slots
                chunks = slots.chunks
                break
    return WindowSlots(store_rows, K, rows, chunks)


def _keep_slots(slots: WindowSlots) -> None:
    with _SLOTS_LOCK:
        _FREE_SLOTS.insert(0, slots)
        del _FREE_SLOTS[2:]  # two runs at a time at most keep theirs


def reserve_buffers(store_rows, K: int, rows: int) -> None:
    """Allocate the window buffers of windows of up to `rows` rows now and keep them for the
    runs to come: a caller that knows its largest window (sweeps/_common.py: the plan of one
    configuration) then never has them replaced by bigger ones half-way."""
    _keep_slots(_take_slots(store_rows, K, rows))


def release_buffers() -> None:
    """Free the window buffers kept for the next streamed run."""
    with _SLOTS_LOCK:
        _FREE_SLOTS.clear()


class _Reader:
    """A long-lived background thread that runs the reading jobs of `prefetched`, one at a
    time, and goes back to the idle list after each."""

    def __init__(self):
        self.jobs: queue_mod.Queue = queue_mod.Queue()
        self.thread = threading.Thread(target=self._loop, name="window-reader", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job()
            finally:
                # drop the finished job before waiting for the next: it holds the run's window
                # buffers (release_buffers must be able to free them)
                job = None
                with _READERS_LOCK:
                    _IDLE_READERS.append(self)


_IDLE_READERS: list[_Reader] = []
_READERS_LOCK = threading.Lock()


def _submit(job: Callable[[], None]) -> None:
    """Run `job` on an idle reader thread (a new one only when every reader is busy)."""
    with _READERS_LOCK:
        reader = _IDLE_READERS.pop() if _IDLE_READERS else None
    if reader is None:
        reader = _Reader()
    reader.jobs.put(job)


@atexit.register
def _stop_readers(timeout: float = 1.0) -> None:
    """Stop the idle reader threads (at exit)."""
    with _READERS_LOCK:
        readers = list(_IDLE_READERS)
        _IDLE_READERS.clear()
    for r in readers:
        r.jobs.put(None)
    for r in readers:
        r.thread.join(timeout)


def reader_threads() -> int:
    """How many reader threads are alive (idle or busy)."""
    return sum(1 for t in threading.enumerate() if t.name == "window-reader")


def prefetched(produce: Callable[[int], object], count: int, depth: int = 1):
    """Yield produce(0), produce(1), ..., produce(count - 1), each computed on a long-lived
    reader thread up to `depth` items ahead of the consumer; an exception is raised at its
    item. produce(i + depth + 1) starts only once the consumer has asked for item i + 1, so
    an item (and any buffer it lives in) stays untouched until then: at most depth + 1 items
    exist at a time (window buffers used round robin, i % (depth + 1), are never overwritten
    while in use). Closing the generator (or an error, or Ctrl-C in the consumer) stops the
    reader after the item it is computing and waits for that."""
    q: queue_mod.Queue = queue_mod.Queue()
    tokens = threading.Semaphore(max(1, depth) + 1)
    stop = threading.Event()
    done = threading.Event()

    def work():
        try:
            for i in range(count):
                while not tokens.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    item = (produce(i), None)
                except BaseException as exc:  # handed to the consumer
                    item = (None, exc)
                q.put(item)
                if item[1] is not None:
                    return
        finally:
            done.set()

    if count <= 0:
        return
    _submit(work)
    try:
        for k in range(count):
            if k:
                tokens.release()  # the consumer is through with item k - 1
            item, exc = q.get()
            if exc is not None:
                raise exc
            yield item
    finally:
        stop.set()
        done.wait()


def sweep_stream(rows, bank, configs, part: tuple[int, int] | None = None, device: str = "auto",
                 buckets: int = 16, batch: int | None = None, window: int | None = None,
                 allow_crossed: bool = False, *, contract: str = "linear", multiplier=None,
                 tick_size=None, lot_size: float = 0.0, queue: str = "risk_averse",
                 queue_n: float | None = None, progress: Callable[[int], None] | None = None):
    """gpu_engine.sweep over rows [lo, hi) of `rows` (a StoreRows), streamed (module doc)."""
    from gpu_engine import kernels, metrics
    from gpu_engine.backend import resolve
    from gpu_engine.enums import DEFAULT_QUEUE_N
    from gpu_engine.kernels.stream import Stream
    from gpu_engine.sweep import (
        _book_tick_size,
        check_market,
        market_array,
        normalize_configs,
        results_dataset,
        uses_maker,
        validate_book,
        validate_trades,
    )

    t_start = time.perf_counter()
    lo, hi = part if part is not None else (0, rows.T)
    lo, hi = int(lo), int(hi)
    if not (0 <= lo < hi <= rows.T):
        raise ValueError(f"part [{lo}, {hi}) outside the data set's {rows.T:,} rows")
    if not (isinstance(buckets, (int, np.integer)) and buckets >= 1):
        raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
    if bank.T != rows.T:
        raise ValueError(f"bank has {bank.T} ticks, the data set has {rows.T}")
    T = hi - lo
    window = T if window is None else max(1, int(window))
    backend = resolve(device)
    if tick_size is None:
        tick_size = _book_tick_size(rows)
    qn = DEFAULT_QUEUE_N if queue_n is None else queue_n
    mkt = market_array(contract, multiplier, tick_size, lot_size, queue, qn)
    cfg = normalize_configs(configs, bank.K)
    check_market(cfg, mkt)
    maker = bool(uses_maker(cfg).any())
    C = int(cfg["signal"].shape[0])
    order = np.lexsort((cfg["regime"], cfg["signal"]))
    sorted_cfg = {k: np.ascontiguousarray(v[order]) for k, v in cfg.items()}
    stream = Stream(backend, sorted_cfg, int(buckets), total=T, market=mkt, trades=maker,
                    batch=batch or kernels.DEFAULT_BATCH)
    first_ns = int(rows.read_ts(lo, lo + 1)[0])
    bounds = [(g0, min(hi, g0 + window)) for g0 in range(lo, hi, window)]
    last_ts = [None]
    slots = _take_slots(rows, bank.K, min(window, T))

    def produce(i):
        g0, g1 = bounds[i]
        book = rows.read(g0, g1, trades=maker, since_ns=first_ns if g0 == lo else None,
                         out=slots.book[i % 2])
        try:
            validate_book(book, allow_crossed=allow_crossed)
            if maker:
                validate_trades(book)
        except ValueError as exc:
            raise ValueError(f"rows [{g0:,}, {g1:,}) of the data set (row numbers relative to "
                             f"the window): {exc}") from None
        if last_ts[0] is not None and int(book.ts[0]) < last_ts[0]:
            raise ValueError(f"book.ts is not non-decreasing at row {g0:,}")
        last_ts[0] = int(book.ts[-1])
        cols = bank.read(g0, g1, out=slots.bank_out(i, g1 - g0), scratch=slots.scratch)
        return g1 - g0, stream.prepare(book), cols

    for n, prepared, cols in prefetched(produce, len(bounds), depth=1):
        stream.feed(prepared, cols)
        if progress:
            progress(n)
    _keep_slots(slots)  # the reader is through with them (after an error they are dropped)
    raw, bpnl, btr, bwin = stream.finish()
    inv = np.empty_like(order)
    inv[order] = np.arange(C)
    raw, bpnl, btr, bwin = raw[inv], bpnl[inv], btr[inv], bwin[inv]
    table_m = metrics.finish(raw, bpnl, cfg["capital"], T)
    return results_dataset(table_m, bpnl, btr, bwin, cfg, mkt, backend, T, int(buckets),
                           contract, queue, getattr(bank, "names", None), t_start)
