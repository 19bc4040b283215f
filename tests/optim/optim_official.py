"""Transcriptions of the official optimizers, the references of the parity tests.

- ``OfficialStableSPAM``: ``galore_torch/stablespam.py`` of github.com/TianjinYellow/StableSPAM,
  commit 6a66da1 ("Update stablespam.py").
- ``OfficialSPAM``: ``galore_torch/SPAM.py`` (class ``AdamW``, exported as ``SPAM``) of
  github.com/TianjinYellow/SPAM-Optimizer, commit e8185fb ("update hyperparameters").

The arithmetic is copied line by line; removed are comments, prints, and SPAM's sparse-momentum
("density") branches, which the tests do not use. One switch is ours, ``upcast_grad`` (marked
``# CHANGED``): it reads the gradient as ``p.grad.float()``, so that the moments and statistics
are float32 for bf16 parameters (the reference of the "bf16 parameters, fp32 state" parity test).
"""

from __future__ import annotations

import math

import torch
import torch.optim as optim
from torch.optim.optimizer import Optimizer


class CosineDecayStable:
    """stablespam.py's CosineDecay (no clamp at T_max)."""

    def __init__(self, death_rate, T_max, eta_min=0.5, last_epoch=-1):  # noqa: N803
        self.sgd = optim.SGD(torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1))]), lr=death_rate)
        self.cosine_stepper = torch.optim.lr_scheduler.CosineAnnealingLR(self.sgd, T_max + 1, eta_min, last_epoch)
        self.T_max = T_max
        self.eta_min = eta_min

    def step(self, current_step):
        self.cosine_stepper.step(current_step)

    def get_dr(self, current_step):
        self.step(current_step)
        return self.sgd.param_groups[0]['lr']


class CosineDecaySPAM(CosineDecayStable):
    """SPAM.py's CosineDecay (returns eta_min from T_max on)."""

    def __init__(self, death_rate, T_max, eta_min=0, last_epoch=-1):  # noqa: N803
        super().__init__(death_rate, T_max, eta_min, last_epoch)

    def get_dr(self, current_step):
        if current_step >= self.T_max:
            return self.eta_min
        self.step(current_step)
        return self.sgd.param_groups[0]["lr"]


class OfficialStableSPAM(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, gamma1=0.7,
                 gamma2=0.9, gamma3=0.999, total_T=None, eta_min=0.5, update_proj_gap=1000, upcast_grad=False):  # noqa: N803
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.gamma1 = gamma1
        self.gamma2 = gamma2
        self.theta = gamma3
        self.total_T = total_T
        if self.total_T is not None:
            self.warmup = CosineDecayStable(1.0, total_T, eta_min=eta_min)
        self.total_steps = 0
        if self.gamma1 == -1:
            self.gamma1 = betas[0]
        self.update_proj_gap = update_proj_gap
        self.upcast_grad = upcast_grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.total_steps += 1
        if self.total_T is not None:
            scale = self.warmup.get_dr(self.total_steps)
        else:
            scale = 1.0
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                p.data.mul_(1 - group['lr'] * group['weight_decay'])
                grad = p.grad.float() if self.upcast_grad else p.grad  # CHANGED (upcast_grad only)
                amsgrad = group['amsgrad']
                state = self.state[p]
                if "exp_avg" not in state:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(grad)
                    state['exp_avg_sq'] = torch.zeros_like(grad)
                    state["m_norm_t"] = 0
                    state["v_norm_t"] = 0
                    state['m_max_t'] = 0
                    if amsgrad:
                        state['max_exp_avg_sq'] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                max_gradient = torch.max(grad.abs())
                m_max_t = state["m_max_t"]
                state['step'] += 1
                m_max_t = self.theta * m_max_t + (1 - self.theta) * max_gradient
                m_max_hat = m_max_t / (1 - self.theta**state['step'])
                mask = grad.abs() > m_max_hat
                if mask.sum() > 0:
                    grad[mask] = grad[mask] / max_gradient * m_max_hat
                state["m_max_t"] = m_max_t
                grad_norm = torch.norm(grad)
                m_norm_t, v_norm_t = state["m_norm_t"], state["v_norm_t"]
                m_norm_t = self.gamma1 * scale * m_norm_t + (1 - self.gamma1 * scale) * grad_norm
                v_norm_t = self.gamma2 * v_norm_t + (1 - self.gamma2) * grad_norm**2
                m_norm_hat = m_norm_t / (1 - (self.gamma1 * scale)**state['step'])
                v_norm_hat = v_norm_t / (1 - self.gamma2**state['step'])
                c_norm_t = m_norm_hat / (torch.sqrt(v_norm_hat) + group["eps"])
                if grad_norm > 0:
                    grad = grad / grad_norm * c_norm_t
                state["m_norm_t"], state["v_norm_t"] = m_norm_t, v_norm_t
                if self.update_proj_gap != 0:
                    if (self.total_steps % self.update_proj_gap == 0):
                        state["exp_avg"] = torch.zeros_like(grad)
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                        state['step'] = 1
                if amsgrad:
                    max_exp_avg_sq = state['max_exp_avg_sq']
                beta1, beta2 = group['betas']
                beta1 = beta1 * scale
                bias_correction1 = 1 - beta1 ** state['step']
                bias_correction2 = 1 - beta2 ** state['step']
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if amsgrad:
                    torch.max(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
                    denom = (max_exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
                else:
                    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
                step_size = group['lr'] / bias_correction1
                norm_grad = exp_avg / denom
                grad = norm_grad
                p.add_(grad, alpha=-step_size)
        return loss


class OfficialSPAM(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True,
                 no_deprecation_warning=False, warmup_steps=150, threshold=5000, DeltaT=500,  # noqa: N803
                 grad_accu_steps=20, upcast_grad=False):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "correct_bias": correct_bias}
        super().__init__(params, defaults)
        self.state["total_step"] = 0
        self.state["current_step"] = warmup_steps + 1
        self.DeltaT = DeltaT
        self.warmup_steps = warmup_steps
        self.warmup = CosineDecaySPAM(0.99, warmup_steps)
        self.thres = threshold
        self.grad_accu_steps = grad_accu_steps
        self.upcast_grad = upcast_grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            loss = closure()
        scale_factor = 1 - self.warmup.get_dr(self.state["current_step"])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float() if self.upcast_grad else p.grad  # CHANGED (upcast_grad only)
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                if (self.state["total_step"] + 1) % self.DeltaT == 0:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                if self.thres != 0:
                    current_step = self.state["total_step"] + 1
                    if current_step >= self.grad_accu_steps:
                        exp_avg_sq1 = exp_avg_sq
                        mask = (grad**2) > (self.thres * exp_avg_sq1)
                        if self.DeltaT != 0:
                            if current_step % self.DeltaT >= self.grad_accu_steps:
                                grad[mask] = grad[mask].sign() * torch.sqrt(exp_avg_sq1[mask] * self.thres)
                        else:
                            grad[mask] = grad[mask].sign() * torch.sqrt(exp_avg_sq1[mask] * self.thres)
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    bias_correction1 = 1.0 - beta1 ** state["step"]
                    bias_correction2 = 1.0 - beta2 ** state["step"]
                    step_size *= math.sqrt(bias_correction2) / bias_correction1
                norm_grad = exp_avg / denom
                p.add_(norm_grad, alpha=-step_size * scale_factor)
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=(-group["lr"] * group["weight_decay"]))
        self.state["total_step"] += 1
        self.state["current_step"] += 1
        if (self.state["total_step"] != 0) and ((self.state["total_step"] + 1) % self.DeltaT == 0):
            self.state["current_step"] = 0
            self.warmup = CosineDecaySPAM(0.99, self.warmup_steps)
        return loss
