"""ZClip: z-score based adaptive clipping of the global gradient norm.

Kumar, Owen, Roy Chowdhury, Güra, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
arXiv 2504.02507; rule as implemented in bluorion-com/ZClip ``zclip/zclip.py`` (HEAD 584ce4f); see
also ``docs/gradient_clipping.md``.

Per optimizer step, with ``n_t`` the (reduced) global norm:

1. Warm-up (first ``warmup_steps`` finite steps): append ``n_t`` to a buffer; only the optional
   fixed cap ``max_grad_norm`` clips. When the buffer is full: ``mu = mean(buffer)``,
   ``var = population variance(buffer)``; the buffer is cleared. Step ``warmup_steps + 1`` is the
   first adaptive step.
2. ``sigma = sqrt(var)``, ``z = (n_t - mu) / (sigma + eps)``. If ``z > z_thresh``:

   * ``clip_option="adaptive_scaling"`` (paper's "reciprocal" clipping, default):
     ``c = clip_factor * (mu + z_thresh * sigma / (z / z_thresh))``
     ``  = clip_factor * (mu + z_thresh^2 * sigma * (sigma + eps) / (n_t - mu))``.
     Continuous at ``z = z_thresh`` (where ``c = n_t`` for ``clip_factor = 1``); the threshold
     *falls* as the spike grows (mu=1, sigma=0.1: n=1.3 -> 1.208, n=2 -> 1.0625, n=5 -> 1.016).
     ``clip_factor`` multiplies the whole threshold, mu included (as the code does).
   * ``clip_option="mean"``: ``c = mu``.

   Otherwise no adaptive threshold (``c = None``).
3. Effective threshold ``e = min(c if c is not None else n_t, max_grad_norm)`` (no cap when
   ``max_grad_norm is None``); clip to ``e`` if ``n_t > e``.
4. EMA (skipped if ``skip_update_on_spike`` and ``c is not None``), with ``x = c`` if ``c`` is not
   None else ``n_t`` (the *adaptive* ``c``, not the cap ``e``):
   ``mu <- alpha * mu + (1 - alpha) * x``; ``var <- alpha * var + (1 - alpha) * (x - mu_new)^2``
   (the variance uses the already-updated mean, as the code does).

Defaults: alpha 0.97, z_thresh 2.5, warm-up 25, zscore/adaptive_scaling, clip_factor 1.

Pitfalls of the reference code fixed here:

- **Non-finite norm** -> mu=inf, var=NaN, adaptive clipping silently off forever. Here the
  statistics (warm-up buffer included) are never updated with a NaN/inf norm (base class guard).
- **No state_dict** -> resume restarts the 25-step warm-up. Here mu, var, the warm-up buffer and the
  counters round-trip exactly.
- **Package default ``max_grad_norm=1.0``** turns ZClip into "fixed clip at 1 plus adaptive below
  1", clipping every step when norms naturally exceed 1. Default here is ``None`` (pure ZClip); pass
  a loose cap if wanted.
- **WORLD all-reduce under HSDP / no reduction under FSDP2 / ZeRO's empty ``p.grad``**: the norm
  comes from :meth:`GradClipper.clip_` with a caller-chosen shard-group reduction.
- ``var = 0`` (constant warm-up norms): no division by zero (``sigma + eps``); any norm with
  ``z > z_thresh`` (i.e. ``n_t > mu + z_thresh * eps``) is clipped to ``clip_factor * mu``
  (``mean``: ``mu``) and the EMA stays finite.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ._validate import check_choice, check_int_at_least, check_open_unit, check_positive
from .base import GlobalNormClipper, _as_float, check_finite_norm

CLIP_OPTIONS = ("adaptive_scaling", "mean")


class ZClip(GlobalNormClipper):
    """ZClip (z-score mode) on the global gradient norm; see the module docstring for the rule.

    Args:
        alpha: EMA decay of mean and variance, in (0, 1). Default 0.97.
        z_thresh: z-score above which a norm is a spike, > 0. Default 2.5.
        warmup_steps: finite steps collected before adaptive clipping starts, >= 1. Default 25.
        max_grad_norm: optional fixed cap applied always (also during warm-up); ``None`` = no cap.
        clip_option: ``"adaptive_scaling"`` (default) or ``"mean"``.
        clip_factor: multiplies the adaptive threshold, > 0. Default 1.0.
        skip_update_on_spike: do not update the EMA on steps with an adaptive threshold.
        eps, nonfinite: see :class:`~adaclip_rl.gradclip.base.GradClipper`.
    """

    name = "zclip"

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        max_grad_norm: float | None = None,
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
        *,
        eps: float = 1e-6,
        nonfinite: str = "skip",
    ) -> None:
        super().__init__(eps=eps, nonfinite=nonfinite)
        check_open_unit("ZClip", "alpha", alpha)
        check_positive("ZClip", "z_thresh", z_thresh)
        check_int_at_least("ZClip", "warmup_steps", warmup_steps, 1)
        if max_grad_norm is not None:
            check_positive("ZClip", "max_grad_norm", max_grad_norm)
        check_choice("ZClip", "clip_option", clip_option, CLIP_OPTIONS)
        check_positive("ZClip", "clip_factor", clip_factor)
        if not isinstance(skip_update_on_spike, bool):
            raise ValueError(f"ZClip: skip_update_on_spike must be a bool; got {skip_update_on_spike!r}")
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.warmup_steps = warmup_steps
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.clip_option = clip_option
        self.clip_factor = float(clip_factor)
        self.skip_update_on_spike = skip_update_on_spike
        self.mean = 0.0
        self.var = 0.0
        self.initialized = False
        self.buffer: list[float] = []

    # ------------------------------------------------------------------ rule
    @property
    def in_warmup(self) -> bool:
        return not self.initialized

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def zscore(self, n: float) -> float:
        """``(n - mu) / (sigma + eps)``; 0 during warm-up."""
        if not self.initialized:
            return 0.0
        return (n - self.mean) / (self.std + self.eps)

    def adaptive_threshold(self, total_norm: Tensor | float) -> float | None:
        """The adaptive ``c`` of step 2, or ``None`` (no spike, or warm-up)."""
        if not self.initialized:
            return None
        n = _as_float(total_norm)
        z = self.zscore(n)
        if not z > self.z_thresh:
            return None
        if self.clip_option == "mean":
            return self.mean
        return self.clip_factor * (self.mean + self.z_thresh * self.std / (z / self.z_thresh))

    def threshold(self, total_norm: Tensor | float | None = None) -> float:
        """Effective threshold ``e`` of step 3 for the current norm (``n_t`` itself = no clip)."""
        if total_norm is None:
            raise ValueError("ZClip.threshold needs the current norm (its threshold depends on it)")
        n = _as_float(total_norm)
        c = self.adaptive_threshold(n)
        e = c if c is not None else n
        if self.max_grad_norm is not None:
            e = min(e, self.max_grad_norm)
        return e

    def lagged_threshold(self) -> float:
        """For engines that clip internally (DeepSpeed): ``min(clip_factor*(mu + z_thresh*sigma), cap)``.

        This is the norm at which the adaptive rule starts to clip (``z = z_thresh``); a spike above
        it is clipped to it rather than to the lower adaptive-scaling value, so it approximates
        ZClip (whose threshold depends on the current norm). During warm-up: the cap, or inf.
        """
        cap = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        if not self.initialized:
            return cap
        factor = self.clip_factor if self.clip_option == "adaptive_scaling" else 1.0
        t = factor * (self.mean + self.z_thresh * self.std)
        return min(t, cap)

    def update(self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None) -> None:
        n = check_finite_norm(self, total_norm)
        self.num_updates += 1
        if not self.initialized:
            self.buffer.append(n)
            if len(self.buffer) >= self.warmup_steps:
                k = len(self.buffer)
                self.mean = sum(self.buffer) / k
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / k
                self.initialized = True
                self.buffer = []
            return
        c = self.adaptive_threshold(n)
        if c is not None and self.skip_update_on_spike:
            return
        x = c if c is not None else n
        self.mean = self.alpha * self.mean + (1.0 - self.alpha) * x
        self.var = self.alpha * self.var + (1.0 - self.alpha) * (x - self.mean) ** 2

    # -------------------------------------------------------------- state / metrics
    def _extra_metrics(self, total: float, per: Tensor | None, coef: Tensor) -> dict[str, float]:
        return {
            "threshold": self.threshold(total),
            "z": self.zscore(total),
            "mu": self.mean,
            "sigma": self.std,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "var": self.var,
            "initialized": self.initialized,
            "buffer": list(self.buffer),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.initialized = bool(state["initialized"])
        self.buffer = [float(x) for x in state["buffer"]]

    def config_repr(self) -> str:
        return (
            f"alpha={self.alpha}, z_thresh={self.z_thresh}, warmup_steps={self.warmup_steps}, "
            f"max_grad_norm={self.max_grad_norm}, clip_option={self.clip_option!r}, "
            f"clip_factor={self.clip_factor}, skip_update_on_spike={self.skip_update_on_spike}, "
            f"{super().config_repr()}"
        )
