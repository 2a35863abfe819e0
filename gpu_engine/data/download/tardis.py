"""Tardis.dev downloadable CSV datasets: which URLs, which key, where the files go.

    https://datasets.tardis.dev/v1/{exchange}/{data_type}/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz

The first day of each month is free; any other day needs an API key, sent as
`Authorization: Bearer <TARDIS_API_KEY>` (read from the environment, never printed).
Symbols are upper-cased with `/` and `:` replaced by `-` (Tardis's rule). Files land in
`{out}/tardis/{exchange}/{exchange}_{data_type}_{YYYY-MM-DD}_{SYMBOL}.csv.gz` (the naming of
Tardis's own client) and are complete only once their whole gzip stream checked out
(`http.GzipCheck`); an empty gzip is a valid file meaning "no data that day".
`GPU_ENGINE_TARDIS_URL` (or `--base-url`) replaces the base URL (tests use a loopback server).
"""
from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

from gpu_engine.data.download.http import GzipCheck, Job
from gpu_engine.errors import InputError

BASE_URL = "https://datasets.tardis.dev/v1"
BASE_URL_ENV = "GPU_ENGINE_TARDIS_URL"
KEY_ENV = "TARDIS_API_KEY"
DEFAULT_TYPES = ("incremental_book_L2", "trades")
# data types the tardis-csv reader turns into book rows (best first) and trades
BOOK_TYPES = ("incremental_book_L2", "book_snapshot_25", "book_snapshot_5", "quotes", "book_ticker")
TRADE_TYPES = ("trades",)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def tardis_symbol(symbol: str) -> str:
    return re.sub(r"[/:]", "-", symbol.strip()).upper()


def check_args(exchange: str | None, symbol: str, types: list[str]) -> None:
    if not exchange:
        raise InputError("--exchange is required with --source tardis (e.g. binance-futures, binance, bybit)")
    if not _NAME.match(exchange):
        raise InputError(f"--exchange {exchange!r}: not an exchange id (letters, digits, '-', e.g. binance-futures)")
    if not _NAME.match(tardis_symbol(symbol)):
        raise InputError(f"--symbol {symbol!r}: not a symbol")
    for t in types:
        if not re.fullmatch(r"[A-Za-z0-9_]+", t):
            raise InputError(f"--types: {t!r} is not a Tardis data type (e.g. incremental_book_L2, trades, "
                             "quotes, book_snapshot_25)")


def needs_key(day: date) -> bool:
    return day.day != 1


def api_key() -> str | None:
    key = os.environ.get(KEY_ENV, "").strip()
    return key or None


def check_key(days: list[date]) -> str | None:
    """The API key, or InputError (before anything is fetched) when a non-free day lacks one."""
    key = api_key()
    paid = [d for d in days if needs_key(d)]
    if paid and key is None:
        first = paid[0].isoformat()
        raise InputError(f"--from/--to: {len(paid)} of the {len(days)} days (first {first}) need a Tardis API "
                         f"key: set {KEY_ENV} in the environment (only the first day of each month is free)")
    return key


def local_name(exchange: str, data_type: str, day: date, symbol: str) -> str:
    return f"{exchange}_{data_type}_{day.isoformat()}_{tardis_symbol(symbol)}.csv.gz"


def folder(out: Path, exchange: str) -> Path:
    return Path(out) / "tardis" / exchange


def jobs(out: Path, exchange: str, symbol: str, types: list[str], days: list[date],
         base_url: str | None = None, key: str | None = None) -> list[Job]:
    base = (base_url or os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    sym = tardis_symbol(symbol)
    out_dir = folder(out, exchange)
    result = []
    for day in days:
        for t in types:
            url = f"{base}/{exchange}/{t}/{day:%Y}/{day:%m}/{day:%d}/{sym}.csv.gz"
            result.append(Job(url=url, dest=out_dir / local_name(exchange, t, day, sym), check=GzipCheck,
                              label=f"{t} {day.isoformat()}", headers=headers, day=day, kind=t))
    return result


def import_plan(files: dict[str, Path]) -> tuple[list[Path], list[str], list[str]]:
    """For one day's complete files {data_type: path}: (files to import, what they are, notes).

    One book kind per store (the reader refuses mixes): the first of BOOK_TYPES present;
    plus trades. Empty files (no data that day) are left out."""
    notes = []
    usable = {}
    for t, p in files.items():
        if _empty_gzip(p):
            notes.append(f"{t}: empty file (no data that day)")
        else:
            usable[t] = p
    picked, what = [], []
    book = next((t for t in BOOK_TYPES if t in usable), None)
    if book is None:
        book = next((t for t in usable if t.startswith("book_snapshot_")), None)
    if book is not None:
        picked.append(usable[book])
        what.append(book)
    for t in TRADE_TYPES:
        if t in usable:
            picked.append(usable[t])
            what.append(t)
    for t in usable:
        if t not in what:
            notes.append(f"{t}: not imported" + (f" (the store's book comes from {book})" if book and (
                t in BOOK_TYPES or t.startswith("book_snapshot_")) else " (no reader for it)"))
    return picked, what, notes


def _empty_gzip(path: Path) -> bool:
    import gzip

    try:
        with gzip.open(path, "rb") as f:
            return f.read(1) == b""
    except (OSError, EOFError):
        return False
