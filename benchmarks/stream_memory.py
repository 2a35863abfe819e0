"""Peak memory of a grid sweep streamed through a memory budget, against the same sweep loaded whole.

    python benchmarks/stream_memory.py [--budget 48M] [--stores 4] [--hours 2.5] [--work DIR]

Writes `--stores` synthetic book stores (`python -m gpu_engine.data synth`, consecutive
`--hours` each: one data set whose whole load, `gpu_engine.stream.whole_load_bytes`, must be at
least 8 times `--budget`), then runs `python -m sweeps.grid` on the default space three times
under `/usr/bin/time -v`, each a fresh process with its own kernel cache already warm:

1. fixed overhead: the same command on a 0.1-hour store, loaded whole
   (the interpreter, numba, the compiled kernel, zarr, xarray, Optuna's imports, the result
   cube's writer): what any run costs before its data;
2. streamed: the whole data set with `--max-memory BUDGET`;
3. whole: the whole data set with a budget above its whole load (the in-memory path).

Prints the peak resident set of each, the streamed peak minus the fixed overhead (that process,
plus the one store chunk the window reads decompress into: a chunk of the widest array and its
compressed bytes, gpu_engine/data/books/chunks.py) against the budget, and whether the two
cubes are identical (xarray.testing.assert_identical, attrs aside).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = RSS.search(proc.stderr)
    return wall, int(m.group(1)) * 1024, proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="48M")
    ap.add_argument("--stores", type=int, default=4)
    ap.add_argument("--hours", type=float, default=2.5, help="hours of synthetic book per store")
    ap.add_argument("--work", default=None, help="folder for the stores and cubes (default: a temporary one)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from gpu_engine import stream
    from gpu_engine.data.books.rows import StoreRows
    from gpu_engine.features_stream import BankStream
    from gpu_engine.space import load as load_space
    from gpu_engine.space import feature_spec

    budget = stream.parse_bytes(a.budget)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="stream-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), GPU_ENGINE_CACHE_DIR=str(work / "cache"))
    py = sys.executable
    paths = []
    for k in range(a.stores):
        p = work / f"day{k}.zarr"
        start = f"2024-08-08T{int(k * a.hours):02d}:{int((k * a.hours % 1) * 60):02d}" if k * a.hours < 24 \
            else f"2024-08-{8 + int(k * a.hours // 24):02d}T{int(k * a.hours % 24):02d}:00"
        if not p.exists():
            subprocess.run([py, "-m", "gpu_engine.data", "synth", "--hours", str(a.hours), "--start", start,
                            "--seed", str(k), "--price", "60000", "--out", str(p)], env=env, check=True,
                           capture_output=True)
        paths.append(p)
    tiny = work / "tiny.zarr"
    if not tiny.exists():
        subprocess.run([py, "-m", "gpu_engine.data", "synth", "--hours", "0.1", "--price", "60000",
                        "--out", str(tiny)], env=env, check=True, capture_output=True)
    rows = StoreRows(paths)
    space = load_space()
    K = BankStream(feature_spec(space), depth=rows.depth).K
    tpr = sum(p.trade_rows for p in rows.parts) / rows.T
    whole = stream.whole_load_bytes(rows.T, rows.depth, K, tpr)
    print(f"data set: {a.stores} stores, {rows.T:,} rows x {rows.depth} levels, {tpr:.2f} trades/row, "
          f"bank {K} rows; whole load about {whole / 2 ** 20:,.0f} MiB = {whole / budget:.1f} x the budget "
          f"{budget / 2 ** 20:,.0f} MiB")
    if whole < 8 * budget:
        print("warning: the data set is less than 8 times the budget")
    data = ",".join(str(p) for p in paths)
    common = ["-m", "sweeps.grid", "--space", str(ROOT / "sweeps" / "spaces" / "default.toml"), "--device", "cpu",
              "--no-html", "--no-progress", "--overwrite"]
    # warm the kernel cache (not measured)
    run([py, *common, "--data", str(tiny), "--out", str(work / "warm.zarr")], env, work)
    w0, fixed, _ = run([py, *common, "--data", str(tiny), "--out", str(work / "tiny-cube.zarr")], env, work)
    w1, streamed, out = run([py, *common, "--data", data, "--max-memory", a.budget,
                             "--out", str(work / "streamed.zarr")], env, work)
    w2, loaded, _ = run([py, *common, "--data", data, "--max-memory", str(4 * whole),
                         "--out", str(work / "whole.zarr")], env, work)
    import xarray as xr

    try:
        xr.testing.assert_identical(xr.open_zarr(work / "streamed.zarr").drop_attrs(),
                                    xr.open_zarr(work / "whole.zarr").drop_attrs())
        same = "identical"
    except AssertionError as exc:
        same = f"DIFFERENT: {str(exc)[:300]}"
    mib = 2 ** 20
    # the chunk buffers the window reads reuse: one chunk of the widest array decompressed, and
    # the largest compressed chunk file, a fixed cost of the stores' layout
    arr = rows.parts[0].group["bid_px"]
    packed = max((f.stat().st_size for p in paths for f in (p / "bid_px" / "c").rglob("*") if f.is_file()),
                 default=0)
    chunk = int(arr.chunks[0]) * int(arr.shape[1]) * arr.dtype.itemsize + packed
    print(f"store chunk buffers: a {int(arr.chunks[0]):,}-row chunk of bid_px decompressed and compressed "
          f"= {chunk / mib:,.0f} MiB")
    print("| run | wall (s) | peak RSS (MiB) |")
    print("|---|---|---|")
    print(f"| fixed overhead (0.1 h store, loaded whole) | {w0:.1f} | {fixed / mib:,.0f} |")
    print(f"| streamed, --max-memory {a.budget} | {w1:.1f} | {streamed / mib:,.0f} |")
    print(f"| whole load | {w2:.1f} | {loaded / mib:,.0f} |")
    over = streamed - fixed - chunk
    print(f"streamed peak - fixed overhead ({fixed / mib:,.0f} MiB process + {chunk / mib:,.0f} MiB chunk buffers) "
          f"= {over / mib:,.0f} MiB against a budget of {budget / mib:,.0f} MiB "
          f"({'within' if over <= budget else 'OVER'}); whole load - process = {(loaded - fixed) / mib:,.0f} MiB; "
          f"cubes {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
