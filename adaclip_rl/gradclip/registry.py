"""Name -> clipper, for configs (``grad_clip: none | fixed | zclip | adagc | autoclip | quantile``).

The registry owns each clipper (:class:`GradClipperSpec`): its class, the constructor arguments a
trainer config exposes (each as one prefixed field: ``zclip_alpha`` for ``ZClip(alpha=...)``,
default from the constructor's signature, help written here once), the arguments taken from
``TrainingArguments.max_grad_norm``, and whether the trainer keeps its own clipping for it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checks import FieldValueError
from .adagc import AdaGC
from .autoclip import AutoClip
from .base import GradClipper
from .fixed import FixedClip
from .quantile import QuantileClip
from .zclip import ZClip


@dataclass(frozen=True)
class GradClipperSpec:
    """A registered clipper.

    Attributes:
        name: registry key (``grad_clip`` in a trainer config).
        cls: the :class:`GradClipper` subclass; ``None`` for ``"none"`` (no clipper).
        prefix: a trainer config exposes argument ``a`` of :attr:`params` as ``prefix + a``.
        params: constructor argument -> help of its trainer field.
        renamed: arguments whose trainer field is not ``prefix + a`` (``quantile_target``).
        from_max_grad_norm: arguments set from ``TrainingArguments.max_grad_norm``.
        trainer_clips: the Trainer's own ``clip_grad_norm_`` clips (``"fixed"``): no clipper object.
        measures_only: no clipping at all, only the norm is measured and logged (``"none"``).
    """

    name: str
    cls: type[GradClipper] | None
    prefix: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)
    from_max_grad_norm: tuple[str, ...] = ()
    trainer_clips: bool = False
    measures_only: bool = False

    @property
    def adaptive(self) -> bool:
        """An adaclip-rl clipper replaces the Trainer's clipping (``max_grad_norm > 0`` is its switch)."""
        return not (self.trainer_clips or self.measures_only)

    def trainer_field(self, param: str) -> str:
        """The trainer config's name for constructor argument ``param``."""
        return self.renamed.get(param, self.prefix + param)

    def param_defaults(self) -> dict[str, Any]:
        """Constructor argument -> default, for :attr:`params`."""
        signature = inspect.signature(self.cls)
        return {p: signature.parameters[p].default for p in self.params}

    def param_types(self) -> dict[str, Any]:
        """Constructor argument -> annotated type, for :attr:`params`."""
        hints = typing.get_type_hints(self.cls.__init__)
        return {p: hints[p] for p in self.params}

    def kwargs_from(self, source: Any) -> dict[str, Any]:
        """Constructor keyword arguments from a trainer config's fields (or any object with them)."""
        kwargs = {p: getattr(source, self.trainer_field(p)) for p in self.params}
        kwargs.update({p: source.max_grad_norm for p in self.from_max_grad_norm})
        return kwargs

    def build_from(self, source: Any) -> GradClipper | None:
        """The clipper for a trainer config; a refused value raises
        :class:`~adaclip_rl.checks.FieldValueError` naming the trainer's field."""
        if self.cls is None:
            return None
        try:
            return self.cls(**self.kwargs_from(source))
        except FieldValueError as e:
            names = {p: self.trainer_field(p) for p in self.params}
            names.update({p: "max_grad_norm" for p in self.from_max_grad_norm})
            raise e.renamed(names) from None


GRAD_CLIPPER_SPECS: dict[str, GradClipperSpec] = {}


def register_grad_clipper(name: str, cls: type[GradClipper] | None, **spec: Any) -> type[GradClipper] | None:
    """Add a clipper under ``name`` (must be new); ``spec``: the :class:`GradClipperSpec` attributes."""
    if name in GRAD_CLIPPER_SPECS:
        raise ValueError(f"grad clipper {name!r} is already registered")
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, GradClipper)):
        raise ValueError(f"cls must be a GradClipper subclass; got {cls!r}")
    GRAD_CLIPPER_SPECS[name] = GradClipperSpec(name, cls, **spec)
    GRAD_CLIPPERS[name] = cls
    return cls


GRAD_CLIPPERS: dict[str, type[GradClipper] | None] = {}
"""Registered clippers by name (a view of :data:`GRAD_CLIPPER_SPECS`). ``"none"`` maps to ``None``:
no clipping, the norm is only measured; ``"fixed"`` is the Trainer's own ``max_grad_norm`` clip."""

register_grad_clipper("none", None, measures_only=True)
register_grad_clipper("fixed", FixedClip, from_max_grad_norm=("max_norm",), trainer_clips=True)
register_grad_clipper("zclip", ZClip, prefix="zclip_", params={
    "alpha": "ZClip EMA factor alpha in (0, 1).",
    "z_thresh": "ZClip z-score threshold (> 0).",
    "warmup_steps": "ZClip warm-up steps (>= 1).",
})
register_grad_clipper("adagc", AdaGC, prefix="adagc_", from_max_grad_norm=("warmup_max_norm",), params={
    "lambda_rel": "AdaGC relative threshold lambda_rel (> 0).",
    "beta": "AdaGC EMA factor beta in (0, 1).",
    "warmup_steps": "AdaGC warm-up steps of global clipping.",
})
register_grad_clipper("autoclip", AutoClip, prefix="autoclip_", params={
    "percentile": "AutoClip percentile in (0, 100].",
    "window": "AutoClip window of past norms (>= 1).",
})
register_grad_clipper("quantile", QuantileClip, prefix="quantile_",
                      renamed={"target_quantile": "quantile_target", "learning_rate": "quantile_lr"}, params={
    "target_quantile": "Quantile-tracking target quantile in (0, 1).",
    "learning_rate": "Quantile-tracking geometric learning rate (> 0).",
})


def get_grad_clipper_spec(name: str | None) -> GradClipperSpec:
    """The :class:`GradClipperSpec` of ``name`` (``None`` means ``"none"``)."""
    key = "none" if name is None else str(name).lower()
    if key not in GRAD_CLIPPER_SPECS:
        raise FieldValueError(f"{{0}} must be one of {sorted(GRAD_CLIPPER_SPECS)}; got {name!r}", "grad_clip")
    return GRAD_CLIPPER_SPECS[key]


def build_grad_clipper(name: str | None, **kwargs: Any) -> GradClipper | None:
    """Build a clipper by name; ``"none"`` (or ``None``) returns ``None``.

    Keyword arguments go to the class (unknown ones raise ``TypeError``, invalid values
    ``ValueError`` naming the argument and its allowed range).
    """
    cls = get_grad_clipper_spec(name).cls
    return None if cls is None else cls(**kwargs)
