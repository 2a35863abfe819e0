"""`sweeps.inspect.search_stats` read block by block equals the statistics over the whole matrix.

The reference is the one-shot computation search_stats did before it read the cube in blocks
(the whole [buckets, configurations] matrix: validation.deflated_sharpe_of_search, np.unique,
trial_stats, validation.pbo, validation.walk_forward); every figure must have the same bits,
for several block sizes, on random cubes with unusable configurations (NaN buckets) and copies
of one series, in both walk-forward branches (all series, or the distinct ones).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import xarray as xr

from gpu_engine import validation
from sweeps import inspect


def _cube(seed: int, shape=(6, 5, 7), buckets: int = 32, capital: float = 1000.0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    pnl = rng.standard_normal(shape + (buckets,)) * rng.uniform(0.5, 2.0, shape + (1,)) + 0.05
    flat = pnl.reshape(-1, buckets)
    flat[rng.random(flat.shape[0]) < 0.1, rng.integers(buckets)] = np.nan   # unusable configurations
    copies = rng.choice(flat.shape[0], flat.shape[0] // 3, replace=False)
    flat[copies] = flat[copies[0]]                                         # one series many times
    flat[rng.random(flat.shape[0]) < 0.05] = 0.0                            # never traded
    dims = ["a", "b", "c"][: len(shape)]
    coords = {d: np.arange(n) for d, n in zip(dims, shape)}
    return xr.Dataset({"bucket_pnl": (dims + ["bucket"], pnl)}, coords=coords,
                      attrs={"costs": {"capital": capital}, "dims": dims})


def _one_shot(ds: xr.Dataset) -> dict:
    """What search_stats computed from the whole matrix."""
    capital = float(ds.attrs["costs"]["capital"])
    B = ds.sizes["bucket"]
    M = np.asarray(ds["bucket_pnl"].values, dtype=np.float64).reshape(-1, B).T / capital
    M = M[:, np.isfinite(M).all(axis=0)]
    U = np.unique(M, axis=1)
    out = {"n_tried": M.shape[1], "dsr": validation.deflated_sharpe_of_search(M), "n_distinct": int(U.shape[1]),
           "stats": inspect.trial_stats(U, M.shape[1])}
    if U.shape[1] > inspect.MAX_PBO_CONFIGS:
        U = U[:, np.random.default_rng(0).choice(U.shape[1], inspect.MAX_PBO_CONFIGS, replace=False)]
    out["pbo"] = validation.pbo(U, n_splits=16)
    W = M if M.shape[1] <= inspect.MAX_PBO_CONFIGS else U
    out["wf"] = validation.walk_forward(W, n_folds=4, mode="rolling")
    return out


def _bits(x):
    """A comparable form with every float as its bytes (NaN equals NaN, -0.0 differs from 0.0)."""
    if dataclasses.is_dataclass(x):
        return _bits(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {k: _bits(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_bits(v) for v in x]
    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, float):
        return np.float64(x).tobytes()
    return x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_blocks_equal_one_shot(seed, block):
    ds = _cube(seed)
    want = _one_shot(ds)
    got = inspect.search_stats(ds, block=block)
    for key in ("n_tried", "dsr", "n_distinct", "stats", "pbo", "wf"):
        assert _bits(got[key]) == _bits(want[key]), key
    assert not math.isnan(got["dsr"].dsr)


@pytest.mark.parametrize("merge_min", [1, 30])
def test_distinct_series_merged_along_the_way_equal_one_shot(monkeypatch, merge_min):
    """The distinct series merged whenever what waits outgrows what is merged (small blocks and
    a low threshold: many merges) give the one-shot figures."""
    monkeypatch.setattr(inspect, "DISTINCT_MERGE_MIN", merge_min)
    ds = _cube(2)
    want = _one_shot(ds)
    got = inspect.search_stats(ds, block=5)
    for key in ("n_tried", "dsr", "n_distinct", "stats", "pbo", "wf"):
        assert _bits(got[key]) == _bits(want[key]), key


def test_blocks_equal_one_shot_beyond_pbo_cap(monkeypatch):
    """More configurations than MAX_PBO_CONFIGS: PBO on a random subset of the distinct series,
    walk-forward on the distinct series (the blocks are no longer kept)."""
    monkeypatch.setattr(inspect, "MAX_PBO_CONFIGS", 40)
    ds = _cube(2)
    want = _one_shot(ds)
    assert want["n_distinct"] > 40
    got = inspect.search_stats(ds, block=9)
    for key in ("n_tried", "dsr", "n_distinct", "stats", "pbo", "wf"):
        assert _bits(got[key]) == _bits(want[key]), key


def test_lazy_cube_read_in_blocks(tmp_path):
    """A cube on disk (dask-backed, chunked as the grid writes it) gives the in-memory figures."""
    ds = _cube(3)
    ds.chunk({"a": 1, "b": 2}).to_zarr(tmp_path / "c.zarr")
    lazy = xr.open_zarr(tmp_path / "c.zarr")
    assert _bits(inspect.search_stats(lazy, block=11)) == _bits(inspect.search_stats(ds))
