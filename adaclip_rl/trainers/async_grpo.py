"""``AdaClipAsyncGRPOTrainer``: TRL's asynchronous GRPO with the policy term from :mod:`adaclip_rl.losses`.

TRL 1.16's ``trl.experimental.async_grpo.AsyncGRPOTrainer`` trains while a rollout worker process
generates with a separate vLLM server; weights go to the server every ``weight_sync_steps``
optimizer steps, and samples older than ``max_staleness`` versions are dropped. Its loss is a
plain clip written inline in ``compute_loss``. This subclass changes:

* ``compute_loss`` - TRL's unpack-and-forward of the packed (prefix-tree) batch, unchanged; then the
  per-token policy term from the registry (``grpo`` / ``bapo`` / ``archer``) on the ratio
  ``r = exp(log pi_theta - log mu)`` to the **behaviour** log-probs ``mu`` the worker recorded per
  token (the ratio BAPO, arXiv 2510.18927 Eq. 5, and Archer, arXiv 2507.15778 Eq. 5, clip under
  off-policy data), aggregated as TRL does (sum over the micro-batch's tokens / tokens per rank /
  gradient-accumulation steps). ``policy_loss="grpo"`` reproduces TRL's loss (parity test).
* BAPO's bound search runs once per optimizer update on the statistics of every micro-batch of the
  update and every rank, all-reduced in one collective (``bapo_scope="update"``), or once per
  micro-batch (``"micro_batch"``).
* Archer's KL to the frozen initial model: a frozen copy forwards the same packed batch.
* gradient clipping - the adaptive gradient clippers (:mod:`adaclip_rl.gradclip`,
  :class:`~adaclip_rl.trainers.grad_clip_mixin.AdaptiveGradClipMixin`); their state goes into
  checkpoints (``adaclip_state.json``).
* Per-token policy versions (:mod:`adaclip_rl.rollout.async_versions`) reach the loss: a sample whose
  oldest token is more than ``max_staleness`` versions old when trained is dropped (weight 0, out of
  BAPO's statistics, still in the token count) or down-weighted by ``staleness_decay ** excess``
  (``staleness_policy``); logged as ``staleness/*``.
* CPU: the FA3 tree-attention kernel is replaced by a PyTorch one (:func:`~adaclip_rl.trainers.cpu_tree_attention.cpu_tree_attention`), the
  peak-FLOPs lookup (CUDA only) is skipped, and weights reach the server through
  :class:`~adaclip_rl.rollout.async_weights.SharedFileWeightTransfer` (``weight_transfer="shared_file"``).

TRL's private members (its module globals, signature columns, per-step accounting, the rollout
worker's loop) are reached through :class:`~adaclip_rl._trl_compat.async_grpo.AsyncGRPOTrainerSeam`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import numpy as np
import torch
import trl.experimental.async_grpo.async_grpo_trainer as agt
from transformers import AttentionInterface
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, pad

from .._trl_compat.async_grpo import TREE_ATTENTION, AsyncGRPOTrainerSeam
from ..losses.registry import get_policy_loss_spec
from ..rollout.async_versions import ServerCheckedRolloutWorker, VersionedRolloutWorker
from ..rollout.async_weights import SharedFileWeightTransfer
from ..rollout.importance import staleness_weights, token_staleness
from .async_config import AdaClipAsyncGRPOConfig
from .chat_template import conversational_prompts
from .cpu_tree_attention import cpu_tree_attention
from .grad_clip_mixin import AdaptiveGradClipMixin
from .optimizer_mixin import SpikeAwareOptimizerMixin
from .policy_term import UpdateSearch, policy_log_ratio

logger = logging.getLogger(__name__)

__all__ = ["AdaClipAsyncGRPOTrainer", "build_async_trainer"]


def build_async_trainer(rewards, args: AdaClipAsyncGRPOConfig, model: str | None, train_dataset, **kwargs):
    """The trainer of ``adaclip-rl train`` with ``trainer: async``: rewards by name
    (:mod:`adaclip_rl.rewards` registry; weights other than 1 are refused, TRL's asynchronous GRPO
    sums the rewards), plain-text prompts wrapped as user messages."""
    from ..rewards import build_reward_funcs

    if model is None:
        raise ValueError("model_name_or_path is required")
    reward_funcs, weights = build_reward_funcs(rewards)
    if any(w != 1.0 for w in weights):
        raise ValueError(f"reward weights {weights} are not supported with trainer: async (TRL's asynchronous GRPO "
                         "sums the rewards with weight 1)")
    return AdaClipAsyncGRPOTrainer(model, reward_funcs, args, conversational_prompts(train_dataset), **kwargs)


class _LastSampleQueue:
    """The rollout queue, remembering the sample handed out last (TRL's dataset drops its extra fields)."""

    def __init__(self, queue) -> None:
        self._queue = queue
        self.last = None

    def get(self, *args, **kwargs):
        self.last = self._queue.get(*args, **kwargs)
        return self.last

    def __getattr__(self, name):
        return getattr(self._queue, name)


class _VersionedQueueDataset(agt.RolloutQueueDataset):
    """TRL's ``RolloutQueueDataset`` that also yields each sample's ``token_versions``."""

    def __init__(self, rollout_queue, *args, **kwargs) -> None:
        super().__init__(_LastSampleQueue(rollout_queue), *args, **kwargs)

    def __iter__(self):
        for item in super().__iter__():
            sample = self.queue.last
            versions = getattr(sample, "token_versions", None)
            if versions is None:  # TRL's one version per group: a lower bound for every token
                versions = np.where(np.asarray(sample.completion_mask) > 0, sample.model_version, -1)
            item["token_versions"] = np.asarray(versions, dtype=np.int64)
            yield item


class _VersionedCollator(agt.DataCollatorForRollout):
    """TRL's collator plus ``token_versions``, one per loss term in ``TreeRow.pack``'s order."""

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        (rows,) = examples
        per_row = []
        for row in rows:
            versions: list[int] = []
            for sample in row.samples:
                mask, tv = sample["completion_mask"], sample["token_versions"]
                versions.extend(int(tv[p]) for p in range(1, len(mask)) if mask[p])
            per_row.append(torch.tensor(versions, dtype=torch.long))
        batch["token_versions"] = pad(per_row, padding_value=-1)
        return batch


class _Packed(NamedTuple):
    """One micro-batch after TRL's unpacking, with the loss terms laid out as ``(B, T)`` rows."""

    log_probs: torch.Tensor  # (M,) current policy, with grad
    entropy: torch.Tensor | None  # (M,)
    old_log_probs: torch.Tensor  # (M,) behaviour log-probs recorded by the rollout worker
    advantages: torch.Tensor  # (M,)
    segment_id: torch.Tensor  # (M,) sample of each loss term
    position: torch.Tensor  # (M,) index of the term within its sample
    shape: tuple[int, int]  # (B samples, T longest sample)
    model_inputs: dict[str, Any]
    aux_loss: torch.Tensor | None
    tokens_per_rank: torch.Tensor
    token_versions: torch.Tensor | None


class AdaClipAsyncGRPOTrainer(SpikeAwareOptimizerMixin, AdaptiveGradClipMixin, AsyncGRPOTrainerSeam):
    """Asynchronous GRPO with adaptive clipping. Same constructor as TRL's ``AsyncGRPOTrainer``
    (``model`` is a model id or directory); ``args`` must be an :class:`AdaClipAsyncGRPOConfig`."""

    rollout_dataset_cls = _VersionedQueueDataset
    rollout_collator_cls = _VersionedCollator
    extra_signature_columns = ("token_versions",)

    def __init__(self, model: str, reward_funcs=None, args: AdaClipAsyncGRPOConfig | None = None, *a: Any,
                 rollout_worker=None, weight_transfer=None, **kw: Any):
        if args is None:
            args = AdaClipAsyncGRPOConfig(output_dir="adaclip-async-grpo")
        elif not isinstance(args, AdaClipAsyncGRPOConfig):
            raise TypeError(f"args must be an AdaClipAsyncGRPOConfig; got {type(args).__name__}")
        self.loss_spec = get_policy_loss_spec(args.policy_loss)
        self.loss_config = args.policy_loss_config()
        self._shared_file_transfer = None
        if weight_transfer is None and args.resolved_weight_transfer() == "shared_file":
            weight_transfer = self._shared_file_transfer = SharedFileWeightTransfer(
                args.vllm_server_base_url, weights_dir=args.weight_transfer_dir,
                pause_mode=args.weight_transfer_pause_mode, timeout=float(args.weight_sync_timeout))
        worker_cls = VersionedRolloutWorker if args.record_token_versions else ServerCheckedRolloutWorker
        super().__init__(model, reward_funcs, args, *a, rollout_worker=rollout_worker,
                         weight_transfer=weight_transfer, rollout_worker_cls=worker_cls, **kw)
        if self.accelerator.device.type != "cuda":  # TRL registered the FA3 kernel; CPU has none
            AttentionInterface.register(TREE_ATTENTION, cpu_tree_attention)
        if self._shared_file_transfer is not None:
            self._shared_file_transfer.aliases = self._tied_aliases()
            self._shared_file_transfer.version_fn = lambda: self.model_version
        self.ref_model = None
        if self.loss_spec.needs_ref_logps(self.loss_config):  # Archer's KL to the frozen initial model
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            init_kwargs.setdefault("dtype", args.dtype)
            ref = create_model_from_path(model, device_map=None, attn_implementation=TREE_ATTENTION,
                                         **init_kwargs)
            add_fused_lm_head(ref, temperature=self.temperature, outputs=("log_probs",))
            self.ref_model = ref.requires_grad_(False).eval().to(self.accelerator.device)
        self.grad_clipper_spec = args.grad_clipper_spec
        self.grad_clipper = args.build_grad_clipper()
        self._window: list[dict[str, Any]] = []
        self._window_pos = 0
        self._window_count = 0  # optimizer updates begun: the key of the update's search
        self.update_search = UpdateSearch(self._reduce_sum)
        self._window_samples: torch.Tensor | None = None  # global responses of the update (Archer's KL weight)

    def _tied_aliases(self) -> dict[str, str]:
        """``{alias: streamed name}`` for parameters shared under two names (a tied LM head), which
        vLLM keeps as separate layers and must receive under both."""
        model = self.accelerator.unwrap_model(self.model)
        names: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name.removeprefix("module."))
        return {alias: group[0] for group in names.values() if len(group) > 1 for alias in group[1:]}

    # ------------------------------------------------------------------ data
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer update, kept for BAPO's once-per-update search."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.begin_update(batches)
        return batches, num_items

    def begin_update(self, batches: list[dict[str, Any]]) -> None:
        """``batches`` are the micro-batches of the next optimizer update (its search reads them all)."""
        self._window, self._window_pos = list(batches), 0
        self._window_count += 1
        self.update_search.reset()
        self._window_samples = None

    # ------------------------------------------------------------------ loss
    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t

    def _forward_packed(self, model, inputs, *, with_entropy: bool = True) -> _Packed:
        """TRL 1.16's unpacking and forward of a packed micro-batch (``AsyncGRPOTrainer.compute_loss``)."""
        mask_bool = inputs["attention_mask"].bool()
        selected = inputs["token_index"] >= 0
        model_inputs: dict[str, Any] = {
            "input_ids": inputs["input_ids"][mask_bool].unsqueeze(0),
            "position_ids": inputs["position_ids"][mask_bool].unsqueeze(0),
            "shift_labels": inputs["shift_labels"][mask_bool].unsqueeze(0),
        }
        for key in ("tree_kv_index", "tree_cu_seqlens_q", "tree_cu_seqlens_k"):
            model_inputs[key] = inputs[key][inputs[key] >= 0]
        token_index = inputs["token_index"][selected]
        segment_id = inputs["segment_id"][selected]
        # terms per sample, in a buffer of the host-known upper bound (one per term): no bincount,
        # which reads the maximum on the host to size its output
        n_terms = segment_id.numel()
        counts = torch.zeros(max(n_terms, 1), dtype=torch.long, device=segment_id.device).index_add_(
            0, segment_id, torch.ones_like(segment_id))
        starts = counts.cumsum(0) - counts  # TreeRow.pack lists each sample's terms contiguously
        position = torch.arange(n_terms, device=segment_id.device) - starts[segment_id]
        # the one host read of the forward (TRL's: the attention kernel takes the longest tree
        # segments as ints) also brings the row shape: (samples, longest sample)
        n_seq = segment_id.max() + 1 if n_terms else counts.new_ones(())
        host = torch.cat([inputs["tree_max_seqlens"][0].reshape(-1).long(), n_seq.reshape(1), counts.max().reshape(1)])
        max_q, max_k, n_seq, longest = host.tolist()
        model_inputs["tree_max_seqlen_q"], model_inputs["tree_max_seqlen_k"] = max_q, max_k
        router_kwargs = {"output_router_logits": True} if self.aux_loss_enabled else {}
        outputs = model(**model_inputs, fused_lm_head=True, **router_kwargs)
        log_probs = outputs.log_probs.flatten()[token_index]
        entropy = outputs.entropy.flatten()[token_index] if with_entropy and outputs.entropy is not None else None
        tokens_per_rank = (inputs["global_n_tokens"][0] / self.accelerator.num_processes).clamp(min=1.0)
        versions = inputs["token_versions"][selected] if "token_versions" in inputs else None
        return _Packed(log_probs, entropy, inputs["old_log_probs"][selected], inputs["advantages"][selected],
                       segment_id, position, (n_seq, longest if n_terms else 0), model_inputs,
                       outputs.aux_loss if self.aux_loss_enabled else None, tokens_per_rank.to(torch.float32),
                       versions)

    @staticmethod
    def _rows(p: _Packed, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Flat loss terms ``(M,)`` -> ``(B, T)`` rows, one per sample (``fill`` after its end)."""
        return x.new_full(p.shape, fill).index_put((p.segment_id, p.position), x)

    def _staleness_weights(self, p: _Packed) -> torch.Tensor | None:
        """``(B, T)`` weight of each sample's terms from its oldest token's staleness (``staleness_policy``:
        0 or ``staleness_decay ** excess`` beyond ``max_staleness``; :func:`adaclip_rl.rollout.staleness_weights`)."""
        if p.token_versions is None:
            return None
        versions = self._rows(p, p.token_versions, fill=-1)
        valid = versions >= 0
        stal = token_staleness(versions, self.model_version, valid)
        return staleness_weights(stal, valid, max_staleness=self.args.max_staleness, policy=self.args.staleness_policy,
                                 decay=self.args.staleness_decay, level="sequence")

    def _trained_mask(self, p: _Packed) -> torch.Tensor:
        """``(B, T)`` 1 on the terms trained on: every term except those of samples dropped for staleness."""
        mask = self._rows(p, torch.ones_like(p.log_probs))
        stale = self._staleness_weights(p)
        return mask if stale is None else mask * (stale > 0)

    def _grad_accum(self, mode: str) -> float:
        return float(self.current_gradient_accumulation_steps) if mode == "train" else 1.0

    def _loss_weights(self, p: _Packed, mask: torch.Tensor, mode: str) -> torch.Tensor:
        """Weight of each token's loss in the aggregated loss: 1 / tokens per rank / accumulation steps."""
        return mask / p.tokens_per_rank / self._grad_accum(mode)

    def _statistic_weights(self, p: _Packed, mask: torch.Tensor, live: torch.Tensor | None, mode: str) -> torch.Tensor:
        """The loss's ``weights`` (its spec's ``statistic_weights``; BAPO: the loss weights of the
        tokens whose ratio carries a gradient)."""
        live_rows = None if live is None else self._rows(p, live)
        return self.loss_spec.statistic_weights(self.loss_config, self._loss_weights(p, mask, mode), mask, live_rows)

    @staticmethod
    def _global_samples(batch: dict[str, Any]) -> torch.Tensor:
        """Samples of a packed micro-batch over all ranks (TRL's collator: ``mean_seq_len`` is the
        forward tokens per sample), as a 0-d tensor (no host read)."""
        return (batch["global_n_forward_tokens"][0] / batch["mean_seq_len"][0]).round()

    def _extra_loss_weight(self, inputs, p: _Packed, mode: str) -> torch.Tensor | float:
        """Weight of the loss's ``extra_loss`` (Archer's KL) in this micro-batch's loss.

        A mean over the micro-batch's responses (``spec.extra_loss_per_response``) is turned into a
        sum and divided by the optimizer update's global response count (every micro-batch of the
        update, every rank; times the ranks, which DDP averages over): each response weighs
        ``1 / N`` however the micro-batches were packed (a mean per micro-batch divided by the
        accumulation steps would weigh a response of a 2-sample micro-batch 4x one of an 8-sample
        one). Other extra losses are per micro-batch: divided by the accumulation steps."""
        if not self.loss_spec.extra_loss_per_response(self.loss_config):
            return 1.0 / self._grad_accum(mode)
        if mode == "train" and self._window:
            if self._window_samples is None:
                self._window_samples = torch.stack([self._global_samples(mb).to(p.log_probs.device)
                                                    for mb in self._window]).sum()
            samples = self._window_samples
        else:  # a micro-batch outside an update (eval, or a direct call): it is the update
            samples = self._global_samples(inputs) * self._grad_accum(mode)
        return p.shape[0] * self.accelerator.num_processes / samples.clamp(min=1.0)

    def _update_search(self, model, p: _Packed, ratio: torch.Tensor, adv: torch.Tensor, weights: torch.Tensor,
                       mode: str):
        """The search result shared by every micro-batch of the optimizer update (statistics of all of
        them, summed, then all-reduced across ranks once), or None for a per-call search."""
        spec = self.loss_spec
        if mode != "train" or not spec.searches_per_update(self.loss_config) or len(self._window) <= 1:
            return None

        def statistics() -> torch.Tensor:
            stats = spec.statistics(ratio.detach(), adv, weights, self.loss_config)
            with torch.no_grad():
                for mb in self._window[1:]:
                    q = self._forward_packed(model, self.prepare_inputs(mb), with_entropy=False)
                    m = self._trained_mask(q)
                    q_log_ratio, q_live = policy_log_ratio(spec, q.log_probs, q.old_log_probs)
                    stats = stats + spec.statistics(torch.exp(self._rows(q, q_log_ratio)), self._rows(q, q.advantages),
                                                    self._statistic_weights(q, m, q_live, mode), self.loss_config)
            return stats

        return self.update_search.result(self._window_count, spec, self.loss_config, statistics)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        forward_start = time.time()
        p = self._forward_packed(model, inputs)
        forward_s = time.time() - forward_start
        spec, cfg = self.loss_spec, self.loss_config

        # ---- the policy term: adaclip_rl.losses, on (B, T) rows of this rank's samples ----
        log_ratio, live = policy_log_ratio(spec, p.log_probs, p.old_log_probs)
        ratio = torch.exp(self._rows(p, log_ratio))  # 1 after each sample's end
        adv = self._rows(p, p.advantages)
        mask = self._trained_mask(p)  # samples dropped for staleness leave the loss and BAPO's statistics
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_out = self.ref_model(**p.model_inputs, fused_lm_head=True)
            ref_logp = self._rows(p, ref_out.log_probs.flatten()[inputs["token_index"][inputs["token_index"] >= 0]])
        entropy = self._rows(p, p.entropy.detach()) if (spec.needs_entropy and p.entropy is not None) else None
        weights = self._statistic_weights(p, mask, live, mode) if spec.needs_loss_weights else None
        search = self._update_search(model, p, ratio, adv, weights, mode)
        out = spec.fn(
            ratio, adv, mask, config=cfg, logp=self._rows(p, p.log_probs), ref_logp=ref_logp, entropy=entropy,
            reduce_fn=self._reduce_sum, weights=weights, search_result=search,
        )
        if mode == "train":
            self._window_pos += 1
        stale = self._staleness_weights(p)
        per_token_loss = out.per_token_loss if stale is None else out.per_token_loss * stale
        per_token_loss = per_token_loss[p.segment_id, p.position]  # (M,), TRL's order

        # ---- TRL's aggregation: token sum / tokens per rank / accumulation steps ----
        ga = self._grad_accum(mode)
        loss = per_token_loss.sum() / p.tokens_per_rank / ga
        if out.extra_loss is not None:
            loss = loss + out.extra_loss * self._extra_loss_weight(inputs, p, mode)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * p.aux_loss / ga
        self._log_metrics(mode, p, log_ratio, out.metrics)

        self.account_forward(inputs, forward_s)  # TRL's per-step accounting (throughput metrics)
        return loss

    @torch.no_grad()
    def _log_metrics(self, mode: str, p: _Packed, log_ratio: torch.Tensor, loss_metrics: dict) -> None:
        """TRL's ``ratio``, ``kl`` (k3 to the behaviour policy) and ``entropy``, the policy loss's own
        metrics (averaged over ranks) and per-token staleness, in one collective."""
        r = torch.exp(log_ratio)
        local = [r.sum(), ((r - 1) - log_ratio).sum(),
                 p.entropy.sum() if p.entropy is not None else r.new_zeros(()),
                 r.new_tensor(float(r.numel()))]
        local += [v.detach().float().reshape(()) for v in loss_metrics.values()]
        vec = self._reduce_sum(torch.stack(local))
        n = self.accelerator.num_processes
        count = max(vec[3].item(), 1.0)
        vals = vec.tolist()
        m = self.logged_metrics[mode]
        m["ratio"].append(vals[0] / count)
        m["kl"].append(vals[1] / count)
        m["entropy"].append(vals[2] / count)
        for key, value in zip(loss_metrics, vals[4:], strict=True):
            m[key].append(value / n)
        if p.token_versions is not None and p.token_versions.numel():
            tv = p.token_versions.float()
            seg_min = tv.new_full((p.shape[0],), float("inf")).scatter_reduce(0, p.segment_id, tv, "amin")
            seg_max = tv.new_full((p.shape[0],), -float("inf")).scatter_reduce(0, p.segment_id, tv, "amax")
            mixed = ((seg_max > seg_min) & torch.isfinite(seg_min)).float().sum()
            stats = torch.stack([tv.sum(), tv.new_tensor(float(tv.numel())), -tv.min(), tv.max(), mixed,
                                 tv.new_tensor(float(p.shape[0]))])
            gathered = self.accelerator.gather(stats.unsqueeze(0)).reshape(-1, 6)
            if self.accelerator.is_main_process:
                version = float(self.model_version)
                total, cnt = gathered[:, 0].sum().item(), gathered[:, 1].sum().item()
                m["staleness/token_mean"].append(version - total / max(cnt, 1.0))
                m["staleness/token_max"].append(version + gathered[:, 2].max().item())
                m["staleness/token_min"].append(version - gathered[:, 3].max().item())
                m["staleness/mixed_version_samples_frac"].append(
                    gathered[:, 4].sum().item() / max(gathered[:, 5].sum().item(), 1.0))

    # ----------------------------------------------------------- versions
    def after_weight_sync(self) -> None:
        """After TRL's sync, every rank takes rank 0's ``model_version``. TRL bumps (and, on resume,
        restores) it on the main process only, but each rank computes its samples' staleness against it
        (:meth:`_staleness_weights`): on 2 ranks rank 1 stayed at version 0 and failed with "negative
        staleness" at its first update (measured; docs/scaling.md)."""
        super().after_weight_sync()
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            self.model_version = broadcast_object_list([self.model_version], from_process=0)[0]

    # ----------------------------------------------------------- checkpoints
    def adaclip_state_dict(self) -> dict[str, Any]:
        return {**super().adaclip_state_dict(), "model_version": self.model_version}
