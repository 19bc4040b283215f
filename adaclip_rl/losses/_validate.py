"""Argument checks shared by the loss modules: every message names the argument and the allowed range."""

from __future__ import annotations

import math


def check_open_unit(name: str, value: float) -> None:
    """``value`` must lie in the open interval (0, 1)."""
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1); got {value!r}")


def check_positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    """``value`` must be a finite number >= 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")


def check_bounds(low_name: str, low: float, high_name: str, high: float) -> None:
    """Ratio bounds must satisfy ``0 <= low <= 1 <= high`` (PPO clips around a ratio of 1)."""
    if not (isinstance(low, int | float) and 0.0 <= low <= 1.0):
        raise ValueError(f"{low_name} must be in [0, 1]; got {low!r}")
    if not (isinstance(high, int | float) and math.isfinite(high) and high >= 1.0):
        raise ValueError(f"{high_name} must be a finite number >= 1; got {high!r}")


def check_range(start_name: str, start: float, end_name: str, end: float) -> None:
    """A search range needs ``start <= end``."""
    if end < start:
        raise ValueError(f"{end_name} ({end!r}) must be >= {start_name} ({start!r})")
