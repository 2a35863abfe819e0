"""The test oracle: a slow, plain-Python event loop of the trading rules (v1 and v2), one
configuration at a time.

Written from the text of docs/RULES.md only (it imports neither `gpu_engine.strategy` nor
`gpu_engine.kernels`, so that a mistake shared with the kernels cannot hide). Plain Python floats
and loops; clarity over speed. The methods of `_Backtest` follow the rules' sections in order.

    result = run(book, signal, regime, config, buckets)                        # v1, as before
    result = run(book, signal, regime, config, buckets, trades=..., contract=..., queue=..., queue_n=...)

`book` has `ts` (int64 ns), `bid_px`/`ask_px` ([T, L] float), `bid_sz`/`ask_sz` ([T, L] float) and
optionally `trades`; `signal` and `regime` are 1-D float32 arrays of length T (promoted to float64).

`config` holds the fields of one configuration:
* the v1 fields of `enums.CONFIG_FIELDS` (missing ones take the defaults there; the `signal`/`regime`
  rows are not needed because the arrays are passed in, but `entry` has no default);
* the v2 fields, each with a default that keeps v1's behaviour: `entry_type` ("taker" | "maker",
  or the codes 0 | 1; default taker), `entry_offset` (ticks, integer >= 0; 0), `entry_tif` (ns, > 0,
  inf = until filled; inf), `tp_type` ("taker" | "maker" or 0 | 1; taker), `maker_fee_bps` (bps,
  negative = rebate; 0), `cancel_latency` (ns, >= 0; 0).

Run-wide arguments (keyword only; each may instead be given as a key of `config`, e.g. a golden
case's `run` object merged into it, but not both ways with different values):
* `trades`: the book's trades, an object with `ts`, `px`, `qty`, `side` arrays (the store's
  `Trades`) or a sequence of mappings with those keys, in stored order; default `book.trades`
  (none when the book has none). Trade k goes to the first tick with ts >= its ts.
* `contract`: a `Contract`, or a mapping with `contract` ("linear" | "inverse", or 0 | 1),
  `multiplier`, `tick_size`, `lot_size` (e.g. a golden case's `run`, or a store's attrs);
  default linear, multiplier 1, no tick size, lot size 0 (continuous quantities).
* `queue`: "risk_averse" (default) | "power" | "log" (or the codes 0 | 1 | 2); `queue_n`: the
  exponent n of "power" (> 0, default 2).

Bad input (an unknown order type or queue model, a negative or fractional `entry_offset`,
`entry_tif` <= 0, a negative `lot_size`, an inverse contract without `multiplier`, a maker order
without `tick_size`, ...) raises ValueError naming the field.

The result (`OracleResult`) has `.metrics` (every name of `enums.METRICS`, in that order, then
`V2_METRICS`: maker_fills, taker_fills, orders_posted, orders_rejected, cancels, maker_fill_ratio,
mean_queue_wait_s, fees_maker, fees_taker), the bucket arrays, `.trades` (one dict per closed
trade, with its `fills`), `.fills` (every fill in order: tick, price, qty, liquidity, role),
`.orders` (every maker order with its arrival, queue history, cancel and fills), `.marks` and
`.decisions` (entries, including those later dropped or rejected, and exits; for the look-ahead
test).

Per tick t the work is, in order (docs/RULES.md "v2: order of work inside one tick"):
  1. a cancel taking effect at t;
  2. taker fills (a pending taker entry or exit whose fill tick is t; at T-1 also a pending exit
     that has no fill tick, or whose side showed nothing since);
  3. the live maker order (trades of tick t, crossing, depth update, then its time in force);
  4. arrivals of maker orders (post-only check, queue position);
  5. decisions;
  6. mark.
After the last tick: a pending taker entry, or a maker entry that filled nothing, is dropped; an
exit decided at T-1 fills at T-1 keeping its reason; a trade still open (or a maker entry that
filled part) is closed at T-1 (reason "end"); the marks are not recomputed.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy.stats import norm

from gpu_engine.enums import CONFIG_FIELDS, EXIT_REASONS, METRICS

BPS = 1e-4
Z95 = float(norm.ppf(0.975))
INF = math.inf

# The v1 fields of a configuration (defaults from enums.CONFIG_FIELDS).
V1_FIELDS = ("signal", "entry", "exit", "side", "regime", "band", "take_profit", "stop_loss",
             "max_hold", "size_frac", "max_qty", "cooldown", "fee_bps", "latency", "capital")
# The v2 fields of a configuration and their defaults (each default keeps v1's behaviour).
V2_DEFAULTS: dict[str, Any] = {
    "entry_type": "taker",
    "entry_offset": 0,
    "entry_tif": INF,
    "tp_type": "taker",
    "maker_fee_bps": 0.0,
    "cancel_latency": 0,
}
# Names, in the order of their integer codes.
ORDER_TYPES = ("taker", "maker")
CONTRACT_KINDS = ("linear", "inverse")
QUEUE_MODELS = ("risk_averse", "power", "log")
RUN_WIDE = ("contract", "multiplier", "tick_size", "lot_size", "queue", "queue_n")

# Metrics the oracle adds after enums.METRICS (docs/RULES.md "v2 metrics").
V2_METRICS: tuple[str, ...] = (
    "maker_fills",         # maker fill events (each trade or crossing fill counts once)
    "taker_fills",         # taker fill events (a walk is one fill)
    "orders_posted",       # maker orders sent (entries and take profits), rejected ones included
    "orders_rejected",     # maker orders rejected post-only at arrival
    "cancels",             # cancels sent (time in force; take profits cancelled by an exit)
    "maker_fill_ratio",    # maker filled quantity / posted quantity (NaN when nothing posted)
    "mean_queue_wait_s",   # mean over maker fills of ts[fill tick] - ts[arrival tick], in s
    "fees_maker",          # fees of maker fills (negative = rebates), settlement currency
    "fees_taker",          # fees of taker fills
)
DEFAULT_QUEUE_N = 2.0      # the power model's exponent when none is given


@dataclass
class OracleResult:
    metrics: dict[str, float]
    bucket_pnl: np.ndarray      # float64 [B]
    bucket_trades: np.ndarray   # int64 [B]
    bucket_wins: np.ndarray     # int64 [B]
    trades: list[dict[str, Any]] = field(default_factory=list)
    marks: list[float] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Contracts (docs/RULES.md "v2: contracts")
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Contract:
    """What one contract is. `multiplier` None = not given (1 for linear; refused for inverse)."""
    kind: str = "linear"
    multiplier: float | None = None
    tick_size: float | None = None
    lot_size: float = 0.0

    @property
    def sigma(self) -> int:
        """+1 linear, -1 inverse."""
        return 1 if self.kind == "linear" else -1

    @property
    def m(self) -> float:
        return 1.0 if self.multiplier is None else self.multiplier

    def value(self, q: float, p: float) -> float:
        """value(q, p) = q*m*p (linear, quote currency) or q*m/p (inverse, base currency)."""
        if self.kind == "linear":
            return q * self.m * p
        return q * self.m / p


def _num(name: str, value) -> float:
    """A number from a config value ("inf" in JSON files); ValueError naming the field."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def _choice(name: str, value, names: tuple[str, ...]) -> str:
    """One of `names`, given by name or by its integer code (index in `names`)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in names:
            return v
        raise ValueError(f"{name}: unknown value {value!r} (expected one of {', '.join(names)})")
    x = _num(name, value)
    if x.is_integer() and 0 <= x < len(names):
        return names[int(x)]
    raise ValueError(f"{name}: unknown value {value!r} (expected one of {', '.join(names)} "
                     f"or their codes 0..{len(names) - 1})")


def make_contract(contract=None) -> Contract:
    """Resolve and validate a contract: None, a `Contract`, or a mapping (keys `contract` or
    `kind`, `multiplier`, `tick_size`, `lot_size`; None values count as not given)."""
    if contract is None:
        contract = {}
    if isinstance(contract, Contract):
        contract = {"contract": contract.kind, "multiplier": contract.multiplier,
                    "tick_size": contract.tick_size, "lot_size": contract.lot_size}
    if not isinstance(contract, Mapping):
        raise ValueError(f"contract: expected a Contract or a mapping, got {contract!r}")
    kind_raw = contract.get("contract", contract.get("kind"))
    kind = "linear" if kind_raw is None else _choice("contract", kind_raw, CONTRACT_KINDS)
    mult_raw = contract.get("multiplier")
    if mult_raw is None:
        if kind == "inverse":
            raise ValueError("multiplier: an inverse contract needs its multiplier (quote units per "
                             "contract, e.g. 100 for Binance BTCUSD_PERP)")
        mult = None
    else:
        mult = _num("multiplier", mult_raw)
        if not (math.isfinite(mult) and mult > 0.0):
            raise ValueError(f"multiplier: must be finite and > 0, got {mult_raw!r}")
    tick_raw = contract.get("tick_size")
    tick = None
    if tick_raw is not None:
        tick = _num("tick_size", tick_raw)
        if not (math.isfinite(tick) and tick > 0.0):
            raise ValueError(f"tick_size: must be finite and > 0, got {tick_raw!r}")
    lot_raw = contract.get("lot_size")
    lot = 0.0 if lot_raw is None else _num("lot_size", lot_raw)
    if not (math.isfinite(lot) and lot >= 0.0):
        raise ValueError(f"lot_size: must be finite and >= 0 (0 = continuous), got {lot_raw!r}")
    return Contract(kind=kind, multiplier=mult, tick_size=tick, lot_size=lot)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

def _full_config(config: Mapping) -> dict:
    """v1 fields (enums defaults) and v2 fields (V2_DEFAULTS), parsed and validated."""
    out: dict[str, Any] = {}
    for name in V1_FIELDS:
        default = CONFIG_FIELDS[name][1] if name in CONFIG_FIELDS else None
        if name in config:
            value = config[name]
        elif name in ("signal", "regime"):
            value = default  # rows are irrelevant here: the arrays are passed in
        elif default is None:
            raise ValueError(f"oracle config: required field {name!r} is missing")
        else:
            value = default
        if isinstance(value, str):  # "inf" in JSON files
            value = _num(name, value)
        out[name] = value
    for name, default in V2_DEFAULTS.items():
        value = config.get(name, default)
        if name in ("entry_type", "tp_type"):
            out[name] = _choice(name, value, ORDER_TYPES)
            continue
        x = _num(name, value)
        if name == "entry_offset" and not (math.isfinite(x) and x >= 0.0 and x.is_integer()):
            raise ValueError(f"entry_offset: must be an integer number of ticks >= 0, got {value!r}")
        if name == "entry_tif" and not x > 0.0:  # NaN fails too; inf = until filled
            raise ValueError(f"entry_tif: must be > 0 ns (inf = until filled), got {value!r}")
        if name == "maker_fee_bps" and not math.isfinite(x):
            raise ValueError(f"maker_fee_bps: must be finite (negative = rebate), got {value!r}")
        if name == "cancel_latency" and not (math.isfinite(x) and x >= 0.0 and x.is_integer()):
            raise ValueError(f"cancel_latency: must be a whole number of ns >= 0, got {value!r}")
        out[name] = int(x) if name in ("entry_offset", "cancel_latency") else x
    return out


def _run_wide(config: Mapping, contract, queue, queue_n) -> tuple[Contract, str, float]:
    """The contract and the queue model: from the arguments, or from keys of `config`."""
    given = {"queue": queue, "queue_n": queue_n}
    if contract is not None:
        c = make_contract(contract)
        given.update(contract=c.kind, multiplier=c.multiplier, tick_size=c.tick_size,
                     lot_size=c.lot_size)
    for name in RUN_WIDE:
        if name in config and config[name] is not None:
            mine = given.get(name)
            if mine is None:
                given[name] = config[name]
            elif not _same_setting(name, mine, config[name]):
                raise ValueError(f"{name}: given both as an argument ({mine!r}) and in the "
                                 f"configuration ({config[name]!r})")
    ct = make_contract({k: given.get(k) for k in ("contract", "multiplier", "tick_size", "lot_size")})
    model = "risk_averse" if given.get("queue") is None else _choice("queue", given["queue"], QUEUE_MODELS)
    n = DEFAULT_QUEUE_N if given.get("queue_n") is None else _num("queue_n", given["queue_n"])
    if not (math.isfinite(n) and n > 0.0):
        raise ValueError(f"queue_n: the power model's exponent must be finite and > 0, got "
                         f"{given['queue_n']!r}")
    return ct, model, n


def _same_setting(name: str, a, b) -> bool:
    if name == "contract":
        return _choice(name, a, CONTRACT_KINDS) == _choice(name, b, CONTRACT_KINDS)
    if name == "queue":
        return _choice(name, a, QUEUE_MODELS) == _choice(name, b, QUEUE_MODELS)
    return _num(name, a) == _num(name, b)


def _trade_list(trades) -> list[tuple[int, float, float, int]]:
    """(ts, px, qty, side) per trade, in stored order."""
    if trades is None:
        return []
    if hasattr(trades, "ts") and hasattr(trades, "px"):
        cols = [np.asarray(getattr(trades, k)) for k in ("ts", "px", "qty", "side")]
        return [(int(a), float(b), float(c), int(d)) for a, b, c, d in zip(*cols)]
    return [(int(tr["ts"]), float(tr["px"]), float(tr["qty"]), int(tr["side"])) for tr in trades]


# ---------------------------------------------------------------------------------------------
# Book helpers (docs/RULES.md "Definitions")
# ---------------------------------------------------------------------------------------------

def _is_displayed(px: float, sz: float) -> bool:
    """A level is displayed when its price is finite and > 0 and its size is finite and > 0."""
    return math.isfinite(px) and px > 0.0 and math.isfinite(sz) and sz > 0.0


def _displayed_levels(prices, sizes) -> list[tuple[float, float]]:
    """The displayed (price, size) levels of one side of one tick, in level order (0 first)."""
    out = []
    for px, sz in zip(prices, sizes):
        px, sz = float(px), float(sz)
        if _is_displayed(px, sz):
            out.append((px, sz))
    return out


def _walk_entry(levels: list[tuple[float, float]], desired: float, inverse: bool) -> tuple[float, float]:
    """Entry walk: take min(desired, total displayed) from level 0 outwards; returns (qty, average
    price): volume-weighted (linear) or harmonic, qty / sum(q / p) (inverse). qty 0 when nothing
    is displayed (average NaN)."""
    remaining = desired
    qty = 0.0
    acc = 0.0  # sum of q*p (linear) or of q/p (inverse)
    for px, sz in levels:
        if remaining <= 0.0:
            break
        take = min(remaining, sz)
        qty += take
        acc += take / px if inverse else take * px
        remaining -= take
    if qty <= 0.0:
        return 0.0, math.nan
    return qty, (qty / acc if inverse else acc / qty)


def _walk_exit(levels: list[tuple[float, float]], qty: float, closing_side: int, inverse: bool) -> float:
    """Exit walk for the whole `qty`; beyond the displayed depth, the worst displayed price.

    `closing_side` is +1 for a sell into bids (worst = lowest displayed bid) and -1 for a buy
    from asks (worst = highest displayed ask). `levels` must not be empty. Returns the average
    price (volume-weighted, or harmonic for an inverse contract).
    """
    remaining = qty
    acc = 0.0
    for px, sz in levels:
        if remaining <= 0.0:
            break
        take = min(remaining, sz)
        acc += take / px if inverse else take * px
        remaining -= take
    if remaining > 0.0:
        prices = [px for px, _ in levels]
        worst = min(prices) if closing_side == 1 else max(prices)
        acc += remaining / worst if inverse else remaining * worst
    return qty / acc if inverse else acc / qty


# ---------------------------------------------------------------------------------------------
# Queue models (docs/RULES.md "v2: queue position"); UNKNOWN = +inf
# ---------------------------------------------------------------------------------------------

UNKNOWN = INF


def queue_f(model: str, n: float, x: float) -> float:
    """The weight f of the probabilistic models: x**n (power) or ln(1 + x) (log)."""
    return x ** n if model == "power" else math.log1p(x)


def queue_depth_update(model: str, n: float, queue_ahead: float, prev: float, new: float,
                       cum_trade: float) -> tuple[float, float]:
    """Step (3) of a live tick: the depth at the order's price went from `prev` (the last known
    size) to `new`. Returns (queue_ahead, cum_trade). UNKNOWN (inf) sizes as in RULES.md."""
    if new == UNKNOWN:  # an unknown new size skips the update
        return queue_ahead, cum_trade
    if model == "risk_averse":
        return min(queue_ahead, new), cum_trade
    if prev == UNKNOWN:  # an unknown previous size: min(queue_ahead, new); cum_trade is kept
        return min(queue_ahead, new), cum_trade
    chg = prev - new - cum_trade
    cum_trade = 0.0
    if chg < 0.0:
        return min(queue_ahead, new), cum_trade
    front = queue_ahead
    back = prev - front
    fb, ff = queue_f(model, n, back), queue_f(model, n, front)
    den = fb + ff
    prob = fb / den if den != 0.0 else 1.0
    est = min(front - (1.0 - prob) * chg + min(back - prob * chg, 0.0), new)
    return max(est, 0.0), cum_trade  # nothing can be ahead of less than nobody: never below 0


# ---------------------------------------------------------------------------------------------
# The event loop
# ---------------------------------------------------------------------------------------------

@dataclass
class _Order:
    """One maker order: an entry or a take profit."""
    kind: str            # "entry" | "take_profit"
    direction: int       # +1 buy, -1 sell
    K: int               # price in ticks (price = K * tick_size)
    price: float
    qty: float           # quantity in units (see _Backtest.units)
    decision_tick: int
    remaining: float = 0.0
    arrival_tick: int = -1
    queue_ahead: float = UNKNOWN
    queue_at_arrival: float = UNKNOWN
    prev: float = UNKNOWN
    cum_trade: float = 0.0
    cancel_sent_tick: int = -1
    cancel_tick: int = -1
    rejected: bool = False
    filled: float = 0.0
    fills: list = field(default_factory=list)
    queue_history: list = field(default_factory=list)  # (tick, queue_ahead) after each live tick

    def record(self, contracts) -> dict[str, Any]:
        return dict(kind=self.kind, direction=self.direction, price_ticks=self.K, price=self.price,
                    qty=contracts(self.qty), filled=contracts(self.filled),
                    decision_tick=self.decision_tick, arrival_tick=self.arrival_tick,
                    rejected=self.rejected, queue_at_arrival=self.queue_at_arrival,
                    cancel_sent_tick=self.cancel_sent_tick,
                    cancel_tick=self.cancel_tick, fills=list(self.fills),
                    queue_history=list(self.queue_history))


@dataclass
class _Trade:
    """A live trade: q_open, cash and fees (docs/RULES.md "v2: trade accounting")."""
    side: int
    entry_decision_tick: int
    q_open: float = 0.0      # units
    opened: float = 0.0      # units filled on the opening side
    cash: float = 0.0
    fees: float = 0.0
    entry_fees: float = 0.0
    exit_fees: float = 0.0
    e_num: float = 0.0       # entry price e = e_num / e_den
    e_den: float = 0.0
    x_num: float = 0.0       # average closing price, same form
    x_den: float = 0.0
    first_fill_tick: int = -1
    complete_tick: int = -1
    exit_decision_tick: int = -1
    fills: list = field(default_factory=list)

    @property
    def e(self) -> float:
        return self.e_num / self.e_den


@dataclass
class _Taker:
    """A pending taker order (entry or exit)."""
    kind: str                # "entry" | "exit"
    decision_tick: int
    desired: float = 0.0     # units (entries)
    reason: str = ""         # exits
    fill_tick: int = -1      # known once reached


class _Backtest:
    def __init__(self, book, signal, regime, cfg: dict, ct: Contract, model: str, qn: float,
                 trades, buckets: int):
        self.cfg = cfg
        self.ct = ct
        self.model = model
        self.qn = qn
        self.entry_th = float(cfg["entry"])
        self.exit_th = float(cfg["exit"])
        self.side_cfg = int(cfg["side"])
        self.band = float(cfg["band"])
        self.take_profit = float(cfg["take_profit"])
        self.stop_loss = float(cfg["stop_loss"])
        self.max_hold = float(cfg["max_hold"])
        self.size_frac = float(cfg["size_frac"])
        self.max_qty = float(cfg["max_qty"])
        self.cooldown = int(cfg["cooldown"])
        self.taker_rate = float(cfg["fee_bps"]) * BPS
        self.maker_rate = float(cfg["maker_fee_bps"]) * BPS
        self.latency = int(cfg["latency"])
        self.cancel_latency = int(cfg["cancel_latency"])
        self.capital = float(cfg["capital"])
        self.entry_maker = cfg["entry_type"] == "maker"
        self.tp_maker = cfg["tp_type"] == "maker"
        self.offset = int(cfg["entry_offset"])
        self.tif = float(cfg["entry_tif"])
        self.inverse = ct.kind == "inverse"
        self.lot = ct.lot_size

        self.ts = [int(x) for x in np.asarray(book.ts)]
        self.T = T = len(self.ts)
        self.B = int(buckets)
        if self.B < 1:
            raise ValueError("buckets must be >= 1")
        self.bid_px = np.asarray(book.bid_px, dtype=np.float64)
        self.ask_px = np.asarray(book.ask_px, dtype=np.float64)
        self.bid_sz = np.asarray(book.bid_sz, dtype=np.float64)
        self.ask_sz = np.asarray(book.ask_sz, dtype=np.float64)
        # float32 bank values promoted to float64 (docs/RULES.md)
        self.s = [float(x) for x in np.asarray(signal, dtype=np.float32).astype(np.float64)]
        self.reg = [float(x) for x in np.asarray(regime, dtype=np.float32).astype(np.float64)]
        if len(self.s) != T or len(self.reg) != T:
            raise ValueError(f"signal/regime length {len(self.s)}/{len(self.reg)} != book length {T}")
        # trade k goes to the first tick with ts >= its ts (none after the last tick)
        self.trades_at: list[list[tuple[float, float, int]]] = [[] for _ in range(T)]
        for tts, px, qty, side in trades:
            j = bisect.bisect_left(self.ts, tts)
            if j < T:
                self.trades_at[j].append((px, qty, side))

        # state: flat | entry (taker pending or maker working) | open | exiting (taker exit pending)
        self.state = "flat"
        self.equity = self.capital
        self.next_entry_tick = 0
        self.taker: _Taker | None = None
        self.maker: _Order | None = None
        self.trade: _Trade | None = None
        self.entry_decision: dict | None = None
        # last finite > 0 level-0 price seen on each side, at ticks before the current one
        self.last_bid = math.nan
        self.last_ask = math.nan

        self.closed: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []
        self.marks: list[float] = []
        self.fills: list[dict[str, Any]] = []
        self.orders: list[_Order] = []
        self.counts = dict(maker_fills=0, taker_fills=0, orders_posted=0, orders_rejected=0, cancels=0)
        self.posted_units = 0.0
        self.maker_filled_units = 0.0
        self.queue_waits: list[int] = []

    # ---- quantities: whole lots (integers) when lot_size > 0, else contracts -------------------

    def floor_units(self, x: float) -> float:
        """x contracts rounded down to the lot, in units (an integer count of lots if lot > 0)."""
        if self.lot > 0.0:
            return math.floor(x / self.lot)
        return x

    def contracts(self, units: float) -> float:
        return units * self.lot if self.lot > 0.0 else units

    # ---- book helpers --------------------------------------------------------------------------

    def bids(self, t):
        return _displayed_levels(self.bid_px[t], self.bid_sz[t])

    def asks(self, t):
        return _displayed_levels(self.ask_px[t], self.ask_sz[t])

    def top(self, t: int, side: int, e: float) -> float:
        """The executable top price p of a position of `side` at tick t: level-0 price of the
        closing side when finite and > 0, else the last such price at an earlier tick, else e."""
        px = float(self.bid_px[t, 0]) if side == 1 else float(self.ask_px[t, 0])
        if math.isfinite(px) and px > 0.0:
            return px
        last = self.last_bid if side == 1 else self.last_ask
        return last if not math.isnan(last) else e

    def tick_of(self, x: float) -> int:
        """tick(x) = round(x / tick_size) (round half to even)."""
        return int(round(x / self.ct.tick_size))

    def own_levels(self, o: _Order, t: int):
        return self.bids(t) if o.direction == 1 else self.asks(t)

    def best_opposite_tick(self, o: _Order, t: int) -> int | None:
        """Best displayed price, in ticks, on the side a resting order would trade against."""
        if o.direction == 1:
            levels = self.asks(t)
            return min(self.tick_of(px) for px, _ in levels) if levels else None
        levels = self.bids(t)
        return max(self.tick_of(px) for px, _ in levels) if levels else None

    def crosses(self, o: _Order, t: int) -> bool:
        """Best ask <= B for a buy at B; best bid >= A for a sell at A (displayed levels)."""
        best = self.best_opposite_tick(o, t)
        if best is None:
            return False
        return best <= o.K if o.direction == 1 else best >= o.K

    def size_at(self, o: _Order, t: int) -> float:
        """Displayed size at exactly the order's tick on its own side: 0 when the tick is better
        than the side's best or lies inside the displayed range with no level there; UNKNOWN
        when it lies beyond the deepest displayed level or the side displays nothing."""
        levels = [(self.tick_of(px), sz) for px, sz in self.own_levels(o, t)]
        if not levels:
            return UNKNOWN
        ticks = [k for k, _ in levels]
        if o.direction == 1:
            if o.K < min(ticks):
                return UNKNOWN
        elif o.K > max(ticks):
            return UNKNOWN
        return sum((sz for k, sz in levels if k == o.K), 0.0)  # 0 when better than the best or a gap

    # ---- fills and trade accounting -------------------------------------------------------------

    def fill(self, t: int, role: str, liquidity: str, units: float, price: float, reason: str = "",
             order: _Order | None = None) -> None:
        tr = self.trade
        q = self.contracts(units)
        v = self.ct.value(q, price)
        ss = tr.side * self.ct.sigma
        if role == "opening":
            tr.q_open += units
            tr.opened += units
            tr.cash -= ss * v
            if tr.first_fill_tick < 0:
                tr.first_fill_tick = t
            if self.inverse:  # e = sum q*m / sum q*m/p
                tr.e_num += q * self.ct.m
                tr.e_den += v
            else:             # e = sum q*m*p / sum q*m
                tr.e_num += v
                tr.e_den += q * self.ct.m
        else:
            tr.q_open -= units
            tr.cash += ss * v
            if self.inverse:
                tr.x_num += q * self.ct.m
                tr.x_den += v
            else:
                tr.x_num += v
                tr.x_den += q * self.ct.m
        rate = self.maker_rate if liquidity == "maker" else self.taker_rate
        fee = rate * v
        tr.fees += fee
        if role == "opening":
            tr.entry_fees += fee
        else:
            tr.exit_fees += fee
        rec = dict(tick=t, price=price, qty=q, liquidity=liquidity, role=role, fee=fee)
        if reason:
            rec["reason"] = reason
        tr.fills.append(rec)
        self.fills.append(rec)
        if liquidity == "maker":
            self.counts["maker_fills"] += 1
            self.maker_filled_units += units
            order.filled += units
            order.remaining -= units
            order.fills.append(rec)
            self.queue_waits.append(self.ts[t] - self.ts[order.arrival_tick])
        else:
            self.counts["taker_fills"] += 1

    def close_trade(self, t: int, reason: str) -> None:
        """q_open is back to 0 at tick t: PnL = cash - fees; equity += PnL."""
        tr = self.trade
        pnl = tr.cash - tr.fees
        self.equity += pnl
        self.closed.append(dict(
            side=tr.side, qty=self.contracts(tr.opened),
            entry_decision_tick=tr.entry_decision_tick, entry_tick=tr.first_fill_tick,
            complete_tick=tr.complete_tick,
            exit_decision_tick=tr.exit_decision_tick if tr.exit_decision_tick >= 0 else t,
            exit_tick=t, entry_vwap=tr.e,
            exit_vwap=(tr.x_num / tr.x_den), entry_fee=tr.entry_fees, exit_fee=tr.exit_fees,
            gross_pnl=tr.cash, pnl=pnl, reason=reason, fills=list(tr.fills),
        ))
        self.state = "flat"
        self.next_entry_tick = t + 1 + self.cooldown
        self.trade = None
        self.taker = None   # an exit in flight fills nothing
        self.maker = None   # a resting take profit is removed

    def close_by_walk(self, t: int, reason: str) -> None:
        """Taker exit of all that is open, at tick t: the exit walk, or, when the closing side
        displays nothing, the executable top price p (only used at T-1)."""
        tr = self.trade
        levels = self.bids(t) if tr.side == 1 else self.asks(t)
        q = self.contracts(tr.q_open)
        if levels:
            price = _walk_exit(levels, q, tr.side, self.inverse)
        else:
            price = self.top(t, tr.side, tr.e)
        self.fill(t, "closing", "taker", tr.q_open, price, reason)
        self.close_trade(t, reason)

    # ---- orders ---------------------------------------------------------------------------------

    def post(self, kind: str, direction: int, K: int, units: float, t: int) -> _Order:
        o = _Order(kind=kind, direction=direction, K=K, price=K * self.ct.tick_size, qty=units,
                   decision_tick=t, remaining=units)
        self.maker = o
        self.orders.append(o)
        self.counts["orders_posted"] += 1
        self.posted_units += units
        return o

    def send_cancel(self, o: _Order, t: int) -> None:
        o.cancel_sent_tick = t
        self.counts["cancels"] += 1

    def complete_entry(self, f: int) -> None:
        """The entry is complete at tick f (a taker fill, a maker order filled in full, or its
        cancel taking effect)."""
        tr = self.trade
        self.taker = None
        self.maker = None
        if tr.q_open > 0:
            self.state = "open"
            tr.complete_tick = f
            self.post_take_profit(f)
        else:  # nothing filled: flat, the next entry from f + 1 (no cooldown)
            self.state = "flat"
            self.trade = None
            self.next_entry_tick = f + 1
            self.entry_decision["dropped"] = True

    def post_take_profit(self, f: int) -> None:
        if not self.tp_maker or math.isinf(self.take_profit):
            return
        tr = self.trade
        e = tr.e
        if tr.side == 1:
            K = math.ceil(e * (1 + self.take_profit * BPS) / self.ct.tick_size)
        else:
            K = math.floor(e * (1 - self.take_profit * BPS) / self.ct.tick_size)
        if K <= 0:  # a buy at a price <= 0 could never fill: not posted
            return
        self.post("take_profit", -tr.side, K, tr.q_open, f)
        self.decisions.append(dict(tick=f, kind="take_profit", side=tr.side, price=K * self.ct.tick_size))

    def decide_exit(self, t: int, reason: str) -> None:
        self.state = "exiting"
        self.taker = _Taker(kind="exit", decision_tick=t, reason=reason)
        self.trade.exit_decision_tick = t
        self.decisions.append(dict(tick=t, kind="exit", side=self.trade.side, reason=reason))

    # ---- the six steps of a tick ------------------------------------------------------------------

    def step_cancel(self, t: int) -> None:
        """1. A cancel taking effect: at the first tick c > u with ts[c] >= ts[u] + cancel_latency."""
        o = self.maker
        if o is None or o.cancel_sent_tick < 0:
            return
        u = o.cancel_sent_tick
        if t > u and self.ts[t] >= self.ts[u] + self.cancel_latency:
            o.cancel_tick = t
            self.maker = None
            if o.kind == "entry":
                self.complete_entry(t)

    def step_taker(self, t: int) -> None:
        """2. A pending taker order fills at its fill tick (the first t' > decision with
        ts[t'] >= ts[decision] + latency)."""
        tk = self.taker
        if tk is None:
            return
        d = tk.decision_tick
        if tk.fill_tick < 0 and t > d and self.ts[t] >= self.ts[d] + self.latency:
            tk.fill_tick = t
        last = t == self.T - 1
        if tk.kind == "entry":
            if tk.fill_tick < 0:
                return
            side = self.entry_decision["side"]
            levels = self.asks(t) if side == 1 else self.bids(t)
            if self.lot > 0.0:
                total = sum(sz for _, sz in levels)
                units = min(tk.desired, self.floor_units(total))
                qty, price = 0.0, math.nan
                if units > 0:
                    qty, price = _walk_entry(levels, self.contracts(units), self.inverse)
            else:
                qty, price = _walk_entry(levels, tk.desired, self.inverse)
                units = qty
            if units > 0 and qty > 0.0:
                self.fill(t, "opening", "taker", units, price)
                self.complete_entry(t)
            else:  # nothing displayed, or less than one lot: dropped, next entry from t + 1
                self.taker = None
                self.trade = None
                self.state = "flat"
                self.next_entry_tick = t + 1
                self.entry_decision["dropped"] = True
            return
        # exit: fills at its fill tick, or at the first later tick that displays something on its
        # side; at T-1 it fills whatever (it was decided before T-1), before the mark of T-1
        if tk.fill_tick < 0 and not last:
            return
        tr = self.trade
        levels = self.bids(t) if tr.side == 1 else self.asks(t)
        if levels or last:
            self.close_by_walk(t, tk.reason)

    def step_maker(self, t: int) -> None:
        """3. The live maker order (live from the tick after its arrival)."""
        o = self.maker
        if o is None or o.arrival_tick < 0 or t <= o.arrival_tick:
            return
        # (1) trades of tick t from the aggressor side that hits the order, in stored order
        for px, qty, side in self.trades_at[t]:
            if o.remaining <= 0:
                break
            if side != -o.direction or not (math.isfinite(px) and px > 0.0):
                continue
            if not (math.isfinite(qty) and qty > 0.0):
                continue
            k = self.tick_of(px)
            through = k < o.K if o.direction == 1 else k > o.K
            if through:
                self.maker_fill(o, t, o.remaining)
            elif k == o.K:
                o.queue_ahead -= qty
                o.cum_trade += qty
                if o.queue_ahead < 0.0:
                    units = min(o.remaining, self.floor_units(-o.queue_ahead))
                    if units > 0:
                        self.maker_fill(o, t, units)
                    o.queue_ahead = 0.0
            if self.maker is not o:  # the fill completed the entry or closed the trade
                o.queue_history.append((t, o.queue_ahead))
                return
        # (2) the opposite best price crosses the order: all that remains fills
        if o.remaining > 0 and self.crosses(o, t):
            self.maker_fill(o, t, o.remaining)
            if self.maker is not o:
                o.queue_history.append((t, o.queue_ahead))
                return
        # (3) depth update at the order's price
        if o.remaining > 0:
            new = self.size_at(o, t)
            o.queue_ahead, o.cum_trade = queue_depth_update(self.model, self.qn, o.queue_ahead,
                                                            o.prev, new, o.cum_trade)
            if new != UNKNOWN:
                o.prev = new
        o.queue_history.append((t, o.queue_ahead))
        # time in force (entries): a cancel is sent at the first live tick with ts[t] - ts[a] >= tif
        if (o.kind == "entry" and o.remaining > 0 and o.cancel_sent_tick < 0
                and self.ts[t] - self.ts[o.arrival_tick] >= self.tif):
            self.send_cancel(o, t)

    def maker_fill(self, o: _Order, t: int, units: float) -> None:
        role = "opening" if o.kind == "entry" else "closing"
        self.fill(t, role, "maker", units, o.price, "take" if o.kind == "take_profit" else "", order=o)
        if o.kind == "entry":
            if o.remaining <= 0:
                self.complete_entry(t)
        elif self.trade.q_open <= 0:
            self.close_trade(t, "take")

    def step_arrival(self, t: int) -> None:
        """4. A maker order arrives at the first tick a > decision with ts[a] >= ts[decision] +
        latency: post-only check, then its queue position; live from a + 1."""
        o = self.maker
        if o is None or o.arrival_tick >= 0:
            return
        if not (t > o.decision_tick and self.ts[t] >= self.ts[o.decision_tick] + self.latency):
            return
        o.arrival_tick = t
        if self.crosses(o, t):  # post-only: rejected
            o.rejected = True
            self.counts["orders_rejected"] += 1
            self.maker = None
            if o.kind == "entry":  # flat, next entry from a + 1, no cooldown
                self.state = "flat"
                self.trade = None
                self.next_entry_tick = t + 1
                self.entry_decision["dropped"] = True
                self.entry_decision["rejected"] = True
            elif self.state == "open":  # a rejected take profit becomes a taker exit, reason take
                self.decide_exit(t, "take")
            # (a take profit rejected while an exit is pending is just removed)
            return
        o.queue_ahead = self.size_at(o, t)
        o.queue_at_arrival = o.prev = o.queue_ahead

    def step_decide(self, t: int) -> None:
        """5. Decisions: an exit decision (rule 4) or an entry decision (rule 2)."""
        if self.state == "open" and t > self.trade.complete_tick:
            tr = self.trade
            e = tr.e
            p = self.top(t, tr.side, e)
            tp_rests = self.maker is not None and self.maker.kind == "take_profit"
            move = tr.side * (p - e)
            reason = ""
            if move <= -self.stop_loss * BPS * e:
                reason = "stop"
            elif not tp_rests and move >= self.take_profit * BPS * e:
                reason = "take"
            elif self.ts[t] - self.ts[tr.complete_tick] >= self.max_hold:
                reason = "time"
            elif ((tr.side == 1 and self.s[t] <= -self.exit_th)
                  or (tr.side == -1 and self.s[t] >= self.exit_th)):
                reason = "signal"
            if reason:
                self.decide_exit(t, reason)
                if tp_rests:
                    self.send_cancel(self.maker, t)
        elif self.state == "flat" and t >= self.next_entry_tick and self.equity > 0.0:
            want = 0
            s, reg, band = self.s[t], self.reg[t], self.band
            if self.side_cfg != -1 and s >= self.entry_th and (math.isinf(band) or reg <= band):
                want = 1
            elif self.side_cfg != 1 and s <= -self.entry_th and (math.isinf(band) or reg >= -band):
                want = -1
            if want == 0:
                return
            px = float(self.ask_px[t, 0]) if want == 1 else float(self.bid_px[t, 0])
            if not (math.isfinite(px) and px > 0.0):
                return
            desired = self.floor_units(min(self.size_frac * self.equity / self.ct.value(1, px), self.max_qty))
            if not desired > 0:  # an order of quantity 0 is not sent
                return
            K = 0
            if self.entry_maker:  # a buy k ticks below the best bid, a sell k above the best ask
                touch = float(self.bid_px[t, 0]) if want == 1 else float(self.ask_px[t, 0])
                if not (math.isfinite(touch) and touch > 0.0):
                    return
                K = self.tick_of(touch) - self.offset if want == 1 else self.tick_of(touch) + self.offset
                if K <= 0:
                    return
            self.state = "entry"
            self.trade = _Trade(side=want, entry_decision_tick=t)
            self.entry_decision = dict(tick=t, kind="entry", side=want, desired=self.contracts(desired),
                                       dropped=False)
            self.decisions.append(self.entry_decision)
            if self.entry_maker:
                self.entry_decision["price"] = K * self.ct.tick_size
                self.post("entry", want, K, desired, t)
            else:
                self.taker = _Taker(kind="entry", decision_tick=t, desired=desired)

    def step_mark(self, t: int) -> None:
        """6. mark = equity + cash + side*sigma*value(q_open, p) - fees while a trade has fills."""
        tr = self.trade
        if tr is not None and tr.first_fill_tick >= 0:
            p = self.top(t, tr.side, tr.e)
            ss = tr.side * self.ct.sigma
            value = self.ct.value(self.contracts(tr.q_open), p)
            self.marks.append(self.equity + tr.cash + ss * value - tr.fees)
        else:
            self.marks.append(self.equity)

    # ---- the whole run ----------------------------------------------------------------------------

    def run(self) -> OracleResult:
        for t in range(self.T):
            self.step_cancel(t)
            self.step_taker(t)
            self.step_maker(t)
            self.step_arrival(t)
            self.step_decide(t)
            self.step_mark(t)
            b0, a0 = float(self.bid_px[t, 0]), float(self.ask_px[t, 0])
            if math.isfinite(b0) and b0 > 0.0:
                self.last_bid = b0
            if math.isfinite(a0) and a0 > 0.0:
                self.last_ask = a0

        # ---- after the last tick ------------------------------------------------------------------
        if self.T > 0:
            last = self.T - 1
            if self.state == "entry":
                tr = self.trade
                self.taker = None
                self.maker = None
                if tr.q_open > 0:  # a maker entry that filled part: closed at T-1, reason end
                    self.close_by_walk(last, "end")
                else:
                    self.state = "flat"
                    self.trade = None
                    self.entry_decision["dropped"] = True
            elif self.state == "exiting":  # an exit decided at T-1 itself
                self.maker = None
                self.close_by_walk(last, self.taker.reason)
            elif self.state == "open":
                self.maker = None
                self.trade.exit_decision_tick = last
                self.close_by_walk(last, "end")

        m, bpnl, btr, bwin = _metrics(self.closed, self.marks, self.ts, self.T, self.B,
                                      self.capital, self.equity)
        m.update(self.v2_metrics())
        # every name of enums.METRICS the oracle computes, in that order, then the v2 metrics
        metrics = {k: m[k] for k in METRICS if k in m}
        metrics.update({k: m[k] for k in V2_METRICS if k not in metrics})
        return OracleResult(metrics=metrics, bucket_pnl=bpnl, bucket_trades=btr, bucket_wins=bwin,
                            trades=self.closed, marks=self.marks, decisions=self.decisions,
                            fills=self.fills, orders=[o.record(self.contracts) for o in self.orders])

    def v2_metrics(self) -> dict[str, float]:
        m: dict[str, float] = dict(self.counts)
        posted = self.contracts(self.posted_units)
        m["maker_fill_ratio"] = self.contracts(self.maker_filled_units) / posted if posted > 0 else math.nan
        m["mean_queue_wait_s"] = (sum(self.queue_waits) / len(self.queue_waits) / 1e9
                                  if self.queue_waits else math.nan)
        fills = [f for tr in self.closed for f in tr["fills"]]
        m["fees_maker"] = sum((f["fee"] for f in fills if f["liquidity"] == "maker"), 0.0)
        m["fees_taker"] = sum((f["fee"] for f in fills if f["liquidity"] == "taker"), 0.0)
        return {k: m[k] for k in V2_METRICS}


def run(book, signal, regime, config: Mapping, buckets: int, *, trades=None, contract=None,
        queue=None, queue_n=None) -> OracleResult:
    """Run one configuration over the book; see the module docstring."""
    cfg = _full_config(config)
    ct, model, qn = _run_wide(config, contract, queue, queue_n)
    tp_maker = cfg["tp_type"] == "maker" and not math.isinf(float(cfg["take_profit"]))
    if (cfg["entry_type"] == "maker" or tp_maker) and ct.tick_size is None:
        which = "entry_type" if cfg["entry_type"] == "maker" else "tp_type"
        raise ValueError(f"tick_size: {which} maker needs the contract's tick_size (maker prices are "
                         "whole ticks)")
    if trades is None:
        trades = getattr(book, "trades", None)
    return _Backtest(book, signal, regime, cfg, ct, model, qn, _trade_list(trades), buckets).run()


# ---------------------------------------------------------------------------------------------
# Metrics (docs/RULES.md: the metric list under "The rules", and "Marks and metrics")
# ---------------------------------------------------------------------------------------------

def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for wins / n; (NaN, NaN) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    p = wins / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return centre - half, centre + half


def _metrics(trades, marks, ts, T, B, capital, equity):
    n = len(trades)
    pnls = [tr["pnl"] for tr in trades]
    win_pnls = [x for x in pnls if x > 0.0]
    loss_pnls = [x for x in pnls if x < 0.0]
    wins = len(win_pnls)

    bucket_pnl = np.zeros(B, dtype=np.float64)
    bucket_trades = np.zeros(B, dtype=np.int64)
    bucket_wins = np.zeros(B, dtype=np.int64)
    for tr in trades:
        b = tr["exit_tick"] * B // T
        bucket_pnl[b] += tr["pnl"]
        bucket_trades[b] += 1
        if tr["pnl"] > 0.0:
            bucket_wins[b] += 1

    m: dict[str, float] = {}
    m["trades"] = n
    m["wins"] = wins
    m["win_rate"] = wins / n if n else math.nan
    m["win_rate_lo"], m["win_rate_hi"] = wilson(wins, n)
    m["net_pnl"] = sum(pnls)
    m["gross_pnl"] = sum(tr["gross_pnl"] for tr in trades)
    m["fees"] = sum(tr["entry_fee"] + tr["exit_fee"] for tr in trades)
    m["expectancy"] = m["net_pnl"] / n if n else math.nan
    if n == 0:
        m["profit_factor"] = math.nan
    elif not loss_pnls:
        m["profit_factor"] = math.inf
    else:
        m["profit_factor"] = sum(win_pnls) / -sum(loss_pnls)
    m["avg_win"] = sum(win_pnls) / len(win_pnls) if win_pnls else math.nan
    m["avg_loss"] = sum(loss_pnls) / len(loss_pnls) if loss_pnls else math.nan
    if math.isnan(m["avg_win"]) or math.isnan(m["avg_loss"]):
        m["payoff_ratio"] = math.nan
    else:
        m["payoff_ratio"] = m["avg_win"] / -m["avg_loss"]

    r = [float(x) / capital for x in bucket_pnl]
    sharpe = sortino = 0.0
    if B >= 2:
        mean = sum(r) / B
        var = sum((x - mean) ** 2 for x in r) / (B - 1)
        sd = math.sqrt(var)
        if sd > 0.0:
            sharpe = mean / sd
        dd = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / B)
        if dd > 0.0:
            sortino = mean / dd
    m["sharpe"] = sharpe
    m["sortino"] = sortino

    peak = capital
    mdd = 0.0
    for mark in marks:
        peak = max(peak, mark)
        mdd = max(mdd, (peak - mark) / peak)
    m["max_drawdown"] = mdd
    m["final_equity"] = equity
    # exposure and holding time count from a trade's first opening fill to its closing fill
    m["exposure"] = sum(tr["exit_tick"] - tr["entry_tick"] for tr in trades) / T if T else 0.0
    m["mean_hold_s"] = (sum((ts[tr["exit_tick"]] - ts[tr["entry_tick"]]) / 1e9 for tr in trades) / n
                        if n else math.nan)
    for reason in EXIT_REASONS:
        m[f"exits_{reason}"] = sum(1 for tr in trades if tr["reason"] == reason)
    return m, bucket_pnl, bucket_trades, bucket_wins
