"""The feature bank built chunk by chunk, with bounded memory, equal to the one-shot bank bitwise.

    stream = BankStream(spec=None, depth=5, xp=np, blocks=None)
    for window in split_book(book, 65536):          # or windows read from a store (iter_store)
        part = stream.feed(window)                   # xp float32 [K, n]: the bank's columns of its rows
    stream.rows, stream.names                        # equal to build_bank(...).rows / .names
    stream.state_nbytes()                            # bytes carried between windows

Concatenated along time, the parts of consecutive windows equal `build_bank` on the whole book
(gpu_engine/features.py), bit for bit on numpy (tests/test_features_stream.py). Every feature
function of the bank runs unchanged on each window; what spans windows is carried:

* prefix sums: `_rolling_sum` continues the float64 prefix sum from the last carried one and
  keeps the last `w` prefix sums for the differences cs[t] - cs[t-w]. np.cumsum adds in order,
  so the continued sums are the one-shot sums and every difference is the same subtraction
  (series are identified by the bank row and the order of the calls inside its feature function);
* lags (`_lagged`, logret): the last `w` values;
* OFI: the previous row of the side books (e_n reads rows n and n-1);
* the causal power-law / stock-to-flow fits: the five expanding sums (continued exactly as the
  one-shot exclusive prefix sums) and the day of the first priced tick;
* trades: those not yet attributed to a tick (see below);
* everything else is per tick (book, mid, blocks known at the tick), recomputed in the window.

The carried history is bounded by the spec's windows, never by T: per rolling series at most `w`
float64 values, plus one book row, a few scalars per fit and the pending trades.
`state_nbytes()` gives its size (`max_state_nbytes` an upper bound before any window is fed).
Memory per window is O(window + longest window). The block dataset (when given) is held once
for the whole stream, as build_bank holds it.

Trades of a window
------------------
build_bank attributes a trade to the first tick whose ts >= the trade's ts (trades stamped after
the last tick are dropped). A window holding ticks a..b therefore owns the trades stamped in
(ts[a-1], ts[b]] (for the first window: ts <= ts[b]). `feed` takes a `Book` whose `trades` are
the next trades of the sequence, each trade given once, in the one-shot book's order, no later
than the window holding its tick: the stream keeps the trades stamped after the window's last
tick for the next windows, and refuses a trade stamped at or before a tick already fed (it would
belong to an earlier window). `split_book` cuts a Book this way; a store read by time ranges
[start, end) (`gpu_engine.data.books.store.load`) gives exactly such windows, and `iter_store`
reads a store window by window.

On cupy the same code runs (prefix sums by cupy's parallel scan): the streamed bank then agrees
with the one-shot bank to rounding, not bitwise.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

import numpy as np

from gpu_engine import features as F
from gpu_engine import features_longterm as LT
from gpu_engine.backend import Backend, resolve
from gpu_engine.data.books.store import Book, Trades
from gpu_engine.market import Market, _load_blocks, align_trades

_TRADE_FIELDS = ("ts", "px", "qty", "side")


def _max_window(entries) -> int:
    return max([int(p["window"]) for _, p in entries if "window" in p] or [0])


class _Carry:
    """The history one window hands to the next: rolling prefix sums, lags, exclusive sums."""

    def __init__(self):
        self.t0 = 0                      # global index of the window's first tick
        self.row = -1                    # bank row being evaluated
        self.call = 0                    # `_rolling_sum` / `_lagged` calls so far in that row
        self.series: dict[Any, Any] = {}  # key -> carried tail (xp float64)
        self.sums: dict[Any, Any] = {}   # key -> (last out, last v) of an exclusive prefix sum

    def begin_row(self, k: int) -> None:
        self.row, self.call = k, 0

    def _key(self, kind: str):
        key = (self.row, self.call, kind)
        self.call += 1
        return key

    def rolling_sum(self, xp, x, w: int):
        """features._rolling_sum on the window, continuing the prefix sums of the earlier ones."""
        key = self._key("sum")
        n = x.shape[0]
        tail = self.series.get(key)
        x = x.astype(xp.float64)
        if tail is None:  # the first window: the one-shot's own cumsum
            cs = xp.cumsum(x)
            tail = xp.zeros(0, dtype=xp.float64)
        else:             # cumsum([c, x0, x1, ...]) = c, c + x0, (c + x0) + x1, ...: the one-shot sums
            cs = xp.cumsum(xp.concatenate([tail[-1:], x]))[1:]
        full = xp.concatenate([tail, cs])
        h = tail.shape[0]
        out = xp.full(n, xp.nan, dtype=xp.float64)
        i0 = max(0, w - self.t0)  # first window index with a filled window (global t >= w)
        if i0 < n:
            out[i0:] = full[h + i0:h + n] - full[h + i0 - w:h + n - w]
        self.series[key] = full[-w:].copy()
        return out

    def lagged(self, xp, x, w: int):
        """features._lagged on the window, reading the last `w` values of the earlier ones."""
        key = self._key("lag")
        n = x.shape[0]
        tail = self.series.get(key)
        if tail is None:
            tail = xp.zeros(0, dtype=xp.float64)
        full = xp.concatenate([tail, x.astype(xp.float64)])
        h = tail.shape[0]
        out = xp.full(n, xp.nan, dtype=xp.float64)
        i0 = max(0, w - self.t0)
        if i0 < n:
            out[i0:] = full[h + i0 - w:h + n - w]
        self.series[key] = full[-w:].copy()
        return out

    def exclusive_cumsum(self, xp, key, v):
        """features_longterm._exclusive_cumsum (out[t] = v[0] + ... + v[t-1]) continued."""
        n = v.shape[0]
        v = v.astype(xp.float64)
        last = self.sums.get(key)
        if last is None:
            out = xp.zeros(n, dtype=xp.float64)
            if n > 1:
                out[1:] = xp.cumsum(v[:-1])
        else:
            out_last, v_last = last
            # out[t0] = out[t0-1] + v[t0-1]; out[1] is v[0] itself (as cumsum's first element)
            first = v_last if self.t0 == 1 else out_last + v_last
            out = xp.cumsum(xp.concatenate([first, v[:-1]]))
        self.sums[key] = (out[-1:].copy(), v[-1:].copy())
        return out

    def nbytes(self) -> int:
        total = sum(int(a.nbytes) for a in self.series.values())
        return total + sum(int(a.nbytes) + int(b.nbytes) for a, b in self.sums.values())


class _StreamCtx(F._Ctx):
    """The bank's per-build context for one window, reading the stream's carried history."""

    def __init__(self, market: Market, stream: "BankStream"):
        super().__init__(market)
        self._stream = stream

    def cached(self, key, fn):
        if isinstance(key, tuple) and key and key[0] == "block_prefix":
            # prefix sums over the block dataset: the same for every window
            kept = self._stream._kept
            if key not in kept:
                kept[key] = fn()
            return kept[key]
        if isinstance(key, tuple) and key and key[0] == "causal_fit":
            if key not in self._cache:
                self._cache[key] = self._stream._causal_fit(self, key[1])
            return self._cache[key]
        return super().cached(key, fn)

    def e_levels(self):
        def make():
            xp = self.xp
            side = self.book()[:4]
            prev = self._stream._prev_book
            if prev is None:
                return F._e_rows(xp, *side)
            return F._e_rows(xp, *(xp.concatenate([p, s]) for p, s in zip(prev, side)))[1:]
        return self.cached("e", make)


# the x of each causal fit of features_longterm._causal_fit_dev, by its cache key
_FIT_X = {"pl": LT._pl_x, "s2f": LT._s2f_x}


class BankStream:
    """Builds the feature bank window by window; see the module docstring.

    `spec` as for build_bank (None: DEFAULT_SPEC, entries needing more than `depth` levels
    skipped); `depth` is the book's number of levels (every window must have it); `xp` numpy or
    cupy (None: auto); `blocks` a block dataset or its path, as for build_bank.
    """

    def __init__(self, spec=None, depth: int | None = None, xp=None, blocks=None):
        if depth is None or isinstance(depth, bool) or int(depth) != depth or int(depth) < 1:
            raise ValueError(f"BankStream: depth must be an integer >= 1, got {depth!r}")
        self.depth = int(depth)
        if xp is None:
            device = "auto"
        elif xp is np:
            device = "cpu"
        else:
            device = "cuda"
        self.backend: Backend = resolve(device)
        self.entries = F._normalise_spec(F.DEFAULT_SPEC if spec is None else spec, self.depth, spec is None)
        self.rows = F._rows(self.entries)
        self.blocks = None if blocks is None else _load_blocks(blocks)
        self.max_window = _max_window(self.entries)
        self.t = 0                      # ticks fed so far
        self._last_ts: int | None = None  # ts of the last tick fed
        self._carry = _Carry()
        self._prev_book = None          # the last row of the neutralised side books (4 x [1, L])
        self._fit: dict[str, Any] = {}  # causal fit key -> day of the first priced tick
        self._pending: dict[str, np.ndarray] | None = None  # trades stamped after the last tick
        self._block_cols: dict = {}     # the block dataset's device columns, kept for every window
        self._kept: dict = {}           # block prefix sums, kept for every window
        self._broken = False            # a window failed half-way (the carry is then unusable)

    # ---------------------------------------------------------------------------- public
    @property
    def xp(self):
        return self.backend.xp

    @property
    def names(self) -> list[str]:
        return [r["label"] for r in self.rows]

    @property
    def K(self) -> int:
        return len(self.entries)

    def feed(self, window: Book):
        """The bank's columns for the window's ticks, xp float32 [K, n] (see the module docstring)."""
        if self._broken:
            raise RuntimeError("BankStream.feed: an earlier window failed half-way; its carried "
                               "history is incomplete, start a new stream")
        xp = self.xp
        ts = np.asarray(window.ts, dtype=np.int64)
        n = int(ts.shape[0])
        if n and np.asarray(window.bid_px).ndim == 2 and np.asarray(window.bid_px).shape[1] != self.depth:
            raise ValueError(f"BankStream.feed: the window has {np.asarray(window.bid_px).shape[1]} "
                             f"level(s), the stream {self.depth}")
        if n and self._last_ts is not None and ts[0] < self._last_ts:
            raise ValueError(f"BankStream.feed: ts must be non-decreasing across windows; the window "
                             f"starts at {int(ts[0])} < the last tick fed ({self._last_ts})")
        if n > 1 and np.any(np.diff(ts) < 0):
            raise ValueError("BankStream.feed: the window's ts must be non-decreasing")
        trades = self._take_trades(window.trades, int(ts[-1]) if n else None)  # refuses before any change
        if n == 0:
            return xp.empty((self.K, 0), dtype=xp.float32)
        self._broken = True  # until the window is through
        book = Book(ts=ts, seq=window.seq, bid_px=window.bid_px, ask_px=window.ask_px,
                    bid_sz=window.bid_sz, ask_sz=window.ask_sz, trades=trades, attrs=window.attrs)
        market = Market.from_book(book, blocks=self.blocks, device=self.backend)
        market._block_cols = self._block_cols
        ctx = _StreamCtx(market, self)
        carry = self._carry
        carry.t0 = self.t
        values = xp.empty((self.K, n), dtype=xp.float32)
        token = F._CARRY.set(carry)
        try:
            for k, (name, params) in enumerate(self.entries):
                carry.begin_row(k)
                values[k] = F.FEATURES[name][0](ctx, **params).astype(xp.float32)
        finally:
            F._CARRY.reset(token)
        bp, ap, bq, aq, _, _ = ctx.book()
        self._prev_book = tuple(a[-1:].copy() for a in (bp, ap, bq, aq))
        self.t += n
        self._last_ts = int(ts[-1])
        self._broken = False
        return values

    def state_nbytes(self) -> int:
        """Bytes carried from one window to the next (tails, book row, fit sums, pending trades)."""
        total = self._carry.nbytes()
        if self._prev_book is not None:
            total += sum(int(a.nbytes) for a in self._prev_book)
        total += 8 * len(self._fit)
        if self._pending is not None:
            total += sum(int(a.nbytes) for a in self._pending.values())
        return total

    def max_state_nbytes(self) -> int:
        """An upper bound of state_nbytes() (pending trades excluded), known before any window:
        every windowed row carries at most 4 series of its window (the bank's features use 2),
        plus the book row and the fits' sums."""
        series = sum(4 * 8 * int(p["window"]) for _, p in self.entries if "window" in p)
        return series + 4 * 8 * self.depth + 2 * (5 * 16 + 8)

    # ---------------------------------------------------------------------------- internals
    def _take_trades(self, trades: Trades | None, last_ts: int | None) -> Trades | None:
        """The trades of the window's ticks (pending ones first); the rest stays pending."""
        cols = self._pending
        if trades is not None and len(trades) > 0:
            new = {f: np.asarray(getattr(trades, f)) for f in _TRADE_FIELDS}
            if self._last_ts is not None:
                late = new["ts"] <= self._last_ts
                if late.any():
                    i = int(np.argmax(late))
                    raise ValueError(f"BankStream.feed: trade {i} of the window is stamped "
                                     f"{int(new['ts'][i])}, at or before a tick already fed "
                                     f"({self._last_ts}): it belongs to an earlier window")
            cols = new if cols is None else {f: np.concatenate([cols[f], new[f]]) for f in _TRADE_FIELDS}
        if cols is None or cols["ts"].shape[0] == 0:
            self._pending = None
            return None
        if last_ts is None:
            self._pending = cols
            return None
        mine = cols["ts"] <= last_ts
        rest = ~mine
        self._pending = {f: cols[f][rest] for f in _TRADE_FIELDS} if rest.any() else None
        if not mine.any():
            return None
        return Trades(**{f: cols[f][mine] for f in _TRADE_FIELDS})

    def _causal_fit(self, c: _StreamCtx, key: str):
        """features_longterm._causal_fit_dev with its expanding sums carried across windows."""
        if key not in _FIT_X:
            raise NotImplementedError(f"BankStream: no carried form of the causal fit {key!r}")
        xp, carry = c.xp, self._carry
        x = _FIT_X[key](c)
        y = LT._log_mid(c)
        ok = xp.isfinite(x) & xp.isfinite(y)
        one = ok.astype(xp.float64)
        xv = xp.where(ok, x, 0.0)
        yv = xp.where(ok, y, 0.0)
        n = carry.exclusive_cumsum(xp, ("fit", key, "n"), one)
        sx = carry.exclusive_cumsum(xp, ("fit", key, "sx"), xv)
        sy = carry.exclusive_cumsum(xp, ("fit", key, "sy"), yv)
        sxx = carry.exclusive_cumsum(xp, ("fit", key, "sxx"), xv * xv)
        sxy = carry.exclusive_cumsum(xp, ("fit", key, "sxy"), xv * yv)
        den = n * sxx - sx * sx
        days = LT._tick_days(c)
        if key not in self._fit and bool(ok.any()):
            self._fit[key] = float(days[int(xp.argmax(ok))])
        # before the first priced tick n = 0 there, so the value is NaN whatever the span
        span = days - self._fit.get(key, math.nan)
        good = ((n >= LT.MIN_POINTS) & (span >= LT.MIN_HISTORY_DAYS) & (den > 0) & xp.isfinite(x)
                & xp.isfinite(y))
        dens = xp.where(good, den, 1.0)
        ns = xp.where(good, n, 1.0)
        b = (n * sxy - sx * sy) / dens
        a = (sy - b * sx) / ns
        return xp.where(good, y - (a + b * x), xp.nan)


# -------------------------------------------------------------------------------- windows

def _bounds(T: int, sizes) -> list[tuple[int, int]]:
    if isinstance(sizes, (int, np.integer)):
        if int(sizes) < 1:
            raise ValueError(f"split_book: rows per window must be >= 1, got {sizes!r}")
        step = int(sizes)
        return [(lo, min(T, lo + step)) for lo in range(0, T, step)] or [(0, 0)]
    out, lo = [], 0
    for s in sizes:
        if int(s) < 0:
            raise ValueError(f"split_book: window sizes must be >= 0, got {s!r}")
        out.append((lo, lo + int(s)))
        lo += int(s)
    if lo != T:
        raise ValueError(f"split_book: window sizes add up to {lo}, the book has {T} rows")
    return out


def split_book(book: Book, sizes) -> Iterator[Book]:
    """Cut `book` into consecutive windows of rows (`sizes`: rows per window, or each window's
    size, adding up to T), each with the trades of its ticks: stamped in (ts[a-1], ts[b]] for
    the ticks a..b (the first window: <= ts[b]), in the book's order; trades after the last
    tick go nowhere (build_bank drops them too)."""
    T = book.T
    tr = book.trades
    tick = None
    if tr is not None and len(tr) > 0:
        tick = align_trades(book.ts, tr.ts)
    for lo, hi in _bounds(T, sizes):
        trades = None
        if tick is not None:
            sel = (tick >= lo) & (tick < hi)
            trades = Trades(ts=tr.ts[sel], px=tr.px[sel], qty=tr.qty[sel], side=tr.side[sel],
                            match_ts=None if tr.match_ts is None else tr.match_ts[sel])
        yield Book(ts=book.ts[lo:hi], seq=book.seq[lo:hi], bid_px=book.bid_px[lo:hi],
                   ask_px=book.ask_px[lo:hi], bid_sz=book.bid_sz[lo:hi], ask_sz=book.ask_sz[lo:hi],
                   trades=trades, attrs=book.attrs)


def iter_store(path, rows: int = 65536) -> Iterator[Book]:
    """A book store (gpu_engine.data.books.store) read window by window: `rows` book rows a
    window with the trades stamped up to its last tick not given before (a last window carries
    the trades after the last tick, which the stream drops). Reads only the committed rows;
    memory is O(rows) plus one trades read of the same size (never the whole store)."""
    from gpu_engine.data.books import store as S

    if int(rows) < 1:
        raise ValueError(f"iter_store: rows must be >= 1, got {rows!r}")
    g = S._open_group(path)
    attrs = dict(g.attrs)
    S.check_schema(path, attrs, has_trades="trades" in g)
    n = attrs.get("rows")
    n = g["ts"].shape[0] if n is None else min(int(n), g["ts"].shape[0])
    tg = g["trades"] if "trades" in g else None
    m = 0
    if tg is not None:
        m = attrs.get("trade_rows")
        m = tg["ts"].shape[0] if m is None else min(int(m), tg["ts"].shape[0])
    cur = 0  # next trade row not given yet
    buf = np.zeros(0, np.int64)  # trade ts read ahead, rows cur .. cur + len(buf)
    for lo in range(0, n, int(rows)):
        hi = min(n, lo + int(rows))
        cols = {name: g[name][lo:hi] for name in S.BOOK_ARRAYS}
        trades = None
        if tg is not None:
            last = int(cols["ts"][-1]) if hi < n else None
            # read trade ts ahead (in pieces of `rows`) until one is stamped after the last tick
            while cur + buf.shape[0] < m and (last is None or buf.shape[0] == 0 or buf[-1] <= last):
                k = cur + buf.shape[0]
                buf = np.concatenate([buf, tg["ts"][k:min(m, k + int(rows))]])
            take = buf.shape[0] if last is None else int(np.searchsorted(buf, last, side="right"))
            if take:
                sl = slice(cur, cur + take)
                trades = Trades(ts=buf[:take], px=tg["px"][sl], qty=tg["qty"][sl], side=tg["side"][sl],
                                match_ts=tg["match_ts"][sl] if "match_ts" in tg else None)
            cur += take
            buf = buf[take:]
        yield Book(**cols, trades=trades, attrs=attrs)


def stream_bank(windows: Iterable[Book], spec=None, depth: int | None = None, xp=None, blocks=None):
    """build_bank through a BankStream over `windows` (the whole bank in memory: for checks;
    `depth` defaults to the first window's)."""
    windows = iter(windows)
    first = next(windows, None)
    if first is None:
        raise ValueError("stream_bank: no windows")
    stream = BankStream(spec, depth=int(np.asarray(first.bid_px).shape[1]) if depth is None else depth,
                        xp=xp, blocks=blocks)
    parts = [stream.feed(first)] + [stream.feed(w) for w in windows]
    return F.FeatureBank(values=stream.xp.concatenate(parts, axis=1), rows=stream.rows)
