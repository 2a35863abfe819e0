"""`python -m gpu_engine.data record`: live Binance / Coinbase / Bybit order book -> book store (+ raw capture).

The command line. The recorder itself is `gpu_engine.data.books.recorder`: one loop
(`recorder/loop.py`: connections, reconnects with exponential backoff + jitter, signals,
flushing, the raw capture writer, the status line) and one small adapter per venue
(`recorder/binance.py`, `coinbase.py`, `bybit.py`: URL, subscription, snapshot fetch,
message routing, what a gap means). Book maintenance and parsing are in neither: every
frame becomes exactly the capture line the importer reads and is fed, in that order,
through the importer's own reader, so a recording equals the import of its own `--raw`
capture by construction, and the rows go to the shared `BookStoreWriter` (incremental:
every flushed row is readable after a `kill -9`).

Venues (`--exchange`):
* `binance`, `binance-usdm`: `<sym>@depth@100ms`, `@trade`, `@bookTicker` on the combined-stream
  endpoint, synced with REST depth snapshots (Binance's documented diff-depth procedure);
  a gap the reader detects is resynced from a fresh snapshot. Raw: `<local_ts_ns> <json>`
  (`import --format binance-jsonl`).
* `coinbase`: Exchange feed, public `level2_batch` + `matches` + `heartbeat`; the subscription
  brings the snapshot; a gap (malformed or crossed book, dropped connection) reconnects for a
  new one. Raw: cryptofeed `<seconds>: <json>` (`--format coinbase-jsonl`).
* `bybit` (v5 linear: USDT/USDC perpetuals), `bybit-spot`: `orderbook.{N}.{sym}` (N = the smallest
  of 1/50/200/1000 covering `--depth`) + `publicTrade.{sym}`, an application ping every 20 s;
  an update-id gap resubscribes the book topic for a fresh snapshot. Raw: `<local_ts_ns>
  <json>` (`--format bybit`).

Bad input: non-JSON frames, unknown streams or message types (logged, counted, not written
to the capture), an exchange error message (logged, reconnect with backoff), HTTP 429/5xx
or an unreadable snapshot (logged, retried with backoff, honouring Retry-After). Invalid
symbol or unreachable endpoint at start: `InputError` -> one line, exit 2.

`--clock server` stamps receive times on the exchange's clock (wall clock plus the offset
to the exchange's server time measured once at start): for re-recording an old capture
through a loopback fake exchange (`gpu_engine.testing.fake_exchange`), whose messages carry
their original (e.g. 2024) times, which the reader would otherwise refuse as a day off.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from gpu_engine.data.books.recorder import ADAPTERS
from gpu_engine.data.books.recorder.loop import (Backoff, LiveReader, RawCapture, RecordConfig, Recorder,
                                                 RecordStats, log, parse_duration)
from gpu_engine.errors import InputError

EXCHANGES = ADAPTERS  # --exchange name -> venue adapter class

__all__ = ["Backoff", "EXCHANGES", "LiveReader", "RawCapture", "RecordConfig", "Recorder", "RecordStats",
           "add_cli", "check_outputs", "log", "parse_duration"]


# ----------------------------------------------------------------------------- CLI

def _run(args) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("httpx", "httpcore", "websockets"):  # one line per request/frame is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = RecordConfig(
        exchange=args.exchange, symbol=args.symbol, out=Path(args.out), depth=args.depth,
        duration=None if args.duration is None else parse_duration(args.duration),
        raw=None if args.raw is None else Path(args.raw), ws_url=args.ws_url, rest_url=args.rest_url,
        flush_seconds=args.flush_seconds, flush_rows=args.flush_rows, status_seconds=args.status_seconds,
        backoff_base=args.backoff_base, backoff_max=args.backoff_max, clock=args.clock,
    )
    if cfg.flush_seconds <= 0 or cfg.flush_rows < 1:
        raise InputError("--flush-seconds must be > 0 and --flush-rows >= 1")
    check_outputs(cfg)
    return asyncio.run(Recorder(cfg).run())


def check_outputs(cfg) -> None:
    """Before any connection: --out (and --raw) must not exist and must be writable, and
    --depth must fit in memory; each refusal is one line naming the flag (exit 2)."""
    from gpu_engine.data.books.store import check_depth_fits
    from gpu_engine.outputs import check_parent_writable

    if isinstance(cfg.depth, int) and cfg.depth >= 1:
        check_depth_fits(cfg.depth, cfg.chunk_rows)
    for flag, p in (("--out", cfg.out), ("--raw", cfg.raw)):
        if p is None:
            continue
        p = Path(p)
        if p.exists() or p.is_symlink():
            raise InputError(f"{p}: {flag}: already exists; record never replaces data, choose another path")
        check_parent_writable(p, flag)
    if cfg.raw is not None and Path(cfg.raw).absolute() == Path(cfg.out).absolute():
        raise InputError(f"{cfg.raw}: --raw: same path as --out")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("record", help="record a live exchange order book into a Zarr book store",
                              description=__doc__.splitlines()[0])
    p.add_argument("--exchange", required=True, choices=tuple(ADAPTERS),
                   help="binance, binance-usdm, coinbase, bybit (v5 linear perpetuals) or bybit-spot")
    p.add_argument("--symbol", required=True, help="e.g. BTCUSDT")
    p.add_argument("--depth", type=int, default=20, help="levels per side stored (default 20)")
    p.add_argument("--duration", default=None, help="stop after this long (e.g. 90s, 30m, 1h; default: until signalled)")
    p.add_argument("--out", required=True, help="output book store (must not exist; record never replaces "
                        "data), e.g. data/books/x.zarr")
    p.add_argument("--raw", default=None, help="also write the raw capture here, in the format the importer reads (Binance "
                        "and Bybit '<local_ts_ns> <json>', Coinbase cryptofeed '<seconds>: <json>'; .gz ok)")
    p.add_argument("--ws-url", default=None, help="WebSocket base URL (default: the exchange's)")
    p.add_argument("--rest-url", default=None, help="REST base URL (default: the exchange's)")
    p.add_argument("--flush-seconds", type=float, default=5.0, help="flush the store at least this often (default 5)")
    p.add_argument("--flush-rows", type=int, default=10_000, help="... or after this many new rows (default 10000)")
    p.add_argument("--status-seconds", type=float, default=5.0, help="status line interval (default 5)")
    p.add_argument("--backoff-base", type=float, default=0.5, help="first reconnect/retry delay, s (default 0.5)")
    p.add_argument("--backoff-max", type=float, default=30.0, help="largest reconnect/retry delay, s (default 30)")
    p.add_argument("--clock", choices=("local", "server"), default="local",
                   help="receive stamps: local wall clock, or shifted onto the exchange's serverTime "
                        "(for replaying old captures through the fake exchange)")
    p.set_defaults(func=_run)
