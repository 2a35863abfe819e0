"""`python -m sweeps.optimize`: Optuna batch search for configurations that reach a win-rate target.

With no arguments it runs on the embedded default (the block dataset and the
synthetic books are generated when absent), then prints the report of
`sweeps.inspect`. ARCHITECTURE section 5:

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
  `<out>.parts/`, written before the trials are stored) and lands in the cube.
- Storage defaults to a JournalStorage file `results/optuna.journal`; the
  study name defaults to one derived from space, objective, sampler and seed,
  so the same command after a kill resumes it (or pass `--study NAME`).
  `--trials` is the study's total of completed trials. The sampler works on an
  in-memory mirror of the stored study (loaded with add_trials on start); each
  batch's finished trials are appended to the storage with one add_trials, so
  a kill loses at most the batch in flight (its part file is dropped on resume).
- Afterwards the best `--oos-top` configurations (per-config feasible first,
  then by in-sample objective) are re-evaluated out of sample, the cube is
  written (temp + rename) and the report printed.
- Optuna's own time (ask with the suggestions, and tell) is measured per batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from gpu_engine import results
from gpu_engine import space as space_mod
from gpu_engine.errors import InputError
from gpu_engine.enums import METRIC_INDEX, METRICS
from sweeps import _common

SAMPLERS = ("tpe", "cmaes", "nsga2", "qmc", "random")
OBJECTIVES = ("sharpe", "expectancy", "net_pnl")
DEFAULT_STORAGE = "results/optuna.journal"
CONSTRAINTS = ("win_rate_min", "win_rate_max", "wilson_lo", "trades", "expectancy")
STOP_AFTER_ENV = "SWEEPS_OPTIMIZE_STOP_AFTER"  # test hook: die like kill -9 after k batches


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
    p.add_argument("--study", default=None, help="study name (resumes it when it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="cube path (default results/<study>.zarr)")
    p.add_argument("--oos-top", type=int, default=50, help="configurations re-evaluated out of sample (default 50)")
    p.add_argument("--top", type=int, default=10, help="rows in the printed report (default 10)")
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
                           ("--oos-top", args.oos_top, 1), ("--seed", args.seed, 0)):
        if v < lo_ok:
            raise InputError(f"{flag}: value {v!r} must be >= {lo_ok}")


# ---------------------------------------------------------------- Optuna plumbing

def make_sampler(name: str, seed: int, batch: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(10, batch), constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(batch, 8))
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    if name == "qmc":
        import warnings

        with warnings.catch_warnings():  # "experimental" notice on every run
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False,
                                              warn_asynchronous_seeding=False)
    return optuna.samplers.RandomSampler(seed=seed)


def make_storage(url: str | None):
    import optuna

    url = url or DEFAULT_STORAGE
    if "://" in url and not url.startswith("journal://"):
        return optuna.storages.get_storage(url), url
    path = Path(url.removeprefix("journal://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    # open-lock: cheaper than the default symlink lock here, and also works across processes
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend), str(path)


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


def _load_parts(parts: Path) -> list[dict]:
    out = []
    if parts.exists():
        for p in sorted(parts.glob("batch-*.npz")):
            with np.load(p, allow_pickle=False) as z:
                out.append({k: z[k] for k in z.files})
    return out


def _drop_stale_parts(parts: Path, n_done: int) -> None:
    """Remove part files of trials a killed run evaluated but never stored in the study."""
    if parts.exists():
        for p in parts.glob("batch-*.npz"):
            if int(p.stem.split("-")[1]) >= n_done:
                p.unlink()
        for p in parts.glob(".batch-*.tmp.npz"):
            p.unlink()


# ---------------------------------------------------------------- the run

def study_name(args, space) -> str:
    return args.study or f"{space.name}-{args.objective}-{args.sampler}-s{args.seed}"


def fingerprint(space, data, cost, args) -> str:
    h = hashlib.sha256()
    h.update(space.text.encode())
    h.update(json.dumps({"costs": cost, "buckets": args.buckets, "is_frac": args.is_frac,
                         "purge_frac": args.purge_frac, "objective": args.objective,
                         "target": list(args.target_win_rate), "min_trades": args.min_trades},
                        sort_keys=True).encode())
    h.update(results.sha256_path(data.book_path).encode())
    return h.hexdigest()


def run(args) -> int:
    import optuna
    from optuna.trial import TrialState

    t_start = time.perf_counter()
    check(args)
    space = space_mod.load(args.space)
    cost = _common.costs(args)
    lo, hi = args.target_win_rate
    name = study_name(args, space)
    out = Path(args.out) if args.out else Path("results") / f"{name}.zarr"
    parts = out.with_name(out.name + ".parts")
    log = print
    data = _common.load_data(args, space, log=log)
    fp = fingerprint(space, data, cost, args)
    t_data = time.perf_counter() - t_start

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, storage_desc = make_storage(args.storage)
    # The persistent study (journal/RDB) receives each batch's finished trials in one add_trials;
    # the sampler runs on an in-memory mirror of it, so Optuna's per-operation storage cost is
    # paid once per trial instead of once per suggest / constraint (measured: benchmarks/RESULTS.md).
    persist = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    old_fp = persist.user_attrs.get("fingerprint")
    if old_fp is None:
        persist.set_user_attr("fingerprint", fp)
    elif old_fp != fp:
        raise InputError(f"--study: study {name!r} in {storage_desc} was run with other data, space, costs "
                         "or target; choose another --study")
    previous = persist.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    study = optuna.create_study(direction="maximize", sampler=make_sampler(args.sampler, args.seed, args.batch))
    study.add_trials(previous)
    completed = len(previous)
    _drop_stale_parts(parts, completed)
    if completed:
        log(f"study {name!r}: resuming with {completed} completed trials")

    nb = space.neighbourhood_size
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    timings = []
    bar = _common.progress(args.trials, "trial", args.no_progress, initial=min(completed, args.trials), desc="optimize")
    batches = 0
    while completed < args.trials:
        k = min(args.batch, args.trials - completed)
        t0 = time.perf_counter()
        trials = [study.ask() for _ in range(k)]
        chosen = [space.suggest(t) for t in trials]
        t_ask = time.perf_counter() - t0
        pts = [space.expand(c) for c in chosen]
        points = {p: np.concatenate([x[p] for x in pts]) for p in space.params}
        fields = _common.configs_for(space, points, data, cost)
        t1 = time.perf_counter()
        m, bpnl = _common.evaluate(data, "is", fields, args.device, args.buckets)
        t_eval = time.perf_counter() - t1
        obj = objective_values(m, args.objective, cost["capital"]).reshape(k, nb)
        cons = constraint_values(m, lo, hi, args.min_trades).reshape(k, nb, len(CONSTRAINTS))
        value = np.median(obj, axis=1)
        cmed = np.median(cons, axis=1)
        rec = {"trial": np.array([t.number for t in trials]), "value": value, "constraints": cmed,
               "metrics": m.reshape(k, nb, -1), "bucket_pnl": bpnl.reshape(k, nb, -1)}
        for p in space.params:
            rec[f"p_{p}"] = points[p].reshape(k, nb)
        _save_part(parts, rec["trial"].min(), rec)
        t2 = time.perf_counter()
        for t, v, c in zip(trials, value, cmed):
            for cname, cv in zip(CONSTRAINTS, c):
                t.set_constraint(cname, float(cv))
            study.tell(t, float(v))
        finished = study.get_trials(deepcopy=False)  # (study.trials deep-copies every trial)
        persist.add_trials([finished[t.number] for t in trials])
        t_tell = time.perf_counter() - t2
        total = time.perf_counter() - t0
        timings.append({"trials": k, "configs": k * nb, "ask_s": t_ask, "eval_s": t_eval, "tell_s": t_tell,
                        "total_s": total, "optuna_share": (t_ask + t_tell) / total})
        completed += k
        batches += 1
        bar.update(k)
        bar.set_postfix(optuna=f"{100 * (t_ask + t_tell) / total:.1f}%", cfg_s=f"{k * nb / max(t_eval, 1e-9):.3g}")
        if stop_after and batches >= stop_after:
            bar.close()
            os._exit(137)  # simulated kill -9
    bar.close()

    ds = assemble(study, _load_parts(parts), space, args)
    ds = reevaluate_oos(ds, space, data, cost, args)
    wall = time.perf_counter() - t_start
    opt = sum(t["ask_s"] + t["tell_s"] for t in timings)
    loop = sum(t["total_s"] for t in timings)
    ds.attrs = results.provenance(
        kind="optimize", data={"book": data.book_path, "blocks": data.blocks_path}, space=space, costs=cost,
        device=data.device, wall_s=wall, sampler=args.sampler, seed=args.seed, study=name, storage=storage_desc,
        objective=args.objective, target_win_rate=[lo, hi], min_trades=args.min_trades, buckets=args.buckets,
        split=data.split.as_attrs(), thresholds=space.thresholds, neighbourhood=nb, batch=args.batch,
        n_trials=int(ds.sizes["trial"]), n_configs=int(ds.sizes["trial"] * ds.sizes["config"]),
        data_prep_s=t_data, batches=timings,
        optuna_share=(opt / loop) if loop else None,
        optuna_share_max=max((t["optuna_share"] for t in timings), default=None))
    results.write_cube(ds, out)

    from sweeps import inspect as inspect_mod

    print(inspect_mod.report(results.open_cube(out), top=args.top))
    if timings:
        print(f"optuna ask+tell: {opt:.2f} s of {loop:.2f} s in the search loop ({100 * opt / loop:.1f}%; "
              f"worst batch {100 * max(t['optuna_share'] for t in timings):.1f}%) over {len(timings)} batches")
    print(f"cube: {out}   study: {name} in {storage_desc}   wall {wall:.1f} s (data {t_data:.1f} s)")
    return 0


def assemble(study, parts_list: list[dict], space, args) -> xr.Dataset:
    """The optimize cube from every saved part whose trials completed in the study."""
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
    return xr.Dataset(data_vars, coords=coords)


def reevaluate_oos(ds: xr.Dataset, space, data, cost, args) -> xr.Dataset:
    """Re-run the best `--oos-top` configurations (feasible in sample first) out of sample."""
    lo, hi = args.target_win_rate
    m = np.stack([ds[name].values.reshape(-1) for name in METRICS], axis=1)
    obj = objective_values(m, args.objective, cost["capital"])
    feas = feasible(m, lo, hi, args.min_trades)
    order = np.lexsort((-obj, ~feas))[: args.oos_top]
    shape = ds["trades"].shape
    points = {}
    for p in space.params:
        arr = ds[p].values
        if arr.ndim == 1:
            arr = np.broadcast_to(arr[:, None], shape)
        points[p] = arr.reshape(-1)[order]
    fields = _common.configs_for(space, points, data, cost)
    m_oos, _ = _common.evaluate(data, "oos", fields, args.device, args.buckets)
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
