"""Synthetic verifiable task for the CPU demo and learning tests: multi-digit addition.

A problem is ``"a+b="`` with an exact answer. By default the answer's digits are written least
significant first (``"17+25="`` -> ``"24"`` for 42), the order in which carries are computed: a
0.3 M-parameter transformer learns that in a few hundred supervised steps on a CPU, while the
most-significant-first order stays near 5% accuracy after 1,200 steps (measured here). The
reward checks the exact digit string either way. Train and held-out splits are a deterministic
partition of all operand pairs, so a held-out problem is never seen in training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_LEADING_INT = re.compile(r"\s*(\d+)")


@dataclass(frozen=True)
class ArithmeticTask:
    """Addition of two ``digits``-digit numbers (leading zeros not written).

    Args:
        digits: operand width (1..6).
        heldout_every: every ``heldout_every``-th operand pair (by a fixed hash) is held out.
        reverse_answer: write the answer least-significant digit first.
    """

    digits: int = 2
    heldout_every: int = 10
    reverse_answer: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 6:
            raise ValueError(f"digits must be in [1, 6]; got {self.digits}")
        if self.heldout_every < 2:
            raise ValueError(f"heldout_every must be >= 2; got {self.heldout_every}")

    def _is_heldout(self, a: int, b: int) -> bool:
        return ((a * 7919 + b * 104729) % 1000003) % self.heldout_every == 0

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[dict[str, str]]:
        """``n`` problems from ``split`` ("train" or "test"): dicts with ``prompt`` and ``answer``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
        rng = random.Random(seed)
        hi = 10**self.digits - 1
        want_heldout = split == "test"
        out: list[dict[str, str]] = []
        while len(out) < n:
            a, b = rng.randint(0, hi), rng.randint(0, hi)
            if self._is_heldout(a, b) == want_heldout:
                answer = str(a + b)[::-1] if self.reverse_answer else str(a + b)
                out.append({"prompt": f"{a}+{b}=", "answer": answer})
        return out

    def corpus(self, n: int = 2000, seed: int = 0) -> list[str]:
        """Text the tokenizer is trained on: full problems with answers."""
        return [p["prompt"] + p["answer"] for p in self.sample(n, "train", seed)]


def parse_answer(completion: str) -> str | None:
    """Leading digit string of a completion (``" 046<eos>"`` -> ``"046"``), or None."""
    m = _LEADING_INT.match(completion)
    return m.group(1) if m else None


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return completion[-1]["content"] if completion else ""
    return completion


def arithmetic_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the completion's leading integer equals ``answer``."""
    return [float(parse_answer(_text(c)) == a) for c, a in zip(completions, answer, strict=True)]
