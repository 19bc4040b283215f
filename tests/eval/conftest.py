"""Fixtures for the evaluation tests (the shared benchmark files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_fakes import DATA_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` beside the checkout (real benchmark files)."""
    assert DATA_DIR.is_dir(), f"benchmark data not found at {DATA_DIR}"
    return DATA_DIR
