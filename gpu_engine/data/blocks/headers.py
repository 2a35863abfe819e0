"""The fetched-header table: its rows, its folder on disk (resumable, reorg-safe), and what the
block dataset takes from it.

One row per fetched block, dtype `HEADER_DTYPE` (packed, little-endian):

  height       int32      block height
  hash         uint8[32]  block hash, bytes in the usual (RPC/explorer) display order
  prev_hash    uint8[32]  the previous block's hash (all zero for the genesis block)
  time         int64      header timestamp, unix seconds (not monotone in height)
  median_time  int64      median time past of the block (BIP 113), -1 unknown
  difficulty   float64    difficulty as Bitcoin Core computes it from `bits`, NaN unknown
  tx_count     int32      transactions in the block, coinbase included, -1 unknown
  size_bytes   int32      serialized block size with witness data, -1 unknown
  weight_wu    int32      block weight (BIP 141 weight units), -1 unknown
  fees_sat     int64      total fees paid by the block's transactions, satoshi, -1 unknown

Where each field comes from: `rpc` (Bitcoin Core: getblockheader + getblockstats: no size or
weight of the whole block) and `esplora` (/blocks: no fees). Unknown is -1 (integers) or NaN.

On disk the table is a folder beside the dataset, `<dataset stem>.headers/` (`HeaderStore`):

  table.json        kind, genesis hash, dtype, the sources used (URLs without credentials)
  base-SEQ.npy      a compacted table (the newest base wins; older files are leftovers)
  part-SEQ.npy      rows fetched after that base, each written to a temporary and renamed, so
                    a part on disk is complete; later parts win on the same height
  lock              flock'ed while a process writes (a second writer is refused)

A fetch writes one part per `PART_BLOCKS` heights, so an interrupted fetch loses at most one
part and the next run fetches only what no part holds. `compact()` writes the merged rows as a
new base and deletes what it replaces (done at the end of a run, on a reorg, and when a long
`--follow` has written more than 64 files; after a reorg that shortens the chain, rows above the
new tip cannot come back).

`run_anchors(rows)` gives, per contiguous run of fetched heights, the time-map anchors that
join the modelled times to the real ones without inversions (the run's first height at the
run's earliest header time, its last height at the run's latest).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpu_engine.errors import InputError
from gpu_engine.outputs import pid_alive

HEADER_DTYPE = np.dtype([
    ("height", "<i4"), ("hash", "u1", (32,)), ("prev_hash", "u1", (32,)), ("time", "<i8"),
    ("median_time", "<i8"), ("difficulty", "<f8"), ("tx_count", "<i4"), ("size_bytes", "<i4"),
    ("weight_wu", "<i4"), ("fees_sat", "<i8"),
])
# the block-flow columns the dataset copies, with their "unknown" value
FLOW_FIELDS = {"median_time": -1, "difficulty": np.nan, "tx_count": -1, "size_bytes": -1, "weight_wu": -1,
               "fees_sat": -1}
KIND = "gpu_engine.data.blocks.headers"
SCHEMA_VERSION = 1
PART_BLOCKS = 5000
_FILE_RE = re.compile(r"^(base|part)-(\d{6,})\.npy$")
_TMP_RE = re.compile(r"^\.(?:base|part)-\d+\.npy\.tmp-(\d+)$")

FIELD_DOCS = {
    "time": "header timestamp (unix s)",
    "median_time": "median time past, -1 unknown",
    "difficulty": "difficulty from bits (Bitcoin Core's GetDifficulty), NaN unknown",
    "tx_count": "transactions incl. coinbase, -1 unknown",
    "size_bytes": "block size with witness (bytes), -1 unknown (Bitcoin Core source)",
    "weight_wu": "block weight (WU), -1 unknown (Bitcoin Core source)",
    "fees_sat": "total fees (sat), -1 unknown (Esplora source, pruned Core blocks)",
}


# ---------------------------------------------------------------- rows

def empty() -> np.ndarray:
    return np.zeros(0, HEADER_DTYPE)


def make_rows(records) -> np.ndarray:
    """Rows from dicts {height, hash, prev_hash (hex; None/absent for genesis), time, and any of
    the FLOW_FIELDS (None or absent = unknown)}. Values must be validated by the caller."""
    out = np.zeros(len(records), HEADER_DTYPE)
    for i, r in enumerate(records):
        row = out[i]
        row["height"] = r["height"]
        row["hash"] = np.frombuffer(bytes.fromhex(r["hash"]), np.uint8)
        prev = r.get("prev_hash")
        row["prev_hash"] = np.frombuffer(bytes.fromhex(prev), np.uint8) if prev else 0
        row["time"] = r["time"]
        for name, unknown in FLOW_FIELDS.items():
            v = r.get(name)
            row[name] = unknown if v is None else v
    return out


def hash_hex(h) -> str:
    """Hex of a `hash`/`prev_hash` cell (uint8[32])."""
    return bytes(np.asarray(h, np.uint8)).hex()


def merge(*tables: np.ndarray) -> np.ndarray:
    """Rows of all tables sorted by height; on a height several hold, the LAST table given wins."""
    tables = [t for t in tables if t is not None and len(t)]
    if not tables:
        return empty()
    cat = np.concatenate(tables)
    # the last occurrence of each height wins: unique on the reversed array keeps the first = last
    rev = cat[::-1]
    _, first = np.unique(rev["height"], return_index=True)
    return np.ascontiguousarray(rev[first])


def runs(heights) -> list[tuple[int, int]]:
    """Maximal runs of consecutive heights, [(first, last), ...] (input sorted, unique)."""
    h = np.asarray(heights, dtype=np.int64)
    if h.size == 0:
        return []
    cut = np.nonzero(np.diff(h) != 1)[0]
    starts = np.concatenate([[0], cut + 1])
    ends = np.concatenate([cut, [h.size - 1]])
    return [(int(h[s]), int(h[e])) for s, e in zip(starts, ends)]


def broken_links(rows: np.ndarray) -> np.ndarray:
    """Heights h where rows h-1 and h are both present and h's prev_hash is not h-1's hash."""
    if len(rows) < 2:
        return np.zeros(0, np.int64)
    h = rows["height"].astype(np.int64)
    adjacent = np.nonzero(np.diff(h) == 1)[0]
    bad = ~np.all(rows["prev_hash"][adjacent + 1] == rows["hash"][adjacent], axis=1)
    return h[adjacent[bad] + 1]


def run_anchors(rows: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Per run of fetched heights: (first height, earliest time in the run, last height, latest time)."""
    out = []
    h = rows["height"]
    for a, b in runs(h):
        i, j = np.searchsorted(h, [a, b + 1])
        t = rows["time"][i:j]
        out.append((a, int(t.min()), b, int(t.max())))
    return out


# ---------------------------------------------------------------- the folder

def store_path(dataset_path) -> Path:
    """`data/blocks.npy` -> `data/blocks.headers`."""
    p = Path(dataset_path)
    return p.with_suffix(".headers")


def is_store(path) -> bool:
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return False
    try:
        meta = json.loads((p / "table.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == KIND


def check_claim(path, flag: str = "--out") -> None:
    """Before any work: what stands at `path` must be a header table this engine wrote (it is
    reused: that is the resume), or nothing."""
    p = Path(path)
    if (p.exists() or p.is_symlink()) and not is_store(p):
        raise InputError(f"{p}: {flag}: the header table beside the dataset exists and is not one this "
                         "engine wrote; refusing to touch it (move it away or choose another --out)")


class HeaderStore:
    """The on-disk header table (see the module docstring). Open with `HeaderStore.open`."""

    def __init__(self, path: Path, meta: dict, lock_fh):
        self.path = path
        self.meta = meta
        self._lock_fh = lock_fh
        self.rows = empty()
        self._seq = 0

    # -- opening
    @classmethod
    def open(cls, path, genesis_hash: str, source_label: str | None = None, create: bool = True) -> "HeaderStore":
        """Open (or create) the table at `path`, locked for this process; loads its rows.

        A table of another chain (its genesis hash differs) is refused, naming both hashes.
        """
        p = Path(path)
        check_claim(p)
        if not p.exists():
            if not create:
                raise InputError(f"{p}: no header table")
            p.mkdir(parents=True)
            meta = {"kind": KIND, "schema_version": SCHEMA_VERSION, "chain": "bitcoin mainnet",
                    "genesis_hash": genesis_hash, "dtype": [list(d) if len(d) == 2 else [d[0], d[1], list(d[2])]
                                                            for d in HEADER_DTYPE.descr],
                    "fields": FIELD_DOCS, "sources": []}
            _write_json(p / "table.json", meta)
        else:
            meta = json.loads((p / "table.json").read_text())
        fh = open(p / "lock", "a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise InputError(f"{p}: another process is writing this header table (a running fetch or "
                             "--follow); wait for it or stop it") from None
        store = cls(p, meta, fh)
        try:
            if meta.get("genesis_hash") != genesis_hash:
                raise InputError(f"{p}: holds headers of the chain whose genesis block hash is "
                                 f"{meta.get('genesis_hash')}, the source's is {genesis_hash}; "
                                 "move it away to fetch another chain")
            store._clean_temps()
            store._load()
            if source_label and source_label not in meta.setdefault("sources", []):
                meta["sources"].append(source_label)
                _write_json(p / "table.json", meta)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        if self._lock_fh is not None:
            try:
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._lock_fh.close()
                self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- files
    def _files(self) -> list[tuple[int, str, Path]]:
        out = []
        for name in os.listdir(self.path):
            m = _FILE_RE.match(name)
            if m:
                out.append((int(m.group(2)), m.group(1), self.path / name))
        return sorted(out)

    def _clean_temps(self) -> None:
        for name in os.listdir(self.path):
            m = _TMP_RE.match(name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                (self.path / name).unlink(missing_ok=True)

    def _read(self, f: Path) -> np.ndarray:
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError.at(f, None, None, f"unreadable header table file ({exc}); delete it and run "
                                "the fetch again (only its blocks are fetched again)") from None
        if arr.dtype != HEADER_DTYPE or arr.ndim != 1:
            raise InputError.at(f, None, None, f"not a header table file (dtype {arr.dtype})")
        return arr

    def _load(self) -> None:
        files = self._files()
        self._seq = files[-1][0] if files else 0
        bases = [f for f in files if f[1] == "base"]
        start = bases[-1][0] if bases else -1
        tables = [self._read(path) for seq, kind, path in files if seq >= start]
        self.rows = merge(*tables)

    def _write(self, kind: str, rows: np.ndarray) -> Path:
        self._seq += 1
        final = self.path / f"{kind}-{self._seq:06d}.npy"
        tmp = self.path / f".{final.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(rows, dtype=HEADER_DTYPE), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError.at(final, None, None, f"cannot write the header table: {exc.strerror or exc}") from None
        return final

    # -- changes
    def put(self, rows: np.ndarray) -> None:
        """Add (or replace, by height) rows: one part file, complete on disk once this returns."""
        if len(rows) == 0:
            return
        rows = merge(rows)
        self._write("part", rows)
        self.rows = merge(self.rows, rows)

    def truncate_above(self, height: int) -> int:
        """Drop rows above `height` (a reorg to a shorter chain); compacts. Returns how many."""
        keep = self.rows["height"] <= height
        dropped = int((~keep).sum())
        if dropped:
            self.rows = np.ascontiguousarray(self.rows[keep])
            self.compact()
        return dropped

    def compact(self) -> None:
        """Write all rows as one new base file and delete the files it replaces."""
        old = self._files()
        if len(old) == 1 and old[0][1] == "base":
            return
        self._write("base", self.rows)
        for _, _, path in old:
            path.unlink(missing_ok=True)

    def maybe_compact(self, max_files: int = 64) -> None:
        """Compact once more than `max_files` files hold the table (a long --follow adds a part per poll)."""
        if len(self._files()) > max_files:
            self.compact()

    def discard_if_empty(self) -> bool:
        """Remove the table folder when it holds no rows (a first fetch that failed); closes it."""
        if self._files() or len(self.rows):
            self.close()
            return False
        self.close()
        for name in ("table.json", "lock"):
            (self.path / name).unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            return False
        return True

    # -- lookups
    def heights(self) -> np.ndarray:
        return self.rows["height"].astype(np.int64)

    def top(self) -> int:
        return int(self.rows["height"][-1]) if len(self.rows) else -1

    def row(self, height: int):
        i = int(np.searchsorted(self.rows["height"], height))
        if i < len(self.rows) and int(self.rows["height"][i]) == height:
            return self.rows[i]
        return None

    def describe(self) -> dict:
        return {"path": str(self.path), "rows": int(len(self.rows)),
                "runs": [list(r) for r in runs(self.rows["height"])][:50],
                "genesis_hash": self.meta.get("genesis_hash"), "sources": list(self.meta.get("sources", []))}


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    doc = dict(doc)
    doc["updated_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
