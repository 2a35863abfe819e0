"""The per-block Bitcoin dataset: issuance, height->time map, fair values, price; build/write/load/lookup.

One row per height 0..N-1, dtype `BLOCK_DTYPE` (packed, little-endian), schema 2:

  height        int32    block height (== row index)
  time          int64    unix seconds of the block: its real header timestamp where the header was
                         fetched (`time_source` 1; not monotone in height), else the time map's
                         (`timemap`, `time_source` 0)
  subsidy_sat   int64    block subsidy in satoshi: (50e8 >> (h // 210000)), 0 from epoch 64
                         (Bitcoin Core GetBlockSubsidy); the last paying epoch is 32 (1 sat),
                         subsidy is 0 from height 6,930,000
  supply_sat    int64    cumulative subsidy of blocks 0..h INCLUSIVE, genesis included (its 50 BTC
                         are unspendable but are part of the schedule, as most explorers count
                         them); the total tends to 2,099,999,997,690,000 sat
  s2f           float64  stock-to-flow, nominal convention: supply_sat / (subsidy_sat * 52,560)
                         (52,560 = 144 blocks/day * 365); +inf once the subsidy is 0
  fair_pl       float64  power-law fair value, USD: A * d^n with `POWER_LAW` (Santostasi as charted,
                         A = 1.0117e-17, n = 5.82), d = fractional days since 2009-01-03 00:00 UTC at
                         the block's time
  fair_s2f      float64  stock-to-flow model price, USD: e^-1.84 * s2f^3.36 (PlanB's per-coin form)
  price         float64  BTC/USD: real daily closes interpolated log-linearly where `prices` cover the
                         block, else the seeded synthetic model (`blocks_price`)
  price_source  uint8    1 real, 0 synthetic
  time_source   uint8    1 real (the block header was fetched: `--source`), 0 modelled (time map)
  median_time   int64    median time past (BIP 113) from the header, -1 unknown
  difficulty    float64  difficulty from the header's bits, NaN unknown
  tx_count      int32    transactions in the block (coinbase included), -1 unknown
  size_bytes    int32    block size with witness data, bytes, -1 unknown (Bitcoin Core gives none)
  weight_wu     int32    block weight, weight units, -1 unknown (Bitcoin Core gives none)
  fees_sat      int64    total fees of the block's transactions, satoshi, -1 unknown (Esplora gives
                         none; a pruned Core node has none for pruned blocks)

The last seven fields are the fetched headers' (`headers`); every modelled block has the
unknown values. Schema 1 files (without them) still load: `load` returns them converted in
memory with those fields unknown; rebuilding (`python -m gpu_engine.data blocks --overwrite`)
writes schema 2.

Public API (stable; other modules call these):
  build(n_blocks=None, until=None, prices=(), chain_stats=(), seed=0, headers=None) -> (array, meta)
  claim(path, overwrite, inputs) check before any work that `path` may be written (never a
                               foreign file, an input, or an existing dataset without overwrite)
  ensure_default(path)         build + write data/blocks.npy only where nothing stands
  write(path, arr, meta, overwrite=False)
                               .npy written to a temp path then renamed, plus the sidecar JSON
                               `<path minus .npy>.json` (schema version, model parameters with their
                               sources, input files with sha256, array sha256, build time)
  load(path) -> array          memory-mapped, read-only (np.load mmap_mode='r'); load_meta(path) -> dict
  height_at(blocks, t)         vectorised: the height of the last block of the longest prefix of the
                               chain whose times are all <= t (real header times are not monotone;
                               with modelled times this is the latest block with time <= t); -1
                               where t is before the genesis block; the tip's height past the tip
  block_at(blocks, t)          the record(s) at height_at(blocks, t); raises ValueError if any t is
                               before the genesis block (there is no block yet)
  summary(blocks, meta) -> str
  add_cli(subparsers)          `python -m gpu_engine.data blocks ...`

Length: `n_blocks` rows; or every block with time before the end of the UTC day `until`
(inclusive of that day); by default every block whose mapped time is <= now (build time), or
with fetched headers, every height up to the highest one fetched.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import sys
import time as _time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np

from gpu_engine.data.blocks.price import block_prices
from gpu_engine.data.blocks.sources import (DailySeries, as_one_series, parse_day, read_chain_stats,
                                            read_prices)
from gpu_engine.data.blocks.timemap import build_time_map
from gpu_engine.errors import InputError
from gpu_engine.outputs import claim_output, clean_stale_temps, is_ours

SCHEMA_VERSION = 2
BLOCK_DTYPE_V1 = np.dtype([
    ("height", "<i4"), ("time", "<i8"), ("subsidy_sat", "<i8"), ("supply_sat", "<i8"),
    ("s2f", "<f8"), ("fair_pl", "<f8"), ("fair_s2f", "<f8"), ("price", "<f8"), ("price_source", "u1"),
])
BLOCK_DTYPE = np.dtype(BLOCK_DTYPE_V1.descr + [
    ("time_source", "u1"), ("median_time", "<i8"), ("difficulty", "<f8"), ("tx_count", "<i4"),
    ("size_bytes", "<i4"), ("weight_wu", "<i4"), ("fees_sat", "<i8"),
])
DEFAULT_OUT = "data/blocks.npy"

HALVING_INTERVAL = 210_000
COIN = 100_000_000
INITIAL_SUBSIDY_SAT = 50 * COIN
BLOCKS_PER_YEAR = 52_560  # nominal: 144 blocks/day * 365
MAX_BLOCKS = 2**31 - 1  # height is int32

# cumulative issuance before epoch e (e = 0..64), exact integers
_EPOCH_START_SUPPLY = np.array(
    [sum(HALVING_INTERVAL * (INITIAL_SUBSIDY_SAT >> k) for k in range(e)) for e in range(65)], dtype=np.int64)
TOTAL_ISSUANCE_SAT = int(_EPOCH_START_SUPPLY[64])

DAY0_UNIX = 1230940800  # 2009-01-03 00:00:00 UTC, the power law's day 0
POWER_LAW = {
    "variant": "Santostasi (as charted)",
    "formula": "price = A * d^n, d = fractional days since day0 00:00 UTC at the block time",
    "A": 1.0117e-17,
    "n": 5.82,
    "day0": "2009-01-03",
    "source": "charts.bgeometrics.com/power_law.html",
}
S2F_MODEL = {
    "formula": "fair_s2f = exp(a) * s2f^b",
    "a": -1.84,
    "b": 3.36,
    "s2f": "supply_sat / (subsidy_sat * 52560): stock over nominal annual flow; inf once subsidy is 0",
    "source": "PlanB, 'Modeling Bitcoin Value with Scarcity' (2019) and later charts' per-coin form",
}
ISSUANCE = {
    "rule": "subsidy_sat = (50e8 >> (h // 210000)), 0 when h // 210000 >= 64; "
            "supply_sat = sum of subsidies of blocks 0..h inclusive (genesis included)",
    "source": "Bitcoin Core validation.cpp GetBlockSubsidy; chainparams.cpp nSubsidyHalvingInterval=210000",
    "supply_includes_genesis": True,
    "total_issuance_sat": TOTAL_ISSUANCE_SAT,
}


# ---------------------------------------------------------------- issuance and fair values

def subsidy_sat(heights) -> np.ndarray:
    """Block subsidy in satoshi (int64), vectorised integer shifts."""
    h = np.asarray(heights, dtype=np.int64)
    e = h // HALVING_INTERVAL
    sub = np.right_shift(np.int64(INITIAL_SUBSIDY_SAT), np.minimum(e, 63))
    return np.where(e < 64, sub, np.int64(0))


def supply_sat(heights) -> np.ndarray:
    """Cumulative issuance after block h (blocks 0..h inclusive, genesis included), int64 satoshi."""
    h = np.asarray(heights, dtype=np.int64)
    e = np.minimum(h // HALVING_INTERVAL, 64)
    return _EPOCH_START_SUPPLY[e] + (h % HALVING_INTERVAL + 1) * subsidy_sat(h)


def days_since_day0(unix_time) -> np.ndarray:
    return (np.asarray(unix_time, dtype=np.float64) - DAY0_UNIX) / 86400.0


def log_fair_pl(unix_time) -> np.ndarray:
    """Natural log of the power-law fair value at `unix_time`."""
    return math.log(POWER_LAW["A"]) + POWER_LAW["n"] * np.log(days_since_day0(unix_time))


def stock_to_flow(supply, subsidy) -> np.ndarray:
    flow = np.asarray(subsidy, dtype=np.float64) * BLOCKS_PER_YEAR
    with np.errstate(divide="ignore"):
        return np.asarray(supply, dtype=np.float64) / flow


def fair_s2f(s2f) -> np.ndarray:
    with np.errstate(over="ignore"):
        return math.exp(S2F_MODEL["a"]) * np.power(s2f, S2F_MODEL["b"])


# ---------------------------------------------------------------- build

def _as_series(items, reader) -> list[DailySeries]:
    if isinstance(items, (str, os.PathLike, DailySeries)):
        items = [items]
    return [x if isinstance(x, DailySeries) else reader(x) for x in items]


def _until_end(until, flag: str = "--until") -> int:
    """Unix time of the end of the UTC day `until` (exclusive bound)."""
    if isinstance(until, datetime):
        until = until.astimezone(timezone.utc).date() if until.tzinfo else until.date()
    if isinstance(until, date):
        day = (until - date(1970, 1, 1)).days
    else:
        try:
            day = parse_day(str(until))
        except ValueError as exc:
            raise InputError.at(flag, None, None, f"unparsable date: {exc}") from None
    return (day + 1) * 86400


BUILD_BYTES_PER_BLOCK = 256  # the row (65 B) plus the float64/int64 columns build() holds meanwhile


def check_fits(n: int, flag: str) -> None:
    """Refuse (InputError naming `flag`) a block count whose build would not fit in memory."""
    from gpu_engine.memory import gib, total_memory

    need = int(n) * BUILD_BYTES_PER_BLOCK
    total = total_memory()
    if total is not None and need > total:
        raise InputError.at(flag, None, None, f"{int(n):,} blocks need about {gib(need)} to build, "
                            f"more than this machine's {gib(total)} of memory")


def build(n_blocks=None, until=None, prices=(), chain_stats=(), seed=0, *, now=None, until_flag="--until",
          headers=None, headers_info=None):
    """Build the dataset in memory: (structured array of BLOCK_DTYPE, meta dict).

    n_blocks: rows 0..n_blocks-1. until: 'YYYY-MM-DD' (or a date): every block mapped before the
    end of that UTC day. Neither: every block mapped at or before `now` (default: the current
    time), or with `headers`, every height up to the highest fetched one. prices / chain_stats:
    CSV paths (or DailySeries). seed: synthetic price seed. headers: fetched header rows
    (`headers.HEADER_DTYPE`, sorted by height, unique): their times replace the time map's at
    their heights (`time_source` 1) and anchor it around them; their block-flow fields are
    copied. headers_info: a dict recorded in the sidecar under "headers".
    Unusable input raises InputError; `until_flag` is the option named for a bad `until`
    (synth passes its --start).
    """
    t_start = _time.perf_counter()
    if n_blocks is not None and until is not None:
        raise InputError.at("--blocks/--until", None, None, "give at most one of them")
    if n_blocks is not None:
        if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks <= 0:
            raise InputError.at("--blocks", None, None, f"must be a positive block count, got {n_blocks}")
        if n_blocks > MAX_BLOCKS:
            raise InputError.at("--blocks", None, None, f"at most {MAX_BLOCKS} blocks (int32 heights)")
    price_series = _as_series(prices, read_prices)
    count_series = _as_series(chain_stats, read_chain_stats)
    fetched = None
    if headers is not None and len(headers):
        from gpu_engine.data.blocks.headers import HEADER_DTYPE, run_anchors
        fetched = np.asarray(headers)
        if fetched.dtype != HEADER_DTYPE:
            raise ValueError(f"headers: dtype {fetched.dtype} is not HEADER_DTYPE")
        if np.any(np.diff(fetched["height"]) <= 0):
            raise ValueError("headers: heights must be sorted and unique")
    tmap = build_time_map(count_series, fetched=run_anchors(fetched) if fetched is not None else ())

    built_at = _time.time()
    if n_blocks is not None:
        n = int(n_blocks)
        length_rule = f"n_blocks={n}"
    elif until is not None:
        end = _until_end(until, until_flag)
        n = tmap.count_before(end - 1)
        if n <= 0:
            raise InputError.at(until_flag, None, None, f"{until} is before the genesis block")
        length_rule = f"until end of UTC day {until} (time < {end})"
    elif fetched is not None:
        n = int(fetched["height"][-1]) + 1
        length_rule = f"every height up to the highest fetched one, {n - 1}"
    else:
        ref = built_at if now is None else float(now)
        n = tmap.count_before(ref)
        length_rule = f"every block with time <= build time {int(ref)}"
    if n > MAX_BLOCKS:
        raise InputError.at(until_flag, None, None, f"more than {MAX_BLOCKS} blocks")
    check_fits(n, "--blocks" if n_blocks is not None else until_flag)

    heights = np.arange(n, dtype=np.int64)
    times = tmap(heights)
    real = np.zeros(n, dtype=bool)
    if fetched is not None:
        fetched = fetched[fetched["height"] < n]
        fh = fetched["height"].astype(np.int64)
        times[fh] = fetched["time"]
        real[fh] = True
    sub = subsidy_sat(heights)
    sup = supply_sat(heights)
    s2f = stock_to_flow(sup, sub)
    lpl = log_fair_pl(times)
    merged = None
    if price_series:  # several files: one merged series, a later file winning (sources.merge_prices)
        one, merged = as_one_series(price_series)
        price_series_used = [one]
    else:
        price_series_used = []
    price, source, price_info = block_prices(times, heights, lpl, price_series_used, seed, log_fair_pl)
    if merged is not None and price_info.get("real") is not None:
        price_info["real"]["merge"] = "on a day several price files cover, the LATER file given wins"
    if merged is not None:
        price_info["sources"] = merged.describe(price_series)

    arr = np.empty(n, dtype=BLOCK_DTYPE)
    arr["height"] = heights
    arr["time"] = times
    arr["subsidy_sat"] = sub
    arr["supply_sat"] = sup
    arr["s2f"] = s2f
    arr["fair_pl"] = np.exp(lpl)
    arr["fair_s2f"] = fair_s2f(s2f)
    arr["price"] = price
    arr["price_source"] = source
    arr["time_source"] = real.astype(np.uint8)
    from gpu_engine.data.blocks.headers import FLOW_FIELDS
    for name, unknown in FLOW_FIELDS.items():
        arr[name] = unknown
        if fetched is not None and len(fetched):
            arr[name][fh] = fetched[name]

    tm_info = tmap.info
    tm_info["real_time_heights"] = {
        "exact": [a["height"] for a in tm_info["exact_anchors"] if a["height"] < n],
        "daily_counts": [s["heights"] for s in tm_info["daily_counts"]],
        "extrapolated_from_height": int(np.floor(tm_info["extrapolation"]["after_height"])) + 1,
    }
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": "gpu_engine.data.blocks.dataset",
        "dtype": [list(d) for d in BLOCK_DTYPE.descr],
        "n_blocks": n,
        "first_time": int(times[0]),
        "last_time": int(times[-1]),
        "length_rule": length_rule,
        "seed": int(seed),
        "inputs": [s.describe("prices") for s in price_series] + [s.describe("chain_stats") for s in count_series],
        "issuance": ISSUANCE,
        "time_map": tm_info,
        "power_law": POWER_LAW,
        "s2f_model": S2F_MODEL,
        "price": price_info,
        "time_source": {"1": "real: the block header's timestamp (fetched)", "0": "modelled: the time map",
                        "real_blocks": int(real.sum())},
        "block_flow_fields": {
            "median_time": "median time past from the header, -1 unknown",
            "difficulty": "difficulty from the header's bits, NaN unknown",
            "tx_count": "transactions incl. coinbase, -1 unknown",
            "size_bytes": "block size with witness, bytes, -1 unknown",
            "weight_wu": "block weight, WU, -1 unknown",
            "fees_sat": "total fees, satoshi, -1 unknown",
            "known": {k: int((arr[k] >= 0).sum()) if k != "difficulty" else int(np.isfinite(arr[k]).sum())
                      for k in FLOW_FIELDS},
        },
        "headers": headers_info,
        "build": {
            "time_utc": datetime.fromtimestamp(built_at, timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(_time.perf_counter() - t_start, 3),
        },
    }
    return arr, meta


# ---------------------------------------------------------------- files

def sidecar_path(path) -> Path:
    p = Path(path)
    return p.with_suffix(".json")


def array_sha256(arr) -> str:
    a = np.ascontiguousarray(arr)
    return hashlib.sha256(memoryview(a.view(np.uint8))).hexdigest()


def claim(path, overwrite: bool = False, inputs=()) -> Path:
    """Check that `path` (.npy) and its sidecar may be written (before any work).

    `gpu_engine.outputs.claim_output` for the .npy (refused when it exists unless `overwrite`,
    and even then unless it is a block dataset this engine wrote); the sidecar JSON may only
    be replaced when it is ours too, and neither may be one of `inputs` ((flag, path) pairs).
    Stale temporaries of both are removed.
    """
    p = Path(path)
    if p.suffix != ".npy":
        raise InputError.at(p, None, "--out", "output path must end in .npy")
    claim_output(p, "--out", kind="blocks", overwrite=overwrite, inputs=inputs)
    side = sidecar_path(p)
    for flag, q in inputs:
        if q is not None and Path(q).absolute().resolve() == side.absolute().resolve():
            raise InputError(f"{side}: --out: its sidecar is this command's input {flag} {q}; "
                             "choose another path")
    if (side.exists() or side.is_symlink()) and not is_ours(p, "blocks"):
        if not overwrite:
            raise InputError(f"{side}: --out: the sidecar of {p.name} already exists; pass --overwrite to "
                             "replace it or choose another path")
        if not _our_sidecar(side):
            raise InputError(f"{side}: --out: exists and is not a block dataset sidecar written by this "
                             "engine; refusing to replace it even with --overwrite")
    clean_stale_temps(side)
    return p


def _our_sidecar(side: Path) -> bool:
    if side.is_symlink() or not side.is_file():
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == "gpu_engine.data.blocks.dataset"


def ensure_default(path=DEFAULT_OUT) -> Path:
    """Build and write the default block dataset when nothing stands at `path` (nor its sidecar);
    return `path`. Stale temporaries of a killed earlier run are removed first; whatever exists
    is never replaced (a foreign sidecar is refused, one line, exit 2)."""
    p = Path(path)
    clean_stale_temps(p)
    clean_stale_temps(sidecar_path(p))
    if not (p.exists() or p.is_symlink()):
        claim(p)
        arr, meta = build()
        write(p, arr, meta)
    return p


def write(path, arr, meta, *, overwrite: bool = False) -> Path:
    """Write `arr` to `path` (.npy) and its sidecar JSON; temp files renamed into place.

    Adds `array_sha256` to `meta`. `path` is claimed first (`claim`): an existing dataset is
    replaced only with `overwrite`, never a foreign file. Raises InputError if the path
    cannot be written (no partial file is left behind).
    """
    p = claim(path, overwrite=overwrite)
    if arr.dtype != BLOCK_DTYPE:
        raise ValueError(f"dtype {arr.dtype} is not BLOCK_DTYPE")
    meta = dict(meta)
    meta["array_sha256"] = array_sha256(arr)
    side = sidecar_path(p)
    tmp_arr = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp_side = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_arr, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp_side, "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_arr, p)
        os.replace(tmp_side, side)
    except OSError as exc:
        raise InputError.at(p, None, "--out", f"cannot write: {exc.strerror or exc}") from None
    finally:
        for t in (tmp_arr, tmp_side):
            try:
                t.unlink()
            except OSError:
                pass
    return p


def upgrade(arr) -> np.ndarray:
    """A schema 1 array (BLOCK_DTYPE_V1) as BLOCK_DTYPE, in memory and read-only: every block
    modelled (`time_source` 0), the block-flow fields unknown."""
    from gpu_engine.data.blocks.headers import FLOW_FIELDS

    out = np.empty(len(arr), dtype=BLOCK_DTYPE)
    for name in BLOCK_DTYPE_V1.names:
        out[name] = arr[name]
    out["time_source"] = 0
    for name, unknown in FLOW_FIELDS.items():
        out[name] = unknown
    out.flags.writeable = False
    return out


def load(path) -> np.ndarray:
    """Memory-map a written dataset (read-only). Missing/foreign file -> InputError.

    A schema 1 dataset (written before real block headers) loads converted in memory (`upgrade`).
    """
    if Path(path).is_dir():
        raise InputError.at(path, None, None, "is a directory, not a block dataset (.npy)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise InputError.at(path, None, None, f"cannot load a block dataset: {exc.strerror or exc}") from None
    except ValueError:
        raise InputError.at(path, None, None, "not a block dataset: not a NumPy .npy array file "
                            "(build one with `python -m gpu_engine.data blocks`)") from None
    if arr.ndim == 1 and arr.dtype == BLOCK_DTYPE_V1:
        return upgrade(arr)
    if arr.dtype != BLOCK_DTYPE or arr.ndim != 1:
        raise InputError.at(path, None, None, f"not a block dataset of schema {SCHEMA_VERSION} or 1 "
                            f"(dtype {arr.dtype}); "
                            "rebuild it with `python -m gpu_engine.data blocks --overwrite`")
    return arr


def load_meta(path) -> dict:
    side = sidecar_path(path)
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise InputError.at(side, None, None, f"cannot read the sidecar: {exc}") from None


# ---------------------------------------------------------------- lookups

_SMALL_QUERY = 32  # below this many query times, bisect the block times one by one


_ENVELOPES: dict = {}  # id(blocks) -> (weakref to blocks, signature, running max of its times)


def known_times(blocks) -> np.ndarray:
    """Running maximum of the block times: when a block and every block before it exist.

    Equal to `blocks["time"]` for modelled times (non-decreasing); real header times are not
    monotone. Cached per array (the dataset is read-only once loaded).
    """
    import weakref

    times = blocks["time"]
    n = len(times)
    sig = (n, int(times[0]), int(times[-1])) if n else (0,)
    key = id(blocks)
    hit = _ENVELOPES.get(key)
    if hit is not None and hit[0]() is blocks and hit[1] == sig:
        return hit[2]
    env = np.maximum.accumulate(np.asarray(times, dtype=np.int64))
    _drop_pages(blocks)
    try:
        ref = weakref.ref(blocks, lambda _r, k=key: _ENVELOPES.pop(k, None))
    except TypeError:
        return env
    _ENVELOPES[key] = (ref, sig, env)
    return env


def _drop_pages(blocks) -> None:
    """After a scan of a whole dataset memory-mapped read-only (`load`): tell the kernel this
    process no longer needs the pages it read (madvise MADV_DONTNEED), so that one pass over
    the chain does not stay in the resident set (about 100 MB at today's height) while a long
    run picks a few records per window. The file's pages stay in the page cache; a later read
    maps them again. Nothing is done for arrays in memory or mapped writable/copy-on-write."""
    import mmap

    mm = getattr(blocks, "_mmap", None)  # np.memmap's mapping
    if mm is None or getattr(blocks, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):
        pass


def height_at(blocks, unix_time):
    """Height of the last block of the longest prefix of the chain whose times are all <= unix_time
    (vectorised; -1 before genesis). With non-decreasing (modelled) times that is the latest
    block with time <= unix_time; real header times are not monotone (see `known_times`).

    Times past the tip give the tip's height (no extrapolation). Returns an int64 scalar for a
    scalar input, else an int64 array of the input's shape.
    """
    times = known_times(blocks)
    t = np.asarray(unix_time)
    if t.size < _SMALL_QUERY:
        flat = [bisect.bisect_right(times, v) - 1 for v in t.ravel().tolist()]
        out = np.asarray(flat, dtype=np.int64).reshape(t.shape)
    else:
        out = np.searchsorted(times, t, side="right").astype(np.int64) - 1
    return out[()] if out.ndim == 0 else out


def block_at(blocks, unix_time):
    """Record(s) of the latest block with time <= unix_time; ValueError if any time is before genesis."""
    h = height_at(blocks, unix_time)
    if np.any(np.asarray(h) < 0):
        raise ValueError(f"time before the genesis block (first block time {int(blocks['time'][0])})")
    return blocks[h]


# ---------------------------------------------------------------- summary

def _utc(t) -> str:
    return datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def power_law_r2(blocks) -> dict | None:
    """Log-log fit quality of the power law against the real prices (None without real prices)."""
    real = np.asarray(blocks["price_source"]) == 1
    if real.sum() < 3:
        return None
    x = np.log10(days_since_day0(np.asarray(blocks["time"])[real]))
    y = np.log10(np.asarray(blocks["price"])[real])
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    model = np.log10(POWER_LAW["A"]) + POWER_LAW["n"] * x
    r2_model = 1.0 - float(np.sum((y - model) ** 2)) / ss_tot
    slope, icpt = np.polyfit(x, y, 1)
    r2_fit = 1.0 - float(np.sum((y - (icpt + slope * x)) ** 2)) / ss_tot
    return {"r2_model": r2_model, "r2_refit": r2_fit, "refit_n": float(slope), "refit_log10A": float(icpt),
            "blocks": int(real.sum())}


def _price_source_lines(meta: dict, limit: int = 6) -> list[str]:
    """Which price file priced which span, and the days without a price (sidecar `price.sources`)."""
    src = ((meta or {}).get("price") or {}).get("sources")
    if not src:
        return []
    spans = src.get("spans") or []
    groups: list[list] = []  # consecutive spans of files of one format in one folder: one line
    for sp in spans:
        key = (sp["format"], str(Path(sp["path"]).parent))
        if groups and groups[-1][0] == key and sp["format"] == "binance_klines":
            g = groups[-1]
            g[1].add(sp["path"])
            g[3], g[4] = sp["last_day"], g[4] + sp["days"]
        else:
            groups.append([key, {sp["path"]}, sp["first_day"], sp["last_day"], sp["days"]])
    lines = [f"price sources ({src.get('rule', '')}):"]
    for (fmt, folder), paths, a, b, n in groups[:limit]:
        who = next(iter(paths)) if len(paths) == 1 else f"{len(paths)} files in {folder}"
        lines.append(f"  {a} .. {b}: {who} ({fmt}, {n:,} days)")
    if len(groups) > limit:
        lines.append(f"  ... and {len(groups) - limit} more spans (sidecar price.sources.spans)")
    missing = src.get("missing_days") or []
    if missing:
        n = sum(int((np.datetime64(b) - np.datetime64(a)).astype(int)) + 1 for a, b in missing)
        shown = ", ".join(a if a == b else f"{a}..{b}" for a, b in missing[:4])
        lines.append(f"  gaps: {n} day{'s' if n != 1 else ''} without a price in {len(missing)} run"
                     f"{'s' if len(missing) != 1 else ''} ({shown}{', ...' if len(missing) > 4 else ''}); "
                     "those bars are not traded")
    else:
        lines.append("  gaps: none")
    file_gaps = [(i["path"], g) for i in (meta.get("inputs") or []) if i.get("role") == "prices"
                 for g in i.get("gaps") or []]
    for path, g in file_gaps[:5]:
        span = g["first_missing"] + ("" if g["days"] == 1 else f"..{g['last_missing']}")
        lines.append(f"  {path}:{g['line']}: gap: {g['days']} day{'s' if g['days'] != 1 else ''} without a price "
                     f"({span})")
    if len(file_gaps) > 5:
        lines.append(f"  ... {len(file_gaps) - 5} more gaps inside the files (sidecar inputs[].gaps)")
    return lines


def _btc(sat: int) -> str:
    """Satoshi as BTC in plain decimals (never 4e-08)."""
    return f"{sat / COIN:.8f}".rstrip("0").rstrip(".")


def summary(blocks, meta) -> str:
    n = len(blocks)
    tip = blocks[n - 1]
    h = int(tip["height"])
    lines = []
    sha = (meta or {}).get("array_sha256", "")
    lines.append(f"block dataset: schema {meta.get('schema_version', '?')}, seed {meta.get('seed', '?')}"
                 + (f", sha256 {sha[:16]}..." if sha else ""))
    lines.append(f"count: {n:,} blocks (heights 0 .. {h:,})")
    lines.append(f"span: {_utc(blocks['time'][0])} .. {_utc(tip['time'])}")
    lines.append(f"tip: epoch {h // HALVING_INTERVAL} (subsidy {_btc(int(tip['subsidy_sat']))} BTC), "
                 f"supply {int(tip['supply_sat']) / COIN:,.8f} BTC (genesis included)")
    pl = meta.get("power_law", POWER_LAW)
    lines.append(f"fair values at tip: power law ({pl['variant']}, A={pl['A']:g}, n={pl['n']:g}, day 0 {pl['day0']}) "
                 f"${float(tip['fair_pl']):,.2f}; S2F {float(tip['s2f']):.1f} -> e^-1.84*SF^3.36 "
                 f"${float(tip['fair_s2f']):,.2f}")
    src = "real" if int(tip["price_source"]) == 1 else "synthetic"
    lines.append(f"price at tip: ${float(tip['price']):,.2f} ({src})")
    fit = power_law_r2(blocks)
    if fit is None:
        lines.append("real prices: none (synthetic price everywhere)")
    else:
        real = np.nonzero(np.asarray(blocks["price_source"]) == 1)[0]
        lines.append(f"real prices: {fit['blocks']:,} blocks (heights {real[0]:,} .. {real[-1]:,}, "
                     f"{_utc(blocks['time'][real[0]])[:10]} .. {_utc(blocks['time'][real[-1]])[:10]})")
        lines.append(f"power law vs real prices (log-log): R^2 {fit['r2_model']:.4f} for the fixed model; "
                     f"OLS refit R^2 {fit['r2_refit']:.4f} (n={fit['refit_n']:.3f}, "
                     f"log10 A={fit['refit_log10A']:.3f})")
    lines += _price_source_lines(meta)
    if "time_source" in (blocks.dtype.names or ()):
        ts = np.asarray(blocks["time_source"]) == 1
        if ts.any():
            from gpu_engine.data.blocks.headers import runs
            rr = runs(np.nonzero(ts)[0])
            shown = ", ".join(f"{a:,}..{b:,}" if a != b else f"{a:,}" for a, b in rr[:6])
            more = f" and {len(rr) - 6} more runs" if len(rr) > 6 else ""
            src = (meta.get("headers") or {}).get("source", "fetched headers")
            lines.append(f"real header times: {int(ts.sum()):,} blocks (heights {shown}{more}) from {src}; "
                         f"modelled elsewhere ({n - int(ts.sum()):,} blocks)")
            fees = np.asarray(blocks["fees_sat"]) >= 0
            txs = np.asarray(blocks["tx_count"]) >= 0
            lines.append(f"block flow: tx counts for {int(txs.sum()):,} blocks, fees for {int(fees.sum()):,}"
                         + (f" (total {int(np.asarray(blocks['fees_sat'])[fees].sum()) / COIN:,.8f} BTC)"
                            if fees.any() else "") + "; -1 / NaN where unknown")
        else:
            lines.append("real header times: none (every time from the time map; fetch headers with --source)")
    tm = meta.get("time_map")
    if tm:
        counts = tm.get("daily_counts") or []
        cov = "; ".join(f"heights {c['heights'][0]:,}..{c['heights'][1]:,} ({c['first_day']}..{c['last_day']})"
                        for c in counts) or "none"
        ex = tm["extrapolation"]
        lines.append(f"time map: {len(tm['exact_anchors'])} exact anchors, {len(tm['day_anchors_used'])} day anchors, "
                     f"daily counts: {cov}; extrapolated past height {ex['after_height']:,.0f} "
                     f"at {ex['spacing_s']:.1f} s/block")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

SOURCE_KINDS = ("core-rpc", "esplora")
_SOURCE_ONLY = ("from_height", "to_height", "rpc_cookie", "batch", "concurrency", "poll_s", "max_polls")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "blocks", help="build the per-block Bitcoin dataset (or print the summary of one)",
        description="Build data/blocks.npy (+ .json sidecar): issuance, time map, fair values, price per block; "
                    "with --source, real block headers (times, fees, tx counts) from a Bitcoin Core node or "
                    "an Esplora server.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--blocks", type=int, metavar="N", help="number of blocks (heights 0..N-1)")
    g.add_argument("--until", metavar="YYYY-MM-DD", help="every block up to the end of this UTC day")
    p.add_argument("--prices", nargs="+", action="extend", default=[], metavar="CSV",
                   help="daily BTC/USD closes (Yahoo OHLCV or Coin Metrics CSV, Binance 1d klines .zip/.csv); "
                        "several files (repeated, space- or comma-separated): a LATER file wins where they "
                        "overlap")
    p.add_argument("--chain-stats", nargs="+", action="extend", default=[], metavar="CSV",
                   help="daily block counts (bitcoinvisuals or Coin Metrics CSV) refining the time map")
    p.add_argument("--seed", type=int, default=None, help="synthetic price seed (default 0)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output .npy path, must not exist (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing block dataset at --out (never anything else)")
    p.add_argument("--summary", nargs="?", const=True, default=None, metavar="PATH",
                   help="only print the summary of an existing dataset (PATH, default --out)")
    h = p.add_argument_group("real block headers")
    h.add_argument("--source", nargs=2, metavar=("KIND", "URL"), default=None,
                   help="fetch block headers from KIND core-rpc (a Bitcoin Core node's JSON-RPC URL) or esplora "
                        "(an Esplora API base URL, e.g. .../api); the header table is kept beside --out as "
                        "<stem>.headers/ and reused (an interrupted fetch resumes)")
    h.add_argument("--rpc-cookie", metavar="PATH",
                   help="Bitcoin Core cookie file (__cookie__:password); else user:password@ in the URL, "
                        "BITCOIN_RPC_USER/BITCOIN_RPC_PASSWORD or BITCOIN_RPC_COOKIE")
    h.add_argument("--from-height", type=int, default=None, metavar="H", help="first height to fetch (default 0)")
    h.add_argument("--to-height", type=int, default=None, metavar="H",
                   help="last height to fetch (default: the source's tip)")
    h.add_argument("--follow", action="store_true",
                   help="after the fetch, poll the source and append new blocks (a reorg replaces the "
                        "abandoned blocks), rewriting the dataset after each change; Ctrl-C stops")
    h.add_argument("--poll-s", type=float, default=None, metavar="S", help="--follow: seconds between polls "
                   "(default 30)")
    h.add_argument("--max-polls", type=int, default=None, metavar="N",
                   help="--follow: stop after N polls (default: until Ctrl-C)")
    h.add_argument("--batch", type=int, default=None, metavar="N",
                   help="heights per request batch (default 100)")
    h.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="batches in flight at once (default 4)")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)


def _check_source_args(args) -> None:
    given = [f"--{n.replace('_', '-')}" for n in _SOURCE_ONLY if getattr(args, n) is not None]
    if args.follow:
        given.append("--follow")
    if args.source is None:
        if given:
            raise InputError.at(given[0], None, None, "needs --source KIND URL")
        return
    kind, _url = args.source
    if kind not in SOURCE_KINDS:
        raise InputError.at("--source", None, None, f"unknown kind {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    if args.rpc_cookie is not None and kind != "core-rpc":
        raise InputError.at("--rpc-cookie", None, None, "only with --source core-rpc")
    for flag, v in (("--from-height", args.from_height), ("--to-height", args.to_height)):
        if v is not None and not 0 <= v <= MAX_BLOCKS - 1:
            raise InputError.at(flag, None, None, f"must be a height >= 0, got {v}")
    if args.from_height is not None and args.to_height is not None and args.from_height > args.to_height:
        raise InputError.at("--from-height", None, None, f"{args.from_height} is above --to-height {args.to_height}")
    if args.batch is not None and not 1 <= args.batch <= 1000:
        raise InputError.at("--batch", None, None, f"must be 1..1000, got {args.batch}")
    if args.concurrency is not None and not 1 <= args.concurrency <= 32:
        raise InputError.at("--concurrency", None, None, f"must be 1..32, got {args.concurrency}")
    if args.follow:
        for flag, v in (("--to-height", args.to_height), ("--blocks", args.blocks), ("--until", args.until)):
            if v is not None:
                raise InputError.at(flag, None, None, "--follow follows the tip; give no " + flag)
    else:
        for flag in ("--poll-s", "--max-polls"):
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                raise InputError.at(flag, None, None, "only with --follow")
    if args.poll_s is not None and not args.poll_s > 0:
        raise InputError.at("--poll-s", None, None, f"must be > 0, got {args.poll_s}")
    if args.max_polls is not None and args.max_polls < 1:
        raise InputError.at("--max-polls", None, None, f"must be >= 1, got {args.max_polls}")


def split_list(values) -> list[str]:
    """`--prices A,B --prices C` -> [A, B, C] (a name that exists as a file is never split)."""
    out = []
    for v in values:
        if "," in v and not Path(v).exists():
            out += [x.strip() for x in v.split(",") if x.strip()]
        else:
            out.append(v)
    return out


def _cli(args) -> int:
    if args.summary is not None:
        if (args.blocks is not None or args.until or args.prices or args.chain_stats or args.seed is not None
                or args.source is not None):
            raise InputError.at("--summary", None, None, "prints an existing dataset; give no build options")
        path = args.out if args.summary is True else args.summary
        if Path(path).is_dir():
            raise InputError.at(path, None, None, "is a directory, not a block dataset (.npy)")
        if not Path(path).is_file():
            raise InputError.at(path, None, None, "no such dataset (build it with `python -m gpu_engine.data blocks`)")
        blocks = load(path)
        meta = load_meta(path) if sidecar_path(path).is_file() else {}
        print(summary(blocks, meta))
        return 0
    if args.seed is not None and args.seed < 0:
        raise InputError.at("--seed", None, None, f"must be a non-negative integer, got {args.seed}")
    args.prices = split_list(args.prices)
    _check_source_args(args)
    inputs = [("--prices", q) for q in args.prices] + [("--chain-stats", q) for q in args.chain_stats]
    for flag, q in inputs:
        if Path(q).is_dir():
            raise InputError.at(q, None, flag, "is a directory, not a CSV file")
    if args.rpc_cookie is not None:
        inputs.append(("--rpc-cookie", args.rpc_cookie))
    claim(args.out, overwrite=args.overwrite, inputs=inputs)  # before any work
    seed = 0 if args.seed is None else args.seed
    if args.source is not None:
        return _cli_source(args, seed, inputs)
    arr, meta = build(n_blocks=args.blocks, until=args.until, prices=args.prices, chain_stats=args.chain_stats,
                      seed=seed)
    out = write(args.out, arr, meta, overwrite=args.overwrite)
    print(f"wrote {out} ({len(arr):,} blocks, {out.stat().st_size / 1e6:.1f} MB) and {sidecar_path(out)} "
          f"in {meta['build']['seconds']:.2f} s build")
    print(summary(arr, load_meta(out)))
    return 0


def _cli_source(args, seed: int, inputs) -> int:
    """`blocks --source KIND URL ...`: fetch headers into the table beside --out, build, write, follow."""
    from gpu_engine.data.blocks import fetch as F
    from gpu_engine.data.blocks import headers as H
    from gpu_engine.data.blocks.remote import Unreachable

    table_path = H.store_path(args.out)
    H.check_claim(table_path)
    for flag, q in inputs:
        if q is not None and Path(q).absolute().resolve() == table_path.absolute().resolve():
            raise InputError(f"{table_path}: --out: the header table's path is this command's input {flag} {q}")
    kind, url = args.source
    batch = args.batch or F.DEFAULT_BATCH
    conc = args.concurrency or F.DEFAULT_CONCURRENCY
    prices = [read_prices(q) for q in args.prices]  # unusable files refused before any fetching
    counts = [read_chain_stats(q) for q in args.chain_stats]
    source = F.open_source(kind, url, args.rpc_cookie, concurrency=conc)
    try:
        genesis = source.check_chain()
        tip, _ = source.tip()
        lo = args.from_height or 0
        hi = tip if args.to_height is None else args.to_height
        if hi > tip:
            raise InputError.at("--to-height", None, None, f"{hi} is past the source's tip {tip}")
        if lo > hi:
            raise InputError.at("--from-height", None, None, f"{lo} is past the source's tip {tip}")
        with H.HeaderStore.open(table_path, genesis, f"{kind} {source.label}") as store:
            try:
                stats = F.sync(source, store, lo, hi, batch=batch, concurrency=conc, progress=not args.quiet)
            except BaseException:
                store.discard_if_empty()  # a first fetch that got nothing leaves nothing behind
                raise
            store.compact()
            print(stats.line(source.label), flush=True)

            def rebuild(overwrite: bool):
                info = {"source": f"{kind} {source.label}", "genesis_hash": genesis,
                        "tip_height": store.top(), "tip_hash": H.hash_hex(store.rows["hash"][-1]),
                        "table": store.describe()}
                arr, meta = build(n_blocks=args.blocks, until=args.until, prices=prices, chain_stats=counts,
                                  seed=seed, headers=store.rows, headers_info=info)
                return arr, write(args.out, arr, meta, overwrite=overwrite)

            arr, out = rebuild(args.overwrite)
            print(f"wrote {out} ({len(arr):,} blocks, {out.stat().st_size / 1e6:.1f} MB), {sidecar_path(out)} "
                  f"and the header table {table_path}")
            print(summary(arr, load_meta(out)), flush=True)
            if args.follow:
                poll_s = 30.0 if args.poll_s is None else args.poll_s
                polls = 0
                while args.max_polls is None or polls < args.max_polls:
                    _time.sleep(poll_s)
                    polls += 1
                    try:
                        res = F.poll_once(source, store, batch=batch, concurrency=conc)
                    except Unreachable as exc:  # a node restarting, a network hiccup: poll again later
                        source.stop.clear()
                        sys.stderr.write(f"warning: poll {polls}: {exc}; polling again in {poll_s:g} s\n")
                        sys.stderr.flush()
                        continue
                    if res.changed:
                        arr, out = rebuild(True)
                        print(f"{res.line()}; wrote {out} ({len(arr):,} blocks)", flush=True)
    finally:
        source.close()
    return 0
