"""Partial rollouts: generation interrupted only at weight updates, continued by the newer policy.

All in-flight sequences generate together in one continuous batch (``engine.generate_until``).
As soon as enough *groups* (one prompt, G completions: GRPO's advantage needs the whole group)
are finished for the next training batch, the sequences still running are interrupted: they keep
their tokens, behaviour log-probs and per-token versions, and are continued in the next
generation batch - after the weight update - by resubmitting ``prompt + partial completion``
(the "abort and resubmit" resume of AReaL, verl fully-async, ROLL and slime; the prefix is
re-processed once per weight update, which the new weights require anyway). Within one
generation batch nothing is cut: a *segment* is the part of a completion generated under one
policy version, so ``max_segments`` bounds how many versions a completion may span. A sequence in
its last allowed segment is not interruptible: it runs to its end in the current batch.

Staleness bound (``max_staleness = M``): a group admitted at version ``s`` gets a *due version*
``d`` in ``[s, s + M]`` and is returned by the :meth:`~PartialRolloutManager.collect` at version
``d`` at the latest (the latest version with room, so it stays interruptible as long as the bound
allows): at ``d`` its sequences are not interruptible (they finish in that batch) and due groups are
returned before any other. Admission is limited so that no version has more due groups than one
batch returns (``batch_groups``; the current version also takes what the batch being collected
needs beyond the later versions' room): a group that would not fit waits, ungenerated. So every
returned group is within the bound
when it is trained on, whatever the pre-fill, the replay share or the length distribution; no
completion is truncated and no group is dropped for staleness later, so the trained lengths have
the distribution of the generated ones (dropping stale samples at consumption removes long answers
first; AReaL bounds staleness at admission for the same reason). ``M = 0`` leaves nothing
interruptible: generation is then synchronous.

Continued groups are served before new prompts are admitted (slime serves its partial buffer
first).

Why it is faster (APRIL, arXiv 2509.18521; verl fully-async; AReaL): with long-tailed lengths a
synchronous step waits for its longest completion while the batch drains; here a step ends as soon
as its groups are done, and the long tail keeps generating next step beside new prompts. Nothing
runs concurrently with training: generation and training still alternate in one process.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .behaviour import BehaviourSample
from .config import RolloutConfig
from .engine import GenerationOutput, GenerationRequest, RolloutEngine, SamplingSettings

_SEED_MOD = 2**31 - 1


def request_seed(seed: int, rank: int, uid: int, segment: int) -> int:
    """A per-request sampling seed in ``[0, 2**31 - 1)`` from (base seed, rank, sample uid, segment).

    A keyed hash rather than a linear formula, so that different ranks (and samples) draw
    independent streams; deterministic across processes and runs.
    """
    digest = hashlib.blake2b(f"{seed}/{rank}/{uid}/{segment}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_MOD


@dataclass
class RolloutGroup:
    """G samples of one prompt plus data carried along (``meta``, e.g. the dataset row)."""

    gid: int
    samples: list[BehaviourSample]
    meta: dict[str, Any] = field(default_factory=dict)
    submitted_version: int | None = None
    due_version: int | None = None  # returned by the collect at this version at the latest (max_staleness)

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gid": self.gid,
            "samples": [s.to_dict() for s in self.samples],
            "meta": dict(self.meta),
            "submitted_version": self.submitted_version,
            "due_version": self.due_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutGroup:
        d = dict(d)
        d["samples"] = [BehaviourSample.from_dict(s) for s in d["samples"]]
        return cls(**d)


class PartialRolloutManager:
    """Generation interrupted at weight updates, with carry-over of unfinished sequences.

    Args:
        engine: a :class:`~adaclip_rl.rollout.engine.RolloutEngine` (e.g. the vLLM colocate wrapper).
        max_completion_length: default completion cap per sample.
        max_segments: policy versions a completion may span (1: never interrupted, i.e. synchronous
            generation); a sample in its last segment runs to its end.
        sampling: sampling settings for every request.
        max_active_groups: at most this many groups generate at once (None: admit every waiting
            group). Continued groups always keep their slot.
        max_staleness: every group is returned within this many versions of its admission (None: no
            bound); see the module docstring.
        batch_groups: groups every :meth:`collect` returns at least (the fresh groups of the smallest
            generation batch); with ``max_staleness`` at most this many groups fall due per version.
            None: the first :meth:`collect`'s ``num_groups``.
        seed: base seed; request seeds hash (seed, rank, sample uid, segment index), so sampling
            does not depend on how requests are batched.
        rank: data-parallel rank (distinct seed streams per rank).
    """

    def __init__(
        self,
        engine: RolloutEngine,
        *,
        max_completion_length: int,
        max_segments: int = 1,
        sampling: SamplingSettings | None = None,
        max_active_groups: int | None = None,
        max_staleness: int | None = None,
        seed: int = 0,
        rank: int = 0,
        batch_groups: int | None = None,
    ) -> None:
        if max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1; got {max_completion_length}")
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1; got {max_segments}")
        if max_active_groups is not None and max_active_groups < 1:
            raise ValueError(f"max_active_groups must be >= 1 or None; got {max_active_groups}")
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 or None; got {max_staleness}")
        if rank < 0:
            raise ValueError(f"rank must be >= 0; got {rank}")
        if batch_groups is not None and batch_groups < 1:
            raise ValueError(f"batch_groups must be >= 1 or None; got {batch_groups}")
        self.engine = engine
        self.max_completion_length = max_completion_length
        self.max_segments = max_segments
        self.sampling = sampling or SamplingSettings()
        self.max_active_groups = max_active_groups
        self.max_staleness = max_staleness
        self.seed = seed
        self.rank = rank
        self.batch_groups = batch_groups
        self._waiting: deque[RolloutGroup] = deque()
        self._active: list[RolloutGroup] = []
        self._ready: deque[RolloutGroup] = deque()
        self._next_gid = 0
        self._next_uid = 0
        self._last: dict[str, float] = {}
        self._totals = {"calls": 0, "tokens": 0, "interrupted": 0}

    @classmethod
    def from_config(
        cls,
        engine: RolloutEngine,
        config: RolloutConfig,
        sampling: SamplingSettings | None = None,
        max_active_groups: int | None = None,
        rank: int = 0,
        batch_groups: int | None = None,
    ) -> PartialRolloutManager:
        return cls(
            engine,
            max_completion_length=config.max_completion_length,
            max_segments=config.max_segments,
            sampling=sampling,
            max_active_groups=max_active_groups,
            max_staleness=config.max_staleness,
            seed=config.seed,
            rank=rank,
            batch_groups=batch_groups,
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

    def request_seed(self, s: BehaviourSample) -> int:
        """Seed of a sample's next segment: a hash of (seed, rank, sample uid, segment), so that
        sampling does not depend on batching and two ranks never share a seed stream."""
        return request_seed(self.seed, self.rank, s.uid, s.segments)

    def _finish(self, s: BehaviourSample, reason: str) -> None:
        s.finished = True
        s.finish_reason = reason
        s.truncated = reason != "stop"

    def _interruptible(self, group: RolloutGroup, s: BehaviourSample) -> bool:
        """May this sample be cut at the end of the current batch and continued after the update?

        Not in its last allowed segment (``max_segments``), and not once its group is due
        (``max_staleness``: it must be returned by this batch).
        """
        if s.segments + 1 >= self.max_segments:
            return False
        return not self._is_due(group)

    @property
    def bounded(self) -> bool:
        return self.max_staleness is not None

    def _is_due(self, group: RolloutGroup) -> bool:
        return group.due_version is not None and group.due_version <= self.engine.version

    def _due_slot(self, num_groups: int) -> int | None:
        """The latest version in ``[v, v + max_staleness]`` with room for one more due group; None if all
        are full. Room: ``batch_groups`` per version, and at the current version ``v`` whatever more the
        ``num_groups`` of this collect need beyond the later versions' room (``max_staleness = 0``: all
        of them). The latest, so that a new group stays interruptible as long as the bound allows (the
        earliest would make a whole batch due at once: synchronous generation)."""
        v = self.engine.version
        counts: dict[int, int] = {}
        for g in [*self._active, *self._ready]:
            if g.due_version is not None:
                counts[g.due_version] = counts.get(g.due_version, 0) + 1
        for u in range(v + self.max_staleness, v - 1, -1):
            room = self.batch_groups
            if u == v:
                room = max(room, num_groups - self.max_staleness * self.batch_groups)
            if counts.get(u, 0) < room:
                return u
        return None

    def _admit(self, num_groups: int) -> None:
        """Move waiting groups into the active set (continued groups keep their slots); with
        ``max_staleness``, only while a due version within the bound has room (see the module docstring)."""
        while self._waiting and (self.max_active_groups is None or len(self._active) < self.max_active_groups):
            due = self._due_slot(num_groups) if self.bounded else None
            if self.bounded and due is None:
                break
            group = self._waiting.popleft()
            group.submitted_version = self.engine.version
            group.due_version = due
            self._active.append(group)

    def _generate(self, num_groups: int) -> int:
        """One continuous batch over every unfinished sample of the active groups.

        Stops (interrupting what may be interrupted) once ``num_groups`` groups are ready. When that
        many are ready already (a call that only finishes due groups), only the due groups generate.
        Returns the number of tokens generated.
        """
        todo: list[tuple[RolloutGroup, BehaviourSample]] = []
        requests: list[GenerationRequest] = []
        only_due = len(self._ready) >= num_groups
        for group in self._active:  # admission order: continued groups come first
            if only_due and not self._is_due(group):
                continue
            for s in group.samples:
                if s.finished:
                    continue
                remaining = self._cap(s) - s.num_tokens
                if remaining <= 0:
                    self._finish(s, "length")
                    continue
                todo.append((group, s))
                requests.append(
                    GenerationRequest(
                        prompt_token_ids=s.prompt_ids + s.completion_ids,
                        max_tokens=remaining,
                        seed=self.request_seed(s),
                        interruptible=self._interruptible(group, s),
                    )
                )
        self._promote_finished()
        if not requests:
            return 0

        def on_finish(i: int, output: GenerationOutput) -> bool:
            group, s = todo[i]
            s.extend(output.token_ids, output.logprobs, output.version)
            self._finish(s, "stop" if output.finish_reason == "stop" else "length")
            if group.finished:
                self._active.remove(group)
                self._ready.append(group)
            return len(self._ready) >= num_groups

        outputs = self.engine.generate_until(requests, self.sampling, on_finish)
        if len(outputs) != len(requests):
            raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(requests)} requests")
        for (_, s), output in zip(todo, outputs, strict=True):
            if output.finish_reason == "interrupted":
                s.extend(output.token_ids, output.logprobs, output.version)
                self._totals["interrupted"] += 1
        self._totals["calls"] += 1
        tokens = sum(len(output.token_ids) for output in outputs)
        self._totals["tokens"] += tokens
        return tokens

    def _promote_finished(self) -> None:
        done = [g for g in self._active if g.finished]
        if done:
            self._active = [g for g in self._active if not g.finished]
            self._ready.extend(done)

    def collect(self, num_groups: int) -> list[RolloutGroup]:
        """Generate until ``num_groups`` groups are ready; return exactly that many.

        Due groups (``max_staleness``) come first, then the groups admitted earliest. Groups finished
        beyond ``num_groups`` (by samples that could not be interrupted) stay ready for the next call.
        Returns fewer groups only when nothing is left to generate.
        """
        if self.bounded:
            if self.batch_groups is None:
                self.batch_groups = max(num_groups, 1)
            if num_groups < self.batch_groups:
                raise ValueError(f"collect({num_groups}): with max_staleness every batch returns at least "
                                 f"batch_groups={self.batch_groups} groups (the due groups of a version)")
        t0 = time.perf_counter()
        calls = tokens = 0
        self._admit(num_groups)  # at this version, even when no generation is needed: it has a due slot now
        while len(self._ready) < num_groups or any(self._is_due(g) for g in self._active):
            self._admit(num_groups)
            if not self._active:
                break
            tokens += self._generate(num_groups)
            calls += 1
        self._ready = deque(sorted(self._ready, key=self._return_order))
        groups = [self._ready.popleft() for _ in range(min(num_groups, len(self._ready)))]
        late = [g.gid for g in [*self._ready, *self._active] if self._is_due(g)]
        if late:  # cannot happen with the admission limit; never hand out data beyond the bound silently
            raise RuntimeError(f"groups {late} are due at version {self.engine.version} but were not returned")
        self._last = self._collect_metrics(groups, calls, tokens, time.perf_counter() - t0)
        return groups

    @staticmethod
    def _return_order(g: RolloutGroup) -> tuple[int, int, int]:
        submitted = g.submitted_version or 0
        return (g.due_version if g.due_version is not None else submitted, submitted, g.gid)

    # ------------------------------------------------------------------ metrics
    def _collect_metrics(
        self, groups: list[RolloutGroup], calls: int, tokens: int, seconds: float
    ) -> dict[str, float]:
        samples = [s for g in groups for s in g.samples]
        n = max(len(samples), 1)
        spans = [max(s.versions) - min(s.versions) for s in samples if s.versions]
        return {
            "partial/engine_calls": float(calls),
            "partial/tokens_generated": float(tokens),
            "partial/generate_seconds": float(seconds),
            "partial/segments_mean": sum(s.segments for s in samples) / n,
            "partial/continued_frac": sum(s.segments > 1 for s in samples) / n,
            "partial/version_span_max": float(max(spans, default=0)),
            "partial/truncated_frac": sum(s.truncated for s in samples) / n,
            "partial/staleness_max": float(max((self.engine.version - v for s in samples for v in s.versions[:1]),
                                               default=0)),
            "partial/active_groups": float(len(self._active)),
            "partial/waiting_groups": float(len(self._waiting)),
            "partial/ready_groups": float(len(self._ready)),
        }

    def metrics(self) -> dict[str, float]:
        """Metrics of the last :meth:`collect` call (``partial/...``)."""
        return dict(self._last)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """In-flight work (waiting, active with partial tokens, ready) and the engine's policy version, as
        python builtins."""
        return {
            "engine_version": self.engine.version,
            "batch_groups": self.batch_groups,
            "waiting": [g.to_dict() for g in self._waiting],
            "active": [g.to_dict() for g in self._active],
            "ready": [g.to_dict() for g in self._ready],
            "next_gid": self._next_gid,
            "next_uid": self._next_uid,
            "totals": dict(self._totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the in-flight work and the engine's policy version (a resumed engine starts at its
        initial version; restored tokens were generated up to the saved one). A checkpoint without the
        version (older releases) sets it to the newest version among the restored tokens."""
        if state.get("batch_groups") is not None and self.batch_groups is None:
            self.batch_groups = int(state["batch_groups"])
        self._waiting = deque(RolloutGroup.from_dict(g) for g in state["waiting"])
        self._active = [RolloutGroup.from_dict(g) for g in state["active"]]
        self._ready = deque(RolloutGroup.from_dict(g) for g in state["ready"])
        self._next_gid = int(state["next_gid"])
        self._next_uid = int(state["next_uid"])
        self._totals = dict(state["totals"])
        if state.get("engine_version") is not None:
            self.engine.version = int(state["engine_version"])
        else:
            newest = [v for g in [*self._active, *self._ready] for s in g.samples for v in s.versions]
            self.engine.version = max([self.engine.version, *newest])
        if self.bounded:  # groups saved without a due version (older releases): due at the bound
            for g in [*self._active, *self._ready]:
                if g.due_version is None and g.submitted_version is not None:
                    g.due_version = g.submitted_version + self.max_staleness
