"""AdaGC: warm-up of global clipping, per-tensor thresholds, EMA of clipped norms, keyed state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adaclip_rl.gradclip import AdaGC

EPS = 1e-6


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def step(c: AdaGC, *per):
    p = vec(*per)
    return c.step(float(p.norm()), p)


def test_warmup_is_global_clipping_and_gamma_is_min_clipped_norm():
    c = AdaGC(warmup_steps=3, warmup_max_norm=1.0)
    # total 5 -> every tensor scaled by 1/(5+eps)
    coef = step(c, 3.0, 4.0)
    torch.testing.assert_close(coef, torch.full((2,), 1.0 / (5.0 + EPS), dtype=torch.float64))
    step(c, 0.3, 0.4)  # total 0.5 < 1: not clipped
    step(c, 6.0, 8.0)  # total 10
    g = c.gamma_dict()
    assert g["0"] == pytest.approx(min(3 / (5 + EPS), 0.3, 6 / (10 + EPS)))
    assert g["1"] == pytest.approx(min(4 / (5 + EPS), 0.4, 8 / (10 + EPS)))
    assert not c.in_warmup


def test_per_tensor_rule_after_warmup_hand_computed():
    c = AdaGC(warmup_steps=1, warmup_max_norm=100.0)
    step(c, 1.0, 2.0)  # gamma = (1, 2)
    # tensor 0 spikes above 1.04 * 1; tensor 1 below 1.04 * 2
    coef = step(c, 3.0, 2.05)
    assert float(coef[0]) == pytest.approx(1.04 / (3.0 + EPS), rel=1e-12)
    assert float(coef[1]) == 1.0
    g = c.gamma_dict()
    assert g["0"] == pytest.approx(0.99 * 1.0 + 0.01 * 1.04, rel=1e-14)  # EMA of the clipped norm
    assert g["1"] == pytest.approx(0.99 * 2.0 + 0.01 * 2.05, rel=1e-14)
    m = c.metrics()
    assert m["frac_tensors_clipped"] == 0.5 and m["max_ratio"] == pytest.approx(3.0 / 1.04)
    assert m["post_clip_norm"] == pytest.approx(math.hypot(3.0 * 1.04 / (3.0 + EPS), 2.05))


def test_default_warmup_is_exactly_100_steps():
    c = AdaGC()
    for t in range(1, 101):
        coef = step(c, 1.0, 1.0)  # total sqrt(2) > 1: global clip every warm-up step
        assert c.metrics()["warmup"] == 1.0, t
        torch.testing.assert_close(coef, torch.full((2,), 1 / (math.sqrt(2) + EPS), dtype=torch.float64))
    assert not c.in_warmup and c.num_updates == 100
    coef = step(c, 1.0, 1.0)  # step 101: per tensor, gamma = 1/(sqrt(2)+eps), threshold 1.04 * gamma
    assert c.metrics()["warmup"] == 0.0
    expected = 1.04 / (math.sqrt(2) + EPS) / (1.0 + EPS)
    torch.testing.assert_close(coef, torch.full((2,), expected, dtype=torch.float64))


def test_threshold_growth_is_bounded():
    c = AdaGC(warmup_steps=1, warmup_max_norm=100.0)
    step(c, 1.0)
    for _ in range(10):
        step(c, 1000.0)
    assert c.gamma_dict()["0"] == pytest.approx((1 + 0.01 * 0.04) ** 10, rel=1e-12)


def test_zero_norm_tensors_do_not_get_an_absorbing_zero_threshold():
    c = AdaGC(warmup_steps=2, warmup_max_norm=10.0)
    step(c, 1.0, 0.0)  # e.g. LoRA A while B == 0
    step(c, 1.0, 0.0)
    assert c.gamma_dict() == {"0": 1.0}
    # first non-zero norm after warm-up: clipped per tensor to warmup_max_norm, gamma starts there
    coef = step(c, 1.0, 50.0)
    assert float(coef[1]) == pytest.approx(10.0 / (50.0 + EPS))
    assert c.gamma_dict()["1"] == 10.0
    coef = step(c, 1.0, 0.0)  # zero again: untouched, gamma unchanged
    assert float(coef[1]) == 1.0 and c.gamma_dict()["1"] == 10.0


def test_nonfinite_per_tensor_norm_leaves_gamma_unchanged():
    c = AdaGC(warmup_steps=1, warmup_max_norm=100.0)
    step(c, 1.0, 2.0)
    before = c.state_dict()
    coef = c.step(math.inf, vec(math.inf, 1.0))
    assert torch.equal(coef, torch.zeros(2, dtype=torch.float64))
    after = c.state_dict()
    assert after["gamma"] == before["gamma"] and after["num_updates"] == before["num_updates"]
    assert after["num_nonfinite"] == 1


def _two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _backward(m: nn.Module, seed: int, spike_layer: int | None = None, factor: float = 100.0):
    m.zero_grad()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g)
    m(x).pow(2).mean().backward()
    if spike_layer is not None:
        for p in m[spike_layer].parameters():
            p.grad.mul_(factor)


def test_adagc_clips_per_tensor_on_a_module():
    m = _two_layer()
    c = AdaGC(warmup_steps=5, warmup_max_norm=100.0)
    for _ in range(20):  # the same batch every step: steady per-tensor norms
        _backward(m, 0)
        c.clip_(m.named_parameters())
    _backward(m, 0, spike_layer=2)
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    c.clip_(m.named_parameters())
    coefs = dict(zip([n for n, _ in m.named_parameters()], c.last_coefficients.tolist(), strict=True))
    for name, p in m.named_parameters():
        if name.startswith("2."):  # spiking layer: clipped, each tensor by its own coefficient
            assert coefs[name] < 0.05
            torch.testing.assert_close(p.grad, before[name] * coefs[name], rtol=1e-6, atol=0)
            assert not torch.equal(p.grad, before[name])
        else:  # the other tensors are untouched
            assert coefs[name] == 1.0
            assert torch.equal(p.grad, before[name])
    assert coefs["2.weight"] != coefs["2.bias"]
    assert {n for n, _ in c.last_clipped_names(10)} == {"2.weight", "2.bias"}
    assert c.metrics()["frac_tensors_clipped"] == 0.5


def test_state_is_keyed_by_normalised_parameter_name():
    m = _two_layer()
    c = AdaGC(warmup_steps=3, warmup_max_norm=100.0)
    for s in range(5):
        _backward(m, s)
        c.clip_(m.named_parameters())
    state = c.state_dict()
    assert set(state["gamma"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}

    # the same model seen through wrappers and in another order: same gamma per name
    wrapped = [(f"module._orig_mod.{n}", p) for n, p in reversed(list(m.named_parameters()))]
    d = AdaGC(warmup_steps=3, warmup_max_norm=100.0)
    d.load_state_dict(state)
    _backward(m, 99)
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    c.clip_(m.named_parameters())
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    for n, p in m.named_parameters():
        p.grad = grads[n].clone()
    d.clip_(wrapped)
    for n, p in m.named_parameters():
        assert torch.equal(p.grad, ref[n])
    assert d.state_dict()["gamma"] == c.state_dict()["gamma"]
    # a restored clipper does not warm up again
    assert not d.in_warmup


def test_unbound_state_is_kept_for_tensors_that_come_back():
    c = AdaGC(warmup_steps=1, warmup_max_norm=100.0)
    c.bind(["a", "b"])
    step(c, 1.0, 2.0)
    c.bind(["b"])  # "a" frozen for a while
    step(c, 2.0)
    c.bind(["a", "b"])
    assert c.gamma_dict()["a"] == 1.0
    assert set(c.state_dict()["gamma"]) == {"a", "b"}


def test_layout_mismatch_raises():
    c = AdaGC()
    step(c, 1.0, 2.0)
    with pytest.raises(ValueError, match="per-tensor norms"):
        step(c, 1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="per_tensor_norms is required"):
        c.step(1.0)
    with pytest.raises(NotImplementedError):
        c.lagged_threshold()
