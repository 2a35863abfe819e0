"""`python -m sweeps.inspect CUBE.zarr`: top configurations, PBO / deflated Sharpe, a verdict, heatmaps.

    python -m sweeps.inspect CUBE.zarr [--top 20] [--by METRIC] [--heatmap X Y --metric win_rate --png OUT.png]
                                       [--no-progress] [--html PAGE.html [--overwrite]]

Rows are ranked by an IN-SAMPLE metric (default: the search objective) and always
shown with their out-of-sample figures; in an optimize cube only the
configurations that were re-evaluated out of sample are listed. Win rates carry
their Wilson 95% interval and trade count. PBO (CSCV) and the deflated Sharpe
ratio use the in-sample per-bucket PnL of every configuration tried
(gpu_engine/validation.py). The verdict: does any configuration meet the
win-rate target OUT OF SAMPLE (win rate in [lo, hi], Wilson lower bound > 0.5,
at least --min-trades trades) with positive expectancy after costs.

The header names the contract, the queue model and the fee schedule the run used
(sweeps/market_settings.py). When the run posted maker orders (rules v2), each row
also shows its maker fill ratio (filled / posted quantity) beside the win rate, with
a Wilson interval over the orders posted and their number, and a maker block lists
the order flow of the listed rows (orders posted, rejected, cancels, maker and taker
fills, mean queue wait, fees by maker and taker); a fill ratio below
`market_settings.LOW_FILL_RATIO` is called out in plain words, also in the verdict.
A cube of an older engine without the v2 metrics is still reported, without them.

The slow steps on a big cube (reading it, PBO over 12870 CSCV splits of up to
20000 distinct series: about a minute on 2 CPU cores) are announced on stderr
with their elapsed time (`--no-progress` to silence). A path that is not a
result cube of this engine (missing, a plain folder, a book store, a corrupt
or an interrupted cube) is refused with one line (exit 2).

The search statistics read the cube's bucket series a block of configurations at a time
(`search_stats`), so their memory beyond the distinct series does not grow with the cube;
the SPA bootstrap over at most MAX_SPA_CONFIGS series (arch) is their largest allocation.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import xarray as xr

from gpu_engine import outputs, validation
from gpu_engine.enums import METRICS
from gpu_engine.errors import InputError
from sweeps import _common

MAX_PBO_CONFIGS = 20_000
MAX_SPA_CONFIGS = 5_000  # SPA bootstrap over more series costs ~1.5 s per 1,000 here
STATS_BLOCK = 8192  # configurations search_stats reads and reduces at a time (the grid's region size)
DISTINCT_MERGE_MIN = 1 << 16  # distinct series waiting before search_stats merges them (at least)


class Stages:
    """Progress of the slow steps on stderr: a tqdm line naming the current step, with its elapsed
    time refreshed every second (the steps themselves report no progress)."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="inspect", unit="step", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc}: {n}/{total} steps [{elapsed}]")
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        self._started = False

    def _tick(self):
        while not self._stop.wait(1.0):
            try:
                self.bar.refresh()
            except Exception:  # the bar was closed meanwhile
                return

    def __call__(self, what: str) -> None:
        if self.bar is None:
            return
        if self._started:
            self.bar.update(1)
        self._started = True
        self.bar.set_description_str(f"inspect: {what}")

    def close(self) -> None:
        if self.bar is not None:
            self._stop.set()
            self._thread.join()
            self.bar.n = self.bar.total  # steps that did not apply (e.g. walk-forward) count as done
            self.bar.set_description_str("inspect: done")
            self.bar.close()
            self.bar = None


def _flat(ds: xr.Dataset) -> tuple[dict, dict, int]:
    """Metric arrays and parameter arrays flattened over every configuration dimension."""
    if ds.attrs.get("kind") == "optimize":
        cfg_dims = ["trial", "config"]
    else:
        cfg_dims = list(ds.attrs.get("dims") or [d for d in ds["trades"].dims])
    shape = tuple(ds.sizes[d] for d in cfg_dims)
    n = int(np.prod(shape))
    metrics = {}
    for name in ds.data_vars:
        v = ds[name]
        if tuple(v.dims) == tuple(cfg_dims):
            metrics[name] = np.asarray(v.values).reshape(n)
    params = {}
    for name, c in ds.coords.items():
        if name in ("bucket", "region") or name in ("trial", "config") and ds.attrs.get("kind") == "optimize":
            continue
        arr = xr.broadcast(c, ds["trades"])[0].transpose(*cfg_dims).values if c.ndim else np.full(shape, c.values)
        params[name] = np.asarray(arr).reshape(n)
    order = _param_order(ds)
    params = {k: params[k] for k in sorted(params, key=lambda k: order.index(k) if k in order else len(order))}
    return metrics, params, n


def _param_order(ds) -> list[str]:
    import tomllib

    try:
        return list(tomllib.loads(ds.attrs.get("space", "")).get("params", {}))
    except Exception:
        return [c for c in ds.coords]


def _fmt(v, spec=".3g") -> str:
    if isinstance(v, (str, np.str_)):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))  # counts and integral values: `1000`, never `1e+03` or `1000.0`
    return format(v, spec)


def has_maker(m: dict) -> bool:
    """Whether the run posted maker orders (in or out of sample): the cube has the v2 order-flow
    metrics and some configuration posted at least one order."""
    return any(np.nansum(np.asarray(m[k], dtype=np.float64)) > 0
               for k in ("orders_posted", "oos_orders_posted") if k in m)


def fill_ratio_ci(m: dict, i, prefix: str = "") -> tuple[float, float, float, int]:
    """(fill ratio, Wilson 95% low, high, orders posted) of configuration i. The ratio is filled /
    posted quantity; the interval counts each posted order as one trial whose outcome is its filled
    share (n = orders posted): a share in [0, 1] with mean p has variance at most p(1 - p), so the
    binomial interval is the wider one."""
    from gpu_engine.metrics import wilson

    n = int(np.nan_to_num(m[f"{prefix}orders_posted"][i]))
    r = float(m[f"{prefix}maker_fill_ratio"][i])
    if n <= 0 or not np.isfinite(r):
        return float("nan"), float("nan"), float("nan"), n
    lo, hi = wilson(np.array([r * n]), np.array([n]))
    return r, float(lo[0]), float(hi[0]), n


def _fr(m, i, prefix="") -> str:
    """A maker fill ratio cell, like a win rate: ratio [95% interval] n=orders posted."""
    if f"{prefix}maker_fill_ratio" not in m:
        return "-"
    r, lo, hi, n = fill_ratio_ci(m, i, prefix)
    if n <= 0:
        return "no orders"
    return f"{r:.3f} [{lo:.3f},{hi:.3f}] n={n}"


def _wr(m, i, prefix="") -> str:
    t = m[f"{prefix}trades"][i]
    if not t > 0:
        return "no trades"
    return (f"{m[prefix + 'win_rate'][i]:.3f} [{m[prefix + 'win_rate_lo'][i]:.3f},"
            f"{m[prefix + 'win_rate_hi'][i]:.3f}] n={int(t)}")


def search_stats(ds: xr.Dataset, stage=lambda what: None, block: int = STATS_BLOCK) -> dict:
    """PBO (CSCV) and the deflated Sharpe ratio of the whole search, from the in-sample buckets.

    The bucket series are read `block` configurations at a time (`_scan_buckets`), so the
    [buckets, configurations] matrix is never held whole: only the distinct series, each block's
    Sharpes and, for a search of at most MAX_PBO_CONFIGS configurations (its walk-forward), the
    series themselves. The result does not depend on `block`.
    `stage(text)` is called before each slow step (progress)."""
    capital = float(ds.attrs.get("costs", {}).get("capital", 1.0))
    scan = _scan_buckets(ds["bucket_pnl"], capital, block)
    B = scan.n_buckets
    n_tried = scan.n_tried
    out = {"n_tried": n_tried}
    if n_tried < 2:
        return out
    stage(f"deflated Sharpe over {n_tried} configurations")
    out["dsr"] = scan.deflated_sharpe()
    stage("distinct bucket series")
    U = scan.distinct()
    out["n_distinct"] = int(U.shape[1])
    stage(f"effective trials, Sharpe errors, MinTRL, SPA over {min(U.shape[1], MAX_SPA_CONFIGS)} series")
    out["stats"] = trial_stats(U, n_tried)
    note = ""
    if U.shape[1] > MAX_PBO_CONFIGS:
        rng = np.random.default_rng(0)
        U = U[:, rng.choice(U.shape[1], MAX_PBO_CONFIGS, replace=False)]
        note = f" (a random {MAX_PBO_CONFIGS} of them)"
    S = next((s for s in (16, 14, 12, 10, 8, 6, 4, 2) if B // s >= 2), None)
    if U.shape[1] >= 2 and S:
        stage(f"PBO: {math.comb(S, S // 2)} CSCV splits over {U.shape[1]} series")
        out["pbo"] = validation.pbo(U, n_splits=S)
        out["pbo_note"] = f"{U.shape[1]} distinct bucket series{note}, S={S}"
    wf = ds.attrs.get("walk_forward") or {}
    n_folds, mode = int(wf.get("n_folds", 4)), str(wf.get("mode", "rolling"))
    if B >= 10 and B // (n_folds + 1) >= 1:
        stage("walk-forward")
        W = scan.series() if n_tried <= MAX_PBO_CONFIGS else U
        out["wf"] = validation.walk_forward(W, n_folds=n_folds, mode=mode)
        out["wf_folds"] = [(tr, te, c, float(validation.sharpe(W[te, c]))) for tr, te, c in out["wf"].folds]
        out["wf_spec"] = {"n_folds": n_folds, "mode": mode, "bucket_first_day": wf.get("bucket_first_day"),
                          "unit": wf.get("unit")}
    return out


class _BucketScan:
    """One pass over a cube's bucket series, block by block of configurations (C order): the
    Sharpe of every usable configuration (all buckets finite), the best one's series, the distinct
    series merged as they come, and the blocks themselves while there are at most MAX_PBO_CONFIGS.

    Each block is formed as the whole matrix used to be (the values / capital, transposed to
    [buckets, n], Fortran-ordered, the unusable columns dropped), so every per-series figure
    has the same bits as from the whole matrix; np.unique of the distinct blocks' union is the
    whole matrix's np.unique (up to which of two series that differ only in the sign of a zero
    is kept: np.unique counts them as one and leaves that open too)."""

    def __init__(self, n_buckets: int):
        self.n_buckets = n_buckets
        self.n_tried = 0
        self.sharpes: list[np.ndarray] = []
        self.best: list[np.ndarray] = []  # per block: the series of its first highest Sharpe
        self.blocks: list[np.ndarray] | None = []
        self._distinct = np.empty((n_buckets, 0))  # merged so far (distinct, sorted)
        self._pending: list[np.ndarray] = []  # each block's distinct series, not merged yet
        self._pending_n = 0

    def add(self, values: np.ndarray, capital: float) -> None:
        M = np.asarray(values, dtype=np.float64).reshape(-1, self.n_buckets).T / capital
        M = M[:, np.isfinite(M).all(axis=0)]
        if M.shape[1] == 0:
            return
        srs = validation.sharpe(M, axis=0)
        self.sharpes.append(srs)
        self.best.append(M[:, int(np.argmax(srs))].copy())
        u = np.unique(M, axis=1)
        self._pending.append(u)
        self._pending_n += u.shape[1]
        if self._pending_n > max(self._distinct.shape[1], DISTINCT_MERGE_MIN):
            # merge once what waits outgrows what is merged: each series is merged O(log n)
            # times (merging at every block was quadratic: 1e6 configurations took minutes)
            self._merge()
        self.n_tried += M.shape[1]
        if self.blocks is not None and self.n_tried <= MAX_PBO_CONFIGS:
            self.blocks.append(M)
        else:
            self.blocks = None

    def _merge(self) -> None:
        self._distinct = _unique_columns(self._distinct, self._pending)
        self._pending = []
        self._pending_n = 0

    def distinct(self) -> np.ndarray:
        """np.unique(axis=1) of every usable series seen."""
        if self._pending:
            self._merge()
        return self._distinct

    def deflated_sharpe(self) -> "validation.DSRResult":
        """validation.deflated_sharpe_of_search of the whole matrix, from the blocks' Sharpes."""
        srs = np.concatenate(self.sharpes)
        best = int(np.argmax(srs))
        k = int(np.searchsorted(np.cumsum([s.size for s in self.sharpes]), best, side="right"))
        var = float(np.var(srs, ddof=1)) if srs.size > 1 else 0.0
        return validation.deflated_sharpe(self.best[k], self.n_tried, var)

    def series(self) -> np.ndarray:
        """The usable series [buckets, n_tried] (Fortran-ordered, as the blocks); only while
        n_tried <= MAX_PBO_CONFIGS."""
        return _join_columns(self.blocks)


def _join_columns(blocks: list[np.ndarray]) -> np.ndarray:
    """Fortran-ordered [B, n] blocks side by side, Fortran-ordered like them."""
    return np.concatenate([m.T for m in blocks], axis=0).T


def _unique_columns(U: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """np.unique(axis=1) of the columns of U and of the blocks (each already distinct)."""
    return np.unique(_join_columns([U, *blocks]), axis=1)


def _scan_buckets(b: xr.DataArray, capital: float, block: int) -> _BucketScan:
    """A _BucketScan of `bucket_pnl` read `block` configurations at a time, in C order."""
    from sweeps.grid import plan_regions

    b = b.transpose(..., "bucket")
    cfg_dims = list(b.dims[:-1])
    scan = _BucketScan(int(b.sizes["bucket"]))
    _, regions = plan_regions(tuple(b.sizes[d] for d in cfg_dims), max(1, int(block)))
    for reg in regions:
        scan.add(b.isel(dict(zip(cfg_dims, reg))).values, capital)
    return scan


def walk_forward_line(st: dict) -> str | None:
    """The report's walk-forward line: mode, folds (dated on a bar market), out-of-fold Sharpe."""
    if "wf" not in st:
        return None
    spec = st.get("wf_spec") or {"n_folds": 4, "mode": "rolling"}
    days = spec.get("bucket_first_day")
    line = (f"walk-forward ({spec['mode']}, {spec['n_folds']} folds"
            + (f", {spec['unit']}" if spec.get("unit") else "")
            + f" on in-sample buckets): out-of-fold Sharpe {st['wf'].oos_sharpe:.3f}")
    if days:
        parts = [f"{days[te.start][:7]} {sh:+.3f}" for _, te, _, sh in st.get("wf_folds", [])]
        line += "; per test slice (from, Sharpe of the configuration chosen before it): " + ", ".join(parts)
    return line


def rank(m: dict, by: str) -> np.ndarray:
    """Row order of the report: configurations that trade before those that never do (a
    configuration without trades has Sharpe 0 and would otherwise top every losing search),
    then by the in-sample metric `by`, descending (NaN last), ties in cube order."""
    key = np.nan_to_num(np.asarray(m[by], dtype=np.float64), nan=-np.inf)
    trades = np.nan_to_num(np.asarray(m.get("trades", np.ones_like(key)), dtype=np.float64), nan=0.0)
    return np.lexsort((-key, ~(trades > 0)))


def trial_stats(U: np.ndarray, n_tried: int) -> dict:
    """gpu_engine.stats over the distinct bucket-return series U [B, n] (PnL / capital).

    Copies of one series are one trial, so the effective number and Hansen's SPA run on the
    distinct series; beyond MAX_SPA_CONFIGS a seeded random subset of them (never the top
    ones: pre-selecting the best makes SPA's p-value far too small). `n_trials` stays the
    number of configurations tried; `dsr_n_trials` is recomputed with it.
    """
    from gpu_engine import stats as gstats

    V = U
    if U.shape[1] > MAX_SPA_CONFIGS:
        rng = np.random.default_rng(1)
        V = U[:, rng.choice(U.shape[1], MAX_SPA_CONFIGS, replace=False)]
    s = gstats.summary(np.ascontiguousarray(V.T), spa_top=None)
    s["n_distinct"] = int(U.shape[1])
    s["n_series_used"] = int(V.shape[1])
    s["n_trials"] = int(n_tried)
    if s.get("best_sharpe") is not None and s.get("sr_variance") is not None:
        s["dsr_n_trials"] = float(gstats.deflated_sharpe(
            s["best_sharpe"], s["n_buckets"], s["best_skew"], s["best_kurtosis"], n_tried, s["sr_variance"]))
        s["sr0_n_trials"] = float(gstats.expected_max_sharpe(n_tried, s["sr_variance"]))
    return s


def report(ds: xr.Dataset, top: int = 20, by: str | None = None, target=None, min_trades=None,
           progress: bool = False, stages: Stages | None = None, stats: dict | None = None) -> str:
    """The text report (see the module docstring). `progress`: announce the slow steps on stderr.
    `stats`: `search_stats(ds)` when already computed (e.g. for the --html page)."""
    own = stages is None
    stages = Stages(progress, total=6) if own else stages
    try:
        return _report(ds, top, by, target, min_trades, stages, stats)
    finally:
        if own:
            stages.close()


def _report(ds, top, by, target, min_trades, stage, stats=None) -> str:
    attrs = ds.attrs
    if not attrs.get("complete", True):
        raise InputError("cube is incomplete (an interrupted grid run): run the same grid command again to finish it")
    lo, hi = target or attrs.get("target_win_rate") or (0.55, 0.60)
    min_trades = attrs.get("min_trades", 30) if min_trades is None else min_trades
    by = by or attrs.get("objective") or "sharpe"
    stage("ranking")
    m, params, n = _flat(ds)
    if by not in m:
        raise InputError(f"--by: unknown metric {by!r} (known: {', '.join(k for k in m if not k.startswith('oos_'))})")
    has_oos = m.get("oos_evaluated", np.isfinite(m.get("oos_trades", np.full(n, np.nan)))).astype(bool)
    order = [i for i in rank(m, by) if has_oos[i]][:top]
    costs = attrs.get("costs", {})
    maker = has_maker(m)
    lines = [
        f"cube: kind={attrs.get('kind')} space={attrs.get('space_name')} configurations={n} "
        f"device={attrs.get('device')} engine={attrs.get('engine_version')}",
        f"costs: fee {costs.get('fee_bps')} bps per {'taker ' if 'maker_fee_bps' in costs else ''}fill"
        + (f", maker {costs['maker_fee_bps']} bps" if "maker_fee_bps" in costs else "")
        + f", latency {costs.get('latency_ns', 0) / 1e6:g} ms, "
        f"capital {costs.get('capital')}; thresholds in {attrs.get('thresholds', 'raw')} units; "
        f"split {attrs.get('split', {}).get('is_ticks')} in-sample / {attrs.get('split', {}).get('oos_ticks')} "
        f"out-of-sample ticks",
        *contract_lines(attrs),
        *market_lines(attrs),
        *data_set_lines(attrs),
        f"target: win rate in [{lo}, {hi}], Wilson lower bound > 0.5, trades >= {min_trades}, expectancy > 0",
        f"top {len(order)} by in-sample {by} (of {int(has_oos.sum())} with out-of-sample figures):",
    ]
    swept = [p for p, v in params.items() if len(np.unique(v.astype(str))) > 1]
    fr_is = ["IS fill ratio [95% CI] n"] if maker else []
    fr_oos = ["OOS fill ratio [95% CI] n"] if maker else []
    head = (["#"] + swept + ["IS win rate [95% CI] n", *fr_is, "IS exp", "IS sharpe", "IS maxDD",
                             "OOS win rate [95% CI] n", *fr_oos, "OOS exp", "OOS sharpe", "OOS maxDD"])
    rows = [head]
    for r, i in enumerate(order, 1):
        rows.append([str(r)] + [_fmt(params[p][i]) for p in swept] + [
            _wr(m, i), *([_fr(m, i)] if maker else []), _fmt(m["expectancy"][i]), _fmt(m["sharpe"][i]),
            _fmt(m["max_drawdown"][i]),
            _wr(m, i, "oos_"), *([_fr(m, i, "oos_")] if maker else []), _fmt(m["oos_expectancy"][i]),
            _fmt(m["oos_sharpe"][i]), _fmt(m["oos_max_drawdown"][i])])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    if maker:
        lines += maker_block(m, order, has_oos)

    st = search_stats(ds, stage) if stats is None else stats
    if "pbo" in st:
        p = st["pbo"]
        lines.append(f"PBO (CSCV, {p.n_combinations} splits over {st['pbo_note']}): {p.pbo:.3f}  "
                     f"P(OOS loss of the IS best) {p.prob_loss:.3f}")
    if "dsr" in st:
        d = st["dsr"]
        lines.append(f"deflated Sharpe: best per-bucket Sharpe {d.sr:.3f} vs {d.sr0:.3f} expected from "
                     f"{int(d.n_trials)} unskilled trials -> DSR {d.dsr:.3f} "
                     f"({'significant' if d.dsr > 0.95 else 'not significant'} at 95%)")
    wf_line = walk_forward_line(st)
    if wf_line:
        lines.append(wf_line)
    lines += stats_lines(st)
    lines.append(verdict(m, has_oos, lo, hi, min_trades) + evidence(st))
    return "\n".join(lines)


# (column head, metric, format) of the maker block
MAKER_COLUMNS = (("posted", "orders_posted", "d"), ("rejected", "orders_rejected", "d"),
                 ("cancels", "cancels", "d"), ("maker fills", "maker_fills", "d"),
                 ("taker fills", "taker_fills", "d"), ("queue wait s", "mean_queue_wait_s", ".3g"),
                 ("fees maker", "fees_maker", ".4g"), ("fees taker", "fees_taker", ".4g"))


def maker_block(m: dict, order, has_oos) -> list[str]:
    """The order flow of the listed configurations (a run with maker orders), in and out of sample,
    and a plain warning when their maker fill ratio is low."""
    from sweeps.market_settings import LOW_FILL_RATIO

    head = ["#", "part", "fill ratio [95% CI] n"] + [h for h, _, _ in MAKER_COLUMNS]
    rows = [head]
    low = []
    for r, i in enumerate(order, 1):
        for part, prefix in (("IS", ""), ("OOS", "oos_")):
            if prefix and not has_oos[i]:
                continue
            cells = [str(r), part, _fr(m, i, prefix)]
            for _, key, spec in MAKER_COLUMNS:
                v = m.get(prefix + key)
                cells.append("-" if v is None else _fmt(v[i], ".4g" if spec == "d" else spec))
            rows.append(cells)
            ratio, _, _, n = fill_ratio_ci(m, i, prefix) if prefix + "maker_fill_ratio" in m else (np.nan, 0, 0, 0)
            if n > 0 and ratio < LOW_FILL_RATIO:
                low.append(f"#{r} {part} {ratio:.3f} of {n} orders")
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    out = ["maker orders of the listed configurations (fill ratio = filled / posted quantity, n = orders "
           "posted; fees in the settlement currency):"]
    out += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    if low:
        out.append(f"LOW MAKER FILL RATIO (< {LOW_FILL_RATIO:g}): {', '.join(low)}. These configurations fill "
                   "little of what they post, so their win rates describe the few orders that filled, not the "
                   "signal: a passive strategy that wins most of the few trades it gets filled on is not a "
                   "strategy.")
    return out


def contract_lines(attrs: dict) -> list[str]:
    """The contract, the queue model and where the fees came from (sweeps/market_settings.py)."""
    from sweeps import market_settings

    costs = attrs.get("costs") or {}
    try:
        return market_settings.describe(costs)
    except Exception:  # an older or foreign costs record: nothing to add
        return []


def market_lines(attrs: dict) -> list[str]:
    """A bar market's description (--data blocks) and, for a fixed-parameter companion search, what
    was substituted."""
    out = []
    info = attrs.get("market")
    settings = (attrs.get("costs") or {}).get("market")
    if isinstance(info, dict) and info.get("kind") == "blocks-bars":
        from gpu_engine.data.blocks.market import describe

        out.append(describe(info))
    elif isinstance(settings, dict):  # a grid cube: the bar settings only (they are in its costs)
        spread = "by era" if settings.get("spread_bps") is None else f"{settings['spread_bps']:g} bps"
        out.append(f"market: bars of {settings.get('bar')} from the block dataset, spread {spread}, "
                   f"${settings.get('liquidity', 0):,.0f} displayed per side"
                   + ("; --allow-modelled-prices: bars may carry MODELLED prices"
                      if settings.get("allow_modelled_prices") else ""))
    subs = attrs.get("substituted")
    if subs:
        out.append("features: FIXED published parameters (look-ahead) in place of the causal fits: "
                   + ", ".join(f"{a} -> {b}" for a, b in subs))
    return out


def _column(ds: xr.Dataset, st: dict) -> dict:
    """The figures of one search for `lookahead_comparison`."""
    m, params, n = _flat(ds)
    capital = float(ds.attrs.get("costs", {}).get("capital", 1.0))
    by = ds.attrs.get("objective") or "sharpe"
    has_oos = m.get("oos_evaluated", np.zeros(n, bool)).astype(bool)
    order = [i for i in rank(m, by) if has_oos[i]]
    trades = np.nan_to_num(m["trades"], nan=0.0) > 0
    lo, hi = ds.attrs.get("target_win_rate") or (0.55, 0.60)
    min_trades = ds.attrs.get("min_trades", 30)
    def best(v):
        return float(np.nanmax(np.where(trades, v, np.nan))) if trades.any() else float("nan")

    col = {
        "is_best_sharpe": best(m["sharpe"]),
        "is_best_net": best(m["net_pnl"]) / capital,
        "is_median_value": float(np.median(np.asarray(ds["value"].values, dtype=np.float64))),
        "is_trading_share": float(trades.mean()),
    }
    if order:
        i = order[0]
        col.update(top=_wr(m, i) + f", exp {_fmt(m['expectancy'][i])}",
                   oos_top=_wr(m, i, "oos_") + f", exp {_fmt(m['oos_expectancy'][i])}",
                   oos_top_sharpe=float(m["oos_sharpe"][i]), oos_top_net=float(m["oos_net_pnl"][i]) / capital,
                   oos_median_sharpe=float(np.nanmedian(m["oos_sharpe"][has_oos])),
                   oos_median_net=float(np.nanmedian(m["oos_net_pnl"][has_oos])) / capital,
                   signal=str(params["signal"][i]) if "signal" in params else "")
    col["wf_sharpe"] = float(st["wf"].oos_sharpe) if "wf" in st else float("nan")
    col["pbo"] = float(st["pbo"].pbo) if "pbo" in st else float("nan")
    s = st.get("stats") or {}
    col["dsr"] = s.get("dsr_n_trials")
    col["spa"] = s.get("spa_pvalue_consistent")
    col["verdict"] = verdict(m, has_oos, lo, hi, min_trades).split(" - ")[0].replace("VERDICT: ", "")
    return col


def _signal_figures(ds: xr.Dataset, label: str) -> dict:
    """In-sample best Sharpe and net PnL / capital, and the walk-forward out-of-fold Sharpe, over the
    configurations of one signal (e.g. pl_under) only."""
    m, params, n = _flat(ds)
    sig = np.asarray(params.get("signal", np.full(n, ""))).astype(str)
    pick = (sig == label) & (np.nan_to_num(m["trades"], nan=0.0) > 0)
    out = {"n": int((sig == label).sum()), "best_sharpe": float("nan"), "best_net": float("nan"),
           "wf_sharpe": float("nan")}
    if not pick.any():
        return out
    capital = float(ds.attrs.get("costs", {}).get("capital", 1.0))
    out["best_sharpe"] = float(np.nanmax(m["sharpe"][pick]))
    out["best_net"] = float(np.nanmax(m["net_pnl"][pick])) / capital
    b = ds["bucket_pnl"]
    dims = [d for d in b.dims if d != "bucket"] + ["bucket"]
    M = np.asarray(b.transpose(*dims).values, dtype=np.float64).reshape(-1, b.sizes["bucket"])[pick].T / capital
    M = M[:, np.isfinite(M).all(axis=0)]
    wf = ds.attrs.get("walk_forward") or {}
    n_folds, mode = int(wf.get("n_folds", 4)), str(wf.get("mode", "rolling"))
    if M.shape[1] >= 1 and M.shape[0] >= 10 and M.shape[0] // (n_folds + 1) >= 1:
        try:
            out["wf_sharpe"] = float(validation.walk_forward(M, n_folds=n_folds, mode=mode).oos_sharpe)
        except ValueError:
            pass
    return out


def lookahead_comparison(causal: xr.Dataset, fixed: xr.Dataset, st_causal: dict | None = None,
                         st_fixed: dict | None = None) -> str:
    """The causal search beside the same search on the fixed-parameter (look-ahead) features, and how
    much of the in-sample edge the look-ahead accounts for."""
    st_causal = search_stats(causal) if st_causal is None else st_causal
    st_fixed = search_stats(fixed) if st_fixed is None else st_fixed
    a, b = _column(causal, st_causal), _column(fixed, st_fixed)
    subs = fixed.attrs.get("substituted") or []
    head_a = "causal (" + ", ".join(x for x, _ in subs) + ")" if subs else "causal"
    head_b = "fixed (look-ahead)"

    def f(v, spec=".4g"):
        return "n/a" if v is None else _fmt(v, spec)

    table = [  # (label, key, number format or None for text)
        ("in-sample: best per-bucket Sharpe (configurations that trade)", "is_best_sharpe", ".4g"),
        ("in-sample: best net PnL / capital", "is_best_net", ".4g"),
        ("in-sample: median trial value (neighbourhood median objective)", "is_median_value", ".4g"),
        ("in-sample: share of configurations that trade", "is_trading_share", ".3f"),
        ("in-sample: top configuration", "top", None),
        ("in-sample: top configuration's signal", "signal", None),
        ("walk-forward out-of-fold Sharpe", "wf_sharpe", ".4g"),
        ("out-of-sample: top configuration", "oos_top", None),
        ("out-of-sample: top configuration Sharpe", "oos_top_sharpe", ".4g"),
        ("out-of-sample: top configuration net PnL / capital", "oos_top_net", ".4g"),
        ("out-of-sample: median Sharpe of those re-evaluated", "oos_median_sharpe", ".4g"),
        ("PBO", "pbo", ".3f"),
        ("DSR (N = configurations tried)", "dsr", ".3g"),
        ("Hansen SPA p", "spa", ".3g"),
        ("verdict", "verdict", None),
    ]
    rows = [(label, a.get(key, "-") if spec is None else f(a.get(key), spec),
             b.get(key, "-") if spec is None else f(b.get(key), spec)) for label, key, spec in table]
    pairs = []
    for c_name, f_name in subs:
        fa, fb = _signal_figures(causal, c_name), _signal_figures(fixed, f_name)
        pairs.append((c_name, f_name, fa, fb))
        rows += [
            (f"{c_name} vs {f_name}: configurations", f(fa["n"]), f(fb["n"])),
            (f"{c_name} vs {f_name}: in-sample best Sharpe", f(fa["best_sharpe"]), f(fb["best_sharpe"])),
            (f"{c_name} vs {f_name}: in-sample best net PnL / capital", f(fa["best_net"]), f(fb["best_net"])),
            (f"{c_name} vs {f_name}: walk-forward out-of-fold Sharpe", f(fa["wf_sharpe"]), f(fb["wf_sharpe"])),
        ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(head_a), *(len(r[1]) for r in rows))
    w2 = max(len(head_b), *(len(r[2]) for r in rows))
    lines = ["look-ahead check: the same search, causal fits vs the fixed published parameters",
             f"{'':<{w0}}  {head_a:>{w1}}  {head_b:>{w2}}"]
    lines += [f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}" for r in rows]
    for c_name, f_name, fa, fb in pairs:
        lines.append(lookahead_share(fa["best_sharpe"], fb["best_sharpe"], f"in-sample best Sharpe of {c_name}"))
    lines.append(lookahead_share(a["is_best_sharpe"], b["is_best_sharpe"],
                                 "in-sample best Sharpe of the whole search (every signal)"))
    lines.append(lookahead_share(a["is_best_net"], b["is_best_net"], "in-sample best net PnL of the whole search"))
    return "\n".join(lines)


def lookahead_share(causal: float, fixed: float, what: str) -> str:
    """How much of the fixed-parameter search's edge (`what`) the look-ahead accounts for."""
    if not (np.isfinite(causal) and np.isfinite(fixed)):
        return f"look-ahead share of the {what}: n/a (a search without trades)"
    if fixed <= 0:
        return (f"look-ahead share of the {what}: n/a - the fixed-parameter search has no edge to explain "
                f"({fixed:.4g}; causal {causal:.4g})")
    share = (fixed - causal) / fixed
    if share <= 0:
        return (f"look-ahead share of the {what}: 0% - the causal search does as well ({causal:.4g} vs {fixed:.4g} "
                "with the fixed parameters)")
    return (f"look-ahead share of the {what}: {100 * min(share, 1.0):.0f}% of the fixed-parameter edge "
            f"({fixed:.4g}) is gone with causal fits ({causal:.4g})" + (" - all of it" if share >= 1 else ""))


def data_set_lines(attrs: dict) -> list[str]:
    """A data set of several stores: how many, and every gap between them."""
    stores = attrs.get("stores")
    if not stores:
        return []
    gaps = attrs.get("store_gaps") or []
    out = [f"data: {len(stores)} stores read as one series, {stores[0].get('first')} to {stores[-1].get('last')}; "
           f"{len(gaps)} gap(s) between stores" + (":" if gaps else "")]
    out += [f"  gap {g.get('from')} -> {g.get('to')} ({g.get('seconds', 0) / 3600:.2f} h) between "
            f"{Path(g.get('after', '')).name} and {Path(g.get('before', '')).name}" for g in gaps[:20]]
    if len(gaps) > 20:
        out.append(f"  ... and {len(gaps) - 20} more (cube attrs `store_gaps`)")
    return out


def stats_attrs(st: dict) -> dict:
    """The search statistics as plain JSON for the cube's attrs (`search_stats`)."""
    out = {"n_tried": int(st.get("n_tried", 0)), "n_distinct": st.get("n_distinct")}
    if "pbo" in st:
        out.update(pbo=float(st["pbo"].pbo), pbo_prob_loss=float(st["pbo"].prob_loss),
                   pbo_splits=int(st["pbo"].n_combinations), pbo_note=st.get("pbo_note"))
    if "dsr" in st:
        d = st["dsr"]
        out.update(dsr=float(d.dsr), dsr_best_sharpe=float(d.sr), dsr_sr0=float(d.sr0), dsr_n_trials=int(d.n_trials))
    if "wf" in st:
        out["walk_forward_oos_sharpe"] = float(st["wf"].oos_sharpe)
    if st.get("stats"):
        out["trials"] = dict(st["stats"])
    return out


def _g(v, spec=".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def stats_lines(st: dict) -> list[str]:
    """The text report's lines for gpu_engine.stats (effective trials, Sharpe errors, MinTRL, SPA)."""
    s = st.get("stats")
    if not s:
        return []
    sub = (f", a random {s['n_series_used']} of them" if s["n_series_used"] < s["n_distinct"] else "")
    return [
        f"effective trials: {_g(s['n_effective'])} of {s['n_trials']} tried ({s['n_distinct']} distinct bucket "
        f"series{sub}; entropy effective rank of their correlations, at most {s['n_effective_cap']} with "
        f"{s['n_buckets']} buckets) -> DSR {_g(s['dsr_n_effective'])} with it, {_g(s['dsr_n_trials'])} with all "
        f"{s['n_trials']}",
        f"best per-bucket Sharpe {_g(s['best_sharpe'])}: standard error {_g(s['sharpe_se_iid'])} (IID normal), "
        f"{_g(s['sharpe_se_mertens'])} (Mertens: skew, kurtosis), {_g(s['sharpe_se_lo_hac'])} (Lo: autocorrelation, "
        f"HAC); minimum track record {_g(s['min_trl'])} buckets at 95% (have {s['n_buckets']})",
        f"Hansen SPA, best vs zero ({s['spa_reps']} stationary-bootstrap draws over {s['spa_n_models']} series): "
        f"p = {_g(s['spa_pvalue_consistent'])} (consistent; lower {_g(s['spa_pvalue_lower'])}, upper "
        f"{_g(s['spa_pvalue_upper'])})",
    ]


def evidence(st: dict) -> str:
    """What the verdict cites: PBO, DSR with N and with the effective N, SPA."""
    parts = []
    if "pbo" in st:
        parts.append(f"PBO {st['pbo'].pbo:.2f}")
    s = st.get("stats") or {}
    if s.get("dsr_n_trials") is not None:
        parts.append(f"DSR {_g(s['dsr_n_trials'])} (N={s['n_trials']}) / {_g(s['dsr_n_effective'])} "
                     f"(N_eff={_g(s['n_effective'])})")
    elif "dsr" in st:
        parts.append(f"DSR {st['dsr'].dsr:.3f}")
    if s.get("spa_pvalue_consistent") is not None:
        parts.append(f"SPA p={_g(s['spa_pvalue_consistent'])}")
    return f" [in-sample search: {', '.join(parts)}]" if parts else ""


def verdict(m: dict, has_oos: np.ndarray, lo: float, hi: float, min_trades: int) -> str:
    wr, wl = m["oos_win_rate"], m["oos_win_rate_lo"]
    ok = (has_oos & (wr >= lo) & (wr <= hi) & (wl > 0.5) & (m["oos_trades"] >= min_trades)
          & (m["oos_expectancy"] > 0))
    n_oos = int(has_oos.sum())
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmax(np.nan_to_num(m["oos_expectancy"][ok], nan=-np.inf))])
        text = (f"VERDICT: YES - {int(ok.sum())} of {n_oos} configurations tested out of sample meet the target "
                f"with positive expectancy after costs (e.g. win rate {_wr(m, i, 'oos_')}, expectancy "
                f"{m['oos_expectancy'][i]:.4g}); check PBO and DSR above before trusting it.")
        if "oos_maker_fill_ratio" in m and "oos_orders_posted" in m:
            from sweeps.market_settings import LOW_FILL_RATIO

            r, lo_r, hi_r, n_posted = fill_ratio_ci(m, i, "oos_")
            if n_posted > 0:
                text += f" Its maker fill ratio: {_fr(m, i, 'oos_')}"
                text += (f" - LOW: it fills less than {LOW_FILL_RATIO:g} of what it posts; the win rate is that of "
                         "the few fills." if r < LOW_FILL_RATIO else ".")
        return text
    return (f"VERDICT: NO - none of the {n_oos} configurations tested out of sample reaches a win rate in "
            f"[{lo}, {hi}] with Wilson lower bound > 0.5, >= {min_trades} trades and positive expectancy "
            f"after costs.")


def heatmap(ds: xr.Dataset, x: str, y: str, metric: str, png: str | Path, agg: str = "median") -> Path:
    """A PNG of `metric` over parameters x and y (aggregated over the others by `agg`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    m, params, n = _flat(ds)
    for p in (x, y):
        if p not in params:
            raise InputError(f"--heatmap: unknown parameter {p!r} (known: {', '.join(params)})")
    if metric not in m:
        raise InputError(f"--metric: unknown metric {metric!r}")
    df = pd.DataFrame({"x": _binned(params[x]), "y": _binned(params[y]), "v": m[metric]})
    tab = df.pivot_table(index="y", columns="x", values="v", aggfunc=agg, observed=True)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * tab.shape[1], 1.2 + 0.5 * tab.shape[0]))
    im = ax.imshow(tab.values, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(tab.shape[1]), [_fmt(c) for c in tab.columns], rotation=45, ha="right")
    ax.set_yticks(range(tab.shape[0]), [_fmt(c) for c in tab.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{agg} in-sample {metric}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp.png")
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=100)
        tmp.replace(png)
    except OSError as exc:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        raise InputError(f"{png}: --png: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return png


def _binned(v: np.ndarray):
    """Values as they are (sorted numerically when numeric); a continuous parameter with many
    values goes into 10 quantile bins labelled by their ranges, in order."""
    import pandas as pd

    if v.dtype.kind in "fiu" and len(np.unique(v)) > 12:
        cut = pd.qcut(v.astype(float), 10, duplicates="drop")
        labels = [f"{iv.left:.3g}-{iv.right:.3g}" for iv in cut.categories]
        return pd.Categorical.from_codes(cut.codes, categories=labels, ordered=True)
    return v


def build_parser():
    p = _common.Parser(prog="python -m sweeps.inspect", description=__doc__.splitlines()[0])
    p.add_argument("cube")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--by", default=None, help="in-sample metric to rank by (default: the search objective)")
    p.add_argument("--target-win-rate", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    p.add_argument("--min-trades", type=int, default=None)
    p.add_argument("--heatmap", nargs=2, metavar=("PARAM_X", "PARAM_Y"))
    p.add_argument("--metric", default="win_rate")
    p.add_argument("--agg", default="median", choices=("median", "mean", "max", "min"))
    p.add_argument("--png", default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("--html", default=None, metavar="PAGE.html",
                   help="also write the report as one self-contained HTML page (sweeps/report_html.py)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --html page written by this engine")
    return p


REQUIRED = tuple(METRICS) + tuple(f"oos_{m}" for m in METRICS) + ("bucket_pnl",)
# the rules v2 order-flow metrics (maker_fills ... fees_taker): a cube of an older engine lacks them;
# the text report then shows no maker block
V2_METRICS = tuple(METRICS[METRICS.index("maker_fills"):])
REPORT_REQUIRED = tuple(v for v in REQUIRED if v not in V2_METRICS and v.removeprefix("oos_") not in V2_METRICS)


def open_checked(path: str | Path, require: bool = True) -> xr.Dataset:
    """Open the cube at `path` lazily; anything that is not a complete result cube of ours -> InputError.

    `require`: a cube lacking a variable of the current schema (REQUIRED) is refused too
    (the text report needs them all; the HTML page passes False and says what it cannot show).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such cube")
    if not outputs.is_ours(path, "cube"):
        what = "a book store" if outputs.is_ours(path, "book-store") else "not a result cube of this engine"
        raise InputError(f"{path}: {what} (a cube is the --out of sweeps.optimize or sweeps.grid)")
    try:
        ds = xr.open_zarr(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable cube ({_first_line(exc)})") from None
    missing = [v for v in REPORT_REQUIRED if v not in ds.variables] if require else []
    if missing:
        raise InputError(f"{path}: corrupt cube: variable {missing[0]!r} is missing")
    if not ds.attrs.get("complete", True):
        raise InputError(f"{path}: cube is incomplete (an interrupted grid run): "
                         "run the same grid command again to finish it")
    return ds


def load_checked(ds: xr.Dataset, path) -> xr.Dataset:
    """Read every array of the cube into memory; unreadable chunks -> InputError."""
    try:
        return ds.load()
    except Exception as exc:
        raise InputError(f"{path}: corrupt cube: cannot read its arrays ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def run(args) -> int:
    path = Path(args.cube)
    if args.target_win_rate:
        lo, hi = args.target_win_rate
        if not (0 <= lo <= 1 and 0 <= hi <= 1) or lo > hi:
            raise InputError(f"--target-win-rate: values {lo!r} {hi!r} must be in [0, 1] with lo <= hi")
    if args.top < 1:
        raise InputError(f"--top: value {args.top!r} must be >= 1")
    if args.min_trades is not None and args.min_trades < 0:
        raise InputError(f"--min-trades: value {args.min_trades!r} must be >= 0")
    if args.heatmap and not args.png:
        raise InputError("--heatmap needs --png OUT.png")
    if args.png and not args.heatmap:
        raise InputError("--png needs --heatmap PARAM_X PARAM_Y")
    if args.overwrite and not args.html:
        raise InputError("--overwrite needs --html PAGE.html")
    if args.html:
        return _run_html(args, path)
    ds = open_checked(path)
    stages = Stages(not args.no_progress, total=7)
    try:
        stages("reading the cube")
        ds = load_checked(ds, path)
        if args.heatmap:
            out = heatmap(ds, args.heatmap[0], args.heatmap[1], args.metric, args.png, args.agg)
            print(f"heatmap: {out}")
        text = report(ds, args.top, args.by, args.target_win_rate, args.min_trades, stages=stages)
        companion = ds.attrs.get("companion_fixed")
        if companion and Path(companion).exists():  # the same search on the fixed-parameter features
            try:
                fixed = load_checked(open_checked(companion), companion)
            except InputError as exc:
                text += f"\nlook-ahead check: the fixed-parameter cube cannot be read ({exc})"
            else:
                text += "\n" + lookahead_comparison(ds, fixed)
    finally:
        stages.close()
    print(text)
    return 0


def _run_html(args, path: Path) -> int:
    """--html: the page (sweeps/report_html.py), then the text report when the cube allows it.

    A cube lacking variables of the current schema (no out-of-sample figures, an older cube) still
    gets its page, which says what it cannot show; the text report is then replaced by one line
    naming what is missing."""
    from sweeps import report_html

    report_html.check_target(args.html, args.overwrite, "--html", cube=path)
    stages = Stages(not args.no_progress, total=15)
    try:
        stages("reading the cube")
        ds = report_html.open_cube(path)
        if args.heatmap:
            out = heatmap(ds, args.heatmap[0], args.heatmap[1], args.metric, args.png, args.agg)
            print(f"heatmap: {out}")
        missing = report_html.missing_variables(ds)
        try:
            st = search_stats(ds, stages) if "bucket_pnl" in ds.variables else None
        except Exception:  # an odd bucket_pnl: the page's sections say why
            st = None
        page = report_html.build(ds, top=args.top, by=args.by, target=args.target_win_rate,
                                 min_trades=args.min_trades, stage=stages, stats=st, cube_path=path)
        report_html.write_text(page, args.html)
        text = None if missing else report(ds, args.top, args.by, args.target_win_rate, args.min_trades,
                                           stages=stages, stats=st)
    finally:
        stages.close()
    if text is not None:
        print(text)
    else:
        print(f"{path}: no text report: the cube lacks {', '.join(missing[:6])}"
              + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
              + " (the page says what it cannot show)", file=sys.stderr)
    print(f"page: {args.html}")
    return 0


def main(argv=None) -> int:
    return _common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
