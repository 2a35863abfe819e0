"""The block history as a market (gpu_engine/data/blocks/market.py) and the real prices behind it.

Bars: a daily bar's mid is the price of the day's last block (that day's close, interpolated to
the block), bid/ask are mid x (1 -/+ spread/2) with the era's or the given spread, the displayed
size is the liquidity cap over the price; a day missing from the price files gives a bar without
a price (not traded); hourly bars on daily closes use no close before its day ends; weekly bars
start on Mondays and an unfinished week is left out; modelled prices are refused unless allowed.
Price files: gaps reported with file and line, duplicated / out-of-order days, non-positive and
non-numeric prices refused naming file and line; several files merged with the later one winning,
the sidecar and the summary saying which file priced which span; Binance spot 1d klines (ms and
us times) read from the zip; the downloader fetches klines (monthly and daily files, each checked
against its .CHECKSUM) that `blocks --prices` then reads. A bad --bar / --spread-bps /
--liquidity is one line, exit 2, naming the flag. Small synthetic daily files: no real data needed.
"""
from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pytest

from gpu_engine.data.__main__ import main as data_main
from gpu_engine.data.blocks import dataset as B
from gpu_engine.data.blocks import market as M
from gpu_engine.data.blocks.sources import merge_prices, read_prices
from gpu_engine.errors import InputError
from sweeps import optimize
from tests.download_fakes import ArchiveFake, klines_csv, zip_bytes

DAY = 86_400


def _days(start: str, n: int) -> list[str]:
    d0 = date.fromisoformat(start)
    return [(d0 + timedelta(days=k)).isoformat() for k in range(n)]


def _yahoo(path, start="2014-09-17", n=60, p0=400.0, step=1.01, skip=()):
    lines = ["Date,Open,High,Low,Close,Volume"]
    for k, d in enumerate(_days(start, n)):
        if k in skip:
            continue
        c = p0 * step**k
        lines.append(f"{d},{c},{c},{c},{c},1000")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """A dataset to 2014-11-30 priced by 60 daily closes from 2014-09-17, day index 10 missing."""
    d = tmp_path_factory.mktemp("bars")
    csv = _yahoo(d / "y.csv", skip=(10,))
    arr, meta = B.build(until="2014-11-30", prices=[csv])
    return arr, meta, d


def _bar_day(book):
    return (book.ts // 10**9) // DAY


def test_daily_bars_are_the_days_last_block_and_costs(ds):
    arr, meta, _ = ds
    book, info = M.bars(arr, meta, bar="1d")
    assert book.depth == 1 and book.trades is None and info["bar"] == "1d"
    days = _bar_day(book)
    assert np.all(np.diff(days) == 1) and np.all(book.ts % 10**9 == 10**9 - 1)  # the bar's last nanosecond
    first = (date(2014, 9, 18) - date(1970, 1, 1)).days  # the first close is stamped at the end of 09-17
    assert days[0] == first and days[-1] == first + 58
    mid = (book.bid_px[:, 0] + book.ask_px[:, 0]) / 2
    times = np.asarray(arr["time"])
    for k in (0, 5, 30, 58):  # the last block of the day carries the mid
        last = int(np.searchsorted(times, (days[k] + 1) * DAY, side="left")) - 1
        assert mid[k] == pytest.approx(arr["price"][last], rel=1e-12)
        close = 400.0 * 1.01 ** (days[k] - first + 1)
        assert mid[k] == pytest.approx(close, rel=2e-4)  # within the minutes before midnight
    # era spread of 2014: 20 bps; the displayed size is the liquidity cap over the price
    ok = np.isfinite(mid)
    np.testing.assert_allclose((book.ask_px[ok, 0] - book.bid_px[ok, 0]) / mid[ok], 20e-4, rtol=1e-9)
    np.testing.assert_allclose(book.bid_sz[ok, 0], M.DEFAULT_LIQUIDITY / mid[ok], rtol=1e-6)
    b2, _ = M.bars(arr, meta, spread_bps=7.0, liquidity=5_000.0)
    m2 = (b2.bid_px[:, 0] + b2.ask_px[:, 0]) / 2
    np.testing.assert_allclose(b2.ask_px[ok, 0] / b2.bid_px[ok, 0], (1 + 3.5e-4) / (1 - 3.5e-4), rtol=1e-12)
    np.testing.assert_allclose(b2.ask_sz[ok, 0], 5_000.0 / m2[ok], rtol=1e-6)


def test_a_missing_day_is_a_bar_without_a_price_and_is_reported(ds, capsys):
    arr, meta, d = ds
    book, info = M.bars(arr, meta)
    missing = (date(2014, 9, 27) - date(1970, 1, 1)).days  # day index 10 of the file
    k = int(np.nonzero(_bar_day(book) == missing)[0][0])
    assert np.isnan(book.bid_px[k, 0]) and np.isnan(book.ask_px[k, 0]) and book.bid_sz[k, 0] == 0
    assert np.isfinite(book.bid_px[k + 1, 0]) and info["bars_without_price"] == 1
    assert meta["price"]["sources"]["missing_days"] == [["2014-09-27", "2014-09-27"]]
    assert meta["inputs"][0]["gaps"] == [{"line": 12, "first_missing": "2014-09-27", "last_missing": "2014-09-27",
                                          "days": 1}]
    text = B.summary(arr, meta)
    assert "y.csv:12: gap: 1 day without a price (2014-09-27)" in text and "not traded" in text
    assert "1 bars without a price (not traded)" in M.describe(info)


def test_hourly_bars_never_use_a_close_before_its_day_ends(ds):
    arr, meta, _ = ds
    daily, _ = M.bars(arr, meta, bar="1d")
    hourly, info = M.bars(arr, meta, bar="1h")
    assert info["bar_s"] == 3600
    dmid = dict(zip(_bar_day(daily).tolist(), ((daily.bid_px[:, 0] + daily.ask_px[:, 0]) / 2).tolist()))
    hmid = (hourly.bid_px[:, 0] + hourly.ask_px[:, 0]) / 2
    hday = _bar_day(hourly)
    last_hour = (hourly.ts // 10**9) % DAY == DAY - 1
    for k in np.nonzero(np.isfinite(hmid))[0][::7]:
        # the bar ending at midnight knows its day's close; every earlier hour only the day before's
        want = dmid.get(int(hday[k]) if last_hour[k] else int(hday[k]) - 1)
        assert want is not None and hmid[k] == pytest.approx(want, rel=1e-12), k


def test_weekly_bars_start_on_mondays_and_leave_out_an_unfinished_week(ds):
    arr, meta, _ = ds
    book, info = M.bars(arr, meta, bar="1w")
    end_day = (book.ts // 10**9 + 1) // DAY  # the day after each bar
    assert all(date.fromordinal(date(1970, 1, 1).toordinal() + int(e)).weekday() == 0 for e in end_day)
    assert (book.ts[-1] + 1) // 10**9 <= (date(2014, 11, 16) - date(1970, 1, 1)).days * DAY  # last close 11-15


def test_modelled_prices_refused_unless_allowed(ds, tmp_path):
    arr, meta, _ = ds
    with pytest.raises(InputError, match="--from.*modelled prices.*--allow-modelled-prices"):
        M.bars(arr, meta, start="2014-06-01")
    with pytest.raises(InputError, match="--to.*modelled prices"):
        M.bars(arr, meta, end="2014-11-30")
    book, info = M.bars(arr, meta, start="2014-06-01", end="2014-11-30", allow_modelled=True)
    assert info["modelled_bars_priced"] > 100
    assert (~np.isfinite(book.bid_px[:, 0])).sum() == 1  # the day missing from the price file, still
    assert "MODELLED prices" in M.describe(info)
    synth, smeta = B.build(until="2014-11-30")
    with pytest.raises(InputError, match="no real prices.*--prices.*--allow-modelled-prices"):
        M.bars(synth, smeta)
    book, info = M.bars(arr, meta, start="2014-10-01", end="2014-10-31")
    assert book.T == 31 and info["first_bar"].startswith("2014-10-01")


@pytest.mark.parametrize("bar", ["0", "0d", "-1d", "5h", "1y", "d", ""])
def test_bad_bar_lengths(bar):
    with pytest.raises(InputError, match="--bar"):
        M.parse_bar(bar)


def test_bar_lengths():
    assert [M.parse_bar(b) for b in ("1h", "6h", "1d", "2d", "1w", "48h")] == [3600, 21600, DAY, 2 * DAY, 7 * DAY,
                                                                               2 * DAY]


@pytest.mark.parametrize("extra, flag", [
    (["--bar", "0"], "--bar"), (["--bar", "1x"], "--bar"), (["--spread-bps", "-1"], "--spread-bps"),
    (["--spread-bps", "nan"], "--spread-bps"), (["--liquidity", "0"], "--liquidity"),
    (["--from", "2014-13-01"], "--from"),
])
def test_cli_bad_market_flags_exit_2_naming_the_flag(ds, tmp_path, capsys, extra, flag):
    arr, meta, d = ds
    path = d / "b.npy"
    if not path.exists():
        B.write(path, arr, meta)
    rc = optimize.main(["--data", str(path), "--space", "powerlaw", "--device", "cpu", "--no-progress",
                        "--out", str(tmp_path / "c.zarr"), "--storage", str(tmp_path / "j.journal"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag in err, err
    assert not list(tmp_path.iterdir())


def test_cli_market_flags_need_block_data(tmp_path, capsys):
    rc = optimize.main(["--bar", "1d", "--device", "cpu", "--out", str(tmp_path / "c.zarr")])
    err = capsys.readouterr().err
    assert rc == 2 and "--bar: only with --data blocks" in err


# ------------------------------------------------------------------ price files


@pytest.mark.parametrize("rows, where, words", [
    (["2014-09-17,1,1,1,400,1", "2014-09-18,1,1,1,401,1", "2014-09-18,1,1,1,402,1"], ":4:",
     ["duplicated day 2014-09-18", "line 3"]),
    (["2014-09-17,1,1,1,400,1", "2014-09-19,1,1,1,401,1", "2014-09-18,1,1,1,402,1"], ":4:",
     ["2014-09-18 after 2014-09-19", "out of order"]),
    (["2014-09-17,1,1,1,400,1", "2014-09-18,1,1,1,0,1"], ":3:", ["'Close'", "> 0"]),
    (["2014-09-17,1,1,1,400,1", "2014-09-18,1,1,1,-2,1"], ":3:", ["'Close'", "> 0"]),
    (["2014-09-17,1,1,1,400,1", "2014-09-18,1,1,1,4o0,1"], ":3:", ["'Close'", "not a number"]),
])
def test_bad_price_files_name_file_and_line(tmp_path, capsys, rows, where, words):
    p = tmp_path / "p.csv"
    p.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(rows) + "\n")
    rc = data_main(["blocks", "--blocks", "100", "--prices", str(p), "--out", str(tmp_path / "b.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and f"{p}{where}" in err, err
    for w in words:
        assert w in err, err


def test_gaps_are_reported_with_their_line(tmp_path):
    p = _yahoo(tmp_path / "g.csv", n=10, skip=(3, 4, 7))
    s = read_prices(p)
    assert [(ln, str(np.datetime64(a, "D")), str(np.datetime64(b, "D"))) for ln, a, b in s.gaps] == [
        (5, "2014-09-20", "2014-09-21"), (7, "2014-09-24", "2014-09-24")]
    assert s.gap_lines()[0] == f"{p}:5: gap: 2 days without a price (2014-09-20..2014-09-21)"


def test_klines_read_in_ms_and_us_and_refused_when_not_daily(tmp_path):
    days = ["2024-12-30", "2024-12-31", "2025-01-01", "2025-01-02"]
    text = klines_csv(days, [100.0, 101.0, 102.0, 103.0])  # microseconds from 2025-01-01
    z = tmp_path / "BTCUSDT-1d-2025-01.zip"
    z.write_bytes(zip_bytes("BTCUSDT-1d-2025-01.csv", text))
    s = read_prices(z)
    assert s.fmt == "binance_klines" and s.value.tolist() == [100.0, 101.0, 102.0, 103.0]
    assert [str(np.datetime64(int(d), "D")) for d in s.day] == days
    c = tmp_path / "k.csv"
    c.write_text(text)
    assert read_prices(c).value.tolist() == s.value.tolist()
    row = text.splitlines()[0].split(",")
    row[6] = str(int(row[0]) + 3_600_000 - 1)  # a 1h kline
    c.write_text(",".join(row) + "\n")
    with pytest.raises(InputError, match=r"k.csv:1: field 'open_time': not a daily kline"):
        read_prices(c)
    c.write_text(text.splitlines()[0] + "\n" + text.splitlines()[0] + "\n")
    with pytest.raises(InputError, match=r"k.csv:2: .*duplicated day 2024-12-30"):
        read_prices(c)


def test_several_price_files_later_wins_with_spans(tmp_path, capsys):
    a = _yahoo(tmp_path / "a.csv", start="2014-09-17", n=30, p0=400.0, step=1.0)
    b = _yahoo(tmp_path / "b.csv", start="2014-10-01", n=30, p0=500.0, step=1.0)
    m = merge_prices([read_prices(a), read_prices(b)])
    assert m.value[m.day == (date(2014, 10, 5) - date(1970, 1, 1)).days] == 500.0  # the later file wins
    out = tmp_path / "b.npy"
    rc = data_main(["blocks", "--until", "2014-11-30", "--prices", f"{a},{b}", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    spans = json.loads(B.sidecar_path(out).read_text())["price"]["sources"]["spans"]
    assert [(s["path"], s["first_day"], s["last_day"]) for s in spans] == [
        (str(a), "2014-09-17", "2014-09-30"), (str(b), "2014-10-01", "2014-10-30")]
    assert f"2014-09-17 .. 2014-09-30: {a}" in text and f"2014-10-01 .. 2014-10-30: {b}" in text
    assert "LATER file wins" in text
    rc = data_main(["blocks", "--until", "2014-11-30", "--prices", str(b), "--prices", str(a), "--out", str(out),
                    "--overwrite"])
    capsys.readouterr()
    spans = json.loads(B.sidecar_path(out).read_text())["price"]["sources"]["spans"]
    assert [(s["path"], s["last_day"]) for s in spans] == [(str(a), "2014-10-16"), (str(b), "2014-10-30")]


def test_klines_downloaded_verified_then_priced(tmp_path, capsys):
    """`download --types klines --interval 1d`: whole past months as monthly zips, the rest as daily
    zips, each verified against its .CHECKSUM (a corrupt one fetched again); then `blocks --prices`."""
    sym = "BTCUSDT"
    with ArchiveFake() as srv:
        june = _days("2024-06-01", 30)
        srv.add_klines(sym, "1d", "2024-06", klines_csv(june, [60_000.0 + k for k in range(30)]))
        for k, d in enumerate(_days("2024-07-01", 3)):
            srv.add_klines(sym, "1d", d, klines_csv([d], [61_000.0 + k]))
        good = srv.files[srv.kline_path(sym, "1d", "2024-06")]
        srv.fault(srv.kline_path(sym, "1d", "2024-06"), ("body", good[:-30] + b"x" * 30))
        rc = data_main(["download", "--source", "binance-archive", "--market", "spot", "--symbol", sym,
                        "--types", "klines", "--interval", "1d", "--from", "2024-06-01", "--to", "2024-07-03",
                        "--out", str(tmp_path / "archive"), "--base-url", srv.base, "--backoff-base", "0.01",
                        "--quiet"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "fetched and verified          4" in out
        assert srv.count("/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-06.zip") == 3  # .CHECKSUM + bad + good
    root = tmp_path / "archive" / "binance" / "spot"
    zips = sorted(root.rglob("*.zip"))
    assert [z.relative_to(root).parts[0] for z in zips] == ["daily"] * 3 + ["monthly"]
    for z in zips:
        assert z.with_name(z.name + ".CHECKSUM").is_file()
    monthly = [z for z in zips if "monthly" in z.parts]
    rc = data_main(["blocks", "--until", "2024-07-10", "--prices", *map(str, monthly + [z for z in zips if z not in
                                                                                        monthly]),
                    "--out", str(tmp_path / "b.npy")])
    text = capsys.readouterr().out
    assert rc == 0 and "binance_klines" in text and "3 files in" in text and str(monthly[0]) in text, text
    arr, meta = B.load(tmp_path / "b.npy"), B.load_meta(tmp_path / "b.npy")
    book, info = M.bars(arr, meta)
    mid = (book.bid_px[:, 0] + book.ask_px[:, 0]) / 2
    assert info["first_bar"].startswith("2024-06-02") and info["last_bar"].startswith("2024-07-03")
    assert mid[-1] == pytest.approx(61_002.0, rel=1e-3)


def test_download_klines_bad_arguments(tmp_path, capsys):
    base = ["download", "--source", "binance-archive", "--symbol", "BTCUSDT", "--from", "2024-06-01",
            "--out", str(tmp_path)]
    for extra, word in ((["--market", "spot", "--types", "klines"], "--interval"),
                        (["--market", "spot", "--types", "klines", "--interval", "7d"], "--interval"),
                        (["--market", "um", "--types", "klines", "--interval", "1d"], "spot"),
                        (["--market", "spot", "--types", "trades", "--interval", "1d"], "--interval")):
        rc = data_main(base + extra)
        err = capsys.readouterr().err
        assert rc == 2 and word in err and len(err.strip().splitlines()) == 1, err


def test_a_loaded_dataset_aligns_like_one_in_memory_and_drops_its_scanned_pages(tmp_path):
    """Market.from_book on a memory-mapped dataset (the time envelope cached, only the picked
    records read, the scan's pages handed back: dataset._drop_pages) gives the same block
    columns as on a writeable copy; the dataset reads the same after its pages were dropped."""
    from gpu_engine.data.books.store import Book
    from gpu_engine.market import Market

    arr, meta = B.build(n_blocks=5_000, seed=3)
    path = B.write(tmp_path / "b.npy", arr, meta)
    mm = B.load(path)
    assert not mm.flags.writeable
    t0, t1 = int(arr["time"][0]), int(arr["time"][-1])
    t = np.sort(np.r_[t0 - 600, t0 - 1, t0, np.random.default_rng(1).integers(t0, t1 + 600, 300)])
    book = Book.from_arrays(t * 10**9, [[1.0]] * t.size, [[2.0]] * t.size, [[1]] * t.size, [[1]] * t.size)
    a = Market.from_book(book, blocks=mm, device="cpu")
    b = Market.from_book(book, blocks=np.array(arr), device="cpu")
    for name in ("block_height", "block_time", "prev_block_time", "fair_pl", "halving_phase"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.block_index >= 0).any() and (a.block_index == -1).any()
    np.testing.assert_array_equal(B.known_times(mm), np.maximum.accumulate(arr["time"]))
    assert np.asarray(mm).tobytes() == arr.tobytes()  # read again after MADV_DONTNEED (NaN fields: bytes)
