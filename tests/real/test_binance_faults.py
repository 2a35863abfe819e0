"""Fault injection and bad input on real Binance captures.

Property (hypothesis, few examples): drop / duplicate / reorder / cut / corrupt lines,
or truncate the file, anywhere in a real capture (a prefix of it, augmented with
resync snapshot lines taken from the clean replay). Then:
* every emitted book row equals the clean import's row with the same seq
  (0 rows from a book known to be wrong), trades are a subsequence of the clean ones;
* a fault is harmless (rows identical to the clean import) or detected (a gap, a
  refused line, a bad line ... in the report);
* after the first intact snapshot line following the faults, the import has
  resynced: every clean row from there on is emitted.
Bad input: each kind is counted in the summary and never applied; unusable input
exits 2 with one line naming file and line, and leaves no store.
"""
from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gpu_engine.data.__main__ import main as cli_main
from gpu_engine.data.books.store import load
from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds import binance
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.importers import import_files

DEPTH = 5
CAPTURES = {  # name -> lines of the prefix used (each holds the original snapshot line)
    "binance_usdm_btcusdt_20230404.jsonl.gz": 6000,
    "binance_spot_btcusdt_20240808.jsonl.gz": 9000,
}
RESYNC_EVERY = 200  # rows between injected snapshot lines


def run(lines: list[bytes], sync=None):
    """Read lines as a capture: (rows, trades, report); report None if the input was unusable."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "cap.jsonl"
        p.write_bytes(b"\n".join(lines) + b"\n")
        rep = ImportReport()
        try:
            items = list(binance.read([p], DEPTH, None, rep, sync=sync))
        except InputError:
            return [], [], None
    rows = [x for x in items if isinstance(x, BookRow)]
    trades = [x for x in items if isinstance(x, TradeRow)]
    return rows, trades, rep


def augmented(real_dir: Path, name: str):
    """Capture prefix with snapshot lines of the clean replay's full book inserted every
    RESYNC_EVERY rows (as a recorder would write them); + its clean rows and trades."""
    with gzip.open(real_dir / name, "rb") as f:
        lines = [ln.rstrip(b"\n") for _, ln in zip(range(CAPTURES[name]), f)]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "cap.jsonl"
        p.write_bytes(b"\n".join(lines) + b"\n")
        rep = ImportReport()
        sync = binance.DepthSync(rep, DEPTH)
        snaps = {}
        for i, item in enumerate(x for x in binance.read([p], DEPTH, None, rep, sync=sync)
                                 if isinstance(x, BookRow)):
            if i % RESYNC_EVERY == RESYNC_EVERY // 2 and sync.local_id == item.seq:
                snaps[item.seq] = (item.local_ts, sync.snapshot())
    out = []
    for ln in lines:
        out.append(ln)
        if b"depthUpdate" in ln:
            u = json.loads(ln.split(b" ", 1)[1])["data"]["u"]
            if u in snaps:
                local, snap = snaps.pop(u)
                out.append(b"%d %s" % (local, json.dumps(snap).encode()))
    assert not snaps
    rows, trades, rep = run(out)
    assert rep.bad_lines == 0 and not [g for g in rep.gaps if g["kind"] != "out_of_range"]
    assert rep.extra["snapshots_ignored_in_sync"] >= 3
    return out, rows, trades, rep.unsynced


_CLEAN: dict[str, tuple] = {}


class Clean(tuple):
    """(lines, rows, trades, unsynced count) with a short repr (hypothesis prints the arguments of failures)."""

    def __repr__(self):
        return f"<clean capture: {len(self[0])} lines, {len(self[1])} rows>"


@pytest.fixture(scope="module", params=sorted(CAPTURES))
def clean(real_dir, request):
    if request.param not in _CLEAN:
        _CLEAN[request.param] = Clean(augmented(real_dir, request.param))
    return _CLEAN[request.param]


def test_injected_snapshots_do_not_change_the_clean_import(clean):
    lines, rows, trades, _ = clean
    # injected lines: json.dumps style ('"lastUpdateId": N, "bids"'); the originals have no
    # space (2024) or carry "E" (2023 futures)
    plain = [ln for ln in lines if not (b'"lastUpdateId": ' in ln and b'"E"' not in ln)]
    injected = len(lines) - len(plain)
    assert injected >= 3 and len(rows) > 700 and len(trades) > 300
    plain_rows, plain_trades, _ = run(plain)
    assert len(plain_rows) == len(rows) and all(same_row(a, b) for a, b in zip(plain_rows, rows))
    assert plain_trades == trades


def same_row(a: BookRow, b: BookRow) -> bool:
    return (a.ts == b.ts and a.seq == b.seq and np.array_equal(a.bid_px, b.bid_px, equal_nan=True)
            and np.array_equal(a.ask_px, b.ask_px, equal_nan=True)
            and np.array_equal(a.bid_sz, b.bid_sz) and np.array_equal(a.ask_sz, b.ask_sz))


def is_subsequence(sub, full) -> bool:
    it = iter(full)
    return all(any(x == y for y in it) for x in sub)


FAULTS = ("drop", "duplicate", "reorder", "cut", "corrupt", "truncate")
fault_list = st.lists(st.tuples(st.sampled_from(FAULTS), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=3)


def inject(lines: list[bytes], faults) -> tuple[list[bytes], int]:
    """Apply faults (kind, where in [0,1], detail in [0,1]); returns (lines, last faulted index)."""
    out = list(lines)
    last = -1
    for kind, where, detail in faults:
        if len(out) < 3:
            break
        i = min(int(where * len(out)), len(out) - 2)
        ln = out[i]
        if kind == "drop":
            del out[i]
        elif kind == "duplicate":
            out.insert(i + 1, ln)
            i += 1
        elif kind == "reorder":
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 1
        elif kind == "cut":
            out[i] = ln[: int(detail * (len(ln) - 1))]
        elif kind == "corrupt":
            k = int(detail * len(ln))
            out[i] = ln[:k] + b"#\x01" + ln[k:]
        elif kind == "truncate":
            out = out[: i + 1]
        last = max(last, i)
    return out, last


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(faults=fault_list)
def test_faults_are_harmless_or_detected_never_wrong(clean, faults):
    lines, clean_rows, clean_trades, clean_unsynced = clean
    bad_lines, last = inject(lines, faults)
    rows, trades, rep = run(bad_lines)
    if rep is None:  # unusable input (InputError): allowed only when no usable line is left
        assert sum(1 for ln in bad_lines if ln.strip()) <= 3
        return
    by_seq = {r.seq: r for r in clean_rows}
    wrong = [r.seq for r in rows if r.seq not in by_seq or not same_row(r, by_seq[r.seq])]
    assert wrong == [], f"rows from a wrong book at seq {wrong[:5]}"
    assert is_subsequence([(t.ts, t.px, t.qty, t.side) for t in trades],
                          [(t.ts, t.px, t.qty, t.side) for t in clean_trades])
    truncated = any(k == "truncate" for k, _, _ in faults)
    detected = (rep.bad_lines + rep.negative_sizes + rep.time_backwards + rep.stale_snapshots
                + len([g for g in rep.gaps if g["kind"] != "out_of_range"])
                + rep.extra.get("other_symbol", 0) + rep.extra.get("blank_lines", 0)
                + rep.extra.get("trades_out_of_order_or_repeated", 0) + rep.extra.get("trade_id_gaps", 0)
                + (rep.unsynced != clean_unsynced))
    if not truncated and not detected:
        assert len(rows) == len(clean_rows), "rows lost without any fault being reported"
        # a trade lost before the first one kept cannot be noticed (no earlier id to compare)
        assert trades == clean_trades[len(clean_trades) - len(trades):], "trades lost unreported"
    if not truncated:
        # resynced: from the first intact injected snapshot after the faults, all clean rows are back
        later = [j for j in range(last + 2, len(bad_lines))
                 if b"lastUpdateId" in bad_lines[j] and bad_lines[j] in lines[1:]]
        if later:
            snap_id = json.loads(bad_lines[later[0]].split(b" ", 1)[1])["lastUpdateId"]
            want = [r.seq for r in clean_rows if r.seq > snap_id]
            got = {r.seq for r in rows}
            assert all(s in got for s in want), "no resync after the faults"


def test_each_fault_kind_once(clean):
    """Deterministic companions of the property: one fault of each kind mid-file."""
    lines, clean_rows, _, _ = clean
    depth_idx = [i for i, ln in enumerate(lines) if b"depthUpdate" in ln]
    i = depth_idx[len(depth_idx) // 3]
    # duplicate a depth line: harmless (ignored as duplicate)
    rows, _, rep = run(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    assert len(rows) == len(clean_rows) and rep.duplicates == 1
    # drop a depth line: a gap, then a resync at the next injected snapshot
    rows, _, rep = run(lines[:i] + lines[i + 1:])
    gaps = [g for g in rep.gaps if g["kind"] == "id_gap"]
    assert len(gaps) == 1 and gaps[0]["until"] is not None and rep.resyncs == 1
    assert 0 < len(clean_rows) - len(rows) <= RESYNC_EVERY + 1
    # swap two depth lines: the later one arrives first -> gap
    j = depth_idx[len(depth_idx) // 3 + 1]
    swapped = list(lines)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    rows, _, rep = run(swapped)
    assert any(g["kind"] == "id_gap" for g in rep.gaps) and rep.resyncs == 1
    # corrupt a price inside a depth line: refused, gap at once
    k = lines[i].index(b'"b":[["') + 7
    rows, _, rep = run(lines[:i] + [lines[i][:k] + b"x" + lines[i][k:]] + lines[i + 1:])
    assert rep.bad_lines == 1 and any(g["kind"] == "refused" for g in rep.gaps) and rep.resyncs == 1


# ----------------------------------------------------------------------------- bad input, end to end

def write_gz(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def real_lines(real_dir, name="binance_spot_btcusdt_20240808.jsonl.gz", n=5000):
    with gzip.open(real_dir / name, "rb") as f:
        return [ln.rstrip(b"\n") for _, ln in zip(range(n), f)]


def first_depth_after_snapshot(lines):
    s = next(i for i, ln in enumerate(lines) if b"lastUpdateId" in ln)
    return s, [i for i, ln in enumerate(lines) if b"depthUpdate" in ln and i > s]


def cli(tmp_path, capsys, src):
    out = tmp_path / "o.zarr"
    rc = cli_main(["import", str(src), "--format", "binance-jsonl", "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err, out


def test_bad_lines_are_counted_in_the_summary(real_dir, tmp_path, capsys):
    lines = real_lines(real_dir)
    s, d = first_depth_after_snapshot(lines)
    bad = list(lines)
    bad[d[5]] = bad[d[5]].replace(b'"b":[["', b'"b":[["abc', 1)              # non-number price
    k = bad[d[40]].index(b'","', bad[d[40]].index(b'"a":[["'))
    bad[d[40]] = bad[d[40]][:k + 3] + b"-" + bad[d[40]][k + 3:]                # negative size
    ts = bad[d[60]].split(b" ", 1)[0]
    bad.insert(d[60], ts + b" this is not json")
    bad.insert(d[61], ts + b' {"stream":"btcusdt@nonsense","data":{"e":"nonsense"}}')
    i = d[80] + 2
    line = bad[i]
    j = line.index(b'"E":') + 4
    bad[i] = line[:j] + b"%d" % (int(line[j:j + 13]) - 60_000) + line[j + 13:]  # E 60 s back
    src = write_gz(tmp_path / "bad.jsonl.gz", bad)
    rc, out, err, store = cli(tmp_path, capsys, src)
    assert rc == 0, err
    counts = {ln.rsplit(None, 1)[0].strip(): ln.rsplit(None, 1)[1] for ln in out.splitlines()
              if ln.startswith("  ") and ln.strip()[-1:].isdigit() and "time span" not in ln}
    assert counts["bad lines"] == "3"          # the non-number, non-JSON and unknown-stream lines
    assert counts["negative sizes refused"] == "1"
    assert counts["timestamps going backwards"] == "1"  # the depthUpdate 60 s back
    assert counts["unknown_stream"] == "1"
    assert "refused" in out and "bad line" in out
    book = load(store)
    assert book.T > 0 and np.all(np.diff(book.ts) >= 0)
    # nothing after the first refused depth line: no later snapshot in this prefix
    first_bad_u = json.loads(lines[d[5]].split(b" ", 1)[1])["data"]["u"]
    assert book.seq.max() < first_bad_u


def test_truncated_gzip_keeps_the_lines_before(real_dir, tmp_path, capsys):
    data = (real_dir / "binance_usdm_btcusdt_20230404.jsonl.gz").read_bytes()
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    rc, out, err, store = cli(tmp_path, capsys, src)
    assert rc == 0, err
    assert "compressed stream broken" in out and "bad lines" in out
    book = load(store)
    assert 1000 < book.T < 4322


def test_snapshot_older_than_buffered_updates(real_dir, tmp_path, capsys):
    lines = real_lines(real_dir)
    s, d = first_depth_after_snapshot(lines)
    # the diffs up to the snapshot's lastUpdateId + 1 are missing and the snapshot line
    # arrives after later diffs: the first buffered U > lastUpdateId + 1
    late = [ln for i, ln in enumerate(lines[:d[5] + 1]) if b"depthUpdate" not in ln or i > s]
    late = [ln for ln in late if ln is not lines[s]] + [lines[s]] + lines[d[5] + 1:]
    rc, out, err, store = cli(tmp_path, capsys, write_gz(tmp_path / "late.jsonl.gz", late))
    assert rc == 0 and "snapshots older than the buffered updates" in out
    assert "older than the buffered updates" in out and load(store).T == 0


def test_unusable_input_exits_2_without_a_store(real_dir, tmp_path, capsys):
    src = tmp_path / "notes.jsonl"
    src.write_text("hello\nworld\n")
    rc, out, err, store = cli(tmp_path, capsys, src)
    assert rc == 2 and err.count("\n") == 1 and "notes.jsonl:1" in err
    assert not list(tmp_path.glob("*o.zarr*"))
    garbage = tmp_path / "g.jsonl.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    rc, out, err, store = cli(tmp_path, capsys, garbage)
    assert rc == 2 and "g.jsonl.gz" in err and not list(tmp_path.glob("*o.zarr*"))
    # a capture of bookTicker lines only: nothing usable
    only = [ln for ln in real_lines(real_dir, n=500) if b"bookTicker" in ln]
    rc, out, err, store = cli(tmp_path, capsys, write_gz(tmp_path / "bt.jsonl.gz", only))
    assert rc == 2 and "nothing usable" in err and not list(tmp_path.glob("*o.zarr*"))


def test_store_matches_direct_reader(real_dir, tmp_path):
    path = real_dir / "binance_usdm_btcusdt_20230404.jsonl.gz"
    rep = ImportReport()
    rows = [x for x in binance.read([path], DEPTH, None, rep) if isinstance(x, BookRow)]
    out = tmp_path / "d.zarr"
    import_files([path], "binance-jsonl", out, depth=DEPTH, progress=False, chunk_rows=1000)
    book = load(out)
    assert book.T == len(rows)
    np.testing.assert_array_equal(book.seq, [r.seq for r in rows])
    np.testing.assert_array_equal(book.ask_sz, np.stack([r.ask_sz for r in rows]))
