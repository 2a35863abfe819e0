"""The kernels reproduce the hand-worked golden cases of the trading rules v1 and v2.

The cases (rules_v1.json and rules_v2.json: small books worked through the rules by hand,
with the expected metrics) are read from the golden-cases folder next to the checkout, which
is not part of the repository: the tests skip when it is absent. Every case runs on the CPU
kernel here and on the CUDA kernel under numba-cuda's simulator in a subprocess (the
simulator flag must be set before numba is first imported). Counts must match exactly,
money within 1e-9 relative. The order-flow metrics of the v2 cases are checked against their
walkthroughs, and the v2 arguments' bad input against gpu_engine.sweep's refusals.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
# fields of a case's "run" that are sweep() keyword arguments, not configuration fields
MARKET_KEYS = ("contract", "multiplier", "tick_size", "lot_size", "queue", "queue_n")


def load_cases(version: str) -> list[dict]:
    path = GOLDEN / f"rules_{version}.json"
    if not path.is_file():
        pytest.skip(f"{path} not present (the golden-cases folder beside the checkout is not "
                    "part of a fresh clone)")
    return json.loads(path.read_text())["cases"]


def _num(v):
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def run_case(case: dict, device: str = "cpu"):
    """One golden case through gpu_engine.sweep: the signal in bank row 0, a zero regime in
    row 1, the configuration plus the run's per-configuration fields, the run's market."""
    import gpu_engine
    from gpu_engine.data.books.store import Book, Trades

    bk = case["book"]
    trades = None
    if case.get("trades"):
        tr = case["trades"]
        trades = Trades(ts=np.asarray([x["ts"] for x in tr], np.int64),
                        px=np.asarray([x["px"] for x in tr], np.float64),
                        qty=np.asarray([x["qty"] for x in tr], np.float64),
                        side=np.asarray([x["side"] for x in tr], np.int8))
    book = Book.from_arrays(bk["ts"], bk["bid_px"], bk["ask_px"], bk["bid_sz"], bk["ask_sz"],
                            trades=trades)
    bank = np.stack([np.asarray(case["signal"], np.float32), np.zeros(book.T, np.float32)])
    cfg = {k: [_num(v)] for k, v in case["config"].items()}
    run = case["run"]
    cfg.update({k: [_num(v)] for k, v in run.items() if k != "B" and k not in MARKET_KEYS})
    cfg["signal"] = [0]
    cfg["regime"] = [1]
    market = {k: _num(run[k]) for k in MARKET_KEYS if k in run}
    # v1 case 2 has a crossed top at its last tick (bid 50.0 >= ask 49.0), hence allow_crossed
    return gpu_engine.sweep(book, bank, cfg, device=device, buckets=run["B"], allow_crossed=True,
                            **market)


def mismatches(case: dict, ds) -> list[str]:
    """Every expected figure the result does not reproduce (empty when it matches)."""
    ds = ds.isel(config=0)
    exp = case["expected"]
    bad = []

    def check(key, got, want, exact):
        want = _num(want)
        ok = got == want if exact else (got == want or math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0))
        if not ok:
            bad.append(f"{case['name']}: {key} = {got!r}, expected {want!r}")

    for key, want in exp.items():
        if key == "reasons":
            for reason, n in want.items():
                check(f"exits_{reason}", int(ds[f"exits_{reason}"]), n, True)
        elif key in ("trades", "wins"):
            check(key, int(ds[key]), want, True)
        else:
            check(key, float(ds[key]), want, False)
    check("bucket_trades", int(ds["bucket_trades"].sum()), exp["trades"], True)
    check("bucket_wins", int(ds["bucket_wins"].sum()), exp["wins"], True)
    check("bucket_pnl", float(ds["bucket_pnl"].sum()), exp["net_pnl"], False)
    fills = case.get("expected_fills")
    if fills is not None:
        maker = sum(f["liquidity"] == "maker" for f in fills)
        check("maker_fills", int(ds["maker_fills"]), maker, True)
        check("taker_fills", int(ds["taker_fills"]), len(fills) - maker, True)
    return bad


@pytest.mark.parametrize("version,index", [("v1", 0), ("v1", 1), ("v2", 0), ("v2", 1), ("v2", 2), ("v2", 3)])
def test_cpu_kernel_reproduces_golden(version, index):
    cases = load_cases(version)
    assert mismatches(cases[index], run_case(cases[index])) == []


def test_golden_v2_order_flow_figures():
    """The order-flow metrics of the v2 cases, read off their walkthroughs."""
    cases = load_cases("v2")
    got = [run_case(c).isel(config=0) for c in cases]
    names = ("orders_posted", "orders_rejected", "cancels", "maker_fills", "taker_fills")
    table = [tuple(int(ds[n]) for n in names) for ds in got]
    # (a) 1 maker entry, 1 TIF cancel, 1 maker + 1 taker fill; (b) maker entry + maker TP;
    # (c) taker round trip; (d) 2 maker entries (1 rejected) + 1 TP (rejected)
    assert table == [(1, 0, 1, 1, 1), (2, 0, 0, 2, 0), (0, 0, 0, 0, 2), (3, 2, 0, 1, 1)]
    a, b = got[0], got[1]
    assert float(a["maker_fill_ratio"]) == 0.5  # 2 of 4 posted
    assert math.isclose(float(a["fees_maker"]), -0.02, rel_tol=1e-9)
    assert math.isclose(float(a["fees_taker"]), 0.09925, rel_tol=1e-9)
    assert math.isclose(float(a["mean_queue_wait_s"]), 0.020, rel_tol=1e-9)  # t3 - arrival t1
    assert float(b["maker_fill_ratio"]) == 1.0
    # (b) entry arrived t1, filled t2 (10 ms); TP arrived t3, filled t6 (30 ms)
    assert math.isclose(float(b["mean_queue_wait_s"]), 0.020, rel_tol=1e-9)
    assert math.isnan(float(got[2]["maker_fill_ratio"])) and math.isnan(float(got[2]["mean_queue_wait_s"]))


SIM_SCRIPT = r"""
import json, sys
from numba import config
assert config.ENABLE_CUDASIM, "simulator flag not seen by numba"
from gpu_engine.backend import resolve
from tests.test_golden_v2_kernels import load_cases, mismatches, run_case
be = resolve("cuda")
assert be.is_cuda and be.simulated, be
bad, n = [], 0
for version in ("v1", "v2"):
    for case in load_cases(version):
        ds = run_case(case, device="cuda")
        assert ds.attrs["device"] == "cuda" and ds.attrs["simulated"] == 1
        bad += mismatches(case, ds)
        n += 1
print("CHECKED", n, json.dumps(bad))
"""


def test_simulated_cuda_kernel_reproduces_golden():
    load_cases("v1")
    load_cases("v2")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SIM_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CHECKED 6 []" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------
# Bad input of the v2 API: refused by gpu_engine.sweep before any launch, naming the field (and
# the first bad configuration). Needs no golden file and compiles nothing.

def _tiny():
    from gpu_engine.data.books.store import Book

    T = 4
    book = Book.from_arrays(np.arange(T, dtype=np.int64) * 10_000_000, np.full((T, 1), 99.5),
                            np.full((T, 1), 100.0), np.ones((T, 1)), np.ones((T, 1)))
    return book, np.zeros((1, T), np.float32)


@pytest.mark.parametrize("configs,market,match", [
    ({"entry_type": ["taker", "maker"]}, {}, r"tick_size: configuration 1 uses maker orders \(entry_type"),
    ({"tp_type": [0, 1], "take_profit": [5.0, 5.0]}, {}, r"tick_size: configuration 1 .*tp_type"),
    ({"entry_offset": [0, -1]}, {"tick_size": 0.5}, r"'entry_offset': configuration 1 has -1"),
    ({"entry_offset": [0.0, 1.5]}, {"tick_size": 0.5}, r"'entry_offset': configuration 1 has 1.5, not an integer"),
    ({"entry_tif": [1e6, 0.0]}, {}, r"'entry_tif': configuration 1 has 0.0"),
    ({"entry_type": ["taker", "limit"]}, {}, r"'entry_type': configuration 1 has 'limit'"),
    ({"maker_fee_bps": [1.0, float("inf")]}, {}, r"'maker_fee_bps': configuration 1"),
    ({"cancel_latency": [0, -5]}, {}, r"'cancel_latency': configuration 1 has -5"),
    ({}, {"lot_size": -1.0}, r"lot_size must be finite and >= 0"),
    ({}, {"queue": "fifo"}, r"queue: unknown queue model 'fifo'"),
    ({}, {"contract": "inverse"}, r"multiplier: an inverse contract needs its multiplier"),
    ({}, {"contract": "quanto"}, r"contract must be one of"),
    ({}, {"tick_size": 0.0}, r"tick_size must be finite and > 0"),
    ({}, {"multiplier": -100.0}, r"multiplier must be finite and > 0"),
    ({}, {"queue": "power", "queue_n": float("nan")}, r"queue_n must be finite and > 0"),
])
def test_bad_v2_input_is_refused(configs, market, match):
    import gpu_engine

    book, bank = _tiny()
    cfg = {"signal": [0, 0], "entry": [0.5, 0.5], **configs}
    with pytest.raises(ValueError, match=match):
        gpu_engine.sweep(book, bank, cfg, device="cpu", **market)


def test_bad_trades_are_refused_for_maker_runs_only():
    """A maker run reads the trades: unsorted ones are refused (a taker run never reads them)."""
    import gpu_engine
    from gpu_engine.data.books.store import Trades
    from gpu_engine.sweep import validate_trades

    book, bank = _tiny()
    book.trades = Trades(ts=np.array([5, 3], np.int64), px=np.array([99.5, 99.5]),
                         qty=np.array([1.0, 1.0]), side=np.array([-1, -1], np.int8))
    with pytest.raises(ValueError, match=r"book.trades.ts is not non-decreasing: row 1"):
        gpu_engine.sweep(book, bank, {"signal": [0], "entry": [0.5], "entry_type": ["maker"]},
                         device="cpu", tick_size=0.5)
    book.trades = Trades(ts=np.array([3, 5], np.int64), px=np.array([99.5, 0.0]),
                         qty=np.array([1.0, 1.0]), side=np.array([-1, 2], np.int8))
    with pytest.raises(ValueError, match=r"book.trades.px row 1"):
        validate_trades(book)


def test_tick_size_defaults_to_the_book_attrs():
    """A book store's tick_size attribute serves maker orders when no tick_size is given."""
    from gpu_engine.sweep import _book_tick_size

    book, _ = _tiny()
    assert _book_tick_size(book) is None
    book.attrs["tick_size"] = 0.5
    assert _book_tick_size(book) == 0.5
    book.attrs["tick_size"] = "n/a"
    assert _book_tick_size(book) is None
