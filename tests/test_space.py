"""Parameter spaces: parsing, grid values, Optuna suggestions, neighbourhoods, bad input."""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from gpu_engine import space as S
from gpu_engine.errors import InputError

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = "[params.signal]\nvalues = ['ofi', 'imbalance1']\n"


def _load(tmp_path, text):
    f = tmp_path / "s.toml"
    f.write_text(text)
    return S.load(f), f


def test_default_space_parses_and_covers_the_contract():
    sp = S.load()
    for name in ("signal", "window", "entry", "exit", "side", "band", "regime", "take_profit", "stop_loss",
                 "max_hold_s", "size_frac", "cooldown"):
        assert name in sp.params
    assert sp.thresholds == "std"
    assert sp.dense == ["entry", "exit", "take_profit", "stop_loss"]
    assert sp.neighbourhood_size == 8 * 4 * 4 * 2
    spec = S.feature_spec(sp)
    assert ("log_fair_dev", {}) in spec and ("ofi", {"window": 100}) in spec and ("imbalance1", {}) in spec


def test_forms_and_grid_values(tmp_path):
    sp, _ = _load(tmp_path, BASE + """
[params.entry]
low = 0.5
high = 1.6
step = 0.5
[params.exit]
dist = "log"
low = 1.0
high = 100.0
points = 3
[params.cooldown]
dist = "int"
low = 0
high = 10
points = 4
[params.side]
value = 1
[params.take_profit]
values = [10.0, inf]
""")
    ax = sp.grid_axes()
    assert ax["signal"] == ["ofi", "imbalance1"]
    assert ax["entry"] == [0.5, 1.0, 1.5]                 # range: low, low+step, ... <= high
    np.testing.assert_allclose(ax["exit"], [1.0, 10.0, 100.0])  # log points are geometric
    assert ax["cooldown"] == [0, 3, 7, 10]                # int points rounded
    assert ax["side"] == [1]
    assert ax["take_profit"] == [10.0, math.inf]


def test_dist_without_points_cannot_be_a_grid(tmp_path):
    sp, f = _load(tmp_path, BASE + "[params.entry]\ndist = 'float'\nlow = 1.0\nhigh = 2.0\n")
    with pytest.raises(InputError, match=r"s\.toml:4: field 'params.entry': .*points"):
        sp.grid_axes()


def test_neighbourhood_stays_inside_and_has_fixed_size(tmp_path):
    sp, _ = _load(tmp_path, BASE + """
[params.entry]
dist = "log"
low = 0.5
high = 4.0
dense = 5
width = 0.5
[params.cooldown]
low = 0
high = 20
step = 5
dense = 3
""")
    e = sp.params["entry"]
    for c in (0.5, 0.7, 1.4, 3.9, 4.0):
        pts = e.neighbourhood(c)
        assert len(pts) == 5 and len(set(pts)) == 5
        assert min(pts) >= 0.5 and max(pts) <= 4.0 + 1e-12
        assert np.allclose(np.diff(np.log(pts)), np.diff(np.log(pts))[0])  # geometric spacing
    assert sp.params["cooldown"].neighbourhood(0) == [0, 5, 10]
    assert sp.params["cooldown"].neighbourhood(10) == [5, 10, 15]
    assert sp.params["cooldown"].neighbourhood(20) == [10, 15, 20]
    assert sp.neighbourhood_size == 15
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        t = study.ask()
        chosen = sp.suggest(t)
        assert set(t.params) == {"signal", "entry", "cooldown"}
        pts = sp.expand(chosen)
        assert all(len(v) == 15 for v in pts.values())
        assert len({(a, b) for a, b in zip(pts["entry"], pts["cooldown"])}) == 15
        assert set(pts["signal"]) == {chosen["signal"]}


def test_to_configs_resolves_rows_and_units():
    pts = {"signal": np.array(["ofi", "imbalance1"]), "window": np.array([10, 10]),
           "entry": np.array([1.0, 2.0]), "max_hold_s": np.array([1.5, np.inf]),
           "regime": np.array(["log_fair_dev", "log_fair_dev"]), "side": np.array([0, 1])}
    rows = {("ofi", 10): 3, ("imbalance1", 10): 5, ("log_fair_dev", None): 7}
    f = S.to_configs(pts, lambda name, w: rows[(name, w)])
    assert f["signal"].tolist() == [3, 5] and f["regime"].tolist() == [7, 7]
    assert f["max_hold"].tolist() == [1.5e9, math.inf]
    assert f["side"].dtype == np.int8 and "window" not in f


@pytest.mark.parametrize("text, where", [
    (BASE + "[params.entry]\nvalue = 1.0\nflavour = 'x'\n", r"s\.toml:5: field 'params.entry.flavour': unknown key"),
    ("[params.signal]\nvalues = []\n[params.entry]\nvalue = 1.0\n", r"s\.toml:2: field 'params.signal.values': empty"),
    (BASE + "[params.entry]\nlow = 1.0\nhigh = 2.0\nstep = 0\n", r"s\.toml:6: field 'params.entry.step': value 0"),
    (BASE + "[params.entry]\nlow = 3.0\nhigh = 2.0\nstep = 0.5\n", r"s\.toml:4: field 'params.entry.low': reversed bounds: low 3.0 > high 2.0"),
    (BASE + "[params.entry]\ndist = 'float'\nlow = 2.0\nhigh = 2.0\n", r"field 'params.entry.high': empty range"),
    (BASE + "[params.entry]\nvalues = [-1.0]\n", r"field 'params.entry.values': value -1.0 must be finite and > 0"),
    (BASE + "[params.entry]\nvalue = 1.0\n[params.colour]\nvalue = 1\n", r"s\.toml:5: field 'params.colour': unknown parameter"),
    (BASE + "[params.entry]\nvalue = 1.0\n[params.latency]\nvalue = 1\n", r"field 'params.latency': unknown key: costs"),
    (BASE + "[params.entry]\nvalue = 1.0\n[params.side]\nvalues = [2]\n", r"field 'params.side.values': value 2"),
    (BASE + "[params.entry]\nvalue = 1.0\n[params.exit]\ndist = 'log'\nlow = 0.0\nhigh = 1.0\n", r"field 'params.exit.low': .*log"),
    (BASE + "[params.entry]\nvalue = 1.0\n[params.size_frac]\nvalue = 1.5\n", r"params.size_frac.value': value 1.5"),
    (BASE + "[params.entry]\nvalues = [1.0]\n[sweep]\nx = 1\n", r"field 'sweep': unknown key"),
    (BASE + "[params.entry]\nvalues = [1.0\n", r"not valid TOML"),
    (BASE, r"field 'params.entry': required"),
    ("[space]\nthresholds = 'sigma'\n" + BASE + "[params.entry]\nvalue = 1.0\n", r"s\.toml:2: field 'space.thresholds'"),
])
def test_bad_spaces_name_file_line_key_and_value(tmp_path, text, where):
    with pytest.raises(InputError, match=where):
        _load(tmp_path, text)


def test_unknown_signal_names_are_refused(tmp_path):
    sp, _ = _load(tmp_path, "[params.signal]\nvalues = ['ofi', 'nosuch']\n[params.entry]\nvalue = 1.0\n"
                            "[params.window]\nvalue = 10\n")
    with pytest.raises(InputError, match=r"s\.toml:2: field 'params.signal': unknown feature 'nosuch'"):
        S.feature_spec(sp)
    sp, _ = _load(tmp_path, "[params.signal]\nvalues = ['mlofi']\n[params.entry]\nvalue = 1.0\n")
    with pytest.raises(InputError, match="needs"):
        S.feature_spec(sp)
    sp, _ = _load(tmp_path, "[params.signal]\nvalues = ['depth_imbalance(decay=0.5,levels=3)']\n"
                            "[params.entry]\nvalue = 1.0\n")
    assert S.feature_spec(sp) == [("depth_imbalance", {"decay": 0.5, "levels": 3})]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.toml: cannot read"):
        S.load(tmp_path / "nope.toml")
