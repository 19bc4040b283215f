"""Synthetic verifiable tasks and tiny offline models for tests and the CPU demo.

The tasks' rewards are registered by name in :mod:`adaclip_rl.rewards.registry` (``arithmetic_exact``, ``scratchpad_exact``),
not as a side effect of importing this package."""

from .arithmetic import ArithmeticTask, arithmetic_reward, parse_answer
from .tiny_model import TinyModelSpec, build_tiny_model, build_tokenizer

__all__ = [
    "ArithmeticTask",
    "TinyModelSpec",
    "arithmetic_reward",
    "build_tiny_model",
    "build_tokenizer",
    "parse_answer",
]

