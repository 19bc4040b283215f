"""Format and length shaping rewards: think/answer tags, DAPO's soft overlong penalty."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adaclip_rl.rewards._text import completion_text

__all__ = ["think_format_reward", "SoftOverlongPenalty", "soft_overlong_penalty"]

_THINK_ANSWER_RE = re.compile(
    r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL
)


def _prompt_opens_think(prompt: Any) -> bool:
    """True when the prompt (chat template output) already ends with an opening ``<think>``."""
    if prompt is None:
        return False
    text = prompt if isinstance(prompt, str) else completion_text(prompt)
    return text.rstrip().endswith("<think>")


def think_format_reward(
    completions: list[Any], prompts: list[Any] | None = None, **kwargs: Any
) -> list[float]:
    """1.0 when the completion is ``<think>...</think>`` followed by ``<answer>...</answer>``.

    The completion must consist of exactly one think block and then exactly one non-empty answer
    block (whitespace around them is allowed, nothing else). If the prompt already ends with
    ``<think>`` (templates that pre-fill it), the completion may start inside the think block.

    Args:
        completions: TRL completions (strings or conversational message lists).
        prompts: TRL prompts (used only to detect a pre-filled ``<think>``).

    Returns:
        ``list[float]`` of 0.0/1.0, one per completion.
    """
    out = []
    for i, completion in enumerate(completions):
        text = completion_text(completion)
        if prompts is not None and i < len(prompts) and _prompt_opens_think(prompts[i]):
            if not text.lstrip().startswith("<think>"):
                text = "<think>" + text
        m = _THINK_ANSWER_RE.match(text)
        ok = (
            m is not None
            and text.count("<think>") == 1
            and text.count("</think>") == 1
            and text.count("<answer>") == 1
            and text.count("</answer>") == 1
            and m.group("answer").strip() != ""
        )
        out.append(1.0 if ok else 0.0)
    return out


class SoftOverlongPenalty:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), as a TRL reward function.

    With ``L_max = max_completion_len`` and ``L_cache = cache_len``::

        R(y) = 0                                   if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
             = -1                                  if |y| > L_max

    so the penalty falls linearly from 0 to -1 over the last ``cache_len`` tokens. It is added to
    the task reward (give it weight 1 in the reward list). ``|y|`` is read from
    ``completion_ids`` (TRL passes the token ids of each completion), else from a
    ``completion_lengths`` column, else from completions given as token-id lists.

    A plain class (no closures), so it pickles, e.g. into dataloader workers.
    """

    def __init__(self, max_completion_len: int, cache_len: int) -> None:
        if (
            isinstance(max_completion_len, bool)
            or not isinstance(max_completion_len, int)
            or max_completion_len < 1
        ):
            raise ValueError(f"max_completion_len must be an integer >= 1, got {max_completion_len!r}")
        if (
            isinstance(cache_len, bool)
            or not isinstance(cache_len, int)
            or not 0 <= cache_len <= max_completion_len
        ):
            raise ValueError(
                f"cache_len must be an integer in [0, max_completion_len={max_completion_len}], got {cache_len!r}"
            )
        self.max_completion_len = max_completion_len
        self.cache_len = cache_len
        self.__name__ = "soft_overlong_penalty"

    def penalty(self, length: int) -> float:
        """The penalty for one completion of ``length`` tokens (Eq. 13)."""
        expected = self.max_completion_len - self.cache_len
        if length <= expected:
            return 0.0
        if length > self.max_completion_len:
            return -1.0
        return (expected - length) / self.cache_len

    def __call__(
        self,
        completions: list[Any] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        completion_lengths: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Penalties for a batch (see the class docstring for where lengths come from)."""
        if completion_ids is not None:
            lengths = [len(ids) for ids in completion_ids]
        elif completion_lengths is not None:
            lengths = [int(n) for n in completion_lengths]
        elif completions is not None and all(
            isinstance(c, (list, tuple)) and all(isinstance(t, int) for t in c) for c in completions
        ):
            lengths = [len(c) for c in completions]
        else:
            raise ValueError(
                "soft_overlong_penalty needs completion_ids, completion_lengths or token-id completions"
            )
        return [self.penalty(n) for n in lengths]

    def __repr__(self) -> str:
        return (
            f"SoftOverlongPenalty(max_completion_len={self.max_completion_len}, cache_len={self.cache_len})"
        )


def soft_overlong_penalty(max_completion_len: int, cache_len: int) -> SoftOverlongPenalty:
    """Factory for :class:`SoftOverlongPenalty` (DAPO Eq. 13)."""
    return SoftOverlongPenalty(max_completion_len, cache_len)
