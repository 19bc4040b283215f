"""Fixed-threshold global-norm clipping (the baseline, ``torch.nn.utils.clip_grad_norm_`` semantics).

Coefficient ``min(1, max_norm / (n_t + 1e-6))`` as in PyTorch (reference section 8), behind the
same interface as the adaptive clippers so the trainer has one code path (non-finite guard,
metrics, state).
"""

from __future__ import annotations

from torch import Tensor

from ._validate import check_positive
from .base import GlobalNormClipper, check_finite_norm


class FixedClip(GlobalNormClipper):
    """Clip the global L2 norm to ``max_norm``.

    Args:
        max_norm: the fixed threshold (> 0). HF ``TrainingArguments.max_grad_norm`` defaults to 1.0.
        eps, nonfinite: see :class:`~adaclip_rl.gradclip.base.GradClipper`.
    """

    name = "fixed"

    def __init__(self, max_norm: float = 1.0, *, eps: float = 1e-6, nonfinite: str = "skip") -> None:
        super().__init__(eps=eps, nonfinite=nonfinite)
        check_positive("FixedClip", "max_norm", max_norm)
        self.max_norm = float(max_norm)

    def threshold(self, total_norm: Tensor | float | None = None) -> float:
        return self.max_norm

    def lagged_threshold(self) -> float:
        return self.max_norm

    def update(self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None) -> None:
        check_finite_norm(self, total_norm)
        self.num_updates += 1

    def config_repr(self) -> str:
        return f"max_norm={self.max_norm}, {super().config_repr()}"
