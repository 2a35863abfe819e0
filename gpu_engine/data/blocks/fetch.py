"""The header fetch driver: what to fetch, bounded concurrency, resume, reorg repair, `--follow`.

`sync(source, store, lo, hi)` fetches every height of [lo, hi] (and the genesis block) that
the header table does not hold yet, `batch` heights per request batch, `concurrency` batches
in flight, one table part per `headers.PART_BLOCKS` heights (so an interrupted run resumes
from what is on disk and fetches nothing twice), then `repair`s.

`repair(source, store)` makes the table agree with the source's best chain where it can see a
difference: a block whose `prev_hash` is not the hash stored for the height below (a link
broken by a reorg between two fetches), and the top block of every run of stored heights
checked against the source's current hash there. From each such height it walks back,
fetching again and replacing, until the fetched block equals the stored one (the fork
point) or the run ends.

`follow(...)` polls the tip every `poll_s` seconds: new blocks are appended; a new block
whose `prev_hash` does not match the stored tip (a reorg) triggers the walk back, which
replaces the blocks of the abandoned branch; a tip below the stored one (a shorter branch
won) drops the blocks above it first. After each change the caller rewrites the dataset; a
source that stops answering (`remote.Unreachable`) is reported and polled again.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from gpu_engine.data.blocks import headers as H
from gpu_engine.data.blocks.remote import SourceError

DEFAULT_BATCH = 100
DEFAULT_CONCURRENCY = 4
WALK_STEP = 16  # blocks fetched per step of a walk back


@dataclass
class SyncStats:
    wanted: int = 0
    on_disk: int = 0
    fetched: int = 0
    replaced: int = 0
    dropped: int = 0
    reorgs: list = field(default_factory=list)  # [(fork height, blocks replaced)]
    seconds: float = 0.0

    def line(self, label: str) -> str:
        rate = f" ({self.fetched / self.seconds:,.0f} blocks/s)" if self.fetched and self.seconds > 0 else ""
        s = (f"headers from {label}: {self.wanted:,} wanted, {self.on_disk:,} already on disk, "
             f"{self.fetched:,} fetched in {self.seconds:.1f} s{rate}")
        if self.replaced or self.dropped:
            s += f"; reorg repair: {self.replaced:,} replaced, {self.dropped:,} dropped"
        return s


def open_source(kind: str, url: str, cookie=None, concurrency: int = DEFAULT_CONCURRENCY, **kw):
    if kind == "core-rpc":
        from gpu_engine.data.blocks.rpc import CoreRPC
        return CoreRPC(url, cookie, concurrency=concurrency, **kw)
    if kind == "esplora":
        from gpu_engine.data.blocks.esplora import Esplora
        return Esplora(url, concurrency=concurrency, **kw)
    raise ValueError(kind)


def _bar(total: int, enabled: bool, desc: str):
    if not enabled or not sys.stderr.isatty() or total <= 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="blk", desc=desc, file=sys.stderr, mininterval=0.5, leave=False)


def fetch_into(source, store: H.HeaderStore, heights, *, batch=DEFAULT_BATCH, concurrency=DEFAULT_CONCURRENCY,
               progress=False, desc="headers") -> int:
    """Fetch `heights` (sorted ints) into the store, a part per PART_BLOCKS; returns how many."""
    heights = np.asarray(heights, dtype=np.int64)
    if heights.size == 0:
        return 0
    bar = _bar(int(heights.size), progress, desc)
    pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="headers")
    done = 0
    try:
        for s in range(0, heights.size, H.PART_BLOCKS):
            part = heights[s:s + H.PART_BLOCKS].tolist()
            batches = [part[i:i + batch] for i in range(0, len(part), batch)]
            futures = [pool.submit(source.fetch, b) for b in batches]
            tables = []
            for fut in futures:
                tables.append(fut.result())
                if bar is not None:
                    bar.update(len(tables[-1]))
            store.put(np.concatenate(tables))
            done += len(part)
    except BaseException:
        source.stop.set()  # the workers stop between requests; what is on disk stays
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return done


def sync(source, store: H.HeaderStore, lo: int, hi: int, *, batch=DEFAULT_BATCH, concurrency=DEFAULT_CONCURRENCY,
         progress=False) -> SyncStats:
    """Fetch [lo, hi] plus height 0 where the table has nothing, then `repair`."""
    t0 = time.perf_counter()
    wanted = np.union1d(np.arange(lo, hi + 1, dtype=np.int64), [0])
    have = np.isin(wanted, store.heights())
    st = SyncStats(wanted=int(wanted.size), on_disk=int(have.sum()))
    st.fetched = fetch_into(source, store, wanted[~have], batch=batch, concurrency=concurrency, progress=progress)
    rep = repair(source, store)
    st.replaced, st.reorgs = rep.replaced, rep.reorgs
    st.seconds = time.perf_counter() - t0
    return st


def repair(source, store: H.HeaderStore, max_rounds: int = 10_000) -> SyncStats:
    """Walk back from every height where the table visibly disagrees with the source (see the module doc)."""
    st = SyncStats()
    checked_tops: dict[int, str] = {}
    for _ in range(max_rounds):
        problems = set(int(h) for h in H.broken_links(store.rows))
        tops = [b for _, b in H.runs(store.rows["height"]) if b not in checked_tops]
        if tops:
            for top, cur in zip(tops, source.hashes(tops)):
                row = store.row(top)
                if cur is None:
                    raise SourceError(f"{source.label}: height {top}: the source has no block there any more "
                                      "(its chain is shorter than the stored one)")
                if H.hash_hex(row["hash"]) != cur:
                    problems.add(top)
                else:
                    checked_tops[top] = cur
        if not problems:
            return st
        p = max(problems)
        n, fork = walk_back(source, store, p)
        if n == 0:
            raise SourceError(f"{source.label}: height {p}: the source's blocks do not link up (block {p}'s "
                              f"previous hash is not the hash it gives for block {p - 1})")
        st.replaced += n
        st.reorgs.append((fork, n))
        checked_tops.pop(p, None)
    raise SourceError(f"{source.label}: the chain keeps changing; run again later")


def walk_back(source, store: H.HeaderStore, p: int) -> tuple[int, int | None]:
    """Fetch again from height p down, replacing stored blocks, until one below p equals the stored
    one (the fork point) or the stored run ends. Returns (rows replaced, lowest height replaced)."""
    replaced = 0
    lowest = None
    h = p
    while h >= 0:
        lo = max(h - WALK_STEP + 1, 0)
        span = [x for x in range(h, lo - 1, -1) if store.row(x) is not None]
        if not span:
            break
        fresh = source.fetch(span)
        changed, stop = [], False
        for row in fresh:
            x = int(row["height"])
            old = store.row(x)
            same = old is not None and bytes(old["hash"]) == bytes(row["hash"])
            if same and x < p:
                stop = True  # the first unchanged block below the problem: the fork point
                break
            if not same:
                changed.append(row)
        if changed:
            store.put(np.array(changed, dtype=H.HEADER_DTYPE))
            replaced += len(changed)
            lowest = int(changed[-1]["height"])
        if stop or span[-1] != lo or lo == 0:
            break  # fork point found, or the run of stored heights ended
        h = lo - 1
    return replaced, lowest


@dataclass
class PollResult:
    tip: int
    added: int = 0
    replaced: int = 0
    dropped: int = 0
    fork: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.dropped)

    def line(self) -> str:
        s = f"tip {self.tip:,}: +{self.added} block{'s' if self.added != 1 else ''}"
        if self.replaced or self.dropped:
            s += f"; reorg from height {self.fork:,}: {self.replaced} replaced"
            if self.dropped:
                s += f", {self.dropped} dropped"
        return s


def poll_once(source, store: H.HeaderStore, *, batch=DEFAULT_BATCH, concurrency=DEFAULT_CONCURRENCY) -> PollResult:
    """One `--follow` poll: bring the table's top up to the source's tip (see the module doc)."""
    tip, tip_hash = source.tip()
    top = store.top()
    row = store.row(tip)
    res = PollResult(tip=tip)
    if row is not None and H.hash_hex(row["hash"]) == tip_hash and top == tip:
        return res
    if tip < top:
        res.dropped = store.truncate_above(tip)
        res.fork = tip + 1
    new = np.arange(max(top + 1, 0), tip + 1, dtype=np.int64)
    res.added = fetch_into(source, store, new, batch=batch, concurrency=concurrency, progress=False)
    rep = repair(source, store)
    res.replaced = rep.replaced
    forks = [f for f, _ in rep.reorgs] + ([res.fork] if res.fork is not None else [])
    res.fork = min(forks) if forks else None
    if res.dropped or res.replaced:
        store.compact()
    else:
        store.maybe_compact()
    return res
