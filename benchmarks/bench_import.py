"""Import speed and memory: `binance-jsonl` captures -> Zarr book store, on one core.

For each real Binance capture in the real-data folder (docs/TESTING.md; `GPU_ENGINE_REAL_DATA`
overrides it) (and a long capture made by
chaining shifted copies of the largest one, to show memory does not grow with the
input) this runs `import_files` in a fresh child process pinned to one CPU and
reports messages/s (all messages: depth, trades, bookTicker, snapshot) of the
`import_files` call (reading, book keeping, writing and renaming the store, file
hashes) per wall second (best of --repeat) and per CPU second of the process (all its
threads: a shared machine's load inflates wall time far more), the same including the one-off module imports (numpy, zarr: "cold"), and
the child's peak RSS. Results: benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_import.py [--repeat 3] [--copies 8]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("GPU_ENGINE_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
CAPTURES = [
    "binance_spot_btcusdt_20240808.jsonl.gz", "binance_spot_btcusdt_20240809.jsonl.gz",
    "binance_usdm_btcusdt_20240808.jsonl.gz", "binance_usdm_btcusdt_20230404.jsonl.gz",
    "binance_spot_btcusdt_20230405.jsonl.gz",
]


def child(paths: list[str], depth: int) -> None:
    """Runs in the child: one import, prints a JSON line."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    from gpu_engine.data.books.importers import import_files
    import zarr  # noqa: F401  (the store writer imports it lazily: a one-off ~0.15 s)

    t_import = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = import_files(paths, "binance-jsonl", Path(d) / "b.zarr", depth=depth, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"messages": rep.messages, "rows": rep.rows, "trades": rep.trades, "gaps": len(rep.gaps),
                      "wall_s": wall, "cpu_s": cpu, "modules_s": t_import, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(paths: list[Path], depth: int, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", "--depth", str(depth), *map(str, paths)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or r["wall_s"] < best["wall_s"]:
            best = r
    best["msgs_per_s"] = best["messages"] / best["wall_s"]
    best["cold_per_s"] = best["messages"] / (best["wall_s"] + best["modules_s"])
    best["per_cpu_s"] = best["messages"] / best["cpu_s"]
    return best


def chained_copy(src: Path, copies: int, dst: Path) -> None:
    """`copies` copies of a capture, each shifted in ids and time after the previous one
    (one gap + resync per seam, as a recorder restart would leave)."""
    sys.path.insert(0, str(REPO))
    from gpu_engine.data.books.feeds.jsonl import stamp_to_ns

    lines = gzip.open(src, "rb").read().splitlines()
    objs = [(stamp_to_ns(int(ln.split(b" ", 1)[0])), json.loads(ln.split(b" ", 1)[1])) for ln in lines]
    ids = [o["data"]["u"] for _, o in objs if "data" in o and "u" in o["data"]]
    id_span = max(ids) - min(ids) + 1000
    t_span = objs[-1][0] - objs[0][0] + 1_000_000_000
    with gzip.open(dst, "wb", compresslevel=1) as f:
        for c in range(copies):
            di, dt_ns = c * id_span, c * t_span
            dt_ms = dt_ns // 1_000_000
            for local, o in objs:
                if "lastUpdateId" in o:
                    o = dict(o, lastUpdateId=o["lastUpdateId"] + di)
                else:
                    d = dict(o["data"])
                    for k in ("U", "u", "pu", "t"):
                        if k in d:
                            d[k] += di
                    for k in ("E", "T"):
                        if k in d:
                            d[k] += dt_ms
                    o = {"stream": o["stream"], "data": d}
                f.write(b"%d %s\n" % (local + dt_ns, json.dumps(o, separators=(",", ":")).encode()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--make-chained", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("paths", nargs="*")
    a = ap.parse_args()
    if a.child:
        child(a.paths, a.depth)
        return 0
    if a.make_chained:  # in a child, so that the bench process stays small (ru_maxrss survives exec)
        chained_copy(Path(a.paths[0]), a.make_chained, Path(a.paths[1]))
        return 0
    if not REAL.is_dir():
        print(f"{REAL} not present: nothing to measure")
        return 1
    print("| input | messages | book rows | trades | import s | messages/s | messages/CPU-s | cold messages/s "
          "| peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = [([REAL / n], n) for n in CAPTURES if (REAL / n).is_file()]
    runs.append(([REAL / CAPTURES[0], REAL / CAPTURES[1]], "spot 20240808 + 20240809 (one stream)"))
    with tempfile.TemporaryDirectory() as d:
        for name, label in (("binance_usdm_btcusdt_20240808.jsonl.gz", "usdm 20240808"),
                            ("binance_usdm_btcusdt_20230404.jsonl.gz", "usdm 20230404 (depth-heavy)")):
            big = Path(d) / f"chained_{name}"
            subprocess.run([sys.executable, __file__, "--make-chained", str(a.copies), str(REAL / name), str(big)],
                           check=True)
            runs.append(([big], f"{label} x{a.copies} (chained, shifted copies)"))
        for paths, label in runs:
            r = measure(paths, a.depth, a.repeat)
            print(f"| {label} | {r['messages']:,} | {r['rows']:,} | {r['trades']:,} | {r['wall_s']:.2f} | "
                  f"{r['msgs_per_s']:,.0f} | {r['per_cpu_s']:,.0f} | {r['cold_per_s']:,.0f} | {r['rss_mb']:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
