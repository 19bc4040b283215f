"""Policy losses by name: same signature, same aggregation, metrics present."""

from __future__ import annotations

import pytest
import torch

from adaclip_rl.losses import (
    POLICY_LOSS_CONFIGS,
    ArcherConfig,
    BAPOConfig,
    GRPOClipConfig,
    aggregate_loss,
    clipped_surrogate,
    get_policy_loss,
    register_policy_loss,
)


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(4, 8, generator=gen)).requires_grad_()
    old = logp.detach() + 0.2 * torch.randn(4, 8, generator=gen)
    return logp, torch.exp(logp - old), torch.randn(4, generator=gen), torch.ones(4, 8)


def test_grpo_matches_clipped_surrogate():
    logp, ratio, adv, mask = _inputs()
    out = get_policy_loss("grpo")(ratio, adv, mask, config=GRPOClipConfig(0.2, 0.28))
    assert torch.equal(out.per_token_loss, clipped_surrogate(ratio, adv, 0.8, 1.28))
    assert out.extra_loss is None and set(out.metrics) == {"clipfrac/high", "clipfrac/low"}


@pytest.mark.parametrize("name", ["grpo", "bapo", "archer"])
def test_every_loss_backpropagates_with_every_mode(name):
    cfg = POLICY_LOSS_CONFIGS[name]()
    for mode in ("grpo", "bnpo", "dr_grpo", "dapo"):
        logp, ratio, adv, mask = _inputs(1)
        out = get_policy_loss(name)(ratio, adv, mask, config=cfg, logp=logp, ref_logp=logp.detach() - 0.1,
                                    entropy=torch.rand(4, 8))
        loss = aggregate_loss(out.per_token_loss, mask, mode, max_completion_length=8)
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        loss.backward()
        assert logp.grad is not None and torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0
        assert all(v.dim() == 0 for v in out.metrics.values())


def test_registry_names_and_errors():
    assert POLICY_LOSS_CONFIGS["bapo"] is BAPOConfig and POLICY_LOSS_CONFIGS["archer"] is ArcherConfig
    with pytest.raises(ValueError, match="policy_loss must be one of"):
        get_policy_loss("ppo-ish")
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("grpo", GRPOClipConfig)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="entropy"):
        get_policy_loss("archer")(*_inputs()[1:], config=ArcherConfig(low_kl=0.0))
    with pytest.raises(ValueError, match="epsilon_low"):
        GRPOClipConfig(epsilon_low=1.5)
