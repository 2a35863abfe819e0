"""gpu_engine/data/books/chunks.py reads the same values as zarr, with or without its own path.

A store written by write_store is laid out plainly (every field read directly); arrays laid out
otherwise (zarr format 2, chunked along a second axis, another codec) go through zarr; chunks never written read as the fill value; an
uncompressed array and ranges across chunk edges read right; a damaged chunk is refused.
"""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from gpu_engine import bench
from gpu_engine.data.books.chunks import ChunkReader, Source
from gpu_engine.data.books.store import _open_group, write_store

RANGES = [(0, 1), (0, 64), (63, 65), (10, 300), (128, 192), (250, 257), (0, 257)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    book = bench.synthetic_book(257, 4, seed=3)
    book.trades = bench.synthetic_trades(book, seed=3)
    path = tmp_path_factory.mktemp("chunks") / "s.zarr"
    write_store(path, book, chunk_rows=64)
    return _open_group(path)


def _check(arr, reader: ChunkReader, ranges=RANGES):
    src = Source(arr)
    n = arr.shape[0]
    for a, b in ranges:
        a, b = min(a, n), min(b, n)
        dest = np.full((b - a,) + tuple(arr.shape[1:]), 7, dtype=arr.dtype)
        assert reader.read(src, a, b, dest) is dest
        np.testing.assert_array_equal(dest, arr[a:b])
    return src


def test_store_fields_read_directly_equal_zarr(store):
    reader = ChunkReader()
    for name in ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz"):
        assert _check(store[name], reader).layout is not None, name
    for name in ("ts", "px", "qty", "side"):
        assert _check(store["trades"][name], reader).layout is not None, name
    got = reader.values(Source(store["ts"]), 60, 70)
    np.testing.assert_array_equal(got, store["ts"][60:70])


def test_other_layouts_unwritten_chunks_and_damage(tmp_path):
    data = np.arange(500 * 3, dtype=np.float64).reshape(500, 3)
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=data.shape, chunks=(64, 3), dtype="f8", zarr_format=2)
    v2[:] = data
    raw = zarr.create_array(tmp_path / "raw.zarr", shape=data.shape, chunks=(64, 3), dtype="f8", compressors=None)
    raw[:] = data
    holes = zarr.create_array(tmp_path / "holes.zarr", shape=data.shape, chunks=(64, 3), dtype="f8",
                              fill_value=np.nan, compressors=zarr.codecs.BloscCodec(cname="zstd"))
    zstd = zarr.create_array(tmp_path / "zstd.zarr", shape=data.shape, chunks=(64, 3), dtype="f8",
                             compressors=zarr.codecs.ZstdCodec())
    zstd[:] = data
    holes[100:130] = data[100:130]
    wide = zarr.create_array(tmp_path / "wide.zarr", shape=data.shape, chunks=(64, 1), dtype="f8")
    wide[:] = data
    reader = ChunkReader()
    ranges = RANGES + [(400, 500), (499, 500)]
    assert _check(v2, reader, ranges).layout is None
    assert _check(wide, reader, ranges).layout is None  # chunked along a second axis
    assert _check(zstd, reader, ranges).layout is None  # another codec
    assert _check(raw, reader, ranges).layout.blosc is False
    assert _check(holes, reader, ranges).layout is not None
    src = Source(holes)
    chunk = src.layout.chunk_path(1)
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(ValueError, match="damaged chunk"):
        reader.read(src, 64, 70, np.empty((6, 3)))
    src = Source(raw)
    src.layout.chunk_path(2).write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="damaged chunk"):
        reader.read(src, 130, 131, np.empty((1, 3)))
