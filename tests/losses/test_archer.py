"""Archer: per-response entropy classes, per-class clip widths and KL, padding excluded."""

from __future__ import annotations

import math

import pytest
import torch

from adaclip_rl.losses import ArcherConfig, archer_loss, archer_token_classes, entropy_thresholds, kl_estimate


def _random_batch(seed: int, b: int = 16, t: int = 40):
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    entropy = torch.where(mask, entropy, torch.full_like(entropy, 100.0))  # padding: huge entropy
    return entropy, mask, lengths


@pytest.mark.parametrize("quantile", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("seed", range(5))
def test_high_class_is_top_share_of_each_response(seed, quantile):
    entropy, mask, lengths = _random_batch(seed)
    high, low, tau = archer_token_classes(entropy, mask, quantile)
    assert not (high & low).any()
    assert torch.equal(high | low, mask)  # padding never belongs to a class
    for i, n in enumerate(lengths.tolist()):
        valid = entropy[i, :n]
        k = int(high[i].sum())
        assert abs(k - (1 - quantile) * n) <= 1.0, (i, n, k)
        if 0 < k < n:  # the high class is exactly the top-k entropies of the row
            assert valid[high[i, :n]].min() > valid[low[i, :n]].max()
        # the threshold is the row's own quantile, not the batch's
        assert tau[i].item() == pytest.approx(torch.quantile(valid, quantile).item())


@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.8, 0.99])
def test_thresholds_equal_nanquantile(quantile):
    gen = torch.Generator().manual_seed(11)
    entropy = torch.rand(32, 57, generator=gen)
    entropy[3] = 1.0  # ties
    mask = torch.arange(57).unsqueeze(0) < torch.randint(0, 58, (32, 1), generator=gen)
    ref = torch.nanquantile(entropy.masked_fill(~mask, float("nan")), quantile, dim=-1)
    got = entropy_thresholds(entropy, mask, quantile)
    assert torch.allclose(got, ref, equal_nan=True, atol=1e-6)


def test_single_token_and_empty_rows():
    entropy = torch.tensor([[2.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    high, low, tau = archer_token_classes(entropy, mask)
    assert low.tolist() == [[True, False, False], [False, False, False]]
    assert not high.any()
    assert tau[0].item() == 2.0 and math.isnan(tau[1].item())
    ratio = torch.ones(2, 3, requires_grad=True)
    loss, res = archer_loss(ratio, torch.tensor([1.0, -1.0]), mask, entropy,
                            logp=torch.zeros(2, 3), ref_logp=torch.zeros(2, 3))
    assert torch.isfinite(loss).all() and torch.isfinite(res.kl_term)


def test_clip_widths_by_class():
    # row: entropies 0..9, quantile 0.8 -> tokens 8, 9 are high (bounds 0.5/1.5), the rest low (0.8/1.2)
    entropy = torch.arange(10.0).unsqueeze(0)
    mask = torch.ones(1, 10, dtype=torch.bool)
    ratio = torch.full((1, 10), 1.4, requires_grad=True)
    loss, res = archer_loss(ratio, torch.tensor([1.0]), mask, entropy, ArcherConfig(low_kl=0.0))
    assert res.high.tolist() == [[False] * 8 + [True] * 2]
    expected = torch.tensor([[-1.2] * 8 + [-1.4] * 2])
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    assert ratio.grad.tolist() == [[0.0] * 8 + [-1.0] * 2]  # low tokens clipped at 1.2, high not
    assert res.clipfrac_low.item() == 1.0 and res.clipfrac_high.item() == 0.0
    assert res.high_frac.item() == pytest.approx(0.2)


@pytest.mark.parametrize("aggregation", ["response", "token"])
def test_kl_acts_on_low_class_only_and_is_averaged_per_class(aggregation):
    entropy, mask, _ = _random_batch(7, b=6, t=20)
    gen = torch.Generator().manual_seed(3)
    logp = (-torch.rand(6, 20, generator=gen, dtype=torch.float64)).requires_grad_()
    ref_logp = -torch.rand(6, 20, generator=gen, dtype=torch.float64)
    cfg = ArcherConfig(kl_aggregation=aggregation)
    ratio = torch.exp(logp - logp.detach())
    _, res = archer_loss(ratio, torch.zeros(6), mask, entropy, cfg, logp=logp, ref_logp=ref_logp)
    kl = kl_estimate(logp.detach(), ref_logp, "k3")
    low = res.low
    if aggregation == "token":  # class mean over all the micro-batch's tokens
        brute = sum(kl[i, j].item() for i in range(6) for j in range(20) if low[i, j]) / int(low.sum())
    else:  # paper Eq. 5 / official one-response micro-batches: per-response class mean, then mean over responses
        per_response = [[kl[i, j].item() for j in range(20) if low[i, j]] for i in range(6)]
        brute = sum(sum(v) / len(v) if v else 0.0 for v in per_response) / 6
    assert res.kl_low.item() == pytest.approx(brute)
    assert res.kl_term.item() == pytest.approx(cfg.low_kl * brute)
    res.kl_term.backward()
    grad = logp.grad
    assert (grad[res.high] == 0).all()  # beta_r = 0: no KL on high-entropy tokens
    assert (grad[~mask] == 0).all()  # padding
    assert (grad[low] != 0).all()


def test_kl_needs_reference_logps():
    with pytest.raises(ValueError, match="ref_logp"):
        archer_loss(torch.ones(1, 2), torch.ones(1), torch.ones(1, 2), torch.rand(1, 2))


def test_kl_estimators_hand_computed():
    logp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([-1.0, 0.0])
    d = ref - logp  # [-1, 1]
    assert torch.allclose(kl_estimate(logp, ref, "k1"), -d)
    assert torch.allclose(kl_estimate(logp, ref, "k2"), 0.5 * d**2)
    assert torch.allclose(kl_estimate(logp, ref, "k3"), torch.exp(d) - d - 1)
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([-50.0]), "k3", log_ratio_clamp=20, value_clamp=10).item() == 10
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(logp, ref, "k4")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"quantile": 0.0}, "quantile"),
        ({"quantile": 1.0}, "quantile"),
        ({"high_clip": 1.5}, "high_clip"),
        ({"low_clip": -0.1}, "low_clip"),
        ({"low_kl": -0.001}, "low_kl"),
        ({"kl_estimator": "k9"}, "kl_estimator"),
    ],
)
def test_bad_config_raises_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ArcherConfig(**kwargs)
    with pytest.raises(ValueError, match="quantile"):
        entropy_thresholds(torch.rand(1, 3), torch.ones(1, 3), quantile=1.2)


def _archer_autograd_reference(ratio, adv, mask, entropy, cfg, logp, ref_logp):
    """Archer written with plain autograd (min/max surrogate, kl_estimate with verl's low_var_kl
    clamps for k3, per-class means per response or over the batch)."""
    high, low, _ = archer_token_classes(entropy, mask, cfg.quantile)
    eps = high.double() * (cfg.high_clip - cfg.low_clip) + cfg.low_clip
    a = adv.unsqueeze(-1)
    clipped = torch.minimum(torch.maximum(ratio, 1 - eps), 1 + eps)
    per_token = -torch.min(ratio * a, clipped * a)
    if cfg.dual_clip is not None:
        per_token = torch.minimum(per_token, torch.where(a < 0, -cfg.dual_clip * a, torch.full_like(a, torch.inf)))
    kl = kl_estimate(logp, ref_logp, cfg.kl_estimator, log_ratio_clamp=20.0,
                     value_clamp=10.0 if cfg.kl_estimator == "k3" else None)

    def class_mean(x, cls):
        if cfg.kl_aggregation == "response":
            return ((x * cls).sum(-1) / cls.sum(-1).clamp(min=1)).mean()
        return (x * cls).sum() / cls.sum().clamp(min=1)

    m = mask.double()
    return (per_token * m).sum() / m.sum() + cfg.low_kl * class_mean(kl, low) + cfg.high_kl * class_mean(kl, high)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("high_kl", [0.0, 0.01])
@pytest.mark.parametrize("aggregation", ["response", "token"])
def test_loss_and_gradient_equal_plain_autograd_reference(estimator, high_kl, aggregation):
    entropy, mask, _ = _random_batch(11, b=5, t=16)
    gen = torch.Generator().manual_seed(5)
    logp0 = -2 * torch.rand(5, 16, generator=gen, dtype=torch.float64)
    old = logp0 + 0.4 * torch.randn(5, 16, generator=gen, dtype=torch.float64)
    ref_logp = logp0 + 0.2 * torch.randn(5, 16, generator=gen, dtype=torch.float64)
    ref_logp[0, :3] = logp0[0, :3] + torch.tensor([3.0, -15.0, 30.0], dtype=torch.float64)  # hit the clamps
    adv = torch.randn(5, generator=gen, dtype=torch.float64)
    cfg = ArcherConfig(kl_estimator=estimator, high_kl=high_kl, low_kl=0.05, kl_aggregation=aggregation)
    grads, losses = [], []
    for impl in ("ours", "reference"):
        logp = logp0.clone().requires_grad_()
        ratio = torch.exp(logp - old)
        if impl == "ours":
            per_token, res = archer_loss(ratio, adv, mask, entropy, cfg, logp=logp, ref_logp=ref_logp)
            m = mask.double()
            loss = (per_token * m).sum() / m.sum() + res.kl_term
        else:
            loss = _archer_autograd_reference(ratio, adv, mask, entropy, cfg, logp, ref_logp)
        loss.backward()
        losses.append(loss.detach())
        grads.append(logp.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_thresholds_equal_nanquantile_on_random_masks_ties_and_shapes():
    """Scattered (not prefix) masks (bool, float, integer), heavy ties, signed values and signed zeros,
    rows shorter than the kept width, empty rows."""
    gen = torch.Generator().manual_seed(21)
    for trial in range(300):
        b, t = (int(x) for x in torch.randint(1, 9, (2,), generator=gen))
        t *= 3
        entropy = torch.rand(b, t, generator=gen)
        if trial % 3 == 0:
            entropy = (4 * entropy).floor()  # ties
        elif trial % 3 == 1:  # signed values (the selection runs on int32 order keys), with -0.0 next to 0.0
            entropy = torch.randn(b, t, generator=gen).mul_(1e3 if trial % 2 else 1e-3)
            entropy[..., ::4] = -0.0
            entropy[..., 1::4] = 0.0
        mask = (mask_f := (torch.rand(b, t, generator=gen) < 0.5).float()) if trial % 7 == 0 else None
        if mask is None:
            mask = torch.rand(b, t, generator=gen) < torch.rand(b, 1, generator=gen)
        elif trial % 2:  # float and integer 0/1 masks as the trainer passes them
            mask = mask_f.long()
        if trial % 5 == 0:
            mask[0] = False
        q = float(0.01 + 0.98 * torch.rand(1, generator=gen))
        ref = torch.nanquantile(entropy.masked_fill(~mask.bool(), float("nan")), q, dim=-1)
        got = entropy_thresholds(entropy, mask, q)
        assert torch.allclose(got, ref, equal_nan=True, rtol=1e-6, atol=1e-6), (trial, got, ref)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_value_and_grad_match_kl_estimate_and_autograd(estimator):
    from adaclip_rl.losses.kl import kl_value_and_grad

    gen = torch.Generator().manual_seed(2)
    logp = (-2 * torch.rand(4, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = -2 * torch.rand(4, 7, generator=gen, dtype=torch.float64)
    ref_copy = ref.clone()
    value, grad = kl_value_and_grad(logp.detach(), ref, estimator)
    kl_estimate(logp, ref, estimator).sum().backward()
    torch.testing.assert_close(value, kl_estimate(logp.detach(), ref, estimator))
    torch.testing.assert_close(grad, logp.grad)
    assert torch.equal(ref, ref_copy)  # inputs untouched
    with pytest.raises(ValueError, match="estimator"):
        kl_value_and_grad(logp.detach(), ref, "k4")


def test_kl_is_averaged_per_response_so_long_answers_do_not_dominate():
    # two responses, every token low-entropy-like (flat entropies: all low class), KL 1 on the short
    # one's tokens and 0 on the long one's: per response the KL is (1 + 0) / 2 = 0.5 whatever the
    # lengths (paper Eq. 5); a token mean would give 2 / 12.
    t = 10
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, :] = True
    entropy = torch.zeros(2, t)
    logp = torch.zeros(2, t, dtype=torch.float64, requires_grad=True)
    d = torch.zeros(2, t, dtype=torch.float64)
    d[0, :2] = 1.0  # d = ref - logp; k2 = d^2 / 2 = 0.5 on the short answer, 0 on the long one
    ref = logp.detach() + d
    cfg = ArcherConfig(kl_estimator="k2", low_kl=1.0)
    _, res = archer_loss(torch.ones(2, t, dtype=torch.float64), torch.ones(2), mask, entropy, cfg, logp=logp,
                         ref_logp=ref)
    assert res.kl_term.item() == pytest.approx(0.5 * 0.5)
    _, res_tok = archer_loss(torch.ones(2, t, dtype=torch.float64), torch.ones(2), mask, entropy,
                             ArcherConfig(kl_estimator="k2", low_kl=1.0, kl_aggregation="token"), logp=logp,
                             ref_logp=ref)
    assert res_tok.kl_term.item() == pytest.approx(0.5 * 2 / 12)


def test_clip_widths_in_the_ratio_dtype():
    # float64 ratio just above 1 + eps_k: it must be clipped (the bound is 1.2 in float64, not the
    # float32 constant 1.2000000029802322 that the old code cast up)
    ratio = torch.tensor([[1.2 + 1e-9, 1.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    entropy = torch.tensor([[0.0, 0.0]])  # both low class
    loss, _ = archer_loss(ratio, torch.ones(1, dtype=torch.float64), mask, entropy, ArcherConfig(low_kl=0.0))
    loss.sum().backward()
    assert ratio.grad[0, 0].item() == 0.0 and ratio.grad[0, 1].item() == -1.0


def test_extreme_log_prob_gaps_on_padding_give_finite_kl():
    # padding with a -inf / huge reference log-prob: inf * 0 used to turn the KL into NaN
    mask = torch.tensor([[True, True, False]])
    logp = torch.tensor([[-1.0, -2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.1, -2.0, -float("inf")]], dtype=torch.float64)
    _, res = archer_loss(torch.ones(1, 3, dtype=torch.float64), torch.ones(1), mask, torch.zeros(1, 3), ArcherConfig(),
                         logp=logp, ref_logp=ref)
    res.kl_term.backward()
    assert torch.isfinite(res.kl_term) and torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("adv_shape", ["B", "B1", "BT"])
def test_clip_fractions_by_advantage_sign_match_brute_force(adv_shape):
    """``clipfrac_pos`` / ``clipfrac_neg``: share of loss tokens with A>0 and r above 1+eps_t, and
    with A<0 and r below 1-eps_t, eps_t the token's class width (counted token by token here)."""
    gen = torch.Generator().manual_seed(3)
    b, t = 12, 30
    entropy = torch.rand(b, t, generator=gen) * 2
    mask = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=gen)).float()
    ratio = torch.exp(0.6 * torch.randn(b, t, generator=gen))
    adv_bt = torch.randn(b, t, generator=gen)
    adv = {"B": adv_bt[:, 0], "B1": adv_bt[:, :1], "BT": adv_bt}[adv_shape]
    adv_full = adv.reshape(b, -1).expand(b, t)
    cfg = ArcherConfig(low_kl=0.0)
    _, res = archer_loss(ratio, adv, mask, entropy, cfg)
    pos = neg = 0
    for i in range(b):
        for j in range(t):
            if mask[i, j] == 0:
                continue
            eps = cfg.high_clip if res.high[i, j] else cfg.low_clip
            a, r = adv_full[i, j].item(), ratio[i, j].item()
            pos += a > 0 and r > 1 + eps
            neg += a < 0 and r < 1 - eps
    n = int(mask.sum())
    assert pos > 0 and neg > 0
    assert res.clipfrac_pos.item() == pytest.approx(pos / n, abs=1e-7)
    assert res.clipfrac_neg.item() == pytest.approx(neg / n, abs=1e-7)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_empty_micro_batch_logs_finite_metrics(mask_dtype):
    # a rank whose micro-batch has no loss token: a NaN metric would poison the cross-rank sum
    from adaclip_rl.losses import get_policy_loss

    b, t = 3, 5
    logp = -torch.rand(b, t)
    out = get_policy_loss("archer")(torch.ones(b, t), torch.randn(b), torch.zeros(b, t, dtype=mask_dtype),
                                    config=ArcherConfig(high_kl=0.01), entropy=torch.rand(b, t), logp=logp,
                                    ref_logp=logp - 0.1)
    for name, value in out.metrics.items():
        assert torch.isfinite(value), name
    assert out.metrics["archer/entropy_threshold"].item() == 0.0
    assert torch.isfinite(out.extra_loss)
