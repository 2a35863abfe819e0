"""The chunked CPU kernel gives the same bits for every tick-chunk size.

kernels/cpu.py runs ticks in chunks and carries each configuration's state across chunk
boundaries in arrays; strategy.run_one (the CUDA thread body) runs all ticks in one call.
On random books with trades, banks, taker and maker configurations and markets (the
generators of tests/test_kernels_equivalence.py, built on those of
tests/test_kernel_oracle.py), chunks of 1, 2, a size that does not divide T, T - 1, T, and
larger than T, and the default, all give raw sums and buckets bit-identical to one chunk and
to run_one (its plain-Python twin, the text the simulated CUDA kernel runs): maker orders
resting, queue positions and cancels in flight cross chunk boundaries like open positions.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine import kernels
from gpu_engine.backend import resolve
from gpu_engine.strategy import python_twin
from gpu_engine.sweep import market_array, normalize_configs
from tests.test_kernel_oracle import random_bank
from tests.test_kernels_equivalence import random_market, random_v2_book, random_v2_configs


def _single_call(book, cfg, raw, bpnl, btr, bwin):
    """strategy.run_one over every configuration, as plain Python (its twin: the same text
    the simulated CUDA kernel runs; compiling it again would cost a minute of CI)."""
    for c in range(cfg[0].shape[0]):
        _RUN_ONE(c, book, cfg, raw, bpnl, btr, bwin)


_RUN_ONE = python_twin("run_one")


def _inputs(seed: int, T: int, L: int, C: int):
    rng = np.random.default_rng(seed)
    book, tick = random_v2_book(rng, T, L)
    bank = np.ascontiguousarray(random_bank(rng, T), dtype=np.float32)
    cfg = normalize_configs(random_v2_configs(rng, C, T, int(book.ts[-1] - book.ts[0])), bank.shape[0])
    mkt = market_array(**random_market(rng, tick))
    return kernels.prepare_book(book, resolve("cpu"), market=mkt), bank, cfg


def _assert_same(a, b, what):
    for name, x, y in zip(("raw", "bucket_pnl", "bucket_trades", "bucket_wins"), a, b):
        assert x.dtype == y.dtype, (what, name)
        # bit-identical: compare the bytes (NaN payloads and signed zeros included)
        assert x.tobytes() == y.tobytes(), (what, name, x, y)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 90), L=st.integers(1, 4),
       B=st.integers(1, 5), C=st.integers(1, 24), odd=st.integers(2, 40))
def test_chunk_size_does_not_change_results(seed, T, L, B, C, odd):
    book, bank, cfg = _inputs(seed, T, L, C)
    one = kernels.run(resolve("cpu"), book, bank, cfg, B, chunk=T)
    ref = kernels.allocate(C, B)
    _single_call(book.as_args() + (bank,), tuple(cfg[f] for f in kernels.FIELDS), *ref)
    _assert_same(one, ref, "one chunk vs run_one")
    for chunk in (1, 2, odd, max(1, T - 1), T + 1, 10 * T + 7, None):
        got = kernels.run(resolve("cpu"), book, bank, cfg, B, chunk=chunk)
        _assert_same(got, one, f"chunk={chunk}, T={T}")


def test_chunks_cross_open_positions_and_batches():
    """A trading case: positions and maker orders are open across chunk boundaries, with
    several batches."""
    from gpu_engine.enums import R_MAKER_FILLS

    book, bank, cfg = _inputs(11, 400, 3, 60)
    one = kernels.run(resolve("cpu"), book, bank, cfg, 4, chunk=400)
    assert one[0][:, 0].sum() > 100  # trades happened, so the state crossed boundaries
    assert one[0][:, R_MAKER_FILLS].sum() > 20  # and maker orders rested across them
    for chunk, batch in ((1, 7), (13, 60), (64, 16), (399, 1000)):
        got = kernels.run(resolve("cpu"), book, bank, cfg, 4, batch=batch, chunk=chunk)
        _assert_same(got, one, f"chunk={chunk}, batch={batch}")


@pytest.mark.parametrize("chunk", [0, -3, 2.5])
def test_bad_chunk_is_refused(chunk):
    book, bank, cfg = _inputs(1, 10, 2, 3)
    with pytest.raises(ValueError, match="chunk"):
        kernels.run(resolve("cpu"), book, bank, cfg, 2, chunk=chunk)
