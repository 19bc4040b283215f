"""The adaclip-rl fields shared by every trainer config, as dataclass mixins derived from the registries.

Each setting is written once, where its owner is: ``BAPOConfig.target`` (default and help) is the
source of the trainer field ``bapo_target``, ``ZClip(alpha=0.97)`` with the registry's help of
``zclip_alpha``, ``RolloutConfig.partial_rollouts`` of ``partial_rollouts``. The mixins below get
one field per such setting (its *twin*: prefixed name, same default, same help), derived by
:func:`twins` from :data:`~adaclip_rl.losses.POLICY_LOSS_SPECS`,
:data:`~adaclip_rl.gradclip.GRAD_CLIPPER_SPECS`, :data:`~adaclip_rl.optim.registry.OPTIMIZER_SPECS`
and :class:`~adaclip_rl.rollout.RolloutConfig`, and written out by ``scripts/gen_fields.py`` to
:mod:`adaclip_rl.trainers.generated_fields` (committed, so that grep, IDEs and type checkers see
every field; a test fails while it is not current). A newly registered loss or clipper gets its
fields by running that script, without an edit here.

``AdaClipGRPOConfig`` (TRL's ``GRPOConfig``) and ``AdaClipAsyncGRPOConfig`` (TRL's
``AsyncGRPOConfig``) inherit :class:`AdaClipFields`; ``OffPolicyGRPOConfig`` adds :class:`RolloutFields`.
Imports no TRL (the recipe pre-check reads these fields before TRL is imported).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

from ..gradclip import GRAD_CLIPPER_SPECS, GradClipper, GradClipperSpec, get_grad_clipper_spec
from ..losses import POLICY_LOSS_SPECS, PolicyLossSpec, get_policy_loss_spec
from ..optim.registry import OPTIMIZER_SPECS, OptimizerSpec, get_optimizer_spec
from ..rollout.config import RATIO_ANCHORS, RolloutConfig
from . import field_checks
from .generated_fields import AdaClipTwinFields, RolloutTwinFields

__all__ = ["ROLLOUT_FIELDS_FROM_TRL", "AdaClipFields", "ChoiceFields", "RolloutFields", "twins"]

Twin = tuple[str, Any, Field]  # trainer field name, type, dataclasses.field(default=..., metadata={"help": ...})


def _trainer_type(tp: Any) -> Any:
    """A ``Literal[...]`` becomes ``str`` (the config checks the choice and names the field)."""
    return str if typing.get_origin(tp) is Literal else tp


def _twin(name: str, tp: Any, default: Any, help_text: str) -> Twin:
    return name, _trainer_type(tp), field(default=default, metadata={"help": help_text})


def loss_twins() -> Iterator[Twin]:
    """A twin of every field of every registered policy loss's config (not those it takes from TRL)."""
    for spec in POLICY_LOSS_SPECS.values():
        hints = typing.get_type_hints(spec.config_cls)
        for f in spec.own_fields():
            yield _twin(spec.trainer_field(f.name), hints[f.name], f.default, f.metadata["help"])


def clipper_twins() -> Iterator[Twin]:
    """A twin of every constructor argument a registered gradient clipper exposes."""
    for spec in GRAD_CLIPPER_SPECS.values():
        if not spec.params:
            continue
        defaults, types = spec.param_defaults(), spec.param_types()
        for param, help_text in spec.params.items():
            yield _twin(spec.trainer_field(param), types[param], defaults[param], help_text)


def optimizer_twins() -> Iterator[Twin]:
    """A twin of every field of every registered optimizer's config (``stable_spam_gamma1``)."""
    for spec in OPTIMIZER_SPECS.values():
        if spec.config_cls is None:
            continue
        hints = typing.get_type_hints(spec.config_cls)
        for f in spec.own_fields():
            yield _twin(spec.trainer_field(f.name), hints[f.name], f.default, f.metadata["help"])


ROLLOUT_FIELDS_FROM_TRL = ("max_completion_length", "seed")
"""``RolloutConfig`` fields a TRL config already has (the trainer passes its own)."""
ROLLOUT_ANCHOR_HELP = (
    f"{['auto', *RATIO_ANCHORS]}: as RolloutConfig.ratio_anchor; 'auto': 'behaviour' for a policy loss whose "
    "paper clips the ratio to the sampling policy (bapo, archer), 'proximal' otherwise (grpo)."
)


def rollout_twins() -> Iterator[Twin]:
    """A twin of every :class:`RolloutConfig` field, except those TRL has; ``ratio_anchor`` gets the
    trainer's ``"auto"`` (resolved from the policy loss by :func:`field_checks.resolved_ratio_anchor`)."""
    hints = typing.get_type_hints(RolloutConfig)
    for f in fields(RolloutConfig):
        if f.name in ROLLOUT_FIELDS_FROM_TRL:
            continue
        if f.name == "ratio_anchor":
            yield _twin(f.name, hints[f.name], "auto", ROLLOUT_ANCHOR_HELP)
        else:
            yield _twin(f.name, hints[f.name], f.default, f.metadata["help"])


def twins(*sources: Callable[[], Iterator[Twin]]) -> list[Twin]:
    """The twins of ``sources``; a name given twice is an error (one twin per setting)."""
    found: list[Twin] = [t for source in sources for t in source()]
    names = [name for name, _, _ in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise TypeError(f"fields {duplicated} would be defined twice")
    return found


@dataclass
class ChoiceFields:
    """The three hand-written choices; the twins of the chosen loss, clipper and optimizer follow
    them (:class:`AdaClipFields` lists this base last, so its fields come first)."""

    policy_loss: str = field(
        default="grpo",
        metadata={"help": "Per-token policy term: 'grpo' (PPO clip with epsilon/epsilon_high), 'bapo' "
                  "(BAPO, arXiv 2510.18927) or 'archer' (Archer, arXiv 2507.15778)."},
    )
    grad_clip: str = field(
        default="fixed",
        metadata={"help": "Gradient clipping: 'none', 'fixed' (TRL/transformers max_grad_norm), 'zclip', 'adagc', "
                  "'autoclip' or 'quantile'. Adaptive modes keep max_grad_norm > 0 only as the switch."},
    )

    optimizer: str = field(
        default="adamw",
        metadata={"help": "Optimizer: 'adamw' (the Trainer's own, chosen by `optim`), 'spam' (SPAM, arXiv 2501.06842) "
                  "or 'stable_spam' (Stable-SPAM, arXiv 2502.17055); these take learning_rate, adam_beta1/2, "
                  "adam_epsilon and weight_decay, and their own spam_*/stable_spam_* fields."},
    )


@dataclass
class AdaClipFields(AdaClipTwinFields, ChoiceFields):
    """The policy-loss and gradient-clipping fields; mixed into a TRL config (which must come after
    it in the bases, so that TRL's fields come first and its ``__post_init__`` is reached by ``super``).

    Besides the choices of :class:`ChoiceFields`, one field per setting of the chosen loss or clipper
    (:class:`~adaclip_rl.trainers.generated_fields.AdaClipTwinFields`), grouped by prefix:
    ``bapo_*`` (:class:`~adaclip_rl.losses.BAPOConfig`), ``archer_*``
    (:class:`~adaclip_rl.losses.ArcherConfig`), ``dual_clip`` (grpo's), ``zclip_*``, ``adagc_*``,
    ``autoclip_*``, ``quantile_*`` (:mod:`adaclip_rl.gradclip`), ``spam_*``, ``stable_spam_*``
    (:mod:`adaclip_rl.optim`).
    """

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        """The registry's :class:`~adaclip_rl.optim.OptimizerSpec` of ``optimizer``."""
        return get_optimizer_spec(self.optimizer)

    @property
    def policy_loss_spec(self) -> PolicyLossSpec:
        """The registry's :class:`~adaclip_rl.losses.PolicyLossSpec` of ``policy_loss``."""
        return get_policy_loss_spec(self.policy_loss)

    @property
    def grad_clipper_spec(self) -> GradClipperSpec:
        """The registry's :class:`~adaclip_rl.gradclip.GradClipperSpec` of ``grad_clip``."""
        return get_grad_clipper_spec(self.grad_clip)

    def policy_loss_config(self) -> Any:
        """The :mod:`adaclip_rl.losses` config for ``policy_loss`` (raises ValueError naming our fields)."""
        return self.policy_loss_spec.config_from(self)

    def grad_clipper_kwargs(self) -> dict:
        """Keyword arguments for :func:`adaclip_rl.gradclip.build_grad_clipper` (validated there)."""
        return self.grad_clipper_spec.kwargs_from(self)

    def build_grad_clipper(self) -> GradClipper | None:
        """The adaptive clipper, or None where the Trainer clips (``fixed``) or nothing does (``none``)."""
        spec = self.grad_clipper_spec
        return spec.build_from(self) if spec.adaptive else None

    def validate_adaclip_fields(self) -> None:
        """Refuse invalid adaclip-rl fields, naming the field, the value and the allowed range."""
        field_checks.validate_adaclip_fields(self)


@dataclass
class RolloutFields(RolloutTwinFields):
    """The off-policy rollout fields: one twin per :class:`~adaclip_rl.rollout.RolloutConfig` field
    (partial rollouts, behaviour importance weights, staleness, replay;
    :class:`~adaclip_rl.trainers.generated_fields.RolloutTwinFields`)."""

    def rollout_config(self) -> RolloutConfig:
        """The validated :class:`RolloutConfig` (``ratio_anchor`` resolved; TRL's
        ``max_completion_length`` and ``seed``)."""
        return field_checks.rollout_config(self)

