"""The maker search space end to end (issue 11, parts 4 and 5): `python -m sweeps.optimize --space maker`
on a small synthetic USD-M store with trades, its fee defaults by venue, the order-flow metrics in the
cube, `sweeps.inspect`'s maker block and fill ratio beside the win rate, and bad maker input refused
before anything is written."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import xarray as xr

import gpu_engine
from gpu_engine import space as space_mod
from gpu_engine.data.blocks import dataset as blocks_mod
from gpu_engine.data.books.store import Book, Trades, write_store
from gpu_engine.enums import METRICS
from gpu_engine.errors import InputError
from gpu_engine.metrics import wilson
from sweeps import _common, inspect, market_settings, optimize

START_NS = 1_723_075_200 * 1_000_000_000  # 2024-08-08T00:00Z
TICK = 0.1
USDM = {"exchange": "binance", "symbol": "BTCUSDT", "market": "usdm", "contract": "linear", "multiplier": 1.0,
        "tick_size": TICK, "lot_size": 0.001}


def maker_book(T: int = 1500, seed: int = 0, attrs: dict | None = None) -> Book:
    """A book on a 0.1 price grid (best bid K ticks, best ask K + 1, three levels a side) with about
    two trades per tick at the touch, so that resting orders fill, partly fill or wait."""
    rng = np.random.default_rng(seed)
    ts = START_NS + np.cumsum(rng.integers(80_000_000, 120_000_000, T)).astype(np.int64)
    K = 600_000 + np.cumsum(rng.choice([-1, 0, 0, 1], T))
    lv = np.arange(3)
    bid_px = (K[:, None] - lv) * TICK
    ask_px = (K[:, None] + 1 + lv) * TICK
    bid_sz = rng.uniform(0.2, 3.0, (T, 3)).astype(np.float32)
    ask_sz = rng.uniform(0.2, 3.0, (T, 3)).astype(np.float32)
    n = 2 * T
    tick = np.sort(rng.integers(1, T, n))
    side = rng.choice([-1, 1], n).astype(np.int8)
    px = np.where(side < 0, bid_px[tick - 1, 0], ask_px[tick - 1, 0])
    trades = Trades(ts=ts[tick] - 1, px=px, qty=rng.uniform(0.05, 2.0, n), side=side)
    return Book.from_arrays(ts, bid_px, ask_px, bid_sz, ask_sz, trades=trades, attrs=dict(attrs or USDM))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("maker")
    usdm = write_store(d / "usdm.zarr", maker_book())
    no_tick = write_store(d / "notick.zarr", maker_book(attrs={"exchange": "test", "symbol": "BTCUSDT"}))
    arr, meta = blocks_mod.build(until="2024-08-09")
    blocks_mod.write(d / "blocks.npy", arr, meta)
    return {"dir": d, "data": str(usdm), "no_tick": str(no_tick), "blocks": str(d / "blocks.npy")}


def _rc(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code)


def _optimize_args(store, out, journal, *extra):
    return ["--space", "maker", "--data", store["data"], "--blocks", store["blocks"], "--device", "cpu",
            "--buckets", "8", "--trials", "4", "--batch", "4", "--sampler", "random", "--min-trades", "1",
            "--oos-top", "4", "--storage", str(journal), "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    """`python -m sweeps.optimize --space maker` with the venue's defaults; its printed report and cube."""
    d = tmp_path_factory.mktemp("run")
    out = d / "maker.zarr"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = optimize.main(_optimize_args(store, out, d / "j.log"))
    return {"rc": rc, "text": buf.getvalue(), "out": out, "dir": d}


def test_space_maker_runs_end_to_end_with_usdm_defaults(run, store):
    assert run["rc"] == 0, run["text"]
    text = run["text"]
    assert "fees: taker 5 bps, maker 2 bps (Binance USD-M futures regular tier" in text
    assert "contract: linear (store), multiplier 1" in text and "tick 0.1 (store)" in text
    ds = xr.open_zarr(run["out"])
    for m in METRICS:  # every metric, in and out of sample
        assert m in ds and f"oos_{m}" in ds, m
    c = ds.attrs["costs"]
    assert c["fee_bps"] == 5.0 and c["maker_fee_bps"] == 2.0 and "USD-M" in c["fee_source"]
    assert c["contract"]["tick_size"] == TICK and c["contract"]["queue"] == "risk_averse"
    assert ds.attrs["space_name"] == "maker"
    assert set(np.asarray(ds["entry_type"].values).astype(str)) == {"maker"}
    posted = ds["orders_posted"].values
    assert np.nansum(posted) > 0
    ratio = ds["maker_fill_ratio"].values
    assert np.all((ratio[np.isfinite(ratio)] >= 0) & (ratio[np.isfinite(ratio)] <= 1))
    np.testing.assert_allclose(ds["fees"].values, ds["fees_maker"].values + ds["fees_taker"].values,
                               rtol=1e-9, atol=1e-12)
    # the offsets and times in force of the space reach the configurations
    assert set(np.unique(ds["entry_offset"].values)) <= {0, 1, 2, 3}
    tif = ds["entry_tif_s"].values
    assert np.all((tif >= 0.1) & (tif <= 30.0))

    # the console summary: the fill ratio beside the win rate, the maker block
    assert "IS win rate [95% CI] n  IS fill ratio [95% CI] n" in text
    assert "maker orders of the listed configurations" in text
    # the page beside the cube: the fill ratio column and the maker section
    page = (run["out"].with_suffix(".html")).read_text()
    assert 'id="maker"' in page and "maker fill ratio [95% Wilson] n" in page
    assert '"maker_fill_ratio"' in page  # a heatmap metric of a run with maker orders


def test_cube_equals_gpu_engine_sweep_with_the_run_settings(run, store):
    """The cube's in-sample figures are those of gpu_engine.sweep with the store's contract and the
    USD-M fees: the settings really reach the kernel."""
    ds = xr.open_zarr(run["out"])
    space = space_mod.load(_common.resolve_space("maker"))
    args = optimize.build_parser().parse_args(["--data", store["data"], "--blocks", store["blocks"],
                                               "--device", "cpu", "--buckets", "8"])
    data = _common.load_data(args, space, log=lambda *a: None)
    t = 0
    points = {p: np.broadcast_to(ds[p].isel(trial=t).values, (ds.sizes["config"],)) for p in space.params}
    cost = ds.attrs["costs"]
    fields = _common.configs_for(space, points, data, cost)
    assert np.all(fields["maker_fee_bps"] == 2.0) and np.all(fields["fee_bps"] == 5.0)
    ref = gpu_engine.sweep(data.is_book, data.is_bank, fields, device="cpu", buckets=8, contract="linear",
                           multiplier=1.0, tick_size=TICK, lot_size=0.001, queue="risk_averse")
    for m in METRICS:
        np.testing.assert_array_equal(ds[m].isel(trial=t).values, ref[m].values, err_msg=m)


def test_queue_and_maker_fee_flags_reach_the_kernel(store, tmp_path, capsys):
    out = tmp_path / "p.zarr"
    rc = optimize.main(_optimize_args(store, out, tmp_path / "j.log", "--queue", "power", "--queue-n", "3",
                                      "--maker-fee-bps", "-0.5", "--cancel-latency-ms", "5", "--trials", "2",
                                      "--batch", "2", "--no-html"))
    text = capsys.readouterr().out
    assert rc == 0
    assert "queue model power (n = 3)" in text and "maker -0.5 bps" in text and "cancel latency 5 ms" in text
    ds = xr.open_zarr(out)
    c = ds.attrs["costs"]
    assert c["maker_fee_bps"] == -0.5 and c["cancel_latency_ns"] == 5_000_000
    assert c["contract"]["queue"] == "power" and c["contract"]["queue_n"] == 3.0
    space = space_mod.load(_common.resolve_space("maker"))
    args = optimize.build_parser().parse_args(["--data", store["data"], "--blocks", store["blocks"],
                                               "--device", "cpu", "--buckets", "8"])
    data = _common.load_data(args, space, log=lambda *a: None)
    points = {p: np.broadcast_to(ds[p].isel(trial=1).values, (ds.sizes["config"],)) for p in space.params}
    fields = _common.configs_for(space, points, data, c)
    assert np.all(fields["cancel_latency"] == 5_000_000)
    ref = gpu_engine.sweep(data.is_book, data.is_bank, fields, device="cpu", buckets=8,
                           **market_settings.sweep_kwargs(c))
    for m in ("net_pnl", "fees_maker", "maker_fills", "mean_queue_wait_s", "cancels"):
        np.testing.assert_array_equal(ds[m].isel(trial=1).values, ref[m].values, err_msg=m)
    # a rebate: maker fees are negative where maker orders filled
    fm, mf = ds["fees_maker"].values, ds["maker_fills"].values
    assert np.all(fm[mf > 0] < 0)


def test_maker_space_points_become_v2_configuration_fields():
    space = space_mod.load(_common.resolve_space("maker"))
    assert space.neighbourhood_size == 32 and set(space.dense) == {"entry", "take_profit", "stop_loss"}
    points = {"signal": np.array(["ofi", "imbalance1"]), "window": np.array([10, 10]),
              "entry": np.array([1.0, 2.0]), "entry_type": np.array(["maker", "taker"]),
              "tp_type": np.array(["taker", "maker"]), "entry_offset": np.array([0, 3]),
              "entry_tif_s": np.array([0.1, np.inf])}
    f = space_mod.to_configs(points, lambda name, window: 7)
    assert f["entry_type"].tolist() == [1, 0] and f["tp_type"].tolist() == [0, 1]
    assert f["entry_offset"].tolist() == [0, 3] and f["entry_tif"].tolist() == [1e8, np.inf]
    assert "entry_tif_s" not in f and f["entry_type"].dtype == np.int8


# ------------------------------------------------------------------ bad maker input

BAD_MAKER_SPACES = [
    ("entry_offset", "values = [-1, 0]", "entry_offset"),
    ("entry_offset", "values = [1.5]", "integer"),
    ("entry_tif_s", "values = [0.0, 1.0]", "entry_tif_s"),
    ("entry_tif_s", "values = [-2.0]", "entry_tif_s"),
    ("entry_type", "values = ['limit']", "entry_type"),
    ("maker_fee_bps", "value = 1.0", "--maker-fee-bps"),
]


def _space_with(tmp_path, name, line):
    text = space_mod.load(_common.resolve_space("maker")).text
    head = f"[params.{name}]"
    if head in text:
        start = text.index(head)
        end = text.find("\n[", start + 1)
        text = text[:start] + f"{head}\n{line}\n" + (text[end + 1:] if end >= 0 else "")
    else:
        text += f"\n{head}\n{line}\n"
    f = tmp_path / "bad.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize("name, line, word", BAD_MAKER_SPACES)
def test_bad_maker_space_exits_2_and_writes_nothing(store, tmp_path, capsys, name, line, word):
    f = _space_with(tmp_path, name, line)
    out = tmp_path / "o.zarr"
    argv = _optimize_args(store, out, tmp_path / "j.log")
    argv[argv.index("maker")] = str(f)
    rc = _rc(optimize.main, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and word in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_maker_space_on_a_store_without_tick_size_is_refused(store, tmp_path, capsys):
    from sweeps import grid

    out = tmp_path / "o.zarr"
    argv = _optimize_args(store, out, tmp_path / "j.log")
    argv[argv.index(store["data"])] = store["no_tick"]
    rc = _rc(optimize.main, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "tick_size" in err and "params.entry_type" in err and "--tick-size" in err
    rc = _rc(grid.main, ["--space", "maker", "--out", str(out), "--data", store["no_tick"], "--blocks",
                         store["blocks"], "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "tick_size" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ fee defaults, settings

def _args(**kw):
    base = dict(contract=None, multiplier=None, tick_size=None, lot_size=None, queue="risk_averse", queue_n=None,
                fee_bps=None, maker_fee_bps=None, cancel_latency_ms=None, latency_ms=20.0)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("attrs, taker, maker, word", [
    ({"exchange": "binance", "market": "usdm"}, 5.0, 2.0, "USD-M"),
    ({"exchange": "binance", "market": "coinm", "contract": "inverse", "multiplier": 100.0}, 5.0, 2.0, "COIN-M"),
    ({"exchange": "binance", "symbol": "BTCUSD_PERP", "contract": "inverse", "multiplier": 100.0}, 5.0, 2.0,
     "COIN-M"),
    ({"exchange": "binance", "market": "spot"}, 10.0, 10.0, "spot"),
    ({"exchange": "bybit", "market": "spot"}, 10.0, 10.0, "spot"),
    ({"exchange": "synthetic", "symbol": "BTCUSDT"}, 10.0, 10.0, "engine default"),
    ({"exchange": "bybit", "market": "linear"}, 10.0, 10.0, "engine default"),
    ({}, 10.0, 10.0, "engine default"),
])
def test_fee_defaults_by_venue(attrs, taker, maker, word):
    c = market_settings.costs(_args(), attrs)
    assert (c["fee_bps"], c["maker_fee_bps"]) == (taker, maker) and word in c["fee_source"]
    c = market_settings.costs(_args(maker_fee_bps=-1.0), attrs)
    assert c["fee_bps"] == taker and c["maker_fee_bps"] == -1.0 and "--maker-fee-bps as given" in c["fee_source"]


def test_settings_from_the_store_and_the_flags():
    store = {"contract": "inverse", "multiplier": 100.0, "tick_size": 0.1, "lot_size": 1.0}
    c = market_settings.resolve(_args(), store)
    assert (c["contract"], c["multiplier"], c["tick_size"], c["lot_size"]) == ("inverse", 100.0, 0.1, 1.0)
    assert set(c["source"].values()) == {"store"}
    c = market_settings.resolve(_args(contract="linear", lot_size=0.0, queue="log"), store)
    assert (c["contract"], c["multiplier"], c["lot_size"], c["queue"]) == ("linear", 1.0, 0.0, "log")
    assert c["source"]["contract"] == "flag" and c["source"]["multiplier"] == "default"
    c = market_settings.resolve(_args(), {})
    assert (c["contract"], c["multiplier"], c["tick_size"], c["lot_size"]) == ("linear", 1.0, None, 0.0)
    assert market_settings.costs(_args(latency_ms=7.0), {})["cancel_latency_ns"] == 7_000_000
    with pytest.raises(InputError, match="--multiplier"):
        market_settings.resolve(_args(contract="inverse"), {"contract": "linear", "multiplier": 1.0})


# ------------------------------------------------------------------ the maker block of sweeps.inspect

def _metrics(**over):
    n = 3
    m = {k: np.zeros(n) for k in METRICS}
    m.update(trades=np.array([40.0, 10.0, 0.0]), win_rate=np.array([0.9, 0.5, np.nan]),
             win_rate_lo=np.array([0.77, 0.24, np.nan]), win_rate_hi=np.array([0.96, 0.76, np.nan]),
             orders_posted=np.array([400.0, 20.0, 0.0]), maker_fill_ratio=np.array([0.1, 0.8, np.nan]),
             maker_fills=np.array([40.0, 16.0, 0.0]), expectancy=np.array([1.0, 2.0, np.nan]))
    for k in list(m):
        m[f"oos_{k}"] = m[k].copy()
    m.update(over)
    return m


def test_fill_ratio_interval_is_wilson_over_posted_orders():
    m = _metrics()
    r, lo, hi, n = inspect.fill_ratio_ci(m, 0)
    want = wilson(np.array([40.0]), np.array([400.0]))
    assert (r, n) == (0.1, 400) and lo == pytest.approx(want[0][0]) and hi == pytest.approx(want[1][0])
    assert inspect._fr(m, 0) == f"0.100 [{lo:.3f},{hi:.3f}] n=400"
    assert inspect._fr(m, 2) == "no orders"


def test_maker_block_says_plainly_when_the_fill_ratio_is_low():
    m = _metrics()
    lines = inspect.maker_block(m, [0, 1, 2], np.ones(3, bool))
    low = [ln for ln in lines if ln.startswith("LOW MAKER FILL RATIO")]
    assert len(low) == 1 and "#1 IS 0.100 of 400 orders" in low[0] and "#2" not in low[0]
    assert "not a strategy" in low[0]
    assert inspect.has_maker(m)
    assert not inspect.has_maker(_metrics(orders_posted=np.zeros(3), oos_orders_posted=np.zeros(3)))
    # the verdict names the fill ratio of the configuration it cites
    text = inspect.verdict(m, np.array([True, False, False]), 0.55, 0.95, 30)
    assert text.startswith("VERDICT: YES") and "maker fill ratio: 0.100" in text and "LOW" in text


def test_inspect_shows_the_maker_block_of_the_cube(run, capsys):
    assert inspect.main([str(run["out"]), "--no-progress", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "IS fill ratio [95% CI] n" in text and "OOS fill ratio [95% CI] n" in text
    i = text.index("maker orders of the listed configurations")
    head = text[i:].splitlines()[1]
    for word in ("posted", "rejected", "cancels", "maker fills", "taker fills", "queue wait s", "fees maker",
                 "fees taker"):
        assert word in head
    assert "fees: taker 5 bps, maker 2 bps" in text
