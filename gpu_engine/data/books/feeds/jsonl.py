"""Reading capture files line by line: gzip or plain, local receive stamps, bad lines counted.

Shared by every reader (the jsonl formats use all of it; CSV readers can use
`iter_lines` alone):

* `iter_lines(path, report)` yields `(lineno, bytes)` without the line end. gzip is
  detected by its magic bytes (multi-member streams are fine) and decompressed in
  blocks. A truncated or corrupt gzip stream stops the file with one bad line
  counted and a note (the lines before it are kept); a file that is not readable
  at all raises `InputError`. Progress (compressed bytes) goes to `report.advance`.
  CSV readers (LOBSTER, Tardis) can use it too.
* Two capture line shapes:
  - `<local_ts> <json>` (hftbacktest Binance captures): an integer stamp in
    ns, us, ms or s since the epoch; the unit is detected from its magnitude
    (`stamp_to_ns`), so 2023 (us) and 2024 (ns) files both work;
  - cryptofeed: `<float seconds>: <json>`, with connection header lines
    `wss://... <-> ts` and `wss://... <- ts: {sent}` (skipped: `None`).
* `iter_capture(paths, report, style)` combines them: yields
  `(path, lineno, local_ts_ns, obj)` for every line whose JSON parses; lines that
  do not are counted in `report.bad_lines` (first few listed in the notes);
  local stamps going backwards by more than `LOCAL_TS_TOLERANCE_NS` are counted
  in `report.time_backwards` (the message itself is still yielded: its exchange
  content is unaffected); blank lines are counted in `extra["blank_lines"]`. A
  file with no usable line at all raises `InputError` naming the file and its
  first bad line. A reader may pass `fast(payload)` to skip the JSON parse of
  lines it only counts.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable, Iterator

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds.events import ImportReport

GZIP_MAGIC = b"\x1f\x8b"
LOCAL_TS_TOLERANCE_NS = 1_000_000_000  # receive clock may step back this much (NTP slew) uncounted
MAX_LISTED_BAD = 5                      # bad lines listed individually in the notes

_raw_decode = json.JSONDecoder().raw_decode


def parse_json(payload: bytes):
    """JSON bytes -> object; ValueError (or UnicodeDecodeError) if not exactly one JSON value."""
    text = payload.decode("utf-8").lstrip()
    obj, end = _raw_decode(text)
    if end != len(text) and text[end:].strip():
        raise ValueError(f"extra data after the JSON value at char {end}")
    return obj


def stamp_to_ns(value: int) -> int:
    """An integer epoch stamp in s, ms, us or ns -> ns (by magnitude; valid for 2001..2286)."""
    v = abs(value)
    if v >= 10**17:
        return value
    if v >= 10**14:
        return value * 1_000
    if v >= 10**11:
        return value * 1_000_000
    return value * 1_000_000_000


def seconds_to_ns(text: bytes | str) -> int:
    """Decimal seconds ('1618677817.061845') -> int ns, exactly (no float rounding)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    text = text.strip()
    whole, dot, frac = text.partition(".")
    if not whole.lstrip("-").isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a decimal number of seconds: {text!r}")
    frac = (frac + "000000000")[:9]
    ns = int(whole) * 1_000_000_000
    return ns - int(frac) if whole.startswith("-") else ns + int(frac)


def split_stamped_line(line: bytes) -> tuple[int, bytes]:
    """`<int local_ts> <json>` -> (local_ts_ns, json bytes). ValueError if malformed."""
    i = line.find(b" ")
    if i <= 0:
        raise ValueError("no '<timestamp> <json>' separator")
    return stamp_to_ns(int(line[:i])), line[i + 1:]


def split_cryptofeed_line(line: bytes) -> tuple[int, bytes] | None:
    """`<float s>: <json>` -> (local_ts_ns, json bytes); header lines (`wss://...`) -> None."""
    if line.startswith(b"wss://") or line.startswith(b"ws://"):
        return None
    i = line.find(b": ")
    if i <= 0:
        raise ValueError("no '<seconds>: <json>' separator")
    return seconds_to_ns(line[:i]), line[i + 2:]


READ_BLOCK = 1 << 18  # compressed bytes read at a time


def _open_binary(path: Path):
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise InputError.at(path, None, None, f"cannot open: {exc.strerror or exc}") from None
    head = raw.read(2)
    raw.seek(0)
    return raw, head == GZIP_MAGIC


def _blocks(raw, gz: bool) -> Iterator[bytes]:
    """Decompressed blocks of a plain or (multi-member) gzip file.
    Raises EOFError when the gzip stream ends early, zlib.error when it is corrupt."""
    if not gz:
        while block := raw.read(READ_BLOCK):
            yield block
        return
    d = zlib.decompressobj(31)  # 16 + MAX_WBITS: gzip header and trailer
    while block := raw.read(READ_BLOCK):
        while block:
            if d.eof:  # the next gzip member
                d = zlib.decompressobj(31)
            out = d.decompress(block)
            if out:
                yield out
            block = d.unused_data if d.eof else b""
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")


def iter_lines(path, report: ImportReport) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without its end) from a plain or gzip file.

    Decompresses in blocks and splits them (much faster than GzipFile.readline). The last
    line may lack its newline; a partial last line of a truncated gzip stream is dropped
    (it is the one bad line counted for the truncation).
    """
    path = Path(path)
    raw, gz = _open_binary(path)
    lineno = 0
    pos = 0
    tail = b""
    try:
        try:
            for block in _blocks(raw, gz):
                parts = block.split(b"\n")
                parts[0] = tail + parts[0]
                tail = parts.pop()
                for line in parts:
                    lineno += 1
                    yield lineno, (line[:-1] if line[-1:] == b"\r" else line)
                now = raw.tell()
                report.advance(now - pos)
                pos = now
            if tail:
                lineno += 1
                yield lineno, (tail[:-1] if tail[-1:] == b"\r" else tail)
        except (EOFError, zlib.error) as exc:
            if lineno == 0 and not isinstance(exc, EOFError):
                raise InputError.at(path, 1, None, f"unreadable gzip: {exc}") from None
            report.bad_lines += 1
            report.count("truncated_files")
            report.note(f"{path.name}: compressed stream broken after line {lineno} ({exc}); "
                        "the rest of the file is lost")
    finally:
        raw.close()


def iter_capture(paths, report: ImportReport, style: str = "stamped",
                 fast: Callable[[bytes], object] | None = None) -> Iterator[tuple[Path, int, int, object]]:
    """Yield (path, lineno, local_ts_ns, parsed JSON) for every usable capture line.

    style: 'stamped' (`<int ts> <json>`) or 'cryptofeed' (`<float s>: <json>`).
    fast: optional `fast(payload bytes) -> object | None`; when it returns an object,
    that is yielded instead of the parsed JSON (a reader's shortcut for messages it
    only counts, e.g. Binance bookTicker: skips the JSON parse).
    Counts bad lines and local-stamp regressions in `report`; does not count messages
    (the reader decides what a message is).
    """
    if style == "stamped":
        split = split_stamped_line
    elif style == "cryptofeed":
        split = split_cryptofeed_line
    else:
        raise ValueError(f"unknown capture style {style!r}")
    stamped = split is split_stamped_line
    last_local = None
    for path in paths:
        path = Path(path)
        good = 0
        first_bad = None
        for lineno, line in iter_lines(path, report):
            if not line:
                report.count("blank_lines")
                continue
            try:
                if stamped:  # inline split_stamped_line (hot path)
                    i = line.find(b" ")
                    if i <= 0:
                        raise ValueError("no '<timestamp> <json>' separator")
                    local_ts = int(line[:i])
                    if local_ts < 10**17:
                        local_ts = stamp_to_ns(local_ts)
                    payload = line[i + 1:]
                else:
                    parts = split(line)
                    if parts is None:
                        report.count("header_lines")
                        continue
                    local_ts, payload = parts
                obj = None if fast is None else fast(payload)
                if obj is None:
                    text = payload.decode("utf-8")
                    if text[:1].isspace():
                        text = text.lstrip()
                    obj, end = _raw_decode(text)
                    if end != len(text) and text[end:].strip():
                        raise ValueError(f"extra data after the JSON value at char {end}")
            except (ValueError, UnicodeDecodeError) as exc:
                report.bad_lines += 1
                if first_bad is None:
                    first_bad = (lineno, exc)
                if report.bad_lines <= MAX_LISTED_BAD:
                    report.note(f"{path.name}:{lineno}: bad line ({_short(exc)})")
                continue
            good += 1
            if last_local is not None and local_ts < last_local - LOCAL_TS_TOLERANCE_NS:
                report.time_backwards += 1
                report.count("local_ts_backwards")
                if report.extra["local_ts_backwards"] <= MAX_LISTED_BAD:
                    report.note(f"{path.name}:{lineno}: local timestamp goes back "
                                f"{(last_local - local_ts) / 1e9:.3f} s")
            else:
                last_local = local_ts if last_local is None else max(last_local, local_ts)
            yield path, lineno, local_ts, obj
        if good == 0:
            if first_bad is None:
                raise InputError.at(path, None, None, "no data lines (empty file?)")
            raise InputError.at(path, first_bad[0], None, f"no usable line in file; first: {_short(first_bad[1])}")


def _short(exc: Exception, n: int = 80) -> str:
    s = str(exc)
    if s.startswith("invalid literal for int()"):
        s = "the line does not start with an integer receive stamp (`<local_ts> <json>`)"
    elif isinstance(exc, UnicodeDecodeError):
        s = "not UTF-8 text"
    return s if len(s) <= n else s[:n] + "..."
