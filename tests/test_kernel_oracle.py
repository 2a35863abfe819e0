"""Property test: the CPU kernel (through gpu_engine.sweep) == the plain-Python oracle.

Random books (empty levels, one side blank for a while, wide spreads, repeated timestamps,
latency longer than the data) and random configurations (every exit kind, regime bands,
NaN signals). Trade and win counts (per configuration and per bucket) must be identical;
PnL, every metric and every bucket PnL within 1e-9 relative, NaN == NaN. An absolute floor of
1e-12 (in the metric's own unit) covers values that are differences landing on ~0 (a Wilson
bound at 0, a drawdown of a rounding error), where a relative test is meaningless.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_engine
from gpu_engine import oracle
from gpu_engine.data.books.store import Book
from gpu_engine.enums import CONFIG_FIELDS, METRICS

REL = 1e-9
ABS = 1e-12


def random_book(rng: np.random.Generator, T: int, L: int) -> Book:
    tick = float(rng.choice([0.01, 0.5, 1.0]))
    mid = 100.0 + np.cumsum(rng.normal(0.0, 4 * tick, T))
    mid = np.maximum(mid, 20 * tick * L + 10)
    spread = tick * rng.integers(1, 4, T).astype(float)
    wide = rng.random(T) < 0.1
    spread[wide] *= 25.0  # wide spreads
    bid0 = np.round((mid - spread / 2) / tick) * tick
    ask0 = bid0 + np.maximum(np.round(spread / tick), 1) * tick
    steps = tick * rng.integers(1, 3, (T, L)).astype(float)
    steps[:, 0] = 0.0
    bid_px = bid0[:, None] - np.cumsum(steps, axis=1)
    ask_px = ask0[:, None] + np.cumsum(steps, axis=1)
    bid_sz = rng.choice([0.5, 1.0, 2.0, 3.5, 10.0], (T, L)).astype(np.float32)
    ask_sz = rng.choice([0.5, 1.0, 2.0, 3.5, 10.0], (T, L)).astype(np.float32)
    for px, sz in ((bid_px, bid_sz), (ask_px, ask_sz)):
        empty = rng.random((T, L)) < 0.15  # empty levels anywhere in the ladder
        blank = rng.random(T) < 0.08  # the whole side blank on some rows
        empty |= blank[:, None]
        px[empty] = np.nan
        sz[empty] = 0.0
    ts = np.cumsum(rng.choice([0, 1_000_000, 2_000_000, 5_000_000, 20_000_000], T)).astype(np.int64)
    return Book.from_arrays(ts, bid_px, ask_px, bid_sz, ask_sz)


def random_configs(rng: np.random.Generator, C: int, T: int, span_ns: int) -> dict[str, np.ndarray]:
    def maybe_inf(values, p=0.3):
        values = np.asarray(values, dtype=np.float64)
        return np.where(rng.random(C) < p, np.inf, values)

    return {
        "signal": rng.integers(0, 2, C),
        "entry": rng.uniform(0.05, 0.9, C),
        "exit": maybe_inf(rng.uniform(0.0, 0.8, C)),
        "side": rng.integers(-1, 2, C),
        "regime": np.full(C, 2),
        "band": maybe_inf(rng.uniform(0.0, 1.0, C), p=0.5),
        "take_profit": maybe_inf(rng.uniform(1.0, 300.0, C)),
        "stop_loss": maybe_inf(rng.uniform(1.0, 300.0, C)),
        "max_hold": maybe_inf(rng.uniform(1e6, max(span_ns, 2e6) / 2, C)),
        "size_frac": rng.uniform(0.01, 1.0, C),
        "max_qty": maybe_inf(rng.uniform(0.1, 20.0, C)),
        "cooldown": rng.integers(0, 4, C),
        "fee_bps": rng.choice([0.0, 1.0, 7.5, 10.0], C),
        # 0, typical, and longer than the data (fills never happen)
        "latency": rng.choice(np.array([0, 1_000_000, 3_000_000, 20_000_000, span_ns + 1], np.int64), C),
        "capital": rng.choice([100.0, 1_000.0, 10_000.0], C),
        # rules v2 fields, all taker (the v2 generators are in tests/test_kernels_equivalence.py)
        "entry_type": np.zeros(C, np.int8),
        "entry_offset": np.zeros(C, np.int64),
        "entry_tif": np.full(C, np.inf),
        "tp_type": np.zeros(C, np.int8),
        "maker_fee_bps": np.zeros(C),
        "cancel_latency": np.zeros(C, np.int64),
    }


def random_bank(rng: np.random.Generator, T: int) -> np.ndarray:
    bank = rng.uniform(-1.0, 1.0, (3, T)).astype(np.float32)
    bank[rng.random((3, T)) < 0.05] = np.nan  # NaN signals and regimes
    return bank


def same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= REL * max(abs(a), abs(b)) + ABS


def check(book: Book, bank: np.ndarray, cfg: dict[str, np.ndarray], B: int) -> None:
    ds = gpu_engine.sweep(book, bank, cfg, device="cpu", buckets=B)
    for i in range(len(cfg["signal"])):
        one = {k: v[i].item() for k, v in cfg.items()}
        res = oracle.run(book, bank[one["signal"]], bank[one["regime"]], one, B)
        where = f"config {i}: {one}"
        for name in METRICS:
            got = float(ds[name].values[i])
            want = float(res.metrics[name])
            if name in ("trades", "wins") or name.startswith("exits_"):
                assert got == want, (name, got, want, where)
            else:
                assert same(got, want), (name, got, want, where)
        np.testing.assert_array_equal(ds["bucket_trades"].values[i], res.bucket_trades, err_msg=where)
        np.testing.assert_array_equal(ds["bucket_wins"].values[i], res.bucket_wins, err_msg=where)
        for b in range(B):
            assert same(float(ds["bucket_pnl"].values[i, b]), float(res.bucket_pnl[b])), (b, where)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 60), L=st.integers(1, 4),
       B=st.integers(1, 5))
def test_cpu_kernel_equals_oracle(seed, T, L, B):
    rng = np.random.default_rng(seed)
    book = random_book(rng, T, L)
    bank = random_bank(rng, T)
    span = int(book.ts[-1] - book.ts[0])
    check(book, bank, random_configs(rng, 12, T, span), B)


def test_trading_configs_cover_every_exit_reason():
    """The random families above do reach every branch (guards the generator, not the kernel)."""
    rng = np.random.default_rng(7)
    seen = np.zeros(5)
    trades = 0
    for _ in range(6):
        book = random_book(rng, 80, 3)
        bank = random_bank(rng, 80)
        cfg = random_configs(rng, 40, 80, int(book.ts[-1] - book.ts[0]))
        ds = gpu_engine.sweep(book, bank, cfg, device="cpu", buckets=4)
        seen += [float(ds[f"exits_{r}"].sum()) for r in ("stop", "take", "time", "signal", "end")]
        trades += int(ds["trades"].sum())
        check(book, bank, {k: v[:8] for k, v in cfg.items()}, 4)
    assert trades > 0 and (seen > 0).all(), seen
    assert set(CONFIG_FIELDS) == set(cfg)
