"""Synthetic order flow: the main job's embedded default data (docs/SYNTH.md).

Owns the driver around the numba engine (`synth_engine`): seeding the book at the anchor price,
warm-up, chunked generation in physical units, writing a book store with a trades group, the
price anchor from the block dataset, `ensure_default()` and the `synth` CLI command.

    generate(start, hours, seed, price=None, params=None) -> (Book, Trades)   # in memory
    write(path, start, hours, seed, ...) -> summary dict                     # chunked, bounded memory
    ensure_default(path="data/books/synth.zarr") -> Path
"""
from __future__ import annotations

import datetime as dt
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gpu_engine.data.synth import book as SB
from gpu_engine.data.synth import engine as E
from gpu_engine.data.synth import layout as LY
from gpu_engine.data.books.store import Book, Trades
from gpu_engine.data.synth.params import DEFAULT, SynthParams
from gpu_engine.errors import InputError
from gpu_engine.outputs import claim_output, clean_stale_temps

GENERATOR = "gpu_engine.data.synth.generate v1 (ZI limit/market/cancel + Hawkes market orders)"
DEFAULT_START = "2024-08-08T00:00"
DEFAULT_HOURS = 6.0
DEFAULT_OUT = "data/books/synth.zarr"
DEFAULT_BLOCKS = "data/blocks.npy"
TRADE_GUARD = 65536            # free trade slots demanded before each 100 ms step


# ---------------------------------------------------------------- time and anchor
def parse_start(value) -> int:
    """UTC start (ISO string, datetime, or unix seconds) -> unix nanoseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(round(float(value) * 1e9))
    if isinstance(value, dt.datetime):
        d = value
    else:
        try:
            d = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"synth --start: {value!r} is not an ISO date/time (e.g. 2024-08-08T00:00)") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    delta = d - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def anchor_price(start_ns: int, blocks_path=None) -> tuple[float, dict]:
    """Price of the block dataset at the start time, and where it came from.

    Uses `blocks_path` when given, else data/blocks.npy when present, else builds the block
    dataset in memory up to the start time.
    """
    from gpu_engine.data.blocks import dataset as B  # imported late: a sibling module

    unix = start_ns / 1e9
    if blocks_path is not None:
        path = Path(blocks_path)
        if not path.exists():
            raise InputError(f"{path}: block dataset not found (synth --blocks)")
        table = B.load(path)
        origin = str(path)
    elif Path(DEFAULT_BLOCKS).exists():
        table = B.load(DEFAULT_BLOCKS)
        origin = DEFAULT_BLOCKS
    else:
        day = dt.datetime.fromtimestamp(unix, dt.timezone.utc).date().isoformat()
        table, _meta = B.build(until=day, until_flag="synth --start")
        origin = "gpu_engine.data.blocks.dataset.build(until=start) in memory"
    try:
        row = B.block_at(table, unix)
    except ValueError as exc:
        raise InputError(f"{origin}: no block at the synth start time: {exc}") from None
    price = float(row["price"])
    if not (math.isfinite(price) and price > 0):
        raise InputError(f"{origin}: block {int(row['height'])} has no usable price ({price!r})")
    return price, {"blocks": origin, "height": int(row["height"]), "block_time": int(row["time"]),
                   "price": price}


# ---------------------------------------------------------------- the run
@dataclass
class _Run:
    params: SynthParams
    p: np.ndarray
    fst: np.ndarray
    ist: np.ndarray
    bsz: np.ndarray
    bcnt: np.ndarray
    btree: np.ndarray
    asz: np.ndarray
    acnt: np.ndarray
    atree: np.ndarray
    rng: np.random.Generator
    t0_ns: int        # unix ns of simulation time 0 (the start of the warm-up)
    t_rec: float      # simulation time of the recorded start


def _check_args(hours, seed, sample_ms: int = DEFAULT.sample_ms) -> None:
    if isinstance(hours, bool) or not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
        raise InputError(f"synth --hours: {hours!r} must be a positive number")
    if round(hours * 3_600_000 / sample_ms) < 1:
        raise InputError(f"synth --hours: {hours!r} is shorter than one {sample_ms} ms row")
    if isinstance(seed, bool) or not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise InputError(f"synth --seed: {seed!r} must be a non-negative integer")


STORE_BYTES_PER_HOUR = 6_000_000  # a 6 h store is about 27 MB (rows and trades, zstd), with margin


def _check_disk(path, hours: float) -> None:
    """Refuse an --hours whose store would not fit on the disk of `path` (before generating)."""
    import shutil

    need = hours * STORE_BYTES_PER_HOUR
    anc = Path(path).absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    try:
        free = shutil.disk_usage(anc).free
    except OSError:
        return
    if need > free:
        raise InputError(f"synth --hours: {hours:,.2f} h make a store of about {need / 2**30:,.1f} GiB, more "
                         f"than the {free / 2**30:,.1f} GiB free under {anc}")


def _check_price(price, params: SynthParams) -> None:
    if isinstance(price, bool) or not (isinstance(price, (int, float)) and math.isfinite(price) and price > 0):
        raise InputError(f"synth --price: anchor price {price!r} must be a positive number")
    tpu = params.ticks_per_unit()
    if round(price * tpu) < params.window_ticks:
        raise InputError(f"synth: anchor price {price:.2f} is below {params.window_ticks / tpu:.2f}, the lowest "
                         "this calibration (BTCUSDT 2024, tick 0.01) supports; give --price or a later --start")


def _new_run(start_ns: int, seed: int, price: float, params: SynthParams) -> _Run:
    params.validate()
    _check_args(1.0, seed)
    _check_price(price, params)
    W = params.window_ticks
    tpu = params.ticks_per_unit()
    p0 = int(round(price * tpu))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x53594E]))  # 'SYN' stream tag
    p = params.vector(price)
    bsz = np.zeros(W, np.int64)
    asz = np.zeros(W, np.int64)
    bcnt = np.zeros(W, np.int64)
    acnt = np.zeros(W, np.int64)
    c = W // 2  # index of the initial best bid; best ask at c + 1
    n0 = max(1, int(round(params.lam_deep / max(params.delta, 1e-9))))
    minl = p[LY.P_MIN_LOTS]
    for sz, cnt, sign in ((bsz, bcnt, -1), (asz, acnt, +1)):
        ref = c + 1 if sign < 0 else c  # the opposite best
        d = 1 + (rng.random(n0) * params.d_max).astype(np.int64)
        lots = np.maximum(minl, np.rint(np.exp(p[LY.P_DL_LN_MU] + p[LY.P_DL_LN_SIG] * rng.standard_normal(n0))))
        idx = ref + sign * d
        np.add.at(sz, idx, lots.astype(np.int64))
        np.add.at(cnt, idx, 1)
        nt = 20
        dt_ = np.where(rng.random(nt) < params.touch_d1_p, 1, 1 + rng.geometric(params.touch_geom_p, nt))
        lots = np.maximum(minl, np.rint(np.exp(p[LY.P_TL_LN_MU] + p[LY.P_TL_LN_SIG] * rng.standard_normal(nt))))
        idx = ref + sign * dt_
        np.add.at(sz, idx, lots.astype(np.int64))
        np.add.at(cnt, idx, 1)
    btree = np.zeros(W + 1, np.int64)
    atree = np.zeros(W + 1, np.int64)
    SB.fw_build(btree, bcnt)
    SB.fw_build(atree, acnt)
    ist = np.zeros(LY.I_N, np.int64)
    ist[LY.I_BASE] = p0 - c
    ist[LY.I_BB] = c
    ist[LY.I_BA] = c + 1
    ist[LY.I_NB] = int(bcnt.sum())
    ist[LY.I_NA] = int(acnt.sum())
    ist[LY.I_LAST_ROW_SEQ] = -1
    fst = np.zeros(LY.F_N, np.float64)
    fst[LY.F_FAIR] = p0 + 0.5
    fst[LY.F_META_SIGN] = 1.0
    t_rec = round(params.warmup_s / (params.sample_ms / 1000.0)) * (params.sample_ms / 1000.0)
    t0_ns = start_ns - int(round(t_rec * 1e9))
    return _Run(params, p, fst, ist, bsz, bcnt, btree, asz, acnt, atree, rng, t0_ns, t_rec)


def _advance(run: _Run, t_stop: float, record: bool, bufs) -> tuple[int, int]:
    o_ts, o_seq, o_bpx, o_apx, o_bsz, o_asz, tr_ts, tr_px, tr_qty, tr_side = bufs
    nrow, ntr = E.simulate(run.p, run.fst, run.ist, run.bsz, run.bcnt, run.btree, run.asz,
                           run.acnt, run.atree, run.rng, np.int64(run.t0_ns), float(t_stop),
                           bool(record), np.int64(TRADE_GUARD), o_ts, o_seq, o_bpx, o_apx,
                           o_bsz, o_asz, tr_ts, tr_px, tr_qty, tr_side)
    if run.ist[LY.I_DROPPED]:
        raise RuntimeError(f"synth: {int(run.ist[LY.I_DROPPED])} trades did not fit the trade buffer")
    return int(nrow), int(ntr)


def iter_chunks(start_ns: int, hours: float, seed: int, price: float, params: SynthParams = DEFAULT,
                chunk_rows: int = 65536) -> Iterator[tuple[dict, dict]]:
    """Yield (rows, trades) dicts of physical-unit arrays, chunk after chunk, in time order.

    rows: ts int64 ns, seq int64, bid_px/ask_px float64 [n, L], bid_sz/ask_sz float32 [n, L];
    trades: ts int64 ns, px float64, qty float64, side int8.
    """
    _check_args(hours, seed, params.sample_ms)
    if chunk_rows < 1:
        raise InputError("synth: chunk_rows must be >= 1")
    run = _new_run(start_ns, seed, price, params)
    L = params.depth
    bufs = (np.zeros(chunk_rows, np.int64), np.zeros(chunk_rows, np.int64),
            np.zeros((chunk_rows, L)), np.zeros((chunk_rows, L)),
            np.zeros((chunk_rows, L)), np.zeros((chunk_rows, L)))
    tcap = 8 * chunk_rows + 2 * TRADE_GUARD
    tbufs = (np.zeros(tcap, np.int64), np.zeros(tcap, np.int64), np.zeros(tcap, np.int64),
             np.zeros(tcap, np.int8))
    _advance(run, run.t_rec, False, bufs + tbufs)
    # re-anchor after the warm-up: shift the whole book (whole ticks) so the mid is the anchor price
    shift = int(round(price * params.ticks_per_unit() - SB.mid_ticks(run.ist, params.window_ticks)))
    run.ist[LY.I_BASE] += shift
    run.fst[LY.F_FAIR] += shift
    dts = params.sample_ms / 1000.0
    n_steps = int(round(hours * 3600.0 / dts))
    t_end = run.t_rec + n_steps * dts
    tpu = float(params.ticks_per_unit())
    lots_per_unit = 1.0 / params.lot_size
    while run.fst[LY.F_T] < t_end - 1e-9:
        nrow, ntr = _advance(run, t_end, True, bufs + tbufs)
        o_ts, o_seq, o_bpx, o_apx, o_bsz, o_asz = bufs
        rows = {
            "ts": o_ts[:nrow].copy(), "seq": o_seq[:nrow].copy(),
            "bid_px": o_bpx[:nrow] / tpu, "ask_px": o_apx[:nrow] / tpu,
            "bid_sz": (o_bsz[:nrow] / lots_per_unit).astype(np.float32),
            "ask_sz": (o_asz[:nrow] / lots_per_unit).astype(np.float32),
        }
        tr = {
            "ts": tbufs[0][:ntr].copy(), "px": tbufs[1][:ntr] / tpu,
            "qty": tbufs[2][:ntr] / lots_per_unit, "side": tbufs[3][:ntr].copy(),
        }
        yield rows, tr


def store_attrs(start_ns: int, hours: float, seed: int, price: float, params: SynthParams,
                anchor: dict | None = None) -> dict:
    return {
        "exchange": "synthetic",
        "symbol": "BTCUSDT",
        "depth": params.depth,
        "tick_size": params.tick_size,
        "lot_size": params.lot_size,
        "contract": "linear",   # a spot-like book: sizes in base units
        "multiplier": 1.0,
        # a list of one entry, like the importers' list of source files
        "source": [{
            "generator": GENERATOR,
            "seed": int(seed),
            "start": dt.datetime.fromtimestamp(start_ns / 1e9, dt.timezone.utc).isoformat(),
            "hours": float(hours),
            "anchor_price": float(price),
            "anchor": anchor or {"price": float(price), "blocks": None},
            "parameters": params.to_dict(),
        }],
        "gaps": [],
    }


def generate(start=DEFAULT_START, hours: float = 1.0, seed: int = 0, price: float | None = None,
             params: SynthParams = DEFAULT, blocks=None) -> tuple[Book, Trades]:
    """Generate in memory; `price=None` anchors at the block dataset's price at `start`."""
    start_ns = parse_start(start)
    anchor = None
    if price is None:
        price, anchor = anchor_price(start_ns, blocks)
    parts = list(iter_chunks(start_ns, hours, seed, price, params))
    rows = {k: np.concatenate([r[k] for r, _ in parts]) for k in parts[0][0]}
    trs = {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]}
    trades = Trades(ts=trs["ts"], px=trs["px"], qty=trs["qty"], side=trs["side"])
    book = Book(ts=rows["ts"], seq=rows["seq"], bid_px=rows["bid_px"], ask_px=rows["ask_px"],
                bid_sz=rows["bid_sz"], ask_sz=rows["ask_sz"], trades=trades,
                attrs=store_attrs(start_ns, hours, seed, price, params, anchor))
    return book, trades


def write(path, start=DEFAULT_START, hours: float = DEFAULT_HOURS, seed: int = 0,
          price: float | None = None, params: SynthParams = DEFAULT, blocks=None,
          chunk_rows: int = 65536, progress: bool = False, overwrite: bool = False) -> dict:
    """Generate and write a book store (temp path + rename by the writer); returns a summary.

    `path` is claimed before any work (`gpu_engine.outputs.claim_output`): an existing path is
    refused unless `overwrite`, and even then only a book store is replaced (never a directory
    of stores, a foreign file or the --blocks input). A failure leaves nothing behind.
    """
    from gpu_engine.data.books.store import BookStoreWriter, check_depth_fits

    start_ns = parse_start(start)
    params.validate()
    _check_args(hours, seed, params.sample_ms)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InputError(f"synth: chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    check_depth_fits(params.depth, chunk_rows, flag="synth depth")
    claim_output(path, "--out", kind="book-store", overwrite=overwrite, inputs=[("--blocks", blocks)])
    _check_disk(path, hours)
    anchor = None
    if price is None:
        price, anchor = anchor_price(start_ns, blocks)
    _check_price(price, params)
    attrs = store_attrs(start_ns, hours, seed, price, params, anchor)
    total_s = hours * 3600.0
    bar = None
    if progress and sys.stderr.isatty():  # a log file or a pipe gets no carriage-return frames
        from tqdm import tqdm
        bar = tqdm(total=round(total_s), unit="sim s", desc="synth", leave=False, file=sys.stderr)
    n_rows = n_trades = 0
    first = last = None
    try:
        with BookStoreWriter(Path(path), params.depth, attrs, chunk_rows=chunk_rows) as w:
            for rows, tr in iter_chunks(start_ns, hours, seed, price, params, chunk_rows):
                if len(rows["ts"]):
                    w.append(rows["ts"], rows["seq"], rows["bid_px"], rows["ask_px"], rows["bid_sz"],
                             rows["ask_sz"])
                    if first is None:
                        first = (float(rows["bid_px"][0, 0]), float(rows["ask_px"][0, 0]))
                    last = (float(rows["bid_px"][-1, 0]), float(rows["ask_px"][-1, 0]))
                    n_rows += len(rows["ts"])
                    if bar is not None:
                        done = min(bar.total, int((int(rows["ts"][-1]) - start_ns) // 1_000_000_000))
                        bar.update(done - bar.n)
                if len(tr["ts"]):
                    w.append_trades(tr["ts"], tr["px"], tr["qty"], tr["side"])
                    n_trades += len(tr["ts"])
        if bar is not None:
            bar.update(bar.total - bar.n)
    finally:
        if bar is not None:
            bar.close()
    return {"path": str(path), "rows": n_rows, "trades": n_trades, "price": price,
            "first_mid": None if first is None else sum(first) / 2,
            "last_mid": None if last is None else sum(last) / 2, "hours": hours, "seed": seed}


def ensure_default(path=DEFAULT_OUT, start=DEFAULT_START, hours: float = DEFAULT_HOURS, seed: int = 0,
                   blocks=None, price: float | None = None, progress: bool = False) -> Path:
    """Generate the default synthetic store when `path` does not exist yet; return its path.

    Nothing that stands at `path` is ever replaced; stale temporaries of earlier killed runs
    (ours, whose process is gone) are removed first.
    Defaults: 6 h from 2024-08-08T00:00 UTC, seed 0, anchored at the block dataset's price
    (data/blocks.npy when present, else built in memory); about 10 s on one core, 6 s of it
    numba compiling the engine.
    """
    path = Path(path)
    clean_stale_temps(path)  # a killed first run's `.synth.zarr.tmp-PID` (its process is gone)
    if not (path.exists() or path.is_symlink()):  # only where nothing stands
        write(path, start=start, hours=hours, seed=seed, price=price, blocks=blocks, progress=progress)
    return path


# ---------------------------------------------------------------- CLI
def add_cli(subparsers) -> None:
    sp = subparsers.add_parser("synth", help="generate a synthetic BTCUSDT book store (seeded)",
                               description="Generate a synthetic BTCUSDT order book store with trades "
                                           "(zero-intelligence flow, Hawkes market orders; docs/SYNTH.md).")
    sp.add_argument("--start", default=DEFAULT_START, help="UTC start, ISO (default %(default)s)")
    sp.add_argument("--hours", type=float, default=DEFAULT_HOURS, help="simulated hours (default %(default)s)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    sp.add_argument("--out", default=DEFAULT_OUT, help="store path, must not exist (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace an existing book store at --out (never anything else)")
    sp.add_argument("--blocks", default=None, help="block dataset for the price anchor "
                                                   f"(default {DEFAULT_BLOCKS} if present, else built in memory)")
    sp.add_argument("--price", type=float, default=None, help="anchor price instead of the block dataset")
    sp.set_defaults(func=_cli)


def _cli(args) -> int:
    import time

    t = time.perf_counter()
    out = Path(args.out)
    s = write(out, start=args.start, hours=args.hours, seed=args.seed, price=args.price,
              blocks=args.blocks, progress=True, overwrite=args.overwrite)
    wall = time.perf_counter() - t
    hours = f"{s['hours']:,.6f}".rstrip("0").rstrip(".")
    print(f"synth: wrote {s['path']}: {s['rows']} rows, {s['trades']} trades, {hours} h from "
          f"{args.start} UTC, seed {s['seed']}, anchor {s['price']:.2f}, mid {s['first_mid']:.2f} -> "
          f"{s['last_mid']:.2f}, {wall:.1f} s")
    return 0
