"""LOBSTER reader on the real AAPL 2012-06-21 sample: book rows = the orderbook file, trades = types 4/5."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds import lobster
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow

STEM = "lobster_AAPL_2012-06-21_34200000_57600000_{}_10.csv"


@pytest.fixture(scope="module")
def pair(real_dir) -> tuple[Path, Path]:
    return real_dir / STEM.format("message"), real_dir / STEM.format("orderbook")


def _read(paths, depth=10, symbol=None):
    report = ImportReport()
    out = list(lobster.read(list(paths), depth, symbol, report))
    books = [r for r in out if isinstance(r, BookRow)]
    trades = [r for r in out if isinstance(r, TradeRow)]
    return books, trades, report


def test_book_rows_equal_the_orderbook_file(pair):
    msg_path, ob_path = pair
    books, trades, report = _read([ob_path, msg_path])  # any order
    ob = np.loadtxt(ob_path, delimiter=",", dtype=np.int64)
    msg = np.loadtxt(msg_path, delimiter=",", dtype=np.float64)
    assert len(books) == ob.shape[0] == 999
    bid_px = np.stack([b.bid_px for b in books])
    ask_px = np.stack([b.ask_px for b in books])
    bid_sz = np.stack([b.bid_sz for b in books])
    ask_sz = np.stack([b.ask_sz for b in books])
    np.testing.assert_array_equal(ask_px, ob[:, 0::4] / 10_000)
    np.testing.assert_array_equal(ask_sz, ob[:, 1::4])
    np.testing.assert_array_equal(bid_px, ob[:, 2::4] / 10_000)
    np.testing.assert_array_equal(bid_sz, ob[:, 3::4])
    assert all(b.seq == -1 and b.symbol == "AAPL" for b in books)
    assert (bid_px[:, 0] < ask_px[:, 0]).all() and report.crossed == 0
    # ts: 09:30:00.004241176 EDT (UTC-4) on 2012-06-21 = 13:30:00.004241176 UTC
    t0 = int(dt.datetime(2012, 6, 21, 13, 30, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert books[0].ts == t0 + 4_241_176
    ts = np.array([b.ts for b in books])
    assert (np.diff(ts) >= 0).all()
    np.testing.assert_allclose((ts - t0) / 1e9 + 34200, msg[:, 0], rtol=0, atol=1e-6)
    assert report.messages == 999 and report.bad_lines == 0


def test_trades_are_executions_with_aggressor_side(pair):
    msg_path, ob_path = pair
    _, trades, _ = _read([msg_path, ob_path])
    msg = np.loadtxt(msg_path, delimiter=",", dtype=np.float64)
    ex = msg[np.isin(msg[:, 1], (4, 5))]
    assert len(trades) == len(ex) == 98 + 61
    np.testing.assert_array_equal([t.px for t in trades], ex[:, 4] / 10_000)
    np.testing.assert_array_equal([t.qty for t in trades], ex[:, 3])
    # direction = resting order side; a sell limit order executed (-1) is a buy aggressor (+1)
    np.testing.assert_array_equal([t.side for t in trades], -ex[:, 5])
    # visible executions (type 4) hit the resting side's best level of the previous row
    books, _, _ = _read([msg_path, ob_path])
    for i in np.flatnonzero(msg[:, 1] == 4):
        prev = books[i - 1]
        best = prev.ask_px[0] if msg[i, 5] == -1 else prev.bid_px[0]
        assert msg[i, 4] / 10_000 == best


def test_message_vs_orderbook_agreement_is_reported(pair):
    _, _, report = _read(pair)
    checked, agreed = report.extra["lobster_checked"], report.extra["lobster_agreed"]
    print(f"\nLOBSTER agreement: {agreed}/{checked} = {report.extra['lobster_agreement']:.4%} "
          "of visible-level messages (types 1-4) match the change between orderbook rows")
    # 471 + 369 + 98 messages of types 1, 3, 4, minus the first row (no previous row)
    assert checked == 471 + 369 + 98 - 1
    assert report.extra["lobster_agreement"] == agreed / checked == 1.0


def test_depth_narrower_and_wider_than_the_file(pair):
    books5, _, _ = _read(pair, depth=5)
    books12, _, _ = _read(pair, depth=12)
    books10, _, _ = _read(pair)
    np.testing.assert_array_equal(books5[7].bid_px, books10[7].bid_px[:5])
    np.testing.assert_array_equal(books12[7].ask_px[:10], books10[7].ask_px)
    assert np.isnan(books12[7].ask_px[10:]).all() and (books12[7].ask_sz[10:] == 0).all()


def _write_pair(tmp: Path, msg_rows: list[str], ob_rows: list[str], stem="X_2012-01-03_0_1_{}_2.csv"):
    m, o = tmp / stem.format("message"), tmp / stem.format("orderbook")
    m.write_text("\n".join(msg_rows) + "\n")
    o.write_text("\n".join(ob_rows))
    return m, o


def test_dummy_levels_become_nan_and_est_offset(tmp_path):
    # 2012-01-03 is EST (UTC-5); level 2 of the ask side is empty (dummy price, size 0)
    m, o = _write_pair(tmp_path, ["34200.5,1,1,10,1000000,1", "34201.25,4,1,4,1000000,1"],
                       ["1010000,5,1000000,10,9999999999,0,990000,7",
                        "1010000,5,1000000,6,9999999999,0,990000,7"])
    books, trades, report = _read([m, o], depth=2)
    assert np.isnan(books[0].ask_px[1]) and books[0].ask_sz[1] == 0
    assert books[1].bid_sz.tolist() == [6, 7]
    t0 = int(dt.datetime(2012, 1, 3, 14, 30, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert books[0].ts == t0 + 500_000_000
    assert trades == [TradeRow(t0 + 1_250_000_000, 100.0, 4.0, -1, "X")]
    assert report.extra["lobster_agreed"] == report.extra["lobster_checked"] == 1


def test_bad_rows_are_counted_not_emitted(tmp_path):
    m, o = _write_pair(tmp_path,
                       ["34200.5,1,1,10,1000000,1", "34200.6,1,2,x,1000000,1", "34200.7,1,3,5,990000,1"],
                       ["1010000,5,1000000,10,1020000,1,990000,7",
                        "1010000,5,1000000,-3,1020000,1,990000,7",
                        "1010000,5,1000000,10,1020000,1,990000,12"])
    books, _, report = _read([m, o], depth=2)
    assert len(books) == 2 and report.bad_lines == 1
    assert report.messages == 3


def test_negative_size_in_orderbook_is_counted(tmp_path):
    m, o = _write_pair(tmp_path, ["34200.5,1,1,10,1000000,1", "34200.6,1,2,5,1000000,1"],
                       ["1010000,5,1000000,10,1020000,1,990000,7",
                        "1010000,5,1000000,-3,1020000,1,990000,7"])
    books, _, report = _read([m, o], depth=2)
    assert len(books) == 1 and report.negative_sizes == 1


def test_mismatched_pair_is_unusable(tmp_path, pair):
    msg_path, ob_path = pair
    short = tmp_path / ob_path.name
    short.write_text("\n".join(ob_path.read_text().splitlines()[:500]))
    with pytest.raises(InputError, match=r"orderbook_10\.csv:501: .*500 rows.*999"):
        next(lobster.read([msg_path, short], 10, None, ImportReport()))


def test_unpaired_or_misnamed_files_are_unusable(tmp_path, pair):
    msg_path, _ = pair
    with pytest.raises(InputError, match="orderbook file missing"):
        next(lobster.read([msg_path], 10, None, ImportReport()))
    odd = tmp_path / "book.csv"
    odd.write_text("1,2\n")
    with pytest.raises(InputError, match="not a LOBSTER file name"):
        next(lobster.read([odd], 10, None, ImportReport()))
    with pytest.raises(InputError, match="not --symbol MSFT"):
        next(lobster.read(list(pair), 10, "MSFT", ImportReport()))


def test_cli_end_to_end(pair, tmp_path, capsys):
    from gpu_engine.data.books import store
    from gpu_engine.data.__main__ import main as cli

    out = tmp_path / "aapl.zarr"
    rc = cli(["import", str(pair[1]), str(pair[0]), "--format", "lobster", "--depth", "10",
              "--out", str(out), "--quiet"])
    assert rc == 0
    assert "lobster_agreement" in capsys.readouterr().out
    book = store.load(out)
    ob = np.loadtxt(pair[1], delimiter=",", dtype=np.int64)
    np.testing.assert_array_equal(book.bid_px, ob[:, 2::4] / 10_000)
    np.testing.assert_array_equal(book.ask_sz, ob[:, 1::4])
    assert len(book.trades) == 159 and book.attrs["symbol"] == "AAPL"
    short = tmp_path / pair[1].name
    short.write_text("\n".join(pair[1].read_text().splitlines()[:10]))
    rc = cli(["import", str(pair[0]), str(short), "--format", "lobster", "--out", str(tmp_path / "y.zarr"), "--quiet"])
    assert rc == 2 and not (tmp_path / "y.zarr").exists()
    assert "orderbook_10.csv:11" in capsys.readouterr().err
