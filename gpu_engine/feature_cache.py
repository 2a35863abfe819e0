"""On-disk cache of feature banks, so a second run on the same data skips building them.

Building the bank of the default run takes 0.7-1.5 s on two cores, every run; loading it back
takes a few milliseconds. A bank is stored under `<kernel cache folder>/features/` (see
`gpu_engine.kernels.cache.cache_root`; `GPU_ENGINE_CACHE_DIR=off` switches both off), keyed
by everything it is computed from:

* the book store and the block dataset: for every file, its resolved path, size, inode,
  modification and change times (`st_ctime_ns` changes on any write and cannot be set back by
  a user, so an edited or replaced store never matches an old entry);
* the feature spec as given, the device's array module (numpy or cupy: the same bank is not
  bit-identical on both), and
* the source of `gpu_engine/features.py` and every package module it imports (market,
  backend, ...) plus the Python and numpy versions (`kernels.cache.source_stamp`).

Each entry is `KEY.npz` holding the values, the table rows as JSON, and a BLAKE2b digest of
the values. An entry that fails to load or check is ignored, deleted and rebuilt, never used.
Entries are written to a temporary name and renamed; the oldest are removed once the folder
holds more than `MAX_BYTES`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

MAX_BYTES = 2 << 30   # keep at most ~2 GiB of banks, oldest removed first
FORMAT = "gpu-sweep-engine feature bank v1"
SUFFIX = ".bank.npz"


def folder() -> Path | None:
    from gpu_engine.kernels.cache import cache_root

    root = cache_root()
    return None if root is None else root / "features"


def _stat_key(path: Path | None) -> list:
    """Identity of a file or directory tree as of now (see the module doc); [] for None."""
    if path is None:
        return []
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = [str(path)]
    for p in files:
        st = p.stat()
        out.append([str(p.relative_to(path)) if p != path else "", st.st_size, st.st_ino,
                    st.st_mtime_ns, st.st_ctime_ns])
    return out


def key(book_path: Path, blocks_path: Path | None, spec, xp_name: str) -> str:
    from gpu_engine import features
    from gpu_engine.kernels.cache import source_stamp

    doc = {"format": FORMAT, "book": _stat_key(book_path), "blocks": _stat_key(blocks_path),
           "spec": spec, "xp": xp_name, "source": source_stamp(features.__file__)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _digest(values: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(values).view(np.uint8), digest_size=32).hexdigest()


def _load(path: Path):
    from gpu_engine.features import FeatureBank

    with np.load(path, allow_pickle=False) as z:
        values = z["values"]
        meta = json.loads(str(z["meta"]))
    if meta.get("format") != FORMAT or meta.get("digest") != _digest(values):
        raise ValueError("format or digest mismatch")
    if values.dtype != np.float32 or values.ndim != 2 or len(meta["rows"]) != values.shape[0]:
        raise ValueError("unexpected shape or dtype")
    return FeatureBank(values=values, rows=meta["rows"])


def _save(path: Path, bank) -> None:
    values = np.ascontiguousarray(bank.to_host(), dtype=np.float32)
    meta = {"format": FORMAT, "digest": _digest(values), "rows": bank.rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, values=values, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _trim(path.parent)


def _trim(where: Path) -> None:
    entries = []
    for p in where.glob("*" + SUFFIX):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime_ns, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= MAX_BYTES:
            break
        p.unlink(missing_ok=True)
        total -= size


def load_or_build(book_path: Path, blocks_path: Path | None, spec, xp,
                  build: Callable[[], object]):
    """The bank `build()` returns, from the cache when an entry for these inputs exists.

    Returns (bank, hit). The cached values are moved to `xp`'s device. Cache trouble of any
    kind (unwritable folder, corrupt entry) costs a rebuild, never a wrong bank or an error.
    """
    where = folder()
    if where is None:
        return build(), False
    try:
        path = where / (key(book_path, blocks_path, spec, xp.__name__) + SUFFIX)
    except OSError as exc:
        logger.debug("feature cache: no key (%r)", exc)
        return build(), False
    if path.is_file():
        try:
            bank = _load(path)
        except Exception as exc:  # corrupt, truncated, foreign: never used
            logger.debug("feature cache: discarding %s (%r)", path, exc)
            path.unlink(missing_ok=True)
        else:
            if xp is not np:
                bank.values = xp.asarray(bank.values)
            return bank, True
    bank = build()
    try:
        _save(path, bank)
    except OSError as exc:
        logger.debug("feature cache: not saved %s (%r)", path, exc)
    return bank, False
