"""Streaming a data set of stores through bounded memory gives the bits of the whole-book run.

gpu_engine/data/books/rows.py reads global row windows of several stores (with each window's
trades); gpu_engine/stream.py builds the feature bank window by window into a file and runs
the kernels window by window with every configuration's state carried across windows. Here a
synthetic book with trades is cut into three stores; for several window sizes (1 row, a size
that does not divide the rows, a store's length, all rows) the windows, the streamed bank and
the streamed sweep (taker and maker configurations; the whole set, the in-sample and the
out-of-sample parts) equal the in-memory path: collection.load_many, features.build_bank,
gpu_engine.sweep on validation.slice_book / slice_bank.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpu_engine
from gpu_engine import bench, stream, validation
from gpu_engine.data.books import rows as rows_mod
from gpu_engine.data.books.collection import load_many
from gpu_engine.data.books.store import Book, Trades, write_store
from gpu_engine.errors import InputError
from gpu_engine.features import build_bank

SPEC = [("imbalance1", {}), ("ofi", {"window": 10}), ("ofi", {"window": 50}), ("tfi", {"window": 20})]
CUTS = (700, 1500)  # rows where the second and third stores begin


def _slice(book: Book, a: int, b: int) -> Book:
    tr = book.trades
    lo_ns = -2 ** 62 if a == 0 else int(book.ts[a - 1]) + 1
    hi_ns = int(book.ts[b - 1]) if b < book.T else 2 ** 62
    m = (tr.ts >= lo_ns) & (tr.ts <= hi_ns)
    return Book.from_arrays(book.ts[a:b], book.bid_px[a:b], book.ask_px[a:b], book.bid_sz[a:b],
                            book.ask_sz[a:b],
                            trades=Trades(ts=tr.ts[m], px=tr.px[m], qty=tr.qty[m], side=tr.side[m]),
                            attrs={"exchange": "synthetic", "symbol": "TEST", "tick_size": 0.01})


@pytest.fixture(scope="module")
def data_set(tmp_path_factory):
    """(store paths, the whole Book as load_many reads it) of a 2,000-row book with trades."""
    book = bench.synthetic_book(2000, 5, seed=11)
    book.trades = bench.synthetic_trades(book, seed=11)
    folder = tmp_path_factory.mktemp("stores")
    bounds = (0,) + CUTS + (book.T,)
    paths = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        p = folder / f"day{k}.zarr"
        write_store(p, _slice(book, a, b), chunk_rows=256)
        paths.append(p)
    return paths, load_many(paths)


def configs(K: int, C: int = 24, seed: int = 5) -> dict:
    cfg = bench.random_configs(C, K, seed)
    mk = bench.maker_configs(C, K, seed)
    half = C // 2
    return {k: np.concatenate([cfg[k][:half], mk[k][half:]]) if k in cfg else
            np.concatenate([np.zeros(half, mk[k].dtype) if k in ("entry_type", "tp_type", "entry_offset")
                            else mk[k][:half], mk[k][half:]]) for k in mk}


@pytest.mark.parametrize("window", [11, 700, 5000])
def test_windows_equal_the_loaded_data_set(data_set, window, monkeypatch):
    paths, whole = data_set
    monkeypatch.setattr(rows_mod, "TRADE_BLOCK", 16)  # the block search, not one block
    r = rows_mod.StoreRows(paths)
    assert r.T == whole.T and r.depth == whole.bid_px.shape[1]
    got_tr = []
    for g0 in range(0, r.T, window):
        g1 = min(r.T, g0 + window)
        w = r.read(g0, g1)
        for name in ("ts", "bid_px", "ask_px", "bid_sz", "ask_sz"):
            np.testing.assert_array_equal(getattr(w, name), getattr(whole, name)[g0:g1])
        got_tr.append(w.trades.ts)
    tts = whole.trades.ts
    np.testing.assert_array_equal(np.concatenate(got_tr), tts[tts <= whole.ts[-1]])


def test_streamed_bank_file_equals_the_one_shot_bank(data_set, tmp_path):
    paths, whole = data_set
    want = build_bank(whole, SPEC, xp=np)
    r = rows_mod.StoreRows(paths)
    for window in (7, 333, 5000):
        path = tmp_path / f"bank-{window}.npy"
        done = []
        bank = stream.DiskBank.build(r, SPEC, path, window=window, progress=done.append)
        assert sum(done) == r.T
        assert bank.names == list(want.names)
        np.testing.assert_array_equal(bank.read(0, r.T), np.asarray(want.values))
        np.testing.assert_array_equal(bank.read(650, 1710), np.asarray(want.values)[:, 650:1710])
        assert not list(tmp_path.glob(".*tmp*"))


def _same(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in a.coords:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    skip = {"wall_s"}
    assert {k: v for k, v in a.attrs.items() if k not in skip} == \
        {k: v for k, v in b.attrs.items() if k not in skip}


@pytest.mark.parametrize("window", [13, 700, 4000])
def test_streamed_sweep_equals_the_whole_book_sweep(data_set, window, tmp_path):
    paths, whole = data_set
    fb = build_bank(whole, SPEC, xp=np)
    r = rows_mod.StoreRows(paths)
    bank = stream.ArrayBank(np.asarray(fb.values), fb.names)
    cfg = configs(bank.K)
    split = validation.split_time(whole.ts, 0.6, 0.02)
    market = dict(tick_size=0.01, lot_size=0.001, queue="power")
    parts = [(0, whole.T), (split.in_sample.start, split.in_sample.stop),
             (split.out_sample.start, split.out_sample.stop)]
    for lo, hi in parts:
        sl = slice(lo, hi)
        want = gpu_engine.sweep(validation.slice_book(whole, sl), validation.slice_bank(fb, sl), cfg,
                                device="cpu", buckets=4, **market)
        done = []
        got = stream.sweep_stream(r, bank, cfg, part=(lo, hi), device="cpu", buckets=4,
                                  window=window, progress=done.append, **market)
        assert sum(done) == hi - lo
        assert float(got["maker_fills"].sum()) > 0 and float(got["taker_fills"].sum()) > 0
        _same(got, want)


def test_plan_fits_the_budget_or_says_how_much_is_needed():
    p = stream.plan(total=10_000_000, depth=20, K=8, configs=1000, buckets=16, budget=64 * 2 ** 20)
    assert p.window_rows * p.row_bytes * (1 + stream.READ_FACTOR) + p.config_bytes <= 64 * 2 ** 20
    assert p.windows == -(-10_000_000 // p.window_rows)
    assert "windows of" in p.describe()
    with pytest.raises(InputError, match="--max-memory: .* too small.*give at least"):
        stream.plan(total=10_000_000, depth=20, K=8, configs=10_000_000, buckets=16, budget=2 ** 20)


@pytest.mark.parametrize("text,want", [("512M", 512 * 2 ** 20), ("2G", 2 * 2 ** 30), ("1.5GiB", int(1.5 * 2 ** 30)),
                                       ("800MB", 800 * 2 ** 20), ("1e9", 10 ** 9), ("4096", 4096)])
def test_parse_bytes(text, want):
    assert stream.parse_bytes(text) == want


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "nan"])
def test_parse_bytes_refuses(text):
    with pytest.raises(InputError, match="--max-memory"):
        stream.parse_bytes(text)


def test_prefetch_runs_ahead_and_reports_errors_at_their_item():
    assert list(stream.prefetched(lambda i: i * i, 5)) == [0, 1, 4, 9, 16]

    def boom(i):
        if i == 2:
            raise ValueError("bad window 2")
        return i

    got = []
    with pytest.raises(ValueError, match="bad window 2"):
        for x in stream.prefetched(boom, 5):
            got.append(x)
    assert got == [0, 1]


@pytest.fixture(scope="module")
def grid_inputs(tmp_path_factory):
    from gpu_engine.data.blocks import dataset as blocks_mod
    from tests.test_sweeps_cli import SPACE

    d = tmp_path_factory.mktemp("grid")
    arr, meta = blocks_mod.build(until="2024-08-09")
    blocks_mod.write(d / "blocks.npy", arr, meta)
    (d / "s.toml").write_text(SPACE)
    return d


def test_grid_streamed_within_a_small_budget_equals_the_whole_load(data_set, grid_inputs, tmp_path, capsys):
    """`--max-memory` far below the data set's whole load: the command streams it (and says so),
    and the cube equals the one of the same command loading it whole."""
    import xarray as xr

    from sweeps import grid

    paths, whole = data_set
    common = ["--space", str(grid_inputs / "s.toml"), "--blocks", str(grid_inputs / "blocks.npy"),
              "--device", "cpu", "--buckets", "4", "--no-html", "--data", ",".join(str(p) for p in paths)]
    assert grid.main([*common, "--out", str(tmp_path / "whole.zarr")]) == 0
    out = capsys.readouterr().out
    assert "streaming" not in out
    assert grid.main([*common, "--max-memory", "600K", "--out", str(tmp_path / "streamed.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "streaming them in windows" in out
    assert "is rows" in err and "rows/s" in err  # rows done of rows total
    a, b = xr.open_zarr(tmp_path / "whole.zarr"), xr.open_zarr(tmp_path / "streamed.zarr")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert a.attrs["stores"] == b.attrs["stores"]


@pytest.mark.parametrize("value, words", [("lots", "not a size"), ("1K", "too small")])
def test_bad_or_too_small_budget_is_one_line(data_set, grid_inputs, tmp_path, capsys, value, words):
    from sweeps import grid

    paths, _ = data_set
    rc = grid.main(["--space", str(grid_inputs / "s.toml"), "--blocks", str(grid_inputs / "blocks.npy"),
                    "--device", "cpu", "--no-progress", "--no-html", "--data", ",".join(str(p) for p in paths),
                    "--max-memory", value, "--out", str(tmp_path / "x.zarr")])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-memory" in err and words in err and "Traceback" not in err
    assert not (tmp_path / "x.zarr").exists()


def test_window_buffer_reuse_equals_fresh_reads(data_set, tmp_path):
    """Consecutive windows of different sizes (a long one, then shorter ones, across stores)
    read into one WindowBuffer equal fresh reads: nothing of a longer earlier window shows in a
    shorter later one, and the trade arrays grow when a window holds more."""
    paths, whole = data_set
    r = rows_mod.StoreRows(paths)
    buf = rows_mod.WindowBuffer(r, 900)
    edges = [0, 900, 905, 1400, 1401, 1800, 2000]
    for g0, g1 in zip(edges, edges[1:]):
        got, want = r.read(g0, g1, out=buf), r.read(g0, g1)
        for name in rows_mod.BOOK_FIELDS:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
            assert np.shares_memory(getattr(got, name), buf.book[name])
        for name in ("ts", "px", "qty", "side", "match_ts"):
            np.testing.assert_array_equal(getattr(got.trades, name), getattr(want.trades, name), err_msg=name)
    with pytest.raises(ValueError, match="does not fit"):
        r.read(0, 901, out=buf)
    bank = stream.DiskBank.build(r, SPEC, tmp_path / "bank.npy", window=300)
    out, scratch = np.empty(bank.K * 900, np.float32), np.empty(bank.K * 900, np.float32)
    for g0, g1 in zip(edges, edges[1:]):
        if g1 - g0 <= 900:
            view = out[:bank.K * (g1 - g0)].reshape(bank.K, g1 - g0)
            assert bank.read(g0, g1, out=view, scratch=scratch) is view
            np.testing.assert_array_equal(view, bank.read(g0, g1))


def test_streamed_runs_reuse_one_reader_and_their_buffers(data_set):
    """Several streamed sweeps in a row (windows large then small, so the kept buffers are
    reused with room to spare and a short last window follows a full one) start no thread
    per run, and each equals the whole-book sweep."""
    import threading

    paths, whole = data_set
    fb = build_bank(whole, SPEC, xp=np)
    r = rows_mod.StoreRows(paths)
    bank = stream.ArrayBank(np.asarray(fb.values), fb.names)
    cfg = configs(bank.K, C=8)
    market = dict(tick_size=0.01, lot_size=0.001, queue="power")
    want = gpu_engine.sweep(whole, fb, cfg, device="cpu", buckets=4, **market)
    stream.release_buffers()
    counts = []
    for window in (900, 300, 7, 1999, 2000):
        got = stream.sweep_stream(r, bank, cfg, device="cpu", buckets=4, window=window, **market)
        _same(got, want)
        counts.append((threading.active_count(), stream.reader_threads()))
    assert counts[0][1] == 1 and len(set(counts)) == 1, counts
    assert len(stream._FREE_SLOTS) == 1 and stream._FREE_SLOTS[0].rows == 2000
    # release_buffers frees them: nothing else (the idle reader thread's last job) holds them
    import gc
    import weakref

    kept = weakref.ref(stream._FREE_SLOTS[0])
    stream.release_buffers()
    gc.collect()
    assert kept() is None, gc.get_referrers(kept())


def test_prefetch_leaves_an_item_alone_until_the_next_is_asked_for():
    """produce(i + 2) starts only once the consumer asked for item i + 1 (two buffers used
    round robin are never written while read), and the reader thread outlives the run."""
    import threading
    import time

    log = []

    def produce(i):
        log.append(("made", i))
        return i

    for i in stream.prefetched(produce, 6, depth=1):
        time.sleep(0.02)  # the reader would run ahead if it could
        log.append(("used", i))
    for i in range(6):
        made = log.index(("made", i))
        if i >= 2:
            assert log.index(("used", i - 2)) < made, log
    before = stream.reader_threads()
    gen = stream.prefetched(produce, 100)
    assert next(gen) == 0
    gen.close()  # stops the reader after its item; it goes back to the idle list
    deadline = time.time() + 5
    while stream._IDLE_READERS == [] and time.time() < deadline:
        time.sleep(0.01)
    assert stream.reader_threads() == before >= 1
    assert all(t.daemon for t in threading.enumerate() if t.name == "window-reader")


def test_memory_helpers_apply_on_glibc(monkeypatch):
    """limit_arenas caps glibc's malloc arenas unless the user set MALLOC_ARENA_MAX (then it
    leaves theirs alone); return_free_memory trims. Both say False where there is no glibc."""
    import platform

    from gpu_engine import memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    on_glibc = platform.libc_ver()[0] == "glibc"
    assert memory.limit_arenas() is on_glibc
    assert memory.return_free_memory() is on_glibc
