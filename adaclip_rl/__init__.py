"""adaclip-rl: adaptive clipping for RL of language models on top of Hugging Face TRL.

The loss core (:mod:`adaclip_rl.losses`) and the gradient clippers (:mod:`adaclip_rl.gradclip`)
are pure PyTorch and import without TRL. The trainer classes are loaded lazily (through
:mod:`adaclip_rl.trainers`) so that ``import adaclip_rl.losses`` never pulls in ``trl`` or
``transformers``.
"""

from __future__ import annotations

__version__ = "0.1.0"

_TRAINER_NAMES = ("AdaClipGRPOConfig", "AdaClipGRPOTrainer", "OffPolicyGRPOConfig", "OffPolicyGRPOTrainer",
                  "AdaClipAsyncGRPOConfig", "AdaClipAsyncGRPOTrainer")


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from . import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module 'adaclip_rl' has no attribute {name!r}")


__all__ = ["__version__", *_TRAINER_NAMES]
