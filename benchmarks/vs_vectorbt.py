"""Our sweep vs vectorbt's Portfolio.from_signals on the same signals, thresholds, stops and fees.

    python benchmarks/vs_vectorbt.py [--configs C] [--ticks T] [--threads N] [--json]

Both run in this process on gpu_engine.bench's synthetic book and imbalance signal. The same
C long-only configurations (entry threshold, signal-exit threshold, take profit and stop loss
in bps, 10 bps fee) go to:

- ours: gpu_engine.sweep(device="cpu") with the full rules (20 ms latency, depth-walk fills,
  executable bid/ask, cooldown 0), metrics included (all of enums.METRICS);
- vectorbt 1.2.0: Portfolio.from_signals on the mid price with 2-D entries (s >= entry) and
  exits (s <= -exit), per-column `sl_stop`, `tp_stop`, `fees`, and the mean half-spread as
  `slippage` (it has no bid/ask arrays, no latency, no max-holding exit), then total_return,
  max_drawdown, trade count and win rate per column.

Prints both rates (config-ticks/s) and ours / vectorbt; --json prints ours_cts, vectorbt_cts,
ratio, configs, ticks, threads. vectorbt is a benchmark-only dependency (the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", type=int, default=256)
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import numba

    if a.threads:
        numba.set_num_threads(a.threads)
    import pandas as pd
    import vectorbt as vbt

    import gpu_engine
    from gpu_engine.bench import _signal_scale, synthetic_book

    C, T = a.configs, a.ticks
    book = synthetic_book(T, 20, a.seed)
    b0 = book.bid_sz[:, 0].astype(np.float64)
    a0 = book.ask_sz[:, 0].astype(np.float64)
    sig = _signal_scale(((b0 - a0) / (b0 + a0)).astype(np.float32)[None, :])
    rng = np.random.default_rng(a.seed + 1)
    entry = rng.uniform(0.55, 0.95, C)
    exit_ = rng.uniform(0.0, 0.6, C)
    tp = rng.uniform(5.0, 40.0, C)
    sl = rng.uniform(5.0, 40.0, C)
    fee_bps = 10.0

    cfg = {"signal": np.zeros(C, np.int32), "entry": entry, "exit": exit_, "side": np.ones(C, np.int8),
           "take_profit": tp, "stop_loss": sl, "size_frac": np.full(C, 1.0), "fee_bps": np.full(C, fee_bps),
           "cooldown": np.zeros(C, np.int64)}
    gpu_engine.sweep(book, sig, {k: v[:2] for k, v in cfg.items()}, device="cpu")  # compile / load cache
    t0 = time.perf_counter()
    ds = gpu_engine.sweep(book, sig, cfg, device="cpu")
    t_ours = time.perf_counter() - t0

    mid = (book.bid_px[:, 0] + book.ask_px[:, 0]) / 2
    half_spread = float(np.nanmean((book.ask_px[:, 0] - book.bid_px[:, 0]) / 2 / mid))
    s = sig[0].astype(np.float64)
    close = pd.Series(mid)
    # warm vectorbt's numba functions on a tiny problem first (its compile is not its speed)
    vbt.Portfolio.from_signals(close.iloc[:100], (s[:100, None] >= entry[:2]), (s[:100, None] <= -exit_[:2]),
                               sl_stop=sl[:2] * 1e-4, tp_stop=tp[:2] * 1e-4, fees=fee_bps * 1e-4,
                               slippage=half_spread, freq="1s").total_return()
    t1 = time.perf_counter()
    entries = s[:, None] >= entry[None, :]
    exits = s[:, None] <= -exit_[None, :]
    pf = vbt.Portfolio.from_signals(close, entries, exits, sl_stop=sl * 1e-4, tp_stop=tp * 1e-4,
                                    fees=fee_bps * 1e-4, slippage=half_spread, freq="1s")
    vb_metrics = {
        "total_return": pf.total_return().to_numpy(),
        "max_drawdown": pf.max_drawdown().to_numpy(),
        "trades": pf.trades.count().to_numpy(),
        "win_rate": pf.trades.win_rate().to_numpy(),
    }
    t_vbt = time.perf_counter() - t1

    ct = float(C) * float(T)
    out = {
        "ours_cts": ct / t_ours,
        "vectorbt_cts": ct / t_vbt,
        "ratio": t_vbt / t_ours,
        "configs": C,
        "ticks": T,
        "threads": int(numba.get_num_threads()),
        "ours_s": t_ours,
        "vectorbt_s": t_vbt,
        "ours_trades_per_config": float(ds["trades"].mean()),
        "vectorbt_trades_per_config": float(np.mean(vb_metrics["trades"])),
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{C} configs x {T} ticks, {out['threads']} numba threads")
        print(f"ours      {out['ours_cts']:.3e} config-ticks/s ({t_ours:.2f} s, all metrics, "
              f"{out['ours_trades_per_config']:.0f} trades/config)")
        print(f"vectorbt  {out['vectorbt_cts']:.3e} config-ticks/s ({t_vbt:.2f} s, from_signals + 4 metrics, "
              f"{out['vectorbt_trades_per_config']:.0f} trades/config)")
        print(f"ratio     {out['ratio']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
