"""Contract specifications of a book store: `contract` (linear | inverse), `multiplier`,
`tick_size`, `lot_size` -- what turns book sizes and prices into value (docs/RULES.md, v2).

    value(q, p) = q * multiplier * p   (linear: quote currency; spot and USD-M: multiplier 1)
    value(q, p) = q * multiplier / p   (inverse: base currency; multiplier in quote units)

Every producer fills them (`infer`): the Binance importer and recorder from the symbol
(spot and USD-M linear, multiplier 1; COIN-M inverse, 100 USD per contract for BTCUSD_*,
10 USD for other coins), Bybit from its market (linear/spot multiplier 1; inverse 1 USD per
contract), the synthetic generator from its parameters, every other format linear with
multiplier 1 unless the user says otherwise (`--contract`, `--multiplier`, `--tick-size`,
`--lot-size` on `import`, which win over anything inferred). A tick or lot size a reader
inferred from the prices and sizes it saw is marked in `contract_source`.
"""
from __future__ import annotations

import math
import re

from gpu_engine.errors import InputError

KEYS = ("contract", "multiplier", "tick_size", "lot_size")
CONTRACTS = ("linear", "inverse")
_COINM = re.compile(r"^([A-Z0-9]+?)USD_(PERP|\d{6})$")


def binance(symbol: str | None, market: str | None = None) -> dict:
    """Binance spot / USD-M (linear, 1) or COIN-M (inverse; 100 USD BTC, 10 USD others)."""
    sym = (symbol or "").upper()
    m = _COINM.match(sym)
    if market in ("cm", "coinm") or m:
        coin = m.group(1) if m else sym.split("USD")[0]
        return {"contract": "inverse", "multiplier": 100.0 if coin == "BTC" else 10.0}
    return {"contract": "linear", "multiplier": 1.0}


def bybit(market: str | None) -> dict:
    """Bybit: linear perps and spot in base units (1); inverse contracts are 1 USD each."""
    if market == "inverse":
        return {"contract": "inverse", "multiplier": 1.0}
    return {"contract": "linear", "multiplier": 1.0}


def infer(fmt: str, symbol: str | None, attrs: dict) -> dict:
    """The contract of a store written from `fmt` (attrs: what the reader or recorder found)."""
    if fmt in ("binance-jsonl", "binance-archive"):
        base = binance(symbol, attrs.get("market"))
    elif fmt == "bybit":
        base = bybit(attrs.get("market"))
    else:
        base = {"contract": "linear", "multiplier": 1.0}
    out = dict(base)
    for key in ("tick_size", "lot_size"):
        v = attrs.get(key)
        out[key] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
    if out["lot_size"] is None:
        out["lot_size"] = 0.0  # continuous quantities: nothing known to round to
    return out


def check(values: dict, where: str, flags: bool = True) -> dict:
    """Validated contract fields; InputError naming the flag (or field) and `where`."""
    name = (lambda k: "--" + k.replace("_", "-")) if flags else (lambda k: k)
    out = dict(values)
    c = out.get("contract")
    if c not in CONTRACTS:
        raise InputError(f"{where}: {name('contract')}: {c!r} is not one of {', '.join(CONTRACTS)}")
    m = out.get("multiplier")
    if m is None and c == "inverse":
        raise InputError(f"{where}: {name('multiplier')}: an inverse contract needs its multiplier "
                         "(quote units per contract, e.g. 100 for Binance BTCUSD_PERP)")
    if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
        raise InputError(f"{where}: {name('multiplier')}: {m!r} must be a finite number > 0")
    t = out.get("tick_size")
    if t is not None and not (math.isfinite(t) and t > 0):
        raise InputError(f"{where}: {name('tick_size')}: {t!r} must be a finite number > 0")
    lot = out.get("lot_size")
    if lot is None or not (math.isfinite(lot) and lot >= 0):
        raise InputError(f"{where}: {name('lot_size')}: {lot!r} must be a finite number >= 0 (0: continuous)")
    return out


def resolve(fmt: str, symbol: str | None, attrs: dict, overrides: dict, where: str) -> dict:
    """infer() with the user's overrides (None = not given) applied and checked, plus
    `contract_source`: which fields the user gave, which were inferred from the data."""
    found = infer(fmt, symbol, attrs)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("contract") == "inverse" and "multiplier" not in given and found["contract"] != "inverse":
        found["multiplier"] = None  # an inverse multiplier cannot be guessed
    out = check({**found, **given}, where)
    source = {k: ("given" if k in given else "inferred") for k in KEYS}
    if out.get("tick_size") is None:
        source["tick_size"] = "unknown (maker orders need --tick-size)"
    out["contract_source"] = source
    return out
