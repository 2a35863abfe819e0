"""CPU sweep kernel: numba `njit(parallel=True)`, prange over configurations, ticks inner.

Each configuration's state lives in local scalars inside `strategy.run_config` (the
layout STACK.md measured fastest: configurations outer, ticks inner). The kernel writes
raw sums [C, NRAW] and bucket arrays [C, B] into caller-provided arrays, so the caller can
batch configurations into slices of preallocated outputs.
"""
from __future__ import annotations

import numba
from numba import prange

from gpu_engine.strategy import run_config


@numba.njit(parallel=True, cache=True, nogil=True)
def sweep_cpu(ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank,
              signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
              size_frac, max_qty, cooldown, fee_bps, latency, capital,
              raw, bpnl, btr, bwin):
    for c in prange(signal.shape[0]):
        run_config(c, ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, bank,
                   signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                   size_frac, max_qty, cooldown, fee_bps, latency, capital,
                   raw, bpnl, btr, bwin)
