"""`Market`: the book arrays on the device plus block-derived columns aligned to each tick by time.

What the feature bank and the kernels read (books on the device, block columns aligned by
time). Built once per book:

    market = Market.from_book(book, blocks=None, device="auto")

Columns (xp = numpy or cupy, from `gpu_engine.backend`; T ticks, L levels):

  ts                int64   [T]     exchange time, ns (copied from the Book)
  bid_px, ask_px    float64 [T, L]  level 0 best; absent level NaN price, size 0
  bid_sz, ask_sz    float32 [T, L]
  trade_tick        int64   [N]     tick each trade is aligned to (see below), or None
  trade_qty         float64 [N]     trade quantity (NaN -> 0), or None
  trade_side        int8    [N]     +1 buyer-initiated, -1 seller-initiated, 0 unknown, or None
  block_height      int64   [T]     height of the block known at the tick, -1 if none
  block_time        float64 [T]     unix s of that block, NaN if none (or no block dataset)
  prev_block_time   float64 [T]     unix s of the block before it, NaN if none
  fair_pl           float64 [T]     power-law fair value, USD, NaN if undefined
  halving_phase     float64 [T]     (height mod 210,000) / 210,000, NaN if no height

With a block dataset the Market also keeps the host dataset (`blocks`) and, per tick, the index
of the known block (`block_index`, host int64, -1 if none); `block_column(name)` gives one
column of the dataset on the device as float64 [N blocks] (the unknown -1 of the header fields
as NaN), built on first use and cached, for features that aggregate over the blocks up to the
known one (gpu_engine/features_longterm.py).

Alignment rules (all causal: the value at tick t depends on ts[t] and on data stamped <= ts[t]):

* A trade belongs to the first tick whose ts >= the trade's ts, so at tick t the trades seen are
  exactly those with ts <= ts[t]; trades stamped after the last tick are dropped.
* Ticks are converted to unix seconds by floor division (ts // 1e9). The block known at a tick is
  the last block of the longest prefix of the chain whose header times are all <= that second
  (block header times are not monotonic: Bitcoin only requires a header time above the median of
  the previous 11 blocks; taking the running maximum of the times means a block counts as known
  only once every earlier block is). `fair_pl` is the dataset's `fair_pl` of that block.
* Without a block dataset (`blocks=None`) `block_source` is "model": the fair value is the
  Santostasi power law A * d^n (A = 1.0117e-17, n = 5.82, d = days since 2009-01-03 00:00 UTC,
  as charted at charts.bgeometrics.com/power_law.html) evaluated at the tick's own time, and the
  height is approximated from time by linear interpolation between the header times of the
  genesis block and the four halvings (`HEIGHT_ANCHORS`), extrapolated at
  600 s per block after the last one; block times are then unknown (NaN).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_engine.backend import Backend, resolve

HALVING_INTERVAL = 210_000
NS_PER_S = 1_000_000_000
# Santostasi power law (charts.bgeometrics.com/power_law.html): price = A * d^n, d = days since
# 2009-01-03.
POWER_LAW_A = 1.0117e-17
POWER_LAW_N = 5.82
POWER_LAW_DAY0_UNIX = 1_230_940_800  # 2009-01-03 00:00:00 UTC
# (height, unix s) anchors for the approximate height: block header times of the genesis block
# and the halvings (public block explorers). The 900,000 entry
# is day-level only (2025-06-06, taken at 12:00 UTC).
HEIGHT_ANCHORS = (
    (0, 1_231_006_505),
    (210_000, 1_354_116_278),
    (420_000, 1_468_082_773),
    (630_000, 1_589_225_023),
    (840_000, 1_713_571_767),
    (900_000, 1_749_211_200),
)
TARGET_SPACING_S = 600


def power_law_fair(unix_s: np.ndarray) -> np.ndarray:
    """A * d^n at the given unix seconds (float64); NaN where d <= 0."""
    d = (np.asarray(unix_s, dtype=np.float64) - POWER_LAW_DAY0_UNIX) / 86_400.0
    out = np.full(d.shape, np.nan)
    ok = d > 0
    out[ok] = POWER_LAW_A * d[ok] ** POWER_LAW_N
    return out


def approx_height(unix_s: np.ndarray) -> np.ndarray:
    """Approximate block height at the given unix seconds (int64); -1 before genesis."""
    t = np.asarray(unix_s, dtype=np.float64)
    hs = np.array([h for h, _ in HEIGHT_ANCHORS], dtype=np.float64)
    us = np.array([u for _, u in HEIGHT_ANCHORS], dtype=np.float64)
    h = np.interp(t, us, hs)
    after = t > us[-1]
    h[after] = hs[-1] + (t[after] - us[-1]) / TARGET_SPACING_S
    h = np.floor(h).astype(np.int64)
    h[t < us[0]] = -1
    return h


def _load_blocks(blocks: Any) -> np.ndarray:
    if isinstance(blocks, (str, os.PathLike)):
        try:
            from gpu_engine.data.blocks.dataset import load  # the block dataset's own loader
        except ImportError:  # pragma: no cover - until data/blocks.py exists
            return np.load(blocks, mmap_mode="r")
        return load(blocks)
    arr = np.asarray(blocks)
    names = arr.dtype.names or ()
    missing = [f for f in ("height", "time") if f not in names]
    if missing:
        raise ValueError(f"blocks: structured array lacks field(s) {missing}; has {list(names)}")
    return arr


def align_blocks(ts_ns: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Index into `blocks` of the block known at each tick (-1 if none); see the module doc."""
    tick_s = np.asarray(ts_ns, dtype=np.int64) // NS_PER_S
    if len(blocks) == 0:
        return np.full(tick_s.shape, -1, np.int64)
    return np.searchsorted(_envelope(blocks), tick_s, side="right").astype(np.int64) - 1


def _envelope(blocks: np.ndarray) -> np.ndarray:
    """Running maximum of the block times. A read-only dataset (a loaded one: memory-mapped)
    has it computed once and cached (gpu_engine.data.blocks.dataset.known_times), so a book
    aligned window by window (gpu_engine.features_stream) does not rescan the chain per window;
    a writeable array is scanned every time (its times may change between calls)."""
    if not blocks.flags.writeable:
        from gpu_engine.data.blocks.dataset import known_times

        return known_times(blocks)
    return np.maximum.accumulate(np.asarray(blocks["time"], dtype=np.int64))


def _pick(blocks: np.ndarray, name: str, at: np.ndarray, missing, dtype) -> np.ndarray:
    """Field `name` of the blocks at indices `at` as `dtype`, `missing` where `at` < 0. Only
    the picked records are read and converted (not the whole column: a window of a book reads
    a few pages of the dataset, not the whole chain)."""
    ok = at >= 0
    if len(blocks) == 0:
        return np.full(at.shape[0], missing, dtype=dtype)
    vals = np.asarray(blocks[name][np.where(ok, at, 0)]).astype(dtype)
    return np.where(ok, vals, missing)


def align_trades(ts_ns: np.ndarray, trade_ts: np.ndarray) -> np.ndarray:
    """Tick of each trade: the first tick with ts >= the trade's ts (T when after the last tick)."""
    return np.searchsorted(np.asarray(ts_ns, np.int64), np.asarray(trade_ts, np.int64), side="left")


@dataclass
class Market:
    backend: Backend
    ts: Any
    bid_px: Any
    ask_px: Any
    bid_sz: Any
    ask_sz: Any
    block_height: Any
    block_time: Any
    prev_block_time: Any
    fair_pl: Any
    halving_phase: Any
    block_source: str
    trade_tick: Any = None
    trade_qty: Any = None
    trade_side: Any = None
    book: Any = None
    attrs: dict = field(default_factory=dict)
    blocks: Any = None         # the host block dataset (None without one)
    block_index: Any = None    # host int64 [T]: index into `blocks` of the block known at each tick, -1 none
    _block_cols: dict = field(default_factory=dict, repr=False)

    # header fields whose unknown value is -1 (gpu_engine/data/blocks/dataset.py)
    UNKNOWN_MINUS_ONE = ("median_time", "tx_count", "size_bytes", "weight_wu", "fees_sat")

    def block_column(self, name: str):
        """Column `name` of the block dataset on the device, float64 [N]; NaN where unknown.
        None without a block dataset or when the dataset has no such column."""
        if self.blocks is None or name not in (self.blocks.dtype.names or ()):
            return None
        if name not in self._block_cols:
            col = np.asarray(self.blocks[name], dtype=np.float64)
            if name in self.UNKNOWN_MINUS_ONE:
                col = np.where(col < 0, np.nan, col)
            self._block_cols[name] = self.backend.to_device(np.ascontiguousarray(col))
        return self._block_cols[name]

    @property
    def xp(self):
        return self.backend.xp

    @property
    def T(self) -> int:
        return int(self.ts.shape[0])

    @property
    def depth(self) -> int:
        return int(self.bid_px.shape[1])

    @property
    def has_trades(self) -> bool:
        return self.trade_tick is not None

    @classmethod
    def from_book(cls, book, blocks: Any = None, device: str = "auto") -> "Market":
        """Copy the book to the device and align the block columns (see the module docstring)."""
        backend = device if isinstance(device, Backend) else resolve(device)
        ts = np.asarray(book.ts, dtype=np.int64)
        T = ts.shape[0]
        if ts.ndim != 1:
            raise ValueError(f"book.ts must be 1-D, got shape {ts.shape}")
        for name in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
            a = np.asarray(getattr(book, name))
            if a.ndim != 2 or a.shape[0] != T:
                raise ValueError(f"book.{name} must be [T={T}, L], got shape {a.shape}")
        if T > 1 and np.any(np.diff(ts) < 0):
            bad = int(np.argmax(np.diff(ts) < 0)) + 1
            raise ValueError(f"book.ts must be non-decreasing; ts[{bad}] < ts[{bad - 1}]")

        tick_s = ts // NS_PER_S
        blk = idx = None
        if blocks is not None:
            blk = _load_blocks(blocks)
            idx = align_blocks(ts, blk)
            height = _pick(blk, "height", idx, -1, np.int64)
            block_time = _pick(blk, "time", idx, np.nan, np.float64)
            prev_block_time = _pick(blk, "time", np.where(idx >= 1, idx - 1, -1), np.nan, np.float64)
            if "fair_pl" in (blk.dtype.names or ()):
                fair_pl = _pick(blk, "fair_pl", idx, np.nan, np.float64)
            else:
                fair_pl = power_law_fair(tick_s)
            source = "blocks"
        else:
            height = approx_height(tick_s)
            block_time = np.full(T, np.nan)
            prev_block_time = np.full(T, np.nan)
            fair_pl = power_law_fair(tick_s)
            source = "model"
        phase = np.where(height >= 0, (height % HALVING_INTERVAL) / HALVING_INTERVAL, np.nan)

        dev = backend.to_device
        trade_tick = trade_qty = trade_side = None
        trades = getattr(book, "trades", None)
        if trades is not None and len(trades) > 0:
            tt = align_trades(ts, trades.ts)
            keep = tt < T
            trade_tick = dev(tt[keep].astype(np.int64))
            trade_qty = dev(np.nan_to_num(np.asarray(trades.qty, np.float64)[keep], nan=0.0))
            trade_side = dev(np.sign(np.asarray(trades.side, np.float64)[keep]).astype(np.int8))
        return cls(
            backend=backend,
            ts=dev(ts),
            bid_px=dev(np.asarray(book.bid_px, np.float64)),
            ask_px=dev(np.asarray(book.ask_px, np.float64)),
            bid_sz=dev(np.asarray(book.bid_sz, np.float32)),
            ask_sz=dev(np.asarray(book.ask_sz, np.float32)),
            block_height=dev(height.astype(np.int64)),
            block_time=dev(block_time.astype(np.float64)),
            prev_block_time=dev(prev_block_time.astype(np.float64)),
            fair_pl=dev(fair_pl.astype(np.float64)),
            halving_phase=dev(phase.astype(np.float64)),
            block_source=source,
            trade_tick=trade_tick,
            trade_qty=trade_qty,
            trade_side=trade_side,
            book=book,
            attrs=dict(getattr(book, "attrs", {}) or {}),
            blocks=blk,
            block_index=idx,
        )
