"""The causal feature bank: float32 [K, T] signal rows built with `xp` (numpy or cupy) plus a table.

    bank = build_bank(book_or_market, spec=None, xp=None, blocks=None)
    bank.values                      # xp float32 [K, T]
    bank.rows                        # one dict per row: row, name, label, params (JSON), each param
    bank.table                       # the same as a pandas DataFrame (built on first use)
    bank.index("ofi", window=100)    # -> row number, what a configuration's `signal`/`regime` holds
    bank.names                       # row labels, e.g. "ofi(window=100)"

The same code runs on numpy and cupy: only elementwise ops, `cumsum`, `bincount`, `where`, slicing.
Every value at tick t is computed from ticks <= t (and trades stamped <= ts[t]) only: rolling
windows are differences of prefix sums (`cumsum`), which never read past t (tested in
tests/test_lookahead.py, bitwise). Sums run in float64; the bank is cast to float32 at the end.

Chunked build: gpu_engine/features_stream.py (`BankStream`) builds the same bank window by window
of rows with bounded memory, carrying each window's history (prefix sums, lags, the previous
book row, the causal fits' sums, pending trades); on numpy it equals this one-shot bank bitwise
(tests/test_features_stream.py). `_rolling_sum` and `_lagged` read that carry while a window is
evaluated (`_CARRY`), so a feature built from them streams without change.

Conventions
-----------
* A level is *displayed* when its price is finite and > 0 and its size finite and > 0
  (docs/RULES.md). Where a feature needs prices, an undisplayed level counts as size 0.
* mid = (bid0 + ask0) / 2 when both level-0 quotes are displayed, else NaN.
* Windows count book updates (ticks): a window of w at tick t covers the updates n = t-w+1..t,
  so it needs t >= w (the update at n needs the previous row n-1). Before that the value is NaN.
* NaN means "undefined here" (window not filled, an empty top of book, no block known yet); the
  trading rules treat NaN as no signal.

Features (name: parameters -- definition)
----------------------------------------
ofi: window -- Cont-Kukanov-Stoikov OFI over the window, normalised by the rolling mean depth at
    the best quotes over the same window (not a z-score):
        e_n = 1{Pb_n >= Pb_{n-1}} qb_n - 1{Pb_n <= Pb_{n-1}} qb_{n-1}
            - 1{Pa_n <= Pa_{n-1}} qa_n + 1{Pa_n >= Pa_{n-1}} qa_{n-1}      (Cont, Kukanov & Stoikov 2014)
        ofi = sum_{n=t-w+1..t} e_n / mean_{n=t-w+1..t} (qb_n + qa_n) / 2
    An undisplayed bid level has price -inf and size 0, an undisplayed ask +inf and size 0, so a
    queue that vanishes counts as removed liquidity (e_n stays finite). NaN when the mean depth is 0.
mlofi: levels, window -- multi-level OFI (Xu, Gould & Howison): e_n^(m) per level m < levels
    (level m's price and size, same rule), averaged over the levels with equal weights and
    normalised by the rolling mean per-level depth over the first `levels` levels:
        mlofi = (1/l) sum_m sum_n e_n^(m) / mean_n [ sum_{m<l} (qb_n^m + qa_n^m) / (2 l) ]
    With levels = 1 it equals ofi.
imbalance1 -- (bid_sz0 - ask_sz0) / (bid_sz0 + ask_sz0) exactly, from the raw level-0 sizes
    (computed in float64, then float32); 0 when both are 0.
depth_imbalance: levels, decay -- (sum_i w_i qb_i - sum_i w_i qa_i) / (sum_i w_i qb_i + sum_i w_i qa_i)
    over displayed levels i < levels, w_i = exp(-decay * i) (decay 0: plain depth-k imbalance).
    NaN when nothing is displayed in those levels on either side.
microprice_bps -- weighted mid minus mid, in bps of mid: I = qb0 / (qb0 + qa0),
    wmid = I * Pa0 + (1 - I) * Pb0, (wmid - mid) / mid * 1e4. This is the weighted mid, not
    Stoikov's micro-price (which needs a fitted Markov model). NaN without a two-sided top.
spread_bps -- (ask0 - bid0) / mid * 1e4. NaN without a two-sided top.
tfi: window -- trade-flow imbalance (Vbuy - Vsell) / (Vbuy + Vsell) of the trades with ts in
    (ts[t-w], ts[t]] (aggressor side); 0 when there is no such trade or the book has no trades.
logret: window -- log(mid[t] / mid[t-w]); NaN when either mid is NaN.
log_fair_dev -- log(mid / fair value): the block dataset's power-law fair value of the block known
    at the tick (gpu_engine.market), or the Santostasi law at the tick's time without blocks.
    Fixed (look-ahead): the published A, n were fitted on prices up to their publication, so on
    earlier bars this knows the later trend; its causal counterpart is pl_dev (below).
halving_phase -- (height mod 210,000) / 210,000 of the block known at the tick (approximate height
    from time without blocks).
block_age_s -- seconds since the last known block at tick time (NaN without a block dataset).
block_interval_s -- the last completed block interval: time(last block) - time(the one before)
    (NaN without a block dataset).

Long-horizon features (gpu_engine/features_longterm.py, registered below): pl_dev / pl_under (the
power law refit causally at every tick on the ticks before it), s2f_dev / s2f_under (stock-to-flow
likewise), their fixed published-parameter counterparts pl_under_fixed, s2f_dev_fixed,
s2f_under_fixed ("fixed (look-ahead)"; `log_fair_dev` above is the fixed power law: fitted on
data that includes later prices, it is look-ahead on any backtest before the fit),
halving_days, halving_phase_c, ma_dev(window), and the block flow of real headers (the dataset's
fees_sat, tx_count, time_source; unknown -> NaN): block_interval_mean_s(blocks),
block_fees_btc(blocks), block_tx_count(blocks).
"""
from __future__ import annotations

import contextvars
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from gpu_engine.backend import array_module, to_host
from gpu_engine.market import NS_PER_S, Market

# --------------------------------------------------------------------------------------------
# The default spec: (name, params) pairs; entries needing more levels than the book has are skipped.
# --------------------------------------------------------------------------------------------
DEFAULT_SPEC: tuple[tuple[str, dict], ...] = (
    *(("ofi", {"window": w}) for w in (10, 100, 1000)),
    *(("mlofi", {"levels": lv, "window": w}) for lv in (3, 5) for w in (100, 1000)),
    ("imbalance1", {}),
    *(("depth_imbalance", {"levels": lv, "decay": d}) for lv in (3, 5, 10) for d in (0.0, 0.5)),
    ("microprice_bps", {}),
    ("spread_bps", {}),
    *(("tfi", {"window": w}) for w in (100, 1000)),
    *(("logret", {"window": w}) for w in (10, 100, 1000)),
    ("log_fair_dev", {}),
    ("halving_phase", {}),
    ("block_age_s", {}),
    ("block_interval_s", {}),
    # long-horizon features (gpu_engine/features_longterm.py): mostly NaN on a book of hours
    *((name, {}) for name in ("pl_dev", "pl_under", "pl_under_fixed", "s2f_dev", "s2f_under", "s2f_dev_fixed",
                              "s2f_under_fixed", "halving_days", "halving_phase_c")),
    *(("ma_dev", {"window": w}) for w in (100, 1000)),
    *((name, {"blocks": 144}) for name in ("block_interval_mean_s", "block_fees_btc", "block_tx_count")),
)


# --------------------------------------------------------------------------------------------
# Building blocks (xp-generic)
# --------------------------------------------------------------------------------------------

def _displayed(xp, px, sz):
    return xp.isfinite(px) & (px > 0) & xp.isfinite(sz) & (sz > 0)


def _safe_div(xp, num, den):
    """num / den where den != 0, NaN elsewhere (no warnings)."""
    ok = den != 0
    return xp.where(ok, num / xp.where(ok, den, 1.0), xp.nan)


# While a window of a chunked build runs (gpu_engine/features_stream.py), the window's carried
# history: `_rolling_sum` and `_lagged` then continue the prefix sums and lags of the earlier
# windows, so the chunked bank equals the one-shot bank bitwise. None in a one-shot build.
_CARRY: contextvars.ContextVar = contextvars.ContextVar("gpu_engine_features_carry", default=None)


def _rolling_sum(xp, x, w: int):
    """out[t] = sum(x[t-w+1..t]) for t >= w, NaN before (prefix-sum difference: causal)."""
    carry = _CARRY.get()
    if carry is not None:
        return carry.rolling_sum(xp, x, w)
    T = x.shape[0]
    out = xp.full(T, xp.nan, dtype=xp.float64)
    if w < T:
        cs = xp.cumsum(x.astype(xp.float64))
        out[w:] = cs[w:] - cs[:-w]
    return out


def _lagged(xp, x, w: int):
    """out[t] = x[t-w] for t >= w, NaN before."""
    carry = _CARRY.get()
    if carry is not None:
        return carry.lagged(xp, x, w)
    T = x.shape[0]
    out = xp.full(T, xp.nan, dtype=xp.float64)
    if w < T:
        out[w:] = x[:-w]
    return out


def _e_rows(xp, bp, ap, bq, aq):
    """e_n per level from the neutralised side books, float64 [T, L]; row 0 is 0."""
    e = xp.zeros(bp.shape, dtype=xp.float64)
    if bp.shape[0] > 1:
        b_up = bp[1:] >= bp[:-1]
        b_dn = bp[1:] <= bp[:-1]
        a_dn = ap[1:] <= ap[:-1]
        a_up = ap[1:] >= ap[:-1]
        e[1:] = (xp.where(b_up, bq[1:], 0.0) - xp.where(b_dn, bq[:-1], 0.0)
                 - xp.where(a_dn, aq[1:], 0.0) + xp.where(a_up, aq[:-1], 0.0))
    return e


class _Ctx:
    """Per-build cache of shared intermediate arrays (float64, on the market's device)."""

    def __init__(self, market: Market):
        self.m = market
        self.xp = market.xp
        self._cache: dict[Any, Any] = {}

    def cached(self, key, fn: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # side books with undisplayed levels neutralised
    def book(self):
        def make():
            xp, m = self.xp, self.m
            bdisp = _displayed(xp, m.bid_px, m.bid_sz)
            adisp = _displayed(xp, m.ask_px, m.ask_sz)
            bp = xp.where(bdisp, m.bid_px, -xp.inf)
            ap = xp.where(adisp, m.ask_px, xp.inf)
            bq = xp.where(bdisp, m.bid_sz.astype(xp.float64), 0.0)
            aq = xp.where(adisp, m.ask_sz.astype(xp.float64), 0.0)
            return bp, ap, bq, aq, bdisp, adisp
        return self.cached("book", make)

    def e_levels(self):
        """e_n per level, float64 [T, L]; row 0 is 0 (never used by a filled window)."""
        def make():
            bp, ap, bq, aq, _, _ = self.book()
            return _e_rows(self.xp, bp, ap, bq, aq)
        return self.cached("e", make)

    def mid(self):
        def make():
            xp = self.xp
            _, _, _, _, bdisp, adisp = self.book()
            ok = bdisp[:, 0] & adisp[:, 0]
            return xp.where(ok, (self.m.bid_px[:, 0] + self.m.ask_px[:, 0]) / 2.0, xp.nan)
        return self.cached("mid", make)

    def trade_volumes(self):
        """Per-tick buyer- and seller-initiated volume of the trades aligned to each tick."""
        def make():
            xp, m = self.xp, self.m
            T = m.T
            if not m.has_trades or m.trade_tick.shape[0] == 0:
                z = xp.zeros(T, dtype=xp.float64)
                return z, z
            buy = xp.where(m.trade_side > 0, m.trade_qty, 0.0)
            sell = xp.where(m.trade_side < 0, m.trade_qty, 0.0)
            vb = xp.bincount(m.trade_tick, weights=buy, minlength=T)[:T]
            vs = xp.bincount(m.trade_tick, weights=sell, minlength=T)[:T]
            return vb.astype(xp.float64), vs.astype(xp.float64)
        return self.cached("tv", make)


# --------------------------------------------------------------------------------------------
# Feature functions: (ctx, **params) -> xp float64 [T]
# --------------------------------------------------------------------------------------------

def _f_ofi(c: _Ctx, window: int):
    return _f_mlofi(c, levels=1, window=window)


def _f_mlofi(c: _Ctx, levels: int, window: int):
    xp = c.xp
    _, _, bq, aq, _, _ = c.book()
    e = c.e_levels()
    e_sum = c.cached(("esum", levels), lambda: e[:, :levels].sum(axis=1))
    depth = c.cached(("depth", levels),
                     lambda: (bq[:, :levels].sum(axis=1) + aq[:, :levels].sum(axis=1)) / (2.0 * levels))
    ofi = _rolling_sum(xp, e_sum, window)
    mean_depth = _rolling_sum(xp, depth, window) / window
    return _safe_div(xp, ofi, levels * mean_depth)


def _f_imbalance1(c: _Ctx):
    xp, m = c.xp, c.m
    b = m.bid_sz[:, 0].astype(xp.float64)
    a = m.ask_sz[:, 0].astype(xp.float64)
    tot = b + a
    both_zero = (b == 0) & (a == 0)
    return xp.where(both_zero, 0.0, (b - a) / xp.where(both_zero, 1.0, tot))


def _f_depth_imbalance(c: _Ctx, levels: int, decay: float):
    xp = c.xp
    _, _, bq, aq, _, _ = c.book()
    w = xp.exp(-float(decay) * xp.arange(levels, dtype=xp.float64))
    b = (bq[:, :levels] * w).sum(axis=1)
    a = (aq[:, :levels] * w).sum(axis=1)
    return _safe_div(xp, b - a, b + a)


def _f_microprice_bps(c: _Ctx):
    xp, m = c.xp, c.m
    _, _, bq, aq, _, _ = c.book()
    mid = c.mid()
    qb, qa = bq[:, 0], aq[:, 0]
    imb = _safe_div(xp, qb, qb + qa)
    wmid = imb * m.ask_px[:, 0] + (1.0 - imb) * m.bid_px[:, 0]
    return xp.where(xp.isfinite(mid), (wmid - mid) / mid * 1e4, xp.nan)


def _f_spread_bps(c: _Ctx):
    xp, m = c.xp, c.m
    mid = c.mid()
    return xp.where(xp.isfinite(mid), (m.ask_px[:, 0] - m.bid_px[:, 0]) / mid * 1e4, xp.nan)


def _f_tfi(c: _Ctx, window: int):
    xp = c.xp
    vb, vs = c.trade_volumes()
    sb = _rolling_sum(xp, vb, window)
    ss = _rolling_sum(xp, vs, window)
    tot = sb + ss
    val = xp.where(tot > 0, (sb - ss) / xp.where(tot > 0, tot, 1.0), 0.0)
    return xp.where(xp.isnan(tot), xp.nan, val)


def _f_logret(c: _Ctx, window: int):
    xp = c.xp
    mid = c.mid()
    prev = _lagged(xp, mid, window)
    ok = xp.isfinite(mid) & xp.isfinite(prev)
    return xp.where(ok, xp.log(xp.where(ok, mid / xp.where(ok, prev, 1.0), 1.0)), xp.nan)


def _f_log_fair_dev(c: _Ctx):
    xp = c.xp
    mid, fair = c.mid(), c.m.fair_pl
    ok = xp.isfinite(mid) & xp.isfinite(fair) & (fair > 0)
    return xp.where(ok, xp.log(xp.where(ok, mid / xp.where(ok, fair, 1.0), 1.0)), xp.nan)


def _f_halving_phase(c: _Ctx):
    return c.m.halving_phase.astype(c.xp.float64)


def _f_block_age_s(c: _Ctx):
    m = c.m
    return m.ts.astype(c.xp.float64) / NS_PER_S - m.block_time


def _f_block_interval_s(c: _Ctx):
    m = c.m
    return m.block_time - m.prev_block_time


FEATURES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "ofi": (_f_ofi, ("window",)),
    "mlofi": (_f_mlofi, ("levels", "window")),
    "imbalance1": (_f_imbalance1, ()),
    "depth_imbalance": (_f_depth_imbalance, ("levels", "decay")),
    "microprice_bps": (_f_microprice_bps, ()),
    "spread_bps": (_f_spread_bps, ()),
    "tfi": (_f_tfi, ("window",)),
    "logret": (_f_logret, ("window",)),
    "log_fair_dev": (_f_log_fair_dev, ()),
    "halving_phase": (_f_halving_phase, ()),
    "block_age_s": (_f_block_age_s, ()),
    "block_interval_s": (_f_block_interval_s, ()),
}

from gpu_engine import features_longterm as _longterm  # noqa: E402  (it reads the helpers above)

FEATURES.update(_longterm.FEATURES)


def _label(name: str, params: dict) -> str:
    if not params:
        return name
    return name + "(" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + ")"


def _normalise_spec(spec: Iterable, depth: int, default: bool) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for i, item in enumerate(spec):
        if isinstance(item, dict):
            params = dict(item)
            name = params.pop("name", None)
        else:
            name, params = item[0], dict(item[1] if len(item) > 1 else {})
        if name not in FEATURES:
            raise ValueError(f"feature spec entry {i}: unknown feature {name!r}; "
                             f"known: {sorted(FEATURES)}")
        want = set(FEATURES[name][1])
        if set(params) != want:
            raise ValueError(f"feature spec entry {i} ({name}): parameters {sorted(params)} "
                             f"!= expected {sorted(want)}")
        for key in ("window", "levels", "blocks"):
            if key in params:
                v = params[key]
                if isinstance(v, bool) or int(v) != v or int(v) < 1:
                    raise ValueError(f"feature spec entry {i} ({name}): {key} must be an integer "
                                     f">= 1, got {v!r}")
                params[key] = int(v)
        if "decay" in params:
            d = float(params["decay"])
            if not math.isfinite(d) or d < 0:
                raise ValueError(f"feature spec entry {i} ({name}): decay must be finite and >= 0, "
                                 f"got {params['decay']!r}")
            params["decay"] = d
        if params.get("levels", 1) > depth:
            if default:
                continue
            raise ValueError(f"feature spec entry {i} ({name}): levels={params['levels']} but the "
                             f"book has only {depth} level(s)")
        label = _label(name, params)
        if label in seen:
            raise ValueError(f"feature spec entry {i}: duplicate feature {label}")
        seen.add(label)
        out.append((name, params))
    return out


@dataclass
class FeatureBank:
    values: Any        # xp float32 [K, T]
    rows: list[dict]   # one dict per feature row: row, name, label, params (JSON), each param

    @property
    def table(self):
        """The rows as a pandas DataFrame (built on first use: pandas costs ~0.5 s to import)."""
        cached = self.__dict__.get("_table")
        if cached is None:
            cached = self.__dict__["_table"] = _table(self.rows)
        return cached

    @property
    def xp(self):
        return array_module(self.values)

    @property
    def names(self) -> list[str]:
        return [r["label"] for r in self.rows]

    @property
    def K(self) -> int:
        return int(self.values.shape[0])

    @property
    def T(self) -> int:
        return int(self.values.shape[1])

    def index(self, name: str, **params) -> int:
        """Row of the feature `name` whose parameters include `params` (must be unique)."""
        hits = []
        for r in self.rows:
            if r["name"] != name:
                continue
            p = json.loads(r["params"])
            if all(k in p and p[k] == v for k, v in params.items()):
                hits.append(int(r["row"]))
        if len(hits) == 1:
            return hits[0]
        which = _label(name, params)
        if not hits:
            raise KeyError(f"no feature row matches {which}; rows: {self.names}")
        raise KeyError(f"{which} matches {len(hits)} rows "
                       f"({[self.names[h] for h in hits]}); give every parameter")

    def row(self, name: str, **params):
        return self.values[self.index(name, **params)]

    def to_host(self) -> np.ndarray:
        return to_host(self.values)


def build_bank(book_or_market, spec=None, xp=None, blocks=None) -> FeatureBank:
    """Build the feature bank from a Book (aligned with `blocks` into a Market) or a Market.

    `xp` picks the device for a Book (numpy -> cpu, cupy -> cuda, None -> auto); for a Market it
    must match the market's own module. `spec` is a list of (name, params) pairs or dicts with a
    `name` key; None means DEFAULT_SPEC (entries needing more levels than the book has are
    skipped, while an explicit spec asking for them is refused).
    """
    if isinstance(book_or_market, Market):
        market = book_or_market
        if blocks is not None:
            raise ValueError("build_bank: a Market already carries its block columns; pass "
                             "blocks to Market.from_book instead")
        if xp is not None and xp is not market.xp:
            raise ValueError(f"build_bank: xp={xp.__name__} but the market lives on "
                             f"{market.xp.__name__}")
    else:
        if xp is None:
            device = "auto"
        elif xp is np:
            device = "cpu"
        else:
            device = "cuda"
        market = Market.from_book(book_or_market, blocks=blocks, device=device)
    xpm = market.xp
    entries = _normalise_spec(DEFAULT_SPEC if spec is None else spec, market.depth, spec is None)
    T = market.T
    values = xpm.empty((len(entries), T), dtype=xpm.float32)
    ctx = _Ctx(market)
    for k, (name, params) in enumerate(entries):
        fn = FEATURES[name][0]
        values[k] = fn(ctx, **params).astype(xpm.float32)
    return FeatureBank(values=values, rows=_rows(entries))


def _rows(entries: list[tuple[str, dict]]) -> list[dict]:
    """The bank's row table (one dict per normalised spec entry)."""
    return [{"row": k, "name": name, "label": _label(name, params),
             "params": json.dumps(params, sort_keys=True), **params}
            for k, (name, params) in enumerate(entries)]


def _table(rows: list[dict]):
    import pandas as pd

    table = pd.DataFrame(rows, columns=None if rows else ["row", "name", "label", "params"])
    for col in ("window", "levels", "blocks"):
        if col in table:
            table[col] = table[col].astype("Int64")  # integer parameters stay integers (NA when absent)
    return table
