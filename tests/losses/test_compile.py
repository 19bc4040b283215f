"""BAPO and Archer compile as one graph (``torch.compile(fullgraph=True)``): no graph break, so no
host sync (``.item()``, ``float(tensor)``, data-dependent Python control flow) in the loss path;
and the compiled loss equals eager, values and gradients."""

from __future__ import annotations

import pytest
import torch

from adaclip_rl.losses import ArcherConfig, BAPOConfig, aggregate_loss, archer_loss, bapo_loss


def _inputs(seed: int, seq: bool = False):
    gen = torch.Generator().manual_seed(seed)
    b, t = 6, 12
    logp = -2 * torch.rand(b, t, generator=gen)
    old = logp + 0.5 * torch.randn(b, t, generator=gen)
    ref = logp + 0.2 * torch.randn(b, t, generator=gen)
    mask = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=gen)).float()
    weights = mask * torch.rand(b, t, generator=gen)
    return logp, old, ref, torch.randn(b, generator=gen), mask, weights, 3 * torch.rand(b, t, generator=gen)


def _bapo(logp, old, adv, mask, weights, cfg, seq):
    log_ratio = logp - old
    if seq:
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    per_token, res = bapo_loss(torch.exp(log_ratio), adv, weights, cfg)
    return aggregate_loss(per_token, mask, "grpo"), res.clip_low, res.clip_high, res.share_after, res.index


def _archer(logp, old, ref, adv, mask, entropy, cfg):
    per_token, res = archer_loss(torch.exp(logp - old), adv, mask, entropy, cfg, logp=logp, ref_logp=ref)
    return aggregate_loss(per_token, mask, "grpo") + res.kl_term, res.kl_low, res.clipfrac_high


def _compare(fn, args, leaf_index=0):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        a = list(args)
        a[leaf_index] = a[leaf_index].clone().requires_grad_()
        out = f(*a)
        out[0].backward()
        results.append(([o.detach() for o in out], a[leaf_index].grad))
    (eager, g_eager), (comp, g_comp) = results
    for x, y in zip(eager, comp, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("cfg", [BAPOConfig(), BAPOConfig.official(), BAPOConfig.official(low_step=0.07)],
                         ids=["paper", "official", "partial_step"])
def test_bapo_loss_compiles_fullgraph_and_matches_eager(cfg, seq):
    logp, old, _, adv, mask, weights, _ = _inputs(0)
    _compare(lambda lp, o, a, m, w: _bapo(lp, o, a, m, w, cfg, seq), (logp, old, adv, mask, weights))


@pytest.mark.parametrize("aggregation", ["response", "token"])
def test_archer_loss_compiles_fullgraph_and_matches_eager(aggregation):
    logp, old, ref, adv, mask, _, entropy = _inputs(1)
    cfg = ArcherConfig(kl_aggregation=aggregation, high_kl=0.01)
    _compare(lambda lp, o, r, a, m, e: _archer(lp, o, r, a, m, e, cfg), (logp, old, ref, adv, mask.bool(), entropy))
