"""BAPO: the vectorised search equals a straightforward loop on hundreds of random cases.

The reference below is the paper's Algorithm 1 (and, in ``value`` mode, the official verl
recipe's loop) written the obvious way: walk the bounds one step at a time, recompute the
positive contribution from scratch with Python floats, stop when the target is met.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from adaclip_rl.losses import BAPOConfig, bapo_loss, bapo_search, bapo_select, bapo_statistics


def _grid(start: float, end: float, step: float, partial_last: bool) -> list[float]:
    if step == 0 or end == start:
        return [start]
    n = math.floor((end - start) / step + 1e-9)
    grid = [start + k * step for k in range(n + 1)]
    if partial_last and end - grid[-1] > 1e-9 * step:  # official code: c = min(c + step, max)
        grid.append(end)
    return grid


def reference_search(ratio, adv, weights, cfg: BAPOConfig):
    """Loop implementation. Returns (c_low, c_high, index, reached, share_before, share_after).

    Tokens carry the weight ``weights`` (a 0/1 mask, or the aggregated loss's per-token weight);
    ratio, advantages and weights broadcast. If the target is never met, the reported pair is the
    first on the path whose gradient-carrying tokens are those of the last pair (the maxima)."""
    shape = torch.broadcast_shapes(ratio.shape, adv.shape, weights.shape)
    tokens = [
        (float(r), float(a), float(w))
        for r, a, w in zip(ratio.expand(shape).flatten().tolist(), adv.expand(shape).flatten().tolist(),
                           weights.expand(shape).flatten().tolist(), strict=True)
        if w
    ]

    def contributions(c_low, c_high):
        p = n = 0.0
        for r, a, w in tokens:
            if cfg.contribution == "grad":
                if a > 0 and r <= c_high:
                    p += w * a * r
                if a < 0 and r >= c_low and (cfg.dual_clip is None or r <= cfg.dual_clip):
                    n += -w * a * r
            else:
                if a > 0:
                    p += w * a * min(r, c_high)
                if a < 0:
                    n += -w * a * max(r, c_low)
        return p, n

    def gates(c_low, c_high):  # which tokens carry gradient (value mode ignores the dual clip here)
        out = []
        for r, a, _ in tokens:
            if a > 0:
                out.append(r <= c_high)
            elif a < 0:
                blocked = cfg.contribution == "grad" and cfg.dual_clip is not None and r > cfg.dual_clip
                out.append(r >= c_low and not blocked)
        return out

    def share(p, n):
        return p / (p + n) if p + n > 0 else 1.0

    def met(p, n):
        if cfg.contribution == "grad":
            return share(p, n) >= cfg.target
        return (p / (n + 1e-8) if n > 0 else math.inf) >= cfg.target

    partial = cfg.contribution == "value"
    lows = _grid(cfg.low_start, cfg.low_max, cfg.low_step, partial)
    highs = _grid(cfg.high_start, cfg.high_max, cfg.high_step, partial)
    i = j = 0
    path = []
    while True:
        c_low, c_high = lows[i], highs[j]
        p, n = contributions(c_low, c_high)
        path.append((c_low, c_high, share(p, n)))
        if met(p, n):
            return c_low, c_high, len(path) - 1, True, path[0][2], share(p, n)
        first_high = cfg.contribution == "grad"
        if first_high and j < len(highs) - 1:
            j += 1
        elif i < len(lows) - 1:
            i += 1
        elif not first_high and j < len(highs) - 1:
            j += 1
        else:
            break
    last = gates(path[-1][0], path[-1][1])
    k = next(k for k, (lo, hi, _) in enumerate(path) if gates(lo, hi) == last)
    return path[k][0], path[k][1], k, False, path[0][2], path[k][2]


def _random_case(rng: random.Random, gen: torch.Generator, contribution: str):
    b, t = rng.randint(1, 6), rng.randint(1, 12)
    sigma = rng.choice([0.02, 0.2, 0.5, 1.2])
    ratio = torch.exp(torch.randn(b, t, generator=gen, dtype=torch.float64) * sigma)
    kind = rng.random()
    if kind < 0.1:
        adv = torch.rand(b, 1, generator=gen, dtype=torch.float64) + 0.1  # all positive
    elif kind < 0.2:
        adv = -(torch.rand(b, 1, generator=gen, dtype=torch.float64) + 0.1)  # all negative
    else:
        adv = torch.randn(b, 1, generator=gen, dtype=torch.float64)
        adv[torch.rand(b, 1, generator=gen) < 0.15] = 0.0
    if rng.random() < 0.3:
        adv = adv.expand(b, t) * (1 + 0.1 * torch.randn(b, t, generator=gen, dtype=torch.float64))
    mask = (torch.rand(b, t, generator=gen) < rng.choice([0.0, 0.5, 0.9, 1.0])).long() if rng.random() < 0.9 \
        else torch.zeros(b, t, dtype=torch.long)
    if rng.random() < 0.3:  # per-token loss weights (aggregation x IS weights), not just a mask
        mask = mask * torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    if rng.random() < 0.2:  # sequence-level ratio
        ratio = ratio[:, :1].contiguous()
    low_start = rng.choice([0.5, 0.6, 0.7, 0.8])
    high_start = rng.choice([1.1, 1.2, 1.28])
    cfg = BAPOConfig(
        target=rng.uniform(0.05, 0.95) if contribution == "grad" else rng.uniform(0.1, 3.0),
        low_start=low_start,
        low_max=min(1.0, low_start + rng.choice([0.0, 0.1, 0.3, 0.35])),
        low_step=rng.choice([0.0, 0.02, 0.05, 0.07]),
        high_start=high_start,
        high_max=high_start + rng.choice([0.0, 0.5, 1.8]),
        high_step=rng.choice([0.0, 0.05, 0.1, 0.13]),
        contribution=contribution,
        dual_clip=rng.choice([None, 3.0, 1.5]),
    )
    return ratio, adv, mask, cfg


@pytest.mark.parametrize("contribution", ["grad", "value"])
def test_vectorised_search_equals_loop_reference(contribution):
    rng = random.Random(1234 if contribution == "grad" else 5678)
    gen = torch.Generator().manual_seed(rng.randint(0, 2**31))
    n_cases, reached, unreached = 250, 0, 0
    for case in range(n_cases):
        ratio, adv, mask, cfg = _random_case(rng, gen, contribution)
        res = bapo_search(ratio, adv, mask, cfg)
        c_low, c_high, index, ok, before, after = reference_search(ratio, adv, mask, cfg)
        msg = f"case {case}: {cfg}"
        assert res.clip_low.item() == c_low, msg
        assert res.clip_high.item() == c_high, msg
        assert res.index.item() == index, msg
        assert bool(res.reached) == ok, msg
        assert res.share_before.item() == pytest.approx(before, rel=1e-9, abs=1e-12), msg
        assert res.share_after.item() == pytest.approx(after, rel=1e-9, abs=1e-12), msg
        reached += ok
        unreached += not ok
    # the sweep must exercise both outcomes, and many mid-path stops
    assert reached > 30 and unreached > 30


@pytest.mark.parametrize("contribution", ["grad", "value"])
def test_float32_ratios_on_grid_values_match_the_loop(contribution):
    # float32 ratios equal to (or one ulp around) the float32 roundings of every grid value:
    # the float32 fast path must compare them with the exact float64 bounds.
    cfg = BAPOConfig() if contribution == "grad" else BAPOConfig.official()
    grid = torch.tensor(cfg.low_grid + cfg.high_grid + [1.0], dtype=torch.float32)
    vals = torch.cat([grid, torch.nextafter(grid, grid + 1), torch.nextafter(grid, grid - 1)])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        ratio = vals[torch.randperm(vals.numel(), generator=gen)].reshape(1, -1)
        adv = torch.randn(1, vals.numel(), generator=gen)
        res = bapo_search(ratio, adv, torch.ones_like(ratio), cfg)
        c_low, c_high, index, ok, before, after = reference_search(ratio, adv, torch.ones_like(ratio), cfg)
        assert (res.clip_low.item(), res.clip_high.item(), res.index.item(), bool(res.reached)) == (
            c_low, c_high, index, ok)
        assert res.share_before.item() == pytest.approx(before, rel=1e-5)
        stats = bapo_statistics(ratio, adv, torch.ones_like(ratio), cfg)
        stats64 = bapo_statistics(ratio.double(), adv.double(), torch.ones_like(ratio), cfg)
        assert torch.allclose(stats.double(), stats64, rtol=1e-5, atol=1e-6)


def test_paper_defaults_and_grid():
    cfg = BAPOConfig()
    assert (cfg.target, cfg.contribution, cfg.order) == (0.4, "grad", "high_first")
    assert len(cfg.high_grid) == 37 and cfg.high_grid[-1] == pytest.approx(3.0)
    assert len(cfg.low_grid) == 16 and cfg.low_grid[-1] == pytest.approx(0.9)
    path = cfg.path()
    assert path[0] == (0, 0) and path[36] == (0, 36) and path[37] == (1, 36) and path[-1] == (15, 36)
    off = BAPOConfig.official()
    assert off.order == "low_first" and off.path()[1] == (1, 0)


def test_target_already_met_keeps_start_bounds():
    ratio = torch.tensor([[1.0, 1.1, 0.9]])
    adv = torch.tensor([1.0])  # all positive: share 1
    for cfg in (BAPOConfig(), BAPOConfig.official()):
        res = bapo_search(ratio, adv, torch.ones(1, 3), cfg)
        assert (res.clip_low.item(), res.clip_high.item()) == (cfg.low_start, cfg.high_start)
        assert bool(res.reached) and res.index.item() == 0


def test_unreachable_target_reports_the_first_pair_acting_like_the_maxima():
    # all negative: the share stays 0. Ratios 0.65 and 0.85 sit between c_low candidates, so
    # at the maxima both are clipped; the first pair on the path that clips both acts the same.
    ratio = torch.tensor([[1.0, 0.65, 0.85, 1.1]], dtype=torch.float64)
    adv = torch.tensor([-1.0])
    res = bapo_search(ratio, adv, torch.ones(1, 4), BAPOConfig())  # c_high first, up to 3.0
    assert not bool(res.reached)
    assert (res.clip_low.item(), res.clip_high.item()) == pytest.approx((0.86, 3.0))
    assert res.index.item() == 36 + 13
    res = bapo_search(ratio, adv, torch.ones(1, 4), BAPOConfig.official())  # c_low first, up to 0.8
    # r = 0.65 is clipped from c_low = 0.7 on (a token on the bound keeps its gradient); 0.85 is
    # above every c_low
    assert (res.clip_low.item(), res.clip_high.item()) == pytest.approx((0.7, 1.2))
    assert not bool(res.reached) and res.index.item() == 2


def test_on_policy_ratios_keep_the_start_bounds():
    # r == 1 everywhere (first update on fresh data): no candidate on the path clips anything, so
    # the search must not report (and log) saturated bounds, whatever the advantage balance
    adv = torch.tensor([0.3, -1.0, -2.0, 0.1])
    for cfg in (BAPOConfig(), BAPOConfig.official()):
        res = bapo_search(torch.ones(4, 7), adv, torch.ones(4, 7), cfg)
        assert not bool(res.reached)
        assert (res.clip_low.item(), res.clip_high.item(), res.index.item()) == (cfg.low_start, cfg.high_start, 0)
        assert res.share_after.item() == res.share_before.item()


def test_official_mode_takes_a_last_partial_step_to_the_maximum():
    cfg = BAPOConfig.official(low_step=0.07, high_step=0.3)
    assert cfg.low_grid == pytest.approx([0.6, 0.67, 0.74, 0.8])
    assert cfg.high_grid == pytest.approx([1.2, 1.5, 1.8, 2.0])
    assert not cfg.arithmetic
    # paper mode: Algorithm 1 only takes whole steps
    assert BAPOConfig(low_step=0.07).low_grid == pytest.approx([0.6, 0.67, 0.74, 0.81, 0.88])
    # all-negative tokens just below 0.8 are clipped only by the last, partial step
    ratio = torch.tensor([[0.79, 0.79, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    res = bapo_search(ratio, adv, torch.ones(1, 3), cfg)
    assert res.clip_low.item() == pytest.approx(0.8)


def test_empty_batch_is_vacuously_balanced():
    res = bapo_search(torch.full((2, 3), float("nan")), torch.zeros(2), torch.zeros(2, 3))
    assert bool(res.reached) and res.index.item() == 0 and res.share_before.item() == 1.0
    res = bapo_search(torch.ones(0, 5), torch.ones(0), torch.ones(0, 5))
    assert bool(res.reached) and res.clip_low.item() == 0.6


def test_raising_c_low_raises_grad_share_hand_computed():
    # one positive token (A=1, r=1.0) and negatives at r=0.71 and r=1.0 (A=-1):
    # start [0.6, 1.2]: P=1.0, N=0.71+1.0 -> share 1/2.71 = 0.369 < 0.4; raising c_high changes nothing
    # (r=1 < 1.2 already); c_low past 0.71 drops that negative: share 1/2 = 0.5 >= 0.4.
    ratio = torch.tensor([[1.0, 0.71, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, -1.0]])
    res = bapo_search(ratio, adv, torch.ones(1, 3), BAPOConfig())
    assert res.clip_high.item() == pytest.approx(3.0)
    assert res.clip_low.item() == pytest.approx(0.6 + 6 * 0.02)  # first grid point > 0.71 is 0.72
    assert res.share_before.item() == pytest.approx(1 / 2.71)
    assert res.share_after.item() == pytest.approx(0.5)


def test_statistics_are_additive_so_one_reduction_suffices():
    gen = torch.Generator().manual_seed(0)
    ratio = torch.exp(0.4 * torch.randn(8, 32, generator=gen))
    adv = torch.randn(8, 1, generator=gen)
    mask = torch.ones(8, 32)
    for cfg in (BAPOConfig(), BAPOConfig.official()):
        whole = bapo_statistics(ratio, adv, mask, cfg)
        halves = bapo_statistics(ratio[:3], adv[:3], mask[:3], cfg) + bapo_statistics(ratio[3:], adv[3:], mask[3:], cfg)
        assert torch.allclose(whole, halves)
        # reduce_fn is applied exactly once, to the whole vector
        calls = []
        rest = bapo_statistics(ratio[3:], adv[3:], mask[3:], cfg)

        def reduce_fn(v, calls=calls, rest=rest):
            calls.append(tuple(v.shape))
            return v + rest

        res = bapo_search(ratio[:3], adv[:3], mask[:3], cfg, reduce_fn=reduce_fn)
        assert calls == [(cfg.stats_size,)]
        ref = bapo_select(whole, cfg)
        assert res.clip_low == ref.clip_low and res.clip_high == ref.clip_high


def test_bapo_loss_uses_searched_bounds_and_dual_clip():
    ratio = torch.tensor([[1.0, 0.71, 1.0, 5.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -1.0, -1.0]])
    loss, res = bapo_loss(ratio, adv, torch.ones(1, 4), BAPOConfig())
    # r=5 negative token: dual clip 3 caps the loss at 3 and removes its gradient
    assert loss[0, 3].item() == pytest.approx(3.0)
    loss.sum().backward()
    assert ratio.grad[0, 3].item() == 0.0
    assert res.clip_low.item() == pytest.approx(0.72)
    assert ratio.grad[0, 1].item() == 0.0  # r=0.71 < chosen c_low=0.72: clipped
    assert ratio.grad[0, 0].item() == -1.0 and ratio.grad[0, 2].item() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target": 0.0}, "target"),
        ({"target": 1.0}, "target"),
        ({"target": -1.0, "contribution": "value"}, "target"),
        ({"low_start": 0.9, "low_max": 0.6}, "low_max"),
        ({"high_start": 2.0, "high_max": 1.5}, "high_max"),
        ({"low_start": 1.1}, "low_start"),
        ({"high_start": 0.9}, "high_start"),
        ({"low_step": -0.02}, "low_step"),
        ({"high_step": -0.05}, "high_step"),
        ({"contribution": "share"}, "contribution"),
        ({"dual_clip": 1.0}, "dual_clip"),
    ],
)
def test_bad_config_raises_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BAPOConfig(**kwargs)


@pytest.mark.parametrize("contribution", ["grad", "value"])
def test_sequence_level_ratio_equals_the_broadcast_ratio(contribution):
    # (B, 1) ratios (GSPO, importance_sampling_level="sequence", luspo) with (B, T) weights must
    # give the bounds of the same ratio broadcast to (B, T). The old code binned only B of the
    # B*T weights (scatter_add_ reads as many values as it has indices).
    gen = torch.Generator().manual_seed(3)
    cfg = BAPOConfig() if contribution == "grad" else BAPOConfig.official(target=0.9)
    b, t = 16, 9
    ratio = torch.exp(0.5 * torch.randn(b, 1, generator=gen, dtype=torch.float64))
    adv = torch.tensor([1.0] * 5 + [-1.0] * 11, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(1)).double()
    weights = mask * torch.rand(b, t, generator=gen, dtype=torch.float64)
    for w in (mask, weights):
        seq = bapo_search(ratio, adv, w, cfg)
        tok = bapo_search(ratio.expand(b, t), adv, w, cfg)
        assert (seq.clip_low.item(), seq.clip_high.item(), seq.index.item()) == (
            tok.clip_low.item(), tok.clip_high.item(), tok.index.item())
        assert seq.share_after.item() == pytest.approx(tok.share_after.item(), rel=1e-12)
        ref = reference_search(ratio, adv.unsqueeze(1), w, cfg)
        assert (seq.clip_low.item(), seq.clip_high.item()) == (ref[0], ref[1])
    assert bapo_search(ratio, adv, mask, cfg).index.item() > 0  # the search moved: the case is not vacuous


@pytest.mark.parametrize(
    ("shapes", "name"),
    [
        (((4, 6), (3,), (4, 6)), "advantages"),
        (((4, 6), (4, 5), (4, 6)), "advantages"),
        (((4, 6), (4,), (4, 5)), "weights"),
        (((4, 1), (4,), (3, 6)), "weights"),
        (((24,), (4,), (4, 6)), "ratio"),
        (((4, 6), (4,), (24,)), "weights"),
    ],
)
def test_shapes_that_do_not_broadcast_raise_naming_the_argument(shapes, name):
    r, a, w = (torch.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=name):
        bapo_search(r, a, w, BAPOConfig())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dual_clip_bin_ties_and_a_dual_clip_next_to_low_max(dtype):
    # tokens exactly on the dual clip keep their gradient (counted), just above it do not; a dual
    # clip within a hair of low_max takes the masking path: same answers as the loop
    for cfg in (BAPOConfig(), BAPOConfig(low_max=1.0, dual_clip=1.0003, target=0.6)):
        dual = torch.tensor(cfg.dual_clip, dtype=dtype)
        ratio = torch.stack([dual, torch.nextafter(dual, dual + 1), torch.nextafter(dual, dual - 1),
                             torch.tensor(1.0, dtype=dtype), torch.tensor(0.95, dtype=dtype)]).reshape(1, -1)
        adv = torch.tensor([[-1.0, -1.0, -1.0, 1.0, -1.0]], dtype=dtype)
        res = bapo_search(ratio, adv, torch.ones_like(ratio), cfg)
        ref = reference_search(ratio.double(), adv.double(), torch.ones(1, 5, dtype=torch.float64), cfg)
        assert (res.clip_low.item(), res.clip_high.item(), res.index.item()) == (ref[0], ref[1], ref[2])
        assert res.share_after.item() == pytest.approx(ref[5], rel=1e-6)
    assert BAPOConfig().dual_bin == 1 and BAPOConfig(low_max=1.0, dual_clip=1.0003).dual_bin == 0


def test_deterministic_scan_equals_cumsum():
    from adaclip_rl.losses.bapo import _scan

    gen = torch.Generator().manual_seed(0)
    for n in range(1, 70):
        x = torch.rand(n, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(_scan(x), x.cumsum(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_runs_on_cuda_under_deterministic_algorithms():
    # a floating cumsum on CUDA raises under torch.use_deterministic_algorithms(True) (full_determinism)
    gen = torch.Generator().manual_seed(0)
    ratio = torch.exp(0.4 * torch.randn(8, 32, generator=gen))
    adv, mask = torch.randn(8, generator=gen), torch.ones(8, 32)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for cfg in (BAPOConfig(), BAPOConfig.official()):
            res = bapo_search(ratio.cuda(), adv.cuda(), mask.cuda(), cfg)
            ref = bapo_search(ratio, adv, mask, cfg)
            assert (res.clip_low.item(), res.clip_high.item()) == (ref.clip_low.item(), ref.clip_high.item())
    finally:
        torch.use_deterministic_algorithms(was)


def _float64_histogram(values, index, n_bins):
    """The former histogram: a floating ``index_add_`` (order-dependent bits), here in float64."""
    from adaclip_rl.losses.bapo import _LANES

    hist = torch.zeros(n_bins * _LANES, dtype=torch.float64).index_add_(0, index, values.double())
    return hist.view(_LANES, n_bins).sum(0).to(values.dtype)


_STAT_CONFIGS = [BAPOConfig(), BAPOConfig(dual_clip=None), BAPOConfig.official(), BAPOConfig.official(low_step=0.07),
                 BAPOConfig.official(value_weights="loss", dual_clip=None)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cfg", _STAT_CONFIGS, ids=["paper", "no_dual", "official", "partial_step", "value_loss"])
def test_histogram_is_order_independent_and_equals_a_float64_sum(cfg, dtype, monkeypatch):
    # deterministic by construction (integer sums): any permutation of the tokens gives the same bits,
    # which a floating index_add_ (atomic adds on CUDA, or a different token order anywhere) does not
    import adaclip_rl.losses.bapo as bapo

    gen = torch.Generator().manual_seed(3)
    b, t = 16, 256
    ratio = torch.exp(0.6 * torch.randn(b, t, generator=gen, dtype=torch.float64)).to(dtype)
    ratio[0, :4] = torch.tensor([0.6, 0.9, 1.2, 3.0]).to(dtype)  # on grid values
    adv = torch.randn(b, generator=gen)
    weights = torch.rand(b, t, generator=gen) * (torch.rand(b, t, generator=gen) > 0.2)
    weights[1] *= 1e-6  # tiny weights beside large ones
    stats = bapo_statistics(ratio, adv, weights, cfg)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        rows, cols = torch.randperm(b, generator=g), torch.randperm(t, generator=g)
        permuted = bapo_statistics(ratio[rows][:, cols], adv[rows], weights[rows][:, cols], cfg)
        assert torch.equal(permuted, stats)
    monkeypatch.setattr(bapo, "_histogram", _float64_histogram)
    before = bapo_statistics(ratio, adv, weights, cfg)
    tol = 1e-12 if dtype == torch.float64 else 2e-7
    torch.testing.assert_close(stats, before, rtol=tol, atol=tol * before.abs().max().item())
    assert torch.equal(stats != 0, before != 0)  # a bin holds weight iff it did (the search reads that)
