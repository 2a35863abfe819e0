"""The feature bank built chunk by chunk (gpu_engine/features_stream.py) equals the one-shot bank
bitwise: random books with trades cut into random windows (single rows, pairs, random sizes, the
whole book, windows shorter than the longest feature window), trades given with their window or
early, with and without blocks, the long-horizon features on bar markets over a block dataset,
a store read window by window, and a real capture when the real-data folder is present. The
carried state stays bounded by the spec's windows, whatever the length of the book."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine.data.books.store import Book, Trades, load, write_store
from gpu_engine.features import DEFAULT_SPEC, build_bank
from gpu_engine.features_stream import BankStream, iter_store, split_book, stream_bank
from tests.test_features import random_book, tiny_blocks
from tests.test_lookahead import T0_S, _rows, make_blocks, small_spec
from tests.test_lookahead_longterm import SPEC as LONG_SPEC
from tests.test_lookahead_longterm import _book as bar_book
from tests.test_lookahead_longterm import _market as bar_market
from tests.test_lookahead_longterm import chain  # noqa: F401  (the block dataset fixture)


def wide_spec(L):
    """Several windows per feature, the long ones beyond a short book."""
    spec = [("imbalance1", {}), ("microprice_bps", {}), ("spread_bps", {}), ("log_fair_dev", {}),
            ("block_age_s", {}), ("block_interval_s", {}), ("pl_dev", {}), ("halving_days", {})]
    for w in (1, 3, 7, 20, 64):
        spec += [("ofi", {"window": w}), ("tfi", {"window": w}), ("logret", {"window": w}),
                 ("ma_dev", {"window": w}), ("mlofi", {"levels": L, "window": w})]
    return spec


def same_bits(a, b):
    """Equal bit for bit (NaN payloads included), with the rows that differ in the message."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    diff = a.view(np.uint32) != b.view(np.uint32)
    return not diff.any(), sorted(set(np.nonzero(diff)[0].tolist()))


def check(book, spec, sizes, blocks=None, depth=None):
    ref = build_bank(book, spec=spec, xp=np, blocks=blocks)
    got = stream_bank(split_book(book, sizes), spec=spec, xp=np, blocks=blocks, depth=depth)
    assert got.rows == ref.rows and got.names == ref.names
    ok, rows = same_bits(got.values, ref.values)
    assert ok, (sizes, [ref.names[k] for k in rows])
    np.testing.assert_array_equal(got.values, ref.values)  # NaN == NaN here
    return ref


def random_trade_book(seed, T, L, empty, dup):
    """A random book: ticks up to 3 s apart (a share `dup` of them stamped like the tick before),
    trades from before the first tick to after the last, some on tick times, unsorted sides."""
    rng = np.random.default_rng(seed)
    step = rng.integers(1, 3 * 10**9, T)
    step[rng.random(T) < dup] = 0
    ts = T0_S * 10**9 + np.cumsum(step)
    bp, ap, bs, as_ = _rows(rng, T, L, 100.0, empty)
    n = int(rng.integers(0, 3 * T + 1))
    tts = rng.integers(ts[0] - 2 * 10**9, ts[-1] + 2 * 10**9, n)
    on_tick = rng.random(n) < 0.3
    tts[on_tick] = ts[rng.integers(0, T, int(on_tick.sum()))]
    tts = np.sort(tts)
    qty = rng.uniform(0.1, 3.0, n)
    qty[rng.random(n) < 0.05] = np.nan  # unknown quantity -> 0
    side = rng.choice(np.array([-1, 0, 1], np.int8), n)
    trades = Trades(tts, np.full(n, 100.0), qty, side) if n or rng.random() < 0.5 else None
    return Book.from_arrays(ts, bp, ap, bs, as_, trades=trades)


@st.composite
def splits(draw, T, longest):
    """Window sizes adding up to T: single rows, pairs, the whole book, random, shorter than the
    longest feature window, with empty windows now and then."""
    kind = draw(st.sampled_from(["ones", "twos", "whole", "random", "short"]))
    if kind == "ones":
        return [1] * T
    if kind == "twos":
        return [2] * (T // 2) + [T % 2]
    if kind == "whole":
        return [T]
    top = max(1, longest - 1) if kind == "short" else T
    sizes, left = [], T
    while left:
        s = min(left, draw(st.integers(0, top)))
        sizes.append(s)
        left -= s
    return sizes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), T=st.integers(1, 90), L=st.integers(1, 3), seed=st.integers(0, 2**31 - 2),
       empty=st.sampled_from([0.0, 0.1, 0.4]), dup=st.sampled_from([0.0, 0.3]),
       which=st.sampled_from(["small", "wide", "default"]), with_blocks=st.booleans())
def test_streamed_bank_equals_the_one_shot_bank(data, T, L, seed, empty, dup, which, with_blocks):
    book = random_trade_book(seed, T, L, empty, dup)
    spec = {"small": small_spec(L), "wide": wide_spec(L), "default": None}[which]
    longest = {"small": 5, "wide": 64, "default": 1000}[which]
    sizes = data.draw(splits(T, longest))
    check(book, spec, sizes, blocks=make_blocks(seed) if with_blocks else None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(2, 60), seed=st.integers(0, 2**31 - 2), cut=st.integers(0, 10**6),
       every=st.integers(1, 9))
def test_trades_may_come_before_their_window(T, seed, cut, every):
    """All the trades up to a cut handed with the first window, the rest with the window of the
    cut: the stream holds the ones stamped after its last tick until their window."""
    book = random_trade_book(seed, T, 2, 0.1, 0.3)
    spec = wide_spec(2)
    ref = build_bank(book, spec=spec, xp=np)
    windows = list(split_book(book, every))
    tr = book.trades
    if tr is not None and len(tr):
        last_ts = [int(w.ts[-1]) for w in windows]
        k = cut % len(windows)
        # trades of windows 0..k go with window 0, the others with window k+1 (when it exists)
        upto = np.searchsorted(tr.ts, last_ts[k], side="right")
        first = Trades(tr.ts[:upto], tr.px[:upto], tr.qty[:upto], tr.side[:upto])
        rest = Trades(tr.ts[upto:], tr.px[upto:], tr.qty[upto:], tr.side[upto:])
        windows = [Book(w.ts, w.seq, w.bid_px, w.ask_px, w.bid_sz, w.ask_sz,
                        first if i == 0 else rest if i == k + 1 else None, w.attrs)
                   for i, w in enumerate(windows)]
    got = stream_bank(windows, spec=spec, xp=np)
    ok, rows = same_bits(got.values, ref.values)
    assert ok, [ref.names[r] for r in rows]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), T=st.integers(40, 130), seed=st.integers(0, 2**31 - 2))
def test_long_horizon_features_streamed(chain, data, T, seed):  # noqa: F811
    """The causal fits (expanding sums carried), block flow, halving calendar, ma_dev: bar markets
    of years over a block dataset with real-header runs."""
    ts, mid = bar_market(seed, T)
    ref = check(bar_book(ts, mid), LONG_SPEC, data.draw(splits(T, 10)), blocks=chain)
    assert np.isfinite(ref.values[0]).sum() > 0 or T < 80  # the fit is reached on longer markets


def test_default_bank_around_the_longest_window():
    book = random_book(T=2600, L=10, seed=4)
    blocks = tiny_blocks([839_999, 840_000], [1_700_000_000 - 700, 1_700_000_000 + 40], [5e4, 6e4])
    for sizes in (999, 1000, 1001, [1, 998, 2, 1599], 2600):
        check(book, None, sizes, blocks=blocks)


def test_state_is_bounded_by_the_windows_not_by_T():
    book = random_book(T=6000, L=5, seed=5)
    spec = wide_spec(5) + list(DEFAULT_SPEC[:3])  # ofi windows up to 1000
    stream = BankStream(spec, depth=5, xp=np)
    assert stream.max_window == 1000 and stream.state_nbytes() == 0
    sizes = []
    for w in split_book(book, 250):
        stream.feed(w)
        sizes.append(stream.state_nbytes())
    assert max(sizes) <= stream.max_state_nbytes()
    # once the longest window is filled, the carried state no longer grows
    assert len(set(sizes[4:])) == 1, sizes
    # (ofi 10/100/1000 + 5 x (ofi, tfi, mlofi: 2 series; logret, ma_dev: 1 and 2)) tails
    assert sizes[-1] < 100_000


def test_store_read_window_by_window(tmp_path):
    book = random_trade_book(11, 700, 3, 0.1, 0.2)
    path = write_store(tmp_path / "s.zarr", book, chunk_rows=128)
    loaded = load(path)
    ref = build_bank(loaded, spec=wide_spec(3), xp=np)
    for rows in (1, 37, 128, 699, 700, 5000):
        windows = list(iter_store(path, rows))
        assert sum(w.T for w in windows) == 700
        given = np.concatenate([w.trades.ts for w in windows if w.trades is not None] or [np.zeros(0)])
        np.testing.assert_array_equal(given, loaded.trades.ts)  # every trade once, in order
        got = stream_bank(iter_store(path, rows), spec=wide_spec(3), xp=np)
        ok, diff = same_bits(got.values, ref.values)
        assert ok, (rows, [ref.names[r] for r in diff])


def test_real_capture_streamed(real_dir, tmp_path):
    from gpu_engine.data.books.importers import import_files

    out = tmp_path / "usdm.zarr"
    import_files([real_dir / "binance_usdm_btcusdt_20240808.jsonl.gz"], "binance-jsonl", out, depth=5,
                 progress=False)
    book = load(out)
    assert book.T > 1000 and len(book.trades) > 1000
    ref = build_bank(book, xp=np)
    assert np.isfinite(ref.values[ref.index("tfi", window=100)]).mean() > 0.9
    for rows in (1000, 4096):
        got = stream_bank(iter_store(out, rows), xp=np)
        assert got.names == ref.names
        ok, diff = same_bits(got.values, ref.values)
        assert ok, (rows, [ref.names[r] for r in diff])
    check(book, None, [1] * 50 + [999, 1, 1000, 2] + [book.T - 2052])


def test_bad_windows_are_refused():
    book = random_trade_book(3, 40, 2, 0.0, 0.0)
    w = list(split_book(book, 10))
    stream = BankStream(small_spec(2), depth=2, xp=np)
    stream.feed(w[0])
    with pytest.raises(ValueError, match="non-decreasing"):
        stream.feed(w[0])
    with pytest.raises(ValueError, match="level"):
        stream.feed(next(split_book(random_trade_book(3, 40, 3, 0.0, 0.0), 40)))
    late = Trades(np.array([book.ts[5]]), np.ones(1), np.ones(1), np.ones(1, np.int8))
    with pytest.raises(ValueError, match="earlier window"):
        stream.feed(Book(w[1].ts, w[1].seq, w[1].bid_px, w[1].ask_px, w[1].bid_sz, w[1].ask_sz, late))
    with pytest.raises(ValueError, match="add up"):
        list(split_book(book, [10, 10]))
    for depth in (0, None, 1.5):
        with pytest.raises(ValueError, match="depth"):
            BankStream(depth=depth)
    with pytest.raises(ValueError, match="no windows"):
        stream_bank(iter([]))
    # a window that fails half-way leaves the stream unusable (its carry is incomplete)
    broken = BankStream(small_spec(2), depth=2, xp=np)
    bad = w[0]
    with pytest.raises(ValueError):
        broken.feed(Book(bad.ts, bad.seq, bad.bid_px[:, :1].repeat(2, 1)[:-1], bad.ask_px, bad.bid_sz,
                         bad.ask_sz))
    with pytest.raises(RuntimeError, match="start a new stream"):
        broken.feed(w[0])


def test_cupy_stream_matches_numpy():
    from gpu_engine.backend import gpu_available
    if not gpu_available():
        pytest.skip("no working GPU here (CuPy + numba-cuda): the cupy path is checked on GPU machines")
    import cupy

    book = random_book(T=5000, L=10, seed=2)
    cpu = build_bank(book, xp=np)
    gpu = stream_bank(split_book(book, 777), xp=cupy)
    assert isinstance(gpu.values, cupy.ndarray) and gpu.names == cpu.names
    np.testing.assert_allclose(gpu.to_host(), cpu.values, rtol=1e-5, atol=1e-6, equal_nan=True)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 2), T=st.integers(1, 60), w=st.integers(1, 70), data=st.data())
def test_carried_sums_and_lags_equal_the_one_shot_float64(seed, T, w, data):
    """Below the float32 cast: the carried rolling sums, lags and exclusive prefix sums equal the
    one-shot float64 arrays bit for bit (values with -0.0, NaN, inf, huge and tiny magnitudes)."""
    from gpu_engine.features import _lagged, _rolling_sum
    from gpu_engine.features_longterm import _exclusive_cumsum
    from gpu_engine.features_stream import _Carry

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, T) * 10.0 ** rng.integers(-12, 12, T)
    special = rng.random(T)
    x[special < 0.1] = -0.0
    x[(special > 0.1) & (special < 0.13)] = np.nan
    x[(special > 0.13) & (special < 0.15)] = np.inf
    sizes = data.draw(splits(T, w))
    starts = np.cumsum([0] + sizes[:-1])
    carry = _Carry()
    parts = {"sum": [], "lag": [], "excl": []}
    with np.errstate(invalid="ignore"):  # inf - inf is NaN on both sides
        for lo, hi in ((int(a), int(a) + s) for a, s in zip(starts, sizes) if s):
            carry.t0 = lo
            carry.begin_row(0)
            parts["sum"].append(carry.rolling_sum(np, x[lo:hi], w))
            parts["lag"].append(carry.lagged(np, x[lo:hi], w))
            parts["excl"].append(carry.exclusive_cumsum(np, "k", x[lo:hi]))
        wants = (("sum", _rolling_sum(np, x, w)), ("lag", _lagged(np, x, w)),
                 ("excl", _exclusive_cumsum(np, x)))
    for name, want in wants:
        got = np.concatenate(parts[name])
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64), err_msg=name)
