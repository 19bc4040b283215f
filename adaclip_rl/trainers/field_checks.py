"""Checks of the adaclip-rl config fields, as plain functions (no TRL import).

:class:`~adaclip_rl.trainers.config.AdaClipGRPOConfig` calls them in ``__post_init__``; the recipe
pre-check of ``adaclip-rl train`` (:mod:`adaclip_rl.trainers.recipe_check`) calls the same
functions on the YAML values before TRL is imported, so a bad value is reported in about a second.
Every message names the field, the value and the allowed range.

What each loss or clipper accepts is the registry's to say: the loss config or the clipper checks
its arguments and :meth:`~adaclip_rl.losses.PolicyLossSpec.config_from` /
:meth:`~adaclip_rl.gradclip.GradClipperSpec.build_from` rename them to the trainer's fields. Only
what involves several owners at once (a TRL field and the chosen loss) is checked here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from typing import Any

from ..checks import check_choice
from ..gradclip import GRAD_CLIPPER_SPECS, get_grad_clipper_spec
from ..losses import POLICY_LOSS_SPECS, GRPOClipConfig, PolicyLossSpec, get_policy_loss_spec
from ..optim.registry import OPTIMIZER_SPECS, get_optimizer_spec
from ..rollout.config import RolloutConfig

CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_TRL_EPSILON = next(f.default for f in fields(GRPOClipConfig) if f.name == "epsilon_low")  # TRL's default too


def validate_adaclip_fields(cfg: Any) -> None:
    """Refuse invalid adaclip-rl fields of ``cfg``, naming the field, the value and the allowed range.

    ``cfg`` is an :class:`~adaclip_rl.trainers.config.AdaClipGRPOConfig` or any object with its
    attributes (the recipe pre-check passes a namespace of YAML values over the defaults).
    """
    spec = get_policy_loss_spec(cfg.policy_loss)
    if not spec.reproduces_trl and cfg.loss_type not in CLIP_LOSS_TYPES:
        raise ValueError(
            f"loss_type must be one of {CLIP_LOSS_TYPES} with policy_loss={cfg.policy_loss!r}; got {cfg.loss_type!r}"
        )
    check_choice("grad_clip", cfg.grad_clip, sorted(GRAD_CLIPPER_SPECS))
    clipper = get_grad_clipper_spec(cfg.grad_clip)
    if clipper.adaptive and not cfg.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 when grad_clip={cfg.grad_clip!r} (it switches clipping on); "
                         f"got {cfg.max_grad_norm!r}")
    check_clip_under_deepspeed(cfg)
    check_fields_without_effect(cfg, spec)
    check_combinations(cfg, spec)
    for loss in (spec, *POLICY_LOSS_SPECS.values()):  # every loss config checks its fields, the chosen one first
        loss.config_from(cfg)
    if clipper.adaptive:
        clipper.build_from(cfg)  # the clipper checks its arguments
    check_optimizer_fields(cfg)


TRAINER_OPTIMS = ("adamw_torch", "adamw_torch_fused")


def check_optimizer_fields(cfg: Any) -> None:
    """``optimizer`` and the chosen optimizer's fields (the optimizer checks them, naming our fields);
    a warning when an adaptive ``grad_clip`` also handles spikes."""
    check_choice("optimizer", getattr(cfg, "optimizer", "adamw"), sorted(OPTIMIZER_SPECS))
    spec = get_optimizer_spec(getattr(cfg, "optimizer", "adamw"))
    if spec.cls is None:
        return
    spec.check(cfg)
    if get_grad_clipper_spec(cfg.grad_clip).adaptive and ("optimizer", cfg.grad_clip) not in _WARNED:
        _WARNED.add(("optimizer", cfg.grad_clip))
        warnings.warn(f"optimizer={cfg.optimizer!r} clips gradient spikes itself and grad_clip={cfg.grad_clip!r} "
                      "clips them before it: two spike handlers (the clipper sees the raw gradient, the "
                      "optimizer the clipped one); consider grad_clip='fixed' or 'none'", UserWarning, stacklevel=4)


def check_optimizer_with_trl(cfg: Any) -> None:
    """What ``optimizer`` cannot honour among TRL/transformers' resolved settings: another ``optim``
    (it would be ignored) and DeepSpeed's own optimizer (it replaces ours); under ZeRO >= 1 the
    optimizer sees flat partitions, so Stable-SPAM's per-matrix statistics would be wrong."""
    spec = get_optimizer_spec(getattr(cfg, "optimizer", "adamw"))
    if spec.cls is None:
        return
    optim = getattr(cfg.optim, "value", cfg.optim)
    if optim not in TRAINER_OPTIMS:
        raise ValueError(f"optim has no effect with optimizer={cfg.optimizer!r}; got {optim!r}, leave it at its "
                         f"default ({' or '.join(TRAINER_OPTIMS)}) or set optimizer='adamw'")
    ds = getattr(cfg, "hf_deepspeed_config", None)
    ds_config = getattr(ds, "config", None) or {}
    if getattr(cfg, "deepspeed", None) and ds_config.get("optimizer"):
        raise ValueError(f"optimizer={cfg.optimizer!r} cannot be used with a DeepSpeed config that has its own "
                         "'optimizer' section (DeepSpeed would build that one instead); remove the section")
    stage = (ds_config.get("zero_optimization") or {}).get("stage", 0)
    if getattr(cfg, "deepspeed", None) and spec.name == "stable_spam" and stage not in (0, "auto"):
        raise ValueError(f"optimizer='stable_spam' is not supported under DeepSpeed ZeRO stage {stage}: the "
                         "optimizer sees flat partitions, not matrices, so its per-matrix max and norm would be "
                         "wrong; use FSDP2 (DTensor), ZeRO stage 0, or optimizer='spam'")


def deepspeed_requested(cfg: Any) -> bool:
    """Whether this run will train under DeepSpeed: the ``deepspeed`` field (a DeepSpeed JSON), or
    ``accelerate launch`` with a DeepSpeed config (which exports ``ACCELERATE_USE_DEEPSPEED=true``;
    transformers builds its ``DeepSpeedPlugin`` from that variable)."""
    env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower()
    return bool(getattr(cfg, "deepspeed", None)) or env in ("1", "true", "yes", "y", "on")


def check_clip_under_deepspeed(cfg: Any) -> None:
    """Refuse ``grad_clip`` other than ``fixed`` under DeepSpeed, at config time (before any model
    loads): the engine clips inside ``engine.step()`` by ``gradient_clipping`` (= ``max_grad_norm``)
    and, under ZeRO-2/3, ``p.grad`` does not hold the gradient the clipper would read. The
    library's lagged-threshold path (:meth:`~adaclip_rl.gradclip.GradClipper.lagged_threshold`) is
    not wired into the trainer; see docs/scaling.md."""
    no_clip = cfg.grad_clip == "none" and not cfg.max_grad_norm > 0  # the Trainer's clip hook never runs
    if cfg.grad_clip != "fixed" and not no_clip and deepspeed_requested(cfg):
        raise ValueError(
            f"grad_clip must be 'fixed' under DeepSpeed (the deepspeed field or an accelerate DeepSpeed config; "
            f"the engine clips inside its step at max_grad_norm; for no clipping set grad_clip 'none' with "
            f"max_grad_norm 0); got {cfg.grad_clip!r}. Use FSDP or DDP for adaptive clipping (docs/scaling.md)")


_WARNED: set[tuple[str, ...]] = set()


def check_fields_without_effect(cfg: Any, spec: PolicyLossSpec) -> None:
    """Settings that the chosen policy loss would silently ignore: refused when they change the
    loss's shape (``delta``, ``dual_clip``, ``epsilon_high`` for a loss that owns its ratio bounds,
    e.g. BAPO/Archer, whose bounds come from ``bapo_*``/``archer_*``), warned once (naming them)
    when they only keep a non-default value (``epsilon`` there; the fields of the other losses)."""
    loss = cfg.policy_loss
    if spec.owns_ratio_bounds:
        trl_clip = [s.name for s in POLICY_LOSS_SPECS.values() if not s.owns_ratio_bounds]
        refused = {
            "delta": f"the INTELLECT-2 cap of the unclipped ratio applies to policy_loss {trl_clip} only",
            "dual_clip": f"use {spec.trainer_field('dual_clip')}",
            "epsilon_high": f"the ratio bounds come from the {spec.prefix}* fields",
        }
        for name, why in refused.items():
            if getattr(cfg, name, None) is not None:
                raise ValueError(f"{name} has no effect with policy_loss={loss!r} ({why}); got {getattr(cfg, name)!r}, "
                                 "leave it unset (None)")
    ignored = []
    if spec.owns_ratio_bounds and getattr(cfg, "epsilon", _TRL_EPSILON) != _TRL_EPSILON:
        ignored.append("epsilon")
    for other in POLICY_LOSS_SPECS.values():
        if other is spec:
            continue
        for name, default in other.defaults().items():
            if getattr(cfg, name, default) != default:
                ignored.append(name)
    if ignored and tuple(ignored) not in _WARNED:
        _WARNED.add(tuple(ignored))
        warnings.warn(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with "
                      f"policy_loss={loss!r}", UserWarning, stacklevel=4)


def check_combinations(cfg: Any, spec: PolicyLossSpec) -> None:
    """Combinations of a TRL field and the chosen loss that would be silently wrong, refused by field name.

    * ``sync_ref_model=True`` with a loss that needs reference log-probs (Archer's KL to the frozen
      initial model, arXiv 2507.15778 Eq. 5): TRL's TR-DPO mixing would move the reference.
    * ``beta != 0`` with such a loss: TRL's k3 KL on every token would be added to the loss's own
      (per-class) KL.
    * ``dual_clip`` with ``policy_loss='grpo'`` and a ``loss_type`` TRL computes itself (no clip:
      cispo, sapo, vespo): TRL's loss has no dual clip.
    * ``importance_sampling_level='sequence'`` with a loss defined on token ratios only (Archer's
      per-token class bounds; neither the paper nor the official code defines them on one
      ratio per sequence).
    """
    loss = cfg.policy_loss
    config = spec.config_from(cfg)
    if spec.needs_ref_logps(config):
        why = (f"policy_loss={loss!r} with {spec.prefix}* KL weights > 0 keeps its own KL to the frozen initial "
               f"model")
        if getattr(cfg, "sync_ref_model", False):
            raise ValueError(f"sync_ref_model must be False with {why} (TR-DPO mixing would move that reference); "
                             f"got {cfg.sync_ref_model!r}")
        beta = getattr(cfg, "beta", 0.0)
        if beta != 0.0:
            raise ValueError(f"beta must be 0.0 with {why} (TRL's k3 KL on every token would be a second KL term); "
                             f"got {beta!r}; set the {spec.prefix}* KL weights to 0 to use TRL's beta instead")
    loss_type = getattr(cfg, "loss_type", None)
    if spec.reproduces_trl and loss_type not in CLIP_LOSS_TYPES and getattr(cfg, "dual_clip", None) is not None:
        raise ValueError(f"dual_clip must be None with loss_type={loss_type!r} (TRL computes that loss, which has no "
                         f"dual clip; dual_clip applies to loss_type in {list(CLIP_LOSS_TYPES)}); got {cfg.dual_clip!r}")
    level = getattr(cfg, "importance_sampling_level", "token")
    if spec.token_ratios_only and level != "token":
        raise ValueError(f"importance_sampling_level must be 'token' with policy_loss={loss!r} (its clip bounds are "
                         f"per token; a sequence-level ratio is not defined for it); got {level!r}")


def validate_after_trl(cfg: Any) -> None:
    """Checks that need TRL's resolved fields (``steps_per_generation``, ``optim``, DeepSpeed)."""
    check_optimizer_with_trl(cfg)
    spec = get_policy_loss_spec(cfg.policy_loss)
    if spec.searches_per_update(spec.config_from(cfg)):
        spg, accumulation = cfg.steps_per_generation, cfg.gradient_accumulation_steps
        if spg is not None and spg % accumulation:
            raise ValueError(
                f"steps_per_generation ({spg}) must be a multiple of gradient_accumulation_steps ({accumulation}) "
                f"with {spec.trainer_field('scope')}='update': the search of an update reads every micro-batch of "
                f"its window, so the window must lie within one generation batch; or set "
                f"{spec.trainer_field('scope')}='micro_batch'")


def resolved_ratio_anchor(cfg: Any) -> str:
    """``ratio_anchor`` with ``"auto"`` resolved: ``"behaviour"`` for a loss whose paper clips the
    ratio to the policy that sampled the tokens (BAPO, Archer), ``"proximal"`` otherwise."""
    anchor = getattr(cfg, "ratio_anchor", "auto")
    if anchor == "auto":
        behaviour = get_policy_loss_spec(cfg.policy_loss).anchors_to_behaviour
        return "behaviour" if behaviour and getattr(cfg, "use_behaviour_logprobs", True) else "proximal"
    return anchor


def rollout_config(cfg: Any) -> RolloutConfig:
    """The :class:`RolloutConfig` of a trainer config (or a namespace of its fields), ``ratio_anchor`` resolved."""
    return RolloutConfig.from_object(cfg, ratio_anchor=resolved_ratio_anchor(cfg))


def validate_rollout_fields(cfg: Any) -> None:
    """Refuse off-policy rollout settings (:class:`RolloutConfig` fields) that cannot work together
    with the vLLM settings of ``cfg`` (an ``OffPolicyGRPOConfig`` or a namespace of its fields)."""
    rollout = rollout_config(cfg)
    if rollout.off_policy:
        what = "partial_rollouts=True" if rollout.partial_rollouts else f"replay_ratio={rollout.replay_ratio}"
        if not cfg.use_vllm:
            raise ValueError(f"{what} requires use_vllm=True: behaviour log-probs come from vLLM")
        if cfg.vllm_mode != "colocate":
            raise ValueError(
                f"{what} requires vllm_mode='colocate'; got {cfg.vllm_mode!r} (server-mode weight push is "
                "GPU/NCCL-only and not wired to the partial-rollout manager)"
            )
        if not cfg.vllm_importance_sampling_correction:
            raise ValueError(
                f"{what} requires vllm_importance_sampling_correction=True (TRL then recomputes the proximal "
                "log-probs and the loss applies the behaviour weight)"
            )
        if cfg.vllm_tensor_parallel_size != 1:
            raise ValueError(
                f"vllm_tensor_parallel_size must be 1 with {what}; got {cfg.vllm_tensor_parallel_size}"
            )
        if cfg.vllm_enable_sleep_mode:
            raise ValueError(f"vllm_enable_sleep_mode must be False with {what}")
