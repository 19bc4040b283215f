"""Policy losses by name, with one signature (the verl ``register_policy_loss`` pattern).

A policy loss maps per-token inputs to a :class:`PolicyLossOutput`: the unaggregated ``(B, T)``
loss, a scalar ``extra_loss`` added after aggregation (Archer's per-class KL) and metrics as 0-d
tensors (no host sync; callers ``.item()`` them when logging). Aggregation stays separate
(:func:`~adaclip_rl.losses.surrogate.aggregate_loss`), so every loss works with every mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from ._validate import check_positive
from .archer import ArcherConfig, archer_loss
from .bapo import BAPOConfig, ReduceFn, bapo_loss
from .surrogate import clip_fractions, clipped_surrogate


@dataclass(frozen=True)
class GRPOClipConfig:
    """Plain PPO/GRPO clip: bounds ``[1 - epsilon_low, 1 + epsilon_high]`` (clip-higher when the
    two differ), optional dual-clip and INTELLECT-2 ``delta`` cap. Mirrors TRL's fields."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    dual_clip: float | None = None
    delta: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon_low <= 1.0:
            raise ValueError(f"epsilon_low must be in [0, 1]; got {self.epsilon_low!r}")
        if not (math.isfinite(self.epsilon_high) and self.epsilon_high >= 0.0):
            raise ValueError(f"epsilon_high must be a finite number >= 0; got {self.epsilon_high!r}")
        if self.dual_clip is not None and not (math.isfinite(self.dual_clip) and self.dual_clip > 1.0):
            raise ValueError(f"dual_clip must be > 1 or None; got {self.dual_clip!r}")
        if self.delta is not None:
            check_positive("delta", self.delta)


@dataclass
class PolicyLossOutput:
    per_token_loss: Tensor
    extra_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    details: Any = None


class PolicyLossFn(Protocol):
    def __call__(
        self,
        ratio: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        config: Any,
        logp: Tensor | None = None,
        ref_logp: Tensor | None = None,
        entropy: Tensor | None = None,
        reduce_fn: ReduceFn | None = None,
        weights: Tensor | None = None,
    ) -> PolicyLossOutput: ...


POLICY_LOSSES: dict[str, PolicyLossFn] = {}
POLICY_LOSS_CONFIGS: dict[str, type] = {}


def register_policy_loss(name: str, config_cls: type) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering ``fn`` under ``name`` with its config dataclass."""

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        POLICY_LOSS_CONFIGS[name] = config_cls
        return fn

    return deco


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered under ``name`` (ValueError listing the known names)."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"policy_loss must be one of {sorted(POLICY_LOSSES)}; got {name!r}") from None


@register_policy_loss("grpo", GRPOClipConfig)
def grpo_policy_loss(ratio, advantages, mask, *, config: GRPOClipConfig, **_: Any) -> PolicyLossOutput:
    """PPO/GRPO clipped surrogate with fixed bounds (clip-higher, dual-clip optional)."""
    low, high = 1.0 - config.epsilon_low, 1.0 + config.epsilon_high
    loss = clipped_surrogate(ratio, advantages, low, high, dual_clip=config.dual_clip, ratio_cap=config.delta)
    fr = clip_fractions(ratio.detach(), advantages, mask, low, high, dual_clip=config.dual_clip)
    return PolicyLossOutput(loss, metrics={f"clipfrac/{k}": v for k, v in fr.items()})


@register_policy_loss("bapo", BAPOConfig)
def bapo_policy_loss(
    ratio, advantages, mask, *, config: BAPOConfig, reduce_fn=None, weights=None, bapo_result=None, **_: Any
) -> PolicyLossOutput:
    """BAPO (arXiv 2510.18927): adaptive asymmetric bounds searched per call.

    ``weights``: per-token weight of each token's loss in the aggregated loss (aggregation weight x
    importance weights x masks); the search statistic uses it (``mask`` if None).
    ``bapo_result``: bounds already searched (one search per optimizer update); no search then."""
    loss, res = bapo_loss(ratio, advantages, mask if weights is None else weights, config, reduce_fn=reduce_fn,
                          result=bapo_result)
    fr = clip_fractions(ratio.detach(), advantages, mask, res.clip_low, res.clip_high, dual_clip=config.dual_clip)
    metrics = {
        "bapo/clip_low": res.clip_low,
        "bapo/clip_high": res.clip_high,
        "bapo/pos_share_before": res.share_before,
        "bapo/pos_share_after": res.share_after,
        "bapo/pos_neg_ratio_before": res.pos_neg_before.clamp(max=1e6),
        "bapo/pos_neg_ratio_after": res.pos_neg_after.clamp(max=1e6),
        "bapo/target_reached": res.reached.float(),
        "bapo/iterations": res.index.float(),
        **{f"bapo/clipfrac_{k}": v for k, v in fr.items()},
    }
    return PolicyLossOutput(loss, metrics=metrics, details=res)


@register_policy_loss("archer", ArcherConfig)
def archer_policy_loss(
    ratio, advantages, mask, *, config: ArcherConfig, entropy=None, logp=None, ref_logp=None, **_: Any
) -> PolicyLossOutput:
    """Archer (arXiv 2507.15778): entropy-classed clip widths and per-class KL."""
    if entropy is None:
        raise ValueError("the archer policy loss needs per-token entropy")
    loss, res = archer_loss(ratio, advantages, mask, entropy, config, logp=logp, ref_logp=ref_logp)
    metrics = {
        "archer/high_frac": res.high_frac,
        "archer/clipfrac_high": res.clipfrac_high,
        "archer/clipfrac_low": res.clipfrac_low,
        "archer/kl_low": res.kl_low,
        "archer/kl_high": res.kl_high,
        "archer/entropy_threshold": res.tau_mean,
    }
    return PolicyLossOutput(loss, extra_loss=res.kl_term if config.uses_kl else None, metrics=metrics, details=res)
