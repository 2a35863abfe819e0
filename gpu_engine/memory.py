"""How much memory this machine has, for the size checks that run before anything is allocated.

Size flags (`--depth`, `--blocks`, bench `--configs/--ticks/--levels/--buckets`)
are refused when what they would allocate exceeds the machine's physical memory
(`MemTotal` of /proc/meminfo, else `os.sysconf`). The bound is deliberately the
physical total, not `MemAvailable`: the free figure moves with whatever else runs
(page cache, other jobs), and a check that refuses the same command on one minute
and accepts it the next would be worse than none. What this catches is a size
that cannot fit on this machine at all (a typo of a few zeros), before a numpy
allocation turns it into a MemoryError or the OOM killer.
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
