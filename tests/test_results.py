"""Result cubes: atomic whole-cube writes, region-by-region writes, provenance, plain-xarray reads."""
from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from gpu_engine import results
from gpu_engine import space as space_mod


def test_write_cube_roundtrip_and_replace(tmp_path):
    ds = xr.Dataset({"win_rate": (("trial", "config"), np.arange(6.0).reshape(2, 3))},
                    coords={"trial": [0, 1], "signal": ("trial", ["ofi", "imbalance1"])},
                    attrs={"costs": {"fee_bps": 10.0}, "band": np.inf, "n": np.int64(3)})
    p = tmp_path / "c.zarr"
    results.write_cube(ds, p)
    back = xr.open_zarr(p)  # plain xarray, format 2 + consolidated metadata
    assert zarr.open_group(str(p), mode="r").metadata.zarr_format == 2
    xr.testing.assert_equal(back.compute(), ds)
    assert back.attrs == {"costs": {"fee_bps": 10.0}, "band": "inf", "n": 3}
    results.write_cube(ds * 2, p)  # replaces atomically
    np.testing.assert_array_equal(xr.open_zarr(p)["win_rate"].values, ds["win_rate"].values * 2)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.zarr"]  # no temp or old copies left


def test_regions_and_completion_record(tmp_path):
    tmpl = xr.Dataset({"x": (("a", "b"), da.full((4, 3), np.nan, chunks=(1, 3)))},
                      coords={"a": np.arange(4), "b": [0.5, 1.0, 2.0]})
    p = tmp_path / "g.zarr"
    results.create_template(tmpl, p, 4, {"kind": "grid"})
    assert results.done_regions(p).tolist() == []
    assert results.read_attrs(p)["complete"] is False
    for k in (2, 0):
        part = xr.Dataset({"x": (("a", "b"), np.full((1, 3), float(k)))})
        results.write_region(p, part, {"a": slice(k, k + 1), "b": slice(0, 3)}, k)
    assert results.done_regions(p).tolist() == [0, 2]
    x = xr.open_zarr(p)["x"].values
    np.testing.assert_array_equal(x[[0, 2]], [[0, 0, 0], [2, 2, 2]])
    assert np.isnan(x[[1, 3]]).all()
    results.finish(p, wall_s=1.5)
    ds = xr.open_zarr(p)
    assert ds.attrs["complete"] is True and ds.attrs["wall_s"] == 1.5


def test_provenance_hashes_files_and_stores(tmp_path):
    f = tmp_path / "blocks.npy"
    f.write_bytes(b"abc")
    d = tmp_path / "book.zarr"
    (d / "ts").mkdir(parents=True)
    (d / "ts" / "0").write_bytes(b"123")
    h1 = results.sha256_path(d)
    (d / "ts" / "0").write_bytes(b"124")
    assert results.sha256_path(d) != h1
    a = results.provenance(kind="grid", data={"book": d, "blocks": f}, space=space_mod.load(),
                           costs={"fee_bps": 10.0}, device="cpu", wall_s=2.0, seed=np.int64(1))
    assert a["data"]["blocks"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    for key in ("space", "space_sha256", "costs", "device", "engine_version", "wall_s", "created_utc"):
        assert key in a
    assert a["seed"] == 1 and isinstance(a["seed"], int)


def test_write_cube_replaces_a_file_and_leaves_no_temporaries(tmp_path):
    """(shutil.rmtree(old, ignore_errors=True) used to leave a replaced *file* behind silently.)"""
    from gpu_engine import outputs

    p = tmp_path / "c.zarr"
    p.write_text("claimed by the caller with --overwrite")
    ds = xr.Dataset({"x": ("a", np.arange(3.0))})
    results.write_cube(ds, p)
    assert p.is_dir() and sorted(q.name for q in tmp_path.iterdir()) == ["c.zarr"]
    tmpl = xr.Dataset({"x": (("a",), da.full((4,), np.nan, chunks=(2,)))})
    results.create_template(tmpl, p, 2, {"kind": "grid"})  # over the cube: moved into place, old one gone
    assert results.read_attrs(p)["complete"] is False
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.zarr"]
    assert not outputs.tmp_sibling(p).exists()
