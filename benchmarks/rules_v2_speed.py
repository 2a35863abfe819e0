"""CPU kernel speed of rules v2 against the rules-v1 kernel, in one run, 1 thread.

    python benchmarks/rules_v2_speed.py [--before REV] [--configs 16384] [--ticks 1000000]
                                        [--rounds 3] [--queue power]

Three benches of `python -m gpu_engine.bench --threads 1 --json` on the same synthetic book:

- before: the taker mix on the kernel of git revision REV (default 9467e46, the last commit
  before rules v2), checked out with `git worktree` into a temporary folder;
- after, taker: the taker mix on this checkout's kernel;
- after, maker: the maker mix (`--mix maker`: passive entries, time in force, maker take
  profits, the `--queue` model) on this checkout's kernel.

The three run in turn, `--rounds` times (each bench process compiles or loads its kernel
first, from its own cache folder, and reports the median of its `--repeat` kernel runs), so
that load on a shared machine hits each about equally; the table gives each one's median
over the rounds and the ratio after / before of the taker mix.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(tree: Path, cache: Path, configs: int, ticks: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "gpu_engine.bench", "--threads", "1", "--configs", str(configs),
           "--ticks", str(ticks), "--repeat", "3", "--json", "--no-progress", *extra]
    env = dict(os.environ, PYTHONPATH=str(tree), GPU_ENGINE_CACHE_DIR=str(cache))
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} in {tree} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="9467e46", help="git revision of the rules-v1 kernel")
    ap.add_argument("--configs", type=int, default=16_384)
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queue", default="power", choices=("risk_averse", "power", "log"))
    a = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"before, taker": [], "after, taker": [], "after, maker": []}
    with tempfile.TemporaryDirectory(prefix="rules-v2-speed-") as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.before], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            for r in range(a.rounds):
                for name, tree, extra in (("before, taker", old, []),
                                          ("after, taker", ROOT, ["--mix", "taker"]),
                                          ("after, maker", ROOT, ["--mix", "maker", "--queue", a.queue])):
                    cache = Path(tmp) / ("cache-before" if tree == old else "cache-after")
                    res = bench(tree, cache, a.configs, a.ticks, extra)
                    runs[name].append(res)
                    print(f"round {r + 1}/{a.rounds} {name}: {res['kernel_cts']:.3e} config-ticks/s",
                          file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           capture_output=True)
    med = {k: statistics.median(x["kernel_cts"] for x in v) for k, v in runs.items()}
    print(f"{a.configs:,} configurations x {a.ticks:,} ticks, 1 thread, {a.rounds} rounds "
          f"(median of the rounds' medians of 3 kernel runs); maker queue model {a.queue}")
    print("| bench | kernel config-ticks/s | trades / config | maker fills / config |")
    print("|---|---|---|---|")
    for k, v in runs.items():
        fills = v[-1].get("maker_fills_per_config")
        print(f"| {k} | {med[k]:.3e} | {v[-1]['trades_per_config']:.1f} | "
              f"{'' if fills is None else f'{fills:.1f}'} |")
    ratio = med["after, taker"] / med["before, taker"]
    print(f"taker mix after / before: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)"
          if ratio < 1 else f"taker mix after / before: {ratio:.3f} (not slower)")
    print(f"maker mix: {med['after, maker']:.3e} config-ticks/s "
          f"({'meets' if med['after, maker'] >= 1.5e8 else 'below'} the 1.5e8 bar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
