"""ZClip on synthetic norm sequences, against hand-computed values and a brute-force numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adaclip_rl.gradclip import ZClip

EPS = 1e-6
WARM = [1.0, 1.2, 0.8, 1.1, 0.9]  # mean 1, population variance 0.02
MU, VAR = 1.0, 0.02
SIGMA = math.sqrt(VAR)


def _warm(clipper: ZClip, norms=WARM) -> list[float]:
    return [float(clipper.step(n)) for n in norms]


def _adaptive(n, mu=MU, sigma=SIGMA, z_thr=2.5, factor=1.0):
    z = (n - mu) / (sigma + EPS)
    return factor * (mu + z_thr * sigma / (z / z_thr))


def zclip_reference(norms, alpha=0.97, z_thr=2.5, warmup=25, cap=None):
    """Brute force, straight from the reference notes (section 1), with numpy statistics."""
    buf, mu, var, init, coefs = [], None, None, False, []
    for n in norms:
        if not np.isfinite(n):
            coefs.append(0.0)
            continue
        if not init:
            e = n if cap is None else min(n, cap)
            coefs.append(e / (n + EPS) if n > e else 1.0)
            buf.append(n)
            if len(buf) == warmup:
                mu, var, init, buf = float(np.mean(buf)), float(np.var(buf)), True, []
            continue
        sd = np.sqrt(var)
        z = (n - mu) / (sd + EPS)
        c = mu + z_thr * sd / (z / z_thr) if z > z_thr else None
        e = c if c is not None else n
        if cap is not None:
            e = min(e, cap)
        coefs.append(e / (n + EPS) if n > e else 1.0)
        x = c if c is not None else n
        mu = alpha * mu + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mu) ** 2
    return coefs


def test_warmup_statistics_are_mean_and_population_variance():
    z = ZClip(warmup_steps=5)
    _warm(z, WARM[:4])
    assert z.in_warmup and z.buffer == WARM[:4]
    _warm(z, WARM[4:])
    assert not z.in_warmup and z.buffer == []
    assert z.mean == pytest.approx(MU, abs=1e-15) and z.var == pytest.approx(VAR, abs=1e-15)


def test_warmup_boundary_exact_switching_step():
    spike = 10.0
    # spike on the last warm-up step (step 5): not clipped, it enters the warm-up statistics
    a = ZClip(warmup_steps=5)
    assert _warm(a, [*WARM[:4], spike]) == [1.0] * 5
    assert a.metrics()["warmup"] == 1.0
    # spike on step 6, the first adaptive step: clipped
    b = ZClip(warmup_steps=5)
    assert _warm(b, WARM) == [1.0] * 5
    coef = float(b.step(spike))
    assert b.metrics()["warmup"] == 0.0
    assert coef == pytest.approx(_adaptive(spike) / (spike + EPS), rel=1e-12)
    assert coef < 0.11


def test_warmup_clips_only_at_the_cap():
    z = ZClip(warmup_steps=5, max_grad_norm=1.05)
    coefs = _warm(z)
    assert coefs == [1.0, 1.05 / (1.2 + EPS), 1.0, 1.05 / (1.1 + EPS), 1.0]
    assert z.buffer == []  # raw (pre-clip) norms went into the statistics
    assert z.mean == pytest.approx(MU)


def test_spike_just_above_and_well_above_threshold():
    boundary = MU + 2.5 * (SIGMA + EPS)  # z == z_thresh
    below = ZClip(warmup_steps=5)
    _warm(below)
    assert float(below.step(boundary - 1e-4)) == 1.0
    assert below.metrics()["clipped"] == 0.0

    just = ZClip(warmup_steps=5)
    _warm(just)
    n = boundary + 1e-4
    c = _adaptive(n)
    assert c < n and c == pytest.approx(n, rel=1e-3)  # continuous at z = z_thresh
    assert float(just.step(n)) == pytest.approx(c / (n + EPS), rel=1e-12)
    m = just.metrics()
    assert m["clipped"] == 1.0 and m["threshold"] == pytest.approx(c, rel=1e-12)
    assert m["z"] == pytest.approx((n - MU) / (SIGMA + EPS), rel=1e-12)

    well = ZClip(warmup_steps=5)
    _warm(well)
    n = 50.0
    c = MU + 2.5**2 * SIGMA * (SIGMA + EPS) / (n - MU)  # the closed form
    assert c == pytest.approx(_adaptive(n), rel=1e-12)
    assert float(well.step(n)) == pytest.approx(c / (n + EPS), rel=1e-12)


@pytest.mark.parametrize(("n", "expected"), [(1.3, 1.208), (1.5, 1.125), (2.0, 1.0625), (5.0, 1.016)])
def test_adaptive_threshold_falls_as_spike_grows_reference_table(n, expected):
    """The worked example of reference section 1 (mu=1, sigma=0.1, z_thr=2.5)."""
    z = ZClip()
    z.load_state_dict(
        {
            "clipper": "zclip",
            "version": 1,
            "num_updates": 25,
            "num_nonfinite": 0,
            "num_clipped": 0,
            "mean": 1.0,
            "var": 0.01,
            "initialized": True,
            "buffer": [],
        }
    )
    assert z.threshold(n) == pytest.approx(expected, abs=1e-3)


def test_ema_after_spike_uses_adaptive_threshold_and_updated_mean():
    z = ZClip(warmup_steps=5)
    _warm(z)
    n = 4.0
    c = _adaptive(n)
    z.step(n)
    mu = 0.97 * MU + 0.03 * c
    assert z.mean == pytest.approx(mu, rel=1e-14)
    assert z.var == pytest.approx(0.97 * VAR + 0.03 * (c - mu) ** 2, rel=1e-14)
    # a normal step feeds the norm itself
    z2 = ZClip(warmup_steps=5)
    _warm(z2)
    z2.step(1.05)
    mu2 = 0.97 + 0.03 * 1.05
    assert z2.mean == pytest.approx(mu2) and z2.var == pytest.approx(0.97 * VAR + 0.03 * (1.05 - mu2) ** 2)


def test_skip_update_on_spike_and_cap_uses_adaptive_c_for_the_ema():
    z = ZClip(warmup_steps=5, skip_update_on_spike=True)
    _warm(z)
    z.step(4.0)
    assert (z.mean, z.var) == (pytest.approx(MU), pytest.approx(VAR))
    capped = ZClip(warmup_steps=5, max_grad_norm=0.5)
    _warm(capped)
    n = 4.0
    c = _adaptive(n)
    assert float(capped.step(n)) == pytest.approx(0.5 / (n + EPS))  # e = min(c, cap)
    assert capped.mean == pytest.approx(0.97 * MU + 0.03 * c)  # x = c, not the cap


def test_mean_option_and_clip_factor():
    m = ZClip(warmup_steps=5, clip_option="mean")
    _warm(m)
    assert float(m.step(3.0)) == pytest.approx(MU / (3.0 + EPS))
    f = ZClip(warmup_steps=5, clip_factor=0.5)
    _warm(f)
    assert float(f.step(3.0)) == pytest.approx(0.5 * _adaptive(3.0) / (3.0 + EPS))


def test_zero_variance_is_handled():
    z = ZClip(warmup_steps=5)
    _warm(z, [2.0] * 5)
    assert z.var == 0.0 and z.std == 0.0
    assert float(z.step(2.0)) == 1.0  # z = 0
    assert float(z.step(3.0)) == pytest.approx(2.0 / (3.0 + EPS))  # clipped to mu
    assert all(math.isfinite(v) for v in (z.mean, z.var, *z.metrics().values()))
    assert z.mean == pytest.approx(2.0) and z.var == pytest.approx(0.0)


def test_nonfinite_norms_leave_state_and_warmup_progress_unchanged():
    z = ZClip(warmup_steps=5)
    _warm(z, WARM[:3])
    for bad in (math.nan, math.inf, -math.inf):
        assert float(z.step(bad)) == 0.0
    assert z.buffer == WARM[:3] and z.num_updates == 3 and z.num_nonfinite == 3
    _warm(z, WARM[3:])
    assert not z.in_warmup and z.mean == pytest.approx(MU)
    before = (z.mean, z.var)
    assert float(z.step(torch.tensor(math.nan))) == 0.0
    assert (z.mean, z.var) == before
    assert z.metrics()["nonfinite_steps"] == 4.0


def test_matches_brute_force_reference_on_a_long_sequence():
    rng = np.random.default_rng(0)
    norms = rng.lognormal(0.0, 0.3, size=400)
    norms[rng.choice(400, 25, replace=False)] *= rng.uniform(2, 50, size=25)
    norms[[30, 200]] = [np.inf, np.nan]
    for cap in (None, 2.0):
        ref = zclip_reference(norms.tolist(), cap=cap)
        z = ZClip(max_grad_norm=cap)
        got = [float(z.step(float(n))) for n in norms]
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
        assert sum(c < 1 for c in got) > 20


def test_lagged_threshold():
    z = ZClip(warmup_steps=5)
    assert z.lagged_threshold() == math.inf
    _warm(z)
    assert z.lagged_threshold() == pytest.approx(MU + 2.5 * SIGMA)
