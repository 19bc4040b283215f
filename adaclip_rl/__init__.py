"""adaclip-rl: adaptive clipping for RL of language models on top of Hugging Face TRL.

The loss core (:mod:`adaclip_rl.losses`) and the gradient clippers (:mod:`adaclip_rl.gradclip`)
are pure PyTorch and import without TRL. The trainer classes are loaded lazily so that
``import adaclip_rl.losses`` never pulls in ``trl`` or ``transformers``.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "AdaClipGRPOConfig": "adaclip_rl.trainers.config",
    "AdaClipGRPOTrainer": "adaclip_rl.trainers.grpo",
    "OffPolicyGRPOConfig": "adaclip_rl.trainers.offpolicy_config",
    "OffPolicyGRPOTrainer": "adaclip_rl.trainers.offpolicy",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaclip_rl' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
