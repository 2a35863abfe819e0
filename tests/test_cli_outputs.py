"""The shared entry wrapper (gpu_engine/cli.py) and the output-safety rules (gpu_engine/outputs.py)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpu_engine import cli, outputs
from gpu_engine.errors import InputError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ cli.guard

def test_input_error_is_one_line_exit_2(capsys):
    def f():
        raise InputError("x.csv:3: field 'px':\n   not a number")

    assert cli.guard(f) == 2
    err = capsys.readouterr().err
    assert err == "error: x.csv:3: field 'px': not a number\n"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.ENOSPC])
def test_user_os_errors_are_one_line_exit_2(capsys, code):
    def f():
        raise OSError(code, os.strerror(code), "/some/out.zarr")

    assert cli.guard(f) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/some/out.zarr" in err and "Traceback" not in err


def test_unexpected_exception_propagates_for_its_traceback():
    def f():
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        cli.guard(f)
    with pytest.raises(OSError):  # an OSError that is not a user's doing is a bug too
        cli.guard(lambda: (_ for _ in ()).throw(OSError(errno.EIO, "io")))


def test_keyboard_interrupt_exits_130(capsys):
    def f():
        raise KeyboardInterrupt

    assert cli.guard(f) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_memory_error_exits_2(capsys):
    def f():
        raise MemoryError

    assert cli.guard(f) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_parser_usage_error_is_one_line(capsys):
    p = cli.Parser(prog="prog")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error:") and "--n" in err


def test_broken_pipe_into_head_is_quiet():
    """A command piped into `head` ends quietly: no traceback, no 'Exception ignored' line."""
    code = textwrap.dedent("""
        import sys
        from gpu_engine import cli
        def f():
            for i in range(200000):
                print("line", i)
        sys.exit(cli.guard(f))
    """)
    p = subprocess.run(f"{sys.executable} -c '{code}' | head -n 2", shell=True, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines() == ["line 0", "line 1"]
    assert p.stderr == ""


def test_broken_pipe_real_cli_inspect_help_piped():
    """The real entry points too: the data CLI's help piped into head -1."""
    p = subprocess.run(f"{sys.executable} -m gpu_engine.data --help | head -n 1", shell=True, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.startswith("usage:") and "Traceback" not in p.stderr


# ------------------------------------------------------------------ outputs

def _store(path: Path, attrs: dict) -> Path:
    path.mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    return path


def test_claim_refuses_existing_without_overwrite(tmp_path):
    out = _store(tmp_path / "a.zarr", {"schema_version": 1, "depth": 5})
    with pytest.raises(InputError, match="--out.*already exists.*--overwrite"):
        outputs.claim_output(out, "--out", kind="book-store", overwrite=False)
    assert outputs.claim_output(out, "--out", kind="book-store", overwrite=True) == out


def test_claim_with_overwrite_refuses_what_is_not_ours(tmp_path):
    folder = tmp_path / "books"
    _store(folder / "x.zarr", {"schema_version": 1, "depth": 5})
    (folder / "notes.txt").write_text("mine")
    for kind in ("book-store", "cube"):
        with pytest.raises(InputError, match="not a .* written by this engine"):
            outputs.claim_output(folder, "--out", kind=kind, overwrite=True)
    f = tmp_path / "file.npy"
    f.write_bytes(b"not ours")
    with pytest.raises(InputError, match="not a block dataset"):
        outputs.claim_output(f, "--out", kind="blocks", overwrite=True)
    # a book store is not a cube and a cube is not a book store
    store = _store(tmp_path / "s.zarr", {"schema_version": 1, "depth": 5})
    cube = _store(tmp_path / "c.zarr", {"engine_version": "0.1.0", "kind": "optimize"})
    with pytest.raises(InputError):
        outputs.claim_output(store, "--out", kind="cube", overwrite=True)
    with pytest.raises(InputError):
        outputs.claim_output(cube, "--out", kind="book-store", overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"


def test_claim_refuses_the_commands_input_even_with_overwrite(tmp_path):
    store = _store(tmp_path / "in.zarr", {"schema_version": 1, "depth": 5})
    for out in (store, store / "sub.zarr", tmp_path):
        with pytest.raises(InputError, match="--data"):
            outputs.claim_output(out, "--out", kind="book-store", overwrite=True, inputs=[("--data", store)])


def test_claim_refuses_a_parent_that_is_a_file_or_read_only(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        outputs.claim_output(f / "deeper" / "out.zarr", "--out", kind="cube", overwrite=False)
    with pytest.raises(InputError, match="cannot write in /sys"):  # EPERM even for root
        outputs.claim_output(Path("/sys/out.zarr"), "--out", kind="cube", overwrite=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root may write anywhere: then /sys above is the check)
            with pytest.raises(InputError, match="permission denied"):
                outputs.claim_output(ro / "out.zarr", "--out", kind="cube", overwrite=False)
    finally:
        ro.chmod(0o700)


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "synth.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()  # our parent is alive
    names = [f".synth.zarr.tmp-{dead.pid}", f"synth.zarr.tmp-{dead.pid}", f".synth.zarr.old-{dead.pid}",
             f".synth.zarr.{dead.pid}.tmp", f".synth.zarr.tmp-{live}", "synth.zarr.tmp-notapid",
             f".other.zarr.tmp-{dead.pid}", "user-file.txt"]
    for n in names[:2]:
        (tmp_path / n).mkdir()
        (tmp_path / n / "zarr.json").write_text("{}")
    for n in names[2:]:
        (tmp_path / n).write_text("x")
    removed = outputs.clean_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted(names[:4])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[4:])


def test_replace_with_moves_dirs_and_files_and_leaves_nothing(tmp_path):
    out = tmp_path / "x.zarr"
    out.write_text("old file")
    tmp = outputs.tmp_sibling(out)
    tmp.mkdir()
    (tmp / "zarr.json").write_text("{}")
    outputs.replace_with(tmp, out)
    assert out.is_dir() and [p.name for p in tmp_path.iterdir()] == ["x.zarr"]
    tmp = outputs.tmp_sibling(out)
    tmp.write_text("new file")
    outputs.replace_with(tmp, out)
    assert out.read_text() == "new file" and [p.name for p in tmp_path.iterdir()] == ["x.zarr"]


def test_is_ours_blocks_needs_the_sidecar(tmp_path):
    p = tmp_path / "b.npy"
    np.save(p, np.zeros(3))
    assert not outputs.is_ours(p, "blocks")
    p.with_suffix(".json").write_text(json.dumps({"array_sha256": "0" * 64}))
    assert outputs.is_ours(p, "blocks")
