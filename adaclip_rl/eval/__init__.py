"""Evaluation on math and code benchmarks: avg@k, unbiased pass@k, maj@k.

* :mod:`~adaclip_rl.eval.benchmarks` - registry (aime24, aime25, amc23, math500, gsm8k, humaneval)
* :mod:`~adaclip_rl.eval.backends` - vLLM and transformers generation behind one interface
* :mod:`~adaclip_rl.eval.protocols` - named presets of published protocols (r1, open-r1, qwen-math,
  dapo, archer)
* :mod:`~adaclip_rl.eval.answers` - majority-vote answer keys (spellings of one answer meet)
* :mod:`~adaclip_rl.eval.metrics` - the estimators and their standard errors
* :mod:`~adaclip_rl.eval.runner` - :func:`evaluate` (records + summary)
* :mod:`~adaclip_rl.eval.callback` - periodic evaluation during training
* :mod:`~adaclip_rl.eval.cli` - ``adaclip-rl eval``

Importing this package is cheap (no torch/transformers/vllm until used).
"""

from __future__ import annotations

from typing import Any

from adaclip_rl.eval.answers import answer_key
from adaclip_rl.eval.backends import (
    Completion,
    GenerationBackend,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    make_backend,
)
from adaclip_rl.eval.benchmarks import BENCHMARKS, Benchmark, Problem, get_benchmark, register_benchmark
from adaclip_rl.eval.metrics import (
    avg_at_k,
    compute_metrics,
    mean_maj_at_k,
    mean_pass_at_k,
    pass_at_k,
    standard_error,
)
from adaclip_rl.eval.protocols import PROTOCOLS, BenchSettings, Protocol, get_protocol
from adaclip_rl.eval.runner import evaluate, format_table

__all__ = [
    "BENCHMARKS",
    "PROTOCOLS",
    "BenchSettings",
    "Benchmark",
    "Completion",
    "GenerationBackend",
    "PeriodicEvalCallback",
    "Problem",
    "Protocol",
    "SamplingConfig",
    "TransformersBackend",
    "VLLMBackend",
    "answer_key",
    "avg_at_k",
    "compute_metrics",
    "evaluate",
    "format_table",
    "get_benchmark",
    "get_protocol",
    "make_backend",
    "mean_maj_at_k",
    "mean_pass_at_k",
    "pass_at_k",
    "register_benchmark",
    "standard_error",
]


def __getattr__(name: str) -> Any:
    if name == "PeriodicEvalCallback":  # imports transformers; load on demand
        from adaclip_rl.eval.callback import PeriodicEvalCallback

        return PeriodicEvalCallback
    raise AttributeError(f"module 'adaclip_rl.eval' has no attribute {name!r}")
