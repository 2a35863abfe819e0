"""The HTML report page (sweeps/report_html.py, `python -m sweeps.inspect CUBE --html PAGE`).

Cubes are built synthetically (xarray + results.write_cube, no kernel runs) except in the
end-of-run test of sweeps.grid. Checks: one self-contained file (no http(s) script/src), one
plotly div per expected chart with data (the embedded JSON parsed), messages instead of failures
for cubes lacking variables, the --html/--overwrite rules, the page beside a cube, the heatmap's
embedded data (cell codes, metric values, and beyond the row budget the exact matrices of the
default views plus a sample that the page names), PBO (CSCV) against the matrix implementation it
replaced, and (one test, marked SCALE) a 1e6-configuration, 64-bucket cube whose page the CLI builds
in < 30 s and < 20 MB (the cube and the page are shared with tests/test_report_browser.py).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gpu_engine import results, validation
from gpu_engine.enums import METRICS
from sweeps import inspect, report_html
from sweeps import report_html_heatmap as hm
from tests.test_sweeps_cli import SPACE, _args, tiny  # noqa: F401  (tiny: fixture)

GRID_CHARTS = {"heatmap", "pbo", "importance"}


# ------------------------------------------------------------------ synthetic cubes

def _figures(rng, shape, scale=1.0) -> dict[str, np.ndarray]:
    trades = rng.poisson(40 * scale, shape).astype(np.float64)
    trades[rng.random(shape) < 0.05] = 0
    wins = rng.binomial(trades.astype(np.int64), 0.5).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        wr = np.where(trades > 0, wins / trades, np.nan)
        half = 1.96 * np.sqrt(wr * (1 - wr) / trades)
        net = rng.normal(0, 50, shape) * (trades > 0)
        f = {m: rng.normal(0, 1, shape) for m in METRICS}
        f.update(trades=trades, wins=wins, win_rate=wr, win_rate_lo=wr - half, win_rate_hi=wr + half,
                 net_pnl=net, expectancy=np.where(trades > 0, net / trades, np.nan),
                 sharpe=rng.normal(0, 0.1, shape), max_drawdown=np.abs(rng.normal(0.02, 0.01, shape)))
    return f


def _attrs(kind: str, space: str, buckets: int, **extra) -> dict:
    return {"kind": kind, "data": {}, "space": space, "space_name": "t", "space_path": "t.toml",
            "space_sha256": "0" * 64, "costs": {"fee_bps": 10.0, "latency_ns": 20_000_000, "capital": 10_000.0},
            "device": "cpu", "engine_version": results.engine_version(), "created_utc": "2024-08-08T00:00:00Z",
            "wall_s": 1.0, "split": {"is_ticks": [0, 800], "oos_ticks": [820, 1200]}, "buckets": buckets,
            "thresholds": "std", **extra}


def grid_cube(path: Path, axes: dict, buckets: int = 16, seed: int = 0, oos: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    dims = list(axes)
    shape = tuple(len(v) for v in axes.values())
    data_vars = {m: (dims, v) for m, v in _figures(rng, shape).items()}
    if oos:
        data_vars.update({f"oos_{m}": (dims, v) for m, v in _figures(rng, shape, 0.4).items()})
    data_vars["bucket_pnl"] = (dims + ["bucket"], rng.normal(0, 10, shape + (buckets,)))
    ds = xr.Dataset(data_vars, coords={**{k: np.asarray(v) for k, v in axes.items()}, "side": np.asarray(0),
                                       "bucket": np.arange(buckets)})
    ds.attrs = _attrs("grid", SPACE, buckets, dims=dims, n_configs=int(np.prod(shape)), complete=True)
    return results.write_cube(ds, path)


SMALL_AXES = {"signal": ["imbalance1", "ofi"], "entry": [0.5, 0.8, 1.2, 1.6, 2.0], "exit": [0.0, np.inf],
              "take_profit": [5.0, 10.0, np.inf]}


def optimize_cube(path: Path, trials: int = 12, configs: int = 8, buckets: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    shape = (trials, configs)
    data_vars = {m: (("trial", "config"), v) for m, v in _figures(rng, shape).items()}
    oos = _figures(rng, shape, 0.4)
    ev = np.zeros(shape, bool)
    ev.flat[rng.choice(trials * configs, 10, replace=False)] = True
    for m, v in oos.items():
        data_vars[f"oos_{m}"] = (("trial", "config"), np.where(ev, v, np.nan))
    data_vars["oos_evaluated"] = (("trial", "config"), ev)
    data_vars["bucket_pnl"] = (("trial", "config", "bucket"), rng.normal(0, 10, shape + (buckets,)))
    data_vars["value"] = ("trial", rng.normal(0, 0.1, trials))
    coords = {"trial": np.arange(trials), "config": np.arange(configs),
              "signal": ("trial", rng.choice(["imbalance1", "ofi"], trials)),
              "window": ("trial", np.full(trials, 10)),
              "exit": ("trial", rng.choice([0.0, np.inf], trials)),
              "take_profit": ("trial", rng.choice([5.0, np.inf], trials)),
              "entry": (("trial", "config"), np.exp(rng.uniform(np.log(0.5), np.log(2.0), shape))),
              "side": ("trial", np.zeros(trials, np.int64)), "regime": ("trial", np.full(trials, "log_fair_dev"))}
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = _attrs("optimize", SPACE, buckets, objective="sharpe", target_win_rate=[0.55, 0.6], min_trades=30,
                      sampler="tpe", seed=0, study="s", n_trials=trials, n_configs=trials * configs)
    return results.write_cube(ds, path)


# ------------------------------------------------------------------ reading a page back

def charts(page: str) -> dict[str, list[dict]]:
    """data-chart name -> the plotly traces of its figure (from the Plotly.newPlot call's JSON)."""
    out = {}
    dec = json.JSONDecoder()
    for m in re.finditer(r'<div class="chart" data-chart="([^"]+)">', page):
        name = m.group(1)
        call = page.index("Plotly.newPlot(", m.end())
        pos = page.index(",", call) + 1  # after the div id
        while page[pos].isspace():
            pos += 1
        traces, _ = dec.raw_decode(page, pos)
        out[name] = traces
    return out


def has_data(trace: dict) -> bool:
    def size(a):
        if a is None:
            return 0
        if isinstance(a, dict) and "bdata" in a:
            return len(a["bdata"])
        if isinstance(a, list) and a and isinstance(a[0], list):
            return sum(len(r) for r in a if r is not None)
        return len(a) if isinstance(a, list) else 0

    return any(size(trace.get(k)) > 0 for k in ("x", "y", "z"))


def heat_data(page: str) -> dict:
    """The heatmap's embedded data, decoded: meta, codes {param: uint8[rows]}, values {metric:
    float32[rows]} and, when the rows are capped, exact {"x|y": {metric: {agg: [ny, nx]}}}."""
    blob = json.loads(re.search(r'<script type="application/json" id="heat-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    meta = blob["meta"]
    out = {"meta": meta, "codes": {p: hm.unb64(v, np.uint8) for p, v in blob["codes"].items()},
           "values": {m: hm.unb64(v, "<f4") for m, v in blob["values"].items()}, "exact": None}
    if "exact" in blob:
        out["exact"] = {}
        for key, pair in blob["exact"].items():
            x, y = key.split("|")
            shape = (len(meta["labels"][y]), len(meta["labels"][x]))
            out["exact"][key] = {name: ({g: hm.unb64(z, "<f4").reshape(shape) for g, z in v.items()}
                                        if isinstance(v, dict) else hm.unb64(v, "<f4").reshape(shape))
                                 for name, v in pair.items()}
    return out


def cell_table(ds: xr.Dataset, x: str, y: str, metric: str, agg: str = "median", where=None,
               rows=None, f32: bool = True) -> tuple[list, list, np.ndarray]:
    """What a heatmap cell should hold, straight from the cube with pandas: `agg` of `metric` per
    (y value, x value) over the configurations that `where(params)` keeps (and `rows`, if given);
    metric values rounded to float32 as the page embeds them. Returns (x values, y values, [ny, nx]
    with NaN for an empty cell)."""
    import pandas as pd

    m, params, n = inspect._flat(ds)
    keep = np.ones(n, bool) if where is None else np.asarray(where(params), bool)
    if rows is not None:
        sel = np.zeros(n, bool)
        sel[rows] = True
        keep &= sel
    v = np.asarray(m[metric], np.float64)
    if f32:
        v = v.astype(np.float32).astype(np.float64)
    xs, ys = np.unique(params[x]), np.unique(params[y])
    df = pd.DataFrame({"x": params[x][keep], "y": params[y][keep], "v": v[keep]})
    tab = df.groupby(["y", "x"])["v"].agg(agg)
    z = np.full((len(ys), len(xs)), np.nan)
    for (yy, xx), val in tab.items():
        z[list(ys).index(yy), list(xs).index(xx)] = val
    return list(xs), list(ys), z


def as_matrix(z) -> np.ndarray:
    """A plotly z (lists with None for blank cells) as a float array with NaN."""
    return np.array([[np.nan if a is None else a for a in row] for row in z], dtype=np.float64)


def check_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert report_html.GENERATOR_META in page[:2000]
    # no script loaded from anywhere (every script inline), and outside the inline scripts (plotly.js
    # itself holds URL strings it never fetches here) no src/href to the network
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S | re.I)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', markup, re.I)
    assert not re.search(r"<(link|img|iframe|object|embed)\b", markup, re.I)
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inlined


def build_page(cube: Path, html: Path, *extra) -> str:
    rc = inspect.main([str(cube), "--html", str(html), "--no-progress", *extra])
    assert rc == 0
    return html.read_text()


# ------------------------------------------------------------------ tests

def test_grid_cube_page(tmp_path, capsys):
    cube = grid_cube(tmp_path / "g.zarr", SMALL_AXES)
    page = build_page(cube, tmp_path / "g.html")
    out = capsys.readouterr().out
    check_self_contained(page)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["g.html", "g.zarr"]  # no temporaries left
    found = charts(page)
    assert GRID_CHARTS <= set(found), found.keys()
    for name in GRID_CHARTS:
        assert found[name] and all(has_data(t) for t in found[name]), name
    # the verdict: the text report's words
    verdict = next(line for line in out.splitlines() if line.startswith("VERDICT"))
    assert verdict.replace("'", "&#x27;").replace(">", "&gt;").replace("<", "&lt;") in page
    # the top table, in and out of sample side by side
    assert "IS win rate [95% Wilson]" in page and "OOS win rate [95% Wilson]" in page and "OOS Sharpe" in page
    # heatmap: every configuration's cell codes and metrics are embedded (60 < the row budget), no
    # precomputed matrices; the default view (x signal, y entry, median win rate over the other
    # parameters) is what pandas gives on the float32 values the page holds
    heat = heat_data(page)
    meta = heat["meta"]
    assert meta["params"] == list(SMALL_AXES) and meta["fixable"] == list(SMALL_AXES)
    assert meta["n_rows"] == meta["n_total"] == 60 and not meta["sampled"] and heat["exact"] is None
    assert "oos_win_rate" in meta["metrics"] and "configurations" in meta["metrics"]
    assert meta["labels"]["take_profit"] == ["5", "10", "inf"] and meta["labels"]["entry"] == ["0.5", "0.8", "1.2", "1.6", "2"]
    assert all(c.size == 60 for c in heat["codes"].values()) and all(v.size == 60 for v in heat["values"].values())
    ds = xr.open_zarr(cube).load()
    xs, ys, want = cell_table(ds, "signal", "entry", "win_rate")
    z = as_matrix(found["heatmap"][0]["z"])
    assert z.shape == (5, 2) and found["heatmap"][0]["x"] == xs and found["heatmap"][0]["y"] == [f"{v:g}" for v in ys]
    np.testing.assert_array_equal(z, want)
    assert "MEDIAN" in page and "over every value of the other parameters" in page
    assert page.count('class="heat-fix"') == len(SMALL_AXES) and "The page holds all 60 configurations" in page
    # PBO histogram counts = the CSCV splits; the deflated Sharpe names the trials
    st = inspect.search_stats(ds)
    assert sum(found["pbo"][0]["y"]) == st["pbo"].n_combinations
    assert f"PBO = {st['pbo'].pbo:.3f}" in page
    assert "Every one of the 60 distinct bucket series entered" in page
    assert "configurations tried (N)" in page and str(st["dsr"].n_trials) in page
    try:
        import gpu_engine.stats  # noqa: F401

        assert "n_effective" in page and "n_trials" in page
    except ImportError:
        assert "gpu_engine.stats cannot be imported" in page
    # importance: one bar per swept parameter; equity curves: no data recorded -> said, not failed
    assert sorted(found["importance"][0]["y"]) == sorted(SMALL_AXES)
    assert "Cannot show: the cube does not record its book data" in page
    assert "fee</td><td>10.0 bps per fill" in page and "Provenance" in page


def test_optimize_cube_page(tmp_path):
    cube = optimize_cube(tmp_path / "o.zarr")
    page = build_page(cube, tmp_path / "o.html")
    check_self_contained(page)
    found = charts(page)
    assert GRID_CHARTS <= set(found)
    assert all(has_data(t) for name in GRID_CHARTS for t in found[name])
    meta = heat_data(page)["meta"]
    # entry (continuous, scattered) is binned; out-of-sample figures of 10 points are not offered
    assert "entry" in meta["params"] and len(meta["labels"]["entry"]) <= report_html.MAX_BINS
    assert all(re.fullmatch(r"\[[-0-9.e+]+, [-0-9.e+]+\]|[-0-9.e+]+", lab) for lab in meta["labels"]["entry"])
    assert not any(m.startswith("oos_") for m in meta["metrics"]) and "configurations" in meta["metrics"]
    assert "Optimize cube" in page
    # the top table lists only configurations evaluated out of sample (10 of them)
    top = page.split('<table class="top">', 1)[1].split("</table>", 1)[0]
    assert top.count("<tr>") == 1 + 10


def test_cube_without_oos_and_of_an_older_schema_degrades(tmp_path, capsys):
    cube = grid_cube(tmp_path / "n.zarr", SMALL_AXES, oos=False)
    page = build_page(cube, tmp_path / "n.html")
    err = capsys.readouterr().err
    assert "no text report" in err and "oos_trades" in err
    check_self_contained(page)
    assert "Cannot show: no verdict: the cube has no out-of-sample figures" in page
    assert "Out-of-sample columns: not available" in page
    assert GRID_CHARTS <= set(charts(page))  # what the in-sample figures allow is still shown
    # older: no bucket_pnl, no Wilson bounds
    ds = xr.open_zarr(cube).load().drop_vars(["bucket_pnl", "win_rate_lo", "win_rate_hi"])
    old = results.write_cube(ds, tmp_path / "old.zarr")
    page = build_page(old, tmp_path / "old.html")
    assert "lacks variables of the current schema" in page and "bucket_pnl" in page
    assert "Cannot show: PBO and the deflated Sharpe need the per-bucket PnL: variable &#x27;bucket_pnl&#x27; is missing" in page
    assert {"heatmap", "importance"} <= set(charts(page))
    # without --html the text report still refuses it, naming the variable
    capsys.readouterr()
    assert inspect.main([str(old), "--no-progress"]) == 2
    assert "corrupt cube: variable 'win_rate_lo' is missing" in capsys.readouterr().err


def test_html_target_rules(tmp_path, capsys):
    cube = grid_cube(tmp_path / "g.zarr", SMALL_AXES)
    html = tmp_path / "r.html"
    build_page(cube, html)
    first = html.stat().st_mtime_ns
    # existing page: refused without --overwrite, replaced with it
    assert inspect.main([str(cube), "--html", str(html), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err and html.stat().st_mtime_ns == first
    time.sleep(0.01)
    build_page(cube, html, "--overwrite")
    # a user's file is never replaced, a folder neither; the cube itself neither
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my notes</html>")
    for target in (mine, tmp_path / "sub", cube, cube / "x.html"):
        if target.name == "sub":
            target.mkdir()
        assert inspect.main([str(cube), "--html", str(target), "--no-progress", "--overwrite"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert mine.read_text() == "<html>my notes</html>"
    assert inspect.main([str(cube), "--overwrite", "--no-progress"]) == 2  # --overwrite needs --html
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_equity_curves_from_the_cubes_data(tiny, tmp_path):
    """Curves are recomputed with the oracle from the data the cube names; a changed file is said."""
    data = {"book": {"path": tiny["data"], "sha256": results.sha256_path(tiny["data"])},
            "blocks": {"path": tiny["blocks"], "sha256": results.sha256_path(tiny["blocks"])}}
    axes = {"signal": ["imbalance1", "ofi"], "entry": [0.5, 1.0], "exit": [0.0, np.inf],
            "take_profit": [5.0, np.inf]}
    cube = grid_cube(tmp_path / "g.zarr", axes)
    ds = xr.open_zarr(cube).load()
    ds = ds.assign_coords(window=np.asarray(10), regime=np.asarray("log_fair_dev"))
    ds.attrs["data"] = data
    cube = results.write_cube(ds, tmp_path / "e.zarr")
    page = build_page(cube, tmp_path / "e.html")
    eq = charts(page)["equity"]
    assert len(eq) == 2 * report_html.N_CURVES and all(has_data(t) for t in eq)
    assert all(len(t["x"]) <= report_html.CURVE_POINTS + 1 for t in eq)
    assert "marked to market at every tick" in page
    ds.attrs["data"] = {**data, "book": {**data["book"], "sha256": "f" * 64}}
    changed = results.write_cube(ds, tmp_path / "c.zarr")
    page = build_page(changed, tmp_path / "c.html")
    assert "equity" not in charts(page) and "sha256 mismatch" in page


def test_grid_run_writes_its_page_beside_the_cube(tiny, tmp_path, capsys):
    from sweeps import grid

    out = tmp_path / "g.zarr"
    assert grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny)]) == 0
    page = tmp_path / "g.html"
    assert report_html.is_our_page(page) and "heatmap" in charts(page.read_text())
    assert "report page: " in capsys.readouterr().out
    # a re-run replaces our page; a file we did not write is left alone; --no-html writes none
    page.write_text("<html>someone else's</html>")
    assert grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny)]) == 0
    assert page.read_text() == "<html>someone else's</html>" and "left alone" in capsys.readouterr().err
    page.unlink()
    assert grid.main(["--space", tiny["space"], "--out", str(out), "--no-html", *_args(tiny)]) == 0
    assert not page.exists()


# ------------------------------------------------------------------ heatmap data

def test_heatmap_axis_codes():
    fmt = report_html._fmt
    # few values: one cell each, ascending, non-finite values after them
    codes, labels = hm.axis_codes(np.array([10.0, np.inf, 5.0, 10.0, np.nan, -np.inf]), fmt)
    assert labels == ["5", "10", "inf", "-inf", "-"] and codes.tolist() == [1, 2, 0, 1, 4, 3]
    # many values: at most MAX_BINS bins of about equal counts, in value order, equal values together,
    # each labelled by the range of the values it holds
    rng = np.random.default_rng(0)
    x = np.round(rng.lognormal(0, 1, 5000), 2)
    x[:400] = 1.0  # a heavy value
    codes, labels = hm.axis_codes(np.r_[x, np.inf], fmt)
    assert codes.dtype == np.uint8 and len(labels) <= hm.MAX_BINS + 1 and labels[-1] == "inf"
    fin = codes[:-1]
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(fin[order].astype(int)) >= 0)  # bins follow the values
    for v in np.unique(x):
        assert np.unique(fin[x == v]).size == 1  # a value never straddles two bins
    for k, lab in enumerate(labels[:-1]):
        held = x[fin == k]
        assert lab == (fmt(held.min()) if held.min() == held.max() else f"[{fmt(held.min())}, {fmt(held.max())}]")
    counts = np.bincount(fin, minlength=len(labels) - 1)
    assert counts.max() <= 2 * len(x) / hm.MAX_BINS + 400  # about equal, but for the heavy value
    # strings: up to MAX_CATEGORIES kept, beyond them the commonest and "(other)"
    s = np.array([f"s{i:02d}" for i in range(45)] + ["s00"] * 10)
    codes, labels = hm.axis_codes(s, fmt)
    assert len(labels) == hm.MAX_CATEGORIES and labels[-1] == "(other)" and labels[0] == "s00"
    assert (codes == hm.MAX_CATEGORIES - 1).sum() == 45 - (hm.MAX_CATEGORIES - 1)


def test_heatmap_cell_statistics_equal_pandas():
    """The exact matrices (numba, median / max / count per cell) equal pandas' groupby, ties and NaN included."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n = 20_000
    codes = {"a": rng.integers(0, 7, n).astype(np.uint8), "b": rng.integers(0, 5, n).astype(np.uint8),
             "c": rng.integers(0, 3, n).astype(np.uint8)}
    codes["b"][codes["a"] == 6] = 4  # some empty cells
    nl = {"a": 7, "b": 5, "c": 3}
    vals = {"v": rng.normal(size=n), "ties": np.round(rng.normal(size=n), 0), "nan": rng.normal(size=n)}
    vals["nan"][rng.random(n) < 0.3] = np.nan
    vals["nan"][(codes["a"] == 0) & (codes["b"] == 0)] = np.nan  # a cell with rows but no value
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    got = hm.pair_stats(codes, nl, pairs, vals)
    for x, y in pairs:
        df = pd.DataFrame({"x": codes[x], "y": codes[y], **vals})
        g = df.groupby(["y", "x"])
        for name in vals:
            for agg in ("median", "max"):
                want = np.full((nl[y], nl[x]), np.nan)
                for (yy, xx), v in getattr(g[name], agg)().items():
                    want[yy, xx] = v
                np.testing.assert_array_equal(got[f"{x}|{y}"][name][agg], want, err_msg=f"{x}|{y} {name} {agg}")
        cnt = np.full((nl[y], nl[x]), np.nan)
        for (yy, xx), v in g.size().items():
            cnt[yy, xx] = v
        np.testing.assert_array_equal(got[f"{x}|{y}"]["configurations"], cnt)


def test_heatmap_beyond_the_row_budget_is_exact_by_default_and_says_its_sample(tmp_path, monkeypatch):
    """Above the budget the page holds the top rows by its ranking plus a seeded random sample of the
    rest, says so, and embeds the exact matrices (every configuration) of the views with nothing fixed."""
    monkeypatch.setattr(hm, "HEAT_MAX_BYTES", 40 * (len(SMALL_AXES) + 4 * 12))  # 40 of the 60 rows
    monkeypatch.setattr(hm, "HEAT_TOP_ROWS", 15)
    cube = grid_cube(tmp_path / "g.zarr", SMALL_AXES)
    page = build_page(cube, tmp_path / "g.html")
    heat = heat_data(page)
    meta = heat["meta"]
    assert meta["sampled"] and meta["n_rows"] == 40 and meta["n_total"] == 60 and meta["n_top"] == 15
    assert "aggregated over 40 of 60 configurations: the top 15 and a random sample" in page
    assert "exact, over all 60 configurations" in page or "the cells are exact, over all 60" in page
    # which rows: recover each embedded row's configuration from its codes; the top 15 are all there
    ds = xr.open_zarr(cube).load()
    m, params, n = inspect._flat(ds)
    full = {p: hm.axis_codes(params[p], report_html._fmt)[0] for p in SMALL_AXES}
    index = {tuple(full[p][i] for p in SMALL_AXES): i for i in range(n)}
    rows = [index[tuple(heat["codes"][p][r] for p in SMALL_AXES)] for r in range(40)]
    assert len(set(rows)) == 40
    # the top 15 by the page's ranking first (each standing for itself), then the sample (each for 45 / 25)
    assert rows[:15] == sorted(inspect.rank(m, "sharpe")[:15].tolist()) and rows[15:] == sorted(rows[15:])
    assert meta["sample_weight"] == pytest.approx(45 / 25)
    np.testing.assert_array_equal(heat["values"]["win_rate"], m["win_rate"][rows].astype(np.float32))
    # the exact matrices: every pair, over all 60 configurations (float64 medians, stored as float32)
    assert len(heat["exact"]) == 6
    for agg in ("median", "max"):
        xs, ys, want = cell_table(ds, "signal", "entry", "expectancy", agg, f32=False)
        np.testing.assert_array_equal(heat["exact"]["signal|entry"]["expectancy"][agg], want.astype(np.float32))
    # the default figure is the exact one, not the sample's
    _, _, want = cell_table(ds, "signal", "entry", "win_rate", f32=False)
    np.testing.assert_array_equal(as_matrix(charts(page)["heatmap"][0]["z"]), want.astype(np.float32).astype(np.float64))


# ------------------------------------------------------------------ PBO against the implementation it replaced

def _pbo_matrix_form(returns, n_splits=16, stat="sharpe", chunk=256):
    """gpu_engine.validation.pbo as it was before the numba kernel (commit d1ac3b7): half sums as a
    0/1 mask times the block sums, chunks of combinations, numpy throughout. Kept here, frozen, as
    the reference the kernel must agree with."""
    import itertools

    M = np.asarray(returns, dtype=np.float64)
    S = int(n_splits)
    T, N = M.shape
    per = T // S
    M = M[T - per * S:]
    shift = M.mean(axis=0)
    M = M - shift
    scale = np.maximum(np.abs(M).max(axis=0), 1e-300)
    blocks = M.reshape(S, per, N)
    b1 = blocks.sum(axis=1)
    b2 = (blocks * blocks).sum(axis=1)
    combos = np.array(list(itertools.combinations(range(S), S // 2)), dtype=np.int64)
    n_half = per * (S // 2)
    mask = np.zeros((len(combos), S))
    mask[np.arange(len(combos))[:, None], combos] = 1.0
    logits, is_best, oos_best = np.empty(len(combos)), np.empty(len(combos)), np.empty(len(combos))
    for a in range(0, len(combos), chunk):
        m_in = mask[a:a + chunk]
        m_out = 1.0 - m_in
        s1_in, s1_out = m_in @ b1, m_out @ b1
        if stat == "sharpe":
            r_in = validation._sharpe_from_sums(s1_in, m_in @ b2, n_half, shift, scale)
            r_out = validation._sharpe_from_sums(s1_out, m_out @ b2, n_half, shift, scale)
        else:
            r_in, r_out = s1_in / n_half + shift, s1_out / n_half + shift
        best = np.argmax(r_in, axis=1)
        rows = np.arange(len(best))
        rb = r_out[rows, best]
        rank = (r_out < rb[:, None]).sum(axis=1) + ((r_out == rb[:, None]).sum(axis=1) + 1) / 2.0
        omega = rank / (N + 1)
        logits[a:a + chunk] = np.log(omega / (1.0 - omega))
        is_best[a:a + chunk] = r_in[rows, best]
        oos_best[a:a + chunk] = rb
    return float(np.mean(logits <= 0)), logits, is_best, oos_best


def test_pbo_kernel_equals_the_matrix_form_it_replaced():
    """On random inputs (constant and zero columns, coarse values with ties, several S, both
    statistics) the PBO, every logit and every selected configuration's statistics agree with the
    former implementation. Documented tolerance: the in- and out-of-sample statistics to 1e-12
    relative (BLAS's blocking may add a half sum in another order; seen in its last partial chunk:
    one last-bit difference); the logits and the PBO exactly. Thread count: no effect at all."""
    import numba

    rng = np.random.default_rng(7)
    cases = [(64, 150, 16), (48, 1500, 12), (40, 50, 8), (33, 20, 4), (16, 7, 2), (36, 400, 12)]
    for k, (T, N, S) in enumerate(cases):
        M = rng.normal(0.001, 1, (T, N)) * rng.choice([1e-4, 1.0, 30.0], N)
        M[:, rng.integers(0, N, N // 10)] = 0.0  # never trades: Sharpe 0, ties
        M[:, rng.integers(0, N, N // 20)] = 0.5  # constant: Sharpe 0 too
        if k % 2:
            M = np.round(M, 1)  # coarse values: ties in the ranks
        for stat in ("sharpe", "mean"):
            want_pbo, want_logits, want_is, want_oos = _pbo_matrix_form(M, S, stat)
            got = validation.pbo(M, n_splits=S, stat=stat)
            assert got.pbo == want_pbo, (T, N, S, stat)
            np.testing.assert_array_equal(got.logits, want_logits, err_msg=f"{(T, N, S, stat)}")
            np.testing.assert_allclose(got.is_best, want_is, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(got.oos_of_best, want_oos, rtol=1e-12, atol=1e-300)
            assert got.n_configs == N and got.n_combinations == len(want_logits)
    # a cap: a seeded random subset (what sweeps.inspect takes beyond MAX_PBO_CONFIGS), said in the result
    M = rng.normal(0, 1, (32, 500))
    capped = validation.pbo(M, n_splits=8, max_configs=200, seed=0)
    direct = validation.pbo(M[:, np.random.default_rng(0).choice(500, 200, replace=False)], n_splits=8)
    assert capped.subset and capped.n_input == 500 and capped.n_configs == 200 and capped.subset_seed == 0
    np.testing.assert_array_equal(capped.logits, direct.logits)
    below = validation.pbo(M, n_splits=8, max_configs=500)
    assert not below.subset and below.n_input is None and below.n_configs == 500
    np.testing.assert_array_equal(below.logits, validation.pbo(M, n_splits=8).logits)
    M = rng.normal(0, 1, (64, 2000))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = validation.pbo(M)
    finally:
        numba.set_num_threads(threads)
    many = validation.pbo(M)
    for a, b in ((one.logits, many.logits), (one.is_best, many.is_best), (one.oos_of_best, many.oos_of_best)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ SCALE: 1e6 configurations, 64 buckets (one test)

MILLION_AXES = {"signal": [f"s{i:02d}" for i in range(40)], "entry": np.geomspace(0.5, 4.0, 25),
                "exit": np.linspace(0.0, 2.0, 25), "take_profit": np.geomspace(5.0, 300.0, 40)}
MILLION_BUCKETS = 64  # as the default runs: PBO then takes S = 16 blocks, C(16, 8) = 12870 splits
# The page of 1e6 configurations is built by the CLI in a child process under this address-space cap,
# so that a page builder that blows up fails this test (MemoryError) instead of the OOM killer taking
# the whole test run with it.
BUILD_MEMORY_CAP = 8 << 30
BUILD_TIMEOUT_S = 300
_MILLION: dict = {}


# What `python -m sweeps.inspect CUBE --html PAGE` does for the page (sweeps.inspect._run_html, less
# its progress bar and the text report it prints afterwards), timed from after the imports.
_CHILD_BUILD = """
import json, sys, time
t0 = time.perf_counter()
from sweeps import inspect, report_html
t1, c1 = time.perf_counter(), time.process_time()
cube, html = sys.argv[1], sys.argv[2]
report_html.check_target(html, False, "--html", cube=cube)
ds = report_html.open_cube(cube)
st = inspect.search_stats(ds)
report_html.write_text(report_html.build(ds, stats=st, cube_path=cube), html)
print(json.dumps({"wall": time.perf_counter() - t1, "cpu": time.process_time() - c1, "imports": t1 - t0}))
"""


def build_page_in_child(cube: Path, html: Path) -> dict:
    """The page of `cube`, built in a child process whose memory is capped at BUILD_MEMORY_CAP:
    open + load, the search statistics (PBO, DSR, SPA, ...), every section, the file written.
    Returns its wall time and its CPU time (all its threads), both from after the imports
    (reported as well), in seconds."""
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (BUILD_MEMORY_CAP, BUILD_MEMORY_CAP))

    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-c", _CHILD_BUILD, str(cube), str(html)]
    p = subprocess.run(argv, cwd=repo, capture_output=True, text=True, preexec_fn=cap, timeout=BUILD_TIMEOUT_S)
    assert p.returncode == 0, (f"building the page of {cube} exited {p.returncode} (memory capped at "
                               f"{BUILD_MEMORY_CAP >> 30} GiB): {p.stderr[-2000:]}")
    assert html.is_file() and html.stat().st_size > 0, f"{html} was not written"
    return json.loads(p.stdout.strip().splitlines()[-1])


def million_page(tmp_path_factory) -> dict:
    """The 1e6-configuration cube (40 x 25 x 25 x 40, 64 buckets) and its page, built once per test
    process and shared by this module's SCALE test and tests/test_report_browser.py."""
    if not _MILLION:
        # the numba kernels (PBO, the heatmap's cells) are compiled once per machine and cached on disk:
        # compile them here, not in the timed build (a fresh checkout would otherwise time the compiler)
        validation.pbo(np.random.default_rng(0).normal(size=(32, 4)))
        hm.pair_stats({"a": np.zeros(3, np.uint8), "b": np.zeros(3, np.uint8)}, {"a": 1, "b": 1}, [("a", "b")],
                      {"v": np.zeros(3)})
        d = tmp_path_factory.mktemp("million")
        cube = grid_cube(d / "big.zarr", MILLION_AXES, buckets=MILLION_BUCKETS)
        html = d / "big.html"
        _MILLION.update(cube=cube, html=html, **build_page_in_child(cube, html))
    return _MILLION


@pytest.fixture(scope="session")
def million(tmp_path_factory) -> dict:
    return million_page(tmp_path_factory)


def test_SCALE_page_of_a_million_configurations_is_fast_and_small(million):
    """SCALE: a grid cube of 40 x 25 x 25 x 40 = 1e6 configurations with 64 buckets: its page
    (open + load, the search statistics with PBO over C(16, 8) = 12870 CSCV splits, every section,
    the file written: what `python -m sweeps.inspect CUBE --html PAGE` does before its text report)
    is built in < 30 s and is < 20 MB.

    The time bar is on the wall clock of a machine that runs nothing else. On a shared one (CI, several
    people's test runs on 2 cores) the wall clock measures the others too, so the test takes the
    smaller of the wall time and the CPU time of the build (all its threads): on an idle machine it
    cannot take longer than the CPU it used (its data come from the page cache: the cube was just
    written)."""
    assert int(np.prod([len(v) for v in MILLION_AXES.values()])) == 1_000_000
    wall, cpu, html = million["wall"], million["cpu"], million["html"]
    elapsed = min(wall, cpu)
    size = html.stat().st_size
    page = html.read_text()
    found = charts(page)
    assert GRID_CHARTS <= set(found) and all(has_data(t) for n in GRID_CHARTS for t in found[n])
    assert "12870 splits" in page and "PBO ran on 20000 of the 1000000 distinct bucket series" in page
    print(f"\n1e6 x {MILLION_BUCKETS}-bucket page: {wall:.1f} s wall, {cpu:.1f} s CPU (+ imports "
          f"{million['imports']:.1f} s wall), {size / 1e6:.1f} MB")
    heat = heat_data(page)
    meta = heat["meta"]
    assert meta["sampled"] and meta["n_total"] == 1_000_000 and meta["n_top"] == hm.HEAT_TOP_ROWS
    assert (f"aggregated over {meta['n_rows']} of 1000000 configurations: the top {hm.HEAT_TOP_ROWS} "
            "and a random sample") in page
    assert len(heat["exact"]) == 6 and len(meta["labels"]["signal"]) == 40 and len(meta["labels"]["entry"]) <= hm.MAX_BINS
    assert elapsed < 30, f"page of 1e6 configurations took {wall:.1f} s wall, {cpu:.1f} s CPU"
    assert size < 20e6, f"page of 1e6 configurations is {size / 1e6:.1f} MB"
