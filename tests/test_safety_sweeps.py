"""Safety of the sweep CLIs: never destroy a user's data, one line (exit 2) for a user's mistake,
exact resume after a kill, no leftovers, study names that follow the data.

Every refusal is checked the same way (`_refused`): exit 2, one line on stderr, no traceback,
and the directory tree unchanged (nothing created, nothing removed).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gpu_engine import outputs
from sweeps import grid, inspect, optimize
from tests.test_sweeps_cli import Killed, _args, _kill_hook, tiny  # noqa: F401  (tiny: fixture)

REPO = Path(__file__).resolve().parents[1]
# attrs that legitimately differ between an uninterrupted and a killed+resumed run
TIMING_ATTRS = {"wall_s", "created_utc", "batches", "data_prep_s", "optuna_share", "optuna_share_max"}


def _tree(root: Path) -> dict:
    out = {}
    for p in sorted(Path(root).rglob("*")):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


def _refused(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def _opt(tiny, out, journal, *extra):
    return ["--space", tiny["space"], "--out", str(out), "--storage", str(journal), "--trials", "4",
            "--batch", "2", "--sampler", "random", "--min-trades", "1", "--oos-top", "2", *_args(tiny), *extra]


# ------------------------------------------------------------------ never destroy existing data

def test_out_holding_a_users_folder_is_refused_even_with_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        _refused(capsys, optimize.main(_opt(tiny, out, tmp_path / "j.log", *extra)), "--out")
        assert _tree(tmp_path) == before
        _refused(capsys, grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny), *extra]), "--out")
        assert _tree(tmp_path) == before
    f = tmp_path / "file.txt"
    f.write_text("x")
    before = _tree(tmp_path)
    _refused(capsys, optimize.main(_opt(tiny, f, tmp_path / "j.log", "--overwrite")), "--out")
    assert _tree(tmp_path) == before


def test_out_equal_to_inside_or_containing_an_input_is_refused_always(tiny, tmp_path, capsys):
    data = Path(tiny["data"])
    before = _tree(data.parent)
    for out in (data, data / "sub.zarr", data.parent, Path(tiny["blocks"]), Path(tiny["space"])):
        for extra in ([], ["--overwrite"]):
            _refused(capsys, optimize.main(_opt(tiny, out, tmp_path / "j.log", *extra)), "--out", "input")
            _refused(capsys, grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny), *extra]),
                     "--out", "input")
    assert _tree(data.parent) == before
    assert list(tmp_path.iterdir()) == []


def test_out_under_a_file_or_in_a_read_only_dir(tiny, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    before = _tree(tmp_path)
    _refused(capsys, optimize.main(_opt(tiny, f / "c.zarr", tmp_path / "j.log")), "--out")
    _refused(capsys, grid.main(["--space", tiny["space"], "--out", str(f / "c.zarr"), *_args(tiny)]), "--out")
    assert _tree(tmp_path) == before
    if os.geteuid() == 0:
        return  # root writes into read-only directories
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        _refused(capsys, optimize.main(_opt(tiny, ro / "c.zarr", tmp_path / "j.log")), "--out")
    finally:
        ro.chmod(0o755)


def test_grid_overwrite_replaces_only_a_cube_of_ours_and_cleans_stale_temps(tiny, tmp_path, capsys):
    out = tmp_path / "g.zarr"
    assert grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny)]) == 0
    capsys.readouterr()
    before = _tree(tmp_path)
    _refused(capsys, grid.main(["--space", tiny["space"], "--out", str(out), *_args(tiny, "--fee-bps", "5")]),
             "different sweep", "--overwrite")
    assert _tree(tmp_path) == before
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = outputs.tmp_sibling(out, pid=dead.pid)
    stale.mkdir()
    (stale / "junk").write_text("x")
    assert grid.main(["--space", tiny["space"], "--out", str(out), "--overwrite",
                      *_args(tiny, "--fee-bps", "5")]) == 0
    assert xr.open_zarr(out).attrs["costs"]["fee_bps"] == 5.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.html", "g.zarr"]  # + its report page


# ------------------------------------------------------------------ no traceback for a user's mistake

BAD_STORAGE = ["foo://x", "postgresql://nobody@127.0.0.1:1/db", "sqlite:////nonexistent/dir/x.db",
               "{tmp}/file/journal.log", "{tmp}", "{tmp}/file"]


@pytest.mark.parametrize("storage", BAD_STORAGE)
def test_bad_storage_is_one_line_naming_storage(tiny, tmp_path, capsys, storage):
    (tmp_path / "file").write_text("x")
    storage = storage.format(tmp=tmp_path)
    before = _tree(tmp_path)
    t0 = time.perf_counter()
    rc = optimize.main(_opt(tiny, tmp_path / "c.zarr", "x")[:4] + ["--storage", storage]
                       + _opt(tiny, tmp_path / "c.zarr", "x")[6:])
    assert time.perf_counter() - t0 < 30
    _refused(capsys, rc, "--storage")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("cmd, extra, word", [
    ("optimize", ["--batch", "-1"], "--batch"),
    ("optimize", ["--top", "0"], "--top"),
    ("optimize", ["--trials", "0"], "--trials"),
    ("optimize", ["--seed", "-3"], "--seed"),
    ("optimize", ["--buckets", "1"], "--buckets"),
    ("grid", ["--batch", "-1"], "--batch"),
    ("grid", ["--buckets", "-4"], "--buckets"),
])
def test_bad_numbers_exit_2(tiny, tmp_path, capsys, cmd, extra, word):
    if cmd == "optimize":
        rc = optimize.main(_opt(tiny, tmp_path / "c.zarr", tmp_path / "j.log", *extra))
    else:
        rc = grid.main(["--space", tiny["space"], "--out", str(tmp_path / "c.zarr"), *_args(tiny), *extra])
    _refused(capsys, rc, word)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ optimize: re-run, no leftovers, names

def test_optimize_rerun_overwrite_and_no_leftovers(tiny, tmp_path, capsys):
    journal, out = tmp_path / "j.log", tmp_path / "c.zarr"
    assert optimize.main(_opt(tiny, out, journal, "--study", "a")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.html", "c.zarr", "j.log"]  # no <cube>.parts left
    first = xr.open_zarr(out).load()
    # the same command again (the README's main job run twice): same cube, from the cube itself
    assert optimize.main(_opt(tiny, out, journal, "--study", "a")) == 0
    xr.testing.assert_identical(first.drop_attrs(), xr.open_zarr(out).load().drop_attrs())
    # more trials extend it
    assert optimize.main(_opt(tiny, out, journal, "--study", "a") + ["--trials", "6"]) == 0
    ext = xr.open_zarr(out).load()
    assert ext.sizes["trial"] == 6
    xr.testing.assert_identical(first[["trades", "value"]].drop_attrs(),
                                ext[["trades", "value"]].isel(trial=slice(0, 4)).drop_attrs())
    # the cube of another study is not replaced without --overwrite, and is with it
    capsys.readouterr()
    before = _tree(tmp_path)
    _refused(capsys, optimize.main(_opt(tiny, out, journal, "--study", "b")), "--out", "--overwrite")
    assert _tree(tmp_path) == before
    assert optimize.main(_opt(tiny, out, journal, "--study", "b", "--overwrite")) == 0
    assert xr.open_zarr(out).attrs["study"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.html", "c.zarr", "j.log"]
    # cube gone and no parts: the stored trials are re-evaluated, to the same numbers
    outputs.remove_path(out)
    capsys.readouterr()
    assert optimize.main(_opt(tiny, out, journal, "--study", "a") + ["--trials", "6"]) == 0
    assert "re-evaluating 6 stored trials" in capsys.readouterr().out
    xr.testing.assert_identical(ext.drop_attrs(), xr.open_zarr(out).load().drop_attrs())


def test_default_study_name_follows_the_data_and_conflicts_name_the_field(tiny, tmp_path, capsys):
    args = optimize.build_parser().parse_args([])
    from gpu_engine import space as space_mod

    space = space_mod.load(None)
    assert optimize.study_name(args, space) == "default-synth-sharpe-tpe-s0"
    args = optimize.build_parser().parse_args(["--data", "x/BTC-1.zarr", "--sampler", "qmc", "--seed", "3"])
    assert optimize.study_name(args, space) == "default-BTC-1-sharpe-qmc-s3"
    journal = tmp_path / "j.log"
    base = _opt(tiny, tmp_path / "c.zarr", journal, "--study", "s")
    assert optimize.main(base) == 0
    capsys.readouterr()
    before = _tree(tmp_path)
    err = _refused(capsys, optimize.main(base + ["--fee-bps", "5"]), "--study", "--fee-bps", "was 10.0, now 5.0")
    assert "--study NAME" in err  # (said from the cube's attrs, before --out is refused)
    other = _opt(tiny, tmp_path / "d.zarr", journal, "--study", "s", "--target-win-rate", "0.5", "0.6")
    err = _refused(capsys, optimize.main(other), "--study", "--target-win-rate", "--study NAME")
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------ inspect

def test_inspect_refuses_what_is_not_a_cube(tiny, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    before = _tree(tmp_path)
    for p, word in ((tmp_path / "missing.zarr", "no such cube"), (plain, "not a result cube"),
                    (Path(tiny["data"]), "book store")):
        _refused(capsys, inspect.main([str(p), "--no-progress"]), word)
    assert _tree(tmp_path) == before
    out = tmp_path / "c.zarr"
    assert optimize.main(_opt(tiny, out, tmp_path / "j.log", "--study", "i")) == 0
    capsys.readouterr()
    for extra, word in ((["--top", "0"], "--top"), (["--heatmap", "nosuch", "entry", "--png", "h.png"], "nosuch"),
                        (["--heatmap", "entry", "signal", "--metric", "nosuch", "--png", "h.png"], "nosuch"),
                        (["--png", "h.png"], "--heatmap"), (["--by", "nosuch"], "nosuch"),
                        (["--heatmap", "entry", "signal", "--png", str(tmp_path / "j.log" / "h.png")], "--png")):
        _refused(capsys, inspect.main([str(out), "--no-progress", *extra]), word)
    assert not (tmp_path / "h.png").exists()
    # corrupt: a chunk of a variable garbled, or a variable missing
    chunk = next(p for p in sorted((out / "trades").iterdir()) if not p.name.startswith("."))
    chunk.write_bytes(b"garbage")
    _refused(capsys, inspect.main([str(out), "--no-progress"]), "corrupt")
    outputs.remove_path(out / "bucket_pnl")
    _refused(capsys, inspect.main([str(out), "--no-progress"]), "corrupt")


# ------------------------------------------------------------------ exact resume

def _assert_same_run(a_cube: Path, b_cube: Path, a_journal: Path, b_journal: Path, name: str):
    import optuna

    a, b = xr.open_zarr(a_cube).load(), xr.open_zarr(b_cube).load()
    assert set(a.variables) == set(b.variables)
    for v in a.variables:  # every data variable and coordinate, bit for bit
        xr.testing.assert_identical(a[v].drop_attrs(), b[v].drop_attrs())
    skip = TIMING_ATTRS | {"storage"}
    assert {k: v for k, v in a.attrs.items() if k not in skip} == {k: v for k, v in b.attrs.items() if k not in skip}
    ta = optuna.load_study(study_name=name, storage=optimize.make_storage(str(a_journal))[0]).trials
    tb = optuna.load_study(study_name=name, storage=optimize.make_storage(str(b_journal))[0]).trials
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert (x.number, x.state, x.params, x.value) == (y.number, y.state, y.params, y.value)
        assert x.system_attrs.get("constraints") == y.system_attrs.get("constraints")
        assert x.system_attrs == y.system_attrs


@pytest.mark.parametrize("sampler", optimize.SAMPLERS)
def test_killed_in_the_middle_resumes_to_the_same_cube_and_study(tiny, tmp_path, monkeypatch, sampler):
    def argv(d):
        return ["--space", tiny["space"], "--out", str(d / "c.zarr"), "--storage", str(d / "j.log"),
                "--study", "s", "--trials", "16", "--batch", "4", "--sampler", sampler, "--seed", "7",
                "--min-trades", "1", "--oos-top", "6", *_args(tiny)]

    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    assert optimize.main(argv(full)) == 0
    _kill_hook(monkeypatch)
    # killed in batch 4 after its part file was saved, before its trials were stored
    monkeypatch.setenv(optimize.STOP_MID_ENV, "4")
    with pytest.raises(Killed):
        optimize.main(argv(killed))
    monkeypatch.delenv(optimize.STOP_MID_ENV)
    assert (killed / "c.zarr.parts" / "batch-000012.npz").exists()
    assert optimize.main(argv(killed)) == 0
    _assert_same_run(full / "c.zarr", killed / "c.zarr", full / "j.log", killed / "j.log", "s")
    assert sorted(p.name for p in killed.iterdir()) == ["c.html", "c.zarr", "j.log"]


def test_killed_while_storing_a_batch_resumes_to_the_same_cube(tiny, tmp_path, monkeypatch):
    """add_trials of a batch is not atomic: a kill after its first trial is stored is completed on resume."""
    import optuna

    def argv(d):
        return ["--space", tiny["space"], "--out", str(d / "c.zarr"), "--storage", str(d / "j.log"),
                "--study", "s", "--trials", "9", "--batch", "3", "--sampler", "tpe",
                "--min-trades", "1", "--oos-top", "4", *_args(tiny)]

    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    assert optimize.main(argv(full)) == 0
    real = optuna.study.Study.add_trials
    calls = []

    def torn(self, trials):
        if self._storage.__class__.__name__ == "JournalStorage":
            calls.append(len(trials))
            if len(calls) == 2:  # the second batch: one trial stored, then the kill
                real(self, trials[:1])
                raise Killed(137)
        return real(self, trials)

    monkeypatch.setattr(optuna.study.Study, "add_trials", torn)
    with pytest.raises(Killed):
        optimize.main(argv(killed))
    monkeypatch.setattr(optuna.study.Study, "add_trials", real)
    st = optuna.load_study(study_name="s", storage=optimize.make_storage(str(killed / "j.log"))[0])
    assert len(st.trials) == 4
    assert optimize.main(argv(killed)) == 0
    _assert_same_run(full / "c.zarr", killed / "c.zarr", full / "j.log", killed / "j.log", "s")


def test_real_sigkill_of_a_subprocess_resumes_to_the_same_cube(tiny, tmp_path):
    def argv(d):
        return ["--space", tiny["space"], "--out", str(d / "c.zarr"),
                "--storage", str(d / "j.log"), "--study", "s", "--trials", "40", "--batch", "2",
                "--sampler", "tpe", "--min-trades", "1", "--oos-top", "4", *_args(tiny)]

    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.optimize", *argv(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = killed / "c.zarr.parts"
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None and len(list(parts.glob("batch-*.npz"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "c.zarr").exists()
    # the resumed and the uninterrupted runs in this process (one kernel compile, not two more)
    assert optimize.main(argv(killed)) == 0
    assert optimize.main(argv(full)) == 0
    _assert_same_run(full / "c.zarr", killed / "c.zarr", full / "j.log", killed / "j.log", "s")
    assert sorted(p.name for p in killed.iterdir()) == ["c.html", "c.zarr", "j.log"]
