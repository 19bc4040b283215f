"""The ``optimizer`` field in the trainer configs: refused values name the field; settings it cannot
honour are refused; the trainer really steps with our optimizer (a step equals a standalone step)."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer
from adaclip_rl.optim import SPAM, StableSPAM
from adaclip_rl.tasks import ArithmeticTask, build_tiny_model
from adaclip_rl.trainers import field_checks
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
from adaclip_rl.trainers.config import OffPolicyGRPOConfig


def _cfg(tmp_path, cls=AdaClipGRPOConfig, **kw):
    return cls(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("cls", [AdaClipGRPOConfig, OffPolicyGRPOConfig, AdaClipAsyncGRPOConfig])
@pytest.mark.parametrize("kw,field", [
    (dict(optimizer="lion"), "optimizer"),
    (dict(optimizer="stable_spam", stable_spam_gamma2=1.0), "stable_spam_gamma2"),
    (dict(optimizer="stable_spam", stable_spam_total_t=0), "stable_spam_total_t"),
    (dict(optimizer="spam", spam_delta_t=-1), "spam_delta_t"),
    (dict(optimizer="spam", spam_state_dtype="int8"), "spam_state_dtype"),
    (dict(optimizer="spam", adam_beta2=1.0), "adam_beta2"),
    (dict(optimizer="stable_spam", optim="sgd"), "optim"),
])
def test_refused_values_name_the_trainer_field(tmp_path, cls, kw, field):
    with pytest.raises(ValueError, match=rf"{field}"):
        _cfg(tmp_path, cls, **kw)


def test_other_optimizers_fields_do_not_matter_for_adamw(tmp_path):
    cfg = _cfg(tmp_path, optim="sgd")  # TRL's optim keeps working when optimizer is the default
    assert cfg.optimizer == "adamw" and cfg.optimizer_spec.cls is None


def test_adaptive_grad_clip_warns_two_spike_handlers(tmp_path):
    field_checks._WARNED.discard(("optimizer", "zclip"))
    with pytest.warns(UserWarning, match="two spike handlers"):
        _cfg(tmp_path, optimizer="stable_spam", grad_clip="zclip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _cfg(tmp_path, optimizer="stable_spam", grad_clip="fixed")


@pytest.mark.parametrize("optimizer,ds,match", [
    ("spam", {"optimizer": {"type": "AdamW"}}, "own 'optimizer' section"),
    ("stable_spam", {"zero_optimization": {"stage": 2}}, "ZeRO stage 2"),
    ("spam", {"zero_optimization": {"stage": 2}}, None),
])
def test_deepspeed_settings_it_cannot_honour_are_refused(optimizer, ds, match):
    # deepspeed is not installed here: the check reads the resolved config as transformers holds it
    cfg = SimpleNamespace(optimizer=optimizer, optim="adamw_torch", deepspeed=ds,
                          hf_deepspeed_config=SimpleNamespace(config=ds))
    if match is None:
        field_checks.check_optimizer_with_trl(cfg)
    else:
        with pytest.raises(ValueError, match=match):
            field_checks.check_optimizer_with_trl(cfg)


@pytest.mark.parametrize("optimizer,ds,match", [
    ("spam", {"optimizer": {"type": "AdamW", "params": {}}, "zero_optimization": {"stage": 0}}, "own 'optimizer'"),
    ("stable_spam", {"zero_optimization": {"stage": 2}}, "ZeRO stage 2"),
    ("stable_spam", {"zero_optimization": {"stage": 0}}, None),
])
def test_deepspeed_configs_through_transformers(tmp_path, optimizer, ds, match):
    pytest.importorskip("deepspeed", reason="transformers builds the DeepSpeed config only with deepspeed installed")
    ds = {**ds, "train_micro_batch_size_per_gpu": "auto"}
    if match is None:
        assert _cfg(tmp_path, optimizer=optimizer, deepspeed=ds).optimizer == optimizer
    else:
        with pytest.raises(ValueError, match=match):
            _cfg(tmp_path, optimizer=optimizer, deepspeed=ds)


def test_every_trainer_builds_the_optimizer_through_the_mixin():
    from adaclip_rl.trainers.async_grpo import AdaClipAsyncGRPOTrainer
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer
    from adaclip_rl.trainers.optimizer_mixin import SpikeAwareOptimizerMixin

    for trainer in (AdaClipGRPOTrainer, OffPolicyGRPOTrainer, AdaClipAsyncGRPOTrainer):
        assert trainer.create_optimizer is SpikeAwareOptimizerMixin.create_optimizer, trainer


def digit_reward(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.mark.parametrize("optimizer,cls", [("stable_spam", StableSPAM), ("spam", SPAM)])
def test_trainer_steps_with_our_optimizer(tmp_path, optimizer, cls):
    task = ArithmeticTask()
    model_dir = str(build_tiny_model(tmp_path / "tiny", task.corpus()))
    args = _cfg(tmp_path / "run", optimizer=optimizer, bf16=False, per_device_train_batch_size=8,
                num_generations=4, max_completion_length=6, max_steps=3, steps_per_generation=2,
                learning_rate=1e-2, weight_decay=0.1, save_strategy="no", seed=0,
                stable_spam_update_proj_gap=2, spam_delta_t=2, spam_warmup_steps=1, spam_grad_accu_steps=1)
    trainer = AdaClipGRPOTrainer(model=model_dir, reward_funcs=[digit_reward], args=args,
                                 train_dataset=Dataset.from_list(task.sample(32, "train", seed=0)))
    seen = {}

    def pre_hook(opt, *_):  # the last step's input: parameters, gradients, learning rates
        seen["params"] = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
        seen["grads"] = [[None if p.grad is None else p.grad.clone() for p in g["params"]] for g in opt.param_groups]
        seen["groups"] = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
        seen["state"] = copy.deepcopy(opt.state_dict())

    trainer.create_optimizer()
    assert isinstance(trainer.optimizer, cls)
    trainer.optimizer.register_step_pre_hook(pre_hook)
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert opt is trainer.optimizer or isinstance(opt, cls)
    assert isinstance(opt, cls) and opt.state and all("exp_avg" in s for s in opt.state.values())
    # the Trainer's groups: weight decay for matrices only, every trainable parameter present
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in trainer.model.parameters())

    # replay the last step with a standalone optimizer built from the same settings
    clones = [[torch.nn.Parameter(p) for p in ps] for ps in seen["params"]]
    standalone = cls([{"params": c, **{k: v for k, v in g.items()}} for c, g in zip(clones, seen["groups"],
                                                                                      strict=True)],
                     **{k: v for k, v in args.optimizer_spec.kwargs_from(args).items()
                        if k not in ("lr", "weight_decay", "betas", "eps")})
    standalone.load_state_dict(seen["state"])
    for cs, gs in zip(clones, seen["grads"], strict=True):
        for c, g in zip(cs, gs, strict=True):
            c.grad = g
    standalone.step()
    for cs, g in zip(clones, opt.param_groups, strict=True):
        for c, p in zip(cs, g["params"], strict=True):
            torch.testing.assert_close(c.detach(), p.detach(), rtol=0, atol=0)
