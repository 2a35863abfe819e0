"""The real CUDA kernels compile for Hopper (sm_90) without a GPU and do not spill.

`cuda.compile_ptx(kernel, signature, cc=(9, 0))` on the kernel's Python function with the
argument types `sweep` launches it with, then `ptxas -arch=sm_90 -v` from the
nvidia-cuda-nvcc wheel: 0 bytes of spill stores and loads. Registers per thread are recorded
in benchmarks/RESULTS.md (`python tests/test_ptx.py` prints them). Both the one-shot kernel
(sweep_cuda) and the window kernel of a streamed book (window_cuda: the same plus the state
arrays and the window flags) are checked, compiled at the same time in two processes.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba import cuda

from gpu_engine.enums import CONFIG_FIELDS, NRAW
from gpu_engine.kernels import BOOK_DTYPES, BOOK_NDIMS
from gpu_engine.strategy import inlined_twin

queue_prob = inlined_twin("queue_prob")  # as the CUDA kernel inlines it


def _ptxas() -> Path | None:
    import nvidia.cuda_nvcc as pkg  # the wheel ships ptxas under nvidia/cuda_nvcc/bin

    for base in getattr(pkg, "__path__", []):
        p = Path(base) / "bin" / "ptxas"
        if p.is_file():
            return p
    return None


def kernel_signature():
    f64_2 = numba.typeof(np.zeros((1, 1), np.float64))
    f32_2 = numba.typeof(np.zeros((1, 1), np.float32))
    i32_2 = numba.typeof(np.zeros((1, 1), np.int32))
    # kernels.BookArrays.as_args(): dtypes and numbers of dimensions (kernels.BOOK_NDIMS)
    book = tuple(numba.typeof(np.zeros((1,) * nd, dt)) for dt, nd in zip(BOOK_DTYPES, BOOK_NDIMS))
    cfg = tuple(numba.typeof(np.zeros(1, dt)) for dt, _ in CONFIG_FIELDS.values())
    out = (f64_2, f64_2, i32_2, i32_2)
    return book + (f32_2,) + cfg + out


def window_kernel_signature():
    """kernel_signature() + the state arrays fs, ist and the window flags (kernels.stream)."""
    f64_2 = numba.typeof(np.zeros((1, 1), np.float64))
    i64_2 = numba.typeof(np.zeros((1, 1), np.int64))
    return kernel_signature() + (f64_2, i64_2, numba.typeof(np.int64(3)))


def _queue_prob_only(out, front, back, model, n):
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = queue_prob(front[i], back[i], model[i], n[i])


def libdevice_fmas() -> int:
    """fma.rn.f64 in the PTX of a kernel calling only queue.queue_prob (libdevice pow, log)."""
    import gpu_engine.kernels.cuda  # noqa: F401  (compiles with -fma=0, as the sweep kernel)

    f64 = numba.typeof(np.zeros(1, np.float64))
    i64 = numba.typeof(np.zeros(1, np.int64))
    ptx, _ = cuda.compile_ptx(_queue_prob_only, (f64, f64, f64, i64, f64), cc=(9, 0))
    return ptx.count("fma.rn.f64")


def compile_and_assemble(tmp: Path, kernel: str = "sweep") -> str | None:
    """The kernel's PTX checked (below), then `ptxas -v`'s report; None when ptxas is absent."""
    from gpu_engine.kernels.cuda import sweep_cuda_pyfunc, window_cuda_pyfunc

    if kernel == "sweep":
        ptx, _ = cuda.compile_ptx(sweep_cuda_pyfunc, kernel_signature(), cc=(9, 0))
    else:
        ptx, _ = cuda.compile_ptx(window_cuda_pyfunc, window_kernel_signature(), cc=(9, 0))
    assert ".target sm_90" in ptx
    # no contracted multiply-adds: the GPU rounds like the CPU kernel (kernels/cuda.py,
    # -fma=0). With -fma=0 NVVM writes every f64 multiply, add and subtract of the rules with
    # an explicit rounding mode (mul.rn.f64 ...), which ptxas never fuses; without it, it
    # fuses some into fma.rn.f64 and leaves the rest as plain mul.f64 / add.f64 / sub.f64,
    # which ptxas may still contract. So: no plain f64 multiply, add or subtract at all, and
    # the fma.rn.f64 left are libdevice's own (pow and log1p of the power and log queue
    # models, gpu_engine/queue.py), at most as many as in a kernel that calls nothing but
    # queue.queue_prob times the two places the rules inline queue_depth.
    plain = re.findall(r"\b(?:mul|add|sub)\.f64\b", ptx)
    assert not plain, plain[:5]
    assert ptx.count("mul.rn.f64") > 0
    assert ptx.count("fma.rn.f64") <= 2 * libdevice_fmas(), ptx.count("fma.rn.f64")
    src = tmp / f"{kernel}.ptx"
    src.write_text(ptx)
    ptxas = _ptxas()
    if ptxas is None:
        return None
    proc = subprocess.run([str(ptxas), "-arch=sm_90", "-v", str(src), "-o", str(tmp / f"{kernel}.cubin")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


KERNELS = ("sweep", "window")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Both kernels compiled at once, each in its own process (a compile takes about two minutes
    on one core; CI has two): kernel -> a future of compile_and_assemble's report."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    tmp = tmp_path_factory.mktemp("ptx")
    with ProcessPoolExecutor(len(KERNELS), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield {k: pool.submit(compile_and_assemble, tmp, k) for k in KERNELS}


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_compiles_for_sm90_without_spills(reports, kernel):
    if NRAW <= 0:  # pragma: no cover - layout sanity
        pytest.fail("empty raw layout")
    report = reports[kernel].result(timeout=900)
    if report is None:
        pytest.skip("ptxas not found in the nvidia-cuda-nvcc wheel (install the dev extra)")
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    regs = re.findall(r"Used (\d+) registers", report)
    assert spills and regs, report
    assert all(int(s) == 0 and int(l) == 0 for s, l in spills), report
    assert 0 < int(regs[-1]) <= 255, report


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for name in KERNELS:
            print(name, compile_and_assemble(Path(d), name))
    sys.exit(0)
