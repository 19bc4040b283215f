import math

import pytest
import torch

from adaclip_rl.rollout import (
    RolloutConfig,
    behaviour_correction,
    importance_weights,
    staleness_weights,
    token_staleness,
)


def test_truncated_is_weights_token_level():
    old = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    beh = torch.tensor([[0.0, -2.0, -1.0, 0.0]])  # ratios 1, e, 1/e, pad
    mask = torch.tensor([[1, 1, 1, 0]])
    w, raw, capped = importance_weights(old, beh, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, math.exp(-1), 0.0]]))
    assert capped.tolist() == [[False, True, False, False]]
    w, _, _ = importance_weights(old, beh, mask, cap=2.0, mode="mask")
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, math.exp(-1), 0.0]]))


def test_sequence_level_and_nan_behaviour():
    old = torch.tensor([[0.0, -1.0], [0.0, 0.0]])
    beh = torch.tensor([[-0.5, -1.0], [float("nan"), 0.0]])
    mask = torch.ones(2, 2)
    w, raw, _ = importance_weights(old, beh, mask, cap=5.0, level="sequence")
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.5)] * 2, [1.0, 1.0]]))
    w, _, capped = importance_weights(old, beh, mask, cap=1.5, level="sequence", mode="mask")
    assert w[0].tolist() == [0.0, 0.0] and capped[0].all()


def test_staleness_drop_and_downweight():
    versions = torch.tensor([[0, 1, 2, -1], [3, 3, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    stal = token_staleness(versions, 3, mask)
    assert stal.tolist() == [[3, 2, 1, 0], [0, 0, 0, 0]]
    # token level drop: tokens with staleness > 1 dropped
    w = staleness_weights(stal, mask, max_staleness=1, policy="drop", level="token")
    assert w.tolist() == [[0, 0, 1, 0], [1, 1, 1, 1]]
    # sequence level drop: row 0's oldest token is 3 versions old -> whole row dropped
    w = staleness_weights(stal, mask, max_staleness=1, policy="drop", level="sequence")
    assert w.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]
    # downweight: gamma ** (staleness - max)
    w = staleness_weights(stal, mask, max_staleness=1, policy="downweight", decay=0.5, level="token")
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.5, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    w = staleness_weights(stal, mask, max_staleness=None)
    assert w.tolist() == mask.float().tolist()


def test_behaviour_correction_combines_and_logs():
    cfg = RolloutConfig(
        max_staleness=1,
        staleness_policy="downweight",
        staleness_decay=0.5,
        staleness_level="token",
        behaviour_is_cap=2.0,
    )
    old = torch.tensor([[0.0, 0.0, 0.0]])
    beh = torch.tensor([[0.0, -1.0, 0.0]])
    versions = torch.tensor([[1, 2, 3]])
    out = behaviour_correction(old, beh, versions, 3, torch.ones(1, 3), cfg)
    torch.testing.assert_close(out.weights, torch.tensor([[0.5, 2.0, 1.0]]))
    m = out.metrics
    assert m["rollout/staleness_mean"] == pytest.approx(1.0) and m["rollout/staleness_max"] == 2
    assert m["rollout/stale_frac"] == pytest.approx(1 / 3)
    assert m["rollout/is_weight_max"] == pytest.approx(2.0) and m["rollout/is_capped_frac"] == pytest.approx(
        1 / 3
    )
    # bypass: the ratio is taken against the behaviour policy, IS weight is 1
    cfg_b = RolloutConfig(ratio_anchor="behaviour")
    out = behaviour_correction(old, beh, versions, 3, torch.ones(1, 3), cfg_b)
    assert out.is_weights.tolist() == [[1.0, 1.0, 1.0]]


def test_sequence_mean_weight_is_the_geometric_mean_of_token_ratios():
    """The summed log-ratio grows with length (long traces always capped); the mean does not."""
    torch.manual_seed(0)
    old = torch.randn(3, 50) * 0.05
    beh = old - 0.02  # every token ratio exp(0.02): small per token, large summed over 50 tokens
    mask = torch.ones(3, 50)
    mask[1, 10:] = 0
    w_sum, _, capped_sum = importance_weights(old, beh, mask, cap=2.0, level="sequence")
    w_mean, _, capped_mean = importance_weights(old, beh, mask, cap=2.0, level="sequence_mean")
    expected = torch.exp(((old - beh) * mask).sum(1) / mask.sum(1))
    assert torch.allclose(w_mean[0], expected[0].expand(50)) and torch.allclose(w_mean[1, :10], expected[1])
    assert (w_mean[1, 10:] == 0).all() and not capped_mean.any()
    assert capped_sum[0].all() and torch.allclose(w_sum[0], torch.full((50,), 2.0))  # exp(1.0) > 2: capped


def test_negative_staleness_is_an_error_not_zero():
    """Tokens newer than the current version (a resume that reset the version to -1) used to be clamped to
    staleness 0: restored data then bypassed the bound. Padding may hold any version."""
    mask = torch.tensor([[1, 1, 0]])
    assert token_staleness(torch.tensor([[3, 4, 99]]), 4, mask).tolist() == [[1, 0, 0]]
    with pytest.raises(ValueError, match="newer than the current policy version 2"):
        token_staleness(torch.tensor([[3, 4, -1]]), 2, mask)
