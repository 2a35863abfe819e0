"""kernels.cpu_signature() is the argument type set kernels.run really passes to the CPU kernel.

`kernels.preload_cpu` loads the cached CPU kernel for that signature in a background thread
while the data loads; a signature that drifts from the real call (a new book array, a changed
number of dimensions) fails to type in that thread, silently, and the run pays for the typing
twice. Here the real call's types are captured and compared, and the signature types the kernel.
"""
from __future__ import annotations

import numba
import numpy as np

from gpu_engine import kernels
from gpu_engine.backend import resolve
from tests.test_kernel_chunks import _inputs


def test_signature_is_the_real_calls(monkeypatch):
    seen = []
    monkeypatch.setattr(kernels, "STARTUP", {})
    monkeypatch.setattr(kernels, "_load_cpu_kernel",
                        lambda kernel, args: seen.append(tuple(numba.typeof(a) for a in args)))
    book, bank, cfg = _inputs(7, 30, 3, 4)
    kernels.run(resolve("cpu"), book, bank, cfg, 2)
    assert seen, "kernels.run did not reach the CPU kernel"
    assert seen[0] == kernels.cpu_signature()


def test_book_layout_tables_agree():
    book, _, _ = _inputs(3, 12, 2, 1)
    args = book.as_args()
    assert len(args) == len(kernels.BOOK_DTYPES) == len(kernels.BOOK_NDIMS)
    for k, (a, dt, nd) in enumerate(zip(args, kernels.BOOK_DTYPES, kernels.BOOK_NDIMS)):
        assert np.asarray(a).ndim == nd, k
        assert np.dtype(np.asarray(a).dtype) == np.dtype(dt), k
