"""The CUDA kernel under numba-cuda's simulator == the CPU kernel, bit for bit.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so the comparison runs in a
subprocess (`python -c SCRIPT` with the flag) and the rest of the suite keeps normal numba.
Small sizes (the simulator runs ~1e5 config-ticks/s):
- rules v1: random books and configurations from tests/test_kernel_oracle.py, several
  batches (batch=16) so batch offsets are exercised too;
- rules v2 (hypothesis): random books with trades (`random_v2_book`), taker and maker
  configurations (`random_v2_configs`: maker entries with offsets, times in force and
  cancel latencies, maker take profits, maker fees and rebates) on a random market
  (`random_market`: linear or inverse contracts, multipliers, lot sizes, every queue
  model).
The generators are shared with tests/test_kernel_chunks.py; a CPU-only test checks that they
do reach every maker branch (fills, rejections, cancels, both contracts, every queue model).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gpu_engine.data.books.store import Book, Trades
from tests.test_kernel_oracle import random_configs

REPO = Path(__file__).resolve().parents[1]


def random_v2_book(rng: np.random.Generator, T: int, L: int) -> tuple[Book, float]:
    """A random book on a price grid (like test_kernel_oracle.random_book: empty levels, blank
    sides, wide spreads, repeated timestamps) with trades around the touch: sellers at, below
    and above the previous best bid, buyers around the previous best ask, some after the
    last tick. Returns (book, tick size)."""
    tick = float(rng.choice([0.01, 0.5, 1.0]))
    mid = 100.0 + np.cumsum(rng.normal(0.0, 2 * tick, T))
    mid = np.maximum(mid, 20 * tick * L + 10)
    spread = tick * rng.integers(1, 4, T).astype(float)
    wide = rng.random(T) < 0.05
    spread[wide] *= 10.0
    bid0 = np.round((mid - spread / 2) / tick) * tick
    ask0 = bid0 + np.maximum(np.round(spread / tick), 1) * tick
    steps = tick * rng.integers(1, 3, (T, L)).astype(float)
    steps[:, 0] = 0.0
    bid_px = bid0[:, None] - np.cumsum(steps, axis=1)
    ask_px = ask0[:, None] + np.cumsum(steps, axis=1)
    bid_sz = rng.choice([0.5, 1.0, 2.0, 3.5, 10.0], (T, L)).astype(np.float32)
    ask_sz = rng.choice([0.5, 1.0, 2.0, 3.5, 10.0], (T, L)).astype(np.float32)
    for px, sz in ((bid_px, bid_sz), (ask_px, ask_sz)):
        empty = rng.random((T, L)) < 0.1
        blank = rng.random(T) < 0.04
        empty |= blank[:, None]
        px[empty] = np.nan
        sz[empty] = 0.0
    ts = np.cumsum(rng.choice([0, 1_000_000, 2_000_000, 5_000_000, 20_000_000], T)).astype(np.int64)
    t_ts, t_px, t_qty, t_side = [], [], [], []
    for t in range(1, T + 1):
        lo = int(ts[t - 1])
        hi = int(ts[t]) if t < T else lo + 30_000_000
        for _ in range(int(rng.choice([0, 0, 1, 2, 3]))):
            side = int(rng.choice([-1, 1]))
            if side < 0:
                p = bid0[t - 1] + tick * float(rng.choice([-2, -1, 0, 0, 0, 1]))
            else:
                p = ask0[t - 1] + tick * float(rng.choice([-1, 0, 0, 0, 1, 2]))
            t_ts.append(int(rng.integers(lo, hi + 1)))
            t_px.append(max(p, tick))
            t_qty.append(float(rng.choice([0.5, 1.0, 2.0, 3.5, 10.0])))
            t_side.append(side)
    order = np.argsort(np.asarray(t_ts, np.int64), kind="stable")
    trades = Trades(ts=np.asarray(t_ts, np.int64)[order], px=np.asarray(t_px, np.float64)[order],
                    qty=np.asarray(t_qty, np.float64)[order], side=np.asarray(t_side, np.int8)[order])
    return Book.from_arrays(ts, bid_px, ask_px, bid_sz, ask_sz, trades=trades), tick


def random_v2_configs(rng: np.random.Generator, C: int, T: int, span_ns: int) -> dict[str, np.ndarray]:
    """random_configs (every v1 rule) plus the v2 fields: half maker entries (0-2 ticks
    behind the touch, a time in force or none, cancel latencies from 0 to longer than the
    data), half maker take profits, maker fees from a rebate to a fee."""
    cfg = random_configs(rng, C, T, span_ns)
    span = max(span_ns, 2_000_000)
    cfg["entry_type"] = rng.integers(0, 2, C)
    cfg["tp_type"] = rng.integers(0, 2, C)
    cfg["entry_offset"] = rng.choice([0, 0, 1, 2], C)
    cfg["entry_tif"] = np.where(rng.random(C) < 0.4, np.inf, rng.uniform(1e6, max(span / 3, 2e6), C))
    cfg["maker_fee_bps"] = rng.choice([-1.0, 0.0, 2.0], C)
    cfg["cancel_latency"] = rng.choice(np.array([0, 1_000_000, 5_000_000, 20_000_000, span_ns + 1],
                                                np.int64), C)
    return cfg


def random_market(rng: np.random.Generator, tick: float) -> dict:
    """sweep() keyword arguments: a linear or inverse contract, a multiplier, a lot size
    (0 = continuous) and a queue model."""
    contract = str(rng.choice(["linear", "inverse"]))
    return {"contract": contract,
            "multiplier": float(rng.choice([1.0, 0.5, 100.0] if contract == "linear" else [10.0, 100.0])),
            "tick_size": tick,
            "lot_size": float(rng.choice([0.0, 0.1, 0.5, 1.0])),
            "queue": str(rng.choice(["risk_averse", "power", "log"])),
            "queue_n": float(rng.choice([1.0, 2.0, 3.5]))}


V1_SCRIPT = r"""
import numpy as np
from numba import config
assert config.ENABLE_CUDASIM, "simulator flag not seen by numba"
import gpu_engine
from gpu_engine.backend import resolve
from tests.test_kernel_oracle import random_bank, random_book, random_configs

be = resolve("cuda")
assert be.is_cuda and be.simulated, be
checked = 0
for seed, (T, L, C) in enumerate([(300, 4, 64), (120, 2, 40), (1, 1, 8), (250, 5, 50)]):
    rng = np.random.default_rng(1000 + seed)
    book = random_book(rng, T, L)
    bank = random_bank(rng, T)
    cfg = random_configs(rng, C, T, int(book.ts[-1] - book.ts[0]))
    a = gpu_engine.sweep(book, bank, cfg, device="cuda", buckets=3, batch=16)
    b = gpu_engine.sweep(book, bank, cfg, device="cpu", buckets=3)
    assert a.attrs["device"] == "cuda" and a.attrs["simulated"] == 1
    for name in list(a.data_vars):
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (seed, name, x, y)
    checked += C
    assert int(b["trades"].sum()) > 0 or T == 1
print("EQUAL", checked)
"""

V2_SCRIPT = r"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import config
assert config.ENABLE_CUDASIM, "simulator flag not seen by numba"
import gpu_engine
from gpu_engine.backend import resolve
from tests.test_kernel_oracle import random_bank
from tests.test_kernels_equivalence import random_market, random_v2_book, random_v2_configs

be = resolve("cuda")
assert be.is_cuda and be.simulated, be
seen = {"configs": 0, "maker_fills": 0, "trades": 0}

@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 90), L=st.integers(1, 4), B=st.integers(1, 4))
def check(seed, T, L, B):
    rng = np.random.default_rng(seed)
    book, tick = random_v2_book(rng, T, L)
    bank = random_bank(rng, T)
    cfg = random_v2_configs(rng, 16, T, int(book.ts[-1] - book.ts[0]))
    market = random_market(rng, tick)
    a = gpu_engine.sweep(book, bank, cfg, device="cuda", buckets=B, batch=8, **market)
    b = gpu_engine.sweep(book, bank, cfg, device="cpu", buckets=B, **market)
    assert a.attrs["simulated"] == 1
    for name in list(a.data_vars):
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (seed, T, L, B, market, name, x, y)
    seen["configs"] += 16
    seen["maker_fills"] += int(b["maker_fills"].sum())
    seen["trades"] += int(b["trades"].sum())

check()
print("EQUAL", seen["configs"], "MAKER", seen["maker_fills"], "TRADES", seen["trades"])
"""


def _simulated(script: str) -> str:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_cuda_simulator_equals_cpu_kernel():
    out = _simulated(V1_SCRIPT)
    assert "EQUAL 162" in out, out


def test_cuda_simulator_equals_cpu_kernel_v2():
    """Maker orders, trades, inverse contracts, lot sizes, every queue model."""
    out = _simulated(V2_SCRIPT)
    words = out.split()
    assert words[0] == "EQUAL" and int(words[1]) >= 16 * 20, out
    assert int(words[3]) > 0 and int(words[5]) > 0, out  # maker fills and trades happened


def test_v2_generators_reach_every_maker_branch():
    """CPU only: the random families above post, fill (by trades through and at the price,
    and by crossing), reject, cancel, close by maker take profits, on both contracts and
    with every queue model (guards the generators, not the kernels)."""
    import gpu_engine
    from tests.test_kernel_oracle import random_bank

    rng = np.random.default_rng(3)
    total = {k: 0.0 for k in ("orders_posted", "orders_rejected", "cancels", "maker_fills",
                              "taker_fills", "exits_take", "trades")}
    contracts, queues = set(), set()
    for _ in range(8):
        book, tick = random_v2_book(rng, 120, 3)
        bank = random_bank(rng, 120)
        cfg = random_v2_configs(rng, 40, 120, int(book.ts[-1] - book.ts[0]))
        market = random_market(rng, tick)
        ds = gpu_engine.sweep(book, bank, cfg, device="cpu", buckets=3, **market)
        for k in total:
            total[k] += float(ds[k].sum())
        contracts.add(market["contract"])
        queues.add(market["queue"])
    assert all(v > 0 for v in total.values()), total
    assert contracts == {"linear", "inverse"} and queues == {"risk_averse", "power", "log"}
