"""The Binance public-data archive (data.binance.vision): daily trades, aggTrades, bookTicker zips.

    https://data.binance.vision/data/{spot|futures/um|futures/cm}/daily/{type}/{SYMBOL}/{SYMBOL}-{type}-{YYYY-MM-DD}.zip

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
* klines and the other types are not handled here.
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
TYPES = ("trades", "aggTrades", "bookTicker")
DEFAULT_TYPES = ("trades",)
BOOK_TICKER_LAST_DAY = date(2024, 3, 30)
CHECKSUM_SUFFIX = ".CHECKSUM"

_CHECKSUM = re.compile(r"^\s*([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
_SYMBOL = re.compile(r"^[A-Z0-9_]+$")


def check_args(market: str | None, symbol: str, types: list[str]) -> None:
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


def folder(out: Path, market: str) -> Path:
    return Path(out) / "binance" / MARKETS[market] / "daily"


def jobs(out: Path, market: str, symbol: str, types: list[str], days: list[date],
         base_url: str | None = None) -> list[Job]:
    base = (base_url or os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip("/")
    sym = symbol.upper()
    result = []
    for day in days:
        for t in types:
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
    return picked, what, notes
