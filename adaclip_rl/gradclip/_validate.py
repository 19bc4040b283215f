"""Argument checks for the clippers: :mod:`adaclip_rl.checks` with the clipper's name in front of the
message (``"ZClip: alpha must be in (0, 1); got 1.5"``), still a
:class:`~adaclip_rl.checks.FieldValueError` that a config can rename."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import checks
from ..checks import FieldValueError

NONFINITE_ACTIONS = ("skip", "zero", "none")


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _owned(owner: str, check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        check(*args, **kwargs)
    except FieldValueError as e:
        raise FieldValueError(f"{owner}: {e.template}", *e.names) from None


def check_open_unit(owner: str, name: str, value: float) -> None:
    """``value`` must lie in the open interval (0, 1)."""
    _owned(owner, checks.check_open_unit, name, value)


def check_positive(owner: str, name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    _owned(owner, checks.check_positive, name, value)


def check_non_negative(owner: str, name: str, value: float) -> None:
    """``value`` must be a finite number >= 0."""
    _owned(owner, checks.check_non_negative, name, value)


def check_interval(owner: str, name: str, value: float, low: float, high: float) -> None:
    """``value`` must be a finite number in ``[low, high]``."""
    _owned(owner, checks.check_interval, name, value, low, high)


def check_int_at_least(owner: str, name: str, value: int, low: int) -> None:
    """``value`` must be an integer >= ``low``."""
    _owned(owner, checks.check_int, name, value, low)


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    _owned(owner, checks.check_choice, name, value, choices)
