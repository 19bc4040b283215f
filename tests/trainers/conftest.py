"""Tiny offline model and dataset shared by the trainer tests."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from adaclip_rl.tasks import ArithmeticTask, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), ArithmeticTask().corpus()))


@pytest.fixture(scope="session")
def arithmetic_dataset():
    return Dataset.from_list(ArithmeticTask().sample(64, "train", seed=0))


def digit_reward(completions, **kwargs):
    """Fraction of digit characters: varies across random completions, so advantages are non-zero."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


# Parity tolerances with stock TRL (float32 CPU): one place for every parity test.
PARITY_LOSS_TOL = dict(rtol=1e-6, atol=1e-7)
PARITY_GRAD_TOL = dict(rtol=1e-5, atol=1e-7)


def loss_and_grads(trainer, inputs, grad_accum_steps: int = 1):
    """``trainer._compute_loss`` on ``inputs`` and the parameter gradients of its backward."""
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = grad_accum_steps  # Trainer.training_step sets it
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_same_loss_and_grads(stock, ours, inputs, grad_accum_steps: int = 1, tag=None) -> None:
    """Our trainer's loss and gradients equal stock TRL's on the same batch (parity tolerances)."""
    loss_s, grads_s = loss_and_grads(stock, inputs, grad_accum_steps)
    loss_o, grads_o = loss_and_grads(ours, inputs, grad_accum_steps)
    assert torch.allclose(loss_o, loss_s, **PARITY_LOSS_TOL), (tag, loss_o, loss_s)
    assert grads_s.keys() == grads_o.keys() and len(grads_s) > 0
    for name, g in grads_s.items():
        assert torch.allclose(grads_o[name], g, **PARITY_GRAD_TOL), (tag, name)
