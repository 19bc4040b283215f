"""Files shipped inside the package.

``BENCHMARK_DIR`` holds offline copies of the evaluation benchmarks (MATH-500, AIME 2024,
AMC 2023, GSM8K test, HumanEval) in their upstream schemas, one JSON-lines file each; its
``README.md`` gives source, revision and licence of every file. ``RECIPE_DIR`` holds the
recipes the package itself runs (the CPU demo's, ``DEMO_RECIPE``).
"""

from __future__ import annotations

import os
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent / "benchmarks"
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
DEMO_RECIPE = RECIPE_DIR / "cpu_demo.yaml"

# The word that selects BENCHMARK_DIR wherever a benchmark data directory is asked for
# (``adaclip-rl eval --data-dir bundled``, ``periodic_eval_data_dir: bundled``).
BUNDLED = "bundled"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``BENCHMARK_DIR`` for ``"bundled"``; any other value (a directory, or None: the Hub) unchanged."""
    if data_dir is not None and str(data_dir) == BUNDLED:
        return BENCHMARK_DIR
    return data_dir


__all__ = ["BENCHMARK_DIR", "BUNDLED", "DEMO_RECIPE", "RECIPE_DIR", "resolve_data_dir"]
