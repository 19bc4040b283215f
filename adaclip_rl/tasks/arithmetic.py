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
from dataclasses import dataclass

# the task's reward and answer parsing live with the other verifiers (rewards below tasks)
from ..rewards.exact import arithmetic_reward, parse_answer, plain_completion_text

__all__ = ["ArithmeticTask", "arithmetic_reward", "is_heldout_pair", "parse_answer", "plain_completion_text",
           "sample_operand_pairs"]


def is_heldout_pair(a: int, b: int, heldout_every: int) -> bool:
    """Whether operand pair ``(a, b)`` belongs to the held-out split (a fixed hash, every task alike)."""
    return ((a * 7919 + b * 104729) % 1000003) % heldout_every == 0


def sample_operand_pairs(n: int, split: str, seed: int, digits: int, heldout_every: int) -> list[tuple[int, int]]:
    """``n`` operand pairs in ``[0, 10**digits)`` from ``split`` ("train" or "test"), drawn with ``seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    rng = random.Random(seed)
    hi = 10**digits - 1
    want_heldout = split == "test"
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        if is_heldout_pair(a, b, heldout_every) == want_heldout:
            pairs.append((a, b))
    return pairs


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

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[dict[str, str]]:
        """``n`` problems from ``split`` ("train" or "test"): dicts with ``prompt`` and ``answer``."""
        problems = []
        for a, b in sample_operand_pairs(n, split, seed, self.digits, self.heldout_every):
            answer = str(a + b)[::-1] if self.reverse_answer else str(a + b)
            problems.append({"prompt": f"{a}+{b}=", "answer": answer})
        return problems

    def corpus(self, n: int = 2000, seed: int = 0) -> list[str]:
        """Text the tokenizer is trained on: full problems with answers."""
        return [p["prompt"] + p["answer"] for p in self.sample(n, "train", seed)]
