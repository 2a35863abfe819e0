"""Real block headers in the block dataset: `blocks --source core-rpc|esplora`, against loopback fakes.

Synthetic chains (the real mainnet genesis block, then made-up blocks with plausible times)
served by `gpu_engine.data.blocks.fakes` on 127.0.0.1: fetch, merge, credentials, another
chain, malformed replies, resume after an interrupt, `--follow` with reorgs. The same flow
against the real header files is in tests/real/test_blocks_real.py.
"""
from __future__ import annotations

import _thread
import json
import os

import numpy as np
import pytest

from gpu_engine.data.__main__ import main as cli_main
from gpu_engine.data.blocks import dataset as B
from gpu_engine.data.blocks import fetch as F
from gpu_engine.data.blocks import headers as H
from gpu_engine.data.blocks.esplora import Esplora, difficulty_from_bits
from gpu_engine.data.blocks.fakes import FakeChain, FakeCore, FakeEsplora, fake_hash
from gpu_engine.data.blocks.remote import MAINNET_GENESIS, SourceError
from gpu_engine.data.blocks.rpc import CoreRPC
from gpu_engine.data.blocks.timemap import build_time_map

USER, PASSWORD = "alice", "s3cr3t-Pa55word"
TESTNET_GENESIS = "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943"
FAKES = {"core-rpc": FakeCore, "esplora": FakeEsplora}
_TM = build_time_map()


@pytest.fixture(autouse=True)
def _no_rpc_env(monkeypatch):
    for k in ("BITCOIN_RPC_USER", "BITCOIN_RPC_PASSWORD", "BITCOIN_RPC_COOKIE"):
        monkeypatch.delenv(k, raising=False)


def make_chain(heights, seed=0) -> FakeChain:
    """Genesis plus blocks at `heights` (ascending): times from the time map with non-monotone jitter."""
    rng = np.random.default_rng(seed)
    ch = FakeChain()
    prev = ch.genesis["hash"]
    last = 0
    for h in heights:
        t = max(int(_TM([h])[0]) + int(rng.integers(-3000, 3000)), ch.genesis["time"] + h)
        p = prev if h == last + 1 else fake_hash("unserved", h - 1)
        ch.add({"height": h, "hash": fake_hash("main", h), "prev": p, "time": t, "ntx": 1 + h % 40,
                "fee": 0 if h % 40 == 0 else 1000 * (h % 91), "size": 500 + h % 700, "weight": 2000 + h % 2800,
                "difficulty": 1.0 + (h // 2016)})
        prev, last = fake_hash("main", h), h
    ch.fill_mediantime()
    return ch


def run(argv, capsys):
    rc = cli_main(["blocks", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def with_creds(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{PASSWORD}@")


def no_secret_anywhere(folder, *texts):
    for t in texts:
        assert PASSWORD not in t
    for root, _, files in os.walk(folder):
        for f in files:
            assert PASSWORD.encode() not in open(os.path.join(root, f), "rb").read(), f


def assert_matches_chain(arr, ch: FakeChain, kind: str):
    served = sorted(ch.by_height)
    served = [h for h in served if h < len(arr)]
    idx = np.asarray(served)
    want_t = np.array([ch.block(h)["time"] for h in served])
    np.testing.assert_array_equal(arr["time"][idx], want_t)
    assert (arr["time_source"][idx] == 1).all()
    others = np.setdiff1d(np.arange(len(arr)), idx)
    assert (arr["time_source"][others] == 0).all()
    np.testing.assert_array_equal(arr["tx_count"][idx], [ch.block(h)["ntx"] for h in served])
    np.testing.assert_array_equal(arr["median_time"][idx], [ch.block(h)["mediantime"] for h in served])
    np.testing.assert_array_equal(arr["difficulty"][idx], [ch.block(h)["difficulty"] for h in served])
    if kind == "core-rpc":
        np.testing.assert_array_equal(arr["fees_sat"][idx], [ch.block(h)["fee"] for h in served])
        assert (arr["size_bytes"] == -1).all() and (arr["weight_wu"] == -1).all()
    else:
        assert (arr["fees_sat"] == -1).all()
        np.testing.assert_array_equal(arr["size_bytes"][idx], [ch.block(h)["size"] for h in served])
        np.testing.assert_array_equal(arr["weight_wu"][idx], [ch.block(h)["weight"] for h in served])
    for f in ("tx_count", "median_time", "size_bytes", "weight_wu", "fees_sat"):
        assert (arr[f][others] == -1).all()
    assert np.isnan(arr["difficulty"][others]).all()
    h = np.arange(len(arr))
    np.testing.assert_array_equal(arr["supply_sat"], B.supply_sat(h))
    np.testing.assert_array_equal(arr["subsidy_sat"], B.subsidy_sat(h))


# ------------------------------------------------------------------ fetch and merge

@pytest.mark.parametrize("kind", ["core-rpc", "esplora"])
def test_whole_chain_from_a_fake_node(tmp_path, capsys, kind):
    ch = make_chain(range(1, 320))
    out = tmp_path / "b.npy"
    with FAKES[kind](ch, user=USER, password=PASSWORD) as node:
        rc, text, err = run(["--source", kind, with_creds(node.url), "--out", out, "--batch", 50], capsys)
    assert rc == 0, err
    arr, meta = B.load(out), B.load_meta(out)
    assert len(arr) == 320 and arr.dtype == B.BLOCK_DTYPE and meta["schema_version"] == 2
    assert_matches_chain(arr, ch, kind)
    # the sidecar and the table say where the headers came from, without the credentials
    assert meta["headers"]["source"] == f"{kind} {node.url}" and meta["headers"]["genesis_hash"] == MAINNET_GENESIS
    assert meta["headers"]["tip_hash"] == ch.block(319)["hash"]
    assert meta["time_source"]["real_blocks"] == 320
    rows = H.HeaderStore.open(H.store_path(out), MAINNET_GENESIS).rows
    assert [H.hash_hex(r) for r in rows["hash"][:2]] == [MAINNET_GENESIS, ch.block(1)["hash"]]
    assert "320 wanted, 0 already on disk, 320 fetched" in text and "real header times: 320 blocks" in text
    no_secret_anywhere(tmp_path, text, err)


@pytest.mark.parametrize("kind", ["core-rpc", "esplora"])
def test_a_range_keeps_modelled_times_elsewhere_joined_without_inversions(tmp_path, capsys, kind):
    ch = make_chain(range(3000, 3250))
    out = tmp_path / "b.npy"
    with FAKES[kind](ch) as node:
        rc, text, err = run(["--source", kind, node.url, "--from-height", 3000, "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    arr = B.load(out)
    assert len(arr) == 3250
    assert_matches_chain(arr, ch, kind)
    real = arr["time"][3000:]
    # the modelled block before the run is not after any real block, the run joins the map
    assert arr["time"][2999] <= real.min() and (np.diff(arr["time"][:3000]) >= 0).all()
    assert arr["time"][0] == ch.genesis["time"]
    np.testing.assert_array_equal(B.known_times(arr), np.maximum.accumulate(arr["time"]))
    assert (arr["price"] > 0).all() and np.isfinite(arr["fair_pl"]).all()


def test_fetch_from_two_ranges_accumulates_in_the_table(tmp_path, capsys):
    ch = make_chain(list(range(1000, 1100)) + list(range(2000, 2100)))
    out = tmp_path / "b.npy"
    with FakeCore(ch) as node:
        rc, _, err = run(["--source", "core-rpc", node.url, "--from-height", 1000, "--to-height", 1099,
                          "--out", out], capsys)
        assert rc == 0, err
        assert len(B.load(out)) == 1100
        rc, text, err = run(["--source", "core-rpc", node.url, "--from-height", 2000, "--out", out,
                             "--overwrite"], capsys)
        assert rc == 0, err
        assert "101 wanted, 1 already on disk, 100 fetched" in text  # genesis was on disk
    arr = B.load(out)
    assert len(arr) == 2100
    assert_matches_chain(arr, ch, "core-rpc")
    assert B.load_meta(out)["headers"]["table"]["runs"] == [[0, 0], [1000, 1099], [2000, 2099]]


def test_headers_api_and_time_map_anchors():
    ch = make_chain(range(500, 520))
    with FakeCore(ch) as node:
        src = CoreRPC(node.url)
        rows = src.fetch([0, 500, 519])
        assert src.hashes([519, 520]) == [ch.block(519)["hash"], None]
        src.close()
    assert rows["height"].tolist() == [0, 500, 519] and H.hash_hex(rows["hash"][0]) == MAINNET_GENESIS
    assert (rows["size_bytes"] == -1).all() and rows["fees_sat"].tolist() == [0, 1000 * (500 % 91), 1000 * (519 % 91)]
    table = H.merge(rows[:1], rows[1:], rows[1:2])
    assert table["height"].tolist() == [0, 500, 519]
    assert H.run_anchors(table) == [(0, ch.genesis["time"], 0, ch.genesis["time"]),
                                    (500, int(rows["time"][1]), 500, int(rows["time"][1])),
                                    (519, int(rows["time"][2]), 519, int(rows["time"][2]))]
    arr, meta = B.build(headers=table)
    assert len(arr) == 520 and arr["time"][519] == rows["time"][2] and meta["time_map"]["fetched_runs"]["runs"] == 3


def test_difficulty_from_bits():
    assert difficulty_from_bits(0x1D00FFFF) == 1.0
    assert difficulty_from_bits(0x1B0404CB) == pytest.approx(16307.420938523983, rel=1e-12)  # Bitcoin wiki example


def test_height_at_with_non_monotone_real_times():
    ch = make_chain(range(1, 60), seed=3)
    with FakeEsplora(ch) as node:
        src = Esplora(node.url)
        rows = src.fetch(list(range(60)))
        src.close()
    arr, _ = B.build(headers=rows)
    t = arr["time"]
    assert (np.diff(t) < 0).any()  # real header times run backwards here and there
    env = np.maximum.accumulate(t)
    q = np.arange(t[0] - 5, t[-1] + 5000, 97)
    got = B.height_at(arr, q)
    np.testing.assert_array_equal(got, np.searchsorted(env, q, side="right") - 1)
    np.testing.assert_array_equal(got[:20], [B.height_at(arr, v) for v in q[:20]])


# ------------------------------------------------------------------ credentials

def test_credentials_from_cookie_env_and_url(tmp_path, capsys, monkeypatch):
    ch = make_chain(range(1, 30))
    cookie = tmp_path / ".cookie"
    cookie.write_text(f"{USER}:{PASSWORD}")
    with FakeCore(ch, user=USER, password=PASSWORD) as node:
        rc, text, err = run(["--source", "core-rpc", node.url, "--rpc-cookie", cookie, "--out", tmp_path / "a.npy"],
                            capsys)
        assert rc == 0, err
        monkeypatch.setenv("BITCOIN_RPC_USER", USER)
        monkeypatch.setenv("BITCOIN_RPC_PASSWORD", PASSWORD)
        rc, text2, err2 = run(["--source", "core-rpc", node.url, "--out", tmp_path / "b.npy"], capsys)
        assert rc == 0, err2
        monkeypatch.delenv("BITCOIN_RPC_USER")
        monkeypatch.delenv("BITCOIN_RPC_PASSWORD")
        monkeypatch.setenv("BITCOIN_RPC_COOKIE", str(cookie))
        rc, text3, err3 = run(["--source", "core-rpc", node.url, "--out", tmp_path / "c.npy"], capsys)
        assert rc == 0, err3
    no_secret_anywhere(tmp_path / "a.headers", text, err, text2, err2, text3, err3)
    for stem in "abc":
        assert PASSWORD not in (tmp_path / f"{stem}.json").read_text()


@pytest.mark.parametrize("how", ["url", "cookie", "env", "none"])
def test_wrong_credentials_exit_2_without_the_secret(tmp_path, capsys, monkeypatch, how):
    ch = make_chain(range(1, 10))
    out = tmp_path / "b.npy"
    wrong = "wr0ng-" + PASSWORD
    with FakeCore(ch, user=USER, password=PASSWORD) as node:
        argv = ["--source", "core-rpc", node.url, "--out", out]
        if how == "url":
            argv[2] = node.url.replace("http://", f"http://{USER}:{wrong}@")
        elif how == "cookie":
            (tmp_path / "cookie").write_text(f"__cookie__:{wrong}\n")
            argv += ["--rpc-cookie", tmp_path / "cookie"]
        elif how == "env":
            monkeypatch.setenv("BITCOIN_RPC_USER", USER)
            monkeypatch.setenv("BITCOIN_RPC_PASSWORD", wrong)
        rc, text, err = run(argv, capsys)
        assert node.auth_failures == 1  # refused at once, never retried
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "authentication failed (HTTP 401)" in lines[0], err
    assert wrong not in err + text and PASSWORD not in err + text
    if how == "none":
        assert "no credentials given" in lines[0] and "--rpc-cookie" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["cookie"] if how == "cookie" else [])


def test_esplora_behind_basic_auth(tmp_path, capsys):
    ch = make_chain(range(1, 15))
    with FakeEsplora(ch, user=USER, password=PASSWORD) as node:
        rc, text, err = run(["--source", "esplora", with_creds(node.url), "--out", tmp_path / "b.npy"], capsys)
        assert rc == 0, err
        rc, text2, err2 = run(["--source", "esplora", node.url.replace("http://", f"http://{USER}:nope@"),
                               "--out", tmp_path / "c.npy"], capsys)
    assert rc == 2 and "authentication failed" in err2 and "nope" not in err2
    no_secret_anywhere(tmp_path, text, err, text2, err2)


@pytest.mark.parametrize("problem,expect", [
    ("missing", "cannot read the cookie file"), ("empty", "not a cookie file"), ("dir", "is a directory")])
def test_bad_cookie_file_refused_before_any_request(tmp_path, capsys, problem, expect):
    cookie = tmp_path / "ck"
    if problem == "empty":
        cookie.write_text("no-colon-here\n")
    elif problem == "dir":
        cookie.mkdir()
    with FakeCore(make_chain([1])) as node:
        rc, _, err = run(["--source", "core-rpc", node.url, "--rpc-cookie", cookie, "--out", tmp_path / "b.npy"],
                         capsys)
        assert node.requests == 0
    assert rc == 2 and len(err.strip().splitlines()) == 1 and expect in err and str(cookie) in err
    assert "no-colon-here" not in err


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("kind", ["core-rpc", "esplora"])
def test_another_chain_is_refused(tmp_path, capsys, kind):
    ch = make_chain(range(1, 10))
    g = ch.by_height[0]
    del ch.by_hash[g["hash"]]
    g["hash"] = TESTNET_GENESIS
    ch.by_hash[TESTNET_GENESIS] = g
    with FAKES[kind](ch) as node:
        rc, _, err = run(["--source", kind, node.url, "--out", tmp_path / "b.npy"], capsys)
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and "another chain" in line and TESTNET_GENESIS in line and MAINNET_GENESIS in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["core-rpc", "esplora"])
@pytest.mark.parametrize("how", ["time", "json", "hash"])
def test_malformed_reply_names_the_height_and_writes_nothing(tmp_path, capsys, kind, how):
    ch = make_chain(range(1, 400))
    ch.malform[237] = how
    with FAKES[kind](ch) as node:
        rc, _, err = run(["--source", kind, node.url, "--out", tmp_path / "b.npy", "--batch", 40], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "height 237: malformed reply" in lines[0], err
    assert list(tmp_path.iterdir()) == []  # no dataset, no sidecar, no temporary, no empty header table


def test_malformed_reply_after_complete_parts_keeps_them_for_the_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(H, "PART_BLOCKS", 100)
    ch = make_chain(range(1, 400))
    ch.malform[337] = "time"
    out = tmp_path / "b.npy"
    with FakeCore(ch) as node:
        rc, _, err = run(["--source", "core-rpc", node.url, "--out", out, "--batch", 25], capsys)
        assert rc == 2 and "height 337" in err
        assert not out.exists() and not (tmp_path / "b.json").exists()
        assert len(list((tmp_path / "b.headers").glob("part-*.npy"))) == 3
        assert not [p for p in (tmp_path / "b.headers").iterdir() if ".tmp" in p.name]
        del ch.malform[337]
        before = dict(node.fetched)
        rc, text, err = run(["--source", "core-rpc", node.url, "--out", out], capsys)
    assert rc == 0, err
    assert "300 already on disk, 100 fetched" in text
    assert all(node.fetched[h] == before.get(h, 0) for h in range(300))
    assert_matches_chain(B.load(out), ch, "core-rpc")


@pytest.mark.parametrize("argv,expect", [
    (["--follow"], "--follow: needs --source"),
    (["--from-height", 5], "--from-height: needs --source"),
    (["--source", "bitcoind", "http://127.0.0.1:1/"], "unknown kind 'bitcoind'"),
    (["--source", "esplora", "http://127.0.0.1:1/", "--rpc-cookie", "x"], "only with --source core-rpc"),
    (["--source", "esplora", "http://127.0.0.1:1/", "--from-height", 9, "--to-height", 3], "above --to-height"),
    (["--source", "esplora", "http://127.0.0.1:1/", "--follow", "--to-height", 3], "follows the tip"),
    (["--source", "esplora", "http://127.0.0.1:1/", "--max-polls", 3], "only with --follow"),
    (["--source", "esplora", "ftp://127.0.0.1:1/"], "not an http(s) URL"),
    (["--source", "esplora", "http://127.0.0.1:1/", "--batch", 0], "--batch"),
    (["--summary", "--source", "esplora", "http://127.0.0.1:1/"], "give no build options"),
])
def test_bad_source_arguments(tmp_path, capsys, argv, expect):
    rc, _, err = run([*argv, "--out", tmp_path / "b.npy"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert list(tmp_path.iterdir()) == []


def test_unreachable_source_and_a_height_past_the_tip(tmp_path, capsys, monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(F, "open_source", lambda *a, **k: CoreRPC(f"http://127.0.0.1:{port}/", retries=1))
    rc, _, err = run(["--source", "core-rpc", f"http://127.0.0.1:{port}/", "--out", tmp_path / "b.npy"], capsys)
    assert rc == 2 and f"127.0.0.1:{port}" in err and "cannot connect" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    with FakeEsplora(make_chain(range(1, 20))) as node:
        rc, _, err = run(["--source", "esplora", node.url, "--to-height", 25, "--out", tmp_path / "b.npy"], capsys)
    assert rc == 2 and "--to-height" in err and "tip 19" in err
    assert list(tmp_path.iterdir()) == []


def test_header_table_that_is_not_ours_is_refused(tmp_path, capsys):
    (tmp_path / "b.headers").mkdir()
    (tmp_path / "b.headers" / "notes.txt").write_text("mine")
    with FakeCore(make_chain([1])) as node:
        rc, _, err = run(["--source", "core-rpc", node.url, "--out", tmp_path / "b.npy"], capsys)
        assert node.requests == 0
    assert rc == 2 and "b.headers" in err and "not one this engine wrote" in err
    assert (tmp_path / "b.headers" / "notes.txt").read_text() == "mine"


def test_transient_errors_are_retried_then_reported():
    ch = make_chain(range(1, 5))
    with FakeCore(ch) as node:
        node.fail_next = [503, 500]
        src = CoreRPC(node.url, retries=2)
        src.http.backoff_s = 0.01
        assert src.tip() == (4, ch.block(4)["hash"])
        node.fail_next = [503, 503, 503]
        with pytest.raises(SourceError, match=r"HTTP 503 \(2 retries\)"):
            src.tip()
        src.close()


# ------------------------------------------------------------------ resume

def test_interrupted_fetch_resumes_without_fetching_again(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(H, "PART_BLOCKS", 100)
    ch = make_chain(range(1, 450))
    out = tmp_path / "b.npy"
    with FakeCore(ch) as node:
        seen = []

        def hook(names):
            if "getblockheader" in names:
                seen.append(1)
                if len(seen) == 12:  # mid-fetch: 25 heights per batch, the 3rd part under way
                    _thread.interrupt_main()
        node.hook = hook
        rc, _, err = run(["--source", "core-rpc", node.url, "--out", out, "--batch", 25, "--concurrency", 2],
                         capsys)
        assert rc == 130 and err.strip().endswith("interrupted")
        assert not out.exists()
        parts = sorted((tmp_path / "b.headers").glob("part-*.npy"))
        kept = np.concatenate([np.load(p) for p in parts])["height"]
        assert 200 <= len(kept) < 450 and kept.tolist() == list(range(len(kept)))
        node.hook = None
        before = dict(node.fetched)
        rc, text, err = run(["--source", "core-rpc", node.url, "--out", out, "--batch", 25], capsys)
    assert rc == 0, err
    assert f"{len(kept)} already on disk, {450 - len(kept)} fetched" in text
    assert all(node.fetched[h] == before[h] for h in kept)  # nothing on disk was fetched again
    arr = B.load(out)
    assert_matches_chain(arr, ch, "core-rpc")
    # the same dataset as an uninterrupted run (apart from the build time in the sidecar)
    with FakeCore(ch) as node:
        rc, _, err = run(["--source", "core-rpc", node.url, "--out", tmp_path / "c.npy"], capsys)
    assert rc == 0
    assert B.array_sha256(B.load(tmp_path / "c.npy")) == B.array_sha256(arr)
    assert len(list((tmp_path / "b.headers").glob("*.npy"))) == 1  # compacted at the end


def test_a_reorg_between_two_runs_is_repaired(tmp_path, capsys):
    ch = make_chain(range(1, 200))
    out = tmp_path / "b.npy"
    with FakeEsplora(ch) as node:
        rc, _, _ = run(["--source", "esplora", node.url, "--to-height", 150, "--out", out], capsys)
        assert rc == 0
        ch.reorg(140, 70)  # blocks 140.. change while we were away; stored 140..150 are stale
        rc, text, err = run(["--source", "esplora", node.url, "--out", out, "--overwrite"], capsys)
    assert rc == 0, err
    assert "reorg repair: 11 replaced" in text
    arr = B.load(out)
    assert len(arr) == 210
    assert_matches_chain(arr, ch, "esplora")
    rows = H.HeaderStore.open(H.store_path(out), MAINNET_GENESIS).rows
    assert len(H.broken_links(rows)) == 0
    assert [H.hash_hex(h) for h in rows["hash"][138:142]] == [ch.block(h)["hash"] for h in range(138, 142)]


# ------------------------------------------------------------------ follow

@pytest.mark.parametrize("kind", ["core-rpc", "esplora"])
def test_follow_appends_blocks_and_survives_reorgs(tmp_path, capsys, kind):
    ch = make_chain(range(1, 120))
    out = tmp_path / "b.npy"
    tip_call = "getblockcount" if kind == "core-rpc" else "/api/blocks/tip/height"
    polls = []
    history = []

    def hook(names):
        if tip_call not in names:
            return
        polls.append(1)
        k = len(polls) - 1  # 0: the initial sync, 1..: the polls
        if k == 1:
            ch.extend(3)                      # 120..122
        elif k == 3:
            ch.reorg(121, 4)                  # the tip switches branch: 121..124 replaced/added
        elif k == 4:
            ch.reorg(123, 1, branch="short")  # a shorter branch wins: tip 123
        history.append(ch.tip)

    with FAKES[kind](ch) as node:
        node.hook = hook
        rc, text, err = run(["--source", kind, node.url, "--out", out, "--follow", "--poll-s", 0.01,
                             "--max-polls", 5], capsys)
    assert rc == 0, err
    lines = [ln for ln in text.splitlines() if ln.startswith("tip ")]
    assert lines[0].startswith("tip 122: +3 blocks; wrote")
    assert lines[1].startswith("tip 124: +2 blocks; reorg from height 121: 2 replaced")
    assert lines[2].startswith("tip 123: +0 blocks; reorg from height 123: 1 replaced, 1 dropped")
    assert len(lines) == 3  # polls 2 and 5 saw nothing new and wrote nothing
    arr = B.load(out)
    assert len(arr) == 124 and ch.tip == 123
    assert_matches_chain(arr, ch, kind)
    meta = B.load_meta(out)
    assert meta["headers"]["tip_hash"] == ch.block(123)["hash"] == fake_hash("short", 123)
    with H.HeaderStore.open(H.store_path(out), MAINNET_GENESIS) as st:
        assert st.top() == 123 and len(H.broken_links(st.rows)) == 0
        assert [H.hash_hex(st.row(h)["hash"]) for h in (120, 121, 122, 123)] == [
            fake_hash("main", 120), fake_hash("alt", 121), fake_hash("alt", 122), fake_hash("short", 123)]


def test_follow_rides_out_an_unreachable_source(tmp_path, capsys, monkeypatch):
    from gpu_engine.data.blocks import remote

    monkeypatch.setattr(remote, "BACKOFF_S", 0.001)
    ch = make_chain(range(1, 50))
    polls = []

    def hook(names):
        if "getblockcount" in names:
            polls.append(1)
            if len(polls) == 2:
                ch.extend(2)

    with FakeCore(ch) as node:
        node.hook = hook
        fails = iter([[], [503] * 5, []])  # poll 2 finds the node down (all 5 tries), poll 3 up again
        orig = F.poll_once

        def poll(*a, **k):
            node.fail_next = list(next(fails))
            return orig(*a, **k)
        monkeypatch.setattr(F, "poll_once", poll)
        rc, text, err = run(["--source", "core-rpc", node.url, "--out", tmp_path / "b.npy", "--follow",
                             "--poll-s", 0.01, "--max-polls", 3], capsys)
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning: poll")]
    assert len(warn) == 1 and "HTTP 503 (4 retries)" in warn[0] and "polling again" in warn[0]
    assert "tip 51: +2 blocks" in text
    assert len(B.load(tmp_path / "b.npy")) == 52


def test_a_running_follow_locks_the_table(tmp_path):
    p = tmp_path / "b.headers"
    with H.HeaderStore.open(p, MAINNET_GENESIS):
        with pytest.raises(Exception, match="another process is writing"):
            H.HeaderStore.open(p, MAINNET_GENESIS)
    with pytest.raises(Exception, match="genesis block hash is"):
        H.HeaderStore.open(p, TESTNET_GENESIS)


# ------------------------------------------------------------------ schema 1 datasets

def test_schema_1_dataset_still_loads(tmp_path, capsys):
    arr, meta = B.build(n_blocks=2000, seed=4)
    v1 = np.empty(len(arr), B.BLOCK_DTYPE_V1)
    for name in B.BLOCK_DTYPE_V1.names:
        v1[name] = arr[name]
    path = tmp_path / "old.npy"
    np.save(path, v1)
    meta = dict(meta, schema_version=1, array_sha256=B.array_sha256(v1))
    (tmp_path / "old.json").write_text(json.dumps(meta))
    got = B.load(path)
    assert got.dtype == B.BLOCK_DTYPE and not got.flags.writeable
    for name in B.BLOCK_DTYPE_V1.names:
        np.testing.assert_array_equal(got[name], arr[name])
    assert (got["time_source"] == 0).all() and (got["fees_sat"] == -1).all() and np.isnan(got["difficulty"]).all()
    rc, text, _ = run(["--summary", path], capsys)
    assert rc == 0 and "schema 1" in text and "real header times: none" in text
    np.save(path, np.zeros(3, dtype=[("height", "<i4")]))
    rc, _, err = run(["--summary", path], capsys)
    assert rc == 2 and "--overwrite" in err
