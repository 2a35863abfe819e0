"""The public entry: `sweep(book, bank, configs, device="auto", buckets=16) -> xarray.Dataset`.

Steps: validate the book (ts non-decreasing, no non-finite price where a size > 0, no
crossed displayed top unless `allow_crossed=True`) and the configurations (defaults from
`enums.CONFIG_FIELDS`, every out-of-range value refused with the field and the first bad
configuration's index) before any launch; sort configurations by signal row (a CUDA warp
then reads one bank row; the CPU reuses it from cache); run the CPU or CUDA kernel in
batches of `batch` configurations; finish the metrics on the host (metrics.finish); put
results back in the caller's order.

The Dataset has a `config` dimension, one float64 variable per metric (enums.METRICS),
every configuration field as a coordinate along `config`, and bucket_pnl (float64),
bucket_trades and bucket_wins (int32) over [config, bucket].
"""
from __future__ import annotations

import sys
import time
import types
from typing import Any, Mapping

import numpy as np

from gpu_engine.enums import CONFIG_FIELDS, METRICS

DEFAULT_BUCKETS = 16
RULES_VERSION = "v1"


def _bank_values(bank) -> tuple[Any, Any]:
    values = getattr(bank, "values", bank)
    table = getattr(bank, "table", None)
    if values.ndim != 2:
        raise ValueError(f"bank must be a [K, T] array, got shape {tuple(values.shape)}")
    return values, table


def validate_book(book, allow_crossed: bool = False) -> None:
    """Refuse books the kernels cannot read honestly (ValueError naming the first bad row)."""
    ts = np.asarray(book.ts)
    T = ts.shape[0]
    if T == 0:
        raise ValueError("book has no ticks (T = 0)")
    for name in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
        a = np.asarray(getattr(book, name))
        if a.ndim != 2 or a.shape[0] != T or a.shape[1] < 1:
            raise ValueError(f"book.{name} must be [T={T}, L>=1], got shape {a.shape}")
    if np.asarray(book.bid_px).shape != np.asarray(book.ask_px).shape:
        raise ValueError("book.bid_px and book.ask_px have different shapes")
    if T > 1:
        bad = np.flatnonzero(np.diff(ts.astype(np.int64)) < 0)
        if bad.size:
            r = int(bad[0]) + 1
            raise ValueError(f"book.ts is not non-decreasing: row {r} ({int(ts[r])}) < row {r - 1} ({int(ts[r - 1])})")
    for side in ("bid", "ask"):
        px = np.asarray(getattr(book, f"{side}_px"), dtype=np.float64)
        sz = np.asarray(getattr(book, f"{side}_sz"), dtype=np.float64)
        bad_sz = np.isnan(sz) | (sz < 0)
        if bad_sz.any():
            r, l = np.argwhere(bad_sz)[0]
            raise ValueError(f"book.{side}_sz row {r} level {l}: size {sz[r, l]} is NaN or negative")
        bad_px = (sz > 0) & ~np.isfinite(px)
        if bad_px.any():
            r, l = np.argwhere(bad_px)[0]
            raise ValueError(f"book.{side}_px row {r} level {l}: price {px[r, l]} with size {sz[r, l]} > 0")
    if not allow_crossed:
        b0 = np.asarray(book.bid_px[:, 0], dtype=np.float64)
        a0 = np.asarray(book.ask_px[:, 0], dtype=np.float64)
        shown = ((b0 > 0) & (np.asarray(book.bid_sz[:, 0]) > 0)
                 & (a0 > 0) & (np.asarray(book.ask_sz[:, 0]) > 0))
        crossed = shown & (b0 >= a0)
        if crossed.any():
            r = int(np.flatnonzero(crossed)[0])
            raise ValueError(f"book row {r} is crossed (best bid {b0[r]} >= best ask {a0[r]}); "
                             "pass allow_crossed=True to run on it anyway")


def _as_int(name: str, raw: np.ndarray, dtype) -> np.ndarray:
    if raw.dtype.kind in "iub":
        return raw.astype(dtype)
    if raw.dtype.kind != "f":
        raise ValueError(f"config field {name!r}: expected numbers, got dtype {raw.dtype}")
    bad = ~np.isfinite(raw) | (raw != np.round(raw))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"config field {name!r}: configuration {i} has {raw[i]!r}, not an integer")
    return raw.astype(dtype)


def _first_bad(name: str, values: np.ndarray, bad: np.ndarray, why: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"config field {name!r}: configuration {i} has {values[i]!r}; {why}")


def normalize_configs(configs, K: int) -> dict[str, np.ndarray]:
    """Typed, validated arrays for every CONFIG_FIELDS key (defaults filled in)."""
    if hasattr(configs, "to_dict") and hasattr(configs, "columns"):  # pandas DataFrame
        configs = {str(c): configs[c].to_numpy() for c in configs.columns}
    if not isinstance(configs, Mapping):
        raise ValueError("configs must be a mapping of field -> 1-D array or a pandas DataFrame")
    unknown = sorted(set(configs) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known: {list(CONFIG_FIELDS)}")
    arrays = {k: np.atleast_1d(np.asarray(v)) for k, v in configs.items()}
    for k, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(f"config field {k!r} must be 1-D, got shape {a.shape}")
    sizes = {k: a.shape[0] for k, a in arrays.items() if a.shape[0] != 1}
    C = max(sizes.values()) if sizes else 1
    for k, n in sizes.items():
        if n != C:
            raise ValueError(f"config field {k!r} has {n} values, others have {C}")
    out: dict[str, np.ndarray] = {}
    for name, (dtype, default) in CONFIG_FIELDS.items():
        if name in arrays:
            a = arrays[name]
            if a.shape[0] == 1 and C != 1:
                a = np.repeat(a, C)
        elif default is None:
            raise ValueError(f"config field {name!r} is required")
        else:
            a = np.full(C, default)
        if np.dtype(dtype).kind in "iu":
            out[name] = _as_int(name, a, dtype)
        else:
            if a.dtype.kind not in "iuf":
                raise ValueError(f"config field {name!r}: expected numbers, got dtype {a.dtype}")
            out[name] = a.astype(dtype)
            _first_bad(name, out[name], np.isnan(out[name]), "NaN is not allowed")
    f = out
    _first_bad("signal", f["signal"], (f["signal"] < 0) | (f["signal"] >= K), f"the bank has rows 0..{K - 1}")
    _first_bad("regime", f["regime"], (f["regime"] < 0) | (f["regime"] >= K), f"the bank has rows 0..{K - 1}")
    _first_bad("entry", f["entry"], ~(f["entry"] > 0), "entry must be > 0")
    _first_bad("exit", f["exit"], ~(f["exit"] >= 0), "exit must be >= 0 (inf disables)")
    _first_bad("side", f["side"], ~np.isin(f["side"], (-1, 0, 1)), "side must be -1, 0 or 1")
    _first_bad("band", f["band"], ~(f["band"] >= 0), "band must be >= 0 (inf disables)")
    for name in ("take_profit", "stop_loss", "max_hold"):
        _first_bad(name, f[name], ~(f[name] > 0), f"{name} must be > 0 (inf disables)")
    _first_bad("size_frac", f["size_frac"], ~((f["size_frac"] > 0) & (f["size_frac"] <= 1)),
               "size_frac must be in (0, 1]")
    _first_bad("max_qty", f["max_qty"], ~(f["max_qty"] > 0), "max_qty must be > 0")
    _first_bad("cooldown", f["cooldown"], f["cooldown"] < 0, "cooldown must be >= 0 ticks")
    _first_bad("fee_bps", f["fee_bps"], ~((f["fee_bps"] >= 0) & np.isfinite(f["fee_bps"])),
               "fee_bps must be finite and >= 0")
    _first_bad("latency", f["latency"], f["latency"] < 0, "latency must be >= 0 ns")
    _first_bad("capital", f["capital"], ~((f["capital"] > 0) & np.isfinite(f["capital"])),
               "capital must be finite and > 0")
    return out


def sweep(book, bank, configs, device: str = "auto", buckets: int = DEFAULT_BUCKETS,
          batch: int | None = None, allow_crossed: bool = False):
    """Evaluate every configuration on the book; return an xarray Dataset (see module doc)."""
    import xarray as xr

    from gpu_engine import kernels, metrics
    from gpu_engine.backend import resolve

    t0 = time.perf_counter()
    if not (isinstance(buckets, (int, np.integer)) and buckets >= 1):
        raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
    backend = resolve(device)
    validate_book(book, allow_crossed=allow_crossed)
    values, table = _bank_values(bank)
    T = int(np.asarray(book.ts).shape[0])
    K = int(values.shape[0])
    if int(values.shape[1]) != T:
        raise ValueError(f"bank has {values.shape[1]} ticks, the book has {T}")
    cfg = normalize_configs(configs, K)
    C = int(cfg["signal"].shape[0])

    order = np.lexsort((cfg["regime"], cfg["signal"]))
    sorted_cfg = {k: np.ascontiguousarray(v[order]) for k, v in cfg.items()}
    if backend.is_cuda and not backend.simulated:
        dbank = backend.xp.ascontiguousarray(backend.xp.asarray(values, dtype=backend.xp.float32))
    else:
        dbank = np.ascontiguousarray(backend.to_host(values), dtype=np.float32)
    book_arrays = kernels.prepare_book(book, backend)
    raw, bpnl, btr, bwin = kernels.run(backend, book_arrays, dbank, sorted_cfg, int(buckets),
                                       batch=batch or kernels.DEFAULT_BATCH)
    inv = np.empty_like(order)
    inv[order] = np.arange(C)
    raw, bpnl, btr, bwin = raw[inv], bpnl[inv], btr[inv], bwin[inv]
    table_m = metrics.finish(raw, bpnl, cfg["capital"], T)

    data_vars = {name: ("config", table_m[:, i]) for i, name in enumerate(METRICS)}
    data_vars["bucket_pnl"] = (("config", "bucket"), bpnl)
    data_vars["bucket_trades"] = (("config", "bucket"), btr)
    data_vars["bucket_wins"] = (("config", "bucket"), bwin)
    coords = {"config": np.arange(C), "bucket": np.arange(int(buckets))}
    coords.update({name: ("config", cfg[name]) for name in CONFIG_FIELDS})
    attrs = {
        "rules": RULES_VERSION,
        "device": backend.name,
        "simulated": int(backend.simulated),
        "ticks": T,
        "buckets": int(buckets),
        "wall_s": time.perf_counter() - t0,
    }
    names = getattr(bank, "names", None)
    if table is not None and names is not None:
        attrs["bank_rows"] = [str(n) for n in names]
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


__all__ = ["sweep", "validate_book", "normalize_configs", "DEFAULT_BUCKETS"]


class _CallableModule(types.ModuleType):
    """`import gpu_engine.sweep` binds the package attribute `sweep` to this module; making the
    module callable keeps `gpu_engine.sweep(...)` working whichever import came first."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
