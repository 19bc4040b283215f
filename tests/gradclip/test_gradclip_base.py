"""Interface-level behaviour shared by every clipper: clip_ on a real module, non-finite handling,
state round-trip, factory and argument validation."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from adaclip_rl.gradclip import (
    GRAD_CLIPPERS,
    AdaGC,
    AutoClip,
    FixedClip,
    GradClipper,
    QuantileClip,
    ZClip,
    build_grad_clipper,
    grad_sq_norms,
    normalize_param_name,
)

EPS = 1e-6


def _model_with_grads(seed: int = 0, scale: float = 1.0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    x = torch.randn(8, 6, dtype=dtype)
    (m(x).float().pow(2).sum() * scale).backward()
    return m


def _grads(m: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in m.parameters()]


def _small_clippers() -> dict[str, GradClipper]:
    """One instance of each clipper with short warm-ups, for sequence tests."""
    return {
        "fixed": FixedClip(1.5),
        "zclip": ZClip(warmup_steps=5),
        "adagc": AdaGC(warmup_steps=5, warmup_max_norm=2.0),
        "autoclip": AutoClip(percentile=50, window=7),
        "quantile": QuantileClip(target_quantile=0.7, learning_rate=0.1),
    }


def _norm_sequence(n: int, k: int = 3, seed: int = 0) -> list[tuple[float, torch.Tensor]]:
    """Per-tensor norms (K=k) with spikes and a couple of non-finite steps; total = L2 of the vector."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n):
        per = torch.exp(0.3 * torch.randn(k, generator=g, dtype=torch.float64))
        if t % 11 == 7:
            per[t % k] *= 20.0  # spike in one tensor
        if t in (9, 23):
            per[1] = math.inf if t == 9 else math.nan
        out.append((float(per.norm()), per))
    return out


# ----------------------------------------------------------------------------- clip_ on a module


def test_fixed_clip_matches_torch_clip_grad_norm():
    m1, m2 = _model_with_grads(scale=50.0), _model_with_grads(scale=50.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(m2.parameters(), 1.0)
    norm = FixedClip(1.0).clip_(m1.parameters())
    assert norm.dtype == torch.float32
    torch.testing.assert_close(norm, ref_norm, rtol=1e-6, atol=0)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["fixed", "zclip", "adagc", "autoclip", "quantile"])
def test_clipping_changes_p_grad_in_place(name):
    """Guards against the boolean-index copy bug: the clip must change p.grad itself."""
    kwargs = {
        "fixed": {"max_norm": 0.5},
        "zclip": {"warmup_steps": 1, "max_grad_norm": 0.5},  # warm-up step: the cap clips
        "adagc": {"warmup_steps": 1, "warmup_max_norm": 0.5},  # warm-up step: global clip
        "autoclip": {"percentile": 50.0},
        "quantile": {"initial_clip": 0.5},
    }[name]
    clipper = build_grad_clipper(name, **kwargs)
    if name == "autoclip":  # seed the window with small norms so the median is below this norm
        for _ in range(4):
            clipper.step(0.25, torch.tensor([0.25]))
    m = _model_with_grads(scale=10.0)
    before = _grads(m)
    grad_objects = [p.grad for p in m.parameters()]
    pre = clipper.clip_(m.named_parameters())
    total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in before))
    assert float(pre) == pytest.approx(total, rel=1e-6)
    coef = float(clipper.last_coefficients.min())
    assert coef < 1.0
    for p, g0, obj in zip(m.parameters(), before, grad_objects, strict=True):
        assert p.grad is obj  # modified in place, same tensor object
        assert not torch.equal(p.grad, g0)
        torch.testing.assert_close(p.grad, g0 * coef, rtol=1e-6, atol=1e-9)
    post = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in m.parameters()))
    assert post == pytest.approx(clipper.metrics()["post_clip_norm"], rel=1e-5)


def test_grad_sq_norms_fp32_accumulation_and_missing_grads():
    a = nn.Parameter(torch.zeros(1000, dtype=torch.bfloat16))
    a.grad = torch.full((1000,), 3.0, dtype=torch.bfloat16)
    b = nn.Parameter(torch.zeros(3))  # no grad: contributes 0
    c = nn.Parameter(torch.zeros(2))
    c.grad = torch.tensor([3.0, 4.0])
    sq = grad_sq_norms([a, b, c])
    assert sq.dtype == torch.float32 and sq.shape == (3,)
    torch.testing.assert_close(sq, torch.tensor([9000.0, 0.0, 25.0]), rtol=1e-6, atol=0)
    norm = FixedClip(1.0).clip_([a, b, c])
    assert float(norm) == pytest.approx(math.sqrt(9025.0), rel=1e-6)
    assert b.grad is None


@pytest.mark.parametrize("bad", [math.inf, math.nan])
@pytest.mark.parametrize("action", ["skip", "zero", "none"])
def test_nonfinite_norm_actions(bad, action):
    clipper = ZClip(warmup_steps=2, nonfinite=action)
    clipper.step(1.0)
    clipper.step(1.2)
    state = copy.deepcopy(clipper.state_dict())
    m = _model_with_grads()
    m[0].weight.grad[0, 0] = bad
    before = _grads(m)
    norm = clipper.clip_(m.parameters())
    assert not math.isfinite(float(norm))
    # statistics untouched, the step counted
    after = clipper.state_dict()
    assert after["num_nonfinite"] == state["num_nonfinite"] + 1
    assert {k: v for k, v in after.items() if k != "num_nonfinite"} == {
        k: v for k, v in state.items() if k != "num_nonfinite"
    }
    assert clipper.metrics()["nonfinite"] == 1.0 and clipper.metrics()["nonfinite_steps"] == 1.0
    if action == "skip":
        assert all(p.grad is None for p in m.parameters())
    elif action == "zero":  # zero_(), not mul_(0): NaN * 0 would stay NaN
        assert all(torch.count_nonzero(p.grad) == 0 for p in m.parameters())
    else:
        for p, g0 in zip(m.parameters(), before, strict=True):
            assert torch.equal(p.grad.nan_to_num(), g0.nan_to_num())
    # a following finite step proceeds normally
    m2 = _model_with_grads(seed=1)
    assert math.isfinite(float(clipper.clip_(m2.parameters())))
    assert clipper.num_updates == 3 and clipper.metrics()["nonfinite"] == 0.0


def test_skip_makes_adamw_step_a_no_op():
    m = _model_with_grads()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
    opt.step()
    opt.zero_grad()
    params = [p.detach().clone() for p in m.parameters()]
    (m(torch.randn(2, 6)).sum() * math.inf).backward()
    FixedClip(1.0).clip_(m.parameters())
    opt.step()
    for p, p0 in zip(m.parameters(), params, strict=True):
        assert torch.equal(p, p0)


def test_update_rejects_nonfinite_norms():
    for clipper in _small_clippers().values():
        with pytest.raises(ValueError, match="finite"):
            clipper.update(math.nan, torch.tensor([math.nan, 1.0, 1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------- state round trip


@pytest.mark.parametrize("name", ["fixed", "zclip", "adagc", "autoclip", "quantile"])
@pytest.mark.parametrize("split", [3, 8, 20])  # mid warm-up, just after, well after
def test_state_dict_round_trip_continues_exactly(name, split):
    seq = _norm_sequence(40)
    ref = _small_clippers()[name]
    ref_coefs = [ref.step(total, per) for total, per in seq]

    first = _small_clippers()[name]
    coefs = [first.step(total, per) for total, per in seq[:split]]
    saved = json.loads(json.dumps(first.state_dict()))  # plain, JSON-serialisable state
    resumed = _small_clippers()[name]
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == first.state_dict()
    assert resumed.in_warmup == first.in_warmup
    coefs += [resumed.step(total, per) for total, per in seq[split:]]
    for a, b in zip(coefs, ref_coefs, strict=True):
        assert torch.equal(a, b)
    assert resumed.state_dict() == ref.state_dict()
    assert resumed.num_nonfinite == 2


def test_load_state_dict_rejects_other_clipper():
    with pytest.raises(ValueError, match="zclip"):
        AutoClip().load_state_dict(ZClip().state_dict())


# ----------------------------------------------------------------------------- factory / config


def test_factory_and_registry():
    assert set(GRAD_CLIPPERS) == {"none", "fixed", "zclip", "adagc", "autoclip", "quantile"}
    assert build_grad_clipper("none") is None and build_grad_clipper(None) is None
    for name, cls in GRAD_CLIPPERS.items():
        if cls is not None:
            assert isinstance(build_grad_clipper(name), cls)
    z = build_grad_clipper("ZClip", alpha=0.9, z_thresh=2.0)
    assert (z.alpha, z.z_thresh, z.warmup_steps) == (0.9, 2.0, 25)
    with pytest.raises(ValueError, match="grad_clip must be one of"):
        build_grad_clipper("spam")
    with pytest.raises(TypeError):
        build_grad_clipper("fixed", alpha=0.5)


def test_defaults_follow_the_reference():
    z = ZClip()
    assert (z.alpha, z.z_thresh, z.warmup_steps, z.clip_option, z.max_grad_norm) == (
        0.97,
        2.5,
        25,
        "adaptive_scaling",
        None,
    )
    a = AdaGC()
    assert (a.lambda_rel, a.beta, a.warmup_steps, a.warmup_max_norm) == (1.04, 0.99, 100, 1.0)
    c = AutoClip()
    assert (c.percentile, c.window) == (10.0, 1000)
    q = QuantileClip()
    assert (q.target_quantile, q.learning_rate, q.initial_clip) == (0.5, 0.05, None)


@pytest.mark.parametrize(
    ("name", "kwargs", "arg", "allowed"),
    [
        ("fixed", {"max_norm": 0.0}, "max_norm", "> 0"),
        ("fixed", {"max_norm": math.inf}, "max_norm", "> 0"),
        ("zclip", {"alpha": 1.0}, "alpha", "(0, 1)"),
        ("zclip", {"z_thresh": -1.0}, "z_thresh", "> 0"),
        ("zclip", {"warmup_steps": 0}, "warmup_steps", ">= 1"),
        ("zclip", {"warmup_steps": 2.5}, "warmup_steps", ">= 1"),
        ("zclip", {"max_grad_norm": -1.0}, "max_grad_norm", "> 0"),
        ("zclip", {"clip_option": "percentile"}, "clip_option", "adaptive_scaling"),
        ("zclip", {"clip_factor": 0.0}, "clip_factor", "> 0"),
        ("zclip", {"eps": 0.0}, "eps", "> 0"),
        ("zclip", {"nonfinite": "raise"}, "nonfinite", "skip"),
        ("adagc", {"lambda_rel": 0.0}, "lambda_rel", "> 0"),
        ("adagc", {"beta": 1.5}, "beta", "(0, 1)"),
        ("adagc", {"warmup_steps": -1}, "warmup_steps", ">= 0"),
        ("adagc", {"warmup_max_norm": 0.0}, "warmup_max_norm", "> 0"),
        ("autoclip", {"percentile": 101.0}, "percentile", "[0, 100]"),
        ("autoclip", {"window": 0}, "window", ">= 1"),
        ("quantile", {"target_quantile": 1.0}, "target_quantile", "(0, 1)"),
        ("quantile", {"learning_rate": 0.0}, "learning_rate", "> 0"),
        ("quantile", {"initial_clip": -2.0}, "initial_clip", "> 0"),
        ("quantile", {"min_clip": 2.0, "max_clip": 1.0}, "max_clip", "> min_clip"),
    ],
)
def test_invalid_config_raises_value_error_naming_argument_and_range(name, kwargs, arg, allowed):
    with pytest.raises(ValueError) as info:
        build_grad_clipper(name, **kwargs)
    msg = str(info.value)
    assert arg in msg and allowed in msg and repr(next(iter(kwargs.values()))) in msg


def test_normalize_param_name():
    assert (
        normalize_param_name("module._fsdp_wrapped_module.model.layers.0._orig_mod.w") == "model.layers.0.w"
    )
    assert normalize_param_name("_checkpoint_wrapped_module.lm_head.weight") == "lm_head.weight"
    assert normalize_param_name("model.module_list.0.weight") == "model.module_list.0.weight"


def test_import_does_not_pull_trl_or_transformers():
    code = (
        "import sys, adaclip_rl.gradclip, adaclip_rl.gradclip.distributed;"
        "bad=[m for m in ('trl','transformers','accelerate') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
