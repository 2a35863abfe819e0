"""`download --source tardis` end to end against a Tardis-like loopback server, on real data.

The files served are built from the first 10,000 lines of a real Binance USD-M capture
(binance_usdm_btcusdt_20240808.jsonl.gz in the real-data folder; skipped without it): its REST
snapshot and depth updates as Tardis `incremental_book_L2` rows, its trades, its bookTicker as
`quotes`, and `book_snapshot_25` rows of the book the binance-jsonl importer builds from the same
lines. Bars: every file verified (a cut is resumed with Range, a corrupted reply fetched again);
the store built from the downloaded `incremental_book_L2` equals, at every common exchange time,
the book the binance-jsonl importer builds from the capture itself (25 levels, prices and sizes);
a missing day is reported and the rest continues; a file that stays corrupt is never kept nor
imported; a second run fetches nothing complete again.
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from gpu_engine.data.__main__ import main
from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import load
from tests.download_fakes import TardisFake, gz, read_capture, snapshot25_csv, tardis_csvs

CAPTURE = "binance_usdm_btcusdt_20240808.jsonl.gz"
N_LINES = 10_000
EX, SYM, DAY = "binance-futures", "BTCUSDT", "2024-08-08"
TYPES = ("incremental_book_L2", "trades", "quotes", "book_snapshot_25")


@pytest.fixture(scope="module")
def data(real_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tardis-src")
    src = real_dir / CAPTURE
    with gzip.open(src, "rb") as f, gzip.open(tmp / "slice.jsonl.gz", "wb", compresslevel=1) as g:
        for i, line in enumerate(f):
            if i >= N_LINES:
                break
            g.write(line)
    import_files([tmp / "slice.jsonl.gz"], "binance-jsonl", tmp / "ref.zarr", depth=25, progress=False)
    ref = load(tmp / "ref.zarr")
    msgs = read_capture(src, N_LINES)
    csvs = tardis_csvs(msgs, EX, SYM)
    csvs["book_snapshot_25"] = snapshot25_csv(ref, EX, SYM, every=10)
    files = {t: gz(text) for t, text in csvs.items()}
    trades = np.array([(d["T"], float(d["p"]), float(d["q"]), -1 if d["m"] else 1)
                       for _, o in msgs if o.get("stream", "").endswith("@trade") for d in [o["data"]]])
    quotes = np.array([(d["E"], float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]))
                       for _, o in msgs if o.get("stream", "").endswith("@bookTicker") for d in [o["data"]]])
    return {"files": files, "ref": ref, "trades": trades, "quotes": quotes}


def serve(srv: TardisFake, files: dict, day=DAY):
    return {t: srv.add(EX, t, day, SYM, files[t]) for t in TYPES}


def download(capsys, srv, tmp_path, *extra, start="2024-08-07", end=DAY):
    rc = main(["download", "--source", "tardis", "--exchange", EX, "--symbol", SYM, "--types", ",".join(TYPES),
               "--from", start, "--to", end, "--out", str(tmp_path / "archive"), "--base-url", srv.base,
               "--import", "--stores", str(tmp_path / "stores"), "--depth", "25", "--backoff-base", "0.01", *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def last_per_ts(book):
    idx = np.r_[np.nonzero(np.diff(book.ts))[0], book.T - 1]
    return book.ts[idx], idx


def same_books(a, b, min_common: float):
    """At every exchange time both books have, the same 25 levels (the last row of that time)."""
    ta, ia = last_per_ts(a)
    tb, ib = last_per_ts(b)
    common, ja, jb = np.intersect1d(ta, tb, return_indices=True)
    assert len(common) >= min_common * len(tb), (len(common), len(tb))
    for f in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
        np.testing.assert_array_equal(getattr(a, f)[ia[ja]], getattr(b, f)[ib[jb]], err_msg=f)
    return len(common)


def test_download_verify_import_matches_the_capture(data, tmp_path, capsys, monkeypatch):
    with TardisFake() as srv:
        monkeypatch.setenv("TARDIS_API_KEY", srv.token)
        paths = serve(srv, data["files"])
        srv.fault(paths["trades"], ("cut", 5_000))                                   # resumed with Range
        srv.fault(paths["quotes"], ("body", data["files"]["quotes"][:-100]))         # truncated gzip: again
        srv.fault(paths["incremental_book_L2"], ("status", 429, {"Retry-After": "0"}))
        rc, out, err = download(capsys, srv, tmp_path)
        assert rc == 0, out + err
        assert "fetched and verified          4" in out and "missing (404)                 4" in out
        for t in TYPES:
            assert f"missing: {t} 2024-08-07: HTTP 404" in out
        assert "not imported 2024-08-07: no usable file" in out
        assert "imported 2024-08-08 -> " in out and "(incremental_book_L2 + trades: " in out
        assert "note: quotes: not imported (the store's book comes from incremental_book_L2)" in out
        folder = tmp_path / "archive" / "tardis" / EX
        for t in TYPES:  # byte for byte what the server holds, nothing else left
            assert (folder / f"{EX}_{t}_{DAY}_{SYM}.csv.gz").read_bytes() == data["files"][t]
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{EX}_{t}_{DAY}_{SYM}.csv.gz" for t in TYPES)
        trades_reqs = [r["range"] for r in srv.requests if r["path"] == paths["trades"]]
        assert trades_reqs == [None, "bytes=5000-"]
        assert srv.count(paths["quotes"]) == 2 and srv.count(paths["incremental_book_L2"]) == 2
        assert all(r["auth"] == f"Bearer {srv.token}" for r in srv.requests)

        store = load(tmp_path / "stores" / f"tardis-{EX}-{SYM}-{DAY}.zarr")
        n = same_books(data["ref"], store, min_common=0.99)
        with capsys.disabled():
            print(f"\ntardis incremental_book_L2 store: {store.T} rows, {n} exchange times equal to the "
                  f"binance-jsonl book at 25 levels")
        tr = data["trades"]
        np.testing.assert_array_equal(store.trades.ts, tr[:, 0].astype(np.int64) * 1_000_000)
        np.testing.assert_array_equal(store.trades.px, tr[:, 1])
        np.testing.assert_array_equal(store.trades.qty, tr[:, 2])
        np.testing.assert_array_equal(store.trades.side, tr[:, 3])
        assert store.attrs["format"] == "tardis-csv" and store.attrs["exchange"] == EX

        # the same command again: nothing complete is fetched again, the store is kept
        before = {t: srv.count(p) for t, p in paths.items()}
        rc, out, err = download(capsys, srv, tmp_path)
        assert rc == 0 and "already complete              4" in out and "kept " in out
        assert {t: srv.count(p) for t, p in paths.items()} == before

    # the other two book files import as well: quotes = the capture's bookTicker, snapshots = the book
    q = import_files([folder / f"{EX}_quotes_{DAY}_{SYM}.csv.gz"], "tardis-csv", tmp_path / "q.zarr",
                     depth=1, progress=False)
    quotes = load(tmp_path / "q.zarr")
    bt = data["quotes"]
    assert q.crossed == 0 and quotes.T == len(bt)
    np.testing.assert_array_equal(quotes.ts, bt[:, 0].astype(np.int64) * 1_000_000)
    for col, f in ((1, "bid_px"), (3, "ask_px")):
        np.testing.assert_array_equal(getattr(quotes, f)[:, 0], bt[:, col])
    for col, f in ((2, "bid_sz"), (4, "ask_sz")):
        np.testing.assert_array_equal(getattr(quotes, f)[:, 0], bt[:, col].astype(np.float32))
    import_files([folder / f"{EX}_book_snapshot_25_{DAY}_{SYM}.csv.gz"], "tardis-csv", tmp_path / "s.zarr",
                 depth=25, progress=False)
    snaps = load(tmp_path / "s.zarr")
    ref = data["ref"]
    assert snaps.T == len(range(0, ref.T, 10))
    np.testing.assert_array_equal(snaps.bid_px, ref.bid_px[::10])
    np.testing.assert_array_equal(snaps.ask_sz, ref.ask_sz[::10])


def test_a_file_that_stays_corrupt_is_never_imported(data, tmp_path, capsys, monkeypatch):
    files = data["files"]
    bad = bytearray(files["trades"])
    bad[-6] ^= 0x40  # the gzip trailer's length: the CRC/length check fails at the very end
    with TardisFake() as srv:
        monkeypatch.setenv("TARDIS_API_KEY", srv.token)
        paths = serve(srv, files)
        srv.fault(paths["trades"], *[("body", bytes(bad))] * 3)
        rc, out, err = download(capsys, srv, tmp_path, "--corrupt-retries", "2", start=DAY)
        assert rc == 1, out + err
        assert "failed: trades 2024-08-08: corrupt gzip stream" in out and "fetched 3 times; nothing kept" in out
        assert "not imported 2024-08-08: 1 file failed" in out
        folder = tmp_path / "archive" / "tardis" / EX
        assert not list(folder.glob("*trades*")) and not (tmp_path / "stores").exists()
        # the server is fixed: the next run fetches only the trades file and imports the day
        before = {t: srv.count(p) for t, p in paths.items()}
        rc, out, err = download(capsys, srv, tmp_path, start=DAY)
        assert rc == 0 and "fetched and verified          1" in out and "already complete              3" in out
        after = {t: srv.count(p) - before[t] for t, p in paths.items()}
        assert after == {"incremental_book_L2": 0, "trades": 1, "quotes": 0, "book_snapshot_25": 0}
        store = load(tmp_path / "stores" / f"tardis-{EX}-{SYM}-{DAY}.zarr")
        assert len(store.trades) == len(data["trades"])
