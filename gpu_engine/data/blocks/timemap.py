"""Height -> time map for the block dataset: real anchors, daily block counts, extrapolation.

The map is piecewise linear in height between anchors (height, unix time):

* exact anchors: the genesis block and the four halvings' header times (block explorers' header timestamps);
  these are always kept, so those heights map to their real header times exactly;
* day-level anchors from news reports (100k, 500k, 600k, 700k, 800k, 900k): placed at the
  middle of the stated UTC day (12:00), or at 00:00 between the two days of a two-day
  report ("2017-12-18/19" -> 2017-12-19 00:00); uncertainty +-12 h (+-24 h for two-day
  reports). Dropped where daily block counts cover them (the counts are more precise);
* daily block counts (`--chain-stats`): with C(D) = blocks whose header falls before day D,
  the boundary D 00:00 UTC becomes the anchor (C(D) - 0.5, D 00:00), so a day's blocks
  are spread evenly inside it. The counted heights are reconciled with the exact anchors:
  at each exact anchor inside the counted span the residual r = h_exact - h_counts(t_exact)
  is measured (a block or two), interpolated linearly in time between exact anchors (held
  constant beyond the outer ones) and added to the counted heights. A run of zero-count
  days keeps its first and last boundary, so a multi-day gap (2009-01-03 -> 2009-01-09)
  stays a gap. A count span that does not start at genesis takes its height offset from
  the anchor map at its first day (then reconciled as above if an exact anchor lies inside
  it; a short span with no exact anchor inherits the anchor map's error at its start);
  where several count files cover a day, the first file given wins;
* fetched block headers (`python -m gpu_engine.data blocks --source ...`): the dataset takes
  the real header time of every fetched block; the map only fills the heights in between.
  Each run of fetched heights contributes two anchors that win over every other kind: its
  first height at the run's earliest header time and its last height at the run's latest
  (`headers.run_anchors`), so the modelled times next to a run join it without running
  backwards past a real block. Anchors inside a run, or that would not increase strictly
  against these, are dropped;
* past the last anchor: extrapolated at the mean spacing between the last anchor and the
  latest anchor at least 50,000 blocks before it ("recent mean spacing").

Anchors are checked to be strictly increasing in both height and time (an exact anchor
wins over a conflicting count anchor), so the map is non-decreasing after rounding to
whole seconds. Header timestamps themselves are not monotone; the map is a smooth
envelope, not the headers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from gpu_engine.data.blocks.sources import DailySeries, day_iso, merge_daily

GENESIS_TIME = 1231006505

# (height, unix time, source): header timestamps as block explorers show them
EXACT_ANCHORS = (
    (0, 1231006505, "genesis header 2009-01-03 18:15:05 UTC; bitcoin.stackexchange q/91416"),
    (210_000, 1354116278, "halving 1 header 2012-11-28 15:24:38 UTC; BraveNewCoin halving page"),
    (420_000, 1468082773, "halving 2 header 2016-07-09 16:46:13 UTC"),
    (630_000, 1589225023, "halving 3 header 2020-05-11 19:23:43 UTC (public code fixtures)"),
    (840_000, 1713571767, "halving 4 header 2024-04-20 00:09:27 UTC (mempool-style API fixtures)"),
)

# (height, first UTC day, last UTC day, source): day-level news reports
DAY_ANCHORS = (
    (100_000, "2010-12-29", "2010-12-29", "news report: block 100,000 on 2010-12-29"),
    (500_000, "2017-12-18", "2017-12-19", "news report: block 500,000 on 2017-12-18/19"),
    (600_000, "2019-10-18", "2019-10-19", "news report: block 600,000 on 2019-10-18/19"),
    (700_000, "2021-09-11", "2021-09-11", "financialexpress.com, 2021-09-12"),
    (800_000, "2023-07-24", "2023-07-24", "usethebitcoin.com and others"),
    (900_000, "2025-06-06", "2025-06-06", "tradersunion.com; u.today via itiger.com"),
)

EXTRAPOLATION_MIN_BLOCKS = 50_000
ZERO_RUN_NUDGE = 1e-3  # height step that keeps a zero-count run's last boundary distinct


def _unix_day(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp())


def day_anchor_time(first: str, last: str) -> int:
    """Middle of the reported UTC day range [first 00:00, last 24:00)."""
    return (_unix_day(first) + _unix_day(last) + 86400) // 2


@dataclass
class TimeMap:
    heights: np.ndarray  # float64, strictly increasing
    times: np.ndarray  # float64, strictly increasing
    spacing_s: float  # extrapolation spacing past the last anchor
    info: dict = field(default_factory=dict)

    def __call__(self, h) -> np.ndarray:
        """Unix seconds (int64, rounded) of heights `h` (array-like)."""
        h = np.asarray(h, dtype=np.float64)
        t = np.interp(h, self.heights, self.times)
        beyond = h > self.heights[-1]
        if beyond.any():
            t = np.where(beyond, self.times[-1] + (h - self.heights[-1]) * self.spacing_s, t)
        return np.rint(t).astype(np.int64)

    def count_before(self, unix_time: float) -> int:
        """How many heights 0, 1, ... map to a time <= unix_time."""
        if unix_time < self.times[0]:
            guess = 0
        elif unix_time <= self.times[-1]:
            guess = float(np.interp(unix_time, self.times, self.heights))
        else:
            guess = self.heights[-1] + (unix_time - self.times[-1]) / self.spacing_s
        n = max(int(np.floor(guess)) - 2, 0)
        probe = self(np.arange(n, n + 6))
        return n + int(np.searchsorted(probe, unix_time, side="right"))


def _count_anchors(counts: list[DailySeries], base_h, base_t, exact_h, exact_t):
    """Day-boundary anchors from daily counts, reconciled with the exact anchors.

    Returns a list of (time, height) per contiguous counted span, and coverage info.
    """
    day, cnt = merge_daily(counts, fill_zero=True)
    if day.size == 0:
        return [], []
    splits = np.nonzero(np.diff(day) != 1)[0] + 1
    spans, info = [], []
    for d, c in zip(np.split(day, splits), np.split(cnt, splits)):
        t_b = np.concatenate([d * 86400, [(d[-1] + 1) * 86400]]).astype(np.float64)
        cum = np.concatenate([[0.0], np.cumsum(c)])
        gday = (GENESIS_TIME // 86400)
        if d[0] <= gday:
            offset = 0.0  # counted from genesis (days before it hold no block)
        else:
            offset = float(np.interp(t_b[0], base_t, base_h)) + 0.5
        h_b = offset + cum - 0.5
        inside = (exact_t >= t_b[0]) & (exact_t <= t_b[-1])
        if inside.any():
            et, eh = exact_t[inside], exact_h[inside]
            resid = eh - np.interp(et, t_b, h_b)
            h_b = h_b + np.interp(t_b, et, resid)
            resid_list = [round(float(r), 3) for r in resid]
        else:
            resid_list = []
        spans.append((t_b, h_b))
        info.append({"first_day": day_iso(d[0]), "last_day": day_iso(d[-1]),
                     "heights": [max(int(np.ceil(h_b[0])), 0), int(np.floor(h_b[-1]))],
                     "residuals_at_exact_anchors_blocks": resid_list})
    return spans, info


def _clean(points):
    """points: (time, height, exact) sorted by time -> strictly increasing anchors."""
    kept: list[list] = []  # [time, height, exact, nudged]
    for t, h, exact in points:
        if not kept:
            kept.append([t, h, exact, False])
            continue
        pt, ph, pexact, pnudged = kept[-1]
        if t <= pt:
            if exact and not pexact:
                kept.pop()
                kept.append([t, h, exact, False])
            continue
        if h > ph + 10 * ZERO_RUN_NUDGE:
            kept.append([t, h, exact, False])
        elif abs(h - ph) <= 10 * ZERO_RUN_NUDGE and not exact:
            # zero-count run: keep the run's first and last boundary
            if pnudged:
                kept[-1][0] = t
            else:
                kept.append([t, ph + ZERO_RUN_NUDGE, False, True])
        elif exact:
            while kept and not kept[-1][2] and kept[-1][1] >= h:
                kept.pop()
            kept.append([t, h, exact, False])
        # else: a count anchor below an earlier one -> dropped
    arr = np.asarray([(k[0], k[1]) for k in kept], dtype=np.float64)
    return arr[:, 1], arr[:, 0]


def _with_fetched(heights, times, fetched):
    """Anchors (heights, times) merged with the fetched runs' anchors, which win (see the module doc)."""
    fh, ft = [], []
    for a, ta, b, tb in sorted(fetched):
        fh.append(float(a)); ft.append(float(ta))
        if b > a:
            fh.append(float(b)); ft.append(float(max(tb, ta + 1)))
    fh, ft = np.asarray(fh), np.asarray(ft)
    # the fetched anchors themselves: strictly increasing in both (drop a run end that is not)
    keep = [0]
    for i in range(1, fh.size):
        if fh[i] > fh[keep[-1]] and ft[i] > ft[keep[-1]]:
            keep.append(i)
    fh, ft = fh[keep], ft[keep]
    ok = np.ones(heights.size, dtype=bool)
    for a, _, b, _ in fetched:
        ok &= ~((heights >= a) & (heights <= b))
    j = np.searchsorted(fh, heights)  # fetched anchors above each base anchor
    below_ok = (j == 0) | (ft[np.maximum(j - 1, 0)] < times)
    above_ok = (j == fh.size) | (ft[np.minimum(j, fh.size - 1)] > times)
    exact_h = fh[np.minimum(j, fh.size - 1)] == heights
    ok &= below_ok & above_ok & ~exact_h
    h = np.concatenate([heights[ok], fh])
    t = np.concatenate([times[ok], ft])
    order = np.argsort(h, kind="stable")
    return h[order], t[order], int((~ok).sum())


def build_time_map(chain_stats: list[DailySeries] = (), fetched=()) -> TimeMap:
    """The height -> time map. `fetched`: (first height, earliest time, last height, latest time)
    per run of fetched headers (`headers.run_anchors`); they win over every other anchor."""
    exact_h = np.array([a[0] for a in EXACT_ANCHORS], dtype=np.float64)
    exact_t = np.array([a[1] for a in EXACT_ANCHORS], dtype=np.float64)
    day_h = np.array([a[0] for a in DAY_ANCHORS], dtype=np.float64)
    day_t = np.array([day_anchor_time(a[1], a[2]) for a in DAY_ANCHORS], dtype=np.float64)
    order = np.argsort(np.concatenate([exact_h, day_h]), kind="stable")
    base_h = np.concatenate([exact_h, day_h])[order]
    base_t = np.concatenate([exact_t, day_t])[order]

    spans, span_info = _count_anchors(list(chain_stats), base_h, base_t, exact_h, exact_t)
    points = [(t, h, True) for h, t in zip(exact_h, exact_t)]
    used_day = []
    for h, t, a in zip(day_h, day_t, DAY_ANCHORS):
        if any(sp[0][0] <= t <= sp[0][-1] for sp in spans):
            continue  # covered by daily counts
        points.append((t, h, False))
        used_day.append(a)
    for t_b, h_b in spans:
        points.extend(zip(t_b.tolist(), h_b.tolist(), [False] * t_b.size))
    points.sort(key=lambda p: (p[0], not p[2]))
    heights, times = _clean(points)
    dropped_for_fetched = 0
    fetched = list(fetched)
    if fetched:
        heights, times, dropped_for_fetched = _with_fetched(heights, times, fetched)

    last_h, last_t = heights[-1], times[-1]
    prev = np.nonzero(heights <= last_h - EXTRAPOLATION_MIN_BLOCKS)[0]
    j = prev[-1] if prev.size else 0
    spacing = float((last_t - times[j]) / (last_h - heights[j])) if last_h > heights[j] else 600.0

    info = {
        "method": "piecewise-linear interpolation in height between anchors; rounded to whole seconds",
        "exact_anchors": [{"height": h, "time": t, "source": s} for h, t, s in EXACT_ANCHORS],
        "day_anchors_used": [{"height": h, "time": day_anchor_time(a, b), "days": f"{a}/{b}" if a != b else a,
                              "placed_at": "middle of the reported UTC day range", "source": s}
                             for h, a, b, s in used_day],
        "daily_counts": span_info,
        "extrapolation": {"after_height": float(last_h), "after_time": float(last_t), "spacing_s": spacing,
                          "rule": f"mean spacing from the latest anchor at least {EXTRAPOLATION_MIN_BLOCKS} "
                                  "blocks before the last one"},
        "anchor_count": int(heights.size),
    }
    if fetched:
        info["fetched_runs"] = {
            "runs": len(fetched),
            "rule": "each run of fetched heights anchors the map at (first height, earliest header time of the "
                    "run) and (last height, latest header time); other anchors inside a run or not strictly "
                    "increasing against these are dropped",
            "anchors_dropped": dropped_for_fetched,
        }
    return TimeMap(heights, times, spacing, info)
