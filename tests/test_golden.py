"""The kernels reproduce the hand-worked golden cases of the trading rules (docs/RULES.md).

The two cases (described in docs/TESTING.md) are read from rules_v1.json in the golden-cases
folder next to the checkout, which is not part of the repository: the tests skip when it is
absent. Counts must match exactly and money within 1e-9 relative.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import gpu_engine
from gpu_engine.data.books.store import Book

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "rules_v1.json"


def _cases():
    if not GOLDEN.is_file():
        pytest.skip(f"{GOLDEN} not present (../shared is not part of a fresh clone)")
    return json.loads(GOLDEN.read_text())["cases"]


def _num(v):
    return float(v) if isinstance(v, str) else v


def _run(case, device="cpu"):
    bk = case["book"]
    book = Book.from_arrays(bk["ts"], bk["bid_px"], bk["ask_px"], bk["bid_sz"], bk["ask_sz"])
    bank = np.stack([np.asarray(case["signal"], np.float32), np.zeros(book.T, np.float32)])
    cfg = {k: [_num(v)] for k, v in case["config"].items()}
    cfg.update({k: [_num(v)] for k, v in case["run"].items() if k != "B"})
    cfg["signal"] = [0]
    cfg["regime"] = [1]
    # case 2 has a crossed top at its last tick (bid 50.0 >= ask 49.0), hence allow_crossed
    return gpu_engine.sweep(book, bank, cfg, device=device, buckets=case["run"]["B"],
                            allow_crossed=True)


@pytest.mark.parametrize("index", [0, 1])
def test_cpu_kernel_reproduces_golden(index):
    case = _cases()[index]
    ds = _run(case).isel(config=0)
    exp = case["expected"]
    for key, want in exp.items():
        if key == "reasons":
            for reason, n in want.items():
                assert int(ds[f"exits_{reason}"]) == n, reason
        elif key in ("trades", "wins"):
            assert int(ds[key]) == want, key
        else:
            got = float(ds[key])
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0) or got == want, (key, got, want)
    assert int(ds["bucket_trades"].sum()) == exp["trades"]
    assert int(ds["bucket_wins"].sum()) == exp["wins"]
    assert math.isclose(float(ds["bucket_pnl"].sum()), exp["net_pnl"], rel_tol=1e-9)


def test_crossed_golden_book_is_refused_without_the_flag():
    case = _cases()[1]
    bk = case["book"]
    book = Book.from_arrays(bk["ts"], bk["bid_px"], bk["ask_px"], bk["bid_sz"], bk["ask_sz"])
    bank = np.asarray(case["signal"], np.float32)[None, :]
    with pytest.raises(ValueError, match="row 7 is crossed"):
        gpu_engine.sweep(book, bank, {"signal": [0], "entry": [0.5]}, device="cpu")
