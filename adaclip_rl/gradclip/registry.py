"""Name -> clipper class, for configs (``grad_clip: none | fixed | zclip | adagc | autoclip | quantile``)."""

from __future__ import annotations

from typing import Any

from .adagc import AdaGC
from .autoclip import AutoClip
from .base import GradClipper
from .fixed import FixedClip
from .quantile import QuantileClip
from .zclip import ZClip

GRAD_CLIPPERS: dict[str, type[GradClipper] | None] = {
    "none": None,
    "fixed": FixedClip,
    "zclip": ZClip,
    "adagc": AdaGC,
    "autoclip": AutoClip,
    "quantile": QuantileClip,
}
"""Registered clippers. ``"none"`` maps to ``None``: no adaclip-rl clipper (the trainer keeps the
stock ``max_grad_norm`` behaviour, which is "no clipping" when ``max_grad_norm = 0``)."""


def register_grad_clipper(name: str, cls: type[GradClipper]) -> type[GradClipper]:
    """Add a clipper class under ``name`` (must be new)."""
    if name in GRAD_CLIPPERS:
        raise ValueError(f"grad clipper {name!r} is already registered")
    if not (isinstance(cls, type) and issubclass(cls, GradClipper)):
        raise ValueError(f"cls must be a GradClipper subclass; got {cls!r}")
    GRAD_CLIPPERS[name] = cls
    return cls


def build_grad_clipper(name: str | None, **kwargs: Any) -> GradClipper | None:
    """Build a clipper by name; ``"none"`` (or ``None``) returns ``None``.

    Keyword arguments go to the class (unknown ones raise ``TypeError``, invalid values
    ``ValueError`` naming the argument and its allowed range).
    """
    key = "none" if name is None else str(name).lower()
    if key not in GRAD_CLIPPERS:
        raise ValueError(f"grad_clip must be one of {sorted(GRAD_CLIPPERS)}; got {name!r}")
    cls = GRAD_CLIPPERS[key]
    if cls is None:
        return None
    return cls(**kwargs)
