"""CPU sweep kernel: numba `njit(parallel=True)`, tick chunks outer, prange over configurations.

The book does not fit in cache at T = 1e6 (~480 B per tick), so running each configuration
over all ticks makes every fill's depth walk miss to DRAM. Here ticks are processed in chunks
of `chunk` ticks; inside a chunk a prange over configurations runs `strategy.run_ticks` for
each one, so the chunk's book rows are read from DRAM once and then served from cache to
every configuration. Each configuration's state (strategy.py: NSTATE_F floats, NSTATE_I
integers) is carried across chunk boundaries in two arrays [C, NSTATE_F] float64 and
[C, NSTATE_I] int64; inside a chunk it lives in local scalars. The results do not depend on
the chunk size (tests/test_kernel_chunks.py), they equal the single-call `run_config`.

The kernel writes raw sums [C, NRAW] and bucket arrays [C, B] into caller-provided arrays,
so the caller can batch configurations into slices of preallocated outputs.

Compiled once per machine, not per process: the kernel is cached on disk by
kernels/cache.py (`DISK_CACHE` is its folder, None when there is none), keyed by the source
text of this file and of every gpu_engine module it imports (strategy.py, enums.py,
metrics.py, ...), the numba version and the CPU. Not numba's plain `cache=True`: its key
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
            fs[c, 8], fs[c, 9],
            ist[c, 0], ist[c, 1], ist[c, 2], ist[c, 3], ist[c, 4], ist[c, 5], ist[c, 6])


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
    ist[c, 0] = st[10]
    ist[c, 1] = st[11]
    ist[c, 2] = st[12]
    ist[c, 3] = st[13]
    ist[c, 4] = st[14]
    ist[c, 5] = st[15]
    ist[c, 6] = st[16]


@numba.njit(parallel=True, nogil=True)
def sweep_cpu(ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank,
              signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
              size_frac, max_qty, cooldown, fee_bps, latency, capital,
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
            book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank)
            cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                   size_frac, max_qty, cooldown, fee_bps, latency, capital)
            store_state(fs, ist, c, run_ticks(c, t0, t1, book, cfg, raw, bpnl, btr, bwin,
                                              load_state(fs, ist, c)))
    for c in prange(C):
        book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank)
        cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
               size_frac, max_qty, cooldown, fee_bps, latency, capital)
        finish_config(c, book, cfg, raw, bpnl, btr, bwin, load_state(fs, ist, c))


# On-disk cache keyed by all the sources above (kernels/cache.py); None: compiled in memory.
DISK_CACHE = _cache.enable(sweep_cpu, "cpu")
