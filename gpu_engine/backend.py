"""Device choice and the array module: `device = auto|cpu|cuda`, `xp`, to_device/to_host.

`auto` picks CUDA only when a GPU really works. On a machine without one,
`import cupy` succeeds but every CuPy call raises, and `numba.cuda.is_available()`
is False; under the CUDA simulator it is True although there is no GPU. The probe
therefore checks, in order and each inside try/except:

1. the simulator flag (`NUMBA_ENABLE_CUDASIM=1`): kernels run on the CPU, arrays
   stay numpy (CuPy does not work under the simulator);
2. CuPy: a device count > 0 and a tiny allocation that round-trips;
3. `numba.cuda.is_available()`.

Running the numba-cuda kernels without a GPU (CI, laptops)::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_kernel_equivalence.py

Under the simulator `resolve("cuda")` returns a Backend with `name="cuda"`,
`simulated=True` and `xp=numpy`; `to_device` is then the identity and the
`@cuda.jit` kernels receive numpy arrays. The flag must be set before numba is
first imported (numba reads it once).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

DEVICES = ("auto", "cpu", "cuda")


def simulator_enabled() -> bool:
    """True when numba-cuda's CPU simulator is switched on for this process."""
    try:
        from numba import config

        return bool(getattr(config, "ENABLE_CUDASIM", 0))
    except Exception:  # pragma: no cover - numba always importable in our env
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def _cupy_works() -> bool:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        a = cupy.arange(4, dtype=cupy.float32)
        return float(cupy.asnumpy(a * 2)[3]) == 6.0
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def _numba_cuda_works() -> bool:
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def gpu_available() -> bool:
    """A real GPU usable by both CuPy and numba-cuda (never true under the simulator)."""
    if simulator_enabled():
        return False
    return _cupy_works() and _numba_cuda_works()


@dataclass(frozen=True)
class Backend:
    """The resolved device: its name, whether CUDA is simulated, and the array module."""

    name: str  # "cpu" or "cuda"
    simulated: bool
    xp: ModuleType

    @property
    def is_cuda(self) -> bool:
        return self.name == "cuda"

    def to_device(self, a: Any) -> Any:
        return to_device(a, self)

    def to_host(self, a: Any) -> np.ndarray:
        return to_host(a)


def resolve(device: str = "auto") -> Backend:
    """Turn `auto|cpu|cuda` into a Backend; `cuda` without a GPU (and no simulator) raises."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return Backend("cpu", False, np)
    if simulator_enabled():
        if device == "cuda":
            return Backend("cuda", True, np)
        return Backend("cpu", False, np)  # auto never picks the slow simulator
    if gpu_available():
        import cupy

        return Backend("cuda", False, cupy)
    if device == "cuda":
        raise RuntimeError(
            "device='cuda' requested but no working GPU was found (CuPy and numba-cuda "
            "both must work); install the [cuda12] extra on a GPU machine, or set "
            "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in the simulator"
        )
    return Backend("cpu", False, np)


def get_xp(device: str = "auto") -> ModuleType:
    """The array module (numpy or cupy) for a device choice."""
    return resolve(device).xp


def to_device(a: Any, backend: Backend | None = None) -> Any:
    """Copy a host array to the backend's device (identity on cpu and under the simulator)."""
    backend = backend or resolve("auto")
    if backend.xp is np:
        return np.asarray(a)
    return backend.xp.asarray(a)


def to_host(a: Any) -> np.ndarray:
    """Return a numpy array whatever the input lives on."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if callable(get) and type(a).__module__.startswith("cupy"):
        return get()
    return np.asarray(a)


def array_module(a: Any) -> ModuleType:
    """numpy or cupy, whichever owns `a`."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
