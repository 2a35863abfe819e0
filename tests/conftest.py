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
