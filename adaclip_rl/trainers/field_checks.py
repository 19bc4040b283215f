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
    for loss in (spec, *POLICY_LOSS_SPECS.values()):  # every loss config checks its fields, the chosen one first
        loss.config_from(cfg)
    if clipper.adaptive:
        clipper.build_from(cfg)  # the clipper checks its arguments


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


def validate_after_trl(cfg: Any) -> None:
    """Checks that need TRL's resolved fields (``steps_per_generation``)."""
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
