"""The `binance-archive` reader (data.binance.vision CSVs) and the sniffer, on small files built here.

The archive's traps, each checked: header rows only in futures files from 2022 on (recognised by
content), spot times in microseconds from 2025 (milliseconds before), bookDepth is not a book,
trades and aggTrades are the same fills.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.books.feeds import binance_archive as ba
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import load
from gpu_engine.errors import InputError
from tests.download_fakes import zip_bytes

T0 = 1_711_756_800_000  # 2024-03-30 00:00 UTC, ms
UM_TRADES_HEAD = "id,price,qty,quote_qty,time,is_buyer_maker"
BT_HEAD = "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"


def um_trades(n=6, header=True, start_id=100):
    rows = [UM_TRADES_HEAD] if header else []
    for i in range(n):
        rows.append(f"{start_id + i},{70000 + i}.5,0.01{i},{700 + i}.005,{T0 + 10 * i},{'true' if i % 2 else 'false'}")
    return "\n".join(rows) + "\n"


def write_zip(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_bytes(zip_bytes(name[:-4] + ".csv", text))
    return p


def run(paths, depth=1, symbol=None):
    report = ImportReport()
    return list(ba.read([Path(p) for p in paths], depth, symbol, report)), report


def test_classify_every_shape():
    c = lambda line: ba.classify(line.split(","))  # noqa: E731
    assert c(UM_TRADES_HEAD) == ("trades", "usdm", True)
    assert c("id,price,qty,base_qty,time,is_buyer_maker") == ("trades", "coinm", True)
    assert c(BT_HEAD) == ("bookTicker", None, True)
    assert c("agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker")[0] == "aggTrades"
    assert c("timestamp,percentage,depth,notional")[0] == "bookDepth"
    assert c("2023-01-01 00:00:08,-5,1234.5,456789.1")[0] == "bookDepth"
    assert c("5266583935,61800.3,0.006,370.8,1723161256322,false") == ("trades", None, False)
    assert c("5266583935,61800.3,0.006,370.8,1723161256322000,True,True") == ("trades", "spot", False)
    assert c("1,61800.3,0.006,5,6,1723161256322,True,True") == ("aggTrades", "spot", False)
    assert c("1,61800.3,0.006,5,6,1723161256322,false") == ("aggTrades", None, False)
    assert c("5123107839020,61800.20,2.507,61800.30,2.510,1723161256313,1723161256313") == ("bookTicker", None, False)
    for other in ("exchange,symbol,timestamp,local_timestamp,id,side,price,amount",   # tardis
                  "34200.004241176,1,16113575,18,5853300,1",                         # LOBSTER message
                  '1723161256299000000 {"stream":"btcusdt@depth@0ms"}', ""):
        assert c(other) is None, other


def test_header_or_not_the_same_rows(tmp_path):
    a = write_zip(tmp_path / "new" / "futures" / "um", "BTCUSDT-trades-2024-03-30.zip", um_trades(header=True))
    b = write_zip(tmp_path / "old" / "futures" / "um", "BTCUSDT-trades-2024-03-30.zip", um_trades(header=False))
    ra, rep = run([a])
    rb, _ = run([b])
    assert ra == rb and len(ra) == 6 and all(isinstance(r, TradeRow) for r in ra)
    assert ra[0] == TradeRow(T0 * 1_000_000, 70000.5, 0.010, 1, "BTCUSDT")
    assert ra[1].side == -1  # the buyer was the maker: a sell aggressor
    assert rep.extra["market"] == "usdm" and rep.messages == 6


def test_spot_micro_and_milliseconds(tmp_path):
    def spot(k):
        return "".join(f"{7 + i},65000.0{i},0.1,6500.0,{(T0 + i) * k},{'True' if i else 'False'},True\n"
                       for i in range(4))
    ms = write_zip(tmp_path / "spot", "BTCUSDT-trades-2024-12-31.zip", spot(1))
    us = write_zip(tmp_path / "spot2", "BTCUSDT-trades-2025-01-01.zip", spot(1000))
    rm, rep = run([ms])
    ru, _ = run([us])
    assert [r.ts for r in rm] == [r.ts for r in ru] == [(T0 + i) * 1_000_000 for i in range(4)]
    assert rep.extra["market"] == "spot"


def test_book_ticker_level1_rows_and_crossed(tmp_path):
    text = "\n".join([BT_HEAD,
                      f"11,100.0,1.5,100.1,2.0,{T0},{T0 + 1}",
                      f"12,100.2,1.0,100.1,2.0,{T0 + 2},{T0 + 3}",      # crossed: counted, skipped
                      f"13,100.0,0.0,100.1,2.0,{T0 + 4},{T0 + 5}",      # empty bid
                      f"14,100.0,1.0,100.1,2.0,{T0 + 6},{T0 + 5 - 2000}",  # 2 s back: dropped
                      f"15,100.0,1.0,100.1,abc,{T0 + 6},{T0 + 7}"]) + "\n"
    p = write_zip(tmp_path / "futures" / "um", "BTCUSDT-bookTicker-2024-03-30.zip", text)
    rows, rep = run([p], depth=2)
    assert [type(r) for r in rows] == [BookRow, BookRow]
    r0, r1 = rows
    assert r0.ts == (T0 + 1) * 1_000_000 and r0.seq == 11
    np.testing.assert_array_equal(r0.bid_px, [100.0, np.nan])
    np.testing.assert_array_equal(r0.ask_sz, [2.0, 0.0])
    assert np.isnan(r1.bid_px[0]) and r1.bid_sz[0] == 0 and r1.seq == 13
    assert rep.crossed == 1 and rep.time_backwards == 1 and rep.bad_lines == 1


def test_refusals(tmp_path):
    depth = write_zip(tmp_path, "BTCUSDT-bookDepth-2024-03-30.zip",
                      "timestamp,percentage,depth,notional\n2024-03-30 00:00:08,-5,1234.5,456789.1\n")
    with pytest.raises(InputError, match="percentage bands around the mid.*not an order book"):
        run([depth])
    t = write_zip(tmp_path, "BTCUSDT-trades-2024-03-30.zip", um_trades())
    agg = write_zip(tmp_path, "BTCUSDT-aggTrades-2024-03-30.zip",
                    f"1,70000.5,0.01,100,100,{T0},false\n")
    with pytest.raises(InputError, match="same fills twice"):
        run([t, agg])
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.csv", um_trades())
        zf.writestr("b.csv", um_trades())
    with pytest.raises(InputError, match="expected one .csv in the zip, found 2"):
        run([two])
    tardis = tmp_path / "t.csv"
    tardis.write_text("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
    with pytest.raises(InputError, match="not a Binance archive.*try --format tardis-csv"):
        run([tardis])


def test_import_and_sniff(tmp_path):
    folder = tmp_path / "futures" / "um" / "daily"
    t = write_zip(folder / "trades", "BTCUSDT-trades-2024-03-30.zip", um_trades(header=False))
    bt = write_zip(folder / "bookTicker", "BTCUSDT-bookTicker-2024-03-30.zip",
                   "".join(f"{20 + i},{69990 + i}.0,1.0,{70010 + i}.0,2.0,{T0 + 5 * i},{T0 + 5 * i}\n" for i in range(9)))
    rep = import_files([t, bt], "binance-archive", tmp_path / "s.zarr", depth=1, progress=False)
    book = load(tmp_path / "s.zarr")
    assert book.T == 9 and len(book.trades) == 6 and book.attrs["symbol"] == "BTCUSDT"
    assert book.attrs["market"] == "usdm" and book.attrs["exchange"] == "binance"
    np.testing.assert_array_equal(book.seq, np.arange(20, 29))
    assert rep.rows == 9
    # the same CSV extracted imports too
    csv = tmp_path / "BTCUSDT-trades-2024-03-30.csv"
    with zipfile.ZipFile(t) as zf:
        csv.write_bytes(zf.read(zf.namelist()[0]))
    import_files([csv], "binance-archive", tmp_path / "c.zarr", progress=False)
    assert len(load(tmp_path / "c.zarr").trades) == 6
    # another --format is refused, naming binance-archive (zipped or extracted)
    for p, where in ((t, "(in a zip)"), (csv, "CSV;")):
        with pytest.raises(InputError, match=r"looks like a Binance archive trades CSV.*try --format binance-archive"):
            import_files([p], "tardis-csv", tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_corrupt_zip_member_is_refused_whole(tmp_path):
    text = um_trades(n=3000, header=True)
    p = write_zip(tmp_path, "BTCUSDT-trades-2024-03-30.zip", text)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: found at the member's CRC at the latest
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="is corrupt.*nothing imported"):
        import_files([p], "binance-archive", tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists() and not list(tmp_path.glob(".s.zarr*"))
