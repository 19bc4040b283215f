"""OffPolicyGRPOTrainer: config validation (fast) and a short BAPO run with vLLM colocate on CPU,
partial rollouts and replay enabled, including a checkpoint save / resume of the rollout state."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from tiny_models import write_eos_model

from adaclip_rl.rollout.vllm_engine import release_trainer_engines
from adaclip_rl.trainers.offpolicy import OffPolicyGRPOConfig


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=16,
        per_device_train_batch_size=8,
        num_generations=4,
        use_vllm=True,
        vllm_mode="colocate",
    )
    base.update(kw)
    return OffPolicyGRPOConfig(**base)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"replay_ratio": 1.5}, r"replay_ratio must be in \[0, 1\).*got 1.5"),
        ({"replay_ratio": 1.0}, r"replay_ratio must be in \[0, 1\)"),
        ({"partial_rollouts": True, "use_behaviour_logprobs": False}, r"requires use_behaviour_logprobs"),
        ({"partial_rollouts": True, "use_vllm": False}, r"requires use_vllm=True"),
        ({"replay_ratio": 0.5, "vllm_mode": "server"}, r"requires vllm_mode='colocate'"),
        (
            {"replay_ratio": 0.5, "vllm_importance_sampling_correction": False},
            r"vllm_importance_sampling_correction=True",
        ),
        ({"staleness_policy": "keep"}, r"staleness_policy must be one of"),
    ],
)
def test_misconfiguration_fails_at_construction(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **kw)


def test_rollout_config_mirrors_fields(tmp_path):
    cfg = _cfg(tmp_path, partial_rollouts=True, replay_ratio=0.5, max_staleness=2, seed=7)
    rc = cfg.rollout_config()
    assert (rc.max_segments, rc.replay_ratio, rc.max_staleness, rc.seed) == (4, 0.5, 2, 7)
    assert rc.max_completion_length == 16


def parity_reward(completions, completion_ids, **kwargs):
    """Varies across completions of a random model, so groups have non-zero reward variance."""
    return [float(sum(ids) % 3) for ids in completion_ids]


@pytest.fixture(scope="module")
def eos_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a large random EOS embedding row (varying completion lengths)."""
    return write_eos_model(tiny_model_dir, tmp_path_factory.mktemp("eos_model"))


@pytest.mark.vllm
@pytest.mark.slow
def _count_no_grad_logp_calls(trainer, monkeypatch) -> dict:
    """Counts generation batches and the policy log-prob passes made without grad inside them (TRL's
    old-log-prob forward, ref forwards); keeps the last batch's TRL inputs and behaviour samples."""
    from adaclip_rl.trainers.grpo import AdaClipGRPOTrainer
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    counts = {"batches": 0, "no_grad_calls": 0}
    inside = []
    logps = OffPolicyGRPOTrainer._get_per_token_logps_and_entropies
    score = AdaClipGRPOTrainer.generate_and_score_completions  # TRL's hook, under the seam's public name

    def counting_logps(self, *a, **k):
        counts["no_grad_calls"] += bool(inside) and not torch.is_grad_enabled()
        return logps(self, *a, **k)

    def counting_score(self, inputs):
        counts["batches"] += 1
        counting_score.last = (list(inputs), list(self._pending_samples or []))
        inside.append(1)
        try:
            return score(self, inputs)
        finally:
            inside.pop()

    monkeypatch.setattr(OffPolicyGRPOTrainer, "_get_per_token_logps_and_entropies", counting_logps)
    monkeypatch.setattr(AdaClipGRPOTrainer, "generate_and_score_completions", counting_score)
    trainer._last_scored = counting_score
    return counts


def _assert_skip_leaves_loss_and_grads_unchanged(trainer, counts) -> None:
    """The last generation batch scored again with and without the skip: the loss and every gradient
    agree, so TRL's old log-probs are provably unused with the behaviour anchor."""
    from adaclip_rl.rollout import pad_versions
    from adaclip_rl.trainers.grpo import AdaClipGRPOTrainer

    rows, samples = trainer._last_scored.last
    assert samples and trainer._skips_old_forward(samples)
    model = trainer.model.train()
    trainer._sync_rollout_engine()  # as generate_and_score_completions does first (TRL's own sync is bypassed)
    results = []
    for skip in (True, False):
        before = counts["no_grad_calls"]
        trainer._pending_samples = list(samples)
        ctx = trainer._behaviour_as_old_logps(samples) if skip else contextlib.nullcontext()
        with ctx:
            batch = AdaClipGRPOTrainer.generate_and_score_completions(trainer, rows)
        assert counts["no_grad_calls"] - before == (0 if skip else 1)
        if not skip:  # the comparison has teeth: TRL's old log-probs differ from the behaviour ones here
            valid = batch["completion_mask"].bool()
            gap = (batch["old_per_token_logps"] - batch["sampling_per_token_logps"])[valid].abs().max()
            assert gap > 1e-3, gap
        versions = pad_versions([s.versions for s in samples], width=batch["completion_ids"].size(1))
        trainer._apply_behaviour_correction(batch, versions, trainer.rollout_engine.version)
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert grads_a and len(grads_a) == len(grads_b)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    model.zero_grad()


def test_bapo_partial_rollouts_and_replay_train_and_resume(tmp_path, eos_model_dir, monkeypatch):
    pytest.importorskip("vllm")
    from datasets import Dataset

    from adaclip_rl.tasks.arithmetic import ArithmeticTask
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    ds = Dataset.from_list(ArithmeticTask().sample(64, seed=1))
    kw = dict(
        policy_loss="bapo",
        learning_rate=1e-2,
        max_steps=4,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        gradient_checkpointing=False,
        partial_rollouts=True,
        partial_max_segments=3,
        max_completion_length=48,  # lengths vary enough that groups finish at different engine steps
        partial_prefill_groups=2,  # at most max_staleness x the fresh groups of a batch (1 here)
        replay_ratio=0.5,
        replay_max_age=3,
        max_staleness=2,
        staleness_policy="downweight",
        seed=0,
        ratio_anchor="behaviour",  # BAPO's ratio against the behaviour policy, so its bounds matter
    )
    trainer = OffPolicyGRPOTrainer(
        eos_model_dir, [parity_reward], args=_cfg(tmp_path, **kw), train_dataset=ds
    )
    scored = _count_no_grad_logp_calls(trainer, monkeypatch)
    trainer.train()
    # the behaviour anchor needs no old-log-prob forward: none per generation batch (bapo: no ref model)
    assert scored == {"batches": 4, "no_grad_calls": 0}
    _assert_skip_leaves_loss_and_grads_unchanged(trainer, scored)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for h in logs:
        print(
            {
                k: round(v, 3)
                for k, v in h.items()
                if k.split("/")[0] in ("rollout", "replay", "partial", "bapo")
            }
        )
    assert len(logs) == 4 and all(math.isfinite(h["loss"]) for h in logs)
    keys = set().union(*logs)
    # no forward, so TRL's comparison of it with vLLM (constants 0 and 1 here) is not logged
    assert not {k for k in keys if k.startswith(("sampling/sampling_logp", "sampling/importance_sampling"))}
    for key in (
        "rollout/staleness_mean",
        "rollout/staleness_max",
        "rollout/is_weight_mean",
        "replay/size",
        "replay/sampled",
        "replay/age_mean",
        "partial/engine_calls",
        "partial/prompts_deferred",
        "partial/segments_mean",
        "partial/continued_frac",
        "bapo/clip_high",
    ):
        assert key in keys, key
    # fresh groups are within max_staleness when trained (partial/staleness_max: their oldest tokens);
    # replay fed later batches with stale data (down-weighted beyond the bound, expired at replay_max_age).
    # Whether a sequence is continued across versions depends on this tiny model's lengths; the fake-engine
    # tests (tests/rollout/test_schedule_grid.py) and tests/rollout/test_vllm_partial.py check continuation.
    assert max(h["partial/staleness_max"] for h in logs) <= 2
    assert max(h["rollout/staleness_max"] for h in logs) >= 1
    assert sum(h["replay/sampled"] for h in logs) >= 1
    # the engine holds the trained weights after a sync (TRL's parameter iterator + explicit tied LM head)
    trainer._sync_rollout_engine()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    prompt = trainer.processing_class("12+34=")["input_ids"]
    (out,) = trainer.rollout_engine.generate(
        [prompt], max_tokens=8, temperature=1.0, seed=0, ignore_eos=True
    )[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1 : -1].float()
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    assert trainer.state.global_step == 4
    assert out.version == 4  # versions count weight pushes: one per generation batch (every step here) + this one
    # vLLM was sized for the whole in-flight pool, not one generation batch (TRL's default)
    from adaclip_rl.trainers.offpolicy import in_flight_sequences

    sched = trainer.vllm_generation.llm.llm_engine.vllm_config.scheduler_config
    # the batch (8 sequences) + the pre-fill (2 groups of 4)
    assert sched.max_num_seqs >= in_flight_sequences(trainer.args) == 8 + 2 * 4
    # chunked prefill off on CPU, so the per-request seeds hold (TRL enables it; seeds were then dropped)
    assert not sched.enable_chunked_prefill and trainer.rollout_engine.use_request_seeds
    assert (ref - torch.tensor(out.logprobs)).abs().max().item() < 1e-3
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = torch.load(ckpt / "rollout_state_0.pt", weights_only=True)
    assert saved["replay"]["groups"] and saved["partial"] is not None
    release_trainer_engines(trainer)  # the next test starts its own engine

    # resume from checkpoint-2: the rollout state is restored exactly before training continues.
    # (The resumed run anchors the ratio on the proximal policy, the first run on the behaviour
    # policy, so both loss paths run once without a third engine start.)
    kw["ratio_anchor"] = "proximal"
    trainer = OffPolicyGRPOTrainer(
        eos_model_dir, [parity_reward], args=_cfg(tmp_path, **kw), train_dataset=ds
    )
    restored = {}
    load = trainer.load_rollout_state_dict

    def spy(state):
        load(state)
        restored["replay"] = trainer.replay_buffer.state_dict()
        restored["partial"] = trainer.rollout_manager.state_dict()

    trainer.load_rollout_state_dict = spy
    scored = _count_no_grad_logp_calls(trainer, monkeypatch)
    trainer.train(resume_from_checkpoint=str(ckpt))
    # the proximal anchor keeps TRL's old-log-prob forward: one per generation batch (2 after resume)
    assert scored == {"batches": 2, "no_grad_calls": 2}
    assert restored["replay"] == saved["replay"] and restored["partial"] == saved["partial"]
    assert trainer.state.global_step == 4
    release_trainer_engines(trainer)  # the next test starts its own engine


@pytest.mark.parametrize(
    ("policy_loss", "kw", "anchor"),
    [
        ("bapo", {}, "behaviour"),
        ("archer", {}, "behaviour"),
        ("grpo", {}, "proximal"),
        ("bapo", {"ratio_anchor": "proximal"}, "proximal"),
        ("bapo", {"use_behaviour_logprobs": False}, "proximal"),
    ],
)
def test_ratio_anchor_auto_is_the_behaviour_policy_for_bapo_and_archer(tmp_path, policy_loss, kw, anchor):
    assert _cfg(tmp_path, policy_loss=policy_loss, **kw).rollout_config().ratio_anchor == anchor


@pytest.mark.parametrize("anchor", ["auto", "proximal"])
def test_bapo_bounds_on_stale_data_are_computed_on_the_behaviour_ratio(tiny_model_dir, tmp_path, anchor):
    """Stale data (tokens generated 1 and 2 versions ago) with known log-probs: the proximal
    log-probs recomputed at generation time equal the current ones (first update after a partial
    rollout), the behaviour ones are lower. BAPO (default anchor) must search and clip
    pi_theta / pi_behaviour; the proximal anchor sees a ratio of 1 and keeps the start bounds,
    the staleness then living in the capped weight."""
    from datasets import Dataset

    from adaclip_rl.losses import BAPOConfig
    from adaclip_rl.tasks.arithmetic import ArithmeticTask
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    cfg = _cfg(tmp_path, policy_loss="bapo", use_vllm=False, ratio_anchor=anchor, per_device_train_batch_size=4)
    trainer = OffPolicyGRPOTrainer(tiny_model_dir, [parity_reward], args=cfg,
                                   train_dataset=Dataset.from_list(ArithmeticTask().sample(8, seed=1)))
    b, p, t = 8, 3, 6
    gen = torch.Generator().manual_seed(0)
    logp = -2 * torch.rand(b, t, generator=gen)
    behaviour = logp - 0.8 * torch.rand(b, t, generator=gen)  # the stale policies liked these tokens less
    mask = torch.ones(b, t, dtype=torch.long)
    out = {
        "prompt_ids": torch.randint(3, 50, (b, p), generator=gen), "prompt_mask": torch.ones(b, p, dtype=torch.long),
        "completion_ids": torch.randint(3, 50, (b, t), generator=gen), "completion_mask": mask,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.2, -0.2]),
        "old_per_token_logps": logp.clone(), "sampling_per_token_logps": behaviour.clone(),
        "num_items_in_batch": mask.sum().float(),
    }
    versions = torch.tensor([[0] * 3 + [1] * 3] * b)  # current version 2: lag 1 and 2
    corr = trainer._apply_behaviour_correction(out, versions, version=2)
    assert corr.metrics["rollout/staleness_mean"] == pytest.approx(1.5)

    leaf = logp.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.ones(b, t), None)
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = True  # the behaviour weight enters the loss
    seen = {}
    inner = trainer.policy_loss_fn

    def spy(ratio, advantages, m, **k):
        res = inner(ratio, advantages, m, **k)
        seen.update(ratio=ratio.detach(), result=res.details)
        return res

    trainer.policy_loss_fn = spy
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer._compute_loss(trainer.model, out).backward()
    res = seen["result"]
    if anchor == "auto":
        torch.testing.assert_close(seen["ratio"], torch.exp(logp - behaviour))
        # the share the bounds were chosen on is the share of the real gradient, and the search moved
        g = leaf.grad.abs()
        pos = out["advantages"] > 0
        assert res.share_after.item() == pytest.approx((g[pos].sum() / g.sum()).item(), abs=1e-6)
        assert res.index.item() > 0 and (res.clip_low.item(), res.clip_high.item()) != (0.6, 1.2)
    else:
        torch.testing.assert_close(seen["ratio"], torch.ones(b, t))
        assert (res.clip_low.item(), res.clip_high.item(), res.index.item()) == (0.6, 1.2, 0)
        assert torch.all(out["importance_sampling_ratio"] > 1.0)  # exp(old - behaviour), capped at 2
    assert BAPOConfig() == trainer.loss_config
