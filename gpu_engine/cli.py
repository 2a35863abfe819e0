"""The entry wrapper every command line shares: argument errors, exit codes, broken pipes.

    python -m gpu_engine.data ...   python -m gpu_engine.bench ...
    python -m sweeps.optimize ...   python -m sweeps.grid ...   python -m sweeps.inspect ...

all end in `run_main(parser, func, argv)`:

- an argparse usage error: one line `PROG: error: ...`, exit 2 (`Parser`);
- `InputError` (unusable input, a refused output): one line `error: ...`, exit 2;
- an `OSError` that a user's environment causes (an output under a file, a
  read-only or full disk, a name too long): one line naming the path, exit 2;
- `MemoryError`: one line, exit 2 (the size flags were too large for this machine);
- `KeyboardInterrupt`: `interrupted`, exit 130 (what was written is complete or resumable);
- `BrokenPipeError` (output piped into `head`): ends quietly, exit 0;
- anything else is a bug: its traceback is printed, exit 1.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

from gpu_engine.errors import InputError

# OSErrors that come from where the user pointed us, not from a bug of ours.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
               errno.EDQUOT, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOENT, errno.ELOOP}


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors printed as one line (exit 2), not the usage block."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def guard(func: Callable[[], int | None]) -> int:
    """Run `func()` and map the failures described in the module docstring to exit codes."""
    try:
        code = int(func() or 0)
        sys.stdout.flush()
        return code
    except InputError as exc:
        sys.stderr.write(f"error: {one_line(exc)}\n")
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write("error: out of memory: the requested sizes do not fit in this machine's memory\n")
        return 2
    except OSError as exc:
        if exc.errno in USER_ERRNOS:
            sys.stderr.write(f"error: {one_line(describe_os_error(exc))}\n")
            return 2
        raise


def run_main(parser: argparse.ArgumentParser, func: Callable, argv=None) -> int:
    """Parse `argv` with `parser`, then `guard(func(args))` (its threads sharing at most
    memory.ARENAS malloc arenas: gpu_engine.memory.limit_arenas)."""
    from gpu_engine import memory

    memory.limit_arenas()
    args = parser.parse_args(argv)
    return guard(lambda: func(args))
