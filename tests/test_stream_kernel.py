"""A book fed to the kernels window by window (kernels.stream.Stream) gives the bits of the
one-shot kernels.run, for every split of its rows.

On random books with trades (repeated timestamps, trades after the last tick), banks, taker
and maker configurations and markets (the generators of tests/test_kernels_equivalence.py),
windows of 1 row, 2 rows, random sizes, empty windows, and the whole book in one: raw sums
and buckets bit-identical to kernels.run on the CPU, and under numba-cuda's simulator (the
window kernel, kernels.cuda.window_cuda) in a subprocess. Each window's trades are cut at a
random time at or after its last row (a trade published after it is carried to the first
later tick with ts >= its time, possibly several windows on). prepare_window's arrays equal
the rows of prepare_book's; a book written as several stores and read back by time windows
streams to the same bits through Stream.run (the next window read while the current one
runs); windows out of order, late trades and an unfinished stream are refused.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine import kernels
from gpu_engine.backend import resolve
from gpu_engine.data.books.store import Book, Trades
from gpu_engine.kernels.stream import Stream
from gpu_engine.sweep import market_array, normalize_configs
from tests.test_kernel_oracle import random_bank
from tests.test_kernels_equivalence import random_market, random_v2_book, random_v2_configs

REPO = Path(__file__).resolve().parents[1]
CPU = resolve("cpu")


def _inputs(seed: int, T: int, L: int, C: int):
    rng = np.random.default_rng(seed)
    book, tick = random_v2_book(rng, T, L)
    bank = np.ascontiguousarray(random_bank(rng, T), dtype=np.float32)
    cfg = normalize_configs(random_v2_configs(rng, C, T, int(book.ts[-1] - book.ts[0])), bank.shape[0])
    mkt = market_array(**random_market(rng, tick))
    return book, bank, cfg, mkt


def split_rows(rng: np.random.Generator, T: int, kind: str) -> list[int]:
    """Window bounds 0 = b0 <= b1 <= ... = T: windows of 1 or 2 rows, random sizes (some
    empty), or one window."""
    if kind == "one":
        return [0, T]
    if kind in ("1", "2"):
        return list(range(0, T, int(kind))) + [T]
    cuts = np.sort(rng.integers(0, T + 1, int(rng.integers(0, T + 2))))
    return [0] + [int(x) for x in cuts] + [T]


def windows(rng: np.random.Generator, book: Book, bounds: list[int]):
    """Book-like slices of the rows between `bounds`, each with the trades up to a random
    time cut at or after its last row (the last window: all that remain)."""
    tr = book.trades
    t_next = 0  # first trade not handed out yet
    last = len(bounds) - 2
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if i == last:
            t_end = len(tr.ts)
        elif b == a:
            # an empty window: none of the trades left, or some of them (carried on)
            t_end = t_next + int(rng.integers(0, 2)) * int(rng.integers(0, len(tr.ts) - t_next + 1))
        else:
            cut = int(book.ts[b - 1]) + int(rng.choice([0, 0, 1, 3_000_000, 10**12]))
            t_end = max(t_next, int(np.searchsorted(tr.ts, cut, side="right")))
        sl = slice(t_next, t_end)
        yield Book.from_arrays(book.ts[a:b], book.bid_px[a:b], book.ask_px[a:b], book.bid_sz[a:b],
                               book.ask_sz[a:b],
                               trades=Trades(ts=tr.ts[sl], px=tr.px[sl], qty=tr.qty[sl],
                                             side=tr.side[sl])), a, b
        t_next = t_end


def _stream(backend, book, bank, cfg, mkt, B, bounds, rng, batch=kernels.DEFAULT_BATCH, chunk=None):
    s = Stream(backend, cfg, B, book.T, market=mkt, batch=batch, chunk=chunk)
    for rows, a, b in windows(rng, book, bounds):
        s.push(rows, np.ascontiguousarray(bank[:, a:b]))
    return s.finish()


def _assert_same(a, b, what):
    for name, x, y in zip(("raw", "bucket_pnl", "bucket_trades", "bucket_wins"), a, b):
        assert x.dtype == y.dtype, (what, name)
        assert x.shape == y.shape, (what, name)
        # bit-identical: compare the bytes (NaN payloads and signed zeros included)
        assert x.tobytes() == y.tobytes(), (what, name, x, y)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 80), L=st.integers(1, 4),
       B=st.integers(1, 5), C=st.integers(1, 24), kind=st.sampled_from(["1", "2", "random", "one"]))
def test_streamed_windows_equal_one_run(seed, T, L, B, C, kind):
    book, bank, cfg, mkt = _inputs(seed, T, L, C)
    one = kernels.run(CPU, kernels.prepare_book(book, CPU, market=mkt), bank, cfg, B)
    rng = np.random.default_rng(seed + 1)
    bounds = split_rows(rng, T, kind)
    got = _stream(CPU, book, bank, cfg, mkt, B, bounds, rng,
                  batch=int(rng.integers(1, C + 2)), chunk=int(rng.integers(1, 6)))
    _assert_same(got, one, f"windows {bounds}")


def test_streamed_trading_case():
    """Positions, maker orders resting in the queue and cancels in flight cross window
    boundaries (many trades and maker fills), several batches, and the default chunk."""
    from gpu_engine.enums import R_MAKER_FILLS, R_TRADES

    book, bank, cfg, mkt = _inputs(11, 400, 3, 60)
    one = kernels.run(CPU, kernels.prepare_book(book, CPU, market=mkt), bank, cfg, 4)
    assert one[0][:, R_TRADES].sum() > 100 and one[0][:, R_MAKER_FILLS].sum() > 20
    rng = np.random.default_rng(5)
    for kind in ("2", "random", "random", "one"):
        got = _stream(CPU, book, bank, cfg, mkt, 4, split_rows(rng, 400, kind), rng, batch=17)
        _assert_same(got, one, kind)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 60), kind=st.sampled_from(["1", "2", "random"]))
def test_window_arrays_are_rows_of_the_book_arrays(seed, T, kind):
    """prepare_window's arrays are the rows of prepare_book's: the book, its top-of-book
    helpers (last-seen tops continued across windows) and every tick's trades."""
    from gpu_engine.enums import M_OFFSET, M_SORTED, M_TOTAL, NMARKET

    rng = np.random.default_rng(seed)
    book, _ = random_v2_book(rng, T, 2)
    # blank level-0 prices over window boundaries (the last seen top comes from before)
    book.bid_px[rng.random(T) < 0.4, 0] = np.nan
    book.ask_px[rng.random(T) < 0.4, 0] = -1.0
    whole = kernels.prepare_book(book, CPU)
    assert whole.whole and whole.mkt[[M_OFFSET, M_TOTAL]].tolist() == [0.0, float(T)]
    names = ("ts", "bid_px", "ask_px", "bid_sz", "ask_sz", "bid0", "ask0", "pbid", "pask", "dbid", "dask")
    carry = None
    for rows, a, b in windows(rng, book, split_rows(rng, T, kind)):
        win, carry = kernels.prepare_window(rows, CPU, T, carry)
        assert (win.offset, win.total, win.T) == (a, T, b - a)
        assert win.mkt[[M_OFFSET, M_TOTAL]].tolist() == [float(a), float(T)]
        assert win.mkt[:NMARKET].tobytes() == whole.mkt[:NMARKET].tobytes()
        # the window's levels are in order when the whole book's are (a window may be, alone)
        assert win.mkt[M_SORTED] >= whole.mkt[M_SORTED]
        for name in names:
            x, y = getattr(win, name), getattr(whole, name)[a:b]
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), (name, a, b)
        for t in range(b - a):
            mine = slice(win.tr_start[t], win.tr_start[t + 1])
            ref = slice(whole.tr_start[a + t], whole.tr_start[a + t + 1])
            for arr in ("tr_px", "tr_qty", "tr_side"):
                assert getattr(win, arr)[mine].tobytes() == getattr(whole, arr)[ref].tobytes()
    assert carry.offset == T and len(carry.trades[0]) == 0


def test_book_in_several_stores_read_by_time_windows(tmp_path):
    """A book written as three stores (consecutive time ranges, trades included) and read
    back by time windows (store.load(start, end): rows and trades with start <= ts < end,
    so a window's trades run past its last row) streams to the bits of the whole book."""
    from gpu_engine.data.books import store

    book, bank, cfg, mkt = _inputs(7, 300, 3, 40)
    ts = book.ts
    edges = [min(int(ts[0]), int(book.trades.ts[0])), int(ts[90]), int(ts[200]),
             max(int(ts[-1]), int(book.trades.ts[-1])) + 1]
    paths = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        r = (ts >= lo) & (ts < hi)
        k = (book.trades.ts >= lo) & (book.trades.ts < hi)
        tr = book.trades
        part = Book.from_arrays(ts[r], book.bid_px[r], book.ask_px[r], book.bid_sz[r], book.ask_sz[r],
                                trades=Trades(ts=tr.ts[k], px=tr.px[k], qty=tr.qty[k], side=tr.side[k]))
        paths.append(store.write_store(tmp_path / f"part{i}.zarr", part, chunk_rows=64))
    one = kernels.run(CPU, kernels.prepare_book(book, CPU, market=mkt), bank, cfg, 3)

    def store_windows(width):
        g0 = 0
        for path, lo, hi in zip(paths, edges[:-1], edges[1:]):
            for start in range(lo, hi, width):
                rows = store.load(path, start, min(hi, start + width))
                yield rows, bank[:, g0:g0 + rows.T]
                g0 += rows.T

    for width, prefetch in ((150_000_000, True), (40_000_000, False), (10**15, True)):
        got = Stream(CPU, cfg, 3, book.T, market=mkt, chunk=7).run(store_windows(width), prefetch)
        _assert_same(got, one, f"stores, windows of {width} ns")


def test_prefetch_errors_reach_the_caller():
    book, bank, cfg, mkt = _inputs(4, 30, 2, 3)

    def bad():
        yield Book.from_arrays(book.ts[:10], book.bid_px[:10], book.ask_px[:10], book.bid_sz[:10],
                               book.ask_sz[:10]), bank[:, :10]
        raise OSError("store gone")

    with pytest.raises(OSError, match="store gone"):
        Stream(CPU, cfg, 2, 30, market=mkt).run(bad())


def test_refusals():
    book, bank, cfg, mkt = _inputs(3, 20, 2, 4)
    rows = lambda a, b: Book.from_arrays(book.ts[a:b], book.bid_px[a:b], book.ask_px[a:b],  # noqa: E731
                                         book.bid_sz[a:b], book.ask_sz[a:b])
    s = Stream(CPU, cfg, 2, 20, market=mkt)
    w1 = s.prepare(rows(0, 8))
    w2 = s.prepare(rows(8, 20))
    with pytest.raises(ValueError, match="in order"):
        s.feed(w2, bank[:, 8:20])
    with pytest.raises(ValueError, match="bank"):
        s.feed(w1, bank[:, 0:7])
    s.feed(w1, bank[:, 0:8])
    with pytest.raises(ValueError, match="finish"):
        s.finish()
    s.feed(w2, bank[:, 8:20])
    assert s.done and s.finish()[0].shape == (4, kernels.NRAW)
    # a window of a longer book is no whole book
    win, _ = kernels.prepare_window(rows(0, 8), CPU, 20)
    with pytest.raises(ValueError, match="whole book"):
        kernels.run(CPU, win, bank[:, :8], cfg, 2)
    # rows past the book, rows going back in time, trades of a tick already run
    with pytest.raises(ValueError, match="past"):
        kernels.prepare_window(rows(0, 20), CPU, 19)
    _, carry = kernels.prepare_window(rows(0, 8), CPU, 20)
    with pytest.raises(ValueError, match="in time"):
        kernels.prepare_window(rows(0, 3), CPU, 20, carry)
    late = Book.from_arrays(book.ts[8:20], book.bid_px[8:20], book.ask_px[8:20], book.bid_sz[8:20],
                            book.ask_sz[8:20],
                            trades=Trades(ts=np.array([book.ts[7]]), px=np.array([1.0]),
                                          qty=np.array([1.0]), side=np.array([1], np.int8)))
    with pytest.raises(ValueError, match="run already"):
        kernels.prepare_window(late, CPU, 20, carry)
    with pytest.raises(ValueError, match="total"):
        Stream(CPU, cfg, 2, 0)


SIM_SCRIPT = r"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import config
assert config.ENABLE_CUDASIM, "simulator flag not seen by numba"
from gpu_engine import kernels
from gpu_engine.backend import resolve
from tests.test_stream_kernel import _assert_same, _inputs, _stream, split_rows

be = resolve("cuda")
assert be.is_cuda and be.simulated, be
cpu = resolve("cpu")
seen = {"runs": 0, "trades": 0}

@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 40), L=st.integers(1, 3),
       B=st.integers(1, 4), kind=st.sampled_from(["1", "2", "random", "one"]))
def check(seed, T, L, B, kind):
    book, bank, cfg, mkt = _inputs(seed, T, L, 8)
    one = kernels.run(cpu, kernels.prepare_book(book, cpu, market=mkt), bank, cfg, B)
    rng = np.random.default_rng(seed + 1)
    got = _stream(be, book, bank, cfg, mkt, B, split_rows(rng, T, kind), rng, batch=5)
    _assert_same(got, one, (seed, T, kind))
    seen["runs"] += 1
    seen["trades"] += int(one[0][:, 0].sum())

check()
book, bank, cfg, mkt = _inputs(11, 150, 3, 12)
one = kernels.run(cpu, kernels.prepare_book(book, cpu, market=mkt), bank, cfg, 3)
rng = np.random.default_rng(2)
_assert_same(_stream(be, book, bank, cfg, mkt, 3, split_rows(rng, 150, "random"), rng, batch=7), one, "trading")
seen["trades"] += int(one[0][:, 0].sum())
print("EQUAL", seen["runs"], "TRADES", seen["trades"])
"""


def test_cuda_simulator_stream_equals_cpu_run():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SIM_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    words = proc.stdout.split()
    assert words[0] == "EQUAL" and int(words[1]) >= 12 and int(words[3]) > 0, proc.stdout
