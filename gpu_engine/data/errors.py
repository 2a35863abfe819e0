"""The one exception type for unusable input: the CLI prints its message on one line and exits 2."""
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
