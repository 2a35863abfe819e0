"""On-disk cache of feature banks (and of the small things a warm start needs: decompressed
book stores and data digests), so a second run on the same data skips rebuilding them.

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

The same folder holds, under the same file-identity keys: `load_book` -- a decompressed copy of
a book store of at most `MAX_BOOK_BYTES` (zarr's decompression is most of a warm start's data
time) as `.npy` files opened as read-only memory maps, each checked against the recorded
dtype and shape (a damaged entry is removed and rebuilt); and `sha256_path` -- the SHA-256 of a store or dataset
(what studies are fingerprinted with), so it is read once per version of the data.
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
MAX_BOOK_BYTES = 256 << 20   # books larger than this are read from their store every time
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
    text = str(path)
    if not Path(path).exists() and ("," in text or any(ch in text for ch in "*?[")):
        # a data set of stores (a comma list or a glob): the identity of each store it names
        from gpu_engine.data.books import collection

        try:
            stores = collection.resolve(text)
        except Exception as exc:  # nothing matches: no key (the caller builds without the cache)
            raise OSError(str(exc)) from None
        return ["stores", [_stat_key(p) for p in stores]]
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
    for p in [*where.glob("*" + SUFFIX), *where.glob("*.book")]:
        try:
            st = p.stat()
            size = sum(q.stat().st_size for q in p.iterdir()) if p.is_dir() else st.st_size
        except OSError:
            continue
        entries.append((st.st_mtime_ns, size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= MAX_BYTES:
            break
        _remove_tree(p) if p.is_dir() else p.unlink(missing_ok=True)
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


# ------------------------------------------------------------------------- books, digests

BOOK_FIELDS = ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz")
TRADE_FIELDS = ("ts", "px", "qty", "side", "match_ts")


def _small_key(kind: str, path: Path, extra: str = "") -> str | None:
    from gpu_engine.kernels.cache import source_stamp

    try:
        doc = {"format": FORMAT, "kind": kind, "path": _stat_key(path), "extra": extra}
        if kind == "book":
            from gpu_engine.data.books import store

            doc["source"] = source_stamp(store.__file__)
    except OSError:
        return None
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def load_book(path: Path, loader: Callable[[], object]):
    """The Book `loader()` reads from the store at `path`, from a cached decompressed copy when
    one exists for this exact version of the store (see the module doc). The cached arrays are
    read-only memory maps of `.npy` files (pages are read as the arrays are used)."""
    from gpu_engine.data.books.store import Book, Trades

    where = folder()
    key = _small_key("book", Path(path)) if where is not None else None
    if key is None:
        return loader()
    entry = where / f"{key}.book"
    if (entry / "meta.json").is_file():
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                raise ValueError("format mismatch")
            arrays = {}
            for name, dtype, shape in meta["layout"]:
                a = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if str(a.dtype) != dtype or list(a.shape) != shape:
                    raise ValueError(f"{name}: {a.dtype} {a.shape}, expected {dtype} {shape}")
                arrays[name] = a
            trades = None
            if meta["has_trades"]:
                trades = Trades(**{f: arrays.get("trades_" + f) for f in TRADE_FIELDS})
            return Book(**{f: arrays[f] for f in BOOK_FIELDS}, trades=trades, attrs=meta["attrs"])
        except Exception as exc:
            logger.debug("book cache: discarding %s (%r)", entry, exc)
            _remove_tree(entry)
    book = loader()
    try:
        arrays = {f: np.ascontiguousarray(getattr(book, f)) for f in BOOK_FIELDS}
        if book.trades is not None:
            for f in TRADE_FIELDS:
                v = getattr(book.trades, f, None)
                if v is not None:
                    arrays["trades_" + f] = np.ascontiguousarray(v)
        if sum(a.nbytes for a in arrays.values()) <= MAX_BOOK_BYTES:
            from gpu_engine.results import jsonable

            meta = {"format": FORMAT, "layout": _layout(arrays), "has_trades": book.trades is not None,
                    "attrs": jsonable(book.attrs)}
            _write_book(entry, arrays, meta)
    except (OSError, TypeError, ValueError) as exc:
        logger.debug("book cache: not saved %s (%r)", entry, exc)
    return book


def _layout(arrays: dict) -> list:
    return [[name, str(arrays[name].dtype), list(arrays[name].shape)] for name in sorted(arrays)]


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _write_book(entry: Path, arrays: dict, meta: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
    _remove_tree(tmp)
    try:
        tmp.mkdir()
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process saved it first
            pass
    finally:
        _remove_tree(tmp)
    _trim(entry.parent)


def sha256_path(path: Path, compute: Callable[[Path], str]) -> str:
    """`compute(path)` (a SHA-256 hex digest), remembered for this exact version of `path`."""
    where = folder()
    key = _small_key("sha256", Path(path)) if where is not None else None
    if key is None:
        return compute(path)
    entry = where / f"{key}.sha256"
    try:
        value = entry.read_text().strip()
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return value
    except OSError:
        pass
    value = compute(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
        tmp.write_text(value)
        os.replace(tmp, entry)
    except OSError:
        pass
    return value
