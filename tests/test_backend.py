"""Backend: device resolution without a GPU, and a @cuda.jit kernel under the simulator matching numpy."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gpu_engine import backend


def test_auto_resolves_to_cpu_without_gpu():
    b = backend.resolve("auto")
    if backend.gpu_available():  # pragma: no cover - only on a GPU box
        assert b.name == "cuda" and not b.simulated
    else:
        assert b.name == "cpu" and b.xp is np


def test_cpu_is_numpy_and_roundtrip():
    b = backend.resolve("cpu")
    a = np.arange(5.0)
    d = b.to_device(a)
    assert b.xp is np
    np.testing.assert_array_equal(backend.to_host(d), a)


def test_unknown_device_refused():
    with pytest.raises(ValueError, match="device must be one of"):
        backend.resolve("tpu")


def test_cuda_without_gpu_raises_clearly():
    if backend.gpu_available() or backend.simulator_enabled():
        pytest.skip("a GPU or the simulator is present")
    with pytest.raises(RuntimeError, match="no working GPU"):
        backend.resolve("cuda")


SIM_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from numba import cuda
    from gpu_engine import backend

    b = backend.resolve("cuda")
    assert b.name == "cuda" and b.simulated and b.xp is np, b
    assert not backend.gpu_available()

    @cuda.jit
    def axpy(a, x, y, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = a * x[i] + y[i]

    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000)
    y = rng.standard_normal(1000)
    out = b.to_device(np.zeros(1000))
    axpy[8, 128](2.5, b.to_device(x), b.to_device(y), out)
    np.testing.assert_allclose(b.to_host(out), 2.5 * x + y, rtol=0, atol=1e-12)
    print("SIM_OK")
    """
)


def test_cuda_kernel_runs_under_simulator_and_matches_numpy():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", SIM_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SIM_OK" in proc.stdout
