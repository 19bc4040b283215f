"""Each policy loss trains on the tiny model with its metrics logged; LoRA; tensorboard; grad clippers."""

from __future__ import annotations

import glob

import pytest
import torch
from conftest import digit_reward
from peft import LoraConfig
from transformers import TrainerCallback

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

EXPECTED = {
    "grpo": ["clipfrac/high", "clipfrac/low", "clip_ratio/region_mean"],
    "bapo": ["bapo/clip_low", "bapo/clip_high", "bapo/pos_share_before", "bapo/pos_share_after",
             "bapo/target_reached", "bapo/clipfrac_high", "bapo/clipfrac_low", "bapo/clipfrac_dual"],
    "archer": ["archer/high_frac", "archer/clipfrac_high", "archer/clipfrac_low", "archer/kl_low"],
}


def _args(tmp_path, policy_loss, **kw):
    base = dict(
        output_dir=str(tmp_path / policy_loss), policy_loss=policy_loss, use_cpu=True, bf16=False,
        per_device_train_batch_size=8, num_generations=4, max_completion_length=6, max_steps=4,
        steps_per_generation=2, logging_steps=1, report_to="none", save_strategy="no", learning_rate=1e-2,
        gradient_checkpointing=False, seed=0,
    )
    base.update(kw)
    return AdaClipGRPOConfig(**base)


@pytest.mark.parametrize("policy_loss", ["grpo", "bapo", "archer"])
def test_policy_loss_trains_and_logs(tiny_model_dir, arithmetic_dataset, tmp_path, policy_loss):
    trainer = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                                 args=_args(tmp_path, policy_loss))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    assert len(logs) == 4
    for key in EXPECTED[policy_loss] + ["entropy"]:
        assert all(key in h for h in logs), key
    assert sum("reward" in h for h in logs) == 2  # generation steps (each batch feeds 2 steps)
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert changed == len(before)
    if policy_loss == "bapo":
        for h in logs:
            assert 0.6 - 1e-6 <= h["bapo/clip_low"] <= 0.9 + 1e-6 and 1.2 - 1e-6 <= h["bapo/clip_high"] <= 3.0 + 1e-6
    if policy_loss == "archer":
        # completions are 6 tokens long: the per-response 0.8 quantile leaves 1 of 6 tokens high
        assert all(abs(h["archer/high_frac"] - 1 / 6) < 0.05 for h in logs)
        assert trainer.ref_model is not None and trainer.args.beta == 0.0  # ref loaded for Archer's KL only


@pytest.mark.parametrize("policy_loss", ["grpo", "bapo", "archer"])
def test_lora_and_tensorboard(tiny_model_dir, arithmetic_dataset, tmp_path, policy_loss):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = _args(tmp_path, policy_loss, max_steps=3, report_to="tensorboard")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                                 args=args, peft_config=lora)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora_before and all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    trainer.train()
    lora_after = dict(trainer.model.named_parameters())
    assert sum(not torch.equal(v, lora_after[n]) for n, v in lora_before.items()) > 0
    files = glob.glob(str(tmp_path / policy_loss / "**" / "events.out.tfevents.*"), recursive=True)
    assert files
    acc = EventAccumulator(files[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in EXPECTED[policy_loss]:
        assert f"train/{key}" in tags, (key, sorted(tags))


class _OptimizerSeesNorm(TrainerCallback):
    """The global L2 norm of the gradients the optimizer is about to apply (after the clip), per step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad.detach().double() for p in model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


# Settings that make each adaptive clipper clip within the 4 steps of the run (seed 0, CPU: deterministic):
# AdaGC clips per tensor (warm-up: globally at max_grad_norm); ZClip with a fast EMA, AutoClip at the 1st
# percentile and quantile tracking at the 5th pull the threshold below a later step's norm.
CLIP_SETTINGS = {
    "none": {},
    "zclip": {"zclip_warmup_steps": 1, "zclip_z_thresh": 0.05, "zclip_alpha": 0.1},
    "adagc": {"adagc_warmup_steps": 2, "max_grad_norm": 1e-3},
    "autoclip": {"autoclip_percentile": 1.0},
    "quantile": {"quantile_target": 0.05, "quantile_lr": 2.0},
}


@pytest.mark.parametrize("grad_clip", list(CLIP_SETTINGS))
def test_grad_clippers_run_in_the_trainer(tiny_model_dir, arithmetic_dataset, tmp_path, grad_clip):
    """The gradients the optimizer applies are the clipper's: their norm is the logged post-clip norm,
    below the pre-clip ``grad_norm`` exactly on the steps the clipper reports clipped, and a clip happens."""
    args = _args(tmp_path, "bapo", max_steps=4, grad_clip=grad_clip, **CLIP_SETTINGS[grad_clip])
    seen = _OptimizerSeesNorm()
    trainer = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                                 args=args, callbacks=[seen])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    assert len(logs) == len(seen.norms) == 4
    assert all(h["grad_norm"] > 0 for h in logs)
    if grad_clip == "none":  # measured, never clipped
        assert seen.norms == pytest.approx([h["grad_norm"] for h in logs], rel=1e-4)
        return
    assert trainer.grad_clipper.state_dict()  # has state to checkpoint
    for h, applied in zip(logs, seen.norms, strict=True):
        assert applied == pytest.approx(h["gradclip/post_clip_norm"], rel=1e-4), h
        if h["gradclip/clipped"]:
            assert applied < h["grad_norm"] * (1 - 1e-6), h
        else:
            assert applied == pytest.approx(h["grad_norm"], rel=1e-4), h
    assert sum(h["gradclip/clipped"] for h in logs) >= 1, [h["gradclip/clipped"] for h in logs]
    assert logs[-1]["gradclip/clipped_steps"] == sum(h["gradclip/clipped"] for h in logs)
