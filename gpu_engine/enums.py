"""Record layouts shared by every backtest path: configuration fields, metric names, exit
reasons, the run-wide market array and the kernels' raw output columns.

A configuration is a struct of arrays (one entry per configuration). `CONFIG_FIELDS`
maps each field to its dtype and default; `gpu_engine.sweep` fills defaults,
validates, and hands typed arrays to a kernel. Metric columns of the kernel output
`[C, M]` follow `METRICS` in this order. The run-wide market settings (contract,
multiplier, tick and lot size, queue model) reach the kernels as one small float64 array
in `MARKET_FIELDS` order, followed by the window of the book the kernel runs
(`WINDOW_FIELDS`), and the kernels write per-configuration raw sums in `RAW` order
(the `R_*` column indices; `gpu_engine.metrics` turns them into `METRICS`). Keep this
module free of numba/cupy: the trading rules (strategy.py) import their layouts from here.
"""
from __future__ import annotations

import math

import numpy as np

INF = math.inf

# Exit reasons (docs/RULES.md, rules 4 and 5), in the order the rules check them.
EXIT_STOP, EXIT_TAKE, EXIT_TIME, EXIT_SIGNAL, EXIT_END = 0, 1, 2, 3, 4
EXIT_REASONS = ("stop", "take", "time", "signal", "end")

# Position states (docs/RULES.md, rule 1). ENTRY_WORKING: a maker entry order is posted (in
# flight or resting in the book); ENTRY_PENDING is a taker entry in flight.
FLAT, ENTRY_PENDING, IN_POSITION, EXIT_PENDING, ENTRY_WORKING = 0, 1, 2, 3, 4

# Order types of `entry_type` and `tp_type` (strings accepted by gpu_engine.sweep).
TAKER, MAKER = 0, 1
ORDER_TYPES = ("taker", "maker")

# Run-wide market settings, passed to the kernels as a float64 array in this order
# (gpu_engine.sweep builds it from its keyword arguments; defaults give rules v1).
MARKET_FIELDS = ("inverse", "multiplier", "tick_size", "lot_size", "queue", "queue_n")
M_INVERSE, M_MULT, M_TICK, M_LOT, M_QUEUE, M_QUEUE_N = range(6)
NMARKET = len(MARKET_FIELDS)
# The market array a kernel reads is the run-wide market above followed by its window of the
# book (kernels.prepare_window; prepare_book: 0 and T): the global index of the window's
# row 0 and the tick count of the whole book (exact in float64 below 2**53).
WINDOW_FIELDS = ("offset", "total", "sorted")
M_OFFSET, M_TOTAL, M_SORTED = NMARKET, NMARKET + 1, NMARKET + 2
NKMARKET = NMARKET + len(WINDOW_FIELDS)
# Per-row summaries of the book and the tape the kernels read beside the levels
# (kernels.row_summary, float64 [T, NROWSUM] in this order): each side's deepest displayed
# price (the lowest displayed bid, the highest displayed ask; NaN when the side displays
# nothing), the lowest price among the tick's sell-aggressor trades (those that hit resting
# buy orders; +inf: none) and the highest among its buy-aggressor trades (-inf: none). They
# let a resting maker order skip a tick's trades and level search when neither can reach it.
ROWSUM_FIELDS = ("bid_deep", "ask_deep", "sell_lo", "buy_hi")
RS_BID_DEEP, RS_ASK_DEEP, RS_SELL_LO, RS_BUY_HI = range(4)
NROWSUM = len(ROWSUM_FIELDS)
CONTRACTS = ("linear", "inverse")
# Queue position models (gpu_engine/queue.py); `queue_n` is the power model's exponent.
QUEUE_RISK_AVERSE, QUEUE_POWER, QUEUE_LOG = 0, 1, 2
QUEUE_MODELS = ("risk_averse", "power", "log")
DEFAULT_QUEUE_N = 2.0

# Binance spot regular tier taker fee: 0.10% = 10 bps (Binance fee page; 7.5 bps when paid in BNB).
DEFAULT_FEE_BPS = 10.0
# Order-entry latency: 20 ms, a realistic round trip from a cloud region near the venue.
DEFAULT_LATENCY_NS = 20_000_000
DEFAULT_CAPITAL = 10_000.0
# Binance spot regular tier maker fee: 0.10% = 10 bps, like the taker fee.
DEFAULT_MAKER_FEE_BPS = 10.0

# field -> (dtype, default). None as default means "required".
CONFIG_FIELDS: dict[str, tuple[type, object]] = {
    "signal": (np.int32, None),        # bank row
    "entry": (np.float64, None),       # > 0
    "exit": (np.float64, INF),         # >= 0, inf disables
    "side": (np.int8, 0),              # +1 long only, -1 short only, 0 both
    "regime": (np.int32, 0),           # bank row
    "band": (np.float64, INF),         # inf disables the regime filter
    "take_profit": (np.float64, INF),  # bps, > 0, inf disables
    "stop_loss": (np.float64, INF),    # bps, > 0, inf disables
    "max_hold": (np.float64, INF),     # ns, > 0, inf disables
    "size_frac": (np.float64, 0.1),    # (0, 1]
    "max_qty": (np.float64, INF),      # > 0
    "cooldown": (np.int64, 0),         # ticks, >= 0
    "fee_bps": (np.float64, DEFAULT_FEE_BPS),     # >= 0
    "latency": (np.int64, DEFAULT_LATENCY_NS),    # ns, >= 0
    "capital": (np.float64, DEFAULT_CAPITAL),     # > 0
    # rules v2 (maker orders); the defaults give rules v1
    "entry_type": (np.int8, TAKER),    # TAKER (0) or MAKER (1); "taker"/"maker" accepted
    "entry_offset": (np.int64, 0),     # ticks behind the touch, >= 0 (maker entries)
    "entry_tif": (np.float64, INF),    # ns, > 0, inf = until filled (maker entries)
    "tp_type": (np.int8, TAKER),       # TAKER (0) or MAKER (1): a resting take-profit order
    "maker_fee_bps": (np.float64, DEFAULT_MAKER_FEE_BPS),  # finite, negative = rebate
    "cancel_latency": (np.int64, DEFAULT_LATENCY_NS),      # ns, >= 0
}

# Metric columns of the kernel/oracle output, in this order (defined in docs/RULES.md).
METRICS: tuple[str, ...] = (
    "trades",
    "wins",
    "win_rate",
    "win_rate_lo",
    "win_rate_hi",
    "net_pnl",
    "gross_pnl",
    "fees",
    "expectancy",
    "profit_factor",
    "avg_win",
    "avg_loss",
    "payoff_ratio",
    "sharpe",
    "sortino",
    "max_drawdown",
    "final_equity",
    "exposure",
    "mean_hold_s",
    "exits_stop",
    "exits_take",
    "exits_time",
    "exits_signal",
    "exits_end",
    # rules v2: order flow
    "maker_fills",        # fills of maker orders (each trade or crossing fill counts once)
    "taker_fills",        # taker walks (entries and exits)
    "orders_posted",      # maker orders sent (entries and take profits)
    "orders_rejected",    # maker orders rejected post-only at arrival
    "cancels",            # cancels sent (time in force, or an exit while a take profit rests)
    "maker_fill_ratio",   # maker filled quantity / posted quantity (NaN when nothing posted)
    "mean_queue_wait_s",  # mean over maker fills of ts[fill] - ts[arrival], s (NaN: none)
    "fees_maker",         # fees of maker fills (negative: rebates)
    "fees_taker",         # fees of taker fills
)
METRIC_INDEX = {name: i for i, name in enumerate(METRICS)}

# Raw per-configuration accumulators written by the kernels, in this column order
# (gpu_engine.metrics.finish turns them into METRICS).
RAW: tuple[str, ...] = (
    "trades",
    "wins",
    "losses",
    "net_pnl",
    "gross_pnl",
    "fees",
    "sum_win",
    "sum_loss",
    "max_drawdown",
    "final_equity",
    "held_ticks",
    "held_ns",
    "exits_stop",
    "exits_take",
    "exits_time",
    "exits_signal",
    "exits_end",
    "maker_fills",
    "taker_fills",
    "posted",
    "rejected",
    "cancels",
    "posted_qty",
    "maker_qty",
    "queue_wait_ns",
    "fees_maker",
    "fees_taker",
)
RAW_INDEX = {name: i for i, name in enumerate(RAW)}
NRAW = len(RAW)
R_TRADES, R_WINS, R_LOSSES, R_NET, R_GROSS, R_FEES, R_SUMWIN, R_SUMLOSS = range(8)
R_MAXDD, R_EQUITY, R_HELD_TICKS, R_HELD_NS, R_EXIT0 = 8, 9, 10, 11, 12
(R_MAKER_FILLS, R_TAKER_FILLS, R_POSTED, R_REJECTED, R_CANCELS, R_POSTED_QTY, R_MAKER_QTY,
 R_QUEUE_WAIT_NS, R_FEES_MAKER, R_FEES_TAKER) = range(17, 27)
