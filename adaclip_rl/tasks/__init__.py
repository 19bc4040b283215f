"""Synthetic verifiable tasks and tiny offline models for tests and the CPU demo."""

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


def _register_rewards() -> None:
    from ..rewards.registry import register_reward

    register_reward("arithmetic_exact")(arithmetic_reward)


_register_rewards()
