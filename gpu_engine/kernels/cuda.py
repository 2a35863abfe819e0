"""CUDA sweep kernel: numba-cuda `@cuda.jit`, one thread per configuration.

The thread runs `strategy.run_one` (with every rule function inlined:
`strategy.inlined_twin`; numba-cuda compiles it for the GPU) on the book and configuration tuples it builds from its arguments
(kernels.BookArrays.as_args() + bank, the CONFIG_FIELDS arrays, the outputs). The caller
sorts configurations by signal row so a warp reads one bank row (a broadcast load per tick).
`window_cuda` runs one window of a streamed book (`strategy.run_window`: the state loaded
from and stored back into device arrays between windows; kernels/stream.py).
On a real GPU the arrays are CuPy arrays (passed through `__cuda_array_interface__`); under
the simulator (NUMBA_ENABLE_CUDASIM=1) they are numpy arrays. `from numba import cuda` must
stay a module-level import (the simulator swaps the `cuda` global of the kernel's module).

On a real GPU the compiled kernel is cached on disk by kernels/cache.py like the CPU kernel
(`DISK_CACHE`: the folder, None when there is none), keyed by the sources of this file and
the gpu_engine modules it imports, the numba/numba-cuda versions and, through numba-cuda's
index key, the CUDA runtime version and the device's compute capability. Under the simulator
there is no compiled kernel to cache.
"""
from __future__ import annotations

from numba import cuda

from gpu_engine.backend import simulator_enabled
from gpu_engine.kernels import cache as _cache
from gpu_engine.strategy import inlined_twin, python_twin

# Under the simulator the kernel body runs as Python on fake device arrays, which a compiled
# njit function cannot unbox: it then calls the plain-Python twin of the same rules. On a GPU
# every rule function is inlined (strategy.inlined_twin: the CPU kernel calls a few).
run_one = python_twin("run_one") if simulator_enabled() else inlined_twin("run_one")
run_window = python_twin("run_window") if simulator_enabled() else inlined_twin("run_window")

THREADS_PER_BLOCK = 128


def _disable_fma_contraction() -> None:
    """Compile with NVVM's `-fma=0` so that the GPU rounds every multiply and add like the CPU.

    NVVM contracts a*b+c into one fused multiply-add by default (numba-cuda exposes no switch
    short of fastmath), which moves money values by an ulp and can flip a threshold test on
    an exact tie; the CPU kernel (LLVM without fastmath) never contracts. numba-cuda passes
    its options to `nvvm.compile_ir`, looked up at call time, so wrapping it adds `fma=False`
    unless fastmath was asked for. tests/test_ptx.py checks the PTX has no fma.rn.f64.
    """
    from numba.cuda.cudadrv import nvvm

    if getattr(nvvm.compile_ir, "_gpu_engine_no_fma", False):
        return
    original = nvvm.compile_ir

    def compile_ir(llvmir, **options):
        if not options.get("fastmath"):
            options.setdefault("fma", False)
        return original(llvmir, **options)

    compile_ir._gpu_engine_no_fma = True
    nvvm.compile_ir = compile_ir


if not simulator_enabled():
    _disable_fma_contraction()


def _sweep_cuda(ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
                tr_start, tr_px, tr_qty, tr_side, mkt, bank,
                signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                size_frac, max_qty, cooldown, fee_bps, latency, capital,
                entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency,
                raw, bpnl, btr, bwin):
    c = cuda.grid(1)
    if c < signal.shape[0]:
        book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
                tr_start, tr_px, tr_qty, tr_side, mkt, bank)
        cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
               size_frac, max_qty, cooldown, fee_bps, latency, capital,
               entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
        run_one(c, book, cfg, raw, bpnl, btr, bwin)


def _window_cuda(ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
                 tr_start, tr_px, tr_qty, tr_side, mkt, bank,
                 signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
                 size_frac, max_qty, cooldown, fee_bps, latency, capital,
                 entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency,
                 raw, bpnl, btr, bwin, fs, ist, flags):
    """One window of a streamed book (kernels/stream.py): strategy.run_window, the state
    carried between windows in the device arrays fs [C, NSTATE_F] and ist [C, NSTATE_I]."""
    c = cuda.grid(1)
    if c < signal.shape[0]:
        book = (ts, bid_px, ask_px, bid_sz, ask_sz, bid0, ask0, pbid, pask, dbid, dask, rsum,
                tr_start, tr_px, tr_qty, tr_side, mkt, bank)
        cfg = (signal, entry, exit_, side, regime, band, take_profit, stop_loss, max_hold,
               size_frac, max_qty, cooldown, fee_bps, latency, capital,
               entry_type, entry_offset, entry_tif, tp_type, maker_fee_bps, cancel_latency)
        run_window(c, book, cfg, raw, bpnl, btr, bwin, fs, ist, flags)


sweep_cuda_pyfunc = _sweep_cuda  # the plain function, for cuda.compile_ptx (tests/test_ptx.py)
sweep_cuda = cuda.jit(_sweep_cuda)
window_cuda_pyfunc = _window_cuda
window_cuda = cuda.jit(_window_cuda)
DISK_CACHE = None if simulator_enabled() else _cache.enable(sweep_cuda, "cuda")
if not simulator_enabled():
    _cache.enable(window_cuda, "cuda")


def launch(args: tuple, n: int, kernel=None, sync: bool = True) -> None:
    """Run `kernel` (default sweep_cuda; window_cuda for a streamed window) over n
    configurations (args in its order) and, unless `sync` is false, wait for it."""
    if n == 0:
        return
    blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    (sweep_cuda if kernel is None else kernel)[blocks, THREADS_PER_BLOCK](*args)
    if sync:
        cuda.synchronize()
