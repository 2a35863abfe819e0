"""`python -m gpu_engine.data import`: feed files -> one Zarr book store, with a summary.

Owns the reader registry and the import loop; the readers (one module per
format in `gpu_engine.data.books.feeds`) own parsing and book maintenance.

* `FORMATS`: format name -> reader, or "module:function" resolved on first use
  (`get_reader`). Reader signature (see `feeds/events.py` for its duties):
  `read(paths: list[Path], depth: int, symbol: str | None, report: ImportReport)
   -> Iterator[BookRow | TradeRow]`.
* `import_files(...)` first claims `out` (`gpu_engine.outputs.claim_output`: an
  existing `out` is refused unless `--overwrite`, and even then only a book store
  is replaced: never a directory holding stores, a foreign file or an input) and
  refuses a file that recognisably is another format (`feeds/sniff.py`), then
  streams the reader's rows into a `BookStoreWriter` (temp path `.NAME.tmp-PID`,
  moved into place on success; deleted on any error, so no half-written store and
  no temporary is left; one left by a killed run is removed by the next).
  Sampling (`sample_ms`) keeps the last book row of each `sample_ms` bucket of
  exchange time (trades are never sampled). Rows of another symbol than the one
  selected are dropped and counted; without `--symbol` the first symbol seen is
  selected and the summary says so.
* Store attrs: what the reader put in `report.extra` (exchange, tick_size, ...),
  symbol, source files with size and sha256, the gaps, and the summary counters
  under `import`.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from gpu_engine.data.books import contract
from gpu_engine.data.books.store import BookStoreWriter, check_depth_fits
from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.errors import InputError
from gpu_engine.outputs import claim_output

Reader = Callable[[list, int, "str | None", ImportReport], Iterator]

FORMATS: dict[str, Reader | str] = {
    "binance-jsonl": "gpu_engine.data.books.feeds.binance:read",
    "coinbase-jsonl": "gpu_engine.data.books.feeds.coinbase:read",
    "okx-jsonl": "gpu_engine.data.books.feeds.okx:read",
    "lobster": "gpu_engine.data.books.feeds.lobster:read",
    "tardis-csv": "gpu_engine.data.books.feeds.tardis:read",
    "bybit": "gpu_engine.data.books.feeds.bybit:read",
    "hyperliquid": "gpu_engine.data.books.feeds.hyperliquid:read",
    "binance-archive": "gpu_engine.data.books.feeds.binance_archive:read",
}

SUMMARY_COUNTERS = (
    ("messages", "messages read"), ("rows", "book rows written"), ("trades", "trades written"),
    ("gaps", "gaps"), ("resyncs", "resyncs"), ("crossed", "crossed books"),
    ("checksum_ok", "checksums verified"), ("checksum_failed", "checksum failures"),
    ("bad_lines", "bad lines"), ("stale", "stale updates ignored"), ("duplicates", "duplicates ignored"),
    ("negative_sizes", "negative sizes refused"), ("time_backwards", "timestamps going backwards"),
    ("stale_snapshots", "snapshots older than the buffered updates"),
    ("unsynced", "messages dropped while unsynced"),
)


def get_reader(fmt: str) -> Reader:
    """The reader for a format name, importing its module on first use."""
    try:
        entry = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}") from None
    if isinstance(entry, str):
        module, _, func = entry.partition(":")
        entry = getattr(importlib.import_module(module), func)
        FORMATS[fmt] = entry
    return entry


def file_digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _make_bar(total: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():  # a log file or a pipe gets no carriage-return frames
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="import",
                file=sys.stderr, mininterval=0.5, leave=False)


def check_inputs(paths) -> list[Path]:
    """The input files as Paths; InputError for a missing one, a directory, an unreadable one."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no input files")
    for p in paths:
        if p.is_dir():
            raise InputError.at(p, None, None, "is a directory, not a feed file (give the files in it)")
        if not p.exists():
            raise InputError.at(p, None, None, "no such file")
        if not p.is_file():
            raise InputError.at(p, None, None, "not a regular file")
        if not os.access(p, os.R_OK):
            raise InputError.at(p, None, None, "cannot read: permission denied")
    return paths


def import_files(paths, fmt: str, out, depth: int = 20, symbol: str | None = None,
                 sample_ms: int | None = None, progress: bool = True,
                 chunk_rows: int = 65536, overwrite: bool = False, contract_spec: dict | None = None) -> ImportReport:
    """Import feed files into the book store `out`; returns the report (also stored in attrs).

    `out` is claimed first (`gpu_engine.outputs.claim_output`): an existing `out` is refused
    unless `overwrite`, and even then only a book store is replaced, never the inputs, a
    directory of stores or a foreign file. Nothing is left behind on any failure.
    """
    paths = check_inputs(paths)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: unknown; --format choices: {', '.join(sorted(FORMATS))}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InputError(f"--depth must be an integer >= 1, got {depth!r}")
    if sample_ms is not None and sample_ms <= 0:
        raise InputError(f"--sample-ms must be > 0, got {sample_ms}")
    overrides = {k: v for k, v in (contract_spec or {}).items() if v is not None}
    if overrides:  # the user's contract flags are checked before any work
        contract.resolve(fmt, symbol, {}, overrides, str(out))
    check_depth_fits(depth, chunk_rows)
    claim_output(out, "--out", kind="book-store", overwrite=overwrite,
                 inputs=[("FILE", p) for p in paths])
    why = sniff.mismatch(paths, fmt, sorted(FORMATS))
    if why is not None:
        raise InputError(why)
    reader = get_reader(fmt)
    report = ImportReport()
    report.symbol = symbol
    bar = _make_bar(sum(p.stat().st_size for p in paths), progress)
    if bar is not None:
        report.progress = bar.update
    t0 = time.perf_counter()
    bucket_ns = None if sample_ms is None else int(sample_ms) * 1_000_000
    chosen = symbol
    other = 0
    writer = BookStoreWriter(out, depth, {"format": fmt}, chunk_rows=chunk_rows)
    try:
        with writer:
            pending = None
            pending_bucket = None
            for item in reader(paths, depth, symbol, report):
                isym = item.symbol
                if isym:
                    if chosen is None:
                        chosen = isym
                        report.note(f"no --symbol given: selected {isym}, the first symbol seen")
                    elif isym != chosen:
                        if isym.upper() == chosen.upper():  # --symbol btcusdt vs BTCUSDT
                            chosen = isym
                        else:
                            other += 1
                            continue
                report.see_ts(item.ts)
                if type(item) is BookRow:
                    if bucket_ns is None:
                        writer.append_row(item)
                    else:
                        b = item.ts // bucket_ns
                        if pending is not None and b != pending_bucket:
                            writer.append_row(pending)
                        pending, pending_bucket = item, b
                elif type(item) is TradeRow:
                    writer.append_trade(item)
                else:
                    raise TypeError(f"reader for {fmt!r} yielded {type(item).__name__}")
            if pending is not None:
                writer.append_row(pending)
            report.rows = writer.rows
            report.trades = writer.trade_rows
            if other:
                report.count("other_symbol_items", other)
            if chosen is not None:
                report.symbol = chosen
            if writer.rows == 0 and writer.trade_rows == 0:
                why = list(report.notes[:3])
                n_other = other + report.extra.get("other_symbol", 0)
                if n_other and symbol is not None:
                    why.insert(0, f"{n_other:,} items of another symbol than --symbol {symbol}")
                hint = (f"; --format choices: {', '.join(sorted(FORMATS))}"
                        if report.messages and report.bad_lines >= report.messages else "")
                raise InputError.at(paths[0], None, None,
                                    f"nothing usable as {fmt}: no book row or trade could be built"
                                    + (f" ({'; '.join(why)})" if why else "") + hint)
            if writer.rows == 0:
                report.note("no book rows written (see the notes above); the store holds trades only")
            report.extra["import_seconds"] = round(time.perf_counter() - t0, 3)
            attrs = _store_attrs(report, paths, fmt, sample_ms)
            attrs.update(contract.resolve(fmt, report.symbol, attrs, overrides, str(out)))
            writer.set_attrs(**attrs)
    finally:
        if bar is not None:
            bar.close()
        report.progress = None
    return report


def _store_attrs(report: ImportReport, paths: list[Path], fmt: str, sample_ms) -> dict:
    attrs = {k: v for k, v in report.extra.items()}
    attrs.update(
        symbol=report.symbol or attrs.get("symbol"),
        source=[file_digest(p) for p in paths],
        format=fmt,
        sample_ms=sample_ms,
        gaps=report.gaps,
        time_span=[report.ts_min, report.ts_max],
        **{"import": summary_counters(report), "import_notes": list(report.notes)},
    )
    return attrs


def summary_counters(report: ImportReport) -> dict:
    out = {}
    for key, _ in SUMMARY_COUNTERS:
        v = getattr(report, key)
        out[key] = len(v) if isinstance(v, list) else v
    return out


def _fmt_ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _fmt_number(v) -> str:
    """A count as an integer with thousands separators (never 1.2e+04); other numbers plainly."""
    if isinstance(v, float):
        if v != v:
            return "-"
        if v.is_integer():
            return f"{int(v):,}"
        return f"{v:,.3f}" if abs(v) >= 1 else f"{v:.4f}"
    return f"{int(v):,}"


def format_summary(report: ImportReport, out) -> str:
    lines = [f"imported -> {out}" + (f" (symbol {report.symbol})" if report.symbol else "")]
    counters = summary_counters(report)
    always = {"messages", "rows", "trades", "gaps", "resyncs", "crossed", "checksum_failed", "bad_lines"}
    for key, label in SUMMARY_COUNTERS:
        if key in always or counters[key]:
            lines.append(f"  {label:<44} {counters[key]:>12,}")
    lines.append(f"  {'time span (UTC)':<44} {_fmt_ns(report.ts_min)} -> {_fmt_ns(report.ts_max)}")
    for k, v in sorted(report.extra.items()):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("tick_size", "lot_size"):
            lines.append(f"  {k:<44} {_fmt_number(v):>12}")
    for g in report.gaps[:10]:
        until = g.get("until")
        lines.append(f"  gap at {_fmt_ns(g['time'])}: {g['reason']}"
                     + (f" (resynced {_fmt_ns(until)})" if until is not None else " (not resynced)"))
    if len(report.gaps) > 10:
        lines.append(f"  ... {len(report.gaps) - 10} more gaps (store attrs 'gaps')")
    for n in report.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def _run(args) -> int:
    report = import_files(args.files, args.format, args.out, depth=args.depth, symbol=args.symbol,
                          sample_ms=args.sample_ms, progress=not args.quiet, overwrite=args.overwrite,
                          contract_spec={"contract": args.contract, "multiplier": args.multiplier,
                                         "tick_size": args.tick_size, "lot_size": args.lot_size})
    print(format_summary(report, args.out))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("import", help="import feed captures into a Zarr book store",
                              description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="input files, read in the order given")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--symbol", default=None, help="instrument to keep (default: the first seen)")
    p.add_argument("--depth", type=int, default=20, help="levels per side stored (default 20)")
    p.add_argument("--sample-ms", type=int, default=None,
                   help="keep only the last book row of each N-ms bucket of exchange time")
    p.add_argument("--out", required=True, help="output store, e.g. data/books/x.zarr (must not exist)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing book store at --out (never anything else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("contract (default: from the format and symbol, see gpu_engine/data/books/contract.py)")
    g.add_argument("--contract", choices=contract.CONTRACTS, default=None, help="linear or inverse")
    g.add_argument("--multiplier", type=float, default=None,
                   help="linear: base units per contract; inverse: quote units per contract (e.g. 100)")
    g.add_argument("--tick-size", type=float, default=None, help="price increment (maker orders need it)")
    g.add_argument("--lot-size", type=float, default=None, help="quantity increment (0: continuous)")
    p.set_defaults(func=_run)
