"""The on-disk kernel cache (gpu_engine/kernels/cache.py): warm starts, never a stale kernel.

End to end, in subprocesses on a copy of the `gpu_engine/` tree with their own
GPU_ENGINE_CACHE_DIR (a tiny book, 4 configurations):
(a) the second process loads the compiled CPU kernel instead of compiling it, and reaches
    its first kernel result in under a third of the cold process's time;
(b) after the copy's strategy.py is edited (a fee arithmetic change), a run with the same
    cache compiles again and gets the edited rules' result (equal, bit for bit, to the
    plain-Python twin of the edited rules), never the cached kernel of the old text;
(c) random bytes in the cached code file: the next run gives the right result and rebuilds.
(b) and (c) run concurrently (each compiles once). In process, without compiling: the stamp
covers every file the kernels are built from, corrupt/foreign files are dropped, an
unwritable cache folder means no cache, and numba's index key carries the CPU.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
T0 = time.perf_counter()
from types import SimpleNamespace
import numpy as np
import gpu_engine
from gpu_engine import kernels
from gpu_engine.backend import resolve
from gpu_engine.enums import CONFIG_FIELDS
from gpu_engine.kernels import cpu
print("IMPORTED", flush=True)

T, L, C, B = 40, 3, 4, 2
rng = np.random.default_rng(7)
mid = 100.0 + np.cumsum(rng.normal(0.0, 0.05, T))
lv = 0.01 * np.arange(L)
book = SimpleNamespace(ts=np.arange(T, dtype=np.int64) * 10_000_000,
                       bid_px=mid[:, None] - 0.01 - lv, ask_px=mid[:, None] + 0.01 + lv,
                       bid_sz=np.full((T, L), 5.0, np.float32),
                       ask_sz=np.full((T, L), 5.0, np.float32))
bank = rng.normal(0.0, 1.0, (1, T)).astype(np.float32)
given = {"signal": [0, 0, 0, 0], "entry": [0.3, 0.6, 0.9, 1.2],
         "take_profit": [5.0, 10.0, 20.0, 40.0], "stop_loss": [5.0, 10.0, 20.0, 40.0],
         "fee_bps": [1.0, 2.0, 5.0, 10.0]}
cfg = {f: np.asarray(given[f] if f in given else [d] * C, dtype=dt)
       for f, (dt, d) in CONFIG_FIELDS.items()}
be = resolve("cpu")
prepared = kernels.prepare_book(book, be)
out = kernels.run(be, prepared, bank, cfg, B)
T1 = time.perf_counter()
res = {"file": gpu_engine.__file__, "seconds": T1 - T0, "disk_cache": cpu.DISK_CACHE,
       "hits": sum(cpu.sweep_cpu.stats.cache_hits.values()),
       "misses": sum(cpu.sweep_cpu.stats.cache_misses.values()),
       "signatures": len(cpu.sweep_cpu.signatures),
       "bits": [a.tobytes().hex() for a in out], "trades": out[0][:, 0].tolist()}
if "--twin" in sys.argv:
    from gpu_engine.strategy import python_twin
    twin = python_twin("run_config")
    ref = kernels.allocate(C, B)
    for c in range(C):
        twin(c, *prepared.as_args(), bank, *(cfg[f] for f in kernels.FIELDS), *ref)
    res["twin_bits"] = [a.tobytes().hex() for a in ref]
print("RESULT " + json.dumps(res), flush=True)
"""

FEE_LINE = "    fee = rate * v\n"
EDITED_FEE_LINE = "    fee = 2.0 * rate * v\n"


def _env(pkg_root: Path, cache_dir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pkg_root), GPU_ENGINE_CACHE_DIR=str(cache_dir),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


def _start(work: Path, pkg_root: Path, cache_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(work / "child.py"), *args], cwd=work,
                            env=_env(pkg_root, cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, started: float, pkg_root: Path) -> dict:
    out, err = proc.communicate(timeout=600)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["wall"] = wall
    # the copy was imported, not the checkout
    assert Path(res["file"]).resolve().is_relative_to(pkg_root.resolve()), res["file"]
    return res


def _run(work: Path, pkg_root: Path, cache_dir: Path, *args: str) -> dict:
    started = time.perf_counter()
    return _finish(_start(work, pkg_root, cache_dir, *args), started, pkg_root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every end-to-end subprocess run of this module (2 + 2 concurrent compiles in all)."""
    work = tmp_path_factory.mktemp("kernel_cache")
    (work / "child.py").write_text(CHILD)
    pkg = work / "pkg"
    shutil.copytree(REPO / "gpu_engine", pkg / "gpu_engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache = work / "cache"
    r = {"cache": cache}
    r["cold"] = _run(work, pkg, cache)
    r["warm"] = _run(work, pkg, cache)
    r["files_after_warm"] = sorted(p.name for p in cache.rglob("*") if p.is_file())

    # (c) a copy of the warm cache whose compiled-code files hold random bytes
    corrupt = work / "cache_corrupt"
    shutil.copytree(cache, corrupt)
    rng = np.random.default_rng(0)
    nbc = sorted(corrupt.rglob("*.nbc"))
    for p in nbc:
        p.write_bytes(rng.integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())
    r["corrupted"] = [p.name for p in nbc]
    started_c = time.perf_counter()
    proc_c = _start(work, pkg, corrupt)
    # the corrupt-cache run reads the unedited sources: edit only once it has imported them
    assert proc_c.stdout.readline().strip() == "IMPORTED"

    # (b) edit the copy's rules, run with the same cache as (a)
    strategy = pkg / "gpu_engine" / "strategy.py"
    text = strategy.read_text()
    assert text.count(FEE_LINE) == 1
    strategy.write_text(text.replace(FEE_LINE, EDITED_FEE_LINE))
    started_b = time.perf_counter()
    proc_b = _start(work, pkg, cache, "--twin")

    r["corrupt"] = _finish(proc_c, started_c, pkg)
    r["edited"] = _finish(proc_b, started_b, pkg)
    r["edited_again"] = _run(work, pkg, cache)
    strategy.write_text(text)  # the rules (c) rebuilt its kernel from
    r["corrupt_again"] = _run(work, pkg, corrupt)
    print("\nkernel cache runs (s, process start to first kernel result / wall):",
          {k: (round(v["seconds"], 2), round(v["wall"], 2)) for k, v in r.items()
           if isinstance(v, dict) and "seconds" in v})
    return r


def test_warm_process_loads_the_compiled_kernel(runs):
    cold, warm = runs["cold"], runs["warm"]
    assert (cold["misses"], cold["hits"], cold["signatures"]) == (1, 0, 1), cold
    assert (warm["misses"], warm["hits"], warm["signatures"]) == (0, 1, 1), warm
    assert warm["bits"] == cold["bits"]
    assert min(cold["trades"]) > 0  # the fee edit of (b) must show
    # the cache lives under GPU_ENGINE_CACHE_DIR, nowhere else
    assert Path(cold["disk_cache"]).is_relative_to(runs["cache"])
    assert any(n.endswith(".nbi") for n in runs["files_after_warm"])
    assert any(n.endswith(".nbc") for n in runs["files_after_warm"])
    assert warm["wall"] < cold["wall"] / 3, (cold["wall"], warm["wall"])


def test_edited_rules_are_never_served_from_the_cache(runs):
    cold, edited, again = runs["cold"], runs["edited"], runs["edited_again"]
    assert (edited["misses"], edited["hits"]) == (1, 0), edited
    assert edited["bits"] != cold["bits"], "the stale kernel was served"
    assert edited["bits"] == edited["twin_bits"], "not the edited rules' result"
    # and the edited kernel is cached in turn
    assert (again["misses"], again["hits"]) == (0, 1), again
    assert again["bits"] == edited["bits"]


def test_corrupt_cache_files_are_rebuilt(runs):
    assert runs["corrupted"]
    bad, again = runs["corrupt"], runs["corrupt_again"]
    assert (bad["misses"], bad["hits"]) == (1, 0), bad
    assert bad["bits"] == runs["cold"]["bits"]
    assert (again["misses"], again["hits"]) == (0, 1), again
    assert again["bits"] == runs["cold"]["bits"]


# ---------------------------------------------------------------------------------------
# In process: no kernel is compiled


def _reachable(py_func, seen=None) -> set:
    """The Python functions a numba function compiles (itself and every numba function its
    code names, transitively), and the gpu_engine modules its globals come from."""
    seen = set() if seen is None else seen
    if py_func in seen:
        return seen
    seen.add(py_func)
    codes, names = [py_func.__code__], set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    for name in names:
        value = py_func.__globals__.get(name)
        inner = getattr(value, "py_func", None)
        if inner is not None:
            _reachable(inner, seen)
        elif hasattr(value, "__code__") and getattr(value, "__module__", "").startswith("gpu_engine"):
            _reachable(value, seen)
    return seen


def test_stamp_covers_every_module_the_kernels_are_built_from():
    from gpu_engine.kernels import cache, cpu
    from gpu_engine.kernels import cuda as kcuda

    for kernel_file, py_func in ((cache.KERNEL_DIR / "cpu.py", cpu.sweep_cpu.py_func),
                                 (cache.KERNEL_DIR / "cuda.py", kcuda.sweep_cuda_pyfunc),
                                 (cache.KERNEL_DIR / "cuda.py", kcuda.window_cuda_pyfunc)):
        sources = set(cache.kernel_sources(kernel_file))
        assert kernel_file in sources
        funcs = _reachable(py_func)
        files = {Path(f.__code__.co_filename).resolve() for f in funcs}
        assert files <= sources, files - sources
        # every gpu_engine module those functions read globals from (constants included)
        for f in funcs:
            for value in f.__globals__.values():
                mod = getattr(value, "__module__", None) if not isinstance(value, type(os)) \
                    else value.__name__
                if isinstance(mod, str) and mod.startswith("gpu_engine") \
                        and mod in sys.modules and getattr(sys.modules[mod], "__file__", None):
                    path = Path(sys.modules[mod].__file__).resolve()
                    if path.name != "__init__.py":
                        assert path in sources, (f.__name__, mod)
    names = {p.relative_to(cache.PACKAGE_DIR).as_posix()
             for p in cache.kernel_sources(cache.KERNEL_DIR / "cpu.py")}
    assert {"strategy.py", "queue.py", "enums.py", "kernels/cpu.py"} <= names
    # the rules read their layouts from enums.py, never the metrics layer
    assert "sweep.py" not in names and "kernels/__init__.py" not in names and "metrics.py" not in names


def test_stamp_changes_with_each_source_and_toolchain(tmp_path, monkeypatch):
    from gpu_engine.kernels import cache

    copy = tmp_path / "gpu_engine"
    shutil.copytree(REPO / "gpu_engine", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_DIR", copy)
    kernel = str(copy / "kernels" / "cpu.py")
    stamp = cache._stamp.__wrapped__
    base = stamp(kernel, ())
    assert stamp(kernel, ()) == base
    sources = cache.kernel_sources(kernel)
    assert len(sources) >= 4
    for path in sources:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert stamp(kernel, ()) != base, path
        path.write_bytes(original)
    assert stamp(kernel, ()) == base
    (copy / "oracle.py").write_text("# not a kernel source\n")
    assert stamp(kernel, ()) == base
    assert stamp(kernel, ("numba-cuda", "0.0")) != base
    monkeypatch.setattr(numba, "__version__", "0.0.0")
    assert stamp(kernel, ()) != base


def test_index_key_carries_the_cpu():
    from llvmlite import binding as ll
    from numba.core import config

    from gpu_engine.kernels import cpu

    assert type(cpu.sweep_cpu._cache).__name__ == "KernelCache"
    assert Path(cpu.DISK_CACHE).is_relative_to(Path(os.environ["GPU_ENGINE_CACHE_DIR"]))
    codegen = cpu.sweep_cpu.targetctx.codegen()
    key = cpu.sweep_cpu._cache._index_key((), codegen)
    triple, cpu_name, features = key[1]
    assert key[1] == codegen.magic_tuple()
    assert cpu_name == (config.CPU_NAME or ll.get_host_cpu_name())
    assert features  # e.g. "+avx2,+fma,..."


def _fresh_kernel_cache(monkeypatch, cache_dir):
    """A new dispatcher of the CPU kernel's function with the disk cache under cache_dir."""
    from gpu_engine.kernels import cache, cpu

    monkeypatch.setenv("GPU_ENGINE_CACHE_DIR", str(cache_dir))
    disp = numba.njit(parallel=True, nogil=True)(cpu.sweep_cpu.py_func)
    return disp, cache.enable(disp, "cpu")


def test_corrupt_or_foreign_files_are_a_miss_and_deleted(tmp_path, monkeypatch):
    disp, folder = _fresh_kernel_cache(monkeypatch, tmp_path)
    assert folder is not None and Path(folder).is_relative_to(tmp_path)
    kc = disp._cache
    files = kc._cache_file
    index = Path(files._index_path)
    ctx = disp.targetctx
    key = kc._index_key((), ctx.codegen())

    def load():
        return kc.load_overload((), ctx)

    assert load() is None  # empty
    files.save(key, ("payload", 1))
    assert files.load(key) == ("payload", 1)
    data = sorted(Path(folder).glob("*.nbc"))
    assert len(data) == 1
    good_index, good_data = index.read_bytes(), data[0].read_bytes()

    bad_files = {
        "truncated index": (index, good_index[: len(good_index) // 2]),
        "random index": (index, os.urandom(len(good_index))),
        "empty index": (index, b""),
        "numba-format index": (index, pickle.dumps(numba.__version__) + pickle.dumps(("x", {}))),
        "truncated data": (data[0], good_data[:-7]),
        "random data": (data[0], os.urandom(len(good_data))),
        "flipped data byte": (data[0], good_data[:-1] + bytes([good_data[-1] ^ 1])),
    }
    for what, (path, blob) in bad_files.items():
        index.write_bytes(good_index)
        data[0].write_bytes(good_data)
        path.write_bytes(blob)
        assert load() is None, what
        assert not index.exists() and not data[0].exists(), what
    # a valid index of another numba version or source stamp: a miss, nothing raised
    index.write_bytes(good_index)
    data[0].write_bytes(good_data)
    other = type(files)(files._cache_path, files._filename_base, "another stamp",
                        files._dumps, files._version)
    assert other.load(key) is None
    other = type(files)(files._cache_path, files._filename_base, files._source_stamp,
                        files._dumps, b"another numba")
    assert other.load(key) is None
    # a data file saved under another key is not served for this one
    other_key = key[:-1] + (("x", "y"),)
    files.save(other_key, ("other", 2))
    name = pickle.loads(index.read_bytes()[len(files.INDEX_MAGIC) + 32:])[2][other_key]
    shutil.copy(Path(folder) / name, data[0])
    assert files.load(key) is None
    # saving over a corrupt index starts a new one
    index.write_bytes(b"garbage")
    files.save(key, ("payload", 3))
    assert files.load(key) == ("payload", 3)


def test_unwritable_or_off_means_no_disk_cache(tmp_path, monkeypatch):
    from numba.core.caching import NullCache

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for value in (str(blocker / "sub"), "off", "OFF"):
        disp, folder = _fresh_kernel_cache(monkeypatch, value)
        assert folder is None, value
        assert isinstance(disp._cache, NullCache), value
    # only the package's kernel files get a locator
    from gpu_engine.kernels import cache

    monkeypatch.setenv("GPU_ENGINE_CACHE_DIR", str(tmp_path / "ok"))
    assert cache.enable(numba.njit(lambda x: x)) is None
    assert not (tmp_path / "ok").exists()


def test_cuda_kernel_gets_the_keyed_cache():
    from gpu_engine.backend import simulator_enabled

    if simulator_enabled():
        pytest.skip("under the simulator there is no compiled CUDA kernel to cache")
    import numba_cuda

    from gpu_engine.kernels import cache
    from gpu_engine.kernels import cuda as kcuda

    assert type(kcuda.sweep_cuda._cache).__name__ == "KernelCUDACache"
    assert Path(kcuda.DISK_CACHE).is_relative_to(Path(os.environ["GPU_ENGINE_CACHE_DIR"]))
    assert kcuda.sweep_cuda._cache._impl.locator.get_source_stamp() == cache.source_stamp(
        cache.KERNEL_DIR / "cuda.py", ("numba-cuda", numba_cuda.__version__))


def test_stamp_is_remembered_until_a_source_file_changes(tmp_path, monkeypatch):
    """The stamp memo (stamps.json) serves a stamp only while every file it came from is unchanged."""
    from gpu_engine.kernels import cache

    copy = tmp_path / "gpu_engine"
    shutil.copytree(REPO / "gpu_engine", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_DIR", copy)
    monkeypatch.setenv("GPU_ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    kernel = str(copy / "kernels" / "cpu.py")
    stamp = cache._stamp.__wrapped__
    base = stamp(kernel, ())
    assert (tmp_path / "cache" / "stamps.json").is_file()
    real_sources = cache.kernel_sources

    def no_parsing(*a, **k):
        raise AssertionError("the memo should have answered")

    monkeypatch.setattr(cache, "kernel_sources", no_parsing)
    assert stamp(kernel, ()) == base                       # answered from the memo
    monkeypatch.setattr(cache, "kernel_sources", real_sources)
    strategy = copy / "strategy.py"
    strategy.write_bytes(strategy.read_bytes() + b"\n# edited\n")
    edited = stamp(kernel, ())
    assert edited != base                                  # recomputed after the edit
    (tmp_path / "cache" / "stamps.json").write_text("{not json")
    assert stamp(kernel, ()) == edited                     # a damaged memo is only a miss
