"""The run-wide trading settings of the sweep CLIs (docs/RULES.md, rules v2): the contract, the
queue model, the fee schedule and the cancel latency, resolved from the flags and the book store.

Flags (sweeps.optimize and sweeps.grid):

    --contract linear|inverse  --multiplier M  --tick-size X  --lot-size X   (default: the store's attrs)
    --queue risk_averse|power|log  --queue-n N                              (default risk_averse; N for power, 2)
    --fee-bps BPS  --maker-fee-bps BPS                                      (default: by venue, below)
    --cancel-latency-ms MS                                                  (default: --latency-ms)

Fee defaults by the store's `exchange` and `market` attrs (`FEE_SCHEDULES`): Binance USD-M and
COIN-M futures, regular tier: taker 5 bps, maker 2 bps; a spot market: 10 / 10; anything else
(the synthetic book, an unknown venue): the engine's default 10 / 10 (Binance spot regular tier,
`enums.DEFAULT_FEE_BPS` / `DEFAULT_MAKER_FEE_BPS`). The costs record which schedule was used
(`fee_source`), and the run prints it.

A flag always wins over the store; the costs record where each setting came from
(`contract.source`: flag, store or default). Everything here is checked before any data work
or output: an unusable flag value, an inverse contract without a multiplier, a space with
maker orders on a store without a tick size raise `InputError` naming the flag or field.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from gpu_engine.enums import (
    CONTRACTS,
    DEFAULT_FEE_BPS,
    DEFAULT_MAKER_FEE_BPS,
    DEFAULT_QUEUE_N,
    QUEUE_MODELS,
)
from gpu_engine.errors import InputError

# (exchange, market) -> (taker bps, maker bps, description); market None = any market of that kind
FEE_SCHEDULES = {
    ("binance", "usdm"): (5.0, 2.0, "Binance USD-M futures regular tier (taker 0.05%, maker 0.02%)"),
    ("binance", "coinm"): (5.0, 2.0, "Binance COIN-M futures regular tier (taker 0.05%, maker 0.02%)"),
    (None, "spot"): (10.0, 10.0, "spot regular tier (taker and maker 0.10%)"),
}
DEFAULT_SCHEDULE = (DEFAULT_FEE_BPS, DEFAULT_MAKER_FEE_BPS,
                    "engine default: Binance spot regular tier, taker and maker 0.10%")
CONTRACT_KEYS = ("contract", "multiplier", "tick_size", "lot_size")
LOW_FILL_RATIO = 0.25  # a maker fill ratio below this is called low in the reports


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("contract, queue and maker orders (docs/RULES.md, rules v2)")
    g.add_argument("--contract", default=None, choices=CONTRACTS,
                   help="linear (value = q x multiplier x price) or inverse (q x multiplier / price); "
                        "default: the store's")
    g.add_argument("--multiplier", type=float, default=None,
                   help="linear: base units per contract; inverse: quote units per contract (100 for "
                        "Binance BTCUSD_PERP); default: the store's (1 for a linear one)")
    g.add_argument("--tick-size", type=float, default=None,
                   help="price grid of maker orders; default: the store's (maker orders need one)")
    g.add_argument("--lot-size", type=float, default=None,
                   help="quantity step, 0 = continuous; default: the store's (0 when it has none)")
    g.add_argument("--queue", default="risk_averse", choices=QUEUE_MODELS,
                   help="queue position model of maker orders (default %(default)s)")
    g.add_argument("--queue-n", type=float, default=None,
                   help=f"exponent of --queue power (default {DEFAULT_QUEUE_N:g})")
    g.add_argument("--maker-fee-bps", type=float, default=None,
                   help="fee of maker fills in bps, negative = rebate (default: by venue: Binance USD-M/COIN-M "
                        "2, spot 10, else 10)")
    g.add_argument("--cancel-latency-ms", type=float, default=None,
                   help="from sending a cancel to its effect, ms (default: --latency-ms)")


def check_args(args) -> None:
    """The flags' own values (no store needed); InputError naming the flag."""
    def num(flag, v, ok, want):
        if v is not None and not (math.isfinite(v) and ok(v)):
            raise InputError(f"{flag}: value {v!r} must be {want}")

    num("--multiplier", args.multiplier, lambda v: v > 0, "finite and > 0")
    num("--tick-size", args.tick_size, lambda v: v > 0, "finite and > 0")
    num("--lot-size", args.lot_size, lambda v: v >= 0, "finite and >= 0 (0 = continuous)")
    num("--queue-n", args.queue_n, lambda v: v > 0, "finite and > 0")
    num("--maker-fee-bps", args.maker_fee_bps, lambda v: True, "finite (negative = rebate)")
    num("--cancel-latency-ms", args.cancel_latency_ms, lambda v: v >= 0, "finite and >= 0")
    if args.queue_n is not None and args.queue != "power":
        raise InputError(f"--queue-n: only with --queue power (the exponent of its probability function); "
                         f"--queue is {args.queue!r}")


def store_attrs(book_path) -> dict | None:
    """The attrs of the book store (the first store of a data set) without loading it; None when
    there is no store there yet (the default one, generated later) or it is not a store."""
    from gpu_engine.data.books import store as books
    from sweeps import _common

    path = Path(book_path)
    try:
        if _common.is_store_set(path):
            from gpu_engine.data.books import collection

            stores = collection.check(collection.resolve(str(path)))[0]
            return books.open_attrs(stores[0]) if stores else None
        if not path.exists() or path.suffix == ".npy":
            return None
        return books.open_attrs(path)
    except InputError:
        raise
    except Exception:
        return None  # load_data says what is wrong with it


def fee_schedule(attrs: dict | None) -> tuple[float, float, str]:
    """(taker bps, maker bps, description) of the venue the store comes from."""
    attrs = attrs or {}
    exchange = str(attrs.get("exchange") or "").lower() or None
    market = str(attrs.get("market") or "").lower() or None
    if exchange == "binance" and market is None and attrs.get("contract") == "inverse":
        market = "coinm"
    for key in ((exchange, market), (None, market)):
        if key in FEE_SCHEDULES:
            return FEE_SCHEDULES[key]
    return DEFAULT_SCHEDULE


def _positive(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def resolve(args, attrs: dict | None) -> dict:
    """The costs' `contract` entry: contract, multiplier, tick_size (None: none known), lot_size,
    queue, queue_n and `source` (per setting: flag, store or default). InputError for an inverse
    contract without a multiplier."""
    attrs = attrs or {}
    out, source = {}, {}
    store_contract = attrs.get("contract") if attrs.get("contract") in CONTRACTS else None
    out["contract"], source["contract"] = ((args.contract, "flag") if args.contract else
                                           (store_contract, "store") if store_contract else ("linear", "default"))
    if args.multiplier is not None:
        out["multiplier"], source["multiplier"] = float(args.multiplier), "flag"
    elif _positive(attrs.get("multiplier")) and (args.contract is None or args.contract == store_contract):
        out["multiplier"], source["multiplier"] = _positive(attrs["multiplier"]), "store"
    elif out["contract"] == "inverse":
        where = "--contract inverse" if args.contract else "the store's contract is inverse and"
        raise InputError(f"--multiplier: {where} needs the multiplier (quote units per contract, e.g. 100 "
                         "for Binance BTCUSD_PERP): pass --multiplier M")
    else:
        out["multiplier"], source["multiplier"] = 1.0, "default"
    if args.tick_size is not None:
        out["tick_size"], source["tick_size"] = float(args.tick_size), "flag"
    elif _positive(attrs.get("tick_size")):
        out["tick_size"], source["tick_size"] = _positive(attrs["tick_size"]), "store"
    else:
        out["tick_size"], source["tick_size"] = None, "unknown"
    if args.lot_size is not None:
        out["lot_size"], source["lot_size"] = float(args.lot_size), "flag"
    elif _positive(attrs.get("lot_size")):
        out["lot_size"], source["lot_size"] = _positive(attrs["lot_size"]), "store"
    else:
        out["lot_size"], source["lot_size"] = 0.0, "default"
    out["queue"] = args.queue
    out["queue_n"] = float(args.queue_n if args.queue_n is not None else DEFAULT_QUEUE_N)
    out["source"] = source
    return out


def costs(args, attrs: dict | None) -> dict:
    """The fee, maker fee, cancel latency and contract entries of the run's costs."""
    taker, maker, label = fee_schedule(attrs)
    fee = float(args.fee_bps) if args.fee_bps is not None else taker
    maker_fee = float(args.maker_fee_bps) if args.maker_fee_bps is not None else maker
    given = [f for f, v in (("--fee-bps", args.fee_bps), ("--maker-fee-bps", args.maker_fee_bps)) if v is not None]
    source = label if not given else (f"{' and '.join(given)} as given" + ("" if len(given) == 2 else
                                                                          f"; the other from {label}"))
    cancel_ms = args.cancel_latency_ms if args.cancel_latency_ms is not None else args.latency_ms
    return {"fee_bps": fee, "maker_fee_bps": maker_fee, "fee_source": source,
            "cancel_latency_ns": int(round(cancel_ms * 1e6)), "contract": resolve(args, attrs)}


def sweep_kwargs(cost: dict) -> dict:
    """Keyword arguments of `gpu_engine.sweep` for the run's contract and queue model."""
    c = cost.get("contract")
    if not c:
        return {}
    return {"contract": c["contract"], "multiplier": c["multiplier"], "tick_size": c["tick_size"],
            "lot_size": c["lot_size"], "queue": c["queue"], "queue_n": c["queue_n"]}


def oracle_kwargs(cost: dict) -> dict:
    """Keyword arguments of `gpu_engine.oracle.run` for the run's contract and queue model."""
    c = cost.get("contract")
    if not c:
        return {}
    return {"contract": {k: c[k] for k in CONTRACT_KEYS}, "queue": c["queue"], "queue_n": c["queue_n"]}


def maker_params(space) -> list[str]:
    """The space's parameters that can make a configuration post maker orders (entry_type or
    tp_type taking "maker")."""
    out = []
    for name in ("entry_type", "tp_type"):
        p = space.params.get(name)
        if p is not None and "maker" in [str(v) for v in p.values]:
            out.append(name)
    return out


def check_space(space, cost: dict, where) -> None:
    """Refuse a space with maker orders when no tick size is known (before any launch)."""
    c = cost.get("contract") or {}
    used = maker_params(space)
    if used and c.get("tick_size") is None:
        raise InputError(f"{space.path}: field 'tick_size': params.{used[0]} = 'maker' needs the tick size of "
                         f"the contract (maker prices are whole ticks), and {where} has none; pass --tick-size X")


def check_settings(cost: dict) -> None:
    """The resolved settings as `gpu_engine.sweep` checks them (ValueError -> InputError)."""
    from gpu_engine.sweep import market_array

    c = cost.get("contract")
    if not c:
        return
    try:
        market_array(c["contract"], c["multiplier"], c["tick_size"], c["lot_size"], c["queue"], c["queue_n"])
    except ValueError as exc:
        raise InputError(f"market settings: {exc}") from None


def describe(cost: dict) -> list[str]:
    """Report lines: the contract and queue model, and the maker costs with the fee source."""
    c = cost.get("contract")
    if not c:
        return []
    src = c.get("source") or {}

    def tag(key):
        return f" ({src[key]})" if key in src else ""

    tick = ("none (maker orders need --tick-size)" if c.get("tick_size") is None
            else f"{c['tick_size']:g}{tag('tick_size')}")
    lot = "continuous" if not c.get("lot_size") else f"{c['lot_size']:g}"
    unit = "quote units" if c.get("contract") == "inverse" else "base units"
    queue = c.get("queue") + (f" (n = {c['queue_n']:g})" if c.get("queue") == "power" else "")
    lines = [f"contract: {c.get('contract')}{tag('contract')}, multiplier {c.get('multiplier'):g} {unit} per "
             f"contract{tag('multiplier')}, tick {tick}, lot {lot}{tag('lot_size')}; "
             f"queue model {queue}"]
    if "maker_fee_bps" in cost:
        settle = "base currency (inverse)" if c.get("contract") == "inverse" else "quote currency"
        lines.append(f"fees: taker {cost.get('fee_bps'):g} bps, maker {cost['maker_fee_bps']:g} bps "
                     f"({cost.get('fee_source')}); cancel latency {cost.get('cancel_latency_ns', 0) / 1e6:g} ms; "
                     f"PnL, fees and capital in the {settle}")
    return lines

