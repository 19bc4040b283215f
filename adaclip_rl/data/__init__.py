"""Files shipped inside the package.

``BENCHMARK_DIR`` holds offline copies of the evaluation benchmarks (MATH-500, AIME 2024,
AMC 2023, GSM8K test, HumanEval) in their upstream schemas, one JSON-lines file each; its
``README.md`` gives source, revision and licence of every file. ``RECIPE_DIR`` holds the
recipes the package itself runs (the CPU demo's).
"""

from __future__ import annotations

from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent / "benchmarks"

__all__ = ["BENCHMARK_DIR"]
