"""CPU sweep kernel: numba `njit(parallel=True)`, tick chunks outer, prange over configurations.

The book does not fit in cache at T = 1e6 (~480 B per tick), so running each configuration
over all ticks makes every fill's depth walk miss to DRAM. Here ticks are processed in chunks
of `chunk` ticks; inside a chunk a prange over configurations runs `strategy.run_ticks` for
each one (through `run_chunk`, a plain njit function the prange body calls), so the chunk's
book rows are read from DRAM once and then served from cache to every configuration. Each configuration's state (strategy.py: NSTATE_F floats, NSTATE_I
integers) is carried across chunk boundaries in two arrays [C, NSTATE_F] float64 and
[C, NSTATE_I] int64; inside a chunk it lives in local scalars. The results do not depend on
the chunk size (tests/test_kernel_chunks.py), they equal the single-call `run_one`.

The kernel writes raw sums [C, NRAW] and bucket arrays [C, B] into caller-provided arrays,
so the caller can batch configurations into slices of preallocated outputs.

Compiled once per machine, not per process: the kernel is cached on disk by
kernels/cache.py (`DISK_CACHE` is its folder, None when there is none), keyed by the source
text of this file and of every gpu_engine module it imports (strategy.py, enums.py,
queue.py, ...), the numba version and the CPU. Not numba's plain `cache=True`: its key
checks only this file, so an edited rule in strategy.py would silently load the old kernel.
kernels.run passes one argument type set only (kernels._cpu_args), so one compile serves
every call.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from gpu_engine.kernels import cache as _cache
from gpu_engine.strategy import (
    NSTATE_F,
    NSTATE_I,
    finish_config,
    init_state,
    reset_outputs,
    run_ticks,
)

# Ticks per chunk: the chunk's book rows (~500 B a tick with the top-of-book helpers and
# the bank rows) must stay in the per-core L2 / shared L3 while every configuration runs
# over them (benchmarks/RESULTS.md has the measurement).
DEFAULT_CHUNK = 4096


@numba.njit(inline="always")
def load_state(fs, ist, c):
    """Configuration c's state tuple (strategy.py order) from the carry arrays."""
    return (fs[c, 0], fs[c, 1], fs[c, 2], fs[c, 3], fs[c, 4], fs[c, 5], fs[c, 6], fs[c, 7],
            fs[c, 8], fs[c, 9], fs[c, 10], fs[c, 11], fs[c, 12], fs[c, 13], ist[c, 0],
            ist[c, 1], ist[c, 2], ist[c, 3], ist[c, 4], ist[c, 5], ist[c, 6], ist[c, 7],
            ist[c, 8], ist[c, 9], ist[c, 10], ist[c, 11], ist[c, 12])


@numba.njit(inline="always")
def store_state(fs, ist, c, st):
    """Write configuration c's state tuple into the carry arrays."""
    fs[c, 0] = st[0]
    fs[c, 1] = st[1]
    fs[c, 2] = st[2]
    fs[c, 3] = st[3]
    fs[c, 4] = st[4]
    fs[c, 5] = st[5]
    fs[c, 6] = st[6]
    fs[c, 7] = st[7]
    fs[c, 8] = st[8]
    fs[c, 9] = st[9]
    fs[c, 10] = st[10]
    fs[c, 11] = st[11]
    fs[c, 12] = st[12]
    fs[c, 13] = st[13]
    ist[c, 0] = st[14]
    ist[c, 1] = st[15]
    ist[c, 2] = st[16]
    ist[c, 3] = st[17]
    ist[c, 4] = st[18]
    ist[c, 5] = st[19]
    ist[c, 6] = st[20]
    ist[c, 7] = st[21]
    ist[c, 8] = st[22]
    ist[c, 9] = st[23]
    ist[c, 10] = st[24]
    ist[c, 11] = st[25]
    ist[c, 12] = st[26]


@numba.njit(nogil=True)
def run_chunk(c, t0, t1, book, cfg, raw, bpnl, btr, bwin, fs, ist):
    """Configuration c over ticks [t0, t1): its state from the carry arrays, through
    strategy.run_ticks (inlined here, state in local scalars), back into the carry arrays.

    A function of its own, called (not inlined) from the prange body: numba's parfor passes
    (copy propagation, array analysis) then see a one-call loop body instead of the whole
    rules, which cut the cold compile to about a third; a call per configuration per chunk
    of thousands of ticks costs nothing measurable."""
    store_state(fs, ist, c, run_ticks(c, t0, t1, book, cfg, raw, bpnl, btr, bwin,
                                      load_state(fs, ist, c)))


@numba.njit(nogil=True)
def finish_one(c, book, cfg, raw, bpnl, btr, bwin, fs, ist):
    """strategy.finish_config for configuration c from its carried state."""
    finish_config(c, book, cfg, raw, bpnl, btr, bwin, load_state(fs, ist, c))


@numba.njit(parallel=True, nogil=True)
def sweep_cpu(ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask,
              tr_start, tr_px, tr_qty, tr_side, mkt, bank,
              signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
              size_frac, max_qty, cooldown, fee_bps, latency, capital,
              entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency,
              raw, bpnl, btr, bwin, chunk):
    C = signal.shape[0]
    T = ts.shape[0]
    step = chunk if chunk >= 1 else T
    fs = np.empty((C, NSTATE_F), np.float64)
    ist = np.empty((C, NSTATE_I), np.int64)
    for c in prange(C):
        reset_outputs(c, raw, bpnl, btr, bwin)
        store_state(fs, ist, c, init_state(ts[0], capital[c]))
    # The output arrays are passed as themselves, never through a tuple: with a tuple
    # (raw, bpnl, btr, bwin) numba 0.68's parfor lowering lost most writes made through it
    # (tests/test_kernel_chunks.py caught it). The read-only tuples are built per body.
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        for c in prange(C):
            book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask,
                    tr_start, tr_px, tr_qty, tr_side, mkt, bank)
            cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                   size_frac, max_qty, cooldown, fee_bps, latency, capital,
                   entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
            run_chunk(c, t0, t1, book, cfg, raw, bpnl, btr, bwin, fs, ist)
    for c in prange(C):
        book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask,
                tr_start, tr_px, tr_qty, tr_side, mkt, bank)
        cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
               size_frac, max_qty, cooldown, fee_bps, latency, capital,
               entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
        finish_one(c, book, cfg, raw, bpnl, btr, bwin, fs, ist)


# On-disk cache keyed by all the sources above (kernels/cache.py); None: compiled in memory.
DISK_CACHE = _cache.enable(sweep_cpu, "cpu")
