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

import numba
import numpy as np

from gpu_engine import metrics

EULER_GAMMA = 0.5772156649015329


# ---------------------------------------------------------------- Wilson

def wilson(wins, trades, conf: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of wins / trades at two-sided confidence `conf`; NaN where trades == 0."""
    from scipy import stats  # imported here: scipy.stats costs ~1 s at startup
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
    return split_counted(int(ts[0]), int(ts[-1]), ts.size, is_frac, purge_frac,
                         lambda v: int(np.searchsorted(ts, v, side="left")))


def split_counted(t0: int, t1: int, n: int, is_frac: float, purge_frac: float, count_before) -> TimeSplit:
    """split_time's arithmetic from the first and last ts, the tick count and `count_before(v)`
    (how many ticks have ts < v): the same split for a book in memory and for one streamed
    from its stores (gpu_engine/stream.py)."""
    span = t1 - t0
    boundary = t0 + int(round(is_frac * span))
    oos_start = boundary + int(round(purge_frac * span))
    i_end = int(count_before(boundary))
    o_start = int(count_before(oos_start))
    if i_end < 2 or n - o_start < 2:
        raise ValueError("split leaves fewer than 2 ticks on one side")
    return TimeSplit(slice(0, i_end), slice(o_start, n), boundary, oos_start)


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

_SHARPE_CHUNK = 1 << 20  # values per piece of a large 2-D sharpe(): its temporaries stay in cache


def sharpe(returns: np.ndarray, axis: int = 0) -> np.ndarray:
    """mean / sample std (ddof 1) along `axis`; 0 where the std is 0 or fewer than 2 observations.

    A large 2-D array is done in pieces across the other axis (same operations per series, so
    the same result to the last bit; no array-sized temporaries: ~3x faster at 64 x 1e6)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim == 2 and r.size > 2 * _SHARPE_CHUNK and axis in (0, 1, -1, -2):
        ax = axis % 2
        n_other = r.shape[1 - ax]
        step = max(1, _SHARPE_CHUNK // max(r.shape[ax], 1))
        out = np.empty(n_other, dtype=np.float64)
        for a in range(0, n_other, step):
            piece = r[:, a:a + step] if ax == 0 else r[a:a + step]
            out[a:a + step] = _sharpe(piece, ax)
        return out
    return _sharpe(r, axis)


def _sharpe(r: np.ndarray, axis: int) -> np.ndarray:
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
    n_configs: int              # columns that entered
    n_splits: int               # S
    n_combinations: int
    n_input: int | None = None  # columns given, when more than max_configs (a random subset entered)
    subset_seed: int | None = None

    @property
    def subset(self) -> bool:
        """Whether only a seeded random subset of the columns given entered (`max_configs`)."""
        return self.n_input is not None and self.n_input > self.n_configs

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


def pbo(returns: np.ndarray, n_splits: int = 16, stat: str = "sharpe", chunk: int = 256,
        max_configs: int | None = None, seed: int = 0) -> PBOResult:
    """Probability of backtest overfitting by CSCV on a [T, N] matrix (rows in time order).

    stat: "sharpe" (mean / std, ddof 1) or "mean". Every column enters, unless N > max_configs:
    then a random subset of max_configs columns (numpy default_rng(seed).choice, without
    replacement; never the best ones: selecting the best makes PBO look better than it is), and
    the result says so (n_input, subset_seed, `subset`). A caller that subsets by itself must do
    the same and say so.

    The statistic of every (half, column) pair is computed from per-block sums by a numba kernel
    (`_cscv`: the halves split over threads, the columns in cache-sized tiles, nothing stored
    per pair), about 10x faster than the matrix form it replaced (sums = 0/1 mask @ block sums)
    and with the same floating-point operations in the same order: the half sums are the block
    sums added in block order, which is what that matrix product gives. The result is the same
    to the last bit except where BLAS's blocking rounded a half sum in another order (seen in
    the last partial chunk: the in-sample statistic differs in the last bit, the logits do not);
    tests/test_report_html.py compares the two on random inputs. It does not depend on the
    thread count. `chunk` is accepted for compatibility and unused.
    """
    del chunk
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
    if stat not in ("sharpe", "mean"):
        raise ValueError(f"unknown stat {stat!r}")
    M = M[T - per * S:]
    if not np.isfinite(M).all():
        raise ValueError("returns contain NaN or inf")
    n_input = subset_seed = None
    if max_configs is not None and N > int(max_configs):
        if int(max_configs) < 2:
            raise ValueError(f"max_configs must be >= 2, got {max_configs}")
        n_input, subset_seed = N, int(seed)
        M = M[:, np.random.default_rng(seed).choice(N, int(max_configs), replace=False)]
        N = M.shape[1]
    shift = M.mean(axis=0)
    M = M - shift  # the std is shift-invariant; centring keeps the sums of squares accurate
    scale = np.maximum(np.abs(M).max(axis=0), 1e-300)
    blocks = M.reshape(S, per, N)
    b1 = np.ascontiguousarray(blocks.sum(axis=1))             # [S, N]
    b2 = np.ascontiguousarray((blocks * blocks).sum(axis=1))  # [S, N]
    del M, blocks
    combos = np.array(list(itertools.combinations(range(S), S // 2)), dtype=np.int64)
    # the out-of-sample half of combination c is the in-sample half of combination comp[c]
    index = {tuple(cb): i for i, cb in enumerate(combos.tolist())}
    comp = np.array([index[tuple(sorted(set(range(S)) - set(cb)))] for cb in combos.tolist()], dtype=np.int64)
    n_half = per * (S // 2)
    tiny = (1e-12 * scale) ** 2
    best, is_best, oos_best, below, equal = _cscv(b1, b2, shift, tiny, combos, comp, n_half, stat == "sharpe")
    rank = below + (equal + 1) / 2.0  # average rank, 1 = worst
    omega = rank / (N + 1)
    logits = np.log(omega / (1.0 - omega))
    return PBOResult(
        pbo=float(np.mean(logits <= 0)), logits=logits, is_best=is_best, oos_of_best=oos_best,
        n_configs=N, n_splits=S, n_combinations=len(combos), n_input=n_input, subset_seed=subset_seed,
    )


_TILE = 1024  # columns per tile: a tile of the block sums and of the prefix sums (2 x 1.5 S x 1024 x 8 B) stays in L2


def _cscv(b1, b2, shift, tiny, combos, comp, n: int, sharpe_stat: bool):
    """Per combination c (in-sample half combos[c], out-of-sample half combos[comp[c]]): n* (the
    first index of the in-sample maximum), its in- and out-of-sample statistic, and how many
    columns score below / equal to it out of sample. The combinations are split into parts run
    by numba.get_num_threads() threads (the kernel releases the GIL); each combination is
    computed by one thread, so the result does not depend on the thread count."""
    from concurrent.futures import ThreadPoolExecutor

    H = combos.shape[0]
    best = np.zeros(H, np.int64)
    is_best = np.empty(H)
    oos_best = np.empty(H)
    below = np.zeros(H, np.int64)
    equal = np.zeros(H, np.int64)
    threads = max(1, min(numba.get_num_threads(), H))
    parts = min(H, 4 * threads)
    bounds = [(i * H // parts, (i + 1) * H // parts) for i in range(parts)]

    def run(bound):
        _cscv_part(b1, b2, shift, tiny, combos, comp, n, sharpe_stat, bound[0], bound[1],
                   best, is_best, oos_best, below, equal)

    if threads == 1:
        for bound in bounds:
            run(bound)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, bounds))
    return best, is_best, oos_best, below, equal


@numba.njit(inline="always")
def _stat(s1, s2, shift, tiny, fn, sharpe_stat, j0, m, out):
    """out[:m] = the statistic of columns j0:j0+m from their half sums s1, s2 (centred values):
    the operations of `_sharpe_from_sums` (or the mean), one column at a time."""
    sh = shift[j0:j0 + m]
    ti = tiny[j0:j0 + m]
    if sharpe_stat:
        fn1 = fn - 1.0
        for j in range(m):
            mu = s1[j] / fn + sh[j]
            var = (s2[j] - s1[j] * s1[j] / fn) / fn1
            out[j] = mu / math.sqrt(var) if var > ti[j] else 0.0
    else:
        for j in range(m):
            out[j] = s1[j] / fn + sh[j]


@numba.njit(inline="always")
def _half_sums(b1, b2, blocks, prev, P1, P2, j0, m):
    """P1[q, :m] = b1[blocks[0], j0:j0+m] + ... + b1[blocks[q], j0:j0+m] added in block order
    (P2 from b2 likewise), so P1[-1], P2[-1] are the half's sums: what a 0/1 mask times the block
    sums gives. Rows shared with the previous half (`prev`, its blocks; -1: none) are kept, so
    halves taken in (reverse) lexicographic order cost about two additions instead of S / 2."""
    K = blocks.shape[0]
    L = 0
    while L < K and prev[L] == blocks[L]:
        L += 1
    for q in range(L, K):
        k = blocks[q]
        r1 = b1[k, j0:j0 + m]
        r2 = b2[k, j0:j0 + m]
        o1 = P1[q]
        o2 = P2[q]
        if q == 0:
            for j in range(m):
                o1[j] = r1[j]
                o2[j] = r2[j]
        else:
            p1 = P1[q - 1]
            p2 = P2[q - 1]
            for j in range(m):
                o1[j] = p1[j] + r1[j]
                o2[j] = p2[j] + r2[j]
        prev[q] = k


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _cscv_part(b1, b2, shift, tiny, combos, comp, n, sharpe_stat, h0, h1, best, is_best, oos_best, below, equal):
    """Combinations h0:h1 of `_cscv`, columns in tiles of _TILE (the block sums of a tile are read
    from cache by every combination). Self-contained (numba's cache=True keys on this file only)."""
    N = b1.shape[1]
    K = combos.shape[1]
    fn = float(n)
    P1 = np.empty((K, _TILE))
    P2 = np.empty((K, _TILE))
    prev = np.empty(K, np.int64)
    r = np.empty(_TILE)
    for h in range(h0, h1):
        is_best[h] = -np.inf
        best[h] = 0
        below[h] = 0
        equal[h] = 0
    # pass 1: n* = the first index of the in-sample maximum
    for j0 in range(0, N, _TILE):
        m = min(N - j0, _TILE)
        prev[:] = -1
        for h in range(h0, h1):
            _half_sums(b1, b2, combos[h], prev, P1, P2, j0, m)
            _stat(P1[K - 1], P2[K - 1], shift, tiny, fn, sharpe_stat, j0, m, r)
            bv = is_best[h]
            bi = best[h]
            for j in range(m):
                if r[j] > bv:
                    bv = r[j]
                    bi = j0 + j
            is_best[h] = bv
            best[h] = bi
    # the out-of-sample statistic of n*
    for h in range(h0, h1):
        prev[:] = -1
        _half_sums(b1, b2, combos[comp[h]], prev, P1, P2, best[h], 1)
        _stat(P1[K - 1], P2[K - 1], shift, tiny, fn, sharpe_stat, best[h], 1, r)
        oos_best[h] = r[0]
    # pass 2: columns below / equal to it out of sample
    for j0 in range(0, N, _TILE):
        m = min(N - j0, _TILE)
        prev[:] = -1
        for h in range(h0, h1):
            _half_sums(b1, b2, combos[comp[h]], prev, P1, P2, j0, m)
            _stat(P1[K - 1], P2[K - 1], shift, tiny, fn, sharpe_stat, j0, m, r)
            rb = oos_best[h]
            lo = 0
            eq = 0
            for j in range(m):
                lo += r[j] < rb
                eq += r[j] == rb
            below[h] += lo
            equal[h] += eq


# ---------------------------------------------------------------- deflated Sharpe

def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """SR0: expected maximum Sharpe of `n_trials` unskilled trials whose Sharpe variance is `sr_variance`."""
    from scipy import stats  # imported here: scipy.stats costs ~1 s at startup
    n = int(n_trials)
    if n <= 1 or not sr_variance > 0:
        return 0.0
    g = EULER_GAMMA
    mult = (1 - g) * stats.norm.ppf(1 - 1.0 / n) + g * stats.norm.ppf(1 - 1.0 / (n * math.e))
    return float(math.sqrt(sr_variance) * mult)


def psr(sr: float, sr_star: float, n_obs: int, skew: float, kurt_raw: float) -> float:
    """Probabilistic Sharpe ratio P(true SR > sr_star); kurt_raw is the raw kurtosis (3 for a normal)."""
    from scipy import stats  # imported here: scipy.stats costs ~1 s at startup
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
    from scipy import stats  # imported here: scipy.stats costs ~1 s at startup
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
