"""The sweep CLIs end to end on a tiny book: bad input, grid resume, optimize resume, cube == sweep, inspect."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import gpu_engine
from gpu_engine import space as space_mod
from gpu_engine.data.blocks import dataset as blocks_mod
from gpu_engine.data.books.store import Book, Trades, write_store
from gpu_engine.enums import METRICS
from sweeps import _common, grid, inspect, optimize

START_NS = 1_723_075_200 * 1_000_000_000  # 2024-08-08T00:00Z

SPACE = """
[space]
name = "tiny"
thresholds = "std"

[params.signal]
values = ["imbalance1", "ofi"]

[params.window]
value = 10

[params.entry]
dist = "log"
low = 0.5
high = 2.0
points = 3
dense = 2
width = 0.5

[params.exit]
values = [0.0, inf]

[params.take_profit]
values = [5.0, inf]

[params.side]
value = 0

[params.regime]
value = "log_fair_dev"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweeps")
    rng = np.random.default_rng(0)
    T = 1200
    ts = START_NS + np.cumsum(rng.integers(50_000_000, 150_000_000, T)).astype(np.int64)
    mid = 60_000 * np.exp(np.cumsum(rng.normal(0, 2e-4, T)))
    L = 3
    half = 0.05 + 0.01 * np.arange(L)
    bid_px = mid[:, None] - half * mid[:, None] / 1000
    ask_px = mid[:, None] + half * mid[:, None] / 1000
    bid_sz = rng.uniform(0.1, 3, (T, L)).astype(np.float32)
    ask_sz = rng.uniform(0.1, 3, (T, L)).astype(np.float32)
    tr = Trades(ts=ts[::4].copy(), px=mid[::4].copy(), qty=rng.uniform(0.01, 1, T // 4),
                side=rng.choice([-1, 1], T // 4).astype(np.int8))
    book = Book.from_arrays(ts, bid_px, ask_px, bid_sz, ask_sz, trades=tr,
                            attrs={"exchange": "test", "symbol": "BTCUSDT", "depth": L})
    store = write_store(d / "book.zarr", book)
    arr, meta = blocks_mod.build(until="2024-08-09")
    blocks_mod.write(d / "blocks.npy", arr, meta)
    space = d / "tiny.toml"
    space.write_text(SPACE)
    return {"dir": d, "data": str(store), "blocks": str(d / "blocks.npy"), "space": str(space)}


def _args(tiny, *extra):
    return ["--data", tiny["data"], "--blocks", tiny["blocks"], "--device", "cpu", "--buckets", "8",
            "--no-progress", *extra]


class Killed(BaseException):
    pass


def _kill_hook(monkeypatch):
    def fake_exit(code):
        raise Killed(code)

    monkeypatch.setattr(os, "_exit", fake_exit)


# ------------------------------------------------------------------ bad input

BAD_SPACES = [
    ("[params.signal]\nvalues = ['ofi']\n[params.entry]\nvalue = 1.0\nflavour = 2\n", "flavour"),
    ("[params.signal]\nvalues = []\n[params.entry]\nvalue = 1.0\n", "empty"),
    ("[params.signal]\nvalues = ['ofi']\n[params.entry]\nlow = 1.0\nhigh = 2.0\nstep = 0\n", "step"),
    ("[params.signal]\nvalues = ['ofi']\n[params.entry]\nlow = 2.0\nhigh = 1.0\nstep = 0.5\n", "reversed"),
    ("[params.signal]\nvalues = ['nosuch']\n[params.entry]\nvalue = 1.0\n", "nosuch"),
    ("[params.signal]\nvalues = ['imbalance1']\n[params.entry]\nvalue = 1.0\n[params.fee_bps]\nvalue = 1\n", "fee_bps"),
]


@pytest.mark.parametrize("text, word", BAD_SPACES)
def test_bad_space_exits_2_with_one_line_and_writes_nothing(tiny, tmp_path, capsys, text, word):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    out = tmp_path / "cube.zarr"
    rc = grid.main(["--space", str(f), "--out", str(out), *_args(tiny)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and str(f) in err and word in err
    assert not out.exists()
    rc = optimize.main(["--space", str(f), "--out", str(out), "--storage", str(tmp_path / "j.log"), *_args(tiny)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and word in err
    assert list(tmp_path.iterdir()) == [f]


@pytest.mark.parametrize("extra, word", [
    (["--target-win-rate", "0.6", "1.2"], "1.2"),
    (["--target-win-rate", "0.6", "0.55"], "lo"),
    (["--data", "/nonexistent/book.zarr"], "/nonexistent/book.zarr"),
    (["--blocks", "/nonexistent/blocks.npy"], "/nonexistent/blocks.npy"),
    (["--fee-bps", "-1"], "--fee-bps"),
])
def test_bad_flags_exit_2(tiny, tmp_path, capsys, extra, word):
    out = tmp_path / "cube.zarr"
    rc = optimize.main(["--space", tiny["space"], "--out", str(out), "--storage", str(tmp_path / "j.log"),
                        *_args(tiny), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and word in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ grid

def test_grid_resume_equals_uninterrupted_and_sweep(tiny, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full.zarr"
    assert grid.main(["--space", tiny["space"], "--out", str(full), "--batch", "4", *_args(tiny)]) == 0
    part = tmp_path / "part.zarr"
    _kill_hook(monkeypatch)
    monkeypatch.setenv(grid.STOP_AFTER_ENV, "2")
    with pytest.raises(Killed):
        grid.main(["--space", tiny["space"], "--out", str(part), "--batch", "4", *_args(tiny)])
    mid = xr.open_zarr(part)
    assert mid.attrs["complete"] is False and int(mid.region_done.sum()) == 2
    assert np.isnan(mid["trades"].values).any()
    assert inspect.main([str(part)]) == 2  # an interrupted cube is refused
    monkeypatch.delenv(grid.STOP_AFTER_ENV)
    assert grid.main(["--space", tiny["space"], "--out", str(part), "--batch", "4", *_args(tiny)]) == 0
    a, b = xr.open_zarr(full), xr.open_zarr(part)  # plain xarray, no project code
    assert b.attrs["complete"] is True
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert list(a["trades"].dims) == ["signal", "entry", "exit", "take_profit"]

    # the cube equals gpu_engine.sweep on the same points (in-sample part)
    args = grid.build_parser().parse_args(["--space", tiny["space"], "--out", "x", *_args(tiny)])
    space = space_mod.load(tiny["space"])
    data = _common.load_data(args, space, log=lambda *x: None)
    st = a.stack(point=["signal", "entry", "exit", "take_profit"])
    points = {p: st[p].values if st[p].ndim else np.full(st.sizes["point"], st[p].values.item())
              for p in space.params}
    fields = _common.configs_for(space, points, data, _common.costs(args))
    ref = gpu_engine.sweep(data.is_book, data.is_bank, fields, device="cpu", buckets=8)
    for m in METRICS:
        np.testing.assert_array_equal(st[m].values, ref[m].values, err_msg=m)
    np.testing.assert_array_equal(st["bucket_pnl"].transpose("point", "bucket").values, ref["bucket_pnl"].values)
    oos = gpu_engine.sweep(data.oos_book, data.oos_bank, fields, device="cpu", buckets=8)
    np.testing.assert_array_equal(st["oos_trades"].values, oos["trades"].values)

    # the same command on a complete cube does nothing more; another space into it is refused
    capsys.readouterr()
    rc = inspect.main([str(full), "--top", "3", "--heatmap", "entry", "signal", "--png", str(tmp_path / "h.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "VERDICT:" in out and "PBO" in out and (tmp_path / "h.png").stat().st_size > 0


def test_grid_refuses_a_store_of_another_sweep(tiny, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny)]) == 0
    capsys.readouterr()
    rc = grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny, "--fee-bps", "5")])
    assert rc == 2 and "different sweep" in capsys.readouterr().err


def test_grid_killed_subprocess_resumes_to_the_same_cube(tiny, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "sweeps.grid", "--space", tiny["space"], "--batch", "4", *_args(tiny)]
    env = {**os.environ, grid.STOP_AFTER_ENV: "1"}
    killed = subprocess.run(argv + ["--out", str(tmp_path / "k.zarr")], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    env.pop(grid.STOP_AFTER_ENV)
    again = subprocess.run(argv + ["--out", str(tmp_path / "k.zarr")], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "1 resumed" in again.stdout
    assert grid.main(["--space", tiny["space"], "--out", str(tmp_path / "u.zarr"), "--batch", "4", *_args(tiny)]) == 0
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "k.zarr").drop_attrs(),
                                xr.open_zarr(tmp_path / "u.zarr").drop_attrs())
    assert inspect.main([str(tmp_path / "k.zarr"), "--by", "nosuch"]) == 2


# ------------------------------------------------------------------ optimize

def test_optimize_resumes_its_study_from_the_journal(tiny, tmp_path, monkeypatch, capsys):
    import optuna

    journal = tmp_path / "j.log"
    out = tmp_path / "opt.zarr"
    argv = ["--space", tiny["space"], "--out", str(out), "--storage", str(journal), "--study", "s1",
            "--trials", "9", "--batch", "3", "--sampler", "random", "--min-trades", "1", "--oos-top", "4",
            *_args(tiny)]
    _kill_hook(monkeypatch)
    monkeypatch.setenv(optimize.STOP_AFTER_ENV, "2")
    with pytest.raises(Killed):
        optimize.main(argv)
    monkeypatch.delenv(optimize.STOP_AFTER_ENV)
    storage = optimize.make_storage(str(journal))[0]
    st = optuna.load_study(study_name="s1", storage=storage)
    first = [(t.number, t.params, t.value) for t in st.trials]
    assert len(first) == 6 and all(t.state.name == "COMPLETE" for t in st.trials)
    assert not out.exists()
    capsys.readouterr()
    assert optimize.main(argv) == 0
    text = capsys.readouterr().out
    assert "resuming with 6 completed trials" in text and "VERDICT:" in text
    st = optuna.load_study(study_name="s1", storage=storage)
    assert len(st.trials) == 9
    assert [(t.number, t.params, t.value) for t in st.trials[:6]] == first
    ds = xr.open_zarr(out)
    assert ds.sizes["trial"] == 9 and ds.sizes["config"] == 2
    assert list(ds["trial"].values) == list(range(9))
    assert int(ds["oos_evaluated"].sum()) == 4
    assert np.isfinite(ds["oos_trades"].values[ds["oos_evaluated"].values]).all()
    for key in ("data", "space", "costs", "sampler", "seed", "device", "engine_version", "wall_s"):
        assert key in ds.attrs
    # every trial's value is the median objective of its neighbourhood
    np.testing.assert_allclose(ds["value"].values, np.median(np.nan_to_num(ds["sharpe"].values), axis=1))


@pytest.mark.parametrize("sampler", optimize.SAMPLERS)
def test_every_sampler_runs(tiny, tmp_path, sampler, capsys):
    out = tmp_path / "o.zarr"
    rc = optimize.main(["--space", tiny["space"], "--out", str(out), "--storage", str(tmp_path / "j.log"),
                        "--trials", "4", "--batch", "2", "--sampler", sampler, "--oos-top", "2", *_args(tiny)])
    assert rc == 0, capsys.readouterr().err
    ds = xr.open_zarr(out)
    assert ds.sizes["trial"] == 4 and ds.attrs["sampler"] == sampler
    assert len(ds.attrs["batches"]) == 2


def test_plan_regions_covers_every_cell_once():
    for shape, batch in [((5, 3, 4), 7), ((2, 2), 100), ((7,), 3), ((3, 1, 5), 5)]:
        chunks, regions = grid.plan_regions(shape, batch)
        seen = np.zeros(shape, int)
        for reg in regions:
            seen[reg] += 1
            assert all((s.start % c) == 0 for s, c in zip(reg, chunks))  # whole chunks only
            assert int(np.prod([s.stop - s.start for s in reg])) <= max(batch, 1) or all(c == 1 for c in chunks[:-1])
        assert (seen == 1).all()


def test_constraints_and_feasibility():
    m = np.full((3, len(METRICS)), np.nan)
    ix = {n: i for i, n in enumerate(METRICS)}
    m[0, [ix["win_rate"], ix["win_rate_lo"], ix["trades"], ix["expectancy"]]] = [0.57, 0.52, 800, 1.0]
    m[1, [ix["win_rate"], ix["win_rate_lo"], ix["trades"], ix["expectancy"]]] = [0.57, 0.45, 100, 1.0]
    c = optimize.constraint_values(m, 0.55, 0.60, 30)
    assert (c[0] <= 0).all() and c[1][2] > 0 and (c[2] > 0).any()
    np.testing.assert_array_equal(optimize.feasible(m, 0.55, 0.60, 30), [True, False, False])



def test_report_ranks_configurations_that_trade_before_those_that_never_do():
    m = {"sharpe": np.array([0.0, -0.2, np.nan, -0.1, 0.3]), "trades": np.array([0, 12, 0, 5, 3])}
    assert inspect.rank(m, "sharpe").tolist() == [4, 3, 1, 0, 2]
