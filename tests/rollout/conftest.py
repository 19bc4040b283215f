"""Shared fixtures: one tiny model and ONE vLLM engine per test module (CPU is shared)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from adaclip_rl.tasks.arithmetic import ArithmeticTask
    from adaclip_rl.tasks.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("rollout_tiny") / "model", ArithmeticTask().corpus(300))
