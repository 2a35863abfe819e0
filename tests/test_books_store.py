"""Book store (Zarr writer/loader) and the importer framework, without real data.

The importer tests register a small in-test reader in `FORMATS` to check sampling,
symbol selection, store attrs, the CLI summary and "no half-written store".
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.books import importers
from gpu_engine.data.__main__ import main as cli_main
from gpu_engine.data.books.store import Book, BookStoreWriter, Trades, load, open_attrs, write_store
from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow

REPO = Path(__file__).resolve().parents[1]


def make_book(T=1000, L=3, seed=0, trades=True) -> Book:
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(0, 5_000_000, T)).astype(np.int64) + 1_700_000_000_000_000_000
    mid = 100 + np.cumsum(rng.normal(0, 0.01, T))
    bid_px = mid[:, None] - 0.01 * (1 + np.arange(L))[None, :]
    ask_px = mid[:, None] + 0.01 * (1 + np.arange(L))[None, :]
    bid_px[::7, -1] = np.nan  # absent levels
    bid_sz = rng.random((T, L)).astype(np.float32)
    bid_sz[::7, -1] = 0
    tr = None
    if trades:
        n = T // 2
        tr = Trades(ts=np.sort(rng.choice(ts, n)), px=rng.random(n) + 100, qty=rng.random(n),
                    side=rng.choice(np.array([-1, 1], np.int8), n))
    return Book.from_arrays(ts, bid_px, ask_px, bid_sz, rng.random((T, L)), seq=np.arange(T) * 3, trades=tr,
                            attrs={"exchange": "test", "symbol": "X", "tick_size": 0.01, "lot_size": 0.001,
                                   "gaps": [{"time": int(ts[5]), "reason": "test gap"}]})


def assert_books_equal(a: Book, b: Book):
    for name in ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.trades is None:
        assert b.trades is None or len(b.trades) == 0
    else:
        for name in ("ts", "px", "qty", "side"):
            np.testing.assert_array_equal(getattr(a.trades, name), getattr(b.trades, name), err_msg=name)


def test_roundtrip_across_chunks_and_windows(tmp_path):
    book = make_book()
    out = tmp_path / "s.zarr"
    write_store(out, book, chunk_rows=64)  # many chunks
    got = load(out)
    assert_books_equal(book, got)
    assert got.bid_px.dtype == np.float64 and got.bid_sz.dtype == np.float32 and got.trades.side.dtype == np.int8
    a = got.attrs
    assert a["exchange"] == "test" and a["depth"] == 3 and a["schema_version"] == 2 and a["rows"] == 1000
    assert a["complete"] is True and a["gaps"] == [{"time": int(book.ts[5]), "reason": "test gap"}]
    assert open_attrs(out) == a
    assert not list(tmp_path.glob("*.tmp-*"))
    start, end = int(book.ts[100]), int(book.ts[400])
    w = load(out, start=start, end=end)
    sel = (book.ts >= start) & (book.ts < end)
    np.testing.assert_array_equal(w.ts, book.ts[sel])
    np.testing.assert_array_equal(w.bid_sz, book.bid_sz[sel])
    tsel = (book.trades.ts >= start) & (book.trades.ts < end)
    np.testing.assert_array_equal(w.trades.px, book.trades.px[tsel])
    assert load(out, start=int(book.ts[-1]) + 1).T == 0
    # to_device is applied to every array
    seen = []
    load(out, to_device=lambda x: seen.append(x.dtype) or x)
    assert len(seen) == 11  # 6 book arrays, 5 trade arrays (ts, px, qty, side, match_ts)


def test_row_appends_equal_bulk_appends_and_overwrite_replaces(tmp_path):
    book = make_book(T=300, trades=True)
    out = tmp_path / "rows.zarr"
    with BookStoreWriter(out, 3, {"symbol": "X"}, chunk_rows=50) as w:
        for i in range(book.T):
            w.append_row(BookRow(int(book.ts[i]), int(book.seq[i]), book.bid_px[i], book.ask_px[i],
                                 book.bid_sz[i], book.ask_sz[i]))
        for i in range(len(book.trades)):
            t = book.trades
            w.append_trade(TradeRow(int(t.ts[i]), float(t.px[i]), float(t.qty[i]), int(t.side[i])))
        w.add_gap(123, "why", seq=4)
        assert w.rows == 300
    got = load(out)
    assert_books_equal(book, got)
    assert got.attrs["gaps"] == [{"time": 123, "reason": "why", "seq": 4}]
    write_store(out, make_book(T=10, trades=False))  # replaces the old store
    again = load(out)
    assert again.T == 10 and again.trades is None


def test_failures_leave_no_store(tmp_path):
    out = tmp_path / "x.zarr"
    with pytest.raises(RuntimeError):
        with BookStoreWriter(out, 2, {}, chunk_rows=4) as w:
            for i in range(10):
                w.append([i], [i], [[1, 2]], [[3, 4]], [[1, 1]], [[1, 1]])
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())
    w = BookStoreWriter(out, 2, {})
    with pytest.raises(ValueError, match="non-decreasing"):
        w.append([5, 4], [0, 0], [[1, 2]] * 2, [[3, 4]] * 2, [[1, 1]] * 2, [[1, 1]] * 2)
    with pytest.raises(ValueError, match="shape"):
        w.append([5], [0], [[1, 2, 3]], [[3, 4]], [[1, 1]], [[1, 1]])
    w.abort()
    assert not list(tmp_path.iterdir())


def test_incremental_store_survives_kill_9(tmp_path):
    out = tmp_path / "live.zarr"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from gpu_engine.data.books.store import BookStoreWriter
        w = BookStoreWriter({str(out)!r}, 2, {{"exchange": "live"}}, chunk_rows=8, incremental=True)
        for i in range(20):          # 2 full chunks flushed automatically, 4 rows buffered
            w.append([i], [i], [[100.0, 99.0]], [[101.0, 102.0]], [[1, 2]], [[3, 4]])
        w.append_trades([5], [100.5], [0.1], [1])
        w.flush()                    # rows 0..19 and the trade committed
        for i in range(20, 23):      # buffered only: lost in the kill
            w.append([i], [i], [[100.0, 99.0]], [[101.0, 102.0]], [[1, 2]], [[3, 4]])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == -9
    got = load(out)
    assert got.T == 20 and got.ts.tolist() == list(range(20)) and len(got.trades) == 1
    assert got.attrs["complete"] is False and got.attrs["exchange"] == "live"
    with pytest.raises(FileExistsError):
        BookStoreWriter(out, 2, {}, incremental=True)


def test_load_trusts_only_committed_rows(tmp_path):
    out = tmp_path / "inc.zarr"
    w = BookStoreWriter(out, 1, {}, chunk_rows=4, incremental=True)
    w.append(np.arange(6), np.arange(6), np.ones((6, 1)), np.ones((6, 1)) * 2, np.ones((6, 1)), np.ones((6, 1)))
    assert load(out).T == 4  # one chunk flushed, two rows buffered
    import zarr
    g = zarr.open_group(str(out), mode="r+")
    g["ts"].resize((8,))  # arrays ahead of the attrs, as after a kill between the two writes
    assert load(out).T == 4
    w.close()
    assert load(out).T == 6 and open_attrs(out)["complete"] is True


# ----------------------------------------------------------------------------- importer framework

def fake_reader(paths, depth, symbol, report: ImportReport):
    """Reads `ts_ms symbol bid ask` lines; 'TRADE ts_ms symbol px' lines; 'FAIL' raises InputError."""
    report.extra["exchange"] = "fake"
    for path in paths:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            report.messages += 1
            report.advance(len(line) + 1)
            parts = line.split()
            if parts[0] == "FAIL":
                raise InputError.at(path, n, "x", "cannot use")
            if parts[0] == "TRADE":
                yield TradeRow(int(parts[1]) * 1_000_000, float(parts[3]), 1.0, 1, parts[2])
                continue
            ts, sym, b, a = int(parts[0]) * 1_000_000, parts[1], float(parts[2]), float(parts[3])
            bp = np.full(depth, np.nan)
            ap = np.full(depth, np.nan)
            bp[0], ap[0] = b, a
            yield BookRow(ts, n, bp, ap, np.ones(depth, np.float32), np.ones(depth, np.float32), -1, sym)


@pytest.fixture
def fake_format(monkeypatch):
    monkeypatch.setitem(importers.FORMATS, "fake", fake_reader)
    return "fake"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_sampling_symbols_and_attrs(tmp_path, fake_format):
    src = write_lines(tmp_path / "in.txt", [
        "1000 AAA 1 2", "1400 BBB 5 6", "1500 AAA 1.1 2", "1999 AAA 1.2 2", "TRADE 1999 AAA 1.5",
        "2000 AAA 1.3 2", "3500 AAA 1.4 2", "TRADE 3600 BBB 9",
    ])
    out = tmp_path / "o.zarr"
    rep = importers.import_files([src], fake_format, out, depth=2, sample_ms=1000, progress=False)
    b = load(out)
    assert b.bid_px[:, 0].tolist() == [1.2, 1.3, 1.4]   # last row of each 1 s bucket
    assert b.ts.tolist() == [1999_000_000, 2000_000_000, 3500_000_000]
    assert len(b.trades) == 1 and rep.symbol == "AAA" and rep.extra["other_symbol_items"] == 2
    assert any("selected AAA" in n for n in rep.notes)
    a = b.attrs
    assert a["exchange"] == "fake" and a["symbol"] == "AAA" and a["sample_ms"] == 1000
    assert a["source"][0]["file"] == "in.txt" and len(a["source"][0]["sha256"]) == 64
    assert a["import"]["messages"] == 8 and a["import"]["rows"] == 3
    rep2 = importers.import_files([src], fake_format, out, depth=2, symbol="BBB", progress=False,
                                  overwrite=True)  # replacing a store needs overwrite
    assert load(out).bid_px[:, 0].tolist() == [5.0] and rep2.trades == 1
    text = importers.format_summary(rep2, out)
    for label in ("messages read", "book rows written", "gaps", "resyncs", "crossed books",
                  "checksum failures", "bad lines", "time span"):
        assert label in text


def test_import_errors_leave_no_store_and_cli_exit_2(tmp_path, fake_format, capsys):
    out = tmp_path / "o.zarr"
    src = write_lines(tmp_path / "bad.txt", ["1000 AAA 1 2"] * 3 + ["FAIL"])
    with pytest.raises(InputError, match=r"bad.txt:4: field 'x'"):
        importers.import_files([src], fake_format, out, progress=False)
    assert not list(tmp_path.glob("*o.zarr*"))  # neither the store nor its .o.zarr.tmp-PID
    rc = cli_main(["import", str(src), "--format", "fake", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bad.txt:4" in err
    assert not list(tmp_path.glob("*o.zarr*"))  # neither the store nor its .o.zarr.tmp-PID
    rc = cli_main(["import", str(tmp_path / "nope.txt"), "--format", "fake", "--out", str(out)])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    empty = write_lines(tmp_path / "t.txt", ["TRADE 1 AAA 1"])
    importers.import_files([empty], fake_format, out, progress=False)  # trades only: stored, noted
    assert load(out).T == 0


def test_cli_summary_and_lazy_registry(tmp_path, fake_format, capsys):
    src = write_lines(tmp_path / "in.txt", ["1000 AAA 1 2", "1001 AAA 1 3"])
    out = tmp_path / "o.zarr"
    assert cli_main(["import", str(src), "--format", "fake", "--out", str(out), "--depth", "4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "messages read" in text and "book rows written" in text and load(out).depth == 4
    assert {"binance-jsonl", "coinbase-jsonl", "okx-jsonl", "lobster", "tardis-csv"} <= set(importers.FORMATS)
    for name in ("coinbase-jsonl", "okx-jsonl", "lobster", "tardis-csv"):  # lazy: "module:function" until used
        entry = importers.FORMATS[name]
        assert callable(entry) or entry == f"gpu_engine.data.books.feeds.{name.split('-')[0]}:read"
    reader = importers.get_reader("binance-jsonl")
    from gpu_engine.data.books.feeds.binance import read
    assert reader is read and importers.FORMATS["binance-jsonl"] is read
    with pytest.raises(ValueError, match="unknown format"):
        importers.get_reader("nope")
