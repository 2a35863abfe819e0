"""`python -m gpu_engine.data record`: CLI contract, start-up errors, signals, duration, backoff.

Uses a small synthetic capture served by the loopback fake exchange (no real data, 127.0.0.1 only).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpu_engine.data.books.store import load
from gpu_engine.errors import InputError
from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.record import Backoff, RecordConfig, Recorder, parse_duration
from gpu_engine.testing.fake_exchange import FakeExchange, write_synthetic_capture

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz")


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return write_synthetic_capture(tmp_path_factory.mktemp("cap") / "syn.jsonl.gz", n_updates=300)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gpu_engine.data", "record", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(a, b):
    for f in FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f


def test_parse_duration():
    assert parse_duration("1h") == 3600 and parse_duration("30m") == 1800
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400 and parse_duration("12") == 12
    for bad in ("", "h", "1y", "-1s", "0"):
        with pytest.raises(InputError):
            parse_duration(bad)


def test_backoff_is_exponential_with_jitter_and_capped():
    import random

    b = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    for n, d in enumerate(delays):
        full = min(8.0, 0.5 * 2 ** n)
        assert 0.5 * full <= d <= full
    assert len(set(delays)) == len(delays)  # jittered
    assert b.next(at_least=5.0) >= 5.0      # Retry-After honoured (within the cap)
    b.reset()
    assert b.next() <= 0.5


def test_unreachable_endpoint_exits_2_with_one_line(tmp_path):
    port = _free_port()
    r = _cli("--exchange", "binance", "--symbol", "BTCUSDT", "--out", str(tmp_path / "x.zarr"),
             "--rest-url", f"http://127.0.0.1:{port}", "--ws-url", f"ws://127.0.0.1:{port}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach http://127.0.0.1:"), r.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_invalid_symbol_exits_2_with_one_line(capture, tmp_path):
    with FakeExchange(capture) as fx:
        r = _cli("--exchange", "binance", "--symbol", "NOSUCHCOIN", "--out", str(tmp_path / "x.zarr"),
                 "--rest-url", fx.rest_url, "--ws-url", fx.ws_url)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: invalid symbol 'NOSUCHCOIN' on binance: Invalid symbol."], r.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_existing_output_is_refused(capture, tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with FakeExchange(capture) as fx:
        r = _cli("--exchange", "binance", "--symbol", fx.symbol, "--out", str(tmp_path / "x.zarr"),
                 "--rest-url", fx.rest_url, "--ws-url", fx.ws_url)
    assert r.returncode == 2 and "already exists" in r.stderr.strip().splitlines()[-1]


def test_coinbase_invalid_product_exits_2_and_valid_one_records(tmp_path):
    from gpu_engine.testing.fake_exchange import FakeCoinbase

    cap = tmp_path / "cb.txt"
    lines = ["wss://ws-feed.pro.coinbase.com <-> 1618677816.8434298",
             '1618677817.1: {"type":"snapshot","product_id":"AB-USD","bids":[["1.00","2"],["0.99","1"]],'
             '"asks":[["1.01","3"],["1.02","1"]]}']
    for k in range(40):
        lines.append(f'1618677817.{200 + k}: {{"type":"l2update","product_id":"AB-USD","changes":'
                     f'[["buy","0.98","{k + 1}"],["sell","1.03","{k % 3}"]],'
                     f'"time":"2021-04-17T16:43:37.{200 + k:06d}Z"}}')
    cap.write_text("\n".join(lines) + "\n")
    with FakeCoinbase(cap, "AB-USD") as fx:
        r = _cli("--exchange", "coinbase", "--symbol", "XY-USD", "--out", str(tmp_path / "x.zarr"),
                 "--rest-url", fx.rest_url, "--ws-url", fx.ws_url)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == ["error: invalid symbol 'XY-USD' on coinbase: NotFound"]
        cfg = RecordConfig(exchange="coinbase", symbol="AB-USD", out=tmp_path / "c.zarr", ws_url=fx.ws_url,
                           rest_url=fx.rest_url, clock="server", duration=1.0)
        assert asyncio.run(Recorder(cfg).run()) == 0
    import_files([cap], "coinbase-jsonl", tmp_path / "i.zarr", progress=False)
    got, want = load(tmp_path / "c.zarr"), load(tmp_path / "i.zarr")
    assert got.T == want.T == 40
    _same(got, want)


def test_websocket_refused_at_start_exits_2(capture, tmp_path):
    with FakeExchange(capture) as fx:
        fx.refuse_ws(1)
        time.sleep(0.05)
        rec = Recorder(RecordConfig(exchange="binance", symbol=fx.symbol, out=tmp_path / "x.zarr",
                                    ws_url=fx.ws_url, rest_url=fx.rest_url, clock="server"))
        with pytest.raises(InputError, match="cannot connect to ws://127.0.0.1"):
            asyncio.run(rec.run())
    assert not (tmp_path / "x.zarr").exists()  # never connected: nothing left behind


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_and_closes_a_whole_store(capture, tmp_path, sig):
    out, raw = tmp_path / "s.zarr", tmp_path / "s.jsonl.gz"
    with FakeExchange(capture, speed=5.0) as fx:  # ~6 s of replay: the signal comes mid-recording
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpu_engine.data", "record", "--exchange", "binance", "--symbol", fx.symbol,
             "--out", str(out), "--raw", str(raw), "--ws-url", fx.ws_url, "--rest-url", fx.rest_url,
             "--clock", "server", "--flush-rows", "20", "--status-seconds", "60"],
            cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            for line in proc.stderr:
                if "(flushed " in line and "(flushed 0)" not in line:
                    proc.send_signal(sig)
                    break
            rest = proc.stderr.read()
            assert proc.wait(30) == 0, rest
        finally:
            proc.kill()
        assert not fx.done.is_set()
    assert "closed" in rest
    got = load(out)
    assert got.attrs["complete"] is True and got.T > 0
    assert got.attrs["gaps"] == [] and got.attrs["record"]["rows"] == got.T
    # the raw capture is whole (gzip closed) and re-imports to the same rows
    import_files([raw], "binance-jsonl", tmp_path / "re.zarr", progress=False)
    _same(load(tmp_path / "re.zarr"), got)


def test_duration_stops_and_recording_equals_import(capture, tmp_path):
    with FakeExchange(capture) as fx:
        cfg = RecordConfig(exchange="binance", symbol=fx.symbol, out=tmp_path / "d.zarr", raw=tmp_path / "d.jsonl",
                           ws_url=fx.ws_url, rest_url=fx.rest_url, clock="server", duration=1.5)
        t0 = time.monotonic()
        assert asyncio.run(Recorder(cfg).run()) == 0
        assert 1.4 <= time.monotonic() - t0 < 10
        assert fx.done.is_set()
    got = load(tmp_path / "d.zarr")
    import_files([capture], "binance-jsonl", tmp_path / "i.zarr", progress=False)
    want = load(tmp_path / "i.zarr")
    assert got.attrs["complete"] is True and got.T == want.T > 250
    _same(got, want)
    assert np.array_equal(got.trades.qty, want.trades.qty)
