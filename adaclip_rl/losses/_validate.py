"""Re-export of :mod:`adaclip_rl.checks` for the loss modules still importing it from here."""

from __future__ import annotations

from ..checks import check_non_negative, check_open_unit

__all__ = ["check_non_negative", "check_open_unit"]
