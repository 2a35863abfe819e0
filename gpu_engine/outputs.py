"""Output safety for every writer: never replace what the user has, never leave temporaries behind.

One set of rules for `import`, `synth`, `blocks`, `record`, `sweeps.optimize`,
`sweeps.grid` and anything else that writes:

- `claim_output(path, flag, kind=..., overwrite=..., inputs=...)` runs before any
  work. An output that already exists is refused (`InputError`, exit 2) unless
  `--overwrite` was given; even then only something this engine writes of that
  kind is replaced (`is_ours`): a book store, a result cube, a block dataset;
  never a plain directory (say `data/books/` holding ten stores), a foreign file,
  or the command's own input. The parent must be a writable directory (or
  creatable under one).
- Writers build their output at `tmp_sibling(path)` (`.NAME.tmp-PID`) and move it
  into place with `replace_with`, so a crash leaves the old output whole or the
  new one whole, never half of either.
- `clean_stale_temps(path)` removes temporaries of our own naming beside `path`
  whose process is gone (`.NAME.tmp-PID`, `NAME.tmp-PID`, `.NAME.old-PID`,
  `NAME.old-PID`, `.NAME.PID.tmp`); those of a live process are left alone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from gpu_engine.errors import InputError

KIND_NAMES = {
    "book-store": "book store",
    "cube": "result cube",
    "blocks": "block dataset",
}


# ---------------------------------------------------------------- temporaries

def tmp_sibling(path: str | Path, pid: int | None = None) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def old_sibling(path: str | Path, pid: int | None = None) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.old-{os.getpid() if pid is None else pid}")


def _temp_pid(name: str, target: str) -> int | None:
    """The PID in `name` when it is one of our temporaries of `target`, else None."""
    esc = re.escape(target)
    for pat in (rf"^\.?{esc}\.(?:tmp|old)-(\d+)$", rf"^\.{esc}\.(\d+)\.tmp$"):
        m = re.match(pat, name)
        if m:
            return int(m.group(1))
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def remove_path(p: str | Path) -> None:
    """Remove a file, a link or a directory tree (missing is fine)."""
    p = Path(p)
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)


def stale_temps(path: str | Path) -> list[Path]:
    """Our temporaries of `path` whose process is gone."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    out = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        pid = _temp_pid(name, path.name)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            out.append(parent / name)
    return sorted(out)


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove `stale_temps(path)`; returns what was removed."""
    removed = []
    for p in stale_temps(path):
        remove_path(p)
        removed.append(p)
    return removed


def replace_with(tmp: str | Path, path: str | Path) -> Path:
    """Move the finished `tmp` to `path`, replacing what stands there (already claimed)."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = old_sibling(path)
        remove_path(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        remove_path(old)
    return path


# ---------------------------------------------------------------- ownership

def _zarr_attrs(path: Path) -> dict | None:
    meta = path / "zarr.json"
    if not meta.is_file():
        meta = path / ".zattrs"
        if not meta.is_file():
            return None
        try:
            return json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("node_type") != "group":
        return None
    return doc.get("attributes") or {}


def is_ours(path: str | Path, kind: str) -> bool:
    """Whether `path` is a `kind` this engine wrote (book-store | cube | blocks)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if kind == "book-store":
        if not path.is_dir():
            return False
        attrs = _zarr_attrs(path)
        return bool(attrs) and "schema_version" in attrs and "depth" in attrs
    if kind == "cube":
        if not path.is_dir():
            return False
        attrs = _zarr_attrs(path)
        return bool(attrs) and "engine_version" in attrs and attrs.get("kind") in ("optimize", "grid")
    if kind == "blocks":
        if not path.is_file() or path.suffix != ".npy":
            return False
        side = path.with_suffix(".json")
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and "array_sha256" in meta
    raise ValueError(f"unknown output kind {kind!r}")


# ---------------------------------------------------------------- the claim

def _same_or_nested(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_parent_writable(path: str | Path, flag: str) -> None:
    """The first existing ancestor of `path` must be a writable directory."""
    path = Path(path)
    anc = path.parent.absolute()
    while not anc.exists():
        if anc.is_symlink():  # dangling link
            raise InputError(f"{path}: {flag}: {anc} is a broken link")
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(f"{path}: {flag}: cannot write under {anc}: it is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{path}: {flag}: cannot write in {anc}: permission denied (read-only?)")
    try:  # os.access says yes to root everywhere: a read-only mount or a pseudo-filesystem says no here
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=anc)
    except OSError as exc:
        raise InputError(f"{path}: {flag}: cannot write in {anc}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def claim_output(path: str | Path, flag: str, *, kind: str, overwrite: bool,
                 inputs: Iterable[tuple[str, str | Path | None]] = ()) -> Path:
    """Check that `path` may be written by this command (see the module docstring); returns it.

    `inputs`: (flag, path) of what the command reads; the output may not be, contain or lie
    inside any of them, with or without --overwrite. Stale temporaries of `path` are removed.
    """
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown output kind {kind!r}")
    path = Path(path)
    target = path.absolute().resolve()
    for in_flag, p in inputs:
        if p is None:
            continue
        src = Path(p).absolute().resolve()
        if _same_or_nested(target, src):
            raise InputError(f"{path}: {flag}: is (or overlaps) this command's input {in_flag} {p}; "
                             "refusing to write over it, choose another path")
    check_parent_writable(path, flag)
    if path.exists() or path.is_symlink():
        what = KIND_NAMES[kind]
        if not overwrite:
            raise InputError(f"{path}: {flag}: already exists; pass --overwrite to replace it "
                             "or choose another path")
        if not is_ours(path, kind):
            raise InputError(f"{path}: {flag}: exists and is not a {what} written by this engine; "
                             "refusing to replace it even with --overwrite")
    clean_stale_temps(path)
    return path
