"""Record layouts shared by every backtest path: configuration fields, metric names, exit reasons.

A configuration is a struct of arrays (one entry per configuration). `CONFIG_FIELDS`
maps each field to its dtype and default; `gpu_engine.sweep` fills defaults,
validates, and hands typed arrays to a kernel. Metric columns of the kernel output
`[C, M]` follow `METRICS` in this order. Keep this module free of numba/cupy.
"""
from __future__ import annotations

import math

import numpy as np

INF = math.inf

# Exit reasons (docs/RULES.md, rules 4 and 5), in the order the rules check them.
EXIT_STOP, EXIT_TAKE, EXIT_TIME, EXIT_SIGNAL, EXIT_END = 0, 1, 2, 3, 4
EXIT_REASONS = ("stop", "take", "time", "signal", "end")

# Position states (docs/RULES.md, rule 1).
FLAT, ENTRY_PENDING, IN_POSITION, EXIT_PENDING = 0, 1, 2, 3

# Binance spot regular tier taker fee: 0.10% = 10 bps (Binance fee page; 7.5 bps when paid in BNB).
DEFAULT_FEE_BPS = 10.0
# Order-entry latency: 20 ms, a realistic round trip from a cloud region near the venue.
DEFAULT_LATENCY_NS = 20_000_000
DEFAULT_CAPITAL = 10_000.0

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
)
METRIC_INDEX = {name: i for i, name in enumerate(METRICS)}
