"""Optuna's share of the search: ask + tell per batch next to the kernel, at the default settings.

    python benchmarks/bench_optuna.py [--samplers tpe,nsga2,random,qmc,cmaes] [--trials 160] [--batch 32]
                                      [--cube results/default-sharpe-tpe-s0.zarr]

Part 1 asks and tells each sampler alone on the default space (the objective is a
fixed pseudo-random number, so only Optuna's own cost is timed), batch by batch.
Part 2 reads the per-batch timings that `python -m sweeps.optimize` stored in
its cube (ask with the suggestions, kernel evaluation, tell) and prints the
Optuna share of each batch. Results go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def bench_sampler(name: str, trials: int, batch: int, seed: int = 0) -> list[dict]:
    import optuna

    from gpu_engine import space as space_mod
    from sweeps.optimize import CONSTRAINTS, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space_mod.load()
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed, batch))
    rng = np.random.default_rng(seed)
    rows = []
    done = 0
    while done < trials:
        k = min(batch, trials - done)
        t0 = time.perf_counter()
        ts = [study.ask() for _ in range(k)]
        for t in ts:
            space.suggest(t)
        t1 = time.perf_counter()
        for t in ts:
            for c in CONSTRAINTS:
                t.set_constraint(c, float(rng.normal()))
            study.tell(t, float(rng.normal()))
        t2 = time.perf_counter()
        rows.append({"after": done, "trials": k, "ask_ms": 1e3 * (t1 - t0) / k, "tell_ms": 1e3 * (t2 - t1) / k})
        done += k
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samplers", default="tpe,nsga2,random,qmc,cmaes")
    p.add_argument("--trials", type=int, default=160)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cube", default=None, help="an optimize cube to read per-batch timings from")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out = {}
    for s in a.samplers.split(","):
        rows = bench_sampler(s, a.trials, a.batch)
        out[s] = rows
        if not a.json:
            per = ", ".join(f"{r['ask_ms'] + r['tell_ms']:.2f}" for r in rows)
            print(f"{s:7s} ask+tell ms/trial per batch of {a.batch}: {per}")
    if a.cube:
        import xarray as xr

        attrs = xr.open_zarr(a.cube).attrs
        out["cube"] = {"batches": attrs["batches"], "optuna_share": attrs["optuna_share"],
                       "wall_s": attrs["wall_s"], "data_prep_s": attrs.get("data_prep_s")}
        if not a.json:
            print(f"cube {a.cube}: sampler {attrs['sampler']}, {attrs['n_trials']} trials, "
                  f"{attrs['n_configs']} configurations, wall {attrs['wall_s']:.1f} s")
            print("batch  trials  configs   ask_s  eval_s  tell_s  optuna%")
            for i, b in enumerate(attrs["batches"]):
                print(f"{i:5d}  {b['trials']:6d}  {b['configs']:7d}  {b['ask_s']:6.3f}  {b['eval_s']:6.2f}  "
                      f"{b['tell_s']:6.3f}  {100 * b['optuna_share']:6.2f}")
            print(f"overall Optuna share of the search loop: {100 * attrs['optuna_share']:.2f}%")
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
