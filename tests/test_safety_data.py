"""Safe by default, for the data commands (`python -m gpu_engine.data import | synth | blocks | record`).

* never destroy existing data: an existing --out is refused without --overwrite, and even with
  it only what the command itself writes is replaced (never a directory of stores, a foreign
  file, the command's own input);
* a user's mistake is one line on stderr, exit 2, no traceback, nothing created or removed;
* no leftovers: a failed run leaves nothing, a killed run's temporary is removed by the next;
* error messages name the right thing (the LOBSTER orderbook file, a file of another format).

Every CLI runs in-process (`gpu_engine.data.__main__.main`) except the kill test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.blocks import dataset as B
from gpu_engine.data.books import importers
from gpu_engine.data.synth import generate as synth
from gpu_engine.data.__main__ import main as data_main
from gpu_engine.data.books.store import Book, load, write_store
from gpu_engine.data.books.feeds.events import ImportReport
from gpu_engine.errors import InputError

REPO = Path(__file__).resolve().parents[1]
FORMATS = sorted(importers.FORMATS)
E0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC, ms


# ---------------------------------------------------------------- helpers

def tree(root: Path) -> dict:
    """Every path under root with its size and mtime (directories too): a before/after snapshot."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            # a directory's own mtime moves when anything probes it (a write check's probe file);
            # its entries are listed here anyway
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else "dir"
    return out


def run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = data_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors (one line, exit 2: gpu_engine.cli.Parser)
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def refused(argv, capsys, root: Path, *needles) -> str:
    """Run argv; assert exit 2, exactly one stderr line, no traceback, nothing changed under root."""
    before = tree(root)
    rc, out, err = run(argv, capsys)
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err + out
    for n in needles:
        assert n in err, (n, err)
    assert tree(root) == before, "a refused command changed the directory tree"
    return err


def trade_capture(path: Path, n: int = 5) -> Path:
    """A tiny binance-jsonl capture of trades only (a store of trades, no book rows)."""
    lines = []
    for i in range(n):
        e = E0 + 100 * i
        msg = {"stream": "btcusdt@trade", "data": {"e": "trade", "E": e, "s": "BTCUSDT", "t": 1 + i,
                                                     "p": "65000.0", "q": "0.1", "T": e, "m": bool(i % 2)}}
        lines.append(f"{e * 1_000_000 + 5_000_000} {json.dumps(msg)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_store(path: Path) -> Path:
    T = 4
    book = Book.from_arrays(ts=np.arange(T) * 1_000_000 + E0 * 1_000_000,
                            bid_px=np.full((T, 2), 100.0), ask_px=np.full((T, 2), 101.0),
                            bid_sz=np.ones((T, 2)), ask_sz=np.ones((T, 2)), attrs={"symbol": "X"})
    return write_store(path, book)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working directory with data/books/ holding stores, a capture and a foreign file."""
    monkeypatch.chdir(tmp_path)
    books = tmp_path / "data" / "books"
    books.mkdir(parents=True)
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        tiny_store(books / name)
    trade_capture(tmp_path / "cap.jsonl")
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path


# ---------------------------------------------------------------- 1. never destroy existing data

def test_import_refuses_existing_store_then_overwrite_replaces_it(work, capsys):
    out = work / "data" / "books" / "a.zarr"
    refused(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", out, "--quiet"],
            capsys, work, "--out", "already exists", "--overwrite")
    rc, text, err = run(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", out, "--quiet",
                         "--overwrite"], capsys)
    assert rc == 0, err
    assert len(load(out).trades) == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.zarr", "b.zarr", "c.zarr"]  # no .old/.tmp left


def test_import_never_replaces_a_directory_of_stores_even_with_overwrite(work, capsys):
    # the defect: `--out data/books` removed every store in it
    for extra in ([], ["--overwrite"]):
        refused(["import", work / "cap.jsonl", "--format", "okx-jsonl", "--out", "data/books", *extra],
                capsys, work, "data/books", "--out")
    assert all((work / "data" / "books" / n / "zarr.json").is_file() for n in ("a.zarr", "b.zarr", "c.zarr"))


def test_import_never_replaces_a_foreign_file_or_its_input(work, capsys):
    err = refused(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", "notes.txt",
                   "--overwrite"], capsys, work, "notes.txt", "not a book store")
    assert "even with --overwrite" in err
    assert (work / "notes.txt").read_text() == "mine\n"
    refused(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", work / "cap.jsonl",
             "--overwrite"], capsys, work, "input")
    assert not list(work.glob("*.old-*")) and not list(work.glob(".*.old-*"))


def test_synth_refuses_existing_out_and_foreign_out(work, capsys):
    # refused before any generation (no numba compile): fast
    refused(["synth", "--hours", "0.01", "--price", "60000", "--out", "data/books/a.zarr"],
            capsys, work, "already exists", "--overwrite")
    refused(["synth", "--hours", "0.01", "--price", "60000", "--out", "data/books", "--overwrite"],
            capsys, work, "not a book store")
    refused(["synth", "--hours", "0.01", "--price", "60000", "--out", "notes.txt", "--overwrite"],
            capsys, work, "not a book store")


def test_blocks_refuses_existing_foreign_and_own_input(work, capsys):
    rc, _, err = run(["blocks", "--blocks", "100", "--out", "b.npy"], capsys)
    assert rc == 0, err
    refused(["blocks", "--blocks", "100", "--out", "b.npy"], capsys, work, "already exists", "--overwrite")
    rc, _, err = run(["blocks", "--blocks", "120", "--out", "b.npy", "--overwrite"], capsys)
    assert rc == 0 and len(B.load(work / "b.npy")) == 120, err
    np.save(work / "foreign.npy", np.arange(3))
    refused(["blocks", "--blocks", "100", "--out", "foreign.npy", "--overwrite"], capsys, work,
            "not a block dataset")
    (work / "side.json").write_text('{"mine": 1}\n')  # the sidecar of side.npy, but not ours
    refused(["blocks", "--blocks", "100", "--out", "side.npy"], capsys, work, "side.json", "--overwrite")
    refused(["blocks", "--blocks", "100", "--out", "side.npy", "--overwrite"], capsys, work, "side.json",
            "not a block dataset sidecar")
    (work / "p.csv").write_text("Date,Close\n2014-09-17,457.3\n")
    refused(["blocks", "--until", "2014-12-31", "--prices", "p.csv", "--out", "p.json"], capsys, work,
            ".npy")


def test_record_refuses_existing_out_before_any_connection(work, capsys):
    # an unreachable endpoint: the refusal must come before any connection attempt
    common = ["--exchange", "binance", "--symbol", "BTCUSDT", "--rest-url", "http://127.0.0.1:9",
              "--ws-url", "ws://127.0.0.1:9"]
    refused(["record", *common, "--out", "data/books/a.zarr"], capsys, work, "--out", "already exists")
    refused(["record", *common, "--out", "x.zarr", "--raw", "notes.txt"], capsys, work, "--raw",
            "already exists")
    refused(["record", *common, "--out", "notes.txt/x.zarr"], capsys, work, "--out", "not a directory")


def test_default_data_written_only_where_nothing_stands(work):
    p = work / "data" / "books" / "synth.zarr"
    p.write_text("not a store, but the user's\n")
    assert synth.ensure_default(p, hours=0.01, price=60000.0) == p
    assert p.read_text() == "not a store, but the user's\n"
    side = work / "data" / "blocks.json"
    side.write_text('{"mine": 1}\n')
    with pytest.raises(InputError, match="blocks.json"):
        B.ensure_default(work / "data" / "blocks.npy")
    assert side.read_text() == '{"mine": 1}\n' and not (work / "data" / "blocks.npy").exists()


# ---------------------------------------------------------------- 2. no traceback for a user's mistake

def test_outputs_under_a_file_are_one_line_naming_the_flag(work, capsys):
    refused(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", "notes.txt/x.zarr"],
            capsys, work, "--out", "notes.txt")
    refused(["synth", "--hours", "0.01", "--price", "60000", "--out", "notes.txt/x.zarr"], capsys, work,
            "--out")
    refused(["blocks", "--blocks", "10", "--out", "notes.txt/x.npy"], capsys, work, "--out")


def test_outputs_in_a_read_only_directory(work, capsys):
    """A chmod-ed directory for a normal user; /sys (EPERM even for root) when running as root."""
    if os.geteuid() == 0:
        assert Path("/sys").is_dir(), "root and no /sys: no read-only place to try"
        ro = Path("/sys")
    else:
        ro = work / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    try:
        refused(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", ro / "x.zarr"],
                capsys, work, "--out")
        refused(["synth", "--hours", "0.01", "--price", "60000", "--out", ro / "x.zarr"], capsys, work, "--out")
        refused(["blocks", "--blocks", "10", "--out", ro / "x.npy"], capsys, work, "--out")
    finally:
        if ro != Path("/sys"):
            ro.chmod(0o755)


def test_depth_too_large_for_memory_is_refused_before_allocating(work, capsys):
    refused(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", "x.zarr",
             "--depth", "1000000000"], capsys, work, "--depth")
    refused(["record", "--exchange", "binance", "--symbol", "BTCUSDT", "--out", "x.zarr",
             "--depth", "1000000000", "--rest-url", "http://127.0.0.1:9", "--ws-url", "ws://127.0.0.1:9"],
            capsys, work, "--depth")
    refused(["blocks", "--blocks", "2000000000", "--out", "x.npy"], capsys, work, "--blocks")
    refused(["blocks", "--until", "9999-12-31", "--out", "x.npy"], capsys, work, "--until")


@pytest.mark.parametrize("case", ["dir", "missing", "empty", "binary", "depth0"])
def test_import_bad_inputs_one_line(work, capsys, case):
    (work / "empty.jsonl").write_text("")
    (work / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    arg, needle, extra = {
        "dir": (work / "data", "directory", []),
        "missing": (work / "nope.jsonl", "no such file", []),
        "empty": (work / "empty.jsonl", "empty", []),
        "binary": (work / "garbage.bin", "binary", []),
        "depth0": (work / "cap.jsonl", "--depth", ["--depth", "0"]),
    }[case]
    for fmt in FORMATS if case == "binary" else ["binance-jsonl"]:
        refused(["import", arg, "--format", fmt, "--out", "x.zarr", "--quiet", *extra], capsys, work, needle)


def test_import_unknown_format_one_line(work, capsys):
    refused(["import", work / "cap.jsonl", "--format", "bybit", "--out", "x.zarr"], capsys, work, "--format")


@pytest.mark.parametrize("argv, needle", [
    (["--hours", "-1"], "--hours"), (["--hours", "nan"], "--hours"), (["--hours", "abc"], "--hours"),
    (["--seed", "-3"], "--seed"), (["--seed", "1.5"], "--seed"), (["--start", "yesterday"], "--start"),
    (["--price", "-5"], "price"), (["--blocks", "nope.npy"], "nope.npy"), (["--blocks", "data"], "data"),
    (["--blocks", "notes.txt"], "notes.txt"),
])
def test_synth_bad_arguments_one_line(work, capsys, argv, needle):
    base = ["synth", "--out", "s.zarr", "--hours", "0.01"]
    if "--price" not in argv and "--blocks" not in argv:
        base += ["--price", "60000"]
    refused([*base, *argv], capsys, work, needle)


def test_blocks_bad_arguments_one_line(work, capsys):
    refused(["blocks", "--blocks", "10", "--seed", "-1", "--out", "x.npy"], capsys, work, "--seed")
    refused(["blocks", "--blocks", "10", "--prices", "data", "--out", "x.npy"], capsys, work, "directory")
    refused(["blocks", "--blocks", "10", "--prices", "nope.csv", "--out", "x.npy"], capsys, work, "nope.csv")
    refused(["blocks", "--summary", "notes.txt"], capsys, work, "notes.txt", "not a block dataset")
    refused(["blocks", "--summary", "data"], capsys, work, "directory")


# ---------------------------------------------------------------- 3. no leftovers

def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(work, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    books = work / "data" / "books"
    stale = [books / f".x.zarr.tmp-{dead.pid}", books / f"x.zarr.tmp-{dead.pid}",
             books / f".x.zarr.old-{dead.pid}", books / f"x.zarr.old-{dead.pid}"]
    live = books / f".x.zarr.tmp-{os.getppid()}"
    for p in stale + [live]:
        p.mkdir()
        (p / "chunk").write_bytes(b"x" * 100)
    rc, _, err = run(["import", work / "cap.jsonl", "--format", "binance-jsonl", "--out", books / "x.zarr",
                      "--quiet"], capsys)
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and live.is_dir()
    # blocks' temporaries (.NAME.PID.tmp) likewise
    t = work / f".b.npy.{dead.pid}.tmp"
    t.write_bytes(b"x")
    rc, _, err = run(["blocks", "--blocks", "10", "--out", "b.npy"], capsys)
    assert rc == 0 and not t.exists(), err


def test_import_failing_midway_leaves_nothing(work, capsys):
    (work / "bad.jsonl").write_text("this is not a capture\n" * 3)
    before = tree(work)
    rc, _, err = run(["import", work / "cap.jsonl", work / "bad.jsonl", "--format", "binance-jsonl",
                      "--out", "data/books/new.zarr", "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "bad.jsonl" in err and "Traceback" not in err
    assert tree(work) == before  # no store, no .new.zarr.tmp-PID


def test_synth_failing_midway_leaves_nothing(work, monkeypatch):
    real = synth.iter_chunks

    def broken(*a, **k):
        gen = real(*a, **k)
        yield next(gen)
        raise InputError("synthetic failure after the first chunk")

    monkeypatch.setattr(synth, "iter_chunks", broken)
    before = tree(work)
    with pytest.raises(InputError, match="synthetic failure"):
        synth.write(work / "data" / "books" / "s.zarr", hours=0.01, price=60000.0, chunk_rows=50)
    assert tree(work) == before


def test_killed_synth_leaves_a_temp_that_the_next_run_removes(tmp_path):
    out = tmp_path / "books" / "synth.zarr"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gpu_engine.data", "synth", "--hours", "0.01", "--price",
                             "60000", "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = out.with_name(f".synth.zarr.tmp-{proc.pid}")
    try:
        deadline = time.monotonic() + 120
        while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tmp.exists(), "the writer's temporary never appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if out.exists():
        pytest.skip("the synth run finished before it could be killed")
    assert tmp.exists()  # what a kill leaves
    p = synth.ensure_default(out, hours=0.01, price=60000.0)  # the next (first-run) call
    assert p == out and load(out).T > 0
    assert not tmp.exists() and sorted(x.name for x in out.parent.iterdir()) == ["synth.zarr"]


# ---------------------------------------------------------------- 4. messages name the right thing

def _lobster_pair(d: Path, n: int = 120, bad_line: int = 100) -> list[Path]:
    msg, ob = [], []
    for i in range(n):
        t = 34200 + i * 0.01
        msg.append(f"{t:.9f},1,{1000 + i},10,{5850000 + 100 * (i % 5)},1")
        ob.append(f"5860000,100,{5850000 + 100 * (i % 5)},{10 + i},")
    ob = [r.rstrip(",") for r in ob]
    ob[bad_line - 1] = "5860000,100,abc,10"
    m = d / "AAPL_2012-06-21_34200000_57600000_message_1.csv"
    o = d / "AAPL_2012-06-21_34200000_57600000_orderbook_1.csv"
    m.write_text("\n".join(msg) + "\n")
    o.write_text("\n".join(ob) + "\n")
    return [m, o]


def test_lobster_bad_orderbook_value_names_the_orderbook_file_and_line(tmp_path, capsys):
    files = _lobster_pair(tmp_path)
    rep = importers.import_files(files, "lobster", tmp_path / "l.zarr", depth=1, progress=False)
    assert rep.bad_lines == 1
    note = [n for n in rep.notes if ":100:" in n]
    assert note and note[0].startswith("AAPL_2012-06-21_34200000_57600000_orderbook_1.csv:100:"), rep.notes
    assert "abc" in note[0] and "message" not in note[0]


BYBIT = [{"topic": "orderbook.50.BTCUSDT", "type": "snapshot" if i == 0 else "delta", "ts": E0 + i,
          "data": {"s": "BTCUSDT", "b": [["65000.1", "1.2"]], "a": [["65000.2", "0.5"]], "u": 1 + i, "seq": 2 + i},
          "cts": E0 + i} for i in range(3)]
HYPERLIQUID = [{"channel": "l2Book", "data": {"coin": "BTC", "time": E0 + i, "levels": [
    [{"px": "65000", "sz": "1.0", "n": 3}], [{"px": "65001", "sz": "2.0", "n": 1}]]}} for i in range(3)]


def _write_forms(d: Path, name: str, msgs: list) -> dict[str, Path]:
    forms = {
        "bare": "".join(json.dumps(m) + "\n" for m in msgs),
        "hftbacktest": "".join(f"{(E0 + i) * 1_000_000} {json.dumps(m)}\n" for i, m in enumerate(msgs)),
        "cryptofeed": "".join(f"{(E0 + i) / 1000:.3f}: {json.dumps(m)}\n" for i, m in enumerate(msgs)),
    }
    out = {}
    for form, text in forms.items():
        p = d / f"{name}_{form}.jsonl"
        p.write_text(text)
        out[form] = p
    return out


@pytest.mark.parametrize("name, msgs, looks", [("bybit", BYBIT, "Bybit v5"),
                                               ("hyperliquid", HYPERLIQUID, "Hyperliquid")])
def test_foreign_exchange_files_say_what_they_look_like(tmp_path, capsys, name, msgs, looks):
    for form, path in _write_forms(tmp_path, name, msgs).items():
        for fmt in FORMATS:
            if fmt == name:
                continue  # its own --format reads it (tests/test_feeds_bybit.py, test_feeds_hyperliquid.py)
            err = refused(["import", path, "--format", fmt, "--out", tmp_path / "x.zarr", "--quiet"],
                          capsys, tmp_path, f"{path}:1: not a", fmt, looks, "--format choices:")
            assert all(f in err for f in FORMATS), err
            assert "KeyError" not in err and "unknown stream None" not in err


def test_readers_themselves_name_a_foreign_message(tmp_path):
    """Fed straight to a reader (the library path, no pre-check), the notes say what the line is."""
    from gpu_engine.data.books.feeds import binance, coinbase, okx

    forms = _write_forms(tmp_path, "bybit", BYBIT)
    for module, form, fmt in ((binance, "hftbacktest", "binance-jsonl"), (coinbase, "cryptofeed", "coinbase-jsonl"),
                              (okx, "cryptofeed", "okx-jsonl")):
        rep = ImportReport()
        assert list(module.read([forms[form]], 5, None, rep)) == []
        assert rep.bad_lines == 3
        assert any(f"not a{'n' if fmt[0] == 'o' else ''} {fmt} message (looks like a Bybit v5" in n
                   for n in rep.notes), (fmt, rep.notes)
        assert not any("KeyError" in n or "unknown stream None" in n for n in rep.notes)


def test_a_file_of_another_supported_format_suggests_it(work, capsys):
    refused(["import", work / "cap.jsonl", "--format", "okx-jsonl", "--out", "x.zarr"], capsys, work,
            "not an okx-jsonl message", "binance-jsonl")


# ---------------------------------------------------------------- 5. docs and numbers

def test_data_docstrings_stand_alone():
    bad = []
    for p in (REPO / "gpu_engine" / "data").rglob("*.py"):
        text = p.read_text()
        for word in ("ARCHITECTURE", "REFERENCE", "STACK.md", "shared/"):
            if word in text:
                bad.append(f"{p.relative_to(REPO)}: {word}")
    assert not bad, bad


def test_counts_print_as_integers():
    rep = ImportReport()
    rep.messages = 12_000
    rep.extra.update(lobster_checked=12_000.0, big_count=1.2e7, import_seconds=0.25)
    text = importers.format_summary(rep, "x.zarr")
    assert "e+" not in text and "12,000,000" in text and "12,000" in text
    assert "12,000.0" not in text
