"""Calibration of the synthetic order flow against the real Binance BTCUSDT spot captures.

Recomputes the stylised facts of ../shared/data/real/binance_spot_btcusdt_2024080{8,9}.jsonl.gz
(bookTicker for quotes, trade for trades, the 20240808 REST snapshot for the depth profile),
parsing the capture lines (`<ns_local_ts> <json>`) directly with json: no importer involved.
Then checks that the values written in docs/SYNTH.md are the ones measured, and that a synthetic
run (2 h, seed 0, default parameters) lands within the tolerances stated there.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from gpu_engine.data.synth import generate as synth
from gpu_engine.data.synth.stats import book_facts, quote_facts, trade_facts

FILES = ("binance_spot_btcusdt_20240808.jsonl.gz", "binance_spot_btcusdt_20240809.jsonl.gz")
TICK = 0.01

# measured values (docs/SYNTH.md, "Measured on the captures"): file -> fact -> value
DOCUMENTED = {
    "20240808": {"spread_1tick_frac": 0.993, "ret1s_std_ticks": 795, "ret1s_excess_kurtosis": 26.4,
                 "trades_per_s": 28.2, "orders_per_s": 9.37, "order_qty_q50": 0.00347,
                 "l1_size_median": 2.03},
    "20240809": {"spread_1tick_frac": 0.991, "ret1s_std_ticks": 735, "ret1s_excess_kurtosis": 2.88,
                 "trades_per_s": 33.3, "orders_per_s": 12.8, "order_qty_q50": 0.00277,
                 "l1_size_median": 1.94},
}
DOC_LEVEL20 = {"bid": 745, "ask": 677}   # ticks from the best, 20240808 snapshot


def _parse(path):
    quotes, trades, snapshot = [], [], None
    with gzip.open(path, "rt") as fh:
        for line in fh:
            ts, _, payload = line.partition(" ")
            msg = json.loads(payload)
            if "lastUpdateId" in msg:
                snapshot = msg
                continue
            stream, d = msg["stream"], msg["data"]
            if stream.endswith("@bookTicker"):
                quotes.append((int(ts), float(d["b"]), float(d["a"]), float(d["B"]), float(d["A"])))
            elif stream.endswith("@trade"):
                trades.append((int(d["T"]) * 1_000_000, float(d["q"]), -1 if d["m"] else 1))
    return np.array(quotes), np.array(trades), snapshot


@pytest.fixture(scope="module")
def real(real_dir):
    out = {}
    for name in FILES:
        path = real_dir / name
        if not path.is_file():
            pytest.skip(f"{path} not present")
        q, t, snap = _parse(path)
        f = quote_facts(q[:, 0].astype(np.int64), q[:, 1], q[:, 2], q[:, 3], q[:, 4], TICK)
        f.update(trade_facts(t[:, 0].astype(np.int64), t[:, 1], t[:, 2].astype(np.int64)))
        if snap is not None:
            bids = np.array(snap["bids"], float)[:, 0]
            asks = np.array(snap["asks"], float)[:, 0]
            f["level20_bid"] = round((bids[0] - bids[19]) / TICK)
            f["level20_ask"] = round((asks[19] - asks[0]) / TICK)
        out[name[21:29]] = f
    return out


@pytest.fixture(scope="module")
def syn():
    book, _ = synth.generate("2024-08-08T00:00", hours=2.0, seed=0, price=61_800.0)
    return book_facts(book)


def _mean(real, key):
    return float(np.mean([f[key] for f in real.values()]))


def test_documented_values_are_the_measured_ones(real):
    for day, facts in DOCUMENTED.items():
        for key, value in facts.items():
            assert real[day][key] == pytest.approx(value, rel=0.01), (day, key)
    assert real["20240808"]["level20_bid"] == DOC_LEVEL20["bid"]
    assert real["20240808"]["level20_ask"] == DOC_LEVEL20["ask"]
    for f in real.values():
        assert f["crossed_rows"] == 0 and f["mid_half_tick_grid"]


def test_real_stylised_facts(real):
    for f in real.values():
        assert f["spread_1tick_frac"] > 0.98
        assert f["trade_sign_acf"][0] > 0.7 and f["order_sign_acf"][0] > 0.3
    assert max(f["ret1s_excess_kurtosis"] for f in real.values()) > 3
    assert _mean(real, "absret1s_acf_mean_1_10") > 0


# tolerance bands (docs/SYNTH.md, "Tolerances"): synthetic / mean of the two captures
RATIO_BANDS = {
    "ret1s_std_ticks": (0.5, 2.0),
    "ret10s_std_ticks": (0.5, 2.0),
    "best_bid_changes_per_s": (0.4, 2.0),
    "best_bid_jump_median_ticks": (0.5, 2.0),
    "trades_per_s": (0.67, 1.5),
    "orders_per_s": (0.67, 1.5),
    "orders_per_s_var_over_mean": (0.5, 2.0),
    "order_qty_q50": (0.5, 2.0),
    "order_qty_q90": (0.5, 2.0),
    "order_qty_q99": (0.5, 2.0),
    "trade_qty_q50": (0.5, 3.0),
    "trade_qty_q99": (0.5, 2.0),
    "trade_qty_mean": (0.5, 2.0),
    "l1_size_median": (0.5, 2.0),
}


@pytest.mark.parametrize("key", sorted(RATIO_BANDS))
def test_synthetic_within_ratio_band(real, syn, key):
    lo, hi = RATIO_BANDS[key]
    ratio = syn[key] / _mean(real, key)
    assert lo <= ratio <= hi, (key, syn[key], _mean(real, key))


def test_synthetic_shape_facts(real, syn):
    assert syn["spread_1tick_frac"] >= min(f["spread_1tick_frac"] for f in real.values()) - 0.03
    assert syn["crossed_rows"] == 0 and syn["mid_half_tick_grid"]
    assert syn["ret1s_excess_kurtosis"] > 3
    assert abs(syn["ret1s_acf1"]) < 0.3
    assert min(syn["absret1s_acf"]) > 0
    real_t1 = np.mean([f["trade_sign_acf"][0] for f in real.values()])
    real_o1 = np.mean([f["order_sign_acf"][0] for f in real.values()])
    assert abs(syn["trade_sign_acf"][0] - real_t1) < 0.1
    assert abs(syn["order_sign_acf"][0] - real_o1) < 0.1
    assert abs(syn["buy_frac"] - 0.5) < 0.05
    level20 = np.mean([real["20240808"]["level20_bid"], real["20240808"]["level20_ask"]])
    assert 0.5 <= syn["level_last_distance_median_ticks"] / level20 <= 2.0
