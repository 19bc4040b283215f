"""Addition with a scratchpad: a synthetic task whose completions are reasoning-length (~30 tokens).

A problem is ``"374+958="``. The model writes one scratchpad step per column, least significant
first, ``a_i+b_i+carry=sum``, then ``>`` and the answer's digits least significant first::

    374+958=  ->  4+8+0=12|7+5+1=13|3+9+1=13|>2331<eos>        (374 + 958 = 1332)

Every digit is one token (see :func:`~adaclip_rl.tasks.tiny_model.build_tokenizer`), so a
3-digit problem's completion is about 33 tokens: most of them are copied or forced (low entropy)
and a few carry the decision (a column sum, a carry), the token mix that BAPO's contribution
balance and Archer's entropy classes act on. The reward is exact: 1.0 iff the digits after the
*last* ``>`` equal the reversed sum (the scratchpad itself is not graded, as in outcome-reward
RL on math). Train and held-out splits are a fixed partition of operand pairs.

The supervised warm start (:func:`warm_start_scratchpad`) trains on full worked solutions and is
stopped early, so the tiny model makes scratchpad errors that RL can remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..rewards.exact import parse_final, scratchpad_reward
from .arithmetic import sample_operand_pairs

__all__ = ["ScratchpadAdditionTask", "evaluate_scratchpad", "parse_final", "scratchpad_reward", "warm_start_scratchpad"]


@dataclass(frozen=True)
class ScratchpadAdditionTask:
    """Addition of two numbers of up to ``digits`` digits with a column-by-column scratchpad.

    Args:
        digits: maximum operand width (2..6); operands are uniform in ``[0, 10**digits)``.
        heldout_every: every ``heldout_every``-th operand pair (by a fixed hash) is held out.
    """

    digits: int = 3
    heldout_every: int = 10

    def __post_init__(self) -> None:
        if not 2 <= self.digits <= 6:
            raise ValueError(f"digits must be in [2, 6]; got {self.digits}")
        if self.heldout_every < 2:
            raise ValueError(f"heldout_every must be >= 2; got {self.heldout_every}")

    @staticmethod
    def solution(a: int, b: int) -> tuple[str, str]:
        """``(worked solution, answer)`` for ``a + b``: the completion text and the reversed sum."""
        da, db = str(a)[::-1], str(b)[::-1]
        width = max(len(da), len(db))
        steps, carry = [], 0
        for i in range(width):
            x = int(da[i]) if i < len(da) else 0
            y = int(db[i]) if i < len(db) else 0
            s = x + y + carry
            steps.append(f"{x}+{y}+{carry}={s % 10}{s // 10}")  # sum written low digit first, then the carry
            carry = s // 10
        answer = str(a + b)[::-1]
        return "|".join(steps) + "|>" + answer, answer

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[dict[str, str]]:
        """``n`` problems from ``split`` ("train" or "test"): ``prompt``, ``answer`` (reversed sum) and
        ``solution`` (the worked completion the warm start imitates)."""
        problems = []
        for a, b in sample_operand_pairs(n, split, seed, self.digits, self.heldout_every):
            sol, answer = self.solution(a, b)
            problems.append({"prompt": f"{a}+{b}=", "answer": answer, "solution": sol})
        return problems

    def corpus(self, n: int = 2000, seed: int = 0) -> list[str]:
        """Text the tokenizer is trained on: full problems with worked solutions."""
        return [p["prompt"] + p["solution"] for p in self.sample(n, "train", seed)]

    def max_completion_tokens(self) -> int:
        """Tokens of the longest worked solution plus EOS (every character is one token at most)."""
        return len(self.solution(10**self.digits - 1, 10**self.digits - 1)[0]) + 1


class _SolutionView:
    """The task as :func:`~adaclip_rl.tasks.warmstart.warm_start` reads it: ``answer`` = the worked solution."""

    def __init__(self, task: ScratchpadAdditionTask) -> None:
        self.task = task

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[dict[str, str]]:
        return [{"prompt": r["prompt"], "answer": r["solution"]} for r in self.task.sample(n, split, seed)]


def warm_start_scratchpad(model_dir: str | Path, out_dir: str | Path, task: ScratchpadAdditionTask, config,
                          progress: bool = True) -> Path:
    """Supervised warm start on worked solutions (loss on the completion tokens only); saves to ``out_dir``.

    ``config`` is a :class:`~adaclip_rl.tasks.warmstart.WarmStartConfig`.
    """
    from .warmstart import warm_start

    return warm_start(model_dir, out_dir, _SolutionView(task), config, progress=progress)  # type: ignore[arg-type]


def evaluate_scratchpad(model, tokenizer, problems: list[dict[str, str]], *, k: int = 4, temperature: float = 1.0,
                        max_new_tokens: int = 40, seed: int = 0) -> dict[str, float]:
    """Held-out avg@k, unbiased pass@k, greedy accuracy and mean completion length (tokens) at ``temperature``."""
    from ..eval.metrics import pass_at_k
    from .warmstart import sample_answers

    prompts = [p["prompt"] for p in problems]
    samples = sample_answers(model, tokenizer, prompts, k=k, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed)
    correct = [[parse_final(s) == p["answer"] for s in ss] for ss, p in zip(samples, problems, strict=True)]
    greedy = sample_answers(model, tokenizer, prompts, k=1, temperature=0.0, max_new_tokens=max_new_tokens)
    greedy_acc = sum(parse_final(g[0]) == p["answer"] for g, p in zip(greedy, problems, strict=True)) / len(problems)
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for ss in samples for s in ss]
    return {
        f"avg@{k}": sum(sum(c) for c in correct) / (len(problems) * k),
        f"pass@{k}": sum(pass_at_k(k, sum(c), k) for c in correct) / len(problems),
        "greedy": greedy_acc,
        "mean_completion_tokens": sum(lengths) / len(lengths),
    }
