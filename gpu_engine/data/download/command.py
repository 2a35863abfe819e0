"""`python -m gpu_engine.data download`: the command line, the run, the summary, the import per day.

    download --source tardis --exchange binance-futures --symbol BTCUSDT \\
             --types incremental_book_L2,trades --from 2024-08-01 --to 2024-08-02 [--import]
    download --source binance-archive --market um --symbol BTCUSDT \\
             --types trades,bookTicker --from 2024-03-01 --to 2024-03-02 [--import]

Every argument is checked before anything is fetched (dates, types, the Tardis key for
non-free days, that `--out` can be written). Files go under `--out` (default
`data/archive/`), each complete and verified or not there at all (`http.py`); files already
complete are skipped, `.part` files resumed. The summary lists what was fetched, skipped,
missing (404: reported, the run goes on) and failed. `--import` then builds one book store
per day (`--stores`, default `data/books/`, named `{source tag}-{SYMBOL}-{YYYY-MM-DD}.zarr`)
from that day's verified files with the `tardis-csv` / `binance-archive` readers; a day with a
failed file is not imported, a store that already exists is kept, never replaced.

Exit status: 0 when nothing failed (missing days included), 1 when a file could not be
fetched or verified or a day could not be imported (run the same command again to resume),
2 for unusable arguments or an authentication failure (one line, the key never printed),
130 on Ctrl-C (`.part` files stay and are resumed by the next run).
"""
from __future__ import annotations

import os
import sys
import threading
from collections import defaultdict
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from gpu_engine.data.download import binance_archive, tardis
from gpu_engine.data.download.http import AuthFailed, Client, day_range, run_jobs, utc_today
from gpu_engine.errors import InputError
from gpu_engine.outputs import check_parent_writable

SOURCES = ("tardis", "binance-archive")
MAX_DAYS = 3660


def parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise InputError(f"{flag} {text!r}: not a date (YYYY-MM-DD)") from None


def parse_types(text: str | None, default) -> list[str]:
    if text is None:
        return list(default)
    types = [t.strip() for t in text.split(",") if t.strip()]
    if not types:
        raise InputError("--types: empty list")
    return list(dict.fromkeys(types))


def _days(args) -> list[date]:
    start = parse_day(args.start, "--from")
    end = parse_day(args.end, "--to") if args.end else start
    if end < start:
        raise InputError(f"--to {end} is before --from {start}")
    today = utc_today()
    if end > today:
        raise InputError(f"--to {end} is in the future (today is {today} UTC): no file exists yet")
    days = day_range(start, end)
    if len(days) > MAX_DAYS:
        raise InputError(f"--from/--to: {len(days)} days; at most {MAX_DAYS} in one run")
    return days


def check_base_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InputError(f"{where} {url!r}: not an http(s) base URL (e.g. https://datasets.tardis.dev/v1)")


def _positive(value, flag: str, minimum=1):
    if value < minimum:
        raise InputError(f"{flag} must be >= {minimum}, got {value}")
    return value


class _Progress:
    """A tqdm byte bar on stderr (a terminal only, not with --quiet) and log lines."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.quiet = not enabled
        self._lock = threading.Lock()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="download",
                            file=sys.stderr, mininterval=0.5, leave=False)

    def bytes(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def total(self, n: int) -> None:
        if self.bar is not None and n:
            with self._lock:
                self.bar.total += n
                self.bar.refresh()

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def run(args) -> int:
    days = _days(args)
    _positive(args.concurrency, "--concurrency")
    _positive(args.retries, "--retries", 0)
    _positive(args.corrupt_retries, "--corrupt-retries", 0)
    if args.backoff_base < 0 or args.backoff_max < 0 or args.timeout <= 0:
        raise InputError("--backoff-base/--backoff-max must be >= 0 and --timeout > 0")
    out = Path(args.out)
    key = None
    env = tardis.BASE_URL_ENV if args.source == "tardis" else binance_archive.BASE_URL_ENV
    if args.base_url is not None:
        check_base_url(args.base_url, "--base-url")
    elif os.environ.get(env):
        check_base_url(os.environ[env], f"${env}")
    if args.source == "tardis":
        types = parse_types(args.types, tardis.DEFAULT_TYPES)
        tardis.check_args(args.exchange, args.symbol, types)
        if args.market:
            raise InputError("--market is for --source binance-archive; Tardis names the market in --exchange "
                             "(binance, binance-futures, binance-delivery)")
        if args.interval:
            raise InputError("--interval is for --source binance-archive --types klines")
        key = tardis.check_key(days)
        jobs = tardis.jobs(out, args.exchange, args.symbol, types, days, args.base_url, key)
        where = tardis.folder(out, args.exchange)
        title = f"tardis {args.exchange} {tardis.tardis_symbol(args.symbol)}"
    else:
        types = parse_types(args.types, binance_archive.DEFAULT_TYPES)
        if args.exchange:
            raise InputError("--exchange is for --source tardis; the Binance archive takes --market spot|um|cm")
        binance_archive.check_args(args.market, args.symbol, types, args.interval)
        jobs = binance_archive.jobs(out, args.market, args.symbol, types, days, args.base_url, args.interval)
        where = binance_archive.folder(out, args.market, types)
        title = f"binance-archive {args.market} {args.symbol.upper()}"
    check_parent_writable(where / "x", "--out")
    if args.do_import:
        if args.depth is not None:
            _positive(args.depth, "--depth")
        check_parent_writable(Path(args.stores) / "x", "--stores")

    progress = _Progress(not args.quiet)
    stop = threading.Event()
    client = Client(retries=args.retries, corrupt_retries=args.corrupt_retries, backoff_base=args.backoff_base,
                    backoff_max=args.backoff_max, timeout=args.timeout, stop=stop, on_bytes=progress.bytes,
                    on_total=progress.total, log=progress.log)
    if args.source == "tardis":
        work = client.download
    else:
        def work(job):
            return binance_archive.fetch(client, job)
    try:
        outcomes = run_jobs(jobs, work, args.concurrency, stop)
    except AuthFailed as exc:
        who = (f"the Tardis API key in {tardis.KEY_ENV} was refused" if key else
               "the server wants a key" if args.source == "tardis" else
               "data.binance.vision needs no key: the archive is not reachable from this network or region")
        raise InputError(f"{exc.url}: authentication failed (HTTP {exc.status}): {who}") from None
    finally:
        progress.close()
        client.close()

    failed = [o for o in outcomes if o.status == "failed"]
    missing = [o for o in outcomes if o.status == "missing"]
    done = [o for o in outcomes if o.status == "done"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    lines = [f"download {title} {days[0]}..{days[-1]}: {len(jobs)} files -> {where}",
             f"  {'fetched and verified':<24} {len(done):>6}   {_mib(sum(o.bytes for o in done))}",
             f"  {'already complete':<24} {len(skipped):>6}",
             f"  {'missing (404)':<24} {len(missing):>6}",
             f"  {'failed':<24} {len(failed):>6}"]
    for o in missing:
        lines.append(f"  missing: {o.job.label}: {o.reason}")
    for o in failed:
        lines.append(f"  failed: {o.job.label}: {o.reason}")
    if failed:
        lines.append("  run the same command again to fetch what failed (complete files are not fetched again)")
    print("\n".join(lines), flush=True)

    bad_imports = 0
    if args.do_import:
        bad_imports = _import_days(args, outcomes, progress_enabled=not args.quiet)
    return 1 if failed or bad_imports else 0


def _import_days(args, outcomes, progress_enabled: bool) -> int:
    """One store per day from that day's verified files; returns the number of days that failed."""
    from gpu_engine.data.books.importers import import_files

    by_day = defaultdict(list)
    for o in outcomes:
        by_day[o.job.day].append(o)
    stores = Path(args.stores)
    if args.source == "tardis":
        tag, fmt, plan = f"tardis-{args.exchange}", "tardis-csv", tardis.import_plan
        symbol, depth = tardis.tardis_symbol(args.symbol), args.depth or 20
    else:
        tag, fmt, plan = f"binance-{args.market}", "binance-archive", binance_archive.import_plan
        symbol, depth = args.symbol.upper(), args.depth or 1
    bad = 0
    for day in sorted(by_day):
        outs = by_day[day]
        store = stores / f"{tag}-{symbol}-{day.isoformat()}.zarr"
        if any(o.status == "failed" for o in outs):
            n = sum(o.status == "failed" for o in outs)
            print(f"not imported {day}: {n} file{'s' if n > 1 else ''} failed (see above)")
            bad += 1
            continue
        files = {o.job.kind: o.job.dest for o in outs if o.status in ("done", "skipped")}
        paths, what, notes = plan(files)
        if not paths:
            print(f"not imported {day}: no usable file" + (f" ({'; '.join(notes)})" if notes else ""))
            continue
        if store.exists() or store.is_symlink():
            print(f"kept {store}: exists (not replaced; remove it to import {day} again)")
            continue
        try:
            report = import_files(paths, fmt, store, depth=depth, symbol=symbol, progress=progress_enabled)
        except InputError as exc:
            print(f"not imported {day}: {' '.join(str(exc).split())}")
            bad += 1
            continue
        line = (f"imported {day} -> {store} ({' + '.join(what)}: {report.rows:,} book rows, "
                f"{report.trades:,} trades")
        counts = [f"{n:,} {label}" for n, label in ((report.gaps and len(report.gaps), "gaps"),
                                                     (report.crossed, "crossed"), (report.bad_lines, "bad lines"))
                  if n]
        print(line + (", " + ", ".join(counts) if counts else "") + ")")
        for n in notes:
            print(f"  note: {n}")
    return bad


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("download", help="download Tardis datasets or Binance archive files (and import them)",
                              description="Download Tardis datasets or Binance archive files, each verified "
                                          "(whole gzip stream / published sha256) and resumable; --import builds "
                                          "one book store per day.")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--symbol", required=True, help="e.g. BTCUSDT")
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first day (UTC)")
    p.add_argument("--to", dest="end", default=None, metavar="YYYY-MM-DD", help="last day, included (default: --from)")
    p.add_argument("--types", default=None,
                   help="comma-separated data types (tardis: incremental_book_L2,trades,quotes,book_snapshot_25,...; "
                        "default incremental_book_L2,trades. binance-archive: trades,aggTrades,bookTicker,klines; "
                        "default trades)")
    p.add_argument("--exchange", default=None, help="tardis: the exchange id, e.g. binance-futures, binance")
    p.add_argument("--market", default=None, choices=tuple(binance_archive.MARKETS),
                   help="binance-archive: spot, um (USD-M futures) or cm (COIN-M futures)")
    p.add_argument("--interval", default=None, metavar="1d",
                   help="binance-archive --types klines: the candle interval (1d for the daily closes that "
                        "`blocks --prices` reads; monthly files where a whole month is asked for)")
    p.add_argument("--out", default="data/archive", help="download folder (default data/archive/)")
    p.add_argument("--base-url", default=None,
                   help=f"replace the provider's base URL (also ${tardis.BASE_URL_ENV}, ${binance_archive.BASE_URL_ENV})")
    p.add_argument("--concurrency", type=int, default=4, help="files fetched at once (default 4)")
    p.add_argument("--retries", type=int, default=5,
                   help="retries of a file after 429/5xx/connection errors without progress (default 5)")
    p.add_argument("--corrupt-retries", type=int, default=2,
                   help="fetches again of a file that fails its check (default 2)")
    p.add_argument("--backoff-base", type=float, default=0.5, help="first retry delay, s (default 0.5)")
    p.add_argument("--backoff-max", type=float, default=30.0, help="largest retry delay, s (default 30)")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout, s (default 30)")
    p.add_argument("--import", dest="do_import", action="store_true",
                   help="then build one book store per day from the verified files")
    p.add_argument("--stores", default="data/books", help="with --import: folder of the day stores (default data/books/)")
    p.add_argument("--depth", type=int, default=None,
                   help="with --import: levels per side (default 20 for tardis, 1 for binance-archive)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no retry lines")
    p.set_defaults(func=run)
