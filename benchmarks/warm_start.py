"""Cold and warm start of the main job: how long a process spends before its first kernel runs.

    python benchmarks/warm_start.py [--trials 64] [--runs 3]

Runs `python -m sweeps.optimize` (the README's main job, with fewer trials: the trial count
does not change the startup) in fresh processes against a fresh cache folder: the first run
compiles the kernel and builds the feature bank (cold), the next ones run the same search with
other seeds (warm: each is a second process's first sweep, with the kernel and the bank cached;
a search runs its first kernel before anything else of note, while the same command run again on
a complete study first re-reads its cube, and its first kernel is the out-of-sample re-evaluation
at the end). Each process
prints `startup: the first kernel ran X s after the process began`; this script collects
those lines and the wall times. The default data is generated once beforehand (not timed).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTUP = re.compile(r"startup: the first kernel ran ([0-9.]+) s after the process began "
                     r"\(inputs ready at ([0-9.]+) s, kernel loaded in ([0-9.]+) s\)")


def run_once(workdir: Path, env: dict, trials: int, tag: str, seed: int = 0) -> dict:
    cmd = [sys.executable, "-m", "sweeps.optimize", "--trials", str(trials), "--batch", str(trials),
           "--device", "cpu", "--no-html", "--no-progress", "--seed", str(seed),
           "--out", str(workdir / f"{tag}.zarr"), "--storage", str(workdir / f"{tag}.journal")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    m = STARTUP.search(proc.stdout)
    if m is None:
        sys.exit(f"no startup line in the output of {' '.join(cmd)}")
    first, ready, load = map(float, m.groups())
    return {"first": first, "ready": ready, "load": load, "wall": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3, help="warm runs after the cold one")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        workdir = Path(tmp)
        env = dict(os.environ, GPU_ENGINE_CACHE_DIR=str(workdir / "cache"))
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        # generate the default data untimed: a run with the cache switched off builds it
        run_once(workdir, dict(env, GPU_ENGINE_CACHE_DIR="off"), 8, "data")
        cold = run_once(workdir, env, args.trials, "job0")
        warm = [run_once(workdir, env, args.trials, f"job{i}", seed=i) for i in range(1, args.runs + 1)]
    print("| run | first kernel after (s) | inputs ready (s) | kernel load (s) | wall (s) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| cold (empty cache) | {cold['first']:.2f} | {cold['ready']:.2f} | {cold['load']:.2f} | {cold['wall']:.1f} |")
    for i, w in enumerate(warm, 1):
        print(f"| warm #{i} | {w['first']:.2f} | {w['ready']:.2f} | {w['load']:.2f} | {w['wall']:.1f} |")
    med = statistics.median(w["first"] for w in warm)
    print(f"\nwarm median: first kernel {med:.2f} s after the process began "
          f"({'under' if med < 2.0 else 'NOT under'} the 2 s bar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
