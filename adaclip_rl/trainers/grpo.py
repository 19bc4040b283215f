"""``AdaClipGRPOTrainer``: TRL's ``GRPOTrainer`` with the policy term from :mod:`adaclip_rl.losses`.

TRL's private hooks are reached through the seam (:class:`~adaclip_rl._trl_compat.grpo.GRPOTrainerSeam`,
which names them; this module names none). What this class changes:

* :meth:`compute_policy_loss` (TRL's ``_compute_loss``) - the same steps in the same order as TRL 1.16 (log-probs and entropies from
  TRL's helper, entropy mask, off-policy sequence mask, token/sequence importance weights,
  ``beta`` KL with bias correction, vLLM importance-sampling ratio, every clip ``loss_type``'s
  aggregation and gradient-accumulation scaling, entropy bonus with TRL's adaptive controller,
  MoE aux loss, TRL's metrics), with the per-token policy term taken from the registry
  (``grpo`` / ``bapo`` / ``archer``) and our metrics added. A parity test keeps
  ``policy_loss="grpo"`` equal to the stock trainer. Loss types outside the clip family
  (``cispo``, ``sapo``, ``vespo``) go to TRL unchanged.
* :meth:`generate_and_score_completions` (TRL's ``_generate_and_score_completions``) - reference
  log-probs for a loss with its own KL (Archer) without TRL's KL term, and old-policy entropies
  for Archer's token classes.
* gradient clipping and its checkpoint state (:class:`~adaclip_rl.trainers.grad_clip_mixin.AdaptiveGradClipMixin`:
  the adaptive clippers of :mod:`adaclip_rl.gradclip`, ``adaclip_state.json`` next to TRL's files) and
  the optimizer (:class:`~adaclip_rl.trainers.optimizer_mixin.SpikeAwareOptimizerMixin`).

What the policy loss needs (reference log-probs, old-policy entropies, per-token loss weights, a
search per optimizer update, the log-ratio clamp) is read from its registry entry
(:class:`~adaclip_rl.losses.PolicyLossSpec`), never from its name; the search and the clamp are
:mod:`adaclip_rl.trainers.policy_term`'s, shared with the asynchronous trainer. BAPO's statistics vector is
all-reduced (SUM) once per search, so every rank picks the same bounds.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch

from .._trl_compat.grpo import GRPOTrainerSeam
from ..losses import aggregate_loss, aggregation_weights, kl_estimate, sequence_live_fraction
from ..losses.premise import premise_metrics
from .config import CLIP_LOSS_TYPES, AdaClipGRPOConfig
from .grad_clip_mixin import AdaptiveGradClipMixin
from .optimizer_mixin import SpikeAwareOptimizerMixin
from .policy_term import UpdateSearch, policy_log_ratio

logger = logging.getLogger(__name__)


class _LossInputs(NamedTuple):
    """What TRL's ``_compute_loss`` has computed when it reaches the policy term."""

    mask: torch.Tensor
    per_token_logps: torch.Tensor
    entropies: torch.Tensor | None
    aux_loss: torch.Tensor | None
    entropy_mask: torch.Tensor | None
    advantages: torch.Tensor
    off_policy_mask: torch.Tensor | None
    ratio: torch.Tensor
    ref_logps: torch.Tensor | None
    live: torch.Tensor | None = None  # where the ratio carries a gradient (None: no clamp); (B, 1) share per sequence

_MM_KEYS = (
    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
    "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
)


class AdaClipGRPOTrainer(SpikeAwareOptimizerMixin, AdaptiveGradClipMixin, GRPOTrainerSeam):
    """GRPO with adaptive clipping. Same constructor as :class:`trl.GRPOTrainer`; ``args`` must be an
    :class:`AdaClipGRPOConfig` (a plain ``GRPOConfig`` is upgraded with ``policy_loss="grpo"``)."""

    log_premise = False  # True: log BAPO's premise measures (adaclip_rl.losses.premise) per loss call

    def __init__(self, model, reward_funcs=None, args: AdaClipGRPOConfig | None = None, *a: Any, **kw: Any):
        if args is None:
            args = AdaClipGRPOConfig(output_dir="adaclip-grpo")
        elif not isinstance(args, AdaClipGRPOConfig):
            raise TypeError(f"args must be an AdaClipGRPOConfig; got {type(args).__name__}")
        self.loss_spec = args.policy_loss_spec
        self.loss_config = args.policy_loss_config()
        self.policy_loss_fn = self.loss_spec.fn
        self.grad_clipper_spec = args.grad_clipper_spec
        # A KL to the initial model (Archer's) needs reference log-probs; TRL loads the reference model
        # and computes them only when beta != 0. Switch that on without adding TRL's own KL term (kept
        # in self.kl_beta).
        self.kl_beta = args.beta
        needs_ref = self.loss_spec.needs_ref_logps(self.loss_config) and args.beta == 0.0
        if needs_ref:
            args.beta = 1.0
        self._loss_needs_ref = needs_ref
        try:
            super().__init__(model, reward_funcs, args, *a, **kw)
        finally:
            args.beta = self.kl_beta
        # TRL keeps args.beta in self.beta; any TRL path reading it must see no KL of its own
        self.beta = self.kl_beta
        self.update_search = UpdateSearch(self._reduce_sum)  # once per update
        self.grad_clipper = args.build_grad_clipper()

    # ------------------------------------------------------------------ loss
    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t

    def generate_and_score_completions(self, inputs):
        if self._loss_needs_ref:  # TRL computes ref_per_token_logps only when self.beta != 0
            self.beta = 1.0
            try:
                batch = super().generate_and_score_completions(inputs)
            finally:
                self.beta = self.kl_beta
        else:
            batch = super().generate_and_score_completions(inputs)
        if self.loss_spec.needs_old_entropies(self.loss_config):
            # Archer's Algorithm 1: classify tokens by the entropies of the policy that generated them
            input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
            with torch.no_grad():
                _, entropies, _ = self.per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, batch["completion_ids"].size(1),
                    batch_size=self.args.per_device_train_batch_size, compute_entropy=True,
                    **{k: batch.get(k) for k in _MM_KEYS if k in batch},
                )
            batch["old_per_token_entropies"] = entropies
        return batch

    def _loss_inputs(self, model, inputs, mode: str, compute_entropy: bool = True, aux: bool = True) -> _LossInputs:
        """Everything TRL 1.16's ``_compute_loss`` computes before the policy term, in its order:
        log-probs and entropies, entropy mask, advantages, old log-probs, off-policy sequence mask,
        token or sequence importance ratio. Padding never reaches ``exp`` (old/ref log-probs are
        replaced by the current ones there), and for a loss that asks for it (BAPO, Archer:
        ``clamps_log_ratio``) the log-ratio is clamped to [-20, 20] as in verl (so ``inf * 0``
        cannot turn into NaN)."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, entropies, aux_loss = self.per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=compute_entropy,
            compute_aux_loss=self.aux_loss_enabled and aux, **{k: inputs.get(k) for k in _MM_KEYS},
        )
        entropy_mask = (
            self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
            if self.top_entropy_quantile < 1.0 else None
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        valid = mask.bool()
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()
        else:
            old_per_token_logps = torch.where(valid, old_per_token_logps, per_token_logps.detach())
        off_policy_mask = None
        if self.off_policy_mask_threshold is not None:
            off_policy_mask = self.get_off_policy_mask(
                advantages=advantages, per_token_logps=per_token_logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_per_token_logps),
                mask=mask, off_policy_threshold=self.off_policy_mask_threshold,
            )
        log_ratio, live = policy_log_ratio(self.loss_spec, per_token_logps, old_per_token_logps)
        if self.importance_sampling_level == "token":
            log_weights = log_ratio
        elif self.importance_sampling_level == "sequence":
            log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
            if live is not None:
                live = sequence_live_fraction(live, mask)
        else:
            raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got "
                             f"{self.importance_sampling_level!r}")
        ref_logps = inputs.get("ref_per_token_logps")
        if ref_logps is not None:
            ref_logps = torch.where(valid, ref_logps, per_token_logps.detach())
        return _LossInputs(mask, per_token_logps, entropies, aux_loss, entropy_mask, advantages, off_policy_mask,
                           torch.exp(log_weights), ref_logps, live)

    def _loss_weights(self, li: _LossInputs, inputs, mode: str) -> torch.Tensor:
        """Per-token weight the aggregated loss applies to each token's policy loss: the
        ``loss_type``'s aggregation weight (incl. gradient-accumulation scaling) x off-policy mask
        x entropy mask x vLLM importance-sampling ratio. BAPO's statistic uses it (:meth:`_statistic_weights`)."""
        if self.loss_type == "dapo":
            w = aggregation_weights(li.mask, "dapo", num_tokens=self._dapo_num_tokens(inputs, mode))
        else:
            accumulation_steps = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            w = aggregation_weights(li.mask, self.loss_type,
                                    max_completion_length=self.max_completion_length) / accumulation_steps
        return self._apply_token_factors(w, li, inputs)

    def _statistic_weights(self, li: _LossInputs, inputs, mode: str) -> torch.Tensor:
        """The loss's ``weights`` (its spec's ``statistic_weights``): for BAPO's gradient share the loss
        weights on the tokens whose ratio carries a gradient (``li.live``)."""
        return self.loss_spec.statistic_weights(self.loss_config, self._loss_weights(li, inputs, mode), li.mask, li.live)

    def _apply_token_factors(self, x: torch.Tensor, li: _LossInputs, inputs) -> torch.Tensor:
        """``x`` times the per-token factors TRL applies after the policy term: off-policy mask,
        entropy mask and vLLM importance-sampling ratio (in TRL's order, so values match bit for bit)."""
        if li.off_policy_mask is not None:
            x = x * li.off_policy_mask
        if li.entropy_mask is not None:
            x = x * li.entropy_mask
        if self.use_vllm and self.vllm_importance_sampling_correction:
            x = x * inputs["importance_sampling_ratio"]
        return x

    def _dapo_num_tokens(self, inputs, mode: str) -> torch.Tensor:
        num_tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            num_tokens = num_tokens * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return num_tokens

    def _search_window(self, mode: str) -> tuple[int, int, tuple[int, int]] | None:
        """``(position, accumulation steps, window)`` of this micro-batch in its optimizer update when
        the loss searches once per update over several micro-batches (BAPO, ``bapo_scope="update"``),
        else None (one micro-batch per update, or eval: the per-call search is the per-update one)."""
        accumulation_steps = self.current_gradient_accumulation_steps
        if mode != "train" or not self.loss_spec.searches_per_update(self.loss_config) or accumulation_steps <= 1:
            return None
        pos = self.micro_step % accumulation_steps
        return pos, accumulation_steps, (self.state.global_step, self.micro_step - pos)

    def _window_statistics(self, model, mode: str) -> torch.Tensor | None:
        """At the first micro-batch of an accumulation window: the summed statistics of the window's
        *other* micro-batches (TRL's buffered slices; the parameters do not change inside the window),
        else None. Run **before** this micro-batch's gradient forward, so no autograd graph is held
        while they run (peak memory: one no-grad forward), and with dropout off (``model.eval()``):
        the statistic measures the policy, not one dropout mask."""
        where = self._search_window(mode)
        if where is None:
            return None
        pos, accumulation_steps, window = where
        if self.update_search.has(window):
            return None
        spg = self.args.steps_per_generation
        first = (self.micro_step - pos) % spg
        stats = None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for k in range(accumulation_steps):
                    if k == pos:
                        continue
                    micro_batch = self.buffered_inputs[(first + k) % spg]
                    other = self._loss_inputs(model, micro_batch, mode,
                                              compute_entropy=self.top_entropy_quantile < 1.0, aux=False)
                    s = self.loss_spec.statistics(other.ratio, other.advantages,
                                                  self._statistic_weights(other, micro_batch, mode), self.loss_config)
                    stats = s if stats is None else stats + s
        finally:
            model.train(was_training)
        return stats

    def _update_search_result(self, li: _LossInputs, weights: torch.Tensor, mode: str,
                              other_stats: torch.Tensor | None):
        """One search per optimizer update (the loss spec's ``statistics``/``select``; BAPO with
        ``bapo_scope="update"``, the paper's Algorithm 1).

        At the first micro-batch of an accumulation window, this micro-batch's statistics (from its
        gradient forward) and ``other_stats`` (:meth:`_window_statistics`) are summed and all-reduced
        across ranks in one collective; every micro-batch of the window then uses those bounds.
        Returns None when the per-call search is already the per-update one."""
        where = self._search_window(mode)
        if where is None:
            return None

        def statistics() -> torch.Tensor:
            stats = self.loss_spec.statistics(li.ratio, li.advantages, weights, self.loss_config)
            return stats if other_stats is None else stats + other_stats

        return self.update_search.result(where[2], self.loss_spec, self.loss_config, statistics)

    def compute_policy_loss(self, model, inputs):
        if self.loss_type not in CLIP_LOSS_TYPES:
            return super().compute_policy_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        other_stats = self._window_statistics(model, mode) if self.loss_spec.needs_loss_weights else None
        li = self._loss_inputs(model, inputs, mode)
        mask, per_token_logps, entropies, advantages, ratio = (
            li.mask, li.per_token_logps, li.entropies, li.advantages, li.ratio)
        ref_logps = li.ref_logps
        per_token_kl = None
        if self.kl_beta != 0.0:
            per_token_kl = kl_estimate(per_token_logps, ref_logps, "k3")
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * ratio

        # ---- the policy term: adaclip_rl.losses ----
        extra: dict[str, Any] = {}
        if self.loss_spec.needs_loss_weights:
            extra["weights"] = self._statistic_weights(li, inputs, mode)
            extra["search_result"] = self._update_search_result(li, extra["weights"], mode, other_stats)
        class_entropy = inputs.get("old_per_token_entropies", entropies)
        loss_out = self.policy_loss_fn(
            ratio, advantages, mask, config=self.loss_config, logp=per_token_logps, ref_logp=ref_logps,
            entropy=class_entropy.detach(), reduce_fn=self._reduce_sum, **extra,
        )
        if self.log_premise:  # cheap: tensors the loss already has (the staleness study sets it)
            loss_out.metrics.update(premise_metrics(ratio, advantages, per_token_logps, mask,
                                                    self._loss_weights(li, inputs, mode), loss_out, self.loss_config))
        per_token_loss = self._apply_token_factors(loss_out.per_token_loss, li, inputs)
        if per_token_kl is not None:
            per_token_loss = per_token_loss + self.kl_beta * per_token_kl

        accumulation_steps = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.loss_type == "dapo":
            loss = aggregate_loss(per_token_loss, mask, "dapo", num_tokens=self._dapo_num_tokens(inputs, mode))
            policy_loss = loss.detach()
        else:
            loss = aggregate_loss(per_token_loss, mask, self.loss_type,
                                  max_completion_length=self.max_completion_length)
            policy_loss = loss.detach()
            loss = loss / accumulation_steps
        if loss_out.extra_loss is not None:  # Archer's KL: a mean over the micro-batch's responses
            loss = loss + loss_out.extra_loss / accumulation_steps
        loss = self._add_entropy_bonus(loss, entropies, mask, li.entropy_mask, policy_loss, mode)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * li.aux_loss / accumulation_steps
            self.logged_metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(li.aux_loss).mean().item())
        self._log_loss_metrics(mode, mask, ratio, entropies, per_token_kl, loss_out)
        return loss

    def _add_entropy_bonus(self, loss, entropies, mask, entropy_mask, policy_loss, mode):
        """TRL 1.16's entropy bonus and Skywork-OR1 adaptive controller, unchanged in behaviour."""
        if not self.entropy_bonus_enabled:
            return loss
        effective_mask = mask if entropy_mask is None else mask * entropy_mask
        accumulation_steps = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        entropy_loss = (entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0) / accumulation_steps
        if self.use_adaptive_entropy:
            coef = self.entropy_coef if self.last_world_entropy <= self.args.entropy_target else 0.0
        else:
            coef = self.entropy_coef
        loss = loss - coef * entropy_loss
        self.logged_metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
        if self.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
            self.entropy_window_stats = stats if self.entropy_window_stats is None \
                else self.entropy_window_stats + stats
            if self.accelerator.sync_gradients:
                window = self.accelerator.reduce(self.entropy_window_stats, reduction="sum")
                world_entropy = (window[0] / window[1].clamp(min=1.0)).item()
                delta = self.args.entropy_coef_delta
                if world_entropy <= self.args.entropy_target:
                    self.entropy_coef = min(self.entropy_coef + delta, self.args.entropy_coef_max)
                else:
                    self.entropy_coef = max(self.entropy_coef - delta, self.args.entropy_coef_min)
                self.last_world_entropy = world_entropy
                self.entropy_window_stats = None
        if mode == "train" and self.accelerator.sync_gradients:
            self.logged_metrics[mode]["entropy_coef"].append(self.entropy_coef)
        return loss

    @torch.no_grad()
    def _log_loss_metrics(self, mode, mask, ratio, entropies, per_token_kl, loss_out):
        """TRL's loss metrics plus the policy loss's own, reduced across ranks in one collective.
        TRL's ``clip_ratio/*`` (for the loss that reproduces TRL's) come from the clip masks the
        surrogate returned with the loss."""
        m = mask.float()
        masks = loss_out.clip_masks
        seq = ratio.shape[1] == 1

        def sums(x):  # (sum, count) over loss tokens, or over sequences for sequence-level ratios
            if x.shape[1] == 1 and seq:
                return x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
            return (x * m).sum(), m.sum()

        names, values = [], []

        def add(name, x):
            s, c = sums(x)
            names.append(name)
            values.extend([s, c])

        if per_token_kl is not None:
            add("kl", per_token_kl)
        add("entropy", entropies)
        if self.loss_spec.reproduces_trl and masks is not None:
            is_low, is_high = masks.low.float(), masks.high.float()  # high: on the delta-capped ratio, as TRL
            add("clip_ratio/low_mean", is_low)
            add("clip_ratio/high_mean", is_high)
            add("clip_ratio/region_mean", ((is_low + is_high) > 0).float())
        # our metrics are already global (BAPO bounds) or local means; average local means over ranks
        loss_metrics = loss_out.metrics
        local = [v.detach().float().reshape(()) for v in loss_metrics.values()]
        vec = torch.stack([*values, *local]) if values or local else None
        n = self.accelerator.num_processes
        if vec is not None and n > 1:
            vec = self.accelerator.reduce(vec, reduction="sum")
        vals = vec.tolist() if vec is not None else []
        for i, name in enumerate(names):
            s, c = vals[2 * i], vals[2 * i + 1]
            self.logged_metrics[mode][name].append(s / max(c, 1.0))
        base = 2 * len(names)
        for j, key in enumerate(loss_metrics):
            value = vals[base + j] / n
            self.logged_metrics[mode][key].append(value)
