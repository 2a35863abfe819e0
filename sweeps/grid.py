"""`python -m sweeps.grid`: every point of a space, in batches, into a Zarr cube written region by region.

    python -m sweeps.grid --space FILE --data STORE [--blocks PATH] [--device auto] --out CUBE.zarr [--overwrite]

The cube has one dimension per swept parameter (file order); parameters with a
single value are scalar coordinates. Every point is evaluated in sample and out
of sample (gpu_engine/results.py names the variables). The cube is chunked so
that each region is a block of whole chunks; a template is written first
(`compute=False`), then each region with `to_zarr(region=...)`, then its flag in
`region_done`. Running the same command again after an interruption skips the
finished regions, and the cube ends equal to an uninterrupted run's.

The contract, queue model and fees come from the flags or the store's attrs as in
sweeps.optimize (sweeps/market_settings.py): printed, part of the fingerprint and of the cube's
`costs`, checked before anything is written.

`--cluster local:N` or `--scheduler tcp://HOST:PORT` runs the regions as Dask tasks
(sweeps/grid_dask.py): each task writes its own region, a task whose worker dies is run
again elsewhere, and the cube equals a single-process run's.

An existing `--out` is checked before any data is loaded: the same sweep (same
fingerprint: space, data, blocks, costs, split, batch) is resumed; anything
else is refused (exit 2) unless `--overwrite`, and even then only a result cube
of this engine is replaced, never a user's folder or file. `--out` may never be,
contain or lie inside `--data`, `--blocks` or `--space`. Stale temporaries of
`--out` (`.NAME.tmp-PID` of a dead process) are removed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from gpu_engine import kernels, outputs, results
from gpu_engine import space as space_mod
from gpu_engine.errors import InputError
from gpu_engine.enums import METRICS
from sweeps import _common, market_settings

# Test hook: abort the process (like kill -9) after this many regions were written in this run.
STOP_AFTER_ENV = "SWEEPS_GRID_STOP_AFTER"


def build_parser():
    p = _common.Parser(prog="python -m sweeps.grid", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="space file (TOML, gpu_engine/space.py)")
    p.add_argument("--out", required=True, help="cube path (.zarr)")
    p.add_argument("--batch", type=int, default=8192, help="configurations per region/launch (default %(default)s)")
    _common.add_overwrite_arg(p)
    p.add_argument("--no-html", action="store_true", help="do not write the report page <out>.html beside the cube")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cluster", default=None, metavar="local:N",
                   help="run the regions as Dask tasks on a local cluster of N worker processes")
    g.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run the regions as Dask tasks on the workers of this Dask scheduler "
                        "(every worker must see --out, --data, --blocks and --space at the same paths)")
    _common.add_data_args(p)
    return p


def plan_regions(shape: tuple[int, ...], batch: int) -> tuple[tuple[int, ...], list[tuple[slice, ...]]]:
    """Chunk sizes and the regions (tuples of slices, whole chunks) covering `shape`.

    Trailing dimensions are kept whole while their product fits in `batch`; the next one
    is cut into chunks of as many rows as fit; leading dimensions are cut one by one.
    """
    k = len(shape)
    inner = 1
    j = k
    while j > 0 and inner * shape[j - 1] <= batch:
        inner *= shape[j - 1]
        j -= 1
    chunks = [1] * k
    for d in range(j, k):
        chunks[d] = shape[d]
    if j > 0:
        chunks[j - 1] = max(1, min(shape[j - 1], batch // inner))
    ranges = []
    for d in range(k):
        c = chunks[d]
        ranges.append([slice(a, min(a + c, shape[d])) for a in range(0, shape[d], c)])
    return tuple(chunks), list(itertools.product(*ranges))


def fingerprint(space, book_path: Path, blocks_path: Path, cost: dict, args) -> str:
    h = hashlib.sha256()
    h.update(space.text.encode())
    h.update(json.dumps({"costs": cost, "buckets": args.buckets, "is_frac": args.is_frac,
                         "purge_frac": args.purge_frac, "batch": args.batch}, sort_keys=True).encode())
    h.update(results.sha256_path(book_path).encode())
    h.update(results.sha256_path(blocks_path).encode())
    return h.hexdigest()


def _grid_fingerprint_of(out: Path) -> str | None:
    """The fingerprint of the grid cube at `out`, None when it is not a grid cube of ours."""
    if not outputs.is_ours(out, "cube") or not (out / "region_done").exists():
        return None
    try:
        attrs = results.read_attrs(out)
    except Exception:
        return None
    return attrs.get("fingerprint") if attrs.get("kind") == "grid" else None


def _template(axes: dict, dims: list[str], chunks: tuple, buckets: int) -> xr.Dataset:
    import dask.array as da

    shape = tuple(len(axes[d]) for d in dims)
    coords = {d: np.asarray(axes[d]) for d in dims}
    for name, vals in axes.items():
        if name not in dims:
            coords[name] = np.asarray(vals[0])
    data_vars = {}
    for m in METRICS:
        for name in (m, f"oos_{m}"):
            data_vars[name] = (dims, da.full(shape, np.nan, chunks=chunks, dtype=np.float64))
    data_vars["bucket_pnl"] = (dims + ["bucket"],
                               da.full(shape + (buckets,), np.nan, chunks=chunks + (buckets,), dtype=np.float64))
    ds = xr.Dataset(data_vars, coords=coords)
    ds["bucket"] = np.arange(buckets)
    return ds


def run(args) -> int:
    t_start = time.perf_counter()
    _common.check_args(args)
    if args.batch < 1:
        raise InputError(f"--batch: value {args.batch!r} must be >= 1")
    if args.cluster or args.scheduler:
        from sweeps import grid_dask

        grid_dask.check_args(args)
    space = space_mod.load(args.space)
    space_mod.feature_spec(space)  # unknown signal names
    axes = space.grid_axes()
    dims = [n for n, v in axes.items() if len(v) > 1]
    if not dims:
        raise InputError.at(space.path, None, "params", "nothing to sweep: every parameter has one value")
    out = Path(args.out)
    book_path, blocks_path = _common.data_paths(args)
    cost = _common.run_costs(args, space)  # None: the default store is generated below
    inputs = _common.input_paths(args, space)
    _common.refuse_inputs(out, "--out", inputs)
    fp = None
    resume = False
    if out.exists() or out.is_symlink():
        old_fp = _grid_fingerprint_of(out)
        if old_fp is not None and cost is not None and book_path.exists() and blocks_path.exists():
            fp = fingerprint(space, book_path, blocks_path, cost, args)
            resume = old_fp == fp
        if not resume and not args.overwrite:
            if old_fp is not None:
                raise InputError(f"{out}: --out: holds a different sweep (space, data, blocks, costs, split or "
                                 "batch differ); pass --overwrite to replace it or choose another path")
            raise InputError(f"{out}: --out: already exists and is not this grid's cube; "
                             "choose another path (or --overwrite to replace a result cube)")
    outputs.claim_output(out, "--out", kind="cube", overwrite=args.overwrite or resume,
                         inputs=inputs)
    log = (lambda *a: None) if args.no_progress else print
    dask_client = None
    if args.cluster or args.scheduler:
        from sweeps import grid_dask

        dask_client = grid_dask.connect(args)  # before anything is written: an unreachable scheduler costs nothing
    if args.device != "cuda":
        kernels.preload_cpu()  # overlaps the data loading; a no-op when the kernel is not cached
    data = _common.load_data(args, space, log=log)
    if cost is None:
        cost = _common.run_costs(args, space, data)
    for line in market_settings.describe(cost):
        print(line)
    if fp is None:
        fp = fingerprint(space, data.book_path, data.blocks_path, cost, args)
    shape = tuple(len(axes[d]) for d in dims)
    chunks, regions = plan_regions(shape, args.batch)
    total = int(np.prod(shape))

    if resume:
        done = set(results.done_regions(out).tolist())
    else:
        attrs = results.provenance(
            kind="grid", data={"book": data.book_path, "blocks": data.blocks_path}, space=space, costs=cost,
            **_common.data_set_attrs(data),
            device=data.device, fingerprint=fp, split=data.split.as_attrs(), buckets=args.buckets,
            thresholds=space.thresholds, dims=dims, n_configs=total)
        results.create_template(_template(axes, dims, chunks, args.buckets), out, len(regions), attrs)
        done = set()

    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    todo = [k for k in range(len(regions)) if k not in done]
    done_cfg = sum(_size(regions[k]) for k in done)
    bar = _common.WarmBar(total, "cfg", args.no_progress, initial=done_cfg, desc="grid")
    written = 0
    if dask_client is not None:
        written = grid_dask.run_regions(dask_client, args, todo, regions, fp, bar, stop_after)
    for k in ([] if dask_client is not None else todo):
        bar.update(evaluate_region(out, k, regions[k], dims, axes, space, data, cost, args))
        written += 1
        if stop_after and written >= stop_after:
            bar.close()
            os._exit(137)  # simulated kill -9: no clean-up, no final attrs
    bar.close()
    from sweeps import inspect as inspect_mod

    _common.done_with_data()
    st = inspect_mod.search_stats(results.open_cube(out))  # PBO, DSR, effective trials, SPA
    wall = time.perf_counter() - t_start
    results.finish(out, wall_s=wall, search_stats=inspect_mod.stats_attrs(st))
    print(f"grid: {total} configurations in {len(regions)} regions ({len(todo)} evaluated in this run, "
          f"{len(done)} resumed) -> {out}  [{wall:.1f} s, device {data.device}]")
    print(f"inspect: python -m sweeps.inspect {out}")
    if not args.no_html:
        from sweeps import report_html

        report_html.write_beside(out, stats=st)
    return 0


def region_points(reg, dims: list[str], axes: dict) -> dict[str, np.ndarray]:
    """The space points of one region, in C order over its dimensions."""
    idx = [np.arange(s.start, s.stop) for s in reg]
    mesh = np.meshgrid(*idx, indexing="ij")
    points = {}
    for name, vals in axes.items():
        if name in dims:
            points[name] = np.asarray(vals)[mesh[dims.index(name)].ravel()]
        else:
            points[name] = np.asarray([vals[0]] * mesh[0].size)
    return points


def evaluate_region(out: Path, k: int, reg, dims: list[str], axes: dict, space, data, cost: dict, args) -> int:
    """Evaluate region k in and out of sample and write it into the cube (its done-flag last).
    Returns the number of configurations. The same code runs in this process and in Dask workers."""
    fields = _common.configs_for(space, region_points(reg, dims, axes), data, cost)
    rshape = tuple(s.stop - s.start for s in reg)
    m_is, b_is = _common.evaluate(data, "is", fields, args.device, args.buckets, cost)
    m_oos, _ = _common.evaluate(data, "oos", fields, args.device, args.buckets, cost)
    part = {}
    for i, m in enumerate(METRICS):
        part[m] = (dims, m_is[:, i].reshape(rshape))
        part[f"oos_{m}"] = (dims, m_oos[:, i].reshape(rshape))
    part["bucket_pnl"] = (dims + ["bucket"], b_is.reshape(rshape + (args.buckets,)))
    region = {d: s for d, s in zip(dims, reg)}
    region["bucket"] = slice(0, args.buckets)
    results.write_region(out, xr.Dataset(part), region, k)
    return _size(reg)


def _size(reg) -> int:
    return int(np.prod([s.stop - s.start for s in reg]))


def main(argv=None) -> int:
    return _common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
