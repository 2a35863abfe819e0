"""Synthetic order flow (gpu_engine.data.synth.generate): stylised facts, book invariants, determinism,
the store it writes, the price anchor, ensure_default and the CLI.

Tolerances come from the real Binance BTCUSDT captures (docs/SYNTH.md, measured again by
tests/real/test_synth_calibration.py): there the spread is one tick in 99% of 100 ms samples,
1-second mid returns have excess kurtosis 2.9-26, |r| is positively autocorrelated and the
trade-sign ACF is 0.78 at lag 1 (0.36-0.44 for whole aggressive orders).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpu_engine.data.books import store as books

from gpu_engine.data.synth import generate as synth
from gpu_engine.data.__main__ import main as data_main
from gpu_engine.errors import InputError
from gpu_engine.data.synth.params import SynthParams
from gpu_engine.data.synth.stats import ABS_LAGS, SIGN_LAGS, book_facts

PRICE = 61_800.0
START = "2024-08-08T00:00"
HOURS = 2.0


@pytest.fixture(scope="module")
def gen():
    """2 simulated hours, seed 0 (about a second once the engine is compiled): long enough for
    the |r| autocorrelation at lag 10 to stand clear of its noise (+-0.012)."""
    book, trades = synth.generate(START, hours=HOURS, seed=0, price=PRICE)
    return book, trades, book_facts(book)


# ---------------------------------------------------------------- stylised facts
def test_spread_mostly_one_tick(gen):
    _, _, f = gen
    assert f["spread_1tick_frac"] >= 0.95  # real: 0.991-0.993


def test_one_second_returns_heavy_tailed(gen):
    _, _, f = gen
    assert f["ret1s_n"] >= HOURS * 3600 - 2
    assert f["ret1s_excess_kurtosis"] > 3.0


def test_volatility_clustering_abs_return_acf_positive_lags_1_to_10(gen):
    _, _, f = gen
    acf = np.array(f["absret1s_acf"])
    assert len(acf) == len(ABS_LAGS) == 10
    assert np.all(acf > 0), acf
    assert acf[0] > 0.1


def test_trade_signs_positively_autocorrelated(gen):
    _, _, f = gen
    t = np.array(f["trade_sign_acf"])
    o = np.array(f["order_sign_acf"])
    assert SIGN_LAGS[:4] == (1, 2, 5, 10)
    assert np.all(t[:5] > 0.1), t            # real lag 1..20: 0.78 .. 0.39
    assert 0.6 <= t[0] <= 0.9
    assert np.all(o[:4] > 0.05), o           # real lag 1..10: 0.36-0.44 .. 0.14-0.17
    assert 0.2 <= o[0] <= 0.6


def test_linear_return_autocorrelation_small(gen):
    _, _, f = gen
    assert abs(f["ret1s_acf1"]) < 0.3  # real: -0.05, +0.21


def test_book_imbalance_carries_signal(gen):
    """The latent fair value leaves a trace: level-1 size imbalance predicts the next 1 s mid move."""
    book, _, _ = gen
    step = 1_000_000_000
    grid = np.arange(book.ts[0], book.ts[-1], step)
    k = np.searchsorted(book.ts, grid, side="right") - 1
    mid = (book.bid_px[k, 0] + book.ask_px[k, 0]) / 2
    b, a = book.bid_sz[k, 0].astype(float), book.ask_sz[k, 0].astype(float)
    imb = (b - a) / (b + a)
    assert np.corrcoef(imb[:-1], np.diff(mid))[0, 1] > 0.08  # seed 0: 0.17


def test_rates_and_sizes_near_the_real_ones(gen):
    _, _, f = gen
    assert 14 <= f["trades_per_s"] <= 50       # real 28.2, 33.3
    assert 5 <= f["orders_per_s"] <= 20        # real 9.4, 12.8
    assert 0.0015 <= f["order_qty_q50"] <= 0.006   # real 0.0028-0.0035 BTC
    assert 0.5 <= f["l1_size_median"] <= 4.0   # real 1.9-2.0 BTC


# ---------------------------------------------------------------- book invariants
def test_book_never_crossed_and_levels_ordered(gen):
    book, _, _ = gen
    assert np.all(book.bid_px[:, 0] < book.ask_px[:, 0])
    bid, ask = book.bid_px, book.ask_px
    with np.errstate(invalid="ignore"):
        assert not np.any(np.diff(bid, axis=1) >= 0)   # strictly descending (NaN compares False)
        assert not np.any(np.diff(ask, axis=1) <= 0)
    for px, sz in ((bid, book.bid_sz), (ask, book.ask_sz)):
        present = np.isfinite(px)
        assert present[:, 0].all()
        # absent levels only at the tail, with size 0; present levels hold size > 0
        assert not np.any(~present[:, :-1] & present[:, 1:])
        assert np.all(sz[~present] == 0) and np.all(sz[present] > 0)


def test_prices_on_tick_grid_and_mid_moves_in_tick_multiples(gen):
    book, trades, _ = gen
    for px in (book.bid_px, book.ask_px, trades.px[:, None]):
        ticks = px[np.isfinite(px)] * 100.0
        assert np.all(np.abs(ticks - np.rint(ticks)) < 1e-6)
    # each quote moves by whole ticks, so the mid moves by multiples of half a tick
    for best in (book.bid_px[:, 0], book.ask_px[:, 0]):
        d = np.diff(best) * 100.0
        assert np.all(np.abs(d - np.rint(d)) < 1e-6)
    dm = np.diff((book.bid_px[:, 0] + book.ask_px[:, 0]) / 2) * 200.0
    assert np.all(np.abs(dm - np.rint(dm)) < 1e-6)


def test_rows_times_sequence_and_trades(gen):
    book, trades, _ = gen
    start_ns = synth.parse_start(START)
    n_slots = int(HOURS * 36_000)
    assert 0.99 * n_slots <= book.T <= n_slots  # a row per 100 ms with at least one book event
    assert np.all(np.diff(book.ts) > 0) and np.all(book.ts % 100_000_000 == 0)
    assert book.ts[0] > start_ns and book.ts[-1] == start_ns + int(HOURS * 3600e9)
    assert np.all(np.diff(book.seq) > 0) and book.seq[0] > 0
    assert len(trades) > 0 and trades is book.trades
    assert np.all(np.diff(trades.ts) >= 0)
    assert trades.ts[0] > start_ns and trades.ts[-1] <= book.ts[-1]
    assert set(np.unique(trades.side)) == {-1, 1}
    lots = trades.qty / 1e-5
    assert np.all(np.abs(lots - np.rint(lots)) < 1e-6) and np.all(trades.qty > 0)
    assert trades.px.dtype == np.float64 and trades.side.dtype == np.int8
    assert book.bid_sz.dtype == np.float32 and book.bid_px.dtype == np.float64
    # one market order = consecutive trades with one time and side: it walks the book away from
    # the touch (buys up, sells down), one price level after another
    same = (np.diff(trades.ts) == 0) & (np.diff(trades.side) == 0)
    step = np.diff(trades.px)[same] * trades.side[1:][same]
    assert same.sum() > 1000 and np.all(step >= 0)


def test_mid_starts_at_the_anchor(gen):
    book, _, _ = gen
    mid0 = (book.bid_px[0, 0] + book.ask_px[0, 0]) / 2
    assert abs(mid0 - PRICE) < 100 * 0.01 * 50  # after 100 ms, within a few dollars of the anchor
    assert book.attrs["source"][0]["anchor_price"] == PRICE


# ---------------------------------------------------------------- determinism and the store
def _load_all(path):
    b = books.load(path)
    arrays = {k: getattr(b, k) for k in books.BOOK_ARRAYS}
    arrays.update({f"trades.{k}": getattr(b.trades, k) for k in books.TRADE_ARRAYS})
    return b, arrays


def test_same_seed_bit_identical_store_whatever_the_chunking(tmp_path):
    a = tmp_path / "a.zarr"
    b = tmp_path / "b.zarr"
    synth.write(a, START, hours=0.1, seed=7, price=PRICE)
    synth.write(b, START, hours=0.1, seed=7, price=PRICE, chunk_rows=500)  # other chunking
    ba, xa = _load_all(a)
    bb, xb = _load_all(b)
    assert ba.T == 3600 and len(ba.trades) > 1000
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and xa[k].shape == xb[k].shape, k
        assert xa[k].tobytes() == xb[k].tobytes(), k      # bit-identical, NaNs included
    strip = ("chunk_rows",)
    assert {k: v for k, v in ba.attrs.items() if k not in strip} == \
           {k: v for k, v in bb.attrs.items() if k not in strip}


def test_store_attrs(tmp_path):
    p = synth.write(tmp_path / "s.zarr", START, hours=0.02, seed=3, price=PRICE)["path"]
    attrs = books.open_attrs(p)
    assert attrs["exchange"] == "synthetic" and attrs["symbol"] == "BTCUSDT"
    assert attrs["depth"] == 20 and attrs["tick_size"] == 0.01 and attrs["lot_size"] == 1e-5
    assert attrs["gaps"] == [] and attrs["complete"] is True
    src = attrs["source"][0]
    assert src["seed"] == 3 and src["generator"].startswith("gpu_engine.data.synth.generate")
    assert src["parameters"] == SynthParams().to_dict()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_different_seeds_differ():
    a, _ = synth.generate(START, hours=0.02, seed=1, price=PRICE)
    b, _ = synth.generate(START, hours=0.02, seed=2, price=PRICE)
    assert a.T == b.T
    assert not np.array_equal(a.bid_px[:, 0], b.bid_px[:, 0])
    assert not np.array_equal(a.trades.ts, b.trades.ts)


def test_in_memory_equals_store(tmp_path):
    m, _ = synth.generate(START, hours=0.02, seed=5, price=PRICE)
    s = books.load(synth.write(tmp_path / "s.zarr", START, hours=0.02, seed=5, price=PRICE)["path"])
    for k in books.BOOK_ARRAYS:
        assert getattr(m, k).tobytes() == getattr(s, k).tobytes(), k
    for k in books.TRADE_ARRAYS:
        assert getattr(m.trades, k).tobytes() == getattr(s.trades, k).tobytes(), k


# ---------------------------------------------------------------- anchor, ensure_default, CLI
def test_anchor_from_block_dataset_file(tmp_path):
    from gpu_engine.data.blocks import dataset as B

    table, meta = B.build(until="2024-08-08")
    path = B.write(tmp_path / "blocks.npy", table, meta)
    start_ns = synth.parse_start(START)
    price, info = synth.anchor_price(start_ns, path)
    row = B.block_at(table, start_ns / 1e9)
    assert price == float(row["price"]) and info["height"] == int(row["height"])
    book, _ = synth.generate(START, hours=0.01, seed=0, blocks=path)
    assert abs((book.bid_px[0, 0] + book.ask_px[0, 0]) / 2 - price) < 5.0
    assert book.attrs["source"][0]["anchor"]["height"] == int(row["height"])
    with pytest.raises(InputError, match="not found"):
        synth.anchor_price(start_ns, tmp_path / "missing.npy")


def test_ensure_default_generates_once(tmp_path):
    p = tmp_path / "books" / "synth.zarr"
    out = synth.ensure_default(p, hours=0.01, price=PRICE)
    assert out == p and p.is_dir()
    stamp = (p / "zarr.json").stat().st_mtime_ns
    assert synth.ensure_default(p, hours=0.01, price=PRICE) == p
    assert (p / "zarr.json").stat().st_mtime_ns == stamp
    assert 350 <= books.load(p).T <= 360


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    rc = data_main(["synth", "--hours", "0.01", "--seed", "4", "--price", "60000", "--out", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"synth: wrote {out}: ") and "seed 4" in line and "anchor 60000.00" in line
    rows = int(line.split(": ")[2].split(" rows")[0])
    assert 350 <= rows <= 360 and books.load(out).T == rows


@pytest.mark.parametrize("argv, msg", [
    (["--hours", "-1"], "--hours"),
    (["--hours", "nan"], "--hours"),
    (["--seed", "-2"], "--seed"),
    (["--start", "yesterday"], "--start"),
    (["--price", "0"], "anchor price"),
    (["--price", "1000"], "below 2621.44"),
    (["--hours", "1e-6"], "shorter than one 100 ms row"),
    (["--blocks", "/nonexistent/blocks.npy"], "not found"),
])
def test_cli_bad_input_exit_2_no_store(tmp_path, capsys, argv, msg):
    out = tmp_path / "bad.zarr"
    rc = data_main(["synth", "--out", str(out), *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists() and not list(tmp_path.glob("*bad.zarr*"))


def test_parameter_validation():
    with pytest.raises(InputError, match="branching ratio"):
        SynthParams(alpha_self_fast=9.6).validate()
    with pytest.raises(InputError, match="'delta'"):
        SynthParams(delta=-1.0).validate()
    with pytest.raises(InputError, match="tick_size"):
        SynthParams(tick_size=0.003).validate()
    with pytest.raises(InputError, match="unknown"):
        SynthParams().replace(no_such=1)
    assert 0 < SynthParams().branching_ratio() < 1
