"""Grid sweep throughput on a data set of several stores against the same rows in one store.

    python benchmarks/stores_throughput.py STORE [STORE ...] [--rounds 3] [--work DIR]

Writes the rows of the given stores (read as one series, gpu_engine/data/books/collection.py)
into one store, then runs `python -m sweeps.grid` on the default space over the data set of
stores and over the one store, alternately, `--rounds` times each (fresh processes, the kernel
cache and the feature cache warm after a first untimed run of each), and prints the median wall
time of each, the sweep's config-ticks per second, and their ratio. The two cubes must be
identical.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import xarray as xr

    from gpu_engine.data.books.collection import load_many
    from gpu_engine.data.books.store import write_store

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="stores-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    one = work / "one.zarr"
    book = load_many([Path(s) for s in a.stores])
    if not one.exists():
        attrs = {k: v for k, v in book.attrs.items() if k not in ("stores", "store_gaps")}
        book.attrs = attrs
        write_store(one, book)
    T = book.T
    env = dict(os.environ, PYTHONPATH=str(ROOT), GPU_ENGINE_CACHE_DIR=str(work / "cache"))
    space = ROOT / "sweeps" / "spaces" / "default.toml"
    common = [sys.executable, "-m", "sweeps.grid", "--space", str(space), "--device", "cpu", "--no-html",
              "--no-progress"]
    runs = {"stores": ",".join(a.stores), "one store": str(one)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    C = None
    for r in range(a.rounds + 1):
        for name, data in runs.items():
            out = work / f"{name.replace(' ', '_')}.zarr"
            shutil.rmtree(out, ignore_errors=True)  # a fresh cube every run (no resume)
            t0 = time.perf_counter()
            p = subprocess.run([*common, "--data", data, "--out", str(out)], cwd=work, env=env,
                               capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                sys.exit(f"grid on {name} failed:\n{p.stderr[-2000:]}")
            if r > 0:  # the first round warms the caches
                times[name].append(wall)
            if C is None:
                C = int(xr.open_zarr(out).sizes.get("config", 0)) or None
    xr.testing.assert_identical(xr.open_zarr(work / "stores.zarr").drop_attrs(),
                                xr.open_zarr(work / "one_store.zarr").drop_attrs())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(a.stores)} stores, {T:,} rows; grid on the default space, {a.rounds} rounds, median wall time")
    print("| data | wall (s) |")
    print("|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    ratio = med["stores"] / med["one store"]
    print(f"stores / one store: {ratio:.3f} ({'within' if ratio <= 1.10 else 'OUTSIDE'} 10%); cubes identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
