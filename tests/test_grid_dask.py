"""Grid sweeps as Dask tasks (sweeps/grid_dask.py): the cube equals a single-process run's, a
worker killed mid-task loses nothing, an interrupted run resumes from the regions written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from sweeps import grid, grid_dask
from tests.test_sweeps_cli import _args, tiny  # noqa: F401  (tiny: the shared store fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ref") / "single.zarr"
    assert grid.main(["--space", tiny["space"], "--out", str(out), "--batch", "4", "--no-html", *_args(tiny)]) == 0
    return out


def same_cube(a: Path, b: Path) -> None:
    xr.testing.assert_identical(xr.open_zarr(a).drop_attrs(), xr.open_zarr(b).drop_attrs())


def _run(tiny, out: Path, *extra, env=None):  # noqa: F811
    argv = [sys.executable, "-m", "sweeps.grid", "--space", tiny["space"], "--out", str(out), "--batch", "4",
            "--no-html", *_args(tiny), *extra]
    return subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


def test_local_cluster_with_a_worker_killed_equals_single_process(tiny, reference, tmp_path):  # noqa: F811
    marker = tmp_path / "killed-once"
    out = tmp_path / "dask.zarr"
    r = _run(tiny, out, "--cluster", "local:2", env={grid_dask.KILL_WORKER_ENV: str(marker)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.exists(), "the test hook never killed a worker"
    same_cube(out, reference)
    assert xr.open_zarr(out).attrs["complete"] is True


def test_interrupted_dask_run_resumes_from_the_regions_written(tiny, reference, tmp_path):  # noqa: F811
    out = tmp_path / "k.zarr"
    killed = _run(tiny, out, "--cluster", "local:2", env={grid.STOP_AFTER_ENV: "2"})
    assert killed.returncode == 137, killed.stderr[-3000:]
    again = _run(tiny, out, "--cluster", "local:1")
    assert again.returncode == 0, again.stderr[-3000:]
    n_resumed = int(again.stdout.split(" resumed")[0].rsplit(", ", 1)[1])
    assert n_resumed >= 2
    same_cube(out, reference)


@pytest.mark.parametrize("flag, value, word", [
    ("--cluster", "local:0", "local:N"),
    ("--cluster", "remote:2", "local:N"),
    ("--scheduler", "nonsense", "tcp://"),
])
def test_bad_cluster_flags_are_one_line(tiny, tmp_path, capsys, flag, value, word):  # noqa: F811
    rc = grid.main(["--space", tiny["space"], "--out", str(tmp_path / "x.zarr"), flag, value, *_args(tiny)])
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and word in err and "Traceback" not in err
    assert not (tmp_path / "x.zarr").exists()


def test_unreachable_scheduler_is_one_line(tiny, tmp_path, capsys):  # noqa: F811
    rc = grid.main(["--space", tiny["space"], "--out", str(tmp_path / "x.zarr"), "--scheduler",
                    "tcp://127.0.0.1:9", *_args(tiny)])
    err = capsys.readouterr().err
    assert rc == 2 and "--scheduler" in err and "Traceback" not in err
