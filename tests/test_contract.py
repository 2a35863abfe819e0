"""Contract specifications in the book store (gpu_engine/data/books/contract.py): inferred from
the format and symbol, overridden by the import flags, checked before any work."""
from __future__ import annotations

import pytest

from gpu_engine.data.__main__ import main as data_main
from gpu_engine.data.books import contract
from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import load, open_attrs
from gpu_engine.errors import InputError


@pytest.mark.parametrize("symbol, market, want", [
    ("BTCUSDT", None, ("linear", 1.0)),
    ("BTCUSD_PERP", None, ("inverse", 100.0)),
    ("BTCUSD_240927", None, ("inverse", 100.0)),
    ("ETHUSD_PERP", None, ("inverse", 10.0)),
    ("ETHUSD", "coinm", ("inverse", 10.0)),
])
def test_binance_contracts_from_the_symbol(symbol, market, want):
    got = contract.binance(symbol, market)
    assert (got["contract"], got["multiplier"]) == want


def test_bybit_inverse_is_one_usd_per_contract():
    assert contract.bybit("inverse") == {"contract": "inverse", "multiplier": 1.0}
    assert contract.bybit("linear") == {"contract": "linear", "multiplier": 1.0}


def test_imported_store_carries_its_contract(real_dir, tmp_path):
    out = tmp_path / "usdm.zarr"
    import_files([real_dir / "binance_usdm_btcusdt_20240808.jsonl.gz"], "binance-jsonl", out, depth=5,
                 progress=False)
    a = open_attrs(out)
    assert a["contract"] == "linear" and a["multiplier"] == 1.0
    assert a["tick_size"] == pytest.approx(0.1) and a["lot_size"] >= 0
    assert a["contract_source"]["contract"] == "inferred"
    over = tmp_path / "as-inverse.zarr"
    import_files([real_dir / "binance_usdm_btcusdt_20240808.jsonl.gz"], "binance-jsonl", over, depth=5,
                 progress=False, contract_spec={"contract": "inverse", "multiplier": 100.0, "lot_size": 1.0,
                                                "tick_size": 0.5})
    b = load(over).attrs
    assert (b["contract"], b["multiplier"], b["lot_size"], b["tick_size"]) == ("inverse", 100.0, 1.0, 0.5)
    assert b["contract_source"]["multiplier"] == "given"


@pytest.mark.parametrize("flags, word", [
    (["--multiplier", "-1"], "--multiplier"),
    (["--multiplier", "nan"], "--multiplier"),
    (["--tick-size", "0"], "--tick-size"),
    (["--lot-size", "-0.1"], "--lot-size"),
    (["--contract", "inverse"], "--multiplier"),   # an inverse contract needs its multiplier
])
def test_bad_contract_flags_exit_2_before_any_work(tmp_path, capsys, flags, word):
    src = tmp_path / "x.csv"
    src.write_text("exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n")
    out = tmp_path / "o.zarr"
    rc = data_main(["import", str(src), "--format", "tardis-csv", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and word in err and "Traceback" not in err, err
    assert not out.exists()


def test_check_names_fields_without_flags():
    with pytest.raises(InputError, match="multiplier"):
        contract.check({"contract": "inverse", "multiplier": None, "lot_size": 0.0}, "store", flags=False)
    with pytest.raises(InputError, match="contract"):
        contract.check({"contract": "perpetual", "multiplier": 1.0, "lot_size": 0.0}, "store", flags=False)
