"""Binance public-data archive CSVs (data.binance.vision): bookTicker, trades, aggTrades -> rows.

The `binance-archive` reader. Input: the daily `.zip` as downloaded (one CSV inside) or the
extracted `.csv` (`.csv.gz` too). The kind of each file is recognised by its content, never by
its date or name (the archive changed its layout over the years):

  kind        market   columns (a header row only in futures files from 2022 on; spot never)
  trades      spot     id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch
  trades      futures  id,price,qty,quote_qty|base_qty,time,is_buyer_maker
  aggTrades   spot     aggId,price,qty,firstId,lastId,time,isBuyerMaker,isBestMatch
  aggTrades   futures  agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker
  bookTicker  futures  update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time
  bookDepth   futures  timestamp,percentage,depth,notional   -> refused: percentage depth bands, not a book

A first row whose first field is not a number is a header (checked against the names above).
Without a header the kind comes from the shape of the first data row: the column count and
which columns are `true`/`false`.

Timestamps: spot files are in microseconds from 2025-01-01 and milliseconds before, futures in
milliseconds; every stamp's unit is found from its magnitude (`jsonl.stamp_to_ns`).

Rows: bookTicker -> a level-1 `BookRow` (ts = event_time, or transaction_time when that is
empty; seq = update_id; deeper levels absent); a crossed or locked quote is counted and
skipped. trades/aggTrades -> `TradeRow` (ts = time; side -1 when the buyer is the maker, the
seller being the aggressor, else +1); trade-id jumps are counted (`trade_id_gaps`) and an id not
above the last one is skipped (`duplicates`). Timestamps stepping back by at most
`TS_JITTER_NS` are clamped (counted in `ts_clamped`), larger steps are counted in
`time_backwards` and the row dropped. Files of trades and of aggTrades together are refused
(the same fills twice). Several files are read in time order and book rows and trades merged
by ts. The symbol comes from the archive's file name (`BTCUSDT-trades-2024-08-08.zip`); the
market (`spot`, `usdm`, `coinm`) from the archive path (`.../futures/um/...`) or the content.
"""
from __future__ import annotations

import heapq
import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import iter_lines, stamp_to_ns
from gpu_engine.errors import InputError

TS_JITTER_NS = 1_000_000_000
READ_BLOCK = 1 << 18
ZIP_MAGIC = b"PK\x03\x04"

_NAME = re.compile(r"^([A-Z0-9_]+)-(trades|aggTrades|bookTicker|bookDepth)-(\d{4}-\d{2}-\d{2})\.(?:csv|zip|csv\.gz)$")

# normalised header names (lower case, no underscores) -> (kind, market or None)
HEADERS = {
    ("id", "price", "qty", "quoteqty", "time", "isbuyermaker", "isbestmatch"): ("trades", "spot"),
    ("id", "price", "qty", "quoteqty", "time", "isbuyermaker"): ("trades", "usdm"),
    ("id", "price", "qty", "baseqty", "time", "isbuyermaker"): ("trades", "coinm"),
    ("aggid", "price", "qty", "firstid", "lastid", "time", "isbuyermaker", "isbestmatch"): ("aggTrades", "spot"),
    ("aggtradeid", "price", "quantity", "firsttradeid", "lasttradeid", "transacttime", "isbuyermaker"):
        ("aggTrades", None),
    ("updateid", "bestbidprice", "bestbidqty", "bestaskprice", "bestaskqty", "transactiontime", "eventtime"):
        ("bookTicker", None),
    ("timestamp", "percentage", "depth", "notional"): ("bookDepth", None),
}
# kind -> (price, qty, time, is_buyer_maker, id) column indexes
TRADE_COLS = {"trades": (1, 2, 4, 5, 0), "aggTrades": (1, 2, 5, 6, 0)}
BOOK_DEPTH_REFUSAL = ("a Binance archive bookDepth file: cumulative depth in percentage bands around the mid "
                      "(timestamp,percentage,depth,notional), not an order book; it cannot be imported as a "
                      "book (the archive's book data is bookTicker, level 1)")


def _is_bool(s: str) -> bool:
    return s.strip().lower() in ("true", "false")


def _is_int(s: str) -> bool:
    s = s.strip()
    return s.isdigit()


def _is_num(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def classify(fields: list[str]) -> tuple[str, str | None, bool] | None:
    """(kind, market or None, is_header) of a first CSV row of an archive file, None if it is not one.
    Only decisive shapes are recognised (a sniffer relies on that)."""
    f = [x.strip() for x in fields]
    if not f or not f[0]:
        return None
    n = len(f)
    if not _is_num(f[0]):
        if n == 4 and re.match(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$", f[0]) and all(map(_is_num, f[1:])):
            return "bookDepth", None, False  # a bookDepth row without its header
        key = tuple(x.lower().replace("_", "") for x in f)
        hit = HEADERS.get(key)
        return None if hit is None else (hit[0], hit[1], True)
    if not _is_int(f[0]):
        return None
    bools = [_is_bool(x) for x in f]
    nums = lambda idx: all(_is_num(f[i]) for i in idx)  # noqa: E731
    stamp = lambda i: _is_int(f[i]) and 10**11 <= int(f[i]) < 10**17  # noqa: E731  (ms or us epoch)
    if n == 7 and bools[5] and bools[6] and nums((1, 2, 3)) and stamp(4):
        return "trades", "spot", False
    if n == 8 and bools[6] and bools[7] and nums((1, 2)) and _is_int(f[3]) and _is_int(f[4]) and stamp(5):
        return "aggTrades", "spot", False
    if n == 6 and bools[5] and not any(bools[:5]) and nums((1, 2, 3)) and stamp(4):
        return "trades", None, False
    if n == 7 and bools[6] and not any(bools[:6]) and nums((1, 2)) and _is_int(f[3]) and _is_int(f[4]) \
            and stamp(5):
        return "aggTrades", None, False
    if n == 7 and not any(bools) and nums((1, 2, 3, 4)) and stamp(5) and (f[6] == "" or stamp(6)):
        return "bookTicker", None, False
    return None


def zip_member(path: Path) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    """The archive zip and its one CSV member; InputError when it is not such a zip."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError.at(path, None, None, f"not a readable zip: {exc}") from None
    members = [m for m in zf.infolist() if m.filename.lower().endswith(".csv")]
    if len(members) != 1:
        zf.close()
        raise InputError.at(path, None, None, f"expected one .csv in the zip, found {len(members)}: "
                            + ", ".join(m.filename for m in zf.infolist()[:5]))
    return zf, members[0]


def iter_archive_lines(path: Path, report: ImportReport) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of an archive file: the CSV inside a `.zip`, or a plain/gzip CSV.
    A zip member that fails its CRC or ends early raises InputError (checked at its end: the
    lines before may be damaged too, so nothing of the file may be kept)."""
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if not is_zip:
        yield from iter_lines(path, report)
        return
    zf, member = zip_member(path)
    lineno = 0
    tail = b""
    ratio = member.compress_size / max(1, member.file_size)
    done = 0.0
    try:
        with zf, zf.open(member) as fh:
            while block := fh.read(READ_BLOCK):
                parts = block.split(b"\n")
                parts[0] = tail + parts[0]
                tail = parts.pop()
                for line in parts:
                    lineno += 1
                    yield lineno, (line[:-1] if line[-1:] == b"\r" else line)
                done += len(block) * ratio
                step = int(done)
                if step:
                    report.advance(step)
                    done -= step
            if tail:
                lineno += 1
                yield lineno, (tail[:-1] if tail[-1:] == b"\r" else tail)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        # a zip's CRC is checked only at the member's end, so the lines already read may be
        # damaged too: the whole import is refused (the importer leaves nothing behind)
        raise InputError.at(path, lineno + 1, None, f"zip member {member.filename} is corrupt ({exc}); "
                            "nothing imported: fetch the file again") from None


def first_row(path: Path) -> list[str]:
    for _, line in iter_archive_lines(path, ImportReport()):
        if line.strip():
            return line.decode("utf-8", "replace").split(",")
    return []


def _market_from_path(path: Path) -> str | None:
    parts = [p.lower() for p in Path(path).absolute().parts]
    for i, p in enumerate(parts[:-1]):
        if p == "futures" and parts[i + 1] in ("um", "cm"):
            return "usdm" if parts[i + 1] == "um" else "coinm"
    return "spot" if "spot" in parts else None


def file_kind(path: Path) -> tuple[str, str | None, bool, str]:
    """(kind, market, has_header, symbol) of one archive file; InputError otherwise."""
    row = first_row(path)
    if not row:
        raise InputError.at(path, 1, None, "empty file: no Binance archive CSV row")
    hit = classify(row)
    if hit is None:
        hint = ": try --format tardis-csv" if [x.strip() for x in row[:2]] == ["exchange", "symbol"] else ""
        raise InputError.at(path, 1, None, "not a Binance archive trades, aggTrades or bookTicker CSV "
                            "(first row: " + ",".join(row[:8])[:120] + ")" + hint)
    kind, market, header = hit
    if kind == "bookDepth":
        raise InputError.at(path, 1, None, BOOK_DEPTH_REFUSAL)
    m = _NAME.match(Path(path).name)
    symbol = m.group(1) if m else ""
    market = _market_from_path(path) or market
    if market is None:
        market = "coinm" if "_" in symbol else "usdm"
    return kind, market, header, symbol


class _Clock:
    def __init__(self, report: ImportReport):
        self.last: int | None = None
        self.report = report

    def __call__(self, ts: int) -> int | None:
        if self.last is not None and ts < self.last:
            if self.last - ts > TS_JITTER_NS:
                self.report.time_backwards += 1
                return None
            self.report.count("ts_clamped")
            return self.last
        self.last = ts
        return ts


def _data_rows(path: Path, header: bool, report: ImportReport) -> Iterator[tuple[int, list[str] | None]]:
    before = report.extra.get("truncated_files", 0)  # a truncated .csv.gz (iter_lines keeps its rows)
    lineno = 0
    for lineno, line in iter_archive_lines(path, report):
        if (header and lineno == 1) or not line.strip():
            continue
        try:
            yield lineno, line.decode("ascii").split(",")
        except UnicodeDecodeError:
            yield lineno, []
    if report.extra.get("truncated_files", 0) > before:
        report.add_gap(report.ts_max or 0, "truncated file", file=str(path), line=lineno)


def _read_book_ticker(path, header, depth, symbol, report, clock) -> Iterator[BookRow]:
    nan_px = np.full(depth, np.nan)
    zero = np.zeros(depth)
    for line, f in _data_rows(path, header, report):
        report.messages += 1
        try:
            uid = int(f[0])
            bid, bq, ask, aq = float(f[1]), float(f[2]), float(f[3]), float(f[4])
            stamp = f[6].strip() or f[5].strip()
            ts = stamp_to_ns(int(stamp))
            if not all(math.isfinite(v) for v in (bid, bq, ask, aq)) or bid <= 0 or ask <= 0:
                raise ValueError
        except (ValueError, IndexError):
            report.bad_lines += 1
            continue
        if bq < 0 or aq < 0:
            report.negative_sizes += 1
            continue
        if bq > 0 and aq > 0 and bid >= ask:
            report.crossed += 1
            continue
        ts = clock(ts)
        if ts is None:
            continue
        bp, bs, ap, as_ = nan_px.copy(), zero.copy(), nan_px.copy(), zero.copy()
        if bq > 0:
            bp[0], bs[0] = bid, bq
        if aq > 0:
            ap[0], as_[0] = ask, aq
        report.see_ts(ts)
        yield BookRow(ts, uid, bp, ap, bs, as_, -1, symbol)


def _read_trades(path, kind, header, symbol, report, clock, last_id) -> Iterator[TradeRow]:
    i_px, i_qty, i_ts, i_maker, i_id = TRADE_COLS[kind]
    for line, f in _data_rows(path, header, report):
        report.messages += 1
        try:
            tid = int(f[i_id])
            px, qty = float(f[i_px]), float(f[i_qty])
            ts = stamp_to_ns(int(f[i_ts]))
            maker = f[i_maker].strip().lower()
            if maker not in ("true", "false") or not (math.isfinite(px) and math.isfinite(qty)) or px <= 0:
                raise ValueError
        except (ValueError, IndexError):
            report.bad_lines += 1
            continue
        if qty < 0:
            report.negative_sizes += 1
            continue
        if last_id[0] is not None:
            if tid <= last_id[0]:
                report.duplicates += 1
                continue
            if tid != last_id[0] + 1:
                report.count("trade_id_gaps")
        last_id[0] = tid
        ts = clock(ts)
        if ts is None:
            continue
        report.see_ts(ts)
        yield TradeRow(ts, px, qty, -1 if maker == "true" else 1, symbol)


def _first_ts(path: Path, kind: str, header: bool) -> int:
    col = 6 if kind == "bookTicker" else TRADE_COLS[kind][2]
    for _, f in _data_rows(path, header, ImportReport()):
        try:
            return stamp_to_ns(int(f[col] or f[col - 1]))
        except (ValueError, IndexError):
            continue
    return 0


def read(paths: list[Path], depth: int, symbol: str | None,
         report: ImportReport) -> Iterator[BookRow | TradeRow]:
    """The `binance-archive` reader (registered in `gpu_engine.data.books.importers.FORMATS`)."""
    files = []
    for p in map(Path, paths):
        kind, market, header, sym = file_kind(p)
        files.append((_first_ts(p, kind, header), kind, market, header, sym, p))
    files.sort(key=lambda t: (t[0], str(t[5])))
    kinds = {f[1] for f in files}
    if {"trades", "aggTrades"} <= kinds:
        raise InputError.at(files[0][5], None, None, "mix of trades and aggTrades files: they hold the same "
                            "fills twice; import one of them")
    markets = {f[2] for f in files}
    if len(markets) > 1:
        raise InputError.at(files[0][5], None, None, "files of several markets (" + ", ".join(sorted(markets))
                            + "): import one market at a time")
    report.extra.setdefault("exchange", "binance")
    report.extra.setdefault("market", markets.pop())
    report.extra.setdefault("source_kinds", sorted(kinds))
    want = (symbol or "").upper()
    book_clock, trade_clock = _Clock(report), _Clock(report)
    last_id: list = [None]

    def sym_of(s: str) -> str:
        return s or want

    def books():
        for _, kind, _m, header, sym, p in files:
            if kind == "bookTicker":
                yield from _read_book_ticker(p, header, depth, sym_of(sym), report, book_clock)

    def trades():
        for _, kind, _m, header, sym, p in files:
            if kind in TRADE_COLS:
                yield from _read_trades(p, kind, header, sym_of(sym), report, trade_clock, last_id)

    yield from heapq.merge(books(), trades(), key=lambda r: r.ts)
