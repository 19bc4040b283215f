"""Argument checks shared by the losses, the gradient-clipper registry and the rollout config.

Every check has the same shape, ``check_*(name, value, <allowed range>)``, and raises
:class:`FieldValueError`: a ``ValueError`` whose message names the argument, the allowed range
and the value, and which remembers the names it mentions. A config that exposes an argument under
another name (the trainer's ``bapo_target`` for ``BAPOConfig.target``) renames them with
:meth:`FieldValueError.renamed`, without parsing the message. Pure Python (no torch import).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class FieldValueError(ValueError):
    """A refused value. ``template`` holds ``{0}``, ``{1}``, ... where the argument ``names`` go."""

    def __init__(self, template: str, *names: str) -> None:
        self.template, self.names = template, names
        super().__init__(template.format(*names))

    def renamed(self, names: Mapping[str, str]) -> FieldValueError:
        """The same error naming each argument as ``names`` maps it (names not in it are kept)."""
        return FieldValueError(self.template, *(names.get(n, n) for n in self.names))


def _got(value: Any) -> str:
    return repr(value).replace("{", "{{").replace("}", "}}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_open_unit(name: str, value: Any) -> None:
    """``value`` must lie in the open interval (0, 1)."""
    if not (_is_number(value) and 0.0 < value < 1.0):
        raise FieldValueError(f"{{0}} must be in (0, 1); got {_got(value)}", name)


def check_positive(name: str, value: Any) -> None:
    """``value`` must be a finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise FieldValueError(f"{{0}} must be a finite number > 0; got {_got(value)}", name)


def check_non_negative(name: str, value: Any) -> None:
    """``value`` must be a finite number >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise FieldValueError(f"{{0}} must be a finite number >= 0; got {_got(value)}", name)


def check_interval(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                   high_open: bool = False, why: str = "") -> None:
    """``value`` must be a finite number in ``[low, high]`` (``(`` / ``)`` where open; ``high``
    may be ``inf``, then the interval is open there). ``why`` is said after the range."""
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open or math.isinf(high) else "]"
        reason = f": {why}" if why else ""
        raise FieldValueError(f"{{0}} must be in {left}{low}, {high}{right}{reason}; got {_got(value)}", name)


def check_int(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    """``value`` must be an integer >= ``low`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise FieldValueError(f"{{0}} must be an integer >= {low}{' or None' if allow_none else ''}; "
                              f"got {_got(value)}", name)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise FieldValueError(f"{{0}} must be one of {_got(list(choices))}; got {_got(value)}", name)


def check_dual_clip(name: str, value: Any) -> None:
    """A dual-clip constant ``c`` (Ye et al. 2020, Eq. 5) must be a finite number > 1, or None (off)."""
    if value is not None and not (_is_number(value) and math.isfinite(value) and value > 1.0):
        raise FieldValueError(f"{{0}} must be > 1 or None; got {_got(value)}", name)


def check_bounds(low_name: str, low: Any, high_name: str, high: Any) -> None:
    """Ratio bounds must satisfy ``0 <= low <= 1 <= high`` (PPO clips around a ratio of 1)."""
    if not (_is_number(low) and 0.0 <= low <= 1.0):
        raise FieldValueError(f"{{0}} must be in [0, 1]; got {_got(low)}", low_name)
    if not (_is_number(high) and math.isfinite(high) and high >= 1.0):
        raise FieldValueError(f"{{0}} must be a finite number >= 1; got {_got(high)}", high_name)


def check_order(start_name: str, start: Any, end_name: str, end: Any) -> None:
    """A search range needs ``start <= end``."""
    if end < start:
        raise FieldValueError(f"{{1}} ({_got(end)}) must be >= {{0}} ({_got(start)})", start_name, end_name)
