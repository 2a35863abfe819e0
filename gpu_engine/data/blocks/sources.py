"""Daily CSV readers for the block dataset: BTC/USD closes and daily block counts.

Accepted formats (detected from the header row; `.gz` files are read through gzip):

prices (`read_prices`)
  * Yahoo-style OHLCV: `Date,Open,High,Low,Close,Volume`; the `Close` column is used.
  * Coin Metrics community CSV: `date,...,PriceUSD,...`; the `PriceUSD` column is used.
  * Binance archive spot klines, interval 1d (`python -m gpu_engine.data download --source
    binance-archive --market spot --types klines --interval 1d`): the `.zip` as downloaded or
    the `.csv` inside it. No header row; 12 fields, `open_time,open,high,low,close,volume,
    close_time,quote_volume,trades,taker_buy_base,taker_buy_quote,ignore`; times in
    milliseconds (microseconds in spot files from 2025-01-01 on, told apart by their size);
    the `close` field is used, the day is the UTC day of `open_time`, and every row must span
    exactly one day (close_time = open_time + 1 day - 1 unit). BTCUSDT quotes tether, a dollar
    proxy.
chain stats (`read_chain_stats`)
  * bitcoinvisuals daily export: `day,blocks_count,...`. Days with no block are absent
    rows; they count as 0 blocks.
  * Coin Metrics community CSV: `date,...,BlkCnt,...`. Coin Metrics does not count the
    genesis block (its 2009-01-03 row has BlkCnt 0, and its cumulative count is one below
    bitcoinvisuals' on every later day, e.g. 209,891 vs 209,892 blocks before the first
    halving's day); the reader adds that one block to 2009-01-03.

Rules (any violation raises `InputError` naming file, line and field):
  * every row has as many fields as the header (a truncated row is refused);
  * dates are `YYYY-MM-DD` (an optional `T00:00:00`/` 00:00:00` and `Z`/`+00:00` suffix
    is tolerated) and strictly increasing: a duplicated day and a day out of order are
    refused, naming the line (and the line of the earlier row);
  * a value cell that is empty or `null`/`NA`/`NaN` is missing: a missing price skips
    that day; a missing block count is allowed only on the trailing rows (an
    incomplete last day), not in the middle of the file;
  * prices must be finite and > 0; block counts finite, integral and >= 0.
A file with no usable row is refused.

Gaps are not errors: days without a price between two priced rows (absent rows or missing
cells) are listed in `DailySeries.gaps` as (line of the row after the gap, first missing
day, last missing day) and reported by the dataset build (summary and sidecar); the block
dataset prices a gap of up to `price.MAX_GAP_DAYS` by interpolation and the bar market
(`blocks.market`) leaves the bars of missing days without a price (not traded).

Several price files: `merge_prices` takes them in the order given, a LATER file winning on a
day several cover, and says which file priced which span (`PriceMerge.spans`).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from gpu_engine.errors import InputError

MISSING = {"", "null", "na", "nan", "none"}
_EPOCH = date(1970, 1, 1)
GENESIS_DAY = (date(2009, 1, 3) - _EPOCH).days


@dataclass(frozen=True)
class DailySeries:
    """One value per UTC day. `day` is days since 1970-01-01 (strictly increasing)."""

    path: str
    fmt: str  # yahoo_ohlcv | coinmetrics | binance_klines | bitcoinvisuals
    column: str
    day: np.ndarray  # int64
    value: np.ndarray  # float64
    sha256: str
    rows: int  # data rows read (including rows with a missing value)
    gaps: tuple = field(default=())  # (line after the gap, first missing day, last missing day), days as ints

    def describe(self, role: str) -> dict:
        out = {
            "path": self.path,
            "role": role,
            "format": self.fmt,
            "column": self.column,
            "sha256": self.sha256,
            "rows": self.rows,
            "values": int(self.day.size),
            "first_day": day_iso(self.day[0]),
            "last_day": day_iso(self.day[-1]),
        }
        if role == "prices":
            out["gaps"] = [{"line": int(ln), "first_missing": day_iso(a), "last_missing": day_iso(b),
                            "days": int(b - a + 1)} for ln, a, b in self.gaps]
        return out

    def gap_lines(self, limit: int = 5) -> list[str]:
        """The gaps as `FILE:LINE: gap: ...` lines (at most `limit`, then a count)."""
        out = [f"{self.path}:{ln}: gap: {b - a + 1} day{'s' if b > a else ''} without a price "
               f"({day_iso(a)}{'..' + day_iso(b) if b > a else ''})" for ln, a, b in self.gaps[:limit]]
        if len(self.gaps) > limit:
            out.append(f"{self.path}: {len(self.gaps) - limit} more gaps")
        return out


def day_iso(day) -> str:
    return str(np.datetime64(int(day), "D"))


def parse_day(text: str) -> int:
    """'YYYY-MM-DD' (optionally with a midnight UTC time suffix) -> days since 1970-01-01."""
    s = text.strip()
    head, rest = s[:10], s[10:]
    if rest:
        rest = rest.lstrip("T ").removesuffix("Z").removesuffix("+00:00")
        if rest not in ("00:00:00", "00:00"):
            raise ValueError(f"not a UTC date: {text!r}")
    if len(head) != 10 or head[4] != "-" or head[7] != "-":
        raise ValueError(f"not a YYYY-MM-DD date: {text!r}")
    return (date.fromisoformat(head) - _EPOCH).days


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError.at(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    return raw


def _text(path: Path, raw: bytes) -> str:
    data = raw
    if raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError.at(path, None, None, f"truncated or corrupt gzip data: {exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError.at(path, None, None, f"not UTF-8 text (byte {exc.start})") from None


# format name -> (date column, value column) for each role
PRICE_FORMATS = {"yahoo_ohlcv": ("Date", "Close"), "coinmetrics": ("date", "PriceUSD")}
COUNT_FORMATS = {"bitcoinvisuals": ("day", "blocks_count"), "coinmetrics": ("date", "BlkCnt")}


def _read(path, formats: dict, role: str) -> DailySeries:
    path = Path(path)
    raw = _read_bytes(path)
    if role == "prices" and raw[:2] == b"PK":
        return _read_klines(path, raw, _unzip(path, raw))
    text = _text(path, raw)
    if role == "prices" and _looks_like_klines(text):
        return _read_klines(path, raw, text)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError.at(path, 1, None, "empty file (no header row)") from None
    except csv.Error as exc:
        raise InputError.at(path, 1, None, f"malformed CSV: {exc}") from None
    header = [h.strip() for h in header]
    fmt = None
    for name, (dcol, vcol) in formats.items():
        if dcol in header and vcol in header:
            fmt = name
            break
    if fmt is None:
        wanted = " or ".join(f"{d!r}+{v!r}" for d, v in formats.values())
        missing = next(v for d, v in formats.values())
        raise InputError.at(path, 1, missing,
                            f"missing column: a {role} CSV needs columns {wanted}; header has {len(header)} "
                            f"columns starting {header[:6]}")
    dcol, vcol = formats[fmt]
    di, vi = header.index(dcol), header.index(vcol)
    ncol = len(header)

    days: list[int] = []
    vals: list[float] = []
    gaps: list[tuple[int, int, int]] = []
    rows = 0
    last_day = last_line = None
    missing_line = None  # first line with a missing count (counts may only be missing at the end)
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue  # blank line
            rows += 1
            if len(row) != ncol:
                raise InputError.at(path, line, None,
                                    f"expected {ncol} fields, got {len(row)} (truncated or malformed row)")
            try:
                day = parse_day(row[di])
            except ValueError as exc:
                raise InputError.at(path, line, dcol, f"unparsable date: {exc}") from None
            _check_order(path, line, dcol, day, last_day, last_line)
            last_day, last_line = day, line
            cell = row[vi].strip()
            if cell.lower() in MISSING:
                if role == "chain stats" and missing_line is None:
                    missing_line = line
                continue
            if missing_line is not None:
                raise InputError.at(path, missing_line, vcol,
                                    "missing block count in the middle of the file (only trailing rows may be empty)")
            try:
                v = float(cell)
            except ValueError:
                raise InputError.at(path, line, vcol, f"not a number: {cell!r}") from None
            if not math.isfinite(v):
                raise InputError.at(path, line, vcol, f"not finite: {cell!r}")
            if role == "prices" and v <= 0:
                raise InputError.at(path, line, vcol, f"price must be > 0, got {cell}")
            if role == "chain stats" and (v < 0 or v != int(v)):
                raise InputError.at(path, line, vcol, f"block count must be an integer >= 0, got {cell}")
            if role == "prices" and days and day > days[-1] + 1:
                gaps.append((line, days[-1] + 1, day - 1))
            days.append(day)
            vals.append(v)
    except csv.Error as exc:
        raise InputError.at(path, reader.line_num, None, f"malformed CSV: {exc}") from None
    if not days:
        raise InputError.at(path, None, vcol, f"no usable {role} rows")
    day_arr = np.asarray(days, dtype=np.int64)
    val_arr = np.asarray(vals, dtype=np.float64)
    if role == "chain stats" and fmt == "coinmetrics" and day_arr[0] == GENESIS_DAY and val_arr[0] == 0:
        val_arr[0] = 1.0  # Coin Metrics omits the genesis block (see module docstring)
    return DailySeries(str(path), fmt, vcol, day_arr, val_arr, hashlib.sha256(raw).hexdigest(), rows, tuple(gaps))


def _check_order(path, line: int, col, day: int, last_day, last_line) -> None:
    """Refuse a duplicated day or a day out of order, naming both lines."""
    if last_day is None or day > last_day:
        return
    if day == last_day:
        raise InputError.at(path, line, col, f"dates not strictly increasing: duplicated day {day_iso(day)} "
                            f"(also on line {last_line})")
    raise InputError.at(path, line, col, f"dates not strictly increasing: {day_iso(day)} after "
                        f"{day_iso(last_day)} on line {last_line} (days out of order)")


# ---------------------------------------------------------------- Binance spot klines

KLINE_FIELDS = 12
_MS_PER_DAY = 86_400_000
_US_PER_DAY = 86_400_000_000
_US_THRESHOLD = 10**14  # open times above this are microseconds (ms reach it only in year 5138)


def _unzip(path: Path, raw: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise InputError.at(path, None, None, f"a klines zip holds one CSV; this one holds {len(names)} files")
            data = zf.read(names[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError.at(path, None, None, f"truncated or corrupt zip: {exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError.at(path, None, None, f"not UTF-8 text (byte {exc.start})") from None


def _looks_like_klines(text: str) -> bool:
    """A header-less CSV whose first row has 12 fields starting with an integer time."""
    first = text.lstrip().split("\n", 1)[0].split(",")
    return len(first) == KLINE_FIELDS and first[0].strip().isdigit()


def _read_klines(path: Path, raw: bytes, text: str) -> DailySeries:
    """Binance spot klines of interval 1d (see the module docstring): the close of each day."""
    reader = csv.reader(io.StringIO(text, newline=""))
    days: list[int] = []
    vals: list[float] = []
    gaps: list[tuple[int, int, int]] = []
    rows = 0
    last_day = last_line = None
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            rows += 1
            if len(row) != KLINE_FIELDS:
                raise InputError.at(path, line, None, f"expected {KLINE_FIELDS} fields (a Binance kline row), got "
                                    f"{len(row)} (truncated or malformed row)")
            try:
                t_open, t_close = int(row[0]), int(row[6])
            except ValueError:
                raise InputError.at(path, line, "open_time", f"not an integer time: {row[0]!r} / {row[6]!r}") from None
            unit = _US_PER_DAY if t_open >= _US_THRESHOLD else _MS_PER_DAY
            if t_open < 0 or t_open % unit or t_close != t_open + unit - 1:
                raise InputError.at(path, line, "open_time", "not a daily kline (a row must open at 00:00 UTC and "
                                    "close one day later minus one unit; download with --interval 1d)")
            day = t_open // unit
            _check_order(path, line, "open_time", day, last_day, last_line)
            last_day, last_line = day, line
            cell = row[4].strip()
            try:
                v = float(cell)
            except ValueError:
                raise InputError.at(path, line, "close", f"not a number: {cell!r}") from None
            if not math.isfinite(v):
                raise InputError.at(path, line, "close", f"not finite: {cell!r}")
            if v <= 0:
                raise InputError.at(path, line, "close", f"price must be > 0, got {cell}")
            if days and day > days[-1] + 1:
                gaps.append((line, days[-1] + 1, day - 1))
            days.append(day)
            vals.append(v)
    except csv.Error as exc:
        raise InputError.at(path, reader.line_num, None, f"malformed CSV: {exc}") from None
    if not days:
        raise InputError.at(path, None, "close", "no usable prices rows")
    return DailySeries(str(path), "binance_klines", "close", np.asarray(days, np.int64), np.asarray(vals, np.float64),
                       hashlib.sha256(raw).hexdigest(), rows, tuple(gaps))


def read_prices(path) -> DailySeries:
    """Daily BTC/USD closes (Yahoo OHLCV `Close`, Coin Metrics `PriceUSD` or Binance 1d klines `close`)."""
    return _read(path, PRICE_FORMATS, "prices")


def read_chain_stats(path) -> DailySeries:
    """Daily block counts (bitcoinvisuals `blocks_count` or Coin Metrics `BlkCnt`).

    bitcoinvisuals omits days without blocks; the returned series keeps only the rows
    present. `merge_daily` fills the gaps with 0 for count series.
    """
    return _read(path, COUNT_FORMATS, "chain stats")


def merge_daily(series: list[DailySeries], fill_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """Union of several daily series; on a day several cover, the first series given wins.

    With `fill_zero` (block counts) each series covers every day from its first to its
    last row, absent days counting 0. Returns (day, value) sorted by day.
    """
    if not series:
        return np.zeros(0, np.int64), np.zeros(0)
    lo = min(int(s.day[0]) for s in series)
    hi = max(int(s.day[-1]) for s in series)
    val = np.full(hi - lo + 1, np.nan)
    for s in reversed(series):  # later series first, so earlier ones overwrite
        if fill_zero:
            val[int(s.day[0]) - lo: int(s.day[-1]) - lo + 1] = 0.0
        val[s.day - lo] = s.value
    keep = ~np.isnan(val)
    return np.arange(lo, hi + 1, dtype=np.int64)[keep], val[keep]


@dataclass(frozen=True)
class PriceMerge:
    """Several price files merged, a later file winning on a day several cover.

    day, value: the merged closes (sorted days); spans: the runs of merged days priced by one
    file, as (file index, first day, last day, days priced); missing: the days
    without a price between the first and the last merged day, as (first, last) runs.
    """

    day: np.ndarray
    value: np.ndarray
    spans: tuple
    missing: tuple

    def describe(self, series: list[DailySeries]) -> dict:
        return {
            "rule": "files in the order given; on a day several cover, the LATER file wins",
            "first_day": day_iso(self.day[0]), "last_day": day_iso(self.day[-1]), "days": int(self.day.size),
            "spans": [{"path": series[i].path, "format": series[i].fmt, "first_day": day_iso(a),
                       "last_day": day_iso(b), "days": int(n)} for i, a, b, n in self.spans],
            "missing_days": [[day_iso(a), day_iso(b)] for a, b in self.missing],
        }


def merge_prices(series: list[DailySeries]) -> PriceMerge:
    """Merge price series, LATER ones winning on shared days, with the spans each one priced."""
    if not series:
        raise ValueError("merge_prices: no series")
    lo = min(int(s.day[0]) for s in series)
    hi = max(int(s.day[-1]) for s in series)
    val = np.full(hi - lo + 1, np.nan)
    who = np.full(hi - lo + 1, -1, np.int64)
    for i, s in enumerate(series):  # later series last, so they overwrite
        val[s.day - lo] = s.value
        who[s.day - lo] = i
    have = who >= 0
    days = np.arange(lo, hi + 1, dtype=np.int64)
    spans = []
    idx = np.nonzero(have)[0]
    if idx.size:
        # a new span starts where the source changes (missing days inside a span are in `missing`)
        brk = np.nonzero(np.diff(who[idx]) != 0)[0]
        starts = np.concatenate([[0], brk + 1])
        ends = np.concatenate([brk, [idx.size - 1]])
        for a, b in zip(starts, ends):
            spans.append((int(who[idx[a]]), int(days[idx[a]]), int(days[idx[b]]), int(b - a + 1)))
    miss = np.nonzero(~have)[0]
    missing = []
    if miss.size:
        brk = np.nonzero(np.diff(miss) > 1)[0]
        for a, b in zip(np.concatenate([[0], brk + 1]), np.concatenate([brk, [miss.size - 1]])):
            missing.append((int(days[miss[a]]), int(days[miss[b]])))
    return PriceMerge(days[have], val[have], tuple(spans), tuple(missing))


def as_one_series(series: list[DailySeries]) -> tuple[DailySeries, PriceMerge]:
    """The merged prices as one DailySeries (for `price.block_prices`) and the merge itself."""
    m = merge_prices(series)
    one = DailySeries("merged", "merged", "close", m.day, m.value, "", int(m.day.size))
    return one, m
