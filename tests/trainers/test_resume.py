"""Stop, resume from a checkpoint: the adaptive state comes back and later metrics match exactly."""

from __future__ import annotations

import json

import pytest
from conftest import digit_reward

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer
from adaclip_rl.trainers.grad_clip_mixin import ADACLIP_STATE_FILE

KEYS = ("loss", "grad_norm", "bapo/clip_low", "bapo/clip_high", "bapo/pos_share_after", "entropy",
        "gradclip/ema_mean", "gradclip/threshold", "gradclip/coefficient")


def _trainer(tiny_model_dir, dataset, out_dir):
    args = AdaClipGRPOConfig(
        output_dir=str(out_dir), policy_loss="bapo", grad_clip="zclip", zclip_warmup_steps=2, use_cpu=True,
        bf16=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=6, max_steps=6,
        steps_per_generation=1, num_iterations=2, logging_steps=1, report_to="none", save_strategy="steps",
        save_steps=2, learning_rate=1e-2, gradient_checkpointing=False, seed=7,
    )
    return AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=dataset, args=args)


def _by_step(trainer):
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h and "step" in h}


def test_resume_restores_adaptive_state_and_metrics(tiny_model_dir, arithmetic_dataset, tmp_path):
    full = _trainer(tiny_model_dir, arithmetic_dataset, tmp_path / "run")
    full.train()
    ref = _by_step(full)
    # a checkpoint on a generation boundary (each generation batch feeds num_iterations=2 steps; TRL
    # regenerates after a resume, so a mid-batch checkpoint would continue on fresh samples)
    ckpt = tmp_path / "run" / "checkpoint-2"
    state = json.loads((ckpt / ADACLIP_STATE_FILE).read_text())
    assert state["grad_clipper"] is not None

    resumed = _trainer(tiny_model_dir, arithmetic_dataset, tmp_path / "run2")
    resumed.train(resume_from_checkpoint=str(ckpt))
    got = _by_step(resumed)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # steps 1-2 come back with trainer_state.json
    keys = [k for k in KEYS if k in ref[4]]
    assert any(k.startswith("gradclip/") for k in keys), sorted(ref[4])
    for step in (3, 4, 5, 6):
        for key in keys:
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-7), (step, key)
    # the restored clipper continued instead of starting a second warm-up: same final state
    assert resumed.grad_clipper.state_dict() == full.grad_clipper.state_dict()
    assert resumed.grad_clipper.num_updates == 6
