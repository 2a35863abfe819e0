"""The download client: retries, resume, file checks, bounded concurrency. No provider knowledge.

A `Job` is one URL to one file. `Client.download(job)` makes the file exist complete or
says why not (`Outcome`):

* A file is written to `NAME.part` beside its final name (locked with `flock` while a
  process works on it) and renamed to `NAME` only after its check passed
  (`GzipCheck`: the whole gzip stream decompresses with every member's CRC and length
  right; `Sha256Check`: the digest the provider published, then `zipfile`'s CRCs). So a
  file under its final name is complete: it is skipped on the next run, never fetched again.
* Resume: a `NAME.part` left by a cut connection or an interrupted run is continued with
  `Range: bytes=N-` (its bytes are fed to the check first); a server that answers 200
  instead of 206, or a 206 for another offset, restarts the file from zero; 416 on a
  whole `.part` finishes it.
* Retries: 429, 5xx and connection errors (refused, reset, cut mid-body, timeouts) are
  retried up to `retries` times in a row without progress (a reply that delivered bytes
  resets the count), waiting `Retry-After` when the server sends one (capped at
  `max_retry_after`), else exponential backoff with jitter. A file whose check fails is
  deleted and fetched again up to `corrupt_retries` times, then reported, never kept.
* 404/410 -> `missing` (reported, the run goes on). 401/403 -> `AuthFailed`, which stops
  the whole run (the caller turns it into one line, exit 2; the key is never printed).
  Other statuses -> `failed` with the status in the reason.
* Bodies are read raw (`Accept-Encoding: identity`, `iter_raw`): a `.csv.gz` is stored as
  the server holds it, so Range offsets mean the same bytes.

`run_jobs(...)` runs jobs on `concurrency` threads; Ctrl-C (or `AuthFailed`) sets a stop
flag every worker checks between blocks, so `.part` files stay resumable.
"""
from __future__ import annotations

import email.utils
import fcntl
import hashlib
import os
import random
import re
import threading
import time
import zipfile
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx

MAX_INFLATE = 1 << 20             # decompressed bytes produced per zlib call (bounds memory)
GZIP_MAGIC = b"\x1f\x8b"
PART_SUFFIX = ".part"


class Stopped(Exception):
    """The run was interrupted (Ctrl-C or a fatal error elsewhere); the `.part` stays."""


class AuthFailed(Exception):
    """401/403: the credentials were refused or are needed. Stops the whole run."""

    def __init__(self, url: str, status: int):
        super().__init__(f"{url}: HTTP {status}")
        self.url, self.status = url, status


class CorruptError(Exception):
    """The bytes received are not the file they should be (bad gzip, wrong digest, bad zip)."""


# ---------------------------------------------------------------- checks


class GzipCheck:
    """Decompresses a gzip stream as it arrives (members one after another, CRC and length
    checked by zlib); `finish` fails unless the last member ended exactly at the end."""

    def __init__(self):
        self._d = zlib.decompressobj(31)
        self._head = b""
        self.members = 0
        self.inflated = 0       # decompressed bytes
        self.first_line = b""   # the start of the content (for an "empty file" or header check)

    def update(self, data: bytes) -> None:
        if self.members == 0 and len(self._head) < 2:
            self._head += data[:2 - len(self._head)]
            if len(self._head) >= 2 and self._head != GZIP_MAGIC:
                raise CorruptError(f"not a gzip stream (starts with {self._head!r})")
        while data:
            if self._d.eof:  # the previous member ended: what follows must be another member
                if data[:2] != GZIP_MAGIC[:len(data[:2])]:
                    raise CorruptError("bytes after the end of the gzip stream")
                self._d = zlib.decompressobj(31)
            try:
                out = self._d.decompress(data, MAX_INFLATE)
                self._take(out)
                while self._d.unconsumed_tail:
                    self._take(self._d.decompress(self._d.unconsumed_tail, MAX_INFLATE))
            except zlib.error as exc:
                raise CorruptError(f"corrupt gzip stream: {exc}") from None
            if self._d.eof:
                self.members += 1
                data = self._d.unused_data
            else:
                data = b""

    def _take(self, out: bytes) -> None:
        if len(self.first_line) < 4096 and b"\n" not in self.first_line:
            self.first_line = (self.first_line + out[:4096]).split(b"\n", 1)[0]
        self.inflated += len(out)

    def finish(self, path: Path) -> dict:
        if not self._d.eof:
            what = "empty file" if self.members == 0 and not self._head else "gzip stream cut short"
            raise CorruptError(f"{what} (no end-of-stream marker)")
        return {"check": "gzip", "members": self.members, "inflated_bytes": self.inflated}


class Sha256Check:
    """The sha256 a provider published for the file; then, for a `.zip`, every member's CRC."""

    def __init__(self, expected: str):
        self.expected = expected.lower()
        self._h = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def finish(self, path: Path) -> dict:
        got = self._h.hexdigest()
        if got != self.expected:
            raise CorruptError(f"sha256 {got[:12]}... does not match the published {self.expected[:12]}...")
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CorruptError(f"not a readable zip: {exc}") from None
        if bad is not None:
            raise CorruptError(f"zip member {bad} fails its CRC")
        return {"check": "sha256+zip", "sha256": got, "members": names}


# ---------------------------------------------------------------- jobs and outcomes


@dataclass
class Job:
    url: str
    dest: Path
    check: Callable[[], object]          # a new GzipCheck / Sha256Check(...) per attempt
    label: str = ""                      # how the summary names it ("trades 2024-08-08")
    headers: dict = field(default_factory=dict)
    before_rename: Callable[[], None] | None = None  # e.g. write the .CHECKSUM beside the file
    day: object = None                   # the provider's day and data type (for the summary and import)
    kind: str = ""


@dataclass
class Outcome:
    job: Job
    status: str                          # done | skipped | missing | failed
    bytes: int = 0                       # bytes received in this run
    requests: int = 0
    reason: str = ""
    info: dict = field(default_factory=dict)


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class Client:
    """One shared `httpx.Client` (thread-safe) plus the retry and resume rules above."""

    def __init__(self, *, retries: int = 5, corrupt_retries: int = 2, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, max_retry_after: float = 120.0, timeout: float = 30.0,
                 stop: threading.Event | None = None, on_bytes: Callable[[int], None] | None = None,
                 on_total: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                 rng: random.Random | None = None, transport: httpx.BaseTransport | None = None):
        self.retries = int(retries)
        self.corrupt_retries = int(corrupt_retries)
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.stop = stop or threading.Event()
        self.on_bytes = on_bytes or (lambda n: None)
        self.on_total = on_total or (lambda n: None)
        self.log = log or (lambda s: None)
        self.rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)), follow_redirects=True,
            headers={"Accept-Encoding": "identity", "User-Agent": "gpu-sweep-engine-download"},
            transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- waiting
    def backoff(self, n: int) -> float:
        d = min(self.backoff_max, self.backoff_base * (2 ** min(n, 30)))
        with self._rng_lock:
            return d * self.rng.uniform(0.5, 1.0)

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(max(0.0, seconds)):
            raise Stopped()

    def _delay(self, n: int, reply: httpx.Response | None) -> tuple[float, str]:
        ra = retry_after_seconds(reply.headers.get("Retry-After")) if reply is not None else None
        if ra is not None:
            return min(ra, self.max_retry_after), f" (Retry-After {reply.headers.get('Retry-After')})"
        return self.backoff(n), ""

    # -- small files (a .CHECKSUM)
    def fetch_small(self, url: str, headers: dict | None = None, limit: int = 1 << 16) -> bytes | None:
        """The body of a small file, with the same retries; None on 404/410. Raises AuthFailed,
        CorruptError (larger than `limit`), or RuntimeError naming the last failure."""
        tries = 0
        while True:
            if self.stop.is_set():
                raise Stopped()
            reply = None
            try:
                with self.http.stream("GET", url, headers=headers or {}) as reply:
                    code = reply.status_code
                    if code in (404, 410):
                        return None
                    if code in (401, 403):
                        raise AuthFailed(url, code)
                    if code == 200:
                        body = b""
                        for block in reply.iter_raw():
                            body += block
                            if len(body) > limit:
                                raise CorruptError(f"reply larger than {limit} bytes")
                        return body
                    why = f"HTTP {code}"
                    if code != 429 and code < 500:
                        raise RuntimeError(why)
            except httpx.RequestError as exc:
                why = _transport_why(exc)
            tries += 1
            if tries > self.retries:
                raise RuntimeError(f"{why}, {self.retries} retries exhausted")
            delay, extra = self._delay(tries - 1, reply)
            self.log(f"retry {tries}/{self.retries} in {delay:.1f} s: {why}{extra}: {url}")
            self._wait(delay)

    # -- files
    def download(self, job: Job) -> Outcome:
        dest = Path(job.dest)
        if dest.exists():
            return Outcome(job, "skipped", info={"bytes_on_disk": dest.stat().st_size})
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(dest)
        fh = open(part, "ab")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Outcome(job, "failed", reason=f"{part.name} is being downloaded by another process")
            if dest.exists():  # another process finished it meanwhile
                _remove_if_empty(part, fh)
                return Outcome(job, "skipped", info={"bytes_on_disk": dest.stat().st_size})
            try:
                return self._download_locked(job, dest, part, fh)
            except BaseException:  # AuthFailed, Stopped, Ctrl-C: an empty .part is not worth keeping
                _remove_if_empty(part, fh)
                raise
        finally:
            fh.close()

    def _download_locked(self, job: Job, dest: Path, part: Path, fh) -> Outcome:
        out = Outcome(job, "failed")
        transient = 0   # failures in a row without progress
        corrupt = 0
        best = 0        # the largest the .part has been after a cut (progress = growing past it)
        while True:
            if self.stop.is_set():
                raise Stopped()
            offset = fh.seek(0, os.SEEK_END)
            check = job.check()
            if offset:
                try:
                    _feed_file(part, check, offset)
                except CorruptError as exc:  # the kept part is already wrong: start again
                    self.log(f"{part.name}: kept part unusable ({exc}); starting again")
                    fh.truncate(0)
                    offset = 0
                    check = job.check()
            kind, why, reply, check = self._attempt(job, fh, offset, check, out)
            if kind == "missing" or kind == "fatal":
                out.status = "missing" if kind == "missing" else "failed"
                out.reason = why
                if fh.seek(0, os.SEEK_END) == 0:
                    _remove(part)
                return out
            if kind == "progress":  # cut after some bytes
                size = fh.seek(0, os.SEEK_END)
                if size > best:  # the file grew past anything before: resume at once, count afresh
                    best, transient = size, 0
                    self.log(f"resuming at byte {size:,} after {why}: {job.label or job.url}")
                    continue
                kind = "retry"
            if kind == "retry":  # (a "progress" that did not grow the file lands here too)
                transient += 1
                if transient > self.retries:
                    size = fh.seek(0, os.SEEK_END)
                    out.reason = f"{why}; {self.retries} retries exhausted" + (
                        f" ({size:,} bytes kept in {part.name}: run again to resume)" if size else "")
                    if not size:
                        _remove(part)
                    return out
                delay, extra = self._delay(transient - 1, reply)
                self.log(f"retry {transient}/{self.retries} in {delay:.1f} s: {why}{extra}: {job.label or job.url}")
                self._wait(delay)
                continue
            try:
                if kind == "corrupt":
                    raise why
                out.info = check.finish(part)  # kind "body" or "whole"
            except CorruptError as exc:
                corrupt += 1
                fh.truncate(0)
                if corrupt > self.corrupt_retries:
                    _remove(part)
                    out.reason = f"{exc} (fetched {corrupt} times; nothing kept)"
                    return out
                self.log(f"{job.label or job.url}: {exc}; fetching it again ({corrupt}/{self.corrupt_retries})")
                continue
            fh.flush()
            os.fsync(fh.fileno())
            if job.before_rename is not None:
                job.before_rename()
            os.replace(part, dest)
            out.status = "done"
            return out

    def _attempt(self, job: Job, fh, offset: int, check, out: Outcome):
        """One GET: (kind, why, reply, check); kind body | whole | retry | progress | corrupt |
        missing | fatal."""
        headers = dict(job.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        reply = None
        got = 0
        out.requests += 1
        try:
            with self.http.stream("GET", job.url, headers=headers) as reply:
                code = reply.status_code
                if code in (404, 410):
                    return "missing", f"HTTP {code}", reply, check
                if code in (401, 403):
                    raise AuthFailed(job.url, code)
                if code == 416 and offset:
                    return "whole", None, reply, check
                if code == 429 or code >= 500:
                    return "retry", f"HTTP {code}", reply, check
                if code == 206:
                    m = _CONTENT_RANGE.match(reply.headers.get("Content-Range", ""))
                    if not offset or m is None or int(m.group(1)) != offset:
                        fh.truncate(0)  # a range we did not ask for: start again from zero
                        return "retry", f"HTTP 206 with Content-Range {reply.headers.get('Content-Range')!r}", \
                            reply, check
                    self.on_total(int(m.group(2)) + 1 - offset)
                elif code == 200:
                    if offset:  # the server ignored Range: the body is the whole file
                        fh.truncate(0)
                        check = job.check()
                    length = reply.headers.get("Content-Length", "")
                    self.on_total(int(length) if length.isdigit() else 0)
                else:
                    return "fatal", f"HTTP {code}", reply, check
                for block in reply.iter_raw():
                    if self.stop.is_set():
                        fh.flush()
                        raise Stopped()
                    fh.write(block)
                    got += len(block)
                    out.bytes += len(block)
                    self.on_bytes(len(block))
                    check.update(block)
                fh.flush()
                return "body", None, reply, check
        except httpx.RequestError as exc:
            fh.flush()
            return ("progress" if got else "retry"), _transport_why(exc), reply, check
        except CorruptError as exc:
            return "corrupt", exc, reply, check


def _feed_file(path: Path, check, size: int) -> None:
    with open(path, "rb") as f:
        left = size
        while left > 0:
            block = f.read(min(1 << 20, left))
            if not block:
                break
            check.update(block)
            left -= len(block)


def _remove_if_empty(part: Path, fh) -> None:
    try:
        if fh.seek(0, os.SEEK_END) == 0 and part.exists() and part.stat().st_size == 0:
            _remove(part)
    except (OSError, ValueError):
        pass


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _transport_why(exc: Exception) -> str:
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    return f"{name}: {text}" if text else name


def run_jobs(jobs: list, work: Callable[[object], object], concurrency: int,
             stop: threading.Event) -> list:
    """`work(job)` for every job on `concurrency` threads; results in the jobs' order.

    The first exception other than `Stopped` (e.g. `AuthFailed`) sets `stop`, waits for the
    workers to leave their current block and is raised; so is KeyboardInterrupt."""
    results: list = [None] * len(jobs)
    if not jobs:
        return results
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(jobs))))
    futures = [pool.submit(work, j) for j in jobs]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                exc = f.exception()
                if exc is not None and not (isinstance(exc, Stopped) and stop.is_set()):
                    raise exc
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for i, f in enumerate(futures):
        results[i] = None if f.exception() is not None else f.result()
    return results


def day_range(start, end) -> list:
    from datetime import timedelta

    out, d = [], start
    while d <= end:
        out.append(d)
        d += timedelta(days=1)
    return out


def utc_today():
    return datetime.now(timezone.utc).date()
