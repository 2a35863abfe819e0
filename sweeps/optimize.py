"""`python -m sweeps.optimize`: Optuna batch search for configurations that reach a win-rate target.

With no arguments it runs on the embedded default (the block dataset and the
synthetic books are generated when absent), then prints the report of
`sweeps.inspect`.

- A batch of trials is asked from Optuna; each trial fixes the coarse choices
  (signal, window, side, exits style ...) and the centres of the dense
  parameters; its whole neighbourhood (space.expand) goes into ONE kernel launch
  for the batch, on the in-sample part only.
- A trial's value is the median over its neighbourhood of the objective
  (sharpe: bucket Sharpe after costs; expectancy; net_pnl / capital), which
  favours plateaus over lucky spikes. Its constraints (`trial.set_constraint`;
  feasible when all <= 0) are the neighbourhood medians of: lo - win_rate,
  win_rate - hi, 0.5 - Wilson lower bound, min_trades - trades, -expectancy
  (no trades counts as win rate 0 and expectancy 0).
- Every evaluated configuration is saved (a part file per batch under
  `<out>.parts/`, written before the trials are stored) and lands in the cube;
  the part files are removed once the cube is written. A later run of the same
  study reads the trials it needs back from its cube (or, when cube and parts
  are gone, re-evaluates them from the stored trial parameters).
- Storage defaults to a JournalStorage file `results/optuna.journal`; the
  study name defaults to `{space}-{data store stem}-{objective}-{sampler}-s{seed}`
  (the default run: `default-synth-sharpe-tpe-s0`, cube
  `results/default-synth-sharpe-tpe-s0.zarr`), so the same command after a kill
  resumes it (or pass `--study NAME`). A stored study run with other data,
  space, costs or target is refused, naming the field that differs.
  `--trials` is the study's total of completed trials. The sampler works on an
  in-memory mirror of the stored study (loaded with add_trials on start); each
  batch's finished trials are appended to the storage with one add_trials, so
  a kill loses at most the batch in flight (its part file is dropped on resume).
- Exact resume: the sampler is created afresh for every batch, seeded from
  (`--seed`, number of the batch's first trial), so its choices depend only on
  the stored trials, never on what this process did before; the sampler state
  kept outside the trials (QMC's sample counter, NSGA-II's parent cache: study
  system attrs of the mirror) is recorded on the batch's last trial and
  restored on resume. A run killed at any point and run again ends with the
  same cube and study as an uninterrupted run.
- A database `--storage` (postgresql://...) makes the run one worker of a shared
  study instead: any number of them, on one machine or many, claim batches of
  trials in the database, send heartbeats, and retry (same parameters) the
  trials of a worker that died; the worker that sees `--trials` completed writes
  the one cube (sweeps/shared_study.py, docs/scaling.md).
- `--out` is checked before any work: the cube of the same study (same
  storage, study name and fingerprint) is re-written with the study's trials
  (a re-run or an extension); anything else existing there is refused (exit 2)
  unless `--overwrite`, which replaces only a result cube of this engine;
  `--out` may never be, contain or lie inside `--data`, `--blocks`, `--space`.
- Afterwards the best `--oos-top` configurations (per-config feasible first, then those that trade at all,
  then by in-sample objective) are re-evaluated out of sample, the cube is
  written (temporary sibling + rename) and the report printed.
- Optuna's own time (ask with the suggestions, and tell) is measured per batch.
- The contract (`--contract`, `--multiplier`, `--tick-size`, `--lot-size`; default the store's
  attrs), the queue model (`--queue`, `--queue-n`), the fees (`--fee-bps`, `--maker-fee-bps`;
  default by the store's venue) and `--cancel-latency-ms` are resolved before any work
  (sweeps/market_settings.py), printed, part of the fingerprint and the cube's `costs`.
  `--space maker` (sweeps/spaces/maker.toml) searches passive entries; a space with maker
  orders on a store without a tick size is refused before anything is written.
- `--data blocks` (or a block dataset .npy) searches the block history as a bar market
  (docs/POWERLAW.md): the report adds the market line and walk-forward over years. A space
  using a causally fitted long-horizon feature (`sweeps/spaces/powerlaw.toml`) is searched a
  second time with the fixed published parameters (look-ahead) in its place (study and cube
  `<name>-fixed`), and both are printed side by side (`inspect.lookahead_comparison`);
  `--no-fixed-comparison` skips it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from gpu_engine import kernels, outputs, results
from gpu_engine import space as space_mod
from gpu_engine.errors import InputError
from gpu_engine.enums import METRIC_INDEX, METRICS
from sweeps import _common, market_settings

SAMPLERS = ("tpe", "cmaes", "nsga2", "qmc", "random")
OBJECTIVES = ("sharpe", "expectancy", "net_pnl")
DEFAULT_STORAGE = "results/optuna.journal"
CONSTRAINTS = ("win_rate_min", "win_rate_max", "wilson_lo", "trades", "expectancy")
# Test hooks: die like kill -9 (os._exit(137)) after k whole batches, or in batch k after its part
# file is saved but before its trials are stored.
STOP_AFTER_ENV = "SWEEPS_OPTIMIZE_STOP_AFTER"
STOP_MID_ENV = "SWEEPS_OPTIMIZE_STOP_MID"
# Trial system attr: the changes a batch's asks made to the mirror study's system attrs.
MIRROR_ATTRS_KEY = "sweeps:mirror_study_attrs"
RDB_CONNECT_TIMEOUT_S = 10


def build_parser():
    p = _common.Parser(prog="python -m sweeps.optimize", description=__doc__.splitlines()[0])
    p.add_argument("--space", default=None, help="space file (default sweeps/spaces/default.toml)")
    p.add_argument("--trials", type=int, default=96, help="completed trials in the study (default %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="trials per batch / kernel launch (default %(default)s)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    p.add_argument("--target-win-rate", type=float, nargs=2, default=(0.55, 0.60), metavar=("LO", "HI"))
    p.add_argument("--min-trades", type=int, default=30, help="minimum trades per configuration (default %(default)s)")
    p.add_argument("--objective", default="sharpe", choices=OBJECTIVES)
    p.add_argument("--storage", default=None, help=f"Optuna storage URL or journal file (default {DEFAULT_STORAGE})")
    p.add_argument("--study", default=None,
                   help="study name (resumes it when it exists; default {space}-{data}-{objective}-{sampler}-s{seed})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="cube path (default results/<study>.zarr)")
    _common.add_overwrite_arg(p)
    p.add_argument("--oos-top", type=int, default=50, help="configurations re-evaluated out of sample (default 50)")
    p.add_argument("--top", type=int, default=10, help="rows in the printed report (default 10)")
    p.add_argument("--no-html", action="store_true", help="do not write the report page <out>.html beside the cube")
    p.add_argument("--no-fixed-comparison", action="store_true",
                   help="with a causally fitted long-horizon feature in the space (pl_dev, pl_under, s2f_dev, "
                        "s2f_under): skip the second search on its fixed (look-ahead) counterpart")
    from sweeps import shared_study

    shared_study.add_args(p)
    _common.add_data_args(p)
    return p


def check(args) -> None:
    _common.check_args(args)
    lo, hi = args.target_win_rate
    for v in (lo, hi):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"--target-win-rate: value {v!r} is outside [0, 1]")
    if lo > hi:
        raise InputError(f"--target-win-rate: lo {lo!r} > hi {hi!r}")
    for flag, v, lo_ok in (("--trials", args.trials, 1), ("--batch", args.batch, 1), ("--min-trades", args.min_trades, 0),
                           ("--oos-top", args.oos_top, 1), ("--seed", args.seed, 0), ("--top", args.top, 1)):
        if v < lo_ok:
            raise InputError(f"{flag}: value {v!r} must be >= {lo_ok}")
    if args.seed >= 2**32:
        raise InputError(f"--seed: value {args.seed!r} must be < 2**32")
    if args.study is not None and not args.study.strip():
        raise InputError("--study: the name is empty")
    from sweeps import shared_study

    shared_study.check_args(args)


# ---------------------------------------------------------------- Optuna plumbing

def batch_seed(seed: int, first_trial: int) -> int:
    """The sampler seed of the batch whose first trial number is `first_trial`."""
    return int(np.random.SeedSequence([int(seed), int(first_trial)]).generate_state(1)[0])


def make_sampler(name: str, seed: int, batch: int, first_trial: int = 0):
    """A fresh sampler for the batch starting at trial `first_trial` (see the module docstring).

    QMC keeps `seed` itself (the scrambling of the sequence must not change between batches;
    its position is the sample counter in the study system attrs); everything random else is
    seeded from `batch_seed(seed, first_trial)`.
    """
    import optuna

    bs = batch_seed(seed, first_trial)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=bs, n_startup_trials=max(10, batch), constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=bs, population_size=max(batch, 8))
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=bs, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=bs))
    if name == "qmc":
        import warnings

        with warnings.catch_warnings():  # "experimental" notice on every run
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False,
                                              warn_asynchronous_seeding=False,
                                              independent_sampler=optuna.samplers.RandomSampler(seed=bs))
    return optuna.samplers.RandomSampler(seed=bs)


def _safe_url(url: str) -> str:
    """The storage URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _is_rdb(url: str) -> bool:
    return "://" in url and not url.startswith("journal://")


def describe_storage(url: str | None) -> str:
    """How a storage is named in attrs and messages: the URL, or the journal file's path."""
    url = url or DEFAULT_STORAGE
    return url if _is_rdb(url) else str(Path(url.removeprefix("journal://")))


def make_storage(url: str | None, heartbeat: int | None = None, grace: int | None = None):
    """The Optuna storage of `--storage` and its description; unusable storage -> InputError.

    A database gets heartbeats every `heartbeat` s (trials failed after `grace` s without one)
    when given: a shared study (sweeps/shared_study.py)."""
    import optuna

    url = url or DEFAULT_STORAGE
    shown = _safe_url(url)
    if _is_rdb(url):
        scheme = url.split("://", 1)[0].lower()
        kwargs = {}
        if scheme.startswith(("postgresql", "mysql")):
            kwargs = {"engine_kwargs": {"connect_args": {"connect_timeout": RDB_CONNECT_TIMEOUT_S}}}
        from sweeps import shared_study

        try:
            return shared_study.rdb_storage(url, heartbeat=heartbeat, grace=grace, **kwargs), url
        except ImportError as exc:
            raise InputError(f"--storage: {shown}: the database driver is not installed ({_first_line(exc)})") from None
        except Exception as exc:  # sqlalchemy: unknown dialect, unreachable server, unopenable file ...
            raise InputError(f"--storage: {shown}: cannot open this storage ({_first_line(exc)})") from None
    path = check_journal_path(url)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # open-lock: cheaper than the default symlink lock here, and also works across processes
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend), str(path)
    except OSError as exc:
        raise InputError(f"--storage: {path}: cannot create or open the journal file "
                         f"({_first_line(exc)})") from None
    except Exception as exc:
        raise InputError(f"--storage: {path}: not a readable Optuna journal ({_first_line(exc)})") from None


def check_journal_path(url: str | None) -> Path:
    """A journal file `--storage` that can be used, checked without creating anything."""
    path = Path((url or DEFAULT_STORAGE).removeprefix("journal://"))
    outputs.check_parent_writable(path, "--storage")
    if path.is_dir():
        raise InputError(f"--storage: {path}: is a directory, not a journal file")
    if path.is_file() and path.stat().st_size > 0:
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as exc:
            raise InputError(f"--storage: {path}: cannot read it ({_first_line(exc)})") from None
        if not head.lstrip().startswith(b'{"op_code"'):  # never append to a user's file
            raise InputError(f"--storage: {path}: exists and is not an Optuna journal; refusing to append to it, "
                             "choose another file")
    return path


# ---------------------------------------------------------------- scoring

def objective_values(m: np.ndarray, objective: str, capital: float) -> np.ndarray:
    """Per-configuration objective (NaN -> 0: a configuration without trades earns nothing)."""
    if objective == "sharpe":
        v = m[:, METRIC_INDEX["sharpe"]]
    elif objective == "expectancy":
        v = m[:, METRIC_INDEX["expectancy"]]
    else:
        v = m[:, METRIC_INDEX["net_pnl"]] / capital
    return np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)


def constraint_values(m: np.ndarray, lo: float, hi: float, min_trades: int) -> np.ndarray:
    """[C, 5] constraint values, feasible when all <= 0 (see module docstring)."""
    wr = np.nan_to_num(m[:, METRIC_INDEX["win_rate"]], nan=0.0)
    wl = np.nan_to_num(m[:, METRIC_INDEX["win_rate_lo"]], nan=0.0)
    tr = m[:, METRIC_INDEX["trades"]]
    ex = np.nan_to_num(m[:, METRIC_INDEX["expectancy"]], nan=0.0)
    return np.stack([lo - wr, wr - hi, 0.5 - wl, (min_trades - tr) / max(min_trades, 1), -ex], axis=1)


def feasible(m: np.ndarray, lo: float, hi: float, min_trades: int) -> np.ndarray:
    """Per configuration: the target met strictly (Wilson lower bound > 0.5, expectancy > 0)."""
    wr = m[:, METRIC_INDEX["win_rate"]]
    return ((wr >= lo) & (wr <= hi) & (m[:, METRIC_INDEX["win_rate_lo"]] > 0.5)
            & (m[:, METRIC_INDEX["trades"]] >= min_trades) & (m[:, METRIC_INDEX["expectancy"]] > 0))


# ---------------------------------------------------------------- parts (every evaluated configuration)

def _save_part(parts: Path, batch_id: int, rec: dict) -> None:
    parts.mkdir(parents=True, exist_ok=True)
    tmp = parts / f".batch-{batch_id:06d}.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **rec)
    os.replace(tmp, parts / f"batch-{batch_id:06d}.npz")


def _part_files(parts: Path) -> list[Path]:
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.glob("batch-*.npz") if re.fullmatch(r"batch-\d+\.npz", p.name))


def _load_parts(parts: Path, stamp: str | None = None) -> list[dict]:
    """The part records (of the study `stamp` when given: parts of another study are skipped)."""
    out = []
    for p in _part_files(parts):
        with np.load(p, allow_pickle=False) as z:
            rec = {k: z[k] for k in z.files}
        if stamp is not None and str(rec.get("stamp", "")) != stamp:
            continue
        out.append(rec)
    return out


def _drop_stale_parts(parts: Path, n_done: int, stamp: str | None = None) -> None:
    """Remove part files of trials a killed run evaluated but never stored in the study,
    and those of another study (`stamp`: storage, study name and fingerprint)."""
    for p in _part_files(parts):
        stale = int(p.stem.split("-")[1]) >= n_done
        if not stale and stamp is not None:
            try:
                with np.load(p, allow_pickle=False) as z:
                    stale = "stamp" not in z.files or str(z["stamp"]) != stamp
            except Exception:
                stale = True  # a torn file (a kill while the OS wrote it)
        if stale:
            p.unlink()
    if parts.is_dir():
        for p in parts.glob("batch-*.trials.json"):
            if int(p.name.split("-")[1].split(".")[0]) >= n_done:
                p.unlink()
        for p in [*parts.glob(".batch-*.tmp.npz"), *parts.glob(".batch-*.trials.json.tmp")]:
            p.unlink()


def _trials_file(parts: Path, batch_id: int) -> Path:
    return parts / f"batch-{batch_id:06d}.trials.json"


def _save_trials(parts: Path, batch_id: int, trials, stamp: str) -> None:
    """The batch's finished trials, written before they are stored, so that a kill in the middle
    of storing them (add_trials is not atomic) can be completed on resume."""
    from optuna.distributions import distribution_to_json

    doc = {"stamp": stamp, "trials": [
        {"number": t.number, "params": t.params, "value": t.value,
         "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
         "user_attrs": t.user_attrs, "system_attrs": t.system_attrs} for t in trials]}
    dst = _trials_file(parts, batch_id)
    tmp = dst.with_name("." + dst.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, dst)


def _complete_partial_batch(parts: Path, persist, completed: int, stamp: str) -> int:
    """Store the rest of a batch whose add_trials a kill interrupted; returns the completed count."""
    import optuna
    from optuna.distributions import json_to_distribution

    for f in sorted(parts.glob("batch-*.trials.json")) if parts.is_dir() else []:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        nums = [t["number"] for t in doc.get("trials", [])]
        if doc.get("stamp") != stamp or not nums or not nums[0] < completed < nums[-1] + 1:
            continue
        if completed > nums[-1]:
            continue
        rest = [optuna.trial.create_trial(
            params=t["params"], value=t["value"], user_attrs=t["user_attrs"], system_attrs=t["system_attrs"],
            distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()})
            for t in doc["trials"] if t["number"] >= completed]
        persist.add_trials(rest)
        return completed + len(rest)
    return completed


def _remove_parts(parts: Path) -> None:
    """After the cube is written: its part files are in it; remove them (and the folder when empty)."""
    for p in _part_files(parts):
        p.unlink(missing_ok=True)
    if parts.is_dir():
        for p in [*parts.glob("batch-*.trials.json"), *parts.glob(".batch-*.tmp.npz"),
                  *parts.glob(".batch-*.trials.json.tmp")]:
            p.unlink(missing_ok=True)
        try:
            parts.rmdir()
        except OSError:
            pass  # something else is in there: not ours to remove


# ---------------------------------------------------------------- the study

def study_name(args, space, book_path: Path | None = None) -> str:
    """`--study`, or `{space}-{data store stem}-{objective}-{sampler}-s{seed}`."""
    if args.study:
        return args.study
    book = Path(book_path or args.data or _common.DEFAULT_BOOKS)
    stem = book.name.removesuffix(".zarr") or book.stem
    if _common.is_blocks_data(args):  # the block dataset as bars: data/blocks.npy -> blocks-1d
        stem = f"{book.name.removesuffix('.npy')}-{args.bar or '1d'}"
    return f"{space.name}-{stem}-{args.objective}-{args.sampler}-s{args.seed}"


def fingerprint_fields(space, book_path: Path, cost: dict, args) -> dict:
    """What a study's results depend on besides the sampler: stored as the study's user attrs."""
    return {"space_sha256": hashlib.sha256(space.text.encode()).hexdigest(),
            "data_sha256": results.sha256_path(book_path), "data_path": str(book_path),
            "fee_bps": cost["fee_bps"], "latency_ns": cost["latency_ns"], "capital": cost["capital"],
            "maker_fee_bps": cost.get("maker_fee_bps"), "cancel_latency_ns": cost.get("cancel_latency_ns"),
            "contract": {k: v for k, v in (cost.get("contract") or {}).items() if k != "source"},
            "buckets": args.buckets, "is_frac": args.is_frac, "purge_frac": args.purge_frac,
            "objective": args.objective, "target_win_rate": [float(v) for v in args.target_win_rate],
            "min_trades": args.min_trades, **({"market": cost["market"]} if "market" in cost else {})}


def fingerprint(space, book_path: Path, cost: dict, args, data_sha256: str | None = None) -> str:
    h = hashlib.sha256()
    h.update(space.text.encode())
    h.update(json.dumps({"costs": cost, "buckets": args.buckets, "is_frac": args.is_frac,
                         "purge_frac": args.purge_frac, "objective": args.objective,
                         "target": list(args.target_win_rate), "min_trades": args.min_trades},
                        sort_keys=True).encode())
    h.update((data_sha256 or results.sha256_path(book_path)).encode())
    return h.hexdigest()


FIELD_TEXT = {"space_sha256": "space file contents", "data_sha256": "data (book store contents)",
              "fee_bps": "--fee-bps", "latency_ns": "--latency-ms (ns)", "capital": "--capital",
              "maker_fee_bps": "--maker-fee-bps", "cancel_latency_ns": "--cancel-latency-ms (ns)",
              "contract": "the contract and queue model (--contract, --multiplier, --tick-size, --lot-size, --queue, "
                          "--queue-n)",
              "buckets": "--buckets", "is_frac": "--is-frac", "purge_frac": "--purge-frac",
              "objective": "--objective", "target_win_rate": "--target-win-rate", "min_trades": "--min-trades",
              "market": "the bar market (--bar, --spread-bps, --liquidity, --allow-modelled-prices, --from, --to)"}


def _conflict(name: str, storage_desc: str, old: dict | None, new: dict) -> InputError:
    if old:
        diff = []
        for key, text in FIELD_TEXT.items():
            a, b = old.get(key), new.get(key)
            if a != b:
                if key.endswith("sha256"):
                    where = f" (was {old.get('data_path')})" if key == "data_sha256" and old.get("data_path") else ""
                    diff.append(f"{text} differ{where}")
                else:
                    diff.append(f"{text} was {a!r}, now {b!r}")
        what = "; ".join(diff) or "the fingerprint differs"
    else:
        what = "its data, space, costs or target differ"
    return InputError(f"--study: study {name!r} in {_safe_url(storage_desc)} was run with other settings: {what}; "
                      "pass the same settings to resume it, or --study NAME to start a new study")


def open_study(storage, storage_desc: str, name: str, fp: str, fields: dict):
    """The persistent study `name` (created when new); one of other settings -> InputError."""
    import optuna

    try:
        try:  # load first: create_study(load_if_exists=True) appends to a journal even when it loads
            storage.get_study_id_from_name(name)
            persist = optuna.load_study(study_name=name, storage=storage)
            if persist.direction != optuna.study.StudyDirection.MAXIMIZE:
                raise ValueError("it is not a single-objective maximize study")
        except KeyError:
            persist = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                          load_if_exists=True)
        old_fp = persist.user_attrs.get("fingerprint")
        if old_fp is None:
            persist.set_user_attr("fingerprint_fields", fields)
            persist.set_user_attr("fingerprint", fp)
    except (ValueError, RuntimeError) as exc:  # e.g. a multi-objective study of the same name
        raise InputError(f"--study: study {name!r} in {_safe_url(storage_desc)}: {_first_line(exc)}; "
                         "pass --study NAME for a new study") from None
    if old_fp is not None and old_fp != fp:
        raise _conflict(name, storage_desc, persist.user_attrs.get("fingerprint_fields"), fields)
    return persist


def _restore_mirror_attrs(study, trials) -> dict:
    """Replay the study system attrs recorded on stored trials (MIRROR_ATTRS_KEY) into the mirror."""
    seen = {}
    for t in trials:
        seen.update(t.system_attrs.get(MIRROR_ATTRS_KEY) or {})
    for k, v in seen.items():
        study._storage.set_study_system_attr(study._study_id, k, v)
    return seen


def _record_mirror_attrs(study, trial, seen: dict) -> None:
    """Record on `trial` (running) what changed in the mirror's study system attrs since `seen`."""
    now = study._storage.get_study_system_attrs(study._study_id)
    delta = {k: v for k, v in now.items() if k not in seen or seen[k] != v}
    if delta:
        study._storage.set_trial_system_attr(trial._trial_id, MIRROR_ATTRS_KEY, delta)
        seen.update(delta)


def chosen_of(space, params: dict) -> dict:
    """A stored trial's parameters as `space.suggest` returned them (single values filled in)."""
    out = {}
    for n, p in space.params.items():
        if n in params:
            out[n] = params[n]
        elif p.kind == "list" and len(p.values) == 1:
            out[n] = p.values[0]
        else:
            raise InputError(f"--study: a stored trial lacks parameter {n!r} of the space")
    return out


# ---------------------------------------------------------------- evaluation of a batch of trials

def evaluate_trials(chosen: list[dict], numbers: list[int], space, data, cost, args) -> dict:
    """One kernel launch over the neighbourhoods of `chosen`: the part record of these trials."""
    lo, hi = args.target_win_rate
    nb = space.neighbourhood_size
    k = len(chosen)
    pts = [space.expand(c) for c in chosen]
    points = {p: np.concatenate([x[p] for x in pts]) for p in space.params}
    fields = _common.configs_for(space, points, data, cost)
    m, bpnl = _common.evaluate(data, "is", fields, args.device, args.buckets, cost)
    obj = objective_values(m, args.objective, cost["capital"]).reshape(k, nb)
    cons = constraint_values(m, lo, hi, args.min_trades).reshape(k, nb, len(CONSTRAINTS))
    rec = {"trial": np.array(numbers, dtype=np.int64), "value": np.median(obj, axis=1),
           "constraints": np.median(cons, axis=1),
           "metrics": m.reshape(k, nb, -1), "bucket_pnl": bpnl.reshape(k, nb, -1)}
    for p in space.params:
        rec[f"p_{p}"] = points[p].reshape(k, nb)
    return rec


def _records_from_cube(out: Path, space, stamp_attrs: dict, study_trials: dict) -> dict | None:
    """The trials of our earlier cube at `out` as a part record (None when it is not that study's).

    Rows whose value disagrees with the stored trial are left out (they are re-evaluated)."""
    if not outputs.is_ours(out, "cube"):
        return None
    try:
        ds = results.open_cube(out)
        if any(ds.attrs.get(k) != v for k, v in stamp_attrs.items()) or ds.attrs.get("kind") != "optimize":
            return None
        nums = np.asarray(ds["trial"].values, dtype=np.int64)
        value = np.asarray(ds["value"].values, dtype=np.float64)
        keep = np.array([int(n) in study_trials and study_trials[int(n)].value == float(v)
                         for n, v in zip(nums, value)], dtype=bool)
        if not keep.any():
            return None
        shape = ds["trades"].shape
        rec = {"trial": nums[keep], "value": value[keep],
               "constraints": np.stack([ds[f"constraint_{c}"].values for c in CONSTRAINTS], axis=1)[keep],
               "metrics": np.stack([ds[m].values for m in METRICS], axis=-1)[keep],
               "bucket_pnl": np.asarray(ds["bucket_pnl"].transpose("trial", "config", "bucket").values)[keep]}
        for p in space.params:
            arr = np.asarray(ds[p].values)
            if arr.ndim == 1:
                arr = np.broadcast_to(arr[:, None], shape)
            rec[f"p_{p}"] = np.asarray(arr)[keep]
        return rec
    except Exception:  # unreadable or of another layout: the trials are re-evaluated instead
        return None


# ---------------------------------------------------------------- the run

def run(args) -> int:
    """The search; then, when the space uses a causally fitted long-horizon feature (pl_dev,
    pl_under, s2f_dev, s2f_under: gpu_engine/features_longterm.py), the same search again with
    each replaced by its fixed published-parameter (look-ahead) counterpart, and both side by
    side (`inspect.lookahead_comparison`)."""
    t0 = time.perf_counter()
    check(args)
    space = space_mod.load(args.space)
    space_mod.feature_spec(space)  # unknown signal names, before anything is touched
    fixed_space = None if args.no_fixed_comparison else lookahead_space(space)
    if fixed_space is None:
        _run(args, space)
        return 0
    fixed_args = _fixed_args(args, space)
    out, st = _run(args, space, companion=fixed_args.out)
    print(f"look-ahead check: the same search with the fixed published parameters (look-ahead) in place of the "
          f"causal fits ({', '.join(f'{a} -> {b}' for a, b in fixed_space.substituted)}) ...", flush=True)
    fixed_out, fixed_st = _run(fixed_args, fixed_space, print_report=False)
    if st is None or fixed_st is None:  # a shared-study worker that did not write a cube: the writer compares
        return 0
    from sweeps import inspect as inspect_mod

    print(inspect_mod.lookahead_comparison(results.open_cube(out), results.open_cube(fixed_out), st, fixed_st))
    print(f"both searches: wall {time.perf_counter() - t0:.1f} s (fixed-parameter cube: {fixed_out})")
    return 0


def lookahead_space(space):
    """The space with every causal long-horizon feature replaced by its fixed (look-ahead) counterpart
    (`features_longterm.FIXED_OF`), named `<name>-fixed`; None when the space uses none of them.
    The substitutions are in `.substituted` as (causal, fixed) pairs."""
    import tomllib

    from gpu_engine.features_longterm import FIXED_OF

    used = [v for key in ("signal", "regime") for v in space.features(key)]
    subs = [(name, FIXED_OF[name]) for name in dict.fromkeys(space_mod.parse_feature(v)[0] for v in used)
            if name in FIXED_OF]
    if not subs:
        return None
    text = space.text
    for a, b in subs:
        text = re.sub(rf'"{re.escape(a)}"', f'"{b}"', text)
    fixed = space_mod.parse(tomllib.loads(text), space.path, text)
    fixed.name = f"{space.name}-fixed"
    fixed.substituted = subs
    return fixed


def _fixed_args(args, space):
    """The companion run's arguments: its own study (`<study>-fixed`) and cube (`<cube>-fixed.zarr`)."""
    import copy

    a = copy.copy(args)
    book_path, _ = _common.data_paths(args)
    name = study_name(args, space, book_path)
    a.study = f"{name}-fixed"
    out = Path(args.out) if args.out else Path("results") / f"{name}.zarr"
    a.out = str(out.with_name(out.name.removesuffix(".zarr") + "-fixed.zarr"))
    a.no_html = True
    return a


def _run(args, space, print_report: bool = True, companion: str | None = None):
    """One search (see the module docstring): returns (cube path, search statistics)."""
    import optuna
    from optuna.trial import TrialState

    t_start = time.perf_counter()
    if args.device != "cuda":
        kernels.preload_cpu()  # overlaps the data loading; a no-op when the kernel is not cached
    book_path, _ = _common.data_paths(args)
    cost = _common.run_costs(args, space)  # None: the default store is generated below
    name = study_name(args, space, book_path)
    out = Path(args.out) if args.out else Path("results") / f"{name}.zarr"
    parts = out.with_name(out.name + ".parts")
    inputs = _common.input_paths(args, space)
    _common.refuse_inputs(out, "--out", inputs)
    _common.refuse_inputs(parts, "--out", inputs)

    # What the study depends on (the data hash is known before loading when the store exists).
    fields = fingerprint_fields(space, book_path, cost, args) if cost is not None and book_path.exists() else None
    fp = fingerprint(space, book_path, cost, args, fields["data_sha256"]) if fields else None
    storage_desc = describe_storage(args.storage)
    stamp_attrs = {"study": name, "storage": storage_desc, "fingerprint": fp}
    same = False
    if out.exists() or out.is_symlink():
        same = fp is not None and outputs.is_ours(out, "cube") and _cube_stamp_matches(out, stamp_attrs)
        if not same and fp is not None and outputs.is_ours(out, "cube"):
            attrs = _cube_attrs(out)
            if (attrs.get("kind") == "optimize" and attrs.get("study") == name
                    and attrs.get("storage") == storage_desc and attrs.get("fingerprint") != fp):
                raise _conflict(name, storage_desc, attrs.get("fingerprint_fields"), fields)  # said before --out
        if not same and not args.overwrite:
            raise InputError(f"{out}: --out: already exists and is not the cube of study {name!r} with these "
                             "settings; pass --overwrite to replace a result cube, or choose another --out")
    outputs.claim_output(out, "--out", kind="cube", overwrite=args.overwrite or same, inputs=inputs)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A database is opened (and so checked) before the data is loaded, to fail fast; a journal file
    # is only checked here and created after the data loaded, so bad data leaves no journal behind.
    persist = None
    if _is_rdb(args.storage or DEFAULT_STORAGE):
        from sweeps import shared_study

        storage, storage_desc = make_storage(args.storage, *shared_study.heartbeat_settings(args))
        persist = open_study(storage, storage_desc, name, fp, fields) if fp else None
    else:
        check_journal_path(args.storage)
    log = print
    data = _common.load_data(args, space, log=log)
    if cost is None:  # the default store was generated just now
        cost = _common.run_costs(args, space, data)
    for line in market_settings.describe(cost):
        log(line)
    if not _is_rdb(args.storage or DEFAULT_STORAGE):
        storage, storage_desc = make_storage(args.storage)
    if persist is None:  # a journal, or the default data was generated just now
        fields = fingerprint_fields(space, data.book_path, cost, args)
        fp = fingerprint(space, data.book_path, cost, args, fields["data_sha256"])
        stamp_attrs["fingerprint"] = fp
        persist = open_study(storage, storage_desc, name, fp, fields)
    stamp = json.dumps(stamp_attrs, sort_keys=True)
    t_data = time.perf_counter() - t_start

    shared = None  # a database --storage: this run is one worker of a shared study (sweeps/shared_study.py)
    if _is_rdb(args.storage or DEFAULT_STORAGE):
        from sweeps import shared_study

        shared = shared_study.Worker(persist, name=name, out=out, parts=parts, stamp=stamp, space=space, data=data,
                                     cost=cost, args=args, log=log)
        if not shared.run():  # another worker writes the cube
            return out, None
        study, timings, nb = persist, shared.timings, space.neighbourhood_size
    else:
        # The persistent study (journal) receives each batch's finished trials in one add_trials;
        # the sampler runs on an in-memory mirror of it, so Optuna's per-operation storage cost is
        # paid once per trial instead of once per suggest / constraint (measured: benchmarks/RESULTS.md).
        previous = persist.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if _complete_partial_batch(parts, persist, len(previous), stamp) != len(previous):
            previous = persist.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        study = optuna.create_study(direction="maximize")
        study.add_trials(previous)
        seen_attrs = _restore_mirror_attrs(study, previous)
        completed = len(previous)
        _drop_stale_parts(parts, completed, stamp)
        if completed:
            log(f"study {name!r}: resuming with {completed} completed trials")

        nb = space.neighbourhood_size
        stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
        stop_mid = int(os.environ.get(STOP_MID_ENV, "0") or 0)
        timings = []
        bar = _common.WarmBar(args.trials, "trial", args.no_progress, initial=min(completed, args.trials),
                             desc="optimize")
        batches = 0
        while completed < args.trials:
            k = min(args.batch, args.trials - completed)
            t0 = time.perf_counter()
            study.sampler = make_sampler(args.sampler, args.seed, args.batch, first_trial=completed)
            trials = [study.ask() for _ in range(k)]
            chosen = [space.suggest(t) for t in trials]
            _record_mirror_attrs(study, trials[-1], seen_attrs)
            t_ask = time.perf_counter() - t0
            t1 = time.perf_counter()
            rec = evaluate_trials(chosen, [t.number for t in trials], space, data, cost, args)
            rec["stamp"] = np.array(stamp)
            t_eval = time.perf_counter() - t1
            _save_part(parts, int(rec["trial"].min()), rec)
            if stop_mid and batches + 1 >= stop_mid:
                bar.close()
                os._exit(137)  # simulated kill -9 between the part file and the stored trials
            t2 = time.perf_counter()
            for t, v, c in zip(trials, rec["value"], rec["constraints"]):
                for cname, cv in zip(CONSTRAINTS, c):
                    t.set_constraint(cname, float(cv))
                study.tell(t, float(v))
            finished = study.get_trials(deepcopy=False)  # (study.trials deep-copies every trial)
            finished = [finished[t.number] for t in trials]
            _save_trials(parts, int(rec["trial"].min()), finished, stamp)
            persist.add_trials(finished)
            t_tell = time.perf_counter() - t2
            total = time.perf_counter() - t0
            timings.append({"trials": k, "configs": k * nb, "ask_s": t_ask, "eval_s": t_eval, "tell_s": t_tell,
                            "total_s": total, "optuna_share": (t_ask + t_tell) / total})
            completed += k
            batches += 1
            bar.update(k)
            bar.set_postfix(optuna=f"{100 * (t_ask + t_tell) / total:.1f}%", cfg_s=f"{k * nb / max(t_eval, 1e-9):.0f}")
            if stop_after and batches >= stop_after:
                bar.close()
                os._exit(137)  # simulated kill -9
        bar.close()

    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    recs = []
    if same or out.exists():
        old = _records_from_cube(out, space, stamp_attrs, done)
        if old is not None:
            recs.append(old)
    recs += _load_parts(parts, stamp)
    have = {int(n) for r in recs for n in r["trial"]}
    missing = sorted(set(done) - have)
    if missing:
        log(f"re-evaluating {len(missing)} stored trials whose part files are gone ...")
        for a in range(0, len(missing), args.batch):
            nums = missing[a:a + args.batch]
            recs.append(evaluate_trials([chosen_of(space, done[n].params) for n in nums], nums,
                                        space, data, cost, args))
    ds = assemble(study, recs, space, args)
    ds = reevaluate_oos(ds, space, data, cost, args)
    market_attrs = {}
    if data.market is not None:
        market_attrs = {"market": data.market, "walk_forward": yearly_walk_forward(data, args.buckets)}
    if companion is not None:
        market_attrs["companion_fixed"] = str(companion)
    if getattr(space, "substituted", None):
        market_attrs["substituted"] = [list(x) for x in space.substituted]
    wall = time.perf_counter() - t_start
    opt = sum(t["ask_s"] + t["tell_s"] for t in timings)
    loop = sum(t["total_s"] for t in timings)
    lo, hi = args.target_win_rate
    ds.attrs = results.provenance(
        kind="optimize", data={"book": data.book_path, "blocks": data.blocks_path}, space=space, costs=cost,
        **_common.data_set_attrs(data),
        device=data.device, wall_s=wall, sampler=args.sampler, seed=args.seed, study=name, storage=storage_desc,
        fingerprint=fp, fingerprint_fields=fields, objective=args.objective, target_win_rate=[lo, hi], min_trades=args.min_trades,
        buckets=args.buckets, split=data.split.as_attrs(), thresholds=space.thresholds, neighbourhood=nb,
        batch=args.batch, n_trials=int(ds.sizes["trial"]), n_configs=int(ds.sizes["trial"] * ds.sizes["config"]),
        data_prep_s=t_data, batches=timings,
        optuna_share=(opt / loop) if loop else None,
        optuna_share_max=max((t["optuna_share"] for t in timings), default=None), **market_attrs)
    from sweeps import inspect as inspect_mod

    _common.done_with_data()
    st = inspect_mod.search_stats(ds)  # PBO, DSR, effective trials, SPA: in the cube, the report and the page
    ds.attrs["search_stats"] = inspect_mod.stats_attrs(st)
    results.write_cube(ds, out)
    _remove_parts(parts)  # only now: the cube holds every row
    if shared is not None:
        shared.cube_written()

    if not print_report:
        print(f"  fixed-parameter search: {int(ds.sizes['trial'])} trials, cube {out}, wall {wall:.1f} s", flush=True)
        return out, st
    cube = results.open_cube(out)
    print(inspect_mod.report(cube, top=args.top, stats=st))
    if timings:
        print(f"optuna ask+tell: {opt:.2f} s of {loop:.2f} s in the search loop ({100 * opt / loop:.1f}%; "
              f"worst batch {100 * max(t['optuna_share'] for t in timings):.1f}%) over {len(timings)} batches")
    print(f"cube: {out}   study: {name} in {_safe_url(storage_desc)}   wall {wall:.1f} s (data {t_data:.1f} s)")
    if kernels.STARTUP:
        s = kernels.STARTUP
        print(f"startup: the first kernel ran {s['loaded']:.2f} s after the process began "
              f"(inputs ready at {s['ready']:.2f} s, kernel loaded in {s['loaded'] - s['ready']:.2f} s)")
    if not args.no_html:
        from sweeps import report_html

        report_html.write_beside(out, top=args.top, stats=st)
    return out, st


def yearly_walk_forward(data, buckets: int) -> dict:
    """Walk-forward over years on the in-sample buckets of a bar market: anchored folds whose test
    slices are about one year each (validation.walk_forward cuts equal slices of buckets), and the
    first UTC day of every in-sample bucket, so that the report can date the folds."""
    ts = np.asarray(data.is_book.ts, dtype=np.int64)
    T = ts.size
    span_days = (int(ts[-1]) - int(ts[0])) / 86_400e9
    n_folds = int(max(1, min(round(span_days / 365.25) - 1, buckets // 2 - 1)))
    first = [int(ts[(b * T) // buckets]) // 1_000_000_000 for b in range(buckets)]
    days = [str(np.datetime64(t, "s").astype("datetime64[D]")) for t in first]
    return {"mode": "anchored", "n_folds": n_folds, "unit": "about one year per test slice",
            "bucket_first_day": days}


def _cube_attrs(out: Path) -> dict:
    try:
        return results.read_attrs(out)
    except Exception:
        return {}


def _cube_stamp_matches(out: Path, stamp_attrs: dict) -> bool:
    attrs = _cube_attrs(out)
    return attrs.get("kind") == "optimize" and all(attrs.get(k) == v for k, v in stamp_attrs.items())


def assemble(study, parts_list: list[dict], space, args) -> xr.Dataset:
    """The optimize cube from every record (part file, earlier cube) whose trials completed in the study.

    A later record of the same trial replaces an earlier one (they are equal: evaluation is
    deterministic)."""
    from optuna.trial import TrialState

    done = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    rows = {}
    for rec in parts_list:
        for i, num in enumerate(rec["trial"]):
            if int(num) in done:
                rows[int(num)] = (rec, i)
    nums = sorted(rows)
    if not nums:
        raise InputError("optimize: no completed trial to report")
    pick = lambda key: np.stack([rows[n][0][key][rows[n][1]] for n in nums])  # noqa: E731
    metrics = pick("metrics")
    coords = {"trial": np.array(nums), "config": np.arange(metrics.shape[1])}
    for p in space.params:
        vals = pick(f"p_{p}")
        if vals.dtype.kind in "OUS":
            vals = vals.astype(str)
        if p in space.dense:
            coords[p] = (("trial", "config"), vals)
        else:
            coords[p] = ("trial", vals[:, 0])
    data_vars = {m: (("trial", "config"), metrics[:, :, i]) for i, m in enumerate(METRICS)}
    for m in METRICS:
        data_vars[f"oos_{m}"] = (("trial", "config"), np.full(metrics.shape[:2], np.nan))
    data_vars["oos_evaluated"] = (("trial", "config"), np.zeros(metrics.shape[:2], bool))
    data_vars["bucket_pnl"] = (("trial", "config", "bucket"), pick("bucket_pnl"))
    data_vars["value"] = ("trial", pick("value"))
    cons = pick("constraints")
    for j, c in enumerate(CONSTRAINTS):
        data_vars[f"constraint_{c}"] = ("trial", cons[:, j])
    data_vars["trial_feasible"] = ("trial", (cons <= 0).all(axis=1))
    import xarray as xr

    return xr.Dataset(data_vars, coords=coords)


def reevaluate_oos(ds: xr.Dataset, space, data, cost, args) -> xr.Dataset:
    """Re-run the best `--oos-top` configurations out of sample: feasible in sample first, then
    those that trade at all, then by the in-sample objective."""
    lo, hi = args.target_win_rate
    m = np.stack([ds[name].values.reshape(-1) for name in METRICS], axis=1)
    obj = objective_values(m, args.objective, cost["capital"])
    feas = feasible(m, lo, hi, args.min_trades)
    trades = np.nan_to_num(m[:, METRIC_INDEX["trades"]], nan=0.0)
    order = np.lexsort((-obj, ~(trades > 0), ~feas))[: args.oos_top]  # a row that never trades tells nothing OOS
    shape = ds["trades"].shape
    points = {}
    for p in space.params:
        arr = ds[p].values
        if arr.ndim == 1:
            arr = np.broadcast_to(arr[:, None], shape)
        points[p] = arr.reshape(-1)[order]
    fields = _common.configs_for(space, points, data, cost)
    m_oos, _ = _common.evaluate(data, "oos", fields, args.device, args.buckets, cost)
    for i, name in enumerate(METRICS):
        flat = ds[f"oos_{name}"].values.reshape(-1).copy()
        flat[order] = m_oos[:, i]
        ds[f"oos_{name}"] = (("trial", "config"), flat.reshape(shape))
    ev = np.zeros(int(np.prod(shape)), bool)
    ev[order] = True
    ds["oos_evaluated"] = (("trial", "config"), ev.reshape(shape))
    return ds


def main(argv=None) -> int:
    return _common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
