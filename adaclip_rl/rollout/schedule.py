"""One rank's generation batch: how many groups are replayed, how many are generated, what is in flight.

:class:`ReplayShare` decides how many of a batch's ``n`` groups come from the replay buffer;
:class:`BatchScheduler` assembles each batch from the replay buffer and the
:class:`~adaclip_rl.rollout.partial.PartialRolloutManager` (pre-fill, top-up from the batch's rows,
deferral) and owns their checkpoint state. The off-policy trainer drives it with TRL's batch rows;
the property tests drive it with a fake engine, so both run the same code.

Contracts (checked over a grid in ``tests/rollout/test_schedule_grid.py``):

* every fresh group is within ``max_staleness`` of the version it is trained at (partial rollouts
  bound it at admission), and replayed groups expire at the bound the loss applies
  (:attr:`RolloutConfig.replay_expiry_age`);
* every batch generates at least one fresh group, and the number of replayed groups requested over
  a run is within one group of ``replay_ratio`` (capped at ``(n - 1) / n``) times the batch size;
  what the buffer could not serve is counted (``replay/shortfall``);
* every submitted group is returned or still in flight; every batch row is submitted, deferred,
  or counted as skipped (``partial/prompts_skipped``);
* the policy version is part of the state: it never goes back across a resume.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from .config import RolloutConfig
from .partial import PartialRolloutManager, RolloutGroup
from .replay import ReplayBuffer, ReplayGroup

logger = logging.getLogger(__name__)

_EPS = 1e-9


class ReplayShare:
    """Replayed groups per batch of ``groups``: ``replay_ratio * groups`` rounded by error diffusion.

    The fraction not replayed (or over-replayed) in one batch is carried to the next, so over ``T``
    batches the total requested is ``floor(T * target)``: within one group of ``T * target``, with
    ``target = min(replay_ratio * groups, groups - 1)`` - at least one fresh group per batch (a batch
    of replayed groups alone generates nothing and replays the same groups forever). Banker's
    rounding, used before, never replayed at 0.25 with two groups and replayed every slot at 0.75.
    """

    def __init__(self, ratio: float, groups: int) -> None:
        if groups < 1:
            raise ValueError(f"groups must be >= 1; got {groups}")
        if not 0 <= ratio < 1:
            raise ValueError(f"replay_ratio must be in [0, 1); got {ratio}")
        self.ratio = float(ratio)
        self.groups = int(groups)
        self.target = min(self.ratio * self.groups, self.groups - 1)
        self.carry = 0.0

    @property
    def effective_ratio(self) -> float:
        """The share of replayed groups over a run (``replay_ratio`` unless capped at ``(n - 1) / n``)."""
        return self.target / self.groups

    @property
    def max_per_batch(self) -> int:
        return math.ceil(self.target - _EPS)

    @property
    def min_fresh(self) -> int:
        """Fresh groups every batch generates at least."""
        return self.groups - self.max_per_batch

    def next(self) -> int:
        x = self.carry + self.target
        k = math.floor(x + _EPS)
        self.carry = x - k
        return k

    def state_dict(self) -> dict[str, float]:
        return {"carry": self.carry}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.carry = float(state["carry"])


def effective_prefill(config: RolloutConfig, fresh_groups: int) -> int:
    """Groups pre-filled beyond a batch: ``partial_prefill_groups`` (default: ``fresh_groups``, the
    fresh groups of one batch), at most ``max_staleness * fresh_groups`` - more could never be
    returned within the bound (they would wait ungenerated) - and 0 without partial rollouts."""
    if not config.partial_rollouts:
        return 0
    requested = config.partial_prefill_groups if config.partial_prefill_groups is not None else fresh_groups
    if config.max_staleness is None:
        return requested
    cap = config.max_staleness * fresh_groups
    if config.partial_prefill_groups is not None and requested > cap:
        logger.warning(
            "partial_prefill_groups=%d is more than max_staleness (%d) x the fresh groups of a batch (%d): "
            "pre-filling %d groups (the rest could not be returned within the staleness bound)",
            requested, config.max_staleness, fresh_groups, cap)
    return min(requested, cap)


def top_up_rows(deferred: list[dict], batch: list[dict], need: int, keep: int) -> tuple[list[dict], list[dict], int]:
    """Rows to submit now (deferred rows first, then this batch's), rows deferred to the next batch
    (at most ``keep``, the newest), and how many older rows are skipped beyond that bound.

    Without replay the pool always has room for a batch, so nothing is skipped; with replay a share
    ``replay_ratio`` of each batch's slots goes to replayed groups and the dataset delivers rows
    faster than they can be generated: the surplus beyond one batch is skipped (and counted).
    """
    candidates = deferred + batch
    take, rest = candidates[:need], candidates[need:]
    skipped = max(0, len(rest) - keep)
    return take, rest[skipped:], skipped


@functools.cache
def prefill_order(size: int, seed: int) -> tuple[int, ...]:
    """A seeded permutation of ``range(size)``, the same on every rank."""
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return tuple(order)


def prefill_indices(size: int, seed: int, world: int, rank: int, cursor: int, k: int) -> list[int]:
    """Dataset indices of a rank's next ``k`` pre-fill rows: positions ``(cursor + j) * world + rank``
    of the shared permutation, so ranks draw disjoint rows (until the dataset wraps around)."""
    order = prefill_order(size, seed)
    return [order[((cursor + j) * world + rank) % size] for j in range(k)]


class BatchScheduler:
    """Assembles one rank's generation batches (fresh + replayed groups) and owns their state.

    Args:
        manager: the partial-rollout manager (its ``batch_groups`` is set to the fewest fresh groups
            of a batch, the bound's per-version due limit).
        config: the rollout settings.
        groups: groups per generation batch on this rank.
        submit: submits dataset rows to ``manager`` (tokenises; one group per row).
        prefill_rows: ``prefill_rows(k, batch_rows)`` -> ``k`` rows for the first pre-fill.
        replay: the replay buffer (None without replay); its ``max_age`` should be
            :attr:`RolloutConfig.replay_expiry_age`.
    """

    def __init__(self, manager: PartialRolloutManager, config: RolloutConfig, *, groups: int,
                 submit: Callable[[list[dict]], None], prefill_rows: Callable[[int, list[dict]], list[dict]],
                 replay: ReplayBuffer | None = None) -> None:
        self.manager = manager
        self.config = config
        self.groups = groups
        self.submit = submit
        self.prefill_rows = prefill_rows
        self.replay = replay
        self.share = ReplayShare(config.replay_ratio if replay is not None else 0.0, groups)
        if replay is not None and abs(self.share.effective_ratio - config.replay_ratio) > _EPS:
            logger.warning(
                "replay_ratio=%g with %d groups per batch on this rank: every batch keeps at least one fresh group, "
                "so the replayed share is %g", config.replay_ratio, groups, self.share.effective_ratio)
        manager.batch_groups = self.share.min_fresh
        self.prefill = effective_prefill(config, self.share.min_fresh)
        self.prefilled = False
        self.deferred_rows: list[dict] = []
        self.prompts_skipped = 0
        self.replay_requested = 0
        self.replay_shortfall = 0

    def next_batch(self, batch_rows: list[dict]) -> tuple[list[RolloutGroup], list[ReplayGroup]]:
        """The batch's groups at the engine's current version: replayed ones, then the fresh ones
        finished by the pool (pre-filled once, then topped up from ``batch_rows``)."""
        version = self.manager.engine.version
        replayed: list[ReplayGroup] = []
        if self.replay is not None:
            k = self.share.next()
            replayed = self.replay.sample(k, version) if k else []
            self.replay_requested += k
            self.replay_shortfall += k - len(replayed)
        n_fresh = self.groups - len(replayed)
        pool = self.manager
        if not self.prefilled:
            self.submit(self.prefill_rows(self.prefill, batch_rows) if self.prefill else [])
            self.prefilled = True
        need = max(0, n_fresh + self.prefill - pool.num_in_flight)
        take, self.deferred_rows, skipped = top_up_rows(self.deferred_rows, batch_rows, need, keep=self.groups)
        self.prompts_skipped += skipped
        if take:
            self.submit(take)
        fresh = pool.collect(n_fresh)
        if len(fresh) < n_fresh:  # cannot happen with the accounting above; fail loudly rather than mis-shape
            raise RuntimeError(f"partial rollouts returned {len(fresh)} groups, {n_fresh} needed")
        return fresh, replayed

    def store(self, fresh: list[RolloutGroup], rewards: list[list[float]], advantages: list[list[float]]) -> None:
        """Fresh groups go to the replay buffer with their (weighted) rewards and advantages."""
        if self.replay is None:
            return
        for grp, r, a in zip(fresh, rewards, advantages, strict=True):
            self.replay.add(ReplayGroup(grp.samples, list(r), list(a), meta=grp.meta))

    def metrics(self) -> dict[str, float]:
        out = dict(self.manager.metrics())
        out["partial/prompts_deferred"] = float(len(self.deferred_rows))
        out["partial/prompts_skipped"] = float(self.prompts_skipped)
        if self.replay is not None:
            out.update(self.replay.metrics(self.manager.engine.version))
            out["replay/shortfall"] = float(self.replay_shortfall)
            out["replay/effective_ratio"] = self.share.effective_ratio
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Replay buffer (with RNG), in-flight partial rollouts with the policy version, deferred rows,
        replay share: python builtins only."""
        return {
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "partial": self.manager.state_dict(),
            "policy_version": self.manager.engine.version,
            "prefilled": self.prefilled,
            "deferred_rows": [dict(r) for r in self.deferred_rows],
            "prompts_skipped": self.prompts_skipped,
            "replay_share": {**self.share.state_dict(), "requested": self.replay_requested,
                             "shortfall": self.replay_shortfall},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`state_dict` saved. The engine's version is set to the saved one
        (checkpoints of older releases: the newest version among the restored tokens), so versions and
        staleness continue where they stopped; the next weight push makes it one newer."""
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])
        if state.get("partial") is not None:
            self.manager.load_state_dict(state["partial"])
        engine = self.manager.engine
        if state.get("policy_version") is not None:
            engine.version = int(state["policy_version"])
        elif self.replay is not None:
            engine.version = max([engine.version, *(v for g in self.replay.groups for s in g.samples
                                                    for v in s.versions)])
        self.prefilled = bool(state["prefilled"])
        self.deferred_rows = [dict(r) for r in state["deferred_rows"]]
        self.prompts_skipped = int(state["prompts_skipped"])
        share = state.get("replay_share")
        if share is not None:
            self.share.load_state_dict(share)
            self.replay_requested = int(share.get("requested", 0))
            self.replay_shortfall = int(share.get("shortfall", 0))
