"""Validation statistics for a sweep: time splits, walk-forward, PBO (CSCV), deflated Sharpe, Wilson.

Everything here works from data the sweep already produced (the per-bucket PnL
matrix [C, B] of the kernels' output), so no configuration is re-run.

Conventions:

- A time split cuts the book at a *time* (not a tick count): in-sample is
  ts < t0 + is_frac x span, out-of-sample starts after a purge gap of
  purge_frac x span. Each part is simulated on its own (positions still open at
  the end of the in-sample part are closed there, docs/RULES.md rule 5), so no trade spans
  the boundary; the purge gap also keeps the out-of-sample start away from the
  last in-sample decisions (López de Prado's embargo).
- Sharpe is mean / sample std (ddof = 1) of bucket returns, not annualised, and
  0 where the std is 0: the same definition as `gpu_engine.metrics`.
- PBO (Bailey, Borwein, López de Prado & Zhu 2017): the T x N matrix is cut
  into S contiguous equal blocks (the oldest T mod S rows are dropped); for all
  C(S, S/2) halves, n* = argmax of the in-sample statistic (first index on
  ties), omega = rank of n*'s out-of-sample statistic among all N (1 = worst,
  ties take their average rank) / (N + 1), lambda = ln(omega / (1 - omega)),
  PBO = share of halves with lambda <= 0.
- Deflated Sharpe (Bailey & López de Prado 2014): PSR with the *raw* kurtosis
  (3 for a normal; population moments) and the benchmark SR0 = the expected
  maximum Sharpe of N unskilled trials, N = configurations actually tried,
  V = sample variance of their Sharpe estimates.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from gpu_engine import metrics

EULER_GAMMA = 0.5772156649015329


# ---------------------------------------------------------------- Wilson

def wilson(wins, trades, conf: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of wins / trades at two-sided confidence `conf`; NaN where trades == 0."""
    z = float(stats.norm.ppf(0.5 + conf / 2.0))
    lo, hi = metrics.wilson(np.asarray(wins, dtype=np.float64), np.asarray(trades, dtype=np.float64), z)
    return lo, hi


# ---------------------------------------------------------------- time split

@dataclass(frozen=True)
class TimeSplit:
    """Tick ranges of the in-sample and out-of-sample parts (half-open slices into the book)."""

    in_sample: slice
    out_sample: slice
    boundary_ns: int  # first ns that is not in-sample
    oos_start_ns: int  # first ns that may be out-of-sample (boundary + purge)

    def as_attrs(self) -> dict:
        return {
            "is_ticks": [self.in_sample.start, self.in_sample.stop],
            "oos_ticks": [self.out_sample.start, self.out_sample.stop],
            "boundary_ns": int(self.boundary_ns),
            "oos_start_ns": int(self.oos_start_ns),
        }


def split_time(ts: np.ndarray, is_frac: float = 0.7, purge_frac: float = 0.01) -> TimeSplit:
    """Split ticks by time: in-sample first `is_frac` of the span, out-of-sample after a purge gap."""
    ts = np.asarray(ts, dtype=np.int64)
    if not 0.0 < is_frac < 1.0:
        raise ValueError(f"is_frac must be in (0, 1), got {is_frac}")
    if not 0.0 <= purge_frac < 1.0 - is_frac:
        raise ValueError(f"purge_frac must be in [0, {1.0 - is_frac:g}), got {purge_frac}")
    if ts.size < 4:
        raise ValueError(f"need at least 4 ticks to split, got {ts.size}")
    t0, t1 = int(ts[0]), int(ts[-1])
    span = t1 - t0
    boundary = t0 + int(round(is_frac * span))
    oos_start = boundary + int(round(purge_frac * span))
    i_end = int(np.searchsorted(ts, boundary, side="left"))
    o_start = int(np.searchsorted(ts, oos_start, side="left"))
    if i_end < 2 or ts.size - o_start < 2:
        raise ValueError("split leaves fewer than 2 ticks on one side")
    return TimeSplit(slice(0, i_end), slice(o_start, ts.size), boundary, oos_start)


def slice_book(book, sl: slice):
    """The Book restricted to ticks `sl` (trades restricted to the same time window)."""
    trades = book.trades
    if trades is not None:
        lo_ns = int(book.ts[sl.start])
        hi_ns = int(book.ts[sl.stop - 1])
        m = (trades.ts >= lo_ns) & (trades.ts <= hi_ns)
        trades = type(trades)(ts=trades.ts[m], px=trades.px[m], qty=trades.qty[m], side=trades.side[m])
    return replace(
        book,
        ts=book.ts[sl], seq=book.seq[sl],
        bid_px=book.bid_px[sl], ask_px=book.ask_px[sl],
        bid_sz=book.bid_sz[sl], ask_sz=book.ask_sz[sl],
        trades=trades, attrs=dict(book.attrs),
    )


def slice_bank(bank, sl: slice):
    """The feature bank restricted to ticks `sl` (same rows and table; contiguous values).

    Build the bank on the whole book and slice it: features are causal, so the
    out-of-sample part starts with warmed-up windows and still sees no later data.
    """
    xp = bank.xp
    return replace(bank, values=xp.ascontiguousarray(bank.values[:, sl]))


# ---------------------------------------------------------------- Sharpe helpers

def sharpe(returns: np.ndarray, axis: int = 0) -> np.ndarray:
    """mean / sample std (ddof 1) along `axis`; 0 where the std is 0 or fewer than 2 observations."""
    r = np.asarray(returns, dtype=np.float64)
    n = r.shape[axis]
    if n < 2:
        return np.zeros(np.delete(r.shape, axis), dtype=np.float64)
    mu = r.mean(axis=axis)
    sd = r.std(axis=axis, ddof=1)
    tiny = 1e-12 * np.maximum(np.abs(r).max(axis=axis), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sd > tiny, mu / np.where(sd > 0, sd, 1.0), 0.0)
    return out


def _sharpe_from_sums(s1c: np.ndarray, s2c: np.ndarray, n: int, shift: np.ndarray,
                      scale: np.ndarray) -> np.ndarray:
    """Sharpe of n observations x = xc + shift from the sums of xc and xc^2 (xc centred per column)."""
    mu = s1c / n + shift
    var = (s2c - s1c * s1c / n) / (n - 1)
    tiny = (1e-12 * scale) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > tiny, mu / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)


# ---------------------------------------------------------------- PBO by CSCV

@dataclass
class PBOResult:
    pbo: float
    logits: np.ndarray          # lambda_c per combination
    is_best: np.ndarray         # in-sample statistic of n* per combination
    oos_of_best: np.ndarray     # out-of-sample statistic of n* per combination
    n_configs: int
    n_splits: int               # S
    n_combinations: int

    @property
    def degradation_slope(self) -> float:
        """Slope of the regression of OOS on IS statistic of the selected config (performance degradation)."""
        x, y = self.is_best, self.oos_of_best
        if x.size < 2 or np.ptp(x) == 0:
            return float("nan")
        return float(np.polyfit(x, y, 1)[0])

    @property
    def prob_loss(self) -> float:
        """P(out-of-sample statistic of the in-sample best < 0)."""
        return float(np.mean(self.oos_of_best < 0))


def pbo(returns: np.ndarray, n_splits: int = 16, stat: str = "sharpe", chunk: int = 256) -> PBOResult:
    """Probability of backtest overfitting by CSCV on a [T, N] matrix (rows in time order).

    stat: "sharpe" (mean / std, ddof 1) or "mean".
    """
    M = np.asarray(returns, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError("returns must be a [T, N] matrix")
    S = int(n_splits)
    if S < 2 or S % 2:
        raise ValueError(f"n_splits must be an even number >= 2, got {S}")
    T, N = M.shape
    if N < 2:
        raise ValueError("PBO needs at least 2 configurations")
    per = T // S
    if per < 1 or (stat == "sharpe" and per * S // 2 < 2):
        raise ValueError(f"{T} rows are too few for {S} blocks")
    M = M[T - per * S:]
    if not np.isfinite(M).all():
        raise ValueError("returns contain NaN or inf")
    shift = M.mean(axis=0)
    M = M - shift  # the std is shift-invariant; centring keeps the sums of squares accurate
    scale = np.maximum(np.abs(M).max(axis=0), 1e-300)
    blocks = M.reshape(S, per, N)
    b1 = blocks.sum(axis=1)             # [S, N]
    b2 = (blocks * blocks).sum(axis=1)  # [S, N]
    combos = np.array(list(itertools.combinations(range(S), S // 2)), dtype=np.int64)
    n_half = per * (S // 2)
    mask = np.zeros((len(combos), S))
    mask[np.arange(len(combos))[:, None], combos] = 1.0
    logits = np.empty(len(combos))
    is_best = np.empty(len(combos))
    oos_best = np.empty(len(combos))
    for a in range(0, len(combos), chunk):
        m_in = mask[a:a + chunk]
        m_out = 1.0 - m_in
        s1_in, s1_out = m_in @ b1, m_out @ b1
        if stat == "sharpe":
            # shift back the mean: sum(x) = sum(xc) + n * shift
            r_in = _sharpe_from_sums(s1_in, m_in @ b2, n_half, shift, scale)
            r_out = _sharpe_from_sums(s1_out, m_out @ b2, n_half, shift, scale)
        elif stat == "mean":
            r_in = s1_in / n_half + shift
            r_out = s1_out / n_half + shift
        else:
            raise ValueError(f"unknown stat {stat!r}")
        best = np.argmax(r_in, axis=1)
        rows = np.arange(len(best))
        rb = r_out[rows, best]
        below = (r_out < rb[:, None]).sum(axis=1)
        equal = (r_out == rb[:, None]).sum(axis=1)
        rank = below + (equal + 1) / 2.0  # average rank, 1 = worst
        omega = rank / (N + 1)
        logits[a:a + chunk] = np.log(omega / (1.0 - omega))
        is_best[a:a + chunk] = r_in[rows, best]
        oos_best[a:a + chunk] = rb
    return PBOResult(
        pbo=float(np.mean(logits <= 0)), logits=logits, is_best=is_best, oos_of_best=oos_best,
        n_configs=N, n_splits=S, n_combinations=len(combos),
    )


# ---------------------------------------------------------------- deflated Sharpe

def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """SR0: expected maximum Sharpe of `n_trials` unskilled trials whose Sharpe variance is `sr_variance`."""
    n = int(n_trials)
    if n <= 1 or not sr_variance > 0:
        return 0.0
    g = EULER_GAMMA
    mult = (1 - g) * stats.norm.ppf(1 - 1.0 / n) + g * stats.norm.ppf(1 - 1.0 / (n * math.e))
    return float(math.sqrt(sr_variance) * mult)


def psr(sr: float, sr_star: float, n_obs: int, skew: float, kurt_raw: float) -> float:
    """Probabilistic Sharpe ratio P(true SR > sr_star); kurt_raw is the raw kurtosis (3 for a normal)."""
    if n_obs < 2:
        return float("nan")
    den = 1.0 - skew * sr + (kurt_raw - 1.0) / 4.0 * sr * sr
    if not den > 0:
        return float("nan")
    return float(stats.norm.cdf((sr - sr_star) * math.sqrt(n_obs - 1) / math.sqrt(den)))


@dataclass
class DSRResult:
    dsr: float
    sr: float          # Sharpe of the selected configuration (per bucket)
    sr0: float         # expected max Sharpe of n_trials unskilled trials
    n_trials: int
    n_obs: int
    skew: float
    kurt_raw: float
    sr_variance: float


def deflated_sharpe(best_returns: np.ndarray, n_trials: int, sr_variance: float) -> DSRResult:
    """Deflated Sharpe ratio of the selected configuration's return series."""
    r = np.asarray(best_returns, dtype=np.float64)
    sr = float(sharpe(r))
    if r.size >= 2 and r.std() > 0:
        sk = float(stats.skew(r))
        ku = float(stats.kurtosis(r, fisher=False))
    else:
        sk, ku = 0.0, 3.0
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return DSRResult(psr(sr, sr0, r.size, sk, ku), sr, sr0, int(n_trials), int(r.size), sk, ku, float(sr_variance))


def deflated_sharpe_of_search(returns: np.ndarray, best: int | None = None) -> DSRResult:
    """DSR of a whole search from its [T, N] return matrix: N trials, V = variance of their Sharpes.

    `best` is the selected configuration (default: the highest Sharpe).
    """
    M = np.asarray(returns, dtype=np.float64)
    srs = sharpe(M, axis=0)
    if best is None:
        best = int(np.argmax(srs))
    var = float(np.var(srs, ddof=1)) if srs.size > 1 else 0.0
    return deflated_sharpe(M[:, best], M.shape[1], var)


# ---------------------------------------------------------------- walk-forward

@dataclass
class WalkForward:
    mode: str
    folds: list          # (train slice, test slice, chosen config) per fold
    oos_returns: np.ndarray  # concatenated test-slice returns of the chosen configs
    oos_sharpe: float


def walk_forward(returns: np.ndarray, n_folds: int = 4, mode: str = "rolling",
                 train: int | None = None, purge: int = 0) -> WalkForward:
    """Walk-forward on a [T, N] bucket-return matrix: choose the best Sharpe on each training
    window, freeze it, keep its returns on the next test slice; concatenate test slices only.

    anchored: training windows all start at row 0; rolling: fixed length `train` (default:
    the first test slice's start). `purge` rows between a training window and its test
    slice are skipped.
    """
    M = np.asarray(returns, dtype=np.float64)
    T, N = M.shape
    if mode not in ("rolling", "anchored"):
        raise ValueError(f"mode must be rolling or anchored, got {mode!r}")
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    test_len = T // (n_folds + 1)
    if test_len < 1:
        raise ValueError(f"{T} rows are too few for {n_folds} folds")
    first_test = T - n_folds * test_len
    train = first_test - purge if train is None else int(train)
    if train < 2:
        raise ValueError("training window shorter than 2 rows")
    folds, pieces = [], []
    for k in range(n_folds):
        t0 = first_test + k * test_len
        t1 = t0 + test_len
        tr_end = t0 - purge
        tr_start = 0 if mode == "anchored" else max(0, tr_end - train)
        if tr_end - tr_start < 2:
            raise ValueError(f"fold {k}: training window shorter than 2 rows")
        choice = int(np.argmax(sharpe(M[tr_start:tr_end], axis=0)))
        folds.append((slice(tr_start, tr_end), slice(t0, t1), choice))
        pieces.append(M[t0:t1, choice])
    oos = np.concatenate(pieces)
    return WalkForward(mode, folds, oos, float(sharpe(oos)))
