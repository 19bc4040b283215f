"""Parity with the official optimizers (transcribed in ``optim_official.py``, with their commits): the
same small model, the same data and injected gradient spikes, 500 steps with several momentum
resets; our parameters equal the official ones. Also: checkpoint mid-run + resume equals the
uninterrupted run (the official StableSPAM would not: its step counter is outside the state dict)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from optim_official import OfficialSPAM, OfficialStableSPAM

from adaclip_rl.optim import SPAM, StableSPAM

STEPS = 500
SPIKE_STEPS = {7, 60, 61, 150, 230, 333, 420}  # includes steps right after resets (100, 200, ...)
FP32_ATOL = 1e-6  # observed on x86 CPU: SPAM bit-identical, Stable-SPAM <= 2e-7 (fewer passes, other rounding)


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).to(dtype)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 16, 6, generator=g), torch.randn(STEPS, 16, 3, generator=g)


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    model.zero_grad(set_to_none=True)
    out = model(x.to(next(model.parameters()).dtype))
    ((out.float() - y) ** 2).mean().backward()
    if step in SPIKE_STEPS:  # a spike in a few entries of every tensor, up to 1000x
        for i, p in enumerate(model.parameters()):
            flat = p.grad.view(-1)
            flat[(step + i) % flat.numel()] *= 1000.0
            flat[(3 * step + i) % flat.numel()] *= -300.0


def _run(model, opt, start: int = 0, stop: int = STEPS):
    xs, ys = _data()
    for t in range(start, stop):
        _grads(model, xs[t], ys[t], t)
        opt.step()
    return model


STABLE_CASES = {
    "defaults-gap100": dict(update_proj_gap=100),
    "cosine-wd-gap100": dict(update_proj_gap=100, total_T=300, weight_decay=0.1, gamma1=-1),
    "amsgrad-gap128": dict(update_proj_gap=128, amsgrad=True, gamma3=0.99),
}
SPAM_CASES = {
    "gap100": dict(DeltaT=100, warmup_steps=30, threshold=50, grad_accu_steps=10),
    "wd-nobias-gap64": dict(DeltaT=64, warmup_steps=10, threshold=20, grad_accu_steps=5, weight_decay=0.1,
                            correct_bias=False),
}


def _pair(kind: str, case: dict, dtype: torch.dtype, **ours):
    lr = 3e-3
    ref_model, our_model = _model(dtype), _model(dtype)
    upcast = dtype != torch.float32
    if kind == "stable":
        ref = OfficialStableSPAM(ref_model.parameters(), lr=lr, upcast_grad=upcast, **case)
        our = StableSPAM(our_model.parameters(), lr=lr, state_dtype=torch.float32 if upcast else None, **case, **ours)
    else:
        ref = OfficialSPAM(ref_model.parameters(), lr=lr, upcast_grad=upcast, **case)
        our = SPAM(our_model.parameters(), lr=lr, state_dtype=torch.float32 if upcast else None, **case, **ours)
    return ref_model, ref, our_model, our


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p.float() - q.float()).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("kind,name", [("stable", n) for n in STABLE_CASES] + [("spam", n) for n in SPAM_CASES])
def test_fp32_parity_with_official(kind, name):
    case = (STABLE_CASES if kind == "stable" else SPAM_CASES)[name]
    ref_model, ref, our_model, our = _pair(kind, case, torch.float32)
    start = [p.detach().clone() for p in ref_model.parameters()]
    _run(ref_model, ref)
    _run(our_model, our)
    moved = max((p - s).abs().max().item() for p, s in zip(ref_model.parameters(), start, strict=True))
    assert moved > 0.05  # the run really trains
    assert _max_diff(ref_model, our_model) <= FP32_ATOL


@pytest.mark.parametrize("kind,name", [("stable", "cosine-wd-gap100"), ("spam", "gap100")])
def test_bf16_params_fp32_state_parity_with_official(kind, name):
    """bf16 parameters, float32 moments/statistics: equal to the official code reading the gradient as
    float32 (its moments then are float32), up to one bf16 rounding step of the parameters."""
    case = (STABLE_CASES if kind == "stable" else SPAM_CASES)[name]
    ref_model, ref, our_model, our = _pair(kind, case, torch.bfloat16)
    _run(ref_model, ref)
    _run(our_model, our)
    assert all(s["exp_avg"].dtype == torch.float32 for s in our.state.values())
    assert all(p.dtype == torch.bfloat16 for p in our_model.parameters())
    bf16_ulp = max(p.float().abs().max().item() for p in ref_model.parameters()) * 2 ** -7
    assert _max_diff(ref_model, our_model) <= bf16_ulp


def test_official_clip_writes_into_grad_and_option_leaves_it():
    """The official clip changes ``p.grad`` in place (default, as official); ``clip_grad_in_place=False`` not."""
    for in_place in (True, False):
        model = _model(torch.float32)
        opt = StableSPAM(model.parameters(), clip_grad_in_place=in_place)
        xs, ys = _data()
        _run(model, opt, 0, 3)
        _grads(model, xs[7], ys[7], 7)  # a spike step
        before = [p.grad.clone() for p in model.parameters()]
        opt.step()
        changed = any(not torch.equal(b, p.grad) for b, p in zip(before, model.parameters(), strict=True))
        assert changed == in_place


@pytest.mark.parametrize("kind", ["stable", "spam"])
def test_resume_mid_run_equals_uninterrupted(kind):
    case = STABLE_CASES["cosine-wd-gap100"] if kind == "stable" else SPAM_CASES["gap100"]
    cls = StableSPAM if kind == "stable" else SPAM
    full = _model(torch.float32)
    _run(full, cls(full.parameters(), lr=3e-3, **case))

    first = _model(torch.float32)
    opt = cls(first.parameters(), lr=3e-3, **case)
    _run(first, opt, 0, 250)  # mid-run, between resets and inside the cosine
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = _model(torch.float32)
    resumed.load_state_dict(ckpt["model"])
    opt2 = cls(resumed.parameters(), lr=3e-3, **case)
    opt2.load_state_dict(ckpt["opt"])
    _run(resumed, opt2, 250, STEPS)
    assert _max_diff(full, resumed) == 0.0


@pytest.mark.parametrize("kind", ["stable", "spam"])
def test_resume_keeps_fp32_state_of_bf16_parameters(kind):
    """torch's ``Optimizer.load_state_dict`` casts state to the parameter dtype; ours keeps float32."""
    case = STABLE_CASES["cosine-wd-gap100"] if kind == "stable" else SPAM_CASES["gap100"]
    cls = StableSPAM if kind == "stable" else SPAM
    full = _model(torch.bfloat16)
    _run(full, cls(full.parameters(), lr=3e-3, state_dtype=torch.float32, **case))
    first = _model(torch.bfloat16)
    opt = cls(first.parameters(), lr=3e-3, state_dtype=torch.float32, **case)
    _run(first, opt, 0, 250)
    resumed = copy.deepcopy(first)
    opt2 = cls(resumed.parameters(), lr=3e-3, state_dtype=torch.float32, **case)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt2.state.values())
    _run(resumed, opt2, 250, STEPS)
    assert _max_diff(full, resumed) == 0.0


def test_official_stable_spam_does_not_resume():
    """Why the counters must be in the state dict: the official optimizer, reloaded, restarts its reset
    schedule and cosine (so this test shows the reference differs from itself when resumed)."""
    case = STABLE_CASES["cosine-wd-gap100"]
    full = _model(torch.float32)
    _run(full, OfficialStableSPAM(full.parameters(), lr=3e-3, **case))
    first = _model(torch.float32)
    opt = OfficialStableSPAM(first.parameters(), lr=3e-3, **case)
    _run(first, opt, 0, 250)
    resumed = copy.deepcopy(first)
    opt2 = OfficialStableSPAM(resumed.parameters(), lr=3e-3, **case)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _run(resumed, opt2, 250, STEPS)
    assert _max_diff(full, resumed) > 1e-3
