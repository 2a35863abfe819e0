"""The one exception type for unusable input, seen by every layer (data, engine, sweeps, bench).

A command line prints an `InputError` as one line on stderr and exits 2
(`gpu_engine.cli.run_main`); nothing else about it is special. It lives at the
package root, imports nothing, so that the data layer, the engine and the
sweep jobs can all raise it without importing each other.
"""
from __future__ import annotations


class InputError(Exception):
    """Input that cannot be used at all. The message names the file, line and field.

    Build it with `InputError.at(path, line, field, problem)` so every message has the
    same shape: `PATH:LINE: field FIELD: PROBLEM`.
    """

    @classmethod
    def at(cls, path, line: int | None, field: str | None, problem: str) -> "InputError":
        where = str(path)
        if line is not None:
            where += f":{line}"
        what = f"field {field!r}: " if field else ""
        return cls(f"{where}: {what}{problem}")
