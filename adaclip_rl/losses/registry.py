"""Policy losses by name, with one signature (the verl ``register_policy_loss`` pattern, extended).

A policy loss maps per-token inputs to a :class:`PolicyLossOutput`: the unaggregated ``(B, T)``
loss, a scalar ``extra_loss`` added after aggregation (Archer's per-class KL), the clip masks the
surrogate computed with the loss, and metrics as 0-d tensors (no host sync; callers ``.item()``
them when logging). Aggregation stays separate
(:func:`~adaclip_rl.losses.surrogate.aggregate_loss`), so every loss works with every mode.

The registry owns each loss (:class:`PolicyLossSpec`): its config dataclass, the prefix under which
a trainer config exposes the config's fields (``bapo_target`` for ``BAPOConfig.target``), what it
needs from the trainer (reference log-probs, entropies, per-token loss weights, a search per
optimizer update, the behaviour anchor) and the metrics it logs. A trainer asks the spec; it never
tests a loss's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Protocol

from torch import Tensor

from ..checks import FieldValueError, check_dual_clip, check_interval, check_non_negative, check_positive
from .archer import ArcherConfig, archer_loss
from .bapo import BAPOConfig, ReduceFn, bapo_search, bapo_select, bapo_statistic_weights, bapo_statistics
from .surrogate import ClipMasks, clip_fractions, clipped_surrogate_with_masks


@dataclass(frozen=True)
class GRPOClipConfig:
    """Plain PPO/GRPO clip: bounds ``[1 - epsilon_low, 1 + epsilon_high]`` (clip-higher when the
    two differ), optional dual-clip and INTELLECT-2 ``delta`` cap. Mirrors TRL's fields."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    dual_clip: float | None = field(
        default=None,
        metadata={"help": "Dual-clip constant c > 1 for negative advantages with policy_loss='grpo' (Ye et al. "
                  "2020). None disables it. BAPO and Archer have their own (bapo_dual_clip, archer_dual_clip)."},
    )
    delta: float | None = None

    def __post_init__(self) -> None:
        check_interval("epsilon_low", self.epsilon_low, 0, 1)
        check_non_negative("epsilon_high", self.epsilon_high)
        check_dual_clip("dual_clip", self.dual_clip)
        if self.delta is not None:
            check_positive("delta", self.delta)


@dataclass
class PolicyLossOutput:
    per_token_loss: Tensor
    extra_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    details: Any = None
    clip_masks: ClipMasks | None = None


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
        search_result: Any = None,
    ) -> PolicyLossOutput: ...


def _never(config: Any) -> bool:
    return False


def _loss_weights_as_is(config: Any, loss_weights: Tensor, mask: Tensor, live: Tensor | None = None) -> Tensor:
    return loss_weights


@dataclass(frozen=True)
class PolicyLossSpec:
    """Everything a trainer needs to know about a registered policy loss.

    Attributes:
        name: registry key (``policy_loss`` in a trainer config).
        fn: the loss (:class:`PolicyLossFn`).
        config_cls: its frozen config dataclass; each field carries ``metadata["help"]``.
        prefix: a trainer config exposes config field ``f`` as ``prefix + f`` (its twin).
        external: config fields that a trainer config takes from fields it already has (TRL's
            ``epsilon``, ``epsilon_high``, ``delta`` for ``grpo``), as config field -> trainer field.
        adapt: turns the collected trainer values into config arguments (``epsilon_high=None``
            means ``epsilon`` in TRL).
        reproduces_trl: the loss is TRL's own clip (so a ``loss_type`` outside the clip family may
            go to TRL's loss unchanged); any other loss needs a clip ``loss_type``.
        owns_ratio_bounds: the bounds come from the loss's own fields, so TRL's ``epsilon``,
            ``epsilon_high``, ``delta`` and the grpo ``dual_clip`` have no effect.
        clamps_log_ratio: clamp ``log r`` to [-20, 20] before ``exp`` (verl; BAPO and Archer code).
        anchors_to_behaviour: the paper clips the ratio to the policy that sampled the tokens
            (``ratio_anchor="auto"`` resolves to ``"behaviour"``).
        token_ratios_only: the loss is defined on per-token ratios only (Archer's per-token class
            bounds), not on one ratio per sequence (GSPO, ``importance_sampling_level="sequence"``).
        needs_entropy: the loss reads per-token entropies.
        needs_ref_logps: ``config -> bool``: reference log-probs are needed (a KL to the initial model).
        needs_old_entropies: ``config -> bool``: entropies of the policy that generated the batch.
        extra_loss_per_response: ``config -> bool``: ``extra_loss`` is a mean over the
            micro-batch's responses (Archer's KL with ``kl_aggregation="response"``), so a trainer
            whose micro-batches differ in size weighs it by the update's global response count.
        needs_loss_weights: the loss reads per-token weights (``weights``), which a trainer builds
            with ``statistic_weights(config, loss_weights, mask, live)`` from the weight the
            aggregated loss applies, the loss mask and where the ratio carries a gradient
            (:func:`~adaclip_rl.losses.ratio.clamp_log_ratio`).
        statistics, select: a search whose statistics a trainer may sum over an optimizer update's
            micro-batches and ranks (``config.searches_per_update``) before selecting once; the
            selected result goes to ``fn`` as ``search_result``.
        metrics: every metric name the loss may log.
    """

    name: str
    fn: PolicyLossFn
    config_cls: type
    prefix: str
    metrics: tuple[str, ...]
    external: Mapping[str, str] = field(default_factory=dict)
    adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    reproduces_trl: bool = False
    owns_ratio_bounds: bool = False
    clamps_log_ratio: bool = False
    anchors_to_behaviour: bool = False
    token_ratios_only: bool = False
    needs_entropy: bool = False
    needs_ref_logps: Callable[[Any], bool] = _never
    needs_old_entropies: Callable[[Any], bool] = _never
    extra_loss_per_response: Callable[[Any], bool] = _never
    needs_loss_weights: bool = False
    statistic_weights: Callable[..., Tensor] = _loss_weights_as_is
    statistics: Callable[..., Tensor] | None = None
    select: Callable[..., Any] | None = None

    def trainer_field(self, name: str) -> str:
        """The trainer config's name for config field ``name``."""
        return self.external.get(name, self.prefix + name)

    def own_fields(self) -> list[Field]:
        """The config's fields that a trainer config exposes as prefixed twins (not ``external``)."""
        return [f for f in fields(self.config_cls) if f.name not in self.external]

    def defaults(self) -> dict[str, Any]:
        """Trainer field -> default, for :meth:`own_fields`."""
        return {self.trainer_field(f.name): f.default for f in self.own_fields() if f.default is not MISSING}

    def config_from(self, source: Any) -> Any:
        """The loss config built from a trainer config's fields (or any object with them); a refused
        value raises :class:`~adaclip_rl.checks.FieldValueError` naming the trainer's field."""
        names = {f.name: self.trainer_field(f.name) for f in fields(self.config_cls)}
        kwargs = {name: getattr(source, trainer_name) for name, trainer_name in names.items()}
        if self.adapt is not None:
            kwargs = self.adapt(kwargs)
        try:
            try:
                return _build_config(self.config_cls, tuple(kwargs.items()))
            except TypeError:  # an unhashable value: built uncached, so that the config refuses it
                return self.config_cls(**kwargs)
        except FieldValueError as e:
            raise e.renamed(names) from None

    def searches_per_update(self, config: Any) -> bool:
        """A trainer runs :attr:`statistics` / :attr:`select` once per optimizer update."""
        return self.statistics is not None and bool(getattr(config, "searches_per_update", False))


@functools.lru_cache(maxsize=64)
def _build_config(config_cls: type, items: tuple[tuple[str, Any], ...]) -> Any:
    """One frozen config per distinct set of values: the checks in a trainer config's
    ``__post_init__`` and the trainer share the instance they build (refusals are not cached)."""
    return config_cls(**dict(items))


POLICY_LOSS_SPECS: dict[str, PolicyLossSpec] = {}
POLICY_LOSSES: dict[str, PolicyLossFn] = {}
POLICY_LOSS_CONFIGS: dict[str, type] = {}


def register_policy_loss(name: str, config_cls: type, *, prefix: str | None = None, metrics: tuple[str, ...] = (),
                         **needs: Any) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering ``fn`` under ``name`` with its config dataclass; ``prefix`` (default
    ``name + "_"``) and ``needs`` are the :class:`PolicyLossSpec` attributes."""

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSS_SPECS:
            raise ValueError(f"policy loss {name!r} is already registered")
        spec = PolicyLossSpec(name, fn, config_cls, f"{name}_" if prefix is None else prefix, metrics, **needs)
        POLICY_LOSS_SPECS[name] = spec
        POLICY_LOSSES[name] = fn
        POLICY_LOSS_CONFIGS[name] = config_cls
        return fn

    return deco


def get_policy_loss_spec(name: str) -> PolicyLossSpec:
    """The :class:`PolicyLossSpec` registered under ``name`` (ValueError listing the known names)."""
    try:
        return POLICY_LOSS_SPECS[name]
    except KeyError:
        raise FieldValueError(f"{{0}} must be one of {sorted(POLICY_LOSS_SPECS)}; got {name!r}", "policy_loss") \
            from None


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered under ``name`` (ValueError listing the known names)."""
    return get_policy_loss_spec(name).fn


def _grpo_from_trl(kwargs: dict[str, Any]) -> dict[str, Any]:
    """TRL's ``epsilon_high=None`` means ``epsilon``."""
    if kwargs["epsilon_high"] is None:
        kwargs["epsilon_high"] = kwargs["epsilon_low"]
    return kwargs


def _clip_metrics(prefix: str, masks: ClipMasks, mask: Tensor, dtype) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v for k, v in clip_fractions(masks, mask, dtype).items()}


@register_policy_loss(
    "grpo", GRPOClipConfig, prefix="", metrics=("clipfrac/high", "clipfrac/low", "clipfrac/dual"),
    external={"epsilon_low": "epsilon", "epsilon_high": "epsilon_high", "delta": "delta"}, adapt=_grpo_from_trl,
    reproduces_trl=True,
)
def grpo_policy_loss(ratio, advantages, mask, *, config: GRPOClipConfig, **_: Any) -> PolicyLossOutput:
    """PPO/GRPO clipped surrogate with fixed bounds (clip-higher, dual-clip optional)."""
    low, high = 1.0 - config.epsilon_low, 1.0 + config.epsilon_high
    loss, masks = clipped_surrogate_with_masks(ratio, advantages, low, high, dual_clip=config.dual_clip,
                                               ratio_cap=config.delta)
    return PolicyLossOutput(loss, metrics=_clip_metrics("clipfrac/", masks, mask, ratio.dtype), clip_masks=masks)


@register_policy_loss(
    "bapo", BAPOConfig, owns_ratio_bounds=True, clamps_log_ratio=True, anchors_to_behaviour=True,
    needs_loss_weights=True, statistic_weights=bapo_statistic_weights, statistics=bapo_statistics,
    select=bapo_select,
    metrics=("bapo/clip_low", "bapo/clip_high", "bapo/pos_share_before", "bapo/pos_share_after",
             "bapo/pos_neg_ratio_before", "bapo/pos_neg_ratio_after", "bapo/target_reached", "bapo/iterations",
             "bapo/clipfrac_high", "bapo/clipfrac_low", "bapo/clipfrac_dual"),
)
def bapo_policy_loss(
    ratio, advantages, mask, *, config: BAPOConfig, reduce_fn=None, weights=None, search_result=None, **_: Any
) -> PolicyLossOutput:
    """BAPO (arXiv 2510.18927): adaptive asymmetric bounds searched per call (Algorithm 1), then
    the clipped surrogate with them (Eq. 5).

    ``weights``: the search statistic's per-token weights (``mask`` if None); a trainer builds them
    with :func:`~adaclip_rl.losses.bapo.bapo_statistic_weights` from the weight the aggregated loss
    applies (aggregation weight x importance weights x masks), the response mask and where the
    ratio carries a gradient.
    ``search_result``: bounds already searched (one search per optimizer update); no search then."""
    bounds = search_result if search_result is not None else bapo_search(
        ratio, advantages, mask if weights is None else weights, config, reduce_fn=reduce_fn)
    loss, masks = clipped_surrogate_with_masks(ratio, advantages, *bounds.bounds(ratio.dtype),
                                               dual_clip=config.dual_clip)
    metrics = {
        "bapo/clip_low": bounds.clip_low,
        "bapo/clip_high": bounds.clip_high,
        "bapo/pos_share_before": bounds.share_before,
        "bapo/pos_share_after": bounds.share_after,
        "bapo/pos_neg_ratio_before": bounds.pos_neg_before.clamp(max=1e6),
        "bapo/pos_neg_ratio_after": bounds.pos_neg_after.clamp(max=1e6),
        "bapo/target_reached": bounds.reached.float(),
        "bapo/iterations": bounds.index.float(),
        **_clip_metrics("bapo/clipfrac_", masks, mask, ratio.dtype),
    }
    return PolicyLossOutput(loss, metrics=metrics, details=bounds, clip_masks=masks)


@register_policy_loss(
    "archer", ArcherConfig, owns_ratio_bounds=True, clamps_log_ratio=True, anchors_to_behaviour=True,
    token_ratios_only=True, needs_entropy=True, needs_ref_logps=lambda config: config.uses_kl,
    needs_old_entropies=lambda config: config.entropy_source == "old",
    extra_loss_per_response=lambda config: config.kl_aggregation == "response",
    metrics=("archer/high_frac", "archer/clipfrac_high", "archer/clipfrac_low", "archer/clipfrac_pos",
             "archer/clipfrac_neg", "archer/kl_low", "archer/kl_high", "archer/entropy_threshold"),
)
def archer_policy_loss(
    ratio, advantages, mask, *, config: ArcherConfig, entropy=None, logp=None, ref_logp=None, **_: Any
) -> PolicyLossOutput:
    """Archer (arXiv 2507.15778): entropy-classed clip widths and per-class KL (Eq. 5)."""
    if entropy is None:
        raise ValueError("the archer policy loss needs per-token entropy")
    loss, classes = archer_loss(ratio, advantages, mask, entropy, config, logp=logp, ref_logp=ref_logp)
    metrics = {
        "archer/high_frac": classes.high_frac,
        "archer/clipfrac_high": classes.clipfrac_high,
        "archer/clipfrac_low": classes.clipfrac_low,
        "archer/clipfrac_pos": classes.clipfrac_pos,
        "archer/clipfrac_neg": classes.clipfrac_neg,
        "archer/kl_low": classes.kl_low,
        "archer/kl_high": classes.kl_high,
        "archer/entropy_threshold": classes.tau_mean,
    }
    return PolicyLossOutput(loss, extra_loss=classes.kl_term if config.uses_kl else None, metrics=metrics,
                            details=classes)
