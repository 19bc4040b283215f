r"""Stable-SPAM (Huang et al. 2025, "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
Adam", arXiv 2502.17055), faithful to the official ``galore_torch/stablespam.py`` of
github.com/TianjinYellow/StableSPAM at commit 6a66da1.

Per parameter tensor with gradient :math:`g_t`, step :math:`t` (Alg. 1 of the paper, as coded):

1. Adaptive spike clipping (AdaClip, Eq. 2-3): :math:`m^{max}_t = \gamma_3 m^{max}_{t-1} + (1-\gamma_3)
   \max|g_t|`, :math:`\hat m^{max}_t = m^{max}_t / (1-\gamma_3^t)`; entries with
   :math:`|g_t| > \hat m^{max}_t` become :math:`g_t / \max|g_t| \cdot \hat m^{max}_t`.
2. Adaptive gradient-norm scaling (AdaGN, Eq. 4-5): with :math:`n_t = \|g_t\|_2` of the clipped
   matrix, :math:`m^n_t = \gamma_1 m^n_{t-1} + (1-\gamma_1) n_t`, :math:`v^n_t = \gamma_2 v^n_{t-1} +
   (1-\gamma_2) n_t^2` (bias-corrected), :math:`g_t \leftarrow g_t / n_t \cdot \hat m^n_t / (\sqrt{\hat v^n_t}
   + \epsilon)`.
3. Momentum reset (from SPAM): every ``update_proj_gap`` optimizer steps the Adam moments restart.
4. Adam with decoupled weight decay (applied first, ``p *= 1 - lr * wd``) and, with ``total_T``, a
   cosine decay of :math:`\beta_1` and :math:`\gamma_1` by ``scale`` from 1 to ``eta_min``.

The official code loops over tensors; this one applies each operation to all tensors of a group
at once (``torch._foreach_*``), reads nothing on the host (no ``.item()``, no data-dependent
``if``), keeps every counter in the state dict (the official ``total_steps`` is an attribute, so a
resumed run restarts its reset schedule and cosine), and under DTensor (FSDP2/TP) or with
``process_group`` (FSDP1 ``use_orig_params=True``) computes ``max|g|`` and :math:`\|g\|_2` of the
*full* matrix. The keyword-only options correct three things of the official code that look
unintended (``docs/optimizers.md`` lists them); their defaults reproduce it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..checks import FieldValueError, _got, check_int, check_interval, check_non_negative
from ._common import (
    KeepStateDtype,
    check_betas,
    cosine_annealing,
    group_by_step,
    is_sharded,
    local,
    params_with_grads,
    reduce_maxes,
    reduce_sq_norms,
)

__all__ = ["StableSPAM"]


def _picker(idx: list[int], n: int, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Selects entries ``idx`` of a length-``n`` vector (the identity for the usual single bucket)."""
    if len(idx) == n:
        return lambda v: v
    index = torch.tensor(idx, device=device)  # only when step counts differ (parameters without grads)
    return lambda v: v.index_select(0, index)


def _put(out: Tensor, idx: list[int], n: int, values: Tensor) -> None:
    """``out[idx] = values`` (a plain copy for the usual single bucket)."""
    if len(idx) == n:
        out.copy_(values)
    else:
        out.index_copy_(0, torch.tensor(idx, device=out.device), values)


def _stats_vector(states: list[dict], idx: list[int], key: str, cache: dict) -> Tensor:
    """The per-tensor statistic ``key`` of the tensors ``idx`` as one vector whose entries *are* the
    state's tensors (views). The first time (and whenever the state holds other tensors: a loaded
    checkpoint, other buckets) the values are stacked once and the state is pointed at the views;
    afterwards the cached vector is returned as is (no stack, no per-tensor write-back). Update it
    in place (``copy_``) so that the state follows. ``cache`` is not part of the state dict."""
    ts = [states[i][key] for i in idx]
    hit = cache.get((key, len(ts)))
    if hit is not None and all(a is b for a, b in zip(ts, hit[1], strict=True)):
        return hit[0]
    vec = torch.stack(ts)
    views = vec.unbind()
    for i, v in zip(idx, views, strict=True):
        states[i][key] = v
    cache[(key, len(ts))] = (vec, views)
    return vec


class StableSPAM(KeepStateDtype, Optimizer):
    """Stable-SPAM. Positional arguments and defaults are the official constructor's.

    Args:
        params, lr, betas, eps, weight_decay, amsgrad: as Adam(W) (decoupled weight decay, applied
            before the update as ``p *= 1 - lr * weight_decay``).
        gamma1: EMA factor of the first moment of the gradient norm (AdaGN); ``-1`` means ``betas[0]``.
        gamma2: EMA factor of the second moment of the gradient norm (AdaGN).
        gamma3: EMA factor of ``max |g|`` (AdaClip; the official code's ``theta``).
        total_T: if set, ``beta1`` and ``gamma1`` are multiplied by a cosine from 1 (step 0) to
            ``eta_min`` (step ``total_T + 1``; the official ``CosineDecay``, which goes on
            periodically past that step).
        eta_min: floor of that cosine.
        update_proj_gap: momentum reset every this many optimizer steps (0: never).

    Keyword-only (ours; defaults = official behaviour):
        reset_moments_first: at a reset step, zero the Adam moments *before* the update. Official
            (False): the update of the reset step reads the old moments (with the bias correction
            of step 1, i.e. the old first moment times ``1 / (1 - beta1)``); the zeros take effect
            from the next step, whose bias correction is that of step 2.
        separate_stats_step: the bias corrections of ``m_max`` (gamma3) and of the norm moments
            (gamma1, gamma2) count their own steps. Official (False): they use the Adam step that the
            reset sets back to 1 while these EMAs are not reset, so after every reset
            ``m_max_hat`` is inflated by ``1 / (1 - gamma3**2)`` (about 500 with 0.999) and decays
            back over about ``1 / (1 - gamma3)`` steps: spike clipping is off there.
        clip_grad_in_place: the official spike clip writes into ``p.grad`` (after ``step()``,
            ``p.grad`` holds the clipped gradient). False leaves ``p.grad`` as it was.
        state_dtype: dtype of the moments and statistics, e.g. ``torch.float32`` for bf16
            parameters (the gradient is cast to it first); None: the gradient's dtype (official).
        process_group: FSDP1 (``use_orig_params=True``) shard group, over which ``max|g|`` and the
            squared norm are reduced; DTensor gradients are reduced by their placements without it.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, gamma1: float = 0.7,
                 gamma2: float = 0.9, gamma3: float = 0.999, total_T: int | None = None, eta_min: float = 0.5,
                 update_proj_gap: int = 1000, *, reset_moments_first: bool = False,
                 separate_stats_step: bool = False, clip_grad_in_place: bool = True,
                 state_dtype: torch.dtype | None = None, process_group: Any = None) -> None:
        check_non_negative("lr", lr)
        check_non_negative("eps", eps)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        if gamma1 != -1:
            check_interval("gamma1", gamma1, 0, 1, high_open=True, why="or -1 for betas[0]")
        check_interval("gamma2", gamma2, 0, 1, high_open=True)
        check_interval("gamma3", gamma3, 0, 1, high_open=True)
        check_int("total_T", total_T, 1, allow_none=True)
        check_interval("eta_min", eta_min, 0, 1)
        check_int("update_proj_gap", update_proj_gap, 0)
        if state_dtype is not None and not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise FieldValueError(f"{{0}} must be a floating torch.dtype or None; got {_got(state_dtype)}",
                                  "state_dtype")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.gamma1 = betas[0] if gamma1 == -1 else gamma1
        self.gamma2 = gamma2
        self.theta = gamma3
        self.total_T = total_T
        self.eta_min = eta_min
        self.update_proj_gap = update_proj_gap
        self.reset_moments_first = reset_moments_first
        self.separate_stats_step = separate_stats_step
        self.clip_grad_in_place = clip_grad_in_place
        self.state_dtype = state_dtype
        self.process_group = process_group
        self._stats_cache: dict[int, dict] = {}  # see _stats_vector; not state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_stats_cache", {})
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("total_steps", 0)

    def add_param_group(self, param_group: dict) -> None:
        """As ``Optimizer.add_param_group``; the new group's step counter starts at the optimizer's."""
        steps = [g.get("total_steps", 0) for g in self.param_groups]
        param_group.setdefault("total_steps", max(steps, default=0))
        super().add_param_group(param_group)

    def scale(self, total_steps: int) -> float:
        """The cosine factor of ``beta1`` and ``gamma1`` at optimizer step ``total_steps`` (1 without ``total_T``)."""
        if self.total_T is None:
            return 1.0
        return cosine_annealing(total_steps, 1.0, self.total_T + 1, self.eta_min)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["total_steps"] += 1
            self._step_group(group)
        return loss

    def _init_state(self, p: Tensor, grad: Tensor, amsgrad: bool) -> dict:
        state = self.state[p]
        if "exp_avg" not in state:
            dtype = self.state_dtype or grad.dtype
            state["step"] = 0
            state["stats_step"] = 0
            state["exp_avg"] = torch.zeros_like(grad, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(grad, dtype=dtype, memory_format=torch.preserve_format)
            device = local(grad).device
            for key in ("m_norm_t", "v_norm_t", "m_max_t"):
                state[key] = torch.zeros((), dtype=dtype, device=device)
            if amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype or p.dtype,
                                                           memory_format=torch.preserve_format)
        return state

    def _step_group(self, group: dict) -> None:
        params = params_with_grads(group, "StableSPAM")
        if not params:
            return
        lr, eps, wd, amsgrad = group["lr"], group["eps"], group["weight_decay"], group["amsgrad"]
        beta1, beta2 = group["betas"]
        total_steps = group["total_steps"]
        scale = self.scale(total_steps)
        reset = self.update_proj_gap != 0 and total_steps % self.update_proj_gap == 0
        states = [self._init_state(p, p.grad, amsgrad) for p in params]
        p_local = [local(p) for p in params]
        if wd != 0:
            torch._foreach_mul_(p_local, 1 - lr * wd)

        grads_raw = [local(p.grad) for p in params]
        dtype = self.state_dtype
        grads = [g.to(dtype) if dtype is not None and g.dtype != dtype else g for g in grads_raw]
        for s in states:
            s["step"] += 1
            s["stats_step"] += 1
        stats_steps = [s["stats_step"] if self.separate_stats_step else s["step"] for s in states]
        sharded = is_sharded(params, self.process_group)

        # 1. AdaClip: spike clipping against the EMA of max|g| (Eq. 2-3). The per-tensor statistics
        # are updated as one vector per bucket of equal step counts; the state keeps each tensor's
        # entry (a view of that vector).
        # ``work`` is this step's one gradient-sized buffer per tensor: |g|, then the clip factor s, the
        # update gradient and the Adam denominator (no further large allocation; the inf-norm kernel
        # is much slower than abs + max on CPU).
        work = torch._foreach_abs(grads)
        if all(a.numel() for a in work):
            maxes = torch.stack(torch._foreach_max(work))
        else:
            maxes = torch.stack([a.amax() if a.numel() else a.new_zeros(()) for a in work])
        if sharded:
            maxes = reduce_maxes(maxes, [p.grad for p in params], self.process_group)
        n_params = len(params)
        buckets = group_by_step(range(n_params), stats_steps)
        cache = self._stats_cache.setdefault(id(group), {}) if len(buckets) == 1 else {}
        hat_vec = torch.empty_like(maxes)
        for stats_step, idx in buckets.items():
            pick = _picker(idx, n_params, maxes.device)
            m_max_vec = _stats_vector(states, idx, "m_max_t", cache)
            m_max_t = self.theta * m_max_vec + (1 - self.theta) * pick(maxes)
            m_max_vec.copy_(m_max_t)
            _put(hat_vec, idx, n_params, m_max_t / (1 - self.theta ** stats_step))
        # Entries above the threshold: g / max|g| * m_max_hat (official), as g * s with the factor
        # s = where(|g| > m_max_hat, r, 1), r = min(m_max_hat / max|g|, 1) (an entry above the
        # threshold exists only when r < 1). On CPU the bool kernels (>, where) cost 5-10x a float
        # pass, so s is computed from float passes only, written over |g|:
        # s = max(r, sign(next_up(m_max_hat) - |g|)): the sign is 1 where |g| <= m_max_hat, else 0 or -1.
        # s is exactly 1 or r, so g * s equals the official select bit for bit.
        ratios = list(torch.clamp_max(hat_vec / torch.where(maxes > 0, maxes, torch.ones_like(maxes)), 1).unbind())
        bounds = torch.nextafter(hat_vec, torch.full_like(hat_vec, math.inf)).unbind()
        for bound, buf in zip(bounds, work, strict=True):
            torch.sub(bound, buf, out=buf)
        torch._foreach_sign_(work)
        torch._foreach_maximum_(work, ratios)  # s
        writable = [g is not g_raw or self.clip_grad_in_place  # p.grad by choice, or our cast copy
                    for g, g_raw in zip(grads, grads_raw, strict=True)]
        if all(writable):
            torch._foreach_mul_(grads, work)
            clipped = grads
        else:
            clipped = [g.mul_(buf) if w else torch.mul(g, buf, out=buf)
                       for g, buf, w in zip(grads, work, writable, strict=True)]
        if self.clip_grad_in_place:
            for c, g_raw in zip(clipped, grads_raw, strict=True):
                if c is not g_raw:
                    g_raw.copy_(c)

        # 2. AdaGN: scale the matrix to the EMA ratio of its norms (Eq. 4-5), as g * (c / ||g||).
        norms = torch.stack(torch._foreach_norm(clipped))
        if sharded:
            norms = reduce_sq_norms(norms ** 2, params, self.process_group).sqrt()
        g1 = self.gamma1 * scale
        c_vec = torch.empty_like(norms)
        for stats_step, idx in buckets.items():
            n = _picker(idx, n_params, norms.device)(norms)
            m_norm_vec = _stats_vector(states, idx, "m_norm_t", cache)
            v_norm_vec = _stats_vector(states, idx, "v_norm_t", cache)
            m_norm_t = g1 * m_norm_vec + (1 - g1) * n
            v_norm_t = self.gamma2 * v_norm_vec + (1 - self.gamma2) * n ** 2
            m_norm_vec.copy_(m_norm_t)
            v_norm_vec.copy_(v_norm_t)
            m_norm_hat = m_norm_t / (1 - g1 ** stats_step)
            v_norm_hat = v_norm_t / (1 - self.gamma2 ** stats_step)
            _put(c_vec, idx, n_params, m_norm_hat / (torch.sqrt(v_norm_hat) + eps))
        # official: unchanged if ||g|| = 0 (then g = 0 and any factor keeps it 0)
        factors = (c_vec / torch.where(norms > 0, norms, torch.ones_like(norms))).unbind()
        for c, f, buf in zip(clipped, factors, work, strict=True):
            torch.mul(c, f, out=buf)
        update_grads = work
        del clipped

        # 3. momentum reset, 4. Adam.
        if reset:
            for s in states:
                s["step"] = 1
            if self.reset_moments_first:
                torch._foreach_zero_([local(s["exp_avg"]) for s in states] +
                                     [local(s["exp_avg_sq"]) for s in states])
        beta1 = beta1 * scale
        steps = [s["step"] for s in states]
        for step, idx in group_by_step(range(len(params)), steps).items():
            exp_avgs = [local(states[i]["exp_avg"]) for i in idx]
            exp_avg_sqs = [local(states[i]["exp_avg_sq"]) for i in idx]
            g = [update_grads[i] for i in idx]
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            torch._foreach_lerp_(exp_avgs, g, 1 - beta1)  # = beta1 * m + (1 - beta1) * g, one pass
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, g, g, value=1 - beta2)
            second = exp_avg_sqs
            if amsgrad:
                second = [local(states[i]["max_exp_avg_sq"]) for i in idx]
                torch._foreach_maximum_(second, exp_avg_sqs)
            denom = g  # the update gradient is spent: its buffer takes the denominator
            for v, d in zip(second, denom, strict=True):
                torch.sqrt(v, out=d)
            # sqrt(v) / sqrt(bc2) + eps = (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2): one pass less
            torch._foreach_add_(denom, eps * math.sqrt(bias_correction2))
            step_size = lr / bias_correction1 * math.sqrt(bias_correction2)
            torch._foreach_addcdiv_([p_local[i] for i in idx], exp_avgs, denom, value=-step_size)
            if reset and not self.reset_moments_first:  # official: the zeros replace them after this update
                torch._foreach_zero_(exp_avgs + exp_avg_sqs)
