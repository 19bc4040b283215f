"""policy_loss="grpo" reproduces stock TRL GRPOTrainer's loss and gradients on the same batch, in
every branch of ``_compute_loss`` that AdaClipGRPOTrainer mirrors. The hash of TRL's method that
pins the version the mirror was checked against is in test_trl_seam.py (with every other tripwire)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_loss_and_grads, digit_reward
from trl import GRPOConfig, GRPOTrainer

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

COMMON = dict(
    use_cpu=True, bf16=False, per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
    report_to="none", save_strategy="no", gradient_checkpointing=False, epsilon=0.2, epsilon_high=0.28,
    gradient_accumulation_steps=2, steps_per_generation=2, logging_steps=1,
)


def _batch(model, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, p, c = 4, 3, 6
    prompt_ids = torch.randint(3, 200, (b, p), generator=gen)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[0, 0] = 0  # left padding
    completion_ids = torch.randint(3, 200, (b, c), generator=gen)
    lengths = torch.tensor([6, 4, 1, 5])
    completion_mask = (torch.arange(c).unsqueeze(0) < lengths.unsqueeze(1)).long()
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1),
                       attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits[:, p - 1 : -1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    # stale behaviour policy: ratios spread well beyond [0.8, 1.28], so clipping is exercised
    old = logps + 0.4 * torch.randn(b, c, generator=gen)
    ref = logps + 0.2 * torch.randn(b, c, generator=gen)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.tensor([1.3, -0.7, 0.4, -1.1]),
        "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum().float() * 2,
    }


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
def test_grpo_policy_loss_matches_stock_trl(tiny_model_dir, arithmetic_dataset, tmp_path, loss_type, beta):
    kw = dict(COMMON, loss_type=loss_type, beta=beta)
    stock = GRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                        args=GRPOConfig(output_dir=str(tmp_path / "stock"), **kw))
    ours = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                              args=AdaClipGRPOConfig(output_dir=str(tmp_path / "ours"), policy_loss="grpo", **kw))
    inputs = _batch(stock.model, seed=len(loss_type) * 10 + int(beta * 100))
    assert_same_loss_and_grads(stock, ours, inputs, grad_accum_steps=2)
    # clipping really happened on this batch, and the shared metrics agree
    assert ours._metrics["train"]["clip_ratio/region_mean"][-1] > 0
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "entropy") + (("kl",) if beta else ()):
        assert ours._metrics["train"][key][-1] == pytest.approx(stock._metrics["train"][key][-1], rel=1e-5)


# Branches of TRL's _compute_loss beyond the loss_type x beta grid above. "vllm_is" sets the
# trainers' use_vllm / vllm_importance_sampling_correction attributes (only _compute_loss reads
# them there) and feeds an importance_sampling_ratio, instead of starting a vLLM engine.
BRANCHES = {
    "entropy_bonus": ({"entropy_coef": 0.05}, {}),
    "adaptive_entropy": ({"entropy_coef": 0.05, "use_adaptive_entropy": True, "entropy_target": 50.0}, {}),
    "top_entropy_quantile": ({"top_entropy_quantile": 0.5}, {}),
    "top_entropy_quantile_with_bonus": ({"top_entropy_quantile": 0.5, "entropy_coef": 0.05}, {}),
    "off_policy_mask": ({"off_policy_mask_threshold": 0.01}, {"sampling": True}),
    "delta": ({"delta": 1.1}, {}),
    "luspo_sequence_is_beta": ({"loss_type": "luspo", "importance_sampling_level": "sequence", "beta": 0.04}, {}),
    "sequence_is_beta": ({"importance_sampling_level": "sequence", "beta": 0.04}, {}),
    "sequence_is_no_bias_correction": (
        {"importance_sampling_level": "sequence", "beta": 0.04, "use_bias_correction_kl": False}, {}),
    "vllm_is_token": ({}, {"vllm_is": (4, 6)}),
    "vllm_is_sequence_dapo": ({"loss_type": "dapo", "importance_sampling_level": "sequence"}, {"vllm_is": (4, 1)}),
}


@pytest.mark.parametrize("branch", sorted(BRANCHES))
def test_grpo_policy_loss_matches_stock_trl_in_every_mirrored_branch(tiny_model_dir, arithmetic_dataset, tmp_path,
                                                                       branch):
    cfg_kw, extra = BRANCHES[branch]
    kw = dict(COMMON, **{"loss_type": "grpo", "beta": 0.0, **cfg_kw})
    stock = GRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                        args=GRPOConfig(output_dir=str(tmp_path / "stock"), **kw))
    ours = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                              args=AdaClipGRPOConfig(output_dir=str(tmp_path / "ours"), policy_loss="grpo", **kw))
    inputs = _batch(stock.model, seed=sum(map(ord, branch)))
    gen = torch.Generator().manual_seed(1)
    if extra.get("sampling"):
        inputs["sampling_per_token_logps"] = inputs["old_per_token_logps"] + 0.5 * torch.randn(4, 6, generator=gen)
    if "vllm_is" in extra:
        inputs["importance_sampling_ratio"] = 0.2 + 1.8 * torch.rand(*extra["vllm_is"], generator=gen)
        for tr in (stock, ours):
            tr.use_vllm = tr.vllm_importance_sampling_correction = True
    for tr in (stock, ours):
        tr._last_world_entropy = 1.0  # the adaptive controller applies its coefficient (entropy <= target)
    for step in range(2):  # two micro-batches: the adaptive controller updates at the window's end
        assert_same_loss_and_grads(stock, ours, inputs, grad_accum_steps=2, tag=step)
    assert ours.entropy_coef == stock.entropy_coef
    for key in set(stock._metrics["train"]) & {"clip_ratio/low_mean", "clip_ratio/high_mean", "entropy", "kl",
                                                "policy_loss", "entropy_coef"}:
        assert ours._metrics["train"][key] == pytest.approx(stock._metrics["train"][key], rel=1e-5), key
