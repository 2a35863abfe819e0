"""What a capture line looks like: which feed format, which line shape (for error messages).

The importer reads a few lines of each input before any work (`mismatch`) and refuses a
file that is recognisably something else than the `--format` asked for, naming the file,
the line, what it looks like and the formats that exist:

    FILE:LINE: not a binance-jsonl message (looks like a Bybit v5 message in a bare JSON
    line without a receive stamp: try --format bybit); --format choices: binance-jsonl, ...

Recognised messages (`identify(obj)`): the formats this package reads (binance-jsonl:
a combined-stream envelope `{"stream", "data"}`, a bare event `{"e": "depthUpdate" ...}` or
a REST snapshot `{"lastUpdateId", ...}`; coinbase-jsonl: `{"type": "snapshot" |
"l2update" | "match" ...}` or Advanced Trade `{"channel": "l2_data" ...}`; okx-jsonl:
`{"arg": {"channel", "instId"}, ...}` or `{"event": ...}`; bybit: `{"topic":
"orderbook.50.BTCUSDT", ...}` (v5, or v2 `orderBookL2_25.*`); hyperliquid: `{"channel":
"l2Book", "data": {"coin", ...}}`; these two read any line shape). Line shapes
(`split_shape`): `<local_ts> <json>` (hftbacktest, what binance-jsonl reads), `<seconds>:
<json>` (cryptofeed, what coinbase-jsonl and okx-jsonl read), bare JSON, or text (CSV:
lobster, tardis-csv, binance-archive). A Binance archive CSV (data.binance.vision
trades/aggTrades/bookTicker, in its zip or extracted) is recognised by its first row
(`binance_archive_kind`) and refused for any other --format.

Only a line that is decisive refuses a file: JSON that parses and is either recognisably of
another format, or of this format in the wrong line shape. Anything unrecognised is left
to the reader (which counts bad lines and says what it could not use).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from gpu_engine.data.books.feeds.events import ImportReport
from gpu_engine.errors import InputError

SNIFF_LINES = 20  # lines looked at per file

# the line shape each format reads
EXPECTED_SHAPE = {
    "binance-jsonl": "stamped",
    "coinbase-jsonl": "cryptofeed",
    "okx-jsonl": "cryptofeed",
    "lobster": "csv",
    "tardis-csv": "csv",
    "bybit": "any",         # feeds/mixed.py: stamped, cryptofeed or bare JSON lines
    "hyperliquid": "any",
    "binance-archive": "csv",
}
SHAPE_NAMES = {
    "stamped": "a `<local_ts> <json>` line (hftbacktest capture)",
    "cryptofeed": "a `<seconds>: <json>` line (cryptofeed capture)",
    "json": "a bare JSON line without a receive stamp",
    "csv": "a CSV line",
}
FOREIGN = {  # how the messages of these formats are named in refusals
    "bybit": "a Bybit v5 message",
    "hyperliquid": "a Hyperliquid message",
}

_STAMPED = re.compile(rb"^\s*-?\d+ (?=\s*[\[{])")
_CRYPTOFEED = re.compile(rb"^\s*-?\d+(?:\.\d*)?: (?=\s*[\[{])")
_COINBASE_TYPES = {"snapshot", "l2update", "match", "last_match", "subscriptions", "heartbeat", "ticker",
                   "received", "open", "done", "change", "activate", "error"}
_COINBASE_CHANNELS = {"l2_data", "market_trades", "heartbeats", "subscriptions", "ticker", "ticker_batch"}
_HYPERLIQUID_CHANNELS = {"l2Book", "trades", "bbo", "allMids", "subscriptionResponse", "candle"}
_BINANCE_EVENTS = {"depthUpdate", "trade", "aggTrade", "bookTicker", "24hrTicker", "kline", "markPriceUpdate"}


def article(word: str) -> str:
    """'a binance-jsonl' / 'an okx-jsonl'."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def not_this(fmt: str, obj) -> str:
    """'not an okx-jsonl message (looks like a Bybit v5 message, ...)': a reader's note for a message
    of another format."""
    return f"not {article(fmt)} message (looks like {describe(obj)})"


def split_shape(line: bytes) -> tuple[str | None, bytes]:
    """(shape, payload): shape 'stamped' | 'cryptofeed' | 'json' | 'csv' | 'header' | None (blank)."""
    s = line.strip()
    if not s:
        return None, b""
    if s.startswith((b"wss://", b"ws://")):
        return "header", b""
    m = _STAMPED.match(s)
    if m:
        return "stamped", s[m.end():]
    m = _CRYPTOFEED.match(s)
    if m:
        return "cryptofeed", s[m.end():]
    if s[:1] in (b"{", b"["):
        return "json", s
    return "csv", s


def identify(obj) -> str | None:
    """The format name (or FOREIGN key) a parsed JSON message belongs to, None if unknown."""
    if not isinstance(obj, dict):
        return None
    topic = obj.get("topic")
    if isinstance(topic, str) and ("data" in obj or "type" in obj):
        return "bybit"
    channel = obj.get("channel")
    data = obj.get("data")
    if isinstance(channel, str) and "arg" not in obj:
        if channel in _HYPERLIQUID_CHANNELS or (isinstance(data, dict) and "coin" in data):
            return "hyperliquid"
        if channel in _COINBASE_CHANNELS or "events" in obj:
            return "coinbase-jsonl"
    if isinstance(obj.get("arg"), dict) or ("event" in obj and "op" not in obj and "type" not in obj):
        return "okx-jsonl"
    if isinstance(obj.get("stream"), str) or "lastUpdateId" in obj or obj.get("e") in _BINANCE_EVENTS:
        return "binance-jsonl"
    if isinstance(obj.get("type"), str) and (obj["type"] in _COINBASE_TYPES or "product_id" in obj):
        return "coinbase-jsonl"
    return None


def describe(obj) -> str:
    """'a Bybit v5 message, which no --format reads' / 'a okx-jsonl message' / 'an unknown JSON message'."""
    who = identify(obj)
    if who is None:
        keys = ", ".join(repr(k) for k in list(obj)[:4]) if isinstance(obj, dict) else type(obj).__name__
        return f"an unknown JSON message ({keys})"
    if who == "bybit" and str(obj.get("topic", "")).startswith(("orderBookL2_", "orderBook_", "trade.",
                                                                 "instrument_info.", "klineV2.")):
        return "a Bybit v2 message"
    return FOREIGN.get(who) or f"{article(who)} message"


def _binary(line: bytes) -> bool:
    """NUL bytes or invalid UTF-8 in a line: not a text capture (gzip is decompressed before)."""
    if b"\x00" in line:
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _parse(payload: bytes):
    try:
        return json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def _looks(fmt: str, shape: str, obj) -> str | None:
    """Why this line is decisively not `fmt` ('' when it decisively is `fmt`), None if undecided."""
    who = identify(obj) if obj is not None else None
    want = EXPECTED_SHAPE.get(fmt)
    if obj is None:
        return None
    if want == "csv":
        return f"JSON ({describe(obj)}) in {SHAPE_NAMES[shape]}"
    if who is None:
        return None
    if who != fmt:
        return f"{describe(obj)} in {SHAPE_NAMES[shape]}: try --format {who}"
    if shape != want and want != "any":
        return f"{article(fmt)} message in {SHAPE_NAMES[shape]}; {fmt} reads {SHAPE_NAMES[want]}"
    return ""


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def binance_archive_kind(path: Path) -> str | None:
    """'a Binance archive trades CSV (in a zip)' when `path` is a data.binance.vision CSV, zipped
    or extracted (`feeds/binance_archive.classify` on its first row), else None."""
    from gpu_engine.data.books.feeds import binance_archive

    try:
        hit = binance_archive.classify(binance_archive.first_row(path))
    except (InputError, OSError):
        return None
    if hit is None:
        return None
    return f"a Binance archive {hit[0]} CSV" + (" (in a zip)" if _is_zip(path) else "")


def mismatch(paths, fmt: str, choices) -> str | None:
    """A one-line refusal when the first decisive line of a file is not `fmt` (see the docstring)."""
    from gpu_engine.data.books.feeds.jsonl import iter_lines

    if fmt not in EXPECTED_SHAPE:
        return None  # a format registered elsewhere (tests, plugins): its reader decides
    for path in map(Path, paths):
        archive = binance_archive_kind(path)
        if archive is not None:
            if fmt == "binance-archive":
                continue
            return (f"{path}:1: not {article(fmt)} file (looks like {archive}: try --format binance-archive); "
                    f"--format choices: {', '.join(choices)}")
        if fmt == "binance-archive" and _is_zip(path):
            continue  # a zip, but not of an archive CSV: the reader says what it holds
        seen = 0
        try:
            for lineno, line in iter_lines(path, ImportReport()):
                if _binary(line):
                    return (f"{path}:{lineno}: not {article(fmt)} file: binary data, not text lines; "
                            f"--format choices: {', '.join(choices)}")
                shape, payload = split_shape(line)
                if shape in (None, "header"):
                    continue
                seen += 1
                if seen > SNIFF_LINES:
                    break
                obj = _parse(payload) if shape != "csv" else None
                if shape == "csv" and EXPECTED_SHAPE.get(fmt) == "csv":
                    break  # the CSV readers check their own headers and columns
                why = _looks(fmt, shape, obj)
                if why == "":
                    break
                if why is not None:
                    unit = "file" if EXPECTED_SHAPE.get(fmt) == "csv" else "message"
                    return (f"{path}:{lineno}: not {article(fmt)} {unit} (looks like {why}); "
                            f"--format choices: {', '.join(choices)}")
        except InputError:
            continue  # unreadable: the reader says so
    return None
