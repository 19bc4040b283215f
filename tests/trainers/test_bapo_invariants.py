"""BAPO inside the trainer: the bounds it picks are measured on the gradient the real loss has.

Invariant (independent of how the statistic is computed): back-propagate
``AdaClipGRPOTrainer._compute_loss`` to the per-token log-probs; the positive-advantage share of
the gradient's magnitude must equal the logged ``bapo/pos_share_after``, and every candidate
earlier on the search path - applied to the same real loss - must fall short of the target. This
for every clip ``loss_type``, token and sequence importance sampling, with and without the vLLM
importance-sampling correction, the off-policy sequence mask and the entropy mask, with and without
the dual clip, on batches that hold tokens whose log-ratio hits the [-20, 20] clamp (one of them a
``-inf`` old log-prob): those carry no gradient and must not count. The model forward is replaced
by fixed log-probs (a leaf tensor), so everything from the log-probs to the scalar loss is the
trainer's own code.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import digit_reward

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer
from adaclip_rl.losses import BAPOConfig

B, P, T = 8, 3, 10


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, arithmetic_dataset, tmp_path_factory):
    args = AdaClipGRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("inv")), policy_loss="bapo", use_cpu=True, bf16=False,
        per_device_train_batch_size=8, num_generations=8, max_completion_length=T, report_to="none",
        save_strategy="no", gradient_checkpointing=False,
    )
    tr = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                            args=args)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _case(seed: int, seq: bool, clamped: bool = False):
    """A batch; ``clamped``: three loss tokens with a log-ratio outside [-20, 20] (+25 and a ``-inf``
    old log-prob on wrong answers, -25 on a right one)."""
    gen = torch.Generator().manual_seed(seed)
    logp = -2 * torch.rand(B, T, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([2, 3, 2, 9, 10, 8, 10, 7])  # 3 short right answers, 5 long wrong ones
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    adv = torch.tensor([1.2, 0.9, 1.5, -0.6, -0.8, -0.5, -0.7, -0.9])
    old = logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    old[:, -1] = torch.where(mask[:, -1].bool(), old[:, -1], torch.tensor(-1e4, dtype=torch.float64))  # padding
    sampling = old + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    if clamped:
        old[3, 1], old[4, 2], old[0, 0] = logp[3, 1] - 25.0, -torch.inf, logp[0, 0] + 25.0
    inputs = {
        "prompt_ids": torch.randint(3, 50, (B, P), generator=gen), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(3, 50, (B, T), generator=gen), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old,
        "sampling_per_token_logps": sampling,
        "importance_sampling_ratio": (0.2 + 1.8 * torch.rand(B, 1 if seq else T, generator=gen, dtype=torch.float64)),
        "num_items_in_batch": mask.sum().double(),
    }
    entropies = 3 * torch.rand(B, T, generator=gen, dtype=torch.float64)
    return logp, entropies, inputs


def _set(trainer, loss_type, seq, vllm_is, opm, ent):
    trainer.loss_type = loss_type
    trainer.importance_sampling_level = "sequence" if seq else "token"
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = vllm_is
    trainer.off_policy_mask_threshold = 0.0 if opm else None
    trainer.top_entropy_quantile = 0.5 if ent else 1.0


def _run(trainer, logp0, entropies, inputs, cfg):
    """The trainer's real loss on fixed log-probs; returns (d loss / d logp, d loss / d per-token loss, loss)."""
    logp = logp0.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, entropies, None)
    trainer.loss_config = cfg
    captured = {}
    inner = trainer.policy_loss_fn

    def spy(*a, **k):
        out = inner(*a, **k)
        out.per_token_loss.retain_grad()
        captured["pt"] = out.per_token_loss
        return out

    trainer.policy_loss_fn = spy
    try:
        loss = trainer._compute_loss(trainer.model, inputs)
    finally:
        trainer.policy_loss_fn = inner
    loss.backward()
    pt = captured["pt"]
    return logp.grad, (pt.grad * pt.detach()), loss


def _grad_share(grad, adv):
    g = grad.abs()
    pos = g[adv > 0].sum()
    return (pos / g.sum()).item() if g.sum() > 0 else 1.0


def _value_stats(contrib, adv):
    c = contrib.abs()
    a = adv.unsqueeze(1).expand_as(c)
    return c[a > 0].sum().item(), c[a < 0].sum().item()


def _fixed(cfg: BAPOConfig, low: float, high: float) -> BAPOConfig:
    return BAPOConfig(target=cfg.target, low_start=low, low_max=low, low_step=0.0, high_start=high, high_max=high,
                      high_step=0.0, contribution=cfg.contribution, dual_clip=cfg.dual_clip,
                      value_weights=cfg.value_weights)


def _last(trainer, key):
    return trainer._metrics["train"][key][-1]


@pytest.mark.parametrize("dual_clip", [3.0, None], ids=["dual_clip", "no_dual_clip"])
@pytest.mark.parametrize("seq", [False, True], ids=["token_is", "sequence_is"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
def test_logged_share_is_the_share_of_the_real_gradient(trainer, loss_type, seq, dual_clip):
    cfg = BAPOConfig(dual_clip=dual_clip)  # the paper: gradient share, target 0.4, c_high first
    moved = 0
    for k, (vllm_is, opm, ent) in enumerate(itertools.product([False, True], repeat=3)):
        _set(trainer, loss_type, seq, vllm_is, opm, ent)
        logp, entropies, inputs = _case(100 + k, seq, clamped=k % 2 == 1 or dual_clip is None)
        adv = inputs["advantages"]
        grad, _, loss = _run(trainer, logp, entropies, inputs, cfg)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        share = _grad_share(grad, adv)
        what = f"{loss_type} seq={seq} vllm_is={vllm_is} off_policy_mask={opm} entropy_mask={ent} dual={dual_clip}"
        assert share == pytest.approx(_last(trainer, "bapo/pos_share_after"), abs=1e-6), what
        index = int(_last(trainer, "bapo/iterations"))
        reached = bool(_last(trainer, "bapo/target_reached"))
        assert (share >= cfg.target) == reached, what
        moved += index > 0
        for i, j in cfg.path()[:index]:  # no earlier candidate meets the target on the real loss
            g_k, _, _ = _run(trainer, logp, entropies, inputs, _fixed(cfg, cfg.low_grid[i], cfg.high_grid[j]))
            assert _grad_share(g_k, adv) < cfg.target, (what, cfg.low_grid[i], cfg.high_grid[j])
    assert moved >= 2  # the cases exercise the search, not only the start bounds


@pytest.mark.parametrize("seq", [False, True], ids=["token_is", "sequence_is"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo"])
def test_value_mode_statistic_is_the_share_of_the_real_loss(trainer, loss_type, seq):
    # the official verl statistic: effective-advantage values, weighted as the real loss weighs them
    # (dual clip off: verl's statistic ignores it while the loss applies it; value_weights="loss", not
    # the official response-mask weighting)
    cfg = BAPOConfig.official(target=0.9, dual_clip=None, value_weights="loss")
    for k, (vllm_is, opm, ent) in enumerate(itertools.product([False, True], repeat=3)):
        _set(trainer, loss_type, seq, vllm_is, opm, ent)
        logp, entropies, inputs = _case(200 + k, seq)
        adv = inputs["advantages"]
        _, contrib, _ = _run(trainer, logp, entropies, inputs, cfg)
        p, n = _value_stats(contrib, adv)
        what = f"{loss_type} seq={seq} vllm_is={vllm_is} off_policy_mask={opm} entropy_mask={ent}"
        assert p / (p + n) == pytest.approx(_last(trainer, "bapo/pos_share_after"), abs=1e-6), what
        index = int(_last(trainer, "bapo/iterations"))
        for i, j in cfg.path()[:index]:
            _, c_k, _ = _run(trainer, logp, entropies, inputs, _fixed(cfg, cfg.low_grid[i], cfg.high_grid[j]))
            p_k, n_k = _value_stats(c_k, adv)
            assert p_k / n_k < cfg.target, (what, cfg.low_grid[i], cfg.high_grid[j])


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_official_value_weights_are_the_response_mask_only(trainer, loss_type):
    # BAPOConfig.official() (value_weights="mask") reproduces verl's recipe/bapo/policy_loss.py: the
    # effective advantages A min(r, c_high) / A max(r, c_low) summed over the response mask, whatever
    # the loss type's aggregation weights and the importance-sampling / entropy weights
    cfg = BAPOConfig.official(target=0.9, dual_clip=None)
    assert cfg.value_weights == "mask"
    _set(trainer, loss_type, False, True, False, True)
    logp, entropies, inputs = _case(300, False)
    _run(trainer, logp, entropies, inputs, cfg)
    mask = inputs["completion_mask"].bool()
    r = torch.exp((logp - inputs["old_per_token_logps"]).clamp(-20, 20))
    a = inputs["advantages"].double().unsqueeze(1).expand_as(r)
    c_low, c_high = _last(trainer, "bapo/clip_low"), _last(trainer, "bapo/clip_high")
    p = (a * torch.minimum(r, torch.tensor(c_high)))[mask & (a > 0)].sum().item()
    n = (-a * torch.maximum(r, torch.tensor(c_low)))[mask & (a < 0)].sum().item()
    assert 0.05 < p / n < 20  # a balanced batch, not one token dominating
    assert _last(trainer, "bapo/pos_neg_ratio_after") == pytest.approx(p / n, rel=1e-6)


def test_grpo_weighting_changes_the_bounds_a_token_count_would_pick(trainer):
    # The example: 3 short right answers and 5 long wrong ones. Counting tokens, the
    # negative side dominates and the search widens; under loss_type="grpo" every response weighs
    # 1/G whatever its length, and the start bounds already meet the target.
    _set(trainer, "grpo", False, False, False, False)
    logp, entropies, inputs = _case(7, False)
    inputs["old_per_token_logps"] = logp.clone()  # r = 1: the share is the advantage balance
    _run(trainer, logp, entropies, inputs, BAPOConfig())
    assert _last(trainer, "bapo/pos_share_before") > 0.4
    assert (_last(trainer, "bapo/clip_low"), _last(trainer, "bapo/clip_high")) == pytest.approx((0.6, 1.2))
    from adaclip_rl.losses import bapo_search

    mask = inputs["completion_mask"]
    tokens = bapo_search(torch.ones(B, T), inputs["advantages"], mask, BAPOConfig())
    assert tokens.share_before.item() < 0.4  # what a token count reads


# ----------------------------------------------------- one search per optimizer update (scope="update")
@pytest.fixture(scope="module")
def window_trainer(tiny_model_dir, arithmetic_dataset, tmp_path_factory):
    args = AdaClipGRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("win")), policy_loss="bapo", use_cpu=True, bf16=False,
        per_device_train_batch_size=2, num_generations=4, gradient_accumulation_steps=2, steps_per_generation=4,
        max_completion_length=6, report_to="none", save_strategy="no", gradient_checkpointing=False,
        bapo_scope="update",
    )
    return AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                              args=args)


def _window_batches(trainer):
    from dist_bapo_scope_worker import make_batch

    full = make_batch(trainer.model)
    n_items = full["completion_mask"].sum().float()
    batches = []
    for k in range(4):  # steps_per_generation 4 slices of 2 sequences: two windows of gradient_accumulation_steps 2
        mb = {key: v[2 * k : 2 * k + 2] for key, v in full.items()}
        mb["num_items_in_batch"] = n_items
        batches.append(mb)
    return batches


def _run_generation(trainer, batches, spy=None):
    """TRL's order: steps 0..3 of one generation batch, an optimizer step after every 2."""
    trainer.model.train()
    trainer._buffered_inputs = batches
    trainer.update_search.reset()
    trainer.current_gradient_accumulation_steps = 2
    trainer.state.global_step = 0
    bounds = []
    for step in range(4):
        trainer._step = step
        if spy is not None:
            spy.append(("micro_batch", step))
        trainer._compute_loss(trainer.model, batches[step]).backward()
        m = trainer._metrics["train"]
        bounds.append((m["bapo/clip_low"][-1], m["bapo/clip_high"][-1], m["bapo/pos_share_after"][-1]))
        if step % 2 == 1:
            trainer.state.global_step += 1
    trainer.model.zero_grad()
    return bounds


def test_update_scope_searches_once_per_window_on_the_window_statistics(window_trainer):
    # gradient_accumulation_steps 2 x steps_per_generation 4: two windows, one search each, on the sum
    # of its two micro-batches' statistics (the tiny model has no dropout: eval forwards equal train ones)
    import dataclasses

    tr = window_trainer
    batches = _window_batches(tr)
    spec, selects = tr.loss_spec, []

    def counting_select(stats, cfg):
        selects.append(stats.clone())
        return spec.select(stats, cfg)

    tr.loss_spec = dataclasses.replace(spec, select=counting_select)
    try:
        bounds = _run_generation(tr, batches)
    finally:
        tr.loss_spec = spec
    assert len(selects) == 2  # one search per window
    assert bounds[0] == bounds[1] and bounds[2] == bounds[3]
    with torch.no_grad():
        stats = []
        for mb in batches:
            li = tr._loss_inputs(tr.model, mb, "train")
            stats.append(spec.statistics(li.ratio, li.advantages, tr._statistic_weights(li, mb, "train"),
                                         tr.loss_config))
    for w, searched in enumerate(selects):
        torch.testing.assert_close(searched, stats[2 * w] + stats[2 * w + 1], rtol=1e-6, atol=1e-9)
        res = spec.select(stats[2 * w] + stats[2 * w + 1], tr.loss_config)
        assert bounds[2 * w][:2] == pytest.approx((res.clip_low.item(), res.clip_high.item()))
    assert not torch.equal(selects[0], selects[1])  # two different windows


def test_update_scope_statistics_forwards_run_before_the_gradient_forward_with_dropout_off(window_trainer):
    tr = window_trainer
    batches = _window_batches(tr)
    calls = []
    inner = tr._get_per_token_logps_and_entropies

    def spy(model, *a, **k):
        calls.append((torch.is_grad_enabled(), model.training))
        return inner(model, *a, **k)

    tr._get_per_token_logps_and_entropies = spy
    try:
        _run_generation(tr, batches, spy=calls)
    finally:
        del tr._get_per_token_logps_and_entropies
    no_grad_eval, grad_train = (False, False), (True, True)
    # first micro-batch of each window: the other micro-batch's no-grad forward (dropout off) comes
    # first, while no autograd graph is held; then the gradient forward in train mode
    assert calls == [("micro_batch", 0), no_grad_eval, grad_train, ("micro_batch", 1), grad_train,
                     ("micro_batch", 2), no_grad_eval, grad_train, ("micro_batch", 3), grad_train]
