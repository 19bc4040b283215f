"""The log-ratio clamp and its live mask: ``live`` is exactly where autograd passes a gradient
through the clamp (bounds inclusive, NaN and infinities excluded)."""

from __future__ import annotations

import torch

from adaclip_rl.losses import LOG_RATIO_CLAMP, clamp_log_ratio, sequence_live_fraction


def test_live_is_where_the_clamp_passes_the_gradient():
    c = LOG_RATIO_CLAMP
    x = torch.tensor([-torch.inf, -25.0, -c, -19.5, 0.0, 3.0, c, 20.5, torch.inf, torch.nan], dtype=torch.float64)
    x = torch.cat([x, 30 * torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    leaf = x.clone().requires_grad_()
    clamped, live = clamp_log_ratio(leaf)
    torch.exp(clamped).sum().backward()
    assert torch.equal(live, leaf.grad != 0)  # exp > 0: a zero gradient is the clamp's
    assert live.dtype == torch.bool and live[:10].tolist() == [False, False, True, True, True, True, True, False,
                                                               False, False]
    assert torch.equal(clamped.detach()[:9], x[:9].clamp(-c, c))


def test_sequence_live_fraction_is_the_gradient_share_left_by_the_clamp():
    # d exp(mean_t clamp(x_t)) / d x_t summed over a response's tokens = that response's gradient
    # without the clamp times the live share
    gen = torch.Generator().manual_seed(1)
    x = 15 * torch.randn(5, 7, generator=gen, dtype=torch.float64)
    mask = (torch.arange(7) < torch.tensor([[7], [3], [1], [5], [6]])).double()
    leaf = x.clone().requires_grad_()
    clamped, live = clamp_log_ratio(leaf)
    mean = (clamped * mask).sum(-1) / mask.sum(-1)
    torch.exp(mean).sum().backward()
    free = torch.exp(mean.detach())  # |d exp(m)/dm|; d m / d x_t = 1/|o| on every live loss token
    expected = free * sequence_live_fraction(live, mask).squeeze(-1)
    torch.testing.assert_close((leaf.grad * mask).sum(-1), expected)
