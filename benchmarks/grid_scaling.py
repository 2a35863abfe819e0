"""Grid sweep scaling: one process against a Dask LocalCluster of 1 and 2 workers, same grid.

    python benchmarks/grid_scaling.py [--hours 2] [--configs-per-region 256]

Writes a small grid space (31,104 configurations of the default signals) to a temporary folder,
generates a synthetic book of `--hours` (untimed), warms the kernel and feature caches with one
untimed run, then times `python -m sweeps.grid` single-process, `--cluster local:1` and
`--cluster local:2`, each into a fresh cube. Reports wall seconds, configuration-ticks per
second (in and out of sample together) and the ratio to the single-process run, and checks
that every cube equals the single-process one.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """
[space]
name = "scaling"
thresholds = "std"

[params.signal]
values = ["ofi", "imbalance1", "microprice_bps", "tfi"]

[params.window]
values = [10, 100, 1000]

[params.entry]
values = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]

[params.exit]
values = [0.0, 1.0, 2.0]

[params.side]
values = [-1, 0, 1]

[params.take_profit]
values = [30.0, 100.0, 300.0, 1000.0]

[params.stop_loss]
value = 100.0
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--configs-per-region", type=int, default=256)
    args = ap.parse_args(argv)
    import xarray as xr

    from gpu_engine.data.books.store import load

    with tempfile.TemporaryDirectory(prefix="grid-scaling-") as tmp:
        d = Path(tmp)
        env = dict(os.environ, GPU_ENGINE_CACHE_DIR=str(d / "cache"))
        (d / "space.toml").write_text(SPACE)
        store = d / "book.zarr"
        subprocess.run([sys.executable, "-m", "gpu_engine.data", "synth", "--hours", str(args.hours),
                        "--seed", "0", "--out", str(store)], env=env, check=True, capture_output=True)
        T = load(store).T

        def grid(tag: str, *extra) -> float:
            cmd = [sys.executable, "-m", "sweeps.grid", "--space", str(d / "space.toml"), "--data", str(store),
                   "--device", "cpu", "--no-progress", "--no-html", "--batch", str(args.configs_per_region),
                   "--out", str(d / f"{tag}.zarr"), *extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
            return time.perf_counter() - t0

        grid("warm")  # compiles the kernel, builds the bank (cached for the timed runs)
        runs = [("one process", grid("single")), ("Dask local:1", grid("dask1", "--cluster", "local:1")),
                ("Dask local:2", grid("dask2", "--cluster", "local:2"))]
        ref = xr.open_zarr(d / "single.zarr").drop_attrs()
        n = 1
        for name, size in ref.sizes.items():
            if name != "bucket":
                n *= size
        for tag in ("dask1", "dask2"):
            xr.testing.assert_identical(xr.open_zarr(d / f"{tag}.zarr").drop_attrs(), ref)
    print(f"{n} configurations x {T} ticks (in + out of sample), regions of {args.configs_per_region}, "
          f"{os.cpu_count()} cores; cubes identical")
    print("| run | wall (s) | config-ticks/s | vs one process |")
    print("|---|---:|---:|---:|")
    base = runs[0][1]
    for name, wall in runs:
        print(f"| {name} | {wall:.1f} | {n * T / wall:.3g} | {base / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
