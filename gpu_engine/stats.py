"""Statistics that count what was really tried: effective number of trials, Sharpe standard
errors, deflated Sharpe with that number, minimum track record length, Hansen's SPA test.

This module owns the *inference* on a sweep's per-bucket PnL matrix ``bucket_pnl [N, B]``
(N configurations tried, B time buckets, rows = configurations -- note that
`gpu_engine.validation` works on the transposed [T, N] layout). Pure numpy / scipy (and
`arch` for the SPA bootstrap), no I/O. `gpu_engine.validation` keeps PBO, the plain deflated
Sharpe of a whole search, walk-forward and Wilson intervals; the expected-maximum-Sharpe
formula and the PSR used here are validation's.

Conventions (shared with `gpu_engine.metrics` / `gpu_engine.validation`):

- Sharpe SR = mean / sample std (ddof 1) of the B bucket returns, not annualised; a row
  is *usable* when all its B values are finite and it is not constant. Rows with any
  NaN/inf (e.g. too few trades) or constant rows (e.g. never traded) are dropped from every
  estimate below but still count in ``n_trials`` (they were tried).
- Skewness gamma3 and kurtosis gamma4 are population moments (``scipy.stats.skew``,
  ``scipy.stats.kurtosis(fisher=False)``): gamma4 is the *non-excess* (raw) kurtosis, 3 for a
  normal. T = number of observations = B.

Methods and sources:

1. Effective number of independent trials, `n_effective`. From the eigenvalues
   lambda_1..lambda_N of the N x N correlation matrix C of the usable rows. Primary
   estimator: the *entropy effective rank* (Roy & Vetterli 2007, "The effective rank: a
   measure of effective dimensionality"; the K_eff used for the DSR by López de Prado,
   Lipton & Zoonekynd 2026, "How to Use the Sharpe Ratio", ADIA Lab Research Paper 19,
   SSRN 5520741, replication code github.com/zoonek/2025-sharpe-ratio ``effective_rank``):
   p_i = lambda_i / sum(lambda), n_eff = exp(-sum p_i ln p_i). Why this one: it is exactly N
   for C = I, exactly 1 for rank one (copies of one series), exactly k for k equal-sized
   uncorrelated blocks of copies, always in [1, rank(C)], and *continuous* in the
   eigenvalues. The alternatives are available through ``method=``: Nyholt (2004, Am. J.
   Hum. Genet. 74:765) M_eff = 1 + (N - 1)(1 - Var(lambda) / N) (Var with ddof 1) is known to
   be badly biased for block structures (Li & Ji 2005 show it); Li & Ji (2005, Heredity
   95:221) M_eff = sum_i [1(lambda_i >= 1) + (lambda_i - floor(lambda_i))] jumps by ~1 when an
   eigenvalue crosses an integer, so sampling noise of size 1e-3 can move it by 1; the
   participation ratio (sum lambda)^2 / sum lambda^2 is a smooth Renyi-2 analogue of the
   entropy rank. Only the entropy rank and the participation ratio are bounded by rank(C);
   Li & Ji can reach 2 rank(C) and Nyholt ignores the rank (all are clipped to [1, N]).
   A clustering estimate (López de Prado's ONC) is not implemented.

   Large N: C = Z Z^T with Z [N, B] the rows centred and scaled to unit L2 norm, so rank(C)
   <= B - 1 and the non-zero eigenvalues of C are those of the B x B Gram matrix Z^T Z (the
   rest are zeros, which contribute nothing to the entropy). We form the smaller of Z Z^T and
   Z^T Z (in row chunks), so N = 1e5, B = 64 costs O(N B^2) time and O(N B) memory.
   Consequence, stated honestly: *n_effective can never exceed the rank, min(N_usable,
   B - 1)*; with B << N even truly independent configurations give n_eff < B, and with B
   close to N the sample eigenvalues spread (Marchenko-Pastur) so n_eff falls below N for
   independent series (about N exp(-N / 2B) for N << B). The result is a count of
   independent directions the *data can resolve*, not of configurations. Caveat for the
   DSR: on pure noise with N = 1e5, B = 64 we measured n_eff = 63, DSR(N) = 0.62 but
   DSR(n_eff) = 0.98 -- with few buckets the rank cap makes the n_eff-deflated Sharpe lenient,
   so report both (as `summary` does) and prefer more buckets when N is large.

2. Deflated Sharpe ratio (Bailey & López de Prado 2014, J. Portfolio Management 40(5)):
   DSR = PSR(SR0) with SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/K) + gamma Phi^-1(1 - 1/(K e))),
   V = variance of the usable trials' Sharpes, K = number of trials -- either all
   configurations tried or n_effective (a real number here). Same formula and PSR as
   `gpu_engine.validation` (PSR uses sqrt(T - 1) and the variance at the observed SR).
   Since SR0 grows with K, DSR(n_effective) >= DSR(n_trials) when n_effective <= n_trials.

3. Standard error of the Sharpe ratio.
   - IID normal (Lo 2002, "The Statistics of Sharpe Ratios", Financial Analysts Journal
     58(4), eq. for V_IID): Var(SR) = (1 + SR^2 / 2) / T.
   - Non-normal IID (Mertens 2002, "Comments on variance of the IID estimator in Lo (2002)";
     also Opdyke 2007): Var(SR) = (1 + SR^2/2 - gamma3 SR + (gamma4 - 3)/4 SR^2) / T
     = (1 - gamma3 SR + (gamma4 - 1)/4 SR^2) / T with gamma4 the non-excess kurtosis.
   - Serial correlation, AR(1) with coefficient rho (López de Prado, Lipton & Zoonekynd 2026,
     eq. 2-3 as implemented in their replication code ``sharpe_ratio_variance``), which
     combines Mertens with Lo's non-IID correction:
     Var(SR) = (a - b gamma3 SR + c (gamma4 - 1)/4 SR^2) / T, a = (1 + rho)/(1 - rho),
     b = 1 + rho/(1 - rho) + rho^2/(1 - rho^2), c = (1 + rho^2)/(1 - rho^2).
     For Gaussian AR(1) this is exactly the delta-method variance (a = long-run variance
     factor of r, c = that of (r - mu)^2). rho = 0 gives Mertens.
   - General serial dependence (Lo 2002, GMM / delta method): theta = (mu, sigma^2),
     moments (r - mu, (r - mu)^2 - sigma^2), their long-run covariance by Newey & West (1987)
     with Bartlett weights, Var(SR) = g' S g / T, g = (1/sigma, -mu / (2 sigma^3)).
   - Aggregation (Lo 2002, eq. for eta(q)): SR(q) = eta(q) SR with
     eta(q) = q / sqrt(q + 2 sum_{k=1}^{q-1} (q - k) rho_k); sqrt(q) under IID.

4. Minimum track record length (Bailey & López de Prado 2012, "The Sharpe Ratio Efficient
   Frontier", J. of Risk 15(2)): MinTRL = 1 + (1 - gamma3 SR + (gamma4 - 1)/4 SR^2)
   (z_alpha / (SR - SR*))^2, in observations (buckets) at the frequency of SR, z_alpha =
   Phi^-1(1 - alpha), gamma4 non-excess; +inf when SR <= SR*. ``convention="lpz2026"`` gives
   López de Prado, Lipton & Zoonekynd's version: Var evaluated at SR* (under H0), with the
   AR(1) factors above and no leading "1 +".

5. Hansen's SPA test (Hansen 2005, "A Test for Superior Predictive Ability", JBES 23(4)) of
   "no configuration beats zero": benchmark losses 0, model losses -r (so the loss
   differentials are the bucket returns), stationary bootstrap of `arch.bootstrap.SPA`
   (Sheppard's `arch`) with a fixed seed; returns the lower / consistent / upper p-values.
   Large N: SPA over all models is exact but slow with `arch` (measured here, 2 cores,
   B = 64, 1000 reps: ~0.35 s for 1e3 models, 25-30 s for 2e4, so a few minutes for 1e5).
   ``top=k`` keeps only the k models with the highest in-sample Sharpe. We *pre-select*
   rather than subsample because a random subsample would usually drop the very
   configuration the test is about and answer a different question. The price: the
   p-value is then conditional on that preselection and anti-conservative (too small) --
   the discarded models would have widened the null distribution of the maximum. The bias
   is large: on pure noise, N = 2e4, B = 64, consistent p = 0.36 with all models, 0.076 with
   top=1000 and 0.006 with top=100 (another seed: 0.09 / 0.006 / 0.0). Hence the default is
   ``top=None`` (all usable rows); pass ``top`` only for a quick look, and the output
   says ``preselected``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from gpu_engine import validation

EULER_GAMMA = validation.EULER_GAMMA
N_EFF_METHODS = ("entropy", "participation", "li_ji", "nyholt")


# ---------------------------------------------------------------- input hygiene

def usable_rows(bucket_pnl: np.ndarray) -> np.ndarray:
    """Boolean mask [N] of rows with all values finite and a non-zero spread."""
    X = np.asarray(bucket_pnl, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"bucket_pnl must be [N, B], got shape {X.shape}")
    finite = np.isfinite(X).all(axis=1)
    if X.shape[1] < 2:
        return np.zeros(X.shape[0], dtype=bool)
    Xf = np.where(finite[:, None], X, 0.0)
    sd = Xf.std(axis=1)
    tiny = 1e-12 * np.maximum(np.abs(Xf).max(axis=1), 1e-300)
    return finite & (sd > tiny)


def _moments(r: np.ndarray) -> tuple[float, float, float]:
    """(Sharpe ddof 1, skewness, non-excess kurtosis) of a 1-D series (population moments)."""
    r = np.asarray(r, dtype=np.float64)
    sr = float(validation.sharpe(r))
    if r.size >= 3 and r.std() > 0:
        return sr, float(sps.skew(r)), float(sps.kurtosis(r, fisher=False))
    return sr, 0.0, 3.0


def autocorr1(r: np.ndarray) -> float:
    """First-order sample autocorrelation sum (r_t - m)(r_{t-1} - m) / sum (r_t - m)^2."""
    r = np.asarray(r, dtype=np.float64)
    if r.size < 3:
        return 0.0
    d = r - r.mean()
    den = float(d @ d)
    return float(d[1:] @ d[:-1]) / den if den > 0 else 0.0


# ---------------------------------------------------------------- effective number of trials

def correlation_eigenvalues(bucket_pnl: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, int]:
    """Non-negative eigenvalues of the correlation matrix of the usable rows, and that row count.

    Only the at most min(n, B) possibly non-zero eigenvalues are returned (the other
    n - len eigenvalues are exactly zero); they sum to n. Computed from the smaller of the
    n x n and B x B Gram matrices of the standardised rows, never forming a large n x n
    matrix when n > B.
    """
    X = np.asarray(bucket_pnl, dtype=np.float64)
    m = usable_rows(X)
    n = int(m.sum())
    if n == 0:
        return np.zeros(0), 0
    B = X.shape[1]
    X = X[m]
    if n <= B:
        Z = X - X.mean(axis=1, keepdims=True)
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
        G = Z @ Z.T
    else:
        G = np.zeros((B, B))
        for a in range(0, n, chunk):
            Z = X[a:a + chunk] - X[a:a + chunk].mean(axis=1, keepdims=True)
            Z /= np.linalg.norm(Z, axis=1, keepdims=True)
            G += Z.T @ Z
    lam = np.linalg.eigvalsh((G + G.T) / 2.0)[::-1]
    lam = np.clip(lam, 0.0, None)
    s = lam.sum()
    if s > 0:
        lam *= n / s  # trace(C) = n exactly; remove rounding drift
    return lam, n


def n_effective_from_eigenvalues(eigenvalues: np.ndarray, n: int | None = None,
                                 method: str = "entropy") -> float:
    """Effective number of trials from correlation eigenvalues (zeros may be omitted).

    `n` is the matrix size (number of series); default len(eigenvalues). Result in [1, n].
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    n = int(lam.size if n is None else n)
    if n <= 0:
        return float("nan")
    if n == 1:
        return 1.0
    total = lam.sum()
    if not total > 0:
        return float("nan")
    lam = lam * (n / total)
    if method == "entropy":
        p = lam[lam > 0] / n
        out = math.exp(float(-(p * np.log(p)).sum()))
    elif method == "participation":
        out = n * n / float((lam * lam).sum())
    elif method == "li_ji":
        lr = np.round(lam, 9)  # an eigenvalue 3 - 1e-14 must count as 3, not 2.99999...
        out = float(((lr >= 1.0) + (lr - np.floor(lr))).sum())
    elif method == "nyholt":
        var = (float((lam * lam).sum()) - n) / (n - 1)  # zeros included; mean eigenvalue is 1
        out = 1.0 + (n - 1) * (1.0 - var / n)
    else:
        raise ValueError(f"method must be one of {N_EFF_METHODS}, got {method!r}")
    return float(min(max(out, 1.0), float(n)))


def n_effective(bucket_pnl: np.ndarray, method: str = "entropy") -> float:
    """Effective number of independent trials of a [N, B] bucket-PnL matrix (usable rows only).

    NaN when no row is usable. Bounded by min(n_usable, B - 1): see the module docstring.
    """
    lam, n = correlation_eigenvalues(bucket_pnl)
    return n_effective_from_eigenvalues(lam, n, method)


# ---------------------------------------------------------------- deflated Sharpe

def expected_max_sharpe(n_trials: float, sr_variance: float) -> float:
    """validation.expected_max_sharpe for a real number of trials (e.g. n_effective).

    Equal to it at integers; 0 for n_trials <= 1 or a non-positive variance. Between 1 and
    about 1.3 the asymptotic formula is negative (Phi^-1(1 - 1/K) -> -inf as K -> 1): clamped
    to 0 (no deflation), which keeps SR0 continuous and non-decreasing in K.
    """
    n = float(n_trials)
    if not n > 1.0 or not sr_variance > 0:
        return 0.0
    if n.is_integer():
        return validation.expected_max_sharpe(int(n), sr_variance)
    g = EULER_GAMMA
    mult = (1 - g) * sps.norm.ppf(1 - 1.0 / n) + g * sps.norm.ppf(1 - 1.0 / (n * math.e))
    return float(max(0.0, math.sqrt(sr_variance) * mult))


def deflated_sharpe(sr: float, n_obs: int, skew: float, kurt: float, n_trials: float,
                    sr_variance: float) -> float:
    """DSR = PSR(sr against SR0(n_trials, sr_variance)), validation's PSR (kurt non-excess)."""
    return validation.psr(sr, expected_max_sharpe(n_trials, sr_variance), int(n_obs), skew, kurt)


# ---------------------------------------------------------------- Sharpe standard errors

def sharpe_variance(sr: float, n_obs: int, skew: float = 0.0, kurt: float = 3.0,
                    rho: float = 0.0) -> float:
    """Asymptotic Var(SR-hat): Lo (2002) IID-normal, Mertens (2002) non-normal, AR(1) factors of
    López de Prado, Lipton & Zoonekynd (2026). `kurt` is the non-excess kurtosis; |rho| < 1.

    Var = (a - b skew sr + c (kurt - 1)/4 sr^2) / T, a = (1+rho)/(1-rho),
    b = 1 + rho/(1-rho) + rho^2/(1-rho^2), c = (1+rho^2)/(1-rho^2). NaN if T < 1 or Var <= 0.
    """
    if n_obs < 1 or not abs(rho) < 1:
        return float("nan")
    a = (1 + rho) / (1 - rho)
    b = 1 + rho / (1 - rho) + rho * rho / (1 - rho * rho)
    c = (1 + rho * rho) / (1 - rho * rho)
    v = (a - b * skew * sr + c * (kurt - 1.0) / 4.0 * sr * sr) / n_obs
    return float(v) if v > 0 else float("nan")


def sharpe_se(sr: float, n_obs: int, skew: float = 0.0, kurt: float = 3.0, rho: float = 0.0) -> float:
    """sqrt(sharpe_variance(...)): with defaults the IID-normal SE sqrt((1 + SR^2/2)/T)."""
    return math.sqrt(sharpe_variance(sr, n_obs, skew, kurt, rho))


def newey_west_lags(n_obs: int) -> int:
    """Newey & West (1994) rule of thumb floor(4 (T/100)^(2/9))."""
    return int(math.floor(4.0 * (n_obs / 100.0) ** (2.0 / 9.0)))


def sharpe_se_hac(returns: np.ndarray, lags: int | None = None) -> float:
    """Lo (2002) GMM standard error of SR = mu / sigma with a Newey-West (Bartlett) long-run covariance.

    Population moments inside (sigma with ddof 0), lags default `newey_west_lags(T)`;
    lags = 0 gives the IID non-normal (Mertens) value with sample moments. NaN if sigma = 0.
    """
    r = np.asarray(returns, dtype=np.float64)
    T = r.size
    if T < 3:
        return float("nan")
    mu = r.mean()
    d = r - mu
    s2 = float(d @ d) / T
    if not s2 > 0:
        return float("nan")
    L = newey_west_lags(T) if lags is None else int(lags)
    L = max(0, min(L, T - 1))
    u = np.stack([d, d * d - s2])  # [2, T]
    S = u @ u.T / T
    for k in range(1, L + 1):
        g = u[:, k:] @ u[:, :-k].T / T
        S += (1.0 - k / (L + 1.0)) * (g + g.T)
    sig = math.sqrt(s2)
    grad = np.array([1.0 / sig, -mu / (2.0 * sig ** 3)])
    v = float(grad @ S @ grad) / T
    return math.sqrt(v) if v > 0 else float("nan")


def lo_eta(q: int, rho: np.ndarray | float) -> float:
    """Lo (2002) scale factor eta(q): SR over q periods = eta(q) x one-period SR.

    eta(q) = q / sqrt(q + 2 sum_{k=1}^{q-1} (q - k) rho_k). `rho` is either the sequence
    rho_1..rho_{q-1} of autocorrelations or a scalar AR(1) coefficient (rho_k = rho^k).
    """
    q = int(q)
    if q < 1:
        raise ValueError("q must be >= 1")
    k = np.arange(1, q)
    if np.ndim(rho) == 0:
        rk = float(rho) ** k
    else:
        rk = np.asarray(rho, dtype=np.float64)[: q - 1]
        if rk.size < q - 1:
            raise ValueError(f"need {q - 1} autocorrelations, got {rk.size}")
    den = q + 2.0 * float(((q - k) * rk).sum())
    return float(q / math.sqrt(den)) if den > 0 else float("nan")


# ---------------------------------------------------------------- minimum track record length

def min_track_record_length(sr: float, sr_star: float = 0.0, skew: float = 0.0, kurt: float = 3.0,
                            alpha: float = 0.05, rho: float = 0.0,
                            convention: str = "bailey2012") -> float:
    """Minimum number of observations for SR-hat to exceed sr_star at confidence 1 - alpha.

    bailey2012 (Bailey & López de Prado 2012): 1 + (1 - skew sr + (kurt - 1)/4 sr^2)
    (z / (sr - sr_star))^2 (with rho != 0 the AR(1) factors of sharpe_variance are applied).
    lpz2026 (López de Prado, Lipton & Zoonekynd 2026): T x Var(SR at sr_star) (z / (sr - sr_star))^2.
    +inf when sr <= sr_star; kurt non-excess; z = Phi^-1(1 - alpha).
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not sr > sr_star:
        return float("inf")
    z = float(sps.norm.ppf(1.0 - alpha))
    if convention == "bailey2012":
        return float(1.0 + sharpe_variance(sr, 1, skew, kurt, rho) * (z / (sr - sr_star)) ** 2)
    if convention == "lpz2026":
        return float(sharpe_variance(sr_star, 1, skew, kurt, rho) * (z / (sr - sr_star)) ** 2)
    raise ValueError(f"convention must be bailey2012 or lpz2026, got {convention!r}")


# ---------------------------------------------------------------- Hansen's SPA

def spa_test(bucket_pnl: np.ndarray, *, top: int | None = None, reps: int = 1000,
             block_size: int | None = None, bootstrap: str = "stationary",
             seed: int = 0) -> dict:
    """Hansen (2005) SPA test of H0 "no usable row has a positive expected bucket return".

    Loss differentials d[b, k] = 0 - (-r[k, b]) = r[k, b] (benchmark: zero returns). Only
    usable rows enter; with `top` set, only the `top` highest-Sharpe ones (see module
    docstring: the p-value then conditions on that preselection and is anti-conservative).
    Returns {"lower", "consistent", "upper", "n_models", "preselected"}; p-values NaN when no row
    is usable. Deterministic for a given seed. block_size None: arch's default.
    """
    from arch.bootstrap import SPA  # imported here: heavy, and only needed for this test

    X = np.asarray(bucket_pnl, dtype=np.float64)
    m = np.flatnonzero(usable_rows(X))
    nan = float("nan")
    if m.size == 0:
        return {"lower": nan, "consistent": nan, "upper": nan, "n_models": 0, "preselected": False}
    pre = top is not None and m.size > int(top)
    if pre:
        srs = validation.sharpe(X[m], axis=1)
        keep = np.argsort(-srs, kind="stable")[: int(top)]
        m = np.sort(m[keep])
    R = X[m].T  # [B, k]
    spa = SPA(np.zeros(R.shape[0]), -R, block_size=block_size, reps=int(reps),
              bootstrap=bootstrap, seed=np.random.default_rng(seed))
    lower, consistent, upper = spa_pvalues(spa)
    return {"lower": lower, "consistent": consistent, "upper": upper,
            "n_models": int(m.size), "preselected": bool(pre)}


def spa_pvalues(spa) -> tuple[float, float, float]:
    """The lower, consistent and upper p-values of `arch.bootstrap.SPA` (`spa`, not yet
    computed, no subset), the same bits as its `compute()`, in memory independent of `reps`.

    arch's `SPA.compute` stores every bootstrap draw's recentred mean of every model,
    [k, reps, 3] float64, and copies it once to apply the model subset (k = 5,000 models and
    1,000 reps: 240 MB), then takes each draw's maximum over the models. Here the same draws
    (arch's own bootstrap object, in its order), the same variance estimate and
    recentring (arch's own methods) and the same subtractions, but each draw is reduced to
    its three maxima at once: the largest array is one draw's [B, k] resample. The three
    p-values are the fractions of draws whose maximum exceeds the largest mean loss
    differential, as in `compute()`; tests/test_stats.py checks them equal to arch's.
    """
    spa._compute_variance()
    valid = spa._check_column_validity()
    upper_mean = spa._loss_diff.mean(0)
    consistent_mean = upper_mean.copy()
    consistent_mean[np.logical_not(valid)] = 0.0
    lower_mean = upper_mean.copy()
    lower_mean[lower_mean < 0] = 0.0
    means = (lower_mean, consistent_mean, upper_mean)
    best = np.empty((int(spa.reps), 3))
    for i, (pos, _) in enumerate(spa.bootstrap.bootstrap(spa.reps)):
        star = pos[0].mean(0)
        for j, mean in enumerate(means):
            best[i, j] = np.max(star - mean)
    observed = np.max(spa._loss_diff.mean(axis=0))
    lower, consistent, upper = (best > observed).mean(axis=0)
    return float(lower), float(consistent), float(upper)


# ---------------------------------------------------------------- one-call summary

def _f(x) -> float | None:
    """Plain float, None for NaN (so the summary dumps with json.dumps(allow_nan=False)); inf kept as None too."""
    x = float(x)
    return x if math.isfinite(x) else None


def summary(bucket_pnl: np.ndarray, *, alpha: float = 0.05, spa_top: int | None = None,
            spa_reps: int = 1000, seed: int = 0, n_eff_method: str = "entropy") -> dict:
    """All statistics of this module for a [N, B] bucket-PnL matrix, as a JSON-able dict.

    spa_top=None runs SPA on all usable rows (exact; slow for ~1e5 rows, see the module
    docstring); an int pre-selects the top-Sharpe rows and makes the SPA p-value
    anti-conservative. Plain ints / floats; None where a value is undefined (no usable row,
    Sharpe not above the benchmark for MinTRL, ...). `best_index` indexes the original rows. Sharpe and its SEs
    are per bucket (not annualised); min_trl is in buckets.
    """
    X = np.asarray(bucket_pnl, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"bucket_pnl must be [N, B], got shape {X.shape}")
    N, B = X.shape
    mask = usable_rows(X)
    idx = np.flatnonzero(mask)
    out: dict = {
        "n_trials": int(N), "n_usable": int(idx.size), "n_buckets": int(B), "alpha": float(alpha),
        "n_effective": None, "n_effective_method": n_eff_method,
        "n_effective_cap": int(min(idx.size, max(B - 1, 1))) if idx.size else 0,
        "best_index": None, "best_sharpe": None, "best_skew": None, "best_kurtosis": None,
        "best_autocorr1": None,
        "sharpe_se_iid": None, "sharpe_se_mertens": None, "sharpe_se_lo_ar1": None,
        "sharpe_se_lo_hac": None,
        "sr_variance": None, "sr0_n_trials": None, "sr0_n_effective": None,
        "dsr_n_trials": None, "dsr_n_effective": None, "min_trl": None,
        "spa_pvalue_lower": None, "spa_pvalue_consistent": None, "spa_pvalue_upper": None,
        "spa_n_models": 0, "spa_preselected": False, "spa_top": None if spa_top is None else int(spa_top),
        "spa_reps": int(spa_reps), "seed": int(seed),
    }
    if idx.size == 0:
        return out
    lam, n = correlation_eigenvalues(X)
    n_eff = n_effective_from_eigenvalues(lam, n, n_eff_method)
    srs = validation.sharpe(X[idx], axis=1)
    j = int(np.argmax(srs))
    best = int(idx[j])
    r = X[best]
    sr, sk, ku = _moments(r)
    rho = float(np.clip(autocorr1(r), -0.99, 0.99))
    var = float(np.var(srs, ddof=1)) if srs.size > 1 else 0.0
    out.update({
        "n_effective": _f(n_eff),
        "best_index": best, "best_sharpe": _f(sr), "best_skew": _f(sk), "best_kurtosis": _f(ku),
        "best_autocorr1": _f(rho),
        "sharpe_se_iid": _f(sharpe_se(sr, B)),
        "sharpe_se_mertens": _f(sharpe_se(sr, B, sk, ku)),
        "sharpe_se_lo_ar1": _f(sharpe_se(sr, B, sk, ku, rho)),
        "sharpe_se_lo_hac": _f(sharpe_se_hac(r)),
        "sr_variance": _f(var),
        "sr0_n_trials": _f(expected_max_sharpe(N, var)),
        "sr0_n_effective": _f(expected_max_sharpe(n_eff, var)),
        "dsr_n_trials": _f(deflated_sharpe(sr, B, sk, ku, N, var)),
        "dsr_n_effective": _f(deflated_sharpe(sr, B, sk, ku, n_eff, var)),
        "min_trl": _f(min_track_record_length(sr, 0.0, sk, ku, alpha)),
    })
    spa = spa_test(X, top=spa_top, reps=spa_reps, seed=seed)
    out.update({
        "spa_pvalue_lower": _f(spa["lower"]), "spa_pvalue_consistent": _f(spa["consistent"]),
        "spa_pvalue_upper": _f(spa["upper"]), "spa_n_models": spa["n_models"],
        "spa_preselected": spa["preselected"],
    })
    return out
