"""Dask execution of a grid sweep: each region of the cube is one task on a Dask worker.

    python -m sweeps.grid ... --cluster local:N           # a LocalCluster of N worker processes
    python -m sweeps.grid ... --scheduler tcp://HOST:PORT  # the workers of a running scheduler

The client (sweeps.grid) writes the cube's template, then submits one task per region not yet
done. A task loads the data once per worker process (kept for the worker's next tasks), runs
`grid.evaluate_region` (the same code as a single-process run) and writes its own region and
its done-flag into the Zarr cube; regions are whole chunks and each done-flag is its own chunk,
so no two tasks write the same file. A task whose worker dies is run again on another worker
(Dask's own rescheduling, plus `RETRIES` retries of a task that raised); an interrupted run
resumes from the regions written, as a single-process run does. The final cube equals a
single-process run's, bit for bit.

Every worker must see `--out`, `--data`, `--blocks` and `--space` at the same paths (one
machine, or a shared filesystem). Each local worker runs numba with cores / N threads.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from gpu_engine.errors import InputError

RETRIES = 2
# Test hook: the first task to see this path absent creates it and kills its worker process.
KILL_WORKER_ENV = "SWEEPS_GRID_KILL_WORKER_ONCE"

_WORKER_DATA: dict = {}


def check_args(args) -> None:
    if args.cluster is not None:
        m = re.fullmatch(r"local:(\d+)", args.cluster.strip())
        if not m or not 1 <= int(m.group(1)) <= 1024:
            raise InputError(f"--cluster: value {args.cluster!r} must be local:N with N workers, 1 <= N <= 1024")
    if args.scheduler is not None and not re.fullmatch(r"(tcp|tls|inproc|ws|wss)://\S+", args.scheduler.strip()):
        raise InputError(f"--scheduler: value {args.scheduler!r} must be an address like tcp://HOST:8786")


def connect(args):
    """(client, cluster or None) for --cluster / --scheduler."""
    from distributed import Client, LocalCluster

    if args.scheduler:
        try:
            return Client(args.scheduler.strip(), timeout="5s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler: cannot reach {args.scheduler}: {exc}") from None
    n = int(args.cluster.split(":")[1])
    threads = max(1, (os.cpu_count() or 1) // n)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           env={"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    return Client(cluster), cluster


def _job(args) -> dict:
    """What a worker needs to rebuild the sweep's context (plain, picklable values)."""
    return {"args": vars(args).copy()}


def _context(job: dict):
    """(out, dims, axes, space, data, cost, args) of this job, loaded once per worker process."""
    import argparse

    from gpu_engine import space as space_mod
    from sweeps import _common

    a = job["args"]
    key = repr(sorted(a.items()))
    ctx = _WORKER_DATA.get(key)
    if ctx is None:
        _WORKER_DATA.clear()  # one sweep's data at a time per worker
        args = argparse.Namespace(**a)
        space = space_mod.load(args.space)
        axes = space.grid_axes()
        dims = [n for n, v in axes.items() if len(v) > 1]
        data = _common.load_data(args, space, log=lambda *x: None)
        cost = _common.run_costs(args, space) or _common.run_costs(args, space, data)  # as the main process
        ctx = (Path(args.out), dims, axes, space, data, cost, args)
        _WORKER_DATA[key] = ctx
    return ctx


def region_task(k: int, reg, job: dict) -> int:
    """Evaluate and write region k on a worker; returns its number of configurations."""
    from sweeps import grid

    marker = os.environ.get(KILL_WORKER_ENV)
    if marker and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(137)  # a worker dying mid-task (test hook)
    out, dims, axes, space, data, cost, args = _context(job)
    return grid.evaluate_region(out, k, reg, dims, axes, space, data, cost, args)


def run_regions(connection, args, todo: list[int], regions: list, fingerprint: str, bar,
                stop_after: int = 0) -> int:
    """Run the regions `todo` as Dask tasks on `connection` (from `connect`, closed here);
    returns how many were written in this run."""
    from distributed import as_completed

    client, cluster = connection
    written = 0
    try:
        job = _job(args)
        futures = [client.submit(region_task, k, regions[k], job, key=f"grid-{fingerprint[:12]}-region-{k}",
                                 retries=RETRIES, pure=False) for k in todo]
        for fut in as_completed(futures):
            bar.update(fut.result())
            written += 1
            if stop_after and written >= stop_after:
                bar.close()
                os._exit(137)  # simulated kill -9 of the client (test hook)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return written
