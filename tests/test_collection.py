"""Data sets of many stores (gpu_engine/data/books/collection.py): one time series in time order,
refusals of mixed markets and overlaps, gaps listed."""
from __future__ import annotations

import numpy as np
import pytest

from gpu_engine.data.books import collection
from gpu_engine.data.books.store import Book, load, write_store
from gpu_engine.errors import InputError
from tests.test_features import random_book


def _slice(book: Book, lo: int, hi: int, shift_ns: int = 0, **attrs) -> Book:
    tr = book.trades
    keep = (tr.ts >= book.ts[lo]) & (tr.ts < (book.ts[hi] if hi < book.T else tr.ts.max() + 1))
    from gpu_engine.data.books.store import Trades

    trades = Trades(ts=tr.ts[keep] + shift_ns, px=tr.px[keep], qty=tr.qty[keep], side=tr.side[keep])
    return Book.from_arrays(book.ts[lo:hi] + shift_ns, book.bid_px[lo:hi], book.ask_px[lo:hi], book.bid_sz[lo:hi],
                            book.ask_sz[lo:hi], trades=trades,
                            attrs={"exchange": "test", "symbol": "BTCUSDT", "depth": book.depth, **attrs})


@pytest.fixture()
def days(tmp_path):
    book = random_book(T=300, seed=5)
    paths = []
    for k, (lo, hi) in enumerate(((0, 100), (100, 200), (200, 300))):
        shift = 0 if k < 2 else 3_600 * 10**9  # an hour of silence before the third store
        paths.append(write_store(tmp_path / "set" / f"day{k}.zarr", _slice(book, lo, hi, shift)))
    return book, paths


def test_stores_read_as_one_series_in_time_order(days):
    book, paths = days
    merged = collection.load_many([paths[2], paths[0], paths[1]])   # given out of order
    singles = [load(p) for p in paths]
    for name in ("ts", "bid_px", "ask_px", "bid_sz", "ask_sz"):
        assert np.array_equal(getattr(merged, name), np.concatenate([getattr(b, name) for b in singles]),
                              equal_nan=True)
    assert np.array_equal(merged.trades.ts, np.concatenate([b.trades.ts for b in singles]))
    assert np.all(np.diff(merged.ts) >= 0)
    assert [s["path"] for s in merged.attrs["stores"]] == [str(p) for p in paths]
    (gap,) = merged.attrs["store_gaps"]
    assert gap["after"] == str(paths[1]) and gap["before"] == str(paths[2]) and gap["seconds"] > 3_599


def test_resolve_glob_directory_and_list(days):
    _, paths = days
    d = paths[0].parent
    assert collection.resolve(str(d / "day*.zarr")) == paths
    assert collection.resolve(str(d)) == paths
    assert collection.resolve(f"{paths[1]},{paths[0]}") == [paths[1], paths[0]]
    assert collection.resolve([str(paths[0]), str(paths[0])]) == [paths[0]]
    with pytest.raises(InputError, match="matches nothing"):
        collection.resolve(str(d / "nope*.zarr"))
    (d.parent / "empty").mkdir()
    with pytest.raises(InputError, match="without book stores"):
        collection.resolve(str(d.parent / "empty"))


def test_overlap_and_other_markets_refused(days, tmp_path):
    book, paths = days
    overlap = write_store(tmp_path / "o.zarr", _slice(book, 50, 150))
    with pytest.raises(InputError, match="overlaps"):
        collection.check([paths[0], overlap])
    other = write_store(tmp_path / "eth.zarr", _slice(book, 0, 10, 10**15, symbol="ETHUSDT"))
    with pytest.raises(InputError, match="symbol 'ETHUSDT' differs"):
        collection.check([paths[0], other])
    deeper = random_book(T=20, L=6, seed=1, t0=2_000_000_000 * 10**9)
    deep = write_store(tmp_path / "deep.zarr", Book.from_arrays(
        deeper.ts, deeper.bid_px, deeper.ask_px, deeper.bid_sz, deeper.ask_sz,
        attrs={"exchange": "test", "symbol": "BTCUSDT", "depth": 6}))
    with pytest.raises(InputError, match="depth"):
        collection.check([paths[0], deep])


def test_grid_on_a_data_set_of_stores_equals_one_store_and_lists_gaps(tmp_path, capsys):
    """--data with several stores (a glob) gives the cube of the same rows in one store, with the
    stores and gaps in its attrs and report; a mixed set is refused before any work."""
    import xarray as xr

    from sweeps import grid, inspect
    from tests.test_sweeps_cli import SPACE, tiny  # noqa: F401

    from gpu_engine.data.blocks import dataset as blocks_mod

    book = random_book(T=900, L=3, seed=11)
    whole = write_store(tmp_path / "whole.zarr", _slice(book, 0, 900))
    parts = [write_store(tmp_path / "set" / f"d{k}.zarr", _slice(book, lo, hi))
             for k, (lo, hi) in enumerate(((0, 300), (300, 600), (600, 900)))]
    arr, meta = blocks_mod.build(until="2024-08-09")
    blocks_mod.write(tmp_path / "blocks.npy", arr, meta)
    (tmp_path / "s.toml").write_text(SPACE)
    common = ["--space", str(tmp_path / "s.toml"), "--blocks", str(tmp_path / "blocks.npy"), "--device", "cpu",
              "--buckets", "4", "--no-progress", "--no-html"]
    assert grid.main([*common, "--data", str(whole), "--out", str(tmp_path / "one.zarr")]) == 0
    assert grid.main([*common, "--data", str(tmp_path / "set" / "d*.zarr"), "--out", str(tmp_path / "set.zarr")]) == 0
    a, b = xr.open_zarr(tmp_path / "one.zarr"), xr.open_zarr(tmp_path / "set.zarr")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert [s["path"] for s in b.attrs["stores"]] == [str(p) for p in parts]
    assert b.attrs["store_gaps"] == [g for g in b.attrs["store_gaps"] if g["seconds"] > collection.GAP_S]
    capsys.readouterr()
    assert inspect.main([str(tmp_path / "set.zarr"), "--top", "2"]) == 0
    assert "data: 3 stores read as one series" in capsys.readouterr().out
    other = write_store(tmp_path / "set" / "d9.zarr", _slice(book, 0, 5, 10**15, symbol="ETHUSDT"))
    rc = grid.main([*common, "--data", str(tmp_path / "set"), "--out", str(tmp_path / "mixed.zarr")])
    err = capsys.readouterr().err
    assert rc == 2 and "ETHUSDT" in err and str(other) in err and not (tmp_path / "mixed.zarr").exists()
