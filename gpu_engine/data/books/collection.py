"""Data sets of many book stores, read as one time series (one store per day is what the
recorder and the importers naturally produce).

    paths = resolve("data/books/btc-2024-08-*.zarr")     # a glob, a directory of stores,
    paths = resolve(["a.zarr", "b.zarr"])                  # a list or "a.zarr,b.zarr"
    info = check(paths)                                    # refusals, order, gaps; no array read
    book = load_many(paths)                                # one Book, attrs["stores"], ["store_gaps"]

`check` reads only each store's attrs and its first and last timestamps. It refuses (InputError
naming both stores) stores of another exchange, symbol, depth or contract (contract, multiplier,
tick size, lot size when a store records them), and stores that overlap in time; it orders the
stores by their first timestamp whatever order they were given in, and lists every gap between
consecutive stores longer than `GAP_S` seconds. `load_many` concatenates the rows and trades in
that order; the Book's attrs are the first store's plus `stores` (path, rows, first and last
time of each) and `store_gaps`.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_engine.errors import InputError

GAP_S = 1.0   # a silence between two stores longer than this is listed as a gap
SAME = ("exchange", "symbol", "depth", "contract", "multiplier", "tick_size", "lot_size")


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file() and (path / "ts").exists()


def resolve(spec, flag: str = "--data") -> list[Path]:
    """The stores named by `spec`: a path, a comma-separated list, a glob, a directory holding
    stores, or a list of any of those. Each store once, in the order found (check() sorts)."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    parts: list[str] = []
    for item in items:
        parts += [p for p in str(item).split(",") if p.strip()] if "," in str(item) else [str(item)]
    out: list[Path] = []
    for raw in parts:
        raw = raw.strip()
        if any(ch in raw for ch in "*?["):
            hits = sorted(Path(h) for h in glob.glob(raw))
            if not hits:
                raise InputError(f"{raw}: {flag}: the pattern matches nothing")
            found = [h for h in hits if _is_store(h)]
            if not found:
                raise InputError(f"{raw}: {flag}: the pattern matches no book store")
        else:
            p = Path(raw)
            if _is_store(p) or not p.is_dir():
                found = [p]  # a store, or a missing path / file: load reports it
            else:
                found = sorted(q for q in p.iterdir() if _is_store(q))
                if not found:
                    raise InputError(f"{p}: {flag}: a directory without book stores")
        for f in found:
            if f not in out:
                out.append(f)
    if not out:
        raise InputError(f"{flag}: no book store given")
    return out


@dataclass
class StoreInfo:
    path: Path
    attrs: dict
    rows: int
    first_ns: int
    last_ns: int


def _info(path: Path, flag: str) -> StoreInfo:
    from gpu_engine.data.books.store import _open_group

    try:
        g = _open_group(path)
        attrs = dict(g.attrs)
        n = attrs.get("rows")
        n = g["ts"].shape[0] if n is None else min(int(n), g["ts"].shape[0])
        first = int(g["ts"][0]) if n else 0
        last = int(g["ts"][n - 1]) if n else 0
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: {flag}: not a readable book store ({exc})") from None
    return StoreInfo(path, attrs, int(n), first, last)


def check(paths: list[Path], flag: str = "--data") -> tuple[list[StoreInfo], list[dict]]:
    """(the stores in time order, the gaps between them); refusals as in the module doc."""
    infos = [_info(p, flag) for p in paths]
    empty = [i for i in infos if i.rows == 0]
    if empty and len(infos) > 1:
        raise InputError(f"{empty[0].path}: {flag}: an empty store in a data set of {len(infos)} stores")
    base = infos[0]
    for other in infos[1:]:
        for key in SAME:
            a, b = base.attrs.get(key), other.attrs.get(key)
            if a is not None and b is not None and a != b:
                raise InputError(f"{other.path}: {flag}: {key} {b!r} differs from {a!r} in {base.path}; "
                                 "a data set holds one market")
    infos.sort(key=lambda i: (i.first_ns, i.last_ns))
    gaps = []
    for prev, nxt in zip(infos, infos[1:]):
        if nxt.first_ns <= prev.last_ns:
            raise InputError(f"{nxt.path}: {flag}: overlaps {prev.path} in time "
                             f"(starts at {_iso(nxt.first_ns)}, the other ends at {_iso(prev.last_ns)})")
        seconds = (nxt.first_ns - prev.last_ns) / 1e9
        if seconds > GAP_S:
            gaps.append({"after": str(prev.path), "before": str(nxt.path), "from": _iso(prev.last_ns),
                         "to": _iso(nxt.first_ns), "seconds": seconds})
    return infos, gaps


def _iso(ns: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ns), "ns"), unit="ms") + "Z"


def load_many(paths, flag: str = "--data"):
    """One Book from several stores (check()'s order), attrs with `stores` and `store_gaps`."""
    from gpu_engine.data.books.store import Book, Trades, load

    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return load(paths[0])
    infos, gaps = check(paths, flag)
    books = [load(i.path) for i in infos]
    cat = {name: np.concatenate([getattr(b, name) for b in books])
           for name in ("ts", "seq", "bid_px", "ask_px", "bid_sz", "ask_sz")}
    trades = None
    with_trades = [b.trades for b in books if b.trades is not None]
    if with_trades:
        trades = Trades(**{name: np.concatenate([getattr(t, name) for t in with_trades])
                           for name in ("ts", "px", "qty", "side")},
                        match_ts=np.concatenate([t.match_ts if t.match_ts is not None
                                                 else np.full(len(t), -1, np.int64) for t in with_trades]))
    attrs = dict(books[0].attrs)
    attrs["stores"] = [{"path": str(i.path), "rows": i.rows, "first": _iso(i.first_ns), "last": _iso(i.last_ns)}
                       for i in infos]
    attrs["store_gaps"] = gaps
    attrs["rows"] = int(cat["ts"].shape[0])
    attrs["gaps"] = [g for b in books for g in (b.attrs.get("gaps") or [])]
    return Book(**cat, trades=trades, attrs=attrs)
