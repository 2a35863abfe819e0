"""LOBSTER reader: a message + orderbook CSV pair -> book rows (the orderbook file) and trades.

The orderbook file IS the book: row i is the top N levels after message i, so each
emitted row copies it (levels beyond the file's N are never shown, and replaying the
message file alone cannot rebuild them). Format (lobsterdata.com, no header row):

  message   time (seconds after midnight, US Eastern, up to ns decimals), type
            (1 submit, 2 partial cancel, 3 delete, 4 visible execution, 5 hidden
            execution, 6 cross trade, 7 halt), order id, size, price (USD x 10,000),
            direction (1 buy limit order, -1 sell limit order)
  orderbook N levels x (ask price, ask size, bid price, bid size); an empty level holds
            the dummy price 9999999999 (ask) / -9999999999 (bid) with size 0

Mapping into the store:
  * ts = trading date from the file name + the message time, US Eastern -> UTC ns
    (America/New_York: 2012-06-21 is EDT, UTC-4); seq = -1 (LOBSTER has no update id).
  * prices / 10,000; dummy levels -> NaN price, size 0.
  * trades = message types 4 and 5. LOBSTER's direction is the side of the RESTING
    order (the LOBSTER docs: "execution of a sell (buy) limit order corresponds to a
    buyer (seller) initiated trade"), so the aggressor side is -direction:
    direction -1 (sell limit executed) -> +1 buyer-initiated; +1 -> -1 seller-initiated.
  * every visible-level message (types 1-4) is checked against the change between the
    previous and the current orderbook row; the agreeing share is reported in
    report.extra["lobster_agreement"] (with "lobster_checked" / "lobster_agreed").

A pair with different row counts, or files that are not a LOBSTER pair, raise InputError
before any row is yielded. A malformed row (non-number, negative size, wrong column
count) is counted in the report and its book row is not emitted.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from gpu_engine.errors import InputError
from gpu_engine.data.books.feeds.events import BookRow, ImportReport, TradeRow
from gpu_engine.data.books.feeds.jsonl import iter_lines

PRICE_SCALE = 10_000.0
DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
EASTERN = ZoneInfo("America/New_York")

# [prefix_]TICKER_YYYY-MM-DD_START_END_{message|orderbook}_LEVELS.csv
_NAME = re.compile(
    r"(?:^|_)(?P<ticker>[^_]+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_"
    r"(?P<kind>message|orderbook)_(?P<levels>\d+)\.csv$"
)


def _parse_name(path: Path) -> re.Match:
    m = _NAME.search(path.name)
    if m is None:
        raise InputError.at(path, None, None,
                            "not a LOBSTER file name (expected TICKER_YYYY-MM-DD_START_END_"
                            "message_N.csv or ..._orderbook_N.csv)")
    return m


def _pairs(paths: list[Path]) -> list[tuple[Path, Path, re.Match]]:
    """Group the files into (message, orderbook) pairs by their common name stem."""
    groups: dict[tuple, dict[str, Path]] = {}
    for p in map(Path, paths):
        m = _parse_name(p)
        key = (p.name[: m.start("kind")], m["levels"])
        slot = groups.setdefault(key, {})
        if m["kind"] in slot:
            raise InputError.at(p, None, None, f"second {m['kind']} file for the same day "
                                f"(first: {slot[m['kind']]})")
        slot[m["kind"]] = p
    out = []
    for slot in groups.values():
        for need in ("message", "orderbook"):
            if need not in slot:
                have = next(iter(slot.values()))
                raise InputError.at(have, None, None, f"LOBSTER {need} file missing: pass the "
                                    "message file and its orderbook file together")
        out.append((slot["message"], slot["orderbook"], _parse_name(slot["message"])))
    out.sort(key=lambda t: (t[2]["date"], int(t[2]["start"])))
    return out


def _count_rows(path: Path) -> int:
    return sum(1 for _ in iter_lines(path, ImportReport()))


def _midnight_utc_ns(date: str) -> int:
    """UTC ns of local (US Eastern) midnight of `date`, using the offset in force at noon."""
    d = _dt.date.fromisoformat(date)
    noon = _dt.datetime(d.year, d.month, d.day, 12, tzinfo=EASTERN)
    off = noon.utcoffset()
    naive = _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc)
    return (int(naive.timestamp()) - int(off.total_seconds())) * 1_000_000_000


def seconds_to_ns(text: str) -> int:
    """'34200.004241176' -> 34200004241176 exactly (no float rounding)."""
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(text)
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


class _NegativeSize(ValueError):
    pass


def _parse_row(vals: list[int], levels: int):
    """Orderbook row -> (ask_px, ask_sz, bid_px, bid_sz) float arrays [levels] (absent: NaN, 0)
    and the visible levels as {price: size} dicts per side (ask, bid) for the message check."""
    out = []
    dicts = []
    nan = math.nan
    for off, dummy in ((0, DUMMY_ASK), (2, DUMMY_BID)):
        ps, qs = vals[off::4], vals[off + 1::4]
        if min(qs) < 0:
            raise _NegativeSize("negative size")
        live = [(p, q) for p, q in zip(ps, qs) if q > 0 and p != dummy]
        out.append(np.array([p / PRICE_SCALE if q > 0 and p != dummy else nan for p, q in zip(ps, qs)]))
        out.append(np.array([q if p != dummy else 0 for p, q in zip(ps, qs)], dtype=np.float64))
        dicts.append(dict(live))
    return out, dicts


def _agrees(kind: int, size: int, price: int, direction: int,
            prev: list[dict], cur: list[dict], levels: int) -> bool:
    """Does the change prev -> cur equal what one visible-level message says?

    prev/cur: [ask {price: size}, bid {price: size}] of consecutive orderbook rows.
    Expected: the level at `price` on the order's side changes by +size (type 1) or
    -size (types 2-4); every other level on that side is unchanged except levels
    pushed out of / revealed at the visible edge; the other side is unchanged.
    """
    same, other = (1, 0) if direction == 1 else (0, 1)
    if prev[other] != cur[other]:
        return False
    before, after = prev[same], cur[same]
    worse = (lambda q, w: q < w) if direction == 1 else (lambda q, w: q > w)

    def beyond(q: int, side: dict[int, int]) -> bool:  # outside a full visible side
        if len(side) < levels:
            return False
        edge = min(side) if direction == 1 else max(side)
        return worse(q, edge)

    delta = size if kind == 1 else -size
    if price in before or price in after or not beyond(price, before):
        if after.get(price, 0) != before.get(price, 0) + delta:
            return False
    elif before != after:
        return False
    for q in before.keys() | after.keys():
        if q == price:
            continue
        if q in before and q in after:
            if before[q] != after[q]:
                return False
        elif q in before:
            if not beyond(q, after):
                return False
        elif not beyond(q, before):
            return False
    return True


def _why(exc: Exception) -> str:
    """A bad value as the user sees it ('not an integer: 'abc''), not Python's int() message."""
    if isinstance(exc, UnicodeDecodeError):
        return "not ASCII text"
    text = str(exc)
    m = re.match(r"invalid literal for int\(\) with base 10: (.*)$", text)
    if m:
        return f"not an integer: {m.group(1)}"
    return text


def read(paths: list[Path], depth: int, symbol: str | None,
         report: ImportReport) -> Iterator[BookRow | TradeRow]:
    pairs = _pairs(paths)
    for msg_path, ob_path, name in pairs:  # check every pair before yielding anything
        n_msg, n_ob = _count_rows(msg_path), _count_rows(ob_path)
        if n_msg != n_ob:
            raise InputError.at(ob_path, min(n_msg, n_ob) + 1, None,
                                f"orderbook file has {n_ob} rows but the message file "
                                f"{msg_path.name} has {n_msg}: not a matching LOBSTER pair")
        if symbol is not None and name["ticker"].upper() != symbol.upper():
            raise InputError.at(msg_path, None, None,
                                f"file is for {name['ticker']}, not --symbol {symbol}")
    agreed = checked = 0
    for msg_path, ob_path, name in pairs:
        ticker = name["ticker"]
        levels = int(name["levels"])
        base_ns = _midnight_utc_ns(name["date"])
        n = min(levels, depth)
        last_ts = None
        prev_ob: list[int] | None = None
        report.symbol = ticker
        report.extra.setdefault("exchange", "nasdaq")
        report.extra.setdefault("tick_size", 0.01)
        for (lineno, mline), (_, oline) in zip(iter_lines(msg_path, report), iter_lines(ob_path, report)):
            report.messages += 1
            where = msg_path  # the file the value being parsed comes from (named in the note)
            try:
                m = mline.decode("ascii").strip().split(",")
                if len(m) < 6:
                    raise ValueError(f"message row needs 6 columns, has {len(m)}")
                ts = base_ns + seconds_to_ns(m[0])
                kind, size, price, direction = int(m[1]), int(m[3]), int(m[4]), int(m[5])
                if size < 0:
                    raise _NegativeSize("negative size")
                where = ob_path
                ob = [int(v) for v in oline.decode("ascii").strip().split(",")]
                if len(ob) != 4 * levels:
                    raise ValueError(f"orderbook row needs {4 * levels} columns, has {len(ob)}")
                (ask_px, ask_sz, bid_px, bid_sz), ob = _parse_row(ob, levels)
            except _NegativeSize:
                report.negative_sizes += 1
                if len(report.notes) < 20:
                    report.note(f"{where.name}:{lineno}: negative size")
                prev_ob = None
                continue
            except (ValueError, UnicodeDecodeError) as exc:
                report.bad_lines += 1
                if len(report.notes) < 20:
                    report.note(f"{where.name}:{lineno}: {_why(exc)}")
                prev_ob = None
                continue
            if kind in (1, 2, 3, 4) and prev_ob is not None:
                checked += 1
                agreed += _agrees(kind, size, price, direction, prev_ob, ob, levels)
            prev_ob = ob
            if last_ts is not None and ts < last_ts:
                report.time_backwards += 1
                continue
            last_ts = ts
            report.see_ts(ts)
            if kind in (4, 5):
                if direction not in (1, -1):
                    report.bad_lines += 1
                else:
                    yield TradeRow(ts, price / PRICE_SCALE, float(size), -direction, ticker)
            elif kind not in (1, 2, 3, 6, 7):
                report.extra["lobster_unknown_types"] = report.extra.get("lobster_unknown_types", 0) + 1
            if bid_sz[0] > 0 and ask_sz[0] > 0 and bid_px[0] >= ask_px[0]:
                report.crossed += 1
                continue
            out = [np.full(depth, np.nan), np.full(depth, np.nan),
                   np.zeros(depth), np.zeros(depth)]
            out[0][:n], out[1][:n], out[2][:n], out[3][:n] = bid_px[:n], ask_px[:n], bid_sz[:n], ask_sz[:n]
            yield BookRow(ts, -1, out[0], out[1], out[2], out[3], -1, ticker)
    report.extra["lobster_checked"] = checked
    report.extra["lobster_agreed"] = agreed
    report.extra["lobster_agreement"] = agreed / checked if checked else float("nan")
