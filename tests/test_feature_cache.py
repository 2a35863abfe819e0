"""The on-disk feature bank cache: a hit equals a fresh build bit for bit; an edited store, spec
or source never hits; a corrupt entry is discarded and rebuilt; `off` switches it off."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gpu_engine import feature_cache
from gpu_engine.data.books.store import load, write_store
from gpu_engine.features import build_bank
from tests.test_features import random_book

SPEC = [("ofi", {"window": 10}), ("imbalance1", {}), ("spread_bps", {})]


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture()
def store(tmp_path) -> Path:
    return write_store(tmp_path / "book.zarr", random_book(T=300, seed=3))


def cached(store: Path, spec=SPEC):
    calls = []

    def build():
        calls.append(1)
        return build_bank(load(store), spec, xp=np)

    bank, hit = feature_cache.load_or_build(store, None, spec, np, build)
    assert hit == (not calls)
    return bank, hit


def test_hit_equals_fresh_build(cache_dir, store):
    first, hit1 = cached(store)
    second, hit2 = cached(store)
    assert (hit1, hit2) == (False, True)
    fresh = build_bank(load(store), SPEC, xp=np)
    assert second.values.dtype == np.float32
    assert np.array_equal(second.values, fresh.values, equal_nan=True)
    assert second.rows == fresh.rows and second.names == fresh.names
    assert second.index("ofi", window=10) == fresh.index("ofi", window=10)
    assert list(second.table["label"]) == list(fresh.table["label"])


def test_edited_store_or_other_spec_misses(cache_dir, store):
    cached(store)
    assert cached(store, SPEC[:2])[1] is False        # another spec
    book = random_book(T=300, seed=4)                 # the store rewritten in place
    import shutil
    shutil.rmtree(store)
    write_store(store, book)
    bank, hit = cached(store)
    assert hit is False
    assert np.array_equal(bank.values, build_bank(book, SPEC, xp=np).values, equal_nan=True)
    # a file touched back to its old modification time still changes its ctime: a miss
    chunk = next(p for p in store.rglob("*") if p.is_file())
    st = chunk.stat()
    chunk.write_bytes(chunk.read_bytes())
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cached(store)[1] is False


def test_edited_source_misses(cache_dir, store, monkeypatch):
    cached(store)
    from gpu_engine.kernels import cache

    real = cache.source_stamp
    monkeypatch.setattr(cache, "source_stamp", lambda f, extra=(): real(f, extra) + "-edited")
    assert cached(store)[1] is False


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_corrupt_entry_is_rebuilt_never_used(cache_dir, store, damage):
    good, _ = cached(store)
    (entry,) = cache_dir.glob("*" + feature_cache.SUFFIX)
    blob = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(blob[: len(blob) // 2]))
    elif damage == "flip":
        np.savez(entry, values=good.values + np.float32(1), meta=np.load(entry)["meta"])
    else:
        entry.write_bytes(b"not a bank at all")
    bank, hit = cached(store)
    assert hit is False
    assert np.array_equal(bank.values, good.values, equal_nan=True)
    assert cached(store)[1] is True  # rebuilt and saved again


def test_off_builds_every_time(tmp_path, store, monkeypatch):
    monkeypatch.setenv("GPU_ENGINE_CACHE_DIR", "off")
    assert cached(store)[1] is False
    assert cached(store)[1] is False
    assert not (tmp_path / "cache").exists()


def test_oldest_entries_trimmed(cache_dir, store, monkeypatch):
    cached(store)
    size = next(cache_dir.glob("*" + feature_cache.SUFFIX)).stat().st_size
    monkeypatch.setattr(feature_cache, "MAX_BYTES", size + size // 2)  # room for one entry
    cached(store, SPEC[:2])
    assert len(list(cache_dir.glob("*" + feature_cache.SUFFIX))) == 1
    assert cached(store, SPEC[:2])[1] is True   # the newest stays


# ----------------------------------------------------------------------------- books, digests

def _book_cached(store: Path):
    calls = []

    def loader():
        calls.append(1)
        return load(store)

    return feature_cache.load_book(store, loader), not calls


def test_book_cache_hit_equals_the_store(cache_dir, store):
    first, hit1 = _book_cached(store)
    second, hit2 = _book_cached(store)
    assert (hit1, hit2) == (False, True)
    fresh = load(store)
    for name in feature_cache.BOOK_FIELDS:
        a, b = getattr(second, name), getattr(fresh, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
        assert not a.flags.writeable  # read-only memory maps
    for name in ("ts", "px", "qty", "side", "match_ts"):
        assert np.array_equal(getattr(second.trades, name), getattr(fresh.trades, name)), name
    assert second.attrs == fresh.attrs
    # the cached book gives the same bank, bit for bit
    assert np.array_equal(build_bank(second, SPEC, xp=np).values, build_bank(fresh, SPEC, xp=np).values,
                          equal_nan=True)


def test_book_cache_misses_an_edited_store_and_rebuilds_a_damaged_entry(cache_dir, store):
    _book_cached(store)
    (entry,) = cache_dir.glob("*.book")
    (entry / "bid_px.npy").write_bytes((entry / "bid_px.npy").read_bytes()[:100])  # truncated
    book, hit = _book_cached(store)
    assert hit is False and np.array_equal(book.bid_px, load(store).bid_px, equal_nan=True)
    assert _book_cached(store)[1] is True
    import shutil

    shutil.rmtree(store)
    write_store(store, random_book(T=120, seed=9))
    book, hit = _book_cached(store)
    assert hit is False and book.T == 120


def test_sha256_is_remembered_per_version_of_the_data(cache_dir, store):
    from gpu_engine import results

    first = results.sha256_path(store)
    assert first == results._sha256_path(store)
    assert len(list(cache_dir.glob("*.sha256"))) == 1
    assert results.sha256_path(store) == first
    chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes() + b"x")
    assert results.sha256_path(store) == results._sha256_path(store) != first


def test_a_data_set_of_stores_is_cached_by_each_store(cache_dir, tmp_path):
    """--data as a comma list or a glob of stores: one key for the same stores however named,
    a hit on the second build, a miss once one store changes (it used to have no key at all,
    so every run rebuilt the bank)."""
    paths = []
    for k in range(2):
        book = random_book(T=60, L=2, seed=30 + k)
        book.ts = book.ts + k * 10 ** 12
        paths.append(write_store(tmp_path / f"d{k}.zarr", book))
    comma = Path(",".join(str(p) for p in paths))
    glob = Path(str(tmp_path / "d*.zarr"))
    spec = [("imbalance1", {})]
    assert feature_cache.key(comma, None, spec, "numpy") == feature_cache.key(glob, None, spec, "numpy")
    calls = []

    def build():
        calls.append(1)
        from gpu_engine.data.books.collection import load_many

        return build_bank(load_many(paths), spec, xp=np)

    _, hit = feature_cache.load_or_build(comma, None, spec, np, build)
    _, hit2 = feature_cache.load_or_build(glob, None, spec, np, build)
    assert (hit, hit2, len(calls)) == (False, True, 1)
    before = feature_cache.key(comma, None, spec, "numpy")
    os.utime(paths[1] / "zarr.json")
    (paths[1] / "zarr.json").write_text((paths[1] / "zarr.json").read_text())
    assert feature_cache.key(comma, None, spec, "numpy") != before
