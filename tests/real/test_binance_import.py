"""Binance captures in ../shared/data/real imported end to end, checked against their own bookTicker.

Bar: for every capture with a snapshot line, 0 crossed books and, at every emitted
row, best bid/ask price and size equal to the capture's latest bookTicker whose
update id is <= the row's seq (all rows compared; the match rate is printed and
must be 100%). The bookTicker side is parsed here independently of the importer.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from gpu_engine.data.__main__ import main as cli_main
from gpu_engine.data.books.store import load
from gpu_engine.data.books.importers import import_files

WITH_SNAPSHOT = ["binance_spot_btcusdt_20240808.jsonl.gz", "binance_usdm_btcusdt_20240808.jsonl.gz",
                 "binance_usdm_btcusdt_20230404.jsonl.gz"]
NO_SNAPSHOT = ["binance_spot_btcusdt_20240809.jsonl.gz", "binance_spot_btcusdt_20230405.jsonl.gz"]


def book_tickers(*paths) -> np.ndarray:
    """[n, 5] (u, bid, bid size, ask, ask size) of every bookTicker line, sorted by u."""
    out = []
    for path in paths:
        with gzip.open(path, "rb") as f:
            for line in f:
                if b"@bookTicker" not in line:
                    continue
                d = json.loads(line.split(b" ", 1)[1])["data"]
                out.append((d["u"], float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"])))
    arr = np.array(out, dtype=np.float64)
    return arr[np.argsort(arr[:, 0], kind="stable")]


def ticker_match(book, bt: np.ndarray) -> np.ndarray:
    """Per row: top of book equals the latest bookTicker with u <= seq."""
    u = bt[:, 0].astype(np.int64)
    i = np.searchsorted(u, book.seq, side="right") - 1
    j = np.maximum(i, 0)
    return ((i >= 0) & (bt[j, 1] == book.bid_px[:, 0]) & (bt[j, 3] == book.ask_px[:, 0])
            & (bt[j, 2].astype(np.float32) == book.bid_sz[:, 0])
            & (bt[j, 4].astype(np.float32) == book.ask_sz[:, 0]))


def check_store(book, bt, name):
    assert book.T > 1000
    assert np.all(np.diff(book.ts) >= 0) and np.all(np.diff(book.seq) > 0)
    assert int((book.bid_px[:, 0] >= book.ask_px[:, 0]).sum()) == 0, "crossed rows"
    # deeper levels ordered, sizes positive where present
    assert np.all(np.nan_to_num(np.diff(book.bid_px, axis=1), nan=-1) < 0)
    assert np.all(np.nan_to_num(np.diff(book.ask_px, axis=1), nan=1) > 0)
    assert np.all((book.bid_sz > 0) == ~np.isnan(book.bid_px))
    ok = ticker_match(book, bt)
    rate = ok.mean()
    print(f"{name}: {book.T} rows, bookTicker match {ok.sum()}/{book.T} = {rate:.4%}")
    assert rate == 1.0, f"first mismatching row {int(np.argmin(ok))}"


@pytest.mark.parametrize("name", WITH_SNAPSHOT)
def test_capture_matches_its_book_ticker(real_dir, tmp_path, name):
    path = real_dir / name
    out = tmp_path / "b.zarr"
    rep = import_files([path], "binance-jsonl", out, depth=20, progress=False)
    assert rep.crossed == 0 and rep.bad_lines == 0 and rep.stale_snapshots == 0 and rep.resyncs == 0
    # the only invalid intervals: best level beyond the (1000-level) snapshot's range, rows withheld
    assert all(g["kind"] == "out_of_range" for g in rep.gaps)
    withheld = rep.extra.get("rows_outside_snapshot_range", 0)
    book = load(out)
    check_store(book, book_tickers(path), name)
    a = book.attrs
    assert a["exchange"] == "binance" and a["symbol"] == "BTCUSDT" and a["depth"] == 20
    assert a["market"] == ("usdm" if "usdm" in name else "spot")
    assert a["tick_size"] == (0.1 if "usdm" in name else 0.01)
    assert a["source"][0]["file"] == name and a["import"]["rows"] == book.T
    assert a["book_ticker"] > 0 and len(book.trades) > 1000
    assert set(np.unique(book.trades.side)) == {-1, 1} and np.all(np.diff(book.trades.ts) >= 0)
    # every depth message after the snapshot became a row
    assert book.T + withheld + rep.unsynced == rep.messages - a["book_ticker"] - len(book.trades) - 1 - \
        a.get("ignored_markPrice", 0)


def test_two_day_capture_continues_across_files(real_dir, tmp_path):
    paths = [real_dir / "binance_spot_btcusdt_20240808.jsonl.gz", real_dir / NO_SNAPSHOT[0]]
    out = tmp_path / "two.zarr"
    rep = import_files(paths, "binance-jsonl", out, progress=False)
    book = load(out)
    assert book.ts[-1] > 1723161600_000_000_000  # rows from the 0809 file
    assert rep.resyncs == 0 and all(g["kind"] == "out_of_range" for g in rep.gaps)
    check_store(book, book_tickers(*paths), "spot 20240808+20240809")
    # window load: just the 0809 part
    part = load(out, start=1723161600_000_000_000)
    assert 0 < part.T < book.T and part.ts[0] >= 1723161600_000_000_000


@pytest.mark.parametrize("name", NO_SNAPSHOT)
def test_capture_without_snapshot_emits_no_book_rows(real_dir, tmp_path, capsys, name):
    out = tmp_path / "n.zarr"
    rc = cli_main(["import", str(real_dir / name), "--format", "binance-jsonl", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "no depth snapshot line" in text and "book rows written" in text
    book = load(out)
    assert book.T == 0 and len(book.trades) > 1000
    assert book.attrs["import"]["unsynced"] > 1000


def test_sampled_import(real_dir, tmp_path):
    path = real_dir / WITH_SNAPSHOT[0]
    out = tmp_path / "s.zarr"
    rep = import_files([path], "binance-jsonl", out, depth=5, sample_ms=1000, symbol="btcusdt", progress=False)
    assert rep.symbol == "BTCUSDT" and not any("selected" in n for n in rep.notes)
    s = load(out)
    full_out = tmp_path / "f.zarr"
    import_files([path], "binance-jsonl", full_out, depth=5, progress=False)
    f = load(full_out)
    sec = f.ts // 1_000_000_000
    last = np.r_[sec[1:] != sec[:-1], True]  # last row of each second
    np.testing.assert_array_equal(s.seq, f.seq[last])
    np.testing.assert_array_equal(s.bid_px, f.bid_px[last])
    assert s.depth == 5 and s.attrs["symbol"] == "BTCUSDT"
    with pytest.raises(Exception, match="nothing usable"):
        import_files([path], "binance-jsonl", tmp_path / "x.zarr", symbol="ETHUSDT", progress=False)
