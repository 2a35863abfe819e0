"""Queue position models of a resting maker order (rules v2), as scalar numba functions.

Like strategy.py, every function here is plain scalar numba code (`@numba.njit(inline="always")`,
but queue_prob, a called function) that both kernels use (numba-cuda compiles it for the GPU)
and whose plain-Python twin runs under the CUDA simulator; strategy.py calls them from the rules of a live maker order.
The models are hftbacktest's (`models/queue.rs`): `RiskAdverseQueueModel` and
`ProbQueueModel` with `PowerProbQueueFunc` (f(x) = x^n) or `LogProbQueueFunc`
(f(x) = ln(1 + x)).

State of one order: `qa` (queue ahead: the quantity in front of the order at its price;
+inf = unknown, i.e. the price lay beyond the deepest displayed level), `prev` (the last
known displayed size at the order's price; +inf = unknown) and `cum` (the quantity traded
at the order's price since the last depth update, which the probabilistic models subtract
from a depth decrease so that a trade is not counted twice). Model codes are
`enums.QUEUE_RISK_AVERSE`, `QUEUE_POWER` and `QUEUE_LOG`; `n` is the power exponent.
"""
from __future__ import annotations

import math

import numba

from gpu_engine.enums import QUEUE_POWER, QUEUE_RISK_AVERSE

INF = math.inf

inline = numba.njit(inline="always")


@inline
def queue_arrive(size):
    """(qa, prev, cum) when the order arrives: the displayed size at its price (0 when the
    price is inside the displayed range without a level or better than the side's best,
    +inf = unknown when it lies beyond the deepest displayed level or nothing is displayed)."""
    return size, size, 0.0


@inline
def queue_trade(qa, cum, qty):
    """A trade of `qty` at the order's own price: the queue ahead shrinks by it (unknown stays
    unknown) and the probabilistic models remember it. Returns (qa, cum)."""
    return qa - qty, cum + qty


@inline
def queue_f(x, model, n):
    """The probability weight f(x): x^n (power) or ln(1 + x) (log)."""
    if model == QUEUE_POWER:
        return x ** n
    return math.log1p(x)  # ln(1 + x), as the oracle computes it (more exact near 0)


@numba.njit(nogil=True)
def queue_prob(front, back, model, n):
    """f(back) / (f(back) + f(front)): the share of a depth decrease that happened behind the
    order; 1 when the denominator is 0 (or the ratio is not a number, inf / inf).

    Called, not inlined: queue_depth is inlined at two places of the rules (a resting order's
    tick and the whole order of work), and this is its one costly part (pow, log1p), run only
    when the depth fell by more than traded; one compiled copy keeps the kernels' compile
    time and code size down."""
    fb = queue_f(back, model, n)
    den = fb + queue_f(front, model, n)
    if den == 0.0:
        return 1.0
    prob = fb / den
    if prob != prob:
        return 1.0
    return prob


@inline
def queue_depth(qa, prev, cum, new, model, n):
    """The depth at the order's price is now `new` (the last known was `prev`).

    risk_averse: qa = min(qa, new). power / log: chg = prev - new - cum (cum reset to 0);
    if chg < 0, qa = min(qa, new); else with front = qa and back = prev - front,
    prob = f(back) / (f(back) + f(front)) and
    qa = min(front - (1 - prob) chg + min(back - prob chg, 0), new).
    The estimate is never below 0. An unknown `new` skips the update (nothing changes); an
    unknown `prev` gives min(qa, new) and keeps cum. Returns (qa, prev, cum).
    """
    if not new < INF:
        return qa, prev, cum
    if model == QUEUE_RISK_AVERSE or not prev < INF:
        # risk averse; or an unknown previous size: cum is kept (docs/RULES.md: the text resets
        # it only with chg; keeping it under-counts the next decrease, the conservative side)
        return min(qa, new), new, cum
    chg = prev - new - cum
    if chg <= 0.0:
        # chg == 0 (no change but what traded): the formula gives front - 0 + min(back, 0) =
        # front (back >= 0), so min(qa, new) without the two weights
        return min(qa, new), new, 0.0
    front = qa
    back = prev - front
    prob = queue_prob(front, back, model, n)
    est = min(front - (1.0 - prob) * chg + min(back - prob * chg, 0.0), new)
    # never below 0 (docs/RULES.md): nothing is ahead of less than nobody, and a negative
    # estimate would let a later trade at the price fill more than its own quantity
    return max(est, 0.0), new, 0.0


QUEUE_FUNCTIONS = ("queue_arrive", "queue_trade", "queue_f", "queue_prob", "queue_depth")
