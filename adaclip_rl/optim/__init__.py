"""Spike-aware optimizers, pure PyTorch (no trl / transformers import).

- :class:`SPAM` - Spike-Aware Adam with Momentum Reset (Huang et al., ICLR 2025, arXiv 2501.06842).
- :class:`StableSPAM` - adaptive spike clipping, gradient-norm scaling and SPAM's momentum reset
  (Huang et al. 2025, arXiv 2502.17055).

Both follow their authors' official code by default (argument names, defaults and arithmetic);
keyword-only options correct what looks unintended there (see ``docs/optimizers.md``).
:data:`OPTIMIZER_SPECS` maps the trainer field ``optimizer`` to them.
"""

from .registry import OPTIMIZER_SPECS, OptimizerSpec, SPAMConfig, StableSPAMConfig, get_optimizer_spec
from .spam import SPAM
from .stable_spam import StableSPAM

__all__ = ["OPTIMIZER_SPECS", "SPAM", "OptimizerSpec", "SPAMConfig", "StableSPAM", "StableSPAMConfig",
           "get_optimizer_spec"]
