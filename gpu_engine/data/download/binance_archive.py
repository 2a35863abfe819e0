"""The Binance public-data archive (data.binance.vision): daily trades, aggTrades, bookTicker zips,
and spot klines (candles) for daily prices.

    https://data.binance.vision/data/{spot|futures/um|futures/cm}/daily/{type}/{SYMBOL}/{SYMBOL}-{type}-{YYYY-MM-DD}.zip
    https://data.binance.vision/data/spot/monthly/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM}.zip
    https://data.binance.vision/data/spot/daily/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM-DD}.zip

Each zip has `<zip>.CHECKSUM` beside it (`<sha256>  <file name>`). The checksum is fetched
first; the zip is complete only when its sha256 equals it and its CRCs check
(`http.Sha256Check`); a bad one is fetched again (bounded) or reported, never kept. Files are
mirrored under `{out}/binance/{spot|futures/um|futures/cm}/daily/{type}/{SYMBOL}/`, the
`.CHECKSUM` written beside each verified zip.

What the archive holds (and what is refused before anything is fetched):
* `trades`, `aggTrades`: every market;
* `bookTicker` (level-1 book): USD-M and COIN-M futures only, and the daily files stop at
  2024-03-30: later days answer 404 and are reported as missing;
* `bookDepth` is cumulative notional in percentage bands around the mid, not an order book:
  refused as a book type;
* `klines` (spot only, `--interval`, e.g. 1d): one monthly file for every calendar month that
  lies wholly inside --from..--to and ended before the current UTC month, daily files for the
  other days; mirrored under `{out}/binance/spot/{monthly|daily}/klines/{SYMBOL}/{interval}/`.
  Spot klines files have no header row; their times are milliseconds, microseconds from
  2025-01-01. They are prices, not a book: `--import` skips them; 1d klines feed
  `python -m gpu_engine.data blocks --prices FILE...` (gpu_engine/data/blocks/sources.py);
* the other types are not handled here.
Missing days (404) are reported and the run goes on. `GPU_ENGINE_BINANCE_ARCHIVE_URL` (or
`--base-url`) replaces the base URL (tests use a loopback server).
"""
from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

from gpu_engine.data.download.http import Client, CorruptError, Job, Outcome, Sha256Check
from gpu_engine.errors import InputError
from gpu_engine.outputs import clean_stale_temps, tmp_sibling

BASE_URL = "https://data.binance.vision"
BASE_URL_ENV = "GPU_ENGINE_BINANCE_ARCHIVE_URL"
MARKETS = {"spot": "spot", "um": "futures/um", "cm": "futures/cm"}
TYPES = ("trades", "aggTrades", "bookTicker", "klines")
DEFAULT_TYPES = ("trades",)
# the kline intervals the archive publishes (binance-public-data README)
KLINE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1mo")
BOOK_TICKER_LAST_DAY = date(2024, 3, 30)
CHECKSUM_SUFFIX = ".CHECKSUM"

_CHECKSUM = re.compile(r"^\s*([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
_SYMBOL = re.compile(r"^[A-Z0-9_]+$")


def check_args(market: str | None, symbol: str, types: list[str], interval: str | None = None) -> None:
    if market not in MARKETS:
        raise InputError("--market is required with --source binance-archive: spot, um (USD-M futures) "
                         "or cm (COIN-M futures)")
    if not _SYMBOL.match(symbol.upper()):
        raise InputError(f"--symbol {symbol!r}: not a Binance symbol (e.g. BTCUSDT, BTCUSD_PERP)")
    for t in types:
        if t == "bookDepth":
            raise InputError("--types bookDepth: the archive's bookDepth is cumulative depth in percentage "
                             "bands around the mid (timestamp,percentage,depth,notional), not an order book; "
                             "it cannot be imported as a book. The archive's book type is bookTicker (level 1, "
                             "futures only)")
        if t not in TYPES:
            raise InputError(f"--types {t!r}: the Binance archive types handled are {', '.join(TYPES)}")
        if t == "bookTicker" and market == "spot":
            raise InputError("--types bookTicker: the archive has bookTicker for futures only "
                             "(--market um or cm), not for spot")
        if t == "klines" and market != "spot":
            raise InputError("--types klines: handled for --market spot (the daily BTC/USD proxy BTCUSDT); "
                             "futures klines have another layout (a header row from 2022)")
    if "klines" in types:
        if interval is None:
            raise InputError("--types klines needs --interval (e.g. --interval 1d for daily closes)")
        if interval not in KLINE_INTERVALS:
            raise InputError(f"--interval {interval!r}: the archive's kline intervals are {', '.join(KLINE_INTERVALS)}")
    elif interval is not None:
        raise InputError("--interval is for --types klines")


def folder(out: Path, market: str, types=()) -> Path:
    """Where the files go: `.../daily` (klines: the market's folder, holding daily/ and monthly/)."""
    base = Path(out) / "binance" / MARKETS[market]
    return base if "klines" in types else base / "daily"


def kline_folder(out: Path, market: str, period: str, symbol: str, interval: str) -> Path:
    return Path(out) / "binance" / MARKETS[market] / period / "klines" / symbol.upper() / interval


def kline_periods(days: list[date], today: date) -> list[tuple[str, date, str]]:
    """(period, first day, stamp) of the kline files covering `days`: a monthly file ("monthly",
    the month's first day, "YYYY-MM") for every month wholly inside `days` that ended before
    `today`'s month, a daily file ("daily", the day, "YYYY-MM-DD") for every other day."""
    chosen = set(days)
    out, seen = [], set()
    for d in days:
        first = d.replace(day=1)
        nxt = (first.replace(year=first.year + 1, month=1) if first.month == 12
               else first.replace(month=first.month + 1))
        whole = all(first.fromordinal(o) in chosen for o in range(first.toordinal(), nxt.toordinal()))
        if whole and nxt <= today.replace(day=1):
            if first not in seen:
                seen.add(first)
                out.append(("monthly", first, first.strftime("%Y-%m")))
        else:
            out.append(("daily", d, d.isoformat()))
    return out


def kline_jobs(out: Path, market: str, symbol: str, interval: str, days: list[date], base: str,
               today: date) -> list[Job]:
    sym = symbol.upper()
    result = []
    for period, first, stamp in kline_periods(days, today):
        name = f"{sym}-{interval}-{stamp}.zip"
        url = f"{base}/data/{MARKETS[market]}/{period}/klines/{sym}/{interval}/{name}"
        result.append(Job(url=url, dest=kline_folder(out, market, period, sym, interval) / name, check=lambda: None,
                          label=f"klines {interval} {stamp}", day=first, kind="klines"))
    return result


def jobs(out: Path, market: str, symbol: str, types: list[str], days: list[date],
         base_url: str | None = None, interval: str | None = None, today: date | None = None) -> list[Job]:
    base = (base_url or os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip("/")
    sym = symbol.upper()
    result = []
    if "klines" in types:
        from gpu_engine.data.download.http import utc_today

        result += kline_jobs(out, market, sym, interval, days, base, today or utc_today())
    for day in days:
        for t in types:
            if t == "klines":
                continue
            name = f"{sym}-{t}-{day.isoformat()}.zip"
            url = f"{base}/data/{MARKETS[market]}/daily/{t}/{sym}/{name}"
            result.append(Job(url=url, dest=folder(out, market) / t / sym / name, check=lambda: None,
                              label=f"{t} {day.isoformat()}", day=day, kind=t))
    return result


def parse_checksum(body: bytes) -> tuple[str, str]:
    """(sha256, file name) from a `.CHECKSUM` body; CorruptError when it is not one."""
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CorruptError("the .CHECKSUM reply is not text") from None
    m = _CHECKSUM.match(text.splitlines()[0] if text else "")
    if m is None:
        shown = text[:40].replace("\n", " ")
        raise CorruptError(f"the .CHECKSUM reply is not '<sha256>  <file name>' (got {shown!r})")
    return m.group(1).lower(), m.group(2)


def fetch(client: Client, job: Job) -> Outcome:
    """The .CHECKSUM, then the zip checked against it (the work function of `http.run_jobs`)."""
    if job.dest.exists():
        return Outcome(job, "skipped", info={"bytes_on_disk": job.dest.stat().st_size})
    try:
        body = client.fetch_small(job.url + CHECKSUM_SUFFIX)
    except CorruptError as exc:
        return Outcome(job, "failed", requests=1, reason=str(exc))
    except RuntimeError as exc:
        return Outcome(job, "failed", requests=1, reason=f".CHECKSUM: {exc}")
    if body is None:
        return Outcome(job, "missing", requests=1, reason="HTTP 404" + _missing_hint(job))
    try:
        sha, name = parse_checksum(body)
    except CorruptError as exc:
        return Outcome(job, "failed", requests=1, reason=str(exc))
    if name != job.dest.name:
        return Outcome(job, "failed", requests=1, reason=f"the .CHECKSUM is for {name!r}, not {job.dest.name!r}")
    job.check = lambda: Sha256Check(sha)
    side = job.dest.with_name(job.dest.name + CHECKSUM_SUFFIX)

    def write_checksum():
        clean_stale_temps(side)
        tmp = tmp_sibling(side)
        tmp.write_bytes(body)
        os.replace(tmp, side)

    job.before_rename = write_checksum
    out = client.download(job)
    out.requests += 1
    if out.status == "missing":
        out.reason += _missing_hint(job)
    return out


def _missing_hint(job: Job) -> str:
    if job.kind == "bookTicker" and job.day is not None and job.day > BOOK_TICKER_LAST_DAY:
        return f" (the archive's daily bookTicker files stop at {BOOK_TICKER_LAST_DAY.isoformat()})"
    if job.kind == "klines":
        return " (before the symbol's listing, or a month not yet published: ask for its days again later)"
    return ""


def import_plan(files: dict[str, Path]) -> tuple[list[Path], list[str], list[str]]:
    """For one day's verified zips {type: path}: (files to import, what they are, notes).
    bookTicker is the book; trades are preferred over aggTrades (the same fills twice)."""
    picked, what, notes = [], [], []
    if "bookTicker" in files:
        picked.append(files["bookTicker"])
        what.append("bookTicker")
    trade = "trades" if "trades" in files else ("aggTrades" if "aggTrades" in files else None)
    if trade:
        picked.append(files[trade])
        what.append(trade)
    if trade == "trades" and "aggTrades" in files:
        notes.append("aggTrades: not imported (the same fills as trades)")
    if "klines" in files:
        notes.append("klines: prices, not a book: not imported here; use them with "
                     "`python -m gpu_engine.data blocks --prices FILE...`")
    return picked, what, notes
