"""Checks of the adaclip-rl config fields, as plain functions (no TRL import).

:class:`~adaclip_rl.trainers.config.AdaClipGRPOConfig` calls them in ``__post_init__``; the recipe
pre-check of ``adaclip-rl train`` (:mod:`adaclip_rl.trainers.recipe_check`) calls the same
functions on the YAML values before TRL is imported, so a bad value is reported in about a second.
Every message names the field, the value and the allowed range.
"""

from __future__ import annotations

import re
from typing import Any

from ..gradclip import GRAD_CLIPPERS
from ..losses import POLICY_LOSSES, ArcherConfig, BAPOConfig, GRPOClipConfig
from ..rollout.config import RolloutConfig

CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def _prefixed(error: ValueError, prefix: str, names: list[str]) -> ValueError:
    """Rewrite a loss-config error so that it names the trainer config's field (``bapo_target``)."""
    msg = str(error)
    for name in sorted(names, key=len, reverse=True):
        msg = re.sub(rf"(?<![\w.]){re.escape(name)}\b", prefix + name, msg)
    return ValueError(msg)


def validate_adaclip_fields(cfg: Any) -> None:
    """Refuse invalid adaclip-rl fields of ``cfg``, naming the field, the value and the allowed range.

    ``cfg`` is an :class:`~adaclip_rl.trainers.config.AdaClipGRPOConfig` or any object with its
    attributes (the recipe pre-check passes a namespace of YAML values over the defaults).
    """
    if cfg.policy_loss not in POLICY_LOSSES:
        raise ValueError(f"policy_loss must be one of {sorted(POLICY_LOSSES)}; got {cfg.policy_loss!r}")
    if cfg.policy_loss != "grpo" and cfg.loss_type not in CLIP_LOSS_TYPES:
        raise ValueError(
            f"loss_type must be one of {CLIP_LOSS_TYPES} with policy_loss={cfg.policy_loss!r}; got {cfg.loss_type!r}"
        )
    if cfg.archer_entropy_source not in ("current", "old"):
        raise ValueError(f"archer_entropy_source must be 'current' or 'old'; got {cfg.archer_entropy_source!r}")
    if cfg.grad_clip not in ("fixed", *GRAD_CLIPPERS):
        raise ValueError(f"grad_clip must be one of {sorted({'fixed', *GRAD_CLIPPERS})}; got {cfg.grad_clip!r}")
    if cfg.grad_clip not in ("none", "fixed") and not cfg.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 when grad_clip={cfg.grad_clip!r} (it switches clipping on); "
                         f"got {cfg.max_grad_norm!r}")
    policy_loss_config(cfg)  # validates the policy-loss fields
    grad_clipper_kwargs(cfg)

def policy_loss_config(cfg: Any) -> GRPOClipConfig | BAPOConfig | ArcherConfig:
    """The :mod:`adaclip_rl.losses` config for ``policy_loss`` (raises ValueError naming our fields)."""
    if cfg.policy_loss == "bapo":
        names = ["target", "low_start", "low_max", "low_step", "high_start", "high_max", "high_step",
                 "contribution", "dual_clip"]
        try:
            return BAPOConfig(**{n: getattr(cfg, f"bapo_{n}") for n in names})
        except ValueError as e:
            raise _prefixed(e, "bapo_", names) from None
    if cfg.policy_loss == "archer":
        names = ["quantile", "high_clip", "low_clip", "high_kl", "low_kl", "kl_estimator", "dual_clip"]
        try:
            return ArcherConfig(**{n: getattr(cfg, f"archer_{n}") for n in names})
        except ValueError as e:
            raise _prefixed(e, "archer_", names) from None
    eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    try:
        return GRPOClipConfig(epsilon_low=cfg.epsilon, epsilon_high=eps_high, dual_clip=cfg.dual_clip,
                              delta=cfg.delta)
    except ValueError as e:
        raise _prefixed(e, "", []) from None

def grad_clipper_kwargs(cfg: Any) -> dict:
    """Keyword arguments for :func:`adaclip_rl.gradclip.build_grad_clipper` (validated there)."""
    from ..gradclip import build_grad_clipper

    kwargs = {
        "none": {},
        "fixed": {"max_norm": cfg.max_grad_norm},
        "zclip": {"alpha": cfg.zclip_alpha, "z_thresh": cfg.zclip_z_thresh,
                  "warmup_steps": cfg.zclip_warmup_steps},
        "adagc": {"lambda_rel": cfg.adagc_lambda_rel, "beta": cfg.adagc_beta,
                  "warmup_steps": cfg.adagc_warmup_steps, "warmup_max_norm": cfg.max_grad_norm},
        "autoclip": {"percentile": cfg.autoclip_percentile, "window": cfg.autoclip_window},
        "quantile": {"target_quantile": cfg.quantile_target, "learning_rate": cfg.quantile_lr},
    }[cfg.grad_clip]
    if cfg.grad_clip not in ("none", "fixed"):
        prefix = {"zclip": "zclip_", "adagc": "adagc_", "autoclip": "autoclip_", "quantile": "quantile_"}[
            cfg.grad_clip]
        ours = {"target_quantile": "quantile_target", "learning_rate": "quantile_lr"}
        try:
            build_grad_clipper(cfg.grad_clip, **kwargs)
        except ValueError as e:
            msg = str(e)
            for k in sorted(kwargs, key=len, reverse=True):
                msg = re.sub(rf"(?<![\w.]){re.escape(k)}\b", ours.get(k, prefix + k), msg)
            raise ValueError(msg) from None
    return kwargs


def validate_rollout_fields(cfg: Any) -> None:
    """Refuse off-policy rollout settings (:class:`RolloutConfig` fields) that cannot work together
    with the vLLM settings of ``cfg`` (an ``OffPolicyGRPOConfig`` or a namespace of its fields)."""
    rollout = RolloutConfig.from_object(cfg)
    if rollout.partial_rollouts or rollout.replay_ratio > 0:
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
