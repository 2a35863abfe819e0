"""Canonical L2 book store (Zarr, ARCHITECTURE section 3) and the in-memory `Book` it loads into.

`Book` is the contract every consumer reads (features, kernels, oracle, sweeps):
  ts      int64   [T]     exchange event time, ns, non-decreasing
  seq     int64   [T]     exchange update id after the row, -1 where the feed has none
  bid_px  float64 [T, L]  level 0 best; absent level -> NaN price, size 0
  ask_px  float64 [T, L]
  bid_sz  float32 [T, L]
  ask_sz  float32 [T, L]
  trades  Trades | None   ts int64 ns, px float64, qty float64, side int8 (+1 buy aggressor, -1 sell)
  attrs   dict            exchange, symbol, depth, tick_size, lot_size, source, schema_version, gaps, ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class Trades:
    ts: np.ndarray
    px: np.ndarray
    qty: np.ndarray
    side: np.ndarray

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
