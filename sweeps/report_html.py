"""The HTML report of a result cube: ONE self-contained page that opens offline.

    python -m sweeps.inspect CUBE.zarr --html report.html [--overwrite]

(`sweeps.optimize` and `sweeps.grid` also write it beside their cube at the end of a run:
`results/NAME.zarr` -> `results/NAME.html`, unless `--no-html`.)

The page holds plotly.js inlined once (no CDN, no network) and each chart as a plotly div
(`plotly.io.to_html(fig, full_html=False, include_plotlyjs=False)`) wrapped in
`<div class="chart" data-chart="NAME">`. Sections, each of which says what it cannot show
instead of failing (a cube without out-of-sample variables, without `bucket_pnl`, of an older
schema, data that moved or changed):

1. verdict: the same words as the text report (`sweeps.inspect.verdict`);
2. top configurations, in- and out-of-sample side by side (ranking of `sweeps.inspect`), with the
   maker fill ratio beside the win rate when the run posted maker orders, and then the maker
   orders of those configurations (`sweeps.inspect.maker_block`, its low fill ratio warning);
3. heatmap (`data-chart="heatmap"`) of a chosen metric over any two of the first MAX_HEAT_PARAMS
   swept parameters, each other parameter either on "any" (the cell aggregates over all its
   values: median, or max with 'agg') or fixed at one of its values / bins; a plain inline script
   aggregates in the browser, on per-configuration cell codes (uint8) and metric values (float32)
   embedded as base64. Numeric parameters with more than MAX_BINS values are binned (bins of about
   equal counts, labelled by the values they hold), string ones keep MAX_CATEGORIES values. Beyond
   a byte budget (HEAT_MAX_BYTES) the page holds the top HEAT_TOP_ROWS configurations by its ranking
   plus a seeded random sample of the rest, says so, and embeds the exact matrices of every view
   with nothing fixed (all configurations, computed in Python), so the default view stays exact
   (sweeps/report_html_heatmap.py);
4. the CSCV logits of PBO as a histogram binned in Python (`data-chart="pbo"`);
5. deflated Sharpe (gpu_engine.validation via `sweeps.inspect.search_stats`) and the
   statistics `search_stats` takes from gpu_engine.stats (effective number of trials, DSR with
   both counts, Sharpe standard errors, MinTRL, SPA p-values) as a table;
6. parameter importance (`data-chart="importance"`): Optuna's fANOVA evaluator when
   scikit-learn is installed, else Optuna's PED-ANOVA evaluator (no scikit-learn needed; the
   page names the one used), on frozen trials built from a random subsample of at most
   IMPORTANCE_ROWS configurations (objective = the cube's in-sample objective);
7. equity curves (`data-chart="equity"`) of the top N_CURVES configurations, recomputed with the
   plain-Python oracle (gpu_engine/oracle.py) on the cube's own data: equity marked to market at
   every tick, drawn at <= CURVE_POINTS points per curve; only when the data files are where
   the cube says and their sha256 matches;
8. cost model (fees and where they came from, the contract, the queue model) and provenance
   (cube attrs), the space file.

Charts are aggregated before plotting (never one point per configuration); the heatmap's data
is capped by its byte budget, so the page of a cube of 1e6 configurations is about 16 MB (plotly.js
4.7 MB, the heatmap's rows ~11 MB) and takes about 25 s of CPU to build with 64 buckets (the SCALE
test of tests/test_report_html.py), most of it reading the cube and the search statistics
(sweeps.inspect.search_stats: distinct series, SPA, PBO).
"""
from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from gpu_engine import outputs
from gpu_engine.enums import METRICS
from gpu_engine.errors import InputError

from sweeps.report_html_heatmap import (  # noqa: F401  (the heatmap's limits: see that module)
    HEAT_AGGS,
    HEAT_MAX_BYTES,
    HEAT_METRICS,
    HEAT_TOP_ROWS,
    MAX_BINS,
    MAX_CATEGORIES,
    MAX_HEAT_PARAMS,
)

GENERATOR = "gpu-sweep-engine"
GENERATOR_META = f'<meta name="generator" content="{GENERATOR}">'
IMPORTANCE_ROWS = 3000
N_CURVES = 5
CURVE_POINTS = 1500
ORACLE_TICK_BUDGET = 2_500_000  # ticks the plain-Python oracle may walk in total (~1-2 s per 100k)
LOGIT_BINS = 40


class Missing(Exception):
    """A section cannot be shown; the message says why (shown on the page)."""


# ------------------------------------------------------------------ opening a cube

def open_cube(path: str | Path) -> xr.Dataset:
    """Open and load a cube for the page. Not a cube of ours / unreadable -> InputError;
    missing variables are not an error here (the page says what it cannot show)."""
    from sweeps import inspect

    path = Path(path)
    inspect.open_checked(path, require=False)  # refuses what is not a complete cube of ours
    try:  # without dask (chunks=None): every array is read whole, 2-3x faster than dask's chunked load
        ds = xr.open_zarr(path, chunks=None)
    except Exception as exc:
        raise InputError(f"{path}: not a readable cube ({inspect._first_line(exc)})") from None
    return inspect.load_checked(ds, path)


def missing_variables(ds: xr.Dataset) -> list[str]:
    """Variables of the current schema that the cube lacks (sweeps.inspect.REQUIRED)."""
    from sweeps import inspect

    return [v for v in inspect.REQUIRED if v not in ds.variables]


# ------------------------------------------------------------------ writing

def is_our_page(path: str | Path) -> bool:
    """Whether `path` is a regular file holding a page this module wrote (its generator meta)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return GENERATOR_META.encode() in head


def check_target(path: str | Path, overwrite: bool, flag: str = "--html", cube: str | Path | None = None) -> Path:
    """May the page be written at `path`? Before any work: refuses (InputError) the cube itself or
    a path inside it, an unwritable parent, an existing path without `overwrite`, and anything
    existing that is not a page of ours (a folder, a user's file) even with it."""
    path = Path(path)
    if cube is not None and outputs._same_or_nested(path.absolute().resolve(), Path(cube).absolute().resolve()):
        raise InputError(f"{path}: {flag}: is (or overlaps) the cube {cube}; choose another path")
    outputs.check_parent_writable(path, flag)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise InputError(f"{path}: {flag}: already exists; pass --overwrite to replace it or choose another path")
        if not is_our_page(path):
            raise InputError(f"{path}: {flag}: exists and is not a page written by this engine; "
                             "refusing to replace it even with --overwrite")
    outputs.clean_stale_temps(path)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write `text` to a temporary sibling, then os.replace it over `path` (already checked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = outputs.tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def page_path_for(cube: str | Path) -> Path:
    """`results/NAME.zarr` -> `results/NAME.html` (any other name: NAME + .html)."""
    cube = Path(cube)
    return cube.with_suffix(".html") if cube.suffix == ".zarr" else cube.with_name(cube.name + ".html")


def write_beside(cube: str | Path, log=print, **kw) -> Path | None:
    """The end-of-run page of sweeps.optimize / sweeps.grid, beside the cube. A page of ours
    there is replaced; anything else there is left alone (a warning, no page). Never raises:
    the run itself succeeded."""
    import sys

    cube = Path(cube)
    out = page_path_for(cube)
    try:
        if (out.exists() or out.is_symlink()) and not is_our_page(out):
            print(f"report page: {out} exists and was not written by this engine; left alone "
                  f"(python -m sweeps.inspect {cube} --html OTHER.html)", file=sys.stderr)
            return None
        check_target(out, overwrite=True, flag="report page", cube=cube)
        t0 = time.perf_counter()
        ds = open_cube(cube)
        write_text(build(ds, cube_path=cube, **kw), out)
        log(f"report page: {out}  [{time.perf_counter() - t0:.1f} s]")
        return out
    except Exception as exc:  # noqa: BLE001 - the cube is written; the page is a bonus
        from sweeps import inspect

        print(f"report page: not written ({inspect._first_line(exc)})", file=sys.stderr)
        return None


# ------------------------------------------------------------------ small helpers

def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v, spec=".4g") -> str:
    from sweeps import inspect

    try:
        return inspect._fmt(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _script_json(text: str) -> str:
    """JSON safe inside a <script> element."""
    return text.replace("</", "<\\/")


def _fig_html(fig, name: str, div_id: str) -> str:
    import plotly.io as pio

    inner = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                        config={"displaylogo": False, "responsive": True})
    return f'<div class="chart" data-chart="{_e(name)}">{inner}</div>'


def _note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{_e(text)}</p>'


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


# ------------------------------------------------------------------ the context shared by sections

class _Ctx:
    def __init__(self, ds: xr.Dataset, top, by, target, min_trades):
        from sweeps import inspect

        self.ds = ds
        self.attrs = dict(ds.attrs)
        self.kind = self.attrs.get("kind")
        self.missing = missing_variables(ds)
        try:
            self.m, self.params, self.n = inspect._flat(ds)
        except Exception as exc:  # an older layout
            raise Missing(f"the cube's layout is not understood ({inspect._first_line(exc)})") from None
        lo, hi = target or self.attrs.get("target_win_rate") or (0.55, 0.60)
        self.lo, self.hi = float(lo), float(hi)
        self.min_trades = int(self.attrs.get("min_trades", 30) if min_trades is None else min_trades)
        self.by = by or self.attrs.get("objective") or "sharpe"
        self.top = top
        self.oos_vars = [f"oos_{k}" for k in METRICS if f"oos_{k}" in self.m]
        self.has_oos_vars = all(f"oos_{k}" in self.m for k in ("trades", "win_rate", "win_rate_lo",
                                                                "win_rate_hi", "expectancy"))
        n = self.n
        if self.has_oos_vars:
            self.has_oos = self.m.get("oos_evaluated", np.isfinite(self.m["oos_trades"])).astype(bool)
        else:
            self.has_oos = np.zeros(n, bool)
        self.swept = [p for p, v in self.params.items() if _n_unique(v) > 1]
        self.stats = None
        self.order = self._ranking()

    def _ranking(self) -> list[int]:
        """The text report's ranking (`inspect.rank`: trading rows first, then by the in-sample
        metric), rows with out-of-sample figures only (every row when the cube has no out-of-sample variables)."""
        if self.by not in self.m:
            raise InputError(f"--by: unknown metric {self.by!r} "
                             f"(known: {', '.join(k for k in self.m if not k.startswith('oos_'))})")
        from sweeps import inspect

        idx = self.full_rank = inspect.rank(self.m, self.by)
        if self.has_oos_vars:
            idx = idx[self.has_oos[idx]]
        return [int(i) for i in idx[: self.top]]


def _n_unique(v: np.ndarray) -> int:
    try:
        return len(np.unique(v))
    except TypeError:
        return len(set(v.tolist()))


# ------------------------------------------------------------------ sections

def _verdict(c: _Ctx) -> str:
    from sweeps import inspect

    need = ["oos_win_rate", "oos_win_rate_lo", "oos_trades", "oos_expectancy"]
    miss = [v for v in need if v not in c.m]
    if miss:
        raise Missing(f"no verdict: the cube has no out-of-sample figures ({', '.join(miss)} missing)")
    text = inspect.verdict(c.m, c.has_oos, c.lo, c.hi, c.min_trades)
    try:  # the same evidence the text report's verdict cites (computed once, cached in c.stats)
        text += inspect.evidence(_search_stats(c, lambda what: None))
    except Exception:  # noqa: BLE001  (a cube without bucket_pnl: the verdict stands alone)
        pass
    cls = "yes" if text.startswith("VERDICT: YES") else "no"
    return (f'<p class="verdict {cls}" id="verdict">{_e(text)}</p>'
            + _note(f"Target: win rate in [{c.lo:g}, {c.hi:g}] out of sample, Wilson 95% lower bound > 0.5, "
                    f">= {c.min_trades} trades, expectancy > 0 after costs."))


def _wr_cell(m, i, prefix="") -> str:
    t = m.get(f"{prefix}trades")
    if t is None or not t[i] > 0:
        return "no trades"
    lo, hi = m.get(f"{prefix}win_rate_lo"), m.get(f"{prefix}win_rate_hi")
    ci = f" [{lo[i]:.3f}, {hi[i]:.3f}]" if lo is not None and hi is not None else ""
    return f"{m[prefix + 'win_rate'][i]:.3f}{ci}"


def _fr_cell(m, i, prefix="") -> str:
    """The maker fill ratio beside the win rate: ratio [Wilson 95%] n=orders posted."""
    from sweeps import inspect

    if f"{prefix}maker_fill_ratio" not in m or f"{prefix}orders_posted" not in m:
        return "-"
    r, lo, hi, n = inspect.fill_ratio_ci(m, i, prefix)
    return "no orders" if n <= 0 else f"{r:.3f} [{lo:.3f}, {hi:.3f}] n={n}"


def _top_table(c: _Ctx) -> str:
    from sweeps import inspect

    m = c.m
    maker = inspect.has_maker(m)
    cols = [("trades", "trades"), ("win rate [95% Wilson]", None)]
    if maker:
        cols.append(("maker fill ratio [95% Wilson] n", "!fill"))
    cols += [("expectancy", "expectancy"), ("Sharpe", "sharpe"), ("max DD", "max_drawdown")]
    head = ["#"] + c.swept + [f"IS {n}" for n, _ in cols] + ([f"OOS {n}" for n, _ in cols] if c.has_oos_vars else [])
    rows = []
    for r, i in enumerate(c.order, 1):
        row = [str(r)] + [_fmt(c.params[p][i]) for p in c.swept]
        for prefix in ("", "oos_") if c.has_oos_vars else ("",):
            for _, key in cols:
                if key is None:
                    row.append(_wr_cell(m, i, prefix))
                elif key == "!fill":
                    row.append(_fr_cell(m, i, prefix))
                else:
                    v = m.get(prefix + key)
                    row.append("-" if v is None else _fmt(v[i]))
        rows.append(row)
    notes = [f"Top {len(c.order)} by in-sample {c.by}"]
    if c.has_oos_vars:
        notes.append(f"of the {int(c.has_oos.sum())} configurations with out-of-sample figures")
    out = _note(" ".join(notes) + f" ({c.n} configurations in the cube). Drawdown and expectancy in account "
                                  "currency; Sharpe per bucket, not annualised.")
    if maker:
        out += _note("Maker fill ratio = filled / posted quantity of maker orders, n = orders posted (interval: "
                     "Wilson 95%, each posted order one trial). A win rate over few fills says little.")
    if not c.has_oos_vars:
        out += _note("Out-of-sample columns: not available, the cube has no oos_* variables.", "warn")
    return out + _table(head, rows, "top")


def _maker(c: _Ctx) -> str:
    """The order flow of the top configurations (a run with maker orders), and the low fill ratio
    warning of the text report (`sweeps.inspect.maker_block`)."""
    from sweeps import inspect

    has_oos = c.has_oos if c.has_oos_vars else np.zeros(c.n, bool)
    rows = []
    for r, i in enumerate(c.order, 1):
        for part, prefix in (("IS", ""), ("OOS", "oos_")):
            if prefix and not has_oos[i]:
                continue
            row = [str(r), part, _fr_cell(c.m, i, prefix)]
            for _, key, spec in inspect.MAKER_COLUMNS:
                v = c.m.get(prefix + key)
                row.append("-" if v is None else _fmt(v[i], ".4g" if spec == "d" else spec))
            rows.append(row)
    heads = ["#", "part", "fill ratio [95% Wilson] n"] + [h for h, _, _ in inspect.MAKER_COLUMNS]
    text = inspect.maker_block(c.m, c.order, has_oos)
    out = _note(text[0]) + _table(heads, rows, "maker")
    low = [line for line in text if line.startswith("LOW MAKER FILL RATIO")]
    if low:
        out += f'<p class="warn" id="low-fill">{_e(low[0])}</p>'
    return out


# ---------------- heatmaps (sweeps/report_html_heatmap.py)

def _heatmap(c: _Ctx, stage) -> str:
    from sweeps import report_html_heatmap as hm

    return hm.section(c, stage, _fmt, _note, _fig_html, _e, _script_json, Missing)


# ---------------- PBO, DSR, stats

def _search_stats(c: _Ctx, stage) -> dict:
    from sweeps import inspect

    if c.stats is None:
        if "bucket_pnl" not in c.ds.variables:
            raise Missing("PBO and the deflated Sharpe need the per-bucket PnL: variable 'bucket_pnl' is missing")
        c.stats = inspect.search_stats(c.ds, stage)
    return c.stats


def _pbo(c: _Ctx, stage) -> str:
    import plotly.graph_objects as go

    st = _search_stats(c, stage)
    if "pbo" not in st:
        raise Missing(f"PBO needs at least 2 distinct bucket series and >= 4 buckets "
                      f"({st.get('n_tried', 0)} usable configurations)")
    p = st["pbo"]
    lg = np.asarray(p.logits, dtype=np.float64)
    lg = lg[np.isfinite(lg)]
    lo, hi = (float(lg.min()), float(lg.max())) if lg.size else (-1.0, 1.0)
    lo, hi = min(lo, -0.5), max(hi, 0.5)
    counts, edges = np.histogram(lg, bins=LOGIT_BINS, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    colours = ["#d62728" if x <= 0 else "#1f77b4" for x in centres]
    fig = go.Figure(go.Bar(x=centres.tolist(), y=counts.tolist(), width=float(edges[1] - edges[0]),
                           marker={"color": colours}, name="splits"))
    fig.add_vline(x=0, line={"color": "black", "dash": "dash"})
    fig.add_annotation(x=1, xref="paper", y=1.02, yref="paper", text=f"PBO = {p.pbo:.3f} (share of logits <= 0)",
                       showarrow=False, xanchor="right", yanchor="bottom", font={"size": 14})
    fig.update_layout(template="plotly_white", height=380, bargap=0, margin={"t": 60},
                      title={"text": f"CSCV logits over {p.n_combinations} splits"},
                      xaxis={"title": {"text": "logit of the relative OOS rank of the IS best"}},
                      yaxis={"title": {"text": "splits"}})
    n_distinct = p.n_input if p.subset else st.get("n_distinct")
    if n_distinct and p.n_configs < n_distinct:
        entered = (f"PBO ran on {p.n_configs} of the {n_distinct} distinct bucket series: a seeded random subset, "
                   "never the best ones (choosing the best would make PBO look better than it is); the cap "
                   "keeps the CSCV splits affordable, below it every distinct series enters. ")
    else:
        entered = f"Every one of the {p.n_configs} distinct bucket series entered. "
    return (_note(f"PBO (CSCV, {p.n_combinations} splits over {st['pbo_note']}): {p.pbo:.3f}; "
                  f"P(OOS loss of the IS best) {p.prob_loss:.3f}. {entered}A logit <= 0 (red) means the "
                  "configuration best in sample ranked in the lower half out of sample.")
            + _fig_html(fig, "pbo", "pbo-plot"))


def _dsr(c: _Ctx, stage) -> str:
    st = _search_stats(c, stage)
    out = ""
    if "dsr" in st:
        d = st["dsr"]
        out += _table(["", "value"], [
            ["configurations tried (N)", str(int(d.n_trials))],
            ["best per-bucket Sharpe", f"{d.sr:.4g}"],
            ["expected max Sharpe of N unskilled trials (SR0)", f"{d.sr0:.4g}"],
            ["deflated Sharpe ratio (N trials)", f"{d.dsr:.4g}"
             + (" - significant at 95%" if d.dsr > 0.95 else " - not significant at 95%")],
            ["buckets (observations)", str(int(d.n_obs))],
        ], "kv")
    else:
        out += _note(f"Deflated Sharpe: needs at least 2 usable configurations ({st.get('n_tried', 0)}).", "warn")
    if "wf" in st:
        out += _note(f"Walk-forward (rolling, 4 folds on in-sample buckets): out-of-fold Sharpe {st['wf'].oos_sharpe:.3f}")
    out += "<h3>Effective number of trials, Sharpe errors, MinTRL, SPA (gpu_engine.stats)</h3>"
    s = st.get("stats")
    if not s:
        return out + _note("not available: too few usable configurations for these statistics.", "warn") + "\n\n"
    from sweeps import inspect

    rows = [[k, _fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)]
            for k, v in s.items()]
    return out + "".join(_note(line) for line in inspect.stats_lines(st)) + _note(
        "Computed over the distinct per-bucket return series (PnL / capital): copies of one series are one "
        "trial. n_trials = configurations tried; n_effective = entropy effective rank of the correlations of "
        "the series (never more than buckets - 1); SPA over every distinct series, or a seeded random subset "
        "of them (never the best ones only: that pre-selection makes the p-value far too small).") + _table(
        ["key", "value"], rows, "kv") + "\n\n"


# ---------------- importance

def _importance(c: _Ctx, stage) -> str:
    import warnings

    import optuna
    import plotly.graph_objects as go
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if not c.swept:
        raise Missing("no swept parameter")
    obj = c.attrs.get("objective") or "sharpe"
    if obj == "net_pnl" and "net_pnl" in c.m:
        y = c.m["net_pnl"] / float(c.attrs.get("costs", {}).get("capital", 1.0))
    elif obj in c.m:
        y = c.m[obj]
    else:
        obj = "sharpe"
        y = c.m["sharpe"]
    y = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    rng = np.random.default_rng(0)
    rows = np.arange(c.n) if c.n <= IMPORTANCE_ROWS else np.sort(rng.choice(c.n, IMPORTANCE_ROWS, replace=False))
    dists, cols = {}, {}
    for p in c.swept:
        v = c.params[p][rows]
        if v.dtype.kind in "fiu" and np.isfinite(v.astype(np.float64)).all():
            x = v.astype(np.float64)
            if x.min() == x.max():
                continue
            dists[p] = FloatDistribution(float(x.min()), float(x.max()))
            cols[p] = [float(a) for a in x]
        else:
            labels = [_fmt(a) for a in v]
            choices = sorted(set(labels))
            if len(choices) < 2:
                continue
            dists[p] = CategoricalDistribution(choices)
            cols[p] = labels
    if not dists:
        raise Missing("the subsample has no parameter that varies")
    try:
        import sklearn  # noqa: F401

        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        how = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        how = ("PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator: scikit-learn, which Optuna's "
               "fANOVA needs, is not installed)")
    stage(f"parameter importance over {rows.size} configurations")
    trials = [optuna.trial.create_trial(params={p: cols[p][j] for p in dists}, distributions=dists,
                                        value=float(y[i])) for j, i in enumerate(rows)]
    verb = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.create_study(direction="maximize")
        study.add_trials(trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verb)
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[float(imp[k]) for k in names], y=names, orientation="h", marker={"color": "#2ca02c"}))
    fig.update_layout(template="plotly_white", height=120 + 28 * len(names), margin={"l": 120, "t": 50},
                      title={"text": f"importance for in-sample {obj}"}, xaxis={"title": {"text": "importance"}})
    return (_note(f"{how}, on {rows.size} configurations"
                  + (f" (a random subsample of {c.n}, seed 0)" if rows.size < c.n else "")
                  + f"; objective: in-sample {obj} (NaN counted as 0). Parameters with non-finite values "
                    "(inf = disabled) are treated as categories.")
            + _fig_html(fig, "importance", "importance-plot"))


# ---------------- equity curves

def _resolve_data(attrs: dict, role: str) -> Path:
    from gpu_engine import results

    info = (attrs.get("data") or {}).get(role)
    if not isinstance(info, dict) or "path" not in info:
        raise Missing(f"the cube does not record its {role} data (attrs['data']['{role}'])")
    p = Path(info["path"])
    if not p.exists():
        raise Missing(f"the {role} data {p} is not there (from {Path.cwd()}); the curves cannot be recomputed")
    if info.get("sha256") and results.sha256_path(p) != info["sha256"]:
        raise Missing(f"the {role} data {p} differs from the data the cube was run on (sha256 mismatch); "
                      "the curves cannot be recomputed")
    return p


def _equity(c: _Ctx, stage) -> str:
    import tomllib

    import plotly.graph_objects as go

    from gpu_engine import oracle, validation
    from gpu_engine import space as space_mod
    from gpu_engine.data.books import store as books
    from gpu_engine.features import build_bank
    from sweeps import _common

    if not c.order:
        raise Missing("no configuration to draw")
    a = c.attrs
    split = a.get("split") or {}
    if "is_ticks" not in split or "oos_ticks" not in split or not a.get("space"):
        raise Missing("the cube does not record its split or space (an older schema)")
    stage("equity curves: checking the data")
    book_path = _resolve_data(a, "book")
    blocks_path = _resolve_data(a, "blocks") if "blocks" in (a.get("data") or {}) else None
    text = a["space"]
    space = space_mod.parse(tomllib.loads(text), Path(a.get("space_path") or "space.toml"), text)
    book = books.load(book_path)
    T = int(np.asarray(book.ts).shape[0])
    isl, osl = slice(*split["is_ticks"]), slice(*split["oos_ticks"])
    if osl.stop > T or isl.stop > T:
        raise Missing(f"the book has {T} ticks, fewer than the cube's split says; the curves cannot be recomputed")
    per = (isl.stop - isl.start) + (osl.stop - osl.start)
    k = min(N_CURVES, len(c.order), ORACLE_TICK_BUDGET // max(per, 1))
    if k < 1:
        raise Missing(f"the book has {T} ticks: more than the plain-Python oracle's budget "
                      f"({ORACLE_TICK_BUDGET} ticks); the curves are not recomputed")
    stage("equity curves: feature bank")
    bank = build_bank(book, space_mod.feature_spec(space), xp=np, blocks=blocks_path)
    vals_all = np.asarray(bank.to_host(), dtype=np.float64)
    ins = vals_all[:, isl]
    with np.errstate(all="ignore"):
        fin = np.isfinite(ins)
        n = fin.sum(axis=1)
        v = np.where(fin, ins, 0.0)
        mean = v.sum(axis=1) / np.maximum(n, 1)
        scale = np.sqrt(np.where(fin, (ins - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n - 1, 1))
    ts_split = validation.TimeSplit(isl, osl, int(split.get("boundary_ns", 0)), int(split.get("oos_start_ns", 0)))
    data = _common.Data(book_path, blocks_path, book, bank, ts_split, None, None, None, None, scale, "cpu")
    recorded = a.get("costs") or {}
    cost = {"fee_bps": float(recorded.get("fee_bps", 10.0)), "latency_ns": int(recorded.get("latency_ns", 20_000_000)),
            "capital": float(recorded.get("capital", 10_000.0))}
    for key in ("maker_fee_bps", "cancel_latency_ns", "contract"):  # rules v2 settings, when recorded
        if key in recorded:
            cost[key] = recorded[key]
    from sweeps import market_settings
    chosen = c.order[:k]
    points = {p: np.asarray([c.params[p][i] for i in chosen]) for p in space.params if p in c.params}
    missing = [p for p in space.params if p not in points]
    if missing:
        raise Missing(f"the cube lacks the parameters {', '.join(missing)} of its space")
    fields = _common.configs_for(space, points, data, cost)
    buckets = int(a.get("buckets") or c.ds.sizes.get("bucket", 64))
    fig = go.Figure()
    checks = []
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    ts = np.asarray(book.ts, dtype=np.int64)
    for r, i in enumerate(chosen):
        cfg = {f: fields[f][r].item() for f in fields}
        for part, sl, dash in (("IS", isl, "solid"), ("OOS", osl, "dot")):
            if part == "OOS" and not (c.has_oos_vars and c.has_oos[i]):
                continue
            stage(f"equity curves: oracle, configuration {r + 1}/{k} {part}")
            sub = validation.slice_book(book, sl)
            res = oracle.run(sub, vals_all[cfg["signal"], sl], vals_all[cfg["regime"], sl], cfg, buckets,
                             **market_settings.oracle_kwargs(cost))
            marks = np.asarray(res.marks, dtype=np.float64)
            step = max(1, int(math.ceil(marks.size / CURVE_POINTS)))
            idx = np.unique(np.r_[np.arange(0, marks.size, step), marks.size - 1])
            x = (ts[sl][idx] // 1_000_000).tolist()  # ms since the epoch: a date axis
            fig.add_trace(go.Scattergl(x=x, y=marks[idx].tolist(), mode="lines", legendgroup=f"#{r + 1}",
                                       name=f"#{r + 1} {part}", line={"color": colours[r % 6], "dash": dash}))
            key = "trades" if part == "IS" else "oos_trades"
            want = c.m.get(key, [np.nan] * c.n)[i]
            got = res.metrics["trades"]
            checks.append(f"#{r + 1} {part}: {int(got)} trades"
                          + ("" if not np.isfinite(want) else (" (= cube)" if got == want else f" (cube: {int(want)})")))
    fig.update_layout(template="plotly_white", height=460, margin={"t": 50},
                      title={"text": f"equity of the top {k} configurations (in-sample solid, out-of-sample dotted)"},
                      xaxis={"title": {"text": "time (UTC)"}, "type": "date"},
                      yaxis={"title": {"text": "equity"}})
    return (_note(f"Recomputed with the plain-Python oracle (gpu_engine/oracle.py) on {book_path}: equity "
                  f"marked to market at every tick (realised PnL plus the open position at the executable top "
                  f"price), drawn at <= {CURVE_POINTS} points per curve. Each part starts from the capital "
                  f"({cost['capital']:g}), as in the cube. Trade counts: " + "; ".join(checks) + ".")
            + _fig_html(fig, "equity", "equity-plot"))


# ---------------- provenance

def _provenance(c: _Ctx) -> str:
    a = c.attrs
    costs = a.get("costs") or {}
    rows = []
    if costs:
        rows += [["fee", f"{costs.get('fee_bps')} bps per {'taker ' if 'maker_fee_bps' in costs else ''}fill"],
                 ["latency", f"{(costs.get('latency_ns') or 0) / 1e6:g} ms"],
                 ["capital", str(costs.get("capital"))]]
        if "maker_fee_bps" in costs:
            rows += [["maker fee", f"{costs['maker_fee_bps']} bps per maker fill (negative: rebate)"],
                     ["fee schedule", str(costs.get("fee_source"))],
                     ["cancel latency", f"{(costs.get('cancel_latency_ns') or 0) / 1e6:g} ms"]]
        from sweeps import inspect

        rows += [["contract" if k == 0 else "", line] for k, line in enumerate(
            ln for ln in inspect.contract_lines(a) if ln.startswith("contract:"))]
    else:
        rows.append(["cost model", "not recorded in this cube"])
    out = "<h3>Cost model</h3>" + _table(["", ""], rows, "kv")
    prov = []
    for role, info in (a.get("data") or {}).items():
        if isinstance(info, dict):
            prov.append([f"data: {role}", f"{info.get('path')}  sha256 {info.get('sha256')}"])
    keys = ("kind", "space_name", "space_path", "space_sha256", "thresholds", "split", "buckets", "device",
            "engine_version", "created_utc", "wall_s", "n_configs", "dims", "study", "storage", "sampler", "seed",
            "objective", "target_win_rate", "min_trades", "n_trials", "neighbourhood", "batch", "fingerprint")
    for k in keys:
        if k in a:
            v = a[k]
            prov.append([k, _fmt(v) if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)])
    out += "<h3>Provenance</h3>" + _table(["", ""], prov, "kv")
    if a.get("space"):
        out += f"<details><summary>space file</summary><pre>{_e(a['space'])}</pre></details>"
    return out


# ------------------------------------------------------------------ the page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222}
h1{font-size:1.5em;margin-bottom:0} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.verdict{font-size:1.15em;font-weight:600;padding:10px 14px;border-radius:6px}
.verdict.yes{background:#e6f4ea;border:1px solid #34a853} .verdict.no{background:#fdecea;border:1px solid #d93025}
.note{color:#444} .warn{color:#8a4b00;background:#fff4e0;padding:6px 10px;border-radius:4px}
.missing{color:#8a4b00;background:#fff4e0;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f5f5f5} table.kv td:first-child{text-align:left;font-weight:500} table.kv td{text-align:left}
.scroll{overflow-x:auto} .controls{margin:6px 0} .controls label{margin-right:14px} .chart{margin:8px 0}
pre{background:#f8f8f8;padding:8px;overflow-x:auto}
"""


def build(ds: xr.Dataset, *, top: int = 20, by: str | None = None, target=None, min_trades=None,
          stage=None, stats: dict | None = None, cube_path: str | Path | None = None) -> str:
    """The page (a str of HTML) for the loaded cube `ds`. `stage(text)` is called before the slow
    steps (progress); `stats`: `sweeps.inspect.search_stats(ds)` when already computed."""
    import plotly.offline

    from sweeps import inspect

    stage = stage or (lambda what: None)
    t0 = time.perf_counter()
    stage("page: ranking")
    c = _Ctx(ds, top, by, target, min_trades)
    c.stats = stats
    title = f"{c.attrs.get('kind', 'cube')} cube {cube_path or ''}".strip()
    sections = []
    problems = []

    def section(name: str, anchor: str, fn):
        try:
            body = fn()
        except Missing as exc:
            body = f'<p class="missing" data-missing="{_e(anchor)}">Cannot show: {_e(exc)}</p>'
            problems.append(f"{name}: {exc}")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken section does not lose the page
            body = (f'<p class="missing" data-missing="{_e(anchor)}">Cannot show: this section failed '
                    f'({_e(inspect._first_line(exc))})</p>')
            problems.append(f"{name}: failed ({inspect._first_line(exc)})")
        sections.append(f'<section id="{anchor}"><h2>{_e(name)}</h2>{body}</section>')

    section("Verdict", "verdict-section", lambda: _verdict(c))
    section("Top configurations", "top", lambda: f'<div class="scroll">{_top_table(c)}</div>')
    if any(k in c.m for k in ("orders_posted", "oos_orders_posted")) and inspect.has_maker(c.m):
        section("Maker orders of the top configurations", "maker", lambda: f'<div class="scroll">{_maker(c)}</div>')
    section("Heatmaps", "heatmaps", lambda: _heatmap(c, stage))
    section("Probability of backtest overfitting (CSCV)", "pbo", lambda: _pbo(c, stage))
    section("Deflated Sharpe", "dsr", lambda: _dsr(c, stage))
    section("Parameter importance", "importance", lambda: _importance(c, stage))
    section("Equity curves of the top configurations", "equity", lambda: _equity(c, stage))
    section("Cost model and provenance", "provenance", lambda: _provenance(c))
    stage("page: writing")
    summary = ""
    if c.missing:
        summary += _note(f"This cube lacks variables of the current schema: {', '.join(c.missing[:12])}"
                         + (f" and {len(c.missing) - 12} more" if len(c.missing) > 12 else "")
                         + "; the sections below say what they cannot show.", "warn")
    costs = c.attrs.get("costs") or {}
    contract = costs.get("contract") or {}
    head_line = (f"{c.n} configurations, {len(c.swept)} swept parameters ({', '.join(c.swept)}); "
                 f"space {c.attrs.get('space_name')}; "
                 + (f"contract {contract.get('contract')} x {contract.get('multiplier'):g}; " if contract else "")
                 + f"costs: fee {costs.get('fee_bps')} bps per fill"
                 + (f" (maker {costs['maker_fee_bps']} bps)" if "maker_fee_bps" in costs else "") + ", latency "
                 f"{(costs.get('latency_ns') or 0) / 1e6:g} ms, capital {costs.get('capital')}; created "
                 f"{c.attrs.get('created_utc')}; engine {c.attrs.get('engine_version')}.")
    js = plotly.offline.get_plotlyjs()
    built = time.perf_counter() - t0
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head>", GENERATOR_META, '<meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style>",
        f'<script type="text/javascript">{js}</script></head><body>',
        f"<h1>Sweep report: {_e(title)}</h1>", _note(head_line), summary,
        *sections,
        f'<p class="note">Built by sweeps.report_html in {built:.1f} s. '
        f'{_e("; ".join(problems)) if problems else "Every section shown."}</p>',
        "</body></html>\n",
    ])
