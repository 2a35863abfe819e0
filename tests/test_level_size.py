"""A maker order's level search (strategy.level_search: the bounds of kernels.row_summary, then
for a book whose displayed levels are in price order, kernels.levels_sorted, a search from any
starting level) answers as the whole scan of the rules (strategy.level_size), and the kernel on
a book whose levels are out of order (the whole scan) still equals the oracle."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine.enums import RS_ASK_DEEP, RS_BID_DEEP
from gpu_engine.kernels import best_displayed, levels_sorted, row_summary
from gpu_engine.strategy import level_at_hint, level_bound, level_search, level_size


def search(px, sz, t, k, tick, buy, srt, hint, best, rsum):
    deep = rsum[t, RS_BID_DEEP if buy else RS_ASK_DEEP]
    none_px, none_sz = np.full_like(px, np.nan), np.zeros_like(sz)  # the other side: unread
    if buy:
        return level_search(px, sz, none_px, none_sz, t, k, tick, buy, srt, best[t], deep, hint)
    return level_search(none_px, none_sz, px, sz, t, k, tick, buy, srt, best[t], deep, hint)


def same(a, b):
    return a == b or (math.isinf(a) and math.isinf(b))


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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), L=st.integers(1, 8))
def test_sorted_shortcuts_equal_the_whole_scan(seed, L):
    rng = np.random.default_rng(seed)
    tick = 0.01
    bid, bsz, ask, asz = _book(rng, 40, L, tick)
    assert levels_sorted(bid, bsz, ask, asz)
    rsum = row_summary(bid, bsz, ask, asz, np.zeros(41, np.int64), np.zeros(1), np.zeros(1, np.int8))
    bests = {True: best_displayed(bid, bsz, True), False: best_displayed(ask, asz, False)}
    settled = 0
    for t in range(40):
        for buy, px, sz in ((True, bid, bsz), (False, ask, asz)):
            centre = int(round(100.5 / tick))
            for k in range(centre - 3 * L - 60, centre + 3 * L + 60, 3):
                slow = level_size(px, sz, t, k, tick, buy)
                for srt in (True, False):
                    for hint in {0, L - 1, (t + k) % L}:
                        fast, f = search(px, sz, t, k, tick, buy, srt, hint, bests[buy], rsum)
                        assert same(fast, slow), (t, buy, k, srt, hint, fast, slow)
                        assert 0 <= f < L
                settled += hint_agrees(px, sz, t, k, tick, buy, bests[buy], rsum, slow)
    assert settled > 0  # the three-level shortcut answers somewhere on every such book


def hint_agrees(px, sz, t, k, tick, buy, best, rsum, slow) -> int:
    """Where the bounds leave k inside the displayed range, the three levels around every
    hint either settle the size (then as the whole scan) or say they cannot (-1); returns how
    many hints settled it."""
    L = px.shape[1]
    deep = rsum[t, RS_BID_DEEP if buy else RS_ASK_DEEP]
    if level_bound(best[t], deep, k, tick, buy) >= 0.0:
        return 0
    n = 0
    for h in range(L):
        hb, hc = max(h - 1, 0), min(h + 1, L - 1)
        got = level_at_hint(px[t, hb], float(sz[t, hb]), px[t, h], float(sz[t, h]), px[t, hc],
                            float(sz[t, hc]), h == 0, h == L - 1, k, tick, buy)
        if got >= 0.0:
            assert got == slow, (t, buy, k, h, got, slow)
            n += 1
    return n


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
