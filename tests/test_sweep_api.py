"""gpu_engine.sweep: configuration validation before any launch, book refusal, Dataset shape."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import gpu_engine
from gpu_engine.data.books.store import Book
from gpu_engine.enums import CONFIG_FIELDS, METRICS


def small_book(T=50, L=3):
    rng = np.random.default_rng(3)
    mid = 100 + np.cumsum(rng.normal(0, 0.05, T))
    bid = np.round(mid - 0.05, 2)[:, None] - 0.01 * np.arange(L)
    ask = bid[:, :1] + 0.02 + 0.01 * np.arange(L)
    sz = np.full((T, L), 2.0, np.float32)
    return Book.from_arrays(np.arange(T) * 1_000_000, bid, ask, sz, sz.copy())


def small_bank(T=50):
    rng = np.random.default_rng(4)
    return rng.uniform(-1, 1, (2, T)).astype(np.float32)


class FakeBank:
    def __init__(self, values):
        self.values = values
        self.table = pd.DataFrame({"name": ["a", "b"]})
        self.names = ["a", "b"]


def test_dataset_layout_and_order_is_the_callers():
    book, bank = small_book(), small_bank()
    cfg = {"signal": [1, 0, 1, 0], "entry": [0.2, 0.3, 0.4, 0.5], "stop_loss": [5.0, np.inf, 10.0, 20.0]}
    ds = gpu_engine.sweep(book, FakeBank(bank), cfg, device="cpu", buckets=4)
    assert ds.sizes["config"] == 4 and ds.sizes["bucket"] == 4
    assert set(METRICS) <= set(ds.data_vars)
    assert set(CONFIG_FIELDS) <= set(ds.coords)
    np.testing.assert_array_equal(ds["signal"].values, [1, 0, 1, 0])
    assert ds["latency"].dtype == np.int64 and ds["side"].dtype == np.int8
    assert ds["bucket_trades"].dtype == np.int32 and ds["bucket_pnl"].dtype == np.float64
    np.testing.assert_array_equal(ds["bucket_trades"].sum("bucket").values, ds["trades"].values)
    assert ds.attrs["bank_rows"] == ["a", "b"]
    # each configuration alone gives the same numbers (sorting by signal row is undone)
    for i in range(4):
        one = gpu_engine.sweep(book, bank, {k: [v[i]] for k, v in cfg.items()}, device="cpu", buckets=4)
        for name in METRICS:
            np.testing.assert_array_equal(one[name].values, ds[name].values[i:i + 1])


def test_dataframe_and_batches():
    book, bank = small_book(), small_bank()
    df = pd.DataFrame({"signal": [0, 1, 1, 0, 1], "entry": [0.1, 0.2, 0.3, 0.4, 0.5], "side": [1, -1, 0, 0, 1]})
    a = gpu_engine.sweep(book, bank, df, device="cpu", buckets=2)
    b = gpu_engine.sweep(book, bank, df, device="cpu", buckets=2, batch=2)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)


@pytest.mark.parametrize("field,values,needle", [
    ("entry", [0.5, -0.1], "configuration 1"),
    ("entry", [0.0], "configuration 0"),
    ("exit", [0.5, np.nan], "NaN"),
    ("fee_bps", [1.0, 2.0, -1.0], "configuration 2"),
    ("signal", [0, 2], "configuration 1"),
    ("regime", [-1], "configuration 0"),
    ("latency", [0, -5], "configuration 1"),
    ("size_frac", [1.5], "size_frac"),
    ("size_frac", [0.0], "size_frac"),
    ("take_profit", [0.0], "take_profit"),
    ("stop_loss", [-1.0], "stop_loss"),
    ("max_hold", [0.0], "max_hold"),
    ("max_qty", [0.0], "max_qty"),
    ("capital", [0.0], "capital"),
    ("side", [2], "side"),
    ("cooldown", [-1], "cooldown"),
    ("cooldown", [1.5], "not an integer"),
    ("band", [-0.5], "band"),
])
def test_bad_configurations_are_refused(field, values, needle):
    cfg = {"signal": [0] * len(values), "entry": [0.5] * len(values), field: values}
    with pytest.raises(ValueError, match=field) as err:
        gpu_engine.sweep(small_book(), small_bank(), cfg, device="cpu")
    assert needle in str(err.value)


def test_missing_unknown_and_ragged_fields():
    book, bank = small_book(), small_bank()
    with pytest.raises(ValueError, match="'entry' is required"):
        gpu_engine.sweep(book, bank, {"signal": [0]}, device="cpu")
    with pytest.raises(ValueError, match="unknown config field"):
        gpu_engine.sweep(book, bank, {"signal": [0], "entry": [1.0], "stoploss": [1.0]}, device="cpu")
    with pytest.raises(ValueError, match="has 2 values, others have 3"):
        gpu_engine.sweep(book, bank, {"signal": [0, 1], "entry": [1.0, 1, 1]}, device="cpu")
    with pytest.raises(ValueError, match="bank has 49 ticks"):
        gpu_engine.sweep(book, bank[:, :49], {"signal": [0], "entry": [1.0]}, device="cpu")


def test_bad_books_are_refused():
    bank = small_bank()
    cfg = {"signal": [0], "entry": [0.5]}
    b = small_book()
    b.ts[10] = b.ts[9] - 1
    with pytest.raises(ValueError, match="row 10"):
        gpu_engine.sweep(b, bank, cfg, device="cpu")
    b = small_book()
    b.ask_px[7, 1] = np.nan
    with pytest.raises(ValueError, match="ask_px row 7 level 1"):
        gpu_engine.sweep(b, bank, cfg, device="cpu")
    b = small_book()
    b.bid_px[12, 0] = b.ask_px[12, 0]
    with pytest.raises(ValueError, match="row 12 is crossed"):
        gpu_engine.sweep(b, bank, cfg, device="cpu")
    ds = gpu_engine.sweep(b, bank, cfg, device="cpu", allow_crossed=True)
    assert ds.sizes["config"] == 1
    # an absent level (NaN price, size 0) is fine
    b = small_book()
    b.bid_px[5, 2] = np.nan
    b.bid_sz[5, 2] = 0.0
    gpu_engine.sweep(b, bank, cfg, device="cpu")


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, gpu_engine; print('numba' in sys.modules, 'cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
