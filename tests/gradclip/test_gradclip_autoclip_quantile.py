"""AutoClip (percentile over a bounded window) and QuantileClip (geometric quantile tracking)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaclip_rl.gradclip import AutoClip, QuantileClip

EPS = 1e-6


# ----------------------------------------------------------------------------- AutoClip


def test_autoclip_first_step_is_not_clipped_and_threshold_is_window_percentile():
    a = AutoClip(percentile=10, window=5)
    assert float(a.step(3.0)) == 1.0  # c = n_1
    norms = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0, 35.0]
    for n in norms[1:]:
        window = (list(a.history) + [n])[-5:]
        thr = float(np.percentile(window, 10))
        coef = float(a.step(n))
        assert a.metrics()["threshold"] == pytest.approx(thr, rel=1e-14)
        assert coef == (pytest.approx(thr / (n + EPS), rel=1e-14) if n > thr else 1.0)
    assert list(a.history) == norms[-5:]  # bounded


@settings(max_examples=60, deadline=None)
@given(
    norms=st.lists(st.floats(min_value=1e-4, max_value=1e4), min_size=1, max_size=60),
    percentile=st.floats(min_value=0, max_value=100),
    window=st.integers(min_value=1, max_value=20),
)
def test_autoclip_matches_numpy_percentile(norms, percentile, window):
    a = AutoClip(percentile=percentile, window=window)
    for t, n in enumerate(norms):
        thr = float(np.percentile(norms[max(0, t + 1 - window) : t + 1], percentile))
        coef = float(a.step(n))
        assert a.metrics()["threshold"] == pytest.approx(thr, rel=1e-12, abs=1e-12)
        assert coef == (pytest.approx(thr / (n + EPS), rel=1e-12) if n > thr else 1.0)
    assert len(a.history) == min(window, len(norms))


def test_autoclip_nonfinite_norms_stay_out_of_the_window():
    a = AutoClip(percentile=50, window=4)
    for n in (1.0, 2.0):
        a.step(n)
    assert float(a.step(math.nan)) == 0.0 and float(a.step(math.inf)) == 0.0
    assert list(a.history) == [1.0, 2.0] and a.num_nonfinite == 2
    assert a.lagged_threshold() == pytest.approx(1.5)


# ----------------------------------------------------------------------------- QuantileClip


def test_quantile_geometric_update_hand_computed():
    q = QuantileClip(target_quantile=0.5, learning_rate=0.1, initial_clip=1.0)
    assert float(q.step(0.5)) == 1.0  # b = 1 -> C shrinks
    assert q.clip == pytest.approx(math.exp(-0.1 * 0.5), rel=1e-15)
    c = q.clip
    assert float(q.step(2.0)) == pytest.approx(c / (2.0 + EPS), rel=1e-15)  # clipped to C_t
    assert q.clip == pytest.approx(c * math.exp(0.1 * 0.5), rel=1e-15)  # b = 0 -> C grows
    assert q.metrics()["threshold"] == pytest.approx(c)


def test_quantile_initial_clip_defaults_to_first_norm_and_clamps():
    q = QuantileClip(target_quantile=0.9, learning_rate=0.2)
    assert float(q.step(4.0)) == 1.0
    assert q.clip == pytest.approx(4.0 * math.exp(-0.2 * 0.1))
    b = QuantileClip(learning_rate=1.0, initial_clip=1.0, min_clip=0.8, max_clip=1.2)
    b.step(0.1)
    assert b.clip == 0.8
    b.step(100.0)
    b.step(100.0)
    assert b.clip == 1.2


def test_quantile_nonfinite_does_not_move_clip():
    q = QuantileClip(initial_clip=2.0)
    q.step(1.0)
    c = q.clip
    assert float(q.step(math.nan)) == 0.0
    assert q.clip == c and q.num_updates == 1


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_quantile_tracking_converges_to_target_quantile_of_lognormal(gamma):
    """Norms ~ LogNormal(0, 0.5): the gamma-quantile is exp(0.5 * Phi^-1(gamma)).

    Tolerance: after 6,000 burn-in steps, over the next 10,000 steps the fraction of unclipped
    steps is within 0.02 of gamma and the median of C within 5% of the true quantile.
    """
    g = torch.Generator().manual_seed(1234)
    norms = torch.exp(0.5 * torch.randn(16_000, generator=g, dtype=torch.float64)).tolist()
    q = QuantileClip(target_quantile=gamma, learning_rate=0.01, initial_clip=10.0)  # start far away
    unclipped, clips = [], []
    for t, n in enumerate(norms):
        c = q.threshold(n)
        q.step(n)
        if t >= 6000:
            unclipped.append(n <= c)
            clips.append(c)
    true_q = math.exp(0.5 * float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(gamma))))
    assert abs(float(np.mean(unclipped)) - gamma) < 0.02
    assert float(np.median(clips)) == pytest.approx(true_q, rel=0.05)
