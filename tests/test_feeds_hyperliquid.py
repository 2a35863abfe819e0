"""`import --format hyperliquid`: Hyperliquid `l2Book` snapshots and `trades` -> book store.

Fixtures are generated here from the documented message layouts (Hyperliquid API docs,
WebSocket subscriptions: `l2Book` = {coin, time, levels: [bids, asks]} with {px, sz, n}
levels; `trades` = [{coin, side "B"|"A", px, sz, time, hash, tid, users}]), in the three line
shapes capture tools write. Every book row is checked against an independent rebuild.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from gpu_engine.data.books.feeds import hyperliquid
from gpu_engine.data.books.feeds.events import ImportReport
from gpu_engine.data.books.importers import import_files
from gpu_engine.data.books.store import load
from gpu_engine.errors import InputError

T0 = 1_737_918_843_542  # ms (2025-01-26)
DEPTH = 5


def l2book(rng: random.Random, t: int, coin: str = "BTC", mid: float = 105055.0) -> dict:
    bids = [{"px": f"{mid - k:.1f}", "sz": f"{rng.uniform(0.001, 4):.5f}", "n": rng.randint(1, 12)} for k in range(20)]
    asks = [{"px": f"{mid + 1 + k:.1f}", "sz": f"{rng.uniform(0.001, 4):.5f}", "n": rng.randint(1, 12)}
            for k in range(20)]
    return {"channel": "l2Book", "data": {"coin": coin, "time": t, "levels": [bids, asks]}}


def trades(rng: random.Random, t: int, n: int, tid0: int) -> dict:
    out = []
    for k in range(n):
        side = rng.choice("BA")
        out.append({"coin": "BTC", "side": side, "px": "105056.0" if side == "B" else "105055.0",
                    "sz": f"{rng.uniform(0.0001, 0.1):.5f}", "time": t + k,
                    "hash": "0x" + f"{tid0 + k:064x}", "tid": tid0 * 7919 % 10**15 + k,
                    "users": ["0xe9ed7e16612d676df804f5aecd16e1f9bf9ec9dd",
                              "0x6802b4267f7f2bf7003dcf993c51542245b38329"]})
    return {"channel": "trades", "data": out}


def messages(n: int = 30, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    msgs = [{"channel": "subscriptionResponse", "data": {"method": "subscribe", "subscription":
                                                         {"type": "l2Book", "coin": "BTC", "nSigFigs": None}}}]
    first = l2book(rng, T0)
    msgs += [first, json.loads(json.dumps(first))]  # the subscription's push repeats the snapshot
    replay = trades(rng, T0 - 50_000, 6, 100)       # the trades subscription replays recent trades
    msgs.append(replay)
    for i in range(1, n):
        msgs.append(l2book(rng, T0 + 500 * i, mid=105055.0 + rng.choice((-1, 0, 0, 1))))
        if i % 5 == 0:
            msgs.append(trades(rng, T0 + 500 * i + 3, 2, 1000 + i))
    msgs.append(replay)  # a reconnect: the same recent trades again (duplicates)
    return msgs


def write_forms(tmp_path, msgs) -> dict:
    def local(i):
        return (T0 + 400 + 10 * i) * 1_000_000

    forms = {
        "hftbacktest": [f"{local(i)} {json.dumps(m, separators=(',', ':'))}" for i, m in enumerate(msgs)],
        "cryptofeed": ["wss://api.hyperliquid.xyz/ws <-> 1737918843.100000",  # connect, then a SENT request
                       'wss://api.hyperliquid.xyz/ws <- 1737918843.2: {"method": "subscribe", "subscription": '
                       '{"type": "l2Book", "coin": "BTC"}}']
                      + [f"{local(i) / 1e9:.9f}: {json.dumps(m)}" for i, m in enumerate(msgs)],
        "bare": [json.dumps(m) for m in msgs],
    }
    out = {}
    for form, lines in forms.items():
        p = tmp_path / f"hl_{form}.txt"
        p.write_text("\n".join(lines) + "\n")
        out[form] = p
    return out


def rebuild(msgs, depth: int):
    """Every l2Book is the book: one row per message (not an exact repeat, not crossed)."""
    rows, last = [], None
    for m in msgs:
        if m.get("channel") != "l2Book":
            continue
        d = m["data"]
        key = json.dumps(d, sort_keys=True)
        if key == last:
            continue
        last = key
        bids = sorted(((float(x["px"]), float(x["sz"])) for x in d["levels"][0]), reverse=True)
        asks = sorted((float(x["px"]), float(x["sz"])) for x in d["levels"][1])
        if bids and asks and bids[0][0] >= asks[0][0]:
            continue
        rows.append((d["time"] * 1_000_000, [p for p, _ in bids[:depth]], [q for _, q in bids[:depth]],
                     [p for p, _ in asks[:depth]], [q for _, q in asks[:depth]]))
    return rows


def assert_rows(book, want):
    assert book.T == len(want)
    for i, (ts, bp, bs, ap, as_) in enumerate(want):
        assert book.ts[i] == ts and book.seq[i] == -1
        assert list(book.bid_px[i]) == bp and list(book.ask_px[i]) == ap, i
        assert np.array_equal(book.bid_sz[i], np.float32(bs)) and np.array_equal(book.ask_sz[i], np.float32(as_)), i


def test_every_line_form_imports_to_the_independent_rebuild(tmp_path):
    msgs = messages()
    want = rebuild(msgs, DEPTH)
    assert len(want) == 30
    all_trades = [t for m in msgs[:-1] if m["channel"] == "trades" for t in m["data"]]
    for form, path in write_forms(tmp_path, msgs).items():
        rep = import_files([path], "hyperliquid", tmp_path / f"{form}.zarr", depth=DEPTH, progress=False)
        book = load(tmp_path / f"{form}.zarr")
        assert_rows(book, want)
        assert np.all(book.bid_px[:, 0] < book.ask_px[:, 0])
        # the replayed trades at the end are duplicates; side B (taker bought) -> +1, A -> -1
        assert rep.duplicates == 1 + 6
        assert np.array_equal(book.trades.side, [1 if t["side"] == "B" else -1 for t in all_trades])
        assert np.array_equal(book.trades.ts, [t["time"] * 1_000_000 for t in all_trades])
        assert np.array_equal(book.trades.qty, [float(t["sz"]) for t in all_trades])
        assert rep.gaps == [] and rep.symbol == "BTC" and rep.bad_lines == 0
        # the replayed trades are older than the first book: kept, counted and noted
        assert rep.extra["trades_before_first_book"] == 6 == book.attrs["trades_before_first_book"]
        assert any("before the first book row" in n for n in rep.notes)
        assert rep.extra.get("sent_lines", 0) == (form == "cryptofeed") and rep.messages == len(msgs)
        assert book.attrs["exchange"] == "hyperliquid" and book.attrs["market"] == "perp"
        assert book.attrs["tick_size"] == 1.0


def test_crossed_or_malformed_snapshot_is_refused_until_the_next_good_one(tmp_path):
    rng = random.Random(2)
    msgs = [l2book(rng, T0 + 100 * i) for i in range(8)]
    msgs[3]["data"]["levels"][0][0]["px"] = "105070.0"   # best bid above the best ask: crossed
    msgs[5]["data"]["levels"][1][2]["sz"] = "lots"        # not a number
    path = write_forms(tmp_path, msgs)["hftbacktest"]
    rep = import_files([path], "hyperliquid", tmp_path / "c.zarr", depth=DEPTH, progress=False)
    book = load(tmp_path / "c.zarr")
    keep = [m for i, m in enumerate(msgs) if i not in (3, 5)]
    assert_rows(book, rebuild(keep, DEPTH))
    assert rep.crossed == 1 and len(rep.gaps) == 2 and rep.resyncs == 2
    assert [g["line"] for g in rep.gaps] == [4, 6]
    assert rep.gaps[0]["until"] == msgs[4]["data"]["time"] * 1_000_000
    assert any(n.startswith("hl_hftbacktest.txt:6:") and "lots" in n for n in rep.notes), rep.notes


def test_bad_lines_are_named_and_other_formats_refused(tmp_path):
    rng = random.Random(3)
    lines = [f"{(T0 + i) * 1_000_000} {json.dumps(l2book(rng, T0 + i))}" for i in range(4)]
    lines.insert(2, "1737918843544000000 {\"channel\":\"l2Book\",\"data\":{\"coin\":\"BT")
    path = tmp_path / "hl.txt"
    path.write_text("\n".join(lines) + "\n")
    rep = ImportReport()
    rows = list(hyperliquid.read([path], DEPTH, None, rep))
    assert len(rows) == 4 and rep.bad_lines == 1
    assert any(n.startswith("hl.txt:3: bad line") for n in rep.notes), rep.notes
    empty = tmp_path / "bad.txt"
    empty.write_text("1737918843544000000 {nope\n")
    with pytest.raises(InputError, match=r"bad\.txt:1: no usable line"):
        list(hyperliquid.read([empty], DEPTH, None, ImportReport()))
    # sniffing: a Hyperliquid capture under another format names the right one
    with pytest.raises(InputError) as e:
        import_files([path], "okx-jsonl", tmp_path / "x.zarr", progress=False)
    assert "looks like a Hyperliquid message" in str(e.value) and "try --format hyperliquid" in str(e.value)
    assert not (tmp_path / "x.zarr").exists()
