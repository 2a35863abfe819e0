"""Daily CSV readers for the block dataset: BTC/USD closes and daily block counts.

Accepted formats (detected from the header row; `.gz` files are read through gzip):

prices (`read_prices`)
  * Yahoo-style OHLCV: `Date,Open,High,Low,Close,Volume`; the `Close` column is used.
  * Coin Metrics community CSV: `date,...,PriceUSD,...`; the `PriceUSD` column is used.
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
    is tolerated) and strictly increasing;
  * a value cell that is empty or `null`/`NA`/`NaN` is missing: a missing price skips
    that day; a missing block count is allowed only on the trailing rows (an
    incomplete last day), not in the middle of the file;
  * prices must be finite and > 0; block counts finite, integral and >= 0.
A file with no usable row is refused.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
from dataclasses import dataclass
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
    fmt: str  # yahoo_ohlcv | coinmetrics | bitcoinvisuals
    column: str
    day: np.ndarray  # int64
    value: np.ndarray  # float64
    sha256: str
    rows: int  # data rows read (including rows with a missing value)

    def describe(self, role: str) -> dict:
        return {
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
    text = _text(path, raw)
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
    rows = 0
    last_day = None
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
            if last_day is not None and day <= last_day:
                raise InputError.at(path, line, dcol,
                                    f"dates not strictly increasing: {row[di].strip()} after {day_iso(last_day)}")
            last_day = day
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
    return DailySeries(str(path), fmt, vcol, day_arr, val_arr, hashlib.sha256(raw).hexdigest(), rows)


def read_prices(path) -> DailySeries:
    """Daily BTC/USD closes (Yahoo OHLCV `Close` or Coin Metrics `PriceUSD`)."""
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
