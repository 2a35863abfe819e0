"""`gpu_engine.data.download.http`: checks, retries, resume, and the download command's contract.

Loopback fakes only (127.0.0.1, port 0; `tests/download_fakes.py`), small synthetic files: no real
data is needed here (the end-to-end tests on real captures are test_download_tardis.py and
test_download_binance_archive.py).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu_engine.data.__main__ import main
from gpu_engine.data.download import http
from gpu_engine.data.download.http import Client, CorruptError, GzipCheck, Job, Sha256Check
from tests.download_fakes import ArchiveFake, FakeServer, TardisFake, gz, zip_bytes

REPO = Path(__file__).resolve().parents[1]


def payload(n_rows=4000, seed=0) -> bytes:
    rng = random.Random(seed)
    rows = ["exchange,symbol,timestamp,local_timestamp,id,side,price,amount"]
    t = 1_722_470_400_000_000
    for i in range(n_rows):
        t += rng.randint(1, 5000)
        rows.append(f"binance-futures,BTCUSDT,{t},{t + 7},{i},{rng.choice(('buy', 'sell'))},"
                    f"{61000 + rng.randint(0, 999) / 10},{rng.randint(1, 999) / 1000}")
    return gz("\n".join(rows) + "\n")


def client(**kw) -> Client:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("retries", 3)
    return Client(**kw)


def job(srv: FakeServer, path: str, dest: Path, check=GzipCheck) -> Job:
    return Job(url=srv.url + path, dest=dest, check=check, label=path)


# ---------------------------------------------------------------- the checks

def test_gzip_check_whole_stream_only():
    data = payload(500)
    c = GzipCheck()
    for i in range(0, len(data), 777):
        c.update(data[i:i + 777])
    info = c.finish(Path("x"))
    assert info["members"] == 1 and info["inflated_bytes"] == len(gzip.decompress(data))
    two = data + gz("more\n")  # a multi-member stream is one valid file
    c = GzipCheck()
    c.update(two)
    assert c.finish(Path("x"))["members"] == 2
    c = GzipCheck()
    c.update(gz(""))  # an empty gzip: valid, "no data"
    assert c.finish(Path("x"))["inflated_bytes"] == 0
    cut = GzipCheck()
    cut.update(data[:-9])  # truncated: the trailer is missing
    with pytest.raises(CorruptError, match="cut short"):
        cut.finish(Path("x"))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(CorruptError):
        c = GzipCheck()
        c.update(bytes(bad))
        c.finish(Path("x"))
    with pytest.raises(CorruptError, match="CRC|incorrect|corrupt"):  # the trailer's CRC itself
        c = GzipCheck()
        crc = bytearray(data)
        crc[-8] ^= 0x01
        c.update(bytes(crc))
        c.finish(Path("x"))
    with pytest.raises(CorruptError, match="not a gzip"):
        GzipCheck().update(b"<html>rate limited</html>")
    with pytest.raises(CorruptError, match="after the end"):
        GzipCheck().update(data + b"junk")
    with pytest.raises(CorruptError, match="empty"):
        GzipCheck().finish(Path("x"))


def test_sha256_check_and_zip_crc(tmp_path):
    data = zip_bytes("X-trades-2024-01-01.csv", "1,2,3,4,1704067200000,true\n")
    p = tmp_path / "x.zip"
    p.write_bytes(data)
    ok = Sha256Check(hashlib.sha256(data).hexdigest())
    ok.update(data)
    assert ok.finish(p)["members"] == ["X-trades-2024-01-01.csv"]
    wrong = Sha256Check("0" * 64)
    wrong.update(data)
    with pytest.raises(CorruptError, match="does not match"):
        wrong.finish(p)


def test_retry_after_parsing():
    assert http.retry_after_seconds("3") == 3.0
    assert http.retry_after_seconds(None) is None and http.retry_after_seconds("soon") is None
    assert abs(http.retry_after_seconds("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) - 6.0) < 1e-9


def test_backoff_exponential_jittered_capped():
    c = client(backoff_base=1.0, backoff_max=8.0, rng=random.Random(1))
    for n, hi in ((0, 1), (1, 2), (2, 4), (3, 8), (6, 8)):
        d = c.backoff(n)
        assert hi / 2 <= d <= hi
    c.close()


# ---------------------------------------------------------------- the client against the fake server

def test_cut_mid_file_resumes_with_range(tmp_path):
    data = payload()
    with FakeServer() as srv, client() as c:
        srv.files["/a.csv.gz"] = data
        srv.fault("/a.csv.gz", ("cut", 5000), ("cut", 9000))
        out = c.download(job(srv, "/a.csv.gz", tmp_path / "a.csv.gz"))
        assert out.status == "done", out.reason
        assert (tmp_path / "a.csv.gz").read_bytes() == data
        assert [r["range"] for r in srv.requests] == [None, "bytes=5000-", "bytes=14000-"]
        assert not (tmp_path / "a.csv.gz.part").exists()


def test_429_retry_after_honoured_and_5xx_retried(tmp_path):
    data = payload(300)
    with FakeServer() as srv, client() as c:
        srv.files["/a.csv.gz"] = data
        srv.fault("/a.csv.gz", ("status", 429, {"Retry-After": "1"}), ("status", 503))
        t0 = time.monotonic()
        out = c.download(job(srv, "/a.csv.gz", tmp_path / "a.csv.gz"))
        waited = time.monotonic() - t0
        assert out.status == "done" and out.requests == 3
        assert waited >= 1.0, waited  # the Retry-After second, not the 0.01 s backoff


def test_retries_are_bounded_and_the_part_is_kept(tmp_path):
    data = payload()
    with FakeServer() as srv, client(retries=2) as c:
        srv.files["/a.csv.gz"] = data
        srv.fault("/a.csv.gz", ("cut", 4000), *[("status", 500)] * 3)
        out = c.download(job(srv, "/a.csv.gz", tmp_path / "a.csv.gz"))
        assert out.status == "failed" and "HTTP 500; 2 retries exhausted" in out.reason
        assert "4,000 bytes kept" in out.reason and (tmp_path / "a.csv.gz.part").stat().st_size == 4000
        assert not (tmp_path / "a.csv.gz").exists()
        again = c.download(job(srv, "/a.csv.gz", tmp_path / "a.csv.gz"))  # the next run resumes
        assert again.status == "done" and srv.requests[-1]["range"] == "bytes=4000-"
        assert (tmp_path / "a.csv.gz").read_bytes() == data


def test_corrupt_reply_fetched_again_then_reported_never_kept(tmp_path):
    data = payload(300)
    bad = bytearray(data)
    bad[100] ^= 0x55
    with FakeServer() as srv, client() as c:
        srv.files["/a.csv.gz"] = data
        srv.fault("/a.csv.gz", ("body", bytes(bad)))
        out = c.download(job(srv, "/a.csv.gz", tmp_path / "a.csv.gz"))
        assert out.status == "done" and out.requests == 2
        assert (tmp_path / "a.csv.gz").read_bytes() == data
        # always corrupt (an HTML error page with 200, a truncated gzip): reported, nothing left
        for body, why in ((b"<html>maintenance</html>", "not a gzip stream"), (data[:-20], "cut short")):
            srv.fault("/b.csv.gz", *[("body", body)] * 3)
            srv.files["/b.csv.gz"] = data
            out = c.download(job(srv, "/b.csv.gz", tmp_path / "b.csv.gz"))
            assert out.status == "failed" and why in out.reason and "fetched 3 times" in out.reason
            assert not (tmp_path / "b.csv.gz").exists() and not (tmp_path / "b.csv.gz.part").exists()
            srv.faults.clear()


def test_kept_part_that_is_wrong_or_ignored_range(tmp_path):
    data = payload(300)
    with FakeServer() as srv, client() as c:
        srv.files["/a.csv.gz"] = data
        (tmp_path / "a.csv.gz.part").write_bytes(b"this is not gzip")  # a part of something else
        out = c.download(job(srv, "/a.csv.gz", tmp_path / "a.csv.gz"))
        assert out.status == "done" and srv.requests[-1]["range"] is None
        (tmp_path / "b.csv.gz.part").write_bytes(data[:1000])
        srv.files["/b.csv.gz"] = data
        srv.fault("/b.csv.gz", ("ignore-range",))  # 200 with the whole file: written from zero
        out = c.download(job(srv, "/b.csv.gz", tmp_path / "b.csv.gz"))
        assert out.status == "done" and (tmp_path / "b.csv.gz").read_bytes() == data
        (tmp_path / "c.csv.gz.part").write_bytes(data)  # whole already: 416, checked, kept
        srv.files["/c.csv.gz"] = data
        out = c.download(job(srv, "/c.csv.gz", tmp_path / "c.csv.gz"))
        assert out.status == "done" and out.bytes == 0 and (tmp_path / "c.csv.gz").read_bytes() == data


def test_missing_skipped_refused_connection(tmp_path):
    with FakeServer() as srv, client(retries=1) as c:
        out = c.download(job(srv, "/nope.csv.gz", tmp_path / "nope.csv.gz"))
        assert out.status == "missing" and out.reason == "HTTP 404"
        assert not list(tmp_path.iterdir())
        (tmp_path / "here.csv.gz").write_bytes(b"anything")  # complete files are never fetched
        assert c.download(job(srv, "/here.csv.gz", tmp_path / "here.csv.gz")).status == "skipped"
        assert srv.count("here") == 0
        url = srv.url
    with client(retries=1) as c:  # the server is gone: connection refused
        out = c.download(Job(url=url + "/a.csv.gz", dest=tmp_path / "a.csv.gz", check=GzipCheck))
        assert out.status == "failed" and "ConnectError" in out.reason and "1 retries exhausted" in out.reason


# ---------------------------------------------------------------- the command

def cli(capsys, *args):
    rc = main(["download", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def tardis_args(srv, tmp_path, *extra):
    return ("--source", "tardis", "--exchange", "binance-futures", "--symbol", "BTCUSDT", "--base-url", srv.base,
            "--out", str(tmp_path / "archive"), "--backoff-base", "0.01", *extra)


def test_refusals_before_any_request(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TARDIS_API_KEY", raising=False)
    with TardisFake() as t, ArchiveFake() as b:
        cases = [
            (tardis_args(t, tmp_path, "--from", "2024-08-08"), "need a Tardis API key: set TARDIS_API_KEY"),
            (tardis_args(t, tmp_path, "--from", "2024-08-08", "--to", "2024-08-07"), "is before --from"),
            (tardis_args(t, tmp_path, "--from", "2999-01-01"), "in the future"),
            (tardis_args(t, tmp_path, "--from", "2024-13-01"), "not a date"),
            (tardis_args(t, tmp_path, "--from", "2024-08-01", "--types", "trades;x"), "not a Tardis data type"),
            (("--source", "binance-archive", "--symbol", "BTCUSDT", "--from", "2024-03-01", "--market", "um",
              "--types", "bookDepth", "--base-url", b.base), "percentage bands around the mid"),
            (("--source", "binance-archive", "--symbol", "BTCUSDT", "--from", "2024-03-01", "--market", "spot",
              "--types", "bookTicker", "--base-url", b.base), "futures only"),
            (("--source", "binance-archive", "--symbol", "BTCUSDT", "--from", "2024-03-01", "--types", "trades",
              "--base-url", b.base), "--market is required"),
            (("--source", "binance-archive", "--symbol", "BTCUSDT", "--from", "2024-03-01", "--market", "um",
              "--base-url", "ftp://x"), "not an http(s) base URL"),
        ]
        for args, want in cases:
            rc, out, err = cli(capsys, *args)
            assert rc == 2 and want in err and err.count("\n") == 1, (args, err)
            assert "Traceback" not in err
        (tmp_path / "file").write_text("x")
        rc, out, err = cli(capsys, *tardis_args(t, tmp_path, "--from", "2024-08-01"), "--out", str(tmp_path / "file"))
        assert rc == 2 and "it is a file" in err
        assert t.requests == [] and b.requests == []


def test_auth_failure_exits_2_without_the_key(tmp_path, capsys, monkeypatch):
    secret = "sk-very-secret-0123"
    monkeypatch.setenv("TARDIS_API_KEY", secret)
    with TardisFake(token="another-key") as srv:
        srv.add("binance-futures", "trades", "2024-08-08", "BTCUSDT", payload(50))
        rc, out, err = cli(capsys, *tardis_args(srv, tmp_path, "--from", "2024-08-08", "--types", "trades"))
        assert rc == 2 and "authentication failed (HTTP 403)" in err and "was refused" in err
        assert secret not in out + err and err.count("\n") == 1
        assert srv.requests[0]["auth"] == f"Bearer {secret}"  # sent, but never printed
        assert not [f for f in (tmp_path / "archive").rglob("*") if f.is_file()]  # not even an empty .part


def test_free_day_needs_no_key_and_a_run_is_not_repeated(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TARDIS_API_KEY", raising=False)
    with TardisFake() as srv:
        srv.add("binance-futures", "trades", "2024-08-01", "BTCUSDT", payload(200))
        srv.add("binance-futures", "quotes", "2024-08-01", "BTCUSDT", gz(""))  # an empty day: valid
        args = tardis_args(srv, tmp_path, "--from", "2024-08-01", "--types", "trades,quotes,book_snapshot_25")
        rc, out, err = cli(capsys, *args)
        assert rc == 0, err
        assert "fetched and verified          2" in out and "missing: book_snapshot_25 2024-08-01: HTTP 404" in out
        assert srv.requests[0]["auth"] is None
        n = len(srv.requests)
        rc, out, err = cli(capsys, *args)
        assert rc == 0 and "already complete              2" in out
        assert len(srv.requests) == n + 1  # only the missing file is asked again


def test_malformed_checksum_reply_is_one_clear_line(tmp_path, capsys):
    with ArchiveFake() as srv:
        p = srv.add("um", "trades", "BTCUSDT", "2024-03-01", "1,61000.1,0.01,610.0,1709251200000,true\n")
        srv.files[p + ".CHECKSUM"] = b"<html><body>Access Denied</body></html>"
        rc, out, err = cli(capsys, "--source", "binance-archive", "--market", "um", "--symbol", "BTCUSDT",
                           "--from", "2024-03-01", "--out", str(tmp_path / "a"), "--base-url", srv.base, "--import",
                           "--stores", str(tmp_path / "s"), "--quiet")
        assert rc == 1
        assert "failed: trades 2024-03-01: the .CHECKSUM reply is not '<sha256>  <file name>'" in out
        assert "not imported 2024-03-01: 1 file failed" in out
        assert not list((tmp_path / "a").rglob("*.zip*")) and not (tmp_path / "s").exists()


def test_ctrl_c_then_rerun_resumes_without_fetching_complete_files(tmp_path, capsys, monkeypatch):
    """A real SIGINT to a running download: exit 130, `.part` kept; the rerun asks only for the rest."""
    big = os.urandom(600_000)  # incompressible, so the gzip is as large
    files = {"trades": payload(300), "quotes": gzip.compress(big, mtime=0)}
    slow = "/v1/binance-futures/quotes/2024/08/01/BTCUSDT.csv.gz"
    with TardisFake() as srv:
        for t, data in files.items():
            srv.add("binance-futures", t, "2024-08-01", "BTCUSDT", data)
        srv.fault(slow, ("slow", 16_384, 0.05))
        args = tardis_args(srv, tmp_path, "--from", "2024-08-01", "--types", "trades,quotes", "--concurrency", "1")
        proc = subprocess.Popen([sys.executable, "-m", "gpu_engine.data", "download", *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TARDIS_API_KEY": ""})
        deadline = time.monotonic() + 30
        while srv.sent.get(slow, 0) < 100_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and err.strip().endswith("interrupted"), err
        folder = tmp_path / "archive" / "tardis" / "binance-futures"
        part = folder / "binance-futures_quotes_2024-08-01_BTCUSDT.csv.gz.part"
        kept = part.stat().st_size
        assert kept > 0 and not part.with_suffix("").exists()
        assert (folder / "binance-futures_trades_2024-08-01_BTCUSDT.csv.gz").read_bytes() == files["trades"]
        before = {"trades": srv.count("/trades/"), "quotes": srv.count("/quotes/")}
        monkeypatch.delenv("TARDIS_API_KEY", raising=False)
        rc, out, err = cli(capsys, *args)
        assert rc == 0, out + err
        assert srv.count("/trades/") == before["trades"]  # complete: not asked again
        assert srv.count("/quotes/") == before["quotes"] + 1 and srv.requests[-1]["range"] == f"bytes={kept}-"
        assert part.with_suffix("").read_bytes() == files["quotes"] and not part.exists()
