"""TRL trainers with adaptive clipping (thin subclasses of ``trl.GRPOTrainer``)."""

from .config import AdaClipGRPOConfig
from .grpo import AdaClipGRPOTrainer
from .offpolicy import OffPolicyGRPOConfig, OffPolicyGRPOTrainer

__all__ = ["AdaClipGRPOConfig", "AdaClipGRPOTrainer", "OffPolicyGRPOConfig", "OffPolicyGRPOTrainer"]
