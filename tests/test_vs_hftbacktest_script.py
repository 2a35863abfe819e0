"""benchmarks/vs_hftbacktest.py: argument errors, without hftbacktest (CI installs only the project)."""
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "vs_hftbacktest.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60)


def test_missing_capture_exits_2_with_one_line():
    r = _run()
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--capture" in lines[0]


def test_capture_not_found_exits_2(tmp_path):
    r = _run("--capture", str(tmp_path / "nope.jsonl.gz"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found" in lines[0]
