"""`python -m gpu_engine.bench`: sweep throughput (config-ticks/s) on a synthetic book.

    python -m gpu_engine.bench [--device cpu|cuda|auto] [--configs C] [--ticks T] [--threads N]
                               [--repeat R] [--levels L] [--buckets B] [--seed S] [--chunk K]
                               [--mix taker|maker] [--queue risk_averse|power|log]
                               [--json] [--no-progress]

The book is generated in-process (`synthetic_book`: a random-walk mid on a 0.01 tick, a
1-3 tick spread, L=20 levels, level-0 sizes whose imbalance is an AR(1) so order-flow
signals persist over tens of ticks, 1-200 ms between updates). The configurations
(`random_configs`) use the full rules: 20 ms latency, depth-walk fills, 10 bps fees, take
profit / stop loss / max hold / signal exits, sizing with a quantity cap, cooldowns, both
sides. `--mix maker` (rules v2) gives the book a tape of trades at the touch (`synthetic_trades`)
and makes every configuration a maker: passive entries 0-3 ticks behind the touch with a time
in force of 0.1-30 s, a resting maker take profit on half of them, 2 bps maker and 5 bps taker
fees, 20 ms cancel latency, on a 0.01 tick and a 0.001 lot with the `--queue` model (default
power, n = 2). Two rates are printed:

- kernel: the kernel alone (configurations already typed and on the device, book prepared),
  median of `--repeat` runs after a warm-up compile (`--chunk`: ticks per chunk of the CPU
  kernel, default kernels.cpu.DEFAULT_CHUNK);
- end to end: features (gpu_engine.features.build_bank with imbalance1 and two OFI windows;
  the features used are named in the output) + gpu_engine.sweep (validation, sorting, kernel,
  metrics, xarray).

`--json` prints one object: device, configs, ticks, threads, kernel_cts, end_to_end_cts,
peak_rss_mb, plus trades_per_config, features and timings.

Every flag is checked before any work (one line on stderr, exit 2, naming the flag): counts
must be integers in range, `--threads` at most numba's maximum on this machine, `--device
cuda` needs a working GPU, and sizes whose arrays would not fit in the memory available now
(more than the machine's physical memory, `estimate_bytes`) are refused before anything is allocated.
The default run (16,384 configurations x 1,000,000 ticks) takes minutes on two cores; the
stages (book, features, compile, each kernel run, end to end) are reported on stderr as they
start, unless `--no-progress`.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Callable

import numpy as np

from gpu_engine.cli import Parser, run_main
from gpu_engine.data.books.store import Book, Trades
from gpu_engine.enums import CONFIG_FIELDS
from gpu_engine.errors import InputError

FEATURE_SPEC = [("imbalance1", {}), ("ofi", {"window": 100}), ("ofi", {"window": 1000})]


def synthetic_book(T: int, L: int = 20, seed: int = 0) -> Book:
    """Random-walk L2 book with persistent level-0 imbalance (see module doc)."""
    rng = np.random.default_rng(seed)
    tick = 0.01
    mid = 30_000.0 + np.cumsum(rng.normal(0.0, 0.6, T)) * tick
    spread = rng.integers(1, 4, T) * tick
    bid0 = np.round((mid - spread / 2) / tick) * tick
    ask0 = bid0 + spread
    lv = np.arange(L) * tick
    bid_px = bid0[:, None] - lv
    ask_px = ask0[:, None] + lv
    x = np.empty(T)
    noise = rng.normal(0.0, 0.35, T)
    acc = 0.0
    for i in range(0, T, 65536):  # AR(1) in blocks: a Python loop over 1e6 values is too slow
        n = min(65536, T - i)
        k = 0.97 ** np.arange(n)
        seg = np.convolve(noise[i:i + n], k)[:n] + acc * 0.97 ** np.arange(1, n + 1)
        x[i:i + n] = seg
        acc = seg[-1]
    depth = rng.gamma(2.0, 1.0, (T, L)).astype(np.float32) + 0.05
    bid_sz = depth * np.exp(x / 2)[:, None].astype(np.float32)
    ask_sz = rng.gamma(2.0, 1.0, (T, L)).astype(np.float32) + 0.05
    ask_sz[:, 0] = depth[:, 0] * np.exp(-x / 2).astype(np.float32)
    ts = np.cumsum(rng.integers(1_000_000, 200_000_000, T)).astype(np.int64)
    return Book.from_arrays(ts, bid_px, ask_px, bid_sz, ask_sz,
                            attrs={"source": "gpu_engine.bench synthetic", "seed": seed})


def synthetic_trades(book: Book, seed: int = 0) -> Trades:
    """A tape for the maker mix: about one trade per book update, published in the interval
    before that update (so it is assigned to it), at the level-0 price of the side it hits
    (a seller-initiated trade at the bid, a buyer-initiated one at the ask), sometimes one tick
    through it, sizes gamma-distributed around the level-0 sizes."""
    rng = np.random.default_rng(seed + 7)
    T = book.T
    n = T - 1
    keep = rng.random(n) < 0.9
    at = np.arange(1, T)[keep]
    side = np.where(rng.random(at.shape[0]) < 0.5, -1, 1).astype(np.int8)
    through = rng.random(at.shape[0]) < 0.05
    tick = 0.01
    px = np.where(side < 0, book.bid_px[at - 1, 0] - through * tick, book.ask_px[at - 1, 0] + through * tick)
    qty = rng.gamma(1.5, 0.6, at.shape[0])
    gap = book.ts[at] - book.ts[at - 1]
    ts = book.ts[at] - (rng.random(at.shape[0]) * (gap - 1)).astype(np.int64)
    return Trades(ts=ts.astype(np.int64), px=np.round(px / tick) * tick, qty=np.round(qty, 3) + 0.001,
                  side=side)


def build_features(book: Book):
    """(bank values [K, T] float32, description) with the project's feature bank when present."""
    try:
        from gpu_engine.features import build_bank

        bank = build_bank(book, spec=FEATURE_SPEC, xp=np)
        return np.asarray(bank.values, dtype=np.float32), "gpu_engine.features.build_bank " + str(FEATURE_SPEC)
    except ImportError:
        b, a = book.bid_sz[:, 0].astype(np.float64), book.ask_sz[:, 0].astype(np.float64)
        imb = ((b - a) / (b + a)).astype(np.float32)
        return imb[None, :], "numpy imbalance1 (gpu_engine.features not available)"


def random_configs(C: int, K: int, seed: int = 1) -> dict[str, np.ndarray]:
    """C configurations exercising every rule (signal rows 0..K-1)."""
    rng = np.random.default_rng(seed)
    cfg = {
        "signal": rng.integers(0, K, C),
        "entry": rng.uniform(0.55, 0.95, C),
        "exit": rng.uniform(0.0, 0.6, C),
        "side": rng.integers(-1, 2, C),
        "regime": np.zeros(C, np.int64),
        "band": np.full(C, np.inf),
        "take_profit": rng.uniform(2.0, 40.0, C),
        "stop_loss": rng.uniform(2.0, 40.0, C),
        "max_hold": rng.uniform(5e9, 600e9, C),
        "size_frac": rng.uniform(0.1, 1.0, C),
        "max_qty": rng.uniform(0.05, 2.0, C),
        "cooldown": rng.integers(0, 50, C),
        "fee_bps": np.full(C, 10.0),
        "latency": np.full(C, 20_000_000, np.int64),
        "capital": np.full(C, 10_000.0),
    }
    return {k: np.asarray(v, dtype=CONFIG_FIELDS[k][0]) for k, v in cfg.items()}


MIXES = ("taker", "maker")
# the maker mix's market (rules v2): the synthetic book's tick, a 0.001 lot
MAKER_MARKET = {"tick_size": 0.01, "lot_size": 0.001}


def maker_configs(C: int, K: int, seed: int = 1) -> dict[str, np.ndarray]:
    """C maker configurations: random_configs' signals, thresholds and exits with passive
    entries 0-3 ticks behind the touch, time in force 0.1-30 s (a tenth until filled), a
    resting maker take profit on half, maker 2 bps / taker 5 bps, 20 ms cancel latency."""
    rng = np.random.default_rng(seed + 1000)
    cfg = random_configs(C, K, seed)
    tif = np.exp(rng.uniform(np.log(0.1e9), np.log(30e9), C))
    tif[rng.random(C) < 0.1] = np.inf
    cfg.update({
        "entry_type": np.ones(C, np.int8),
        "entry_offset": rng.integers(0, 4, C),
        "entry_tif": tif,
        "tp_type": (rng.random(C) < 0.5).astype(np.int8),
        "maker_fee_bps": np.full(C, 2.0),
        "fee_bps": np.full(C, 5.0),
        "cancel_latency": np.full(C, 20_000_000, np.int64),
    })
    return {k: np.asarray(v, dtype=CONFIG_FIELDS[k][0]) for k, v in cfg.items()}


def _signal_scale(bank: np.ndarray) -> np.ndarray:
    """Scale each bank row so |value| has its 99th percentile at 1 (thresholds then mean the
    same thing on every row); the kernel sees the scaled float32 values."""
    out = np.empty_like(bank)
    for k in range(bank.shape[0]):
        a = np.abs(bank[k])
        a = a[np.isfinite(a)]  # a short book leaves a long window's row all NaN: scale 1
        q = float(np.percentile(a, 99)) if a.size else 0.0
        out[k] = bank[k] / (q if q > 0 else 1.0)
    return out


def run_bench(device: str = "cpu", configs: int = 16_384, ticks: int = 1_000_000, threads: int | None = None,
              repeat: int = 3, levels: int = 20, buckets: int = 16, seed: int = 0,
              chunk: int | None = None, progress: Callable[[str], None] | None = None,
              mix: str = "taker", queue: str = "power") -> dict:
    """Measure one bench; `progress(stage)` (if given) is called as each stage starts."""
    import numba

    import gpu_engine
    from gpu_engine import kernels
    from gpu_engine.backend import resolve

    if threads:
        numba.set_num_threads(int(threads))
    say = progress or (lambda _stage: None)
    backend = resolve(device)
    say(f"generating the synthetic book ({ticks:,} ticks x {levels:,} levels)")
    book = synthetic_book(ticks, levels, seed)
    market = {}
    if mix == "maker":
        book.trades = synthetic_trades(book, seed)
        market = dict(MAKER_MARKET, queue=queue)

    say("building the feature bank")
    t0 = time.perf_counter()
    values, features = build_features(book)
    bank = np.ascontiguousarray(_signal_scale(values), dtype=np.float32)
    t_features = time.perf_counter() - t0
    make = maker_configs if mix == "maker" else random_configs
    cfg = make(configs, bank.shape[0], seed + 1)
    order = np.lexsort((cfg["regime"], cfg["signal"]))
    cfg_sorted = {k: np.ascontiguousarray(v[order]) for k, v in cfg.items()}

    mkt = None
    if market:
        from gpu_engine.sweep import market_array

        mkt = market_array(tick_size=market["tick_size"], lot_size=market["lot_size"],
                           queue=market["queue"])
    book_arrays = kernels.prepare_book(book, backend, market=mkt)
    dbank = backend.to_device(bank)
    warm = {k: v[:4] for k, v in cfg_sorted.items()}
    say("compiling the kernel (warm-up run on 4 configurations)")
    t_c = time.perf_counter()
    kernels.run(backend, book_arrays, dbank, warm, buckets, chunk=chunk)  # compile
    t_compile = time.perf_counter() - t_c
    times = []
    out = None
    runs = max(1, repeat)
    for i in range(runs):
        say(f"kernel run {i + 1}/{runs} ({configs:,} configurations)")
        t1 = time.perf_counter()
        out = kernels.run(backend, book_arrays, dbank, cfg_sorted, buckets, chunk=chunk)
        times.append(time.perf_counter() - t1)
    t_kernel = float(np.median(times))

    say("end to end: features + gpu_engine.sweep")
    t2 = time.perf_counter()
    values2, _ = build_features(book)
    bank2 = _signal_scale(values2)
    ds = gpu_engine.sweep(book, bank2, cfg, device=device, buckets=buckets, **market)
    t_e2e = time.perf_counter() - t2

    ct = float(configs) * float(ticks)
    return {
        "device": backend.name + (" (simulated)" if backend.simulated else ""),
        "configs": configs,
        "ticks": ticks,
        "threads": int(numba.get_num_threads()),
        "kernel_cts": ct / t_kernel,
        "end_to_end_cts": ct / t_e2e,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "trades_per_config": float(out[0][:, 0].mean()),
        "exposure": float(ds["exposure"].mean()),
        "features": features,
        "features_s": t_features,
        "compile_s": t_compile,
        "chunk": chunk,
        "kernel_s": t_kernel,
        "end_to_end_s": t_e2e,
        "levels": levels,
        "mix": mix,
        "queue": queue if mix == "maker" else None,
        "maker_fills_per_config": float(ds["maker_fills"].mean()),
        "maker_fill_ratio": float(np.nanmean(ds["maker_fill_ratio"].values)) if mix == "maker" else None,
    }


def _count(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum; `1_000_000` and `1e6` are accepted."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
            if not (np.isfinite(f) and f == int(f)):
                raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
            value = int(f)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    return parse


def build_parser() -> Parser:
    ap = Parser(prog="python -m gpu_engine.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                    help="cpu (default), cuda (needs a working GPU) or auto")
    ap.add_argument("--configs", type=_count(1), default=16_384, help="configurations (default 16384)")
    ap.add_argument("--ticks", type=_count(2), default=1_000_000, help="book updates (default 1000000)")
    ap.add_argument("--threads", type=_count(1), default=None,
                    help="numba threads, 1 to this machine's maximum (default: all cores)")
    ap.add_argument("--repeat", type=_count(1), default=3,
                    help="timed kernel runs; the median is reported (default 3)")
    ap.add_argument("--levels", type=_count(1), default=20, help="book levels per side (default 20)")
    ap.add_argument("--buckets", type=_count(1), default=16, help="time buckets (default 16)")
    ap.add_argument("--seed", type=_count(0), default=0, help="random seed, >= 0 (default 0)")
    ap.add_argument("--chunk", type=_count(1), default=None,
                    help="ticks per chunk of the CPU kernel (default: kernels.cpu.DEFAULT_CHUNK)")
    ap.add_argument("--mix", choices=MIXES, default="taker",
                    help="configuration mix: taker (rules v1, the default) or maker (rules v2)")
    ap.add_argument("--queue", choices=("risk_averse", "power", "log"), default="power",
                    help="queue model of the maker mix (default power, n = 2)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-progress", action="store_true", help="no stage lines on stderr")
    return ap


def estimate_bytes(configs: int, ticks: int, levels: int, buckets: int) -> int:
    """Peak host memory of one bench, in bytes: a slight over-estimate from the arrays it builds.

    Per tick and level ~96 B: bid/ask prices (float64) and sizes (float32), the generator's
    float64 temporaries and the feature bank's market copies. Per tick ~256 B: timestamps, the
    mid walk, the AR(1) imbalance, top-of-book helpers, feature rows. Per configuration ~1.5 kB
    (its fields drawn, sorted and validated, raw kernel metrics, carried state, the result's
    metric columns) plus 32 B per bucket (PnL, trades, wins in the kernel and the result); 300 MB
    of interpreter, numba and compiled code. Measured peaks (2 threads): 1.93 GB at 8 x 1e6 ticks
    (estimate 2.49 GB), 2.06 GB at 1e6 configurations x 1e5 ticks (estimate 2.58 GB).
    """
    C, T, L, B = int(configs), int(ticks), int(levels), int(buckets)
    return T * L * 96 + T * 256 + C * 1_536 + C * B * 32 + 300 * 2 ** 20


def mem_limit() -> int | None:
    """This machine's physical memory in bytes (gpu_engine/memory.py), or None where unknown."""
    from gpu_engine.memory import total_memory

    return total_memory()


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_args(a: argparse.Namespace) -> None:
    """Refuse, with an InputError naming the flag, what the parser cannot check alone."""
    import numba

    most = int(numba.config.NUMBA_NUM_THREADS)
    if a.threads is not None and a.threads > most:
        raise InputError(f"--threads: {a.threads} is more than numba's maximum on this machine "
                         f"({most}; NUMBA_NUM_THREADS)")
    sizes = {"configs": a.configs, "ticks": a.ticks, "levels": a.levels, "buckets": a.buckets}
    need = estimate_bytes(**sizes)
    have = mem_limit()
    if have is not None and need > have:
        # name the flag whose reduction to its default saves the most
        defaults = {"configs": 16_384, "ticks": 1_000_000, "levels": 20, "buckets": 16}
        culprit = min(sizes, key=lambda k: estimate_bytes(**{**sizes, k: min(sizes[k], defaults[k])}))
        if all(sizes[k] <= defaults[k] for k in sizes):  # even small sizes do not fit: the biggest part
            by_ticks = estimate_bytes(1, a.ticks, a.levels, 1) >= estimate_bytes(a.configs, 2, 1, a.buckets)
            culprit = "ticks" if by_ticks else "configs"
        raise InputError(
            f"--{culprit}: {sizes[culprit]:,} is too large for this machine: {a.configs:,} configurations "
            f"x {a.ticks:,} ticks x {a.levels:,} levels x {a.buckets:,} buckets need about {_gb(need)} "
            f"of memory, more than this machine's {_gb(have)}; nothing was allocated")
    from gpu_engine.backend import resolve

    try:
        resolve(a.device)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device: {exc}") from None


def _progress_printer() -> Callable[[str], None]:
    t0 = time.perf_counter()

    def say(stage: str) -> None:
        dots = "" if stage == "done" else "..."
        sys.stderr.write(f"bench [{time.perf_counter() - t0:6.1f} s] {stage}{dots}\n")
        sys.stderr.flush()

    return say


def format_report(r: dict) -> str:
    """The human-readable report: counts as integers, rates in scientific notation."""
    per_thread = r["kernel_cts"] / max(1, r["threads"])
    return "\n".join([
        f"device {r['device']}, {r['configs']:,} configs x {r['ticks']:,} ticks, "
        f"{r['threads']} threads, L={r['levels']}, {r.get('mix', 'taker')} mix"
        + (f" ({r['queue']} queue)" if r.get("queue") else ""),
        f"kernel      {r['kernel_cts']:.3e} config-ticks/s ({r['kernel_s']:.2f} s; "
        f"{per_thread:.3e} per thread)",
        f"end to end  {r['end_to_end_cts']:.3e} config-ticks/s ({r['end_to_end_s']:.2f} s, "
        f"features: {r['features']})",
        f"trades/config {r['trades_per_config']:.1f}, mean exposure {r['exposure']:.3f}, "
        f"peak RSS {r['peak_rss_mb']:,.0f} MB"
        + (f"; maker fills/config {r['maker_fills_per_config']:.1f}, maker fill ratio "
           f"{r['maker_fill_ratio']:.3f}" if r.get("mix") == "maker" else ""),
    ])


def _run(a: argparse.Namespace) -> int:
    check_args(a)
    progress = None if a.no_progress else _progress_printer()
    r = run_bench(a.device, a.configs, a.ticks, a.threads, a.repeat, a.levels, a.buckets, a.seed,
                  a.chunk, progress=progress, mix=a.mix, queue=a.queue)
    if progress:
        progress("done")
    print(json.dumps(r) if a.json else format_report(r))
    return 0


def main(argv=None) -> int:
    """`python -m gpu_engine.bench`; returns the exit status (gpu_engine.cli.run_main)."""
    return run_main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
