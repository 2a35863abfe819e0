"""Per-block BTC/USD price: real daily closes where they cover a block, a seeded synthetic model elsewhere.

Real (`price_source = 1`): a daily close is stamped at the END of its UTC day (day 00:00 +
86,400 s). A block between two consecutive stamps at most `MAX_GAP_DAYS` apart gets the
log-linear interpolation of the two closes (a block exactly at a stamp carries that close).

Synthetic (`price_source = 0`), deterministic per seed:

    ln P(t) = ln PL(t) + cycle(h) + X(t) + join(t)

* PL(t) = A * d^n, the power law of `blocks.POWER_LAW` (d = fractional days since 2009-01-03);
* cycle(h) = CYCLE_AMPLITUDE * sin(2 pi (phi - CYCLE_PHASE)), phi = (h mod 210,000) / 210,000
  the position inside the halving epoch: peaks about a third into an epoch (roughly 17 months
  after a halving, the stylised post-halving bull market) and troughs about five sixths in.
  Continuous across halvings (phi wraps from 1 to 0);
* X: a mean-reverting log deviation with stochastic volatility, simulated on an hourly grid
  from the genesis block's time (then interpolated linearly to block times):
      v[k+1] = a_v v[k] + VOL_OF_VOL * sqrt(1 - a_v^2) * eta[k]      a_v = exp(-1 h / VOL_TAU)
      sigma[k] = DAILY_VOL / sqrt(24) * exp(v[k] - VOL_OF_VOL^2 / 2)
      X[k+1] = a_x X[k] + sigma[k] * eps[k]                           a_x = exp(-1 h / REVERT_TAU)
  eta, eps independent standard normals from numpy's PCG64 seeded with `seed` (two spawned
  streams). The grid starts at genesis with X = v = 0, so a shorter build is a prefix of a
  longer one with the same seed;
* join(t): makes the synthetic path meet the real one where real prices begin or end. With
  r = ln P_real - ln P_synth at the edge stamp, before the first real stamp
  join = r_first * exp(-(first - t) / JOIN_TAU), after the last one
  join = r_last * exp(-(t - last) / JOIN_TAU), and inside a gap (b, a) of more than
  MAX_GAP_DAYS: join = (1 - u) r_b e^{-(t-b)/JOIN_TAU} + u r_a e^{-(a-t)/JOIN_TAU},
  u = (t - b) / (a - b). The price is continuous at the edges and relaxes to the model.
"""
from __future__ import annotations

import numpy as np

from gpu_engine.data.blocks.sources import DailySeries, merge_daily

MAX_GAP_DAYS = 7
DAY = 86400.0

SYNTH_PARAMS = {
    "DAILY_VOL": 0.035,  # mean daily log-return volatility (about 67% annualised)
    "VOL_OF_VOL": 0.5,  # stationary std of the log-volatility factor v
    "VOL_TAU_DAYS": 30.0,  # relaxation time of v
    "REVERT_TAU_DAYS": 120.0,  # relaxation time of X toward the power law x cycle
    "CYCLE_AMPLITUDE": 0.5,  # natural-log amplitude of the halving-cycle term
    "CYCLE_PHASE": 0.08,  # sin(2 pi (phi - phase)): peak at phi = 0.33, trough at phi = 0.83
    "JOIN_TAU_DAYS": 180.0,  # decay of the synthetic-to-real join correction
}
GRID_STEP_S = 3600
_CHUNK = 8192


def _ar1(u: np.ndarray, a: float) -> np.ndarray:
    """x[0] = 0, x[k+1] = a x[k] + u[k]: vectorised inside chunks, exact to rounding."""
    out = np.empty(u.size + 1)
    out[0] = 0.0
    x0 = 0.0
    pw = a ** np.arange(1, _CHUNK + 1, dtype=np.float64)  # a^1..a^C
    inv = a ** -np.arange(0, _CHUNK, dtype=np.float64)  # a^-0..a^-(C-1)
    for s in range(0, u.size, _CHUNK):
        seg = u[s:s + _CHUNK]
        m = seg.size
        # x[s+i+1] = a^(i+1) x0 + sum_{j<=i} a^(i-j) u[s+j]
        acc = np.cumsum(seg * inv[:m]) * pw[:m] / a
        out[s + 1:s + m + 1] = pw[:m] * x0 + acc
        x0 = out[s + m]
    return out


def synthetic_deviation(t0: float, t_end: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hourly grid times and the stochastic-volatility deviation X on it."""
    p = SYNTH_PARAMS
    n = int(np.ceil((t_end - t0) / GRID_STEP_S)) + 2
    ss = np.random.SeedSequence(int(seed))
    rng_v, rng_x = (np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(2))
    eta = rng_v.standard_normal(n - 1)
    eps = rng_x.standard_normal(n - 1)
    a_v = np.exp(-GRID_STEP_S / (p["VOL_TAU_DAYS"] * DAY))
    a_x = np.exp(-GRID_STEP_S / (p["REVERT_TAU_DAYS"] * DAY))
    v = _ar1(p["VOL_OF_VOL"] * np.sqrt(1 - a_v * a_v) * eta, a_v)
    sigma = p["DAILY_VOL"] / np.sqrt(DAY / GRID_STEP_S) * np.exp(v[:-1] - p["VOL_OF_VOL"] ** 2 / 2)
    x = _ar1(sigma * eps, a_x)
    grid = t0 + GRID_STEP_S * np.arange(n, dtype=np.float64)
    return grid, x


def cycle_term(heights) -> np.ndarray:
    p = SYNTH_PARAMS
    phi = (np.asarray(heights, dtype=np.float64) % 210_000) / 210_000
    return p["CYCLE_AMPLITUDE"] * np.sin(2 * np.pi * (phi - p["CYCLE_PHASE"]))


def real_coverage(stamps: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(covered mask, interval index) of times `t` against real stamps (gaps > MAX_GAP_DAYS uncovered)."""
    idx = np.searchsorted(stamps, t, side="right") - 1
    ok_gap = np.diff(stamps) <= MAX_GAP_DAYS * DAY
    inner = (idx >= 0) & (idx < stamps.size - 1)
    covered = np.zeros(t.shape, dtype=bool)
    covered[inner] = ok_gap[idx[inner]]
    covered |= t == stamps[-1]
    return covered, idx


def block_prices(times: np.ndarray, heights: np.ndarray, log_pl: np.ndarray, prices: list[DailySeries],
                 seed: int, log_pl_fn) -> tuple[np.ndarray, np.ndarray, dict]:
    """(price float64, price_source uint8, info) for blocks at `times` (in height order).

    Real header times are not monotone in height; every interpolation over the block times
    uses their running maximum (the time by which a block and all before it exist), and the
    synthetic grid spans up to the latest time.
    """
    tf = times.astype(np.float64)
    hf = heights.astype(np.float64)
    env = np.maximum.accumulate(tf)
    grid, x = synthetic_deviation(tf[0], env[-1], seed)
    log_syn = log_pl + cycle_term(heights) + np.interp(tf, grid, x)

    def log_syn_at(t):  # synthetic log price at arbitrary times (fractional height for the cycle)
        return log_pl_fn(t) + cycle_term(np.interp(t, env, hf)) + np.interp(t, grid, x)

    source = np.zeros(times.size, dtype=np.uint8)
    info = {"synthetic": {"model": "ln P = ln PL(t) + cycle(h) + X(t) + join(t) (see gpu_engine/data/blocks/price.py)",
                          "seed": int(seed), "grid_step_s": GRID_STEP_S, **SYNTH_PARAMS},
            "real": None}
    if not prices:
        return np.exp(log_syn), source, info

    day, close = merge_daily(list(prices), fill_zero=False)
    stamps = (day + 1).astype(np.float64) * DAY  # a close is stamped at the end of its UTC day
    log_close = np.log(close)
    covered, _ = real_coverage(stamps, tf)
    logp = log_syn.copy()
    logp[covered] = np.interp(tf[covered], stamps, log_close)
    source[covered] = 1

    # join the synthetic stretches to the real ones
    gaps = np.nonzero(np.diff(stamps) > MAX_GAP_DAYS * DAY)[0]
    starts = np.concatenate([[stamps[0]], stamps[gaps + 1]])  # beginnings of real stretches
    ends = np.concatenate([stamps[gaps], [stamps[-1]]])  # their ends
    r_start = np.interp(starts, stamps, log_close) - log_syn_at(starts)
    r_end = np.interp(ends, stamps, log_close) - log_syn_at(ends)
    tau = SYNTH_PARAMS["JOIN_TAU_DAYS"] * DAY
    syn = ~covered
    ts = tf[syn]
    join = np.zeros(ts.size)
    before = ts < starts[0]
    join[before] = r_start[0] * np.exp(-(starts[0] - ts[before]) / tau)
    after = ts > ends[-1]
    join[after] = r_end[-1] * np.exp(-(ts[after] - ends[-1]) / tau)
    mid = ~(before | after)
    if mid.any():
        k = np.searchsorted(ends, ts[mid], side="right") - 1  # the real stretch that ended before t
        b, a = ends[k], starts[k + 1]
        u = (ts[mid] - b) / (a - b)
        join[mid] = (1 - u) * r_end[k] * np.exp(-(ts[mid] - b) / tau) + u * r_start[k + 1] * np.exp(-(a - ts[mid]) / tau)
    logp[syn] += join
    n_real = int(covered.sum())
    info["real"] = {
        "stamp": "a daily close is stamped at the end of its UTC day (day 00:00 + 86400 s)",
        "interpolation": "log-linear between consecutive stamps",
        "max_gap_days": MAX_GAP_DAYS,
        "merge": "on a day several price files cover, the first file given wins",
        "blocks": n_real,
        "stretches": [[float(s), float(e)] for s, e in zip(starts, ends)],
        "join_residuals_log": {"at_starts": [float(v) for v in r_start], "at_ends": [float(v) for v in r_end]},
    }
    if n_real:
        hs = heights[covered]
        info["real"]["heights"] = [int(hs[0]), int(hs[-1])]
    return np.exp(logp), source, info
