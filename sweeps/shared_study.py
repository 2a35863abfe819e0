"""Shared Optuna studies on a database: any number of `sweeps.optimize` workers, one study.

`python -m sweeps.optimize --storage postgresql://... --study NAME` is one worker of the
study NAME; start it as often as wanted, on one machine or many (each evaluates its batches on
its own device). With a database `--storage` (PostgreSQL; also MySQL or a SQLite file) every
run is such a worker, one alone included. `optimize.run` hands the search loop to `Worker`
and keeps the assembly of the cube and the report. docs/scaling.md says how to use it.

- Claims. Under the study's claim lock (a PostgreSQL advisory lock held on its own connection;
  MySQL GET_LOCK; a file lock beside a SQLite file), a worker fails stale trials, reads the
  study, and claims `min(--batch, --trials - COMPLETE - RUNNING)` trials: RUNNING trials
  created in the database (which numbers them), each with a first heartbeat before the lock
  is released, and the worker's id in the trial system attr `sweeps:worker`. Nothing else is
  done under the lock except sampling, so two workers never claim the same retry nor count
  the same missing trials, and a RUNNING trial without a heartbeat row seen under the lock
  belongs to a worker that died inside it (it is failed at once).
- Retries first. A FAILED trial (its worker stopped sending heartbeats, was interrupted, or
  raised) is claimed again as a new trial with the same parameters, marked with Optuna's own
  convention (`RetryHeartbeatStaleTrialCallback`): system attrs `failed_trial` (the first
  trial of the series) and `retry_history` (every trial before it; its last item is the trial
  this one retries). Optuna refuses attrs on a finished trial, so the mark is on the retry: a
  FAILED trial is retried when some trial's `retry_history` ends with its number. A series is
  given up after MAX_RETRIES retries (new trials then fill the count).
- Sampling. The rest of a claim is sampled on an in-memory mirror of the study's COMPLETE
  trials read under the lock, by a sampler seeded from (`--seed`, the claim's first trial
  number), as `optimize` does for a journal; the sampler state kept in the mirror's study
  system attrs (QMC's counter ...) is replayed from every stored trial. So a study is
  reproducible given the order of the claims, and one worker alone on a database makes the
  same trials as the same command on a journal file.
- Heartbeats. A thread records `storage.record_heartbeat(trial_id)` every `--heartbeat`
  seconds for the trials in flight; before each claim `optuna.storages.fail_stale_trials`
  marks FAILED the RUNNING trials whose last heartbeat is older than `--grace` seconds.
- Results. A batch's part file (`<out>.parts/batch-<first trial>.npz`, temporary + rename) is
  written before its trials are told (constraints, value, COMPLETE) one by one; a trial that
  another worker failed meanwhile is left to its retry.
- The cube. The worker that sees `--trials` COMPLETE with nothing RUNNING takes the study's
  cube lock without waiting, records in the study system attr `sweeps:cube` who writes which
  cube, and returns to `optimize`, which assembles the one cube from every part file (trials
  whose part file is on another machine are re-evaluated) and calls `cube_written`. The
  other workers say who writes it and exit 0. A writer that died leaves the lock free: the
  next worker run takes over.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpu_engine.errors import InputError
from sweeps import _common
from sweeps import optimize as opt

DEFAULT_HEARTBEAT_S = 10
GRACE_FACTOR = 6  # default --grace: this many heartbeat intervals
MAX_RETRIES = 3
WORKER_KEY = "sweeps:worker"  # trial system attr: the worker that claimed the trial
CUBE_KEY = "sweeps:cube"  # study system attr: who writes (wrote) the cube of how many trials
FAILED_TRIAL_KEY = "failed_trial"  # Optuna's RetryHeartbeatStaleTrialCallback convention
RETRY_HISTORY_KEY = "retry_history"
# Test hook: after claiming its k-th batch (heartbeats going on), the worker hangs until killed.
HANG_AFTER_CLAIM_ENV = "SWEEPS_OPTIMIZE_HANG_AFTER_CLAIM"
# The first use of an empty database creates Optuna's tables; several workers doing it at once
# can collide (DuplicateTable, UniqueViolation): RDBStorage is constructed again this often.
SCHEMA_ATTEMPTS = 4


# ---------------------------------------------------------------- flags

def add_args(p) -> None:
    g = p.add_argument_group("shared study (a database --storage; docs/scaling.md)")
    g.add_argument("--heartbeat", type=int, default=None, metavar="S",
                   help=f"seconds between a worker's heartbeats (default {DEFAULT_HEARTBEAT_S})")
    g.add_argument("--grace", type=int, default=None, metavar="S",
                   help="seconds without a heartbeat after which a worker's trials are failed and "
                        f"retried (default {GRACE_FACTOR} heartbeats)")


def heartbeat_settings(args) -> tuple[int, int]:
    hb = getattr(args, "heartbeat", None) or DEFAULT_HEARTBEAT_S
    grace = getattr(args, "grace", None) or GRACE_FACTOR * hb
    return hb, grace


def check_args(args) -> None:
    hb, grace = getattr(args, "heartbeat", None), getattr(args, "grace", None)
    if hb is None and grace is None:
        return
    if not opt._is_rdb(args.storage or opt.DEFAULT_STORAGE):
        flag = "--heartbeat" if hb is not None else "--grace"
        raise InputError(f"{flag}: only for a shared study (a database --storage such as postgresql://...)")
    for flag, v in (("--heartbeat", hb), ("--grace", grace)):
        if v is not None and v < 1:
            raise InputError(f"{flag}: value {v!r} must be >= 1")
    hb, grace = heartbeat_settings(args)
    if grace <= hb:
        raise InputError(f"--grace: value {grace!r} must be more than --heartbeat ({hb}), or live workers "
                         "lose their trials between two heartbeats")


# ---------------------------------------------------------------- the storage

def _schema_race(exc: BaseException) -> bool:
    """Whether `exc` is two processes creating Optuna's tables in an empty database at once."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        name = type(e).__name__
        if name in ("DuplicateTable", "UniqueViolation", "DuplicateObject", "IntegrityError"):
            return True
        if name in ("OperationalError", "ProgrammingError") and "already exists" in str(e):
            return True  # SQLite's "table ... already exists"
        stack += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return False


def rdb_storage(url: str, *, heartbeat: int | None = None, grace: int | None = None,
                engine_kwargs: dict | None = None):
    """`optuna.storages.RDBStorage(url)`, constructed again when the schema creation raced."""
    import optuna

    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                                  grace_period=grace)
        except Exception as exc:
            if attempt + 1 == SCHEMA_ATTEMPTS or not _schema_race(exc):
                raise
            time.sleep(0.1 + 0.4 * random.random())
    raise AssertionError("not reached")


# ---------------------------------------------------------------- locks shared by every worker

def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class DbLock:
    """A lock every worker of the study sees: held until `release`, or until the process dies.

    PostgreSQL: a session advisory lock on a connection of its own (the server drops it with the
    connection; TCP keepalives are shortened on it so a vanished machine loses it in seconds,
    not hours). MySQL: GET_LOCK. A SQLite file: flock on `<db>-sweeps-<hash>.lock` beside it
    (one machine). An in-memory SQLite database: a lock of this process.
    """

    def __init__(self, storage, name: str):
        self.engine = storage.engine
        self.dialect = self.engine.dialect.name
        self.name = name
        self.key = _lock_key(name)
        self._conn = None
        self._fd = None
        self._local = None  # a lock of this process (no database lock to be had)
        self._mine = False
        if self.dialect == "sqlite":
            db = self.engine.url.database
            if db and db != ":memory:" and not db.startswith("file::memory:"):
                self._path = Path(f"{db}-sweeps-{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock")
            else:
                self._local = threading.Lock()
        elif self.dialect not in ("postgresql", "mysql", "mariadb"):
            self._local = threading.Lock()

    @property
    def held(self) -> bool:
        return self._conn is not None or self._fd is not None or self._mine

    def acquire(self, blocking: bool = True) -> bool:
        if self.held:
            return True
        if self._local is not None:
            ok = self._local.acquire(blocking)
            self._mine = ok
            return ok
        if self.dialect == "sqlite":
            import fcntl

            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        import sqlalchemy as sa

        conn = self.engine.connect()
        try:
            if self.dialect == "postgresql":
                for setting in ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5", "tcp_keepalives_count = 3"):
                    try:
                        conn.execute(sa.text(f"SET {setting}"))
                    except Exception:  # not settable here: the server's defaults stay
                        conn.rollback()
                fn = "pg_advisory_lock" if blocking else "pg_try_advisory_lock"
                res = conn.execute(sa.text(f"SELECT {fn}(:k)"), {"k": self.key}).scalar()
                ok = True if blocking else bool(res)
            else:
                res = conn.execute(sa.text("SELECT GET_LOCK(:n, :t)"),
                                   {"n": f"sweeps-{self.key & 0xFFFFFFFFFFFF:x}", "t": -1 if blocking else 0}).scalar()
                ok = res == 1
            conn.commit()  # the lock belongs to the session, not to this transaction
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        if not ok:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._local is not None:
            if self._mine:
                self._mine = False
                self._local.release()
            return
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # drops the flock
            return
        conn, self._conn = self._conn, None
        if conn is None:
            return
        import sqlalchemy as sa

        try:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": f"sweeps-{self.key & 0xFFFFFFFFFFFF:x}"})
            conn.commit()
            conn.close()
        except Exception:  # the connection is closed for good: the server drops the lock with it
            conn.invalidate()
            conn.close()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------- heartbeats

class Heartbeat:
    """Records a heartbeat every `interval` seconds for the trials in flight (a daemon thread)."""

    def __init__(self, storage, interval: int):
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="sweeps-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        """Record one heartbeat now (synchronously), then keep recording them."""
        self.storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def remove(self, trial_ids) -> None:
        with self._lock:
            self._ids.difference_update(trial_ids)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # the database is unreachable for now: try again next time
                    self.errors += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


# ---------------------------------------------------------------- helpers on stored trials

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def retried(trials) -> dict[int, int]:
    """{number of a FAILED trial: number of the trial that retries it}."""
    out = {}
    for t in trials:
        hist = t.system_attrs.get(RETRY_HISTORY_KEY) or []
        if hist:
            out.setdefault(int(hist[-1]), t.number)
    return out


def pending_retries(trials) -> list:
    """FAILED trials with parameters, not retried yet, not given up; oldest first."""
    from optuna.trial import TrialState

    done = retried(trials)
    return sorted((t for t in trials if t.state == TrialState.FAIL and t.params and t.number not in done
                   and len(t.system_attrs.get(RETRY_HISTORY_KEY) or []) < MAX_RETRIES),
                  key=lambda t: t.number)


def _never_beaten(storage, trial_ids: list[int]) -> list[int]:
    """Those of `trial_ids` without a heartbeat row (Optuna's RDB tables; [] when unreadable)."""
    if not trial_ids:
        return []
    try:
        from optuna.storages._rdb import models

        session = storage.scoped_session()
        try:
            have = {int(r[0]) for r in session.query(models.TrialHeartbeatModel.trial_id)
                    .filter(models.TrialHeartbeatModel.trial_id.in_(trial_ids))}
            session.commit()
        finally:
            session.close()
    except Exception:
        return []
    return [i for i in trial_ids if i not in have]


@dataclass
class Claim:
    trial_ids: list[int]
    numbers: list[int]
    chosen: list[dict]
    retries: dict[int, int] = field(default_factory=dict)  # new number -> failed number


@dataclass
class Snapshot:
    complete: int
    running: int
    failed: int
    running_others: list[int]


# ---------------------------------------------------------------- the worker

class Worker:
    """One worker of a shared study; `run()` returns True when this worker writes the cube."""

    def __init__(self, persist, *, name: str, out: Path, parts: Path, stamp: str, space, data, cost, args,
                 log=print):
        self.persist, self.study_id = persist, persist._study_id
        # the RDBStorage itself (optuna wraps it in a cache of finished trials): every read is fresh
        self.storage = getattr(persist._storage, "_backend", persist._storage)
        self.name, self.out, self.parts, self.stamp = name, Path(out), Path(parts), stamp
        self.space, self.data, self.cost, self.args, self.log = space, data, cost, args, log
        self.id = worker_id()
        self.interval = int(self.storage.heartbeat_interval or DEFAULT_HEARTBEAT_S)
        self.grace = int(self.storage.grace_period or 2 * self.interval)
        self.claim_lock = DbLock(self.storage, f"sweeps-claim:{name}")
        self.cube_lock = DbLock(self.storage, f"sweeps-cube:{name}")
        self.heartbeat = Heartbeat(self.storage, self.interval)
        self.timings: list[dict] = []
        self.batches = 0
        self.other: dict | None = None  # the cube mark of the worker that writes the cube, when not us

    # ------------------------------------------------------------ the loop

    def run(self) -> bool:
        args = self.args
        hang = int(os.environ.get(HANG_AFTER_CLAIM_ENV, "0") or 0)
        bar = None
        waiting_said = False
        poll = min(max(self.interval / 2, 0.2), 5.0)
        try:
            while True:
                t0 = time.perf_counter()
                what, snap, claim = self._step()
                if bar is None:
                    self.log(f"study {self.name!r} (shared; worker {self.id}): {snap.complete} of {args.trials} "
                             f"trials complete, {snap.running} running, {snap.failed} failed")
                    bar = _common.WarmBar(args.trials, "trial", args.no_progress,
                                          initial=min(snap.complete, args.trials), desc="optimize")
                if what == "write":
                    return True
                if what == "other":
                    m = self.other or {}
                    state = "wrote" if m.get("state") == "done" else "is writing"
                    print(f"study {self.name!r}: {snap.complete} trials complete; worker {m.get('worker', '?')} "
                          f"{state} the cube {m.get('out', self.out)}")
                    return False
                if what == "wait":
                    if not waiting_said:
                        self.log(f"waiting for {len(snap.running_others)} trials running in other workers "
                                 f"(failed and retried if their heartbeats stop for {self.grace} s) ...")
                        waiting_said = True
                    time.sleep(poll)
                    continue
                waiting_said = False
                t_ask = time.perf_counter() - t0
                if claim.retries:
                    self.log(f"retrying failed trials {list(claim.retries.values())} as trials "
                             f"{list(claim.retries)} (same parameters)")
                if hang and self.batches + 1 >= hang:
                    print(f"claimed trials {claim.numbers}; hanging ({HANG_AFTER_CLAIM_ENV})", flush=True)
                    while True:
                        time.sleep(3600)
                told, t_eval, t_tell = self._evaluate_and_tell(claim)
                total = time.perf_counter() - t0
                k = len(claim.numbers)
                self.timings.append({"trials": k, "configs": k * self.space.neighbourhood_size, "ask_s": t_ask,
                                     "eval_s": t_eval, "tell_s": t_tell, "total_s": total,
                                     "optuna_share": (t_ask + t_tell) / total})
                self.batches += 1
                bar.update(told)
                bar.set_postfix(optuna=f"{100 * (t_ask + t_tell) / total:.1f}%",
                                cfg_s=f"{k * self.space.neighbourhood_size / max(t_eval, 1e-9):.0f}")
        finally:
            if bar is not None:
                bar.close()
            self.heartbeat.close()

    def _step(self):
        """Under the claim lock: ("claim", snap, Claim) | ("wait"|"write"|"other", snap, None)."""
        from optuna.trial import TrialState

        args = self.args
        with self.claim_lock:
            self._fail_stale()
            trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING]
            snap = Snapshot(len(complete), len(running), sum(t.state == TrialState.FAIL for t in trials),
                            [t.number for t in running])
            need = args.trials - len(complete) - len(running)
            if need <= 0:
                if running:
                    return "wait", snap, None
                return self._finish(len(complete)), snap, None
            return "claim", snap, self._claim(trials, complete, min(args.batch, need))

    def _fail_stale(self) -> None:
        """Fail the trials whose heartbeats stopped, and those that never got one (their worker
        died inside the claim lock, which we hold)."""
        import optuna
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.persist)
        running = [t._trial_id for t in self.storage.get_all_trials(self.study_id, deepcopy=False,
                                                                    states=(TrialState.RUNNING,))]
        for tid in _never_beaten(self.storage, running):
            try:
                self.storage.set_trial_state_values(tid, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass

    def _claim(self, trials, complete, k: int) -> Claim:
        """Create `k` RUNNING trials: the oldest pending retries, then new samples."""
        import optuna
        from optuna.trial import TrialState

        first = len(trials)  # the number the database gives the next trial (claims are serialized)
        templates, retries_of = [], []
        for t in pending_retries(trials)[:k]:
            sys_attrs = {key: v for key, v in t.system_attrs.items()
                         if key not in (opt.MIRROR_ATTRS_KEY, WORKER_KEY) and not key.startswith("constraints")}
            sys_attrs[FAILED_TRIAL_KEY] = t.system_attrs.get(FAILED_TRIAL_KEY, t.number)
            sys_attrs[RETRY_HISTORY_KEY] = [*(t.system_attrs.get(RETRY_HISTORY_KEY) or []), t.number]
            sys_attrs[WORKER_KEY] = self.id
            templates.append(optuna.trial.create_trial(state=TrialState.RUNNING, params=t.params,
                                                       distributions=t.distributions, user_attrs=t.user_attrs,
                                                       system_attrs=sys_attrs))
            retries_of.append(t.number)
        n_new = k - len(templates)
        if n_new:
            mirror = optuna.create_study(direction="maximize")
            mirror.add_trials(sorted(complete, key=lambda t: t.number))
            seen = opt._restore_mirror_attrs(mirror, sorted(trials, key=lambda t: t.number))
            mirror.sampler = opt.make_sampler(self.args.sampler, self.args.seed, self.args.batch, first_trial=first)
            asked = [mirror.ask() for _ in range(n_new)]
            for t in asked:
                self.space.suggest(t)
            opt._record_mirror_attrs(mirror, asked[-1], seen)
            frozen = mirror.get_trials(deepcopy=False)
            for t in asked:
                f = frozen[t.number]
                templates.append(optuna.trial.create_trial(
                    state=TrialState.RUNNING, params=f.params, distributions=f.distributions,
                    user_attrs=f.user_attrs, system_attrs={**f.system_attrs, WORKER_KEY: self.id}))
        ids, numbers = [], []
        for tmpl in templates:
            tid = self.storage.create_new_trial(self.study_id, template_trial=tmpl)
            self.heartbeat.add(tid)
            ids.append(tid)
            numbers.append(self.storage.get_trial_number_from_id(tid))
        chosen = [opt.chosen_of(self.space, tmpl.params) for tmpl in templates]
        return Claim(ids, numbers, chosen, dict(zip(numbers, retries_of)))

    def _evaluate_and_tell(self, claim: Claim) -> tuple[int, float, float]:
        import optuna
        from optuna.trial import TrialState

        told = []
        try:
            t1 = time.perf_counter()
            rec = opt.evaluate_trials(claim.chosen, claim.numbers, self.space, self.data, self.cost, self.args)
            rec["stamp"] = np.array(self.stamp)
            opt._save_part(self.parts, int(min(claim.numbers)), rec)
            t_eval = time.perf_counter() - t1
            t2 = time.perf_counter()
            lost = []
            for tid, num, v, c in zip(claim.trial_ids, claim.numbers, rec["value"], rec["constraints"]):
                try:
                    for cname, cv in zip(opt.CONSTRAINTS, c):
                        self.storage.set_trial_system_attr(tid, f"constraints:{cname}", float(cv))
                    self.storage.set_trial_state_values(tid, TrialState.COMPLETE, [float(v)])
                    told.append(tid)
                except optuna.exceptions.UpdateFinishedTrialError:
                    lost.append(num)  # failed by another worker meanwhile (no heartbeat for --grace s)
                    told.append(tid)
            if lost:
                self.log(f"trials {lost} were failed by another worker while this one evaluated them "
                         f"(no heartbeat for {self.grace} s); they are retried")
            return len(claim.numbers) - len(lost), t_eval, time.perf_counter() - t2
        except BaseException:  # interrupted or broken: our trials are retried now, not after --grace
            for tid in claim.trial_ids:
                if tid not in told:
                    try:
                        self.storage.set_trial_state_values(tid, state=TrialState.FAIL)
                    except Exception:
                        pass
            raise
        finally:
            self.heartbeat.remove(claim.trial_ids)

    # ------------------------------------------------------------ the cube

    def _cube_here(self, n: int) -> bool:
        attrs = opt._cube_attrs(self.out)
        stamp = json.loads(self.stamp)
        return (attrs.get("kind") == "optimize" and all(attrs.get(k) == v for k, v in stamp.items())
                and attrs.get("n_trials") == n)

    def _finish(self, n: int) -> str:
        """The study is complete (claim lock held): "write" when this worker writes the cube, else
        "other" (`self.other` says who)."""
        mark = self.storage.get_study_system_attrs(self.study_id).get(CUBE_KEY) or {}
        same = mark.get("complete") == n and mark.get("out") == str(self.out)
        if same and mark.get("state") == "done" and (mark.get("host") != socket.gethostname() or self._cube_here(n)):
            self.other = mark
            return "other"
        if not self.cube_lock.acquire(blocking=False):  # a live worker writes it
            self.other = mark
            return "other"
        self.storage.set_study_system_attr(self.study_id, CUBE_KEY, {
            "worker": self.id, "host": socket.gethostname(), "complete": n, "out": str(self.out),
            "state": "writing", "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return "write"

    def cube_written(self) -> None:
        """The cube is in place: say so in the study and let the cube lock go."""
        try:
            mark = dict(self.storage.get_study_system_attrs(self.study_id).get(CUBE_KEY) or {})
            if mark.get("worker") == self.id:
                mark["state"] = "done"
                mark["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self.storage.set_study_system_attr(self.study_id, CUBE_KEY, mark)
        finally:
            self.cube_lock.release()

    def close(self) -> None:
        self.heartbeat.close()
        self.claim_lock.release()
        self.cube_lock.release()
