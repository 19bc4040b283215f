"""Quantile tracking: a geometric, noise-free estimate of a target quantile of the gradient norm.

Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021 (arXiv 1905.03871), the geometric update of section 2.1, used here without the
privacy noise as an O(1)-memory threshold estimator for global clipping (a streaming stand-in for
AutoClip's percentile of the norm history):

    b_t     = 1[n_t <= C_t]                         (one record per step: the global norm)
    C_{t+1} = clamp(C_t * exp(-eta * (b_t - gamma)), min_clip, max_clip)

Step ``t`` is clipped to ``C_t`` (decided before the update, the paper's order; opacus' ghost
variant updates first). At the fixed point ``P(n <= C) = gamma``: ``C`` tracks the ``gamma``
quantile of the norm distribution, moving by at most a factor ``exp(eta)`` per step.

Defaults: ``target_quantile=0.5`` (Andrew et al.'s gamma); ``learning_rate=0.05``: the paper's
eta_C = 0.2 is per round of many clients' averaged bits, with one bit per step the reference advises
eta ~ 0.01-0.05; ``initial_clip=None`` = the first finite norm (the TFF default C0 = 0.1 is
scale-dependent and needs ~25 steps to grow 10x at eta 0.2). Clipping to the median clips about half
the steps; 0.9 is a gentler choice.

Fixed relative to the DP implementations: no privacy noise (none is needed here), state
(``C``) checkpointed exactly, non-finite norms do not move ``C``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ._validate import check_non_negative, check_open_unit, check_positive, is_number
from .base import GlobalNormClipper, _as_float, check_finite_norm


class QuantileClip(GlobalNormClipper):
    """Clip the global norm to a geometric running estimate ``C`` of its ``target_quantile``.

    Args:
        target_quantile: gamma in (0, 1). Default 0.5.
        learning_rate: eta > 0. Default 0.05.
        initial_clip: C_0 > 0, or ``None`` (default) for the first finite norm.
        min_clip, max_clip: clamp of ``C`` (0 <= min_clip < max_clip <= inf). Default 0, inf.
        eps, nonfinite: see :class:`~adaclip_rl.gradclip.base.GradClipper`.
    """

    name = "quantile"

    def __init__(
        self,
        target_quantile: float = 0.5,
        learning_rate: float = 0.05,
        initial_clip: float | None = None,
        min_clip: float = 0.0,
        max_clip: float = math.inf,
        *,
        eps: float = 1e-6,
        nonfinite: str = "skip",
    ) -> None:
        super().__init__(eps=eps, nonfinite=nonfinite)
        check_open_unit("QuantileClip", "target_quantile", target_quantile)
        check_positive("QuantileClip", "learning_rate", learning_rate)
        if initial_clip is not None:
            check_positive("QuantileClip", "initial_clip", initial_clip)
        check_non_negative("QuantileClip", "min_clip", min_clip)
        if not (is_number(max_clip) and max_clip > min_clip):
            raise ValueError(
                f"QuantileClip: max_clip must be a number > min_clip ({min_clip!r}); got {max_clip!r}"
            )
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.initial_clip = None if initial_clip is None else float(initial_clip)
        self.min_clip = float(min_clip)
        self.max_clip = float(max_clip)
        self.clip: float | None = self.initial_clip

    def _clamp(self, c: float) -> float:
        return min(max(c, self.min_clip), self.max_clip)

    def threshold(self, total_norm: Tensor | float | None = None) -> float:
        """``C_t``; before the first step with ``initial_clip=None`` it is the current norm."""
        if self.clip is not None:
            return self.clip
        if total_norm is None:
            return math.inf
        return self._clamp(_as_float(total_norm))

    def lagged_threshold(self) -> float:
        return self.clip if self.clip is not None else math.inf

    def update(self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None) -> None:
        n = check_finite_norm(self, total_norm)
        c = self.threshold(n)
        b = 1.0 if n <= c else 0.0
        self.clip = self._clamp(c * math.exp(-self.learning_rate * (b - self.target_quantile)))
        self.num_updates += 1

    def _state(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.clip = None if state["clip"] is None else float(state["clip"])

    def config_repr(self) -> str:
        return (
            f"target_quantile={self.target_quantile}, learning_rate={self.learning_rate}, "
            f"initial_clip={self.initial_clip}, min_clip={self.min_clip}, max_clip={self.max_clip}, "
            f"{super().config_repr()}"
        )
