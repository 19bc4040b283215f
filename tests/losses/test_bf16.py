"""bfloat16 through the public API, against float64 references on the same (bf16-representable)
values. Each tolerance is one that the computation in bf16 fails: the KL's ``exp(d) - d - 1`` in
bf16 is off by -159% at ``|d| = 0.01``; Archer's class counts summed in bf16 round above 256;
BAPO's bounds cast to bf16 move 0.9 to 0.8984 and 1.2 to 1.2031, so tokens the statistic calls
clipped keep their gradient."""

from __future__ import annotations

import pytest
import torch

from adaclip_rl.losses import (
    ArcherConfig,
    BAPOConfig,
    archer_loss,
    archer_token_classes,
    bapo_loss,
    kl_estimate,
)
from adaclip_rl.losses.kl import kl_value_and_grad

BF16 = torch.bfloat16


def _k3_ref(logp, ref, log_ratio_clamp=None, value_clamp=None):
    d = ref.double() - logp.double()
    if log_ratio_clamp is not None:
        d = d.clamp(-log_ratio_clamp, log_ratio_clamp)
    v = torch.exp(d) - d - 1
    return v if value_clamp is None else v.clamp(max=value_clamp)


def _pairs(gaps):
    """bf16 (logp, ref) pairs whose difference is about each gap (and exact in bf16 arithmetic)."""
    logp = torch.full((len(gaps),), -0.25).to(BF16)
    ref = (logp.double() + torch.tensor(gaps, dtype=torch.float64)).to(BF16)
    return logp, ref


@pytest.mark.parametrize("clamps", [False, True], ids=["plain", "low_var_kl"])
def test_kl_in_bf16_matches_float64(clamps):
    gaps = [0.01, -0.01, 0.05, -0.05, 0.003, -0.2, 0.5, 1.0]
    logp, ref = _pairs(gaps)
    kw = dict(log_ratio_clamp=20.0, value_clamp=10.0) if clamps else {}
    expected = _k3_ref(logp, ref, **kw)
    value = kl_estimate(logp, ref, "k3", **kw)
    torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=0)
    assert value.dtype == torch.float32
    v2, g2 = kl_value_and_grad(logp, ref, "k3", **kw)
    torch.testing.assert_close(v2.double(), expected, rtol=1e-4, atol=0)
    d = ref.double() - logp.double()
    torch.testing.assert_close(g2.double(), 1 - torch.exp(d), rtol=1e-4, atol=0)
    # autograd through kl_estimate reaches the bf16 input (rounded to bf16 there: 2^-8 relative)
    leaf = logp.clone().requires_grad_()
    kl_estimate(leaf, ref, "k3", **kw).sum().backward()
    assert leaf.grad.dtype == BF16
    torch.testing.assert_close(leaf.grad.double(), 1 - torch.exp(d), rtol=2**-8, atol=0)


def _archer_reference(ratio, adv, mask, entropy, logp, ref, cfg):
    """Archer in float64 with plain autograd: per-token bounds 1 -/+ eps_t, verl low_var_kl, per-response
    class means (paper Eq. 5)."""
    high, low, _ = archer_token_classes(entropy, mask, cfg.quantile)
    r = ratio.double().requires_grad_()
    a = adv.double().unsqueeze(-1)
    lb = torch.where(high, 1 - cfg.high_clip, 1 - cfg.low_clip).double()
    hb = torch.where(high, 1 + cfg.high_clip, 1 + cfg.low_clip).double()
    loss = -torch.min(r * a, torch.clamp(r, lb, hb) * a)
    loss = torch.minimum(loss, torch.where(a < 0, -cfg.dual_clip * a, torch.inf))
    loss.sum().backward()
    kl = _k3_ref(logp, ref, 20.0, 10.0)
    b = ratio.size(0)
    kl_low = ((kl * low).sum(-1) / low.sum(-1).clamp(min=1)).sum() / b
    return loss.detach(), r.grad, kl_low


def test_archer_in_bf16_matches_float64():
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 340
    lengths = torch.tensor([[301], [333], [257], [340]])  # counts above 256: a bf16 sum rounds them
    mask = (torch.arange(t) < lengths).float()
    logp = (-2 * torch.rand(b, t, generator=gen)).to(BF16)
    ref = (logp.double() + 0.02 * torch.randn(b, t, generator=gen, dtype=torch.float64)).to(BF16)
    # ratios on and around the bf16 images of the class bounds (0.5, 0.8, 1.2, 1.5)
    grid = torch.tensor([0.5, 0.8, 1.2, 1.5, 1.0, 0.9, 1.1, 2.0], dtype=torch.float64)
    ratio = (grid[torch.randint(0, 8, (b, t), generator=gen)] * (1 + 0.01 * torch.randn(b, t, generator=gen,
             dtype=torch.float64))).to(BF16)
    adv = torch.tensor([1.0, -1.0, 0.7, -0.4]).to(BF16)
    entropy = 3 * torch.rand(b, t, generator=gen)
    cfg = ArcherConfig()
    loss_ref, grad_ref, kl_low_ref = _archer_reference(ratio, adv, mask, entropy, logp, ref, cfg)
    leaf = ratio.clone().requires_grad_()
    loss, res = archer_loss(leaf, adv, mask, entropy, cfg, logp=logp, ref_logp=ref)
    loss.sum().backward()
    torch.testing.assert_close(res.kl_low.double(), kl_low_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss.double(), loss_ref, rtol=1e-6, atol=0)
    # the same tokens carry gradient (no bound rounded to bf16), with the value -A rounded to bf16
    assert torch.equal(leaf.grad != 0, grad_ref != 0)
    torch.testing.assert_close(leaf.grad.double(), grad_ref, rtol=2**-8, atol=0)


@pytest.mark.parametrize(("low", "high"), [(0.9, 1.2), (0.7, 1.25), (0.62, 1.3)])
def test_bapo_in_bf16_clips_exactly_the_tokens_its_statistic_drops(low, high):
    # one candidate pair, so these are the bounds; the logged share must be the share of the gradient
    cfg = BAPOConfig(low_start=low, low_max=low, low_step=0.0, high_start=high, high_max=high, high_step=0.0)
    gen = torch.Generator().manual_seed(1)
    b, t = 6, 64
    near = torch.tensor([low, high], dtype=torch.float64)[torch.randint(0, 2, (b, t), generator=gen)]
    ratio = (near * (1 + 0.004 * torch.randn(b, t, generator=gen, dtype=torch.float64))).to(BF16)
    ratio[0, :2] = torch.tensor([low, high]).to(BF16)  # the bf16 images of the bounds themselves
    ratio[3, :2] = torch.tensor([low, high]).to(BF16)
    adv = torch.tensor([1.0, 0.5, 2.0, -1.0, -0.3, -2.0])
    weights = torch.rand(b, t, generator=gen)
    leaf = ratio.clone().requires_grad_()
    loss, res = bapo_loss(leaf, adv, weights, cfg)
    (loss * weights).sum().backward()
    r, a = ratio.double(), adv.double().unsqueeze(-1).expand(b, t)
    # float64 reference: gradient iff A>0, r <= c_high or A<0, c_low <= r <= dual clip (exact bounds)
    live = ((a > 0) & (r <= high)) | ((a < 0) & (r >= low) & (r <= cfg.dual_clip))
    assert torch.equal(leaf.grad != 0, live)
    contrib = (weights.double() * a.abs() * r) * live
    share = contrib[a > 0].sum() / contrib.sum()
    assert res.share_after.item() == pytest.approx(share.item(), abs=1e-6)
