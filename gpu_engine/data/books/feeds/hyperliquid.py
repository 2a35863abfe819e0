"""Hyperliquid reader: WebSocket `l2Book` snapshots and `trades` -> book rows and trades.

Input: hftbacktest's collector (`<local_ns> <json>`), cryptofeed (`<seconds>: <json>`) or bare
JSON lines, in any mix (`feeds/mixed.py`). In a cryptofeed capture only the bare `<seconds>:
<json>` lines are received messages: its `<url> <- <seconds>: <json>` lines are what the
client sent (subscribe requests: skipped, `extra["sent_lines"]`), `<url> <-> <seconds>` a
connect (counted in `extra["connections"]`) and `<url> -> <seconds>: <json>` an HTTP answer
(skipped, `extra["rest_lines"]`).

Checked on a real capture (hftbacktest's `examples/hyperliquid/btcusd_20250126.gz`, in
tests/data/venues/; tests/test_venues_real.py): no gap, never crossed, every row equal to an
independent rebuild, every trade kept.

Messages (Hyperliquid WebSocket API, `wss://api.hyperliquid.xyz/ws`; the layout below is the
one in hftbacktest's example capture `examples/hyperliquid/btcusd_20250126.gz`, whose converter
also reads `side` as the trade initiator's):
* `{"channel": "l2Book", "data": {"coin", "time": ms, "levels": [[bids], [asks]]}}`, each level
  `{"px": str, "sz": str, "n": orders}`, best first. Every message is the whole (top-N,
  usually 20 levels per side) book: there are no deltas and no sequence numbers, so there
  is nothing to resync; a message that is exactly the previous one again (same `time`,
  same levels: the subscription's first push often repeats the snapshot) is a duplicate.
  Rows: ts = `time` (ms -> ns), seq = -1, one row per (non-duplicate) message.
* `{"channel": "trades", "data": [{"coin", "side": "B"|"A", "px", "sz", "time": ms, "hash",
  "tid", "users"}]}`: `side` is the taker's (B: a buyer lifted the ask -> +1, A -> -1). The
  first message of a subscription replays recent trades (in the capture above: 30 trades
  of the 49 s before the first book), so a reconnect repeats trades: a `tid` among the last
  `mixed.RECENT_IDS` seen is a duplicate (tids are not ordered). The replayed trades older
  than the first book row are kept at their own times (trade ts = `time`, when they were
  public; the store orders trades by time only) and counted in
  `extra["trades_before_first_book"]` with a note (`mixed.count_early_trades`): a `Market`
  aligns them to its first tick.
* `subscriptionResponse`, `pong` and the other channels (`bbo`, `allMids`, `candle`, ...)
  are counted and skipped; an `error` message is noted.

A crossed or locked snapshot, or one with a malformed level, is refused (no row; a gap
until the next good snapshot). Without --symbol the first coin seen is selected (noted).
Store attrs: exchange "hyperliquid", market ("perp" for a plain coin name like "BTC",
"spot" for "@107" or "PURR/USDC" names), tick_size / lot_size (finest step in the first book).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gpu_engine.data.books.feeds import sniff
from gpu_engine.data.books.feeds.book import LevelError, parse_levels
from gpu_engine.data.books.feeds.coinbase import (BAD, CONNECT, MAX_LISTED_BAD, BookState, Picker, TradeClock,
                                                  tick_step)
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.mixed import RecentIds, count_early_trades, iter_mixed

__all__ = ["read"]

_IGNORED = {"subscriptionResponse", "pong", "bbo", "allMids", "candle", "activeAssetCtx", "notification",
            "webData2", "post"}
_SIDES = {"B": 1, "A": -1}


class _Book(BookState):
    def __init__(self, report: ImportReport):
        super().__init__(report)
        self.last_levels = None


def _levels(side, field: str) -> list[tuple[float, float]]:
    if not isinstance(side, list) or not all(isinstance(lv, dict) for lv in side):
        raise LevelError("bad_number", f"{field}: not a list of {{px, sz, n}} levels")
    return parse_levels([(lv.get("px"), lv.get("sz")) for lv in side], field)


def read(paths: list[Path], depth: int, symbol: str | None, report: ImportReport,
         lines=None) -> Iterator[BookRow | TradeRow]:
    """The `hyperliquid` reader (registered in `gpu_engine.data.books.importers.FORMATS`).

    `lines`: instead of reading `paths`, iterate these `(kind, path, lineno, local_ts, obj)`
    tuples (what `feeds.mixed.iter_mixed` yields).
    """
    return count_early_trades(_read(paths, depth, symbol, report, lines), report)


def _read(paths, depth: int, symbol: str | None, report: ImportReport, lines) -> Iterator[BookRow | TradeRow]:
    report.extra.setdefault("exchange", "hyperliquid")
    pick = Picker(symbol, report)
    books: dict[str, _Book] = {}
    clocks: dict[str, TradeClock] = {}
    recent: dict[str, RecentIds] = {}
    if lines is None:
        lines = iter_mixed(paths, report)
    for kind, path, lineno, local, obj in lines:
        if kind == CONNECT:
            report.count("connections")  # every l2Book is a whole book: nothing to resync
            continue
        if kind == BAD:
            continue  # a lost snapshot is a lost row, not a wrong book
        report.messages += 1
        try:
            channel = obj.get("channel")
            data = obj.get("data")
            if channel == "l2Book":
                if not isinstance(data, dict):
                    raise ValueError("l2Book: data is not an object")
                coin = data.get("coin")
                if not pick.keep(coin):
                    continue
                row = _book(data, coin, books, depth, report, path, lineno, local)
                if row is not None:
                    yield row
            elif channel == "trades":
                if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
                    raise ValueError("trades: data is not a list of trades")
                for t in data:
                    row = _trade(t, pick, clocks, recent, report)
                    if row is not None:
                        yield row
            elif channel == "error":
                report.count("error_messages")
                report.note(f"{path.name}:{lineno}: Hyperliquid error message: {str(data)[:100]}")
            elif channel in _IGNORED:
                report.count(f"ignored_{channel}")
            elif isinstance(channel, str) and sniff.identify(obj) in ("hyperliquid", None) and "data" in obj:
                raise ValueError(f"unknown channel {channel!r}")
            else:
                raise ValueError(sniff.not_this("hyperliquid", obj))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            report.bad_lines += 1
            report.count("unknown_or_malformed_messages")
            if report.extra["unknown_or_malformed_messages"] <= MAX_LISTED_BAD:
                report.note(f"{path.name}:{lineno}: "
                            + (f"field {exc.args[0]!r} missing" if isinstance(exc, KeyError) else str(exc)[:160]))
    if pick.want:
        report.extra.setdefault("symbol", pick.want)


def _book(data: dict, coin: str, books: dict, depth: int, report: ImportReport, path, lineno, local) -> BookRow | None:
    t = data.get("time")
    if isinstance(t, bool) or not isinstance(t, int):
        raise ValueError(f"l2Book: field 'time' not an epoch-ms integer ({t!r})")
    ts = t * 1_000_000
    st = books.get(coin)
    if st is None:
        st = books[coin] = _Book(report)
        report.extra.setdefault("market", "spot" if coin.startswith("@") or "/" in coin else "perp")
    levels = data.get("levels")
    try:
        if not isinstance(levels, list) or len(levels) != 2:
            raise LevelError("bad_number", "levels: not [bids, asks]")
        bids, asks = _levels(levels[0], "bids"), _levels(levels[1], "asks")
    except LevelError as exc:
        if exc.kind == "negative_size":
            report.negative_sizes += 1
        else:
            report.bad_lines += 1
        report.note(f"{path.name}:{lineno}: {str(exc)[:140]}")
        _refuse(st, ts, "malformed level", path, lineno)
        return None
    key = (t, bids, asks)
    if st.last_levels == key:
        report.duplicates += 1
        return None
    st.last_levels = key
    st.book.apply_snapshot(bids, asks)
    if "tick_size" not in report.extra and bids and asks:
        report.extra["tick_size"] = tick_step(p for p, _ in bids + asks)
        report.extra["lot_size"] = tick_step(q for _, q in bids + asks)
    if st.book.crossed():
        report.crossed += 1
        _refuse(st, ts, "crossed book", path, lineno)
        return None
    st.resync(ts)
    return st.row(ts, -1, local, depth, coin)


def _refuse(st: _Book, ts: int, reason: str, path, lineno) -> None:
    """This snapshot is unusable: a gap (opened once) until the next good one."""
    if st.open_gap is None:
        st.synced = True  # lose() records a gap only from a synced book
        st.lose(ts, reason, kind="bad_snapshot", file=str(path), line=lineno)
    st.synced = False


def _trade(t: dict, pick: Picker, clocks: dict, recent: dict, report: ImportReport) -> TradeRow | None:
    coin = t.get("coin")
    if not pick.keep(coin):
        return None
    tm = t.get("time")
    if isinstance(tm, bool) or not isinstance(tm, int):
        raise ValueError(f"trade: field 'time' not an epoch-ms integer ({tm!r})")
    side = _SIDES.get(t.get("side"))
    if side is None:
        raise ValueError(f"trade side {t.get('side')!r} (want B or A)")
    try:
        (px, qty), = parse_levels([(t.get("px"), t.get("sz"))], "trade")
    except LevelError as exc:
        if exc.kind == "negative_size":
            report.negative_sizes += 1
        else:
            report.bad_lines += 1
        report.note(str(exc)[:160])
        return None
    ids = recent.get(coin)
    if ids is None:
        ids = recent[coin] = RecentIds()
    tid = t.get("tid")
    key = tid if tid is not None else (t.get("hash"), tm, t.get("px"), t.get("sz"), t.get("side"))
    if not ids.add(key):
        report.duplicates += 1
        return None
    clock = clocks.get(coin)
    if clock is None:
        clock = clocks[coin] = TradeClock(report)
    ts = clock.accept(None, tm * 1_000_000)
    if ts is None:
        return None
    return TradeRow(ts, px, qty, side, coin)
