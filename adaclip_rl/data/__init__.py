"""Files shipped inside the package.

``BENCHMARK_DIR`` holds offline copies of the evaluation benchmarks (MATH-500, AIME 2024,
AMC 2023, GSM8K test, HumanEval) in their upstream schemas, one JSON-lines file each; its
``README.md`` gives source, revision and licence of every file. ``RECIPE_DIR`` holds the
recipes the package itself runs: ``DEMO_RECIPE`` (the CPU demo and the staleness study:
scratchpad addition) and ``ARITHMETIC_RECIPE`` (GRPO on plain arithmetic, the learning test's).
"""

from __future__ import annotations

import os
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent / "benchmarks"
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
DEMO_RECIPE = RECIPE_DIR / "staleness_study.yaml"
ARITHMETIC_RECIPE = RECIPE_DIR / "arithmetic_grpo.yaml"

# The word that selects BENCHMARK_DIR wherever a benchmark data directory is asked for
# (``adaclip-rl eval --data-dir bundled``, ``periodic_eval_data_dir: bundled``).
BUNDLED = "bundled"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``BENCHMARK_DIR`` for ``"bundled"``; any other value (a directory, or None: the Hub) unchanged."""
    if data_dir is not None and str(data_dir) == BUNDLED:
        return BENCHMARK_DIR
    return data_dir


__all__ = ["ARITHMETIC_RECIPE", "BENCHMARK_DIR", "BUNDLED", "DEMO_RECIPE", "RECIPE_DIR", "resolve_data_dir"]
