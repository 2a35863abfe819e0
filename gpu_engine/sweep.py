"""The public entry: `sweep(book, bank, configs, device="auto", buckets=16) -> xarray.Dataset`.

Run-wide market settings of the trading rules v2 (docs/RULES.md) are keyword arguments whose
defaults give rules v1: `contract="linear"` (or "inverse"), `multiplier=None` (1 for a
linear contract; an inverse contract needs one), `tick_size=None` (the book's
`attrs["tick_size"]` when it has one; needed by maker orders only), `lot_size=0.0`
(continuous quantities), `queue="risk_averse"` (or "power" with exponent `queue_n`, or
"log"). The per-configuration v2 fields (entry_type, entry_offset, entry_tif, tp_type,
maker_fee_bps, cancel_latency) are configuration fields like the others; entry_type and
tp_type accept "taker"/"maker" (or 0/1).

Steps: validate the book (ts non-decreasing, no non-finite price where a size > 0, no
crossed displayed top unless `allow_crossed=True`; with maker orders, its trades too), the
market settings and the configurations (defaults from `enums.CONFIG_FIELDS`, every
out-of-range value refused with the field and the first bad configuration's index) before
any launch; sort configurations by signal row (a CUDA warp
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

from gpu_engine.enums import (
    CONFIG_FIELDS,
    CONTRACTS,
    DEFAULT_QUEUE_N,
    M_INVERSE,
    M_LOT,
    M_MULT,
    M_QUEUE,
    M_QUEUE_N,
    M_TICK,
    MAKER,
    METRICS,
    NMARKET,
    ORDER_TYPES,
    QUEUE_MODELS,
)

DEFAULT_BUCKETS = 16
RULES_VERSION = "v2"
# configuration fields given as names (ORDER_TYPES) or as their codes
CATEGORICAL_FIELDS = {"entry_type": ORDER_TYPES, "tp_type": ORDER_TYPES}


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


def validate_trades(book) -> None:
    """Refuse trades the maker rules cannot read (ValueError naming the first bad row): ts
    non-decreasing, px finite and > 0, qty finite and >= 0, side +1 or -1. A book without
    trades passes (maker orders then fill only when the book crosses them)."""
    tr = getattr(book, "trades", None)
    if tr is None or len(tr.ts) == 0:
        return
    ts = np.asarray(tr.ts)
    n = ts.shape[0]
    arrays = {name: np.asarray(getattr(tr, name)) for name in ("ts", "px", "qty", "side")}
    for name, a in arrays.items():
        if a.shape != (n,):
            raise ValueError(f"book.trades.{name} must have shape ({n},), got {a.shape}")
    if n > 1:
        bad = np.flatnonzero(np.diff(ts.astype(np.int64)) < 0)
        if bad.size:
            r = int(bad[0]) + 1
            raise ValueError(f"book.trades.ts is not non-decreasing: row {r} ({int(ts[r])}) < row {r - 1} "
                             f"({int(ts[r - 1])})")
    px = arrays["px"].astype(np.float64)
    qty = arrays["qty"].astype(np.float64)
    side = arrays["side"]
    for name, bad, why in (("px", ~(np.isfinite(px) & (px > 0)), "must be finite and > 0"),
                           ("qty", ~(np.isfinite(qty) & (qty >= 0)), "must be finite and >= 0"),
                           ("side", ~np.isin(side, (-1, 1)), "must be +1 (buyer) or -1 (seller)")):
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"book.trades.{name} row {r}: {arrays[name][r]!r} {why}")


def market_array(contract: str = "linear", multiplier=None, tick_size=None, lot_size=0.0,
                 queue: str = "risk_averse", queue_n: float = DEFAULT_QUEUE_N) -> np.ndarray:
    """The run-wide market settings as the kernels read them (enums.MARKET_FIELDS order),
    validated: ValueError naming the argument. tick_size None is NaN (no maker orders)."""
    if contract not in CONTRACTS:
        raise ValueError(f"contract must be one of {list(CONTRACTS)}, got {contract!r}")
    if multiplier is None:
        if contract == "inverse":
            raise ValueError("multiplier: an inverse contract needs its multiplier (quote units per "
                             "contract, e.g. 100 for Binance BTCUSD_PERP)")
        multiplier = 1.0
    if queue not in QUEUE_MODELS:
        raise ValueError(f"queue: unknown queue model {queue!r}; known: {list(QUEUE_MODELS)}")
    checks = (("multiplier", multiplier, lambda v: np.isfinite(v) and v > 0, "finite and > 0"),
              ("tick_size", tick_size, lambda v: np.isfinite(v) and v > 0, "finite and > 0 (or None)"),
              ("lot_size", lot_size, lambda v: np.isfinite(v) and v >= 0, "finite and >= 0 (0 = continuous)"),
              ("queue_n", queue_n, lambda v: np.isfinite(v) and v > 0, "finite and > 0"))
    values = {}
    for name, v, ok, why in checks:
        if v is None and name == "tick_size":
            values[name] = np.nan
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number, got {v!r}")
        if not ok(float(v)):
            raise ValueError(f"{name} must be {why}, got {v!r}")
        values[name] = float(v)
    mkt = np.zeros(NMARKET, np.float64)
    mkt[M_INVERSE] = float(contract == "inverse")
    mkt[M_MULT] = values["multiplier"]
    mkt[M_TICK] = values["tick_size"]
    mkt[M_LOT] = values["lot_size"]
    mkt[M_QUEUE] = float(QUEUE_MODELS.index(queue))
    mkt[M_QUEUE_N] = values["queue_n"]
    return mkt


def _categorical(name: str, a: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Codes of a field given by name ("taker"/"maker") or by code (0/1)."""
    if a.dtype.kind in "UOS":
        codes = np.empty(a.shape[0], np.int64)
        for i, v in enumerate(a):
            v = v.item() if isinstance(v, np.generic) else v
            v = v.decode() if isinstance(v, bytes) else v
            if isinstance(v, str) and v in names:
                codes[i] = names.index(v)
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < len(names):
                codes[i] = int(v)
            else:
                raise ValueError(f"config field {name!r}: configuration {i} has {v!r}; "
                                 f"expected one of {list(names)}")
        return codes
    return a


def _as_int(name: str, raw: np.ndarray, dtype) -> np.ndarray:
    if raw.dtype.kind in "iub":
        return raw.astype(dtype)
    if raw.dtype.kind != "f":
        raise ValueError(f"config field {name!r}: expected numbers, got dtype {raw.dtype}")
    bad = ~np.isfinite(raw) | (raw != np.round(raw))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"config field {name!r}: configuration {i} has {raw[i].item()!r}, not an integer")
    return raw.astype(dtype)


def _first_bad(name: str, values: np.ndarray, bad: np.ndarray, why: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = values[i].item() if isinstance(values[i], np.generic) else values[i]
        raise ValueError(f"config field {name!r}: configuration {i} has {v!r}; {why}")


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
        if name in CATEGORICAL_FIELDS:
            a = _categorical(name, a, CATEGORICAL_FIELDS[name])
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
    for name in ("entry_type", "tp_type"):
        _first_bad(name, f[name], ~np.isin(f[name], (0, 1)), f"{name} must be 'taker' (0) or 'maker' (1)")
    _first_bad("entry_offset", f["entry_offset"], f["entry_offset"] < 0,
               "entry_offset must be an integer >= 0 (ticks behind the touch)")
    _first_bad("entry_tif", f["entry_tif"], ~(f["entry_tif"] > 0),
               "entry_tif must be > 0 ns (inf = until filled)")
    _first_bad("maker_fee_bps", f["maker_fee_bps"], ~np.isfinite(f["maker_fee_bps"]),
               "maker_fee_bps must be finite (negative = rebate)")
    _first_bad("cancel_latency", f["cancel_latency"], f["cancel_latency"] < 0,
               "cancel_latency must be >= 0 ns")
    return out


def uses_maker(cfg: dict[str, np.ndarray]) -> np.ndarray:
    """Per configuration: whether it posts maker orders (a maker entry, or a maker take
    profit with a finite take_profit)."""
    return (cfg["entry_type"] == MAKER) | ((cfg["tp_type"] == MAKER) & np.isfinite(cfg["take_profit"]))


def check_market(cfg: dict[str, np.ndarray], mkt: np.ndarray) -> None:
    """Maker orders need a tick size: ValueError naming tick_size and the first maker
    configuration when there is none."""
    maker = uses_maker(cfg)
    if maker.any() and not np.isfinite(mkt[M_TICK]):
        i = int(np.flatnonzero(maker)[0])
        field = "entry_type" if cfg["entry_type"][i] == MAKER else "tp_type"
        raise ValueError(f"tick_size: configuration {i} uses maker orders ({field}='maker'), which need "
                         "a tick_size > 0 (pass tick_size=..., or use a book whose attrs have one)")


def _book_tick_size(book):
    """The book store's tick size attribute when it is a positive finite number, else None."""
    v = (getattr(book, "attrs", None) or {}).get("tick_size")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def sweep(book, bank, configs, device: str = "auto", buckets: int = DEFAULT_BUCKETS,
          batch: int | None = None, allow_crossed: bool = False, *, contract: str = "linear",
          multiplier: float | None = None, tick_size: float | None = None, lot_size: float = 0.0,
          queue: str = "risk_averse", queue_n: float = DEFAULT_QUEUE_N):
    """Evaluate every configuration on the book; return an xarray Dataset (see module doc)."""
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
    if tick_size is None:
        tick_size = _book_tick_size(book)
    mkt = market_array(contract, multiplier, tick_size, lot_size, queue, queue_n)
    cfg = normalize_configs(configs, K)
    check_market(cfg, mkt)
    maker = bool(uses_maker(cfg).any())
    if maker:
        validate_trades(book)
    C = int(cfg["signal"].shape[0])

    order = np.lexsort((cfg["regime"], cfg["signal"]))
    sorted_cfg = {k: np.ascontiguousarray(v[order]) for k, v in cfg.items()}
    if backend.is_cuda and not backend.simulated:
        dbank = backend.xp.ascontiguousarray(backend.xp.asarray(values, dtype=backend.xp.float32))
    else:
        dbank = np.ascontiguousarray(backend.to_host(values), dtype=np.float32)
    book_arrays = kernels.prepare_book(book, backend, market=mkt, trades=maker)
    raw, bpnl, btr, bwin = kernels.run(backend, book_arrays, dbank, sorted_cfg, int(buckets),
                                       batch=batch or kernels.DEFAULT_BATCH)
    inv = np.empty_like(order)
    inv[order] = np.arange(C)
    raw, bpnl, btr, bwin = raw[inv], bpnl[inv], btr[inv], bwin[inv]
    table_m = metrics.finish(raw, bpnl, cfg["capital"], T)
    names = getattr(bank, "names", None) if table is not None else None
    return results_dataset(table_m, bpnl, btr, bwin, cfg, mkt, backend, T, int(buckets), contract,
                           queue, names, t0)


def results_dataset(table_m, bpnl, btr, bwin, cfg, mkt, backend, T: int, buckets: int, contract: str,
                    queue: str, names, t0: float):
    """The result Dataset (module doc) from the finished metrics [C, M], the bucket arrays and
    the configurations in the caller's order (shared by sweep and gpu_engine.stream)."""
    C = int(table_m.shape[0])

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
        "contract": contract,
        "multiplier": float(mkt[M_MULT]),
        "lot_size": float(mkt[M_LOT]),
        "queue": queue,
        "queue_n": float(mkt[M_QUEUE_N]),
    }
    if np.isfinite(mkt[M_TICK]):
        attrs["tick_size"] = float(mkt[M_TICK])
    if names is not None:
        attrs["bank_rows"] = [str(n) for n in names]
    import xarray as xr  # imported here, after the kernel: it costs ~1 s at startup

    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


__all__ = ["sweep", "validate_book", "validate_trades", "normalize_configs", "market_array",
           "DEFAULT_BUCKETS"]


class _CallableModule(types.ModuleType):
    """`import gpu_engine.sweep` binds the package attribute `sweep` to this module; making the
    module callable keeps `gpu_engine.sweep(...)` working whichever import came first."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
