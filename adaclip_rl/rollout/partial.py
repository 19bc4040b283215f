"""Partial rollouts: generation in rounds with a per-round token budget, continued across updates.

Each *round* extends every unfinished sequence by at most ``round_budget`` tokens. A sequence that
stops (EOS) or reaches its length cap is finished; otherwise it keeps its tokens, behaviour
log-probs and per-token versions and is continued in the next round - by whatever policy the
engine then holds - by resubmitting ``prompt + partial completion`` (the "abort and resubmit"
resume of AReaL, verl fully-async, ROLL and slime; the KV cache is recomputed with the new weights).
Continued sequences are scheduled *before* new prompts are admitted (slime serves its partial
buffer first). After ``max_segments`` segments an unfinished sequence is finished as truncated.

Work is organised in *groups* (one prompt, G completions): GRPO's advantage needs the whole group,
so a group is returned only when all its completions are finished; returned samples carry
their per-token behaviour data concatenated across segments.

Why it is faster (APRIL, arXiv 2509.18521; verl fully-async; AReaL): with long-tailed lengths a
synchronous step waits for its longest completion while the batch drains; with a round budget,
the long tail is spread over several steps and overlapped with new prompts, so every round does
about ``round_budget`` decode steps on a full batch. ``prefill_groups`` extra groups kept in flight
provide the overlap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .behaviour import BehaviourSample
from .config import RolloutConfig
from .engine import GenerationRequest, RolloutEngine, SamplingSettings

_SEED_MOD = 2**31 - 1


@dataclass
class RolloutGroup:
    """G samples of one prompt plus data carried along (``meta``, e.g. the dataset row)."""

    gid: int
    samples: list[BehaviourSample]
    meta: dict[str, Any] = field(default_factory=dict)
    submitted_version: int | None = None

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gid": self.gid,
            "samples": [s.to_dict() for s in self.samples],
            "meta": dict(self.meta),
            "submitted_version": self.submitted_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutGroup:
        d = dict(d)
        d["samples"] = [BehaviourSample.from_dict(s) for s in d["samples"]]
        return cls(**d)


class PartialRolloutManager:
    """Round-based generation with carry-over of unfinished sequences.

    Args:
        engine: a :class:`~adaclip_rl.rollout.engine.RolloutEngine` (e.g. the vLLM colocate wrapper).
        max_completion_length: default completion cap per sample.
        round_budget: max new tokens per sequence per round (``max_completion_length`` = no cut).
        max_segments: segments allowed per sequence before it is finished as truncated.
        sampling: sampling settings for every request.
        max_active_groups: at most this many groups generate at once (None: admit every waiting
            group each round). Continued groups always keep their slot.
        seed: base seed; request seeds are derived from (seed, sample uid, segment index), so
            sampling does not depend on how requests are batched.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        *,
        max_completion_length: int,
        round_budget: int,
        max_segments: int = 1,
        sampling: SamplingSettings | None = None,
        max_active_groups: int | None = None,
        seed: int = 0,
    ) -> None:
        if round_budget < 1 or round_budget > max_completion_length:
            raise ValueError(
                f"round_budget must be in [1, max_completion_length={max_completion_length}]; got {round_budget}"
            )
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1; got {max_segments}")
        if max_active_groups is not None and max_active_groups < 1:
            raise ValueError(f"max_active_groups must be >= 1 or None; got {max_active_groups}")
        self.engine = engine
        self.max_completion_length = max_completion_length
        self.round_budget = round_budget
        self.max_segments = max_segments
        self.sampling = sampling or SamplingSettings()
        self.max_active_groups = max_active_groups
        self.seed = seed
        self._waiting: deque[RolloutGroup] = deque()
        self._active: list[RolloutGroup] = []
        self._ready: deque[RolloutGroup] = deque()
        self._next_gid = 0
        self._next_uid = 0
        self._last: dict[str, float] = {}
        self._round_tokens = 0
        self._totals = {"rounds": 0, "tokens": 0, "truncated_by_segments": 0}

    @classmethod
    def from_config(
        cls,
        engine: RolloutEngine,
        config: RolloutConfig,
        sampling: SamplingSettings | None = None,
        max_active_groups: int | None = None,
    ) -> PartialRolloutManager:
        return cls(
            engine,
            max_completion_length=config.max_completion_length,
            round_budget=config.round_budget,
            max_segments=config.max_segments,
            sampling=sampling,
            max_active_groups=max_active_groups,
            seed=config.seed,
        )

    # ------------------------------------------------------------------ queues
    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_active(self) -> int:
        return len(self._active)

    @property
    def num_ready(self) -> int:
        return len(self._ready)

    @property
    def num_in_flight(self) -> int:
        """Groups submitted and not yet returned (waiting + active + ready)."""
        return len(self._waiting) + len(self._active) + len(self._ready)

    def submit(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        metas: Sequence[dict[str, Any]] | None = None,
        max_new_tokens: Sequence[Sequence[int] | None] | None = None,
    ) -> list[int]:
        """Queue one group of ``n`` completions per prompt; returns the group ids.

        Args:
            prompts: prompt token ids, one per group.
            n: completions per prompt (G).
            metas: optional per-group data returned with the group.
            max_new_tokens: optional per-group list of ``n`` per-sample completion caps (benchmarks
                force long-tailed lengths this way together with ``ignore_eos``).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        gids = []
        for j, prompt in enumerate(prompts):
            caps = max_new_tokens[j] if max_new_tokens is not None else None
            if caps is not None and len(caps) != n:
                raise ValueError(f"max_new_tokens[{j}] has {len(caps)} entries, expected n={n}")
            samples = []
            for i in range(n):
                cap = min(int(caps[i]), self.max_completion_length) if caps is not None else None
                samples.append(
                    BehaviourSample(prompt_ids=list(prompt), max_new_tokens=cap, uid=self._next_uid)
                )
                self._next_uid += 1
            group = RolloutGroup(gid=self._next_gid, samples=samples, meta=dict(metas[j]) if metas else {})
            self._next_gid += 1
            self._waiting.append(group)
            gids.append(group.gid)
        return gids

    # ------------------------------------------------------------------ generation
    def _cap(self, s: BehaviourSample) -> int:
        cap = s.max_new_tokens if s.max_new_tokens is not None else self.max_completion_length
        max_len = getattr(self.engine, "max_model_len", None)
        if max_len is not None:
            cap = min(cap, max_len - len(s.prompt_ids))
        return max(cap, 0)

    def _seed(self, s: BehaviourSample) -> int:
        return (self.seed * 1_000_003 + s.uid * 7919 + s.segments * 104_729 + 1) % _SEED_MOD

    def _finish(self, s: BehaviourSample, reason: str) -> None:
        s.finished = True
        s.finish_reason = reason
        s.truncated = reason != "stop"

    def run_round(self) -> int:
        """One round: continue unfinished sequences, then admit waiting groups, generate, update.

        Returns the number of groups that became ready this round.
        """
        # admit new groups only after every continued group has its slot
        while self._waiting and (
            self.max_active_groups is None or len(self._active) < self.max_active_groups
        ):
            group = self._waiting.popleft()
            group.submitted_version = self.engine.version
            self._active.append(group)
        todo: list[BehaviourSample] = []
        requests: list[GenerationRequest] = []
        for group in self._active:  # admission order: continued groups come first
            for s in group.samples:
                if s.finished:
                    continue
                budget = min(self.round_budget, self._cap(s) - s.num_tokens)
                if budget <= 0:
                    self._finish(s, "length")
                    continue
                todo.append(s)
                requests.append(
                    GenerationRequest(
                        prompt_token_ids=s.prompt_ids + s.completion_ids,
                        max_tokens=budget,
                        seed=self._seed(s),
                    )
                )
        generated = 0
        if requests:
            outputs = self.engine.generate_requests(requests, self.sampling)
            if len(outputs) != len(requests):
                raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(requests)} requests")
            for s, out in zip(todo, outputs, strict=True):
                s.extend(out.token_ids, out.logprobs, out.version)
                generated += len(out.token_ids)
                if out.finish_reason == "stop":
                    self._finish(s, "stop")
                elif s.num_tokens >= self._cap(s):
                    self._finish(s, "length")
                elif s.segments >= self.max_segments:
                    self._finish(s, "segments")
                    self._totals["truncated_by_segments"] += 1
        self._totals["rounds"] += 1
        self._totals["tokens"] += generated
        self._round_tokens = generated
        done = [g for g in self._active if g.finished]
        self._active = [g for g in self._active if not g.finished]
        self._ready.extend(done)
        return len(done)

    def collect(self, num_groups: int, max_rounds: int | None = None) -> list[RolloutGroup]:
        """Run rounds until ``num_groups`` groups are ready; return exactly that many (oldest first).

        Extra finished groups stay ready for the next call. Stops early (returning fewer groups)
        when nothing is left to generate or after ``max_rounds`` rounds.
        """
        t0 = time.perf_counter()
        rounds = tokens = 0
        while len(self._ready) < num_groups and (self._active or self._waiting):
            if max_rounds is not None and rounds >= max_rounds:
                break
            self.run_round()
            rounds += 1
            tokens += self._round_tokens
        out = [self._ready.popleft() for _ in range(min(num_groups, len(self._ready)))]
        self._last = self._collect_metrics(out, rounds, tokens, time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------ metrics
    def _collect_metrics(
        self, groups: list[RolloutGroup], rounds: int, tokens: int, seconds: float
    ) -> dict[str, float]:
        samples = [s for g in groups for s in g.samples]
        n = max(len(samples), 1)
        spans = [max(s.versions) - min(s.versions) for s in samples if s.versions]
        return {
            "partial/rounds": float(rounds),
            "partial/tokens_generated": float(tokens),
            "partial/generate_seconds": float(seconds),
            "partial/segments_mean": sum(s.segments for s in samples) / n,
            "partial/continued_frac": sum(s.segments > 1 for s in samples) / n,
            "partial/version_span_max": float(max(spans, default=0)),
            "partial/truncated_frac": sum(s.truncated for s in samples) / n,
            "partial/segment_capped_frac": sum(s.finish_reason == "segments" for s in samples) / n,
            "partial/active_groups": float(len(self._active)),
            "partial/waiting_groups": float(len(self._waiting)),
            "partial/ready_groups": float(len(self._ready)),
        }

    def metrics(self) -> dict[str, float]:
        """Metrics of the last :meth:`collect` call (``partial/...``)."""
        return dict(self._last)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """In-flight work (waiting, active with partial tokens, ready) as python builtins."""
        return {
            "waiting": [g.to_dict() for g in self._waiting],
            "active": [g.to_dict() for g in self._active],
            "ready": [g.to_dict() for g in self._ready],
            "next_gid": self._next_gid,
            "next_uid": self._next_uid,
            "totals": dict(self._totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._waiting = deque(RolloutGroup.from_dict(g) for g in state["waiting"])
        self._active = [RolloutGroup.from_dict(g) for g in state["active"]]
        self._ready = deque(RolloutGroup.from_dict(g) for g in state["ready"])
        self._next_gid = int(state["next_gid"])
        self._next_uid = int(state["next_uid"])
        self._totals = dict(state["totals"])
