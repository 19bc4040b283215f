"""Tiny offline model and dataset shared by the trainer tests."""

from __future__ import annotations

import pytest
from datasets import Dataset

from adaclip_rl.tasks import ArithmeticTask, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), ArithmeticTask().corpus()))


@pytest.fixture(scope="session")
def arithmetic_dataset():
    return Dataset.from_list(ArithmeticTask().sample(64, "train", seed=0))


def digit_reward(completions, **kwargs):
    """Fraction of digit characters: varies across random completions, so advantages are non-zero."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
