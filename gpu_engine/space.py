"""Parameter spaces: one TOML file serves the grid sweep and the Optuna search.

A space file has an optional `[space]` table (name, description) and one
`[params.NAME]` table per parameter, in one of these forms:

    [params.side]        values = [-1, 0, 1]                 # a list (categorical for Optuna)
    [params.cooldown]    value = 0                           # fixed
    [params.window]      low = 20, high = 200, step = 60     # a range with a step
    [params.entry]       dist = "log", low = 0.5, high = 4   # a distribution: int | float | log
                         points = 6                          #   how many points a grid takes (linear/geometric)
    [params.signal]      dist = "categorical", choices = ["ofi", "imbalance1"]

Numeric ranges and distributions may carry `dense = N` (and `width`, default
0.25): the dense neighbourhood one trial sweeps (sweeps/optimize.py). Optuna
then suggests the centre only, and one launch evaluates N points around it: N
consecutive steps of a range, or N points spread over `width` of the (log-)range of a distribution,
slid to stay inside the bounds. The neighbourhood of a trial is the Cartesian
product over all dense parameters, so every trial has the same number of
configurations.

Parameter names are `enums.CONFIG_FIELDS` names except: `signal` and `regime`
take bank feature *names* (resolved to rows with `window` for `signal`),
`window` is the signal's window, `max_hold_s` is the holding limit in
seconds (`max_hold` in ns in the configuration) and `entry_tif_s` a maker
entry's time in force in seconds (`entry_tif` in ns); `entry_type` and
`tp_type` take "taker" or "maker" (rules v2, docs/RULES.md). Costs and market
settings (`fee_bps`, `maker_fee_bps`, `latency`, `cancel_latency`, `capital`,
the contract, the queue model) are not part of a space: they are fixed per
run by CLI flags (sweeps/market_settings.py). TOML's `inf` disables an exit or
filter where the field allows it, and `entry_tif_s = inf` keeps an order until
it fills.

Every problem raises `InputError` naming the file, line, key and value.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from gpu_engine.errors import InputError
from gpu_engine.enums import CONFIG_FIELDS, ORDER_TYPES

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "sweeps" / "spaces" / "default.toml"

# name -> (kind, check, text): kind "str" names a bank feature or an order type; "int"/"float" numbers
_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
PARAMS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "signal": ("str", lambda v: True, "a feature name"),
    "window": ("int", lambda v: v >= 1 and math.isfinite(v), "an integer >= 1"),
    "entry": ("float", lambda v: 0 < v < math.inf, "finite and > 0"),
    "exit": ("float", *_NONNEG),
    "side": ("int", lambda v: v in (-1, 0, 1), "one of -1, 0, 1"),
    "regime": ("str", lambda v: True, "a feature name"),
    "band": ("float", *_NONNEG),
    "take_profit": ("float", *_POS),
    "stop_loss": ("float", *_POS),
    "max_hold_s": ("float", *_POS),
    "size_frac": ("float", lambda v: 0 < v <= 1, "in (0, 1]"),
    "max_qty": ("float", *_POS),
    "cooldown": ("int", lambda v: v >= 0 and math.isfinite(v), "an integer >= 0"),
    # rules v2 (docs/RULES.md): maker entries and take profits
    "entry_type": ("str", lambda v: v in ORDER_TYPES, "'taker' or 'maker'"),
    "entry_offset": ("int", lambda v: v >= 0 and math.isfinite(v), "an integer >= 0 (ticks behind the touch)"),
    "entry_tif_s": ("float", lambda v: v > 0, "> 0 seconds (inf = until filled)"),
    "tp_type": ("str", lambda v: v in ORDER_TYPES, "'taker' or 'maker'"),
}
# costs and run-wide settings: fixed per run by a flag of the sweep CLIs, never part of a space
COST_FIELDS = {"fee_bps": "--fee-bps", "latency": "--latency-ms", "capital": "--capital",
               "maker_fee_bps": "--maker-fee-bps", "cancel_latency": "--cancel-latency-ms",
               "contract": "--contract", "multiplier": "--multiplier", "tick_size": "--tick-size",
               "lot_size": "--lot-size", "queue": "--queue", "queue_n": "--queue-n"}
# parameters whose values are names (a bank feature, an order type), not numbers
CHOICE_PARAMS = ("entry_type", "tp_type")
PARAM_KEYS = {"values", "value", "low", "high", "step", "dist", "choices", "points", "dense", "width"}
DISTS = ("int", "float", "log", "categorical")
REQUIRED = ("signal", "entry")
THRESHOLD_UNITS = ("raw", "std")


@dataclass
class Param:
    """One parameter of a space."""

    name: str
    kind: str                     # "list" | "range" | "dist"
    dtype: str                    # "str" | "int" | "float"
    values: list | None = None    # list / categorical choices / fixed value
    low: float | None = None
    high: float | None = None
    step: float | None = None
    dist: str | None = None       # int | float | log for "dist"
    points: int | None = None     # grid points of a distribution
    dense: int = 1                # neighbourhood size for Optuna (1 = Optuna chooses the value)
    width: float = 0.25

    # ---------------------------------------------------------------- grid
    def grid_values(self) -> list:
        """The values a grid sweep takes, in order."""
        if self.kind == "list":
            return list(self.values)
        if self.kind == "range":
            n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            vals = self.low + self.step * np.arange(n)
            return [self._cast(v) for v in vals]
        if self.points is None:
            if self.step is not None:
                n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
                return [self._cast(v) for v in self.low + self.step * np.arange(n)]
            raise ValueError("grid")  # caught by Space.grid_axes (needs the file to report)
        if self.dist == "log":
            vals = np.geomspace(self.low, self.high, self.points)
        else:
            vals = np.linspace(self.low, self.high, self.points)
        out = [self._cast(v) for v in vals]
        return list(dict.fromkeys(out))  # int rounding may repeat a value

    def _cast(self, v):
        return int(round(float(v))) if self.dtype == "int" else float(v)

    # ---------------------------------------------------------------- Optuna
    def suggest(self, trial):
        """Ask Optuna for this parameter (the centre, for a dense one)."""
        if self.kind == "list":
            if len(self.values) == 1:
                return self.values[0]
            return trial.suggest_categorical(self.name, self.values)
        if self.dtype == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.dist == "log")
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step, log=self.dist == "log")

    def neighbourhood(self, centre) -> list:
        """`dense` values around `centre`, inside the bounds (a window slid to fit, never clipped)."""
        n = self.dense
        if n <= 1:
            return [centre]
        if self.kind == "range" or self.step is not None:
            step = self.step or 1
            total = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
            k = int(round((centre - self.low) / step)) - (n - 1) // 2
            k = max(0, min(k, total - n))
            return [self._cast(self.low + step * (k + i)) for i in range(n)]
        if self.dist == "log":
            lo, hi, c = math.log(self.low), math.log(self.high), math.log(centre)
        else:
            lo, hi, c = float(self.low), float(self.high), float(centre)
        half = self.width * (hi - lo) / 2.0
        a = min(max(c - half, lo), hi - 2 * half)
        pts = np.linspace(a, a + 2 * half, n)
        if self.dist == "log":
            pts = np.exp(pts)
        return [self._cast(v) for v in np.clip(pts, self.low, self.high)]


@dataclass
class Space:
    """A parsed, validated parameter space."""

    path: Path
    text: str
    name: str
    thresholds: str = "raw"       # "std": entry/exit in units of the signal's in-sample std
    params: dict[str, Param] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def coarse(self) -> list[str]:
        """Parameters Optuna chooses per trial (everything not swept densely)."""
        return [n for n, p in self.params.items() if p.dense <= 1]

    @property
    def dense(self) -> list[str]:
        return [n for n, p in self.params.items() if p.dense > 1]

    @property
    def neighbourhood_size(self) -> int:
        return int(np.prod([self.params[n].dense for n in self.dense], dtype=np.int64))

    def features(self, key: str) -> list[str]:
        """Feature names a str parameter may take ('signal' or 'regime')."""
        p = self.params.get(key)
        return [] if p is None else list(p.values)

    def windows(self) -> list[int]:
        p = self.params.get("window")
        if p is None:
            return []
        if p.kind == "list":
            return sorted(set(int(v) for v in p.values))
        try:
            return sorted(set(p.grid_values()))
        except ValueError:
            return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))

    # ---------------------------------------------------------------- checks that need the data
    def check_features(self, known: Sequence[str]) -> None:
        """Refuse signal/regime names that the feature bank does not have."""
        known = set(known)
        for key in ("signal", "regime"):
            for v in self.features(key):
                if v not in known:
                    raise InputError.at(self.path, _line_of(self.text, key, ("values", "value", "choices")),
                                        f"params.{key}",
                                        f"unknown feature {v!r} (known: {', '.join(sorted(known))})")

    # ---------------------------------------------------------------- grid
    def grid_axes(self) -> dict[str, list]:
        """Every parameter's grid values (single-valued ones included), in file order."""
        out = {}
        for n, p in self.params.items():
            try:
                out[n] = p.grid_values()
            except ValueError:
                raise InputError.at(self.path, _line_of(self.text, n, ("dist",)), f"params.{n}",
                                    f"dist={p.dist!r} needs `points` (or `step`) for a grid sweep") from None
        return out

    # ---------------------------------------------------------------- Optuna
    def suggest(self, trial) -> dict[str, Any]:
        """Coarse values and dense centres for one trial."""
        return {n: p.suggest(trial) for n, p in self.params.items()}

    def expand(self, chosen: dict[str, Any]) -> dict[str, np.ndarray]:
        """The trial's neighbourhood: every parameter as an array of length neighbourhood_size."""
        dense = self.dense
        axes = [self.params[n].neighbourhood(chosen[n]) for n in dense]
        combos = list(itertools.product(*axes)) if dense else [()]
        out = {}
        for n in self.params:
            if n in dense:
                j = dense.index(n)
                out[n] = np.array([c[j] for c in combos])
            else:
                out[n] = np.array([chosen[n]] * len(combos))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256,
                "coarse": self.coarse, "dense": self.dense, "neighbourhood": self.neighbourhood_size}


# -------------------------------------------------------------------- features

def parse_feature(text: str) -> tuple[str, dict]:
    """`"ofi"` -> ("ofi", {}); `"depth_imbalance(decay=0.5,levels=5)"` -> (name, {decay: 0.5, levels: 5})."""
    text = text.strip()
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise ValueError(f"bad feature label {text!r}")
    name, inner = text[:-1].split("(", 1)
    params = {}
    for part in filter(None, (x.strip() for x in inner.split(","))):
        if "=" not in part:
            raise ValueError(f"bad feature label {text!r}")
        k, v = (x.strip() for x in part.split("=", 1))
        num = float(v)
        params[k] = int(num) if num == int(num) and "." not in v else num
    return name.strip(), params


def feature_spec(space: Space) -> list[tuple[str, dict]]:
    """The feature-bank spec a space needs: every signal (at every window) and regime feature.

    A signal is a feature name from `gpu_engine.features.FEATURES`: one without parameters,
    one whose only parameter is `window` (taken at each value of the space's `window`), or a
    full label such as "depth_imbalance(decay=0.5,levels=5)". Unknown names raise InputError.
    """
    from gpu_engine.features import FEATURES

    windows = space.windows()
    spec: list[tuple[str, dict]] = []
    seen = set()

    def add(name, params):
        key = (name, tuple(sorted(params.items())))
        if key not in seen:
            seen.add(key)
            spec.append((name, params))

    for key in ("signal", "regime"):
        for label in space.features(key):
            line = _line_of(space.text, key, ("values", "value", "choices"))
            try:
                name, params = parse_feature(label)
            except ValueError:
                raise InputError.at(space.path, line, f"params.{key}", f"bad feature label {label!r}") from None
            if name not in FEATURES:
                raise InputError.at(space.path, line, f"params.{key}",
                                    f"unknown feature {label!r} (known: {', '.join(sorted(FEATURES))})")
            need = FEATURES[name][1]
            if params:
                if set(params) != set(need):
                    raise InputError.at(space.path, line, f"params.{key}",
                                        f"feature {label!r} needs exactly the parameters {list(need)}")
                add(name, params)
            elif not need:
                add(name, {})
            elif tuple(need) == ("window",) and key == "signal" and windows:
                for w in windows:
                    add(name, {"window": int(w)})
            else:
                raise InputError.at(space.path, line, f"params.{key}",
                                    f"feature {label!r} needs {list(need)}: write it as a label, e.g. "
                                    f"{name}({','.join(f'{p}=...' for p in need)})")
    return spec


def row_resolver(bank) -> Callable[[str, int | None], int]:
    """`row_of(feature, window)` for `to_configs`: bank row of a space's signal/regime value."""
    from gpu_engine.features import FEATURES

    def row_of(label: str, window: int | None) -> int:
        name, params = parse_feature(label)
        if not params and "window" in FEATURES[name][1] and window is not None:
            params = {"window": int(window)}
        return bank.index(name, **params)

    return row_of


# -------------------------------------------------------------------- configs

def to_configs(points: dict[str, np.ndarray], row_of: Callable[[str, int | None], int],
               regime_default: int = 0) -> dict[str, np.ndarray]:
    """Parameter arrays (space names) -> configuration field arrays for `gpu_engine.sweep`.

    `row_of(feature_name, window)` resolves a feature to its bank row (window is None
    for `regime` and when the space has no `window`).
    """
    n = len(next(iter(points.values())))
    out: dict[str, np.ndarray] = {}
    sig = np.asarray(points["signal"]).astype(str)
    win = points.get("window")
    cache: dict = {}
    rows = np.empty(n, np.int32)
    for i in range(n):
        key = (sig[i], None if win is None else int(win[i]))
        if key not in cache:
            cache[key] = row_of(*key)
        rows[i] = cache[key]
    out["signal"] = rows
    if "regime" in points:
        reg = np.asarray(points["regime"]).astype(str)
        names, inv = np.unique(reg, return_inverse=True)
        out["regime"] = np.array([row_of(r, None) for r in names], np.int32)[inv.reshape(-1)]
    else:
        out["regime"] = np.full(n, regime_default, np.int32)
    for name, arr in points.items():
        if name in ("signal", "window", "regime"):
            continue
        if name == "max_hold_s":
            out["max_hold"] = np.asarray(arr, dtype=np.float64) * 1e9
        elif name == "entry_tif_s":
            out["entry_tif"] = np.asarray(arr, dtype=np.float64) * 1e9
        elif name in CHOICE_PARAMS:
            codes = {t: i for i, t in enumerate(ORDER_TYPES)}
            out[name] = np.array([codes[str(v)] for v in np.asarray(arr).tolist()], dtype=CONFIG_FIELDS[name][0])
        else:
            out[name] = np.asarray(arr, dtype=CONFIG_FIELDS[name][0])
    return out


# -------------------------------------------------------------------- loading

def load(path: str | Path | None = None) -> Space:
    """Parse and validate a space file (default: sweeps/spaces/default.toml)."""
    path = Path(path) if path is not None else DEFAULT_SPACE
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError.at(path, None, None, f"cannot read space file: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError.at(path, getattr(exc, "lineno", None), None, f"not valid TOML: {exc}") from None
    return parse(doc, path, text)


def parse(doc: dict, path: Path, text: str = "") -> Space:
    for key in doc:
        if key not in ("space", "params"):
            raise InputError.at(path, _line_top(text, key), key, "unknown key (expected [space] and [params.*])")
    meta = doc.get("space", {})
    meta_keys = {"name", "description", "thresholds"}
    if not isinstance(meta, dict) or set(meta) - meta_keys:
        bad = next(iter(set(meta) - meta_keys)) if isinstance(meta, dict) else "space"
        raise InputError.at(path, _line_of_key(text, "space", bad), f"space.{bad}",
                            "unknown key (expected name, description, thresholds)")
    thresholds = meta.get("thresholds", "raw")
    if thresholds not in THRESHOLD_UNITS:
        raise InputError.at(path, _line_of_key(text, "space", "thresholds"), "space.thresholds",
                            f"value {thresholds!r} must be one of {', '.join(THRESHOLD_UNITS)}")
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise InputError.at(path, None, "params", "the space has no [params.*] tables")
    space = Space(path=path, text=text, name=str(meta.get("name", path.stem)), thresholds=thresholds)
    for name, spec in params.items():
        line = _line_of(text, name, ())
        if name in COST_FIELDS:
            raise InputError.at(path, line, f"params.{name}",
                                f"unknown key: costs and market settings are fixed per run by the "
                                f"{COST_FIELDS[name]} flag")
        if name not in PARAMS:
            raise InputError.at(path, line, f"params.{name}",
                                f"unknown parameter (known: {', '.join(PARAMS)})")
        if not isinstance(spec, dict):
            spec = {"value": spec}
        space.params[name] = _parse_param(name, spec, path, text)
    for name in REQUIRED:
        if name not in space.params:
            raise InputError.at(path, None, f"params.{name}", "required parameter missing")
    return space


def _parse_param(name: str, spec: dict, path: Path, text: str) -> Param:
    dtype, ok, want = PARAMS[name]

    def err(key, problem):
        return InputError.at(path, _line_of(text, name, (key,)), f"params.{name}.{key}", problem)

    for key in spec:
        if key not in PARAM_KEYS:
            raise err(key, f"unknown key {key!r} = {spec[key]!r} (known: {', '.join(sorted(PARAM_KEYS))})")

    def check_value(key, v):
        if dtype == "str":
            if not isinstance(v, str) or not v or not ok(v):
                raise err(key, f"value {v!r} must be {want}")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise err(key, f"value {v!r} is not a number")
        if isinstance(v, float) and math.isnan(v):
            raise err(key, "value nan is not allowed")
        if dtype == "int" and not (isinstance(v, int) or (math.isfinite(v) and v == int(v))):
            raise err(key, f"value {v!r} must be an integer")
        if not ok(v):
            raise err(key, f"value {v!r} must be {want}")
        return int(v) if dtype == "int" else float(v)

    forms = [k for k in ("values", "value", "choices") if k in spec]
    dist = spec.get("dist")
    if dist is not None and dist not in DISTS:
        raise err("dist", f"unknown distribution {dist!r} (known: {', '.join(DISTS)})")
    dense = spec.get("dense", 1)
    if isinstance(dense, bool) or not isinstance(dense, int) or dense < 1:
        raise err("dense", f"value {dense!r} must be an integer >= 1")
    width = spec.get("width", 0.25)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise err("width", f"value {width!r} must be in (0, 1]")

    if forms or dist == "categorical":
        if len(forms) > 1 or (dist == "categorical" and forms != ["choices"]) or (dist is None and forms == ["choices"]):
            raise err(forms[0] if forms else "dist",
                      "use exactly one of `values`, `value`, or dist = \"categorical\" with `choices`")
        for k in ("low", "high", "step", "points"):
            if k in spec:
                raise err(k, f"`{k}` does not go with `{forms[0]}`")
        key = forms[0]
        raw = [spec[key]] if key == "value" else spec[key]
        if not isinstance(raw, list):
            raise err(key, f"value {raw!r} must be a list")
        if not raw:
            raise err(key, "empty list")
        vals = [check_value(key, v) for v in raw]
        if len(set(map(repr, vals))) != len(vals):
            raise err(key, f"repeated value in {raw!r}")
        if dense > 1:
            raise err("dense", "a neighbourhood needs a numeric range or distribution, not a list")
        return Param(name, "list", dtype, values=vals)

    if dtype == "str":
        raise err("dist", f"{name} takes names ({'an order type' if name in CHOICE_PARAMS else 'feature names'}): "
                  "use `values = [...]`")
    for k in ("low", "high"):
        if k not in spec:
            raise err(k, "missing (a range needs low, high and step; a distribution low, high and dist)")
    low, high = check_value("low", spec["low"]), check_value("high", spec["high"])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise err("high", f"bounds must be finite, got [{low}, {high}] (use `values` for inf)")
    if low > high:
        raise err("low", f"reversed bounds: low {low!r} > high {high!r}")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0 or not math.isfinite(step):
            raise err("step", f"value {step!r}: a step must be finite and > 0")
        if dtype == "int" and step != int(step):
            raise err("step", f"value {step!r} must be an integer for {name}")
    points = spec.get("points")
    if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 2):
        raise err("points", f"value {points!r} must be an integer >= 2")
    if dist is None:
        if step is None:
            raise err("step", "a range needs a step (or give dist = \"float\" | \"int\" | \"log\")")
        if points is not None:
            raise err("points", "`points` is for distributions; a range's grid follows its step")
        kind, pdtype = "range", dtype
    else:
        if low == high:
            raise err("high", f"empty range: low == high == {low!r}")
        if dist == "log":
            if low <= 0:
                raise err("low", f"value {low!r}: a log distribution needs low > 0")
            if step is not None:
                raise err("step", "a log distribution takes no step")
        if dist == "int" or dtype == "int":
            if dist not in ("int", "log") and dtype == "int":
                raise err("dist", f"{name} is an integer: use dist = \"int\"")
            pdtype = "int"
        else:
            pdtype = "float"
        kind = "dist"
    p = Param(name, kind, pdtype, low=low, high=high, step=step, dist=dist, points=points,
              dense=dense, width=float(width))
    if kind == "range" and dense > len(p.grid_values()):
        raise err("dense", f"value {dense}: the range has only {len(p.grid_values())} values")
    if kind == "dist" and pdtype == "int" and dense > 1:
        total = int(high - low) // int(step or 1) + 1
        if dense > total:
            raise err("dense", f"value {dense}: the range has only {total} integers")
        if step is None:
            p.step = 1
    return p


def _line_of_key(text: str, table: str, key: str) -> int | None:
    lines = text.splitlines()
    inside = False
    for i, line in enumerate(lines, 1):
        s = line.split("#", 1)[0].strip()
        if s.startswith("["):
            inside = s.replace(" ", "") == f"[{table}]"
            if inside and not key:
                return i
            continue
        if inside and (s.startswith(f"{key} ") or s.startswith(f"{key}=")):
            return i
    return _line_top(text, table)


def _line_top(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith(f"[{key}") or s.startswith(f"{key} ") or s.startswith(f"{key}="):
            return i
    return None


def _line_of(text: str, param: str, keys: Sequence[str]) -> int | None:
    """Line of `[params.PARAM]` (or of one of `keys` inside it, or of an inline `PARAM = ...`)."""
    lines = text.splitlines()
    head = None
    for i, line in enumerate(lines):
        s = line.split("#", 1)[0].strip().replace(" ", "")
        if s == f"[params.{param}]" or s.startswith(f"{param}=") and head is None and _in_params(lines, i):
            head = i
            break
    if head is None:
        return None
    for j in range(head + 1, len(lines)):
        s = lines[j].strip()
        if s.startswith("["):
            break
        for k in keys:
            if s.startswith(f"{k} ") or s.startswith(f"{k}="):
                return j + 1
    return head + 1


def _in_params(lines: list[str], i: int) -> bool:
    for j in range(i - 1, -1, -1):
        s = lines[j].strip()
        if s.startswith("["):
            return s.replace(" ", "") == "[params]"
    return False
