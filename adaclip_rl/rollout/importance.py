"""Importance correction against the behaviour policy, and staleness in policy versions. Pure torch.

Notation (per token t of a completion):

* ``logp_behaviour``: log-prob under the policy that *sampled* the token (vLLM processed
  log-probs, recorded at generation time, possibly by different versions within one sequence);
* ``logp_old``: log-prob under the proximal policy pi_old (the trainer's recompute with the
  current weights when the batch is assembled; TRL's ``old_per_token_logps``);
* version: weight pushes into the engine before the token was generated (the policy version).

Truncated importance sampling (TIS; Yao et al. 2025 "Your efficient RL framework secretly brings
you off-policy RL training"; slime ``--use-tis``, verl ``rollout_is_threshold``)::

    w_t = min(exp(logp_old_t - logp_behaviour_t), cap)                      (token level)
    w   = min(exp(sum_t (logp_old_t - logp_behaviour_t)), cap)              (sequence level)
    w   = min(exp(mean_t (logp_old_t - logp_behaviour_t)), cap)             (sequence_mean level)

The sum grows with the length, so at ``sequence`` level long traces are capped almost always; the
mean (a per-token geometric mean, as GSPO normalises its sequence ratio) keeps the weight's scale
independent of the length.

Masking mode (ICEPOP / MIS; OpenRLHF ``icepop``, AReaL ``rejection_sampling action=mask``)
instead sets ``w = 0`` where the raw ratio exceeds ``cap`` and ``w = raw ratio`` elsewhere.
Together with a PPO/BAPO ratio pi_theta / pi_old this is AReaL's decoupled objective
(arXiv 2505.24298, Eq. 5): the clip acts on the proximal ratio, the behaviour weight corrects for
the policy that actually generated the data.

Staleness of a token = ``current_version - token_version``, in weight pushes (policy versions). With ``level="sequence"`` a sample's
staleness is that of its oldest token (a partial rollout is as stale as its first segment).
Beyond ``max_staleness``: ``drop`` gives weight 0 (TRL AsyncGRPO drops such samples at
consumption, AReaL prevents them at admission), ``downweight`` gives
``decay ** (staleness - max_staleness)``. Dropped tokens stay in the loss denominator (AReaL keeps
the original token count so that masking does not inflate the gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checks import check_choice
from .config import IS_LEVELS, IS_MODES, STALENESS_LEVELS, STALENESS_POLICIES, RolloutConfig

_MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: keeps the raw ratio finite before truncation (verl clamps at +-20)


def token_staleness(token_versions: Tensor, current_version: int | Tensor, mask: Tensor) -> Tensor:
    """Staleness in versions, ``(B, T)`` long; 0 on padding (``mask == 0``).

    A valid token newer than ``current_version`` is an error (``ValueError``), never clamped to 0:
    it means the version counter went back (e.g. a resume that lost it), and clamping would let such
    data bypass the staleness bound and replay expiry.

    Args:
        token_versions: ``(B, T)`` integer versions (padding may hold any value, e.g. -1).
        current_version: the trainer's current policy version (weight pushes).
        mask: ``(B, T)`` 0/1 or bool validity mask.
    """
    staleness = torch.as_tensor(current_version, device=token_versions.device) - token_versions.long()
    staleness = torch.where(mask.bool(), staleness, torch.zeros_like(staleness))
    if staleness.numel() and bool((staleness < 0).any()):
        raise ValueError(
            f"negative staleness: tokens of version {int(token_versions[mask.bool()].max())} are newer than the "
            f"current policy version {int(current_version)} (the version counter went back: a resume must restore it)")
    return staleness


def sequence_staleness(staleness: Tensor, mask: Tensor) -> Tensor:
    """Per-sample staleness = staleness of its oldest valid token, ``(B,)`` long (0 if empty)."""
    return torch.where(mask.bool(), staleness, torch.zeros_like(staleness)).amax(dim=-1)


def importance_weights(
    logp_old: Tensor,
    logp_behaviour: Tensor,
    mask: Tensor,
    *,
    cap: float = 2.0,
    level: str = "token",
    mode: str = "truncate",
) -> tuple[Tensor, Tensor, Tensor]:
    """Behaviour importance weights (TIS or masking).

    Args:
        logp_old: ``(B, T)`` float, proximal-policy log-probs (no grad needed; detached here).
        logp_behaviour: ``(B, T)`` float, behaviour log-probs; NaN entries (tokens the engine could
            not score) get log-ratio 0, i.e. weight 1.
        mask: ``(B, T)`` validity mask.
        cap: truncation / masking threshold (>= 1).
        level: ``"token"``, ``"sequence"`` (sum of token log-ratios, TRL's ``sequence_*`` modes) or
            ``"sequence_mean"`` (mean of the valid tokens' log-ratios).
        mode: ``"truncate"`` (``min(r, cap)``) or ``"mask"`` (``r * 1[r <= cap]``).

    Returns:
        ``(weights, raw_ratio, capped)``, each ``(B, T)``: the weights (0 on padding), the raw
        ratio before truncation, and a bool marking entries where the raw ratio exceeded ``cap``.
    """
    check_choice("level", level, IS_LEVELS)
    check_choice("mode", mode, IS_MODES)
    m = mask.bool()
    diff = (logp_old.detach().float() - logp_behaviour.detach().float()).nan_to_num(0.0, 0.0, 0.0)
    diff = torch.where(m, diff, torch.zeros_like(diff))
    if level == "sequence":
        diff = diff.sum(dim=-1, keepdim=True).expand_as(diff)
    elif level == "sequence_mean":
        count = m.sum(dim=-1, keepdim=True).clamp_min(1)
        diff = (diff.sum(dim=-1, keepdim=True) / count).expand_as(diff)
    raw = diff.clamp(max=_MAX_LOG_RATIO).exp()
    capped = (raw > cap) & m
    if mode == "truncate":
        w = raw.clamp(max=cap)
    else:
        w = torch.where(capped, torch.zeros_like(raw), raw)
    w = torch.where(m, w, torch.zeros_like(w))
    return w, raw, capped


def staleness_weights(
    staleness: Tensor,
    mask: Tensor,
    *,
    max_staleness: int | None,
    policy: str = "drop",
    decay: float = 0.5,
    level: str = "sequence",
) -> Tensor:
    """Weights ``(B, T)`` float from staleness: 1 within ``max_staleness``, else 0 or decayed.

    Args:
        staleness: ``(B, T)`` token staleness (from :func:`token_staleness`).
        mask: ``(B, T)`` validity mask; padding gets weight 0.
        max_staleness: allowed staleness in versions; None disables the bound (all ones).
        policy: ``"drop"`` (weight 0) or ``"downweight"`` (``decay ** excess``).
        decay: gamma for ``downweight``, in [0, 1].
        level: ``"sequence"`` uses the oldest token's staleness for every token of a sample;
            ``"token"`` uses each token's own.
    """
    check_choice("policy", policy, STALENESS_POLICIES)
    check_choice("level", level, STALENESS_LEVELS)
    ones = mask.bool().to(torch.float32)
    if max_staleness is None:
        return ones
    counted = staleness
    if level == "sequence":
        counted = sequence_staleness(staleness, mask).unsqueeze(-1).expand_as(staleness)
    excess = (counted - max_staleness).clamp_min(0).to(torch.float32)
    if policy == "drop":
        weights = (excess == 0).to(torch.float32)
    else:
        weights = torch.pow(torch.full_like(excess, float(decay)), excess)
    return weights * ones


@dataclass
class BehaviourCorrection:
    """Result of :func:`behaviour_correction`.

    Attributes:
        weights: ``(B, T)`` per-token multiplier for the policy loss (IS weight x staleness weight).
        is_weights: ``(B, T)`` importance weights alone.
        staleness_weights: ``(B, T)`` staleness weights alone.
        staleness: ``(B, T)`` token staleness in versions.
        metrics: scalar float metrics (``rollout/...``).
    """

    weights: Tensor
    is_weights: Tensor
    staleness_weights: Tensor
    staleness: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def behaviour_correction(
    logp_old: Tensor | None,
    logp_behaviour: Tensor,
    token_versions: Tensor,
    current_version: int,
    mask: Tensor,
    config: RolloutConfig,
) -> BehaviourCorrection:
    """Combine the importance weight and the staleness weight, and compute the ``rollout/`` metrics.

    With ``config.ratio_anchor == "behaviour"`` (or ``logp_old is None``) the importance weight is
    1: the loss's own ratio is then taken against ``logp_behaviour`` directly.

    Shapes: every tensor argument is ``(B, T)``; ``mask`` is 0/1 or bool.
    Metrics (means over valid tokens of this batch): ``rollout/staleness_mean``,
    ``rollout/staleness_max``, ``rollout/stale_frac`` (beyond ``max_staleness``),
    ``rollout/staleness_weight_mean``, ``rollout/is_weight_mean|min|max``, ``rollout/is_capped_frac``.
    """
    valid = mask.bool()
    # 1. staleness of every token, and its weight (1 within max_staleness, else 0 or decayed)
    staleness = token_staleness(token_versions, current_version, valid)
    stale_weights = staleness_weights(
        staleness,
        valid,
        max_staleness=config.max_staleness,
        policy=config.staleness_policy,
        decay=config.staleness_decay,
        level=config.staleness_level,
    )
    # 2. importance weight pi_old / pi_behaviour (truncated or masked); 1 when the ratio is anchored on the behaviour
    if logp_old is None or config.ratio_anchor == "behaviour":
        is_weights = valid.to(torch.float32)
        capped = torch.zeros_like(valid)
    else:
        is_weights, _, capped = importance_weights(
            logp_old,
            logp_behaviour,
            valid,
            cap=config.behaviour_is_cap,
            level=config.behaviour_is_level,
            mode=config.behaviour_is_mode,
        )
    # 3. the loss's per-token factor, and the metrics
    return BehaviourCorrection(
        weights=is_weights * stale_weights,
        is_weights=is_weights,
        staleness_weights=stale_weights,
        staleness=staleness,
        metrics=_correction_metrics(staleness, stale_weights, is_weights, capped, valid, config),
    )


def _correction_metrics(staleness: Tensor, stale_weights: Tensor, is_weights: Tensor, capped: Tensor, valid: Tensor,
                        config: RolloutConfig) -> dict[str, float]:
    """The ``rollout/`` metrics of :func:`behaviour_correction` (means over valid tokens), in one host sync."""
    n = valid.sum().clamp_min(1)
    valid_is = is_weights[valid]
    if config.max_staleness is None:
        stale = torch.zeros_like(valid)
    elif config.staleness_level == "sequence":
        stale = (sequence_staleness(staleness, valid) > config.max_staleness).unsqueeze(-1) & valid
    else:
        stale = (staleness > config.max_staleness) & valid
    stats = torch.stack(
        [
            staleness.sum().float() / n,
            staleness.max().float() if staleness.numel() else is_weights.new_tensor(0.0),
            stale.sum().float() / n,
            stale_weights.sum() / n,
            is_weights.sum() / n,
            valid_is.min() if valid_is.numel() else is_weights.new_tensor(1.0),
            valid_is.max() if valid_is.numel() else is_weights.new_tensor(1.0),
            capped.sum().float() / n,
        ]
    ).tolist()  # one host sync
    keys = (
        "rollout/staleness_mean",
        "rollout/staleness_max",
        "rollout/stale_frac",
        "rollout/staleness_weight_mean",
        "rollout/is_weight_mean",
        "rollout/is_weight_min",
        "rollout/is_weight_max",
        "rollout/is_capped_frac",
    )
    return dict(zip(keys, stats, strict=True))
