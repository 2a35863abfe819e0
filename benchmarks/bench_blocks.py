"""Benchmark of the block dataset: full build genesis->today, mmap load, one record by height.

    .venv/bin/python benchmarks/bench_blocks.py [--real DIR] [--repeat N]

Bars (issue 3): full build < 5 s; load (mmap) <= 1 ms; one record by height <= 1 us median.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_engine.data.blocks import dataset as B  # noqa: E402

DEFAULT_REAL = REPO.parent / "shared" / "data" / "real"


def timed(fn, repeat):
    out, ts = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return out, ts


def fmt(ts, unit=1.0, suffix="s"):
    return f"median {statistics.median(ts) * unit:.3f} {suffix}, min {min(ts) * unit:.3f} {suffix}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real data dir for the with-inputs build")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs")

    (arr, meta), ts = timed(lambda: B.build(), args.repeat)
    print(f"build() genesis->now, no inputs: {len(arr):,} blocks: {fmt(ts)}")

    real_args = []
    if args.real.is_dir():
        r = args.real
        prices = [r / "btc_usd_daily_ohlcv_2014_2025.csv", r / "btc_daily_coinmetrics_2009_2019.csv.gz"]
        counts = [r / "btc_daily_chain_stats_bitcoinvisuals_2009_2021.csv.gz", r / "btc_daily_coinmetrics_2009_2019.csv.gz"]
        (arr_r, _), ts = timed(lambda: B.build(prices=prices, chain_stats=counts), args.repeat)
        print(f"build() genesis->now, real prices + chain stats: {len(arr_r):,} blocks: {fmt(ts)}")
        real_args = ["--prices", *map(str, prices), "--chain-stats", *map(str, counts)]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "blocks.npy"
        _, ts = timed(lambda: B.write(out, arr, meta), args.repeat)
        print(f"write() {out.stat().st_size / 1e6:.1f} MB + sidecar (fsync, rename): {fmt(ts)}")

        for label, extra in (("no inputs", []), ("real inputs", real_args)):
            if label == "real inputs" and not extra:
                continue
            cmd = [sys.executable, "-m", "gpu_engine.data", "blocks", "--out", str(out), *extra]
            def run():
                subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            _, ts = timed(run, max(2, args.repeat // 2))
            print(f"CLI end to end ({label}; interpreter start, imports, build, write, summary): {fmt(ts)}")

        B.write(out, arr, meta)
        B.load(out)  # warm the page cache / header read once
        _, ts = timed(lambda: B.load(out), 1000)
        print(f"load() mmap: {fmt(ts, 1e3, 'ms')}")

        blocks = B.load(out)
        n = len(blocks)
        rng = np.random.default_rng(0)
        hs = rng.integers(0, n, 200_000).tolist()
        batch = 1000
        per = []
        for k in range(0, len(hs), batch):
            chunk = hs[k:k + batch]
            t0 = time.perf_counter()
            for h in chunk:
                blocks[h]
            per.append((time.perf_counter() - t0) / len(chunk))
        print(f"one record by height (blocks[h] on the memmap, {len(hs):,} random lookups in batches of {batch}): "
              f"{fmt(per, 1e6, 'us')}")
        per = []
        for k in range(0, len(hs), batch):
            chunk = hs[k:k + batch]
            t0 = time.perf_counter()
            for h in chunk:
                blocks[h]["price"]
            per.append((time.perf_counter() - t0) / len(chunk))
        print(f"one field of one record (blocks[h]['price']): {fmt(per, 1e6, 'us')}")

        tq = rng.integers(int(blocks["time"][0]), int(blocks["time"][-1]), 20_000)
        per = []
        for k in range(0, 20_000, batch):
            chunk = tq[k:k + batch].tolist()
            t0 = time.perf_counter()
            for t in chunk:
                B.height_at(blocks, t)
            per.append((time.perf_counter() - t0) / len(chunk))
        print(f"height_at(blocks, scalar time): {fmt(per, 1e6, 'us')}")
        tq = rng.integers(int(blocks["time"][0]), int(blocks["time"][-1]), 1_000_000)
        _, ts = timed(lambda: B.height_at(blocks, tq), 5)
        print(f"height_at(blocks, 1,000,000 times) vectorised: {fmt(ts, 1e3, 'ms')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
