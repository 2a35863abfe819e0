"""A maker order's level search (strategy.level_size) answers the same with the shortcuts of a
book whose displayed levels are in price order (kernels.levels_sorted) as with the whole scan,
and the kernel on a book whose levels are out of order (the whole scan) still equals the oracle."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine.kernels import levels_sorted
from gpu_engine.strategy import level_size


def _book(rng, T: int, L: int, tick: float):
    best = np.round(rng.uniform(100, 101, T) / tick)
    steps = rng.integers(1, 4, (T, L))
    bid = (best[:, None] - np.cumsum(steps, axis=1) + steps[:, :1]) * tick
    ask = (best[:, None] + 1 + np.cumsum(steps, axis=1) - steps[:, :1]) * tick
    bsz = rng.uniform(0.1, 2.0, (T, L)).astype(np.float32)
    asz = rng.uniform(0.1, 2.0, (T, L)).astype(np.float32)
    for sz, px in ((bsz, bid), (asz, ask)):
        sz[rng.random((T, L)) < 0.2] = 0.0           # undisplayed levels anywhere
        px[rng.random((T, L)) < 0.05] = np.nan       # and missing prices (size 0 there)
        sz[~np.isfinite(px)] = 0.0
    return bid, bsz, ask, asz


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), L=st.integers(1, 8))
def test_sorted_shortcuts_equal_the_whole_scan(seed, L):
    rng = np.random.default_rng(seed)
    tick = 0.01
    bid, bsz, ask, asz = _book(rng, 40, L, tick)
    assert levels_sorted(bid, bsz, ask, asz)
    for t in range(40):
        for buy, px, sz in ((True, bid, bsz), (False, ask, asz)):
            centre = int(round(100.5 / tick))
            for k in range(centre - 3 * L - 60, centre + 3 * L + 60, 3):
                fast = level_size(px, sz, t, k, tick, buy, True)
                slow = level_size(px, sz, t, k, tick, buy, False)
                assert fast == slow or (math.isinf(fast) and math.isinf(slow)), (t, buy, k, fast, slow)


def test_levels_out_of_order_are_detected():
    rng = np.random.default_rng(3)
    bid, bsz, ask, asz = _book(rng, 30, 5, 0.01)
    bsz[:] = 1.0
    bid[7, 1], bid[7, 3] = bid[7, 3], bid[7, 1]
    bid[7] = np.where(np.isfinite(bid[7]), bid[7], 99.0)
    assert not levels_sorted(bid, bsz, ask, asz)
    # an undisplayed level out of order does not count
    bid2, bsz2 = bid.copy(), bsz.copy()
    bid2[7] = np.sort(bid2[7])[::-1]
    bid2[7, 2] = 1e9
    bsz2[7, 2] = 0.0
    assert levels_sorted(bid2, bsz2, ask, asz)


def test_kernel_on_a_book_out_of_order_equals_the_oracle():
    """Levels reversed on each side (unsorted: the whole scan): maker configurations through the
    kernel equal the oracle (tests/test_kernel_oracle_v2.check)."""
    from tests.test_kernel_oracle import random_bank
    from tests.test_kernel_oracle_v2 import check
    from tests.test_kernels_equivalence import random_market, random_v2_book, random_v2_configs

    total = 0.0
    for seed in range(3):
        rng = np.random.default_rng(900 + seed)
        book, tick = random_v2_book(rng, 80, 4)
        for name in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
            setattr(book, name, np.ascontiguousarray(getattr(book, name)[:, ::-1]))
        assert not levels_sorted(book.bid_px, book.bid_sz, book.ask_px, book.ask_sz)
        bank = random_bank(rng, 80)
        cfg = random_v2_configs(rng, 12, 80, int(book.ts[-1] - book.ts[0]))
        total += check(book, bank, cfg, random_market(rng, tick), 3)["maker_fills"]
    assert total > 0
