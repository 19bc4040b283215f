"""TRL trainers with adaptive clipping (thin subclasses of ``trl.GRPOTrainer``).

Loaded lazily: importing a config class (or the recipe parser in :mod:`.cli`) does not import
TRL's trainers or vLLM.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AdaClipAsyncGRPOConfig": ".async_config",
    "AdaClipAsyncGRPOTrainer": ".async_grpo",
    "AdaClipGRPOConfig": ".config",
    "AdaClipGRPOTrainer": ".grpo",
    "OffPolicyGRPOConfig": ".config",
    "OffPolicyGRPOTrainer": ".offpolicy",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
