"""`python -m gpu_engine.bench`: sweep throughput (config-ticks/s) on a synthetic book.

    python -m gpu_engine.bench [--device cpu|cuda] [--configs C] [--ticks T] [--threads N] [--chunk K] [--json]

The book is generated in-process (`synthetic_book`: a random-walk mid on a 0.01 tick, a
1-3 tick spread, L=20 levels, level-0 sizes whose imbalance is an AR(1) so order-flow
signals persist over tens of ticks, 1-200 ms between updates). The configurations
(`random_configs`) use the full rules: 20 ms latency, depth-walk fills, 10 bps fees, take
profit / stop loss / max hold / signal exits, sizing with a quantity cap, cooldowns, both
sides. Two rates are printed:

- kernel: the kernel alone (configurations already typed and on the device, book prepared),
  median of `--repeat` runs after a warm-up compile (`--chunk`: ticks per chunk of the CPU
  kernel, default kernels.cpu.DEFAULT_CHUNK);
- end to end: features (gpu_engine.features.build_bank with imbalance1 and two OFI windows;
  the features used are named in the output) + gpu_engine.sweep (validation, sorting, kernel,
  metrics, xarray).

`--json` prints one object: device, configs, ticks, threads, kernel_cts, end_to_end_cts,
peak_rss_mb, plus trades_per_config, features and timings.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from gpu_engine.data.books import Book
from gpu_engine.enums import CONFIG_FIELDS

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


def _signal_scale(bank: np.ndarray) -> np.ndarray:
    """Scale each bank row so |value| has its 99th percentile at 1 (thresholds then mean the
    same thing on every row); the kernel sees the scaled float32 values."""
    out = np.empty_like(bank)
    for k in range(bank.shape[0]):
        q = np.nanpercentile(np.abs(bank[k]), 99)
        out[k] = bank[k] / (q if q > 0 else 1.0)
    return out


def run_bench(device: str = "cpu", configs: int = 16_384, ticks: int = 1_000_000, threads: int | None = None,
              repeat: int = 3, levels: int = 20, buckets: int = 16, seed: int = 0,
              chunk: int | None = None) -> dict:
    import numba

    import gpu_engine
    from gpu_engine import kernels
    from gpu_engine.backend import resolve

    if threads:
        numba.set_num_threads(int(threads))
    backend = resolve(device)
    book = synthetic_book(ticks, levels, seed)

    t0 = time.perf_counter()
    values, features = build_features(book)
    bank = np.ascontiguousarray(_signal_scale(values), dtype=np.float32)
    t_features = time.perf_counter() - t0
    cfg = random_configs(configs, bank.shape[0], seed + 1)
    order = np.lexsort((cfg["regime"], cfg["signal"]))
    cfg_sorted = {k: np.ascontiguousarray(v[order]) for k, v in cfg.items()}

    book_arrays = kernels.prepare_book(book, backend)
    dbank = backend.to_device(bank)
    warm = {k: v[:4] for k, v in cfg_sorted.items()}
    t_c = time.perf_counter()
    kernels.run(backend, book_arrays, dbank, warm, buckets, chunk=chunk)  # compile
    t_compile = time.perf_counter() - t_c
    times = []
    out = None
    for _ in range(max(1, repeat)):
        t1 = time.perf_counter()
        out = kernels.run(backend, book_arrays, dbank, cfg_sorted, buckets, chunk=chunk)
        times.append(time.perf_counter() - t1)
    t_kernel = float(np.median(times))

    t2 = time.perf_counter()
    values2, _ = build_features(book)
    bank2 = _signal_scale(values2)
    ds = gpu_engine.sweep(book, bank2, cfg, device=device, buckets=buckets)
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
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu_engine.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    ap.add_argument("--configs", type=int, default=16_384)
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=None,
                    help="ticks per chunk of the CPU kernel (default: kernels.cpu.DEFAULT_CHUNK)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    if a.configs < 1 or a.ticks < 2:
        ap.error("--configs must be >= 1 and --ticks >= 2")
    r = run_bench(a.device, a.configs, a.ticks, a.threads, a.repeat, a.levels, a.buckets, a.seed, a.chunk)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"device {r['device']}, {r['configs']} configs x {r['ticks']} ticks, {r['threads']} threads, "
              f"L={r['levels']}")
        print(f"kernel      {r['kernel_cts']:.3e} config-ticks/s ({r['kernel_s']:.2f} s; "
              f"{r['kernel_cts'] / r['threads']:.3e} per thread)")
        print(f"end to end  {r['end_to_end_cts']:.3e} config-ticks/s ({r['end_to_end_s']:.2f} s, "
              f"features: {r['features']})")
        print(f"trades/config {r['trades_per_config']:.1f}, mean exposure {r['exposure']:.3f}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
