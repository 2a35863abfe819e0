"""OKX reader on the real 2022 cryptofeed capture: every book checksum verified, trades,
fault injection (corrupt / drop / duplicate updates), seqId continuity, and the CLI."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_engine.data.books import store
from gpu_engine.data.__main__ import main as cli
from gpu_engine.data.books.feeds import okx
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow

FILE = "okx_books_20220513.txt.gz"
INSTRUMENTS = ["BTC-USDT", "BTC-USD-220527", "UNI-USD-SWAP"]


def run(paths, symbol=None, depth=20):
    report = ImportReport()
    out = list(okx.read([Path(p) for p in paths], depth, symbol, report))
    return ([r for r in out if isinstance(r, BookRow)], [r for r in out if isinstance(r, TradeRow)], report)


@pytest.fixture(scope="module")
def lines(real_dir) -> list[str]:
    with gzip.open(real_dir / FILE, "rt") as f:
        return f.read().splitlines()


def _msgs(lines):
    for i, l in enumerate(lines):
        if l and not l.startswith("wss://"):
            yield i, json.loads(l.split(": ", 1)[1])


def _book_lines(lines, inst):
    return [i for i, m in _msgs(lines) if m.get("arg", {}).get("channel") == "books"
            and m["arg"]["instId"] == inst and "data" in m]


def test_every_checksum_verified(real_dir, lines):
    total_ok = total = 0
    for inst in INSTRUMENTS:
        books, trades, report = run([real_dir / FILE], inst)
        n = len(_book_lines(lines, inst))
        print(f"\nOKX {inst}: {report.checksum_ok}/{n} checksums verified, {report.checksum_failed} failed, "
              f"{len(books)} rows, {len(trades)} trades, {report.crossed} crossed")
        assert report.checksum_ok == n and report.checksum_failed == 0
        assert len(books) == n and report.gaps == [] and report.crossed == 0
        assert all(b.bid_px[0] < b.ask_px[0] and b.symbol == inst and b.seq == -1 for b in books)
        ts = np.array([b.ts for b in books])
        assert (np.diff(ts) >= 0).all()
        total_ok += report.checksum_ok
        total += n
    print(f"OKX total: {total_ok}/{total} = {total_ok / total:.0%} of book checksums verified")
    assert total == 3 + 287 and total_ok == total


def test_rows_equal_the_message_levels(real_dir, lines):
    # independent replay of BTC-USDT with dicts; compare the top 20 after every message
    books, _, _ = run([real_dir / FILE], "BTC-USDT")
    bids, asks, k = {}, {}, 0
    for i in _book_lines(lines, "BTC-USDT"):
        m = json.loads(lines[i].split(": ", 1)[1])
        d = m["data"][0]
        if m["action"] == "snapshot":
            bids, asks = {}, {}
        for side, levels in ((bids, d["bids"]), (asks, d["asks"])):
            for p, q, *_ in levels:
                side.pop(float(p), None) if float(q) == 0 else side.__setitem__(float(p), float(q))
        b = books[k]
        assert b.ts == int(d["ts"]) * 10**6
        top_b = sorted(bids, reverse=True)[:20]
        assert b.bid_px.tolist() == top_b
        assert b.bid_sz.tolist() == [np.float32(bids[p]) for p in top_b]
        assert b.ask_px.tolist() == sorted(asks)[:20]
        k += 1
    assert k == len(books)


def test_trades_use_the_taker_side(real_dir, lines):
    _, trades, report = run([real_dir / FILE], "BTC-USDT")
    raw = [m["data"][0] for _, m in _msgs(lines)
           if m.get("arg", {}).get("channel") == "trades" and "data" in m and m["arg"]["instId"] == "BTC-USDT"]
    assert len(trades) == len(raw) == 69
    assert [t.side for t in trades] == [1 if r["side"] == "buy" else -1 for r in raw]
    assert [t.px for t in trades] == [float(r["px"]) for r in raw]
    assert [t.ts for t in trades] == [int(r["ts"]) * 10**6 for r in raw]


def _write(tmp: Path, lines) -> Path:
    p = tmp / "cap.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def _replace_json(line: str, fn) -> str:
    stamp, payload = line.split(": ", 1)
    m = json.loads(payload)
    fn(m)
    return stamp + ": " + json.dumps(m)


def test_corrupt_update_fails_its_checksum_and_stops_rows(tmp_path, lines):
    idx = _book_lines(lines, "BTC-USDT")
    k = 40
    bad = list(lines)

    def corrupt(m):
        lv = m["data"][0]["bids"] or m["data"][0]["asks"]
        lv[0][1] = str(float(lv[0][1]) + 1.0)

    bad[idx[k]] = _replace_json(lines[idx[k]], corrupt)
    books, _, report = run([_write(tmp_path, bad)], "BTC-USDT")
    assert report.checksum_failed == 1 and report.checksum_ok == k
    assert len(books) == k  # no row from the corrupt message on: no later snapshot in the file
    assert report.gaps[0]["reason"] == "checksum mismatch" and "until" not in report.gaps[0]
    assert report.unsynced == len(idx) - k - 1


def test_dropped_update_is_detected_duplicate_is_harmless(tmp_path, lines):
    idx = _book_lines(lines, "BTC-USDT")
    dropped = [l for i, l in enumerate(lines) if i != idx[30]]
    books, _, report = run([_write(tmp_path, dropped)], "BTC-USDT")
    assert report.checksum_failed == 1 and len(books) == 30
    dup = lines[: idx[30] + 1] + [lines[idx[30]]] + lines[idx[30] + 1:]
    books, _, report = run([_write(tmp_path, dup)], "BTC-USDT")
    assert report.checksum_failed == 0 and report.gaps == [] and len(books) == len(idx) + 1


def test_negative_size_and_bad_json(tmp_path, lines):
    idx = _book_lines(lines, "UNI-USD-SWAP")

    def negative(m):
        (m["data"][0]["asks"] or m["data"][0]["bids"])[0][1] = "-1"

    bad = list(lines)
    bad[idx[10]] = _replace_json(lines[idx[10]], negative)
    bad[idx[20]] = lines[idx[20]][:200]  # truncated JSON naming UNI-USD-SWAP
    books, _, report = run([_write(tmp_path, bad)], "UNI-USD-SWAP")
    assert report.negative_sizes == 1 and len(books) == 10 and report.gaps[0]["reason"] == "malformed level"
    books, _, report = run([_write(tmp_path, bad)], "BTC-USDT")  # the other books are unaffected
    assert report.bad_lines == 1 and report.gaps == [] and report.checksum_failed == 0


def _book_msg(action, bids, asks, ts, seq=None, prev=None, inst="BTC-USDT", cs=None):
    d = {"asks": [[str(p), str(q), "0", "1"] for p, q in asks], "bids": [[str(p), str(q), "0", "1"] for p, q in bids],
         "ts": str(ts)}
    if seq is not None:
        d["seqId"], d["prevSeqId"] = seq, prev
    d["checksum"] = cs
    return {"arg": {"channel": "books", "instId": inst}, "action": action, "data": [d]}


def test_seqid_continuity(tmp_path):
    book_b, book_a = {100: 1, 99: 2}, {101: 3}

    def msg(action, bids, asks, ts, seq, prev):
        if action == "snapshot":
            book_b.clear(), book_a.clear()
        for side, lv in ((book_b, bids), (book_a, asks)):
            for p, q in lv:
                side.pop(p, None) if q == 0 else side.__setitem__(p, q)
        cs = okx.checksum([f"{p}:{book_b[p]}" for p in sorted(book_b, reverse=True)],
                          [f"{p}:{book_a[p]}" for p in sorted(book_a)])
        return f"{ts / 1000:.3f}: " + json.dumps(_book_msg(action, bids, asks, ts, seq, prev, cs=cs))

    lines = [msg("snapshot", [(100, 1), (99, 2)], [(101, 3)], 1652459225000, 10, -1),
             msg("update", [(100, 2)], [], 1652459225100, 11, 10),
             msg("update", [], [], 1652459225150, 11, 11),              # keep-alive: no change
             msg("update", [(98, 1)], [], 1652459225200, 13, 12),       # 12 lost: gap
             msg("update", [(97, 1)], [], 1652459225300, 14, 13),
             msg("snapshot", [(100, 5)], [(102, 1)], 1652459225400, 20, -1),
             msg("update", [(100, 6)], [], 1652459225500, 21, 20)]
    lines.insert(3, lines[1])  # a duplicate of seq 11
    books, _, report = run([_write(tmp_path, lines)], depth=2)
    assert [b.seq for b in books] == [10, 11, 20, 21]
    assert report.gaps[0]["reason"] == "prevSeqId 12 != last seqId 11"
    assert report.gaps[0]["until"] == 1652459225400 * 10**6 and report.resyncs == 1
    assert report.duplicates == 1 and report.unsynced == 1
    np.testing.assert_array_equal(books[-1].bid_sz, [6, 0])


def test_checksum_function_matches_the_okx_doc_shape():
    # interleaved bid:ask 'price:size' strings, extra levels on one side appended in turn
    s = "3366.1:7:3366.8:9:3366:6"
    import zlib
    want = zlib.crc32(s.encode())
    want = want - 2**32 if want >= 2**31 else want
    assert okx.checksum(["3366.1:7", "3366:6"], ["3366.8:9"]) == want


def test_cli_end_to_end(real_dir, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    rc = cli(["import", str(real_dir / FILE), "--format", "okx-jsonl", "--symbol", "BTC-USDT",
              "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "checksums verified" in text and "98" in text
    book = store.load(out)
    assert book.T == 98 and book.depth == 20 and len(book.trades) == 69
    assert (book.bid_px[:, 0] < book.ask_px[:, 0]).all()
    assert book.attrs["exchange"] == "okx" and book.attrs["symbol"] == "BTC-USDT"
    bad = tmp_path / "bad.txt"
    bad.write_text("garbage\n")
    rc = cli(["import", str(bad), "--format", "okx-jsonl", "--out", str(tmp_path / "y.zarr"), "--quiet"])
    assert rc == 2 and not (tmp_path / "y.zarr").exists()
    assert "bad.txt:1" in capsys.readouterr().err


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_faults_never_yield_a_wrong_row(real_dir, lines, tmp_path_factory, data):
    """Drop / duplicate / swap / corrupt book messages: every row still emitted equals the
    clean capture's row for the same message (the checksum catches the rest)."""
    idx = _book_lines(lines, "BTC-USDT")
    clean, _, _ = run([real_dir / FILE], "BTC-USDT")
    truth = {}
    for b in clean:
        truth.setdefault(b.ts, []).append((b.bid_px.tolist(), b.ask_px.tolist(), b.bid_sz.tolist(), b.ask_sz.tolist()))
    faulty = list(lines)
    for _ in range(data.draw(st.integers(1, 3))):
        k = data.draw(st.integers(1, len(idx) - 2))
        kind = data.draw(st.sampled_from(["drop", "duplicate", "swap", "corrupt"]))
        i = faulty.index(lines[idx[k]]) if lines[idx[k]] in faulty else None
        if i is None:
            continue
        if kind == "drop":
            del faulty[i]
        elif kind == "duplicate":
            faulty.insert(i, faulty[i])
        elif kind == "swap":
            j = faulty.index(lines[idx[k + 1]]) if lines[idx[k + 1]] in faulty else None
            if j is not None:
                faulty[i], faulty[j] = faulty[j], faulty[i]
        else:
            faulty[i] = faulty[i].replace('"', "'", 1) if data.draw(st.booleans()) else \
                _replace_json(faulty[i], lambda m: (m["data"][0]["bids"] or m["data"][0]["asks"])[0].__setitem__(1, "7"))
    books, _, report = run([_write(tmp_path_factory.mktemp("f"), faulty)], "BTC-USDT")
    for b in books:
        assert (b.bid_px.tolist(), b.ask_px.tolist(), b.bid_sz.tolist(), b.ask_sz.tolist()) in truth[b.ts]
    assert report.crossed == 0
