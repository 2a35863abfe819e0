"""The block history as a market: level-1 bars built from the block dataset's prices.

    book, info = bars(blocks, meta, bar="1d", spread_bps=None, liquidity=DEFAULT_LIQUIDITY)

The result is an ordinary `Book` (gpu_engine/data/books/store.py) with depth 1 and no trades,
so the kernels, the oracle, the feature bank, the metrics and the reports treat it exactly like
a recorded book (`python -m sweeps.optimize --data blocks`, docs/POWERLAW.md).

Bars
----
* A bar of `bar` seconds (1h, 1d, 1w; any `Nh`, `Nd`, `Nw`) covers [start, end) in UTC; hours
  and days are aligned to 00:00 UTC, weeks to Monday 00:00 UTC. Its tick time is its last
  nanosecond, end - 1 ns, so the block known at the tick (gpu_engine/market.py) is the last
  block of the bar.
* mid = the price of the last block whose price is KNOWN at the bar's end. The dataset's real
  prices are daily closes stamped at the end of their UTC day and interpolated log-linearly
  between stamps (gpu_engine/data/blocks/price.py), so a real block's price is known only at the
  first stamp at or after its time (the end of its day; across a missing day, the end of the
  next priced day); a modelled block's price at its own time. The running maximum of these
  times is used (a price counts as known once every earlier block's is). For a daily bar this
  is the last block of the day, whose price is that day's close (to within the minutes
  between that block and midnight); hourly bars on daily closes therefore step once a day.
* A bar has a price only when that block's price became known within the last
  max(bar, 1 day) before the bar's end; otherwise (a day missing from the price files, no
  block yet) the bar has no price: NaN prices and size 0, which no rule trades
  (docs/RULES.md: an undisplayed top takes no entry, an exit waits for a displayed tick).
* bid = mid x (1 - spread/2), ask = mid x (1 + spread/2), spread in bps x 1e-4: `spread_bps`
  when given, else the era table `SPREAD_ERAS` by the bar's start day (sources in
  docs/POWERLAW.md).
* Displayed size on both sides = `liquidity` / mid (quote currency, default
  `DEFAULT_LIQUIDITY`): an entry takes at most that much (the rules' liquidity cap).

Modelled prices
---------------
A bar whose price comes from a modelled block (`price_source` 0: the seeded synthetic model,
before the first real close, after the last, inside gaps of more than 7 days) validates
nothing. By default the market spans the bars from the first to the last real-priced one and
the modelled bars inside that span get no price (not traded); a `start`/`end` reaching outside
the real span, or a dataset without real prices, is refused (InputError naming the flag).
`allow_modelled=True` (`--allow-modelled-prices`) keeps modelled bars priced and lets the span
reach them; `info["modelled_bars"]` counts them and the report names the flag.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timezone

import numpy as np

from gpu_engine.errors import InputError

DAY_S = 86_400
UNITS = {"h": 3_600, "d": DAY_S, "w": 7 * DAY_S}
WEEK_OFFSET_S = 4 * DAY_S  # 1970-01-01 was a Thursday: weeks start on Monday 1970-01-05
DEFAULT_BAR = "1d"
DEFAULT_LIQUIDITY = 100_000.0  # quote currency (USD) displayed per side per bar

# (first UTC day of the era, full bid-ask spread in bps, where the number comes from).
# The sources are cited in docs/POWERLAW.md, section "Costs".
SPREAD_ERAS = (
    ("2009-01-03", 50.0, "Mt. Gox era: no published top-of-book measurement found; an assumption (unverified), "
                         "wide on purpose"),
    ("2014-01-01", 20.0, "2014-2016: an assumption (unverified) between the Mt. Gox era and the 2017-2019 "
                         "measurements"),
    ("2017-01-01", 3.0, "Aleti & Mizrach (2021), J. Futures Markets 41(2): spot BTC/USD bid-ask spreads average "
                        "0.0298%"),
    ("2020-01-01", 1.0, "'Bitcoin unchained' (J. Empirical Finance, 2022): BTCUSD spreads often below 1 bp"),
)


def parse_bar(text: str, flag: str = "--bar") -> int:
    """'1h' | '1d' | '1w' (or 'Nh', 'Nd', 'Nw', N >= 1) -> seconds; anything else -> InputError."""
    m = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", str(text))
    if m is None or int(m.group(1)) < 1:
        raise InputError(f"{flag}: value {text!r} is not a bar length: use 1h, 1d or 1w (or N h/d/w with N >= 1)")
    n, unit = int(m.group(1)), m.group(2)
    if unit == "h" and (24 % n if n < 24 else n % 24):
        raise InputError(f"{flag}: value {text!r}: an hourly bar must divide a day (1h, 2h, 3h, 4h, 6h, 8h, 12h) "
                         "or be whole days")
    return n * UNITS[unit]


def check_costs(spread_bps, liquidity) -> None:
    if spread_bps is not None and not (np.isfinite(spread_bps) and 0 <= spread_bps < 20_000):
        raise InputError(f"--spread-bps: value {spread_bps!r} must be finite, >= 0 and < 20000 "
                         "(the bid mid x (1 - spread/2) must stay positive)")
    if not (np.isfinite(liquidity) and liquidity > 0):
        raise InputError(f"--liquidity: value {liquidity!r} must be finite and > 0 (quote currency per side)")


def day_number(text: str, flag: str) -> int:
    try:
        return (date.fromisoformat(str(text).strip()) - date(1970, 1, 1)).days
    except ValueError:
        raise InputError(f"{flag}: value {text!r} is not a date (YYYY-MM-DD)") from None


def _iso(unix_s) -> str:
    return datetime.fromtimestamp(int(unix_s), timezone.utc).strftime("%Y-%m-%d %H:%M")


def era_spread_bps(start_s: np.ndarray) -> np.ndarray:
    """The era table's spread (bps) for bars starting at `start_s` (unix seconds)."""
    firsts = np.array([day_number(d, "SPREAD_ERAS") * DAY_S for d, _, _ in SPREAD_ERAS], np.int64)
    vals = np.array([v for _, v, _ in SPREAD_ERAS])
    k = np.searchsorted(firsts, np.asarray(start_s, np.int64), side="right") - 1
    return vals[np.clip(k, 0, len(vals) - 1)]


def price_stamps(meta: dict) -> np.ndarray | None:
    """Unix times at which the real closes became known (ends of the priced UTC days), from the
    dataset's sidecar; None when it does not list them (a dataset written before the price
    sources were recorded: every day inside the real stretches then counts as priced)."""
    src = ((meta or {}).get("price") or {}).get("sources")
    if not src:
        return None
    lo, hi = day_number(src["first_day"], "sidecar"), day_number(src["last_day"], "sidecar")
    have = np.ones(hi - lo + 1, bool)
    for a, b in src.get("missing_days") or []:
        have[day_number(a, "sidecar") - lo: day_number(b, "sidecar") - lo + 1] = False
    return (np.arange(lo, hi + 1, dtype=np.int64)[have] + 1) * DAY_S


def known_times(blocks, meta: dict) -> np.ndarray:
    """Per block, when its price is known (see the module docstring); non-decreasing."""
    from gpu_engine.data.blocks.dataset import known_times as chain_known

    env = np.asarray(chain_known(blocks), dtype=np.int64)  # a block exists once every earlier one does
    real = np.asarray(blocks["price_source"]) == 1
    k = env.copy()
    if real.any():
        stamps = price_stamps(meta)
        t = env[real]
        if stamps is None or stamps.size == 0:
            k[real] = -(-t // DAY_S) * DAY_S  # the end of the block's UTC day (the block's own time at 00:00)
        else:
            j = np.minimum(np.searchsorted(stamps, t, side="left"), stamps.size - 1)
            k[real] = np.maximum(stamps[j], t)
    return np.maximum.accumulate(k)


def bars(blocks, meta: dict | None = None, bar: str = DEFAULT_BAR, spread_bps: float | None = None,
         liquidity: float = DEFAULT_LIQUIDITY, allow_modelled: bool = False, start: str | None = None,
         end: str | None = None, source: str | None = None):
    """(Book, info): the level-1 bar market of the block dataset (see the module docstring).

    blocks: the dataset array (dataset.load); meta: its sidecar (dataset.load_meta).
    start / end: 'YYYY-MM-DD', the first and last UTC day the bars may cover (--from / --to).
    source: how the dataset is named in the book's attrs (its path).
    """
    from gpu_engine.data.books.store import Book

    meta = meta or {}
    bar_s = parse_bar(bar)
    check_costs(spread_bps, liquidity)
    n = len(blocks)
    if n == 0:
        raise InputError(f"{source or 'blocks'}: the block dataset is empty")
    known = known_times(blocks, meta)
    price = np.asarray(blocks["price"], dtype=np.float64)
    psrc = np.asarray(blocks["price_source"], dtype=np.uint8)
    env_last = int(known[-1])
    offset = WEEK_OFFSET_S if bar_s % UNITS["w"] == 0 else 0

    def floor_bar(t):
        return (np.asarray(t, np.int64) - offset) // bar_s * bar_s + offset

    # every bar from the one holding the genesis block to the last one that ends by the last known
    # price (a bar the data stops inside is incomplete: left out)
    first_start = int(floor_bar(int(np.asarray(blocks["time"])[0])))
    last_start = max(int(floor_bar(env_last)) - bar_s, first_start)
    starts = np.arange(first_start, last_start + bar_s, bar_s, dtype=np.int64)
    ends = starts + bar_s
    j = np.searchsorted(known, ends, side="right") - 1
    fresh_s = max(bar_s, DAY_S)
    has = (j >= 0)
    jj = np.where(has, j, 0)
    has &= known[jj] > ends - fresh_s
    mid = np.where(has, price[jj], np.nan)
    real_bar = has & (psrc[jj] == 1)
    modelled_bar = has & (psrc[jj] == 0)
    if not real_bar.any() and not allow_modelled:
        raise InputError(f"{source or 'blocks'}: --data: the block dataset has no real prices (every price is "
                         "modelled, a synthetic price validates nothing): build it with real daily closes, "
                         "`python -m gpu_engine.data blocks --prices FILE... --overwrite` (docs/POWERLAW.md), "
                         "or pass --allow-modelled-prices")

    # the span: real-priced bars by default, everything with --allow-modelled-prices; --from/--to inside it
    if allow_modelled:
        ok = np.nonzero(has)[0]
    else:
        ok = np.nonzero(real_bar)[0]
    if ok.size == 0:
        raise InputError(f"{source or 'blocks'}: --data: no bar has a price")
    lo, hi = int(ok[0]), int(ok[-1])
    span_note = "real-priced bars" if not allow_modelled else "every priced bar (modelled prices allowed)"
    if start is not None:
        s0 = day_number(start, "--from") * DAY_S
        k = int(np.searchsorted(starts, s0, side="left"))
        if k < lo:
            raise InputError(f"--from: value {start!r} is before the first of the {span_note} "
                             f"({_iso(starts[lo])} UTC)" + ("" if allow_modelled else
                                                            "; bars before it have modelled prices (pass "
                                                            "--allow-modelled-prices to use them)"))
        lo = k
    if end is not None:
        e0 = (day_number(end, "--to") + 1) * DAY_S
        k = int(np.searchsorted(ends, e0, side="right")) - 1
        if k > hi:
            raise InputError(f"--to: value {end!r} is after the last of the {span_note} "
                             f"({_iso(ends[hi] - 1)} UTC)" + ("" if allow_modelled else
                                                            "; bars after it have modelled prices (pass "
                                                            "--allow-modelled-prices to use them)"))
        hi = k
    if hi - lo + 1 < 4:
        raise InputError(f"--from/--to: the span holds {max(hi - lo + 1, 0)} bars of {bar}; at least 4 are needed")
    sl = slice(lo, hi + 1)
    starts, ends, mid = starts[sl], ends[sl], mid[sl].copy()
    real_bar, modelled_bar, has = real_bar[sl], modelled_bar[sl], has[sl]
    if not allow_modelled:
        mid[modelled_bar] = np.nan  # inside the real span: not traded
    priced = np.isfinite(mid)

    spread = np.full(starts.shape, float(spread_bps)) if spread_bps is not None else era_spread_bps(starts)
    half = spread * 1e-4 / 2.0
    bid = np.where(priced, mid * (1.0 - half), np.nan)
    ask = np.where(priced, mid * (1.0 + half), np.nan)
    size = np.where(priced, liquidity / np.where(priced, mid, 1.0), 0.0).astype(np.float32)
    ts = ends.astype(np.int64) * 1_000_000_000 - 1

    gaps = _runs(np.nonzero(~has)[0])
    info = {
        "kind": "blocks-bars",
        "dataset": None if source is None else str(source),
        "bar": bar, "bar_s": int(bar_s),
        "bars": int(starts.size), "first_bar": _iso(starts[0]), "last_bar": _iso(ends[-1] - 1),
        "priced_bars": int(priced.sum()), "real_bars": int(real_bar.sum()),
        "modelled_bars": int(modelled_bar.sum()),
        "modelled_bars_priced": int((modelled_bar & priced).sum()),
        "allow_modelled_prices": bool(allow_modelled),
        "bars_without_price": int((~priced).sum()),
        "no_price_runs": [[_iso(starts[a]), _iso(ends[b] - 1)] for a, b in gaps[:20]],
        "mid": "price of the last block whose price is known at the bar's end (gpu_engine/data/blocks/market.py)",
        "spread": ({"rule": "constant", "bps": float(spread_bps)} if spread_bps is not None else
                   {"rule": "era table (gpu_engine/data/blocks/market.py SPREAD_ERAS, docs/POWERLAW.md)",
                    "eras": [{"from": d, "bps": v, "source": why} for d, v, why in SPREAD_ERAS]}),
        "liquidity_quote": float(liquidity),
        "price_sources": ((meta.get("price") or {}).get("sources") or {}).get("spans"),
    }
    attrs = {"exchange": "blocks", "symbol": "BTCUSD", "depth": 1, "tick_size": None, "lot_size": None,
             "source": [{"file": str(source)}] if source else [], "bars": info}
    book = Book.from_arrays(ts, bid[:, None], ask[:, None], size[:, None], size[:, None], attrs=attrs)
    return book, info


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    if idx.size == 0:
        return []
    brk = np.nonzero(np.diff(idx) > 1)[0]
    starts, ends = np.concatenate([[0], brk + 1]), np.concatenate([brk, [idx.size - 1]])
    return [(int(idx[a]), int(idx[b])) for a, b in zip(starts, ends)]


def describe(info: dict) -> str:
    """One line for the reports: the bar market and what in it is not real."""
    sp = info["spread"]
    spread = (f"spread {sp['bps']:g} bps" if sp["rule"] == "constant" else
              "spread by era (" + ", ".join(f"{e['bps']:g} bps from {e['from'][:4]}" for e in sp["eras"]) + ")")
    text = (f"market: {info['bars']} bars of {info['bar']} from the block dataset "
            f"{info.get('dataset') or ''} ({info['first_bar']} .. {info['last_bar']} UTC), {spread}, "
            f"${info['liquidity_quote']:,.0f} displayed per side; "
            f"{info['bars_without_price']} bars without a price (not traded)")
    if info.get("allow_modelled_prices"):
        text += (f"; --allow-modelled-prices: {info['modelled_bars_priced']} bars carry MODELLED prices "
                 "(synthetic: they validate nothing)")
    return text

