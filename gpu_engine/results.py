"""Result cubes: xarray Datasets <-> Zarr stores, with the provenance needed to reproduce them.

Layout:

- grid cube (`attrs["kind"] == "grid"`): one dimension per swept parameter (file
  order), single-valued parameters as scalar coordinates, `bucket` for the
  per-bucket PnL, and `region` for the completion record `region_done`.
- optimize cube (`attrs["kind"] == "optimize"`): dimensions `trial` (one per
  completed Optuna trial) and `config` (the trial's dense neighbourhood);
  coarse parameters are coordinates on `trial`, dense ones on (trial, config).

Variables in both: one per `enums.METRICS` name = the **in-sample** figure;
`oos_<metric>` = the same metric **out of sample** (NaN where a configuration
was not re-evaluated out of sample; `oos_evaluated` says which were);
`bucket_pnl` = in-sample realised PnL per time bucket (for PBO, DSR, walk-forward).

Format: Zarr format 2 with consolidated metadata: a format-3 store
opened by a plain `xr.open_zarr(path)` warns and falls back to a slow listing
unless the caller passes `consolidated=False`, and format 3 writes many more
files per chunk; format 2 + consolidated metadata opens silently and fast with
no project code. Compressor: Blosc zstd level 3 with bit-shuffle.

Whole cubes are written to a temporary sibling (`outputs.tmp_sibling`,
`.NAME.tmp-PID`) and moved into place (`outputs.replace_with`); grid cubes are
written region by region into a template (`create_template`, `write_region`),
and `region_done` records finished regions, so a crash never leaves a cube that
looks whole (`attrs["complete"]` is set last). Whether a path may be written at
all (an existing output, a user's folder, the command's own input) is decided
by the caller with `outputs.claim_output` before any work.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import time
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from gpu_engine import outputs

ZARR_FORMAT = 2
CONSOLIDATED = True


def engine_version() -> str:
    try:
        return importlib.metadata.version("gpu-sweep-engine")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "unknown"


def _compressor():
    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def encoding_for(ds: xr.Dataset) -> dict:
    return {name: {"compressors": (_compressor(),)} for name in ds.data_vars}


# ---------------------------------------------------------------- provenance

def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory tree (relative paths and contents, sorted); remembered
    on disk per version of the files (gpu_engine.feature_cache.sha256_path), so a warm start does
    not read the data twice."""
    from gpu_engine import feature_cache

    return feature_cache.sha256_path(Path(path), _sha256_path)


def _sha256_path(path: Path) -> str:
    if not path.exists() and ("," in str(path) or any(ch in str(path) for ch in "*?[")):
        from gpu_engine.data.books import collection  # a data set of several stores (--data A,B or a glob)

        h = hashlib.sha256()
        for store in collection.check(collection.resolve(str(path)))[0]:
            h.update(str(store.path.name).encode() + b"\0" + _sha256_path(store.path).encode())
        return h.hexdigest()
    return _sha256_tree(path)


def _sha256_tree(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0")
            _hash_file(h, p)
    else:
        _hash_file(h, path)
    return h.hexdigest()


def _hash_file(h, p: Path) -> None:
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def jsonable(value: Any) -> Any:
    """Attrs Zarr can store as JSON: numpy scalars -> Python, inf/nan -> strings, paths -> str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def provenance(*, kind: str, data: dict[str, str | Path | None], space, costs: dict, device: str,
               wall_s: float | None = None, **extra) -> dict:
    """The attrs every cube carries: data hashes, space, cost model, device, engine version, wall time."""
    files = {}
    for role, p in data.items():
        if p is None:
            continue
        files[role] = {"path": str(p), "sha256": sha256_path(p)}
    attrs = {
        "kind": kind,
        "data": files,
        "space": space.text,
        "space_name": space.name,
        "space_path": str(space.path),
        "space_sha256": space.sha256,
        "costs": costs,
        "device": device,
        "engine_version": engine_version(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": wall_s,
        **extra,
    }
    return jsonable(attrs)


# ---------------------------------------------------------------- whole cubes

def write_cube(ds: xr.Dataset, path: str | Path) -> Path:
    """Write `ds` to a temporary sibling store, then move it over `path` (claimed by the caller)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = outputs.tmp_sibling(path)
    outputs.remove_path(tmp)
    ds = ds.copy()
    ds.attrs = jsonable(ds.attrs)
    try:
        ds.to_zarr(tmp, mode="w", zarr_format=ZARR_FORMAT, consolidated=CONSOLIDATED, encoding=encoding_for(ds))
        outputs.replace_with(tmp, path)
    finally:
        outputs.remove_path(tmp)  # only left when writing failed
    return path


def open_cube(path: str | Path) -> xr.Dataset:
    """Open a cube lazily (exactly what `xr.open_zarr(path)` does)."""
    import xarray as xr

    return xr.open_zarr(path)


# ---------------------------------------------------------------- region-by-region (grid)

def create_template(ds: xr.Dataset, path: str | Path, n_regions: int, attrs: dict) -> Path:
    """Write the metadata of `ds` (dask-backed variables are not computed) plus `region_done`.

    The template is built in a temporary sibling and moved into place (replacing what stands at
    `path`, already claimed by the caller), so `path` is either what it was or a complete template.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = outputs.tmp_sibling(path)
    outputs.remove_path(tmp)
    ds = ds.copy()
    ds["region_done"] = ("region", np.zeros(n_regions, np.uint8))
    ds.attrs = jsonable({**attrs, "complete": False, "n_regions": int(n_regions)})
    encoding = encoding_for(ds)
    # one chunk per flag: tasks on several processes (sweeps/grid_dask.py) each write their own
    encoding["region_done"]["chunks"] = (1,)
    try:
        ds.to_zarr(tmp, mode="w", compute=False, zarr_format=ZARR_FORMAT, consolidated=CONSOLIDATED,
                   encoding=encoding)
        outputs.replace_with(tmp, path)
    finally:
        outputs.remove_path(tmp)
    return path


def done_regions(path: str | Path) -> np.ndarray:
    """Indices of regions already written (read straight from the store, no cache)."""
    arr = zarr.open_array(str(Path(path) / "region_done"), mode="r")
    return np.flatnonzero(arr[:])


def write_region(path: str | Path, part: xr.Dataset, region: dict[str, slice], k: int) -> None:
    """Write one region's variables, then mark region k done (the mark comes last)."""
    part = part.drop_vars([c for c in part.coords], errors="ignore")
    part.to_zarr(path, region=region, mode="r+")
    arr = zarr.open_array(str(Path(path) / "region_done"), mode="r+")
    arr[k] = 1


def finish(path: str | Path, **attrs) -> None:
    """Set final attrs (wall time, complete = True) and re-consolidate the metadata."""
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update(jsonable({**attrs, "complete": True}))
    zarr.consolidate_metadata(str(path))


def read_attrs(path: str | Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs)
