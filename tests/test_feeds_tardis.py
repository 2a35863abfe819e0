"""Tardis.dev CSV reader on small files built from the documented columns (no real sample exists)."""
from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds import tardis
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow

INC_HEAD = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"
TRADES_HEAD = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
T0 = 1_700_000_000_000_000  # microseconds


def snap_head(n=25):
    cols = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(n):
        cols += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    return ",".join(cols)


def write(path: Path, head: str, rows: list[str], gz=False) -> Path:
    text = "\n".join([head, *rows]) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def inc(t, snap, side, px, amt, sym="BTCUSDT", local=None):
    local = t + 50 if local is None else local
    return f"binance,{sym},{t},{local},{'true' if snap else 'false'},{side},{px},{amt}"


def run(paths, depth=3, symbol=None):
    report = ImportReport()
    rows = list(tardis.read([Path(p) for p in paths], depth, symbol, report))
    return rows, report


def test_incremental_snapshot_updates_and_reset(tmp_path):
    rows = [
        inc(T0, False, "bid", 99, 1),            # before the first snapshot: dropped
        inc(T0 + 10, True, "bid", 100, 2), inc(T0 + 10, True, "bid", 99, 3),
        inc(T0 + 10, True, "ask", 101, 4), inc(T0 + 10, True, "ask", 102, 5),
        inc(T0 + 20, False, "bid", 100.5, 1), inc(T0 + 20, False, "ask", 101, 0),   # one message
        inc(T0 + 30, False, "bid", 99, 0),
        # reconnect: a snapshot after updates resets the book
        inc(T0 + 40, True, "bid", 90, 1), inc(T0 + 40, True, "ask", 95, 1),
        inc(T0 + 50, False, "ask", 96, 2),
    ]
    books, report = run([write(tmp_path / "inc.csv", INC_HEAD, rows)])
    assert all(isinstance(b, BookRow) for b in books)
    assert [b.ts for b in books] == [(T0 + d) * 1000 for d in (10, 20, 30, 40, 50)]
    assert [b.local_ts for b in books] == [(T0 + d + 50) * 1000 for d in (10, 20, 30, 40, 50)]
    b0, b1, b2, b3, b4 = books
    np.testing.assert_array_equal(b0.bid_px, [100, 99, np.nan])
    np.testing.assert_array_equal(b0.ask_sz, [4, 5, 0])
    np.testing.assert_array_equal(b1.bid_px, [100.5, 100, 99])
    np.testing.assert_array_equal(b1.ask_px, [102, np.nan, np.nan])
    np.testing.assert_array_equal(b2.bid_px, [100.5, 100, np.nan])
    np.testing.assert_array_equal(b3.bid_px, [90, np.nan, np.nan])     # nothing of the old book survives
    np.testing.assert_array_equal(b4.ask_px, [95, 96, np.nan])
    assert report.unsynced == 1 and report.resyncs == 1
    assert [g["reason"] for g in report.gaps] == ["snapshot after updates (recorder reconnect): book reset"]
    assert report.gaps[0]["time"] == (T0 + 30) * 1000 and report.gaps[0]["until"] == (T0 + 40) * 1000
    assert report.messages == 6 and report.ts_min == (T0 + 10) * 1000


def test_incremental_matches_an_independent_replay(tmp_path):
    rng = random.Random(7)
    bids, asks = {}, {}
    rows = []
    t = T0
    for p in range(95, 100):
        bids[p] = 1.0
        rows.append(inc(t, True, "bid", p, 1))
    for p in range(101, 106):
        asks[p] = 1.0
        rows.append(inc(t, True, "ask", p, 1))
    expected = []

    def top(d, best_first, n=4):
        ks = sorted(d, reverse=best_first)[:n]
        return ks + [np.nan] * (n - len(ks)), [d[k] for k in ks] + [0.0] * (n - len(ks))

    expected.append((top(bids, True), top(asks, False)))
    for _ in range(300):
        t += rng.randint(1, 1000)
        for _ in range(rng.randint(1, 4)):  # one message = several rows sharing local_timestamp
            if rng.random() < 0.5:
                p, book = rng.randint(90, 100), bids
            else:
                p, book = rng.randint(101, 111), asks
            amt = 0 if rng.random() < 0.3 else rng.randint(1, 9) / 4
            if amt == 0:
                book.pop(p, None)
            else:
                book[p] = amt
            rows.append(inc(t, False, "bid" if book is bids else "ask", p, amt))
        expected.append((top(bids, True), top(asks, False)))
    books, report = run([write(tmp_path / "inc.csv", INC_HEAD, rows)], depth=4)
    assert len(books) == len(expected) == 301
    for b, ((bp, bs), (ap, as_)) in zip(books, expected):
        np.testing.assert_array_equal(b.bid_px, bp)
        np.testing.assert_array_equal(b.bid_sz, bs)
        np.testing.assert_array_equal(b.ask_px, ap)
        np.testing.assert_array_equal(b.ask_sz, as_)
    assert report.crossed == 0 and report.gaps == []


def test_bad_level_row_invalidates_until_next_snapshot(tmp_path):
    rows = [
        inc(T0, True, "bid", 100, 2), inc(T0, True, "ask", 101, 4),
        inc(T0 + 10, False, "bid", "abc", 1),           # non-number price
        inc(T0 + 20, False, "bid", 100, 3),             # book unknown: no row
        inc(T0 + 30, True, "bid", 100, 5), inc(T0 + 30, True, "ask", 101, 6),
        inc(T0 + 40, False, "ask", 101, -1),            # negative amount
        inc(T0 + 50, False, "ask", 102, 1),
        inc(T0 + 60, False, "side?", 102, 1),           # unknown side, but already unsynced
    ]
    books, report = run([write(tmp_path / "inc.csv", INC_HEAD, rows)])
    assert [b.ts // 1000 - T0 for b in books] == [0, 30]
    assert report.bad_lines == 1 and report.negative_sizes == 1
    # malformed row (closed by the snapshot at T0+30), negative amount (still open)
    assert [g["reason"].split(":")[0] for g in report.gaps] == ["malformed level row", "negative amount"]
    assert report.gaps[0]["time"] == (T0 + 10) * 1000 and report.gaps[0]["until"] == (T0 + 30) * 1000
    assert "until" not in report.gaps[1] and report.resyncs == 1


def test_crossed_book_is_counted_not_emitted(tmp_path):
    rows = [inc(T0, True, "bid", 100, 2), inc(T0, True, "ask", 101, 4),
            inc(T0 + 10, False, "bid", 101.5, 1),       # crosses
            inc(T0 + 20, False, "bid", 101.5, 0)]       # uncrosses
    books, report = run([write(tmp_path / "inc.csv", INC_HEAD, rows)])
    assert [b.ts // 1000 - T0 for b in books] == [0, 20] and report.crossed == 1


def test_book_snapshot_25(tmp_path):
    def snap_row(t, asks, bids, sym="BTCUSDT"):
        cells = [f"binance,{sym},{t},{t + 7}"]
        for i in range(25):
            a = asks[i] if i < len(asks) else ("", "")
            b = bids[i] if i < len(bids) else ("", "")
            cells.append(f"{a[0]},{a[1]},{b[0]},{b[1]}")
        return ",".join(cells)

    rows = [snap_row(T0, [(101, 1), (102, 2), (103, 3)], [(100, 4), (99, 5)]),
            snap_row(T0 + 5, [(101, 1)], [(100, "x")]),                     # bad number
            snap_row(T0 + 6, [(101, 1)], [(100, -1)]),                      # negative
            snap_row(T0 + 7, [(100, 1)], [(100, 1)]),                       # locked
            snap_row(T0 + 9, [(101.5, 2)], [(100.5, 3)])]
    books, report = run([write(tmp_path / "s.csv.gz", snap_head(), rows, gz=True)], depth=4)
    assert len(books) == 2
    np.testing.assert_array_equal(books[0].ask_px, [101, 102, 103, np.nan])
    np.testing.assert_array_equal(books[0].bid_sz, [4, 5, 0, 0])
    np.testing.assert_array_equal(books[1].bid_px, [100.5, np.nan, np.nan, np.nan])
    assert books[1].ts == (T0 + 9) * 1000 and books[1].local_ts == (T0 + 16) * 1000
    assert (report.bad_lines, report.negative_sizes, report.crossed) == (1, 1, 1)
    wide, _ = run([tmp_path / "s.csv.gz"], depth=30)
    assert wide[0].ask_px.shape == (30,) and np.isnan(wide[0].ask_px[3:]).all()


QUOTES_HEAD = "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"


def test_quotes_are_level1_rows(tmp_path):
    rows = [f"binance-futures,BTCUSDT,{T0},{T0 + 5},2.5,101,100,1.5",
            f"binance-futures,BTCUSDT,{T0 + 10},{T0 + 15},,,100,1",      # no ask
            f"binance-futures,BTCUSDT,{T0 + 20},{T0 + 25},1,99,100,1",   # crossed: counted, skipped
            f"binance-futures,BTCUSDT,{T0 + 30},{T0 + 35},1,101,x,1"]    # bad number
    books, report = run([write(tmp_path / "q.csv", QUOTES_HEAD, rows)], depth=2)
    assert [b.ts for b in books] == [T0 * 1000, (T0 + 10) * 1000]
    np.testing.assert_array_equal(books[0].ask_px, [101, np.nan])
    np.testing.assert_array_equal(books[0].bid_sz, [1.5, 0])
    assert np.isnan(books[1].ask_px[0]) and books[1].ask_sz[0] == 0 and books[1].local_ts == (T0 + 15) * 1000
    assert report.crossed == 1 and report.bad_lines == 1 and report.messages == 4
    i = write(tmp_path / "i.csv", INC_HEAD, [])
    with pytest.raises(InputError, match="mix of incremental_book_L2 and quotes"):
        run([i, tmp_path / "q.csv"])


def test_trades_sides_and_merge_with_book(tmp_path):
    trades = [f"binance,BTCUSDT,{T0 + 5},{T0 + 9},1,buy,100.5,0.1",
              f"binance,BTCUSDT,{T0 + 15},{T0 + 19},2,sell,100,0.2",
              f"binance,BTCUSDT,{T0 + 16},{T0 + 19},3,unknown,100,0.3",
              f"binance,BTCUSDT,{T0 + 17},{T0 + 19},4,sell,nan?,0.3"]
    book = [inc(T0, True, "bid", 100, 2), inc(T0, True, "ask", 101, 4), inc(T0 + 10, False, "bid", 100, 1)]
    out, report = run([write(tmp_path / "t.csv", TRADES_HEAD, trades), write(tmp_path / "b.csv", INC_HEAD, book)])
    assert [type(r).__name__ for r in out] == ["BookRow", "TradeRow", "BookRow", "TradeRow"]
    assert [r.ts for r in out] == sorted(r.ts for r in out)
    tr = [r for r in out if isinstance(r, TradeRow)]
    assert tr == [TradeRow((T0 + 5) * 1000, 100.5, 0.1, 1, "BTCUSDT"), TradeRow((T0 + 15) * 1000, 100.0, 0.2, -1, "BTCUSDT")]
    assert report.extra["tardis_unknown_side"] == 1 and report.bad_lines == 1


def test_timestamps_backwards(tmp_path):
    rows = [inc(T0, True, "bid", 100, 2), inc(T0, True, "ask", 101, 4),
            inc(T0 - 500, False, "bid", 100, 1, local=T0 + 100),          # 0.5 ms back: jitter
            inc(T0 - 5_000_000, False, "bid", 100, 2, local=T0 + 200),    # 5 s back: counted
            inc(T0 + 10, False, "bid", 100, 3, local=T0 + 300)]
    books, report = run([write(tmp_path / "inc.csv", INC_HEAD, rows)])
    assert [b.ts // 1000 - T0 for b in books] == [0, 0, 10]
    assert [b.bid_sz[0] for b in books] == [2, 1, 3]
    assert report.time_backwards == 1


def test_symbols(tmp_path):
    rows = [inc(T0, True, "bid", 100, 2), inc(T0, True, "ask", 101, 4),
            inc(T0, True, "bid", 10, 2, sym="ETHBTC"), inc(T0, True, "ask", 11, 4, sym="ETHBTC")]
    p = write(tmp_path / "inc.csv", INC_HEAD, rows)
    books, report = run([p])  # no --symbol: the first symbol seen, the others counted
    assert len(books) == 1 and books[0].symbol == "BTCUSDT" and report.extra["other_symbol"] == 2
    assert report.extra["exchange"] == "binance" and any("selected BTCUSDT" in n for n in report.notes)
    books, _ = run([p], symbol="ETHBTC")
    assert len(books) == 1 and books[0].bid_px[0] == 10 and books[0].symbol == "ETHBTC"


def test_unusable_files(tmp_path):
    p = write(tmp_path / "inc.csv", "exchange,symbol,timestamp,is_snapshot,side,price,amount",
              [f"binance,BTCUSDT,{T0},true,bid,1,1"])
    with pytest.raises(InputError, match=r"inc\.csv:1: field 'local_timestamp': column missing"):
        run([p])
    q = write(tmp_path / "what.csv", "a,b,c", ["1,2,3"])
    with pytest.raises(InputError, match="unknown Tardis CSV header"):
        run([q])
    s = write(tmp_path / "s.csv", snap_head(5), [])
    i = write(tmp_path / "i.csv", INC_HEAD, [])
    with pytest.raises(InputError, match="mix of incremental_book_L2 and book_snapshot"):
        run([s, i])


def test_truncated_gzip_is_counted(tmp_path):
    rows = [inc(T0 + k, k == 0, "bid", 100 - (k % 5), 1 + k % 3) for k in range(2000)]
    rows[1:1] = [inc(T0, True, "ask", 200, 1)]
    full = gzip.compress(("\n".join([INC_HEAD, *rows]) + "\n").encode())
    p = tmp_path / "inc.csv.gz"
    p.write_bytes(full[: len(full) // 2])
    books, report = run([p])
    assert 0 < len(books) < 2000
    assert report.bad_lines == 1 and report.gaps[-1]["reason"] == "truncated file"
    assert "compressed stream broken" in report.notes[-1]


def test_cli_end_to_end(tmp_path, capsys):
    from gpu_engine.data.books import store
    from gpu_engine.data.__main__ import main as cli

    rows = [inc(T0, True, "bid", 100, 2), inc(T0, True, "ask", 101, 4)]
    rows += [inc(T0 + 10 * k, False, "bid", 100, k) for k in range(1, 50)]
    trades = [f"binance,BTCUSDT,{T0 + 15},{T0 + 19},1,sell,100,0.2"]
    b = write(tmp_path / "b.csv.gz", INC_HEAD, rows, gz=True)
    t = write(tmp_path / "t.csv", TRADES_HEAD, trades)
    out = tmp_path / "x.zarr"
    assert cli(["import", str(b), str(t), "--format", "tardis-csv", "--depth", "5", "--out", str(out), "--quiet"]) == 0
    book = store.load(out)
    assert book.T == 50 and len(book.trades) == 1 and book.trades.side[0] == -1
    assert book.bid_sz[-1, 0] == 49 and book.attrs["exchange"] == "binance"
    bad = write(tmp_path / "bad.csv", "exchange,symbol,timestamp,local_timestamp,side,price", ["x,y,1,2,buy,3"])
    assert cli(["import", str(bad), "--format", "tardis-csv", "--out", str(tmp_path / "y.zarr"), "--quiet"]) == 2
    assert "bad.csv:1: field 'id': column missing" in capsys.readouterr().err
    assert not (tmp_path / "y.zarr").exists()
