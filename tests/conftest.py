"""Shared pytest fixtures: the real-data directory (skips cleanly when ../shared is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("GPU_ENGINE_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"{REAL_DIR} not present: real market data lives in ../shared/data/real, "
                    "which a fresh clone does not have (CI has it)")
    return REAL_DIR


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache_dir(tmp_path_factory):
    """Compiled kernels go to a per-session temporary folder (inherited by subprocesses),
    never the user's ~/.cache/gpu-sweep-engine (gpu_engine/kernels/cache.py)."""
    old = os.environ.get("GPU_ENGINE_CACHE_DIR")
    os.environ["GPU_ENGINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernel-cache"))
    yield
    if old is None:
        os.environ.pop("GPU_ENGINE_CACHE_DIR", None)
    else:
        os.environ["GPU_ENGINE_CACHE_DIR"] = old
