"""The CUDA kernel under numba-cuda's simulator == the CPU kernel, bit for bit.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so the comparison runs in a
subprocess (`python -c SCRIPT` with the flag) and the rest of the suite keeps normal numba.
Small sizes (the simulator runs ~1e5 config-ticks/s): random books and configurations from
tests/test_kernel_oracle.py, several batches (batch=16) so batch offsets are exercised too.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import numpy as np
from numba import config
assert config.ENABLE_CUDASIM, "simulator flag not seen by numba"
import gpu_engine
from gpu_engine.backend import resolve
from tests.test_kernel_oracle import random_bank, random_book, random_configs

be = resolve("cuda")
assert be.is_cuda and be.simulated, be
checked = 0
for seed, (T, L, C) in enumerate([(300, 4, 64), (120, 2, 40), (1, 1, 8), (250, 5, 50)]):
    rng = np.random.default_rng(1000 + seed)
    book = random_book(rng, T, L)
    bank = random_bank(rng, T)
    cfg = random_configs(rng, C, T, int(book.ts[-1] - book.ts[0]))
    a = gpu_engine.sweep(book, bank, cfg, device="cuda", buckets=3, batch=16)
    b = gpu_engine.sweep(book, bank, cfg, device="cpu", buckets=3)
    assert a.attrs["device"] == "cuda" and a.attrs["simulated"] == 1
    for name in list(a.data_vars):
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (seed, name, x, y)
    checked += C
    assert int(b["trades"].sum()) > 0 or T == 1
print("EQUAL", checked)
"""


def test_cuda_simulator_equals_cpu_kernel():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EQUAL 162" in proc.stdout, proc.stdout
