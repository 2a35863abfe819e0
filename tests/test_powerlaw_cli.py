"""`python -m sweeps.optimize --data blocks --space powerlaw` end to end on real daily closes (Coin
Metrics 2010-2014, Yahoo-style OHLCV 2014 on; skipped without the real-data folder).

No look-ahead end to end: a run on a dataset whose prices go to the end of 2018, with its bars cut
at 2017-06-30 (`--to`), and a run on a dataset that was never shown a price after 2017-06-30 (its
bars end there because the real prices do), report the same figures: every in-sample and
out-of-sample metric, bucket series and trial value of both searches (the causal one and the
fixed-parameter one) are equal, bitwise. The report carries the bar market, the verdict, the
yearly walk-forward and both columns (causal, fixed); `sweeps.inspect` prints them again.
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import xarray as xr

from gpu_engine.data.__main__ import main as data_main
from sweeps import inspect as inspect_mod
from sweeps import optimize

YAHOO = "btc_usd_daily_ohlcv_2014_2025.csv"
CM = "btc_daily_coinmetrics_2009_2019.csv.gz"
CUT = "2017-06-30"


def _truncate(src, dst, last_day: str) -> None:
    """The rows of a daily CSV up to `last_day` (header kept), gzip or not as the source."""
    opener = gzip.open if str(src).endswith(".gz") else open
    with opener(src, "rt") as f:
        lines = f.read().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln[:10] <= last_day]
    with (gzip.open if str(dst).endswith(".gz") else open)(dst, "wt") as f:
        f.write("\n".join(keep) + "\n")


@pytest.fixture(scope="module")
def datasets(real_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("powerlaw")
    full, cut = d / "full.npy", d / "cut.npy"
    assert data_main(["blocks", "--until", "2018-12-31", "--prices", str(real_dir / CM), "--prices",
                      str(real_dir / YAHOO), "--out", str(full)]) == 0
    _truncate(real_dir / CM, d / "cm.csv.gz", CUT)
    _truncate(real_dir / YAHOO, d / "y.csv", CUT)
    assert data_main(["blocks", "--until", "2018-12-31", "--prices", f"{d / 'cm.csv.gz'},{d / 'y.csv'}",
                      "--out", str(cut)]) == 0
    return d, full, cut


def _run(capsys, d, data, name, *extra):
    rc = optimize.main(["--data", str(data), "--space", "powerlaw", "--device", "cpu", "--no-progress", "--no-html",
                        "--trials", "16", "--batch", "16", "--oos-top", "10", "--buckets", "32",
                        "--storage", str(d / f"{name}.journal"), "--out", str(d / f"{name}.zarr"), *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        x, y = np.asarray(a[v].values), np.asarray(b[v].values)
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), v


def test_truncating_later_prices_changes_nothing_and_the_report_has_both_columns(datasets, capsys):
    d, full, cut = datasets
    out_a = _run(capsys, d, full, "a", "--to", CUT)
    out_b = _run(capsys, d, cut, "b")
    for name_a, name_b in (("a.zarr", "b.zarr"), ("a-fixed.zarr", "b-fixed.zarr")):
        a, b = xr.open_zarr(d / name_a).load(), xr.open_zarr(d / name_b).load()
        _same(a, b)
        assert a.attrs["split"] == b.attrs["split"] and int(a["oos_evaluated"].sum()) == 10
        assert a.attrs["market"]["last_bar"] == b.attrs["market"]["last_bar"] == f"{CUT} 23:59"
    for text in (out_a, out_b):
        assert "market: " in text and "bars of 1d from the block dataset" in text
        assert "walk-forward (anchored, " in text and "per test slice" in text
        assert "VERDICT: " in text
        assert "causal (pl_under, s2f_under)" in text and "fixed (look-ahead)" in text
        assert "look-ahead share of the in-sample best Sharpe of pl_under" in text
    # the report lines of the two runs agree but for the paths, wall times and the dataset name
    strip = ("cube:", "both searches:", "market:", "optuna ask", "startup:", "  fixed-parameter search:",
             "look-ahead check: the same search with")
    la = [ln for ln in out_a.splitlines() if not ln.startswith(strip)]
    lb = [ln for ln in out_b.splitlines() if not ln.startswith(strip)]
    assert la == lb
    again = inspect_mod.main([str(d / "a.zarr"), "--no-progress", "--top", "3"])
    text = capsys.readouterr().out
    assert again == 0 and "fixed (look-ahead)" in text and "VERDICT" in text
