"""The HTML report (`python -m sweeps.inspect CUBE --html PAGE`) in a real browser: headless Chromium.

One Chromium per module (Playwright for Python driving the system's /usr/bin/chromium, launched with
executable_path: Playwright never downloads a browser here, and none of this needs a network).
Pages of the synthetic cubes of tests/test_report_html.py (a grid and an optimize cube) are opened
from file:// URLs with every non-file request aborted and recorded. Checks: no request to the
network was attempted; no console error, no uncaught exception; every `.chart` div rendered, each
plotly graph (`.js-plotly-plot`) with traces holding x/y/z data (read from `gd.data` in the page);
screenshots of the page and of each chart are not blank (Pillow); every <select> of the page
(the heatmap's controls) redraws without error, and swapping the heatmap's axes transposes it.
Fixing other parameters of the heatmap at values (its "other parameters" selectors) redraws it with
what pandas computes from the cube for that slice. Another test opens the page of a
1e6-configuration, 64-bucket cube, built in a memory-capped child process as the CLI builds it (the
cube and the page are shared with the SCALE test of tests/test_report_html.py), and requires it to load
with every chart rendered within LOAD_BUDGET_S, and a slice of its sampled rows to be drawn as
the rows say and named a sample.

Skips, saying why, only when no Chromium can be found or Playwright is not installed; `.ci/run`
installs Debian's chromium when it is missing. $GPU_ENGINE_SCREENSHOTS=DIR keeps the screenshots.
"""
from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_ENV = "GPU_ENGINE_CHROMIUM"  # path of a Chromium to use instead of the system's
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "/usr/lib/chromium/chromium",
                       "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALLOWED_SCHEMES = ("file:", "data:", "blob:", "about:")  # everything else is network: aborted and reported
VIEWPORT = {"width": 1280, "height": 900}

# A page built from 1e6 configurations must load, with every chart rendered, within this many seconds
# on CI's 2 cores (a minimal page with plotly.js inlined takes ~5 s there: parsing plotly.js alone).
LOAD_BUDGET_S = 15.0
RENDER_TIMEOUT_MS = 60_000  # small page: a failure, not a slow machine, if it takes longer than this

# Blank-screenshot thresholds: a rendered chart has axes, text and coloured marks in many colours
# (anti-aliasing), and more than MIN_INK of its pixels differ from the background (its commonest
# colour). A 3-point line chart in plotly's sparest template ("simple_white") inks ~0.9%; an empty
# div holding one word ~0.1%.
MIN_COLOURS = 16
MIN_INK = 0.003


# ------------------------------------------------------------------ pages of synthetic cubes

# The cubes are those of tests/test_report_html.py (xarray + results.write_cube, no kernel runs); so is
# the page of 1e6 configurations, built once per test process (the `million` fixture) in a child
# process under an address-space cap, so that a page builder that blows up fails the test
# (MemoryError) instead of the OOM killer taking the whole test run with it.
from tests.test_report_html import million  # noqa: E402,F401  (a fixture)


def page_of(cubes: dict, kind: str) -> Path:
    """The page of the module's `kind` cube, built once (the tests only read it)."""
    if kind + ".html" not in cubes:
        cubes[kind + ".html"] = build_page(cubes[kind], cubes["dir"] / f"{kind}.html")
    return cubes[kind + ".html"]


def build_page(cube: Path, html: Path) -> Path:
    """The real page, in-process: `python -m sweeps.inspect CUBE --html PAGE`."""
    from sweeps import inspect

    rc = inspect.main([str(cube), "--html", str(html), "--no-progress"])
    assert rc == 0, f"python -m sweeps.inspect {cube} --html {html} exited {rc}"
    assert html.is_file() and html.stat().st_size > 0, f"{html} was not written"
    return html


# ------------------------------------------------------------------ the browser

def find_chromium() -> str | None:
    for cand in (os.environ.get(CHROMIUM_ENV), *CHROMIUM_CANDIDATES):
        if not cand:
            continue
        path = cand if os.sep in cand else shutil.which(cand)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (/usr/bin/chromium, chromium on PATH or $GPU_ENGINE_CHROMIUM): "
                    "apt-get install chromium (.ci/run does it when it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


class Visit:
    """A page opened offline from a file:// URL, with everything it asked for and everything it logged."""

    def __init__(self, browser, html: Path):
        self.requests: list[str] = []   # every request the page made
        self.blocked: list[str] = []    # network requests (aborted)
        self.errors: list[str] = []     # console errors and uncaught exceptions
        self.context = browser.new_context(viewport=VIEWPORT, service_workers="block")
        self.context.route("**/*", self._route)
        self.context.route_web_socket("**/*", self._websocket)
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type in ("error", "assert") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.url = html.resolve().as_uri()

    def _route(self, route):
        url = route.request.url
        if url.startswith(ALLOWED_SCHEMES):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")

    def _websocket(self, ws):
        self.blocked.append(ws.url)
        ws.close()

    def open(self, timeout_ms: float) -> float:
        """Load the page and wait until every .chart div rendered; returns the seconds it took."""
        t0 = time.perf_counter()
        self.page.goto(self.url, wait_until="load", timeout=timeout_ms)
        left = max(1.0, timeout_ms - 1000 * (time.perf_counter() - t0))
        try:
            self.page.wait_for_function(f"() => ({CHART_STATUS_JS})().every(c => c.ok)", timeout=left, polling=100)
        except Exception as exc:
            if "Timeout" not in type(exc).__name__:
                raise
            bad = [c for c in self.chart_status() if not c["ok"]]
            pytest.fail(f"{len(bad)} chart(s) not rendered after {timeout_ms / 1000:.0f} s: {bad}; "
                        f"page errors: {self.errors}")
        return time.perf_counter() - t0

    def chart_status(self) -> list[dict]:
        return self.page.evaluate(CHART_STATUS_JS)

    def network_problems(self) -> list[str]:
        other = [u for u in self.requests if not u.startswith(ALLOWED_SCHEMES)]
        return sorted(set(self.blocked + other))

    def close(self):
        self.context.close()


# Per `.chart` div: its name, whether it rendered (visible size; each plotly graph laid out with its
# SVG drawn; images decoded; a non-plotly chart has content), and how many plotly graphs it holds.
CHART_STATUS_JS = """() => Array.from(document.querySelectorAll('.chart')).map((c, i) => {
  const r = c.getBoundingClientRect();
  const gds = c.classList.contains('js-plotly-plot') ? [c] : Array.from(c.querySelectorAll('.js-plotly-plot'));
  const imgs = Array.from(c.querySelectorAll('img'));
  const sized = r.width > 0 && r.height > 0;
  const plotted = gds.every(gd => gd._fullLayout && Array.isArray(gd._fullData) && gd.querySelector('.main-svg'));
  const decoded = imgs.every(im => im.complete && im.naturalWidth > 0);
  const content = gds.length > 0 || imgs.length > 0 || c.querySelector('svg, canvas, table') !== null
                  || c.textContent.trim().length > 0;
  return {index: i, name: c.dataset.chart || null, plotly: gds.length, width: r.width, height: r.height,
          ok: sized && plotted && decoded && content};
})"""

# Per plotly graph: the chart it belongs to, its trace count, and whether some trace holds data
# (non-empty x, y or z; typed arrays and plotly's {bdata} encoding count; z may be 2-D).
TRACES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const size = a => {
    if (a == null) return 0;
    if (typeof a === 'object' && 'bdata' in a) return a.bdata ? a.bdata.length : 0;
    if (typeof a.length !== 'number') return 0;
    if (a.length > 0 && a[0] != null && typeof a[0] === 'object' && typeof a[0].length === 'number')
      return Array.from(a).reduce((s, row) => s + row.length, 0);
    return a.length;
  };
  const chart = gd.closest('.chart');
  const data = Array.isArray(gd.data) ? gd.data : [];
  return {chart: chart ? (chart.dataset.chart || null) : null, traces: data.length,
          types: data.map(t => t.type || 'scatter'),
          filled: data.filter(t => size(t.x) > 0 || size(t.y) > 0 || size(t.z) > 0).length};
})"""


def _not_blank(png: bytes, what: str) -> None:
    from PIL import Image  # a dependency of matplotlib, hence always there

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    colours = img.getcolors(maxcolors=w * h) or []
    ink = 1 - max(colours)[0] / (w * h) if colours else 0.0
    assert len(colours) > MIN_COLOURS and ink > MIN_INK, (
        f"{what}: screenshot {w}x{h} looks blank: {len(colours)} distinct colours, "
        f"{100 * ink:.2f}% of pixels off the background colour")


def check_page(visit: Visit, shots: Path | None = None) -> list[dict]:
    """Everything the page must satisfy once open; returns the chart status."""
    assert visit.network_problems() == [], f"the page tried to reach the network: {visit.network_problems()}"
    assert visit.errors == [], f"the page logged errors: {visit.errors}"
    charts = visit.chart_status()
    assert charts, "the page has no .chart div"
    names = [c["name"] for c in charts]
    assert all(names), f"every .chart div names its chart in data-chart: {charts}"
    assert len(set(names)) == len(names), f"data-chart names repeat: {names}"
    graphs = visit.page.evaluate(TRACES_JS)
    assert graphs, "no plotly chart (.js-plotly-plot) on the page"
    for g in graphs:
        assert g["chart"], f"a plotly graph outside any .chart div: {g}"
        assert g["traces"] > 0, f"chart {g['chart']!r}: gd.data is empty"
        assert g["filled"] > 0, f"chart {g['chart']!r}: no trace has x, y or z data ({g['types']})"
    page_png = visit.page.screenshot(full_page=True, type="png")
    _not_blank(page_png, "the whole page")
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
        (shots / "page.png").write_bytes(page_png)
    divs = visit.page.locator(".chart")
    for i, c in enumerate(charts):
        png = divs.nth(i).screenshot(type="png")
        _not_blank(png, f"chart {c['name']!r}")
        if shots is not None:
            (shots / f"chart-{i:02d}-{c['name']}.png").write_bytes(png)
    # nothing new went wrong while scrolling charts into view for their screenshots
    assert visit.network_problems() == [], f"the page tried to reach the network: {visit.network_problems()}"
    assert visit.errors == [], f"the page logged errors: {visit.errors}"
    return charts


def _shots_dir(name: str) -> Path | None:
    """Screenshots are kept under $GPU_ENGINE_SCREENSHOTS/<test> when that is set (for a person to look)."""
    root = os.environ.get("GPU_ENGINE_SCREENSHOTS")
    return Path(root) / name if root else None


# Every <select> on the page (the heatmap's x / y / metric / agg): its options, to try in turn.
SELECTS_JS = """() => Array.from(document.querySelectorAll('select')).map(s => ({
  id: s.id, value: s.value, options: Array.from(s.options).map(o => o.value)}))"""
MAX_OPTIONS_TRIED = 8  # per <select>: each choice redraws a chart, keep the test lean

# The heatmap's matrix against its axes after a redraw: rows = y labels, columns = x labels.
HEATMAP_SHAPE_JS = """() => {
  const gd = document.getElementById('heatmap-plot'); const t = gd.data[0];
  return {rows: t.z.length, cols: t.z[0].length, nx: t.x.length, ny: t.y.length,
          x: gd.layout.xaxis.title.text, y: gd.layout.yaxis.title.text};
}"""


def exercise_controls(visit: Visit) -> int:
    """Choose options of every <select> (the page's own script redraws the charts): no error, every
    chart still rendered with data; on the heatmap, swapped axes give the transposed matrix.
    Returns how many choices were made."""
    page = visit.page
    made = 0
    for sel in page.evaluate(SELECTS_JS):
        if not sel["id"]:
            continue
        loc = page.locator(f"select#{sel['id']}")
        for opt in [o for o in sel["options"] if o != sel["value"]][:MAX_OPTIONS_TRIED] + [sel["value"]]:
            loc.select_option(opt)
            made += 1
        assert visit.errors == [], f"choosing options of <select id={sel['id']}> logged errors: {visit.errors}"
    if page.locator("#heat-x").count() and page.locator("#heat-y").count():
        xs = page.evaluate("() => Array.from(document.getElementById('heat-x').options).map(o => o.value)")
        if len(xs) >= 2:
            for x, y in ((xs[0], xs[1]), (xs[1], xs[0])):  # stored pair, then the transposed one
                page.locator("#heat-x").select_option(x)
                page.locator("#heat-y").select_option(y)
                shape = page.evaluate(HEATMAP_SHAPE_JS)
                assert (shape["x"], shape["y"]) == (x, y), shape
                assert (shape["rows"], shape["cols"]) == (shape["ny"], shape["nx"]), f"x={x} y={y}: {shape}"
                made += 2
    page.wait_for_timeout(100)  # let a redraw's asynchronous errors surface
    assert visit.errors == [], f"the page's controls logged errors: {visit.errors}"
    assert all(c["ok"] for c in visit.chart_status()), visit.chart_status()
    for g in page.evaluate(TRACES_JS):
        assert g["traces"] > 0 and g["filled"] > 0, f"after the controls were used: {g}"
    return made


# ------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def cubes(tmp_path_factory) -> dict:
    from tests.test_report_html import SMALL_AXES, grid_cube, optimize_cube

    d = tmp_path_factory.mktemp("report_browser")
    return {"dir": d, "grid": grid_cube(d / "grid.zarr", SMALL_AXES), "optimize": optimize_cube(d / "opt.zarr")}


@pytest.mark.parametrize("kind", ["grid", "optimize"])
def test_report_page_renders_offline_without_errors(browser, cubes, kind):
    html = page_of(cubes, kind)
    visit = Visit(browser, html)
    try:
        visit.open(RENDER_TIMEOUT_MS)
        charts = check_page(visit, _shots_dir(kind))
        assert {"heatmap", "pbo", "importance"} <= {c["name"] for c in charts}, charts
        assert exercise_controls(visit) > 0, "the page has no controls (the heatmap's <select>s)"
        assert visit.network_problems() == [], f"the page tried to reach the network: {visit.network_problems()}"
        assert any(u.startswith("file:") for u in visit.requests), "the page itself was not requested"
    finally:
        visit.close()


# The heatmap as drawn: its matrix (None for a blank cell), axes, title, and the line naming its source.
HEATMAP_JS = """() => {
  const gd = document.getElementById('heatmap-plot'); const t = gd.data[0];
  return {z: t.z.map(r => Array.from(r)), x: Array.from(t.x), y: Array.from(t.y), title: gd.layout.title.text,
          xtitle: gd.layout.xaxis.title.text, ytitle: gd.layout.yaxis.title.text,
          src: document.getElementById('heat-src').textContent};
}"""


def weighted_median(a: np.ndarray, b: np.ndarray, wb: float) -> float:
    """The median of the values a (weight 1 each) and b (wb each): the first value, in ascending order,
    at which the cumulative weight passes half the total; the mean with the next one when it lands on
    half exactly (the usual median when all weights are equal)."""
    vals = np.r_[np.sort(a), np.sort(b)]
    w = np.r_[np.ones(a.size), np.full(b.size, wb)]
    order = np.argsort(vals, kind="stable")
    vals, w = vals[order], w[order]
    total = w.sum()
    half, tol = total / 2, 1e-9 * total
    cum = np.cumsum(w)
    k = int(np.argmax(cum >= half - tol))
    if cum[k] > half + tol or k == vals.size - 1:
        return float(vals[k])
    return float((vals[k] + vals[k + 1]) / 2)


def _fix(page, param: str, value: str) -> None:
    """Choose `value` ("any" or a cell code) in the heatmap's selector of the other parameter `param`."""
    page.locator(f'select.heat-fix[data-param="{param}"]').select_option(value)


def test_heatmap_selector_fixes_other_parameters(browser, cubes):
    """Fix other parameters at values: the heatmap redraws with exactly what pandas computes from the
    cube for that slice (median and max of the float32 values the page holds; configuration counts);
    'any' again gives the first view back."""
    import xarray as xr

    from tests.test_report_html import as_matrix, cell_table

    html = page_of(cubes, "grid")
    ds = xr.open_zarr(cubes["grid"]).load()
    visit = Visit(browser, html)
    page = visit.page
    try:
        visit.open(RENDER_TIMEOUT_MS)
        first = page.evaluate(HEATMAP_JS)
        assert (first["xtitle"], first["ytitle"]) == ("signal", "entry")
        _, _, want = cell_table(ds, "signal", "entry", "win_rate")
        np.testing.assert_array_equal(as_matrix(first["z"]), want)

        _fix(page, "exit", "0")  # exit = 0 (its first value)
        got = page.evaluate(HEATMAP_JS)
        _, _, want = cell_table(ds, "signal", "entry", "win_rate", where=lambda p: p["exit"] == 0.0)
        assert got["z"] != first["z"], "fixing exit did not change the heatmap"
        np.testing.assert_array_equal(as_matrix(got["z"]), want)
        assert "exit = 0" in got["title"] and "over all 60 configurations" in got["src"]

        page.locator("#heat-agg").select_option("max")
        _fix(page, "take_profit", "2")  # take_profit = inf
        got = page.evaluate(HEATMAP_JS)
        _, _, want = cell_table(ds, "signal", "entry", "win_rate", "max",
                                where=lambda p: (p["exit"] == 0.0) & (p["take_profit"] == np.inf))
        np.testing.assert_array_equal(as_matrix(got["z"]), want)
        assert "take_profit = inf" in got["title"]

        page.locator("#heat-metric").select_option("configurations")
        page.locator("#heat-x").select_option("take_profit")  # an axis now: its fixed value is ignored
        got = page.evaluate(HEATMAP_JS)
        _, _, want = cell_table(ds, "take_profit", "entry", "trades", "size", where=lambda p: p["exit"] == 0.0)
        assert got["x"] == ["5", "10", "inf"] and "take_profit =" not in got["title"]
        np.testing.assert_array_equal(as_matrix(got["z"]), want)

        for p_, sel in (("exit", "any"), ("take_profit", "any")):
            _fix(page, p_, sel)
        for sid, v in (("heat-x", "signal"), ("heat-metric", "win_rate"), ("heat-agg", "median")):
            page.locator(f"#{sid}").select_option(v)
        assert page.evaluate(HEATMAP_JS)["z"] == first["z"]
        page.wait_for_timeout(100)
        assert visit.errors == [], f"the heatmap's selectors logged errors: {visit.errors}"
        assert visit.network_problems() == []
    finally:
        visit.close()


def test_report_page_of_a_million_configurations_loads_fast(browser, million):
    from tests.test_report_html import heat_data

    html = million["html"]
    size_mb = html.stat().st_size / 1e6
    visit = Visit(browser, html)
    try:
        elapsed = visit.open(1000 * max(LOAD_BUDGET_S * 4, 60))
        check_page(visit, _shots_dir("million"))
        # a slice of the sampled rows: drawn as the embedded rows say, and named a sample
        t0 = time.perf_counter()
        _fix(visit.page, "exit", "0")
        redraw = time.perf_counter() - t0
        got = visit.page.evaluate(HEATMAP_JS)
        heat = heat_data(html.read_text())
        meta = heat["meta"]
        assert got["title"].startswith("weighted median in-sample win_rate | exit = ") and "(sample)" in got["title"]
        assert (f"aggregated over {meta['n_rows']} of 1000000 configurations: the top {meta['n_top']} and a "
                "random sample") in got["src"]
        # each cell: the weighted median of the rows held, the top ones weighing 1, the sampled ones
        # sample_weight = (1e6 - top) / (rows - top)
        cx, cy, keep = heat["codes"]["signal"], heat["codes"]["entry"], heat["codes"]["exit"] == 0
        v = heat["values"]["win_rate"].astype(np.float64)
        top = np.arange(v.size) < meta["n_top"]
        assert meta["sample_weight"] == pytest.approx((1e6 - meta["n_top"]) / (meta["n_rows"] - meta["n_top"]))
        want = np.full((len(meta["labels"]["entry"]), len(meta["labels"]["signal"])), np.nan)
        for j in range(want.shape[0]):
            for i in range(want.shape[1]):
                sel = keep & (cy == j) & (cx == i) & ~np.isnan(v)
                if sel.any():
                    want[j, i] = weighted_median(v[sel & top], v[sel & ~top], meta["sample_weight"])
        z = np.array([[np.nan if a is None else a for a in row] for row in got["z"]], dtype=np.float64)
        np.testing.assert_array_equal(z, want)
        # nothing fixed: the exact matrices (every configuration), also with the axes swapped
        _fix(visit.page, "exit", "any")
        exact = heat["exact"]["signal|entry"]["win_rate"]["max"].astype(np.float64)
        visit.page.locator("#heat-agg").select_option("max")
        got = visit.page.evaluate(HEATMAP_JS)
        assert "exact, over all 1000000 configurations" in got["src"] and "(sample)" not in got["title"]
        np.testing.assert_array_equal(np.array(got["z"], dtype=np.float64), exact)
        visit.page.locator("#heat-x").select_option("entry")
        visit.page.locator("#heat-y").select_option("signal")
        np.testing.assert_array_equal(np.array(visit.page.evaluate(HEATMAP_JS)["z"], dtype=np.float64), exact.T)
        assert visit.errors == [], f"the heatmap's selectors logged errors: {visit.errors}"
    finally:
        visit.close()
    assert elapsed < LOAD_BUDGET_S, (f"the page of 1e6 configurations ({size_mb:.1f} MB) took {elapsed:.1f} s to "
                                     f"load and render its charts (budget {LOAD_BUDGET_S:g} s)")
    assert redraw < 5, f"fixing a parameter on the page of 1e6 configurations took {redraw:.1f} s to redraw"
