"""Rows of the book stores' zarr arrays read into the caller's arrays through buffers reused for
every chunk, in the calling thread.

    reader = ChunkReader()
    src = Source(zarr_array)              # its layout, looked up once
    reader.read(src, a, b, dest)          # dest[...] = zarr_array[a:b], nothing allocated

zarr's own reads decode each chunk into a new array on a pool of its threads and copy the rows
asked for into another new array: a long data set read window by window then leaves freed
chunk-sized blocks in the allocator arenas of every pool thread (benchmarks/RESULTS.md, issue
12). An array that lies as the book stores write it (store.py: zarr format 3 in a local folder,
chunked along the first axis only, the `bytes` codec then optionally `blosc`) is read here
instead: the chunk's file into one reused byte buffer, decompressed into another, its rows
copied into `dest`. An array laid out any other way is read by zarr into `dest` (`out=`): the
same values either way. A ChunkReader's buffers grow to the largest chunk read and serve one
thread at a time.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOSC_HEADER = 16  # blosc1: version, versionlz, flags, typesize, nbytes, blocksize, cbytes


@dataclass(frozen=True)
class Layout:
    """Where a plainly stored array's chunks lie and how they decode."""

    folder: Path      # the array's folder; chunk c of the first axis is c/<c>/0/...
    chunk_rows: int
    row_items: int    # values per row (the product of the other axes)
    dtype: np.dtype
    fill: object
    blosc: bool
    ndim: int

    def chunk_path(self, c: int) -> Path:
        return self.folder.joinpath("c", str(c), *(["0"] * (self.ndim - 1)))

    @property
    def chunk_nbytes(self) -> int:
        return self.chunk_rows * self.row_items * self.dtype.itemsize


def layout(arr) -> Layout | None:
    """The Layout of a zarr array when it is stored plainly (module doc), else None."""
    try:
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.storage import LocalStore

        meta = arr.metadata
        store = arr.store_path.store
        if getattr(meta, "zarr_format", None) != 3 or not isinstance(store, LocalStore):
            return None
        if getattr(meta, "storage_transformers", ()):
            return None
        chunks = tuple(int(x) for x in meta.chunk_grid.chunk_shape)
        shape = tuple(int(x) for x in arr.shape)
        if len(shape) < 1 or chunks[1:] != shape[1:] or chunks[0] < 1:
            return None
        key = meta.chunk_key_encoding.encode_chunk_key((7,) + (0,) * (len(shape) - 1))
        if key != "/".join(["c", "7"] + ["0"] * (len(shape) - 1)):
            return None
        codecs = tuple(meta.codecs)
        dtype = np.dtype(arr.dtype)
        if not 1 <= len(codecs) <= 2 or not isinstance(codecs[0], BytesCodec):
            return None
        if len(codecs) == 2 and not isinstance(codecs[1], BloscCodec):
            return None
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.itemsize > 1 and (endian != "little" or sys.byteorder != "little"):
            return None
        if dtype.hasobject or not dtype.isnative:
            return None
        return Layout(Path(store.root) / arr.store_path.path, chunks[0],
                      int(np.prod(shape[1:], dtype=np.int64)), dtype, meta.fill_value,
                      len(codecs) == 2, len(shape))
    except Exception:  # anything unexpected: zarr reads it
        return None


class Source:
    """A zarr array and its Layout (None: zarr reads it)."""

    def __init__(self, arr):
        self.arr = arr
        self.layout = layout(arr)

    @property
    def shape(self):
        return self.arr.shape

    @property
    def dtype(self):
        return self.arr.dtype


class ChunkReader:
    """Reads rows of Sources into the caller's arrays through reused buffers (module doc)."""

    def __init__(self):
        self._packed = np.empty(0, np.uint8)   # a chunk's file
        self._chunk = np.empty(0, np.uint8)    # the chunk decoded
        self._values: dict = {}                # scratch results of `values`, by dtype

    @property
    def nbytes(self) -> int:
        return self._packed.nbytes + self._chunk.nbytes + sum(a.nbytes for a in self._values.values())

    def read(self, src: Source, a: int, b: int, dest: np.ndarray) -> np.ndarray:
        """Rows [a, b) of `src` into `dest` (shape (b - a,) + the other axes, C-contiguous)."""
        if b <= a:
            return dest
        lay = src.layout
        if lay is None:
            from zarr.core.buffer.cpu import NDBuffer

            src.arr.get_basic_selection(slice(a, b), out=NDBuffer.from_numpy_array(dest))
            return dest
        flat = dest.reshape(b - a, lay.row_items)
        cr = lay.chunk_rows
        for c in range(a // cr, (b - 1) // cr + 1):
            lo, hi = max(a, c * cr), min(b, (c + 1) * cr)
            rows = self._decode(lay, c)
            if rows is None:
                flat[lo - a:hi - a] = lay.fill
            else:
                flat[lo - a:hi - a] = rows[lo - c * cr:hi - c * cr]
        return dest

    def values(self, src: Source, a: int, b: int, dtype=np.int64) -> np.ndarray:
        """Rows [a, b) of a one-dimensional Source in a scratch array of this reader, valid
        until its next `values` call."""
        dtype = np.dtype(dtype)
        buf = self._values.get(dtype)
        if buf is None or buf.shape[0] < b - a:
            buf = self._values[dtype] = np.empty(max(b - a, 1), dtype)
        return self.read(src, a, b, buf[:max(0, b - a)])

    def _decode(self, lay: Layout, c: int) -> np.ndarray | None:
        """Chunk c decoded into the reused buffer, [chunk_rows, row_items]; None when the
        chunk was never written (all fill value)."""
        try:
            fd = os.open(lay.chunk_path(c), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if self._packed.shape[0] < size:
                self._packed = np.empty(size, np.uint8)
            packed = memoryview(self._packed)[:size]
            got = 0
            while got < size:
                n = os.readv(fd, [packed[got:]])
                if n <= 0:
                    break
                got += n
        finally:
            os.close(fd)
        need = lay.chunk_nbytes
        if self._chunk.shape[0] < need:
            self._chunk = np.empty(need, np.uint8)
        out = self._chunk[:need]
        if lay.blosc:
            from numcodecs import blosc

            head = self._packed[:BLOSC_HEADER] if got >= BLOSC_HEADER else np.zeros(BLOSC_HEADER, np.uint8)
            nbytes, cbytes = (int(x) for x in head[4:16].view("<u4")[[0, 2]])
            if got != size or cbytes != size or nbytes != need:
                raise ValueError(f"{lay.chunk_path(c)}: a damaged chunk ({size} bytes of {cbytes} "
                                 f"compressed, {nbytes} decoded, expected {need})")
            blosc.decompress(packed, out)
        else:
            if got != need:
                raise ValueError(f"{lay.chunk_path(c)}: a damaged chunk ({got} bytes, expected {need})")
            out[:] = self._packed[:need]
        return out.view(lay.dtype).reshape(lay.chunk_rows, lay.row_items)
