"""Table of malformed inputs across every command line: exit 2, one line, no traceback, nothing left behind.

Each case runs the command in-process in a scratch working directory (so default
paths such as data/books/synth.zarr land there, not in the checkout), with a
snapshot of that directory and of the shared fixture directory before and after:
nothing may be created, changed or removed. The one line on stderr must name the
argument, file or field at fault (`word`).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.blocks import dataset as blocks_mod
from gpu_engine.data.books.store import Book, Trades, write_store

START_NS = 1_723_075_200 * 1_000_000_000  # 2024-08-08T00:00Z

SPACE = """
[space]
name = "bad-input"
thresholds = "std"

[params.signal]
values = ["imbalance1", "ofi"]

[params.window]
value = 10

[params.entry]
values = [0.5, 1.0]

[params.side]
value = 0
"""

ONE_POINT_SPACE = """
[params.signal]
values = ["imbalance1"]

[params.entry]
value = 1.0
"""

BYBIT = {"topic": "orderbook.50.BTCUSDT", "type": "snapshot", "ts": 1723075200123, "cts": 1723075200120,
         "data": {"s": "BTCUSDT", "b": [["65000.1", "1.2"]], "a": [["65000.2", "0.8"]], "u": 1, "seq": 2}}
HYPERLIQUID = {"channel": "l2Book", "data": {"coin": "BTC", "time": 1723075200123,
                                             "levels": [[{"px": "65000", "sz": "1.0", "n": 3}],
                                                        [{"px": "65001", "sz": "2.0", "n": 1}]]}}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Inputs shared by every case (read-only for them): a store, blocks, a space, foreign files."""
    d = tmp_path_factory.mktemp("bad_input_fixtures")
    rng = np.random.default_rng(0)
    T, L = 400, 3
    ts = START_NS + np.cumsum(rng.integers(50_000_000, 150_000_000, T)).astype(np.int64)
    mid = 60_000 * np.exp(np.cumsum(rng.normal(0, 2e-4, T)))
    half = 0.05 + 0.01 * np.arange(L)
    book = Book.from_arrays(ts, mid[:, None] - half * 60, mid[:, None] + half * 60,
                            rng.uniform(0.1, 3, (T, L)).astype(np.float32),
                            rng.uniform(0.1, 3, (T, L)).astype(np.float32),
                            trades=Trades(ts=ts[::4].copy(), px=mid[::4].copy(), qty=rng.uniform(0.01, 1, T // 4),
                                          side=rng.choice([-1, 1], T // 4).astype(np.int8)),
                            attrs={"exchange": "test", "symbol": "BTCUSDT", "depth": L})
    store = write_store(d / "book.zarr", book)
    arr, meta = blocks_mod.build(until="2024-08-09")
    blocks_mod.write(d / "blocks.npy", arr, meta)
    (d / "space.toml").write_text(SPACE)
    (d / "one.toml").write_text(ONE_POINT_SPACE)
    (d / "syntax.toml").write_text("[params.signal\nvalues = [\n")
    (d / "empty.jsonl").write_text("")
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 40)
    (d / "bybit.jsonl").write_text(json.dumps(BYBIT) + "\n")
    (d / "hyperliquid.jsonl").write_text(json.dumps(HYPERLIQUID) + "\n")
    (d / "hl_hftbacktest.txt").write_text(f"1723075200123000000 {json.dumps(HYPERLIQUID)}\n")
    with gzip.open(d / "bybit.jsonl.gz", "wt") as f:
        f.write(json.dumps(BYBIT) + "\n")
    (d / "bad.csv").write_text("date,price\n2020-01-01,abc\n")
    (d / "foreign.npy").write_bytes(b"\x93NUMPY not really")
    (d / "a_file").write_text("I am a file")
    folder = d / "userfolder"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    np.save(d / "plain.npy", np.zeros(4))
    return {"dir": d, "store": str(store), "blocks": str(d / "blocks.npy"), "space": str(d / "space.toml")}


def _data_main(argv):
    from gpu_engine.data.__main__ import main
    return main(argv)


def _optimize(argv):
    from sweeps.optimize import main
    return main(argv)


def _grid(argv):
    from sweeps.grid import main
    return main(argv)


def _inspect(argv):
    from sweeps.inspect import main
    return main(argv)


def _bench(argv):
    from gpu_engine.bench import main
    return main(argv)


ENTRIES = {"data": _data_main, "optimize": _optimize, "grid": _grid, "inspect": _inspect, "bench": _bench}

# (id, entry, argv with {F} = fixture dir, {W} = scratch dir, {store}, {blocks}, {space}; word expected in the line)
SWEEP = ["--data", "{store}", "--blocks", "{blocks}", "--device", "cpu", "--no-progress"]
OPT = ["--space", "{space}", "--storage", "{W}/j.journal", "--out", "{W}/cube.zarr"] + SWEEP
GRID = ["--space", "{space}", "--out", "{W}/grid.zarr"] + SWEEP
IMPORT = ["import", "--format", "binance-jsonl", "--out", "{W}/x.zarr"]
CASES = [
    # ---- import
    ("import-missing-file", "data", ["import", "{F}/nope.jsonl", "--format", "binance-jsonl", "--out", "{W}/x.zarr"], "nope.jsonl"),
    ("import-directory-as-file", "data", ["import", "{F}/userfolder", *IMPORT[1:]], "userfolder"),
    ("import-empty-file", "data", ["import", "{F}/empty.jsonl", *IMPORT[1:]], "empty.jsonl"),
    ("import-binary-garbage", "data", ["import", "{F}/garbage.bin", *IMPORT[1:]], "garbage.bin"),
    ("import-bybit-as-binance", "data", ["import", "{F}/bybit.jsonl", *IMPORT[1:]], "bybit.jsonl"),
    ("import-bybit-gz-as-binance", "data", ["import", "{F}/bybit.jsonl.gz", *IMPORT[1:]], "bybit.jsonl.gz"),
    ("import-bybit-as-okx", "data", ["import", "{F}/bybit.jsonl", "--format", "okx-jsonl", "--out", "{W}/x.zarr"], "bybit.jsonl"),
    ("import-bybit-as-coinbase", "data", ["import", "{F}/bybit.jsonl", "--format", "coinbase-jsonl", "--out", "{W}/x.zarr"], "bybit.jsonl"),
    ("import-hyperliquid-as-binance", "data", ["import", "{F}/hyperliquid.jsonl", *IMPORT[1:]], "hyperliquid.jsonl"),
    ("import-hyperliquid-as-okx", "data", ["import", "{F}/hyperliquid.jsonl", "--format", "okx-jsonl", "--out", "{W}/x.zarr"], "hyperliquid.jsonl"),
    ("import-hyperliquid-as-coinbase", "data", ["import", "{F}/hyperliquid.jsonl", "--format", "coinbase-jsonl", "--out", "{W}/x.zarr"], "hyperliquid.jsonl"),
    ("import-hyperliquid-as-tardis", "data", ["import", "{F}/hyperliquid.jsonl", "--format", "tardis-csv", "--out", "{W}/x.zarr"], "hyperliquid.jsonl"),
    ("import-hftbacktest-line-as-binance", "data", ["import", "{F}/hl_hftbacktest.txt", *IMPORT[1:]], "hl_hftbacktest.txt"),
    ("import-lobster-one-file", "data", ["import", "{F}/empty.jsonl", "--format", "lobster", "--out", "{W}/x.zarr"], "LOBSTER"),
    ("import-unknown-format", "data", ["import", "{F}/bybit.jsonl", "--format", "bybit-v5", "--out", "{W}/x.zarr"], "--format"),
    ("import-depth-zero", "data", ["import", "{F}/bybit.jsonl", *IMPORT[1:], "--depth", "0"], "--depth"),
    ("import-depth-huge", "data", ["import", "{F}/bybit.jsonl", *IMPORT[1:], "--depth", "1000000000000"], "--depth"),
    ("import-depth-not-int", "data", ["import", "{F}/bybit.jsonl", *IMPORT[1:], "--depth", "ten"], "--depth"),
    ("import-sample-ms-negative", "data", ["import", "{F}/bybit.jsonl", *IMPORT[1:], "--sample-ms", "-5"], "--sample-ms"),
    ("import-out-existing-store", "data", ["import", "{F}/bybit.jsonl", "--format", "binance-jsonl", "--out", "{store}"], "--overwrite"),
    ("import-out-folder-overwrite", "data", ["import", "{F}/bybit.jsonl", "--format", "binance-jsonl", "--out", "{F}/userfolder", "--overwrite"], "userfolder"),
    ("import-out-is-input", "data", ["import", "{F}/bybit.jsonl", "--format", "binance-jsonl", "--out", "{F}/bybit.jsonl", "--overwrite"], "bybit.jsonl"),
    ("import-out-under-file", "data", ["import", "{F}/bybit.jsonl", "--format", "binance-jsonl", "--out", "{F}/a_file/x.zarr"], "a_file"),
    ("import-out-read-only", "data", ["import", "{F}/bybit.jsonl", "--format", "binance-jsonl", "--out", "/sys/x.zarr"], "/sys"),
    ("import-no-out", "data", ["import", "{F}/bybit.jsonl", "--format", "binance-jsonl"], "--out"),
    # ---- synth
    ("synth-hours-zero", "data", ["synth", "--hours", "0", "--out", "{W}/s.zarr", "--price", "60000"], "--hours"),
    ("synth-hours-negative", "data", ["synth", "--hours", "-1", "--out", "{W}/s.zarr", "--price", "60000"], "--hours"),
    ("synth-hours-nan", "data", ["synth", "--hours", "nan", "--out", "{W}/s.zarr", "--price", "60000"], "--hours"),
    ("synth-hours-text", "data", ["synth", "--hours", "six", "--out", "{W}/s.zarr"], "--hours"),
    ("synth-seed-negative", "data", ["synth", "--seed", "-1", "--out", "{W}/s.zarr", "--price", "60000"], "--seed"),
    ("synth-start-bad", "data", ["synth", "--start", "yesterday", "--out", "{W}/s.zarr", "--price", "60000"], "--start"),
    ("synth-price-negative", "data", ["synth", "--price", "-5", "--out", "{W}/s.zarr"], "--price"),
    ("synth-out-user-folder", "data", ["synth", "--out", "{F}/userfolder", "--price", "60000"], "userfolder"),
    ("synth-out-user-folder-overwrite", "data", ["synth", "--out", "{F}/userfolder", "--price", "60000", "--overwrite"], "userfolder"),
    ("synth-out-existing-store", "data", ["synth", "--out", "{store}", "--price", "60000"], "--overwrite"),
    ("synth-blocks-missing", "data", ["synth", "--out", "{W}/s.zarr", "--blocks", "{F}/nope.npy"], "nope.npy"),
    ("synth-out-under-file", "data", ["synth", "--out", "{F}/a_file/s.zarr", "--price", "60000"], "a_file"),
    # ---- blocks
    ("blocks-count-zero", "data", ["blocks", "--blocks", "0", "--out", "{W}/b.npy"], "--blocks"),
    ("blocks-count-negative", "data", ["blocks", "--blocks", "-5", "--out", "{W}/b.npy"], "--blocks"),
    ("blocks-until-bad", "data", ["blocks", "--until", "someday", "--out", "{W}/b.npy"], "--until"),
    ("blocks-until-before-genesis", "data", ["blocks", "--until", "2008-01-01", "--out", "{W}/b.npy"], "--until"),
    ("blocks-prices-missing", "data", ["blocks", "--blocks", "100", "--prices", "{F}/nope.csv", "--out", "{W}/b.npy"], "nope.csv"),
    ("blocks-prices-garbage", "data", ["blocks", "--blocks", "100", "--prices", "{F}/bad.csv", "--out", "{W}/b.npy"], "bad.csv"),
    ("blocks-chain-stats-garbage", "data", ["blocks", "--blocks", "100", "--chain-stats", "{F}/bad.csv", "--out", "{W}/b.npy"], "bad.csv"),
    ("blocks-out-not-npy", "data", ["blocks", "--blocks", "100", "--out", "{W}/b.txt"], "--out"),
    ("blocks-out-foreign-npy", "data", ["blocks", "--blocks", "100", "--out", "{F}/plain.npy"], "--overwrite"),
    ("blocks-out-foreign-npy-overwrite", "data", ["blocks", "--blocks", "100", "--out", "{F}/plain.npy", "--overwrite"], "plain.npy"),
    ("blocks-out-existing-dataset", "data", ["blocks", "--blocks", "100", "--out", "{blocks}"], "--overwrite"),
    ("blocks-summary-missing", "data", ["blocks", "--summary", "{F}/nope.npy"], "nope.npy"),
    ("blocks-summary-foreign", "data", ["blocks", "--summary", "{F}/foreign.npy"], "foreign.npy"),
    # ---- record (all refused before any connection)
    ("record-depth-zero", "data", ["record", "--exchange", "binance", "--symbol", "BTCUSDT", "--depth", "0", "--out", "{W}/r.zarr"], "--depth"),
    ("record-depth-huge", "data", ["record", "--exchange", "binance", "--symbol", "BTCUSDT", "--depth", "1000000000000", "--out", "{W}/r.zarr"], "--depth"),
    ("record-out-existing", "data", ["record", "--exchange", "binance", "--symbol", "BTCUSDT", "--out", "{store}"], "exist"),
    ("record-duration-bad", "data", ["record", "--exchange", "binance", "--symbol", "BTCUSDT", "--duration", "soon", "--out", "{W}/r.zarr"], "--duration"),
    ("record-unknown-exchange", "data", ["record", "--exchange", "kraken", "--symbol", "BTCUSDT", "--out", "{W}/r.zarr"], "--exchange"),
    ("record-out-under-file", "data", ["record", "--exchange", "binance", "--symbol", "BTCUSDT", "--out", "{F}/a_file/r.zarr"], "a_file"),
    # ---- optimize
    ("optimize-trials-zero", "optimize", [*OPT, "--trials", "0"], "--trials"),
    ("optimize-batch-zero", "optimize", [*OPT, "--batch", "0"], "--batch"),
    ("optimize-sampler-unknown", "optimize", [*OPT, "--sampler", "grid"], "--sampler"),
    ("optimize-objective-unknown", "optimize", [*OPT, "--objective", "luck"], "--objective"),
    ("optimize-target-reversed", "optimize", [*OPT, "--target-win-rate", "0.7", "0.6"], "--target-win-rate"),
    ("optimize-target-outside", "optimize", [*OPT, "--target-win-rate", "2", "3"], "--target-win-rate"),
    ("optimize-storage-unknown-scheme", "optimize", [*OPT[:2], "--storage", "foo://x", *OPT[4:]], "--storage"),
    ("optimize-storage-unreachable-db", "optimize", [*OPT[:2], "--storage", "postgresql://nobody@127.0.0.1:1/db", *OPT[4:]], "--storage"),
    ("optimize-storage-under-file", "optimize", [*OPT[:2], "--storage", "{F}/a_file/j.journal", *OPT[4:]], "--storage"),
    ("optimize-out-is-data", "optimize", [*OPT[:4], "--out", "{store}", *SWEEP, "--overwrite"], "--data"),
    ("optimize-out-user-folder", "optimize", [*OPT[:4], "--out", "{F}/userfolder", *SWEEP], "userfolder"),
    ("optimize-out-user-folder-overwrite", "optimize", [*OPT[:4], "--out", "{F}/userfolder", *SWEEP, "--overwrite"], "userfolder"),
    ("optimize-out-under-file", "optimize", [*OPT[:4], "--out", "{F}/a_file/c.zarr", *SWEEP], "a_file"),
    ("optimize-data-missing", "optimize", [*OPT[:6], "--data", "{F}/nope.zarr", "--blocks", "{blocks}"], "nope.zarr"),
    ("optimize-data-plain-folder", "optimize", [*OPT[:6], "--data", "{F}/userfolder", "--blocks", "{blocks}"], "userfolder"),
    ("optimize-data-is-a-file", "optimize", [*OPT[:6], "--data", "{F}/a_file", "--blocks", "{blocks}"], "a_file"),
    ("optimize-blocks-foreign", "optimize", [*OPT[:6], "--data", "{store}", "--blocks", "{F}/foreign.npy"], "foreign.npy"),
    ("optimize-space-missing", "optimize", ["--space", "{F}/nope.toml", *OPT[2:]], "nope.toml"),
    ("optimize-space-syntax", "optimize", ["--space", "{F}/syntax.toml", *OPT[2:]], "syntax.toml"),
    ("optimize-fee-negative", "optimize", [*OPT, "--fee-bps", "-1"], "--fee-bps"),
    ("optimize-latency-nan", "optimize", [*OPT, "--latency-ms", "nan"], "--latency-ms"),
    ("optimize-capital-zero", "optimize", [*OPT, "--capital", "0"], "--capital"),
    ("optimize-buckets-one", "optimize", [*OPT, "--buckets", "1"], "--buckets"),
    ("optimize-is-frac-outside", "optimize", [*OPT, "--is-frac", "1.5"], "--is-frac"),
    ("optimize-purge-too-big", "optimize", [*OPT, "--purge-frac", "0.9"], "--purge-frac"),
    ("optimize-oos-top-zero", "optimize", [*OPT, "--oos-top", "0"], "--oos-top"),
    ("optimize-device-unknown", "optimize", [*OPT, "--device", "tpu"], "--device"),
    # ---- grid
    ("grid-batch-zero", "grid", [*GRID, "--batch", "0"], "--batch"),
    ("grid-out-user-folder", "grid", [*GRID[:2], "--out", "{F}/userfolder", *SWEEP], "userfolder"),
    ("grid-out-user-folder-overwrite", "grid", [*GRID[:2], "--out", "{F}/userfolder", *SWEEP, "--overwrite"], "userfolder"),
    ("grid-out-is-data", "grid", [*GRID[:2], "--out", "{store}", *SWEEP, "--overwrite"], "--data"),
    ("grid-out-under-file", "grid", [*GRID[:2], "--out", "{F}/a_file/g.zarr", *SWEEP], "a_file"),
    ("grid-nothing-to-sweep", "grid", ["--space", "{F}/one.toml", *GRID[2:]], "nothing to sweep"),
    ("grid-no-space", "grid", GRID[2:], "--space"),
    ("grid-fee-negative", "grid", [*GRID, "--fee-bps", "-3"], "--fee-bps"),
    # ---- inspect
    ("inspect-missing", "inspect", ["{F}/nope.zarr"], "nope.zarr"),
    ("inspect-book-store", "inspect", ["{store}"], "book.zarr"),
    ("inspect-plain-folder", "inspect", ["{F}/userfolder"], "userfolder"),
    ("inspect-a-file", "inspect", ["{F}/a_file"], "a_file"),
    ("inspect-top-zero", "inspect", ["{store}", "--top", "0"], "--top"),
    # ---- bench
    ("bench-configs-zero", "bench", ["--configs", "0"], "--configs"),
    ("bench-configs-huge", "bench", ["--configs", "1000000000000"], "--configs"),
    ("bench-ticks-negative", "bench", ["--ticks", "-1"], "--ticks"),
    ("bench-ticks-huge", "bench", ["--ticks", "1000000000000"], "--ticks"),
    ("bench-threads-zero", "bench", ["--threads", "0"], "--threads"),
    ("bench-repeat-zero", "bench", ["--repeat", "0"], "--repeat"),
    ("bench-levels-zero", "bench", ["--levels", "0"], "--levels"),
    ("bench-chunk-zero", "bench", ["--chunk", "0"], "--chunk"),
    ("bench-buckets-zero", "bench", ["--buckets", "0"], "--buckets"),
    ("bench-device-cuda-without-gpu", "bench", ["--device", "cuda", "--configs", "8", "--ticks", "100"], "--device"),
]


def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def _fill(arg: str, fx: dict, work: Path) -> str:
    return (arg.replace("{F}", str(fx["dir"])).replace("{W}", str(work)).replace("{store}", fx["store"])
            .replace("{blocks}", fx["blocks"]).replace("{space}", fx["space"]))


def test_the_table_is_big_enough():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    assert {c[1] for c in CASES} == set(ENTRIES)


@pytest.mark.parametrize("case_id, entry, argv, word", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_exits_2_one_line_nothing_left(fx, tmp_path, monkeypatch, capsys, case_id, entry, argv,
                                                       word):
    if "/sys" in " ".join(argv) and not Path("/sys").is_dir():
        pytest.skip("no /sys on this machine")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [_fill(a, fx, work) for a in argv]
    word = _fill(word, fx, work)
    before_fx, before_work = _snapshot(fx["dir"]), _snapshot(work)
    try:
        rc = ENTRIES[entry](argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert rc == 2, f"exit {rc}; stderr: {cap.err[-2000:]}; stdout: {cap.out[-500:]}"
    assert "Traceback" not in cap.err
    assert len(err.splitlines()) == 1, cap.err
    assert word in err, err
    assert _snapshot(work) == before_work, "the command left something behind"
    assert _snapshot(fx["dir"]) == before_fx, "the command changed its inputs or a user's files"
