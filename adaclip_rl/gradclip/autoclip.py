"""AutoClip: clip the global norm to a percentile of the recent history of norms.

Seetharaman, Wichern, Pardo, Le Roux, "AutoClip: Adaptive Gradient Clipping for Source Separation
Networks", MLSP 2020 (arXiv 2007.14469); code pseeth/autoclip ``autoclip.py``; see also
``docs/gradient_clipping.md``.

Rule: append ``n_t`` to the history ``H``; ``c_t = percentile_p(H)`` with ``H`` including ``n_t``
(linear interpolation, ``numpy.percentile``'s default = ``torch.quantile``'s ``"linear"``); clip
to ``c_t``. No warm-up: at the first step ``c = n_1`` and nothing is clipped.

Defaults: ``percentile=10`` (the paper's recommendation; very aggressive for LLMs, the reference
suggests 50-90 on a window), ``window=1000``.

Pitfalls of the reference code fixed here:

- **Unbounded history** (PyTorch version: a Python list, O(T) percentile per step, the percentile
  lags behind drifting norms): bounded window of the last ``window`` finite norms (a ring buffer as
  in the TF port, which used 10,000), current norm included.
- **One ``.item()`` per parameter**: one host sync per step (base class).
- **Per-variable clipping in the TF port**: this clips the global norm, as in the paper.
- **Not distribution-aware / no state**: reduced norm, exact ``state_dict`` (the window itself).
- **Non-finite norms** never enter the history.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import Tensor

from ._validate import check_int_at_least, check_interval
from .base import GlobalNormClipper, _as_float, check_finite_norm


class AutoClip(GlobalNormClipper):
    """Clip to the ``percentile``-th percentile of the last ``window`` finite norms (current included).

    Args:
        percentile: in [0, 100]. Default 10 (paper); consider 50-90 for LLM fine-tuning.
        window: number of most recent finite norms kept, >= 1. Default 1000.
        eps, nonfinite: see :class:`~adaclip_rl.gradclip.base.GradClipper`.
    """

    name = "autoclip"

    def __init__(
        self, percentile: float = 10.0, window: int = 1000, *, eps: float = 1e-6, nonfinite: str = "skip"
    ) -> None:
        super().__init__(eps=eps, nonfinite=nonfinite)
        check_interval("AutoClip", "percentile", percentile, 0, 100)
        check_int_at_least("AutoClip", "window", window, 1)
        self.percentile = float(percentile)
        self.window = window
        self.history: deque[float] = deque(maxlen=window)

    def _window_with(self, n: float) -> list[float]:
        past = list(self.history)
        if self.window > 1:
            past = past[-(self.window - 1) :]
        else:
            past = []
        return [*past, n]

    def threshold(self, total_norm: Tensor | float | None = None) -> float:
        """``percentile_p`` of the window including ``total_norm`` (required)."""
        if total_norm is None:
            raise ValueError("AutoClip.threshold needs the current norm (the window includes it)")
        values = torch.tensor(self._window_with(_as_float(total_norm)), dtype=torch.float64)
        return float(torch.quantile(values, self.percentile / 100.0, interpolation="linear"))

    def lagged_threshold(self) -> float:
        """Percentile of the past window only (the current norm is not known yet); inf if empty."""
        if not self.history:
            return math.inf
        values = torch.tensor(list(self.history), dtype=torch.float64)
        return float(torch.quantile(values, self.percentile / 100.0, interpolation="linear"))

    def update(self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None) -> None:
        self.history.append(check_finite_norm(self, total_norm))
        self.num_updates += 1

    def _state(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.history = deque((float(x) for x in state["history"]), maxlen=self.window)

    def config_repr(self) -> str:
        return f"percentile={self.percentile}, window={self.window}, {super().config_repr()}"
