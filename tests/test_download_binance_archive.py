"""`download --source binance-archive` end to end against a data.binance.vision-like loopback server.

Files are built from real Binance captures in the real-data folder (skipped without it): the
trades and bookTicker streams of binance_usdm_btcusdt_20240808.jsonl.gz (first 10,000 lines) as
the archive's USD-M `trades`, `aggTrades` and `bookTicker` CSVs, zipped, each with its
`.CHECKSUM`; the spot trades of binance_spot_btcusdt_20240808.jsonl.gz as spot `trades`, in
milliseconds (2024) and in microseconds (2025 on). Bars: every zip verified against its
checksum (a bad one fetched again, or reported and never kept nor imported); a cut file resumed;
a missing bookTicker day reported as a 404 and the rest imported; with or without header rows
the same store; the stores equal the capture's own trades and bookTicker; a second run fetches no
complete file again.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpu_engine.data.__main__ import main
from gpu_engine.data.books.store import load
from tests.download_fakes import ArchiveFake, archive_csvs, read_capture

N_LINES = 10_000
SYM = "BTCUSDT"


def stream(msgs, kind):
    return [o["data"] for _, o in msgs if o.get("stream", "").endswith(kind)]


@pytest.fixture(scope="module")
def usdm(real_dir):
    msgs = read_capture(real_dir / "binance_usdm_btcusdt_20240808.jsonl.gz", N_LINES)
    return {"with_header": archive_csvs(msgs, "um", header=True),
            "no_header": archive_csvs(msgs, "um", header=False),
            "trades": stream(msgs, "@trade"), "tickers": stream(msgs, "@bookTicker")}


def download(capsys, srv, tmp_path, market, types, start, end, *extra):
    rc = main(["download", "--source", "binance-archive", "--market", market, "--symbol", SYM, "--types", types,
               "--from", start, "--to", end, "--out", str(tmp_path / "archive"), "--base-url", srv.base,
               "--import", "--stores", str(tmp_path / "stores"), "--backoff-base", "0.01", *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def check_trades(store, trades, k=1):
    np.testing.assert_array_equal(store.trades.ts, np.array([d["T"] for d in trades], np.int64) * 1_000_000)
    np.testing.assert_array_equal(store.trades.px, [float(d["p"]) for d in trades])
    np.testing.assert_array_equal(store.trades.qty, [float(d["q"]) for d in trades])
    np.testing.assert_array_equal(store.trades.side, [-1 if d["m"] else 1 for d in trades])


def test_usdm_download_verify_import(usdm, tmp_path, capsys):
    with ArchiveFake() as srv:
        p = {}
        for day, csvs in (("2024-03-29", usdm["no_header"]), ("2024-03-30", usdm["with_header"])):
            for t, text in csvs.items():
                p[t, day] = srv.add("um", t, SYM, day, text)
        for t in ("trades", "aggTrades"):  # no bookTicker after 2024-03-30
            p[t, "2024-03-31"] = srv.add("um", t, SYM, "2024-03-31", usdm["with_header"][t])
        good = srv.files[p["bookTicker", "2024-03-30"]]
        srv.fault(p["bookTicker", "2024-03-30"], ("body", good[:-40] + b"x" * 40))   # checksum mismatch: again
        srv.fault(p["aggTrades", "2024-03-31"], ("cut", 9_000))                      # resumed with Range
        srv.fault(p["trades", "2024-03-29"] + ".CHECKSUM", ("status", 429, {"Retry-After": "0"}))
        rc, out, err = download(capsys, srv, tmp_path, "um", "trades,aggTrades,bookTicker", "2024-03-29",
                                "2024-03-31")
        assert rc == 0, out + err
        assert "fetched and verified          8" in out and "missing (404)                 1" in out
        assert ("missing: bookTicker 2024-03-31: HTTP 404 (the archive's daily bookTicker files stop at "
                "2024-03-30)") in out
        assert "fetching it again (1/2)" in err and "resuming at byte 9,000" in err
        assert [r["range"] for r in srv.requests if r["path"] == p["aggTrades", "2024-03-31"]] == [None, "bytes=9000-"]
        folder = tmp_path / "archive" / "binance" / "futures" / "um" / "daily"
        for (t, day), path in p.items():
            z = folder / t / SYM / f"{SYM}-{t}-{day}.zip"
            assert z.read_bytes() == srv.files[path]
            assert z.with_name(z.name + ".CHECKSUM").read_bytes() == srv.files[path + ".CHECKSUM"]
        assert not list(folder.rglob("*.part")) and not list(folder.rglob(".*"))

        stores = tmp_path / "stores"
        s29, s30, s31 = (load(stores / f"binance-um-{SYM}-{d}.zarr") for d in ("2024-03-29", "2024-03-30",
                                                                               "2024-03-31"))
        for f in ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz"):  # header or not: the same store
            np.testing.assert_array_equal(getattr(s29, f), getattr(s30, f))
        bt = usdm["tickers"]
        assert s30.T == len(bt) and s30.depth == 1 and s30.attrs["market"] == "usdm"
        np.testing.assert_array_equal(s30.seq, [d["u"] for d in bt])
        np.testing.assert_array_equal(s30.ts, np.array([d["E"] for d in bt], np.int64) * 1_000_000)
        np.testing.assert_array_equal(s30.bid_px[:, 0], [float(d["b"]) for d in bt])
        np.testing.assert_array_equal(s30.ask_sz[:, 0], np.array([float(d["A"]) for d in bt], np.float32))
        for s in (s29, s30, s31):
            check_trades(s, usdm["trades"])
        assert s31.T == 0 and "aggTrades: not imported (the same fills as trades)" in out
        with capsys.disabled():
            print(f"\nbinance archive um: bookTicker store {s30.T} rows == capture bookTicker; "
                  f"{len(s30.trades)} trades == capture trades")

        n = len(srv.requests)
        rc, out, err = download(capsys, srv, tmp_path, "um", "trades,aggTrades,bookTicker", "2024-03-29", "2024-03-31")
        assert rc == 0 and "already complete              8" in out and out.count("kept ") == 3
        assert [r["path"].rsplit("/", 1)[1] for r in srv.requests[n:]] == [f"{SYM}-bookTicker-2024-03-31.zip.CHECKSUM"]


def test_aggtrades_import_the_same_fills(usdm, tmp_path, capsys):
    with ArchiveFake() as srv:
        srv.add("um", "aggTrades", SYM, "2024-03-30", usdm["with_header"]["aggTrades"])
        rc, out, err = download(capsys, srv, tmp_path, "um", "aggTrades", "2024-03-30", "2024-03-30")
        assert rc == 0, out + err
    store = load(tmp_path / "stores" / f"binance-um-{SYM}-2024-03-30.zarr")
    trades = usdm["trades"]
    assert len(store.trades) < len(trades)
    assert store.trades.qty.sum() == pytest.approx(sum(float(d["q"]) for d in trades), rel=1e-9)
    assert set(store.trades.ts) == {d["T"] * 1_000_000 for d in trades}


def test_spot_milliseconds_then_microseconds(real_dir, tmp_path, capsys):
    msgs = read_capture(real_dir / "binance_spot_btcusdt_20240808.jsonl.gz", N_LINES)
    with ArchiveFake() as srv:
        srv.add("spot", "trades", SYM, "2024-12-31", archive_csvs(msgs, "spot", micros=False)["trades"])
        srv.add("spot", "trades", SYM, "2025-01-01", archive_csvs(msgs, "spot", micros=True)["trades"])
        rc, out, err = download(capsys, srv, tmp_path, "spot", "trades", "2024-12-31", "2025-01-01")
        assert rc == 0, out + err
    a, b = (load(tmp_path / "stores" / f"binance-spot-{SYM}-{d}.zarr") for d in ("2024-12-31", "2025-01-01"))
    trades = stream(msgs, "@trade")
    for s in (a, b):
        check_trades(s, trades)
        assert s.attrs["market"] == "spot"


def test_bad_checksum_is_reported_never_kept_nor_imported(usdm, tmp_path, capsys):
    with ArchiveFake() as srv:
        srv.add("um", "trades", SYM, "2024-03-30", usdm["with_header"]["trades"], checksum="ab" * 32)
        srv.add("um", "trades", SYM, "2024-03-28", usdm["with_header"]["trades"])
        rc, out, err = download(capsys, srv, tmp_path, "um", "trades", "2024-03-28", "2024-03-30",
                                "--corrupt-retries", "1")
        assert rc == 1, out + err
        assert "failed: trades 2024-03-30: sha256 " in out and "does not match the published abababababab" in out
        assert "fetched 2 times; nothing kept" in out
        assert "missing: trades 2024-03-29: HTTP 404" in out
        assert "not imported 2024-03-30: 1 file failed" in out and "imported 2024-03-28 -> " in out
        folder = tmp_path / "archive" / "binance" / "futures" / "um" / "daily" / "trades" / SYM
        assert sorted(x.name for x in folder.iterdir()) == [f"{SYM}-trades-2024-03-28.zip",
                                                             f"{SYM}-trades-2024-03-28.zip.CHECKSUM"]
        assert sorted(x.name for x in (tmp_path / "stores").iterdir()) == [f"binance-um-{SYM}-2024-03-28.zarr"]
