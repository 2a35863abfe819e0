"""How much memory this machine has, for the size checks that run before anything is allocated.

Size flags (`--depth`, `--blocks`, bench `--configs/--ticks/--levels/--buckets`)
are refused when what they would allocate exceeds the machine's physical memory
(`MemTotal` of /proc/meminfo, else `os.sysconf`). The bound is deliberately the
physical total, not `MemAvailable`: the free figure moves with whatever else runs
(page cache, other jobs), and a check that refuses the same command on one minute
and accepts it the next would be worse than none. What this catches is a size
that cannot fit on this machine at all (a typo of a few zeros), before a numpy
allocation turns it into a MemoryError or the OOM killer.

It also holds the two calls that keep a long command's resident set close to what it uses
(glibc only; no-ops elsewhere): `limit_arenas` (threads share two malloc arenas) and
`return_free_memory` (`malloc_trim`: freed pages go back to the system).
"""
from __future__ import annotations

import os


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def total_memory() -> int | None:
    """Bytes of physical memory, or None where it cannot be read."""
    got = _meminfo("MemTotal")
    if got is not None:
        return got
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes free for new allocations right now (MemAvailable): informative only, it moves."""
    return _meminfo("MemAvailable")


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def return_free_memory() -> bool:
    """Hand the memory the C allocator holds free back to the system (glibc's `malloc_trim(0)`:
    the free pages of every arena, not only the top of the heap). A long run that is done with
    its data (a streamed sweep before its final statistics) calls it so that the freed windows
    and the threads' arenas stop counting in its resident set. True when it ran; False where
    the C library has no malloc_trim (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


ARENAS = 2  # malloc arenas a command's threads share (limit_arenas)


def limit_arenas(n: int = ARENAS) -> bool:
    """Let this process's threads share at most `n` malloc arenas (glibc's
    `mallopt(M_ARENA_MAX, n)`), unless the user set MALLOC_ARENA_MAX themselves.

    glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core)
    and keeps what the thread freed there for its next allocation. A command's threads (the
    window reader, zarr's decoders, the kernel preload) each leave a few MiB to tens of MiB
    resident that way; with two arenas a grid sweep's peak resident set was 30-35 MiB lower and
    its speed the same (benchmarks/RESULTS.md). Called once by every command (gpu_engine.cli)
    before its threads start; True when it applied."""
    import ctypes
    import ctypes.util

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(-8, int(n)))  # M_ARENA_MAX (malloc.h)
