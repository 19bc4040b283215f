"""Tiny offline model shared by the scale-out tests (issue 24)."""

from __future__ import annotations

import pytest

from adaclip_rl.tasks import ArithmeticTask, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_scale"), ArithmeticTask().corpus()))
