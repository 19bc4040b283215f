"""BAPO's premise measures (:mod:`adaclip_rl.losses.premise`) against plain per-token loops, BAPO's own
statistic, and the exact covariance decomposition, over random grids."""

from __future__ import annotations

import math

import pytest
import torch

from adaclip_rl.losses import ArcherConfig, BAPOConfig, bapo_search, get_policy_loss
from adaclip_rl.losses.premise import (
    blocked_masks,
    entropy_clip_covariances,
    positive_share,
    premise_metrics,
)


def _batch(seed: int, b: int = 6, t: int = 9, spread: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    ratio = torch.exp(spread * torch.randn(b, t, generator=g, dtype=torch.float64))
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    adv[0] = 0.0  # a zero-advantage response counts on neither side
    mask = (torch.rand(b, t, generator=g) > 0.25).double()
    weights = mask * torch.rand(b, t, generator=g, dtype=torch.float64)
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4
    return ratio, adv, mask, weights, logp


def _share_loop(ratio, adv, weights, c_low, c_high, dual):
    p = n = 0.0
    for i in range(ratio.shape[0]):
        for j in range(ratio.shape[1]):
            r, a, w = ratio[i, j].item(), adv[i].item(), weights[i, j].item()
            if a > 0 and (c_high is None or r <= c_high):
                p += w * a * r
            elif a < 0 and (c_low is None or r >= c_low) and (dual is None or r <= dual):
                n += w * -a * r
    return 1.0 if p + n == 0 else p / (p + n)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("c_low", "c_high", "dual"), [(0.6, 1.2, 3.0), (0.8, 1.2, None), (None, None, None)])
def test_positive_share_is_the_plain_sum_over_tokens(seed, c_low, c_high, dual):
    ratio, adv, _, weights, _ = _batch(seed)
    got = positive_share(ratio, adv, weights, c_low, c_high, dual_clip=dual).item()
    assert math.isclose(got, _share_loop(ratio, adv, weights, c_low, c_high, dual), rel_tol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_positive_share_at_bapo_start_bounds_is_bapos_share_before(seed):
    """An independent implementation (BAPO's histogram search) gives the same share at its start pair."""
    ratio, adv, _, weights, _ = _batch(seed, spread=0.8)
    ours = positive_share(ratio, adv, weights, 0.6, 1.2, dual_clip=3.0).item()
    theirs = bapo_search(ratio, adv, weights, BAPOConfig()).share_before.item()
    assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)


def test_empty_batch_counts_as_balanced():
    ratio, adv, _, weights, _ = _batch(0)
    assert positive_share(ratio, adv, torch.zeros_like(weights), 0.8, 1.2).item() == 1.0


def _cov_loop(x, y, m):
    pts = [(x[i, j].item(), y[i, j].item()) for i in range(x.shape[0]) for j in range(x.shape[1]) if m[i, j] > 0]
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((a - mx) * (b - my) for a, b in pts) / len(pts)


@pytest.mark.parametrize("seed", range(6))
def test_entropy_clip_covariances_are_plain_covariances_and_add_up(seed):
    ratio, adv, mask, _, logp = _batch(seed)
    a = adv[:, None].expand_as(ratio)
    bp, bn = (a > 0) & (ratio > 1.2), (a < 0) & (ratio < 0.8)
    cov = entropy_clip_covariances(logp, adv, mask, bp, bn)
    kept = ~(bp | bn)
    assert math.isclose(cov["cov_all"].item(), _cov_loop(logp, a, mask), rel_tol=1e-10, abs_tol=1e-14)
    assert math.isclose(cov["cov_kept"].item(), _cov_loop(logp, a * kept, mask), rel_tol=1e-10, abs_tol=1e-14)
    assert math.isclose(cov["cov_blocked_pos"].item(), _cov_loop(logp, a * bp, mask), rel_tol=1e-10, abs_tol=1e-14)
    assert math.isclose(cov["cov_blocked_neg"].item(), _cov_loop(logp, a * bn, mask), rel_tol=1e-10, abs_tol=1e-14)
    parts = cov["cov_kept"] + cov["cov_blocked_pos"] + cov["cov_blocked_neg"]
    assert torch.allclose(parts, cov["cov_all"], rtol=1e-12, atol=1e-15)


def test_blocking_low_probability_positive_tokens_gives_a_negative_covariance():
    """The Entropy-Clip Rule's direction: positive tokens of low probability, blocked, carry Cov < 0."""
    logp = torch.tensor([[-4.0, -0.1, -0.2, -0.1]], dtype=torch.float64)
    adv = torch.tensor([1.0])
    mask = torch.ones_like(logp)
    blocked = torch.tensor([[True, False, False, False]])
    cov = entropy_clip_covariances(logp, adv, mask, blocked, torch.zeros_like(blocked))
    assert cov["cov_blocked_pos"].item() < 0 and cov["cov_blocked_neg"].item() == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["grpo", "bapo", "archer"])
def test_blocked_masks_are_the_tokens_without_gradient(seed, name):
    """The blocked tokens are exactly those whose loss has zero gradient in the ratio (autograd), among
    tokens with A != 0."""
    ratio, adv, mask, weights, logp = _batch(seed, spread=0.6)
    ratio = ratio.clone().requires_grad_(True)
    config = {"grpo": None, "bapo": BAPOConfig(), "archer": ArcherConfig(low_kl=0.0, high_kl=0.0)}[name]
    fn = get_policy_loss(name)
    kw = {"entropy": torch.rand_like(logp)} if name == "archer" else {}
    if name == "grpo":
        from adaclip_rl.losses import GRPOClipConfig

        config = GRPOClipConfig(epsilon_low=0.2, epsilon_high=0.2)
    out = fn(ratio, adv, mask, config=config, logp=logp, **kw)
    (grad,) = torch.autograd.grad((out.per_token_loss * mask).sum(), ratio)
    bp, bn = blocked_masks(out, ratio, adv, config)
    nonzero_adv = adv[:, None].expand_as(ratio) != 0
    live = mask.bool() & nonzero_adv
    assert torch.equal((bp | bn)[live], (grad == 0)[live])


def test_premise_metrics_names_and_ranges():
    ratio, adv, mask, weights, logp = _batch(3, spread=0.6)
    from adaclip_rl.losses import GRPOClipConfig

    config = GRPOClipConfig(epsilon_low=0.2, epsilon_high=0.2)
    out = get_policy_loss("grpo")(ratio, adv, mask, config=config)
    m = premise_metrics(ratio, adv, logp, mask, weights, out, config)
    assert set(m) == {f"premise/{k}" for k in ("pos_share_bapo_start", "pos_share_grpo", "pos_share_unclipped",
                                               "clipfrac_pos", "clipfrac_neg", "cov_all", "cov_kept",
                                               "cov_blocked_pos", "cov_blocked_neg")}
    for k in ("pos_share_bapo_start", "pos_share_grpo", "pos_share_unclipped", "clipfrac_pos", "clipfrac_neg"):
        assert 0.0 <= m[f"premise/{k}"].item() <= 1.0
    # the clip fractions are those the loss itself reports (over all loss tokens)
    assert math.isclose(m["premise/clipfrac_pos"].item(), out.metrics["clipfrac/high"].item(), rel_tol=1e-6)
    assert math.isclose(m["premise/clipfrac_neg"].item(), out.metrics["clipfrac/low"].item(), rel_tol=1e-6)
