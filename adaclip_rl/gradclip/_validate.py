"""Argument checks for the clippers: every message names the argument, the allowed range and the value."""

from __future__ import annotations

import math

NONFINITE_ACTIONS = ("skip", "zero", "none")


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_open_unit(owner: str, name: str, value: float) -> None:
    """``value`` must lie in the open interval (0, 1)."""
    if not (is_number(value) and 0.0 < value < 1.0):
        raise ValueError(f"{owner}: {name} must be in (0, 1); got {value!r}")


def check_positive(owner: str, name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0; got {value!r}")


def check_non_negative(owner: str, name: str, value: float) -> None:
    """``value`` must be a finite number >= 0."""
    if not (is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0; got {value!r}")


def check_int_at_least(owner: str, name: str, value: int, low: int) -> None:
    """``value`` must be an integer >= ``low``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{owner}: {name} must be an integer >= {low}; got {value!r}")


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}; got {value!r}")
