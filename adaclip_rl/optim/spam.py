r"""SPAM: Spike-Aware Adam with Momentum Reset (Huang et al., ICLR 2025, arXiv 2501.06842), faithful
to the official ``galore_torch/SPAM.py`` of github.com/TianjinYellow/SPAM-Optimizer at commit
e8185fb (the class is named ``AdamW`` there and exported as ``SPAM``).

Per parameter tensor, at optimizer step :math:`t` (1-based; Alg. 1 of the paper, as coded):

1. Momentum reset: when :math:`t \bmod \Delta T = 0` the moments are set to zero (the step count
   of the bias correction goes on), and a cosine warm-up of the step size restarts:
   ``scale = 1 - 0.99 (1 + cos(pi k / (warmup_steps + 1))) / 2`` for the ``k``-th step since the
   reset (``k < warmup_steps``), 1 afterwards (and before the first reset).
2. Spike-aware clipping: entries with :math:`g^2 > \theta\, v_{t-1}` become
   :math:`\mathrm{sign}(g) \sqrt{\theta\, v_{t-1}}` (``threshold`` :math:`\theta`), from step
   ``grad_accu_steps`` on and not in the first ``grad_accu_steps`` steps after a reset.
3. Adam (HF form: :math:`\epsilon` added to :math:`\sqrt{v}` before the bias correction folded into
   the step size), update multiplied by ``scale``; then weight decay ``p -= lr * wd * p``.

Differences from the official code, none in the arithmetic: all tensors of a group are updated
at once (``torch._foreach_*``) with no host read; the counters live in the param groups (the
official code keeps them in ``self.state`` under string keys, which breaks code that iterates the
state as parameter -> state); ``DeltaT=0`` means no reset (the official code divides by zero);
the closure runs with gradients enabled; param groups with ``density`` (the official sparse
momentum) are refused; ``no_deprecation_warning`` is accepted and ignored (the official warning
is a leftover of the HF AdamW it was copied from).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from ..checks import FieldValueError, _got, check_int, check_non_negative
from ._common import KeepStateDtype, check_betas, cosine_annealing, group_by_step, local, params_with_grads

__all__ = ["SPAM"]


class SPAM(KeepStateDtype, Optimizer):
    """SPAM. Positional arguments and defaults are the official constructor's.

    Args:
        params, lr, betas, eps, weight_decay: as HF ``AdamW`` (weight decay after the update).
        correct_bias: Adam's bias correction.
        no_deprecation_warning: accepted for signature compatibility; no warning either way.
        warmup_steps: length of the cosine step-size warm-up after each momentum reset.
        threshold: spike threshold :math:`\\theta` (0: no clipping).
        DeltaT: momentum-reset interval in optimizer steps (0: never).
        grad_accu_steps: steps of moment accumulation (after the start and after each reset)
            before clipping applies.

    Keyword-only (ours; default = official behaviour):
        clip_grad_in_place: the official clip writes into ``p.grad``; False leaves it untouched.
        state_dtype: dtype of the moments, e.g. ``torch.float32`` for bf16 parameters (the
            gradient is cast to it first); None: the gradient's dtype (official).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
                 no_deprecation_warning: bool = False, warmup_steps: int = 150, threshold: int = 5000,
                 DeltaT: int = 500, grad_accu_steps: int = 20, *, clip_grad_in_place: bool = True,  # noqa: N803
                 state_dtype: torch.dtype | None = None) -> None:
        check_non_negative("lr", lr)
        check_betas(betas)
        check_non_negative("eps", eps)
        check_non_negative("weight_decay", weight_decay)
        check_int("warmup_steps", warmup_steps, 0)
        check_non_negative("threshold", threshold)
        check_int("DeltaT", DeltaT, 0)
        check_int("grad_accu_steps", grad_accu_steps, 0)
        if state_dtype is not None and not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise FieldValueError(f"{{0}} must be a floating torch.dtype or None; got {_got(state_dtype)}",
                                  "state_dtype")
        self.warmup_steps = warmup_steps  # before super().__init__: add_param_group reads it
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.thres = threshold
        self.DeltaT = DeltaT
        self.grad_accu_steps = grad_accu_steps
        self.clip_grad_in_place = clip_grad_in_place
        self.state_dtype = state_dtype

    def add_param_group(self, param_group: dict) -> None:
        """As ``Optimizer.add_param_group``; the new group's counters are the optimizer's."""
        if "density" in param_group:
            raise ValueError("param groups with 'density' (SPAM's sparse momentum) are not supported")
        first = self.param_groups[0] if self.param_groups else {}
        param_group.setdefault("total_step", first.get("total_step", 0))
        param_group.setdefault("current_step", first.get("current_step", self.warmup_steps + 1))
        super().add_param_group(param_group)

    def scale_factor(self, current_step: int) -> float:
        """``1 - CosineDecay(0.99, warmup_steps).get_dr(current_step)`` of the official code."""
        if current_step >= self.warmup_steps:
            return 1 - 0.0
        return 1 - cosine_annealing(current_step, 0.99, self.warmup_steps + 1, 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
            group["total_step"] += 1
            group["current_step"] += 1
            if self.DeltaT and group["total_step"] != 0 and (group["total_step"] + 1) % self.DeltaT == 0:
                group["current_step"] = 0  # the warm-up restarts with the reset of the next step
        return loss

    def _step_group(self, group: dict) -> None:
        params = params_with_grads(group, "SPAM")
        if not params:
            return
        scale_factor = self.scale_factor(group["current_step"])
        beta1, beta2 = group["betas"]
        current = group["total_step"] + 1
        reset = bool(self.DeltaT) and current % self.DeltaT == 0
        clip = self.thres != 0 and current >= self.grad_accu_steps and (
            self.DeltaT == 0 or current % self.DeltaT >= self.grad_accu_steps)
        dtype = self.state_dtype
        grads_raw = [local(p.grad) for p in params]
        grads = [g.to(dtype) if dtype is not None and g.dtype != dtype else g for g in grads_raw]
        states = []
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p.grad, dtype=g.dtype, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p.grad, dtype=g.dtype, memory_format=torch.preserve_format)
            state["step"] += 1
            states.append(state)
        exp_avgs = [local(s["exp_avg"]) for s in states]
        exp_avg_sqs = [local(s["exp_avg_sq"]) for s in states]
        if reset:
            torch._foreach_zero_(exp_avgs + exp_avg_sqs)
        work = None  # one gradient-sized buffer per tensor, reused for the Adam denominator
        if clip:
            # official: where(g**2 > thres * v, sign(g) * sqrt(thres * v), g); as a clamp of g to
            # [-b, b] with b = sqrt(thres * v) (equal up to the rounding of the comparison): two
            # in-place passes over g instead of a mask, a square, a copysign and a select.
            work = torch._foreach_mul(exp_avg_sqs, self.thres)  # theta * v
            torch._foreach_sqrt_(work)  # b
            if self.clip_grad_in_place or all(g is not g_raw for g, g_raw in zip(grads, grads_raw, strict=True)):
                torch._foreach_minimum_(grads, work)
            else:  # p.grad is left as it was: the clipped gradient goes to a new tensor
                grads = torch._foreach_minimum(grads, work)
            torch._foreach_neg_(work)  # -b
            torch._foreach_maximum_(grads, work)
            if self.clip_grad_in_place:
                for g, g_raw in zip(grads, grads_raw, strict=True):
                    if g is not g_raw:
                        g_raw.copy_(g)
        # The Adam part keeps the official operations and their rounding: SPAM's clip bound reads v,
        # so in the parity test's spiky run a rounding change (lerp, addcdiv, p * (1 - lr * wd))
        # grows to 1e-5..1e-4 over 500 steps.
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        if work is None:
            denom = torch._foreach_sqrt(exp_avg_sqs)
        else:  # the bounds are spent
            denom = work
            for v, d in zip(exp_avg_sqs, denom, strict=True):
                torch.sqrt(v, out=d)
        torch._foreach_add_(denom, group["eps"])
        updates = denom
        for m, d in zip(exp_avgs, denom, strict=True):
            torch.div(m, d, out=d)
        p_local = [local(p) for p in params]
        for step, idx in group_by_step(range(len(params)), [s["step"] for s in states]).items():
            step_size = group["lr"]
            if group["correct_bias"]:
                bias_correction1 = 1.0 - beta1 ** step
                bias_correction2 = 1.0 - beta2 ** step
                step_size *= math.sqrt(bias_correction2) / bias_correction1
            torch._foreach_add_([p_local[i] for i in idx], [updates[i] for i in idx],
                                alpha=-step_size * scale_factor)
        if group["weight_decay"] > 0:
            torch._foreach_add_(p_local, p_local, alpha=-group["lr"] * group["weight_decay"])
