"""AdaGC: per-tensor adaptive gradient clipping with an EMA of each tensor's clipped norm.

Wang et al., "AdaGC: Improving Training Stability for Large Language Model Pretraining",
arXiv 2502.11034 (v2: "Enhancing LLM Pretraining Stability via Adaptive Gradient Clipping");
rule as in the official Megatron patch lishuai-97/AdaGC ``megatron-gpt2.patch`` (``clip_mode="AdaGC"``);
see also ``docs/gradient_clipping.md``.

For each parameter tensor ``i`` with (reduced, full-tensor) gradient norm ``n_i``:

- **Warm-up**, the first ``warmup_steps`` finite steps (``T_start = 100``): ordinary *global*
  clipping of the total norm to ``warmup_max_norm`` (lambda_abs, the official script's
  ``--clip-grad 1.0``). ``gamma_i`` = the minimum over the warm-up steps of the tensor's *clipped*
  norm ``n_i * coef_global`` (initialised at its first value).
- **After warm-up** (paper eq.: ``h_{t,i} = min(1, lambda_rel * gamma_{t-1,i} / ||g_{t,i}||)``,
  ``gamma_{t,i} = beta * gamma_{t-1,i} + (1 - beta) * ||g_hat_{t,i}||``): if
  ``n_i > lambda_rel * gamma_i`` the tensor is multiplied by ``lambda_rel * gamma_i / (n_i + eps)``
  and its clipped norm is ``lambda_rel * gamma_i``; then ``gamma_i`` is updated with the EMA of the
  clipped norm.

Defaults (official code): lambda_rel 1.04, beta 0.99, 100 warm-up steps, warm-up max norm 1.0.

Design property (reference, "our reading"): ``gamma_i`` grows by at most a factor
``1 + (1 - beta)(lambda_rel - 1)`` per step (+0.04 %/step: ~1,700 steps to double), so a tensor whose
natural norm rises faster keeps being clipped; watch ``frac_tensors_clipped`` / ``max_ratio``.

Pitfalls of the public implementations fixed here:

- **State not checkpointed** (official ``defaultdict`` keyed by parameter object): ``gamma`` is
  keyed by the normalised parameter FQN (``_fsdp_wrapped_module.`` / ``_orig_mod.`` / leading
  ``module.`` stripped) and round-trips exactly with the warm-up progress: no second warm-up.
- **Off-by-one warm-up** (pytorch_optimizer ``step < warmup_steps`` gives 99 steps): exactly
  ``warmup_steps`` steps of global clipping; step ``warmup_steps + 1`` is the first per-tensor step.
- **Quadratic warm-up** (pytorch_optimizer recomputes the global norm inside the per-parameter
  loop): one vector of norms per step.
- **Not distribution-aware**: per-tensor norms are the *full-tensor* norms, from the local squared
  norms summed over the shard group in the single all-reduce of :meth:`GradClipper.clip_`.
- **Zero-norm absorbing state** (our reading): a tensor with an exactly zero gradient during warm-up
  (e.g. LoRA ``A`` while ``B = 0``, or a frozen/unused parameter) would get ``gamma_i = 0`` and then a
  threshold of 0 forever, since the EMA of clipped norms can never leave 0. Here a zero norm carries
  no information and leaves ``gamma_i`` unchanged; a tensor first seen with a non-zero norm after
  warm-up is clipped to ``warmup_max_norm`` (per tensor) on that step and ``gamma_i`` starts at its
  clipped norm.
- **Non-finite norms**: no statistics update (base class), so one overflow does not poison gamma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._validate import check_int_at_least, check_open_unit, check_positive
from .base import GradClipper, _as_float, _as_vec, check_finite_norm, coefficient


class AdaGC(GradClipper):
    """Per-tensor adaptive clipping (AdaGC); coefficients have shape ``(K,)``, one per tensor.

    Args:
        lambda_rel: relative threshold factor, > 1 is typical, must be > 0. Default 1.04.
        beta: EMA decay of the clipped per-tensor norm, in (0, 1). Default 0.99.
        warmup_steps: finite steps of global clipping before per-tensor clipping, >= 0. Default 100.
        warmup_max_norm: global max norm during warm-up (lambda_abs), > 0. Default 1.0. It is an
            absolute knob: it depends on the loss normalisation's scale.
        eps, nonfinite: see :class:`~adaclip_rl.gradclip.base.GradClipper`.
    """

    name = "adagc"
    per_tensor = True

    def __init__(
        self,
        lambda_rel: float = 1.04,
        beta: float = 0.99,
        warmup_steps: int = 100,
        warmup_max_norm: float = 1.0,
        *,
        eps: float = 1e-6,
        nonfinite: str = "skip",
    ) -> None:
        super().__init__(eps=eps, nonfinite=nonfinite)
        check_positive("AdaGC", "lambda_rel", lambda_rel)
        check_open_unit("AdaGC", "beta", beta)
        check_int_at_least("AdaGC", "warmup_steps", warmup_steps, 0)
        check_positive("AdaGC", "warmup_max_norm", warmup_max_norm)
        self.lambda_rel = float(lambda_rel)
        self.beta = float(beta)
        self.warmup_steps = warmup_steps
        self.warmup_max_norm = float(warmup_max_norm)
        self._keys: list[str] | None = None
        self._gamma: Tensor | None = None  # (K,) float64, NaN = not yet initialised
        self._pending: dict[str, float] = {}  # gamma of keys not bound in the current layout

    # ------------------------------------------------------------------ keys / layout
    def bind(self, names: Sequence[str]) -> None:
        """Align the per-tensor state with ``names`` (normalised FQNs, one per tensor, in order)."""
        names = list(names)
        if self._keys == names:
            return
        if len(set(names)) != len(names):
            raise ValueError("AdaGC.bind: parameter names must be unique")
        known = {**self._pending, **self.gamma_dict()}
        self._keys = names
        self._gamma = torch.tensor([known.get(k, math.nan) for k in names], dtype=torch.float64)
        current = set(names)
        self._pending = {k: v for k, v in known.items() if k not in current}

    def _ensure_layout(self, k: int) -> Tensor:
        if self._keys is None:
            self.bind([str(i) for i in range(k)])
        if len(self._keys) != k:
            raise ValueError(f"AdaGC: got {k} per-tensor norms but {len(self._keys)} tensors are bound")
        assert self._gamma is not None
        return self._gamma

    def gamma_dict(self) -> dict[str, float]:
        """``{name: gamma_i}`` for the initialised tensors of the current layout."""
        if self._keys is None or self._gamma is None:
            return {}
        return {k: v for k, v in zip(self._keys, self._gamma.tolist(), strict=True) if not math.isnan(v)}

    # ------------------------------------------------------------------ rule
    @property
    def in_warmup(self) -> bool:
        return self.num_updates < self.warmup_steps

    def thresholds(self) -> Tensor:
        """Per-tensor thresholds ``lambda_rel * gamma_i`` (``warmup_max_norm`` for uninitialised)."""
        if self._gamma is None:
            return torch.zeros(0, dtype=torch.float64)
        return torch.where(torch.isnan(self._gamma), self.warmup_max_norm, self.lambda_rel * self._gamma)

    def _decide(self, total: float, per: Tensor) -> tuple[Tensor, Tensor]:
        """(coefficients, clipped norms) for finite norms ``per`` of shape ``(K,)``."""
        self._ensure_layout(per.numel())
        if self.in_warmup:
            c = coefficient(self.warmup_max_norm, total, self.eps)
            return torch.full_like(per, c), per * c
        thr = self.thresholds()
        over = per > thr
        coef = torch.where(over, thr / (per + self.eps), torch.ones_like(per))
        return coef, torch.where(over, thr, per)

    def compute_coefficients(
        self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None
    ) -> Tensor:
        per = _as_vec(per_tensor_norms)
        if per is None:
            raise ValueError("AdaGC clips per tensor: per_tensor_norms is required")
        return self._decide(_as_float(total_norm), per)[0]

    def update(self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None) -> None:
        per = _as_vec(per_tensor_norms)
        if per is None:
            raise ValueError("AdaGC clips per tensor: per_tensor_norms is required")
        total = check_finite_norm(self, total_norm, per)
        _, clipped = self._decide(total, per)
        gamma = self._ensure_layout(per.numel())
        seen = per > 0  # a zero norm carries no information (see module docstring)
        uninit = torch.isnan(gamma)
        if self.in_warmup:
            new = torch.where(uninit, clipped, torch.minimum(gamma, clipped))
        else:
            new = torch.where(uninit, clipped, self.beta * gamma + (1.0 - self.beta) * clipped)
        self._gamma = torch.where(seen, new, gamma)
        self.num_updates += 1

    def lagged_threshold(self) -> float:
        raise NotImplementedError(
            "AdaGC clips per tensor; engines that clip the global norm internally (DeepSpeed ZeRO) "
            "cannot apply it. Use FSDP/DDP, or a global clipper (fixed, zclip, autoclip, quantile)."
        )

    # -------------------------------------------------------------- state / metrics
    def _extra_metrics(self, total: float, per: Tensor | None, coef: Tensor) -> dict[str, float]:
        assert per is not None
        nz = per > 0
        n_nz = int(nz.sum())
        frac = float(((coef < 1.0) & nz).sum()) / n_nz if n_nz else 0.0
        if self.in_warmup:
            max_ratio = total / self.warmup_max_norm
        else:
            ratio = per / self.thresholds()
            max_ratio = float(ratio.max()) if ratio.numel() else 0.0
        return {"frac_tensors_clipped": frac, "max_ratio": max_ratio}

    def last_clipped_names(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` tensors with the smallest coefficient (< 1) at the last step, for occasional logs."""
        coef = self.last_coefficients
        if coef is None or self._keys is None or coef.ndim == 0 or coef.numel() != len(self._keys):
            return []
        order = torch.argsort(coef)[:k].tolist()
        return [(self._keys[i], float(coef[i])) for i in order if coef[i] < 1.0]

    def _state(self) -> dict[str, Any]:
        return {"gamma": {**self._pending, **self.gamma_dict()}}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._pending = {str(k): float(v) for k, v in state["gamma"].items()}
        keys = self._keys
        self._keys, self._gamma = None, None
        if keys is not None:
            self.bind(keys)

    def config_repr(self) -> str:
        return (
            f"lambda_rel={self.lambda_rel}, beta={self.beta}, warmup_steps={self.warmup_steps}, "
            f"warmup_max_norm={self.warmup_max_norm}, {super().config_repr()}"
        )
