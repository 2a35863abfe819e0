"""On-disk cache of the compiled sweep kernels, keyed by everything they are built from.

Without it every new process spends 12-45 s compiling `kernels.cpu.sweep_cpu` (the
trading rules of strategy.py inlined into one parallel numba function). numba's own
`cache=True` cannot be used as is: its source stamp is the defining file only
(kernels/cpu.py), so an edited rule in strategy.py would silently load the old kernel.

Where: `$GPU_ENGINE_CACHE_DIR` when set (and not empty), else
`~/.cache/gpu-sweep-engine/numba`; `GPU_ENGINE_CACHE_DIR=off` switches the cache off.
Inside it each copy of the package gets its own sub-folder (numba's
`<folder name>_<sha1 of the folder path>`). When the folder cannot be created or written,
there is no disk cache and the kernels compile in memory as before.

Key: a cache entry is served only when all of these match the running process:
- `source_stamp(kernel file)`: SHA-256 of the source text of the kernel module and of
  every gpu_engine module it imports, transitively (`kernel_sources`, found by walking the
  import statements of the files, so a new import is covered without a list to keep up;
  tests/test_kernel_cache.py checks that every function the kernel compiles and every
  gpu_engine module it reads comes from one of them), plus the versions of Python, numpy,
  numba, llvmlite (and numba-cuda for the CUDA kernel) and the numba settings that change
  the generated code (NUMBA_OPT, NUMBA_BOUNDSCHECK, NUMBA_CPU_NAME/FEATURES, ...);
- numba's own index key: the argument types, the kernel's bytecode, and the codegen's
  `magic_tuple()`: (target triple, host CPU name, CPU features) on the CPU; (CUDA runtime
  version, compute capability) on the GPU, plus the numba-cuda version.

Files: `<module>.<function>-<line>.py<XY>.nbi` (index) and `...<n>.nbc` (compiled code),
each written atomically (temporary file + rename) as a magic line, the SHA-256 of the body
and the body (numba's pickle). A data file also carries the stamp and index key it was
saved under. Anything that does not check out (truncated, random bytes, another format or
version, a data file of another key) is a cache miss: the function's files are deleted and
the kernel is compiled and saved again; nothing unchecked is ever loaded. Errors while
saving (disk full, folder gone) are ignored.

How: `enable(dispatcher)` replaces the dispatcher's NullCache by a `numba.core.caching`
(CPU) or `numba.cuda` (CUDA) Cache subclass whose locator answers only for this package's
kernel files and whose `get_source_stamp()` is the stamp above (what numba's
`enable_caching()` does, minus numba's locator chain: when our folder is unwritable numba
would fall back to its own `__pycache__` locator, keyed on the kernel file alone). The
CUDA kernel is cached on a real GPU only; under the simulator (NUMBA_ENABLE_CUDASIM=1)
`cuda.jit` returns a Python-level fake kernel and there is nothing to cache.
"""
from __future__ import annotations

import ast
import functools
import glob
import hashlib
import json
import inspect
import itertools
import logging
import os
import pickle
import platform
import sys
import tempfile
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_DIR = "GPU_ENGINE_CACHE_DIR"
DEFAULT_DIR = Path("~") / ".cache" / "gpu-sweep-engine" / "numba"
FORMAT = b"gpu-engine kernel cache v1"

PACKAGE = __name__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
KERNEL_DIR = Path(__file__).resolve().parent
# The files whose functions may be cached (the locator answers for nothing else).
KERNEL_FILES = (KERNEL_DIR / "cpu.py", KERNEL_DIR / "cuda.py")


class CorruptCacheFile(Exception):
    """A cache file that does not check out (wrong magic, digest, or unreadable body)."""


def cache_root() -> Path | None:
    """The cache folder ($GPU_ENGINE_CACHE_DIR, else ~/.cache/gpu-sweep-engine/numba);
    None when switched off (GPU_ENGINE_CACHE_DIR=off) or when no home folder is known."""
    value = os.environ.get(ENV_DIR, "")
    if value.strip().lower() == "off":
        return None
    try:
        return Path(value).expanduser() if value else DEFAULT_DIR.expanduser()
    except RuntimeError:  # no home directory to expand "~" against
        return None


# ---------------------------------------------------------------------------------------
# What a kernel is built from


def _module_file(name: str) -> Path | None:
    """The source file of module `name` of this package (None if it is not one)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path) -> set[str]:
    """Names of the modules of this package that `path` imports (anywhere in the file):
    `import gpu_engine.x` and `from gpu_engine.x import f` name gpu_engine.x;
    `from gpu_engine.kernels import cpu` names the submodule gpu_engine.kernels.cpu;
    `from gpu_engine import __version__` (not a submodule) names the package gpu_engine."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if alias.name != "*" and _module_file(sub) is not None else base)
    return {name for name in found if _module_file(name) is not None}


def kernel_sources(kernel_file: str | os.PathLike) -> tuple[Path, ...]:
    """The kernel module's file and every file of this package it imports, transitively
    (sorted; see _imported_modules). The `__init__.py` of a package counts only when the
    package itself is imported, not when a submodule of it is."""
    seen: set[Path] = set()
    todo = [Path(kernel_file).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_module_file(name).resolve() for name in _imported_modules(path))
    return tuple(sorted(seen))


def _toolchain(extra: tuple = ()) -> tuple:
    """Versions and numba settings that change the generated code."""
    import llvmlite
    import numba
    import numpy
    from numba.core import config

    settings = tuple((name, repr(getattr(config, name, None))) for name in (
        "OPT", "BOUNDSCHECK", "FASTMATH", "DEBUGINFO_DEFAULT", "CPU_NAME", "CPU_FEATURES"))
    return (sys.version, platform.machine(), numpy.__version__, numba.__version__,
            llvmlite.__version__, settings) + tuple(extra)


@functools.lru_cache(maxsize=None)
def _stamp(kernel_file: str, extra: tuple) -> str:
    toolchain = repr(_toolchain(extra))
    memo_key = hashlib.sha256(f"{kernel_file}\0{toolchain}".encode() + FORMAT).hexdigest()
    hit = _memo_get(memo_key)
    if hit is not None:
        return hit
    h = hashlib.sha256(FORMAT)
    sources = kernel_sources(kernel_file)
    for path in sources:
        rel = path.relative_to(PACKAGE_DIR).as_posix().encode()
        h.update(b"\0file\0" + rel + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    h.update(b"\0toolchain\0" + toolchain.encode())
    stamp = h.hexdigest()
    _memo_put(memo_key, sources, stamp)
    return stamp


# Parsing every source file for its imports costs ~0.1-0.4 s per stamp at each start. The stamp
# is remembered in `<cache>/stamps.json` with the identity of every file it was computed from
# (path, size, inode, modification and change times): while none of them changed, the stamp
# is the same; an edit to any of them (an added import included) changes its identity and the
# stamp is computed again.

def _identity(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _memo_file() -> Path | None:
    root = cache_root()
    return None if root is None else root / "stamps.json"


def _memo_get(key: str) -> str | None:
    f = _memo_file()
    try:
        entry = json.loads(f.read_text())[key]
        if all(_identity(Path(ident[0])) == ident for ident in entry["files"]):
            return str(entry["stamp"])
    except Exception:  # no memo, another key, a changed or missing file: compute
        pass
    return None


def _memo_put(key: str, sources, stamp: str) -> None:
    f = _memo_file()
    if f is None:
        return
    try:
        try:
            memo = json.loads(f.read_text())
            if not isinstance(memo, dict) or len(memo) > 64:
                memo = {}
        except (OSError, ValueError):
            memo = {}
        memo[key] = {"files": [_identity(p) for p in sources], "stamp": stamp}
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, f)
    except OSError:
        pass


def source_stamp(kernel_file: str | os.PathLike, extra: tuple = ()) -> str:
    """Hex SHA-256 of the kernel's sources (kernel_sources) and toolchain (see the module doc)."""
    return _stamp(str(Path(kernel_file).resolve()), tuple(extra))


# ---------------------------------------------------------------------------------------
# Cache files: checked index and data files


def _pack(magic: bytes, body: bytes) -> bytes:
    return magic + hashlib.sha256(body).digest() + body


def _unpack(magic: bytes, blob: bytes) -> bytes:
    head = len(magic) + 32
    if len(blob) < head or blob[:len(magic)] != magic:
        raise CorruptCacheFile("wrong magic or truncated header")
    body = blob[head:]
    if hashlib.sha256(body).digest() != blob[len(magic):head]:
        raise CorruptCacheFile("digest mismatch")
    return body


class CheckedCacheFile:
    """numba's IndexDataCacheFile interface (save, load, flush) with checked files."""

    INDEX_MAGIC = b"GPUENG-NBI1\n"
    DATA_MAGIC = b"GPUENG-NBC1\n"

    def __init__(self, cache_path, filename_base, source_stamp, dumps, version):
        self._cache_path = cache_path
        self._filename_base = filename_base
        self._index_path = os.path.join(cache_path, f"{filename_base}.nbi")
        self._data_name_pattern = f"{filename_base}.{{number:d}}.nbc"
        self._source_stamp = source_stamp
        self._dumps = dumps
        self._version = version

    # index ------------------------------------------------------------------------------
    def _load_index(self) -> dict:
        """The overloads of the current stamp; {} when missing or of another stamp/version.
        Raises CorruptCacheFile when the file does not check out."""
        try:
            with open(self._index_path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return {}
        body = _unpack(self.INDEX_MAGIC, blob)
        try:
            version, stamp, overloads = pickle.loads(body)
        except Exception as exc:
            raise CorruptCacheFile(f"index body: {exc!r}") from exc
        if version != self._version or stamp != self._source_stamp:
            return {}
        if not isinstance(overloads, dict):
            raise CorruptCacheFile("index body is not a dict")
        return overloads

    def _save_index(self, overloads: dict) -> None:
        body = self._dumps((self._version, self._source_stamp, overloads))
        self._write(self._index_path, _pack(self.INDEX_MAGIC, body))

    # data -------------------------------------------------------------------------------
    def _data_path(self, name: str) -> str:
        return os.path.join(self._cache_path, name)

    def save(self, key, data) -> None:
        try:
            overloads = self._load_index()
        except CorruptCacheFile:
            self.discard()
            overloads = {}
        data_name = overloads.get(key)
        if data_name is None:
            existing = set(overloads.values())
            for i in itertools.count(1):
                data_name = self._data_name_pattern.format(number=i)
                if data_name not in existing:
                    break
        body = self._dumps((self._source_stamp, key, data))
        # data first, then the index that points at it
        self._write(self._data_path(data_name), _pack(self.DATA_MAGIC, body))
        if overloads.get(key) != data_name:
            overloads[key] = data_name
            self._save_index(overloads)

    def load(self, key):
        """The saved data for `key`, None on a miss; CorruptCacheFile when a file is bad."""
        data_name = self._load_index().get(key)
        if data_name is None:
            return None
        if not isinstance(data_name, str) or os.sep in data_name or "/" in data_name:
            raise CorruptCacheFile("bad data file name in the index")
        try:
            with open(self._data_path(data_name), "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        body = _unpack(self.DATA_MAGIC, blob)
        try:
            stamp, saved_key, data = pickle.loads(body)
        except Exception as exc:
            raise CorruptCacheFile(f"data body: {exc!r}") from exc
        if stamp != self._source_stamp or saved_key != key:
            # e.g. another process with other sources rewrote the file: a miss
            return None
        return data

    def flush(self) -> None:
        self._save_index({})

    def discard(self) -> None:
        """Delete this function's index and data files (best effort)."""
        pattern = os.path.join(glob.escape(self._cache_path),
                               glob.escape(self._filename_base) + ".*")
        for path in glob.glob(pattern):
            if path.endswith((".nbi", ".nbc")):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _write(self, path: str, blob: bytes) -> None:
        tmp = f"{path}.tmp.{uuid.uuid4().hex[:16]}"
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


# ---------------------------------------------------------------------------------------
# Locator and Cache classes


class KernelLocator:
    """A numba cache locator (the `_CacheLocator` interface) for this package's kernel
    files only: the folder under cache_root(), and the combined source stamp."""

    def __init__(self, py_func, py_file, root: Path, stamp):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._stamp = stamp
        path = os.path.abspath(py_file)
        subdir = os.path.dirname(path)
        sub = "_".join([os.path.basename(subdir), hashlib.sha1(subdir.encode()).hexdigest()])
        self._cache_path = os.path.join(str(root), sub)

    def ensure_cache_path(self) -> None:
        os.makedirs(self._cache_path, exist_ok=True)
        tempfile.TemporaryFile(dir=self._cache_path).close()

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self):
        return self._stamp

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file, extra: tuple = ()):
        """The locator, or None when py_file is not a kernel file of this package, the
        cache is off, or its folder cannot be written."""
        try:
            resolved = Path(py_file).resolve()
        except OSError:
            return None
        if resolved not in KERNEL_FILES or not resolved.is_file():
            return None
        root = cache_root()
        if root is None:
            return None
        try:
            self = cls(py_func, py_file, root, source_stamp(resolved, extra))
            self.ensure_cache_path()
        except (OSError, SyntaxError, ValueError):
            return None
        return self


def _init_impl(impl, py_func, locator) -> None:
    """numba's CacheImpl.__init__ with `locator` instead of numba's locator chain."""
    impl._lineno = py_func.__code__.co_firstlineno
    qualname = getattr(py_func, "__qualname__", py_func.__name__)
    impl._locator = locator
    filename = inspect.getfile(py_func)
    modname = os.path.splitext(os.path.basename(filename))[0]
    impl._filename_base = impl.get_filename_base(f"{modname}.{qualname}",
                                                 getattr(sys, "abiflags", ""))


class _GuardedCache:
    """Mixin over a numba Cache: checked files, and any error while loading or saving is a
    miss (the bad files are deleted), never an exception and never a load."""

    _dumps = None  # numba's pickler for this target, set by the subclass

    _impl_base = None  # the target's CacheImpl subclass, set by the subclass

    def __init__(self, py_func, locator):
        # numba's Cache.__init__ calls self._impl_class(py_func): hand it our locator
        self._impl_class = functools.partial(self._impl_base, locator=locator)
        super().__init__(py_func)
        self._cache_file = CheckedCacheFile(self._cache_path, self._impl.filename_base,
                                            locator.get_source_stamp(), type(self)._dumps,
                                            FORMAT + b" " + self._numba_version().encode())

    @staticmethod
    def _numba_version() -> str:
        import numba

        return numba.__version__

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:
            logger.debug("kernel cache: discarding %s (%r)", self._impl.filename_base, exc)
            self._cache_file.discard()
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as exc:
            logger.debug("kernel cache: not saved %s (%r)", self._impl.filename_base, exc)


@functools.lru_cache(maxsize=None)
def _cpu_cache_class():
    from numba.core import caching
    from numba.core.serialize import dumps

    class KernelCacheImpl(caching.CompileResultCacheImpl):
        def __init__(self, py_func, locator):
            _init_impl(self, py_func, locator)

    class KernelCache(_GuardedCache, caching.FunctionCache):
        _impl_base = KernelCacheImpl
        _dumps = staticmethod(dumps)

    return KernelCache


@functools.lru_cache(maxsize=None)
def _cuda_cache_class():
    from numba.cuda.dispatcher import CUDACache, CUDACacheImpl
    from numba.cuda.serialize import dumps

    class KernelCUDACacheImpl(CUDACacheImpl):
        def __init__(self, py_func, locator):
            _init_impl(self, py_func, locator)

    class KernelCUDACache(_GuardedCache, CUDACache):
        _impl_base = KernelCUDACacheImpl
        _dumps = staticmethod(dumps)

    return KernelCUDACache


def holds(dispatcher) -> bool:
    """Whether the disk cache holds a compiled specialisation of `dispatcher` for the current
    sources and toolchain (so loading it costs well under a second, not a compile)."""
    try:
        return bool(dispatcher._cache._cache_file._load_index())
    except Exception:
        return False


def enable(dispatcher, target: str = "cpu") -> str | None:
    """Give a kernel dispatcher (numba `njit` for target "cpu", numba-cuda `cuda.jit` for
    "cuda") the keyed disk cache. Returns the cache folder, or None when there is no disk
    cache (switched off, folder unwritable, simulator, or numba internals not as expected);
    the dispatcher then compiles in memory as before."""
    try:
        py_func = dispatcher.py_func
        if target == "cuda":
            import numba_cuda

            cls = _cuda_cache_class()
            extra = ("numba-cuda", numba_cuda.__version__)
        else:
            cls = _cpu_cache_class()
            extra = ()
        locator = KernelLocator.from_function(py_func, inspect.getfile(py_func), extra)
        if locator is None:
            return None
        cache = cls(py_func, locator)
        dispatcher._cache = cache
        return cache.cache_path
    except Exception as exc:  # never let the cache stop the kernel from working
        logger.debug("kernel cache disabled for %r: %r", dispatcher, exc)
        return None
