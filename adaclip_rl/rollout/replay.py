"""Replay buffer of scored groups (prompt, G completions, behaviour data, rewards, advantages).

Semantics:

* **Insert**: a group whose rewards are all equal carries no GRPO signal (zero advantages) and is
  filtered out (``filter_equal_rewards``; DAPO dynamic sampling makes the same cut). Beyond
  ``capacity`` the oldest inserted groups are evicted (FIFO).
* **Age** of a group = current policy version - the oldest version among its tokens (its
  behaviour policy's "birth"). Groups older than ``max_age`` are expired before sampling.
* **Sampling**: ``k`` distinct groups, ``uniform`` or ``variance`` (probability proportional to
  the group's reward standard deviation, without replacement, Efraimidis-Spirakis keys), from a
  seeded ``random.Random`` whose state is part of :meth:`ReplayBuffer.state_dict`. Sampled groups
  stay in the buffer unless ``max_reuse`` is reached.
* **Checkpointing**: :meth:`state_dict` holds only python scalars, lists, tuples and dicts, so it
  round-trips through ``torch.save`` / ``torch.load(weights_only=True)``; a restored buffer
  produces exactly the samples the original would have produced.

Context: TRL's ``GRPOWithReplayBufferTrainer`` (removed in TRL 1.14, #7132) kept groups in a
heap scored by sum|A|*std but stored no behaviour log-probs, so replayed data got no importance
correction (huggingface/trl ``trl/experimental/grpo_with_replay_buffer``, before 1.14). Here every group keeps its
per-token behaviour log-probs and versions.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .behaviour import BehaviourSample
from .config import REPLAY_SELECTIONS

_STATE_VERSION = 1
logger = logging.getLogger(__name__)


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))


@dataclass
class ReplayGroup:
    """One prompt's group of completions with their behaviour data and scores.

    Attributes:
        samples: the G completions (each with prompt ids, tokens, behaviour log-probs, versions).
        rewards: one scalar reward per completion.
        advantages: one scalar advantage per completion (as computed when the group was scored).
        meta: data carried with the group (e.g. the dataset row used by reward functions).
        gid: buffer-assigned id (insertion order).
        uses: how many times the group has been replayed.
    """

    samples: list[BehaviourSample]
    rewards: list[float]
    advantages: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    gid: int = -1
    uses: int = 0

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a replay group needs at least one sample")
        if len(self.rewards) != len(self.samples):
            raise ValueError(f"{len(self.samples)} samples but {len(self.rewards)} rewards")
        if self.advantages and len(self.advantages) != len(self.samples):
            raise ValueError(f"{len(self.samples)} samples but {len(self.advantages)} advantages")

    @property
    def prompt_ids(self) -> list[int]:
        return self.samples[0].prompt_ids

    @property
    def reward_std(self) -> float:
        return _std(self.rewards)

    @property
    def birth_version(self) -> int:
        """Oldest policy version among the group's tokens (0 if no tokens)."""
        versions = [v for s in self.samples for v in s.versions]
        return min(versions) if versions else 0

    def age(self, current_version: int) -> int:
        """``current_version - birth_version``; a negative age (the version counter went back, e.g. a
        resume that lost it) raises ``ValueError`` rather than passing as fresh data."""
        age = current_version - self.birth_version
        if age < 0:
            raise ValueError(f"replay group {self.gid} was born at version {self.birth_version}, after the current "
                             f"version {current_version} (the version counter went back: a resume must restore it)")
        return age

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": [s.to_dict() for s in self.samples],
            "rewards": [float(r) for r in self.rewards],
            "advantages": [float(a) for a in self.advantages],
            "meta": dict(self.meta),
            "gid": self.gid,
            "uses": self.uses,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReplayGroup:
        d = dict(d)
        d["samples"] = [BehaviourSample.from_dict(s) for s in d["samples"]]
        return cls(**d)


class ReplayBuffer:
    """Bounded buffer of :class:`ReplayGroup` with age limit and seeded selection.

    Args:
        capacity: maximum number of groups (>= 1); the oldest inserted are evicted beyond it.
        max_age: maximum age in policy versions (None: no limit).
        selection: ``"uniform"`` or ``"variance"`` (prefer groups with larger reward variance).
        filter_equal_rewards: drop groups whose rewards are all equal (within ``equal_tol``) at insert.
        max_reuse: remove a group after it has been replayed this many times (None: unlimited).
        seed: seed of the selection RNG.
        equal_tol: tolerance on the reward standard deviation for "all equal".
    """

    def __init__(
        self,
        capacity: int,
        max_age: int | None = None,
        selection: str = "uniform",
        filter_equal_rewards: bool = True,
        max_reuse: int | None = None,
        seed: int = 0,
        equal_tol: float = 1e-8,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1; got {capacity!r}")
        if max_age is not None and (not isinstance(max_age, int) or max_age < 0):
            raise ValueError(f"max_age must be an integer >= 0 or None; got {max_age!r}")
        if selection not in REPLAY_SELECTIONS:
            raise ValueError(f"selection must be one of {list(REPLAY_SELECTIONS)}; got {selection!r}")
        if max_reuse is not None and (not isinstance(max_reuse, int) or max_reuse < 1):
            raise ValueError(f"max_reuse must be an integer >= 1 or None; got {max_reuse!r}")
        self.capacity = capacity
        self.max_age = max_age
        self.selection = selection
        self.filter_equal_rewards = filter_equal_rewards
        self.max_reuse = max_reuse
        self.equal_tol = equal_tol
        self._rng = random.Random(seed)
        self._groups: list[ReplayGroup] = []  # insertion order, oldest first
        self._next_gid = 0
        self._counters = {"added": 0, "filtered": 0, "evicted": 0, "expired": 0, "retired": 0, "sampled": 0}
        self._last_sampled = 0

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._groups)

    @property
    def groups(self) -> list[ReplayGroup]:
        """The stored groups, oldest first (read-only view: do not mutate)."""
        return list(self._groups)

    def add(self, group: ReplayGroup) -> bool:
        """Insert one group; returns False if it was filtered (all rewards equal)."""
        if self.filter_equal_rewards and group.reward_std <= self.equal_tol:
            self._counters["filtered"] += 1
            return False
        group.gid = self._next_gid
        self._next_gid += 1
        self._groups.append(group)
        self._counters["added"] += 1
        overflow = len(self._groups) - self.capacity
        if overflow > 0:
            del self._groups[:overflow]
            self._counters["evicted"] += overflow
        return True

    def extend(self, groups: Iterable[ReplayGroup]) -> int:
        """Insert several groups; returns how many were kept."""
        return sum(self.add(g) for g in groups)

    def expire(self, current_version: int) -> int:
        """Remove groups older than ``max_age`` versions; returns how many were removed."""
        if self.max_age is None:
            return 0
        keep = [g for g in self._groups if g.age(current_version) <= self.max_age]
        removed = len(self._groups) - len(keep)
        self._groups = keep
        self._counters["expired"] += removed
        return removed

    # ------------------------------------------------------------------ sampling
    def _select(self, k: int) -> list[int]:
        n = len(self._groups)
        if self.selection == "uniform":
            return self._rng.sample(range(n), k)
        # variance: weighted sampling without replacement (Efraimidis & Spirakis 2006): the k largest
        # keys u ** (1 / w) with u ~ U(0, 1); zero-variance groups (w = 0) come last, uniformly.
        keys = []
        for i, g in enumerate(self._groups):
            u = self._rng.random()
            w = g.reward_std
            key = (1, u ** (1.0 / w)) if w > 0 else (0, u)
            keys.append((key, i))
        keys.sort(reverse=True)
        return [i for _, i in keys[:k]]

    def sample(self, k: int, current_version: int) -> list[ReplayGroup]:
        """Draw up to ``k`` distinct groups (fewer if the buffer holds fewer after expiry)."""
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}")
        self.expire(current_version)
        k = min(k, len(self._groups))
        if k == 0:
            self._last_sampled = 0
            return []
        idx = self._select(k)
        sampled_groups = [self._groups[i] for i in idx]
        for g in sampled_groups:
            g.uses += 1
        if self.max_reuse is not None:
            before = len(self._groups)
            self._groups = [g for g in self._groups if g.uses < self.max_reuse]
            self._counters["retired"] += before - len(self._groups)
        self._counters["sampled"] += k
        self._last_sampled = k
        return sampled_groups

    # ------------------------------------------------------------------ metrics
    def metrics(self, current_version: int) -> dict[str, float]:
        """``replay/size``, ``replay/sampled`` (last draw), ``replay/evicted`` (capacity, cumulative),
        ``replay/expired`` (age, cumulative), ``replay/filtered`` (cumulative), ``replay/age_mean``."""
        ages = [g.age(current_version) for g in self._groups]
        return {
            "replay/size": float(len(self._groups)),
            "replay/sampled": float(self._last_sampled),
            "replay/evicted": float(self._counters["evicted"]),
            "replay/expired": float(self._counters["expired"]),
            "replay/filtered": float(self._counters["filtered"]),
            "replay/age_mean": float(sum(ages) / len(ages)) if ages else 0.0,
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact restore, as python builtins (``weights_only``-safe)."""
        return {
            "version": _STATE_VERSION,
            "config": self.config_dict(),
            "groups": [g.to_dict() for g in self._groups],
            "rng_state": self._rng.getstate(),
            "next_gid": self._next_gid,
            "counters": dict(self._counters),
            "last_sampled": self._last_sampled,
        }

    def config_dict(self) -> dict[str, Any]:
        """The buffer's settings (what :meth:`state_dict` stores under ``"config"``)."""
        return {
            "capacity": self.capacity,
            "max_age": self.max_age,
            "selection": self.selection,
            "filter_equal_rewards": self.filter_equal_rewards,
            "max_reuse": self.max_reuse,
            "equal_tol": self.equal_tol,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore contents, counters and RNG state.

        The settings stay those this buffer was constructed with (the run's current config): where
        the checkpoint was saved with other settings, a warning names each difference, groups
        beyond the new ``capacity`` are evicted (oldest first) and ``max_age`` / ``max_reuse``
        apply from the next draw.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported replay buffer state version {state.get('version')!r}")
        saved = dict(state["config"])
        changed = {k: (saved[k], v) for k, v in self.config_dict().items() if k in saved and saved[k] != v}
        if changed:
            logger.warning(
                "replay buffer restored with settings that differ from the checkpoint's (checkpoint -> now): %s",
                ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()),
            )
        self._groups = [ReplayGroup.from_dict(g) for g in state["groups"]]
        rng_state = state["rng_state"]
        # torch.load may hand back lists where tuples were saved; random.setstate wants tuples.
        self._rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self._next_gid = int(state["next_gid"])
        self._counters = dict(state["counters"])
        self._last_sampled = int(state["last_sampled"])
        overflow = len(self._groups) - self.capacity
        if overflow > 0:
            del self._groups[:overflow]
            self._counters["evicted"] += overflow
