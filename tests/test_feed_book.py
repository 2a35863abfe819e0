"""Local book maintenance without real data: PriceLevelBook, capture-line parsing, Binance sync rules.

The Binance tests feed hand-built captures (spot U/u rule, futures pu rule) through
the `binance-jsonl` reader and check what is emitted, ignored or recorded as a gap.
"""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds import binance
from gpu_engine.data.books.feeds.book import LevelError, PriceLevelBook, parse_levels
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import (iter_capture, iter_lines, seconds_to_ns, split_cryptofeed_line,
                                         split_stamped_line, stamp_to_ns)

# ----------------------------------------------------------------------------- PriceLevelBook

levels = st.lists(st.tuples(st.integers(1, 60), st.sampled_from([0.0, 0.5, 1.0, 2.25])), max_size=12)


@settings(max_examples=150, deadline=None)
@given(snap_b=levels, snap_a=levels, updates=st.lists(st.tuples(levels, levels), max_size=8),
       L=st.integers(1, 6))
def test_price_level_book_matches_a_dict_reference(snap_b, snap_a, updates, L):
    book = PriceLevelBook()
    ref_b = {float(p): q for p, q in snap_b if q > 0}
    ref_a = {float(p + 100): q for p, q in snap_a if q > 0}
    book.apply_snapshot([(float(p), q) for p, q in snap_b], [(float(p + 100), q) for p, q in snap_a])
    for ub, ua in updates:
        for p, q in ub:
            ref_b.pop(float(p), None) if q == 0 else ref_b.__setitem__(float(p), q)
        for p, q in ua:
            ref_a.pop(float(p + 100), None) if q == 0 else ref_a.__setitem__(float(p + 100), q)
        book.update([(float(p), q) for p, q in ub], [(float(p + 100), q) for p, q in ua])
        bid_px, ask_px, bid_sz, ask_sz = book.top(L)
        rb = sorted(ref_b.items(), reverse=True)[:L]
        ra = sorted(ref_a.items())[:L]
        exp_bp = np.full(L, np.nan)
        exp_ap = np.full(L, np.nan)
        exp_bs = np.zeros(L, np.float32)
        exp_as = np.zeros(L, np.float32)
        for i, (p, q) in enumerate(rb):
            exp_bp[i], exp_bs[i] = p, q
        for i, (p, q) in enumerate(ra):
            exp_ap[i], exp_as[i] = p, q
        np.testing.assert_array_equal(bid_px, exp_bp)
        np.testing.assert_array_equal(ask_px, exp_ap)
        np.testing.assert_array_equal(bid_sz, exp_bs)
        np.testing.assert_array_equal(ask_sz, exp_as)
        assert bid_px.dtype == np.float64 and bid_sz.dtype == np.float32
        assert len(book) == len(ref_b) + len(ref_a)


def test_book_single_level_ops_crossed_and_clear():
    b = PriceLevelBook()
    assert not b.crossed() and b.empty()
    assert math.isnan(b.best_bid()[0]) and b.best_ask() == (b.best_ask()[0], 0.0)
    b.set_bid(100.0, 1.0)
    b.set_ask(101.0, 2.0)
    b.set_ask(99.0, 0.0)  # deleting an absent level is normal
    assert b.best_bid() == (100.0, 1.0) and b.best_ask() == (101.0, 2.0) and not b.crossed()
    b.set_bid(101.0, 3.0)  # locked
    assert b.crossed()
    b.set_bid(101.0, 0.0)
    assert not b.crossed()
    assert b.levels() == ([(100.0, 1.0)], [(101.0, 2.0)])
    b.clear()
    assert b.empty() and len(b) == 0
    bp, ap, bs, as_ = b.top(3)
    assert np.isnan(bp).all() and np.isnan(ap).all() and (bs == 0).all() and (as_ == 0).all()


def test_parse_levels_validates_each_field():
    assert parse_levels([["1.5", "2"], [3, 0]]) == [(1.5, 2.0), (3.0, 0.0)]
    assert parse_levels([["1.5", "2", "0", "4"]]) == [(1.5, 2.0)]  # OKX-style extra columns ignored
    assert parse_levels([]) == []
    for bad in ([["abc", "1"]], [["1", "x"]], [["nan", "1"]], [["1", "inf"]], [["0", "1"]], [["-1", "1"]],
                [["1"]], [None], "12", ["12"], [{"1": 2}]):
        with pytest.raises(LevelError) as e:
            parse_levels(bad, "b")
        assert e.value.kind == "bad_number" and "b" in str(e.value)
    with pytest.raises(LevelError) as e:
        parse_levels([["1", "2"], ["1.1", "-0.5"]], "a")
    assert e.value.kind == "negative_size" and "-0.5" in str(e.value)


# ----------------------------------------------------------------------------- capture lines

def test_stamp_units_and_seconds():
    assert stamp_to_ns(1723161253937085768) == 1723161253937085768          # ns
    assert stamp_to_ns(1680652800004107) == 1680652800004107000             # us
    assert stamp_to_ns(1680652800004) == 1680652800004000000                # ms
    assert stamp_to_ns(1680652800) == 1680652800000000000                   # s
    assert seconds_to_ns("1618677817.061845") == 1618677817061845000
    assert seconds_to_ns(b"1618677817") == 1618677817000000000
    assert seconds_to_ns("1618677817.0618958123") == 1618677817061895812
    for bad in ("abc", "1.2.3", "", "1e9"):
        with pytest.raises(ValueError):
            seconds_to_ns(bad)


def test_split_lines():
    assert split_stamped_line(b'1680652800004107 {"a":1}') == (1680652800004107000, b'{"a":1}')
    with pytest.raises(ValueError):
        split_stamped_line(b'{"a":1}')
    assert split_cryptofeed_line(b"wss://ws-feed.pro.coinbase.com <-> 1618677816.8434298") is None
    assert split_cryptofeed_line(b'wss://x <- 1618677817.02: {"type":"subscribe"}') is None
    assert split_cryptofeed_line(b'1618677817.061845: {"type":"x"}') == (1618677817061845000, b'{"type":"x"}')


def test_iter_lines_plain_gzip_and_truncated_gzip(tmp_path):
    text = b"".join(b"%d line\n" % i for i in range(20000))
    plain = tmp_path / "a.txt"
    plain.write_bytes(text)
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(text))
    for p in (plain, gz):
        r = ImportReport()
        got = list(iter_lines(p, r))
        assert len(got) == 20000 and got[0] == (1, b"0 line") and got[-1] == (20000, b"19999 line")
        assert r.bytes_read == p.stat().st_size and r.bad_lines == 0
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    r = ImportReport()
    got = list(iter_lines(cut, r))
    assert 0 < len(got) < 20000
    assert [ln for ln, _ in got] == list(range(1, len(got) + 1))
    assert r.bad_lines == 1 and r.extra["truncated_files"] == 1 and "compressed stream broken" in r.notes[0]
    with pytest.raises(InputError, match="cannot open"):
        list(iter_lines(tmp_path / "missing.gz", ImportReport()))


def test_iter_capture_counts_bad_lines_and_backwards_stamps(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('1700000000000000000 {"a": 1}\n'
                 'garbage\n'
                 '1700000000100000000 {"a": 2\n'
                 '1699999990000000000 {"a": 3}\n'          # 10 s back: counted
                 '1700000000200000000 {"a": 4} trailing\n'
                 '1700000000300000 {"a": 5}\n')              # us stamp
    r = ImportReport()
    got = list(iter_capture([p], r))
    assert [o["a"] for _, _, _, o in got] == [1, 3, 5]
    assert got[2][2] == 1700000000300000000
    assert r.bad_lines == 3 and r.time_backwards == 1
    assert any(":2: bad line" in n for n in r.notes)
    allbad = tmp_path / "bad.jsonl"
    allbad.write_text("nope\nnope\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: "):
        list(iter_capture([allbad], ImportReport()))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        list(iter_capture([empty], ImportReport()))


# ----------------------------------------------------------------------------- Binance sync

T0 = 1_723_161_255_000  # ms


class Cap:
    """Builds a Binance capture: `<ns local> <json>` lines."""

    def __init__(self, futures=False):
        self.lines = []
        self.futures = futures
        self.t = 0

    def _put(self, obj):
        self.t += 1
        self.lines.append(f"{(T0 + self.t) * 1_000_000} {json.dumps(obj)}")

    def depth(self, U, u, b=(), a=(), pu=None, E=None):
        d = {"e": "depthUpdate", "E": E if E is not None else T0 + self.t + 1, "s": "BTCUSDT", "U": U, "u": u,
             "b": [[str(p), str(q)] for p, q in b], "a": [[str(p), str(q)] for p, q in a]}
        if self.futures:
            d["pu"] = pu if pu is not None else U - 1
        self._put({"stream": "btcusdt@depth@100ms", "data": d})

    def snapshot(self, last_id, b, a):
        self._put({"lastUpdateId": last_id, "bids": [[str(p), str(q)] for p, q in b],
                   "asks": [[str(p), str(q)] for p, q in a]})

    def trade(self, t, p, q, m):
        self._put({"stream": "btcusdt@trade", "data": {"e": "trade", "E": T0 + self.t + 1, "s": "BTCUSDT",
                                                       "t": t, "p": str(p), "q": str(q), "T": T0 + self.t + 1,
                                                       "m": m}})

    def raw(self, text):
        self.t += 1
        self.lines.append(text)

    def run(self, tmp_path, depth=2):
        p = tmp_path / "cap.jsonl"
        p.write_text("\n".join(self.lines) + "\n")
        r = ImportReport()
        out = list(binance.read([p], depth, None, r))
        return [x for x in out if isinstance(x, BookRow)], [x for x in out if isinstance(x, TradeRow)], r


SNAP_B = [(100.0, 1.0), (99.0, 2.0)]
SNAP_A = [(101.0, 1.0), (102.0, 2.0)]


def test_spot_snapshot_after_diffs_buffer_and_straddle(tmp_path):
    c = Cap()
    c.depth(1, 5, b=[(100, 9)])            # u <= 10: dropped at sync
    c.depth(6, 12, b=[(100, 3)])           # straddles 11: applied first
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(13, 14, a=[(101, 0)])          # continuous
    c.depth(13, 14, a=[(101, 0)])          # duplicate (u == local): ignored
    c.depth(8, 12, b=[(100, 7)])           # stale: ignored
    c.depth(15, 15, b=[(100.5, 1)])
    rows, _, r = c.run(tmp_path)
    assert [x.seq for x in rows] == [12, 14, 15]
    assert rows[0].bid_sz[0] == 3 and rows[0].ask_px[0] == 101
    assert rows[1].ask_px[0] == 102 and np.isnan(rows[1].ask_px[1]) and rows[1].ask_sz[1] == 0
    assert rows[2].bid_px.tolist() == [100.5, 100.0]
    assert rows[0].ts == (T0 + 2) * 1_000_000 and rows[0].local_ts == rows[0].ts  # E in ns
    assert r.duplicates == 1 and r.stale == 1 and r.unsynced == 1 and r.gaps == [] and r.messages == 7
    assert r.extra["market"] == "spot" and r.extra["tick_size"] == 1.0


def test_spot_gap_stops_rows_until_next_snapshot(tmp_path):
    c = Cap()
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(11, 12, b=[(100, 3)])
    c.depth(14, 15, b=[(100, 4)])          # gap: 13 missing
    c.depth(16, 16, b=[(100, 5)])          # no rows until a snapshot
    c.snapshot(16, [(100, 5), (98, 1)], SNAP_A)
    c.depth(17, 17, b=[(98, 0)])
    rows, _, r = c.run(tmp_path)
    assert [x.seq for x in rows] == [12, 17]
    assert rows[1].bid_px[0] == 100 and rows[1].bid_sz[0] == 5 and np.isnan(rows[1].bid_px[1])
    assert len(r.gaps) == 1 and r.resyncs == 1
    g = r.gaps[0]
    assert "update id gap" in g["reason"] and g["seq"] == 12 and g["until"] == rows[1].ts
    assert r.unsynced == 2  # (14,15) and (16,16), covered by the second snapshot


def test_snapshot_older_than_buffer_is_refused(tmp_path):
    c = Cap()
    c.depth(20, 25, b=[(100, 3)])
    c.snapshot(10, SNAP_B, SNAP_A)         # needs U <= 11: refused
    c.depth(26, 27)
    c.snapshot(26, SNAP_B, SNAP_A)         # usable: (26,27) straddles 27
    rows, _, r = c.run(tmp_path)
    assert r.stale_snapshots == 1 and [x.seq for x in rows] == [27]
    assert any("older than the buffered updates" in n for n in r.notes)


def test_futures_pu_rule(tmp_path):
    c = Cap(futures=True)
    c.depth(5, 9, pu=4)                    # u < 10: dropped
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(8, 12, pu=7, b=[(100, 3)])     # U <= 10 <= u: first event
    c.depth(13, 20, pu=12, a=[(101, 4)])   # pu == 12
    c.depth(21, 25, pu=19, a=[(101, 5)])   # pu != 20: gap
    rows, _, r = c.run(tmp_path)
    assert [x.seq for x in rows] == [12, 20]
    assert r.extra["market"] == "usdm" and len(r.gaps) == 1 and "pu=20" in r.gaps[0]["reason"]
    assert r.gaps[0]["until"] is None


def test_crossed_book_is_never_emitted(tmp_path):
    c = Cap()
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(11, 11, b=[(101.5, 1)])        # bid above the ask: book known wrong
    c.depth(12, 12, b=[(100, 2)])
    rows, _, r = c.run(tmp_path)
    assert rows == [] and r.crossed == 1 and "crossed" in r.gaps[0]["reason"]


def test_trades_side_and_duplicates(tmp_path):
    c = Cap()
    c.trade(7, 100.5, 0.25, True)          # buyer is maker -> seller aggressor
    c.trade(8, 100.6, 0.5, False)
    c.trade(8, 100.6, 0.5, False)          # repeated
    c.trade(10, 100.7, 0.1, False)         # id gap (informational)
    rows, trades, r = c.run(tmp_path)
    assert [(t.px, t.qty, t.side) for t in trades] == [(100.5, 0.25, -1), (100.6, 0.5, 1), (100.7, 0.1, 1)]
    assert r.duplicates == 1 and r.extra["trade_id_gaps"] == 1
    assert any("no depth snapshot" in n for n in r.notes)


def test_bad_input_is_counted_and_never_applied(tmp_path):
    c = Cap()
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(11, 11, b=[(100, 3)])
    c.raw(f"{(T0 + 50) * 1_000_000} not json")
    c.raw(f'{(T0 + 51) * 1_000_000} {{"stream":"btcusdt@weird","data":{{"e":"weird"}}}}')
    c.raw(f'{(T0 + 52) * 1_000_000} {{"stream":"btcusdt@markPrice@1s","data":{{"e":"markPriceUpdate"}}}}')
    c.depth(12, 12, b=[("abc", 1)])        # not a number: refused -> hole at 12
    c.depth(13, 13, b=[(100, -1)])         # negative size: refused (and a gap: 12 is missing)
    c.snapshot(13, SNAP_B, SNAP_A)
    c.depth(14, 14, b=[(100, 2)], E=T0 - 10_000)  # 10 s back in exchange time: refused
    c.depth(15, 15, b=[(100, 6)])          # gap (14 missing) -> no row
    rows, _, r = c.run(tmp_path)
    assert [x.seq for x in rows] == [11]
    assert r.bad_lines == 3 and r.negative_sizes == 1 and r.time_backwards == 1
    assert r.extra["unknown_stream"] == 1 and r.extra["ignored_markPrice"] == 1
    assert len(r.gaps) == 2 and r.resyncs == 1
    assert any("not json" not in n and "bad line" in n for n in r.notes)


def test_exchange_time_small_regression_is_clamped(tmp_path):
    c = Cap()
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(11, 11, b=[(100, 3)], E=T0 + 500)
    c.depth(12, 12, b=[(100, 4)], E=T0 + 200)   # 300 ms back: within tolerance, clamped
    rows, _, r = c.run(tmp_path)
    assert [x.ts for x in rows] == [(T0 + 500) * 1_000_000] * 2 and r.extra["ts_clamped"] == 1


def test_snapshot_newer_than_the_book_is_held_for_the_next_gap(tmp_path):
    c = Cap()
    c.snapshot(10, SNAP_B, SNAP_A)
    c.depth(11, 12, b=[(100, 3)])
    c.snapshot(30, [(100, 7)], SNAP_A)     # a reconnect: newer than the book, held
    c.depth(13, 14, b=[(100, 4)])          # old connection still continuous
    c.depth(25, 31, b=[(100, 8)])          # new connection: gap, bridged by the held snapshot
    c.depth(32, 32, b=[(99, 1)])
    c.snapshot(40, SNAP_B, SNAP_A)         # held, then passed by the book: not needed
    c.depth(33, 45, b=[(99, 2)])
    rows, _, r = c.run(tmp_path)
    assert [x.seq for x in rows] == [12, 14, 31, 32, 45]
    assert rows[2].bid_px[0] == 100 and rows[2].bid_sz[0] == 8 and np.isnan(rows[2].bid_px[1])
    assert len(r.gaps) == 1 and r.resyncs == 1 and r.gaps[0]["until"] == rows[2].ts
    assert r.extra["snapshots_ignored_in_sync"] == 1
