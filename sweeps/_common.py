"""Shared plumbing of the sweep CLIs: flags, data loading, costs, configuration arrays, exit codes.

The costs of a run (`costs`, `run_costs`) hold the fees, latencies, capital and the contract
and queue model (sweeps/market_settings.py: from the flags, else the store's attrs); they go
into every fingerprint, the cube's attrs, each configuration (`configs_for`) and each launch
(`evaluate`).

Unusable input (a bad flag value, a missing data file, a bad space file) raises
`InputError`; `run_cli` prints it as one line on stderr and returns 2, before
anything is written.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gpu_engine import space as space_mod
from gpu_engine import validation
from gpu_engine.cli import Parser, run_main  # noqa: F401  (Parser: used by the sweep CLIs)
from gpu_engine.errors import InputError
from gpu_engine.enums import DEFAULT_CAPITAL, DEFAULT_FEE_BPS, DEFAULT_LATENCY_NS, METRICS
from sweeps import market_settings

DEFAULT_BOOKS = "data/books/synth.zarr"
DEFAULT_BLOCKS = "data/blocks.npy"
DEFAULT_BUCKETS = 64


def run_cli(parser: argparse.ArgumentParser, func: Callable, argv=None) -> int:
    return run_main(parser, func, argv)


def add_data_args(p: argparse.ArgumentParser, *, data_required: bool = False) -> None:
    g = p.add_argument_group("data and costs")
    g.add_argument("--data", default=None, required=data_required,
                   help=f"book store (default {DEFAULT_BOOKS}, generated when absent); `blocks` (the --blocks "
                        "dataset) or a block dataset .npy: the block history as a level-1 bar market "
                        "(docs/POWERLAW.md)")
    g.add_argument("--blocks", default=None,
                   help=f"block dataset (default {DEFAULT_BLOCKS}, built when absent)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--fee-bps", type=float, default=None,
                   help="fee per taker fill in bps (default: by venue: Binance USD-M/COIN-M 5, spot 10, "
                        f"else {DEFAULT_FEE_BPS:g}, Binance spot taker)")
    g.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_NS / 1e6,
                   help="order latency in ms (default %(default)s)")
    g.add_argument("--capital", type=float, default=DEFAULT_CAPITAL, help="starting equity (default %(default)s)")
    g.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS,
                   help="time buckets of the in-sample part (PBO, Sharpe; default %(default)s)")
    g.add_argument("--is-frac", type=float, default=0.7, help="in-sample share of the time span (default 0.7)")
    g.add_argument("--purge-frac", type=float, default=0.01,
                   help="gap between in- and out-of-sample, share of the span (default 0.01)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget of the data in flight, e.g. 2G or 512M (default: half of the memory "
                        "available now): a data set whose whole load would not fit streams through memory "
                        "in windows of rows, with the same results")
    market_settings.add_args(p)
    b = p.add_argument_group("the block history as a market (--data blocks)")
    b.add_argument("--bar", default=None, metavar="1d",
                   help="bar length: 1h, 1d or 1w (or N h/d/w; default 1d)")
    b.add_argument("--spread-bps", type=float, default=None, metavar="BPS",
                   help="bid-ask spread in bps (default: by era, gpu_engine/data/blocks/market.py SPREAD_ERAS)")
    b.add_argument("--liquidity", type=float, default=None, metavar="USD",
                   help="displayed size per side in quote currency, size = USD / price (default 100000)")
    b.add_argument("--allow-modelled-prices", action="store_true",
                   help="also trade bars whose price is modelled, not real (synthetic: validates nothing; "
                        "the report names it)")
    b.add_argument("--from", dest="bars_from", default=None, metavar="YYYY-MM-DD",
                   help="first UTC day of the bars (default: the first real-priced bar)")
    b.add_argument("--to", dest="bars_to", default=None, metavar="YYYY-MM-DD",
                   help="last UTC day of the bars (default: the last real-priced bar)")


BLOCK_FLAGS = (("bar", "--bar"), ("spread_bps", "--spread-bps"), ("liquidity", "--liquidity"),
               ("allow_modelled_prices", "--allow-modelled-prices"), ("bars_from", "--from"), ("bars_to", "--to"))


def is_blocks_data(args) -> bool:
    """`--data blocks` or `--data PATH.npy`: the block history as a bar market."""
    data = getattr(args, "data", None)
    return data is not None and (str(data) == "blocks" or str(data).endswith(".npy"))


def resolve_space(value):
    """`--space NAME` -> sweeps/spaces/NAME.toml when NAME is not a path that exists."""
    if value is None:
        return None
    p = Path(value)
    if not p.exists() and p.suffix == "" and "/" not in str(value):
        named = Path(space_mod.DEFAULT_SPACE).parent / f"{value}.toml"
        if named.is_file():
            return str(named)
    return value


def check_args(args) -> None:
    def bad(flag, value, want):
        raise InputError(f"{flag}: value {value!r} {want}")

    if hasattr(args, "space"):
        args.space = resolve_space(args.space)
    if is_blocks_data(args):
        from gpu_engine.data.blocks import market as bars_mod

        bars_mod.parse_bar(args.bar or bars_mod.DEFAULT_BAR)
        bars_mod.check_costs(args.spread_bps, bars_mod.DEFAULT_LIQUIDITY if args.liquidity is None else args.liquidity)
        for flag, value in (("--from", args.bars_from), ("--to", args.bars_to)):
            if value is not None:
                bars_mod.day_number(value, flag)
    else:
        for attr, flag in BLOCK_FLAGS:
            if getattr(args, attr, None) not in (None, False):
                raise InputError(f"{flag}: only with --data blocks (or --data PATH.npy, a block dataset)")

    if args.fee_bps is not None and not (args.fee_bps >= 0 and np.isfinite(args.fee_bps)):
        bad("--fee-bps", args.fee_bps, "must be finite and >= 0")
    if not (args.latency_ms >= 0 and np.isfinite(args.latency_ms)):
        bad("--latency-ms", args.latency_ms, "must be finite and >= 0")
    if not (args.capital > 0 and np.isfinite(args.capital)):
        bad("--capital", args.capital, "must be finite and > 0")
    if args.buckets < 2:
        bad("--buckets", args.buckets, "must be >= 2")
    if not 0 < args.is_frac < 1:
        bad("--is-frac", args.is_frac, "must be in (0, 1)")
    if not 0 <= args.purge_frac < 1 - args.is_frac:
        bad("--purge-frac", args.purge_frac, f"must be in [0, {1 - args.is_frac:g})")
    market_settings.check_args(args)


def costs(args, attrs: dict | None = None) -> dict:
    """The run's costs and market settings (part of every fingerprint and of the cube's attrs):
    fee_bps (taker), maker_fee_bps, fee_source, latency_ns, cancel_latency_ns, capital, contract
    (sweeps/market_settings.py) and, for a bar market, its settings. `attrs`: the book's attrs
    (default: read from the --data store when it exists)."""
    if attrs is None and not is_blocks_data(args):
        attrs = market_settings.store_attrs(args.data or DEFAULT_BOOKS)
    out = {"latency_ns": int(round(args.latency_ms * 1e6)), "capital": float(args.capital),
           **market_settings.costs(args, attrs)}
    if is_blocks_data(args):  # the bar market's settings: part of every fingerprint and of the cube's attrs
        from gpu_engine.data.blocks import market as bars_mod

        out["market"] = {"bar": args.bar or bars_mod.DEFAULT_BAR, "spread_bps": args.spread_bps,
                         "liquidity": float(bars_mod.DEFAULT_LIQUIDITY if args.liquidity is None else args.liquidity),
                         "allow_modelled_prices": bool(args.allow_modelled_prices),
                         "from": args.bars_from, "to": args.bars_to}
    return out


def run_costs(args, space: space_mod.Space, data: "Data | None" = None) -> dict | None:
    """`costs` of the run, checked before any launch or output (sweeps/market_settings.py): the
    contract as `gpu_engine.sweep` would refuse it, and a space with maker orders without a tick
    size. From the store's attrs, read without loading it; None when there is no store yet (the
    default one, generated by `load_data`): call again with the loaded `data` then."""
    if data is not None:
        attrs, where = dict(getattr(data.book, "attrs", None) or {}), f"the data {data.book_path}"
    elif is_blocks_data(args):
        attrs, where = {}, "the block history as bars"
    else:
        where = f"the store {args.data or DEFAULT_BOOKS}"
        attrs = market_settings.store_attrs(args.data or DEFAULT_BOOKS)
        if attrs is None:
            return None
    cost = costs(args, attrs)
    market_settings.check_settings(cost)
    market_settings.check_space(space, cost, where)
    return cost


def data_paths(args) -> tuple[Path, Path]:
    """The book store and block dataset paths; explicit paths must exist (defaults are generated).

    With `--data blocks` both are the block dataset (--blocks, default data/blocks.npy); with
    `--data PATH.npy` both are PATH.npy."""
    if is_blocks_data(args):
        if str(args.data) == "blocks":
            path = Path(args.blocks or DEFAULT_BLOCKS)
            if args.blocks is not None and not path.exists():
                raise InputError(f"{args.blocks}: --blocks: no such file")
        else:
            path = Path(args.data)
            if args.blocks is not None and Path(args.blocks).absolute() != path.absolute():
                raise InputError(f"--blocks: with --data {args.data} the block dataset is --data itself; "
                                 "give one of them (or --data blocks --blocks PATH)")
            if not path.exists():
                raise InputError(f"{args.data}: --data: no such file")
        return path, path
    if args.data is not None and is_store_set(args.data):
        from gpu_engine.data.books import collection

        collection.check(collection.resolve(args.data))  # mixed markets, overlaps: refused before any work
    elif args.data is not None and not Path(args.data).exists():
        raise InputError(f"{args.data}: --data: no such file or store")
    if args.blocks is not None and not Path(args.blocks).exists():
        raise InputError(f"{args.blocks}: --blocks: no such file or store")
    return Path(args.data or DEFAULT_BOOKS), Path(args.blocks or DEFAULT_BLOCKS)


def data_set_attrs(data) -> dict:
    """Cube attrs of a data set of several stores: each store and the gaps between them."""
    attrs = getattr(getattr(data, "book", None), "attrs", None) or {}
    if "stores" not in attrs:
        return {}
    return {"stores": attrs["stores"], "store_gaps": attrs.get("store_gaps", [])}


def is_store_set(data) -> bool:
    """Whether --data names several stores: a comma list, a glob, or a directory of stores."""
    s = str(data)
    if "," in s or any(ch in s for ch in "*?["):
        return True
    p = Path(s)
    return p.is_dir() and not (p / "zarr.json").is_file()


def load_books(book_path: Path):
    """The Book of --data: one store, or a data set of several read as one time series
    (gpu_engine/data/books/collection.py: time order, one market, gaps listed in the attrs)."""
    from gpu_engine.data.books import collection
    from gpu_engine.data.books import store as books

    if not is_store_set(book_path):
        return books.load(book_path)
    return collection.load_many(collection.resolve(str(book_path)))


@dataclass
class Data:
    """The loaded market data, split in time, with the feature bank on the chosen device."""

    book_path: Path
    blocks_path: Path
    book: object
    bank: object
    split: validation.TimeSplit
    is_book: object
    is_bank: object
    oos_book: object
    oos_bank: object
    scale: np.ndarray  # per bank row: std of the row over the in-sample ticks (NaN ignored)
    device: str
    market: dict | None = None  # the bar market's description (--data blocks), else None
    stream: object = None  # Streamed: the data set is read window by window (book/bank are its rows/DiskBank)

    def part(self, which: str):
        return (self.is_book, self.is_bank) if which == "is" else (self.oos_book, self.oos_bank)


def ensure_blocks(path: Path) -> Path:
    """The default block dataset: built only where nothing stands (blocks.ensure_default)."""
    from gpu_engine.data.blocks import dataset as blocks

    return blocks.ensure_default(path)


def done_with_data() -> None:
    """A run's evaluations are over (its final statistics come next): free the streamed window
    buffers kept for the next evaluation and hand the allocator's free memory back to the system,
    so that the statistics' peak sits on the process, not on the windows it has finished with.
    A later evaluation (another search on the same data) allocates its buffers again."""
    from gpu_engine import memory, stream

    stream.release_buffers()
    memory.return_free_memory()


def load_data(args, space: space_mod.Space, log=print) -> Data:
    """Generate the defaults when absent, load the book, build the bank, split in time."""
    from gpu_engine.backend import resolve
    from gpu_engine.data.books import store as books
    from gpu_engine import feature_cache
    from gpu_engine.features import build_bank

    spec = space_mod.feature_spec(space)  # unknown signal names fail here, before any data work
    book_path, blocks_path = data_paths(args)
    if is_blocks_data(args):
        return _load_blocks_market(args, spec, blocks_path, log)
    if args.blocks is None and not blocks_path.exists():
        log(f"building the block dataset {blocks_path} ...")
        ensure_blocks(blocks_path)
    if args.data is None and not book_path.exists():
        from gpu_engine.data.synth import generate as synth

        log(f"generating the synthetic book store {book_path} ...")
        synth.ensure_default(book_path, blocks=blocks_path)
    streamed = _load_streamed(args, spec, book_path, blocks_path, log)
    if streamed is not None:
        return streamed
    try:
        book = feature_cache.load_book(book_path, lambda: load_books(book_path))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{book_path}: --data: not a readable book store ({exc})") from None
    try:
        backend = resolve(args.device)
    except RuntimeError as exc:
        raise InputError(f"--device: value {args.device!r}: {exc}") from None
    try:
        split = validation.split_time(book.ts, args.is_frac, args.purge_frac)
    except ValueError as exc:
        raise InputError(f"{book_path}: --data: {exc}") from None
    bank, _ = feature_cache.load_or_build(
        book_path, blocks_path, spec, backend.xp,
        lambda: build_bank(book, spec, xp=backend.xp, blocks=blocks_path))
    scale = _in_sample_scale(bank, split)
    device = backend.name + (" (simulated)" if backend.simulated else "")
    return Data(book_path, blocks_path, book, bank, split,
                validation.slice_book(book, split.in_sample), validation.slice_bank(bank, split.in_sample),
                validation.slice_book(book, split.out_sample), validation.slice_bank(bank, split.out_sample),
                scale, device)


def _load_blocks_market(args, spec, path: Path, log) -> Data:
    """`--data blocks`: the bar market of the block dataset (gpu_engine/data/blocks/market.py), its bank
    (not cached: a few thousand bars build in a second) and the time split."""
    from gpu_engine.backend import resolve
    from gpu_engine.data.blocks import dataset as blocks
    from gpu_engine.data.blocks import market as bars_mod
    from gpu_engine.features import build_bank

    if not path.exists():
        if not args.allow_modelled_prices:
            raise InputError(f"{path}: --data blocks: no block dataset; build one with real daily closes, "
                             "`python -m gpu_engine.data blocks --prices FILE...` (docs/POWERLAW.md); the default "
                             "dataset alone has modelled prices only (usable with --allow-modelled-prices)")
        log(f"building the block dataset {path} ...")
        ensure_blocks(path)
    arr = blocks.load(path)
    meta = blocks.load_meta(path) if blocks.sidecar_path(path).is_file() else {}
    book, info = bars_mod.bars(arr, meta, bar=args.bar or bars_mod.DEFAULT_BAR, spread_bps=args.spread_bps,
                               liquidity=bars_mod.DEFAULT_LIQUIDITY if args.liquidity is None else args.liquidity,
                               allow_modelled=args.allow_modelled_prices, start=args.bars_from, end=args.bars_to,
                               source=path)
    try:
        backend = resolve(args.device)
    except RuntimeError as exc:
        raise InputError(f"--device: value {args.device!r}: {exc}") from None
    try:
        split = validation.split_time(book.ts, args.is_frac, args.purge_frac)
    except ValueError as exc:
        raise InputError(f"{path}: --data: {exc}") from None
    bank = build_bank(book, spec, xp=backend.xp, blocks=arr)
    scale = _in_sample_scale(bank, split)
    device = backend.name + (" (simulated)" if backend.simulated else "")
    return Data(path, path, book, bank, split,
                validation.slice_book(book, split.in_sample), validation.slice_bank(bank, split.in_sample),
                validation.slice_book(book, split.out_sample), validation.slice_bank(bank, split.out_sample),
                scale, device, market=info)


def _in_sample_scale(bank, split) -> np.ndarray:
    """Per bank row, the std of its finite in-sample values (gpu_engine.stream.row_scale: the same
    bits whether the bank is in memory or streamed from disk)."""
    from gpu_engine import stream

    host = bank.to_host()
    sl = split.in_sample
    return stream.row_scale(lambda a, b: host[:, a:b], sl.start, sl.stop, int(host.shape[0]))


@dataclass
class Streamed:
    """A data set read window by window (gpu_engine/stream.py) within `budget` bytes."""

    rows: object       # gpu_engine.data.books.rows.StoreRows
    bank: object       # gpu_engine.stream.DiskBank
    budget: int
    trades_per_row: float

    def window(self, part_rows: int, configs: int, buckets: int) -> int:
        from gpu_engine import stream

        return stream.plan(part_rows, self.rows.depth, self.bank.K, configs, buckets, self.budget,
                           self.trades_per_row).window_rows


def _store_paths(book_path: Path) -> list[Path]:
    from gpu_engine.data.books import collection

    if is_store_set(book_path):
        return [i.path for i in collection.check(collection.resolve(str(book_path)))[0]]
    return [book_path]


def _load_streamed(args, spec, book_path: Path, blocks_path: Path, log) -> "Data | None":
    """The data set as a Streamed one when loading it whole would exceed the memory budget
    (`--max-memory`, default half of the memory available now); None: load it whole."""
    from gpu_engine import feature_cache, stream
    from gpu_engine.backend import resolve
    from gpu_engine.data.books.rows import StoreRows
    from gpu_engine.features_stream import BankStream

    try:
        backend = resolve(args.device)
    except RuntimeError as exc:
        raise InputError(f"--device: value {args.device!r}: {exc}") from None
    budget = (stream.parse_bytes(args.max_memory) if getattr(args, "max_memory", None)
              else stream.default_budget(backend))
    _STREAM_PROGRESS[0] = not getattr(args, "no_progress", False)
    try:
        rows = StoreRows(_store_paths(book_path))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{book_path}: --data: not a readable book store ({exc})") from None
    trades = sum(p.trade_rows for p in rows.parts)
    tpr = trades / max(1, rows.T)
    K = BankStream(spec, depth=rows.depth, blocks=blocks_path).K
    if stream.whole_load_bytes(rows.T, rows.depth, K, tpr) <= budget:
        return None
    if backend.is_cuda and not backend.simulated:
        backend_note = " (the device holds one window at a time)"
    else:
        backend_note = ""
    try:
        split = stream.split_rows(rows, args.is_frac, args.purge_frac)
    except ValueError as exc:
        raise InputError(f"{book_path}: --data: {exc}") from None
    window = stream.plan(rows.T, rows.depth, K, 1, 1, budget, tpr).window_rows
    log(f"{book_path}: {rows.T:,} rows do not fit --max-memory {budget / 2 ** 20:,.0f} MiB whole: "
        f"streaming them in windows of up to {window:,} rows{backend_note}")
    stream.reserve_buffers(rows, K, window)  # the largest window: no evaluation replaces them
    bank = _streamed_bank(rows, spec, blocks_path, window, args, log)
    sl = split.in_sample
    scale = stream.row_scale(bank.read, sl.start, sl.stop, bank.K)
    device = backend.name + (" (simulated)" if backend.simulated else "")
    return Data(book_path, blocks_path, rows, bank, split, None, None, None, None, scale, device,
                stream=Streamed(rows, bank, budget, tpr))


def _streamed_bank(rows, spec, blocks_path: Path, window: int, args, log):
    """The data set's feature bank on disk (gpu_engine.stream.DiskBank), built window by window
    once per version of the stores and spec, in the feature cache folder (a temporary folder
    for this process when the cache is off)."""
    import atexit
    import hashlib
    import json
    import shutil
    import tempfile

    from gpu_engine import feature_cache, features, stream
    from gpu_engine.kernels.cache import source_stamp

    doc = {"format": "streamed bank v1", "stores": [feature_cache._stat_key(p.path) for p in rows.parts],
           "blocks": feature_cache._stat_key(blocks_path), "spec": spec,
           "source": source_stamp(features.__file__)}
    key = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    where = feature_cache.folder()
    if where is None:
        where = Path(tempfile.mkdtemp(prefix="gpu-sweep-bank-"))
        atexit.register(shutil.rmtree, where, True)
    path = where / f"{key}.stream.npy"
    if path.is_file() and stream.rows_sidecar(path).is_file():
        try:
            bank = stream.DiskBank(path)
            if bank.T == rows.T:
                return bank
        except Exception:
            pass
    log(f"building the feature bank of {rows.T:,} rows window by window into {path} ...")
    bar = progress(rows.T, "rows", getattr(args, "no_progress", False), desc="feature bank")
    try:
        return stream.DiskBank.build(rows, spec, path, window=window, blocks=blocks_path,
                                     progress=bar.update)
    finally:
        bar.close()


def configs_for(space: space_mod.Space, points: dict[str, np.ndarray], data: Data, cost: dict) -> dict:
    """Space points -> configuration fields (thresholds scaled to signal std when the space says so)."""
    fields = space_mod.to_configs(points, space_mod.row_resolver(data.bank))
    if space.thresholds == "std":
        s = data.scale[fields["signal"]]
        s = np.where(np.isfinite(s) & (s > 0), s, 1e-12)
        for key in ("entry", "exit"):
            if key in fields:
                with np.errstate(invalid="ignore"):
                    fields[key] = np.where(np.isinf(fields[key]), fields[key], fields[key] * s)
    n = len(fields["signal"])
    fields["fee_bps"] = np.full(n, cost["fee_bps"])
    fields["latency"] = np.full(n, cost["latency_ns"], np.int64)
    fields["capital"] = np.full(n, cost["capital"])
    if "maker_fee_bps" in cost:
        fields["maker_fee_bps"] = np.full(n, cost["maker_fee_bps"])
    if "cancel_latency_ns" in cost:
        fields["cancel_latency"] = np.full(n, cost["cancel_latency_ns"], np.int64)
    return fields


def evaluate(data: Data, which: str, fields: dict, device: str, buckets: int,
             cost: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One launch of `gpu_engine.sweep` on the in-sample ("is") or out-of-sample ("oos") part, with
    the contract and queue model of `cost` (sweeps/market_settings.py; the engine's defaults without).

    Returns metrics [C, M] in `enums.METRICS` order and bucket PnL [C, B] (host arrays).
    """
    import gpu_engine

    try:
        if data.stream is not None:
            ds = _evaluate_streamed(data, which, fields, device, buckets, cost)
        else:
            book, bank = data.part(which)
            ds = gpu_engine.sweep(book, bank, fields, device=device, buckets=buckets,
                                  **market_settings.sweep_kwargs(cost or {}))
    except ValueError as exc:  # refused input the checks before the launch did not catch
        raise InputError(f"{data.book_path}: {exc}") from None
    metrics = np.stack([np.asarray(ds[m].values, dtype=np.float64) for m in METRICS], axis=1)
    return metrics, np.asarray(ds["bucket_pnl"].values, dtype=np.float64)


def _evaluate_streamed(data: Data, which: str, fields: dict, device: str, buckets: int, cost: dict | None):
    """evaluate() on a Streamed data set: the part's rows window by window (rows done of rows
    total on a progress bar unless --no-progress)."""
    from gpu_engine import stream

    sl = data.split.in_sample if which == "is" else data.split.out_sample
    n = sl.stop - sl.start
    C = len(fields["signal"])
    window = data.stream.window(n, C, buckets)
    bar = progress(n, "rows", not _STREAM_PROGRESS[0], desc=f"{which} rows", smoothing=0.3)
    try:
        return stream.sweep_stream(data.stream.rows, data.stream.bank, fields, part=(sl.start, sl.stop),
                                   device=device, buckets=buckets, window=window, progress=bar.update,
                                   **market_settings.sweep_kwargs(cost or {}))
    finally:
        bar.close()


# whether streamed evaluations show a rows bar (set by the commands from --no-progress)
_STREAM_PROGRESS = [False]


def progress(total: int, unit: str, disable: bool, initial: int = 0, desc: str | None = None,
             smoothing: float = 0.0):
    """A tqdm bar on stderr. Counts print as integers (no unit scaling: `24576`, not `24.6k`);
    smoothing 0 = the average rate since the bar started (see `WarmBar`)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=False, disable=disable, initial=initial,
                desc=desc, dynamic_ncols=True, mininterval=0.5, file=sys.stderr, smoothing=smoothing)


class WarmBar:
    """A progress bar that appears after the first batch of this process, with the count done so far.

    The first batch's time includes the one-off kernel compile (~20 s): a bar started before it
    estimates the remaining time many times too long (54 min for a 10 min grid). Until the bar
    appears, one line on stderr says what is running.
    """

    def __init__(self, total: int, unit: str, disable: bool, initial: int = 0, desc: str = ""):
        self.total, self.unit, self.disable, self.n, self.desc = total, unit, disable, initial, desc
        self.bar = None
        if not disable and initial < total:
            sys.stderr.write(f"{desc}: {initial}/{total} {unit}; the first batch includes the kernel compile ...\n")
            sys.stderr.flush()

    def update(self, k: int) -> None:
        self.n += k
        if self.bar is None:
            self.bar = progress(self.total, self.unit, self.disable, initial=self.n, desc=self.desc)
        else:
            self.bar.update(k)

    def set_postfix(self, **kw) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def input_paths(args, space) -> list[tuple[str, Path]]:
    """(flag, path) of what a sweep reads: its output may be none of them (`outputs.claim_output`)."""
    if is_blocks_data(args):
        path, _ = data_paths(args)
        return [("--data", path), ("--space", Path(space.path))]
    return [("--data", Path(args.data or DEFAULT_BOOKS)), ("--blocks", Path(args.blocks or DEFAULT_BLOCKS)),
            ("--space", Path(space.path))]


def refuse_inputs(out: Path, flag: str, inputs) -> None:
    """`out` may not be, contain or lie inside any input (checked first, with or without --overwrite)."""
    from gpu_engine import outputs

    target = Path(out).absolute().resolve()
    for in_flag, p in inputs:
        if p is not None and outputs._same_or_nested(target, Path(p).absolute().resolve()):
            raise InputError(f"{out}: {flag}: is (or overlaps) this command's input {in_flag} {p}; "
                             "refusing to write over it, choose another path")


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out cube of this engine (never anything else, never an input)")
