"""Shared test configuration: offline, deterministic, few threads (CI has 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# --- GPU check (issue 17): --device/--dtype options and fixtures; see tests/gpu_plugin.py ---
pytest_plugins = ["gpu_plugin", "fast_tier"]  # fast_tier: the --fast option (tests/fast_tier.py)
# --- end GPU check ---

# Variables that make a child process believe it is one rank of a launched job. In-process
# vLLM engines (ours and TRL's colocate mode) set RANK/WORLD_SIZE/MASTER_* in os.environ, so a
# child that inherits them would try to rendezvous on a port that is already taken.
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for a test's child process: the parent's, minus any launcher variables."""
    return {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
