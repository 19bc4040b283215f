"""TRL trainers with adaptive clipping (thin subclasses of ``trl.GRPOTrainer``)."""

from .config import AdaClipGRPOConfig
from .grpo import AdaClipGRPOTrainer

__all__ = ["AdaClipGRPOConfig", "AdaClipGRPOTrainer"]
