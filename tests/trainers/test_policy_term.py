"""``trainers/policy_term.py``: the log-ratio clamp and the once-per-update search both trainers use."""

from __future__ import annotations

import torch

from adaclip_rl.losses import BAPOConfig, get_policy_loss_spec
from adaclip_rl.trainers.policy_term import UpdateSearch, policy_log_ratio


def test_log_ratio_is_clamped_only_for_a_loss_that_asks():
    """grpo: ``logp - old`` exactly, no mask; bapo/archer (``clamps_log_ratio``): clamped to [-20, 20]
    with the gradient-carrying mask false exactly where the clamp bit (checked by autograd)."""
    old = torch.tensor([0.0, -30.0, -1.0, 25.0, 0.0])
    for name in ("grpo", "bapo", "archer"):
        logp = torch.tensor([-0.5, -1.0, -21.5, -1.0, 19.0], requires_grad=True)
        spec = get_policy_loss_spec(name)
        log_ratio, live = policy_log_ratio(spec, logp, old)
        raw = (logp - old).detach()
        if not spec.clamps_log_ratio:
            assert live is None and torch.equal(log_ratio.detach(), raw)
            continue
        assert torch.equal(log_ratio.detach(), raw.clamp(-20.0, 20.0))
        log_ratio.sum().backward()
        assert torch.equal(live.bool(), logp.grad != 0)
        assert live.tolist() == [True, False, False, False, True]  # log r = -0.5, 29, -20.5, -26, 19


def test_update_search_runs_once_per_window():
    """The statistics of a window are computed and reduced once; a new window or a reset searches again."""
    spec, config = get_policy_loss_spec("bapo"), BAPOConfig()
    calls = {"stats": 0, "reduce": 0}

    def reduce(t):
        calls["reduce"] += 1
        return t

    search = UpdateSearch(reduce)

    def statistics():
        calls["stats"] += 1
        ratio = torch.tensor([[0.5, 1.0, 1.5], [0.9, 1.1, 2.5]])
        adv = torch.tensor([[1.0], [-1.0]])
        return spec.statistics(ratio, adv, torch.ones(2, 3), config)

    first = search.result((0, 0), spec, config, statistics)
    assert search.has((0, 0)) and not search.has((0, 2))
    assert search.result((0, 0), spec, config, statistics) is first
    assert calls == {"stats": 1, "reduce": 1}
    search.result((0, 2), spec, config, statistics)
    assert calls == {"stats": 2, "reduce": 2}
    search.reset()
    assert not search.has((0, 2))
    again = search.result((0, 2), spec, config, statistics)
    assert calls == {"stats": 3, "reduce": 3}
    assert torch.equal(again.clip_low, first.clip_low) and torch.equal(again.clip_high, first.clip_high)
