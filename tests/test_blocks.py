"""Block dataset: issuance math, time map anchors, fair values, price model, files, lookups, CLI bad input."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.blocks import dataset as B
from gpu_engine.data.__main__ import main as cli_main
from gpu_engine.data.blocks.sources import read_chain_stats, read_prices
from gpu_engine.data.blocks.timemap import EXACT_ANCHORS
from gpu_engine.errors import InputError

HALVING_TIMES = {210_000: 1354116278, 420_000: 1468082773, 630_000: 1589225023, 840_000: 1713571767}


@pytest.fixture(scope="module")
def small():
    """A short build (no inputs): heights 0..449,999."""
    arr, meta = B.build(n_blocks=450_000, seed=3)
    return arr, meta


# ------------------------------------------------------------------ issuance

def test_subsidy_schedule():
    expect = {0: 50 * B.COIN, 209_999: 50 * B.COIN, 210_000: 25 * B.COIN, 419_999: 25 * B.COIN,
              420_000: 1_250_000_000, 630_000: 625_000_000, 840_000: 312_500_000, 1_050_000: 156_250_000,
              1_890_000: 9_765_625,  # epoch 9: still exact
              2_100_000: 4_882_812,  # epoch 10: 4,882,812.5 truncated by the shift
              6_719_999: 2, 6_720_000: 1, 6_929_999: 1, 6_930_000: 0, 13_440_000: 0, 20_000_000: 0}
    got = B.subsidy_sat(np.array(list(expect)))
    assert got.dtype == np.int64
    assert got.tolist() == list(expect.values())
    assert (B.subsidy_sat(np.arange(6_930_000, 6_930_000 + 5000)) == 0).all()
    assert B.subsidy_sat(64 * 210_000) == 0  # the shift guard


def test_total_issuance_and_supply_checkpoints():
    assert B.TOTAL_ISSUANCE_SAT == 2_099_999_997_690_000
    assert B.supply_sat(6_929_999) == 2_099_999_997_690_000
    assert B.supply_sat(6_930_000) == 2_099_999_997_690_000
    assert B.supply_sat(50_000_000) == 2_099_999_997_690_000
    checkpoints = {209_999: 10_500_000, 419_999: 15_750_000, 629_999: 18_375_000,
                   839_999: 19_687_500, 1_049_999: 20_343_750}
    for h, btc in checkpoints.items():
        assert B.supply_sat(h) == btc * B.COIN
    assert B.supply_sat(0) == 50 * B.COIN  # genesis included


def test_supply_is_cumulative_subsidy():
    h = np.arange(0, 1_300_000, dtype=np.int64)
    np.testing.assert_array_equal(B.supply_sat(h), np.cumsum(B.subsidy_sat(h)))


def test_fields_and_fair_values(small):
    arr, meta = small
    assert arr.dtype == B.BLOCK_DTYPE
    assert [arr.dtype[f].str for f in arr.dtype.names] == ["<i4", "<i8", "<i8", "<i8", "<f8", "<f8", "<f8",
                                                            "<f8", "|u1", "|u1", "<i8", "<f8", "<i4", "<i4",
                                                            "<i4", "<i8"]
    assert arr.dtype.names[9:] == ("time_source", "median_time", "difficulty", "tx_count", "size_bytes",
                                   "weight_wu", "fees_sat")
    assert len(arr) == 450_000
    # no headers fetched: every time modelled, every block-flow field unknown
    assert (arr["time_source"] == 0).all() and np.isnan(arr["difficulty"]).all()
    for f in ("median_time", "tx_count", "size_bytes", "weight_wu", "fees_sat"):
        assert (arr[f] == -1).all()
    np.testing.assert_array_equal(arr["height"], np.arange(450_000))
    h = 300_000
    rec = arr[h]
    s2f = rec["supply_sat"] / (rec["subsidy_sat"] * 52_560)
    assert rec["s2f"] == pytest.approx(s2f, rel=1e-12)
    assert rec["fair_s2f"] == pytest.approx(math.exp(-1.84) * s2f**3.36, rel=1e-12)
    d = (rec["time"] - 1230940800) / 86400
    assert rec["fair_pl"] == pytest.approx(1.0117e-17 * d**5.82, rel=1e-9)
    assert meta["power_law"]["A"] == 1.0117e-17 and meta["power_law"]["n"] == 5.82
    assert meta["power_law"]["day0"] == "2009-01-03" and "Santostasi" in meta["power_law"]["variant"]
    assert (arr["price"] > 0).all() and np.isfinite(arr["price"]).all()
    assert (arr["price_source"] == 0).all()


def test_s2f_reference_value():
    # computed: at height 900,000 SF = 19.875e6 / (3.125 x 52,560) ~ 121 and the S2F price
    # e^-1.84 x 121^3.36 ~ $1.6M
    s2f = B.stock_to_flow(B.supply_sat(900_000), B.subsidy_sat(900_000))
    assert 120 < s2f < 122
    assert 1.5e6 < B.fair_s2f(s2f) < 1.7e6
    assert B.stock_to_flow(B.supply_sat(7_000_000), B.subsidy_sat(7_000_000)) == np.inf


# ------------------------------------------------------------------ time map

def test_halvings_at_real_header_times(small):
    arr, _ = small
    for h, t in HALVING_TIMES.items():
        if h < len(arr):
            assert abs(int(arr["time"][h]) - t) <= 3600
    full, _ = B.build(n_blocks=900_000)
    for h, t in HALVING_TIMES.items():
        assert abs(int(full["time"][h]) - t) <= 3600
    assert full["time"][0] == EXACT_ANCHORS[0][1]


def test_time_non_decreasing_and_extrapolated():
    arr, meta = B.build(n_blocks=1_100_000)
    t = arr["time"]
    assert (np.diff(t) >= 0).all()
    ex = meta["time_map"]["extrapolation"]
    assert 560 < ex["spacing_s"] < 620
    assert t[-1] - t[1_000_000] == pytest.approx(99_999 * ex["spacing_s"], abs=2)


def test_default_length_is_up_to_now():
    now = 1_750_000_000  # 2025-06-15
    arr, meta = B.build(now=now)
    assert arr["time"][-1] <= now
    nxt, _ = B.build(n_blocks=len(arr) + 1)
    assert nxt["time"][-1] > now
    np.testing.assert_array_equal(nxt["time"][:-1], arr["time"])


def test_until_is_inclusive_of_the_day():
    arr, meta = B.build(until="2016-07-09")
    end = 1468108800  # 2016-07-10 00:00 UTC
    assert arr["time"][-1] < end
    more, _ = B.build(n_blocks=len(arr) + 1)
    assert more["time"][-1] >= end
    assert len(arr) > 420_000  # halving 2 happened that day


def test_blocks_926109():
    arr, _ = B.build(n_blocks=926_109)
    assert len(arr) == 926_109 and arr["height"][-1] == 926_108


def test_chain_stats_keep_halvings_exact(tmp_path):
    # a tiny bitcoinvisuals-style file around halving 1: counts shift blocks, halving stays exact
    rows = ["day,blocks_count,other"]
    day0 = np.datetime64("2009-01-03")
    for k in range(1500):
        rows.append(f"{day0 + k},{1 if k == 0 else 150},x")
    p = tmp_path / "bv.csv"
    p.write_text("\n".join(rows) + "\n")
    arr, meta = B.build(n_blocks=230_000, chain_stats=[p])
    assert int(arr["time"][210_000]) == HALVING_TIMES[210_000]
    assert (np.diff(arr["time"]) >= 0).all()
    # within the counted span, blocks per UTC day follow the counts (after reconciliation, +-a few)
    days = arr["time"][1:150_000] // 86400
    per_day = np.bincount(days - days[0])
    assert np.median(per_day[1:-1]) == pytest.approx(
        (210_000 - 1) / ((HALVING_TIMES[210_000] - arr["time"][1]) / 86400), rel=0.05)
    assert meta["inputs"][0]["role"] == "chain_stats" and len(meta["inputs"][0]["sha256"]) == 64


# ------------------------------------------------------------------ price

def _yahoo(path: Path, start="2014-09-17", days=40, p0=400.0, step=1.01):
    lines = ["Date,Open,High,Low,Close,Volume"]
    d = np.datetime64(start)
    for k in range(days):
        c = p0 * step**k
        lines.append(f"{d + k},{c},{c},{c},{c},1000")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_real_prices_interpolated_and_joined(tmp_path):
    csv = _yahoo(tmp_path / "y.csv")
    arr, meta = B.build(until="2014-12-31", prices=[csv])
    real = arr["price_source"] == 1
    t = arr["time"].astype(np.float64)
    stamps = (np.datetime64("2014-09-17").astype("datetime64[s]").astype(np.int64) + 86400 * (1 + np.arange(40)))
    assert real.any()
    assert t[real].min() >= stamps[0] and t[real].max() <= stamps[-1]
    # log-linear between stamps: close_k * 1.01 ** frac
    k = (t[real] - stamps[0]) / 86400
    np.testing.assert_allclose(arr["price"][real], 400.0 * 1.01**k, rtol=1e-9)
    # synthetic outside, joined continuously at both ends
    first, last = np.nonzero(real)[0][[0, -1]]
    assert arr["price_source"][first - 1] == 0 and arr["price_source"][last + 1] == 0
    assert arr["price"][first - 1] == pytest.approx(arr["price"][first], rel=0.01)
    assert arr["price"][last + 1] == pytest.approx(arr["price"][last], rel=0.01)
    assert meta["price"]["real"]["blocks"] == int(real.sum())


def test_price_gap_is_synthetic_and_joined_at_both_ends(tmp_path):
    a = _yahoo(tmp_path / "a.csv", start="2014-09-17", days=20, p0=400.0, step=1.0)
    b = _yahoo(tmp_path / "b.csv", start="2014-11-01", days=20, p0=300.0, step=1.0)  # 25-day gap
    arr, meta = B.build(until="2014-12-31", prices=[a, b], seed=5)
    t, src, px = arr["time"], arr["price_source"], arr["price"]
    gap_lo = np.datetime64("2014-10-07").astype("datetime64[s]").astype(np.int64)  # stamp of the 20th close
    gap_hi = np.datetime64("2014-11-02").astype("datetime64[s]").astype(np.int64)  # stamp of b's first close
    inside = (t > gap_lo) & (t < gap_hi)
    assert inside.sum() > 3000 and (src[inside] == 0).all()
    np.testing.assert_allclose(px[(t <= gap_lo) & (src == 1) & (t > gap_lo - 5 * 86400)], 400.0)
    np.testing.assert_allclose(px[(t >= gap_hi) & (src == 1) & (t < gap_hi + 5 * 86400)], 300.0)
    idx = np.nonzero(inside)[0]
    assert px[idx[0]] == pytest.approx(400.0, rel=0.01)  # continuous where the real prices stop ...
    assert px[idx[-1]] == pytest.approx(300.0, rel=0.01)  # ... and where they resume
    assert len(meta["price"]["real"]["stretches"]) == 2


def test_synthetic_deterministic_per_seed_and_prefix_stable():
    a, _ = B.build(n_blocks=200_000, seed=7)
    b, _ = B.build(n_blocks=200_000, seed=7)
    c, _ = B.build(n_blocks=200_000, seed=8)
    assert B.array_sha256(a) == B.array_sha256(b)
    assert not np.array_equal(a["price"], c["price"])
    d, _ = B.build(n_blocks=120_000, seed=7)
    assert d.tobytes() == a[:120_000].tobytes()  # bytes: the unknown difficulty is NaN
    # stays near the power law x cycle (log deviation of order 1, not drifting away)
    dev = np.log(a["price"][10_000:]) - np.log(a["fair_pl"][10_000:])
    assert np.abs(dev).max() < 4


# ------------------------------------------------------------------ files and lookups

def test_write_load_memmap_and_sidecar(tmp_path, small):
    arr, meta = small
    path = tmp_path / "sub" / "blocks.npy"
    B.write(path, arr, meta)
    loaded = B.load(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == B.BLOCK_DTYPE
    assert np.asarray(loaded).tobytes() == arr.tobytes()
    with pytest.raises(ValueError):
        loaded["price"][0] = 1.0  # read-only
    side = json.loads((tmp_path / "sub" / "blocks.json").read_text())
    assert side["schema_version"] == B.SCHEMA_VERSION
    assert side["array_sha256"] == B.array_sha256(np.asarray(loaded))
    assert side["power_law"]["source"] and side["s2f_model"]["source"] and side["issuance"]["source"]
    assert side["build"]["time_utc"] and side["n_blocks"] == len(arr)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["blocks.json", "blocks.npy"]


def test_height_at_and_block_at(small):
    arr, _ = small
    t = arr["time"]
    assert B.height_at(arr, t[0] - 1) == -1
    assert B.height_at(arr, t[0]) == 0
    assert B.height_at(arr, t[12345]) == 12345 or t[12346] == t[12345]
    assert B.height_at(arr, t[-1] + 10**9) == len(arr) - 1
    q = np.array([t[5], t[1000] + 1, t[200_000], t[-1]])
    np.testing.assert_array_equal(B.height_at(arr, q), [5, 1000, 200_000, len(arr) - 1])
    rng = np.random.default_rng(0)
    many = rng.integers(t[0], t[-1], 5000)
    h = B.height_at(arr, many)
    assert (t[h] <= many).all() and (t[np.minimum(h + 1, len(arr) - 1)] > many)[h < len(arr) - 1].all()
    np.testing.assert_array_equal(h[:20], B.height_at(arr, many[:20]))  # scalar path == vector path
    rec = B.block_at(arr, t[300_000] + 1)
    assert rec["height"] == B.height_at(arr, t[300_000] + 1)
    recs = B.block_at(arr, many)
    np.testing.assert_array_equal(recs["height"], h)
    with pytest.raises(ValueError, match="before the genesis block"):
        B.block_at(arr, [t[0] - 5, t[10]])


def test_summary_mentions_the_essentials(small):
    arr, meta = small
    text = B.summary(arr, meta)
    assert "450,000 blocks" in text and "epoch 2" in text and "power law" in text
    assert "real prices: none" in text


# ------------------------------------------------------------------ CLI

def run_cli(argv, capsys):
    rc = cli_main(["blocks", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_build_then_summary(tmp_path, capsys):
    out = tmp_path / "b.npy"
    rc, text, _ = run_cli(["--blocks", 5000, "--seed", 2, "--out", out], capsys)
    assert rc == 0 and "5,000 blocks" in text
    assert len(B.load(out)) == 5000
    rc, text, _ = run_cli(["--summary", out], capsys)
    assert rc == 0 and "count: 5,000 blocks" in text and "seed 2" in text


def _bad(tmp_path, capsys, argv, *expect):
    out = tmp_path / "bad_out.npy"
    rc, _, err = run_cli([*argv, "--out", out], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for e in expect:
        assert e in lines[0], lines[0]
    assert not out.exists() and not (tmp_path / "bad_out.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad_out")]
    return lines[0]


def test_cli_bad_blocks_count(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--blocks", 0], "--blocks")
    _bad(tmp_path, capsys, ["--blocks", -5], "--blocks")


def test_cli_bad_until(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--until", "2020-13-01"], "--until")
    _bad(tmp_path, capsys, ["--until", "2008-01-01"], "before the genesis")


def test_cli_bad_price_files(tmp_path, capsys):
    good = _yahoo(tmp_path / "good.csv").read_text().splitlines()
    cases = {
        "truncated.csv": (good[:5] + ["2014-09-21,405.0,405.0"], ":6:", "truncated"),
        "nodate.csv": (good[:3] + ["2014-09-19x,1,1,1,1,1"], ":4:", "'Date'"),
        "order.csv": (good[:4] + [good[2]], ":5:", "not strictly increasing"),
        "zero.csv": (good[:3] + ["2014-09-19,1,1,1,0,1"], ":4:", "'Close'"),
        "negative.csv": (good[:3] + ["2014-09-19,1,1,1,-3.5,1"], "'Close'", "> 0"),
        "text.csv": (good[:3] + ["2014-09-19,1,1,1,abc,1"], "'Close'", "not a number"),
        "nocols.csv": (["Date,Open,High,Low,Volume", "2014-09-17,1,1,1,1"], ":1:", "missing column"),
        "empty.csv": ([], ":1:", "empty"),
    }
    for name, (lines, *expect) in cases.items():
        p = tmp_path / name
        p.write_text("\n".join(lines) + ("\n" if lines else ""))
        msg = _bad(tmp_path, capsys, ["--blocks", 100, "--prices", p], name, *expect)
        assert msg.startswith(f"error: {p}")


def test_cli_bad_chain_stats(tmp_path, capsys):
    p = tmp_path / "cm.csv.gz"
    body = "date,BlkCnt,PriceUSD\n2009-01-03,0,\n2009-01-04,0,\n2009-01-05,,\n2009-01-06,3,\n"
    p.write_bytes(gzip.compress(body.encode()))
    _bad(tmp_path, capsys, ["--blocks", 100, "--chain-stats", p], "cm.csv.gz:4:", "'BlkCnt'", "middle")
    q = tmp_path / "cut.csv.gz"
    q.write_bytes(gzip.compress(b"day,blocks_count\n2009-01-03,1\n" * 50)[:-12])
    _bad(tmp_path, capsys, ["--blocks", 100, "--chain-stats", q], "cut.csv.gz", "gzip")
    r = tmp_path / "frac.csv"
    r.write_text("day,blocks_count\n2009-01-03,1\n2009-01-09,2.5\n")
    _bad(tmp_path, capsys, ["--blocks", 100, "--chain-stats", r], "frac.csv:3:", "'blocks_count'")
    s = tmp_path / "missing.csv"
    _bad(tmp_path, capsys, ["--blocks", 100, "--chain-stats", s], "missing.csv", "cannot read")


def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc, _, err = run_cli(["--blocks", 100, "--out", blocker / "blocks.npy"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err
    rc, _, err = run_cli(["--blocks", 100, "--out", tmp_path / "blocks.txt"], capsys)
    assert rc == 2 and ".npy" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_cli_summary_of_missing_file(tmp_path, capsys):
    rc, _, err = run_cli(["--summary", tmp_path / "none.npy"], capsys)
    assert rc == 2 and "none.npy" in err


def test_trailing_empty_counts_and_missing_prices_are_allowed(tmp_path):
    p = tmp_path / "cm.csv"
    p.write_text("date,BlkCnt,PriceUSD\n2009-01-03,0,\n2009-01-04,0,null\n2009-01-05,,\n")
    s = read_chain_stats(p)
    assert s.fmt == "coinmetrics" and s.value.tolist() == [1.0, 0.0]  # genesis block added back
    with pytest.raises(InputError, match="no usable prices rows"):
        read_prices(p)
