"""`python -m gpu_engine.bench` as a user meets it: every flag checked up front, one line, exit 2.

The bench's `main(argv)` is called in-process (it goes through `gpu_engine.cli.run_main`), so
each refusal is checked for its exit status, a single stderr line naming the flag, no
traceback and nothing on stdout. Sizes that cannot fit in memory must be refused before any
array is allocated (`estimate_bytes` against the machine's physical memory), which the tests
check by making `synthetic_book` fail loudly if it is ever reached. One tiny real run
(8 configurations x 500 ticks) proves the whole path still works and reports progress.
"""
from __future__ import annotations

import json

import numba
import numpy as np
import pytest

from gpu_engine import bench


@pytest.fixture
def no_work(monkeypatch):
    """Any refusal must come before the book is generated."""

    def boom(*_a, **_k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("bench started working on refused arguments")

    monkeypatch.setattr(bench, "synthetic_book", boom)
    monkeypatch.setattr(bench, "run_bench", boom)


def _refused(capsys, argv, flag, parse=False):
    """Exit 2, nothing on stdout, one line on stderr naming `flag`. `parse`: an argparse refusal,
    which raises SystemExit(2) out of Parser.error instead of returning 2."""
    if parse:
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        code = exc.value.code
    else:
        code = bench.main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert flag in lines[0], (flag, lines[0])
    return lines[0]


def _parse_refused(capsys, argv, flag):
    return _refused(capsys, argv, flag, parse=True)


@pytest.mark.parametrize("flag, value", [
    ("--configs", "0"), ("--configs", "-5"), ("--configs", "x"), ("--configs", "1.5"),
    ("--configs", "10**12"), ("--ticks", "1"), ("--ticks", "nan"), ("--threads", "0"),
    ("--repeat", "0"), ("--levels", "0"), ("--buckets", "0"), ("--seed", "-1"),
    ("--chunk", "0"), ("--configs", "inf"), ("--device", "tpu"),
])
def test_bad_values_are_one_line_exit_2(capsys, no_work, flag, value):
    line = _parse_refused(capsys, [flag, value], flag)
    assert line.startswith("python -m gpu_engine.bench: error:")


def test_counts_accept_underscores_and_exponents():
    args = bench.build_parser().parse_args(["--configs", "1_000", "--ticks", "1e5"])
    assert args.configs == 1000 and isinstance(args.configs, int)
    assert args.ticks == 100_000 and isinstance(args.ticks, int)


def test_threads_above_numba_maximum(capsys, no_work):
    most = numba.config.NUMBA_NUM_THREADS
    line = _refused(capsys, ["--threads", str(most + 1)], "--threads")
    assert line.startswith("error: --threads:")
    assert str(most) in line


@pytest.mark.parametrize("argv, flag", [
    (["--configs", str(10 ** 12)], "--configs"),
    (["--ticks", str(10 ** 12)], "--ticks"),
    (["--levels", str(10 ** 6)], "--levels"),
    (["--configs", "100000", "--buckets", str(10 ** 8)], "--buckets"),
])
def test_sizes_beyond_memory_refused_before_allocating(capsys, no_work, argv, flag):
    line = _refused(capsys, argv, flag)
    assert line.startswith(f"error: {flag}:")
    assert "machine's" in line


def test_memory_check_uses_the_machines_memory(capsys, no_work, monkeypatch):
    monkeypatch.setattr(bench, "mem_limit", lambda: 10 * 2 ** 20)
    _refused(capsys, ["--configs", "8", "--ticks", "500"], "--")


def test_default_sizes_fit_the_estimate():
    # the documented runs must not be refused on a machine with a few GB free
    assert bench.estimate_bytes(16_384, 1_000_000, 20, 16) < 4e9
    assert bench.estimate_bytes(1_000_000, 100_000, 20, 16) < 4e9


def test_cuda_without_gpu(capsys, no_work, monkeypatch):
    from gpu_engine import backend

    if backend.gpu_available() or backend.simulator_enabled():
        pytest.skip("a GPU (or the simulator) is present: --device cuda is valid here")
    line = _refused(capsys, ["--device", "cuda", "--configs", "8", "--ticks", "500"], "--device")
    assert line.startswith("error: --device:")


def test_tiny_real_run_prints_report_and_progress(capsys):
    code = bench.main(["--configs", "8", "--ticks", "500", "--repeat", "1", "--buckets", "4"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "Traceback" not in err and "Warning" not in err
    lines = out.strip().splitlines()
    assert lines[0].startswith("device cpu, 8 configs x 500 ticks,")
    assert lines[1].startswith("kernel ") and "config-ticks/s" in lines[1]
    assert lines[2].startswith("end to end ")
    assert lines[3].startswith("trades/config ")
    for stage in ("generating", "compiling", "kernel run 1/1", "end to end", "done"):
        assert stage in err, stage

    code = bench.main(["--configs", "8", "--ticks", "500", "--repeat", "1", "--json",
                       "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    r = json.loads(out)
    assert r["configs"] == 8 and r["ticks"] == 500 and isinstance(r["threads"], int)
    assert r["kernel_cts"] > 0 and r["end_to_end_cts"] > 0


def test_tiny_maker_mix_fills_maker_orders(capsys):
    """The maker mix (rules v2): a tape of trades, passive entries; maker orders are posted and
    some fill, and the report says so."""
    code = bench.main(["--configs", "16", "--ticks", "2000", "--repeat", "1", "--mix", "maker",
                       "--queue", "log", "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    r = json.loads(out)
    assert r["mix"] == "maker" and r["queue"] == "log"
    assert r["maker_fills_per_config"] > 0
    assert 0.0 < r["maker_fill_ratio"] <= 1.0
    text = bench.format_report(r)
    assert "maker mix (log queue)" in text and "maker fill ratio" in text


def test_synthetic_trades_hit_the_touch_and_are_assigned_to_their_update():
    book = bench.synthetic_book(3000, 5, seed=3)
    tr = bench.synthetic_trades(book, seed=3)
    assert len(tr) > 2000
    assert (np.diff(tr.ts) >= 0).all()
    tick_of = np.searchsorted(book.ts, tr.ts, side="left")
    prev = tick_of - 1
    assert (prev >= 0).all()
    sell = tr.side < 0
    np.testing.assert_allclose(tr.px[sell], book.bid_px[prev[sell], 0], atol=0.0100001)
    np.testing.assert_allclose(tr.px[~sell], book.ask_px[prev[~sell], 0], atol=0.0100001)
    assert (tr.qty > 0).all()


def test_report_counts_are_integers():
    r = {"device": "cpu", "configs": 1_000_000, "ticks": 100_000, "threads": 2, "levels": 20,
         "kernel_cts": 8.1e8, "kernel_s": 123.4, "end_to_end_cts": 7e8, "end_to_end_s": 140.0,
         "features": "f", "trades_per_config": 236.4, "exposure": 0.29, "peak_rss_mb": 2058.3}
    text = bench.format_report(r)
    assert "1,000,000 configs x 100,000 ticks, 2 threads" in text
    assert "e+05 ticks" not in text and "1e+06" not in text
