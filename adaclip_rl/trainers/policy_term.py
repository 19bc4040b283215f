"""What every trainer does around the registry's policy term, written once.

* :func:`policy_log_ratio` - ``log r = log pi_theta - log pi_old``, clamped to [-20, 20] for a
  loss whose spec asks for it (``clamps_log_ratio``: BAPO, Archer; as verl), with the mask of the
  tokens whose ratio still carries a gradient (:func:`~adaclip_rl.losses.ratio.clamp_log_ratio`).
* :class:`UpdateSearch` - one bound search per optimizer update (BAPO's Algorithm 1 with
  ``bapo_scope="update"``, arXiv 2510.18927): the statistics of every micro-batch of the update,
  summed, all-reduced across ranks in one collective, then ``spec.select``; every micro-batch of
  the update reuses the result.

``AdaClipGRPOTrainer`` (TRL's buffered micro-batches) and ``AdaClipAsyncGRPOTrainer`` (TRL's
packed micro-batches) differ only in how they get the other micro-batches' statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from ..losses import PolicyLossSpec, clamp_log_ratio

__all__ = ["UpdateSearch", "policy_log_ratio"]


def policy_log_ratio(spec: PolicyLossSpec, logp: torch.Tensor,
                     old_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log r, live)``: ``logp - old_logp``, clamped when ``spec.clamps_log_ratio`` (verl:
    ``r = exp(clamp(logp - old, -20, 20))``), and where the ratio then carries a gradient (None
    without the clamp): one mask for the clamp and the statistic."""
    log_ratio = logp - old_logp
    if spec.clamps_log_ratio:
        return clamp_log_ratio(log_ratio)
    return log_ratio, None


class UpdateSearch:
    """The search result shared by the micro-batches of one optimizer update.

    ``window`` identifies the update (any hashable the trainer derives from its step counters);
    :meth:`result` computes the statistics only for a window it has not seen, all-reduces them with
    ``reduce_fn`` (SUM over ranks) and keeps the selection until the next window or :meth:`reset`."""

    def __init__(self, reduce_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.reduce_fn = reduce_fn
        self._window: Hashable | None = None
        self._result: Any = None

    def has(self, window: Hashable) -> bool:
        """Whether the search of ``window`` is done."""
        return self._window is not None and self._window == window

    def result(self, window: Hashable, spec: PolicyLossSpec, config: Any,
               statistics: Callable[[], torch.Tensor]) -> Any:
        """The search result of ``window`` (``spec.select`` on the all-reduced statistics);
        ``statistics()`` (the update's local summed statistics) is called only the first time."""
        if not self.has(window):
            self._result = spec.select(self.reduce_fn(statistics()), config)
            self._window = window
        return self._result

    def reset(self) -> None:
        """Forget the last window (its result is computed again when asked)."""
        self._window, self._result = None, None
