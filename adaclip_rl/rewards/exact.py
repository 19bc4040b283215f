"""Exact-answer rewards of the synthetic tasks (:mod:`adaclip_rl.tasks`): the verifiers only.

The tasks generate the problems and import these; the reward registry lists them by name
(``arithmetic_exact``, ``scratchpad_exact``) without importing the tasks, so ``rewards`` stays
below ``tasks`` in the package layering (``tests/test_imports_direction.py``).
"""

from __future__ import annotations

import re

_LEADING_INT = re.compile(r"\s*(\d+)")
_FINAL = re.compile(r">\s*(\d+)")


def parse_answer(completion: str) -> str | None:
    """Leading digit string of a completion (``" 046<eos>"`` -> ``"046"``), or None."""
    m = _LEADING_INT.match(completion)
    return m.group(1) if m else None


def parse_final(completion: str) -> str | None:
    """Digits after the last ``>`` of a completion (``"...|>2331"`` -> ``"2331"``), or None."""
    hits = _FINAL.findall(completion)
    return hits[-1] if hits else None


def plain_completion_text(completion) -> str:
    """The text of a TRL completion: a string, or the last message of a conversation."""
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return completion[-1]["content"] if completion else ""
    return completion


def arithmetic_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the completion's leading integer equals ``answer``."""
    return [float(parse_answer(plain_completion_text(c)) == a) for c, a in zip(completions, answer, strict=True)]


def scratchpad_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the completion's final answer (after the last ``>``) equals ``answer``."""
    return [float(parse_final(plain_completion_text(c)) == a) for c, a in zip(completions, answer, strict=True)]
