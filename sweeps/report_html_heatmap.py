"""The heatmap section of the HTML report (sweeps/report_html.py): any two parameters on the axes,
each other parameter either on "any" (aggregated over: median or max) or fixed at one of its values.

What the page embeds (`<script type="application/json" id="heat-data">`), aggregated in the
browser by a plain script (`HEAT_JS`, no server, no library but plotly):

- per parameter swept by the cube, per embedded configuration, its cell code on that parameter's
  axis (uint8, base64). Numeric parameters with more than MAX_BINS distinct finite values are
  binned into at most MAX_BINS bins of about equal configuration counts (a value never straddles
  two bins; each bin is labelled by the range of the values it holds, "[lo, hi]"), plus one cell
  per non-finite value (inf, -inf, NaN "-"); other parameters (strings) keep up to
  MAX_CATEGORIES values (beyond: the commonest, then "(other)");
- per metric offered (HEAT_METRICS, and `maker_fill_ratio` when the run posted maker orders), per
  embedded configuration, its value (float32, base64; NaN = undefined);
- the embedded configurations are all of them when they fit HEAT_MAX_BYTES (and HEAT_MAX_ROWS);
  beyond that the top HEAT_TOP_ROWS by the page's ranking (`inspect.rank`: configurations that
  trade first, then the in-sample objective) followed by a seeded random sample (seed 0) of the
  rest, and the page says so ("aggregated over N of M configurations: the top K and a random
  sample"). Then, and only then, the exact matrices of every axis pair with every other parameter
  on "any" (median / max over ALL configurations, float32) are embedded too, so the default view
  (and any view with nothing fixed) stays exact. A view with a parameter fixed is then estimated
  from the rows held and says so: each sampled configuration stands for (M - K) / (N - K)
  configurations and each top one for itself, so the cells show a weighted median (the top ones
  do not weigh more than their share of the population), estimated counts, and the max of the
  rows held.

Cells no configuration falls in are blank (null), never 0. The median of an even count is the
mean of the two middle values (as pandas and numpy); NaN metrics are skipped (no trades).
"""
from __future__ import annotations

import base64
import json

import numba
import numpy as np

MAX_BINS = 12                 # numeric parameters: cells per axis beyond which values are binned
MAX_CATEGORIES = 40           # string parameters: values kept (beyond: the commonest, then "(other)")
MAX_HEAT_PARAMS = 6           # axis choices: the first 6 swept parameters (15 pairs); all swept can be fixed
HEAT_METRICS = ("win_rate", "expectancy", "sharpe", "net_pnl", "trades", "max_drawdown")
HEAT_AGGS = ("median", "max")
HEAT_MAX_BYTES = 8_000_000    # embedded rows: codes (1 B each) + metrics (4 B each); ~10.7 MB as base64
HEAT_MAX_ROWS = 250_000
HEAT_TOP_ROWS = 50_000        # when capped: the top rows by the page's ranking, then a random sample
SAMPLE_SEED = 0
HOVER = "%{xaxis.title.text} %{x}<br>%{yaxis.title.text} %{y}<br>%{z:.4g}<extra></extra>"


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def unb64(s: str, dtype) -> np.ndarray:
    """Inverse of `b64` (tests read the page back with it)."""
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


# ------------------------------------------------------------------ axes

def axis_codes(v: np.ndarray, fmt) -> tuple[np.ndarray, list[str]]:
    """Per configuration its cell on this parameter's axis (uint8) and the axis labels.

    Numbers: <= MAX_BINS distinct finite values, one cell each (ascending); more, at most MAX_BINS
    bins of about equal counts by cumulative count over the sorted distinct values (so equal values
    share a bin), labelled "[lo, hi]" by the values they hold; then one cell each for inf, -inf and
    NaN ("-") where present. Anything else as strings: <= MAX_CATEGORIES values one cell each
    (sorted), more: the MAX_CATEGORIES - 1 commonest, then "(other)"."""
    if v.dtype.kind in "fiu":
        x = v.astype(np.float64)
        fin = np.isfinite(x)
        codes = np.zeros(x.size, np.int64)
        labels: list[str] = []
        if fin.any():
            u, inv, cnt = np.unique(x[fin], return_inverse=True, return_counts=True)
            if u.size <= MAX_BINS:
                codes[fin] = inv.reshape(-1)
                labels = [fmt(a) for a in u]
            else:
                mid = np.cumsum(cnt) - cnt / 2.0
                b = np.minimum((mid / cnt.sum() * MAX_BINS).astype(np.int64), MAX_BINS - 1)
                ub, bin_of_u = np.unique(b, return_inverse=True)  # bins in value order, none empty
                bin_of_u = bin_of_u.reshape(-1)
                codes[fin] = bin_of_u[inv.reshape(-1)]
                for k in range(ub.size):
                    members = u[bin_of_u == k]
                    lo, hi = members[0], members[-1]
                    labels.append(fmt(lo) if lo == hi else f"[{fmt(lo)}, {fmt(hi)}]")
        for label, sel in (("inf", x == np.inf), ("-inf", x == -np.inf), ("-", np.isnan(x))):
            if sel.any():
                codes[sel] = len(labels)
                labels.append(label)
        return codes.astype(np.uint8), labels
    s = v.astype(str)
    u, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    if u.size <= MAX_CATEGORIES:
        return inv.astype(np.uint8), [str(a) for a in u]
    keep = np.sort(np.argsort(-cnt, kind="stable")[: MAX_CATEGORIES - 1])
    remap = np.full(u.size, MAX_CATEGORIES - 1, np.int64)
    remap[keep] = np.arange(keep.size)
    return remap[inv].astype(np.uint8), [str(u[k]) for k in keep] + ["(other)"]


# ------------------------------------------------------------------ exact matrices (Python side)

@numba.njit(inline="always")
def _select(a, lo, hi, k):
    """Rearrange a[lo:hi] so that a[k] is its (k - lo)-th smallest, nothing larger before it and
    nothing smaller after it (Hoare partitions around a median of three; equal values split evenly,
    so many ties stay linear)."""
    hi -= 1
    while hi > lo:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]
        pivot = y if (x <= y <= z or z <= y <= x) else (x if (y <= x <= z or z <= x <= y) else z)
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@numba.njit(nogil=True, cache=True)
def _cell_stats(key, ncell, V, med, mx, cnt):
    """Per cell (key[i] in [0, ncell)): the configuration count, and per metric (column of V [n, nm])
    the median and the max of its non-NaN values (NaN where there is none). The rows are grouped by
    cell (a counting sort); each cell's values are copied out and partitioned around their middle.
    The median of an even count is the mean of the two middle values, as in numpy and pandas."""
    n, nm = V.shape
    off = np.zeros(ncell + 1, np.int64)
    for i in range(n):
        off[key[i] + 1] += 1
    big = 0
    for g in range(ncell):
        off[g + 1] += off[g]
        cnt[g] = off[g + 1] - off[g]
        big = max(big, cnt[g])
    pos = off[:ncell].copy()
    perm = np.empty(n, np.int64)
    for i in range(n):
        g = key[i]
        perm[pos[g]] = i
        pos[g] += 1
    buf = np.empty((nm, big))
    k = np.zeros(nm, np.int64)
    top = np.empty(nm)
    for g in range(ncell):
        k[:] = 0
        top[:] = -np.inf
        for t in range(off[g], off[g + 1]):
            i = perm[t]
            for m in range(nm):
                x = V[i, m]
                if x == x:
                    buf[m, k[m]] = x
                    k[m] += 1
                    if x > top[m]:
                        top[m] = x
        for m in range(nm):
            c = k[m]
            if c == 0:
                med[m, g] = np.nan
                mx[m, g] = np.nan
                continue
            mx[m, g] = top[m]
            b = buf[m]
            h = c // 2
            _select(b, 0, c, h)
            if c % 2 == 1:
                med[m, g] = b[h]
            else:
                below = b[0]
                for t in range(1, h):
                    if b[t] > below:
                        below = b[t]
                med[m, g] = (below + b[h]) / 2.0


def pair_stats(codes: dict[str, np.ndarray], nlabels: dict[str, int], pairs: list[tuple[str, str]],
               vals: dict[str, np.ndarray]) -> dict[str, dict]:
    """For each (x, y) pair: {metric: {"median": [ny, nx], "max": [ny, nx]}, "configurations": [ny, nx]}
    over every row given (NaN where no row, or no row with a defined value, falls in a cell). The
    pairs run in numba.get_num_threads() threads."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(vals)
    n = len(next(iter(codes.values())))
    V = np.empty((n, len(names)))
    for j, k in enumerate(names):
        V[:, j] = vals[k]

    def one(pair):
        x, y = pair
        nx, ny = nlabels[x], nlabels[y]
        key = codes[y].astype(np.int64) * nx + codes[x]
        med = np.empty((len(names), nx * ny))
        mx = np.empty((len(names), nx * ny))
        cnt = np.zeros(nx * ny, np.int64)
        _cell_stats(key, nx * ny, V, med, mx, cnt)
        cells = cnt.astype(np.float64)
        cells[cells == 0] = np.nan
        out = {name: {"median": med[j].reshape(ny, nx), "max": mx[j].reshape(ny, nx)} for j, name in enumerate(names)}
        out["configurations"] = cells.reshape(ny, nx)
        return out

    threads = max(1, min(numba.get_num_threads(), len(pairs)))
    if threads == 1:
        res = [one(pair) for pair in pairs]
    else:
        with ThreadPoolExecutor(threads) as ex:
            res = list(ex.map(one, pairs))
    return {f"{x}|{y}": r for (x, y), r in zip(pairs, res)}


# ------------------------------------------------------------------ which rows are embedded

def choose_rows(n: int, ranking: np.ndarray, bytes_per_row: int) -> tuple[np.ndarray | None, int]:
    """(rows to embed, or None for all of them; k, how many of them are the top ranked).

    All rows when they fit HEAT_MAX_BYTES and HEAT_MAX_ROWS; else the first k = HEAT_TOP_ROWS of
    `ranking` (ascending row order) followed by a seeded random sample of the rest (ascending),
    never more than the budget."""
    cap = int(min(HEAT_MAX_ROWS, HEAT_MAX_BYTES // max(bytes_per_row, 1)))
    if n <= cap:
        return None, 0
    k = min(HEAT_TOP_ROWS, cap // 2)
    top = np.asarray(ranking[:k], np.int64)
    rest = np.asarray(ranking[k:], np.int64)
    rng = np.random.default_rng(SAMPLE_SEED)
    sample = rest[rng.choice(rest.size, cap - k, replace=False)]
    return np.concatenate([np.sort(top), np.sort(sample)]), k


# ------------------------------------------------------------------ the section

def section(c, stage, fmt, note, fig_html, esc, script_json, Missing) -> str:
    """The heatmap section's HTML for the page context `c` (report_html._Ctx); helpers passed in by
    report_html (fmt, note, fig_html, esc, script_json) and its Missing exception."""
    import plotly.graph_objects as go

    swept = list(c.swept)
    axes = swept[:MAX_HEAT_PARAMS]
    if len(axes) < 2:
        raise Missing(f"a heatmap needs two swept parameters; this cube sweeps {len(swept)} "
                      f"({', '.join(swept) or 'none'})")
    from sweeps import inspect

    names = HEAT_METRICS + (("maker_fill_ratio",) if inspect.has_maker(c.m) else ())  # a run with maker orders
    metrics = [k for k in names if k in c.m]
    oos_share = float(c.has_oos.mean()) if c.n else 0.0
    if c.has_oos_vars and oos_share >= 0.5:
        metrics += [f"oos_{k}" for k in names if f"oos_{k}" in c.m]
    if not metrics:
        raise Missing("the cube has none of the metrics a heatmap shows")
    stage("heatmaps: axes")
    coded = {p: axis_codes(c.params[p], fmt) for p in swept}
    codes = {p: coded[p][0] for p in swept}
    labels = {p: coded[p][1] for p in swept}
    nlab = {p: len(labels[p]) for p in swept}
    vals = {k: np.asarray(c.m[k], dtype=np.float64) for k in metrics}
    bpr = len(swept) + 4 * len(metrics)
    rows, n_top = choose_rows(c.n, c.full_rank, bpr)
    sampled = rows is not None
    n_rows = c.n if rows is None else int(rows.size)
    emb_codes = {p: codes[p] if rows is None else codes[p][rows] for p in swept}
    emb_vals = {k: (vals[k] if rows is None else vals[k][rows]).astype("<f4") for k in metrics}
    px, py = axes[0], axes[1]
    metric0 = "win_rate" if "win_rate" in metrics else metrics[0]
    exact = None
    if sampled:
        pairs = [(axes[a], axes[b]) for a in range(len(axes)) for b in range(a + 1, len(axes))]
        stage(f"heatmaps: exact matrices over {len(pairs)} parameter pairs of {c.n} configurations")
        exact = pair_stats(codes, nlab, pairs, vals)
        z0 = exact[f"{px}|{py}"][metric0]["median"].astype(np.float32).astype(np.float64)
    else:
        # the same numbers the page's script computes from the embedded float32 values
        stage("heatmaps")
        one = pair_stats(codes, nlab, [(px, py)], {metric0: emb_vals[metric0].astype(np.float64)})
        z0 = one[f"{px}|{py}"][metric0]["median"]
    meta = {"params": axes, "fixable": swept, "labels": labels, "metrics": metrics + ["configurations"],
            "aggs": list(HEAT_AGGS), "n_total": int(c.n), "n_rows": n_rows, "n_top": int(n_top),
            "sampled": sampled, "by": c.by, "exact": exact is not None, "hover": HOVER,
            # rows [0, n_top) are the top ones, each standing for itself; the others, a random sample,
            # each stand for sample_weight configurations
            "sample_weight": (c.n - n_top) / max(n_rows - n_top, 1) if sampled else 1.0}
    blob = {"meta": meta, "codes": {p: b64(emb_codes[p]) for p in swept},
            "values": {k: b64(emb_vals[k]) for k in metrics}}
    if exact is not None:
        blob["exact"] = {key: {**{name: {g: b64(pair[name][g].astype("<f4")) for g in HEAT_AGGS}
                                  for name in metrics},
                               "configurations": b64(pair["configurations"].astype("<f4"))}
                         for key, pair in exact.items()}
    fig = go.Figure(go.Heatmap(z=np.where(np.isfinite(z0), z0, None).tolist(), x=labels[px], y=labels[py],
                               colorscale="Viridis", hoverongaps=False, colorbar={"title": {"text": metric0}},
                               hovertemplate=HOVER))
    fig.update_layout(template="plotly_white", height=520, margin={"l": 90, "r": 30, "t": 50, "b": 90},
                      title={"text": f"median in-sample {metric0}"},
                      xaxis={"title": {"text": px}, "type": "category"},
                      yaxis={"title": {"text": py}, "type": "category"})

    def sel(sid, name, opts, chosen, extra=""):
        return (f'<label>{esc(name)} <select id="{esc(sid)}"{extra}>'
                + "".join(f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(t)}</option>'
                          for v, t in opts)
                + "</select></label>")

    same = lambda opts: [(o, o) for o in opts]  # noqa: E731
    controls = ('<div class="controls">' + sel("heat-x", "x", same(axes), px) + sel("heat-y", "y", same(axes), py)
                + sel("heat-metric", "metric", same(meta["metrics"]), metric0)
                + sel("heat-agg", "agg", same(list(HEAT_AGGS)), "median")
                + '<span id="heat-msg" class="warn" hidden></span></div>')
    fixers = "".join(
        sel(f"heat-fix-{i}", p, [("any", "any")] + [(str(k), lab) for k, lab in enumerate(labels[p])], "any",
            f' data-param="{esc(p)}" class="heat-fix"')
        for i, p in enumerate(swept))
    controls += f'<div class="controls">other parameters: {fixers}</div>'
    kind_note = ("Grid cube: every configuration is one point of the grid."
                 if c.kind != "optimize" else
                 "Optimize cube: the configurations the search tried are scattered points; continuous "
                 "parameters are binned, so a cell holds the points that fall in it "
                 "(see the 'configurations' metric for how many).")
    if sampled:
        w = (c.n - n_top) / max(n_rows - n_top, 1)
        rows_note = (f"For speed and size the page holds {n_rows} of the {c.n} configurations: the top {n_top} "
                     f"by in-sample {c.by} (configurations that trade first, as in the table above) and a random "
                     f"sample (seed {SAMPLE_SEED}) of {n_rows - n_top} of the other {c.n - n_top}. With every other "
                     f"parameter on 'any' the cells are exact, over all {c.n} configurations. With a parameter "
                     f"fixed they are aggregated over {n_rows} of {c.n} configurations: the top {n_top} and a "
                     f"random sample, each sampled configuration standing for {w:.3g} (so the top ones do not "
                     "weigh more than their share): a weighted median, the max of those held, and estimated "
                     "counts; the title then says '(sample)'.")
    else:
        rows_note = f"The page holds all {c.n} configurations; every view is exact."
    text = (f"Aggregation: with every other parameter on 'any', each cell is the MEDIAN (or the MAX, with "
            f"'agg') of the metric over all configurations with those two parameter values, i.e. over every "
            f"value of the other parameters; fix another parameter at a value (or bin) to see that slice "
            f"only. {kind_note} Numeric parameters with more than {MAX_BINS} values are binned into at most "
            f"{MAX_BINS} bins of about equal counts, labelled [lo, hi] by the values they hold; string "
            f"parameters keep up to {MAX_CATEGORIES} values. Metrics without a prefix are in-sample; oos_ ones "
            "out of sample"
            + ("" if any(k.startswith("oos_") for k in metrics)
               else " (not offered here: out-of-sample figures exist only for a few configurations)")
            + ". Blank cells: no configuration there, or the metric is undefined for all of them (no trades). "
            + rows_note)
    if len(swept) > len(axes):
        text += (f" Axes: the first {MAX_HEAT_PARAMS} swept parameters; the other "
                 f"{len(swept) - len(axes)} can be fixed.")
    blob_text = script_json(json.dumps(blob, separators=(",", ":")))
    return (note(text) + controls
            + '<p class="note" id="heat-src"></p>'
            + fig_html(fig, "heatmap", "heatmap-plot")
            + f'<script type="application/json" id="heat-data">{blob_text}</script>'
            + HEAT_JS)


HEAT_JS = """<script>
(function(){
  var D = JSON.parse(document.getElementById('heat-data').textContent), M = D.meta;
  var cache = {};
  function bytes(s){ var b = atob(s), n = b.length, u = new Uint8Array(n); for (var i = 0; i < n; i++) u[i] = b.charCodeAt(i); return u; }
  function codes(p){ var k = 'c:' + p; return cache[k] || (cache[k] = bytes(D.codes[p])); }
  function values(m){ var k = 'v:' + m; return cache[k] || (cache[k] = new Float32Array(bytes(D.values[m]).buffer)); }
  function val(id){ return document.getElementById(id).value; }
  function grid(flat, nx, ny){  // row-major [ny][nx], NaN -> null (a blank cell)
    var z = [], r, j, v;
    for (r = 0; r < ny; r++) { var row = new Array(nx); for (j = 0; j < nx; j++) { v = flat[r * nx + j]; row[j] = (v === v && v !== null) ? v : null; } z.push(row); }
    return z;
  }
  function exact(x, y, m, g){  // the precomputed exact matrix, [ny][nx]
    var key = x + '|' + y, t = false;
    if (!(key in D.exact)) { key = y + '|' + x; t = true; }
    var e = D.exact[key], s = (m === 'configurations') ? e.configurations : e[m][g];
    var ck = 'e:' + key + ':' + m + ':' + g, f = cache[ck] || (cache[ck] = new Float32Array(bytes(s).buffer));
    var a = t ? y : x, b = t ? x : y, na = M.labels[a].length, nb = M.labels[b].length, z = grid(f, na, nb);
    return t ? z[0].map(function(_, j){ return z.map(function(r){ return r[j]; }); }) : z;
  }
  function fromRows(x, y, fixed, m, g){  // aggregate the embedded rows, [ny][nx]
    // Every row when the page holds them all. A sample (M.sampled: rows [0, n_top) the top ones, the
    // rest a random sample, each standing for M.sample_weight configurations): a weighted median,
    // weighted (estimated) counts, and the max of the rows held.
    var nx = M.labels[x].length, ny = M.labels[y].length, nc = nx * ny, n = M.n_rows;
    var cx = codes(x), cy = codes(y), v = (m === 'configurations') ? null : values(m);
    var fc = fixed.map(function(f){ return [codes(f[0]), f[1]]; }), nf = fc.length;
    var nt = M.sampled ? M.n_top : n, ws = M.sampled ? M.sample_weight : 1;
    var key = new Int32Array(n), ct = new Float64Array(nc), cs = new Float64Array(nc), out = new Array(nc).fill(null), i, k;
    for (i = 0; i < n; i++) {
      key[i] = -1;
      for (k = 0; k < nf; k++) if (fc[k][0][i] !== fc[k][1]) break;
      if (k < nf || (v && v[i] !== v[i])) continue;
      key[i] = cy[i] * nx + cx[i];
      if (i < nt) ct[key[i]]++; else cs[key[i]]++;
    }
    if (!v) { for (k = 0; k < nc; k++) if (ct[k] + cs[k] > 0) out[k] = M.sampled ? Math.round(ct[k] + ws * cs[k]) : ct[k]; }
    else if (g === 'max') {
      for (i = 0; i < n; i++) { k = key[i]; if (k >= 0 && (out[k] === null || v[i] > out[k])) out[k] = v[i]; }
    } else {
      // per cell, the top rows' values then the sample's, each part sorted
      var off = new Int32Array(nc + 1), mid = new Int32Array(nc), pt, ps, buf = new Float64Array(n);
      for (k = 0; k < nc; k++) { mid[k] = off[k] + ct[k]; off[k + 1] = mid[k] + cs[k]; }
      pt = off.slice(0, nc); ps = mid.slice(0);
      for (i = 0; i < n; i++) { k = key[i]; if (k >= 0) { if (i < nt) buf[pt[k]++] = v[i]; else buf[ps[k]++] = v[i]; } }
      for (k = 0; k < nc; k++) {
        var a = buf.subarray(off[k], mid[k]).sort(), b = buf.subarray(mid[k], off[k + 1]).sort();
        var na = a.length, nb = b.length, c = na + nb;
        if (c === 0) continue;
        if (!nb || !na && ws === 1) { var s = nb ? b : a; out[k] = (c % 2) ? s[(c - 1) / 2] : (s[c / 2 - 1] + s[c / 2]) / 2; continue; }
        out[k] = wmedian(a, b, ws);
      }
    }
    return grid(out, nx, ny);
  }
  function wmedian(a, b, wb){  // median of a (weight 1 each) and b (weight wb each), both sorted
    var na = a.length, nb = b.length, half = (na + wb * nb) / 2, tol = 1e-9 * (na + wb * nb);
    var i = 0, j = 0, cum = 0, v = NaN;
    while (i < na || j < nb) {
      var fromA = j >= nb || (i < na && a[i] <= b[j]);
      v = fromA ? a[i++] : b[j++];
      cum += fromA ? 1 : wb;
      if (cum > half + tol) return v;
      if (cum >= half - tol) return (i < na || j < nb) ? (v + ((j >= nb || (i < na && a[i] <= b[j])) ? a[i] : b[j])) / 2 : v;
    }
    return v;
  }
  function draw(){
    var x = val('heat-x'), y = val('heat-y'), m = val('heat-metric'), g = val('heat-agg');
    var div = document.getElementById('heatmap-plot'), msg = document.getElementById('heat-msg');
    var src = document.getElementById('heat-src');
    var fixed = [], named = [];
    Array.prototype.forEach.call(document.querySelectorAll('select.heat-fix'), function(s){
      var p = s.dataset.param, onAxis = (p === x || p === y);
      s.parentNode.style.opacity = onAxis ? 0.45 : 1;
      s.title = onAxis ? 'on an axis: this choice is ignored' : '';
      if (!onAxis && s.value !== 'any') { fixed.push([p, +s.value]); named.push(p + ' = ' + M.labels[p][+s.value]); }
    });
    if (x === y) { msg.textContent = 'choose two different parameters'; msg.hidden = false; return; }
    msg.hidden = true;
    var z, how;
    if (!fixed.length && M.exact) { z = exact(x, y, m, g); how = 'exact, over all ' + M.n_total + ' configurations'; }
    else {
      z = fromRows(x, y, fixed, m, g);
      how = M.sampled ? ('aggregated over ' + M.n_rows + ' of ' + M.n_total + ' configurations: the top ' + M.n_top + ' and a random sample')
                      : ('over all ' + M.n_total + ' configurations');
    }
    var est = M.sampled && fixed.length;
    var what = (m === 'configurations') ? (est ? 'configurations per cell (estimated)' : 'configurations per cell')
               : (est && g === 'median' ? 'weighted median' : g) + ' ' + (m.indexOf('oos_') === 0 ? 'out-of-sample ' + m.slice(4) : 'in-sample ' + m);
    if (named.length) what += ' | ' + named.join(', ');
    if (est) what += ' (sample)';
    src.textContent = 'This view: ' + how + (named.length ? '; fixed: ' + named.join(', ') : '') + '.';
    Plotly.react(div, [{type:'heatmap', z:z, x:M.labels[x], y:M.labels[y], colorscale:'Viridis',
                        hoverongaps:false, colorbar:{title:{text:m}}, hovertemplate:M.hover}],
                 Object.assign({}, div.layout, {title:{text:what}, xaxis:{title:{text:x}, type:'category'},
                                                yaxis:{title:{text:y}, type:'category'}}));
  }
  ['heat-x', 'heat-y', 'heat-metric', 'heat-agg'].forEach(function(id){ document.getElementById(id).addEventListener('change', draw); });
  Array.prototype.forEach.call(document.querySelectorAll('select.heat-fix'), function(s){ s.addEventListener('change', draw); });
  var src = document.getElementById('heat-src');
  src.textContent = 'This view: ' + (M.sampled ? 'exact, over all ' + M.n_total + ' configurations' : 'over all ' + M.n_total + ' configurations') + '.';
  Array.prototype.forEach.call(document.querySelectorAll('select.heat-fix'), function(s){
    var p = s.dataset.param; if (p === val('heat-x') || p === val('heat-y')) { s.parentNode.style.opacity = 0.45; s.title = 'on an axis: this choice is ignored'; }
  });
})();
</script>"""
