"""Engine-agnostic generation interface used by the partial-rollout manager.

A rollout engine turns token-id prompts into completions with per-token behaviour log-probs and
knows its current policy ``version``. :class:`adaclip_rl.rollout.vllm_engine.VLLMColocateEngine`
implements it with an in-process ``vllm.LLM``; tests use a small deterministic fake.

:meth:`RolloutEngine.generate_until` runs all requests continuously, reports each one as it
finishes, and - once the caller says it has enough - interrupts the *interruptible* requests that
are still running (their tokens so far come back with ``finish_reason="interrupted"``) while the
others run to their end. Partial rollouts cut generation this way only where the weights are about
to change (the end of a generation batch), never at a fixed token budget; a caller that never says
"enough" gets every request run to its end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling parameters shared by all requests of a rollout.

    The behaviour log-probs must be those of the distribution tokens are drawn from, i.e. after
    temperature and top-p/top-k (vLLM ``logprobs_mode="processed_logprobs"``); vLLM's default raw
    log-probs are taken before them and would bias every importance ratio.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False  # benchmarks: force lengths through max_tokens
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to extend: ``prompt_token_ids`` (prompt + any partial completion) and a budget."""

    prompt_token_ids: list[int]
    max_tokens: int
    seed: int | None = None
    interruptible: bool = True  # generate_until may cut it short once the caller has enough


@dataclass
class GenerationOutput:
    """New tokens for one request, their behaviour log-probs, why generation stopped, and the
    engine version that produced them. ``finish_reason`` is ``"stop"`` (EOS / stop token),
    ``"length"`` (``max_tokens`` reached) or ``"interrupted"`` (cut short by
    :meth:`RolloutEngine.generate_until`; the tokens so far, possibly none)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int


@runtime_checkable
class RolloutEngine(Protocol):
    """What the partial-rollout manager needs from a generation backend."""

    version: int
    max_model_len: int | None

    def generate_until(
        self,
        requests: Sequence[GenerationRequest],
        sampling: SamplingSettings,
        on_finish: Callable[[int, GenerationOutput], bool],
    ) -> list[GenerationOutput]:
        """Generate all requests at once; call ``on_finish(index, output)`` as each one ends.

        When ``on_finish`` returns True, the interruptible requests still running are stopped and
        returned with ``finish_reason="interrupted"``; non-interruptible ones run to their end
        (``on_finish`` is still called for them). Returns every output in request order.
        """
        ...


FinishCallback = Callable[[int, GenerationOutput], bool]
