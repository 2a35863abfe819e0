"""The HTML report page (sweeps/report_html.py, `python -m sweeps.inspect CUBE --html PAGE`).

Cubes are built synthetically (xarray + results.write_cube, no kernel runs) except in the
end-of-run test of sweeps.grid. Checks: one self-contained file (no http(s) script/src), one
plotly div per expected chart with data (the embedded JSON parsed), messages instead of failures
for cubes lacking variables, the --html/--overwrite rules, the page beside a cube, and (one test,
marked SCALE) a 1e6-configuration cube in < 30 s and < 20 MB.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gpu_engine import results
from gpu_engine.enums import METRICS
from sweeps import inspect, report_html
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
    # heatmap: every pair's matrices, at most MAX_BINS cells a side, and the aggregation named
    blob = json.loads(re.search(r'<script type="application/json" id="heat-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    assert set(blob["meta"]["params"]) == set(SMALL_AXES)
    assert len(blob["z"]) == 6 and "oos_win_rate" in blob["meta"]["metrics"]
    z = blob["z"]["signal|entry"]["win_rate"]["median"]
    assert len(z) == 5 and len(z[0]) == 2
    assert "MEDIAN" in page and "over every value of the other parameters" in page
    # PBO histogram counts = the CSCV splits; the deflated Sharpe names the trials
    ds = xr.open_zarr(cube).load()
    st = inspect.search_stats(ds)
    assert sum(found["pbo"][0]["y"]) == st["pbo"].n_combinations
    assert f"PBO = {st['pbo'].pbo:.3f}" in page
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
    blob = json.loads(re.search(r'id="heat-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    # entry (continuous, scattered) is binned; out-of-sample figures of 10 points are not offered
    assert "entry" in blob["meta"]["params"] and len(blob["meta"]["labels"]["entry"]) <= report_html.MAX_BINS
    assert not any(m.startswith("oos_") for m in blob["meta"]["metrics"]) and "configurations" in blob["meta"]["metrics"]
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


# ------------------------------------------------------------------ SCALE: 1e6 configurations (one test)

def test_SCALE_page_of_a_million_configurations_is_fast_and_small(tmp_path):
    """SCALE: a grid cube of 40 x 25 x 25 x 40 = 1e6 configurations (8 buckets): the page is built
    (open + load + every section + write) in < 30 s and is < 20 MB."""
    axes = {"signal": [f"s{i:02d}" for i in range(40)], "entry": np.geomspace(0.5, 4.0, 25),
            "exit": np.linspace(0.0, 2.0, 25), "take_profit": np.geomspace(5.0, 300.0, 40)}
    cube = grid_cube(tmp_path / "big.zarr", axes, buckets=8)
    html = tmp_path / "big.html"
    t0 = time.perf_counter()
    ds = report_html.open_cube(cube)
    report_html.write_text(report_html.build(ds, cube_path=cube), html)
    elapsed = time.perf_counter() - t0
    size = html.stat().st_size
    page = html.read_text()
    found = charts(page)
    assert GRID_CHARTS <= set(found) and all(has_data(t) for n in GRID_CHARTS for t in found[n])
    assert elapsed < 30, f"page of 1e6 configurations took {elapsed:.1f} s"
    assert size < 20e6, f"page of 1e6 configurations is {size / 1e6:.1f} MB"
