"""`PriceLevelBook`: a local L2 book (price -> absolute size, both sides) for every feed reader.

Each side is a dict price -> size plus a sorted list of its prices kept with
`bisect` (bids stored negated, so both lists ascend from the best level). A
level update is O(log n) to find plus a memmove of at most a few thousand
floats; `top(L)` reads the first L entries. Sizes are absolute: size 0 deletes
the level (deleting a level the book does not hold is normal and ignored).

Inputs are floats already parsed and checked by the reader (finite price > 0,
finite size >= 0); `parse_levels` does that for the usual `[[price, size], ...]`
string lists and raises `LevelError` naming the bad field.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Iterable

import numpy as np


class LevelError(ValueError):
    """A price/size pair that cannot be applied. `kind` is 'bad_number' or 'negative_size'."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


_PAIR_TYPES = frozenset({list, tuple})


def parse_levels(levels, field: str = "levels") -> list[tuple[float, float]]:
    """`[[price, size, ...], ...]` (strings or numbers) -> [(price, size)] floats, validated.

    Raises LevelError('bad_number') for a non-number / non-finite / non-positive price
    or a non-number size, LevelError('negative_size') for a size < 0.
    """
    if type(levels) is not list or not _PAIR_TYPES.issuperset(map(type, levels)):
        raise LevelError("bad_number", f"{field}: not a list of [price, size] lists")
    try:
        try:
            out = [(float(p), float(q)) for p, q in levels]  # [price, size] pairs (Binance, Coinbase)
        except ValueError:
            out = [(float(lv[0]), float(lv[1])) for lv in levels]  # longer rows (OKX)
    except (TypeError, ValueError, IndexError, KeyError):
        return _parse_levels_slow(levels, field)
    inf = math.inf
    for p, q in out:
        if not (0.0 < p < inf and 0.0 <= q < inf):  # also false for NaN
            return _parse_levels_slow(levels, field)
    return out


def _parse_levels_slow(levels, field: str) -> list[tuple[float, float]]:
    """One level at a time, to name the bad one."""
    out = []
    try:
        for lv in levels:
            p = float(lv[0])
            q = float(lv[1])
            if q < 0.0:
                raise LevelError("negative_size", f"{field}: negative size {lv[1]!r} at price {lv[0]!r}")
            if not (0.0 < p < math.inf and q < math.inf):  # also rejects NaN
                raise LevelError("bad_number", f"{field}: price/size not a finite number: {lv!r}")
            out.append((p, q))
    except LevelError:
        raise
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise LevelError("bad_number", f"{field}: not a [price, size] list of numbers ({exc})") from None
    return out


class PriceLevelBook:
    """Both sides of an L2 book with absolute-size level updates."""

    __slots__ = ("bids", "asks", "_bk", "_ak", "_bc", "_ac")

    def __init__(self):
        self.bids: dict[float, float] = {}  # read-only outside this class (the top caches)
        self.asks: dict[float, float] = {}
        self._bk: list[float] = []  # negated bid prices, ascending (best first)
        self._ak: list[float] = []  # ask prices, ascending (best first)
        self._bc: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # L -> cached top-L bid (px, sz)
        self._ac: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self._bk.clear()
        self._ak.clear()
        self._bc.clear()
        self._ac.clear()

    def apply_snapshot(self, bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]]) -> None:
        """Replace the whole book (levels with size 0 are dropped)."""
        self.clear()
        for p, q in bids:
            if q > 0.0:
                self.bids[p] = q
        for p, q in asks:
            if q > 0.0:
                self.asks[p] = q
        self._bk = sorted(-p for p in self.bids)
        self._ak = sorted(self.asks)
        self._bc.clear()
        self._ac.clear()

    def set_bid(self, p: float, q: float) -> None:
        self._bc.clear()
        d = self.bids
        if q > 0.0:
            if p not in d:
                keys = self._bk
                keys.insert(bisect_left(keys, -p), -p)
            d[p] = q
        elif p in d:
            del d[p]
            keys = self._bk
            del keys[bisect_left(keys, -p)]

    def set_ask(self, p: float, q: float) -> None:
        self._ac.clear()
        d = self.asks
        if q > 0.0:
            if p not in d:
                keys = self._ak
                keys.insert(bisect_left(keys, p), p)
            d[p] = q
        elif p in d:
            del d[p]
            keys = self._ak
            del keys[bisect_left(keys, p)]

    def update(self, bids: Iterable[tuple[float, float]] = (), asks: Iterable[tuple[float, float]] = ()) -> None:
        """Apply absolute level sizes on both sides (0 deletes); set_bid/set_ask in a batch."""
        if _update_side(self.bids, self._bk, bids, True, max(self._bc, default=0)):
            self._bc.clear()
        if _update_side(self.asks, self._ak, asks, False, max(self._ac, default=0)):
            self._ac.clear()

    # -- reading
    def best_bid(self) -> tuple[float, float]:
        """(price, size) of the best bid, (NaN, 0) when empty."""
        if self._bk:
            p = -self._bk[0]
            return p, self.bids[p]
        return math.nan, 0.0

    def best_ask(self) -> tuple[float, float]:
        if self._ak:
            p = self._ak[0]
            return p, self.asks[p]
        return math.nan, 0.0

    def crossed(self) -> bool:
        """Best bid >= best ask (crossed or locked); False when a side is empty."""
        return bool(self._bk and self._ak and -self._bk[0] >= self._ak[0])

    def empty(self) -> bool:
        return not self._bk and not self._ak

    def __len__(self) -> int:
        return len(self._bk) + len(self._ak)

    def top(self, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bid_px f64[L], ask_px f64[L], bid_sz f32[L], ask_sz f32[L]); absent levels NaN / 0.

        The arrays are read-only: a side whose top L did not change since the last call
        returns the same arrays again (copy before modifying).
        """
        b = self._bc.get(L)
        if b is None:
            b = self._bc[L] = _side_top(self._bk, self.bids, L, True)
        a = self._ac.get(L)
        if a is None:
            a = self._ac[L] = _side_top(self._ak, self.asks, L, False)
        return b[0], a[0], b[1], a[1]

    def levels(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Every level, best first: ([(bid px, size)...], [(ask px, size)...])."""
        return ([(-k, self.bids[-k]) for k in self._bk], [(k, self.asks[k]) for k in self._ak])


def _side_top(keys: list, d: dict, L: int, negate: bool) -> tuple[np.ndarray, np.ndarray]:
    ks = keys[:L]
    sz = [d[-k] for k in ks] if negate else [d[k] for k in ks]
    if len(ks) < L:
        pad = L - len(ks)
        ks = ks + [math.nan] * pad
        sz = sz + [0.0] * pad
    px = np.array(ks)
    if negate:
        np.negative(px, out=px)
    sz = np.array(sz, np.float32)
    px.flags.writeable = False
    sz.flags.writeable = False
    return px, sz


def _update_side(d: dict, keys: list, levels, negate: bool, L: int) -> bool:
    """set_bid / set_ask for a batch of levels, inlined for speed (import bar).
    Returns whether the top `L` levels may have changed (L = 0: not tracked)."""
    thr = keys[L - 1] if 0 < L <= len(keys) else math.inf  # a key <= thr is within the top L
    touched = False
    for p, q in levels:
        k = -p if negate else p
        if k <= thr:
            touched = True
        if q > 0.0:
            if p not in d:
                keys.insert(bisect_left(keys, k), k)
            d[p] = q
        elif p in d:
            del d[p]
            del keys[bisect_left(keys, k)]
    return touched
