"""Evaluation on math and code benchmarks: avg@k, unbiased pass@k, maj@k.

* :mod:`~adaclip_rl.eval.benchmarks` - registry (aime24, aime25, amc23, math500, gsm8k, humaneval)
* :mod:`~adaclip_rl.eval.backends` - vLLM and transformers generation behind one interface
* :mod:`~adaclip_rl.eval.metrics` - the estimators
* :mod:`~adaclip_rl.eval.runner` - :func:`evaluate` (records + summary)
* :mod:`~adaclip_rl.eval.callback` - periodic evaluation during training
* :mod:`~adaclip_rl.eval.cli` - ``adaclip-rl eval``

Importing this package is cheap (no torch/transformers/vllm until used).
"""

from __future__ import annotations

from typing import Any

from adaclip_rl.eval.backends import (
    Completion,
    GenerationBackend,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    make_backend,
)
from adaclip_rl.eval.benchmarks import BENCHMARKS, Benchmark, Problem, get_benchmark, register_benchmark
from adaclip_rl.eval.metrics import avg_at_k, compute_metrics, mean_maj_at_k, mean_pass_at_k, pass_at_k
from adaclip_rl.eval.runner import evaluate, format_table

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Completion",
    "GenerationBackend",
    "PeriodicEvalCallback",
    "Problem",
    "SamplingConfig",
    "TransformersBackend",
    "VLLMBackend",
    "avg_at_k",
    "compute_metrics",
    "evaluate",
    "format_table",
    "get_benchmark",
    "make_backend",
    "mean_maj_at_k",
    "mean_pass_at_k",
    "pass_at_k",
    "register_benchmark",
]


def __getattr__(name: str) -> Any:
    if name == "PeriodicEvalCallback":  # imports transformers; load on demand
        from adaclip_rl.eval.callback import PeriodicEvalCallback

        return PeriodicEvalCallback
    raise AttributeError(f"module 'adaclip_rl.eval' has no attribute {name!r}")
