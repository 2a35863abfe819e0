"""Parameters of the synthetic order-flow generator, with the calibrated defaults (docs/SYNTH.md).

`SynthParams` is a frozen dataclass: `validate()` rejects unusable values with an `InputError`
naming the field, `vector()` packs it for the numba engine, `to_dict()` goes into the store's
`source` attribute so a store records exactly how it was made.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from gpu_engine.data.synth import layout as E
from gpu_engine.errors import InputError


@dataclass(frozen=True)
class SynthParams:
    # instrument (Binance BTCUSDT spot)
    tick_size: float = 0.01
    lot_size: float = 1e-5
    min_notional: float = 5.0          # USDT; smallest order = ceil(min_notional / price / lot) lots
    depth: int = 20
    sample_ms: int = 100               # one row per 100 ms boundary with >= 1 book event (depth@100ms)
    warmup_s: float = 300.0            # simulated, not recorded, before the first row
    window_ticks: int = 1 << 18        # price window held in memory (recentred when needed)
    # market orders: bivariate Hawkes, two exponential kernels, rates in 1/s
    mu_mo: float = 0.25                # baseline per side
    alpha_self_fast: float = 7.0
    alpha_cross_fast: float = 0.5
    beta_fast: float = 10.0
    alpha_self_slow: float = 0.003
    alpha_cross_slow: float = 0.001
    beta_slow: float = 0.02
    mo_size_median: float = 0.003      # BTC, lognormal
    mo_size_sigma: float = 2.45
    mo_size_max: float = 10.0          # BTC
    mo_slip_ticks: int = 1500          # price protection: fills at most this far from the best, rest expires
    # limit orders
    lam_touch: float = 4.0             # per side baseline, at / just behind the opposite best - 1 tick
    alpha_touch: float = 10.0          # touch-limit intensity jump per market order (fast kernel)
    touch_d1_p: float = 0.95           # P(d = 1): the order sets or joins a one-tick spread
    touch_geom_p: float = 0.05         # otherwise d = 1 + Geometric(p) ticks from the opposite best
    touch_size_median: float = 0.35
    touch_size_sigma: float = 1.2
    lam_gap: float = 300.0             # per side while the spread is > 1 tick (side tilted by z, see gap_tilt)
    p_move: float = 0.8                # a gap refill moves the side's best level (quote move)
    lam_deep: float = 15.0             # per side, uniform in 1..d_max ticks from the opposite best
    d_max: int = 30000
    lam_near: float = 18.0             # per side, 1 + Exp(d_near) ticks from the opposite best
    d_near: float = 400.0
    deep_size_median: float = 0.003
    deep_size_sigma: float = 2.8
    # cancels
    delta: float = 0.01                # per resting order, 1/s (Santa Fe)
    delta_near: float = 0.5            # extra, per order within near_range ticks of the best (not at it)
    near_range: int = 2000
    lam_touch_cancel: float = 0.05     # per side: the whole best level pulled (a quote moved)
    alpha_touch_cancel: float = 2.0    # jump per market order hitting that side (fast kernel)
    alpha_pull: float = 7.0            # pull cascades: jump per pull on the same side
    beta_pull: float = 10.0            # their decay, 1/s (alpha_pull / beta_pull < 1)
    # trades: one per maker order filled
    fill_geom_p: float = 0.3           # maker orders filled at a level left standing: Geometric(p)
    fill_sigma: float = 1.5            # lognormal weights splitting a fill over its maker orders
    # latent fair value and meta-orders (order-flow imbalance a in [-0.95, 0.95])
    fair_sigma: float = 1000.0          # ticks / sqrt(s), random walk
    vol_tau: float = 300.0             # s: slow log-volatility (OU) of the fair value, time scale
    vol_sd: float = 0.8                # its sd (variance factor exp(2v - 2 sd^2)); v clipped to +-2 sd
    kyle_ticks: float = 10.0           # permanent impact: a market order moves fair by side * k * sqrt(q / median q)
    kyle_cap: float = 10.0             # cap on sqrt(q / median q)
    fair_activity: int = 1             # 1: steps scale with sqrt(market-order intensity / its mean)
    fair_pull: float = 0.3             # a += fair_pull * tanh((fair - mid) / fair_scale)
    fair_scale: float = 200.0          # ticks
    fair_max_z: float = 10.0           # |fair - mid| clamped to fair_max_z * fair_scale
    meta_weight: float = 0.3           # a += meta_weight * meta_sign
    meta_alpha: float = 1.5            # Pareto tail of meta-order durations (sign ACF ~ lag^-(alpha-1))
    meta_min_s: float = 2.0
    touch_cancel_bias: float = 2.0     # level pulls: asks x exp(k z), bids x exp(-k z), z = (fair - mid) / fair_scale
    gap_tilt: float = 2.0              # gap refills: bid share (1 + tanh(k z)) / 2

    # ------------------------------------------------------------------
    def branching_ratio(self) -> float:
        """Spectral radius of the market-order Hawkes kernel matrix (must be < 1)."""
        n_f = (self.alpha_self_fast + self.alpha_cross_fast) / self.beta_fast
        n_s = (self.alpha_self_slow + self.alpha_cross_slow) / self.beta_slow
        return n_f + n_s  # symmetric 2x2 kernels: largest eigenvalue = self + cross

    def mean_mo_rate(self) -> float:
        """Stationary market orders per second, both sides together (imbalance ignored)."""
        return 2.0 * self.mu_mo / (1.0 - self.branching_ratio())

    def validate(self) -> "SynthParams":
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"synth parameter {f.name!r}: {v!r} is not a finite number")
            if v < 0:
                raise InputError(f"synth parameter {f.name!r}: {v!r} is negative")
        positive = ("tick_size", "lot_size", "depth", "sample_ms", "beta_fast", "beta_slow", "beta_pull", "vol_tau",
                    "mo_size_median", "mo_size_max", "touch_size_median", "deep_size_median",
                    "touch_geom_p", "fill_geom_p", "d_max", "d_near", "fair_scale", "meta_alpha", "meta_min_s", "mu_mo")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"synth parameter {name!r}: must be > 0")
        inv = 1.0 / self.tick_size
        if abs(inv - round(inv)) > 1e-9:
            raise InputError(f"synth parameter 'tick_size': 1/tick_size must be an integer, got {self.tick_size}")
        for name in ("touch_geom_p", "touch_d1_p", "fill_geom_p", "p_move"):
            if getattr(self, name) > 1:
                raise InputError(f"synth parameter {name!r}: a probability, must be <= 1")
        n = self.branching_ratio()
        if not n < 1:
            raise InputError(f"synth parameters: Hawkes branching ratio {n:.3f} must be < 1")
        if not self.alpha_pull / self.beta_pull < 1:
            raise InputError("synth parameters: pull branching ratio alpha_pull / beta_pull must be < 1")
        w = self.window_ticks
        if w & (w - 1) or w < 1 << 12:
            raise InputError("synth parameter 'window_ticks': must be a power of two >= 4096")
        if self.d_max + 64 >= w // 8:
            raise InputError("synth parameter 'd_max': must be below window_ticks / 8 - 64")
        return self

    def ticks_per_unit(self) -> int:
        return int(round(1.0 / self.tick_size))

    def to_lots(self, btc: float) -> float:
        return btc / self.lot_size

    def vector(self, price: float) -> np.ndarray:
        """The engine's parameter vector for a run whose price level is `price`."""
        p = np.zeros(E.P_N, np.float64)
        p[E.P_MU_MO] = self.mu_mo
        p[E.P_A_SELF_F] = self.alpha_self_fast
        p[E.P_A_CROSS_F] = self.alpha_cross_fast
        p[E.P_BETA_F] = self.beta_fast
        p[E.P_A_SELF_S] = self.alpha_self_slow
        p[E.P_A_CROSS_S] = self.alpha_cross_slow
        p[E.P_BETA_S] = self.beta_slow
        p[E.P_MO_LN_MU] = math.log(self.to_lots(self.mo_size_median))
        p[E.P_MO_LN_SIG] = self.mo_size_sigma
        p[E.P_MO_MAX] = round(self.to_lots(self.mo_size_max))
        p[E.P_MIN_LOTS] = max(1.0, math.ceil(self.min_notional / price / self.lot_size - 1e-9))
        p[E.P_LAM_TOUCH] = self.lam_touch
        p[E.P_A_TOUCH] = self.alpha_touch
        p[E.P_TOUCH_GEOM] = self.touch_geom_p
        p[E.P_TL_LN_MU] = math.log(self.to_lots(self.touch_size_median))
        p[E.P_TL_LN_SIG] = self.touch_size_sigma
        p[E.P_LAM_DEEP] = self.lam_deep
        p[E.P_D_MAX] = self.d_max
        p[E.P_DL_LN_MU] = math.log(self.to_lots(self.deep_size_median))
        p[E.P_DL_LN_SIG] = self.deep_size_sigma
        p[E.P_DELTA] = self.delta
        p[E.P_LAM_TC] = self.lam_touch_cancel
        p[E.P_A_TC] = self.alpha_touch_cancel
        p[E.P_SIG_F] = self.fair_sigma
        p[E.P_K_F] = self.fair_pull
        p[E.P_L_F] = self.fair_scale
        p[E.P_W_META] = self.meta_weight
        p[E.P_META_ALPHA] = self.meta_alpha
        p[E.P_META_MIN] = self.meta_min_s
        p[E.P_TC_BIAS] = self.touch_cancel_bias
        p[E.P_SAMPLE_S] = self.sample_ms / 1000.0
        p[E.P_DEPTH] = self.depth
        p[E.P_FILL_GEOM] = self.fill_geom_p
        p[E.P_FILL_SIG] = self.fill_sigma
        p[E.P_FAIR_ACT] = self.fair_activity
        p[E.P_MO_MEAN] = self.mean_mo_rate() / 2.0
        p[E.P_TOUCH_D1] = self.touch_d1_p
        p[E.P_LAM_GAP] = self.lam_gap
        p[E.P_LAM_NEAR] = self.lam_near
        p[E.P_D_NEAR] = self.d_near
        p[E.P_MOVE] = self.p_move
        p[E.P_DELTA_NEAR] = self.delta_near
        p[E.P_NEAR_RANGE] = self.near_range
        p[E.P_GAP_TILT] = self.gap_tilt
        p[E.P_A_PULL] = self.alpha_pull
        p[E.P_BETA_PULL] = self.beta_pull
        p[E.P_VOL_TAU] = self.vol_tau
        p[E.P_VOL_SD] = self.vol_sd
        p[E.P_KYLE] = self.kyle_ticks
        p[E.P_KYLE_CAP] = self.kyle_cap
        p[E.P_MO_SLIP] = self.mo_slip_ticks
        p[E.P_FAIR_MAXZ] = self.fair_max_z
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "SynthParams":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InputError(f"synth parameters: unknown field(s) {sorted(unknown)}")
        return replace(self, **changes)


DEFAULT = SynthParams()
