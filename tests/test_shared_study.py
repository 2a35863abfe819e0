"""Shared Optuna studies on PostgreSQL (sweeps/shared_study.py): several `sweeps.optimize`
workers on one study, one of them SIGKILLed after it claimed a batch; its trials are failed by
the heartbeats and retried with the same parameters; exactly one cube, equal to the trials.

A real PostgreSQL server from Debian's packages is started on 127.0.0.1 for the session
(initdb + pg_ctl as an unprivileged user when run as root, socket in a temporary folder, fsync
off). Without the server binaries (`pg_config --bindir`, /usr/lib/postgresql/*/bin) or psycopg
these tests skip and say why; `.ci/run` installs Debian's postgresql when it is missing.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gpu_engine import space as space_mod
from gpu_engine.enums import METRICS
from sweeps import _common, optimize, shared_study
from tests.test_sweeps_cli import _args, tiny  # noqa: F401  (tiny: fixture)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the server

def _pg_bindir() -> Path | None:
    cands = []
    if shutil.which("pg_config"):
        try:
            cands.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                        timeout=30).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda d: [int(x) for x in re.findall(r"\d+", d)], reverse=True)
    for d in cands:
        if d and (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path):
        import pwd

        self.bindir = bindir
        self.run_as = {}
        self.dir = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
        if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
            for user in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(user)
                except KeyError:
                    continue
                self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
                break
            else:
                shutil.rmtree(self.dir)
                pytest.skip("PostgreSQL: running as root and no 'postgres' or 'nobody' user to run the server as")
        self.port = None

    def _pg(self, *cmd, timeout=120):
        r = subprocess.run([str(self.bindir / cmd[0]), *cmd[1:]], cwd=self.dir, capture_output=True, text=True,
                           timeout=timeout, **self.run_as)
        if r.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stdout}{r.stderr}{log[-2000:]}")
        return r

    def start(self) -> None:
        self._pg("initdb", "-D", str(self.dir / "data"), "-U", "sweeps", "--auth=trust", "-E", "UTF8",
                 "--no-locale", "--no-sync")
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._pg("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-t", "60",
                         "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c synchronous_commit=off "
                               "-c full_page_writes=off -c max_connections=100", "start")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def new_db(self, name: str) -> str:
        """A new empty database; its storage URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="sweeps", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://sweeps@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def pg():
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin): "
                    "apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'psycopg[binary]==3.3.9'")
    server = PgServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ helpers

def _opt_argv(tiny, out: Path, storage: str, *extra) -> list[str]:
    return ["--space", tiny["space"], "--out", str(out), "--storage", storage, "--study", "s",
            "--min-trades", "1", "--oos-top", "4", "--no-html", *_args(tiny), *extra]


def _trials(url: str, name: str = "s"):
    import optuna

    return optuna.load_study(study_name=name, storage=optimize.make_storage(url)[0]).get_trials(deepcopy=False)


def _recompute(tiny, trials):
    """The part record of `trials` evaluated here, in one process (what a single-process run gives);
    with no trials, one sampled trial (this compiles and caches the CPU kernel)."""
    import optuna

    args = optimize.build_parser().parse_args(_opt_argv(tiny, Path("x.zarr"), "unused.journal"))
    space = space_mod.load(tiny["space"])
    data = _common.load_data(args, space, log=lambda *a: None)
    chosen = [optimize.chosen_of(space, t.params) for t in trials] or [space.suggest(optuna.create_study().ask())]
    return optimize.evaluate_trials(chosen, [t.number for t in trials] or [0], space, data, _common.costs(args),
                                    args), space


# ------------------------------------------------------------------ tests

def test_three_workers_one_killed_share_one_study(tiny, pg, tmp_path):
    from optuna.trial import TrialState

    t_setup = time.time()
    url = pg.new_db("three_workers")
    optimize.make_storage(url)  # Optuna's tables, once, before any worker (a first use by several races)
    _recompute(tiny, [])  # the CPU kernel compiled and cached here, not in each worker
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    out = work / "c.zarr"
    argv = [sys.executable, "-m", "sweeps.optimize",
            *_opt_argv(tiny, out, url, "--trials", "12", "--batch", "2", "--sampler", "tpe", "--heartbeat", "1",
                       "--grace", "4")]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}

    def start(tag, **extra_env):
        f = open(logs / f"{tag}.log", "w")
        return subprocess.Popen(argv, cwd=REPO, env={**env, **extra_env}, stdout=f, stderr=subprocess.STDOUT)

    def wait_for(cond, what, timeout=300):
        t0 = time.time()
        while not cond():
            assert time.time() - t0 < timeout, f"timed out waiting for {what}: " + "".join(
                f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir()))
            time.sleep(0.2)

    t_start = time.time()
    print(f"database, data and kernel warm-up: {t_start - t_setup:.1f} s")
    victim = start("victim", **{shared_study.HANG_AFTER_CLAIM_ENV: "1"})
    me = f"{socket.gethostname()}:{victim.pid}"
    procs = []
    try:
        def victim_claimed():
            assert victim.poll() is None, (logs / "victim.log").read_text()
            try:
                return any(t.system_attrs.get(shared_study.WORKER_KEY) == me for t in _trials(url))
            except KeyError:  # the study is not created yet
                return False

        wait_for(victim_claimed, "the first worker's claim")
        procs = [start("w1"), start("w2")]
        ids = {f"{socket.gethostname()}:{p.pid}" for p in procs}
        wait_for(lambda: ids <= {t.system_attrs.get(shared_study.WORKER_KEY) for t in _trials(url)},
                 "the claims of the other two workers")
        victim.send_signal(signal.SIGKILL)  # while the other two work
        assert victim.wait(30) == -signal.SIGKILL
        for p in procs:
            p.wait(400)  # (a worker compiles the kernel itself when it is not in the disk cache)
    finally:
        for p in [victim, *procs]:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [(logs / f"{tag}.log").read_text() for tag in ("w1", "w2")]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text
    elapsed = time.time() - t_start

    # the study: exactly --trials COMPLETE, nothing RUNNING, every failed trial retried with its parameters
    trials = _trials(url)
    by_number = {t.number: t for t in trials}
    assert sorted({t.number for t in trials}) == list(range(len(trials)))  # unique numbers from the database
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 12
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    killed = [t for t in trials if t.system_attrs.get(shared_study.WORKER_KEY) == me]
    assert killed and all(t.state == TrialState.FAIL for t in killed)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retry = shared_study.retried(trials)
    for t in failed:
        r = by_number[retry[t.number]]  # follow the series to the retry that completed
        while r.state == TrialState.FAIL:
            r = by_number[retry[r.number]]
        assert r.state == TrialState.COMPLETE and r.params == t.params and r.distributions == t.distributions
        assert r.system_attrs[shared_study.FAILED_TRIAL_KEY] == t.system_attrs.get(shared_study.FAILED_TRIAL_KEY,
                                                                                  t.number)
        assert t.number in r.system_attrs[shared_study.RETRY_HISTORY_KEY]
    assert len({retry[t.number] for t in failed}) == len(failed)  # no retry claimed twice

    # exactly one cube, written by one of the two survivors; the other says so
    writers = [text for text in texts if "VERDICT:" in text and f"cube: {out}" in text]
    assert len(writers) == 1, texts
    other = next(text for text in texts if text is not writers[0])
    assert "the cube" in other and "VERDICT:" not in other, other
    assert sorted(p.name for p in work.iterdir()) == ["c.zarr"]  # no part files, no temporaries
    import optuna

    st = optuna.load_study(study_name="s", storage=optimize.make_storage(url)[0])
    mark = st._storage.get_study_system_attrs(st._study_id)[shared_study.CUBE_KEY]
    assert mark["state"] == "done" and mark["complete"] == 12 and mark["worker"] in writers[0]

    # the cube's rows are the completed trials, equal to evaluating them in one process
    ds = xr.open_zarr(out).load()
    complete.sort(key=lambda t: t.number)
    assert ds["trial"].values.tolist() == [t.number for t in complete]
    np.testing.assert_array_equal(ds["value"].values, [t.value for t in complete])
    rec, space = _recompute(tiny, complete)
    np.testing.assert_array_equal(ds["value"].values, rec["value"])
    for i, m in enumerate(METRICS):
        np.testing.assert_array_equal(ds[m].values, rec["metrics"][:, :, i], err_msg=m)
    np.testing.assert_array_equal(ds["bucket_pnl"].transpose("trial", "config", "bucket").values, rec["bucket_pnl"])
    for p in space.params:
        vals = ds[p].values if ds[p].ndim == 2 else np.broadcast_to(ds[p].values[:, None], rec[f"p_{p}"].shape)
        np.testing.assert_array_equal(np.asarray(vals).astype(rec[f"p_{p}"].dtype), rec[f"p_{p}"], err_msg=p)
    print(f"3 workers, one SIGKILLed: {elapsed:.1f} s; {len(failed)} failed and retried")


@pytest.mark.parametrize("sampler", ["tpe", "qmc"])
def test_one_worker_on_postgres_makes_the_journal_runs_study_and_cube(tiny, pg, tmp_path, sampler):
    url = pg.new_db(f"one_worker_{sampler}")
    extra = ("--trials", "6", "--batch", "2", "--sampler", sampler, "--seed", "3")
    assert optimize.main(_opt_argv(tiny, tmp_path / "j.zarr", str(tmp_path / "j.log"), *extra)) == 0
    assert optimize.main(_opt_argv(tiny, tmp_path / "p.zarr", url, *extra)) == 0
    a, b = _trials(str(tmp_path / "j.log")), _trials(url)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert (x.number, x.state, x.params, x.value) == (y.number, y.state, y.params, y.value)
        assert x.system_attrs == {k: v for k, v in y.system_attrs.items() if k != shared_study.WORKER_KEY}
    ca, cb = xr.open_zarr(tmp_path / "j.zarr").load(), xr.open_zarr(tmp_path / "p.zarr").load()
    for v in ca.variables:
        xr.testing.assert_identical(ca[v].drop_attrs(), cb[v].drop_attrs())
    # the same command again: the study is complete and its cube there; nothing is re-done
    assert optimize.main(_opt_argv(tiny, tmp_path / "p.zarr", url, *extra)) == 0
    xr.testing.assert_identical(cb.drop_attrs(), xr.open_zarr(tmp_path / "p.zarr").load().drop_attrs())


def test_first_use_of_an_empty_database_by_several_workers_at_once(pg):
    """Optuna's table creation races on an empty database (DuplicateTable, UniqueViolation):
    make_storage constructs RDBStorage again when it did."""
    for round_ in range(3):
        url = pg.new_db(f"empty_{round_}")
        barrier = threading.Barrier(4)
        errors = []

        def open_it():
            barrier.wait()
            try:
                optimize.make_storage(url, heartbeat=1, grace=3)
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors


def test_heartbeat_flags_need_a_database(tiny, tmp_path, capsys):
    for extra, word in ((["--heartbeat", "5"], "--heartbeat"), (["--grace", "5"], "--grace")):
        rc = optimize.main(_opt_argv(tiny, tmp_path / "c.zarr", str(tmp_path / "j.log"), *extra))
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and word in err and "database" in err
    rc = optimize.main(_opt_argv(tiny, tmp_path / "c.zarr", "postgresql://nobody@127.0.0.1:1/db", "--heartbeat", "5",
                                 "--grace", "5"))
    err = capsys.readouterr().err
    assert rc == 2 and "--grace" in err
    assert list(tmp_path.iterdir()) == []
