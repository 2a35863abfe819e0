"""Contracts through the sweep commands (issue 11, part 1): a COIN-M store (BTCUSD_PERP: inverse,
100 USD per contract, tick 0.1, lot 1) is swept as what it is, by default from the store's attrs.

One long round trip of 300 contracts, bought at 60000.0 and sold at 60600.0 with taker fees of 5 bps
(the Binance COIN-M regular tier, the default for this store), computed by hand in BTC:

    fee per fill  = 5e-4 x 300 x 100 / p          (0.00025 BTC at 60000, 0.000247525 at 60600)
    gross PnL     = 300 x 100 x (1/60000 - 1/60600)  = 0.00495050 BTC
    net PnL       = gross - both fees

and the same store read as 1-BTC linear units (--contract linear --multiplier 1) gives what 300 BTC
would cost and earn instead (fees of 9000+ in USD), which the run must not report for this store.
"""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from gpu_engine.data.blocks import dataset as blocks_mod
from gpu_engine.data.books.store import Book, write_store
from sweeps import grid, optimize

START_NS = 1_723_075_200 * 1_000_000_000  # 2024-08-08T00:00Z
T = 200
P_IN, P_OUT = 60000.0, 60600.0  # ask at the entry fill, bid at the exit fill
Q = 300.0                       # contracts (max_qty; the sizing asks for more)
ENTRY_TICK, EXIT_TICK = 20, 40  # decisions; the fills are one tick later (latency 0)

SPACE = """
[space]
name = "roundtrip"
thresholds = "raw"

[params.signal]
value = "imbalance1"

[params.entry]
values = [0.3, 0.4]

[params.exit]
value = 0.4

[params.side]
value = 1

[params.size_frac]
value = 0.5

[params.max_qty]
value = 300.0
"""


@pytest.fixture(scope="module")
def coinm(tmp_path_factory):
    """A level-1 book: flat imbalance except a bid-heavy tick (entry) and an ask-heavy one (exit); the
    price is 59999.9 / 60000.0 until tick 30, then 60600.0 / 60600.1."""
    d = tmp_path_factory.mktemp("coinm")
    ts = START_NS + np.arange(T, dtype=np.int64) * 1_000_000_000
    up = np.arange(T) > 30
    bid = np.where(up, 60600.0, 59999.9)[:, None]
    ask = np.where(up, 60600.1, 60000.0)[:, None]
    bsz = np.full((T, 1), 1000.0, np.float32)
    asz = np.full((T, 1), 1000.0, np.float32)
    bsz[ENTRY_TICK, 0] = 3000.0  # imbalance +0.5: a long entry decision
    asz[EXIT_TICK, 0] = 3000.0   # imbalance -0.5: the signal exit
    attrs = {"exchange": "binance", "symbol": "BTCUSD_PERP", "market": "coinm", "contract": "inverse",
             "multiplier": 100.0, "tick_size": 0.1, "lot_size": 1.0}
    store = write_store(d / "coinm.zarr", Book.from_arrays(ts, bid, ask, bsz, asz, attrs=attrs))
    arr, meta = blocks_mod.build(until="2024-08-09")
    blocks_mod.write(d / "blocks.npy", arr, meta)
    (d / "space.toml").write_text(SPACE)
    return {"dir": d, "data": str(store), "blocks": str(d / "blocks.npy"), "space": str(d / "space.toml")}


def _rc(main, argv) -> int:
    """The exit status of a command run in process (argparse's usage errors raise SystemExit(2))."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _grid(coinm, out, *extra):
    return _rc(grid.main, ["--space", coinm["space"], "--out", str(out), "--data", coinm["data"],
                      "--blocks", coinm["blocks"], "--device", "cpu", "--buckets", "4", "--latency-ms", "0",
                      "--capital", "1e8", "--no-progress", "--no-html", *extra])


def _by_hand(inverse: bool, rate: float = 5e-4) -> dict:
    if inverse:
        v_in, v_out = Q * 100 / P_IN, Q * 100 / P_OUT
        gross = v_in - v_out  # a long of an inverse contract earns 1/p_in - 1/p_out per USD
    else:
        v_in, v_out = Q * P_IN, Q * P_OUT
        gross = v_out - v_in
    fees = rate * v_in + rate * v_out
    return {"fees": fees, "gross_pnl": gross, "net_pnl": gross - fees}


def test_coinm_round_trip_costs_100_usd_contracts_in_btc(coinm, tmp_path, capsys):
    out = tmp_path / "coinm.zarr"
    assert _grid(coinm, out) == 0
    printed = capsys.readouterr().out
    assert "contract: inverse (store), multiplier 100" in printed and "tick 0.1 (store)" in printed
    assert "Binance COIN-M" in printed
    ds = xr.open_zarr(out)
    costs = ds.attrs["costs"]
    assert costs["contract"]["contract"] == "inverse" and costs["contract"]["multiplier"] == 100.0
    assert costs["contract"]["tick_size"] == 0.1 and costs["contract"]["lot_size"] == 1.0
    assert costs["contract"]["source"]["multiplier"] == "store"
    assert costs["fee_bps"] == 5.0 and costs["maker_fee_bps"] == 2.0 and "COIN-M" in costs["fee_source"]

    want = _by_hand(inverse=True)
    assert want["fees"] == pytest.approx(5e-4 * 300 * 100 / 60000 + 5e-4 * 300 * 100 / 60600, rel=1e-15)
    for entry in (0.3, 0.4):
        row = ds.sel(entry=entry)
        assert float(row["trades"]) == 1 and float(row["taker_fills"]) == 2
        assert float(row["exits_signal"]) == 1
        for key, v in want.items():
            assert float(row[key]) == pytest.approx(v, rel=1e-9, abs=1e-15), key
        assert float(row["fees_taker"]) == pytest.approx(want["fees"], rel=1e-9)
        assert float(row["fees_maker"]) == 0.0
        assert float(row["oos_trades"]) == 0  # the out-of-sample part has no signal

    # the same store read as 1-BTC linear units: what 300 BTC would cost, not this contract
    lin = tmp_path / "linear.zarr"
    assert _grid(coinm, lin, "--contract", "linear", "--multiplier", "1") == 0
    capsys.readouterr()
    row = xr.open_zarr(lin).sel(entry=0.3)
    other = _by_hand(inverse=False)
    assert float(row["fees"]) == pytest.approx(other["fees"], rel=1e-9)
    assert float(row["net_pnl"]) == pytest.approx(other["net_pnl"], rel=1e-9)
    assert abs(float(row["fees"]) - want["fees"]) > 1000 * want["fees"]
    assert xr.open_zarr(lin).attrs["costs"]["contract"]["source"]["contract"] == "flag"


def test_flags_override_the_store_and_say_so(coinm, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    assert _grid(coinm, out, "--fee-bps", "4", "--multiplier", "10", "--lot-size", "5") == 0
    capsys.readouterr()
    ds = xr.open_zarr(out)
    c = ds.attrs["costs"]
    assert c["fee_bps"] == 4.0 and c["maker_fee_bps"] == 2.0
    assert c["fee_source"].startswith("--fee-bps as given")
    assert c["contract"]["multiplier"] == 10.0 and c["contract"]["source"]["multiplier"] == "flag"
    # 10 USD contracts in lots of 5: the sizing asks for more than max_qty 300, a whole number of lots
    row = ds.sel(entry=0.3)
    v_in, v_out = Q * 10 / P_IN, Q * 10 / P_OUT
    assert float(row["fees"]) == pytest.approx(4e-4 * (v_in + v_out), rel=1e-9)


@pytest.mark.parametrize("extra, word", [
    (["--lot-size", "-1"], "--lot-size"),
    (["--multiplier", "0"], "--multiplier"),
    (["--tick-size", "nan"], "--tick-size"),
    (["--queue", "fifo"], "--queue"),
    (["--queue-n", "3"], "--queue-n"),
    (["--queue", "power", "--queue-n", "-1"], "--queue-n"),
    (["--maker-fee-bps", "inf"], "--maker-fee-bps"),
    (["--cancel-latency-ms", "-5"], "--cancel-latency-ms"),
])
def test_bad_contract_flags_exit_2_before_anything_is_written(coinm, tmp_path, capsys, extra, word):
    out = tmp_path / "x.zarr"
    rc = _grid(coinm, out, *extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and word in err and "Traceback" not in err
    rc = _rc(optimize.main, ["--space", coinm["space"], "--out", str(out), "--storage", str(tmp_path / "j.log"),
                             "--data", coinm["data"], "--blocks", coinm["blocks"], "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and word in err
    assert list(tmp_path.iterdir()) == []


def test_inverse_without_multiplier_is_refused(coinm, tmp_path, capsys):
    """A linear store forced inverse needs --multiplier; refused before any data work or output."""
    d = tmp_path / "lin"
    d.mkdir()
    ts = START_NS + np.arange(20, dtype=np.int64) * 1_000_000_000
    book = Book.from_arrays(ts, np.full((20, 1), 100.0), np.full((20, 1), 100.1), np.ones((20, 1)),
                            np.ones((20, 1)), attrs={"exchange": "binance", "symbol": "BTCUSDT", "market": "usdm",
                                                     "contract": "linear", "multiplier": 1.0})
    store = write_store(d / "lin.zarr", book)
    out = tmp_path / "x.zarr"
    rc = grid.main(["--space", coinm["space"], "--out", str(out), "--data", str(store), "--blocks", coinm["blocks"],
                    "--device", "cpu", "--contract", "inverse"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--multiplier" in err and "inverse" in err
    assert not out.exists()
