"""CPU sweep kernel: numba `njit(parallel=True)`, tick chunks outer, prange over configurations.

The book does not fit in cache at T = 1e6 (~480 B per tick), so running each configuration
over all ticks makes every fill's depth walk miss to DRAM. Here ticks are processed in chunks
of `chunk` ticks; inside a chunk a prange over configurations runs `strategy.run_ticks` for
each one (through `run_chunk`, a plain njit function the prange body calls), so the chunk's
book rows are read from DRAM once and then served from cache to every configuration. Each
configuration's state (strategy.py: NSTATE_F floats, NSTATE_I integers) is carried across
chunk boundaries in two caller-provided arrays fs [C, NSTATE_F] float64 and ist
[C, NSTATE_I] int64; inside a chunk it lives in local scalars. The results do not depend on
the chunk size (tests/test_kernel_chunks.py), they equal the single-call `run_one`.

One call runs one window of the book (all of it for kernels.run; strategy.py explains the
window): `flags` (strategy.WIN_FIRST | WIN_LAST) says whether it is the first window (the
outputs are reset and the state started) and whether it is the last (what is open is closed
after its last tick); between windows the state stays in fs/ist (kernels/stream.py), so a
book fed window by window gives the bits of one call over it.

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
from numba import prange

from gpu_engine.kernels import cache as _cache
from gpu_engine.strategy import (
    WIN_FIRST,
    WIN_LAST,
    finish_config,
    init_state,
    load_state,
    reset_outputs,
    run_ticks,
    store_state,
)

# Ticks per chunk: the chunk's book rows (~500 B a tick with the top-of-book helpers and
# the bank rows) must stay in the per-core L2 / shared L3 while every configuration runs
# over them (benchmarks/RESULTS.md has the measurement).
DEFAULT_CHUNK = 4096


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
def sweep_cpu(ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
              tr_start, tr_px, tr_qty, tr_side, mkt, bank,
              signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
              size_frac, max_qty, cooldown, fee_bps, latency, capital,
              entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency,
              raw, bpnl, btr, bwin, chunk, fs, ist, flags):
    C = signal.shape[0]
    T = ts.shape[0]
    step = chunk if chunk >= 1 else T
    if (flags & WIN_FIRST) != 0:
        for c in prange(C):
            reset_outputs(c, raw, bpnl, btr, bwin)
            store_state(fs, ist, c, init_state(ts[0], capital[c]))
    # The output arrays are passed as themselves, never through a tuple: with a tuple
    # (raw, bpnl, btr, bwin) numba 0.68's parfor lowering lost most writes made through it
    # (tests/test_kernel_chunks.py caught it). The read-only tuples are built per body.
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        for c in prange(C):
            book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
                    tr_start, tr_px, tr_qty, tr_side, mkt, bank)
            cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                   size_frac, max_qty, cooldown, fee_bps, latency, capital,
                   entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
            run_chunk(c, t0, t1, book, cfg, raw, bpnl, btr, bwin, fs, ist)
    if (flags & WIN_LAST) != 0:
        for c in prange(C):
            book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
                    tr_start, tr_px, tr_qty, tr_side, mkt, bank)
            cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                   size_frac, max_qty, cooldown, fee_bps, latency, capital,
                   entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
            finish_one(c, book, cfg, raw, bpnl, btr, bwin, fs, ist)


# On-disk cache keyed by all the sources above (kernels/cache.py); None: compiled in memory.
DISK_CACHE = _cache.enable(sweep_cpu, "cpu")
