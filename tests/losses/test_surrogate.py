"""Hand-computed values and gradients for the clipped surrogate and every aggregation mode."""

from __future__ import annotations

import pytest
import torch

from adaclip_rl.losses import aggregate_loss, clip_fractions, clipped_surrogate, clipped_surrogate_with_masks


def _leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_positive_advantage_values_and_gradients():
    # A = +1, bounds [0.8, 1.2]: loss = -min(r, clip(r)); above c_high the token is clipped (grad 0);
    # below c_low a positive token is NOT clipped (min picks r).
    r = _leaf([[0.5, 0.9, 1.1, 1.5]])
    loss = clipped_surrogate(r, torch.tensor([1.0], dtype=torch.float64), 0.8, 1.2)
    assert torch.allclose(loss, torch.tensor([[-0.5, -0.9, -1.1, -1.2]], dtype=torch.float64))
    loss.sum().backward()
    assert r.grad.tolist() == [[-1.0, -1.0, -1.0, 0.0]]


def test_negative_advantage_values_gradients_and_dual_clip():
    # A = -2: loss = max(2r, 2 clip(r)); below c_low clipped (grad 0); dual clip c=3 caps at 6.
    r = _leaf([[0.5, 0.9, 1.1, 1.5, 4.0]])
    adv = torch.tensor([-2.0], dtype=torch.float64)
    loss = clipped_surrogate(r, adv, 0.8, 1.2, dual_clip=3.0)
    assert torch.allclose(loss, torch.tensor([[1.6, 1.8, 2.2, 3.0, 6.0]], dtype=torch.float64))
    loss.sum().backward()
    assert r.grad.tolist() == [[0.0, 2.0, 2.0, 2.0, 0.0]]
    # without dual clip the r=4 token keeps its gradient
    r2 = _leaf([[4.0]])
    loss2 = clipped_surrogate(r2, adv, 0.8, 1.2)
    loss2.sum().backward()
    assert loss2.item() == 8.0 and r2.grad.item() == 2.0


def test_per_token_bounds_broadcast_and_gradient_through_logp():
    logp = _leaf([[-1.0, -1.0]])
    old = torch.tensor([[-1.0 - 0.4, -1.0 - 0.4]], dtype=torch.float64)  # r = e^0.4 = 1.4918
    ratio = torch.exp(logp - old)
    low = torch.tensor([[0.5, 0.8]], dtype=torch.float64)
    high = torch.tensor([[1.5, 1.2]], dtype=torch.float64)  # token 0 inside, token 1 clipped
    loss = clipped_surrogate(ratio, torch.tensor([[1.0, 1.0]], dtype=torch.float64), low, high)
    r = torch.exp(torch.tensor(0.4, dtype=torch.float64))
    assert torch.allclose(loss, torch.stack([-r, torch.tensor(-1.2, dtype=torch.float64)]).unsqueeze(0))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.stack([-r, torch.tensor(0.0, dtype=torch.float64)]).unsqueeze(0))


def test_ratio_cap_two_sided_clip():
    r = _leaf([[5.0]])
    loss = clipped_surrogate(r, torch.tensor([-1.0], dtype=torch.float64), 0.8, 1.2, ratio_cap=2.0)
    assert loss.item() == 2.0  # -min(-2, -1.2) = 2


def test_clip_fractions_by_sign():
    r = torch.tensor([[0.5, 1.5, 0.5, 1.5, 4.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    for low, high in ((0.8, 1.2), (torch.tensor(0.8), torch.tensor(1.2))):  # TRL's form and the gated one
        loss, masks = clipped_surrogate_with_masks(r.clone().requires_grad_(), adv, low, high, dual_clip=3.0)
        assert torch.equal(loss, clipped_surrogate(r, adv, low, high, dual_clip=3.0))  # same loss, masks on top
        fr = clip_fractions(masks, mask)
        assert fr["high"].item() == pytest.approx(1 / 5)
        assert fr["low"].item() == pytest.approx(1 / 5)
        assert fr["dual"].item() == pytest.approx(1 / 5)


LOSS = [[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "kwargs", "value", "grad_00", "grad_10"),
    [
        ("grpo", {}, (6 / 3 + 9 / 2) / 2, 1 / 6, 1 / 4),
        ("bnpo", {}, 15 / 5, 1 / 5, 1 / 5),
        ("dr_grpo", {"max_completion_length": 4}, 15 / 8, 1 / 8, 1 / 8),
        ("dapo", {"num_tokens": 10.0}, 15 / 10, 1 / 10, 1 / 10),
        ("dapo", {}, 15 / 5, 1 / 5, 1 / 5),
        ("luspo", {}, 15 / 2, 1 / 2, 1 / 2),
    ],
)
def test_aggregation_modes_hand_computed(mode, kwargs, value, grad_00, grad_10):
    per_token = _leaf(LOSS)
    loss = aggregate_loss(per_token, MASK, mode, **kwargs)
    assert loss.item() == pytest.approx(value)
    loss.backward()
    assert per_token.grad[0, 0].item() == pytest.approx(grad_00)
    assert per_token.grad[1, 0].item() == pytest.approx(grad_10)
    assert per_token.grad[0, 3].item() == 0.0 and per_token.grad[1, 2].item() == 0.0  # padding


def test_aggregation_empty_rows_do_not_divide_by_zero():
    per_token = torch.ones(2, 3)
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]])
    assert aggregate_loss(per_token, mask, "grpo").item() == pytest.approx(0.5)
    assert aggregate_loss(per_token, torch.zeros(2, 3), "bnpo").item() == 0.0


def test_bad_arguments_name_the_argument():
    r = torch.ones(1, 2)
    with pytest.raises(ValueError, match="clip_low"):
        clipped_surrogate(r, torch.ones(1), 1.3, 1.2)
    with pytest.raises(ValueError, match="clip_high"):
        clipped_surrogate(r, torch.ones(1), 0.8, 0.9)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(r, torch.ones(1), 0.8, 1.2, dual_clip=0.5)
    with pytest.raises(ValueError, match="mode"):
        aggregate_loss(r, torch.ones(1, 2), "nope")
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(r, torch.ones(1, 2), "dr_grpo")


def _autograd_surrogate(ratio, adv, low, high, dual):
    """The surrogate written with autograd through min/max: the reference for the gated path."""
    a = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    loss = -torch.min(ratio * a, torch.minimum(torch.maximum(ratio, low), high) * a)
    if dual is not None:
        loss = torch.minimum(loss, torch.where(a < 0, -dual * a, torch.full_like(a, torch.inf)))
    return loss


@pytest.mark.parametrize("seed", range(6))
def test_tensor_bounds_gated_backward_equals_autograd_through_min_max(seed):
    gen = torch.Generator().manual_seed(seed)
    for trial in range(40):
        b, t = (int(x) for x in torch.randint(1, 6, (2,), generator=gen))
        r0 = torch.exp(1.5 * torch.randn(b, t, generator=gen, dtype=torch.float64))
        r0[0, 0] = 1.0  # exactly on-policy token (tie between both branches)
        adv = (torch.randn(b, generator=gen, dtype=torch.float64) if trial % 2
               else torch.randn(b, t, generator=gen, dtype=torch.float64))
        low = 1 - 0.5 * torch.rand(b, t, generator=gen, dtype=torch.float64)
        high = 1 + 2 * torch.rand(b, t, generator=gen, dtype=torch.float64)
        dual = 3.0 if trial % 3 else None
        r1, r2 = r0.clone().requires_grad_(), r0.clone().requires_grad_()
        l1 = clipped_surrogate(r1, adv, low, high, dual_clip=dual)
        l2 = _autograd_surrogate(r2, adv, low, high, dual)
        w = torch.randn(l1.shape, generator=gen, dtype=torch.float64)
        (l1 * w).sum().backward()
        (l2 * w).sum().backward()
        assert torch.equal(l1, l2.detach())
        torch.testing.assert_close(r1.grad, r2.grad)
    # a sequence-level ratio (B, 1) against per-token bounds: the gradient is summed back
    r = torch.tensor([[1.05], [2.0]], dtype=torch.float64, requires_grad=True)
    low = torch.full((2, 3), 0.9, dtype=torch.float64)
    high = torch.tensor([[1.1, 1.1, 5.0], [1.1, 1.1, 5.0]], dtype=torch.float64)
    clipped_surrogate(r, torch.ones(2, dtype=torch.float64), low, high).sum().backward()
    assert r.grad.tolist() == [[-3.0], [-1.0]]  # row 2: only the token with bound 5.0 passes


@pytest.mark.parametrize("mode", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
@pytest.mark.parametrize("seq", [False, True])
def test_aggregation_weights_are_the_gradient_of_aggregate_loss(mode, seq):
    from adaclip_rl.losses import aggregation_weights

    gen = torch.Generator().manual_seed(0)
    mask = (torch.arange(7) < torch.tensor([7, 3, 1, 0, 5]).unsqueeze(1)).long()
    loss = torch.randn(5, 1 if seq else 7, generator=gen, dtype=torch.float64, requires_grad=True)
    kw = {"max_completion_length": 9} if mode == "dr_grpo" else {"num_tokens": 21.0} if mode == "dapo" else {}
    agg = aggregate_loss(loss, mask, mode, **kw)
    agg.backward()
    w = aggregation_weights(mask.double(), mode, **kw)
    assert torch.allclose(agg, (loss.detach() * w).sum())
    assert torch.allclose(loss.grad, w.sum(-1, keepdim=True) if seq else w)
