"""Index layout of the synthetic generator's numba state: the parameter vector (P_*), the float
state (F_*) and the int state (I_*). Shared by synth_book, synth_engine and synth_params."""
from __future__ import annotations

# ---- parameter vector indices (filled by synth_params.SynthParams.vector) ----
P_MU_MO = 0          # baseline market-order rate per side, 1/s
P_A_SELF_F = 1       # fast kernel: self excitation (jump in intensity per event, 1/s)
P_A_CROSS_F = 2
P_BETA_F = 3         # fast kernel decay, 1/s
P_A_SELF_S = 4       # slow kernel
P_A_CROSS_S = 5
P_BETA_S = 6
P_MO_LN_MU = 7       # ln(median market-order size in lots)
P_MO_LN_SIG = 8
P_MO_MAX = 9         # lots
P_MIN_LOTS = 10      # minimum order size in lots (exchange minimum notional)
P_LAM_TOUCH = 11     # touch limit orders per side, 1/s (baseline)
P_A_TOUCH = 12       # touch-limit excitation per market order (either side), uses fast kernel
P_TOUCH_GEOM = 13    # touch limits not at d = 1: d = 1 + Geometric(p) ticks
P_TL_LN_MU = 14      # touch-limit size, ln lots
P_TL_LN_SIG = 15
P_LAM_DEEP = 16      # deep limit orders per side, 1/s
P_D_MAX = 17         # deep placement: uniform distance 1..d_max ticks
P_DL_LN_MU = 18
P_DL_LN_SIG = 19
P_DELTA = 20         # deep cancel rate per resting order, 1/s
P_LAM_TC = 21        # level pulls per side, 1/s (baseline)
P_A_TC = 22          # pull excitation per market order hitting that side (fast kernel)
P_SIG_F = 23         # fair value volatility, ticks / sqrt(s)
P_K_F = 24           # fair-value pull on order-flow imbalance (max |a| from it)
P_L_F = 25           # fair-value distance scale, ticks
P_W_META = 26        # meta-order weight on imbalance
P_META_ALPHA = 27    # Pareto tail index of meta-order durations
P_META_MIN = 28      # minimum meta-order duration, s
P_TC_BIAS = 29       # level pulls: ask side x exp(k z), bid side x exp(-k z), z = (fair - mid) / L
P_SAMPLE_S = 30      # row interval, s
P_DEPTH = 31
P_FILL_GEOM = 32     # maker orders filled at a level that is not emptied: Geometric(p), capped
P_FILL_SIG = 33      # lognormal sigma of the weights splitting a fill over maker orders
P_FAIR_ACT = 34      # 1: fair-value steps scale with sqrt(market-order activity / its mean)
P_MO_MEAN = 35       # stationary market-order rate per side (for the activity ratio)
P_TOUCH_D1 = 36      # P(touch limit exactly 1 tick from the opposite best)
P_LAM_GAP = 37       # per side, while the spread is wider than one tick (queue-reactive refill)
P_LAM_NEAR = 38      # per side, distance 1 + Exp(d_near) ticks from the opposite best
P_D_NEAR = 39
P_MOVE = 40          # P(a gap refill moves the side's best level rather than adding an order)
P_DELTA_NEAR = 41    # extra cancel rate per order within near_range ticks of the best (not at it)
P_NEAR_RANGE = 42
P_GAP_TILT = 43      # gap refills: bid share (1 + tanh(k z)) / 2
P_A_PULL = 44        # pull self-excitation: intensity jump per pull on the same side
P_BETA_PULL = 45     # its decay, 1/s
P_VOL_TAU = 46       # log-volatility OU time scale, s
P_VOL_SD = 47        # its stationary standard deviation
P_KYLE = 48          # permanent impact: a market order moves the fair value by side * k * sqrt(q / median)
P_KYLE_CAP = 49      # cap on sqrt(q / median)
P_MO_SLIP = 50       # a market order walks at most this many ticks from the best it found
P_FAIR_MAXZ = 51     # |fair - mid| is clamped to this many fair_scale
P_N = 52

# ---- float state indices ----
F_T = 0              # current time, s since start
F_YBF = 1            # fast kernel state from buys
F_YSF = 2            # fast kernel state from sells
F_YBS = 3            # slow kernel, buys
F_YSS = 4            # slow kernel, sells
F_FAIR = 5           # latent fair value, ticks (absolute)
F_META_END = 6       # end time of the current meta-order
F_META_SIGN = 7
F_YPA = 8            # pull kernel state from ask-side pulls (quote-move cascades)
F_YPB = 9
F_LOGVOL = 10        # slow log-volatility factor of the fair value (OU)
F_N = 11

# ---- int state indices ----
I_BASE = 0           # absolute tick of array index 0
I_BB = 1             # best bid index (-1: empty side)
I_BA = 2             # best ask index (W: empty side)
I_SEQ = 3            # book events applied (the store's update id)
I_LAST_ROW_SEQ = 4
I_K = 5              # sample boundaries passed
I_NB = 6             # resting orders, bid side
I_NA = 7
I_RECENTRES = 8
I_DROPPED = 9       # trades lost to a full buffer (the driver raises if > 0)
I_N = 10
