"""Checks of the adaclip-rl config fields, as plain functions (no TRL import).

:class:`~adaclip_rl.trainers.config.AdaClipGRPOConfig` calls them in ``__post_init__``; the recipe
pre-check of ``adaclip-rl train`` (:mod:`adaclip_rl.trainers.recipe_check`) calls the same
functions on the YAML values before TRL is imported, so a bad value is reported in about a second.
Every message names the field, the value and the allowed range.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from ..gradclip import GRAD_CLIPPERS
from ..losses import POLICY_LOSSES, ArcherConfig, BAPOConfig, GRPOClipConfig
from ..rollout.config import RolloutConfig

CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
BAPO_SCOPES = ("update", "micro_batch")
ARCHER_KL_AGGREGATIONS = ("response", "token")
_BAPO_DEFAULTS = {
    "bapo_target": 0.4, "bapo_low_start": 0.6, "bapo_low_max": 0.9, "bapo_low_step": 0.02, "bapo_high_start": 1.2,
    "bapo_high_max": 3.0, "bapo_high_step": 0.05, "bapo_contribution": "grad", "bapo_dual_clip": 3.0,
    "bapo_scope": "update",
}
_ARCHER_DEFAULTS = {
    "archer_quantile": 0.8, "archer_high_clip": 0.5, "archer_low_clip": 0.2, "archer_high_kl": 0.0,
    "archer_low_kl": 0.001, "archer_kl_estimator": "k3", "archer_dual_clip": 10.0, "archer_entropy_source": "current",
    "archer_kl_aggregation": "response",
}


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
    if getattr(cfg, "bapo_scope", "update") not in BAPO_SCOPES:
        raise ValueError(f"bapo_scope must be one of {BAPO_SCOPES}; got {cfg.bapo_scope!r}")
    if getattr(cfg, "archer_kl_aggregation", "response") not in ARCHER_KL_AGGREGATIONS:
        raise ValueError(f"archer_kl_aggregation must be one of {ARCHER_KL_AGGREGATIONS}; got "
                         f"{cfg.archer_kl_aggregation!r}")
    check_fields_without_effect(cfg)
    policy_loss_config(cfg)  # validates the policy-loss fields
    grad_clipper_kwargs(cfg)


_WARNED: set[tuple[str, ...]] = set()


def check_fields_without_effect(cfg: Any) -> None:
    """Settings that the chosen ``policy_loss`` would silently ignore: refused when they change the
    loss's shape (``delta``, ``dual_clip``, ``epsilon_high`` under BAPO/Archer, whose bounds come
    from ``bapo_*``/``archer_*``), warned once (naming them) when they only keep a non-default
    value (``epsilon`` under BAPO/Archer; ``bapo_*`` / ``archer_*`` fields of the other loss)."""
    loss = cfg.policy_loss
    if loss in ("bapo", "archer"):
        own = "bapo_dual_clip" if loss == "bapo" else "archer_dual_clip"
        refused = {
            "delta": "the INTELLECT-2 cap of the unclipped ratio applies to policy_loss='grpo' only",
            "dual_clip": f"use {own}",
            "epsilon_high": f"the ratio bounds come from the {loss}_* fields",
        }
        for name, why in refused.items():
            if getattr(cfg, name, None) is not None:
                raise ValueError(f"{name} has no effect with policy_loss={loss!r} ({why}); got {getattr(cfg, name)!r}, "
                                 "leave it unset (None)")
    ignored = []
    if loss in ("bapo", "archer") and getattr(cfg, "epsilon", 0.2) != 0.2:
        ignored.append("epsilon")
    defaults = {**_BAPO_DEFAULTS, **_ARCHER_DEFAULTS}
    for name, default in defaults.items():
        if not name.startswith(f"{loss}_") and getattr(cfg, name, default) != default:
            ignored.append(name)
    if ignored and tuple(ignored) not in _WARNED:
        _WARNED.add(tuple(ignored))
        warnings.warn(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with "
                      f"policy_loss={loss!r}", UserWarning, stacklevel=4)


def validate_after_trl(cfg: Any) -> None:
    """Checks that need TRL's resolved fields (``steps_per_generation``)."""
    if cfg.policy_loss == "bapo" and cfg.bapo_scope == "update":
        spg, ga = cfg.steps_per_generation, cfg.gradient_accumulation_steps
        if spg is not None and spg % ga:
            raise ValueError(
                f"steps_per_generation ({spg}) must be a multiple of gradient_accumulation_steps ({ga}) with "
                "bapo_scope='update': the bound search of an update reads every micro-batch of its window, so "
                "the window must lie within one generation batch; or set bapo_scope='micro_batch'")

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
        names = ["quantile", "high_clip", "low_clip", "high_kl", "low_kl", "kl_estimator", "dual_clip",
                 "kl_aggregation"]
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


def resolved_ratio_anchor(cfg: Any) -> str:
    """``ratio_anchor`` with ``"auto"`` resolved: ``"behaviour"`` for BAPO and Archer (both papers
    clip the ratio to the policy that sampled the tokens), ``"proximal"`` otherwise."""
    anchor = getattr(cfg, "ratio_anchor", "auto")
    if anchor == "auto":
        behaviour = cfg.policy_loss in ("bapo", "archer") and getattr(cfg, "use_behaviour_logprobs", True)
        return "behaviour" if behaviour else "proximal"
    return anchor


def validate_rollout_fields(cfg: Any) -> None:
    """Refuse off-policy rollout settings (:class:`RolloutConfig` fields) that cannot work together
    with the vLLM settings of ``cfg`` (an ``OffPolicyGRPOConfig`` or a namespace of its fields)."""
    rollout = RolloutConfig.from_object(cfg, ratio_anchor=resolved_ratio_anchor(cfg))
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
