"""A book fed to the kernels window by window, each configuration's state carried between
windows on the backend's device: bounded memory for books longer than memory.

    stream = Stream(backend, cfg, buckets, total=T, market=mkt)
    for rows in windows_of_the_book:            # consecutive Book-like slices, in time order
        window = stream.prepare(rows)           # kernels.prepare_window with the stream's carry
        stream.feed(window, bank[:, g0:g1])     # the bank columns of the same rows
    raw, bucket_pnl, bucket_trades, bucket_wins = stream.finish()

gives the bits of `kernels.run(backend, prepare_book(whole_book), bank, cfg, buckets)`
(tests/test_stream_kernel.py), for any split of the rows into windows. `total` (the book's
row count) must be known before the first window: the buckets and the last-tick rules are
global (strategy.py). The window that holds tick 0 starts every configuration's state
(strategy.init_state) and the one that holds tick T - 1 closes what is open; between them the
state lives in fs [C, NSTATE_F] float64 and ist [C, NSTATE_I] int64 arrays on the device
(CPU: host arrays, kernels.cpu.sweep_cpu with the window flags; CUDA: device arrays,
kernels.cuda.window_cuda), next to the outputs, so nothing but the window's rows and bank
columns crosses to the device per window.

`prepare` (host work: the top-of-book helpers, trade ranges, the copy to the device) may run
in another thread while the previous window runs (both kernels release the GIL), as long as
windows are prepared and fed in order; `feed` checks that each window continues the last.
`Stream.run(windows)` does that: it reads and prepares the next window in a background
thread while the current one runs, so at most two windows are in memory at a time.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np

from gpu_engine.backend import Backend
from gpu_engine.enums import CONFIG_FIELDS, NMARKET, NRAW
from gpu_engine.kernels import (
    BOOK_DTYPES,
    DEFAULT_BATCH,
    FIELDS,
    STARTUP,
    BookArrays,
    Carry,
    _cpu_input,
    _load_cpu_kernel,
    allocate,
    allocate_state,
    check_chunk,
    default_market,
    prepare_window,
    with_defaults,
)


class Stream:
    """Configurations run over a book of `total` rows fed window by window (module doc).

    backend, cfg, buckets, batch, chunk: as for kernels.run (cfg: typed host arrays in
    CONFIG_FIELDS order, missing fields at their defaults). market: enums.MARKET_FIELDS
    (None = rules v1), trades: whether windows carry their trades (only maker orders read
    them): both as for prepare_book, used by `prepare`.
    """

    def __init__(self, backend: Backend, cfg: dict[str, np.ndarray], buckets: int, total: int,
                 market=None, trades: bool = True, batch: int = DEFAULT_BATCH,
                 chunk: int | None = None):
        check_chunk(chunk)
        total = int(total)
        if total < 1:
            raise ValueError(f"total must be the book's row count, >= 1, got {total}")
        self.backend = backend
        self.total = total
        self.buckets = int(buckets)
        self.market = default_market() if market is None else np.ascontiguousarray(market, np.float64)
        if self.market.shape != (NMARKET,):
            raise ValueError(f"market must be a float64 array of {NMARKET} values, "
                             f"got shape {self.market.shape}")
        self.trades = bool(trades)
        self.carry = Carry()  # what the windows prepared so far leave to the next
        self.fed = 0  # rows run so far
        C = int(cfg[FIELDS[0]].shape[0])
        self.C = C
        cfg = with_defaults(cfg, C)
        batch = max(1, int(batch))
        self._ranges = [(lo, min(C, lo + batch)) for lo in range(0, C, batch)]
        if backend.is_cuda:
            xp = backend.xp
            B = self.buckets
            self._out = None
            self._batches = []
            for lo, hi in self._ranges:
                n = hi - lo
                dcfg = tuple(backend.to_device(np.ascontiguousarray(cfg[f][lo:hi])) for f in FIELDS)
                dout = (xp.zeros((n, NRAW), xp.float64), xp.zeros((n, B), xp.float64),
                        xp.zeros((n, B), xp.int32), xp.zeros((n, B), xp.int32))
                dstate = tuple(backend.to_device(a) for a in allocate_state(n))
                self._batches.append((dcfg, dout, dstate))
        else:
            from gpu_engine.kernels.cpu import DEFAULT_CHUNK

            self._step = np.int64(chunk if chunk is not None else DEFAULT_CHUNK)
            self._out = allocate(C, self.buckets)
            self._fs, self._ist = allocate_state(C)
            self._batches = [tuple(_cpu_input(cfg[f][lo:hi], CONFIG_FIELDS[f][0]) for f in FIELDS)
                             for lo, hi in self._ranges]

    def prepare(self, rows) -> BookArrays:
        """The next window's arrays on the device (kernels.prepare_window from this stream's
        carry, which it advances): `rows` is a Book-like slice of the rows after the last
        window prepared, with the trades published after those (module doc)."""
        window, self.carry = prepare_window(rows, self.backend, self.total, self.carry,
                                            self.market, self.trades)
        return window

    def feed(self, window: BookArrays, bank) -> None:
        """Run every configuration over the window (from `prepare`), with `bank` [K, n] the
        feature bank's columns of the window's rows; the state stays on the device."""
        if window.total != self.total or window.offset != self.fed:
            raise ValueError(f"window of rows [{window.offset}, {window.offset + window.T}) of "
                             f"{window.total} does not continue the {self.fed} rows fed of "
                             f"{self.total}: prepare and feed windows in order")
        n = window.T
        if tuple(np.shape(bank))[1:] != (n,) or len(np.shape(bank)) != 2:
            raise ValueError(f"bank must be [K, {n}] (the window's columns), got {np.shape(bank)}")
        if n == 0:
            return
        from gpu_engine.strategy import WIN_FIRST, WIN_LAST

        flags = (WIN_FIRST if self.fed == 0 else 0) | (WIN_LAST if self.fed + n == self.total else 0)
        if self.backend.is_cuda:
            from gpu_engine.kernels import cuda as kcuda

            dbank = self.backend.to_device(bank)
            args = window.as_args() + (dbank,)
            for (lo, hi), (dcfg, dout, dstate) in zip(self._ranges, self._batches):
                kcuda.launch(args + dcfg + dout + dstate + (np.int64(flags),), hi - lo,
                             kernel=kcuda.window_cuda)
        else:
            from gpu_engine.kernels.cpu import sweep_cpu

            hbook = tuple(_cpu_input(a, dt) for a, dt in zip(window.as_args(), BOOK_DTYPES))
            hbank = _cpu_input(bank, np.float32)
            for (lo, hi), args in zip(self._ranges, self._batches):
                call = (hbook + (hbank,) + args + tuple(o[lo:hi] for o in self._out)
                        + (self._step, self._fs[lo:hi], self._ist[lo:hi], np.int64(flags)))
                if not STARTUP:
                    _load_cpu_kernel(sweep_cpu, call)
                sweep_cpu(*call)
        self.fed += n

    def push(self, rows, bank) -> None:
        """prepare + feed of the next window's rows and bank columns."""
        self.feed(self.prepare(rows), bank)

    def run(self, windows: Iterable, prefetch: bool = True):
        """Feed every window of `windows` (an iterable of (rows, bank) pairs: the Book-like
        slice of the rows after the last window and the bank columns [K, n] of those rows, in
        order) and return `finish()`. With `prefetch`, the next pair is read from the
        iterable and prepared (prepare_window, its bank put on the device) in a background
        thread while the current window runs; an error there is raised here."""
        it = iter(windows)

        def load_next():
            for rows, bank in it:
                window = self.prepare(rows)
                if self.backend.is_cuda:
                    bank = self.backend.to_device(bank)
                else:
                    bank = np.ascontiguousarray(bank, dtype=np.float32)
                return window, bank
            return None

        if not prefetch:
            for item in iter(load_next, None):
                self.feed(*item)
            return self.finish()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-prefetch") as pool:
            pending = pool.submit(load_next)
            while True:
                item = pending.result()
                if item is None:
                    break
                pending = pool.submit(load_next)  # one at a time: prepared in order
                self.feed(*item)
        return self.finish()

    @property
    def done(self) -> bool:
        return self.fed == self.total

    def finish(self):
        """Host (raw, bucket_pnl, bucket_trades, bucket_wins), as kernels.run returns them,
        once every row has been fed."""
        if not self.done:
            raise ValueError(f"{self.fed} of the book's {self.total} rows fed: feed every "
                             "window before finish")
        if not self.backend.is_cuda:
            return self._out
        out = allocate(self.C, self.buckets)
        for (lo, hi), (_, dout, _) in zip(self._ranges, self._batches):
            for host, dev in zip(out, dout):
                host[lo:hi] = self.backend.to_host(dev)
        return out
