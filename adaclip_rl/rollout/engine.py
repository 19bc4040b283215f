"""Engine-agnostic generation interface used by the partial-rollout manager.

A rollout engine turns token-id prompts into completions with per-token behaviour log-probs and
knows its current policy ``version``. :class:`adaclip_rl.rollout.vllm_engine.VLLMColocateEngine`
implements it with an in-process ``vllm.LLM``; tests use a small deterministic fake.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass
class GenerationOutput:
    """New tokens for one request, their behaviour log-probs, why generation stopped, and the
    engine version that produced them. ``finish_reason`` is ``"stop"`` (EOS / stop token) or
    ``"length"`` (``max_tokens`` reached)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int


@runtime_checkable
class RolloutEngine(Protocol):
    """What the partial-rollout manager needs from a generation backend."""

    version: int
    max_model_len: int | None

    def generate_requests(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSettings
    ) -> list[GenerationOutput]:
        """Generate for every request (one completion each), in request order."""
        ...
