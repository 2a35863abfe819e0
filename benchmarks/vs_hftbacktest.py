"""Peer check: this engine vs hftbacktest 2.4.4 on a real Binance USD-M capture (docs/HFTBACKTEST.md).

    python benchmarks/vs_hftbacktest.py --capture binance_usdm_btcusdt_20240808.jsonl.gz \
        [--work DIR] [--hbt-venv DIR] [--latency-ms 20] [--timing-configs 1000] [--jobs 2]
        [--feed {zero,capture}] [--no-timing] [--json OUT]

Runs from the project venv. hftbacktest lives in its own venv (`--hbt-venv`, default
`.venv-hbt` in the repository root; created from benchmarks/hftbacktest-requirements.txt on
first use, never a project dependency: it needs numpy < 2.3) and runs through
benchmarks/hbt_side.py in a subprocess.

1. The capture is imported once into a book store (`--work`/book.zarr, tick 0.1, lot 0.001)
   and converted once by hftbacktest's own converter (`--work`/hbt_<feed>.npz), both cached.
2. The strategy (both engines): a long-only passive entry wanted at every book row while flat
   (a constant signal row 1.0, entry threshold 0.5, cooldown 0), a post-only buy of 0.010 BTC
   k ticks behind the best bid with a time in force, a maker take profit, a taker stop;
   maker fee 2 bps, taker 5 bps (USD-M regular tier), order entry latency = cancel latency
   = `--latency-ms`, response latency 0, feed latency 0 (`--feed zero`, the default) or the
   capture's own (`--feed capture`, hftbacktest only: this engine has none).
   The 8 configurations: 2 queue models (risk_averse; power, n = 2) x 4 parameter sets.
3. Side by side: trades, maker and taker fills, fees, net PnL.
4. Timing: `--timing-configs` maker configurations (a grid of offset x time in force x take
   profit x stop) on both, in this one run on the same cores: this engine's warm CPU sweep
   (one `gpu_engine.sweep` call, kernel compiled and cached by a first call; validation, book
   preparation, kernel and metrics included) against hftbacktest one backtest per
   configuration in `--jobs` worker processes (workers warm: data loaded, strategy compiled).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TICK, LOT, QTY = 0.1, 0.001, 0.010
MAKER_BPS, TAKER_BPS = 2.0, 5.0
CAPITAL = 1_000_000.0  # sizing never binds: every entry is QTY (max_qty)
# (entry_offset ticks, entry_tif s, take_profit bps, stop_loss bps)
PARAM_SETS = (
    (0, math.inf, 1.0, 2.0),
    (0, 1.0, 2.0, 4.0),
    (1, 5.0, 3.0, 3.0),
    (2, 10.0, 1.5, 6.0),
)
QUEUES = (("risk_averse", 2.0), ("power", 2.0))
REQUIREMENTS = os.path.join(ROOT, "benchmarks", "hftbacktest-requirements.txt")
HBT_SIDE = os.path.join(ROOT, "benchmarks", "hbt_side.py")


def _fail(msg: str) -> int:
    print(f"vs_hftbacktest: {msg}", file=sys.stderr)
    return 2


def ensure_hbt_venv(path: str) -> str:
    py = os.path.join(path, "bin", "python")
    if not os.path.exists(py):
        print(f"creating the hftbacktest venv at {path} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    return py


def import_book(capture: str, work: str):
    from gpu_engine.data.books import store

    path = os.path.join(work, "book.zarr")
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "gpu_engine.data", "import", "--format", "binance-jsonl",
                        "--tick-size", str(TICK), "--lot-size", str(LOT), "--quiet", "--out", path,
                        capture], check=True, stdout=subprocess.DEVNULL)
    return store.load(path)


def convert_for_hbt(py: str, capture: str, work: str, feed: str) -> dict:
    npz = os.path.join(work, f"hbt_{feed}.npz")
    info = os.path.join(work, f"hbt_{feed}.json")
    if not (os.path.exists(npz) and os.path.exists(info)):
        subprocess.run([py, HBT_SIDE, "--convert", capture, "--feed", feed, "--data", npz,
                        "--out", info], check=True, stdout=subprocess.DEVNULL)
    return json.load(open(info))


def engine_configs(params, latency_ns: int) -> dict:
    params = list(params)
    n = len(params)
    return {
        "signal": np.zeros(n, np.int32),
        "entry": np.full(n, 0.5),
        "side": np.ones(n, np.int8),
        "entry_type": np.full(n, 1, np.int8),
        "tp_type": np.full(n, 1, np.int8),
        "entry_offset": np.array([p[0] for p in params], np.int64),
        "entry_tif": np.array([p[1] * 1e9 for p in params], np.float64),
        "take_profit": np.array([p[2] for p in params], np.float64),
        "stop_loss": np.array([p[3] for p in params], np.float64),
        "size_frac": np.ones(n),
        "max_qty": np.full(n, QTY),
        "capital": np.full(n, CAPITAL),
        "cooldown": np.zeros(n, np.int64),
        "fee_bps": np.full(n, TAKER_BPS),
        "maker_fee_bps": np.full(n, MAKER_BPS),
        "latency": np.full(n, latency_ns, np.int64),
        "cancel_latency": np.full(n, latency_ns, np.int64),
    }


def run_engine(book, params, latency_ns: int, queue: str, queue_n: float):
    import gpu_engine

    bank = np.ones((1, book.T), np.float32)  # "always want to be long"
    return gpu_engine.sweep(book, bank, engine_configs(params, latency_ns), device="cpu",
                            contract="linear", multiplier=1.0, tick_size=TICK, lot_size=LOT,
                            queue=queue, queue_n=queue_n)


def run_hbt(py: str, work: str, feed: str, params, latency_ns: int, queue: str, queue_n: float,
            jobs: int, tag: str) -> dict:
    cfg = os.path.join(work, f"cfg_{tag}.json")
    out = os.path.join(work, f"out_{tag}.json")
    json.dump({"shared": {"latency": latency_ns, "tick": TICK, "lot": LOT, "qty": QTY,
                          "maker_fee": MAKER_BPS * 1e-4, "taker_fee": TAKER_BPS * 1e-4},
               "configs": [{"entry_offset": p[0], "entry_tif": p[1] * 1e9, "take_profit": p[2],
                            "stop_loss": p[3]} for p in params]}, open(cfg, "w"))
    subprocess.run([py, HBT_SIDE, "--data", os.path.join(work, f"hbt_{feed}.npz"),
                    "--rows", os.path.join(work, "rows.npy"), "--configs", cfg, "--queue", queue,
                    "--queue-n", str(queue_n), "--jobs", str(jobs), "--out", out], check=True)
    return json.load(open(out))


def _fmt_tif(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g} s"


def comparison(book, py, work, feed, latency_ns):
    rows = []
    for queue, n in QUEUES:
        ds = run_engine(book, PARAM_SETS, latency_ns, queue, n)
        hb = run_hbt(py, work, feed, PARAM_SETS, latency_ns, queue, n, 1, f"{queue}_{feed}")
        for i, p in enumerate(PARAM_SETS):
            h = hb["results"][i]
            rows.append({
                "queue": queue if queue != "power" else f"power({n:g})",
                "k": p[0], "tif": _fmt_tif(p[1]), "tp": p[2], "sl": p[3],
                "ours": {"trades": int(ds.trades[i]), "maker_fills": int(ds.maker_fills[i]),
                         "taker_fills": int(ds.taker_fills[i]), "fees": float(ds.fees[i]),
                         "net_pnl": float(ds.net_pnl[i]), "exits_take": int(ds.exits_take[i]),
                         "exits_stop": int(ds.exits_stop[i]), "exits_end": int(ds.exits_end[i]),
                         "orders_rejected": int(ds.orders_rejected[i]),
                         "gross_pnl": float(ds.gross_pnl[i])},
                "hbt": h,
            })
    return rows


def print_table(rows, out=sys.stdout):
    print("| queue | k | tif | tp bps | sl bps | trades ours / hbt | maker fills | taker fills "
          "| fees USDT | net PnL USDT |", file=out)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for r in rows:
        o, h = r["ours"], r["hbt"]
        print(f"| {r['queue']} | {r['k']} | {r['tif']} | {r['tp']:g} | {r['sl']:g} "
              f"| {o['trades']} / {int(h['trades'])} | {o['maker_fills']} / {int(h['maker_fills'])} "
              f"| {o['taker_fills']} / {int(h['taker_fills'])} "
              f"| {o['fees']:.3f} / {h['fees']:.3f} | {o['net_pnl']:.3f} / {h['net_pnl']:.3f} |",
              file=out)


def timing_params(n: int):
    ks = (0, 1, 2, 3, 4)
    tifs = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)
    tps = (1.0, 1.5, 2.0, 3.0, 5.0)
    sls = (2.0, 3.0, 4.0, 6.0)
    grid = [(k, tif, tp, sl) for k in ks for tif in tifs for tp in tps for sl in sls]
    return grid[:n] if n <= len(grid) else [grid[i % len(grid)] for i in range(n)]


def timing(book, py, work, feed, latency_ns, n, jobs):
    params = timing_params(n)
    queue, qn = "power", 2.0
    run_engine(book, params[:8], latency_ns, queue, qn)  # warm: compile / load the kernel
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        ds = run_engine(book, params, latency_ns, queue, qn)
        best = min(best, time.perf_counter() - t0)
    hb = run_hbt(py, work, feed, params, latency_ns, queue, qn, jobs, f"timing_{n}")
    trades_ours = int(np.asarray(ds.trades).sum())
    trades_hbt = int(sum(r["trades"] for r in hb["results"]))
    return {"configs": n, "queue": "power(2)", "ticks": int(book.T), "ours_s": best,
            "hbt_s": hb["wall_s"], "hbt_jobs": jobs, "ratio": hb["wall_s"] / best,
            "trades_ours": trades_ours, "trades_hbt": trades_hbt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--capture", help="the Binance USD-M capture (hftbacktest collector format)")
    ap.add_argument("--work", default=os.path.join(ROOT, "results", "vs_hftbacktest"))
    ap.add_argument("--hbt-venv", default=os.path.join(ROOT, ".venv-hbt"))
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--feed", choices=("zero", "capture"), default="zero")
    ap.add_argument("--timing-configs", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--json", help="write every number to this file")
    a = ap.parse_args(argv)
    if not a.capture:
        return _fail("--capture PATH is required (a Binance USD-M capture, e.g. "
                     "binance_usdm_btcusdt_20240808.jsonl.gz)")
    if not os.path.isfile(a.capture):
        return _fail(f"capture not found: {a.capture}")
    if a.timing_configs < 1 or a.jobs < 1 or not a.latency_ms >= 0:
        return _fail("--timing-configs and --jobs must be >= 1, --latency-ms >= 0")

    os.makedirs(a.work, exist_ok=True)
    latency_ns = int(round(a.latency_ms * 1e6))
    py = ensure_hbt_venv(a.hbt_venv)
    book = import_book(a.capture, a.work)
    np.save(os.path.join(a.work, "rows.npy"), np.asarray(book.ts, np.int64))
    conv = convert_for_hbt(py, a.capture, a.work, a.feed)
    rows = comparison(book, py, a.work, a.feed, latency_ns)
    print(f"capture {os.path.basename(a.capture)}: {book.T} book rows, {len(book.trades)} trades; "
          f"hftbacktest events {conv['events']}, feed latency ({a.feed}) {conv['feed_latency_ns']}")
    print(f"latency: order entry = cancel = {a.latency_ms:g} ms, response 0; fees maker "
          f"{MAKER_BPS:g} / taker {TAKER_BPS:g} bps; tick {TICK}, lot {LOT}, qty {QTY}")
    print_table(rows)
    result = {"capture": os.path.basename(a.capture), "feed": a.feed, "latency_ms": a.latency_ms,
              "conversion": conv, "rows": rows, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not a.no_timing:
        tm = timing(book, py, a.work, a.feed, latency_ns, a.timing_configs, a.jobs)
        result["timing"] = tm
        print(f"timing, {tm['configs']} configurations ({tm['queue']}, {tm['ticks']} book rows): "
              f"ours {tm['ours_s']:.4f} s (warm sweep call, best of 3), hftbacktest "
              f"{tm['hbt_s']:.2f} s ({tm['hbt_jobs']} processes) -> ratio {tm['ratio']:.0f}x "
              f"(trades ours {tm['trades_ours']}, hbt {tm['trades_hbt']})")
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
