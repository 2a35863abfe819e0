"""Trades are stamped with the time they became public (schema 2): Binance's event time `E`, the
match time `T` kept as `match_ts`; nothing at a book row uses a trade published after it; an
older store whose trades carry match times is refused with how to re-import it."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import Book, Trades, load, write_store
from gpu_engine.errors import InputError
from gpu_engine.features import build_bank
from tests.test_lookahead import _rows, bits

SPEC = [("tfi", {"window": w}) for w in (1, 3, 10)]


def test_binance_trades_carry_publish_and_match_times(real_dir, tmp_path):
    src = real_dir / "binance_usdm_btcusdt_20240808.jsonl.gz"
    out = tmp_path / "s.zarr"
    import_files([src], "binance-jsonl", out, depth=5, progress=False)
    tr = load(out).trades
    want_e, want_t = [], []
    with gzip.open(src, "rt") as fh:
        for line in fh:
            obj = json.loads(line.split(" ", 1)[1])
            d = obj.get("data", obj)
            if isinstance(d, dict) and d.get("e") == "trade":
                want_e.append(d["E"] * 10**6)
                want_t.append(d["T"] * 10**6)
    assert len(tr) > 1000
    # every stored trade is one of the capture's, stamped E (publish) with its T (match) beside it
    pairs = set(zip(want_e, want_t))
    got = list(zip(tr.ts.tolist(), tr.match_ts.tolist()))
    assert sum(p in pairs for p in got) >= 0.99 * len(got)  # the rest: publish times clamped by the clock check
    assert np.all(tr.ts >= tr.match_ts)
    lag = (tr.ts - tr.match_ts) / 1e6
    later = int((lag > 0).sum())
    print(f"\npublish - match on {len(tr)} trades: {later} published later than matched, "
          f"mean {lag.mean():.2f} ms, max {lag.max():.1f} ms")
    assert later > 0  # Binance publishes some trades after their match millisecond: the times differ


def test_store_round_trip_and_schema_1_refused(tmp_path):
    ts = np.arange(5, dtype=np.int64) * 10**9
    px = np.full((5, 1), 100.0)
    trades = Trades(ts=ts[:3] + 5, px=np.full(3, 100.0), qty=np.ones(3), side=np.array([1, -1, 1], np.int8),
                    match_ts=ts[:3])
    book = Book.from_arrays(ts, px - 1, px + 1, np.ones((5, 1)), np.ones((5, 1)), trades=trades,
                            attrs={"format": "binance-jsonl"})
    path = write_store(tmp_path / "b.zarr", book)
    back = load(path)
    assert back.attrs["schema_version"] == 2
    assert np.array_equal(back.trades.match_ts, ts[:3]) and np.array_equal(back.trades.ts, ts[:3] + 5)
    # the same store as schema 1 wrote it: refused, with the command that re-imports it
    import zarr

    g = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    g.attrs["schema_version"] = 1
    with pytest.raises(InputError, match=r"schema 1.*published.*re-import it: python -m gpu_engine.data import"):
        load(path)
    g.attrs["format"] = "lobster"  # one time per trade in that format: nothing to re-import
    assert load(path).T == 5


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 2), T=st.integers(3, 30))
def test_a_trade_published_after_a_row_never_reaches_it(seed, T):
    """Trades published after ts[t] -- even ones matched long before it -- change no feature at
    or before t."""
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000 * 10**9 + np.cumsum(rng.integers(0, 2 * 10**9, T))
    bp, ap, bs, as_ = _rows(rng, T, 2, 100.0, 0.1)
    n = int(rng.integers(0, 3 * T))
    tts = np.sort(rng.integers(ts[0] - 10**9, ts[-1] + 10**9, n))
    base = Trades(tts, np.ones(n), rng.uniform(0.1, 2, n), rng.choice(np.array([-1, 1], np.int8), n), tts.copy())
    v1 = build_bank(Book.from_arrays(ts, bp, ap, bs, as_, trades=base), spec=SPEC, xp=np).values
    for t in range(T):
        k = int(rng.integers(1, 6))
        pub = ts[t] + rng.integers(1, 3 * 10**9, k)             # published after row t ...
        match = ts[0] - rng.integers(0, 10**9, k)                # ... though matched before row 0
        allts = np.concatenate([tts, pub])
        order = np.argsort(allts, kind="stable")
        late = Trades(allts[order], np.ones(n + k)[order], np.concatenate([base.qty, rng.uniform(5, 9, k)])[order],
                      np.concatenate([base.side, np.ones(k, np.int8)])[order],
                      np.concatenate([base.match_ts, match])[order])
        v2 = build_bank(Book.from_arrays(ts, bp, ap, bs, as_, trades=late), spec=SPEC, xp=np).values
        assert (bits(v1[:, : t + 1]) == bits(v2[:, : t + 1])).all(), t
